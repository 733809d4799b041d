"""Fail loudly before the work, never after it, and lose nothing: bad values, bad data, bad disks, damaged
weights, divergent steps and preemption."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tests.conftest import REPO
from tests.test_engine import tiny_generator
from tests.test_tokenizers import TINY_VQ
from tests.test_trainer import TINY, run_cli
from visgen.checkpoint import CheckpointError, load_model
from visgen.cli.sample import main as sample_main
from visgen.cli.train import main as train_main
from visgen.config import ConfigError
from visgen.data import DataConfig, build_dataset
from visgen.sampling import Sampler, SamplingConfig
from visgen.tokenizers import VQTokenizer
from visgen.train.trainer import NonFiniteLossError, RunStorageError, TrainConfig, Trainer, latest_checkpoint

QUICK = ["--recipe", "generators/quickstart.yaml", "model.backbone={preset: tiny, n_layer: 1}", "train.batch_size=16"]


def tiny_cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(out_dir=str(tmp_path), steps=20, batch_size=8, num_workers=0, ckpt_every=0, log_every=0,
                eval_every=0, sample_every=0, max_bad_steps=3, lr_schedule="constant")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def weights_of(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---- the non-finite guard -------------------------------------------------------------------------------------------


class Recon(nn.Module):
    """A tokenizer task with a plain reconstruction loss; ``bad`` adds a way for a step to go wrong while the loss
    stays finite: ``update`` a parameter near float32's limit whose next update overflows, ``gradient`` an
    infinite gradient."""

    def __init__(self, bad: str | None = None):
        super().__init__()
        self.model, self.bad = VQTokenizer(TINY_VQ), bad
        self.edge = nn.Parameter(torch.tensor([3.3e38]))  # an AdamW update of lr = 3e37 takes it past 3.4e38

    def forward(self, batch, step):
        out = self.model.reconstruct(batch["image"])
        if self.bad == "gradient":
            out = InfGrad.apply(out)
        loss = (out - batch["image"]).pow(2).mean()
        if self.bad == "update":
            loss = loss - self.edge.sum()  # a finite loss (-3.3e38) and gradient (-1); the update overflows
        return loss, {"loss": loss.detach()}

    def validate(self, model, batches, acc):
        return {}

    def preview(self, model, batch):
        return batch["image"]


class InfGrad(torch.autograd.Function):
    """Identity forward (the loss stays finite); the gradient comes back infinite."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


@pytest.mark.parametrize("bad", ["update", "gradient"])
def test_a_bad_step_is_undone_and_never_checkpointed(tmp_path, cifar_train, bad):
    ds = build_dataset(DataConfig(path=cifar_train, image_size=16, limit=32))
    torch.manual_seed(0)
    task = Recon(bad)
    before = weights_of(task.model)
    cfg = tiny_cfg(tmp_path, lr=3e37 if bad == "update" else 1e-3, clip_grad=0.0 if bad == "update" else 1.0)
    with pytest.raises(NonFiniteLossError, match="weights are those after step 0") as e:
        Trainer(task, ds, ds, cfg).fit()
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step-0000000" and str(ckpt) in str(e.value)
    saved = load_file(str(ckpt / "model" / "model.safetensors"))
    for k, v in before.items():  # every update was undone: the checkpoint is the initial model, exactly
        assert torch.equal(saved[k], v), k
    assert load_file(str(ckpt / "task.safetensors"))["edge"].item() == pytest.approx(3.3e38)
    # weights files are written with the permissions of every other file (safetensors makes them 0600)
    mode = lambda p: os.stat(p).st_mode & 0o777
    assert mode(ckpt / "model" / "model.safetensors") == mode(ckpt / "model" / "config.json")
    assert mode(ckpt / "task.safetensors") == mode(ckpt / "trainer.json")


