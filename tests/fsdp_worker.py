"""Two gloo processes train a tiny generator under torch FSDP (full sharding, each Block its own unit,
``use_orig_params``: what configs/accelerate/fsdp-2gpu.yaml asks of accelerate) beside an unsharded copy trained on
the whole batch, and check the trainer's checkpoint functions (visgen.train.sharding) both ways: sharded state
gathered equals the copy's, a sharded checkpoint resumes unsharded and an unsharded one resumes sharded, the EMA
gathers and restores. Run by tests/test_sharding.py:
torchrun --nproc_per_node=2 tests/fsdp_worker.py OUT (writes OUT.0 and OUT.1). The trainer's own FSDP path is tested
beside it through tests/fsdp_trainer.py."""

import copy
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from visgen.generator import Generator, GeneratorConfig
from visgen.nn.transformer import Block
from visgen.tokenizers import VQConfig, VQTokenizer
from visgen.train import sharding
from visgen.train.ema import EMA
from visgen.train.generator_task import GeneratorTask

TINY_VQ = VQConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=8, codebook_size=32, codebook_dim=4)


def new_task(seed: int) -> GeneratorTask:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=4, backbone="tiny", class_dropout=0.0)
    return GeneratorTask(Generator(cfg, tokenizer=VQTokenizer(TINY_VQ).eval()))


def shard(task: GeneratorTask) -> FSDP:
    return FSDP(task, auto_wrap_policy=ModuleWrapPolicy({Block}), use_orig_params=True, device_id=torch.device("cpu"))


def adamw(module):
    return torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.1)


def step(model, opt, ema, tokens, labels, n):
    loss, _ = model({"tokens": tokens, "label": labels}, n)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    ema.update(model.module.model if isinstance(model, FSDP) else model.model, n)


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:4]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].numel())


def opt_diff(a: dict, b: dict) -> float:
    assert set(a["state"]) == set(b["state"]), sorted(set(a["state"]) ^ set(b["state"]))[:4]
    return max(max_diff({"m": a["state"][k]["exp_avg"], "v": a["state"][k]["exp_avg_sq"]},
                        {"m": b["state"][k]["exp_avg"], "v": b["state"][k]["exp_avg_sq"]}) for k in a["state"])  # fmt: skip


def main(out: str):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randint(0, 32, (8, 64), generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(4)]
    half = lambda t: t.chunk(world)[rank]  # noqa: E731  each process's part of the global batch
    report = {}

    # 1. three steps sharded on two halves of each batch, against the whole batch unsharded
    task = new_task(0)
    plain = copy.deepcopy(task)
    wrapped = shard(task)
    opt, plain_opt = adamw(wrapped), adamw(plain)
    ema, plain_ema = EMA(task.model, 0.9), EMA(plain.model, 0.9)
    for n, (tokens, labels) in enumerate(data[:3]):
        step(wrapped, opt, ema, half(tokens), half(labels), n)
        step(plain, plain_opt, plain_ema, tokens, labels, n)
    state = sharding.full_state_dict(wrapped, task)
    osd = sharding.optimizer_state(wrapped, task, opt)
    with ema.applied_to(task.model):
        ema_full = sharding.full_state_dict(wrapped, task)
    plain_state = sharding.full_state_dict(plain, plain)
    plain_osd = sharding.optimizer_state(plain, plain, plain_opt)
    if rank == 0:
        report["trained_weights"] = max_diff(state, plain_state)
        report["trained_optimizer"] = opt_diff(osd, plain_osd)
        ema_state = {f"model.{k}": v for k, v in plain_ema.full_state_dict(plain.model).items()}
        report["trained_ema"] = max_diff(ema_full, ema_state)
    else:
        report["nonmain_empty"] = len(state) == 0 and len(osd) == 0
    # evaluation on a whole copy: one process alone may run it, batch after batch (uneven validation shards), and
    # inference (no grad) reads the next block's norm weight outside that block
    with sharding.evaluated(wrapped, task) as model:
        if rank == 0:
            model.eval()
            with torch.no_grad():
                losses = [model.loss(*data[i]).item() for i in (2, 3)]
                refs = [plain.model.eval().loss(*data[i]).item() for i in (2, 3)]
            report["gathered_loss"] = max(abs(a - b) for a, b in zip(losses, refs))
            plain.model.train()
    dist.barrier()

    # every process reads the checkpoint files, as the trainer does
    blob = [state, osd, ema_full] if rank == 0 else [None, None, None]
    dist.broadcast_object_list(blob, src=0)
    state, osd, ema_full = blob
    plain_blob = [plain_state, plain_osd]
    dist.broadcast_object_list(plain_blob, src=0)
    plain_state, plain_osd = plain_blob

    # 2. sharded checkpoint -> one unsharded process; unsharded checkpoint -> two sharded processes (fresh inits)
    one = new_task(7)
    one_opt = adamw(one)
    sharding.load_full_state_dict(one, one, state)
    sharding.load_optimizer_state(one, one, one_opt, copy.deepcopy(osd))
    two_task = new_task(8)
    two = shard(two_task)
    two_opt = adamw(two)
    two_ema = EMA(two_task.model, 0.9)
    with_ema = {**plain_state, **{k: v for k, v in ema_full.items() if k.startswith("model.")}}
    sharding.load_full_state_dict(two, two_task, with_ema)
    two_ema.capture(two_task.model)
    sharding.load_full_state_dict(two, two_task, plain_state)
    sharding.load_optimizer_state(two, two_task, two_opt, copy.deepcopy(plain_osd))
    tokens, labels = data[3]
    step(one, one_opt, EMA(one.model, 0.9), tokens, labels, 3)
    step(two, two_opt, two_ema, half(tokens), half(labels), 3)
    step(plain, plain_opt, plain_ema, tokens, labels, 3)
    two_state = sharding.full_state_dict(two, two_task)
    with two_ema.applied_to(two_task.model):
        two_ema_full = sharding.full_state_dict(two, two_task)
    if rank == 0:
        ref = sharding.full_state_dict(plain, plain)
        report["resumed_unsharded"] = max_diff(sharding.full_state_dict(one, one), ref)
        report["resumed_sharded"] = max_diff(two_state, ref)
        ema_ref = {f"model.{k}": v for k, v in plain_ema.full_state_dict(plain.model).items()}
        report["resumed_sharded_ema"] = max_diff(two_ema_full, ema_ref)
        # a checkpoint of another model is refused by name
        try:
            sharding.load_optimizer_state(one, one, adamw(one), {"state": {}, "param_groups": [{"params": ["x"]}]})
            report["foreign_refused"] = False
        except ValueError as e:
            report["foreign_refused"] = "belongs to another model" in str(e)
    with open(f"{out}.{rank}", "w") as fh:  # each process its own report
        json.dump(report, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
