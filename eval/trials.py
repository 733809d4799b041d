"""Short training runs of one recipe compared at equal steps: ``results/NAME.json`` with each run's validation loss
by step (and every other validation metric it logged), its lowest and where, and the runs' validation losses at the
last step all of them evaluated.

    python eval/trials.py --runs runs/trial-a runs/trial-b --name cifar10-token-ar-trials --command "how"

Each run is named by its folder (``trial-flip-drop`` -> ``flip-drop``); nothing is computed here but the
comparison of what the runs logged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from visgen.results import write_result


def run_metrics(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = {r["step"]: r["val/loss"] for r in records if "val/loss" in r}
    train = [r for r in records if "loss" in r]
    final = json.loads((run / "final" / "metrics.json").read_text())
    best = min(val, key=val.get) if val else None
    out = {"val_loss_by_step": {str(k): v for k, v in sorted(val.items())}, "best_val_loss": val.get(best),
           "best_step": best, "steps": final["step"], "final_train_loss": train[-1]["loss"] if train else None,
           "train_images_per_s": final["train_images_per_s"]}  # fmt: skip
    others = sorted({k[len("val/") :] for r in records for k in r if k.startswith("val/") and k != "val/loss"})
    for name in others:  # every other validation metric (a feature draft's acceptance, a tokenizer's PSNR, ...)
        by_step = {str(r["step"]): r[f"val/{name}"] for r in records if f"val/{name}" in r}
        out[f"val_{name}_by_step"] = by_step
        if best is not None and str(best) in by_step:
            out[f"{name}_at_best_step"] = by_step[str(best)]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="run folders (metrics.jsonl, final/metrics.json)")
    p.add_argument("--name", required=True)
    p.add_argument("--command", help="the command that made the runs (default: this command line)")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    try:
        runs = {Path(r).name.removeprefix("trial-"): run_metrics(Path(r)) for r in args.runs}
    except (OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: cannot compare the runs: {e}", file=sys.stderr)
        return 2
    common = set.intersection(*(set(m["val_loss_by_step"]) for m in runs.values()))
    metrics: dict = {"runs": runs}
    if common:
        at = max(common, key=int)
        metrics["compared_at_step"] = int(at)
        metrics.update({f"val_loss_{name}": m["val_loss_by_step"][at] for name, m in runs.items()})
    write_result(Path(args.results_dir) / f"{args.name}.json", args.name, metrics, command=args.command)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
