"""``sample.py``: images from a generator checkpoint as a grid, PNG files and/or an ADM-style ``.npz``.

The output folder is named after every sampling hyperparameter, with ``settings.json`` beside the images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from visgen import hub
from visgen.checkpoint import EMA_NAME, WEIGHTS_NAME, CheckpointError, file_sha256, read_config
from visgen.config import ConfigError
from visgen.data import DataConfig, DataError, build_dataset
from visgen.generator import Generator
from visgen.metrics import to_uint8
from visgen.results import check_writable
from visgen.sampling import Sampler, SamplingConfig
from visgen.sampling.sampler import COMPILE_MODES, HEAD_SOLVERS, resolve_device, use_compile_cache
from visgen.sampling.speculative import CSPD_RULES, METHODS

DEFAULT_CHECKPOINT = "asset:cifar10-token-ar"


def resolve_checkpoint(ref: str, kind: str = Generator.model_type) -> Path:
    """A generator folder (or one of model type ``kind``): ``asset:NAME``, a path, or a Hub id (``user/repo``)."""
    path = hub.resolve(ref)
    meta = read_config(path)
    if meta["model_type"] != kind:
        what = "generator" if kind == Generator.model_type else repr(kind)
        raise CheckpointError(f"{path} holds a {meta['model_type']!r} model; sample.py needs a {what} checkpoint here")
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


def checkpoint_label(ckpt: Path) -> str:
    """A readable name for a checkpoint folder: ``RUN-final`` for ``runs/RUN/final``, ``RUN-step-NNNNNNN`` for
    ``runs/RUN/checkpoints/step-N/model``, else the folder's own name."""
    parts = ckpt.resolve().parts
    if parts[-1] == "final" and len(parts) > 1:
        return f"{parts[-2]}-final"
    if parts[-1] == "model" and len(parts) > 3 and parts[-3] == "checkpoints":
        return f"{parts[-4]}-{parts[-2]}"
    return parts[-1]


def weights_id(ckpt: Path, ema: bool) -> str:
    """The first 8 hex digits of the SHA-256 of the weights sampled from (recorded at save time, else computed):
    two checkpoints never share a sample folder."""
    name = EMA_NAME if ema else WEIGHTS_NAME
    recorded = read_config(ckpt).get("sha256", {}).get(name)
    return (recorded or file_sha256(ckpt / name))[:8]


def folder_name(ckpt: Path, cfg: SamplingConfig, n: int, ema: bool, labels: str | None = None,
                label: str | None = None, weights: str | None = None) -> str:  # fmt: skip
    parts = [
        (label or checkpoint_label(ckpt)) + ("-ema" if ema else ""), weights or weights_id(ckpt, ema),
        f"cfg{cfg.cfg_scale:g}",
        cfg.cfg_schedule, f"T{cfg.temperature:g}", f"topk{cfg.top_k}", f"topp{cfg.top_p:g}", f"seed{cfg.seed}", f"n{n}",
    ]  # fmt: skip
    if cfg.cfg_schedule == "interval":
        parts.insert(5, f"{cfg.cfg_interval[0]:g}-{cfg.cfg_interval[1]:g}")
    if cfg.head_steps:
        parts.append(f"hs{cfg.head_steps}")
    if cfg.head_solver:
        parts.append(cfg.head_solver)
    if cfg.speculative != "none":  # exact methods draw other images than the plain loop under one seed
        parts.append(f"spec-{cfg.speculative}-g{cfg.gamma}-pre{cfg.prefill:g}")
        if cfg.speculative == "cspd":
            parts.append(cfg.cspd_rule)
        if cfg.draft:
            draft = resolve_checkpoint(
                cfg.draft, "feature-draft" if cfg.speculative == "feature" else Generator.model_type
            )
            parts.append("draft-" + weights_id(draft, (draft / EMA_NAME).is_file()))
    if labels:
        parts.append("labels-" + hashlib.sha256(labels.encode()).hexdigest()[:6])
    return "-".join(parts)


