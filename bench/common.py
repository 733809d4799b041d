"""What the benchmarks share: timed sampling and training of a ``Generator``, and a result that is rewritten after
every figure (a run cut short keeps what it measured)."""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch._dynamo.utils import compilation_time_metrics, counters

from visgen.results import write_result
from visgen.sampling import Sampler, SamplingConfig
from visgen.train.graph_step import GraphedLoss


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_cached_memory():
    """Return what earlier figures left in the allocator's cache (freed blocks, dropped graph pools) to the GPU, so
    the next figure (a training row, a fresh process beside this one) starts from the memory there is."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Record:
    """Metrics printed as they come and written to ``results/NAME.json`` after each one (when a name is given; the
    folder is ``$VISGEN_RESULTS`` where set, as the scripts under ``eval/gpu`` set it from their ``RESULTS``, so a dry
    run writes beside its other results instead of over the project's)."""

    def __init__(self, name: str | None):
        if name and ("/" in name or name.endswith(".json")):  # --name /tmp/x once wrote results/tmp/x.json
            raise SystemExit(f"--name {name!r}: a result's name (written to results/NAME.json), not a path")
        self.name, self.metrics = name, {}
        self.folder = os.environ.get("VISGEN_RESULTS") or "results"

    def add(self, key: str, value, fmt: str = ".1f", unit: str = ""):
        self.metrics[key] = value
        print(f"{key}: {value:{fmt}} {unit}".rstrip() if isinstance(value, (int, float)) else f"{key}: {value}")
        if self.name:
            write_result(f"{self.folder}/{self.name}.json", self.name, self.metrics)


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny model, to check the script on a CPU")
    p.add_argument("--name", help="write results/NAME.json (after every figure; $VISGEN_RESULTS/NAME.json where set)")
    p.add_argument("--sample-batches", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--train-batches", type=int, nargs="*", default=[64, 256], help="none: no training figures")
    p.add_argument("--cold-batches", type=int, nargs="*",
                   help="the batch sizes whose first batch --cold times in fresh processes (default: every one)")  # fmt: skip
    return p


def times_cold(args, mode: str, batch: int) -> bool:
    """Whether ``mode``'s first batch at ``batch`` is also timed in fresh processes (``--cold``, ``--cold-batches``)."""
    return mode in args.cold and (args.cold_batches is None or batch in args.cold_batches)


def setup(args, build, rec: Record | None = None, prefix: str = "") -> tuple:
    """(generator, record) with the model's size recorded first (into ``rec`` when given, names after ``prefix``)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    gen = build(args.tiny)
    rec = rec or Record(args.name)
    rec.add(f"{prefix}params", sum(p.numel() for p in gen.parameters()), ",d")
    rec.add(f"{prefix}tokens_per_image", gen.schedule.seq_len, "d")
    return gen, rec


def bench_sampling(gen, cfg: SamplingConfig, repeats: int, decode: bool, draft=None, images: int = 0) -> dict:
    """images/s over ``repeats`` batches after a first one (allocation, compile, CUDA-graph capture), timed apart;
    with speculative decoding, its statistics over the timed batches too. ``images``: the job size the sampler is
    told (``compile="auto"`` decides by it); ``compiled`` in the result says what it decided."""
    sampler = Sampler(gen, cfg, draft=draft, images=images)
    batch = cfg.batch_size
    labels = torch.arange(batch) % gen.config.num_classes
    run = sampler.sample_images if decode else sampler.sample_tokens
    sync()
    t0 = time.perf_counter()
    run(labels)
    sync()
    warmup = time.perf_counter() - t0
    if sampler.speculative is not None:
        sampler.speculative.reset_stats()
    t0 = time.perf_counter()
    # one call for all the timed batches, as sample.py and eval/fid.py make it (the decoder overlaps the next batch)
    run(labels.repeat(repeats), sample_ids=torch.arange(batch, (repeats + 1) * batch))
    sync()
    out = {"images_per_s": repeats * batch / (time.perf_counter() - t0), "first_batch_s": warmup,
           "compiled": int(sampler.cfg.compile)}  # fmt: skip
    if sampler.speculative is not None:
        out.update(sampler.speculative.stats)
    return out


def probe_first_batch(gen, cfg: SamplingConfig, images: int, decode: bool):
    """Print (as JSON) the seconds from building a sampler to its first batch: what ``cold_first_batch`` times in a
    fresh process (the bench scripts' hidden ``--probe``). With ``decode`` the batch's tokens are drawn and then
    decoded by ``Sampler.decode`` as ``Sampler.sample_images`` does for one batch, each part timed: ``tokens_s``
    and ``decode_s``."""
    labels = torch.arange(cfg.batch_size) % gen.config.num_classes
    sync()
    t0 = time.perf_counter()
    sampler = Sampler(gen, cfg, images=images)
    tokens = sampler.sample_tokens(labels)
    sync()
    drawn = done = time.perf_counter()
    if decode:
        sampler.decode(tokens)
        sync()
        done = time.perf_counter()
    # of those seconds, what Dynamo spent (cache hits included): tracing Python into graphs, and the backend
    # compiling them or loading them from the caches; and the graphs it made
    metric = lambda name: sum(compilation_time_metrics.get(name, []))  # noqa: E731
    out = {
        "first_batch_s": done - t0,
        "tokens_s": drawn - t0,
        "compile_s": metric("_compile.compile_inner"),
        "trace_s": metric("bytecode_tracing"),
        "backend_s": metric("OutputGraph.call_user_compiler"),
        "graphs": counters["stats"]["unique_graphs"],
    }
    if decode:
        out["decode_s"] = done - drawn
    print(json.dumps(out))


class ProbeFailed(RuntimeError):
    """A fresh process timing a first batch failed (its stderr's tail in the message)."""


def cold_first_batch(script: str, probe: list[str], pycache: str | None = None, processes: int = 1) -> list[dict]:
    """What ``probe_first_batch`` reports (``first_batch_s``: seconds from building the sampler to the first batch;
    ``compile_s`` of them in Dynamo; ``graphs`` compiled) in each of ``processes`` fresh processes one after
    another (``script --probe *probe``), the first with empty compile caches (Inductor's and Triton's), the later ones
    with what the ones before left there: what a user waits the first time, and in a second run. ``pycache``: a folder
    of Python bytecode to read and write (``PYTHONPYCACHEPREFIX``); without it the process runs as this environment
    has it."""
    seconds = []
    free_cached_memory()  # what this process keeps cached is memory the probe's process needs
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor", "TRITON_CACHE_DIR": f"{cache}/triton"}
        if pycache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = pycache
        for _ in range(processes):
            cmd = [sys.executable, script, "--probe", *probe]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise ProbeFailed(f"{' '.join(cmd[1:])} exited {out.returncode}: {out.stderr.strip()[-1500:]}")
            seconds.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return seconds


def bytecode_cache(script: str, probes: list[list[str]]) -> str:
    """A folder holding the bytecode of every module ``probes`` import, filled by probing them (tiny models, with
    compile caches of their own, thrown away). pip compiles bytecode when it installs a package; an environment that
    has none (the GPU image these figures come from ships none and writes none) compiles the source of a few thousand
    modules in every process, seconds that are not the model's warm-up."""
    folder = tempfile.mkdtemp(prefix="visgen-pycache-")
    for probe in probes:
        cold_first_batch(script, probe, pycache=folder)
    return folder


def record_cold(rec: Record, key: str, script: str, probe: list[str], pycache: str):
    """``{key}_first_batch_cold_s`` (a fresh process, empty compile caches), ``..._warm_s`` (the next process, the
    caches it left) and ``{key}_cold_no_bytecode_first_batch_s`` (a fresh process as this environment runs). A probe
    that fails is recorded as ``{key}_first_batch_error`` (its stderr's last line) and the bench goes on."""
    try:
        cold, warm = cold_first_batch(script, probe, pycache, processes=2)
        rec.add(f"{key}_first_batch_cold_s", cold["first_batch_s"], ".2f", "s")
        rec.add(f"{key}_first_batch_warm_s", warm["first_batch_s"], ".2f", "s")
        for part in ("compile", "trace", "backend", "tokens", "decode"):  # where the warm seconds go
            if f"{part}_s" in warm:
                rec.add(f"{key}_first_batch_warm_{part}_s", warm[f"{part}_s"], ".2f", "s")
        rec.add(f"{key}_first_batch_graphs", warm["graphs"], "d")
        rec.add(f"{key}_cold_no_bytecode_first_batch_s", cold_first_batch(script, probe)[0]["first_batch_s"], ".2f",
                "s")  # fmt: skip
    except ProbeFailed as e:
        print(e, file=sys.stderr)
        rec.add(f"{key}_first_batch_error", str(e).strip().splitlines()[-1][-300:])


def profile_sampling(gen, cfg: SamplingConfig, draft=None, table: str | None = None, title: str = "",
                     rows: int = 25) -> dict:  # fmt: skip
    """What one batch of sampling launches, after a warm-up batch: ``kernels`` (device kernels on a GPU, outermost
    aten ops on a CPU) and ``device_ms`` (their summed time), both per AR position of the batch (the schedule's
    length), through torch.profiler; ``table``: a file the profiler's ``rows`` top operators are appended to, under
    ``title`` (``-``: printed). On a GPU the kernels a replayed CUDA graph runs are counted as launched kernels are."""
    from torch.profiler import ProfilerActivity, profile

    sampler = Sampler(gen, cfg, draft=draft)
    labels = torch.arange(cfg.batch_size) % gen.config.num_classes
    sampler.sample_tokens(labels)
    sync()
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        sampler.sample_tokens(labels, sample_ids=torch.arange(cfg.batch_size) + cfg.batch_size)
        sync()
    events = prof.events()
    if cuda:
        ran = [e for e in events if e.device_type.name == "CUDA"]
        ms = sum(getattr(e, "device_time", getattr(e, "cuda_time", 0.0)) for e in ran) / 1e3
    else:  # aten ops not called by another aten op
        ran = [e for e in events if e.name.startswith("aten::")
               and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]  # fmt: skip
        ms = sum(e.self_cpu_time_total for e in ran) / 1e3
    if table:
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        text = f"== {title}\n{prof.key_averages().table(sort_by=sort, row_limit=rows)}\n"
        if table == "-":
            print(text)
        else:
            with open(table, "a") as f:
                f.write(text)
    steps = gen.schedule.seq_len
    return {"kernels": len(ran) / steps, "device_ms": ms / steps}


def profile_steps(step, table: Path, title: str, steps: int = 10) -> dict:
    """Kernels, device ms and wall ms per step over ``steps`` calls of ``step``, and the profiler's table."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = time.perf_counter() - t0
    return profile_summary(prof, wall, steps, table, title)


def profile_summary(prof, wall: float, steps: int, table: Path, title: str) -> dict:
    cuda = torch.cuda.is_available()
    events = prof.events()
    if cuda:
        # the profiler's step markers span the step on the device too: not kernels
        ran = [e for e in events if e.device_type.name == "CUDA" and not e.name.startswith("ProfilerStep")]
        ms = sum(getattr(e, "device_time", getattr(e, "cuda_time", 0.0)) for e in ran) / 1e3
    else:
        ran = [e for e in events if e.name.startswith("aten::")
               and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]  # fmt: skip
        ms = sum(e.self_cpu_time_total for e in ran) / 1e3
    syncs = sum(
        e.count
        for e in prof.key_averages()
        if e.key
        in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")
    )
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "w") as f:
        f.write(f"== {title}: {steps} steps\n{prof.key_averages().table(sort_by=sort, row_limit=30)}\n")
        f.write(f"\n== by host time\n{prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=30)}\n")
    return {"kernels_per_step": len(ran) / steps, "device_ms_per_step": ms / steps,
            "wall_ms_per_step": 1e3 * wall / steps, "host_syncs_per_step": syncs / steps}  # fmt: skip


def bench_training(gen, tokens: torch.Tensor, steps: int, compile: bool = False, checkpointing: bool = False,
                   graph: bool = False, profile: Path | None = None, title: str = "training") -> dict:  # fmt: skip
    """Training tokens/s and model TFLOP/s (6 x parameters x tokens/s) of ``gen.loss`` on ``tokens`` (bf16
    autocast, fused AdamW); {"oom": True} when the batch does not fit. Trains a copy: ``gen`` keeps its weights
    and stays uncompiled. ``compile``: the blocks compiled regionally (``train.compile=true``); ``graph``: the whole
    loss compiled and replayed as CUDA graphs (``train.compile=graph``); ``profile``: a file for the profiler's tables
    of ten steps after the timing, whose kernels, device ms and wall ms per step join the figures."""
    device = tokens.device
    free_cached_memory()  # what sampling before left cached would fragment it
    model = copy.deepcopy(gen).to(device).train()
    model.backbone.activation_checkpointing = checkpointing
    if compile:
        model.backbone.compile_blocks()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    labels = torch.randint(0, model.config.num_classes, (len(tokens),), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loss_fn = GraphedLoss(model) if graph else model.loss

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = loss_fn(tokens, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        sync()
        warmup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        tokens_per_s = steps * len(tokens) * model.schedule.seq_len / (time.perf_counter() - t0)  # C values a token
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
        params = sum(p.numel() for p in model.parameters())
        out = {"tokens_per_s": tokens_per_s, "model_tflops": 6 * params * tokens_per_s / 1e12, "peak_gib": peak,
               "warmup_s": warmup}  # fmt: skip
        if profile is not None:  # after the timing: the profiler slows what runs under it
            out.update(profile_steps(step, profile, title))
    except torch.OutOfMemoryError:
        return {"oom": True}
    finally:
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out
