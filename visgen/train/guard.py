"""The trainer's non-finite guard: an update is kept only if its loss, gradient norm and updated weights are finite
on every process, decided on the device and read by the host one step later, so no step waits for the GPU.

Before each update the guard copies the weights, AdamW's state and the EMA into one buffer per dtype; the update
and its EMA step go ahead at once; its verdict (with the host's stop and time flags, summed over the processes in
the same all-reduce) is copied to pinned host memory without blocking and read when the next step's gradients are
ready, or at once where the host must act (a log, a checkpoint, the end). A bad update is undone from the copy,
together with the next step's gradients, which were computed on its weights. A checkpoint is only written after
its step's verdict is read, so poisoned weights are never saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Verdict:
    """What every process agreed on about one update."""

    bad: bool  # non-finite loss, gradient norm or updated weights somewhere
    stop: bool  # a stop signal arrived on some process
    out_of_time: bool  # past the time limit on some process
    seconds: float  # the training time of the run, the processes' mean


class StepGuard:
    """Copies the training state before each update and decides, a step later, whether the update stands."""

    def __init__(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer, extra: list[torch.Tensor],
                 device: torch.device):  # fmt: skip
        self.params, self.opt, self.extra, self.device = params, optimizer, extra, device
        self.copies: list[torch.Tensor] | None = None
        self.had_state: list[bool] = []
        self._live: list[torch.Tensor] = []
        self._live_key = -1
        self.pending: torch.Tensor | None = None
        cuda = device.type == "cuda"
        self._host = torch.zeros(4, pin_memory=cuda)
        self._event = torch.cuda.Event() if cuda else None

    def _tensors(self) -> list[torch.Tensor]:
        key = sum(len(s) for s in self.opt.state.values())  # AdamW's state appears at its first step
        if key != self._live_key:
            live = list(self.params)
            for p in self.params:
                live += [v for _, v in sorted(self.opt.state.get(p, {}).items()) if torch.is_tensor(v)]
            self._live, self._live_key = live + list(self.extra), key
        return self._live

    def save(self):
        """Copy the weights, the optimizer's state and the extras (the EMA) before an update."""
        live = self._tensors()
        self.had_state = [p in self.opt.state for p in self.params]
        if self.copies is None or len(self.copies) != len(live):
            self.copies = flat_copies(live)
        with torch.no_grad():
            torch._foreach_copy_(self.copies, live)

    def restore(self):
        """Put back what ``save`` copied."""
        for p, had in zip(self.params, self.had_state):
            if not had:
                self.opt.state.pop(p, None)  # the bad step was the first: AdamW starts from nothing again
        self._live_key = -1
        with torch.no_grad():
            torch._foreach_copy_(self._tensors(), self.copies)

    def check(self, loss_bad: torch.Tensor, grad_norm: torch.Tensor | None, host: tuple[float, float, float],
              reduce) -> None:  # fmt: skip
        """Start deciding the update just made: its verdict is computed and summed over processes (``reduce``) on
        the device, then copied to the host without waiting. ``host``: this process's (stop, out_of_time, seconds);
        ``grad_norm``: None where an infinite norm is not an error (fp16's loss scaler skipped the step)."""
        bad = loss_bad | ~all_finite(self.params, loss_bad.device)
        if grad_norm is not None:
            bad = bad | ~torch.isfinite(grad_norm)
        # host values enter by fill kernels, not copies: a host-to-device copy would wait for the step
        flags = torch.stack([bad.float(), *(bad.new_full((), float(x), dtype=torch.float32) for x in host)])
        flags = reduce(flags)
        self._host.copy_(flags, non_blocking=True)
        if self._event is not None:
            self._event.record()
        self.pending = flags

    def verdict(self, processes: int) -> Verdict | None:
        """The verdict of the update last checked (waiting for it if it is not ready), or None if none is pending."""
        if self.pending is None:
            return None
        if self._event is not None:
            self._event.synchronize()
        self.pending = None
        bad, stop, late, seconds = self._host.tolist()
        return Verdict(bad > 0, stop > 0, late > 0, seconds / processes)


def flat_copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
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


def all_finite(tensors: list[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """One device boolean: every value of every tensor is finite (max |x| per tensor, NaN propagating). Empty
    tensors (an FSDP process's share of a parameter can be empty) have no max and are left out."""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack(torch._foreach_norm(tensors, float("inf"))).isfinite().all()
