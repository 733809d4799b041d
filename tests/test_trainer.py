import json
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.conftest import REPO
from tests.test_tokenizers import TINY_VQ
from visgen.cli.train import main as train_main
from visgen.config import ConfigError, apply_overrides, load_recipe
from visgen.data import DataConfig, build_dataset
from visgen.tokenizers import VQTokenizer
from visgen.train.trainer import (
    NonFiniteLossError,
    RunLockedError,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    lr_factor,
)  # fmt: skip

TINY = [
    "model.channels=8", "model.channel_mult=[1,2]", "model.z_channels=8", "model.codebook_size=32",
    "model.codebook_dim=4", "data.image_size=16", "data.limit=64", "val.limit=16", "train.batch_size=8",
    "train.num_workers=0", "train.log_every=1", "train.lr_schedule=constant", "train.warmup_steps=2",
    "train.ema_decay=0.9", "loss.adv_weight=0.1", "loss.adv_start=2",
]  # fmt: skip


def run_cli(*args):
    cmd = [sys.executable, "train.py", "tokenizer", "--recipe", "tokenizers/quickstart.yaml", *TINY, *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_resume_is_exact(tmp_path):
    straight = run_cli(f"train.out_dir={tmp_path}/a", "train.steps=6", "train.grad_accum=2", "train.ckpt_every=0")
    assert straight.returncode == 0, straight.stderr
    half = run_cli(f"train.out_dir={tmp_path}/b", "train.steps=3", "train.grad_accum=2", "train.ckpt_every=0")
    assert half.returncode == 0, half.stderr
    rest = run_cli(f"train.out_dir={tmp_path}/b", "train.steps=6", "train.grad_accum=2", "train.ckpt_every=0")
    assert rest.returncode == 0, rest.stderr
    assert "resumed from" in rest.stdout + rest.stderr
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(f"{tmp_path}/a/final/{name}"), load_file(f"{tmp_path}/b/final/{name}")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (name, k)
    # and it really trained: the weights moved from the first checkpoint
    first = load_file(f"{tmp_path}/b/checkpoints/step-0000003/model/model.safetensors")
    assert any(not torch.equal(first[k], a[k]) for k in a if k.endswith("weight"))


def test_checkpoints_are_pruned_and_complete(tmp_path):
    r = run_cli(f"train.out_dir={tmp_path}", "train.steps=4", "train.ckpt_every=1", "train.keep_ckpts=2")
    assert r.returncode == 0, r.stderr
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step-0000003", "step-0000004"]
    assert latest_checkpoint(tmp_path).name == "step-0000004"
    (tmp_path / "checkpoints" / "step-0000005.tmp").mkdir()  # an interrupted write is never taken for a checkpoint
    assert latest_checkpoint(tmp_path).name == "step-0000004"
    assert list((tmp_path / "trackers").rglob("events.out.tfevents.*"))  # tensorboard, through accelerate
    summary = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert summary["step"] == 4 and 0 < summary["metrics"]["codebook_usage"] <= 1


class NaNAfter(nn.Module):
    """A tokenizer task whose loss turns NaN from step ``good`` on."""

    def __init__(self, good: int):
        super().__init__()
        self.model, self.good = VQTokenizer(TINY_VQ), good

    def forward(self, batch, step):
        loss = self.model.reconstruct(batch["image"]).pow(2).mean()
        return (loss * float("nan") if step >= self.good else loss), {"loss": loss.detach()}

    def validate(self, model, batches, acc):
        return {}

    def preview(self, model, batch):
        return batch["image"]


def test_nan_guard_stops_with_checkpoint(tmp_path, cifar_train):
    ds = build_dataset(DataConfig(path=cifar_train, image_size=16, limit=32))
    cfg = TrainConfig(out_dir=str(tmp_path), steps=20, batch_size=8, num_workers=0, max_bad_steps=3, ckpt_every=0,
                      log_every=0, eval_every=0, sample_every=0)  # fmt: skip
    task = NaNAfter(good=3)
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row at step 3"):
        Trainer(task, ds, ds, cfg).fit()
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step-0000003"
    weights = load_file(str(ckpt / "model" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 10) == pytest.approx(1.0) and lr_factor(cfg, 100) == pytest.approx(0.1)
    assert lr_factor(TrainConfig(steps=100, lr_schedule="constant"), 70) == 1.0


class Slow(NaNAfter):
    """A well-behaved task whose steps take at least 50 ms, so a budget of seconds holds at most a few dozen."""

    def forward(self, batch, step):
        time.sleep(0.05)
        return super().forward(batch, step)


def test_a_budget_stops_the_run_annealed_and_resumes_the_schedule(tmp_path, cifar_train):
    ds = build_dataset(DataConfig(path=cifar_train, image_size=16, limit=32))
    run = lambda minutes: Trainer(Slow(good=10**9), ds, ds, TrainConfig(
        out_dir=str(tmp_path), steps=10_000, batch_size=8, num_workers=0, lr=1e-3, min_lr_ratio=0.1, log_every=1,
        eval_every=0, sample_every=0, ckpt_every=0, budget_minutes=minutes)).fit()  # fmt: skip
    logs = lambda: [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    run(0.05)  # 3 s: it stops by itself, far short of its steps, with the cosine at its end
    first = [r for r in logs() if "lr" in r]
    summary = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert 5 < summary["step"] < 10_000 and summary["budget_seconds"] >= 3
    lrs = [r["lr"] for r in first]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > 7e-4 and lrs[-1] < 1.6e-4  # min 1e-4 at the budget's end
    run(0.05)  # resumed with the budget spent: nothing more is trained
    assert json.loads((tmp_path / "final" / "metrics.json").read_text())["step"] == summary["step"]
    run(0.1)  # a larger budget: the schedule continues from where the time left it (halfway), not from the top
    second = [r["lr"] for r in logs() if "lr" in r][len(first) :]
    assert second and 3.5e-4 < second[0] < 7.5e-4 and second[-1] < 1.6e-4
    with pytest.raises(ConfigError, match="budget_minutes"):
        TrainConfig(budget_minutes=float("nan"))


def test_recipe_and_override_errors(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    base = {"train": {"steps": 1}}
    assert apply_overrides(base, ["train.steps=5"])["train"]["steps"] == 5
    assert apply_overrides(base, ["train.lr=1e-3"])["train"]["lr"] == 0.001  # not the string YAML 1.1 gives
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(base, ["train.steps"])
    with pytest.raises(ConfigError, match="no section 'trian'"):
        apply_overrides(base, ["trian.steps=5"])
    with pytest.raises(ConfigError, match="must name a section and a field"):
        apply_overrides(base, ["steps=5"])


def test_cli_reports_errors(capsys):
    assert train_main(["tokenizer", "--recipe", "tokenizers/quickstart.yaml", "train.stepz=3"]) == 2
    assert "unknown field(s) ['stepz']" in capsys.readouterr().err
    assert train_main(["tokenizer", "--recipe", "tokenizers/quickstart.yaml", "data.path=/nowhere"]) == 2
    assert "data path not found" in capsys.readouterr().err
    assert train_main(["tokenizer", "--recipe", "tokenizers/quickstart.yaml", "model.type=magic"]) == 2
    assert "unknown tokenizer type" in capsys.readouterr().err


def test_trackers_are_chosen_and_checked(tmp_path):
    r = run_cli(f"train.out_dir={tmp_path}/a", "train.steps=2", "train.log_with=[tensorboard]")
    assert r.returncode == 0, r.stderr
    events = list((tmp_path / "a" / "trackers").rglob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "rec_loss" in acc.Tags()["scalars"]  # what metrics.jsonl holds, logged to the tracker as well
    r = run_cli(f"train.out_dir={tmp_path}/b", "train.steps=2", "train.log_with=[wandb]")
    if r.returncode != 0:  # not installed in CI: a clear message before any work
        assert "train.log_with: wandb is not installed here; pip install wandb" in r.stderr
    r = run_cli(f"train.out_dir={tmp_path}/c", "train.steps=2", "train.log_with=[neptune]")
    assert r.returncode == 2 and "unknown tracker 'neptune'" in r.stderr
    r = run_cli(f"train.out_dir={tmp_path}/d", "train.steps=2", "train.log_with=[]")
    assert r.returncode == 0 and not (tmp_path / "d" / "trackers").exists()


class ScriptedValidation(NaNAfter):
    """A well-behaved task whose validation loss after step s is ``losses[s]``."""

    def __init__(self, losses: list[float]):
        super().__init__(good=10**9)
        self.losses, self.trained = losses, 0

    def forward(self, batch, step):
        self.trained = step + 1
        return super().forward(batch, step)

    def validate(self, model, batches, acc):
        return {"loss": self.losses[self.trained]}


def scripted_run(out, losses, **kw):
    ds = build_dataset(DataConfig(path=kw.pop("data"), image_size=16, limit=16))
    cfg = TrainConfig(out_dir=str(out), batch_size=8, num_workers=0, lr=1e-3, lr_schedule="constant", eval_every=1,
                      log_every=0, sample_every=0, ckpt_every=1, keep_ckpts=20, **kw)  # fmt: skip
    torch.manual_seed(0)  # the same initial weights in every run, whatever ran in this process before
    return Trainer(ScriptedValidation(losses), ds, ds, cfg).fit()


def test_final_keeps_the_best_validation_loss(tmp_path, cifar_train):
    summary = scripted_run(tmp_path, [9, 5, 3, 4, 6, 7], steps=5, data=cifar_train)
    assert summary["kept_step"] == 2 and summary["metrics"] == {"loss": 3}
    final = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert final["step"] == 5 and final["kept_step"] == 2 and final["last_metrics"] == {"loss": 7}
    kept = tmp_path / "checkpoints" / "step-0000002" / "model"
    for name in ("model.safetensors", "ema.safetensors"):
        if (kept / name).is_file():
            a, b = load_file(str(kept / name)), load_file(str(tmp_path / "final" / name))
            assert all(torch.equal(a[k], b[k]) for k in a), name
    assert "kept_step: 2" in (tmp_path / "final" / "README.md").read_text()
    last = load_file(str(tmp_path / "checkpoints" / "step-0000005" / "model" / "model.safetensors"))
    assert any(not torch.equal(last[k], v) for k, v in load_file(str(kept / "model.safetensors")).items())


def test_early_stopping_stops_and_resumes_exactly(tmp_path, cifar_train):
    losses = [9, 5, 3, 4, 6, 7, 8, 9, 9, 9, 9]
    summary = scripted_run(tmp_path / "a", losses, steps=10, early_stop_patience=2, data=cifar_train)
    assert summary["kept_step"] == 2
    assert json.loads((tmp_path / "a" / "final" / "metrics.json").read_text())["step"] == 4  # 2 evals past the best
    again = scripted_run(tmp_path / "a", losses, steps=10, early_stop_patience=2, data=cifar_train)
    assert again["kept_step"] == 2 and latest_checkpoint(tmp_path / "a").name == "step-0000004"  # nothing more
    scripted_run(tmp_path / "b", losses, steps=3, early_stop_patience=2, data=cifar_train)  # cut, then resumed
    scripted_run(tmp_path / "b", losses, steps=10, early_stop_patience=2, data=cifar_train)
    a, b = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "b" / "final" / "metrics.json").read_text())["step"] == 4
    with pytest.raises(ConfigError, match="early_stop_patience needs train.eval_every"):
        TrainConfig(early_stop_patience=2, eval_every=0)


def test_auto_precision_and_compile_follow_the_device():
    assert TrainConfig().mixed_precision == "auto" and TrainConfig().precision(torch.device("cpu")) == "no"
    with pytest.warns(UserWarning, match="bf16 on a CPU"):
        assert TrainConfig(mixed_precision="bf16").precision(torch.device("cpu")) == "bf16"
    assert TrainConfig(mixed_precision=False).precision(torch.device("cpu")) == "no"
    auto = TrainConfig(compile="auto")  # compiles on a GPU only
    assert not auto.compiles(torch.device("cpu")) and auto.compiles(torch.device("cuda"))
    assert TrainConfig(compile=True).compiles(torch.device("cpu")) and not TrainConfig().compiles(torch.device("cuda"))
    with pytest.raises(ConfigError, match="compile"):
        TrainConfig(compile="always")


def test_a_second_run_into_a_held_folder_stops(tmp_path, cifar_train):
    ds = build_dataset(DataConfig(path=cifar_train, image_size=16, limit=16))
    cfg = TrainConfig(out_dir=str(tmp_path), steps=1, batch_size=8, num_workers=0, log_every=0, eval_every=0,
                      sample_every=0, ckpt_every=0)  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                       "since": "then"}))  # fmt: skip
        with pytest.raises(RunLockedError, match=f"in use by the run of process {holder.pid}"):
            Trainer(NaNAfter(10**9), ds, ds, cfg).fit()
        assert not (tmp_path / "final").exists()
    finally:
        holder.kill()
        holder.wait()
    Trainer(NaNAfter(10**9), ds, ds, cfg).fit()  # its process is gone: the lock is taken over
    assert (tmp_path / "final").is_dir() and not (tmp_path / "run.lock").exists()  # and released at the end


