"""``train.compile: graph``: a generator's training loss, forward and backward, compiled whole and replayed as CUDA
graphs (``torch.compile(mode="reduce-overhead")``).

A small model's step is a few milliseconds of GPU work behind several hundred kernel launches, so the host's launching
is the step's time (``results/bench-trainer.json``: at the CIFAR-10 token recipe's size the GPU was busy 11 of the
step's 24 ms in a bare eager loop). A captured graph is launched as one. Every generator family trains through
``Generator.loss``, so every family can take it; tokenizers (several losses, a discriminator that starts late) do not.
Its GPU speed is ``bench/trainer.py``'s mode ``graph`` (not measured yet when this was written).

The graph serves training only: with gradients off or the model in eval mode (validation, previews, other batch
sizes) the eager loss runs. It needs one process (the gradients of DDP and FSDP are reduced in hooks a graph does not
hold) and ``grad_accum`` 1 (a graph's outputs are overwritten by its next replay, gradients accumulated across
micro-batches with them). Each batch must have the training batch's shape: the trainer's batches all do.
"""

from __future__ import annotations

import torch
from torch import nn

from visgen.config import ConfigError


class GraphedLoss:
    """``generator.loss`` replayed as CUDA graphs while the generator trains with gradients on, eager otherwise."""

    def __init__(self, generator: nn.Module):
        self.generator, self.eager = generator, generator.loss
        self.graphed = torch.compile(self.eager, mode="reduce-overhead", dynamic=False)

    def __call__(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.generator.training and torch.is_grad_enabled():
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last one's outputs may be overwritten
            return self.graphed(tokens, labels)
        return self.eager(tokens, labels)


def capture_losses(task: nn.Module, processes: int, grad_accum: int):
    """Replace the ``loss`` of every generator inside ``task`` by a ``GraphedLoss``. A task without a generator,
    more than one process or ``grad_accum`` above 1 is a ``ConfigError`` saying what to use."""
    from visgen.generator import Generator

    if processes > 1:
        raise ConfigError(f"train.compile=graph runs on one process, not {processes}: use train.compile=true")
    if grad_accum > 1:
        raise ConfigError(f"train.compile=graph needs train.grad_accum=1, not {grad_accum}: use train.compile=true")
    if getattr(task, "teacher", None) is not None:
        raise ConfigError("train.compile=graph captures Generator.loss, which distillation does not train through: "
                          "use train.compile=true")  # fmt: skip
    generators = [
        m for m in task.modules() if isinstance(m, Generator) and any(p.requires_grad for p in m.parameters())
    ]
    if not generators:
        raise ConfigError("train.compile=graph captures a generator's loss; this task trains none: use "
                          "train.compile=true")  # fmt: skip
    for g in generators:
        g.loss = GraphedLoss(g)
