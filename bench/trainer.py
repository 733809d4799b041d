"""What the trainer costs over a bare training loop, in the same fixed time on the same model, batch and optimizer.

Sizes: ``cifar`` (the CIFAR-10 token recipe's model: 8 x 256, 64 tokens, the bundled VQ's 1024 codes, class
dropout) and ``gptb`` (GPT-B, 256 tokens, vocab 16384). The bare loop is what a user writes: bf16 autocast,
``gen.loss``, backward, fused AdamW, nothing else, no host sync. The ``Trainer`` runs with the token recipe's settings
(gradient clipping 1.0, EMA 0.999, weight decay, bf16, its non-finite guard and time checks) on the recipe's data path
(a ``TokenDataset`` of cached tokens with flips), in three modes, the bare loop likewise: ``eager``, ``compiled``
(``train.compile=true``: the blocks compiled regionally) and ``graph`` (``train.compile=graph``: the whole loss
compiled and replayed as CUDA graphs). ``trainer_over_bare_{size}_b{batch}`` is the best trainer mode over the eager
bare loop (what a user would otherwise write); ``..._same_mode`` compares each mode with its own bare loop.

``--profile DIR`` also profiles ten steps of each at the recipe's size, after every timing (``profile-bare.txt``,
``profile-trainer.txt``: torch.profiler's table by device time; ``profile-*-host.txt``: cProfile's tables of the
host's Python over 50 steps of the bare loop and one 200-step fit of the trainer; ``profile-trainer-syncs.txt``:
where a 20-step fit makes the host wait for the GPU) and records kernels, device ms and wall ms per step.

    python bench/trainer.py --name bench-trainer --profile $OUT     # a GPU
    python bench/trainer.py --tiny --seconds 2                       # a check on the CPU
"""

from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import Record, free_cached_memory, parser, profile_steps, profile_summary, sync

from visgen.generator import Generator, GeneratorConfig
from visgen.train.generator_task import GeneratorTask, TokenDataset
from visgen.train.graph_step import GraphedLoss
from visgen.train.trainer import TrainConfig, Trainer

RECIPE = dict(clip_grad=1.0, ema_decay=0.999, weight_decay=0.05, lr=6e-4)  # generators/cifar10-token-ar.yaml
SIZES = {"cifar": [256], "gptb": [64, 256]}


def build(size: str, tiny: bool) -> Generator:
    if tiny:
        return Generator(GeneratorConfig(tokenizer="asset:cifar10-vq", image_size=32, num_classes=10,
                                         backbone={"preset": "tiny"}, class_dropout=0.1))  # fmt: skip
    if size == "cifar":
        return Generator(GeneratorConfig(tokenizer="asset:cifar10-vq", image_size=32, num_classes=10,
                                         backbone="cifar", class_dropout=0.1))  # fmt: skip
    from token_ar import build as build_gptb

    return build_gptb(False)


def random_tokens(gen: Generator, n: int, seed: int = 0) -> TokenDataset:
    """A token cache of ``n`` random grids with flipped copies, as the recipe's ``tokenizer.cache`` builds it."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, *gen.schedule.grid)
    tokens = torch.randint(0, gen.tokenizer.vocab_size, shape, generator=g)
    flipped = torch.randint(0, gen.tokenizer.vocab_size, shape, generator=g)
    labels = torch.randint(0, gen.config.num_classes, (n,), generator=g)
    return TokenDataset(torch.stack([tokens, flipped], 1), labels)


def autocast(device: torch.device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def bare(gen: Generator, batch: int, seconds: float, mode: str, device, profile: Path | None = None) -> dict:
    """The bare loop on the recipe's model for ``seconds`` after three warm-up steps: images/s and steps. ``mode``:
    eager, compiled (the blocks, regionally) or graph (the whole loss compiled and replayed as CUDA graphs)."""
    model = copy.deepcopy(gen).to(device).train()
    if mode == "compiled":
        model.backbone.compile_blocks()
    if mode == "graph":
        model.loss = GraphedLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    data = random_tokens(gen, batch * 16)
    tokens, labels = data.tokens.to(device), data.labels.to(device)

    def step(i: int):
        j = (i % 16) * batch
        with autocast(device):
            loss = model.loss(tokens[j : j + batch], labels[j : j + batch])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(3):
        step(i)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step(n)
        n += 1
    sync()
    out = {"images_per_s": n * batch / (time.perf_counter() - t0), "steps": n}
    if profile is not None:
        out.update(profile_steps(lambda: step(0), profile / "profile-bare.txt", "bare loop"))
        host_profile(lambda: [step(i) for i in range(50)], 50, profile / "profile-bare-host.txt", "bare loop")
    return out


def host_profile(run, steps: int, table: Path, title: str):
    """Where the host's time goes in Python over ``steps`` steps (``run`` runs them): cProfile's functions by their
    own time, so host work that no torch op shows (wrappers, lookups, waits) is named."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    sync()
    t0 = time.perf_counter()
    prof.enable()
    run()
    sync()
    prof.disable()
    wall = time.perf_counter() - t0
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
    text.write("\n== by cumulative time (what each function's callees add up to)\n")
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(60)
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(f"== {title}: {steps} steps, {1e3 * wall / steps:.2f} ms a step under cProfile\n{text.getvalue()}")


