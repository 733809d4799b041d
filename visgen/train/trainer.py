"""One accelerate trainer for every visgen model: tokenizers and generators alike.

A *task* is an ``nn.Module`` that owns the model being trained (``task.model``, which has ``save_pretrained``)
plus anything that trains beside it (a discriminator). It implements

- ``forward(batch, step) -> (loss, logs)``: the training loss of one micro-batch;
- ``validate(model, batches) -> metrics``: validation metrics, also run before each checkpoint;
- ``preview(model, batch) -> images``: a (N, C, H, W) batch in [-1, 1] saved as a PNG grid.

The trainer owns everything else: mixed precision, gradient accumulation, clipping, EMA, the learning-rate
schedule, logging, checkpoints written atomically and checksummed, exact resume, checkpoint-and-exit on SIGTERM /
SIGUSR1, and the non-finite guard (an update is kept only when its loss, gradient norm and resulting weights are
finite on every process; otherwise it is undone).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, DistributedType
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from visgen.checkpoint import CheckpointError, check_finite, file_sha256, save_tensors
from visgen.config import ConfigError, check, finite
from visgen.data import DataError, batch_size_of, collate
from visgen.model_card import write_card
from visgen.results import check_writable
from visgen.train import sharding
from visgen.train.ema import EMA


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many non-finite steps in a row."""


class RunStorageError(RuntimeError):
    """The run folder cannot be written (read-only, missing, full disk)."""


class Preempted(RuntimeError):
    """SIGTERM or SIGUSR1 arrived: a checkpoint was written and the run stopped; rerunning resumes it."""

    exit_code = 75  # EX_TEMPFAIL: "try again later", which a requeued job does


