"""The trainer's checkpoint functions under FSDP (two gloo processes) and without it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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


def test_the_trainer_under_accelerates_fsdp_matches_ddp_and_resumes_anywhere(tmp_path):
    """The trainer's FSDP path end to end (accelerate's plugin; tests/fsdp_trainer.py puts it on CPU processes):
    2 sharded processes, checkpointed at step 2 and resumed, end where 2 data-parallel processes end; the sharded
    checkpoint then resumes on 1 process without FSDP."""
    fsdp = {"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "FULL_SHARD", "FSDP_USE_ORIG_PARAMS": "true",
            "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_TRANSFORMER_CLS_TO_WRAP": "Block",
            "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "FSDP_SYNC_MODULE_STATES": "false"}  # fmt: skip
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    common = ["generator", "--recipe", "generators/quickstart.yaml", "train.log_every=1", "train.ema_decay=0.9",
              "train.eval_every=0", "train.sample_every=0", "train.num_workers=0", "train.val_images=16",
              "train.ckpt_every=2", "data.limit=64", "tokenizer.cache=false"]  # fmt: skip

    def run(script, out, steps, procs=2, extra_env=None):
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        env = {**base, **({"ACCELERATE_USE_CPU": "1"} if procs > 1 else {}), **(extra_env or {})}
        cmd = [*(launch if procs > 1 else [sys.executable]), script, *common, f"train.out_dir={out}",
               f"train.steps={steps}"]  # fmt: skip
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout + r.stderr

    sharded, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    log = run("tests/fsdp_trainer.py", sharded, 2, extra_env=fsdp)
    assert "FSDP.state_dict_type" in log  # the trainer took the sharded path
    assert "resumed from" in run("tests/fsdp_trainer.py", sharded, 4, extra_env=fsdp)
    run("train.py", ddp, 4)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = (load_file(str(d / "checkpoints" / "step-0000004" / "model" / name)) for d in (sharded, ddp))
        assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
    losses = [[json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (sharded, ddp)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    log = run("train.py", sharded, 5, procs=1)
    assert "resuming a 2-process run on 1" in log and (sharded / "final" / "ema.safetensors").is_file()
