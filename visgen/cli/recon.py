"""Reconstruction quality of a tokenizer on a held-out set: PSNR, SSIM, codebook usage, and a recon grid.

python eval/tokenizer_recon.py CHECKPOINT --data data/cifar10/test --name cifar10-vq-tokenizer
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from visgen.checkpoint import CheckpointError, load_model
from visgen.data import DataConfig, DataError, build_dataset, collate
from visgen.metrics import psnr, ssim, to_uint8
from visgen.metrics.fidelity import Extractor, score, statistics
from visgen.results import write_result


@torch.no_grad()
def evaluate(model, loader, device, extractor: Extractor | None = None) -> tuple[dict, torch.Tensor]:
    """PSNR, SSIM, codebook usage and, with an extractor, reconstruction FD against the originals."""
    sums, n = torch.zeros(2, dtype=torch.float64), 0
    originals, recons = [], []
    used = torch.zeros(max(model.vocab_size, 1), dtype=torch.bool)
    grid = None
    for batch in loader:
        x = batch["image"].to(device)
        tokens = model.encode(x)
        recon = model.decode(tokens).float().clamp(-1, 1)
        sums += torch.stack([psnr(recon, x).sum(), ssim(recon, x).sum()]).double().cpu()
        n += len(x)
        if model.discrete:
            used[tokens.flatten().cpu()] = True
        if grid is None:
            grid = torch.cat([x[:32], recon[:32]]).cpu()
        if extractor is not None:
            originals.append(to_uint8(x).permute(0, 2, 3, 1).cpu())
            recons.append(to_uint8(recon).permute(0, 2, 3, 1).cpu())
    metrics = {"psnr": sums[0].item() / n, "ssim": sums[1].item() / n, "images": n}
    if model.discrete:
        metrics["codebook_usage"] = used.float().mean().item()
    else:
        metrics["scaling_factor"] = float(model.scaling_factor)
    if extractor is not None:
        orig, rec = torch.cat(originals), torch.cat(recons)
        if orig.shape[-1] == 1:
            orig, rec = orig.expand(-1, -1, -1, 3), rec.expand(-1, -1, -1, 3)
        ref = extractor.features(orig, device)["fd"]
        scores, _ = score(rec, extractor, device, statistics(ref), None, kid=False, prc=False, isc=False)
        metrics.update({"r" + k: v for k, v in scores.items()})  # rfd_cifar10cls: reconstruction FD
    return metrics, grid


def main(argv=None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="tokenizer model folder (a run's final/ or checkpoints/step-N/model)")
    p.add_argument("--data", required=True, help="held-out images (any visgen data path)")
    p.add_argument("--split", default="test")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--ema", action="store_true", help="use the EMA weights")
    p.add_argument("--name", help="write results/NAME.json and results/NAME.png")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--fd-extractor", help="also report reconstruction FD with this extractor (e.g. cifar10cls)")
    p.add_argument("--fd-extractor-weights", help="weights folder for --fd-extractor instead of the bundled one")
    p.add_argument("--extra-metrics", help="JSON file whose top-level numbers are added (e.g. a run's metrics.json)")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = load_model(args.checkpoint, ema=args.ema).to(device).eval()
        cfg = DataConfig(path=args.data, split=args.split, image_size=args.image_size, channels=model.image_channels)
        ds = build_dataset(cfg)
    except (CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, collate_fn=collate, num_workers=4)
    extractor = Extractor(args.fd_extractor, args.fd_extractor_weights) if args.fd_extractor else None
    metrics, grid = evaluate(model, loader, device, extractor)
    if args.extra_metrics:
        extra = json.loads(Path(args.extra_metrics).read_text())
        metrics.update({k: v for k, v in extra.items() if isinstance(v, (int, float))})
    print(json.dumps(metrics))
    if args.name:
        from torchvision.utils import save_image

        write_result(Path(args.results_dir) / f"{args.name}.json", args.name, metrics)
        save_image(grid * 0.5 + 0.5, Path(args.results_dir) / f"{args.name}.png", nrow=8)
    return 0


if __name__ == "__main__":
    sys.exit(main())
