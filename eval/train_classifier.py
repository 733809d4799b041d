"""Train the classifier behind the offline FD / IS features (``cifar10cls``, ``fmnistcls``).

    python eval/train_classifier.py --data data/cifar10/train --val data/cifar10/test \
        --out visgen/assets/cifar10-classifier --epochs 15

The whole training set is decoded once into memory; augmentation (random crop with 4-pixel padding, horizontal
flip) runs on the batch. SGD with Nesterov momentum and a one-cycle learning rate; bf16 on a GPU. The test accuracy
is written to ``OUT/metrics.json``: features from a weak classifier make a weak metric.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from visgen.data import DataConfig, build_dataset, collate
from visgen.metrics.classifier import Classifier, ClassifierConfig


def load_all(path: str, split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    ds = build_dataset(DataConfig(path=path, split=split, image_size=32, channels=3, limit=limit))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=1000, collate_fn=collate, num_workers=min(8, max(1, len(ds) // 5000))
    )
    batches = [b for b in loader if len(b["image"])]
    return torch.cat([b["image"] for b in batches]), torch.cat([b["label"] for b in batches]), list(ds.classes)


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random 4-pixel-padded crops and horizontal flips, per image, on the device."""
    B, _, H, W = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx, dy = torch.randint(0, 9, (B,), device=x.device), torch.randint(0, 9, (B,), device=x.device)
    rows = (dy[:, None] + torch.arange(H, device=x.device))[:, :, None].expand(B, H, W)
    cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, :].expand(B, H, W)
    out = padded[torch.arange(B, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(B, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@torch.no_grad()
def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor, device: str) -> float:
    model.eval()
    correct = sum(
        (model(x[i : i + 1000].to(device))[1].argmax(1).cpu() == y[i : i + 1000]).sum().item()
        for i in range(0, len(x), 1000)
    )
    return correct / len(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--val-split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--widths", type=int, nargs=3, default=(64, 128, 256))
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="use only this many training images")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, y, classes = load_all(args.data, args.split, args.limit)
    xv, yv, _ = load_all(args.val, args.val_split, None)
    model = Classifier(
        ClassifierConfig(num_classes=len(classes), widths=tuple(args.widths), blocks=args.blocks, class_names=classes)
    ).to(device)
    args.batch_size = min(args.batch_size, len(x))
    steps = args.epochs * (len(x) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(steps, 1), pct_start=0.25)
    x_dev, y_dev = x.to(device), y.to(device)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x), device=device)
        for i in range(0, len(x) - args.batch_size + 1, args.batch_size):
            idx = perm[i : i + args.batch_size]
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = F.cross_entropy(model(augment(x_dev[idx]))[1], y_dev[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}", flush=True)
    seconds = time.perf_counter() - t0
    acc = accuracy(model, xv, yv, device)
    model.cpu().save_pretrained(args.out, dtype=torch.float16)  # the shipped weights; every score reads these
    summary = {"test_accuracy": acc, "train_images": len(x), "epochs": args.epochs, "train_seconds": seconds}
    (Path(args.out) / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
