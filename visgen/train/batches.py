"""The trainer's data order: each process's share of a permutation fixed by (seed, epoch), resumable mid-epoch, as
a DataLoader over images or whole batches gathered from cached tokens on the device."""

from __future__ import annotations

import signal

import torch

from visgen.data import DataError, batch_size_of, collate

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class EpochSampler(torch.utils.data.Sampler):
    """This process's share of a permutation fixed by (seed, epoch), starting ``start`` items in."""

    def __init__(self, n: int, seed: int, epoch: int, rank: int, world: int, per_epoch: int, start: int = 0):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        self.indices = perm[rank : per_epoch * world : world][start:]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def ignore_stop_signals(_worker_id: int):
    # data-loader workers leave SIGTERM / SIGUSR1 to the trainer, which checkpoints and then shuts them down
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def train_batches(data, sampler: EpochSampler, batch_size: int, num_workers: int):
    """The epoch's batches from ``sampler``'s order; data with ``get_batch`` (cached tokens) is gathered whole
    batches at a time where it lies, with no per-item Python and no copy a step."""
    if hasattr(data, "get_batch"):
        idx = torch.tensor(sampler.indices, dtype=torch.long).to(getattr(data, "device", "cpu"))
        n = len(idx) // batch_size * batch_size
        return (data.get_batch(b) for b in idx[:n].split(batch_size))
    return torch.utils.data.DataLoader(
        data, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers, drop_last=True,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator(),  # its own, so making a loader never moves the global RNG (exact resume)
        worker_init_fn=ignore_stop_signals,
    )  # fmt: skip


def val_batches(data, n: int, rank: int, world: int, batch_size: int, num_workers: int, device):
    """This process's share of the first ``n`` validation items, on ``device``."""
    if hasattr(data, "get_batch"):  # cached tokens
        yield from (data.get_batch(b) for b in torch.arange(rank, n, world).split(batch_size))
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(data, list(range(rank, n, world))), batch_size=batch_size, collate_fn=collate,
        num_workers=num_workers, generator=torch.Generator(), worker_init_fn=ignore_stop_signals,
    )  # fmt: skip
    for batch in loader:
        if batch_size_of(batch):
            yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def check_epoch(acc, data, epoch: int, skipped: int, usable: int, whole_epoch: bool):
    """At an epoch's end: a DataError if a whole epoch gave no usable image on any process, else a note of the
    unreadable images skipped so far (summed over the processes)."""
    counts = torch.tensor([float(skipped), float(usable)], device=acc.device)
    skipped, usable = acc.reduce(counts, "sum").tolist()
    if whole_epoch and usable == 0:
        where = getattr(getattr(data, "cfg", None), "path", None) or "the training data"
        raise DataError(
            f"epoch {epoch} yielded no usable image from {where}: {int(skipped)} unreadable images skipped "
            "so far. Check the files (a corrupt copy or an unpacking error?)"
        )
    if skipped:
        acc.print(f"epoch {epoch}: {int(skipped)} unreadable images skipped so far")
