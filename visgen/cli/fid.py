"""FID / IS / KID / precision-recall of a generator checkpoint, an image folder or an ADM ``.npz``.

    python eval/fid.py --input CKPT_OR_FOLDER_OR_NPZ --ref DATA_OR_FOLDER_OR_NPZ_OR_STATS [--extractor cifar10cls]
    accelerate launch eval/fid.py --input CKPT ...      # generation split across processes

A checkpoint is sampled on the fly: class-balanced labels, sample i seeded by (seed, i), batched, each process
taking every k-th index and the results gathered without duplicates. The reference's statistics are cached on disk,
keyed by everything that changes them. The JSON report holds every setting that changes the number.

When the reference is a data set with a held-out split (CIFAR-10 test against train, by default), the report also
says whether samples are copies of training images (``visgen.metrics.memorisation``: nearest neighbours in the FD
features and in pixels, ``copy_rate`` against the held-out images' floor) and writes a PNG of the closest pairs.
Inputs and outputs are all checked before anything is sampled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from visgen import hub
from visgen.checkpoint import CheckpointError, read_config
from visgen.cli.sample import add_compile_arguments, add_sampler_arguments, sampler_settings
from visgen.config import ConfigError
from visgen.data import DataConfig, DataError, build_dataset
from visgen.data.images import detect_format
from visgen.metrics.fidelity import (
    Extractor,
    images_from_dataset,
    load_npz_images,
    load_stats,
    reference_features,
    score,
)  # fmt: skip
from visgen.metrics.memorisation import memorisation_report, save_pairs, summary_line
from visgen.metrics.recon import to_uint8
from visgen.model_card import write_card
from visgen.results import check_writable, hardware, write_result
from visgen.sampling import Sampler, SamplingConfig
from visgen.sampling.sampler import COMPILE_MODES, use_compile_cache


def sample_checkpoint(path: Path, n: int, cfg: SamplingConfig, ema: bool) -> tuple[torch.Tensor, dict]:
    """n class-balanced samples as uint8 (N, H, W, 3), split across accelerate processes and gathered in order."""
    from accelerate import Accelerator

    from visgen.generator import Generator

    acc = Accelerator()
    gen = Generator.from_pretrained(path, ema=ema and (path / "ema.safetensors").is_file())
    ids = torch.arange(acc.process_index, n, acc.num_processes)
    labels = ids % gen.config.num_classes
    sampler = Sampler(gen, cfg, device=acc.device, images=len(ids))
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
    if torch.distributed.is_initialized():  # nothing after the gather talks between processes: close the group
        acc.wait_for_everyone()  # (a gloo group still open at exit can abort a process: "terminate called ...")
        torch.distributed.destroy_process_group()
    info = {"generation_images_per_s": rate, "processes": acc.num_processes, "is_main": acc.is_main_process,
            "sampling": vars(sampler.cfg)}  # fmt: skip
    if sampler.speculative is not None:
        info["speculative_stats"] = sampler.speculative.stats  # this process's share of the samples
    return out, info


def check_input(args) -> str:
    """What ``--input`` is (checkpoint, npz or images), checked before anything is sampled."""
    path = Path(args.input)
    if hub.is_hub_id(args.input):  # a generator on the Hugging Face Hub: sampled like a local checkpoint
        path = hub.resolve(args.input)
        args.input = str(path)
    if not path.exists():
        raise ConfigError(f"--input {path} not found")
    if path.suffix == ".npz":
        return "npz"
    if path.is_dir() and (path / "config.json").is_file():
        if read_config(path)["model_type"] != "ar-generator":
            raise CheckpointError(f"{path} is not a generator checkpoint")
        if args.num_samples < 1:
            raise ConfigError("--num-samples must be at least 1 to sample a checkpoint")
        return "checkpoint"
    return "images"


def load_input(args, kind: str) -> tuple[torch.Tensor, dict]:
    path = Path(args.input)
    if kind == "npz":
        return load_npz_images(path), {"input_kind": "npz"}
    if kind == "checkpoint":
        cfg = sampling_config(args)
        if args.compile_cache:
            use_compile_cache(args.compile_cache)
        images, info = sample_checkpoint(path, args.num_samples, cfg, ema=not args.no_ema)
        info.update({"input_kind": "checkpoint", "class_balance": "label = index % classes"})  # sampling: as run
        return images, info
    # DataConfig.limit takes a fixed random subset, so a folder in class order is not cut to its first classes
    cfg = DataConfig(path=str(path), split=args.split, image_size=args.image_size, limit=args.num_samples or None)
    return images_from_dataset(build_dataset(cfg)), {"input_kind": "images"}


def sampling_config(args) -> SamplingConfig:
    return SamplingConfig(
        cfg_scale=args.cfg_scale, cfg_schedule=args.cfg_schedule, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, compile=args.compile,
        compile_mode=args.compile_mode,
        **sampler_settings(args),
    )  # fmt: skip


class Reference:
    """An image set to compare against (a data set or an ``.npz`` of images) or a statistics file; opened (paths,
    formats) before any sampling, its images read and its features computed or taken from the cache only when
    needed."""

    def __init__(self, path: str, split: str, image_size: int, count: int):
        self.path = Path(path)
        self.dataset = None
        if not self.path.exists():
            raise ConfigError(f"reference {self.path} not found")
        if self.path.suffix == ".npz":
            try:
                with np.load(self.path, allow_pickle=False) as f:
                    files = f.files
            except (OSError, ValueError) as e:
                raise ConfigError(f"reference {self.path}: not a readable .npz ({e})") from None
            self.kind = "statistics file" if "mu" in files else "npz"
            self.id = {"npz": str(self.path.resolve()), "bytes": self.path.stat().st_size}
        else:
            self.kind = "images"
            self.dataset = build_dataset(DataConfig(path=str(path), split=split, image_size=image_size,
                                                    limit=count or None))  # fmt: skip
            self.id = {"data": str(self.path.resolve()), "split": split, "size": image_size,
                       "images": len(self.dataset), "count": count}  # fmt: skip
        self._images = None

    def images(self) -> torch.Tensor:
        if self._images is None:
            self._images = load_npz_images(self.path) if self.dataset is None else images_from_dataset(self.dataset)
        return self._images

    def features(self, extractor: Extractor, device: str, cache_dir) -> tuple[dict | None, torch.Tensor | None, dict]:
        if self.kind == "statistics file":
            stats, feats = load_stats(self.path)
            return stats, feats, {"reference_kind": "statistics file", "cache_hit": None}
        stats, feats, hit = reference_features(self.images, self.id, extractor, device, cache_dir)
        return stats, feats, {"reference_kind": "images", "reference_id": self.id, "cache_hit": hit}


def find_holdout(args, ref: Reference) -> Reference | None:
    """The held-out images for the memorisation floor: ``--holdout``, else the ``--holdout-split`` of the reference's
    data set (the same CIFAR-10 / IDX folder, or the sibling folder of an ImageFolder split named ``--ref-split``)."""
    if ref.kind == "statistics file":
        return None  # no images to search
    if args.holdout:
        return Reference(args.holdout, args.holdout_split, args.image_size, args.holdout_count)
    if ref.kind != "images":
        return None
    fmt = detect_format(ref.path)
    if fmt in ("cifar10", "idx"):
        return Reference(str(ref.path), args.holdout_split, args.image_size, args.holdout_count)
    sibling = ref.path.resolve().parent / args.holdout_split
    if ref.path.resolve().name == args.ref_split and sibling.is_dir():
        return Reference(str(sibling), args.holdout_split, args.image_size, args.holdout_count)
    return None


def resize_to(images_NHWC: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """uint8 images resized (antialiased) to ``hw`` for the pixel search, when samples and references differ."""
    if tuple(images_NHWC.shape[1:3]) == tuple(hw):
        return images_NHWC
    x = torch.nn.functional.interpolate(images_NHWC.permute(0, 3, 1, 2).float(), size=hw, mode="bilinear",
                                        antialias=True, align_corners=False)  # fmt: skip
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    add_compile_arguments(p)
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES, help="SamplingConfig.compile_mode")
    add_sampler_arguments(p)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--no-kid", action="store_true")
    p.add_argument("--no-prc", action="store_true")
    p.add_argument(
        "--memorisation", action=argparse.BooleanOptionalAction, default=True,
        help="nearest training images of every sample, against a held-out floor (default on when the reference is "
        "a data set with a held-out split)",
    )  # fmt: skip
    p.add_argument("--holdout-split", default="test", help="held-out split of the reference data set")
    p.add_argument("--holdout", help="held-out images (data path or .npz) when they are not the reference's split")
    p.add_argument("--holdout-count", type=int, default=0, help="held-out images to use (0: all)")
    p.add_argument("--pairs", help="PNG of the closest sample / training pairs (default: beside --name or --report)")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "visgen" / "fid-stats"))
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--results-dir", default="results", help="where --name writes")
    p.add_argument("--report", help="write the full JSON report here")
    p.add_argument("--card", action=argparse.BooleanOptionalAction, default=True,
                   help="add the results to a checkpoint's model card (README.md)")  # fmt: skip
    return p


def stage(what: str, t0: float):
    """One line on stderr when a stage ends, so a long evaluation's log says where its time went."""
    print(f"{what}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def main(argv=None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = args.inception_weights if args.extractor == "inception-v3-compat" else args.extractor_weights
    extractor = Extractor(args.extractor, weights)
    cache_dir = None if args.no_cache else args.cache_dir
    try:
        # everything that can be wrong with the inputs and outputs is found before any image is sampled
        kind = check_input(args)
        if kind == "checkpoint":
            sampling_config(args)
        ref = Reference(args.ref, args.ref_split, args.image_size, args.ref_count)
        holdout = find_holdout(args, ref) if args.memorisation else None
        pairs = args.pairs or (
            str(Path(args.results_dir) / f"{args.name}-nearest.png") if args.name
            else str(Path(args.report).with_suffix("")) + "-nearest.png" if args.report else None
        )  # fmt: skip
        folders = {"--name": args.name and Path(args.results_dir), "--report": args.report and Path(args.report).parent,
                   "--pairs": holdout and pairs and Path(pairs).parent}  # fmt: skip
        for flag, folder in folders.items():
            if folder:
                check_writable(folder, flag)
        extractor.weights_hash()  # the extractor's weights exist
        images, info = load_input(args, kind)
        if not info.pop("is_main", True):
            return 0
        t0 = time.perf_counter()
        stats, ref_feats, ref_info = ref.features(extractor, device, cache_dir)
        source = {True: "from the cache", False: "computed", None: "from the statistics file"}[ref_info["cache_hit"]]
        stage(f"reference features ({source})", t0)
        t0 = time.perf_counter()
        feats = extractor.features(images, device)
        feat_rate = len(images) / (time.perf_counter() - t0)
        metrics, _ = score(images, extractor, device, stats, ref_feats, kid=not args.no_kid, prc=not args.no_prc,
                           features=feats)  # fmt: skip
        stage(f"features and metrics of {len(images)} images", t0)
        memo_info = {"memorisation": "off" if not args.memorisation else "no held-out images found (pass --holdout) "
                     "or the reference is a statistics file"}  # fmt: skip
        if holdout is not None:
            t0 = time.perf_counter()
            memo, memo_info = memorisation(images, feats["fd"], ref, ref_feats, holdout, extractor, device, cache_dir,
                                           pairs)  # fmt: skip
            metrics.update(memo)
            stage("memorisation report", t0)
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
            "tf32_cudnn": torch.backends.cudnn.allow_tf32, "hardware": hardware(), **info, **ref_info, **memo_info,
        },
        "feature_images_per_s": feat_rate,
    }  # fmt: skip
    print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()) + f" (n={len(images)}, {extractor.name})")
    if "copy_rate" in metrics:
        print(summary_line(metrics))
    elif args.memorisation:
        print(f"note: {memo_info['memorisation']}: no memorisation report", file=sys.stderr)
    if kind == "checkpoint" and args.card:
        add_to_card(Path(args.input), metrics, extractor, args, len(images))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    if args.name:
        flat = {**metrics, "num_images": len(images), "feature_images_per_s": feat_rate}
        if "generation_images_per_s" in info:
            flat["generation_images_per_s"] = info["generation_images_per_s"]
        write_result(Path(args.results_dir) / f"{args.name}.json", args.name, {**flat, "settings": report["settings"]})
    return 0


