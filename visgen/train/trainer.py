"""One accelerate trainer for every visgen model: tokenizers and generators alike.

A *task* is an ``nn.Module`` that owns the model being trained (``task.model``, which has ``save_pretrained``)
plus anything that trains beside it (a discriminator). It implements

- ``forward(batch, step) -> (loss, logs)``: the training loss of one micro-batch;
- ``validate(model, batches) -> metrics``: validation metrics, also run before each checkpoint;
- ``preview(model, batch) -> images``: a (N, C, H, W) batch in [-1, 1] saved as a PNG grid.

The trainer owns everything else: mixed precision, gradient accumulation, clipping, EMA, the learning-rate
schedule, logging, checkpoints written atomically and checksummed (``checkpoints.py``), exact resume,
checkpoint-and-exit on SIGTERM / SIGUSR1, the time limit and budget (``budget.py``), the best model kept, a lock on
the run folder, and the non-finite guard (``guard.py``: an update is kept only when its loss, gradient norm and
resulting weights are finite on every process; otherwise it is undone). The loop never waits for the GPU between
steps: the guard's verdict on an update is read when the next step's gradients are ready, and the host reads
values back only where it logs, validates, checkpoints or stops.
"""

from __future__ import annotations

import contextlib
import json
import random
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, DistributedType
from accelerate.utils import parse_flag_from_env
from torch import nn
from tqdm.auto import tqdm