def test_graph_compile_trains_through_the_captured_loss(tmp_path, monkeypatch, cifar_train):
    """train.compile=graph: the generator's whole loss is compiled (mode reduce-overhead: CUDA graphs on a GPU) and
    runs every training step, gradients on; validation runs the eager loss; the weights come out as an eager run's.
    (Here the compile traces with AOTAutograd into eager kernels: the wiring and the trace are checked; the graphs'
    speed is bench/trainer.py's.) Settings a graph cannot serve are refused with what to use instead."""
    from tests.fsdp_worker import new_task
    from visgen.generator import Generator
    from visgen.train.generator_task import GeneratorTask, TokenDataset

    real_compile, calls = torch.compile, []

    def compile_(fn, mode):
        assert mode == "reduce-overhead"
        traced = real_compile(fn, backend="aot_eager", dynamic=False)
        return lambda *a: calls.append(torch.is_grad_enabled()) or traced(*a)

    g = torch.Generator().manual_seed(0)
    data = TokenDataset(torch.randint(0, 32, (32, 1, 8, 8), generator=g), torch.randint(0, 4, (32,), generator=g))
    weights = {}
    for mode in (False, "graph"):
        monkeypatch.setattr(torch, "compile", lambda fn, mode, dynamic: compile_(fn, mode))
        cfg = TrainConfig(out_dir=str(tmp_path / str(mode)), steps=4, batch_size=8, num_workers=0, log_every=1,
                          eval_every=2, sample_every=0, ckpt_every=0, compile=mode, lr=1e-3)  # fmt: skip
        Trainer(new_task(0), data, data, cfg).fit()
        weights[mode] = load_file(str(tmp_path / str(mode) / "final" / "model.safetensors"))
    assert calls == [True] * 4  # the four training steps; the evaluations ran eager
    assert all(torch.allclose(weights[False][k], weights["graph"][k], atol=1e-6) for k in weights[False])
    cfg = TrainConfig(out_dir=str(tmp_path / "x"), batch_size=8, num_workers=0, compile="graph")
    with pytest.raises(ConfigError, match="grad_accum=1"):
        Trainer(new_task(0), data, data, TrainConfig(**{**vars(cfg), "grad_accum": 2}))
    with pytest.raises(ConfigError, match="distillation"):
        teacher = new_task(1).model
        Trainer(GeneratorTask(Generator(teacher.config, tokenizer=teacher.tokenizer), teacher), data, data, cfg)
    ds = build_dataset(DataConfig(path=cifar_train, image_size=16, limit=16))
    with pytest.raises(ConfigError, match="trains none"):
        Trainer(NaNAfter(10**9), ds, ds, cfg)
