"""Tokenizer layouts compared on their reconstructions: ``results/NAME.json`` with each layout's tokens, training
steps and what ``visgen recon`` reported (PSNR, SSIM, codebook usage, rFD), the layout of the lowest rFD, and each
layout's rFD over the baseline's (below 1: better than it).

    python eval/tokenizer_recon.py runs/a/final --data DATA/test --fd-extractor cifar10cls --name a --results-dir r \
        --extra-metrics runs/a/final/metrics.json                      # and so for b
    python eval/layouts.py --layout a r/a.json runs/a/final --layout b r/b.json runs/b/final --baseline a \
        --name layouts

Nothing is computed here but the tokens (from each checkpoint's scales) and the comparison;
``eval/gpu/band_layouts.sh`` makes the reports of the frequency-band layouts against the multi-scale VQ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from visgen.checkpoint import CheckpointError, load_model
from visgen.results import write_result

KEPT = ("psnr", "ssim", "codebook_usage", "step", "train_seconds")


def layout_metrics(report: Path, checkpoint: Path) -> dict:
    m = json.loads(report.read_text())["metrics"]
    out = {k: m[k] for k in KEPT if k in m}
    out.update({k: v for k, v in m.items() if k.startswith("rfd_")})
    model = load_model(checkpoint)
    out["tokens"] = sum(s * s for s in model.scales)
    out["scales"] = list(model.scales)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", nargs=3, action="append", required=True, metavar=("NAME", "REPORT", "CHECKPOINT"),
                   help="a layout's name, the JSON visgen recon --name wrote for it, its tokenizer folder")  # fmt: skip
    p.add_argument("--baseline", required=True, help="the layout the others are compared with")
    p.add_argument("--fd", default="rfd_cifar10cls", help="the reconstruction FD compared")
    p.add_argument("--name", required=True)
    p.add_argument("--command", help="the command(s) that made the reports (default: this command line)")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    try:
        layouts = {name: layout_metrics(Path(r), Path(c)) for name, r, c in args.layout}
    except (OSError, KeyError, json.JSONDecodeError, CheckpointError) as e:
        print(f"error: cannot read a layout's report or checkpoint: {e}", file=sys.stderr)
        return 2
    if args.baseline not in layouts:
        print(f"error: --baseline {args.baseline} is not among the layouts {sorted(layouts)}", file=sys.stderr)
        return 2
    missing = [n for n, m in layouts.items() if args.fd not in m]
    if missing:
        print(
            f"error: no {args.fd} in the reports of {missing} (run visgen recon with --fd-extractor)", file=sys.stderr
        )
        return 2
    base = layouts[args.baseline][args.fd]
    for m in layouts.values():
        m[f"{args.fd}_over_baseline"] = m[args.fd] / base
    others = {n: m for n, m in layouts.items() if n != args.baseline}
    best = min(others or layouts, key=lambda n: layouts[n][args.fd])
    metrics = {"layouts": layouts, "baseline": args.baseline, f"best_{args.fd}_layout": best,
               f"best_{args.fd}_over_baseline": layouts[best][f"{args.fd}_over_baseline"]}  # fmt: skip
    path = write_result(Path(args.results_dir) / f"{args.name}.json", args.name, metrics, args.command)
    for n, m in layouts.items():
        print(f"{n}: {m['tokens']} tokens, PSNR {m.get('psnr', float('nan')):.2f}, {args.fd} {m[args.fd]:.4f} "
              f"({m[f'{args.fd}_over_baseline']:.3f} x {args.baseline})")  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
