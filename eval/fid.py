"""FID / IS / KID / precision-recall of a generator checkpoint, an image folder or an ADM ``.npz``.

    python eval/fid.py --input CKPT_OR_FOLDER_OR_NPZ --ref DATA_OR_FOLDER_OR_NPZ_OR_STATS [--extractor cifar10cls]
    accelerate launch eval/fid.py --input CKPT ...      # generation split across processes

A checkpoint is sampled on the fly: class-balanced labels, sample i seeded by (seed, i), batched, each process
taking every k-th index and the results gathered without duplicates. The reference's statistics are cached on disk,
keyed by everything that changes them. The JSON report holds every setting that changes the number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from visgen.checkpoint import CheckpointError, read_config
from visgen.config import ConfigError
from visgen.data import DataConfig, DataError, build_dataset
from visgen.metrics.fidelity import (
    Extractor,
    images_from_dataset,
    load_npz_images,
    load_stats,
    reference_features,
    score,
)  # fmt: skip
from visgen.metrics.recon import to_uint8
from visgen.results import hardware, write_result
from visgen.sampling import Sampler, SamplingConfig


def sample_checkpoint(path: Path, n: int, cfg: SamplingConfig, ema: bool) -> tuple[torch.Tensor, dict]:
    """n class-balanced samples as uint8 (N, H, W, 3), split across accelerate processes and gathered in order."""
    from accelerate import Accelerator

    from visgen.generator import Generator

    acc = Accelerator()
    gen = Generator.from_pretrained(path, ema=ema and (path / "ema.safetensors").is_file())
    ids = torch.arange(acc.process_index, n, acc.num_processes)
    labels = ids % gen.config.num_classes
    sampler = Sampler(gen, cfg, device=acc.device)
    t0 = time.perf_counter()
    images = to_uint8(sampler.sample_images(labels, ids, progress=acc.is_main_process)).permute(0, 2, 3, 1)
    rate = len(ids) / (time.perf_counter() - t0) * acc.num_processes
    per = (n + acc.num_processes - 1) // acc.num_processes  # pad to equal shards, gather, then drop the padding
    padded = torch.zeros((per, *images.shape[1:]), dtype=torch.uint8, device=acc.device)
    padded[: len(images)] = images.to(acc.device)
    gathered = acc.gather(padded).view(acc.num_processes, per, *images.shape[1:]).cpu()
    order = torch.cat([gathered[r, : len(range(r, n, acc.num_processes))] for r in range(acc.num_processes)])
    index = torch.cat([torch.arange(r, n, acc.num_processes) for r in range(acc.num_processes)])
    out = torch.empty_like(order)
    out[index] = order
    if out.shape[-1] == 1:
        out = out.expand(-1, -1, -1, 3)
    return out, {"generation_images_per_s": rate, "processes": acc.num_processes, "is_main": acc.is_main_process}


def load_input(args) -> tuple[torch.Tensor, dict]:
    path = Path(args.input)
    if path.suffix == ".npz":
        return load_npz_images(path), {"input_kind": "npz"}
    if path.is_dir() and (path / "config.json").is_file():
        if read_config(path)["model_type"] != "ar-generator":
            raise CheckpointError(f"{path} is not a generator checkpoint")
        cfg = SamplingConfig(
            cfg_scale=args.cfg_scale, cfg_schedule=args.cfg_schedule, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, compile=args.compile,
        )  # fmt: skip
        images, info = sample_checkpoint(path, args.num_samples, cfg, ema=not args.no_ema)
        info.update({"input_kind": "checkpoint", "sampling": vars(cfg), "class_balance": "label = index % classes"})
        return images, info
    # DataConfig.limit takes a fixed random subset, so a folder in class order is not cut to its first classes
    cfg = DataConfig(path=str(path), split=args.split, image_size=args.image_size, limit=args.num_samples or None)
    return images_from_dataset(build_dataset(cfg)), {"input_kind": "images"}


def load_reference(args, extractor: Extractor, device: str):
    ref = Path(args.ref)
    if ref.suffix == ".npz":
        with np.load(ref, allow_pickle=False) as f:
            is_stats = "mu" in f.files
        if is_stats:
            stats, feats = load_stats(ref)
            return stats, feats, {"reference_kind": "statistics file", "cache_hit": None}
        images_fn = lambda: load_npz_images(ref)
        ref_id = {"npz": str(ref.resolve()), "bytes": ref.stat().st_size}
    else:
        cfg = DataConfig(path=str(ref), split=args.ref_split, image_size=args.image_size, limit=args.ref_count or None)
        ds = build_dataset(cfg)
        images_fn = lambda: images_from_dataset(ds)
        ref_id = {"data": str(ref.resolve()), "split": args.ref_split, "size": args.image_size, "images": len(ds),
                  "count": args.ref_count}  # fmt: skip
    stats, feats, hit = reference_features(
        images_fn, ref_id, extractor, device, None if args.no_cache else args.cache_dir
    )
    return stats, feats, {"reference_kind": "images", "reference_id": ref_id, "cache_hit": hit}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="generator checkpoint folder, image folder / data path, or .npz")
    p.add_argument("--ref", required=True, help="data path or folder, .npz of images, or .npz statistics (mu, sigma)")
    p.add_argument("--extractor", default="cifar10cls", help="cifar10cls, fmnistcls, or inception-v3-compat")
    p.add_argument("--extractor-weights", help="weights folder (classifier) instead of the bundled one")
    p.add_argument("--inception-weights", help="local Inception file (weights-inception-2015-12-05-6726825d.pth)")
    p.add_argument("--num-samples", type=int, default=10000, help="images to generate / read (0: all)")
    p.add_argument("--split", default="test", help="split of --input when it is a data set")
    p.add_argument("--ref-split", default="train")
    p.add_argument("--ref-count", type=int, default=0, help="reference images to use (0: all)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--cfg-schedule", default="constant")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--compile", action="store_true", help="compiled sampling (SamplingConfig.compile)")
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--no-kid", action="store_true")
    p.add_argument("--no-prc", action="store_true")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "visgen" / "fid-stats"))
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--report", help="write the full JSON report here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = args.inception_weights if args.extractor == "inception-v3-compat" else args.extractor_weights
    extractor = Extractor(args.extractor, weights)
    try:
        images, info = load_input(args)
        if not info.pop("is_main", True):
            return 0
        stats, ref_feats, ref_info = load_reference(args, extractor, device)
        metrics, feat_rate = score(
            images, extractor, device, stats, ref_feats, kid=not args.no_kid, prc=not args.no_prc
        )
    except (CheckpointError, ConfigError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {
        "metrics": metrics,
        "settings": {
            "input": str(args.input), "reference": str(args.ref), "num_images": len(images),
            "image_size": list(images.shape[1:3]), "extractor": extractor.name,
            "extractor_weights_sha256_16": extractor.weights_hash(), "resize": "none (extractor resizes internally)",
            "float_to_uint8": "round((clamp(x, -1, 1) + 1) * 127.5)", "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32, "hardware": hardware(), **info, **ref_info,
        },
        "feature_images_per_s": feat_rate,
    }  # fmt: skip
    print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()) + f" (n={len(images)}, {extractor.name})")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    if args.name:
        flat = {**metrics, "num_images": len(images), "feature_images_per_s": feat_rate}
        if "generation_images_per_s" in info:
            flat["generation_images_per_s"] = info["generation_images_per_s"]
        write_result(Path("results") / f"{args.name}.json", args.name, {**flat, "settings": report["settings"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
