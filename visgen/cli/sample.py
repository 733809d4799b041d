"""``sample.py``: images from a generator checkpoint as a grid, PNG files and/or an ADM-style ``.npz``.

The output folder is named after every sampling hyperparameter, with ``settings.json`` beside the images.
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
from visgen.generator import ASSETS, Generator
from visgen.metrics import to_uint8
from visgen.sampling import Sampler, SamplingConfig

DEFAULT_CHECKPOINT = "asset:cifar10-token-ar"


def resolve_checkpoint(ref: str) -> Path:
    path = ASSETS / ref[len("asset:") :] if ref.startswith("asset:") else Path(ref).expanduser()
    meta = read_config(path)
    if meta["model_type"] != Generator.model_type:
        raise CheckpointError(f"{path} holds a {meta['model_type']!r} model; sample.py needs a generator checkpoint")
    return path


def parse_labels(spec: str | None, n: int, generator: Generator) -> torch.Tensor:
    """Class-balanced labels (0, 1, ..., C-1, 0, ...) or the given comma-separated indices / class names."""
    n_cls, names = generator.config.num_classes, generator.config.class_names
    if not spec:
        return torch.arange(n) % n_cls
    labels = []
    for item in spec.split(","):
        item = item.strip()
        if item.lstrip("-").isdigit():
            labels.append(int(item))
        elif item in names:
            labels.append(names.index(item))
        else:
            known = ", ".join(names) if names else f"0..{n_cls - 1}"
            raise ConfigError(f"unknown class {item!r}; known: {known}")
    bad = [x for x in labels if not 0 <= x < n_cls]
    if bad:
        raise ConfigError(f"class index {bad[0]} out of range 0..{n_cls - 1}")
    return torch.tensor(labels).repeat((n + len(labels) - 1) // len(labels))[:n]


def folder_name(ckpt: Path, cfg: SamplingConfig, n: int, ema: bool) -> str:
    parts = [
        ckpt.name + ("-ema" if ema else ""), f"cfg{cfg.cfg_scale:g}", cfg.cfg_schedule, f"T{cfg.temperature:g}",
        f"topk{cfg.top_k}", f"topp{cfg.top_p:g}", f"seed{cfg.seed}", f"n{n}",
    ]  # fmt: skip
    if cfg.cfg_schedule == "interval":
        parts.insert(4, f"{cfg.cfg_interval[0]:g}-{cfg.cfg_interval[1]:g}")
    return "-".join(parts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sample.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint", default=DEFAULT_CHECKPOINT, help="generator folder (default: the bundled CIFAR-10 model)"
    )
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument(
        "--labels", help="comma-separated class indices or names, repeated to --num-images (default: balanced)"
    )
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--cfg-schedule", default="constant", choices=["constant", "linear", "interval"])
    p.add_argument("--cfg-interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("START", "END"))
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the blocks, head and decoder (GPU: faster batches; the first of a size compiles, "
        "seconds for token AR, up to a minute for VAR)",
    )
    p.add_argument(
        "--decode-kernel",
        default="auto",
        choices=["auto", "sdpa", "triton"],
        help="attention of one-token decoding steps (triton: GPUs; auto: triton where it applies, else sdpa)",
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA ones")
    p.add_argument("--out", default="samples", help="parent folder of the output folder")
    p.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True, help="write grid.png")
    p.add_argument("--png", action="store_true", help="write every image as images/NNNNNN.png")
    p.add_argument("--npz", action="store_true", help="write samples.npz (arr_0: uint8 N x H x W x 3)")
    p.add_argument("--device", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.num_images < 1 or args.batch_size < 1:
            raise ConfigError("--num-images and --batch-size must be at least 1")
        ckpt = resolve_checkpoint(args.checkpoint)
        use_ema = not args.no_ema and (ckpt / "ema.safetensors").is_file()
        generator = Generator.from_pretrained(ckpt, ema=use_ema)
        cfg = SamplingConfig(
            cfg_scale=args.cfg_scale, cfg_schedule=args.cfg_schedule, cfg_interval=tuple(args.cfg_interval),
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
            batch_size=args.batch_size, compile=args.compile, decode_kernel=args.decode_kernel,
        )  # fmt: skip
        labels = parse_labels(args.labels, args.num_images, generator)
        sampler = Sampler(generator, cfg, device=args.device)
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    images = sampler.sample_images(labels, progress=True)
    seconds = time.perf_counter() - t0
    out = Path(args.out) / folder_name(ckpt, cfg, args.num_images, use_ema)
    out.mkdir(parents=True, exist_ok=True)
    u8 = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    if u8.shape[-1] == 1:
        u8 = np.repeat(u8, 3, axis=-1)
    if args.grid:
        from torchvision.utils import save_image

        nrow = generator.config.num_classes if args.labels is None else 8
        save_image(images.cpu() * 0.5 + 0.5, out / "grid.png", nrow=nrow)
    if args.png:
        from PIL import Image

        (out / "images").mkdir(exist_ok=True)
        for i, im in enumerate(u8):
            Image.fromarray(im).save(out / "images" / f"{i:06d}.png")
    if args.npz:
        np.savez(out / "samples.npz", arr_0=u8)
    settings = {
        "checkpoint": str(ckpt), "ema": use_ema, "num_images": args.num_images,
        "labels": labels.tolist(), "sampling": {**vars(cfg), "cfg_interval": list(cfg.cfg_interval)},
        "device": str(sampler.device), "seconds": seconds, "images_per_s": args.num_images / seconds,
        "float_to_uint8": "round((clamp(x, -1, 1) + 1) * 127.5)",
    }  # fmt: skip
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    print(f"{args.num_images} images in {seconds:.1f} s -> {out}")
    return 0
