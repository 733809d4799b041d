"""The trainer's checkpoint functions under FSDP (two gloo processes) and without it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from visgen.train import sharding

REPO = Path(__file__).resolve().parents[1]


def test_fsdp_checkpoints_gather_and_resume_both_ways(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "tests/fsdp_worker.py", str(tmp_path / "report")]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    main, other = (json.loads((tmp_path / f"report.{i}").read_text()) for i in (0, 1))
    assert other["nonmain_empty"]  # the full state goes to the main process only
    # 2 processes on half batches each = 1 process on the whole batch, up to float sums (lr 1e-2, AdamW)
    for key in ("trained_weights", "trained_ema", "resumed_unsharded", "resumed_sharded", "resumed_sharded_ema"):
        assert main[key] < 1e-4, (key, main[key])
    assert main["trained_optimizer"] < 1e-6  # AdamW's moments gathered by name equal the unsharded ones
    assert main["gathered_loss"] < 1e-6  # one process alone evaluates on gathered weights
    assert main["foreign_refused"]


def test_optimizer_state_by_name_round_trip_and_old_positional_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    state = sharding.optimizer_state(model, model, opt)
    assert state["by_name"] and set(state["state"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for saved in (state, opt.state_dict()):  # by name, and keyed by position as checkpoints were before
        fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
        sharding.load_optimizer_state(model, model, fresh, saved)
        for p in model.parameters():
            assert torch.equal(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])