@dataclass
class TrainConfig:
    """Trainer settings; steps are optimizer steps (one per ``grad_accum`` micro-batches).

    out_dir: run folder (checkpoints/, samples/, metrics.jsonl, final/).
    steps: optimizer steps to train for.
    batch_size: images per micro-batch per process; the global batch is batch_size x grad_accum x processes.
    grad_accum: micro-batches per optimizer step.
    lr, weight_decay, betas: AdamW.
    warmup_steps: linear warm-up from 0, in optimizer steps.
    lr_schedule: ``cosine`` (to ``min_lr_ratio`` x lr at ``steps``, or at the end of ``budget_minutes``) or
        ``constant`` after warm-up.
    clip_grad: max global gradient norm; 0 turns clipping off (the norm is still checked for being finite).
    ema_decay: EMA of the model's weights, used for validation, previews and the exported model; 0 turns it off.
    mixed_precision: ``no``, ``bf16`` or ``fp16`` (fp16 uses a loss scaler; YAML's bare ``no`` reads as false).
    seed: seeds initialisation, data order and augmentation.
    num_workers: data-loader worker processes.
    log_every, eval_every, sample_every, ckpt_every: periods in optimizer steps (0 turns one off).
    keep_ckpts: how many checkpoints to keep; older ones are pruned after a new one is complete.
    val_images: images used for validation (0: the whole validation set).
    max_bad_steps: steps in a row whose loss, gradient norm or updated weights were non-finite (each one undone)
        after which the run stops with a checkpoint of the last good weights.
    resume: continue from the newest checkpoint in ``out_dir`` if there is one.
    time_limit_minutes: stop early, with a checkpoint and the final export, after this much wall time (0: none).
    budget_minutes: minutes of training in all, summed over the run's resumes (0: none): the run stops there, with
        its checkpoint and export, and the cosine schedule decays over this time instead of over ``steps`` (which
        still caps the run), so a run cut by time ends annealed, whatever speed the machine has. The time is the
        training loop's wall time (validation included), the same on every process (their mean, agreed on at each
        step's one sync); a step's learning rate follows the time agreed at the step before. A resumed run
        continues the schedule where the time left it (with time in the schedule, a run is not bit-for-bit
        repeatable as a run of steps is). Opt-in: in CPU proxies of the token recipe it raised held-out loss
        (``results/budget-schedule-cpu.json``).
    compile: ``torch.compile`` the transformer blocks of the model (regional: one compile serves every block).
    activation_checkpointing: recompute each transformer block in the backward pass instead of storing its
        activations (about a third more compute for a fraction of the memory: larger batches fit).
    log_with: trackers to log to through accelerate (``[tensorboard, wandb, mlflow, ...]``, each needs its package;
        ``[]``: none); default tensorboard when it is installed. ``metrics.jsonl`` is written whatever this says.
    """

    out_dir: str = "runs/default"
    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    clip_grad: float = 1.0
    ema_decay: float = 0.0
    mixed_precision: str | bool = "no"
    seed: int = 0
    num_workers: int = 2
    log_every: int = 50
    eval_every: int = 500
    sample_every: int = 500
    ckpt_every: int = 500
    keep_ckpts: int = 2
    val_images: int = 1000
    max_bad_steps: int = 5
    resume: bool = True
    time_limit_minutes: float = 0.0
    budget_minutes: float = 0.0
    compile: bool = False
    activation_checkpointing: bool = False
    log_with: list[str] | None = None

    def __post_init__(self):
        if self.mixed_precision is False:
            self.mixed_precision = "no"
        check(self.mixed_precision in ("no", "bf16", "fp16"), "mixed_precision", "no, bf16 or fp16",
              self.mixed_precision)  # fmt: skip
        check(self.lr_schedule in ("cosine", "constant"), "lr_schedule", "cosine or constant", self.lr_schedule)
        check(bool(self.out_dir), "out_dir", "a folder", self.out_dir)
        for name in ("steps", "batch_size", "grad_accum", "keep_ckpts", "max_bad_steps"):
            check(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        for name in ("warmup_steps", "num_workers", "log_every", "eval_every", "sample_every", "ckpt_every",
                     "val_images"):  # fmt: skip
            check(getattr(self, name) >= 0, name, "0 or more", getattr(self, name))
        check(all(finite(b) and 0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)", self.betas)
        check(finite(self.lr) and self.lr > 0, "lr", "a finite number above 0", self.lr)
        # AdamW's first step scales by lr / (1 - beta1): beyond float32's range torch fails inside the update
        check(self.lr / (1 - self.betas[0]) <= torch.finfo(torch.float32).max, "lr", "small enough that "
              "lr / (1 - betas[0]) fits float32", self.lr)  # fmt: skip
        check(finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "finite and >= 0",
              self.weight_decay)  # fmt: skip
        check(finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]",
              self.min_lr_ratio)  # fmt: skip
        check(finite(self.clip_grad) and self.clip_grad >= 0, "clip_grad", "finite and >= 0 (0: off)", self.clip_grad)
        check(finite(self.ema_decay) and 0 <= self.ema_decay < 1, "ema_decay", "in [0, 1) (0: off)", self.ema_decay)
        check(finite(self.time_limit_minutes) and self.time_limit_minutes >= 0, "time_limit_minutes",
              "finite and >= 0 (0: none)", self.time_limit_minutes)  # fmt: skip
        check(finite(self.budget_minutes) and self.budget_minutes >= 0, "budget_minutes", "finite and >= 0 (0: none)",
              self.budget_minutes)  # fmt: skip


# accelerate's trackers and the module each needs (tensorboard: torch's writer, which needs the tensorboard package)
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
            "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}  # fmt: skip


def resolve_trackers(log_with: list[str] | None) -> list[str]:
    """The trackers to log to: ``log_with`` checked (known to accelerate, installed), or tensorboard when it is
    installed and nothing was asked for."""
    import importlib.util

    if log_with is None:
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    for name in log_with:
        if name not in TRACKERS:
            raise ConfigError(f"train.log_with: unknown tracker {name!r}; known: {sorted(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"train.log_with: {name} is not installed here; pip install {TRACKERS[name]}")
    return list(log_with)


def _flat_config(recipe: dict, prefix: str = "") -> dict:
    """The recipe as flat ``section/key`` scalars, the form trackers' hyperparameter tables take."""
    out = {}
    for k, v in recipe.items():
        if isinstance(v, dict):
            out.update(_flat_config(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def lr_factor(cfg: TrainConfig, step: int, budget_used: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer step ``step``: linear warm-up, then cosine or constant; the cosine's
    progress is ``budget_used`` (the fraction of ``budget_minutes`` spent) when the run has a budget."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    if cfg.budget_minutes:
        progress = budget_used
    else:
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EpochSampler(torch.utils.data.Sampler):
    """This process's share of a permutation fixed by (seed, epoch), starting ``start`` items in."""

    def __init__(self, n: int, seed: int, epoch: int, rank: int, world: int, per_epoch: int, start: int = 0):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        self.indices = perm[rank : per_epoch * world : world][start:]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _save_rng(path: Path):
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_tensors(state, path)
    path.with_suffix(".json").write_text(json.dumps(random.getstate()))


def _load_rng(path: Path):
    state = load_file(str(path))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    s = json.loads(path.with_suffix(".json").read_text())
    random.setstate((s[0], tuple(s[1]), s[2]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (``trainer.json`` is written last, so its presence marks completion)."""
    root = Path(out_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "trainer.json").is_file())
    return done[-1] if done else None


def _ignore_stop_signals(_worker_id: int):
    # data-loader workers leave SIGTERM / SIGUSR1 to the trainer, which checkpoints and then shuts them down
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class _Undo:
    """A copy of the weights and optimizer state taken before each update, put back when the update turns out bad
    (non-finite loss, gradient norm or updated weights). Costs the memory of the weights and AdamW's two moments
    once more, and a few device copies a step; it is what lets a step be judged after it is computed."""

    def __init__(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer):
        self.params, self.opt = params, optimizer
        self.copies: list[torch.Tensor] | None = None
        self.had_state: list[bool] = []

    def _tensors(self) -> list[torch.Tensor]:
        out = list(self.params)
        for p in self.params:
            out += [v for _, v in sorted(self.opt.state.get(p, {}).items()) if torch.is_tensor(v)]
        return out

    def save(self):
        live = self._tensors()
        self.had_state = [p in self.opt.state for p in self.params]
        if self.copies is None or [(c.shape, c.dtype) for c in self.copies] != [(t.shape, t.dtype) for t in live]:
            self.copies = _flat_copies(live)
        with torch.no_grad():
            torch._foreach_copy_(self.copies, live)

    def restore(self):
        for p, had in zip(self.params, self.had_state):
            if not had:
                self.opt.state.pop(p, None)  # the bad step was the first: AdamW starts from nothing again
        with torch.no_grad():
            torch._foreach_copy_(self._tensors(), self.copies)


def _flat_copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Tensors shaped as ``tensors``, views into one buffer per (device, dtype): one long-lived allocation instead
    of hundreds, which on the CPU sits outside glibc's heap (an allocation that size is mmapped) instead of pinning
    it among each step's temporaries, where the heap would grow by gigabytes a minute
    (``results/cpu-trainer-host-memory.json``)."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for (device, dtype), idx in groups.items():
        flat, at = torch.empty(sum(tensors[i].numel() for i in idx), dtype=dtype, device=device), 0
        for i in idx:
            out[i] = flat.narrow(0, at, tensors[i].numel()).view(tensors[i].shape)
            at += tensors[i].numel()
    return out


def _all_finite(tensors: list[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """One device boolean: every value of every tensor is finite (max |x| per tensor, NaN propagating). Empty
    tensors (an FSDP process's share of a parameter can be empty) have no max and are left out."""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack(torch._foreach_norm(tensors, float("inf"))).isfinite().all()


class Trainer:
    """Trains ``task`` on ``train_set`` with the settings of ``cfg``; see the module docstring."""

    def __init__(self, task: nn.Module, train_set, val_set, cfg: TrainConfig, recipe: dict | None = None,
                 command: str | None = None):  # fmt: skip
        self.task, self.train_set, self.val_set, self.cfg = task, train_set, val_set, cfg
        self.recipe = recipe or {}
        self.command = command or shlex.join([Path(sys.executable).name, *sys.argv])  # for the model card
        self.out = Path(cfg.out_dir)
        ddp = DistributedDataParallelKwargs(find_unused_parameters=getattr(task, "has_unused_parameters", False))
        self.trackers = resolve_trackers(cfg.log_with)
        self.acc = Accelerator(mixed_precision=cfg.mixed_precision, kwargs_handlers=[ddp],
                               log_with=self.trackers or None, project_dir=str(self.out / "trackers"))  # fmt: skip
        if self.acc.distributed_type == DistributedType.FSDP and not self.acc.state.fsdp_plugin.use_orig_params:
            # the step guard, the EMA and the checkpoints read the model's parameters by name
            raise ConfigError(
                "FSDP training needs fsdp_use_orig_params: true in the accelerate config "
                "(configs/accelerate/fsdp-2gpu.yaml has it)"
            )
        if self.acc.is_main_process:
            self._check_writable()
        world = self.acc.num_processes
        self.per_epoch = len(train_set) // (cfg.batch_size * world) * cfg.batch_size
        if self.per_epoch == 0:
            raise ValueError(
                f"the training set has {len(train_set)} images, fewer than one batch "
                f"({cfg.batch_size} x {world} processes); lower train.batch_size"
            )
        torch.manual_seed(cfg.seed + self.acc.process_index)
        random.seed(cfg.seed + self.acc.process_index)
        if cfg.compile or cfg.activation_checkpointing:
            from visgen.nn import Transformer

            backbones = [m for m in task.modules() if isinstance(m, Transformer)]
            if not backbones:
                raise ValueError("train.compile and train.activation_checkpointing need a transformer backbone")
            for b in backbones:
                b.activation_checkpointing = cfg.activation_checkpointing
                if cfg.compile:
                    b.compile_blocks()
        task.to(self.acc.device)
        params = [p for p in task.parameters() if p.requires_grad]
        fused = self.acc.device.type == "cuda"  # one kernel for the whole update
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=fused)
        self.model, self.opt = self.acc.prepare(task, opt)
        self.params = [p for g in self.opt.optimizer.param_groups for p in g["params"]]  # as prepared (FSDP flattens)
        self.undo = _Undo(self.params, self.opt.optimizer)
        self.ema = EMA(self.acc.unwrap_model(self.model).model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.step, self.epoch, self.micro_in_epoch = 0, 0, 0
        # images the data set skipped before training (the token cache's encoding pass), then per epoch
        self.bad_in_row, self.skipped_images = 0, int(getattr(train_set, "skipped", 0))
        self.timed_images, self.timed_seconds = 0, 0.0  # throughput over every session of the run (resumes too)
        self.budget_seconds = 0.0  # the training time of the run's sessions before this one (budget_minutes)
        self.budget_spent_s = 0.0  # all the run's training time so far, as every process agreed at the last step
        self.last_good: Path | None = None
        self.stop_signal: int | None = None
        self.log_file = self.out / "metrics.jsonl"
        if self.trackers:  # accelerate's tracker API: each user's usual tracker; metrics.jsonl always
            self.acc.init_trackers(self.out.name, config=_flat_config(self.recipe))

    def _check_writable(self):
        """Fail before any work when the run folder cannot be written."""
        try:
            check_writable(self.out, "train.out_dir")
        except ConfigError as e:
            raise RunStorageError(str(e)) from None

    # ---- checkpoints -------------------------------------------------------------------------------------------

    def _where_good(self) -> str:
        good = self.last_good or latest_checkpoint(self.out)
        return f"the last good checkpoint is {good}" if good else "no checkpoint has been written yet"

    def save_checkpoint(self) -> Path:
        """Write a checkpoint atomically: everything goes to ``step-N.tmp``, renamed when complete. Weights that are
        not finite are never written."""
        acc, final = self.acc, self.out / "checkpoints" / f"step-{self.step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        task = acc.unwrap_model(self.model)
        state = sharding.full_state_dict(self.model, task, acc.is_main_process)  # whole on the main process
        if not self._finite_everywhere(task):  # every process decides alike
            reason = f"the weights of step {self.step} are not finite"
            try:
                check_finite(state, f"step {self.step}")  # names the tensor where this process holds it
            except CheckpointError as e:
                reason = str(e)
            raise NonFiniteLossError(f"{reason}: no checkpoint written at step {self.step}; {self._where_good()}")
        ema = self._ema_state(task)
        opt_state = sharding.optimizer_state(self.model, task, self.opt.optimizer, acc.is_main_process)
        try:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            acc.wait_for_everyone()
            _save_rng(tmp / f"rng-{acc.process_index}.safetensors")
            acc.wait_for_everyone()
            if acc.is_main_process:
                task.model.save_pretrained(tmp / "model", ema_state=ema, state=sharding.model_part(state))
                save_tensors(state, tmp / "task.safetensors")
                torch.save(opt_state, tmp / "optimizer.pt")
                if acc.scaler is not None:
                    torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
                files = sorted(p.name for p in tmp.iterdir() if p.is_file())
                trainer_state = {
                    "step": self.step, "epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch,
                    "bad_in_row": self.bad_in_row, "skipped_images": self.skipped_images,
                    "timed_images": self.timed_images, "timed_seconds": self.timed_seconds,
                    "budget_seconds": self.budget_spent_s,
                    "num_processes": acc.num_processes, "recipe": self.recipe,
                    "sha256": {name: file_sha256(tmp / name) for name in files},
                }  # fmt: skip
                (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=2))
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
        except (OSError, RuntimeError) as e:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)  # free what the partial write took
            raise RunStorageError(
                f"could not write the checkpoint of step {self.step} to {final}: {e}. {self._where_good()}; "
                "free disk space or fix the folder's permissions and rerun the same command to resume"
            ) from e
        if acc.is_main_process:
            old = sorted(p for p in final.parent.glob("step-*") if p.is_dir() and p != final and p.suffix != ".tmp")
            for p in old[: max(0, len(old) - (self.cfg.keep_ckpts - 1))]:
                shutil.rmtree(p, ignore_errors=True)
        self.last_good = final
        acc.wait_for_everyone()
        return final

    def _finite_everywhere(self, task: nn.Module) -> bool:
        """Every weight and floating-point buffer is finite on every process (a sharded model's in every shard)."""
        floats = [t for t in [*task.parameters(), *task.buffers()] if t.is_floating_point()]
        bad = ~_all_finite(floats, self.acc.device)
        return self.acc.reduce(bad.float().reshape(1), reduction="sum").item() == 0

    def _ema_state(self, task: nn.Module) -> dict | None:
        """The generator's state dict with EMA parameters, whole (on the main process under FSDP)."""
        if not self.ema:
            return None
        if not sharding.is_sharded(self.model):
            return self.ema.full_state_dict(task.model) if self.acc.is_main_process else None
        with self.ema.applied_to(task.model):  # each process puts its shard of the EMA in; the gather joins them
            return sharding.model_part(sharding.full_state_dict(self.model, task, self.acc.is_main_process))

    @property
    def _load_device(self) -> str:
        d = self.acc.device  # safetensors takes "cpu" or "cuda:N", not the "cpu:0" of a multi-process CPU run
        return "cpu" if d.type == "cpu" else str(d)

    def load_checkpoint(self, path: Path):
        """Restore model, task extras, EMA, optimizer, loss scaler, RNG and the position in the epoch; every file is
        checked against the checksum recorded when it was written."""
        state = json.loads((path / "trainer.json").read_text())
        for name, digest in state.get("sha256", {}).items():
            if not (path / name).is_file() or file_sha256(path / name) != digest:
                raise CheckpointError(
                    f"checkpoint {path} is damaged: {name} is missing or differs from when it was written. Delete "
                    "this checkpoint folder to resume from the one before it"
                )
        if state["num_processes"] != self.acc.num_processes:
            self.acc.print(
                f"note: resuming a {state['num_processes']}-process run on {self.acc.num_processes}; "
                "the data order will differ from an uninterrupted run"
            )
        task = self.acc.unwrap_model(self.model)
        sharded = sharding.is_sharded(self.model)
        device = "cpu" if sharded else self._load_device  # FSDP shards from full CPU tensors
        weights = load_file(str(path / "task.safetensors"), device=device)
        check_finite(weights, f"checkpoint {path}")
        if self.ema:
            ema = load_file(str(path / "model" / "ema.safetensors"), device=device)
            if sharded:  # the model shards the EMA weights; each process reads its shard back
                with_ema = {**weights, **{f"model.{k}": v for k, v in ema.items()}}
                sharding.load_full_state_dict(self.model, task, with_ema)
                self.ema.capture(task.model)
            else:
                self.ema.load_state_dict(ema)
        sharding.load_full_state_dict(self.model, task, weights)
        opt_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        try:
            sharding.load_optimizer_state(self.model, task, self.opt.optimizer, opt_state)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from e
        if self.acc.scaler is not None and (path / "scaler.pt").is_file():
            self.acc.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        rng = path / f"rng-{self.acc.process_index}.safetensors"
        if rng.is_file():
            _load_rng(rng)
        self.step, self.epoch, self.micro_in_epoch = state["step"], state["epoch"], state["micro_in_epoch"]
        self.bad_in_row, self.skipped_images = state["bad_in_row"], state["skipped_images"]
        if self.bad_in_row >= self.cfg.max_bad_steps:  # the guard's own checkpoint: a rerun gets a fresh count
            self.bad_in_row = 0
        self.timed_images, self.timed_seconds = state.get("timed_images", 0), state.get("timed_seconds", 0.0)
        self.budget_seconds = self.budget_spent_s = state.get("budget_seconds", 0.0)
        self.last_good = path

    # ---- evaluation --------------------------------------------------------------------------------------------

    def _val_batches(self):
        n = len(self.val_set) if not self.cfg.val_images else min(self.cfg.val_images, len(self.val_set))
        idx = list(range(self.acc.process_index, n, self.acc.num_processes))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.val_set, idx), batch_size=self.cfg.batch_size, collate_fn=collate,
            num_workers=self.cfg.num_workers, generator=torch.Generator(), worker_init_fn=_ignore_stop_signals,
        )  # fmt: skip
        for batch in loader:
            if batch_size_of(batch):
                yield {k: v.to(self.acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    @contextlib.contextmanager
    def _ema_weights(self):
        """The generator with EMA weights where kept, whole under FSDP, for validation and previews."""
        task = self.acc.unwrap_model(self.model)
        with self.ema.applied_to(task.model) if self.ema else contextlib.nullcontext():
            with sharding.evaluated(self.model, task) as model:
                yield model

    def validate(self) -> dict[str, float]:
        task = self.acc.unwrap_model(self.model)
        task.eval()
        with torch.no_grad(), self._ema_weights() as model, self.acc.autocast():
            metrics = task.validate(model, self._val_batches(), self.acc)
        task.train()
        return metrics

    def save_preview(self, batch: dict):
        """A grid of samples; one that fails is reported and training goes on (a preview is not worth a run)."""
        task = self.acc.unwrap_model(self.model)
        task.eval()
        try:
            with torch.no_grad(), self._ema_weights() as model, self.acc.autocast():
                images = task.preview(model, batch)
        except (RuntimeError, ValueError) as e:
            self.acc.print(
                f"warning: the preview at step {self.step} failed ({type(e).__name__}: {e}); training goes on"
            )
            return
        finally:
            task.train()
        if self.acc.is_main_process:
            from torchvision.utils import save_image

            (self.out / "samples").mkdir(parents=True, exist_ok=True)
            nrow = 8
            if images.dim() == 5:  # video clips: a clip a row, its frames along it
                nrow = images.shape[1]
                images = images[:8].flatten(0, 1)
            save_image(
                images.float().clamp(-1, 1) * 0.5 + 0.5,
                self.out / "samples" / f"step-{self.step:07d}.png",
                nrow=nrow,
            )

    def log(self, record: dict):
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "a") as fh:
                fh.write(json.dumps({"step": self.step, **record}) + "\n")
        if self.trackers:
            self.acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=self.step)

    # ---- training ----------------------------------------------------------------------------------------------

    def _epoch_loader(self):
        self.train_set.set_epoch(self.epoch)
        sampler = EpochSampler(
            len(self.train_set), self.cfg.seed, self.epoch, self.acc.process_index, self.acc.num_processes,
            self.per_epoch, start=self.micro_in_epoch * self.cfg.batch_size,
        )  # fmt: skip
        if hasattr(self.train_set, "get_batch"):  # in-memory data (cached tokens): whole batches by indexing
            idx = torch.tensor(sampler.indices, dtype=torch.long)
            n = len(idx) // self.cfg.batch_size * self.cfg.batch_size
            return (self.train_set.get_batch(b) for b in idx[:n].split(self.cfg.batch_size))
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=collate,
            num_workers=self.cfg.num_workers, drop_last=True, pin_memory=torch.cuda.is_available(),
            generator=torch.Generator(),  # its own, so making a loader never moves the global RNG (exact resume)
            worker_init_fn=_ignore_stop_signals,
        )  # fmt: skip

    def _on_signal(self, signum, frame):
        self.stop_signal = signum

    @property
    def budget_used(self) -> float:
        """The fraction of ``budget_minutes`` spent, as every process agreed at the last step (0 without a budget)."""
        return self.budget_spent_s / (60 * self.cfg.budget_minutes) if self.cfg.budget_minutes else 0.0

    def _update(self, loss_bad: torch.Tensor, t_run: float) -> tuple[bool, torch.Tensor, bool, bool]:
        """One optimizer step, kept only if its loss, gradient norm and updated weights are all finite on every
        process; one host sync a step decides that, a stop signal and the time limit together.
        Returns (applied, grad_norm, stop_signal, out_of_time); out of time: past the time limit or the budget."""
        cfg, acc = self.cfg, self.acc
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.clip_grad or float("inf"))
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg, self.step, self.budget_used)
        self.undo.save()
        self.opt.step()
        bad = loss_bad | ~_all_finite(self.params, loss_bad.device)
        if acc.scaler is None:  # under fp16 an infinite gradient is the loss scaler's signal: it skipped the step
            bad = bad | ~torch.isfinite(grad_norm)
        ran = time.perf_counter() - t_run
        out_of_time = bool(cfg.time_limit_minutes) and ran > 60 * cfg.time_limit_minutes
        # host values enter by fill kernels, not copies: a host-to-device copy would wait for the step (a second sync)
        host = [bad.new_full((), float(x), dtype=torch.float32)
                for x in (self.stop_signal is not None, out_of_time, self.budget_seconds + ran)]  # fmt: skip
        flags = acc.reduce(torch.stack([bad.float(), *host]), reduction="sum").tolist()
        self.budget_spent_s = flags[3] / acc.num_processes  # the processes' mean: one value everywhere
        applied = flags[0] == 0
        if not applied:
            self.undo.restore()
        self.opt.zero_grad(set_to_none=True)
        return applied, grad_norm, flags[1] > 0, flags[2] > 0 or self.budget_used >= 1

    def fit(self) -> dict:
        """Train until ``cfg.steps`` optimizer steps; returns the final validation metrics and throughput.

        SIGTERM or SIGUSR1 (a cluster's notice before it stops a job) finishes the current step, writes a checkpoint
        on every process together and raises ``Preempted``; rerunning the same command resumes exactly."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            return self._fit()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            if self.trackers:
                self.acc.end_training()

    def _fit(self) -> dict:
        cfg, acc = self.cfg, self.acc
        ckpt = latest_checkpoint(self.out) if cfg.resume else None
        if ckpt is not None:
            self.load_checkpoint(ckpt)
            acc.print(f"resumed from {ckpt} at step {self.step}")
        if acc.is_main_process:
            (self.out / "recipe.json").write_text(json.dumps(self.recipe, indent=2))
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not acc.is_main_process, desc="train",
                   dynamic_ncols=True)  # fmt: skip
        loss_bad = torch.zeros((), dtype=torch.bool, device=acc.device)
        micro, images_seen, t0 = 0, 0, None
        logs_sum: dict[str, torch.Tensor] = {}  # over the kept steps since the last log record
        step_logs: dict[str, torch.Tensor] = {}  # this step's micro-batches, dropped if the step is undone
        logs_count = step_count = 0  # micro-batches in each (fewer than log_every x grad_accum after a resume)
        preview_batch = None
        self.model.train()
        t_run = time.perf_counter()
        stop, out_of_time = False, self.budget_used >= 1  # a resumed run whose budget is spent only exports
        while self.step < cfg.steps and not (stop or out_of_time):
            usable, whole_epoch = 0, self.micro_in_epoch == 0
            for batch in self._epoch_loader():
                self.micro_in_epoch += 1
                self.skipped_images += batch["skipped"]
                if not batch_size_of(batch):
                    continue
                usable += batch_size_of(batch)
                batch = {k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                if preview_batch is None:
                    preview_batch = {k: v[:8] if torch.is_tensor(v) else v for k, v in batch.items()}
                micro += 1
                boundary = micro % cfg.grad_accum == 0
                sync = contextlib.nullcontext() if boundary else acc.no_sync(self.model)
                with sync:
                    loss, logs = self.model(batch, self.step)
                    loss_bad = loss_bad | ~torch.isfinite(loss.detach())  # on the device: no sync per micro-batch
                    acc.backward(loss / cfg.grad_accum)  # a bad loss's gradients are undone with its step
                for k, v in logs.items():  # summed on the device; read back only when logged
                    step_logs[k] = step_logs.get(k, 0.0) + v.detach().float()
                step_count += 1
                images_seen += batch_size_of(batch) * acc.num_processes
                if not boundary:
                    continue
                applied, grad_norm, stop, out_of_time = self._update(loss_bad, t_run)
                loss_bad = torch.zeros_like(loss_bad)
                if not applied:
                    self.bad_in_row += 1
                    acc.print(
                        f"step {self.step}: non-finite loss, gradient norm or updated weights; the step was undone "
                        f"({self.bad_in_row} in a row)"
                    )
                    if self.bad_in_row >= cfg.max_bad_steps:
                        path = self.save_checkpoint()
                        raise NonFiniteLossError(
                            f"{self.bad_in_row} non-finite steps in a row at step {self.step}; stopped. Every one was "
                            f"undone, so the weights are those after step {self.step}, checkpointed at {path}. Lower "
                            "train.lr, raise train.warmup_steps, or use train.mixed_precision=bf16 instead of fp16, "
                            "then rerun to resume from it (if the loss had diverged before this, delete that "
                            "checkpoint to resume from an earlier one)."
                        )
                else:
                    for k, v in step_logs.items():
                        logs_sum[k] = logs_sum.get(k, 0.0) + v
                    logs_count += step_count
                    self.bad_in_row = 0
                    if self.ema and not acc.optimizer_step_was_skipped:
                        self.ema.update(acc.unwrap_model(self.model).model, self.step)
                    self.step += 1
                    bar.update(1)
                step_logs, step_count = {}, 0
                if t0 is None:  # throughput excludes the first step (start-up, allocation)
                    t0, images_seen = time.perf_counter(), 0
                if applied and cfg.log_every and self.step % cfg.log_every == 0:
                    rec = {k: float(v) / logs_count for k, v in logs_sum.items()}
                    rec["lr"] = self.opt.param_groups[0]["lr"]
                    rec["grad_norm"] = float(grad_norm)
                    if images_seen:
                        rec["images_per_s"] = images_seen / (time.perf_counter() - t0)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k in ("loss", "lr")})
                    self.log(rec)
                    logs_sum, logs_count = {}, 0
                if applied and cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.log({f"val/{k}": v for k, v in self.validate().items()})
                if stop:
                    self._add_time(images_seen, t0)
                    path = self.save_checkpoint()
                    bar.close()
                    name = signal.Signals(self.stop_signal).name if self.stop_signal else "a stop signal"
                    msg = f"{name} received: checkpoint of step {self.step} written to {path}; rerun to resume"
                    acc.print(msg)
                    raise Preempted(msg)
                if applied and cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self._add_time(images_seen, t0)
                    t0, images_seen = time.perf_counter(), 0
                    self.save_checkpoint()
                if applied and cfg.sample_every and self.step % cfg.sample_every == 0 and preview_batch is not None:
                    self.save_preview(preview_batch)  # after the checkpoint: a preview never costs one
                if self.step >= cfg.steps or out_of_time:
                    break
            else:
                self._end_epoch(usable, whole_epoch)
        bar.close()
        self._add_time(images_seen, t0)
        metrics = self.validate()
        if cfg.ckpt_every == 0 or self.step % cfg.ckpt_every or latest_checkpoint(self.out) is None:
            self.save_checkpoint()
        throughput = self.timed_images / self.timed_seconds if self.timed_seconds > 0 else None
        self.export(metrics, throughput, time.perf_counter() - t_run)
        if preview_batch is not None:
            self.save_preview(preview_batch)
        return {"metrics": metrics, "train_images_per_s": throughput, "skipped_images": self.skipped_images}

    def _add_time(self, images: int, t0: float | None):
        if t0 is not None and images:
            self.timed_images += images
            self.timed_seconds += time.perf_counter() - t0

    def _end_epoch(self, usable: int, whole_epoch: bool):
        counts = torch.tensor([float(self.skipped_images), float(usable)], device=self.acc.device)
        skipped, usable = self.acc.reduce(counts, "sum").tolist()
        if whole_epoch and usable == 0:
            where = getattr(getattr(self.train_set, "cfg", None), "path", None) or "the training data"
            raise DataError(
                f"epoch {self.epoch} yielded no usable image from {where}: {int(skipped)} unreadable images skipped "
                "so far. Check the files (a corrupt copy or an unpacking error?)"
            )
        if skipped:
            self.acc.print(f"epoch {self.epoch}: {int(skipped)} unreadable images skipped so far")
        self.epoch, self.micro_in_epoch = self.epoch + 1, 0

    def export(self, metrics: dict, throughput: float | None, seconds: float):
        """Write the trained model (EMA weights as ``ema.safetensors``) and its final metrics to ``out_dir/final``,
        atomically: a ``final/`` folder is always complete."""
        task = self.acc.unwrap_model(self.model)
        state = sharding.full_state_dict(self.model, task, self.acc.is_main_process)  # every process: FSDP gathers
        ema = self._ema_state(task)
        if self.acc.is_main_process:
            final = self.out / "final"
            tmp, old = final.with_name("final.tmp"), final.with_name("final.old")
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                task.model.save_pretrained(tmp, ema_state=ema, state=sharding.model_part(state))
                summary = {"step": self.step, "metrics": metrics, "train_images_per_s": throughput,
                           "train_seconds": seconds, "skipped_images": self.skipped_images}  # fmt: skip
                if self.cfg.budget_minutes:  # the run's training time in all, over its sessions
                    summary["budget_seconds"] = self.budget_spent_s
                (tmp / "metrics.json").write_text(json.dumps(summary, indent=2))
                write_card(tmp, training={
                    "command": self.command, "steps": self.step,
                    "processes": self.acc.num_processes, "train_images_per_s": throughput,
                    "validation": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                    "recipe": self.recipe,
                })  # fmt: skip
                shutil.rmtree(old, ignore_errors=True)
                if final.exists():
                    os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            except (OSError, RuntimeError) as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise RunStorageError(
                    f"could not export {final}: {e}. {self._where_good()}; rerun the same command once there is "
                    "space to export from it"
                ) from e
        self.acc.wait_for_everyone()