def load_context(args, generator) -> torch.Tensor:
    """The first ``--num-images`` clips of ``--context`` (video data in any format ``visgen.data`` reads), their
    first ``--context-frames`` frames, for video prediction."""
    if not generator.config.frames:
        raise ConfigError("--context gives context frames: it needs a video model (model.frames > 0)")
    k = args.context_frames
    if not 1 <= k < generator.config.frames:
        raise ConfigError(f"--context-frames must be between 1 and {generator.config.frames - 1}, got {k}")
    cfg = DataConfig(path=args.context, split=args.context_split, frames=k, image_size=generator.config.image_size,
                     channels=generator.tokenizer.image_channels)  # fmt: skip
    ds = build_dataset(cfg)
    clips = [c["image"] for c in (ds[i] for i in range(len(ds))) if c is not None][: args.num_images]
    if len(clips) < args.num_images:
        raise ConfigError(f"--context {args.context} holds {len(clips)} usable clips of {k} frames; "
                          f"--num-images asks for {args.num_images}")  # fmt: skip
    return torch.stack(clips)


CUDA_GRAPHS = {"auto": True, "unit": "unit", "loop": "loop", "off": False}  # --cuda-graph -> SamplingConfig's


def add_head_arguments(p: argparse.ArgumentParser):
    """A continuous head's sampling steps and solver (``SamplingConfig.head_steps``, ``head_solver``): sample.py,
    eval/fid.py, eval/fvd.py and eval/dynamics.py take them alike."""
    p.add_argument("--head-steps", type=int, default=0,
                   help="denoising steps of a diffusion or flow head per token (0: the recipe's; fewer: faster)")
    p.add_argument("--head-solver", default="", choices=["", *HEAD_SOLVERS],
                   help="how a continuous head takes its steps: a flow head euler or heun (two passes a step), a "
                   "diffusion head ddpm or ddim (deterministic; not with cspd); default: the recipe's")


def add_sampler_arguments(p: argparse.ArgumentParser):
    """The flags of ``SamplingConfig`` that sample.py and eval/fid.py share beyond guidance and filtering: CUDA
    graphs, a continuous head's steps and speculative decoding."""
    p.add_argument("--cuda-graph", default="auto", choices=list(CUDA_GRAPHS),
                   help="GPU: auto (one unit replayed where it applies, else the whole loop), unit, loop, or off")
    add_head_arguments(p)
    p.add_argument("--speculative", default="none", choices=["none", *METHODS],
                   help="speculative decoding: a draft model, a draft on the target's features (EAGLE-style), "
                   "speculative Jacobi decoding, or CSpD (diffusion head)")  # fmt: skip
    p.add_argument("--draft", default="", help="the draft's checkpoint folder (draft, feature, cspd)")
    p.add_argument("--gamma", type=int, default=4, help="tokens drafted per verifying pass")
    p.add_argument("--prefill", type=float, default=0.0, help="fraction of tokens drawn by the target alone first")
    p.add_argument("--cspd-rule", default="path", choices=list(CSPD_RULES),
                   help="path: every denoising step verified (exact); final: the paper's rule, the last step's "
                   "Gaussians (exact); reference: the reference code's relaxation (not exact)")  # fmt: skip


def sampler_settings(args) -> dict:
    return dict(cuda_graph=CUDA_GRAPHS[args.cuda_graph], head_steps=args.head_steps, head_solver=args.head_solver,
                speculative=args.speculative, draft=args.draft, gamma=args.gamma, prefill=args.prefill,
                cspd_rule=args.cspd_rule)  # fmt: skip


def default_threads() -> int:
    """CPU threads for sampling when neither ``--threads`` nor OMP_NUM_THREADS says: half the cores. Decoding steps
    are small, and a thread per core collapses when anything else runs (``bench/cpu_threads.py``: on 2 cores, 0.6 s
    with 2 threads and 1.5 s with 1 when idle, 1.9 / 3.3 s against 1.2 / 1.3 s beside one / two busy processes)."""
    return max(1, (os.cpu_count() or 1) // 2)


def build_parser(prog: str = "sample.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint",
        default=DEFAULT_CHECKPOINT,
        help="generator folder or Hugging Face Hub id user/repo (default: the bundled CIFAR-10 model)",
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
    add_compile_arguments(p)
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES, help="SamplingConfig.compile_mode")
    p.add_argument(
        "--decode-kernel",
        default="auto",
        choices=["auto", "sdpa", "triton"],
        help="attention of one-token decoding steps (triton: GPUs; auto: triton where it applies, else sdpa)",
    )
    add_sampler_arguments(p)
    p.add_argument("--context", help="video data whose first clips give each sample its first frames (prediction)")
    p.add_argument("--context-frames", type=int, default=0, help="how many frames of each --context clip to keep")
    p.add_argument("--context-split", default="test", help="split of --context (arrays: train.npz / test.npz)")
    p.add_argument("--frames", type=int, default=0, help="video models: clips of this many frames (more than "
                   "training: each further frame after a window of the last ones)")  # fmt: skip
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA ones")
    p.add_argument("--out", default="samples", help="parent folder of the output folder")
    p.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True, help="write grid.png")
    p.add_argument("--grid-max", type=int, default=100, help="images in grid.png at most (the first ones)")
    p.add_argument("--png", action="store_true", help="write every image as images/NNNNNN.png")
    p.add_argument("--npz", action="store_true", help="write samples.npz (arr_0: uint8 N x H x W x 3)")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder written with other settings")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU where there is one)")
    p.add_argument("--threads", type=int, help="CPU threads (default: OMP_NUM_THREADS, else half the cores)")
    return p


