"""Two processes on the CPU (gloo), as ``accelerate`` runs them on several GPUs."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO
from tests.test_engine import tiny_generator
from tests.test_trainer import TINY


def launch(*args, nproc=2):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def test_generation_is_split_and_gathered_without_duplicates(tmp_path):
    gen = tiny_generator()
    gen.config.image_size = 16
    gen.save_pretrained(tmp_path / "g")
    common = ["eval/fid.py", "--input", str(tmp_path / "g"), "--ref", "tests/data/cifar10/train", "--num-samples", "11",
              "--batch-size", "4", "--no-cache", "--no-kid"]  # fmt: skip
    two = launch(*common, "--report", str(tmp_path / "two.json"))
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, *common, "--report", str(tmp_path / "one.json")], cwd=REPO, capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in ("one", "two"))
    assert b["settings"]["processes"] == 2 and b["settings"]["num_images"] == 11
    # the very same 11 images (features differ only in float rounding across thread counts)
    assert abs(a["metrics"]["fd_cifar10cls"] - b["metrics"]["fd_cifar10cls"]) < 1e-6 * a["metrics"]["fd_cifar10cls"]


def test_trainer_on_two_processes(tmp_path):
    r = launch("train.py", "tokenizer", "--recipe", "tokenizers/quickstart.yaml", *TINY, f"train.out_dir={tmp_path}",
               "train.steps=4", "train.ckpt_every=2")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    state = json.loads((tmp_path / "checkpoints" / "step-0000004" / "trainer.json").read_text())
    assert state["num_processes"] == 2
    assert (tmp_path / "checkpoints" / "step-0000004" / "rng-1.safetensors").is_file()


def test_the_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import ClusterConfig

    ddp = ClusterConfig.from_yaml_file(str(REPO / "configs/accelerate/ddp-2gpu.yaml"))
    fsdp = ClusterConfig.from_yaml_file(str(REPO / "configs/accelerate/fsdp-2gpu.yaml"))
    assert ddp.num_processes == fsdp.num_processes == 2 and str(ddp.distributed_type).endswith("MULTI_GPU")
    assert fsdp.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp.fsdp_config["fsdp_use_orig_params"]
