"""How much of each frequency band survives its token grid: the latents of a VQ's encoder on real images, each low-pass
of bands 0..k (the content band k quantises) resampled to band k's grid and back, under ``resample: spectral`` and
``resample: area`` of the frequency-band tokenizer; the relative L2 lost per band (no quantisation: resampling alone).

    python eval/band_roundtrip.py --data tests/data/cifar10 --name freqvq-band-roundtrip

Reports ``lost_{resample}_band{k}`` for every band but the last (the last is the latent's own grid) and the grids.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from visgen.checkpoint import load_model
from visgen.config import ConfigError
from visgen.data import DataConfig, DataError, build_dataset, collate
from visgen.nn.resize import resize
from visgen.results import metrics_line, write_result
from visgen.tokenizers import FrequencyVQConfig, FrequencyVQTokenizer


def band_losses(latents: torch.Tensor, edges: tuple[float, ...], resample: str) -> tuple[list[float], tuple]:
    """Relative L2 lost by each band's round trip through its grid, and the grids (``latents``: (N, D, S, S))."""
    cfg = FrequencyVQConfig(channels=8, channel_mult=(1, 2), z_channels=8, codebook_size=2, codebook_dim=4,
                            band_edges=edges, latent_size=latents.shape[-1], resample=resample)  # fmt: skip
    tok = FrequencyVQTokenizer(cfg).double()  # only its band masks and resampling are used
    lost = []
    for k, side in enumerate(tok.scales[:-1]):
        band = tok._filter(latents, tok.lowpass[k])
        back = resize(resize(band, side, tok.down_mode), latents.shape[-1], tok.up_mode)
        lost.append(((back - band).norm() / band.norm()).item())
    return lost, tok.scales


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="images (any visgen data path)")
    p.add_argument("--split", default="test")
    p.add_argument("--vq", default="visgen/assets/cifar10-vq", help="the VQ whose encoder gives the latents")
    p.add_argument("--edges", type=float, nargs="+", default=[0.0625, 0.125, 0.25, 0.5])
    p.add_argument("--limit", type=int, default=1000, help="at most this many images")
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    try:
        vq = load_model(args.vq).eval()
        ds = build_dataset(DataConfig(path=args.data, split=args.split, image_size=32, limit=args.limit))
        images = collate([ds[i] for i in range(len(ds))])["image"]
    except (ConfigError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with torch.no_grad():
        latents = vq.quant_conv(vq.encoder(images)).double()
    metrics = {"images": len(images), "latent_side": latents.shape[-1], "band_edges": list(args.edges)}
    for resample in ("spectral", "area"):
        lost, grids = band_losses(latents, tuple(args.edges), resample)
        metrics[f"grids_{resample}"] = list(grids)
        metrics.update({f"lost_{resample}_band{k}": v for k, v in enumerate(lost)})
    print(metrics_line(metrics))
    if args.name:
        write_result(Path(args.results_dir) / f"{args.name}.json", args.name, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
