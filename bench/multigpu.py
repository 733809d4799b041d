"""The trainer on 1 and on 2 processes at the same per-process batch (data parallel through accelerate): tokens/s of
each and the scaling efficiency, tokens/s on 2 over twice tokens/s on 1 (``ddp_scaling_efficiency``, a fraction, at
the first batch size). A GPT-B token model as in bench/token_ar.py; the output of ``accelerate env`` is recorded.

    python bench/multigpu.py --name bench-multigpu        # a host with 2 GPUs: launches both runs itself
    python bench/multigpu.py --tiny --cpu --train-batches 4   # a check on the CPU (gloo processes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import Record, parser, setup
from token_ar import build
from trainer import trainer_throughput


def worker(args):
    """One launched process: the trainer's throughput at each batch; the main process writes them to ``--worker``."""
    from accelerate import PartialState

    state = PartialState()
    gen, _ = setup(args, build, Record(None))
    figures = {}
    for bs in args.train_batches:
        figures[str(bs)] = trainer_throughput(gen, bs, args.steps, state.device)[0]
    if state.is_main_process:
        Path(args.worker).write_text(json.dumps(figures))


def launch(procs: int, args, out: Path) -> dict:
    """``procs`` processes through torch's launcher (what ``accelerate launch`` runs for one host); accelerate reads
    the process group from its environment, the trainer sets bf16 on GPUs."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", __file__,
           "--worker", str(out), "--steps", str(args.steps), "--train-batches", *map(str, args.train_batches),
           *(["--tiny"] if args.tiny else [])]  # fmt: skip
    env = {**os.environ, **({"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"} if args.cpu else {})}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the {procs}-process run failed:\n{r.stderr[-3000:]}")
    return json.loads(out.read_text())


def main():
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per run")
    p.add_argument("--cpu", action="store_true", help="gloo processes on the CPU (a check of the script)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if not args.cpu and torch.cuda.device_count() < 2:
        raise SystemExit(f"this benchmark needs 2 GPUs; this host has {torch.cuda.device_count()} (--cpu: a CPU check)")
    rec = Record(args.name)
    env = subprocess.run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "env"], capture_output=True,
                         text=True).stdout  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        one, two = (launch(n, args, Path(tmp) / f"{n}.json") for n in (1, 2))
    for i, bs in enumerate(args.train_batches):
        rec.add(f"train_1proc_b{bs}_tokens_per_s", one[str(bs)], ".0f")
        rec.add(f"train_2proc_b{bs}_tokens_per_s", two[str(bs)], ".0f")
        eff = two[str(bs)] / (2 * one[str(bs)])
        rec.add(f"ddp_scaling_efficiency_b{bs}", eff, ".3f")
        if i == 0:
            rec.add("ddp_scaling_efficiency", eff, ".3f")
    rec.add("accelerate_env", env.strip())


if __name__ == "__main__":
    main()