def test_a_divergent_lr_is_stopped_not_exported(tmp_path):
    r = run_cli(f"train.out_dir={tmp_path}", "train.steps=6", "train.lr=1e39")
    assert r.returncode == 2 and "train.lr must be small enough" in r.stderr
    # lr 1e30: the first update is finite (weights near 1e30), then the loss stays finite while the gradient norm
    # is infinite; those steps are undone and the run stops instead of exporting 1e30 weights with exit 0
    r = run_cli(f"train.out_dir={tmp_path}", "train.steps=6", "train.lr=1e30", "train.max_bad_steps=2")
    assert r.returncode == 2 and "2 non-finite steps in a row at step 1" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "final").exists()
    ckpt = latest_checkpoint(tmp_path)
    weights = load_file(str(ckpt / "model" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    # as the message says: that checkpoint holds the diverged weights; without it a sane lr starts afresh
    shutil.rmtree(ckpt)
    r = run_cli(f"train.out_dir={tmp_path}", "train.steps=2", "train.lr=1e-3")
    assert r.returncode == 0, r.stderr


# ---- bad values ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=0", "train.batch_size must be at least 1, got 0"),
        ("train.steps=-5", "train.steps must be at least 1, got -5"),
        ("train.lr=abc", "train.lr must be a number, got 'abc'"),
        ("train.lr=.inf", "train.lr must be a finite number above 0"),
        ("train.steps==3", "train.steps must be an integer, got '=3'"),
        ("train.betas=[0.9]", "train.betas must be a list of 2 values"),
        ("data.image_size=big", "data.image_size must be an integer"),
    ],
)
def test_config_values_are_checked_where_read(override, message, capsys):
    assert train_main(["generator", *QUICK, override]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cfg_scale": float("nan")}, "cfg_scale must be a finite number"),
        ({"cfg_scale": float("inf")}, "cfg_scale must be a finite number"),
        ({"cfg_interval": (0.8, 0.2)}, "cfg_interval must be (start, end), 0 <= start < end <= 1"),
        ({"temperature": -1.0}, "temperature must be finite and >= 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"cfg_schedule": "cosine"}, "cfg_schedule must be constant or linear or interval"),
    ],
)
def test_sampling_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        SamplingConfig(**kwargs)


def test_sample_cli_bad_values_and_devices(capsys):
    assert sample_main(["--cfg-scale", "nan", "--num-images", "2"]) == 2
    assert "cfg_scale must be a finite number" in capsys.readouterr().err
    assert sample_main(["--cfg-schedule", "interval", "--cfg-interval", "0.8", "0.2", "--num-images", "2"]) == 2
    assert "cfg_interval" in capsys.readouterr().err
    assert sample_main(["--device", "tpu9", "--num-images", "2"]) == 2
    assert "unknown device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert sample_main(["--device", "cuda", "--num-images", "2"]) == 2
        assert "no usable CUDA GPU" in capsys.readouterr().err


def test_fid_checks_inputs_and_outputs_before_sampling(tmp_path, monkeypatch, capsys):
    import visgen.cli.fid as fid

    gen = tiny_generator()
    gen.save_pretrained(tmp_path / "g")
    monkeypatch.setattr(fid, "sample_checkpoint", lambda *a, **k: pytest.fail("sampled before checking"))
    base = ["--input", str(tmp_path / "g"), "--num-samples", "4", "--no-cache"]
    assert fid.main([*base[:2], "--num-samples", "0", "--ref", "tests/data/cifar10/train"]) == 2
    assert "--num-samples must be at least 1" in capsys.readouterr().err
    assert fid.main([*base, "--ref", str(tmp_path / "nowhere")]) == 2
    assert "reference" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert fid.main([*base, "--ref", "tests/data/cifar10/train", "--report", str(tmp_path / "file" / "r.json")]) == 2
    assert "cannot write to --report" in capsys.readouterr().err
    assert fid.main([*base, "--ref", "tests/data/cifar10/train", "--cfg-scale", "nan"]) == 2
    assert "cfg_scale must be a finite number" in capsys.readouterr().err
    assert fid.main(["--input", str(tmp_path / "none"), "--ref", "tests/data/cifar10/train"]) == 2
    assert "not found" in capsys.readouterr().err


# ---- data that is all bad -----------------------------------------------------------------------------------------


