"""The trainer's settings (``train`` section of a recipe) and the trackers it logs to."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from visgen.config import ConfigError, check, finite


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
    mixed_precision: ``auto`` (bf16 on a GPU that supports it, else fp32), ``no``, ``bf16`` or ``fp16`` (fp16 uses a
        loss scaler; YAML's bare ``no`` reads as false). bf16 on a CPU is obeyed with a warning: on CPUs without
        bf16 units its backward pass can run many times slower than fp32 (on one with AVX512-BF16 it does not:
        ``results/cpu-precision.json``).
    seed: seeds initialisation, data order and augmentation.
    num_workers: data-loader worker processes.
    log_every, eval_every, sample_every, ckpt_every: periods in optimizer steps (0 turns one off).
    keep_ckpts: how many checkpoints to keep; older ones are pruned after a new one is complete.
    keep_best: ``final/`` holds the weights (and EMA) of the lowest validation loss seen at the ``eval_every``
        evaluations and the end, not the last ones; the step it came from is in its ``metrics.json`` and model card.
        The best so far is kept in ``best/`` as the run goes (written atomically when the loss improves).
    early_stop_patience: end the run (checkpoint and export, as at its last step) once the validation loss has not
        improved for this many evaluations in a row (0: off).
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
    compile: ``torch.compile`` the transformer blocks of the model (regional: one compile serves every block);
        ``auto``: on a GPU only (where it paid: ``results/bench-trainer.json``), not on a CPU, where compiling
        needs a C compiler and takes longer than a short run saves. ``graph``: instead, a generator's whole training
        loss compiled and replayed as CUDA graphs (``graph_step.py``: where a small model's step is the host's kernel
        launches; one process, ``grad_accum`` 1, generators only).
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
    mixed_precision: str | bool = "auto"
    seed: int = 0
    num_workers: int = 2
    log_every: int = 50
    eval_every: int = 500
    sample_every: int = 500
    ckpt_every: int = 500
    keep_ckpts: int = 2
    keep_best: bool = True
    early_stop_patience: int = 0
    val_images: int = 1000
    max_bad_steps: int = 5
    resume: bool = True
    time_limit_minutes: float = 0.0
    budget_minutes: float = 0.0
    compile: bool | str = False
    activation_checkpointing: bool = False
    log_with: list[str] | None = None

    def __post_init__(self):
        if self.mixed_precision is False:
            self.mixed_precision = "no"
        check(self.mixed_precision in ("auto", "no", "bf16", "fp16"), "mixed_precision", "auto, no, bf16 or fp16",
              self.mixed_precision)  # fmt: skip
        check(self.compile in (True, False, "auto", "graph"), "compile", "true, false, auto or graph", self.compile)
        check(self.lr_schedule in ("cosine", "constant"), "lr_schedule", "cosine or constant", self.lr_schedule)
        check(bool(self.out_dir), "out_dir", "a folder", self.out_dir)
        for name in ("steps", "batch_size", "grad_accum", "keep_ckpts", "max_bad_steps"):
            check(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        for name in ("warmup_steps", "num_workers", "log_every", "eval_every", "sample_every", "ckpt_every",
                     "val_images", "early_stop_patience"):  # fmt: skip
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

        if self.early_stop_patience and not self.eval_every:
            raise ConfigError("train.early_stop_patience needs train.eval_every above 0: it counts evaluations")

    def compiles(self, device: torch.device) -> bool:
        """Whether to compile the blocks on ``device``: ``auto`` resolved (``graph`` compiles the whole loss instead)."""
        if self.compile == "graph":
            return False
        return device.type == "cuda" if self.compile == "auto" else bool(self.compile)

    def precision(self, device: torch.device) -> str:
        """The mixed precision to train with on ``device``: ``auto`` resolved, bf16 on a CPU warned about."""
        if self.mixed_precision == "auto":
            cuda = device.type == "cuda"
            return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
        if self.mixed_precision == "bf16" and device.type == "cpu":
            warnings.warn(
                "train.mixed_precision=bf16 on a CPU: its backward pass can run many times slower than fp32; "
                "train.mixed_precision=auto picks fp32 here", stacklevel=2)  # fmt: skip
        return self.mixed_precision


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


def flat_config(recipe: dict, prefix: str = "") -> dict:
    """The recipe as flat ``section/key`` scalars, the form trackers' hyperparameter tables take."""
    out = {}
    for k, v in recipe.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}/"))
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