from visgen.config import ConfigError
from visgen.data import batch_size_of
from visgen.nn.transformer import set_backbones
from visgen.results import check_writable
from visgen.train import sharding
from visgen.train.batches import STOP_SIGNALS, EpochSampler, check_epoch, train_batches, val_batches
from visgen.train.budget import TimeBudget
from visgen.train.checkpoints import (
    BestModel,
    RunLock,
    RunLockedError,
    RunStorageError,
    export_final,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from visgen.train.ema import EMA
from visgen.train.graph_step import capture_losses
from visgen.train.guard import StepGuard, Verdict
from visgen.train.train_config import TrainConfig, flat_config, lr_factor, resolve_trackers

__all__ = ["NonFiniteLossError", "Preempted", "RunLockedError", "RunStorageError", "TrainConfig", "Trainer",
           "latest_checkpoint", "lr_factor"]  # fmt: skip


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many non-finite steps in a row."""


class Preempted(RuntimeError):
    """SIGTERM or SIGUSR1 arrived: a checkpoint was written and the run stopped; rerunning resumes it."""

    exit_code = 75  # EX_TEMPFAIL: "try again later", which a requeued job does


class Trainer:
    """Trains ``task`` on ``train_set`` with the settings of ``cfg``; see the module docstring. Data sets with
    ``get_batch`` (cached tokens) are served whole batches by indexing, moved to the device by ``to_device``."""

    def __init__(self, task: nn.Module, train_set, val_set, cfg: TrainConfig, recipe: dict | None = None,
                 command: str | None = None):  # fmt: skip
        self.task, self.train_set, self.val_set, self.cfg = task, train_set, val_set, cfg
        self.recipe = recipe or {}
        self.command = command or shlex.join([Path(sys.executable).name, *sys.argv])  # for the model card
        self.out = Path(cfg.out_dir)
        ddp = DistributedDataParallelKwargs(find_unused_parameters=getattr(task, "has_unused_parameters", False))
        self.trackers = resolve_trackers(cfg.log_with)
        on_gpu = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
        self.acc = Accelerator(mixed_precision=cfg.precision(torch.device("cuda" if on_gpu else "cpu")), kwargs_handlers=[ddp],
                               log_with=self.trackers or None, project_dir=str(self.out / "trackers"))  # fmt: skip
        if self.acc.distributed_type == DistributedType.FSDP and not self.acc.state.fsdp_plugin.use_orig_params:
            # the step guard, the EMA and the checkpoints read the model's parameters by name
            raise ConfigError(
                "FSDP training needs fsdp_use_orig_params: true in the accelerate config "
                "(configs/accelerate/fsdp-2gpu.yaml has it)"
            )
        if self.acc.is_main_process:
            try:
                check_writable(self.out, "train.out_dir")  # fail before any work
            except ConfigError as e:
                raise RunStorageError(str(e)) from None
        world = self.acc.num_processes
        self.per_epoch = len(train_set) // (cfg.batch_size * world) * cfg.batch_size
        if self.per_epoch == 0:
            raise ValueError(
                f"the training set has {len(train_set)} images, fewer than one batch "
                f"({cfg.batch_size} x {world} processes); lower train.batch_size"
            )
        for data in (train_set, val_set):
            if hasattr(data, "to_device"):  # cached tokens: batches are gathered where they are used
                data.to_device(self.acc.device)
        torch.manual_seed(cfg.seed + self.acc.process_index)
        random.seed(cfg.seed + self.acc.process_index)
        set_backbones(task, cfg.compiles(self.acc.device), cfg.activation_checkpointing,
                      required=cfg.compile is True or cfg.activation_checkpointing)  # fmt: skip
        if cfg.compile == "graph":
            capture_losses(task, self.acc.num_processes, cfg.grad_accum)
        task.to(self.acc.device)
        params = [p for p in task.parameters() if p.requires_grad]
        fused = self.acc.device.type == "cuda"  # one kernel for the whole update
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=fused)
        self.model, self.opt = self.acc.prepare(task, opt)
        self.params = [p for g in self.opt.optimizer.param_groups for p in g["params"]]  # as prepared (FSDP flattens)
        self.inner = self.acc.unwrap_model(self.model).model  # unwrapped once: each unwrap walks every module
        self.ema = EMA(self.inner, cfg.ema_decay) if cfg.ema_decay > 0 else None
        # clip and step in torch where accelerate adds nothing (its wrappers look up packages and walk the modules
        # each call: host time a small model's step cannot hide)
        self.direct = (
            self.acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
            and not self.acc.scaler
        )
        shadow = list(self.ema.shadow.values()) if self.ema else []
        self.guard = StepGuard(self.params, self.opt.optimizer, shadow, self.acc.device)
        self.budget = TimeBudget(cfg)
        self.lock = RunLock(self.out)
        self.step, self.epoch, self.micro_in_epoch = 0, 0, 0
        # images the data set skipped before training (the token cache's encoding pass), then per epoch
        self.bad_in_row, self.skipped_images = 0, int(getattr(train_set, "skipped", 0))
        self.timed_images, self.timed_seconds = 0, 0.0  # throughput over every session of the run (resumes too)
        self.best = BestModel(cfg.keep_best, cfg.early_stop_patience)
        self.last_good: Path | None = None
        self.stop_signal: int | None = None
        self.log_file = self.out / "metrics.jsonl"
        if self.trackers:  # accelerate's tracker API: each user's usual tracker; metrics.jsonl always
            self.acc.init_trackers(self.out.name, config=flat_config(self.recipe))

    # ---- state -------------------------------------------------------------------------------------------------

    def progress(self) -> dict:
        """What a checkpoint keeps of the trainer besides the weights: enough to resume exactly."""
        return {"step": self.step, "epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch,
                "bad_in_row": self.bad_in_row, "skipped_images": self.skipped_images,
                "timed_images": self.timed_images, "timed_seconds": self.timed_seconds,
                "budget_seconds": self.budget.spent, **self.best.state()}  # fmt: skip

    def _resume(self, path: Path):
        state = load_checkpoint(self, path)
        self.step, self.epoch, self.micro_in_epoch = state["step"], state["epoch"], state["micro_in_epoch"]
        self.bad_in_row, self.skipped_images = state["bad_in_row"], state["skipped_images"]
        if self.bad_in_row >= self.cfg.max_bad_steps:  # the guard's own checkpoint: a rerun gets a fresh count
            self.bad_in_row = 0
        self.timed_images, self.timed_seconds = state.get("timed_images", 0), state.get("timed_seconds", 0.0)
        self.budget.load(state.get("budget_seconds", 0.0))
        self.best.load(state, self.out)
        self.acc.print(f"resumed from {path} at step {self.step}")

    @property
    def budget_used(self) -> float:
        """The fraction of ``budget_minutes`` spent, as every process agreed at the last verdict (0 without one)."""
        return self.budget.used

    # ---- evaluation --------------------------------------------------------------------------------------------

    def _val_batches(self):
        cfg, acc = self.cfg, self.acc
        n = len(self.val_set) if not cfg.val_images else min(cfg.val_images, len(self.val_set))
        return val_batches(self.val_set, n, acc.process_index, acc.num_processes, cfg.batch_size, cfg.num_workers,
                           acc.device)  # fmt: skip

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
        return train_batches(self.train_set, sampler, self.cfg.batch_size, self.cfg.num_workers)

    def _on_signal(self, signum, frame):
        self.stop_signal = signum

    def _update(self, loss_bad: torch.Tensor) -> torch.Tensor:
        """Apply this step's gradients (and the EMA) at once and start the guard's verdict on them; returns the
        gradient norm (on the device). The step counts from here; ``_settle`` takes it back if it was bad."""
        cfg, acc = self.cfg, self.acc
        clip = cfg.clip_grad or float("inf")
        if self.direct:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        else:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), clip)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg, self.step, self.budget.used)
        self.guard.save()
        opt = self.opt.optimizer if self.direct else self.opt
        opt.step()
        opt.zero_grad(set_to_none=True)
        # fp16: an infinite gradient is the loss scaler's signal (it skipped the step, so the EMA waits too)
        skipped = acc.scaler is not None and acc.optimizer_step_was_skipped
        if self.ema and not skipped:
            self.ema.update(self.inner, self.step)
        out_of_time, seconds = self.budget.host_values()
        self.guard.check(loss_bad, grad_norm if acc.scaler is None else None,
                         (self.stop_signal is not None, out_of_time, seconds),
                         lambda flags: acc.reduce(flags, reduction="sum"))  # fmt: skip
        self.step += 1
        return grad_norm

    def _settle(self, verdict: Verdict) -> bool:
        """Act on the verdict of the last update: True if it stands; if it was bad it is undone (weights, AdamW's
        state and EMA as before it) and the run stops after ``max_bad_steps`` of them in a row."""
        self.budget.agree(verdict.seconds)
        if not verdict.bad:
            self.bad_in_row = 0
            return True
        self.guard.restore()
        self.opt.zero_grad(set_to_none=True)  # gradients computed since, on the undone weights, go with it
        self.step -= 1
        self.bad_in_row += 1
        self.acc.print(
            f"step {self.step}: non-finite loss, gradient norm or updated weights; the step was undone "
            f"({self.bad_in_row} in a row)"
        )
        if self.bad_in_row >= self.cfg.max_bad_steps:
            path = save_checkpoint(self)
            raise NonFiniteLossError(
                f"{self.bad_in_row} non-finite steps in a row at step {self.step}; stopped. Every one was undone, "
                f"so the weights are those after step {self.step}, checkpointed at {path}. Lower train.lr, raise "
                "train.warmup_steps, or use train.mixed_precision=bf16 instead of fp16, then rerun to resume from "
                "it (if the loss had diverged before this, delete that checkpoint to resume from an earlier one)."
            )
        return False

    def _host_work_due(self) -> bool:
        cfg = self.cfg
        periods = (cfg.log_every, cfg.eval_every, cfg.ckpt_every, cfg.sample_every)
        return self.step >= cfg.steps or any(p and self.step % p == 0 for p in periods)

    def fit(self) -> dict:
        """Train until ``cfg.steps`` optimizer steps; returns the kept model's validation metrics and throughput.

        SIGTERM or SIGUSR1 (a cluster's notice before it stops a job) finishes the current step, writes a checkpoint
        on every process together and raises ``Preempted``; rerunning the same command resumes exactly. While it
        runs, ``out_dir/run.lock`` keeps a second run out of the folder."""
        self.lock.acquire_everywhere(self.acc)
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
            self.lock.release()

    def _fit(self) -> dict:
        cfg, acc = self.cfg, self.acc
        ckpt = latest_checkpoint(self.out) if cfg.resume else None
        if ckpt is not None:
            self._resume(ckpt)
        if acc.is_main_process:
            (self.out / "recipe.json").write_text(json.dumps(self.recipe, indent=2))
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not acc.is_main_process, desc="train",
                   dynamic_ncols=True)  # fmt: skip
        loss_bad = torch.zeros((), dtype=torch.bool, device=acc.device)
        micro, images_seen, t0, grad_norm = 0, 0, None, None
        logs_sum: dict[str, torch.Tensor] = {}  # over the kept steps since the last log record
        step_logs: dict[str, torch.Tensor] = {}  # this step's micro-batches
        pending: tuple[dict, int] = ({}, 0)  # the logs of the update awaiting its verdict
        logs_count = step_count = 0  # micro-batches in each (fewer than log_every x grad_accum after a resume)
        preview_batch = None
        self.model.train()
        self.budget.start()
        t_run = time.perf_counter()
        stop, out_of_time = False, self.budget.spent_all or self.best.patience_spent  # a finished run only exports
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
                # the previous update's verdict: ready by now, or soon, while the GPU runs this step's backward
                verdict = self.guard.verdict(acc.num_processes)
                if verdict is not None:
                    if not self._settle(verdict):
                        step_logs, step_count, pending = {}, 0, ({}, 0)
                        loss_bad = torch.zeros_like(loss_bad)
                        bar.update(-1)
                        continue
                    logs_sum, logs_count = _add_logs(logs_sum, logs_count, pending)
                    late = verdict.stop or verdict.out_of_time or self.budget.spent_all
                else:
                    late = False
                grad_norm = self._update(loss_bad)
                pending, step_logs, step_count = (step_logs, step_count), {}, 0
                loss_bad = torch.zeros_like(loss_bad)
                bar.update(1)
                if t0 is None:  # throughput excludes the first step (start-up, allocation)
                    t0, images_seen = time.perf_counter(), 0
                if not (late or self._host_work_due()):
                    continue
                # the host acts at this step: its verdict first (so a bad update is never logged or saved)
                verdict = self.guard.verdict(acc.num_processes)
                if not self._settle(verdict):
                    bar.update(-1)
                    continue
                logs_sum, logs_count = _add_logs(logs_sum, logs_count, pending)
                pending = ({}, 0)
                stop, out_of_time = verdict.stop, verdict.out_of_time or self.budget.spent_all
                if cfg.log_every and self.step % cfg.log_every == 0:
                    rec = {k: float(v) / logs_count for k, v in logs_sum.items()}
                    rec["lr"] = self.opt.param_groups[0]["lr"]
                    rec["grad_norm"] = float(grad_norm)
                    if images_seen:
                        rec["images_per_s"] = images_seen / (time.perf_counter() - t0)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k in ("loss", "lr")})
                    self.log(rec)
                    logs_sum, logs_count = {}, 0
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    metrics = self.validate()
                    self.log({f"val/{k}": v for k, v in metrics.items()})
                    self.best.consider(self, metrics)
                    if self.best.patience_spent:
                        out_of_time = True
                        acc.print(f"step {self.step}: no better validation loss in {self.best.evals_since} "
                                  f"evaluations (best at step {self.best.kept['step']}); stopping early")  # fmt: skip
                if stop:
                    self._add_time(images_seen, t0)
                    path = save_checkpoint(self)
                    bar.close()
                    name = signal.Signals(self.stop_signal).name if self.stop_signal else "a stop signal"
                    msg = f"{name} received: checkpoint of step {self.step} written to {path}; rerun to resume"
                    acc.print(msg)
                    raise Preempted(msg)
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self._add_time(images_seen, t0)
                    t0, images_seen = time.perf_counter(), 0
                    save_checkpoint(self)
                if cfg.sample_every and self.step % cfg.sample_every == 0 and preview_batch is not None:
                    self.save_preview(preview_batch)  # after the checkpoint: a preview never costs one
                if self.step >= cfg.steps or out_of_time:
                    break
            else:
                self._end_epoch(usable, whole_epoch)
        bar.close()
        self._add_time(images_seen, t0)
        verdict = self.guard.verdict(acc.num_processes)
        if verdict is not None:
            self._settle(verdict)
        metrics = self.validate()
        if cfg.ckpt_every == 0 or self.step % cfg.ckpt_every or latest_checkpoint(self.out) is None:
            save_checkpoint(self)
        self.best.consider(self, metrics)
        kept, throughput = export_final(self, metrics, time.perf_counter() - t_run)
        if preview_batch is not None:
            self.save_preview(preview_batch)
        return {"metrics": kept["metrics"], "kept_step": kept["step"], "train_images_per_s": throughput,
                "skipped_images": self.skipped_images}  # fmt: skip

    def _add_time(self, images: int, t0: float | None):
        if t0 is not None and images:
            self.timed_images += images
            self.timed_seconds += time.perf_counter() - t0

    def _end_epoch(self, usable: int, whole_epoch: bool):
        check_epoch(self.acc, self.train_set, self.epoch, self.skipped_images, usable, whole_epoch)
        self.epoch, self.micro_in_epoch = self.epoch + 1, 0


def _add_logs(logs_sum: dict, count: int, pending: tuple[dict, int]) -> tuple[dict, int]:
    """The kept step's logs added to those since the last record."""
    logs, n = pending
    for k, v in logs.items():
        logs_sum[k] = logs_sum.get(k, 0.0) + v
    return logs_sum, count + n