def main(argv: list[str] | None = None, prog: str = "sample.py") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        if args.num_images < 1 or args.grid_max < 1:
            raise ConfigError("--num-images and --grid-max must be at least 1")
        if args.threads is not None and args.threads < 1:
            raise ConfigError("--threads must be at least 1")
        ckpt = resolve_checkpoint(args.checkpoint)
        use_ema = not args.no_ema and (ckpt / EMA_NAME).is_file()
        cfg = SamplingConfig(
            cfg_scale=args.cfg_scale, cfg_schedule=args.cfg_schedule, cfg_interval=tuple(args.cfg_interval),
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
            batch_size=args.batch_size, compile=args.compile, compile_mode=args.compile_mode,
            decode_kernel=args.decode_kernel,
            **sampler_settings(args),
        )  # fmt: skip
        label = args.checkpoint.replace("/", "--") if hub.is_hub_id(args.checkpoint) else None  # a Hub id names it
        weights = weights_id(ckpt, use_ema)
        out = Path(args.out) / folder_name(ckpt, cfg, args.num_images, use_ema, args.labels, label, weights)
        if args.frames:
            out = out.with_name(out.name + f"-frames{args.frames}")
        if args.context:  # video prediction: named by the context and its length
            ref = f"{Path(args.context).resolve()}:{args.context_split}:{args.context_frames}"
            out = out.with_name(out.name + f"-ctx{args.context_frames}-" + hashlib.sha256(ref.encode()).hexdigest()[:6])
        check_writable(out.parent, "--out")
        generator = Generator.from_pretrained(ckpt, ema=use_ema)
        labels = parse_labels(args.labels, args.num_images, generator)
        context = load_context(args, generator) if args.context else None
        if args.frames and (not generator.config.frames or args.frames < generator.config.frames or args.context):
            raise ConfigError(
                f"--frames makes clips longer than training: it needs a video model, at least its {generator.config.frames}"
                " frames, and no --context"
            )
        settings = {
            "checkpoint": str(ckpt), "weights_sha256_8": weights, "ema": use_ema,
            "num_images": args.num_images, "labels": labels.tolist(),
            "sampling": {**vars(cfg), "cfg_interval": list(cfg.cfg_interval)},
        }  # fmt: skip
        if (out / "settings.json").is_file() and not args.overwrite:
            before = json.loads((out / "settings.json").read_text())
            same = all(before.get(k) == v for k, v in settings.items() if k != "sampling") and {
                k: v for k, v in before.get("sampling", {}).items() if k not in RUNTIME_ONLY
            } == {k: v for k, v in settings["sampling"].items() if k not in RUNTIME_ONLY}
            if not same:
                raise ConfigError(f"{out} holds samples of other settings; pass --overwrite to replace it")
            print(f"note: {out} holds samples of these settings; replacing them", file=sys.stderr)
        on_cpu = resolve_device(args.device).type == "cpu"
        if on_cpu and args.threads is None and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(default_threads())
        elif args.threads is not None:
            torch.set_num_threads(args.threads)
        if args.compile_cache:
            use_compile_cache(args.compile_cache)
        sampler = Sampler(generator, cfg, device=args.device, images=args.num_images)
    except (CheckpointError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.frames:
        images = sampler.sample_video(labels, args.frames, progress=True)
    else:
        images = sampler.sample_images(labels, progress=True, context=context, context_units=args.context_frames)
    seconds = time.perf_counter() - t0
    settings.update({"device": str(sampler.device), "threads": torch.get_num_threads(), "seconds": seconds,
                     "images_per_s": args.num_images / seconds,
                     "float_to_uint8": "round((clamp(x, -1, 1) + 1) * 127.5)"})  # fmt: skip
    if sampler.speculative is not None:
        settings["speculative_stats"] = sampler.speculative.stats
    try:
        write_outputs(out, images, settings, args, generator.config.num_classes)
    except OSError as e:
        print(f"error: could not write the samples to {out}: {e.strerror or e} (nothing was left half-written; "
              "free space or choose another --out and rerun: the same seed gives the same images)", file=sys.stderr)  # fmt: skip
        return 1
    print(f"{args.num_images} images in {seconds:.1f} s -> {out}")
    return 0


def grid_columns(n: int, num_classes: int, labels: str | None) -> int:
    """A near-square grid; class-balanced samples (the default labels) put one class per column when that fits."""
    square = math.ceil(math.sqrt(n))
    if labels is None and num_classes and n >= num_classes and n / num_classes <= 2 * num_classes:
        return num_classes
    return square


def add_compile_arguments(p: argparse.ArgumentParser):
    """``--compile`` / ``--no-compile`` (default: ``auto``, SamplingConfig.compile) and ``--compile-cache``."""
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default="auto",
        help="torch.compile the blocks, head and decoder (GPU: faster batches; the first of a size compiles, seconds "
        "for token AR, up to a minute for VAR). Default: auto, on for jobs of 10k images or more of a token or VAR "
        "model on a GPU, where the compile repays itself",
    )  # fmt: skip
    p.add_argument("--compile-cache", metavar="DIR", help="keep compiled graphs in DIR for later runs to reuse "
                   "(default: torch's, /tmp/torchinductor_USER)")  # fmt: skip


