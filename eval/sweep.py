"""Sampling settings of one checkpoint compared by the harness: ``results/NAME.json`` with each setting's FD, IS,
precision, recall and copy rate, the setting of the lowest FD, and the sampling settings each report recorded.

    for s in "--cfg-scale 2" "--cfg-scale 4 --cfg-schedule linear"; do
      python eval/fid.py --input CKPT --ref DATA --report sweep/"$(echo $s | tr -d ' -')".json $s
    done
    python eval/sweep.py --reports sweep/*.json --name cifar10-token-ar-sampling --command "how"

Each setting is named by its report's file name (``cfg4cfgschedulelinear.json`` -> ``cfg4cfgschedulelinear``);
nothing is computed here but the comparison of what ``eval/fid.py --report`` wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from visgen.results import write_result

KEPT = ("fd", "is", "precision", "recall")  # metric prefixes kept per setting, beside the memorisation report's


def setting_metrics(report: Path) -> dict:
    r = json.loads(report.read_text())
    m = r["metrics"]
    out = {k: v for k, v in m.items() if k.split("_")[0] in KEPT and not k.endswith("_std")}
    out.update({k: m[k] for k in ("copy_rate", "copy_rate_holdout") if k in m})
    out["sampling"] = r["settings"].get("sampling")
    out["num_images"] = r["settings"]["num_images"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reports", nargs="+", required=True, help="JSONs written by eval/fid.py --report")
    p.add_argument("--name", required=True)
    p.add_argument("--command", help="the command(s) that made the reports (default: this command line)")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    try:
        settings = {Path(r).stem: setting_metrics(Path(r)) for r in args.reports}
    except (OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: cannot compare the reports: {e}", file=sys.stderr)
        return 2
    fd_key = {name: next((k for k in m if k.startswith("fd_")), None) for name, m in settings.items()}
    scored = {name: settings[name][k] for name, k in fd_key.items() if k}
    metrics: dict = {"settings": settings}
    if scored:
        best = min(scored, key=scored.get)
        metrics.update(best_setting=best, best_fd=scored[best], best_fd_metric=fd_key[best])
    write_result(Path(args.results_dir) / f"{args.name}.json", args.name, metrics, command=args.command)
    print(json.dumps({k: v for k, v in metrics.items() if k != "settings"} | {"fd": scored}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
