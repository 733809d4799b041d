"""One sampling loop over units for every family: KV cache, classifier-free guidance, per-sample seeds, batching,
and on GPUs the whole loop captured in one CUDA graph and replayed."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from visgen.config import ConfigError, check, finite
from visgen.heads.diffusion import SOLVERS as DIFFUSION_SOLVERS
from visgen.heads.flow import SOLVERS as FLOW_SOLVERS
from visgen.sampling.noise import CounterNoise
from visgen.sampling.speculative import CSPD_RULES, METHODS, SpeculativeDecoder

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class SamplingConfig:
    """Sampling settings.

    cfg_scale: classifier-free guidance scale s in u + s (c - u); 1 turns guidance off.
    cfg_schedule: ``constant``; ``linear`` ramps s from 1 at the first unit to cfg_scale at the last
        (VAR, Tian et al. 2024); ``interval`` applies cfg_scale only to units whose fraction k / K lies in
        ``cfg_interval`` (Kynkaanniemi et al. 2024) and 1 elsewhere.
    temperature, top_k, top_p: categorical sampling (temperature 0 is greedy; top_k 0 and top_p 1 keep all); a
        continuous head's temperature scales its noise (DDPM's steps' noise; where DDIM's or a flow head's path starts).
    seed: with the sample index, fixes each sample's randomness.
    batch_size: samples per forward pass (doubled internally when guiding).
    cuda_graph: capture the loop over units in CUDA graphs at a batch size's first batch and replay them for every
        later batch of that size (GPU only): no host work and no launch gaps between decoding steps. ``True``
        (``unit`` where it applies, else ``loop``), ``loop`` (the whole loop in one graph), ``unit`` (where every
        unit after the first is the same computation at another position: raster units of one size; the first
        unit and one later unit per cache read (``cache_reads``: one with the Triton kernel, a few buckets with
        SDPA) captured, each later one replayed for the units of its read with the unit read from a counter on the
        device, so capture costs a few units instead of hundreds: a diffusion head's 100 steps a token make a
        whole-loop graph of a million kernels; on an H100 it gave the loop graph's tokens within 1-3% of its speed,
        token AR's first batch in a fresh process in 3.1-3.5 s instead of 4.0-4.1 s and MAR-B's in 15-17 s instead
        of 25-27 s, ``results/bench-token-ar.json``, ``results/bench-diffusion-ar*.json``) or ``False``.
    compile: ``torch.compile`` the backbone's blocks (regional: one block compiled, all reuse it) and a
        categorical head's sampling (a diffusion head's denoising step) before capture, and the tokenizer's
        decoder; fuses the elementwise work of a decoding step and of the decoder's norms at the price of a few
        compiles (one per batch size for one-token units through the Triton kernel; otherwise shapes turn dynamic
        after the second one; the decoder compiles once per batch size). With ``speculative`` ``draft``,
        ``feature`` or ``jacobi``, each round (the drafting, the verifying pass, the acceptance and the commit)
        compiles as one graph too; with ``cspd``, the draft's blocks and denoising step.
        ``auto`` (the default): on where it was measured to repay its compile time within the job: a GPU, a job
        of at least ``AUTO_COMPILE_IMAGES`` images on this process (``Sampler(images=...)``; the CLIs pass theirs),
        a token, VAR, NFIG or diffusion-head model (``AUTO_COMPILE_FAMILIES``); off otherwise, and for a ``Sampler``
        told no job size.
        Compiled graphs are cached on disk (``TORCHINDUCTOR_CACHE_DIR``, or ``use_compile_cache``): a later process
        on the same machine reuses them.
    compile_mode: ``torch.compile``'s mode for the blocks, the head and the speculative round (the decoder keeps
        the default): ``default``, or ``max-autotune-no-cudagraphs`` (matrix products tuned per shape, Triton
        templates among the candidates, with elementwise work fused into their epilogues; longer compiles). The
        CUDA graph stays the sampler's own, so the modes that add graphs of their own are not offered.
    decode_kernel: how one-token units attend to the cache: ``sdpa`` (RoPE and the cache append as PyTorch ops,
        then PyTorch's fused attention over a masked prefix bucket of 64 slots, a compiled shape per bucket),
        ``triton`` (``visgen.nn.decode_attention``: all of that in one kernel reading exactly the unit's prefix, one
        shape for all one-token units; GPUs) or ``auto`` (``triton`` on GPUs where it applies, else ``sdpa``).
        ``triton`` named as such also sends speculative decoding's windows at per-row positions (verifying passes,
        draft steps) through its rows kernel; ``auto`` leaves them to SDPA until that kernel has GPU figures.
    dtype: ``auto`` (bf16 on a GPU, fp32 on the CPU), ``bf16``, ``fp16`` or ``fp32``: weights, cache,
        continuous inputs and the tokenizer's decoder while sampling.
    speculative: ``none``; ``draft`` (a draft model drafts, the target verifies: exactly the target's
        distribution), ``feature`` (a small draft reads the target's own features, EAGLE-style; exact as ``draft``),
        ``jacobi`` (speculative Jacobi decoding, no draft model, exact) or ``cspd`` (continuous speculative decoding
        for the diffusion head); see ``visgen.sampling.speculative``. One-token units only.
    draft: the draft's checkpoint folder (``draft``, ``feature`` and ``cspd``; or pass ``draft=`` to ``Sampler``):
        a generator, or for ``feature`` a ``FeatureDraft`` (``eval/feature_draft.py --out``).
    gamma: tokens drafted per round (one verifying pass of gamma + 1 positions).
    prefill: fraction of the tokens drawn by the target alone before speculating (CSpD's pre-filling; at least
        two tokens are).
    jacobi_init: where ``jacobi`` drafts a position the verifying pass has not reached yet: ``above`` (the committed
        token one row up, a deterministic draft, exact as any proposal is; raster order only, else uniform) or
        ``uniform`` (a random token, as Teng et al. 2025 start).
    cspd_rule: ``path`` (exact: every denoising step of a drafted token's path verified, both heads' Gaussians
        at the draft's states; a rejected step redrawn and the path finished by the target), ``final`` (exact: the
        paper's rule, the last step's Gaussians of the two heads' own paths under the same noise) or ``reference``
        (the reference code's relaxation of ``final``: standard deviations x 42 inside the ratio, tokens after a
        rejection kept; not exact). Every rule draws the last step's noise too (a token needs a density).
    sync_every: speculative rounds between the host's checks for finished rows (each check is one host sync).
    head_steps: denoising steps of a diffusion or flow head per token (0: the recipe's, ``head_options.steps``).
        Each step is one pass of the head, most of a continuous token's sampling time: fewer are faster and draw
        other images (a diffusion head respaces its schedule to them, a flow head takes longer steps).
    head_solver: how a continuous head takes each step, or "" (the recipe's, ``head_options.solver``): a flow head
        ``euler`` or ``heun`` (two passes a step, second order), a diffusion head ``ddpm`` (ancestral) or ``ddim``
        (deterministic; not with ``cspd``). On the video recipe's model, Heun's 13 steps drew motion nearer the
        data's than Euler's 25 (``results/moving-fmnist-video-head-steps-cpu.json``).
    """

    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64
    cuda_graph: bool | str = True
    compile: bool | str = "auto"
    compile_mode: str = "default"
    decode_kernel: str = "auto"
    dtype: str = "auto"
    speculative: str = "none"
    draft: str = ""
    gamma: int = 4
    prefill: float = 0.0
    cspd_rule: str = "path"
    sync_every: int = 4
    jacobi_init: str = "above"
    head_steps: int = 0
    head_solver: str = ""

    def __post_init__(self):
        # every entry point (sample.py, eval/fid.py, Python) gets these checks: NaN guidance draws garbage silently
        self.cfg_interval = tuple(self.cfg_interval)
        check(finite(self.cfg_scale), "cfg_scale", "a finite number", self.cfg_scale)
        check(self.cfg_schedule in CFG_SCHEDULES, "cfg_schedule", " or ".join(CFG_SCHEDULES), self.cfg_schedule)
        lo, hi = self.cfg_interval if len(self.cfg_interval) == 2 else (None, None)
        check(finite(lo) and finite(hi) and 0 <= lo < hi <= 1, "cfg_interval", "(start, end), 0 <= start < end <= 1",
              self.cfg_interval)  # fmt: skip
        check(finite(self.temperature) and self.temperature >= 0, "temperature", "finite and >= 0", self.temperature)
        check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "an integer >= 0 (0: off)", self.top_k)
        check(finite(self.top_p) and 0 < self.top_p <= 1, "top_p", "in (0, 1]", self.top_p)
        check(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        check(self.cuda_graph in (True, False, "loop", "unit"), "cuda_graph", "true, false, loop or unit",
              self.cuda_graph)  # fmt: skip
        check(self.compile in (True, False, "auto"), "compile", "true, false or auto", self.compile)
        check(self.compile_mode in COMPILE_MODES, "compile_mode", " or ".join(COMPILE_MODES), self.compile_mode)
        check(self.decode_kernel in ("auto", "sdpa", "triton"), "decode_kernel", "auto, sdpa or triton",
              self.decode_kernel)  # fmt: skip
        check(self.dtype == "auto" or self.dtype in _DTYPES, "dtype", f"auto or one of {sorted(_DTYPES)}", self.dtype)
        check(self.speculative in ("none", *METHODS), "speculative", "none, " + ", ".join(METHODS), self.speculative)
        check(isinstance(self.gamma, int) and self.gamma >= 1, "gamma", "an integer >= 1", self.gamma)
        check(finite(self.prefill) and 0 <= self.prefill < 1, "prefill", "in [0, 1)", self.prefill)
        check(self.cspd_rule in CSPD_RULES, "cspd_rule", " or ".join(CSPD_RULES), self.cspd_rule)
        check(isinstance(self.head_steps, int) and self.head_steps >= 0, "head_steps", "an integer >= 0 (0: the "
              "recipe's)", self.head_steps)  # fmt: skip
        check(self.head_solver in ("", *HEAD_SOLVERS), "head_solver", "'' (the recipe's), " + ", ".join(HEAD_SOLVERS),
              self.head_solver)  # fmt: skip
        check(self.jacobi_init in ("above", "uniform"), "jacobi_init", "above or uniform", self.jacobi_init)
        check(isinstance(self.sync_every, int) and self.sync_every >= 1, "sync_every", "an integer >= 1",
              self.sync_every)  # fmt: skip


CFG_SCHEDULES = ("constant", "linear", "interval")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
HEAD_SOLVERS = (*FLOW_SOLVERS, *DIFFUSION_SOLVERS)  # a flow head's, then a diffusion head's


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on (default: the GPU where there is one), with a clear error for one this machine lacks."""
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r} ({e}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} asked for, but this machine has no usable CUDA GPU; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def guidance_scales(cfg: SamplingConfig, num_units: int) -> list[float]:
    """The guidance scale of each unit under ``cfg.cfg_schedule``."""
    s, K = cfg.cfg_scale, num_units
    if cfg.cfg_schedule == "constant":
        return [s] * K
    if cfg.cfg_schedule == "linear":
        return [1 + (s - 1) * k / max(1, K - 1) for k in range(K)]
    if cfg.cfg_schedule == "interval":
        lo, hi = cfg.cfg_interval
        return [s if lo <= k / K < hi else 1.0 for k in range(K)]
    raise ConfigError(f"unknown cfg_schedule {cfg.cfg_schedule!r}; known: constant, linear, interval")


def cache_reads(
    unit_sizes: list[int], seq_len: int, bucket: int = 64, prefix_kernel: bool = False
) -> list[tuple[int, bool]]:
    """(kv_len, masked) for each unit: how many cache slots its attention is offered. Unit k sees exactly the slots
    before its end; a unit whose size no other unit has reads exactly that prefix with no mask. Units that share a
    size (raster tokens) read their prefix rounded up to ``bucket`` slots, and a mask hides the slots past the
    unit's end: attention reads a growing prefix, not the whole cache, through a few shapes (a compiled block
    compiles once per bucket, not once per step). ``prefix_kernel``: one-token units attend through a kernel that
    reads exactly their prefix whatever it is offered (``decode_kernel="triton"``), so they are all offered the
    whole cache, unmasked: one shape."""
    counts = Counter(unit_sizes)
    reads, end = [], 0
    for n in unit_sizes:
        end += n
        if prefix_kernel and n == 1:
            reads.append((seq_len, False))
        elif counts[n] == 1:
            reads.append((end, False))
        else:
            reads.append((min(seq_len, -(-end // bucket) * bucket), True))
    return reads


def replays_units(schedule) -> bool:
    """Whether every unit after the first is one computation at another position for each cache read it is offered
    (``SamplingConfig.cuda_graph`` ``unit``): its input is the unit just drawn and all units are one size."""
    return schedule.input_is_previous_unit and schedule.num_units > 2 and len(set(schedule.unit_sizes)) == 1


def warm_up_units(unit_sizes: list[int], reads: list[tuple[int, bool]]) -> int:
    """How many units to run before capturing the loop: up to the last one of a kind (size, cache read, the first
    unit or not) that no unit before it has."""
    kinds = [(n, read, k == 0) for k, (n, read) in enumerate(zip(unit_sizes, reads))]
    return max(kinds.index(kind) for kind in set(kinds)) + 1


class _BatchState:
    """Buffers and the captured graph for one batch size; reused across batches so the loop is captured once."""

    def __init__(self, model, batch: int, guided: bool, dtype, device):
        self.guided = guided
        rows = 2 * batch if guided else batch
        # one slot past the sequence: no unit's read ends at the cache's end, which compiled blocks would specialise
        # on (a graph of its own for the last unit); the spare slot is never written or read
        self.cache = model.backbone.new_cache(rows, model.schedule.seq_len + 1, dtype, device)
        self.labels = torch.zeros(rows, dtype=torch.long, device=device)
        self.ids = torch.zeros(batch, dtype=torch.long, device=device)
        self.noise = CounterNoise(0, self.ids)
        self.graph: torch.cuda.CUDAGraph | None = None  # the whole loop over units, or the first unit
        self.out: torch.Tensor | None = None  # what the graph writes: this batch's token grids
        # cuda_graph "unit": the later units' graphs (one per cache read), each replayed for the units of its read;
        # the unit it runs (a counter on the device), the last unit drawn (its input) and the sequence so far
        self.unit_graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self.k = torch.zeros((), dtype=torch.long, device=device)
        self.last: torch.Tensor | None = None
        self.seq: torch.Tensor | None = None


# compile="auto": the job size from which compiling repays itself, and the families where that was measured. On an
# H200 the first compiled batch of a fresh process with empty caches took 7-8 s for token AR (against 1.3-1.6 s
# eager) and 23-52 s for VAR-d16 (2.4-5.3 s), saving 0.7-6.5 ms an image for token AR and 2.5-3.9 ms for VAR:
# repaid after 0.9k-8.8k images for token AR and 7k-18k for VAR (`git show 54b77d3:results/bench-token-ar.json`,
# results/bench-var.json). For continuous tokens with a diffusion head (MAR-B size) the compiled sampler is 1.9-2.3x
# the eager one at unit 1 and its first batch no longer (50-58 s against 60-79 s eager, the head's CUDA graph capture
# dominating both; results/bench-diffusion-ar.json at 3a3a272 and daa5f53), so it repays within its first batch.
# NFIG on VAR-d16's backbone saves 2.0-3.1 ms an image compiled (results/bench-nfig.json: 313-384 against 160-213
# images/s); its first compiled batch took 22 s after VAR's compile in the same process, so a fresh process is taken
# to pay VAR's 23-52 s: repaid after 7k-26k images, as VAR. Other families compile when asked (compile=True) until
# their figures are measured.
AUTO_COMPILE_IMAGES = 10_000
AUTO_COMPILE_FAMILIES = {
    ("raster", "categorical"), ("next_scale", "categorical"), ("next_frequency", "categorical"), ("raster", "diffusion")
}


def resolve_compile(setting: bool | str, generator, device: torch.device, images: int) -> bool:
    """Whether to compile: ``setting`` itself, or for ``auto`` whether a job of ``images`` images of ``generator``
    on ``device`` repays it (see ``AUTO_COMPILE_IMAGES``)."""
    if setting != "auto":
        return bool(setting)
    family = (generator.config.schedule, generator.config.head)
    return device.type == "cuda" and images >= AUTO_COMPILE_IMAGES and family in AUTO_COMPILE_FAMILIES


def use_compile_cache(folder: str | Path) -> Path:
    """Keep compiled graphs (inductor's and Triton's caches) in ``folder``, for later processes to reuse (a shared
    disk on a cluster, where each node's /tmp starts empty). Call before the first compile."""
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


class Sampler:
    """Samples token grids or images from a ``Generator``; see ``SamplingConfig``."""

    def __init__(self, generator, cfg: SamplingConfig | None = None, device: str | torch.device | None = None,
                 draft=None, images: int = 0):  # fmt: skip
        """``draft``: the draft for ``speculative`` ``draft`` / ``feature`` / ``cspd`` (default: loaded from
        ``cfg.draft``). ``images``: how many images this sampler will draw, for ``compile="auto"`` (0: unknown)."""
        device = resolve_device(device)
        cfg = cfg or SamplingConfig()
        self.cfg = dataclasses.replace(cfg, compile=resolve_compile(cfg.compile, generator, device, images))
        auto = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.dtype = auto if self.cfg.dtype == "auto" else _DTYPES[self.cfg.dtype]
        model = generator
        if next(generator.parameters()).dtype != self.dtype or next(generator.parameters()).device != device:
            model = copy.deepcopy(generator).to(device=device, dtype=self.dtype)
        self.model, self.device = model.eval(), device
        # images decode through a copy in the sampling dtype, channels-last on GPUs (tensor-core convolutions)
        self.decoder = model.tokenizer
        if self.dtype != torch.float32 or self.cfg.compile:
            fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
            self.decoder = copy.deepcopy(model.tokenizer).to(dtype=self.dtype, memory_format=fmt)
            if self.cfg.compile:
                self.decoder.compile_decoder()
        self.use_graph = self.cfg.cuda_graph and device.type == "cuda"
        self.scales = guidance_scales(self.cfg, model.schedule.num_units)
        self.guided = any(s != 1.0 for s in self.scales)
        # per-unit constants as tensors of their own (aligned, so compiled code takes each as it is): the loop hands
        # unit k its own, so neither a graph nor a compiled function is tied to one unit's value
        self._scales = [torch.full((1,), s, dtype=torch.float32, device=device) for s in self.scales]
        self._steps = [torch.full((), k, dtype=torch.long, device=device) for k in range(len(self.scales))]
        kernel = self.cfg.decode_kernel
        self.decode_kernel = model.backbone.auto_decode_kernel(device) if kernel == "auto" else kernel
        prefix_kernel = self.decode_kernel != "sdpa"
        self.rows_kernel = kernel == "triton"  # speculative windows too: only where asked for by name
        self.reads = cache_reads(model.schedule.unit_sizes, model.schedule.seq_len, prefix_kernel=prefix_kernel)
        head_setting = self.cfg.head_steps or self.cfg.head_solver
        if (self.cfg.compile or prefix_kernel or head_setting) and model is generator:
            model = self.model = copy.deepcopy(generator).eval()  # compiling wraps modules: never the caller's
        if self.cfg.head_steps:
            if not hasattr(model.head, "set_sampling_steps"):
                raise ConfigError(f"head_steps: the {model.config.head} head draws a token in one step; it is for "
                                  "diffusion and flow heads")  # fmt: skip
            model.head.set_sampling_steps(self.cfg.head_steps)
        if self.cfg.head_solver:
            if not hasattr(model.head, "set_solver"):
                raise ConfigError(f"head_solver: the {model.config.head} head has no solver to choose; it is for flow "
                                  "and diffusion heads")  # fmt: skip
            model.head.set_solver(self.cfg.head_solver)
        if model is not generator:
            model.requires_grad_(False)  # our copy: with no tensor asking for gradients, compiled blocks trace alike
        if prefix_kernel:
            try:
                model.backbone.set_decode_kernel(self.decode_kernel, rows=self.rows_kernel)  # checks Triton is there
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if device.type != "cuda" and not os.environ.get("TRITON_INTERPRET"):
                raise ConfigError(f"decode_kernel={kernel!r} runs on a GPU; use 'sdpa' on {device}")
        # one-token units through the prefix kernel leave the batch size the only shape that changes: static kernels,
        # one compile per batch size (otherwise shapes turn dynamic once a second one is seen)
        options = {"dynamic": False} if prefix_kernel and set(model.schedule.unit_sizes) == {1} else {}
        if self.cfg.compile_mode != "default":
            options["mode"] = self.cfg.compile_mode
        self.compile_options = options
        if self.cfg.compile:
            model.backbone.compile_blocks(**options)
        self._head_sample = model.head.sample
        if self.cfg.compile and getattr(model.head, "discrete", False):
            # guidance, filtering, counter noise and argmax fuse into a few kernels instead of a few dozen
            self._head_sample = torch.compile(model.head.sample, fullgraph=True, **options)
        elif self.cfg.compile and hasattr(model.head, "compile_step"):
            model.head.compile_step(**options)  # a diffusion head: one graph all its denoising steps share
        replayable, graph = replays_units(model.schedule), self.cfg.cuda_graph
        if graph == "unit" and not replayable and self.use_graph:
            raise ConfigError("cuda_graph='unit' needs a schedule whose units are one size and read the unit drawn "
                              "before (raster); use true or 'loop'")  # fmt: skip
        self.unit_replay = replayable and graph in (True, "unit")
        # what a unit replayed by its counter reads (_next_unit): its positions (K, n) and guidance scale (K,)
        self._position_table = torch.stack(model._decode_tables(device)[0]) if replayable else None
        self._scale_table = torch.cat(self._scales)
        self._states: dict[int, _BatchState] = {}
        self.speculative = None
        if self.cfg.speculative != "none":
            if draft is None and self.cfg.draft and self.cfg.speculative != "jacobi":
                from visgen.checkpoint import load_model

                draft = load_model(self.cfg.draft, ema=True)
            self.speculative = SpeculativeDecoder(self, draft)

    # ---- one unit ------------------------------------------------------------------------------------------------

    def _step(self, st: _BatchState, k: int, inputs, features: list | None = None):
        """Sample unit ``k`` from ``inputs`` (None for unit 0); ``features`` gets the backbone's output of the unit
        (what a feature draft reads)."""
        m, c = self.model, self.cfg
        if inputs is not None and st.guided:
            inputs = torch.cat([inputs, inputs])  # both halves read the same sampled tokens
        kv_len, masked = self.reads[k]
        h = m.decode_unit(k, inputs, st.labels, st.cache, kv_len, masked)
        if features is not None:
            features.append(h)
        return self._head_sample(
            h, self._scales[k], st.noise, self._steps[k], guided=st.guided,
            temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
        )  # fmt: skip

    # ---- a batch -------------------------------------------------------------------------------------------------

    def _loop(self, st: _BatchState, stop: int | None = None, given: list[torch.Tensor] | None = None):
        """Units 0..stop-1 (default all) in turn from the batch state's labels and noise; the token grids when it ran
        them all. ``given``: the first units as they are (context frames, a known prefix): the backbone reads them
        all in one pass (``Generator.decode_prefix``), so the cache holds them, and the head draws nothing there (its
        noise is keyed by the unit, so the units drawn after are the same as if it had drawn and been overruled).
        The whole loop is the body one CUDA graph captures."""
        m = self.model
        units: list[torch.Tensor] = []
        n = m.schedule.num_units if stop is None else stop
        state, n_given, prefix = None, 0 if given is None else min(len(given), n), []
        for k in range(n):
            inputs, state = m.schedule.step_input(state, units) if k else (None, None)
            if inputs is not None and inputs.is_floating_point():
                inputs = inputs.to(self.dtype)  # continuous inputs (VAR's f_hat, FlowAR latents) in the model's dtype
            if k < n_given:
                prefix.append(torch.cat([inputs, inputs]) if inputs is not None and st.guided else inputs)
                units.append(given[k])
                if k == n_given - 1:
                    m.decode_prefix(prefix, st.labels, st.cache)
            else:
                units.append(self._step(st, k, inputs))
        if 0 < n_given < len(units):  # the given units in the dtype of the drawn ones
            units[:n_given] = [u.to(units[-1].dtype) for u in units[:n_given]]
        return m.schedule.from_sequence(torch.cat(units, dim=1)) if stop is None else units

    def _first_unit(self, st: _BatchState):
        """Unit 0, unit by unit (``cuda_graph`` ``unit``): it starts the sequence and the next unit's input, and sets
        the counter to 1."""
        drawn = self._step(st, 0, None)
        if st.seq is None:  # allocated at the warm-up, outside any graph
            st.seq = drawn.new_empty((drawn.shape[0], self.model.schedule.seq_len, *drawn.shape[2:]))
            st.last = torch.empty_like(drawn)
        st.seq[:, : drawn.shape[1]].copy_(drawn)
        st.last.copy_(drawn)
        st.k.fill_(1)

    def _next_unit(self, st: _BatchState, read: tuple[int, bool]):
        """The unit the counter names, from the last unit drawn, offered the cache slots of ``read`` (``reads``: its
        kv_len and mask); then the counter moves on. Every unit after the first is this same computation for its
        read (``replays_units``), so one captured graph per read, replayed per unit, runs them all."""
        m, c = self.model, self.cfg
        at = st.k.view(1)  # index_select by a device tensor: no host read (a 0-d index may be read back as an int)
        pos = self._position_table.index_select(0, at)[0]
        inputs = st.last.to(self.dtype) if st.last.is_floating_point() else st.last
        if st.guided:
            inputs = torch.cat([inputs, inputs])
        h = m.decode_unit_at(pos, inputs, st.labels, st.cache, *read)
        drawn = self._head_sample(
            h, self._scale_table.index_select(0, at), st.noise, st.k, guided=st.guided,
            temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
        )  # fmt: skip
        st.seq.index_copy_(1, pos, drawn)
        st.last.copy_(drawn)
        st.k.add_(1)

    def _unit_by_unit(self, st: _BatchState, replay: bool = False) -> torch.Tensor:
        """The token grids of ``_loop``, by ``_first_unit`` then ``_next_unit`` per unit: ``replay``, their graphs
        captured by ``_capture_units`` (``cuda_graph`` ``unit``), else eagerly (what the graphs hold)."""
        if replay:
            st.graph.replay()
        else:
            self._first_unit(st)
        for read in self.reads[1:]:
            if replay:
                st.unit_graphs[read].replay()
            else:
                self._next_unit(st, read)
        return self.model.schedule.from_sequence(st.seq)

    def _capture_units(self, st: _BatchState):
        """Capture unit 0 and a later unit for each cache read in graphs of their own, after running each once
        outside a graph (``_warm_up``; the buffers are allocated there too)."""
        reads = list(dict.fromkeys(self.reads[1:]))  # in order of first use

        def each_graphs_body():
            self._first_unit(st)
            for read in reads:
                self._next_unit(st, read)

        self._warm_up(each_graphs_body)
        st.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(st.graph):
            self._first_unit(st)
        for read in reads:
            st.unit_graphs[read] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(st.unit_graphs[read]):
                self._next_unit(st, read)

    @staticmethod
    def _warm_up(run):
        """``run()`` once outside a graph, on a side stream, before a capture: compiles, kernel choices and lazy
        initialisation happen there. What it writes to the cache is overwritten before it is read (each unit writes
        its slots before reading them)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)

    def _start(self, st: _BatchState, labels: torch.Tensor, ids: torch.Tensor, round_: int = 0):
        """A batch's labels (the null class in the guided half) and noise keys into its state."""
        B = len(labels)
        st.labels[:B].copy_(labels)
        if st.guided:
            st.labels[B:].fill_(self.model.null_class)
        st.ids.copy_(ids)
        # round_ > 0: a video's later windows (``sample_video``), each with noise of its own
        st.noise.key.copy_(CounterNoise(self.cfg.seed + 1_000_003 * round_, ids).key)

    @torch.no_grad()
    def _sample_batch(self, labels: torch.Tensor, ids: torch.Tensor, given=None, round_: int = 0) -> torch.Tensor:
        if self.speculative is not None:
            return self.speculative.sample_batch(labels, ids)
        B, m = len(labels), self.model
        st = self._states.get(B)
        if st is None:
            st = self._states[B] = _BatchState(m, B, self.guided, self.dtype, self.device)
        self._start(st, labels, ids, round_)
        if not self.use_graph or given is not None:  # a given prefix runs eagerly (its length would fix a graph)
            return self._loop(st, given=given)
        if self.unit_replay:
            if st.graph is None:
                self._capture_units(st)
            return self._unit_by_unit(st, replay=True).clone()
        if st.graph is None:
            # every kind of unit (warm_up_units) once: for one-token units through the Triton kernel two units
            self._warm_up(lambda: self._loop(st, stop=warm_up_units(m.schedule.unit_sizes, self.reads)))
            st.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(st.graph):
                st.out = self._loop(st)
        st.graph.replay()
        return st.out.clone()

    @torch.no_grad()
    def sample_video(self, labels, frames: int, sample_ids=None, progress: bool = False) -> torch.Tensor:
        """Clips (N, frames, C, H, W) in [-1, 1] of ``sample_video_tokens``' latents."""
        tokens = self.sample_video_tokens(labels, frames, sample_ids, progress)
        bs = self.cfg.batch_size
        return torch.cat([self.decode(tokens[i : i + bs]) for i in range(0, len(tokens), bs)])

    @torch.no_grad()
    def sample_video_tokens(self, labels, frames: int, sample_ids=None, progress: bool = False) -> torch.Tensor:
        """Latent clips (N, frames, C, h, w) from a video model, as long as asked: the first ``model.frames``
        frames as ``sample_images`` draws them, then each further frame drawn after a window of the last
        ``model.frames - 1`` frames, recomputed from those frames as given units at the positions the model was
        trained on (time 0 .. T - 2; the window's cache equals a recomputation over it because it is one), with noise
        of its own for every window. Each further frame costs a window's prefill (``model.frames - 1`` units)."""
        m = self.model
        T = m.config.frames
        if not T:
            raise ConfigError("sample_video needs a video model (model.frames > 0)")
        if frames < T:
            raise ConfigError(f"frames must be at least the model's {T}, got {frames}")
        labels = torch.as_tensor(labels, dtype=torch.long)
        tokens = self.sample_tokens(labels, sample_ids, progress)  # (N, T, C, h, w)
        clip = [tokens[:, t] for t in range(T)]
        for r in range(1, frames - T + 1):
            window = torch.stack(clip[-(T - 1) :], 1)
            pad = torch.cat([window, window[:, -1:]], 1)  # the last slot is drawn, its content never read
            given = m.schedule.split_units(m.schedule.to_sequence(pad))[: T - 1]
            clip.append(self.sample_tokens(labels, sample_ids, False, given, round_=r)[:, -1])
        return torch.stack(clip, 1)

    @torch.no_grad()
    def sample_tokens(self, labels, sample_ids=None, progress: bool = False, given=None, round_: int = 0):
        """Token grids for ``labels`` (N,); sample i's randomness depends only on (seed, sample_ids[i]).
        ``given``: the first units as they must be, a list of (N, n, ...) in generation order (``sample_images``
        builds it from context images or frames)."""
        return torch.cat(list(self._token_batches(labels, sample_ids, progress, given, round_)))

    def _token_batches(self, labels, sample_ids=None, progress: bool = False, given=None, round_: int = 0):
        """``sample_tokens``' batches, one at a time (``sample_images`` decodes each as the next one is drawn)."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        n_cls = self.model.config.num_classes
        if len(labels) and (labels.min() < 0 or labels.max() >= n_cls):
            raise ConfigError(
                f"class labels must lie in [0, {n_cls - 1}], got {labels.min().item()}..{labels.max().item()}"
            )
        if given is not None and self.speculative is not None:
            raise ConfigError("sampling from given units (context frames) does not combine with speculative decoding")
        ids = torch.arange(len(labels)) if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.long)
        bs = self.cfg.batch_size
        for i in tqdm(range(0, len(labels), bs), disable=not progress, desc="sample", unit="batch"):
            part = None if given is None else [u[i : i + bs].to(self.device) for u in given]
            with torch.autocast(self.device.type, enabled=False):  # the sampler's dtype, not a caller's autocast
                tokens = self._sample_batch(labels[i : i + bs].to(self.device), ids[i : i + bs].to(self.device),
                                            part, round_)  # fmt: skip
            yield tokens

    @torch.no_grad()
    def sample_prefix(self, labels, units: int, sample_ids=None, given=None) -> list[torch.Tensor]:
        """The first ``units`` units (a list of (N, n, ...) in generation order) through a fresh cache, eagerly: the
        ``given`` ones as they are, the rest drawn with the noise ``sample_tokens`` gives them, so a prefix drawn
        after given units that ``sample_tokens`` drew equals its units (what a sampler without a cache across units
        would compute; ``bench/video.py`` times it)."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        ids = torch.arange(len(labels)) if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.long)
        st = _BatchState(self.model, len(labels), self.guided, self.dtype, self.device)  # a fresh cache
        self._start(st, labels.to(self.device), ids.to(self.device))
        with torch.autocast(self.device.type, enabled=False):
            return self._loop(st, stop=units, given=given)

    def given_units(self, context: torch.Tensor, units: int) -> list[torch.Tensor]:
        """The first ``units`` units of ``context`` (images (N, C, H, W), or clips (N, T, C, H, W) for a video model,
        in [-1, 1], at least as many frames as ``units``) encoded by the model's tokenizer, in generation order."""
        m = self.model
        if not 1 <= units < m.schedule.num_units:
            raise ConfigError(f"context units must be between 1 and {m.schedule.num_units - 1}, got {units}")
        context = torch.as_tensor(context, dtype=torch.float32)
        if m.config.frames:
            if context.dim() != 5 or context.shape[1] < units:
                raise ConfigError(
                    f"context: clips (N, T >= {units}, C, H, W) for {units} context frames, got {tuple(context.shape)}"
                )
            frames = context[:, :units]
            pad = frames[:, -1:].expand(-1, m.config.frames - units, -1, -1, -1)  # stands for frames to be drawn
            context = torch.cat([frames, pad], 1)
        with torch.no_grad():
            tokens = m.encode(context.to(self.device, dtype=next(m.tokenizer.parameters(), context).dtype))
        return m.schedule.split_units(m.schedule.to_sequence(tokens))[:units]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Images (clips for a video model) in [-1, 1] of one batch of ``tokens`` as the sampler drew them, through
        the model's decoder (on a GPU its convolution algorithms timed per shape)."""
        with torch.backends.cudnn.flags(enabled=True, benchmark=True):
            return self.model.decode_tokens(tokens, self.decoder)

    @torch.no_grad()
    def sample_images(self, labels, sample_ids=None, progress: bool = False, context=None,
                      context_units: int = 0) -> torch.Tensor:  # fmt: skip
        """Images in [-1, 1], (N, C, H, W) (clips (N, T, C, H, W) for a video model). ``context`` with
        ``context_units`` K: the first K units come from these images instead (for a video model the first K
        frames of these clips: video prediction); the rest is drawn after them."""
        given = self.given_units(context, context_units) if context is not None else None
        # on a GPU each batch decodes on a second stream while the next batch's tokens are drawn on the first, so the
        # decoder's convolutions fill what the small decoding steps leave of the GPU (the same kernels, in order)
        cuda = self.device.type == "cuda"
        main, side = (torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)) if cuda else (None, None)
        images = []
        for tokens in self._token_batches(labels, sample_ids, progress, given):
            if cuda:
                side.wait_stream(main)  # this batch's tokens are drawn
                tokens.record_stream(side)  # freed after the decode, not when drawing moves on
            with torch.cuda.stream(side):  # no stream (a CPU): where it runs
                images.append(self.decode(tokens))
        if cuda:
            main.wait_stream(side)
            for x in images:
                x.record_stream(main)
        return torch.cat(images)
