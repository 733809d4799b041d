"""Bits per dimension: the exact likelihood of a pixel-level model on a data set, over all H x W x C sub-pixels
(nats per dimension / ln 2; discrete models need no dequantisation). Reports the class-conditional figure (what
validation reports) and the unconditional one through the null class (the models train with class dropout, so
p(x | null) is an unconditional model; CIFAR-10's published figures are unconditional).

    python eval/bpd.py --checkpoint runs/cifar10-pixel-ar/final --data data/cifar10 --split test [--name NAME]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from visgen.checkpoint import CheckpointError, load_model
from visgen.config import ConfigError
from visgen.data import DataConfig, DataError, build_dataset
from visgen.metrics.fidelity import bits_per_dim
from visgen.model_card import write_card
from visgen.results import write_result
from visgen.sampling.sampler import resolve_device


@torch.no_grad()
def dataset_nll(model, dataset, batch_size: int, device, unconditional: bool = False) -> tuple[float, int, int]:
    """(total NLL in nats, images, skipped unreadable images) of ``dataset`` under ``model``."""
    model.eval()
    total, images, skipped = 0.0, 0, 0
    dims = model.schedule.seq_len * (model.schedule.input_dim or 1)  # every sub-pixel of an image
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        good = [it for it in items if it is not None]
        skipped += len(items) - len(good)
        if not good:
            continue
        x = torch.stack([it["image"] for it in good]).to(device)
        labels = torch.tensor([max(int(it["label"]), 0) for it in good], device=device)
        if unconditional:
            labels = torch.full_like(labels, model.null_class)
        loss = model.loss(model.tokenizer.encode(x), labels).double().item()  # nats per dimension, batch mean
        total += loss * dims * len(good)
        images += len(good)
    return total, images, skipped


def build_parser(prog: str = "eval/bpd.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a pixel-level generator's folder")
    p.add_argument("--data", required=True, help="data path (image folder, CIFAR-10 batches, IDX files)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=0, help="images to score (0: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--results-dir", default="results")
    return p


def main(argv: list[str] | None = None, prog: str = "eval/bpd.py") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        model = load_model(args.checkpoint, ema=not args.no_ema)
        if getattr(model, "model_type", "") != "ar-generator" or type(model.tokenizer).__name__ != "PixelTokenizer":
            raise ConfigError(
                f"{args.checkpoint}: bits per dimension needs a pixel-level generator (model.tokenizer: pixel); a "
                "token model's loss is per token, not per sub-pixel"
            )
        device = resolve_device(args.device)
        cfg = DataConfig(path=args.data, split=args.split, image_size=model.config.image_size,
                         channels=model.tokenizer.config.channels, limit=args.limit or None)  # fmt: skip
        dataset = build_dataset(cfg)
        model = model.to(device)
    except (CheckpointError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    metrics = {}
    for key, uncond in (("bpd", False), ("bpd_unconditional", True)):
        nll, n, skipped = dataset_nll(model, dataset, args.batch_size, device, uncond)
        if n == 0:
            print(f"error: no readable image in {args.data} ({args.split})", file=sys.stderr)
            return 2
        dims = n * model.schedule.seq_len * (model.schedule.input_dim or 1)
        metrics[key] = float(bits_per_dim(nll, dims))
    metrics.update({"images": n, "skipped_images": skipped, "split": args.split, "seconds": time.perf_counter() - t0})
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    if args.name:
        write_result(Path(args.results_dir) / f"{args.name}.json", args.name, metrics)
    if Path(args.checkpoint).is_dir():  # the model card carries what the harness measured
        key = f"bits/dim on {args.data} ({args.split}, {n} images)"
        try:
            write_card(args.checkpoint, results={key: {k: metrics[k] for k in ("bpd", "bpd_unconditional")}})
        except OSError as e:
            print(f"note: could not add the results to {args.checkpoint}'s model card: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