def trainer_run(gen: Generator, batch: int, seconds: float, mode: str, device, profile: Path | None = None):
    """``Trainer.fit`` with the recipe's settings for ``seconds`` (after a short warm-up fit whose time is left out):
    images/s and steps."""
    data = random_tokens(gen, batch * 64)
    val = random_tokens(gen, batch, seed=1)
    precision = "bf16" if device.type == "cuda" else "no"
    with tempfile.TemporaryDirectory() as out:
        compile = {"eager": False, "compiled": True, "graph": "graph"}[mode]
        cfg = TrainConfig(out_dir=out, steps=5, batch_size=batch, mixed_precision=precision, compile=compile,
                          log_every=0, eval_every=0, sample_every=0, ckpt_every=0, val_images=batch, num_workers=0,
                          lr_schedule="constant", log_with=[], **RECIPE)  # fmt: skip
        # a copy: train.compile compiles the blocks in place, which would leak into the rows measured after this one
        trainer = Trainer(GeneratorTask(copy.deepcopy(gen)), data, val, cfg)
        trainer.save_preview = lambda batch: None  # sampling a preview is not training
        trainer.fit()
        images0, seconds0, step0 = trainer.timed_images, trainer.timed_seconds, trainer.step
        trainer.cfg.steps, trainer.cfg.time_limit_minutes = 10**9, seconds / 60
        trainer.fit()
        out_ = {
            "images_per_s": (trainer.timed_images - images0) / (trainer.timed_seconds - seconds0),
            "steps": trainer.step - step0,
        }
        if profile is not None:
            out_.update(profile_trainer(trainer, profile / "profile-trainer.txt"))

            def steps():  # enough steps that the fit's own start and export weigh little per step
                trainer.cfg.steps = trainer.step + 200
                trainer.fit()

            def twenty():
                trainer.cfg.steps = trainer.step + 20
                trainer.fit()

            sync_sites(twenty, profile / "profile-trainer-syncs.txt", "one 20-step Trainer.fit")
            host_profile(
                steps,
                200,
                profile / "profile-trainer-host.txt",
                "one Trainer.fit (its resume, last validation and export included)",
            )
    return out_


def trainer_throughput(gen: Generator, batch: int, steps: int, device) -> tuple[float, float]:
    """(tokens/s, peak GiB) of ``Trainer.fit`` with the recipe's settings over ``steps`` timed steps (its first step is
    not timed); what ``bench/multigpu.py`` runs on each process."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(out_dir=out, steps=steps + 1, batch_size=batch, log_every=0, eval_every=0, sample_every=0,
                          ckpt_every=0, val_images=batch, num_workers=0, lr_schedule="constant", log_with=[],
                          **RECIPE)  # fmt: skip
        trainer = Trainer(
            GeneratorTask(gen), random_tokens(gen, batch * (steps + 1)), random_tokens(gen, batch, 1), cfg
        )
        trainer.save_preview = lambda batch: None
        summary = trainer.fit()
        sync()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return summary["train_images_per_s"] * gen.schedule.seq_len, peak


def sync_sites(run, table: Path, title: str):
    """Where ``run`` makes the host wait for the GPU: every synchronizing CUDA call PyTorch flags under
    ``torch.cuda.set_sync_debug_mode("warn")`` (item(), a pageable copy, nonzero, ...), counted by the visgen or
    accelerate line that made it."""
    import traceback
    import warnings
    from collections import Counter

    sites: Counter = Counter()
    cuda = torch.cuda.is_available()

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "/visgen/" in f.filename or "accelerate" in f.filename]
        where = f"{frames[-1].filename}:{frames[-1].lineno} {frames[-1].line}" if frames else f"{filename}:{lineno}"
        sites[f"{where}  ({str(message)[:80]})"] += 1

    with warnings.catch_warnings():  # restores warnings.showwarning on leaving
        warnings.simplefilter("always")
        warnings.showwarning = record
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    lines = [f"{n:6d}  {site}" for site, n in sites.most_common()] or ["(none flagged)"]
    table.write_text(f"== {title}: synchronizing CUDA calls by site\n" + "\n".join(lines) + "\n")


def profile_trainer(trainer: Trainer, table: Path, steps: int = 10) -> dict:
    """The profiler over ``steps`` optimizer steps of a running ``Trainer.fit`` (its start-up and end left out: the
    window opens and closes at optimizer steps)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = torch.cuda.is_available()
    marks, result = [], {}
    wait = 5

    def ready(prof):
        result.update(profile_summary(prof, marks[-1] - marks[0], steps, table, "Trainer.fit"))

    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                   schedule=schedule(wait=wait, warmup=2, active=steps, repeat=1), on_trace_ready=ready)  # fmt: skip
    opt = trainer.opt.optimizer if trainer.direct else trainer.opt  # the optimizer whose step the trainer calls
    opt_step = opt.step

    def step(*args, **kwargs):
        out = opt_step(*args, **kwargs)
        if prof.step_num in (wait + 1, wait + 1 + steps):  # the window opens or closes at this call's prof.step()
            sync()
            marks.append(time.perf_counter())
        prof.step()
        return out

    opt.step = step
    trainer.cfg.steps, trainer.cfg.time_limit_minutes = trainer.step + wait + 2 + steps + 2, 0.0
    with prof:
        trainer.fit()
    opt.step = opt_step
    return result


