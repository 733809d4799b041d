"""The trainer's run folder: checkpoints written atomically and checksummed, exact resume, the exported ``final/``
and ``best/`` models, and the lock that keeps a second run out of a folder in use."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from visgen.checkpoint import CheckpointError, check_finite, file_sha256, save_tensors
from visgen.model_card import write_card
from visgen.train import sharding

if TYPE_CHECKING:
    from visgen.train.trainer import Trainer


class RunStorageError(RuntimeError):
    """The run folder cannot be written (read-only, missing, full disk)."""


class RunLockedError(RuntimeError):
    """Another live run holds the run folder."""


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (``trainer.json`` is written last, so its presence marks completion)."""
    root = Path(out_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "trainer.json").is_file())
    return done[-1] if done else None


class RunLock:
    """``out_dir/run.lock``: the process id and host of the run using the folder, created exclusively. A lock whose
    process is gone (on this host) is taken over with a message; one held by a live process, or by another host,
    stops the second run with the holder named."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / "run.lock"
        self.held = False

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a stale lock was taken over."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not _stale(holder):
                    raise RunLockedError(
                        f"{self.path.parent} is in use by the run of process {holder.get('pid')} on "
                        f"{holder.get('host')} (since {holder.get('since')}); wait for it to end, or give this run "
                        f"another train.out_dir. If that run is gone, delete {self.path}"
                    ) from None
                note = f"note: took over {self.path}, left by process {holder and holder.get('pid')}, which is gone"
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return note
        raise RunLockedError(f"could not take {self.path}: another run took it at the same moment")

    def acquire_everywhere(self, acc) -> None:
        """The main process takes the lock; every process stops if it could not."""
        error = None
        if acc.is_main_process:
            try:
                note = self.acquire()
                if note:
                    print(note, file=sys.stderr)
            except RunLockedError as e:
                error = e
        held_elsewhere = torch.tensor([float(error is not None)], device=acc.device)
        if acc.reduce(held_elsewhere, reduction="sum").item():
            raise error or RunLockedError(f"{self.path.parent} is in use by another run (the main process could not "
                                          "lock it)")  # fmt: skip

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # half-written by a run that died at its start: stale

    def release(self):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _stale(holder: dict) -> bool:
    """The holder's process is gone: same host and no such process (or this very process, from an earlier run)."""
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process cannot be checked from here
    pid = holder.get("pid")
    if pid == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError):
        return False
    return False


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


def where_good(t: Trainer) -> str:
    good = t.last_good or latest_checkpoint(t.out)
    return f"the last good checkpoint is {good}" if good else "no checkpoint has been written yet"


