"""What the trainer reads and writes of a model and its optimizer, the same for a replicated model (one process, DDP)
and a sharded one (FSDP with ``use_orig_params``, as accelerate's FSDP plugin prepares it).

Under FSDP a process holds a flat shard of each wrapped unit, so a module's ``state_dict`` and an optimizer's state
are pieces. The functions here gather the full tensors for a checkpoint and scatter them back on resume, so a
checkpoint is the same whatever wrote it: model state by parameter name, optimizer state keyed by parameter name
too (``by_name``), which is what lets a checkpoint written by 2 FSDP processes resume on 1 process or under DDP,
and the other way round. Every function is collective under FSDP: all processes call it together.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn


def _fsdp():
    # imported on use: torch.distributed.fsdp takes a second to import, and a model can only be FSDP once it is
    import torch.distributed.fsdp as fsdp

    return fsdp


def is_sharded(model: nn.Module) -> bool:
    """``model`` (as prepared) is wrapped in FSDP."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FullyShardedDataParallel)


def _full(model: nn.Module, rank0_only: bool):
    # offload_to_cpu moves each gathered tensor off the GPU at once; on a CPU device the move is no copy, and the
    # optimizer's gathered states would alias one reused buffer (exp_avg came back equal to exp_avg_sq)
    offload, fsdp = model.compute_device.type != "cpu", _fsdp()
    return fsdp.FullyShardedDataParallel.state_dict_type(
        model, fsdp.StateDictType.FULL_STATE_DICT,
        fsdp.FullStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only),
        fsdp.FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only),
    )  # fmt: skip


def full_state_dict(model: nn.Module, task: nn.Module, main: bool = True) -> dict[str, torch.Tensor]:
    """``task``'s state dict with full tensors on the CPU for the main process (``main``), an empty dict for the
    others; ``model`` is ``task`` as prepared (the FSDP root, DDP, or ``task`` itself)."""
    if is_sharded(model):
        with _full(model, rank0_only=True):  # every process takes part; the main one receives
            state = model.state_dict()
    elif not main:  # replicated: the others have nothing to gather
        return {}
    else:
        state = task.state_dict()
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def load_full_state_dict(model: nn.Module, task: nn.Module, state: dict[str, torch.Tensor]):
    """Put a full state dict (what ``full_state_dict`` returned) into the model, sharding it under FSDP; every
    process passes the whole dict."""
    if is_sharded(model):
        with _full(model, rank0_only=False):
            model.load_state_dict(state)
    else:
        task.load_state_dict(state)


def _names(task: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of every parameter of ``optimizer``, in the optimizer's order (groups in turn)."""
    name_of = {id(p): k for k, p in task.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def optimizer_state(model: nn.Module, task: nn.Module, optimizer: torch.optim.Optimizer, main: bool = True) -> dict:
    """The optimizer's full state keyed by parameter name for the main process (``main``), ``{}`` for the others."""
    if is_sharded(model):
        with _full(model, rank0_only=True):
            state = _fsdp().FullyShardedDataParallel.optim_state_dict(model, optimizer)  # keyed by name already
        return {**state, "by_name": True} if state else state
    if not main:
        return {}
    sd = optimizer.state_dict()  # keyed by position: 0, 1, ... over the groups' parameters in order
    names = _names(task, optimizer)
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": {names[i]: s for i, s in sd["state"].items()}, "param_groups": groups, "by_name": True}


def load_optimizer_state(model: nn.Module, task: nn.Module, optimizer: torch.optim.Optimizer, state: dict):
    """Load what ``optimizer_state`` returned (or an older checkpoint's state keyed by position) into
    ``optimizer``; every process passes the whole state."""
    state = dict(state)
    named = [*state.get("state", {}), *(p for g in state.get("param_groups", []) for p in g["params"])]
    by_name = state.pop("by_name", False) or any(isinstance(k, str) for k in named)
    if is_sharded(model):
        if not by_name:
            raise ValueError(
                "this checkpoint's optimizer state is keyed by position (written before checkpoints named their "
                "parameters); resume it without FSDP once to rewrite it"
            )
        with _full(model, rank0_only=False):
            optimizer.load_state_dict(
                _fsdp().FullyShardedDataParallel.optim_state_dict_to_load(model, optimizer, state)
            )
        return
    if by_name:
        names = _names(task, optimizer)
        index = {k: i for i, k in enumerate(names)}
        missing = sorted(set(names) - {p for g in state["param_groups"] for p in g["params"]})
        if missing:
            raise ValueError(f"the optimizer state has no entry for {missing[:3]}: it belongs to another model")
        groups = [{**g, "params": [index[k] for k in g["params"]]} for g in state["param_groups"]]
        state = {"state": {index[k]: s for k, s in state["state"].items()}, "param_groups": groups}
    optimizer.load_state_dict(state)


def model_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The generator's (or tokenizer's) entries of a task's state dict: a task holds its model as ``model``."""
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


@contextlib.contextmanager
def evaluated(model: nn.Module, task: nn.Module):
    """The model to evaluate, sample previews from or validate: ``task.model`` itself, or under FSDP a whole
    unsharded copy on this process (``blank_copy`` loaded with the gathered weights), so each process can run it
    alone for as many batches as it has. FSDP's ``summon_full_params`` is not enough: a wrapped block reshards
    after its own forward, and inference reads the next block's norm weight outside it."""
    if not is_sharded(model):
        yield task.model
        return
    with _full(model, rank0_only=False):
        state = model_part(model.state_dict())
    replica = task.model.blank_copy()
    replica.load_state_dict(state)
    yield replica.to(model.compute_device).train(task.model.training)