# settings that change speed, not the images' law
RUNTIME_ONLY = {"batch_size", "cuda_graph", "compile", "compile_mode", "decode_kernel", "dtype"}


def write_clips(folder: Path, clips: torch.Tensor, args):
    """A video model's samples: ``clips/NNNNNN.gif`` (animated, 8 frames/s), ``grid.png`` (a clip a row, its frames
    along it; at most ``--grid-max`` clips), ``samples.npz`` with ``--npz`` (``arr_0``: uint8 N x T x H x W x 3)."""
    from PIL import Image

    u8 = to_uint8(clips.flatten(0, 1)).unflatten(0, clips.shape[:2]).permute(0, 1, 3, 4, 2).cpu().numpy()
    if u8.shape[-1] == 1:
        u8 = np.repeat(u8, 3, axis=-1)
    (folder / "clips").mkdir()
    for i, clip in enumerate(u8):
        frames = [Image.fromarray(f) for f in clip]
        frames[0].save(folder / "clips" / f"{i:06d}.gif", save_all=True, append_images=frames[1:], duration=125, loop=0)
    if args.grid:
        shown = u8[: args.grid_max]
        n, t, h, w, c = shown.shape
        Image.fromarray(shown.transpose(0, 2, 1, 3, 4).reshape(n * h, t * w, c)).save(folder / "grid.png")
    if args.npz:
        np.savez(folder / "samples.npz", arr_0=u8)


def write_outputs(out: Path, images: torch.Tensor, settings: dict, args, num_classes: int):
    """Everything goes to ``out.tmp`` first and is renamed into place when complete: a full disk or an interrupted
    run leaves no half-written folder, and an older folder of these settings stays until the new one is whole."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        if images.dim() == 5:
            write_clips(tmp, images, args)
            (tmp / "settings.json").write_text(json.dumps(settings, indent=2))
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
            return
        u8 = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
        if u8.shape[-1] == 1:
            u8 = np.repeat(u8, 3, axis=-1)
        if args.grid:
            from torchvision.utils import save_image

            shown = images[: args.grid_max].cpu()
            save_image(shown * 0.5 + 0.5, tmp / "grid.png", nrow=grid_columns(len(shown), num_classes, args.labels))
        if args.png:
            from PIL import Image

            (tmp / "images").mkdir()
            for i, im in enumerate(u8):
                Image.fromarray(im).save(tmp / "images" / f"{i:06d}.png")
        if args.npz:
            np.savez(tmp / "samples.npz", arr_0=u8)
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