def image_folder(tmp_path, good: int, corrupt: int):
    """An ImageFolder of ``good`` copies of the committed CIFAR-10 cut and ``corrupt`` files that will not decode."""
    src = sorted((REPO / "tests" / "data" / "cifar10" / "train").rglob("*.jpg"))[:good]
    root = tmp_path / "data"
    for i, f in enumerate(src):
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / f.parent.name / f"{i:04d}.jpg")
    (root / "airplane").mkdir(parents=True, exist_ok=True)
    for i in range(corrupt):
        (root / "airplane" / f"bad{i:03d}.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(200))
    return root


@pytest.mark.parametrize("cache", [True, False])
def test_data_that_is_all_bad_stops_with_a_message(tmp_path, cache, capsys):
    root = image_folder(tmp_path, good=0, corrupt=40)
    args = ["generator", *QUICK, f"data.path={root}", f"tokenizer.cache={str(cache).lower()}",
            f"train.out_dir={tmp_path / 'run'}", "train.steps=3"]  # fmt: skip
    t0 = time.perf_counter()
    assert train_main(args) == 2
    err = capsys.readouterr().err
    # the encoding pass reads all 40; an epoch reads whole batches of 16, 32 of them
    assert str(root) in err and "no usable image" in err and ("all 40 images" if cache else "32 unreadable") in err
    assert time.perf_counter() - t0 < 60  # not an endless loop of empty epochs


@pytest.mark.parametrize("cache", [True, False])
def test_skipped_images_are_counted_whichever_way_data_is_read(tmp_path, cache, capsys):
    root = image_folder(tmp_path, good=80, corrupt=10)
    out = tmp_path / "run"
    args = [
        "generator",
        *QUICK,
        f"data.path={root}",
        f"tokenizer.cache={str(cache).lower()}",
        f"train.out_dir={out}",
        "train.steps=6",
        "train.batch_size=15",
    ]  # fmt: skip  (6 steps x 15 = one epoch of 90 files)
    assert train_main(args) == 0
    summary = json.loads((out / "final" / "metrics.json").read_text())
    assert summary["skipped_images"] == 10


# ---- work that is thrown away or overwritten ------------------------------------------------------------------------


def test_sample_out_is_checked_first_and_written_atomically(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(Sampler, "sample_images", lambda *a, **k: pytest.fail("sampled before checking --out"))
    assert sample_main(["--num-images", "2", "--out", str(tmp_path / "file" / "s")]) == 2
    assert "cannot write to --out" in capsys.readouterr().err
    monkeypatch.undo()

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    assert sample_main(["--num-images", "2", "--npz", "--out", str(tmp_path / "s")]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list((tmp_path / "s").iterdir()) == []  # no half-written folder, no stray .tmp


def test_sample_folders_of_different_checkpoints_never_collide(tmp_path, capsys):
    for run in ("a", "b"):
        torch.manual_seed(ord(run))
        gen = tiny_generator(seed=ord(run))
        gen.save_pretrained(tmp_path / run / "final")
        assert sample_main(["--checkpoint", str(tmp_path / run / "final"), "--num-images", "2", "--out",
                            str(tmp_path / "s")]) == 0  # fmt: skip
    folders = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert len(folders) == 2 and folders[0].startswith("a-final-") and folders[1].startswith("b-final-")
    # a folder of other settings under the same name is not replaced silently
    settings = tmp_path / "s" / folders[0] / "settings.json"
    data = json.loads(settings.read_text())
    data["labels"] = [9, 9]
    settings.write_text(json.dumps(data))
    ckpt = ["--checkpoint", str(tmp_path / "a" / "final"), "--num-images", "2", "--out", str(tmp_path / "s")]
    assert sample_main(ckpt) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sample_main([*ckpt, "--overwrite"]) == 0
    assert json.loads(settings.read_text())["labels"] == [0, 1]


def test_unwritable_run_folder_fails_before_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert train_main(["generator", *QUICK, f"train.out_dir={tmp_path / 'file' / 'run'}"]) == 2
    assert "cannot write to train.out_dir" in capsys.readouterr().err


def test_a_failed_checkpoint_write_names_the_last_good_one(tmp_path, cifar_train, monkeypatch):
    import visgen.train.checkpoints as checkpoints

    ds = build_dataset(DataConfig(path=cifar_train, image_size=16, limit=32))
    calls = {"n": 0}
    real = checkpoints.save_tensors

    def fails_second_time(state, path):
        if path.name == "task.safetensors":
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(state, path)

    monkeypatch.setattr(checkpoints, "save_tensors", fails_second_time)
    with pytest.raises(RunStorageError, match="last good checkpoint is .*step-0000002") as e:
        Trainer(Recon(), ds, ds, tiny_cfg(tmp_path, steps=6, ckpt_every=2, lr=1e-3)).fit()
    assert "No space left" in str(e.value)
    assert latest_checkpoint(tmp_path).name == "step-0000002"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_final_is_exported_atomically_and_keeps_its_throughput(tmp_path):
    r = run_cli(f"train.out_dir={tmp_path}", "train.steps=3")
    assert r.returncode == 0, r.stderr
    first = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert first["train_images_per_s"] > 0
    # as if kill -9 struck while final/ was being replaced: a partial final.tmp and no final/
    shutil.move(tmp_path / "final", tmp_path / "final.tmp")
    (tmp_path / "final.tmp" / "model.safetensors").write_bytes(b"partial")
    r = run_cli(f"train.out_dir={tmp_path}", "train.steps=3")
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert again["train_images_per_s"] == pytest.approx(first["train_images_per_s"])
    assert not (tmp_path / "final.tmp").exists()
    load_model(tmp_path / "final")


# ---- corrupt weights ----------------------------------------------------------------------------------------------


def test_corrupt_weights_are_refused(tmp_path, capsys):
    gen = tiny_generator()
    gen.save_pretrained(tmp_path / "g")
    weights = tmp_path / "g" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 1000] = os.urandom(1000)
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt: its SHA-256 differs"):
        load_model(tmp_path / "g")
    # a folder written before checksums: loads with a note, but non-finite weights are refused by name
    gen.save_pretrained(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    del meta["sha256"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    load_model(tmp_path / "old")
    assert "no recorded checksum" in capsys.readouterr().err
    state = load_file(str(tmp_path / "old" / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[:12] = float("nan")
    save_file(state, str(tmp_path / "old" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' holds 12 non-finite"):
        load_model(tmp_path / "old")


def test_bundled_assets_carry_and_pass_their_checksums():
    for name in ("cifar10-vq", "cifar10-kl", "cifar10-token-ar", "cifar10-token-ar/tokenizer", "cifar10-classifier"):
        meta = json.loads((REPO / "visgen" / "assets" / name / "config.json").read_text())
        assert set(meta["sha256"]) == {"model.safetensors"}
        load_model(REPO / "visgen" / "assets" / name)


def test_the_bundled_token_model_reads_the_bundled_vq_tokens():
    """The bundled token model decodes through its own fine-tuned decoder (eval/swap_decoder.py): every weight that
    makes tokens is the bundled VQ's, so its tokens mean what asset:cifar10-vq's do; only the decoder differs."""
    gen, vq = load_model("asset:cifar10-token-ar"), load_model("asset:cifar10-vq")
    a, b = gen.tokenizer.state_dict(), vq.state_dict()
    assert {k.split(".")[0] for k in b if not torch.equal(a[k], b[k])} == {"decoder", "post_quant_conv"}


def test_a_damaged_checkpoint_is_not_resumed(tmp_path):
    r = run_cli(f"train.out_dir={tmp_path}", "train.steps=2", "train.ckpt_every=1")
    assert r.returncode == 0, r.stderr
    opt = tmp_path / "checkpoints" / "step-0000002" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:-100])
    r = run_cli(f"train.out_dir={tmp_path}", "train.steps=3")
    assert r.returncode == 2 and "optimizer.pt is missing or differs" in r.stderr


def test_a_checkpoint_of_another_model_is_not_resumed(tmp_path):
    """A run folder left by another model (here: a wider tokenizer) is refused with what differs, not a copy error."""
    r = run_cli(f"train.out_dir={tmp_path}", "train.steps=2", "train.ckpt_every=1")
    assert r.returncode == 0, r.stderr
    r = run_cli(f"train.out_dir={tmp_path}", "train.steps=3", "model.channels=16")
    assert r.returncode == 2 and "holds another model than this run's" in r.stderr and "train.out_dir" in r.stderr


# ---- preemption ---------------------------------------------------------------------------------------------------


def wait_for_steps(log, n: int, proc, timeout: float = 120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.is_file() and len(log.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    pytest.fail("training did not start")


def popen_train(out, *extra, nproc: int = 1):
    args = ["train.py", "tokenizer", "--recipe", "tokenizers/quickstart.yaml", *TINY, f"train.out_dir={out}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc > 1:
        env["ACCELERATE_USE_CPU"] = "1"
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_sigterm_checkpoints_and_resumes_exactly(tmp_path):
    proc = popen_train(tmp_path / "b", "train.steps=1000", "train.ckpt_every=0")
    wait_for_steps(tmp_path / "b" / "metrics.jsonl", 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    ckpt = latest_checkpoint(tmp_path / "b")
    assert "SIGTERM received: checkpoint of step" in err and str(ckpt) in err
    stopped = int(ckpt.name.split("-")[1])
    target = f"train.steps={stopped + 2}"
    # the rest and the straight run use the stopped run's thread count: a CPU kernel's sums depend on it
    for out in ("b", "a"):
        run = popen_train(tmp_path / out, target, "train.ckpt_every=0")
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
    a, b = (load_file(f"{tmp_path}/{x}/final/model.safetensors") for x in "ab")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_sigusr1_to_one_of_two_processes_checkpoints_both(tmp_path):
    import psutil

    proc = popen_train(tmp_path, "train.steps=1000", "train.ckpt_every=0", nproc=2)
    wait_for_steps(tmp_path / "metrics.jsonl", 2, proc)
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(c.cmdline())]
    assert len(workers) == 2
    workers[0].send_signal(signal.SIGUSR1)  # one process hears it; the step's all-reduce tells the other
    _, err = proc.communicate(timeout=180)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and "SIGUSR1 received" in err
    assert (ckpt / "rng-0.safetensors").is_file() and (ckpt / "rng-1.safetensors").is_file()
    stopped = int(ckpt.name.split("-")[1])
    proc = popen_train(tmp_path, f"train.steps={stopped + 1}", "train.ckpt_every=0", nproc=2)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    assert json.loads((tmp_path / "final" / "metrics.json").read_text())["step"] == stopped + 1


# ---- smaller ------------------------------------------------------------------------------------------------------


def test_first_log_after_resume_averages_only_its_own_steps(tmp_path):
    per_step = run_cli(f"train.out_dir={tmp_path}/a", "train.steps=4", "train.ckpt_every=0")
    assert per_step.returncode == 0
    losses = {json.loads(x)["step"]: json.loads(x)["rec_loss"] for x in (tmp_path / "a" / "metrics.jsonl").open()
              if "rec_loss" in x}  # fmt: skip
    half = run_cli(f"train.out_dir={tmp_path}/b", "train.steps=3", "train.log_every=2", "train.ckpt_every=0")
    rest = run_cli(f"train.out_dir={tmp_path}/b", "train.steps=4", "train.log_every=2", "train.ckpt_every=0")
    assert half.returncode == rest.returncode == 0
    logged = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").open() if "rec_loss" in x]
    assert logged[-1]["step"] == 4 and logged[-1]["rec_loss"] == pytest.approx(losses[4], rel=1e-5)


def test_cpu_sampling_thread_default(tmp_path, monkeypatch):
    from visgen.cli.sample import default_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    try:
        assert sample_main(["--num-images", "2", "--out", str(tmp_path), "--device", "cpu"]) == 0
        settings = json.loads(next(tmp_path.glob("*/settings.json")).read_text())
        assert settings["threads"] == default_threads() == max(1, (os.cpu_count() or 1) // 2)
    finally:
        torch.set_num_threads(threads)


class BrokenPreview(Recon):
    def preview(self, model, batch):
        raise RuntimeError("Input type (float) and bias type (c10::BFloat16) should be the same")


def test_a_failed_preview_costs_no_checkpoint(tmp_path, cifar_train, capsys):
    ds = build_dataset(DataConfig(path=cifar_train, image_size=16, limit=32))
    summary = Trainer(BrokenPreview(), ds, ds, tiny_cfg(tmp_path, steps=4, ckpt_every=2, sample_every=2, lr=1e-3)).fit()
    assert summary["metrics"] == {} and latest_checkpoint(tmp_path).name == "step-0000004"
    assert (tmp_path / "checkpoints" / "step-0000004").is_dir() and (tmp_path / "final" / "model.safetensors").is_file()
    assert "the preview at step 2 failed" in capsys.readouterr().out


def test_the_grid_fits_a_screen(tmp_path):
    from PIL import Image

    from visgen.cli.sample import grid_columns

    assert grid_columns(100, 10, None) == 10 and grid_columns(1000, 10, None) == 32 and grid_columns(7, 10, "cat") == 3
    assert sample_main(["--num-images", "30", "--grid-max", "12", "--labels", "cat", "--out", str(tmp_path)]) == 0
    w, h = Image.open(next(tmp_path.glob("*/grid.png"))).size
    assert (w, h) == (4 * 34 + 2, 3 * 34 + 2)  # 12 of the 30 images, 4 x 3 (32 px + 2 px padding)
