"""Train the video classifier behind the offline video FD (``fvd_mfmnistvid``) on Moving Fashion-MNIST.

    python eval/make_moving_digits.py --fmnist data/fashion-mnist --out data/moving-fmnist
    python eval/train_video_classifier.py --data data/moving-fmnist --out visgen/assets/moving-fmnist-video-classifier

Two heads over one 3-D CNN (``visgen.metrics.video.VideoClassifier``): the first item's class and the quadrant of its
first velocity (from the file's ``velocities``), so the features need the frames in order. Augmentation: a
horizontal flip of a whole clip, its motion label flipped with it. AdamW with a one-cycle learning rate. Test
accuracies of both heads (all clips, and clips of one item, whose labels the pixels fully determine) go to
``OUT/metrics.json``: features from a weak classifier make a weak metric.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from visgen.metrics.video import VideoClassifier, VideoClassifierConfig, motion_labels


def load(path: Path, limit: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """uint8 clips (N, T, H, W), class labels, motion labels, items per clip and class names of a Moving
    Fashion-MNIST file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            clips, labels, velocities = f["clips"][:limit], f["labels"][:limit], f["velocities"][:limit]
            counts = f["counts"][:limit]
            classes = [str(c) for c in f["classes"]] if "classes" in f.files else [str(i) for i in range(10)]
    except (OSError, KeyError, ValueError) as e:
        raise SystemExit(f"error: {path}: not a Moving Fashion-MNIST file (eval/make_moving_digits.py): {e}") from None
    return torch.from_numpy(clips), torch.from_numpy(labels).long(), motion_labels(velocities), \
        torch.from_numpy(counts), classes  # fmt: skip


def as_input(clips: torch.Tensor) -> torch.Tensor:
    return clips[:, :, None].float() / 127.5 - 1.0  # (B, T, 1, H, W) in [-1, 1]


@torch.no_grad()
def accuracies(model: VideoClassifier, x, y, m, counts, device: str) -> dict[str, float]:
    """Test accuracies of both heads, over all clips and over the clips of one item (with two, which one is
    "first" is not in the pixels: those labels are partly a guess)."""
    model.eval()
    outs = [model(as_input(x[i : i + 256]).to(device)) for i in range(0, len(x), 256)]
    cls = torch.cat([o[1] for o in outs]).argmax(1).cpu() == y
    mot = torch.cat([o[2] for o in outs]).argmax(1).cpu() == m
    one = counts == 1
    return {"test_class_accuracy": cls.float().mean().item(), "test_motion_accuracy": mot.float().mean().item(),
            "test_class_accuracy_one_item": cls[one].float().mean().item(),
            "test_motion_accuracy_one_item": mot[one].float().mean().item()}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a folder with train.npz and test.npz (eval/make_moving_digits.py)")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--limit", type=int, default=None, help="use only this many training clips")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, y, m, _, classes = load(Path(args.data) / "train.npz", args.limit)
    xv, yv, mv, cv, _ = load(Path(args.data) / "test.npz", None)
    cfg = VideoClassifierConfig(num_classes=len(classes), widths=tuple(args.widths), image_size=x.shape[-1],
                                class_names=classes)  # fmt: skip
    model = VideoClassifier(cfg).to(device)
    bs = min(args.batch_size, len(x))
    steps = args.epochs * (len(x) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(steps, 1), pct_start=0.15)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - bs + 1, bs):
            idx = perm[i : i + bs]
            clips, labels, motions = x[idx], y[idx], m[idx].clone()
            flip = torch.rand(len(idx)) < 0.5  # mirrored clips move the other way along columns
            clips = torch.where(flip[:, None, None, None], clips.flip(-1), clips)
            motions[flip] ^= 1
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                _, lc, lm = model(as_input(clips).to(device))
                loss = F.cross_entropy(lc, labels.to(device)) + F.cross_entropy(lm, motions.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}", flush=True)
    seconds = time.perf_counter() - t0
    model.cpu().save_pretrained(args.out, dtype=torch.float16)  # the shipped weights; every score reads these
    model = VideoClassifier.from_pretrained(args.out)  # scored as shipped (float16 weights)
    summary = {**accuracies(model, xv, yv, mv, cv, "cpu"), "train_clips": len(x), "epochs": args.epochs,
               "train_seconds": seconds}  # fmt: skip
    (Path(args.out) / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