def save_checkpoint(t: Trainer) -> Path:
    """Write a checkpoint atomically: everything goes to ``step-N.tmp``, renamed when complete. Weights that are not
    finite are never written."""
    from visgen.train.trainer import NonFiniteLossError

    acc, final = t.acc, t.out / "checkpoints" / f"step-{t.step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    task = acc.unwrap_model(t.model)
    state = sharding.full_state_dict(t.model, task, acc.is_main_process)  # whole on the main process
    if not finite_everywhere(t, task):  # every process decides alike
        reason = f"the weights of step {t.step} are not finite"
        try:
            check_finite(state, f"step {t.step}")  # names the tensor where this process holds it
        except CheckpointError as e:
            reason = str(e)
        raise NonFiniteLossError(f"{reason}: no checkpoint written at step {t.step}; {where_good(t)}")
    ema = ema_state(t, task)
    opt_state = sharding.optimizer_state(t.model, task, t.opt.optimizer, acc.is_main_process)
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
            trainer_state = {**t.progress(), "num_processes": acc.num_processes, "recipe": t.recipe,
                             "sha256": {name: file_sha256(tmp / name) for name in files}}  # fmt: skip
            (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    except (OSError, RuntimeError) as e:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # free what the partial write took
        raise RunStorageError(
            f"could not write the checkpoint of step {t.step} to {final}: {e}. {where_good(t)}; "
            "free disk space or fix the folder's permissions and rerun the same command to resume"
        ) from e
    if acc.is_main_process:
        old = sorted(p for p in final.parent.glob("step-*") if p.is_dir() and p != final and p.suffix != ".tmp")
        for p in old[: max(0, len(old) - (t.cfg.keep_ckpts - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    t.last_good = final
    acc.wait_for_everyone()
    return final


def check_same_model(here: dict, saved: dict, path: Path):
    """A checkpoint to resume must hold this run's model: the same tensors under the same names and shapes. A run
    folder left by another recipe (or the same recipe with other sizes) would otherwise fail deep in a copy."""
    differ = [f"{k} {tuple(saved[k].shape)} there, {tuple(v.shape)} here" for k, v in here.items()
              if k in saved and saved[k].shape != v.shape]  # fmt: skip
    missing, extra = sorted(set(here) - set(saved)), sorted(set(saved) - set(here))
    if differ or missing or extra:
        what = (
            differ[:1] or [f"{k} missing there" for k in missing[:1]] or [f"{k} not in this model" for k in extra[:1]]
        )
        raise CheckpointError(
            f"checkpoint {path} holds another model than this run's ({len(differ)} tensors of other shapes, "
            f"{len(missing)} missing, {len(extra)} extra; first: {what[0]}). Resume it with the settings it was "
            "trained with, or give this run another train.out_dir"
        )


def load_checkpoint(t: Trainer, path: Path) -> dict:
    """Restore model, task extras, EMA, optimizer, loss scaler and RNG; every file is checked against the checksum
    recorded when it was written. Returns the trainer's progress as saved (``Trainer.progress``)."""
    acc = t.acc
    state = json.loads((path / "trainer.json").read_text())
    for name, digest in state.get("sha256", {}).items():
        if not (path / name).is_file() or file_sha256(path / name) != digest:
            raise CheckpointError(
                f"checkpoint {path} is damaged: {name} is missing or differs from when it was written. Delete "
                "this checkpoint folder to resume from the one before it"
            )
    if state["num_processes"] != acc.num_processes:
        acc.print(
            f"note: resuming a {state['num_processes']}-process run on {acc.num_processes}; "
            "the data order will differ from an uninterrupted run"
        )
    task = acc.unwrap_model(t.model)
    sharded = sharding.is_sharded(t.model)
    d = acc.device  # safetensors takes "cpu" or "cuda:N", not the "cpu:0" of a multi-process CPU run
    device = "cpu" if sharded or d.type == "cpu" else str(d)  # FSDP shards from full CPU tensors
    weights = load_file(str(path / "task.safetensors"), device=device)
    check_finite(weights, f"checkpoint {path}")
    if not sharded:
        check_same_model(task.state_dict(), weights, path)
    if t.ema:
        ema = load_file(str(path / "model" / "ema.safetensors"), device=device)
        if sharded:  # the model shards the EMA weights; each process reads its shard back
            with_ema = {**weights, **{f"model.{k}": v for k, v in ema.items()}}
            sharding.load_full_state_dict(t.model, task, with_ema)
            t.ema.capture(task.model)
        else:
            t.ema.load_state_dict(ema)
    sharding.load_full_state_dict(t.model, task, weights)
    opt_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    try:
        sharding.load_optimizer_state(t.model, task, t.opt.optimizer, opt_state)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from e
    if acc.scaler is not None and (path / "scaler.pt").is_file():
        acc.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    rng = path / f"rng-{acc.process_index}.safetensors"
    if rng.is_file():
        _load_rng(rng)
    t.last_good = path
    return state


def _replace(folder: Path, write) -> None:
    """Build ``folder`` in ``folder.tmp`` with ``write(tmp)``, then swap it in: the folder is always complete."""
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export(t: Trainer, name: str, summary: dict, card: dict | None = None, source: Path | None = None):
    """Write the model (EMA weights as ``ema.safetensors``) with ``summary`` as its ``metrics.json`` (and ``card``
    in its model card) to ``out_dir/name``, atomically. ``source``: an exported folder to take the weights from
    (the best model, into ``final/``) instead of the model in memory."""
    task = t.acc.unwrap_model(t.model)
    if source is None:
        state = sharding.full_state_dict(t.model, task, t.acc.is_main_process)  # every process: FSDP gathers
        ema = ema_state(t, task)
    if t.acc.is_main_process:

        def write(tmp: Path):
            if source is None:
                task.model.save_pretrained(tmp, ema_state=ema, state=sharding.model_part(state))
            else:
                shutil.copytree(source, tmp)
            (tmp / "metrics.json").write_text(json.dumps(summary, indent=2))
            if card is not None:
                write_card(tmp, training=card)

        try:
            _replace(t.out / name, write)
        except (OSError, RuntimeError) as e:
            raise RunStorageError(
                f"could not export {t.out / name}: {e}. {where_good(t)}; rerun the same command once there is "
                "space to export from it"
            ) from e
    t.acc.wait_for_everyone()


class BestModel:
    """The lowest validation loss seen (``loss`` of the task's metrics) and its model, kept in ``out_dir/best``: what
    ``final/`` holds at the end (``train.keep_best``), and the evaluations since then (``early_stop_patience``)."""

    def __init__(self, keep: bool, patience: int):
        self.keep, self.patience = keep, patience
        self.kept: dict | None = None  # {"step", "metrics"}
        self.evals_since = 0

    def state(self) -> dict:
        return {"best": self.kept, "evals_since_best": self.evals_since}

    def load(self, state: dict, out: Path):
        self.kept, self.evals_since = state.get("best"), state.get("evals_since_best", 0)
        if self.kept is not None and not (out / "best" / "metrics.json").is_file():
            self.kept = None  # its folder was deleted: the best is chosen afresh

    def consider(self, t: Trainer, metrics: dict) -> None:
        """Keep the model in ``best/`` when its validation loss is the lowest so far."""
        loss = metrics.get("loss")
        if not self.keep or not isinstance(loss, (int, float)) or loss != loss:
            return
        if self.kept is None or loss < self.kept["metrics"]["loss"]:
            self.kept, self.evals_since = {"step": t.step, "metrics": metrics}, 0
            export(t, "best", {"step": t.step, "metrics": metrics})
        else:
            self.evals_since += 1

    @property
    def patience_spent(self) -> bool:
        return bool(self.patience) and self.evals_since >= self.patience


def finite_everywhere(t: Trainer, task: torch.nn.Module) -> bool:
    """Every weight and floating-point buffer is finite on every process (a sharded model's in every shard)."""
    from visgen.train.guard import all_finite

    floats = [x for x in [*task.parameters(), *task.buffers()] if x.is_floating_point()]
    bad = ~all_finite(floats, t.acc.device)
    return t.acc.reduce(bad.float().reshape(1), reduction="sum").item() == 0


def ema_state(t: Trainer, task: torch.nn.Module) -> dict | None:
    """The generator's state dict with EMA parameters, whole (on the main process under FSDP)."""
    if not t.ema:
        return None
    if not sharding.is_sharded(t.model):
        return t.ema.full_state_dict(task.model) if t.acc.is_main_process else None
    with t.ema.applied_to(task.model):  # each process puts its shard of the EMA in; the gather joins them
        return sharding.model_part(sharding.full_state_dict(t.model, task, t.acc.is_main_process))


def export_final(t: Trainer, metrics: dict, seconds: float) -> tuple[dict, float | None]:
    """Write ``final/``: the best model seen (``best/``) where one is kept, else the model as it is, with its
    summary and model card. ``metrics``: the last step's validation. Returns (the kept {"step", "metrics"}, the run's
    training images/s)."""
    kept = t.best.kept or {"step": t.step, "metrics": metrics}
    throughput = t.timed_images / t.timed_seconds if t.timed_seconds > 0 else None
    summary = {"step": t.step, "kept_step": kept["step"], "metrics": kept["metrics"], "last_metrics": metrics,
               "train_images_per_s": throughput, "train_seconds": seconds,
               "skipped_images": t.skipped_images}  # fmt: skip
    if t.cfg.budget_minutes:  # the run's training time in all, over its sessions
        summary["budget_seconds"] = t.budget.spent
    card = {"command": t.command, "steps": t.step, "kept_step": kept["step"], "processes": t.acc.num_processes,
            "train_images_per_s": throughput, "recipe": t.recipe,
            "validation": {k: float(v) for k, v in kept["metrics"].items() if isinstance(v, (int, float))}}  # fmt: skip
    export(t, "final", summary, card, source=t.out / "best" if t.best.kept else None)
    return kept, throughput
