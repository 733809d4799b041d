"""One ``results/NAME.json`` (+ ``NAME.png``) for a trained generator, from the files its steps wrote.

    python eval/generator_result.py --run runs/cifar10-var --samples SAMPLE_FOLDER --fd-report FD.json \
        --name cifar10-var --command "how it was made"

Training figures come from the run folder (``final/metrics.json``: steps, seconds, images/s, final validation;
``metrics.jsonl``: last logged train loss, validation loss (and bits/dim) by step), sampling speed and the grid from a ``sample.py``
output folder (``settings.json``, ``grid.png``, a video model's first GIF), FD/IS/KID/PR from ``eval/fid.py --report``
(more reports: a guidance sweep, kept beside the headline), or a video model's figures from ``eval/fvd.py --report``
(the first report's metrics as they are, a later one's with its clip length appended: ``dynamics_error_32f``) and
the ``prediction_*`` figures of ``eval/dynamics.py --context-frames`` (``--prediction-report``). Nothing is computed
here; a missing file is an error, not a gap in the result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from visgen.results import write_result


def training_metrics(run: Path) -> dict:
    final = json.loads((run / "final" / "metrics.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    val = {str(r["step"]): r["val/loss"] for r in records if "val/loss" in r}
    out = {"steps": final["step"], "train_images_per_s": final["train_images_per_s"]}
    if final.get("train_seconds") is not None:
        out["train_minutes"] = final["train_seconds"] / 60
    if train:
        out["final_train_loss"] = train[-1]["loss"]
    if val:
        out["val_loss_by_step"] = val
    last = final.get("last_metrics", final["metrics"])  # the last step's; "metrics" are the kept model's
    if "loss" in last:
        out["final_val_loss"] = last["loss"]
    if "kept_step" in final and "loss" in final["metrics"]:
        out["kept_step"], out["kept_val_loss"] = final["kept_step"], final["metrics"]["loss"]
    bpd = {str(r["step"]): r["val/bpd"] for r in records if "val/bpd" in r}  # pixel models: an exact likelihood
    if bpd:
        out["val_bpd_by_step"] = bpd
    if "bpd" in final["metrics"]:
        out["final_val_bpd"] = final["metrics"]["bpd"]
    return out


def bpd_metrics(result: Path) -> dict:
    """``test_bpd`` (class-conditional) and ``test_bpd_unconditional`` from ``eval/bpd.py --name``'s result."""
    m = json.loads(result.read_text())["metrics"]
    return {"test_bpd": m["bpd"], "test_bpd_unconditional": m["bpd_unconditional"], "test_bpd_images": m["images"],
            "test_bpd_split": m["split"]}  # fmt: skip


def sampling_metrics(folder: Path) -> dict:
    s = json.loads((folder / "settings.json").read_text())
    return {
        "sample_images_per_s": s["images_per_s"], "sample_num_images": s["num_images"],
        "sample_cfg_scale": s["sampling"]["cfg_scale"], "sample_cfg_schedule": s["sampling"]["cfg_schedule"],
        "sample_device": s["device"],
    }  # fmt: skip


def fd_metrics(report: Path) -> dict:
    r = json.loads(report.read_text())
    s = r["settings"]
    out = dict(r["metrics"])
    out.update(fd_num_images=s["num_images"], fd_reference=s["reference"], fd_sampling=s.get("sampling"))
    if "generation_images_per_s" in s:
        out["fd_generation_images_per_s"] = s["generation_images_per_s"]
    return out


def video_metrics(reports: list[str]) -> dict:
    out = {}
    for i, path in enumerate(reports):
        r = json.loads(Path(path).read_text())
        m = r["metrics"]
        suffix = "" if i == 0 else f"_{m['frames']}f"
        out.update({f"{k}{suffix}": v for k, v in m.items()})
        if i == 0:
            out["video_sampling"] = r.get("sampling")
    return out


def prediction_metrics(path: Path) -> dict:
    """The ``prediction_*`` figures of an ``eval/dynamics.py --context-frames`` result."""
    m = json.loads(path.read_text())["metrics"]
    out = {k: v for k, v in m.items() if k.startswith("prediction_")}
    if not out:
        raise KeyError(f"{path} has no prediction figures (eval/dynamics.py --context-frames K)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the training run folder (with final/ and metrics.jsonl)")
    p.add_argument("--samples", required=True, help="a sample.py output folder (settings.json, grid.png)")
    p.add_argument(
        "--fd-report",
        nargs="+",
        default=[],
        help="JSON(s) written by eval/fid.py --report: the first is the headline, the rest a guidance sweep",
    )
    p.add_argument("--video-report", nargs="+", default=[], help="JSON(s) written by eval/fvd.py --report (video)")
    p.add_argument("--bpd-report", help="a result written by eval/bpd.py --name (pixel models)")
    p.add_argument("--prediction-report", help="a result written by eval/dynamics.py --context-frames K --name "
                   "(video prediction: its prediction_* figures)")  # fmt: skip
    p.add_argument("--gif", help="the GIF to keep as results/NAME.gif (default: the samples' first clip), e.g. "
                   "eval/dynamics.py --gif's real, predicted and generated clips side by side")  # fmt: skip
    p.add_argument("--name", required=True)
    p.add_argument("--command", help="the command(s) that made the run (default: this command line)")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    run, samples = Path(args.run), Path(args.samples)
    if not args.fd_report and not args.video_report:
        p.error("give --fd-report (images) or --video-report (video)")
    try:
        fd = [fd_metrics(Path(r)) for r in args.fd_report]
        metrics = {**training_metrics(run), **sampling_metrics(samples), **(fd[0] if fd else {})}
        metrics.update(video_metrics(args.video_report))
        if len(fd) > 1:
            metrics["fd_sweep"] = fd
        if args.bpd_report:
            metrics.update(bpd_metrics(Path(args.bpd_report)))
        if args.prediction_report:
            metrics.update(prediction_metrics(Path(args.prediction_report)))
        if args.gif and not Path(args.gif).is_file():
            raise OSError(f"--gif {args.gif}: no such file")
    except (OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: cannot assemble {args.name}: {e}", file=sys.stderr)
        return 2
    out = Path(args.results_dir)
    write_result(out / f"{args.name}.json", args.name, metrics, command=args.command)
    if (samples / "grid.png").is_file():
        shutil.copyfile(samples / "grid.png", out / f"{args.name}.png")
    if args.gif:
        gifs = [Path(args.gif)]
    else:
        gifs = sorted((samples / "clips").glob("*.gif")) if (samples / "clips").is_dir() else []
    if gifs:
        shutil.copyfile(gifs[0], out / f"{args.name}.gif")
    print(json.dumps(metrics, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