def main():
    p = parser(__doc__)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--modes", nargs="+", default=["eager", "compiled", "graph"], choices=["eager", "compiled", "graph"])
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per row")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time each row this many times, bare loop and trainer alternating, keeping each one's best",
    )
    p.add_argument("--profile", type=Path, help="profile the recipe's size into this folder (after every timing)")
    p.set_defaults(train_batches=None)
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rec = Record(args.name)
    gens = {}
    for size in args.sizes:
        torch.manual_seed(0)
        gens[size] = gen = build(size, args.tiny)
        rec.add(f"{size}_params", sum(p.numel() for p in gen.parameters()), ",d")
        for bs in args.train_batches or SIZES[size]:
            key, best, bare_eager = f"{size}_b{bs}", ("", 0.0), None
            for mode in args.modes:
                free_cached_memory()  # the GPT-B graph row at batch 256 once ran out beside the rows' 48 GiB cached
                try:
                    runs = {"bare": [], "trainer": []}
                    for r in range(args.rounds):  # alternating, so a drift of the machine weighs on both
                        order = ("bare", "trainer") if r % 2 == 0 else ("trainer", "bare")
                        for who in order:
                            run = bare if who == "bare" else trainer_run
                            runs[who].append(run(gen, bs, args.seconds, mode, device))
                except Exception as e:  # one mode failing (a compile on this machine) leaves the others measured
                    print(f"{key} {mode}: failed: {type(e).__name__}: {str(e)[:2000]}", file=sys.stderr)
                    rec.add(f"{key}_{mode}_failed", f"{type(e).__name__}: {str(e)[:200]}")
                    continue
                b, t = (max(runs[who], key=lambda r: r["images_per_s"]) for who in ("bare", "trainer"))
                for who, r in (("bare", b), ("trainer", t)):
                    for k, v in r.items():
                        rec.add(f"{who}_{mode}_{key}_{k}", v, ".3f" if isinstance(v, float) else "d")
                rec.add(f"trainer_over_bare_{key}_{mode}_same_mode", t["images_per_s"] / b["images_per_s"], ".3f")
                if mode == "eager":
                    bare_eager = b["images_per_s"]
                if t["images_per_s"] > best[1]:
                    best = (mode, t["images_per_s"])
            if best[0] and bare_eager:
                rec.add(f"trainer_over_bare_{key}", best[1] / bare_eager, ".3f")
                rec.add(f"trainer_best_mode_{key}", best[0])
    if args.profile and "cifar" in gens:
        # last: the profiler's CUDA tracing can stay attached to the process and slow every later kernel launch, so
        # no timing above runs after it; its own figures come from the profiled steps alone
        bs = (args.train_batches or SIZES["cifar"])[0]
        for who, run in (("bare", bare), ("trainer", trainer_run)):
            r = run(gens["cifar"], bs, 1.0, "eager", device, args.profile)
            for k in ("kernels_per_step", "device_ms_per_step", "wall_ms_per_step", "host_syncs_per_step"):
                rec.add(f"{who}_eager_cifar_b{bs}_{k}", r[k], ".3f")


if __name__ == "__main__":
    main()