def add_to_card(ckpt: Path, metrics: dict, extractor: Extractor, args, n: int):
    """The checkpoint's model card gets these results (a read-only folder keeps its card, with a note)."""
    drawn = "".join(f", {name} {value:g}" for name, value, plain in (("temperature", args.temperature, 1.0),
                    ("top-k", args.top_k, 0), ("top-p", args.top_p, 1.0), ("head steps", args.head_steps, 0))
                    if value != plain)  # fmt: skip
    drawn += f", {args.head_solver} solver" if args.head_solver else ""
    key = f"{extractor.name}, cfg {args.cfg_scale:g} {args.cfg_schedule}{drawn}, seed {args.seed}, {n} samples vs {args.ref}"
    keep = {k: float(v) for k, v in metrics.items() if not k.endswith("_std") and not k.startswith("copy_threshold")}
    try:
        write_card(ckpt, results={key: keep})
    except OSError as e:
        print(f"note: could not add the results to {ckpt}'s model card: {e}", file=sys.stderr)


def memorisation(images, gen_feats, ref: Reference, ref_feats, holdout: Reference, extractor, device, cache_dir,
                 pairs: str | None) -> tuple[dict, dict]:  # fmt: skip
    """The memorisation report's metrics and settings; ``pairs`` gets the picture of the closest pairs."""
    if ref_feats is None:
        raise ValueError("the memorisation report needs reference features: pass a data set or an .npz of images")
    t0 = time.perf_counter()
    hw = tuple(images.shape[1:3])
    ref_images = resize_to(ref.images(), hw)
    _, hold_feats, _ = holdout.features(extractor, device, cache_dir)
    hold_images = resize_to(holdout.images(), hw)
    metrics, nn = memorisation_report(gen_feats, images, ref_feats, ref_images, hold_feats, hold_images, device)
    if pairs:
        save_pairs(pairs, images, ref_images, nn)
    info = {
        "memorisation": "on", "memorisation_reference": ref.id, "memorisation_holdout": holdout.id,
        "memorisation_feature_distance": f"1 - cosine, {extractor.name} pool features",
        "memorisation_pixel_distance": f"L2 of [0, 1] RGB at {hw[0]}x{hw[1]} (references resized to it if needed), "
        "horizontal flips of references included",
        "memorisation_copy_rule": "distance below the held-out images' 1st percentile",
        "memorisation_pairs_png": pairs, "memorisation_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    return metrics, info


if __name__ == "__main__":
    sys.exit(main())
