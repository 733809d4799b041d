"""One accelerate trainer for every visgen model: tokenizers and generators alike.

A *task* is an ``nn.Module`` that owns the model being trained (``task.model``, which has ``save_pretrained``)
plus anything that trains beside it (a discriminator). It implements

- ``forward(batch, step) -> (loss, logs)``: the training loss of one micro-batch;
- ``validate(model, batches) -> metrics``: validation metrics, also run before each checkpoint;
- ``preview(model, batch) -> images``: a (N, C, H, W) batch in [-1, 1] saved as a PNG grid.

The trainer owns everything else: mixed precision, gradient accumulation, clipping, EMA, the learning-rate
schedule, logging, checkpoints written atomically, exact resume, and the non-finite-loss guard.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from visgen.data import batch_size_of, collate
from visgen.train.ema import EMA


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many non-finite losses in a row."""


@dataclass
class TrainConfig:
    """Trainer settings; steps are optimizer steps (one per ``grad_accum`` micro-batches).

    out_dir: run folder (checkpoints/, samples/, metrics.jsonl, final/).
    steps: optimizer steps to train for.
    batch_size: images per micro-batch per process; the global batch is batch_size x grad_accum x processes.
    grad_accum: micro-batches per optimizer step.
    lr, weight_decay, betas: AdamW.
    warmup_steps: linear warm-up from 0, in optimizer steps.
    lr_schedule: ``cosine`` (to ``min_lr_ratio`` x lr at ``steps``) or ``constant`` after warm-up.
    clip_grad: max global gradient norm; 0 turns clipping off.
    ema_decay: EMA of the model's weights, used for validation, previews and the exported model; 0 turns it off.
    mixed_precision: ``no``, ``bf16`` or ``fp16`` (fp16 uses a loss scaler).
    seed: seeds initialisation, data order and augmentation.
    num_workers: data-loader worker processes.
    log_every, eval_every, sample_every, ckpt_every: periods in optimizer steps (0 turns one off).
    keep_ckpts: how many checkpoints to keep; older ones are pruned after a new one is complete.
    val_images: images used for validation (0: the whole validation set).
    max_bad_steps: non-finite losses in a row after which the run stops with a checkpoint.
    resume: continue from the newest checkpoint in ``out_dir`` if there is one.
    time_limit_minutes: stop early, with a checkpoint and the final export, after this much wall time (0: none).
    compile: ``torch.compile`` the transformer blocks of the model (regional: one compile serves every block).
    activation_checkpointing: recompute each transformer block in the backward pass instead of storing its
        activations (about a third more compute for a fraction of the memory: larger batches fit).
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
    mixed_precision: str = "no"
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
    compile: bool = False
    activation_checkpointing: bool = False


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Learning-rate multiplier at optimizer step ``step``: linear warm-up, then cosine or constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
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
    save_file(state, str(path))
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


class Trainer:
    """Trains ``task`` on ``train_set`` with the settings of ``cfg``; see the module docstring."""

    def __init__(self, task: nn.Module, train_set, val_set, cfg: TrainConfig, recipe: dict | None = None):
        self.task, self.train_set, self.val_set, self.cfg = task, train_set, val_set, cfg
        self.recipe = recipe or {}
        if cfg.mixed_precision is False:  # YAML reads a bare `no` as false
            cfg.mixed_precision = "no"
        if cfg.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"train.mixed_precision must be no, bf16 or fp16, got {cfg.mixed_precision!r}")
        if cfg.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"train.lr_schedule must be cosine or constant, got {cfg.lr_schedule!r}")
        self.out = Path(cfg.out_dir)
        ddp = DistributedDataParallelKwargs(find_unused_parameters=getattr(task, "has_unused_parameters", False))
        self.acc = Accelerator(mixed_precision=cfg.mixed_precision, kwargs_handlers=[ddp])
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
        self.ema = EMA(self.acc.unwrap_model(self.model).model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.step, self.epoch, self.micro_in_epoch = 0, 0, 0
        self.bad_in_row, self.skipped_images = 0, 0
        self.log_file = self.out / "metrics.jsonl"
        self.tb = None
        if self.acc.is_main_process:
            try:  # tensorboard when installed; metrics.jsonl always
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                pass

    # ---- checkpoints -------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write a checkpoint atomically: everything goes to ``step-N.tmp``, renamed when complete."""
        acc, final = self.acc, self.out / "checkpoints" / f"step-{self.step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        _save_rng(tmp / f"rng-{acc.process_index}.safetensors")
        if acc.is_main_process:
            task = acc.unwrap_model(self.model)
            ema = self.ema.full_state_dict(task.model) if self.ema else None
            task.model.save_pretrained(tmp / "model", ema_state=ema)
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in task.state_dict().items()},
                str(tmp / "task.safetensors"),
            )
            torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
            if acc.scaler is not None:
                torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
            state = {
                "step": self.step, "epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch,
                "bad_in_row": self.bad_in_row, "skipped_images": self.skipped_images,
                "num_processes": acc.num_processes, "recipe": self.recipe,
            }  # fmt: skip
            (tmp / "trainer.json").write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            old = sorted(p for p in final.parent.glob("step-*") if p.is_dir() and p != final and p.suffix != ".tmp")
            for p in old[: max(0, len(old) - (self.cfg.keep_ckpts - 1))]:
                shutil.rmtree(p, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path):
        """Restore model, task extras, EMA, optimizer, loss scaler, RNG and the position in the epoch."""
        state = json.loads((path / "trainer.json").read_text())
        if state["num_processes"] != self.acc.num_processes:
            self.acc.print(
                f"note: resuming a {state['num_processes']}-process run on {self.acc.num_processes}; "
                "the data order will differ from an uninterrupted run"
            )
        task = self.acc.unwrap_model(self.model)
        task.load_state_dict(load_file(str(path / "task.safetensors"), device=str(self.acc.device)))
        if self.ema:
            self.ema.load_state_dict(load_file(str(path / "model" / "ema.safetensors"), device=str(self.acc.device)))
        self.opt.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        if self.acc.scaler is not None and (path / "scaler.pt").is_file():
            self.acc.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        rng = path / f"rng-{self.acc.process_index}.safetensors"
        if rng.is_file():
            _load_rng(rng)
        self.step, self.epoch, self.micro_in_epoch = state["step"], state["epoch"], state["micro_in_epoch"]
        self.bad_in_row, self.skipped_images = state["bad_in_row"], state["skipped_images"]

    # ---- evaluation --------------------------------------------------------------------------------------------

    def _val_batches(self):
        n = len(self.val_set) if not self.cfg.val_images else min(self.cfg.val_images, len(self.val_set))
        idx = list(range(self.acc.process_index, n, self.acc.num_processes))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.val_set, idx), batch_size=self.cfg.batch_size, collate_fn=collate,
            num_workers=self.cfg.num_workers, generator=torch.Generator(),
        )  # fmt: skip
        for batch in loader:
            if batch_size_of(batch):
                yield {k: v.to(self.acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _ema_weights(self):
        task = self.acc.unwrap_model(self.model)
        return self.ema.applied_to(task.model) if self.ema else contextlib.nullcontext(task.model)

    def validate(self) -> dict[str, float]:
        task = self.acc.unwrap_model(self.model)
        task.eval()
        with torch.no_grad(), self._ema_weights() as model, self.acc.autocast():
            metrics = task.validate(model, self._val_batches(), self.acc)
        task.train()
        return metrics

    def save_preview(self, batch: dict):
        task = self.acc.unwrap_model(self.model)
        task.eval()
        with torch.no_grad(), self._ema_weights() as model, self.acc.autocast():
            images = task.preview(model, batch)
        task.train()
        if self.acc.is_main_process:
            from torchvision.utils import save_image

            (self.out / "samples").mkdir(parents=True, exist_ok=True)
            save_image(
                images.float().clamp(-1, 1) * 0.5 + 0.5,
                self.out / "samples" / f"step-{self.step:07d}.png",
                nrow=8,
            )

    def log(self, record: dict):
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "a") as fh:
                fh.write(json.dumps({"step": self.step, **record}) + "\n")
            if self.tb is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)):
                        self.tb.add_scalar(k, v, self.step)
                self.tb.flush()

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
        )  # fmt: skip

    def _all_finite(self, loss: torch.Tensor) -> bool:
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        return self.acc.reduce(bad, reduction="sum").item() == 0  # every process decides alike

    def fit(self) -> dict:
        """Train until ``cfg.steps`` optimizer steps; returns the final validation metrics and throughput."""
        cfg, acc = self.cfg, self.acc
        ckpt = latest_checkpoint(self.out) if cfg.resume else None
        if ckpt is not None:
            self.load_checkpoint(ckpt)
            acc.print(f"resumed from {ckpt} at step {self.step}")
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "recipe.json").write_text(json.dumps(self.recipe, indent=2))
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not acc.is_main_process,
            desc="train",
            dynamic_ncols=True,
        )
        window_bad, micro, images_seen, t0, t_start_step = False, 0, 0, None, self.step
        logs_sum: dict[str, float] = {}
        preview_batch = None
        self.model.train()
        t_run = time.perf_counter()
        while self.step < cfg.steps and not self._out_of_time(t_run):
            for batch in self._epoch_loader():
                self.micro_in_epoch += 1
                self.skipped_images += batch["skipped"]
                if not batch_size_of(batch):
                    continue
                batch = {k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                if preview_batch is None:
                    preview_batch = {k: v[:8] if torch.is_tensor(v) else v for k, v in batch.items()}
                micro += 1
                boundary = micro % cfg.grad_accum == 0
                sync = contextlib.nullcontext() if boundary else acc.no_sync(self.model)
                with sync:
                    loss, logs = self.model(batch, self.step)
                    if self._all_finite(loss):
                        acc.backward(loss / cfg.grad_accum)
                    else:
                        window_bad = True
                for k, v in logs.items():  # summed on the device; read back only when logged
                    logs_sum[k] = logs_sum.get(k, 0.0) + v.detach().float()
                images_seen += batch_size_of(batch) * acc.num_processes
                if not boundary:
                    continue
                if window_bad:
                    self.opt.zero_grad(set_to_none=True)
                    window_bad, self.bad_in_row = False, self.bad_in_row + 1
                    acc.print(f"step {self.step}: non-finite loss, step skipped ({self.bad_in_row} in a row)")
                    if self.bad_in_row >= cfg.max_bad_steps:
                        path = self.save_checkpoint()
                        raise NonFiniteLossError(
                            f"{self.bad_in_row} non-finite losses in a row at step {self.step}; stopped. The weights "
                            f"are intact (no bad step was applied): {path}. Lower train.lr, raise train.warmup_steps, "
                            "or use train.mixed_precision=bf16 instead of fp16."
                        )
                    continue
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.clip_grad) if cfg.clip_grad > 0 else None
                for g in self.opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(cfg, self.step)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self.bad_in_row = 0
                if self.ema and not acc.optimizer_step_was_skipped:
                    self.ema.update(acc.unwrap_model(self.model).model, self.step)
                self.step += 1
                bar.update(1)
                if t0 is None:  # throughput excludes the first step (start-up, allocation)
                    t0, images_seen, t_start_step = time.perf_counter(), 0, self.step
                if cfg.log_every and self.step % cfg.log_every == 0:
                    rec = {k: float(v) / (cfg.log_every * cfg.grad_accum) for k, v in logs_sum.items()}
                    rec["lr"] = self.opt.param_groups[0]["lr"]
                    if grad_norm is not None:
                        rec["grad_norm"] = float(grad_norm)
                    if self.step > t_start_step:
                        rec["images_per_s"] = images_seen / (time.perf_counter() - t0)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k in ("loss", "lr")})
                    self.log(rec)
                    logs_sum = {}
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.log({f"val/{k}": v for k, v in self.validate().items()})
                if cfg.sample_every and self.step % cfg.sample_every == 0 and preview_batch is not None:
                    self.save_preview(preview_batch)
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save_checkpoint()
                if self.step >= cfg.steps or (self.step % 10 == 0 and self._out_of_time(t_run)):
                    break
            else:
                self._end_epoch()
        bar.close()
        elapsed = time.perf_counter() - t0 if t0 else 0.0
        throughput = images_seen / elapsed if elapsed > 0 and self.step > t_start_step else None
        metrics = self.validate()
        if cfg.ckpt_every == 0 or self.step % cfg.ckpt_every:
            self.save_checkpoint()
        self.export(metrics, throughput, time.perf_counter() - t_run)
        if preview_batch is not None:
            self.save_preview(preview_batch)
        return {"metrics": metrics, "train_images_per_s": throughput, "skipped_images": self.skipped_images}

    def _out_of_time(self, t_run: float) -> bool:
        if not self.cfg.time_limit_minutes:
            return False
        over = torch.tensor(
            [float(time.perf_counter() - t_run > 60 * self.cfg.time_limit_minutes)], device=self.acc.device
        )
        return self.acc.reduce(over, "sum").item() > 0  # all processes stop at the same step

    def _end_epoch(self):
        skipped = self.acc.reduce(torch.tensor([float(self.skipped_images)], device=self.acc.device), "sum").item()
        if skipped:
            self.acc.print(f"epoch {self.epoch}: {int(skipped)} unreadable images skipped so far")
        self.epoch, self.micro_in_epoch = self.epoch + 1, 0

    def export(self, metrics: dict, throughput: float | None, seconds: float):
        """Write the trained model (EMA weights as ``ema.safetensors``) and its final metrics to ``out_dir/final``."""
        if self.acc.is_main_process:
            final = self.out / "final"
            task = self.acc.unwrap_model(self.model)
            task.model.save_pretrained(final, ema_state=self.ema.full_state_dict(task.model) if self.ema else None)
            summary = {"step": self.step, "metrics": metrics, "train_images_per_s": throughput,
                       "train_seconds": seconds, "skipped_images": self.skipped_images}  # fmt: skip
            (final / "metrics.json").write_text(json.dumps(summary, indent=2))
        self.acc.wait_for_everyone()
