"""The AR generator: tokenizer reference + schedule + backbone + head, one class for every family.

Sequence layout (DESIGN.md): position i predicts token i of the schedule's order. Unit 0 reads the class
embedding (the prefix token, repeated over unit 0's positions), plus a learned embedding of each position where unit 0
has several (a video's first frame, a raster unit of several tokens): attention alone cannot tell them apart, since
RoPE turns queries and keys but every position's value is the same; unit k >= 1 reads ``schedule.next_input`` of the
units before it. With ``backbone.adaln`` the class also modulates every block.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from visgen.checkpoint import CONFIG_NAME, CheckpointError, PretrainedMixin, load_model, register_model
from visgen.config import ConfigError, from_dict, to_dict
from visgen.heads import CategoricalHead, DiffusionHead, DMoLHead, FlowHead, FlowMLPHead
from visgen.hub import ASSETS
from visgen.nn import Transformer, backbone_config
from visgen.nn.transformer import rope_tables
from visgen.schedules import build_schedule
from visgen.tokenizers.base import Tokenizer
from visgen.tokenizers.pixel import PixelConfig, PixelTokenizer, pixel_tokenizer_ref

CONTINUOUS_HEADS = {"flow": FlowHead, "diffusion": DiffusionHead, "flow_mlp": FlowMLPHead}


@dataclass
class GeneratorConfig:
    """Generator settings.

    tokenizer: the tokenizer folder: ``asset:NAME`` for one bundled under ``visgen/assets``, or a path (a saved
        generator keeps a copy in its own ``tokenizer/`` subfolder, so a checkpoint folder is self-contained); or
        ``pixel`` / ``pixel:grey``, raw 8-bit sub-pixels (RGB / grey) of ``image_size`` images (no weights).
    image_size: side of the generated images.
    num_classes: classes for conditioning; index ``num_classes`` is the null class used for guidance.
    schedule: unit schedule: ``raster`` (one token per unit), ``next_scale`` (one scale per unit, VAR; needs a
        multi-scale tokenizer and a 3-axis RoPE backbone, e.g. ``{preset: var-d16, rope_axes: 3}``),
        ``next_frequency`` (one frequency band per unit, NFIG; a ``freqvq`` tokenizer, the same backbone),
        ``flow_scale`` (FlowAR), ``pixel`` (raw sub-pixels) or ``parallel`` (PAR: the first token of each of
        ``regions`` regions one a step, then the tokens at the same place in every region together).
    backbone: a preset name (``gpt-b``) or a dict with ``preset`` and fields to change (see ``visgen.nn.presets``).
    class_dropout: probability of replacing the label by the null class in training (classifier-free guidance,
        Ho & Salimans 2022).
    head: ``categorical`` for discrete tokenizers; for continuous ones ``flow`` (flow matching over a whole unit,
        FlowAR), ``diffusion`` (MAR's per-token diffusion head) or ``flow_mlp`` (per-token flow matching on the
        same MLP); ``dmol`` (PixelCNN++'s discretised logistic mixture) for whole-pixel units.
    head_options: keyword arguments of the head (``FlowHead``: width, depth, heads, steps, cfg_interval;
        ``DiffusionHead``: width, depth, train_steps, steps, batch_mul; ``FlowMLPHead``: width, depth, steps,
        batch_mul).
    unit_size: tokens per unit of the ``raster`` schedule: k consecutive raster tokens predicted in one AR step
        (block-causal attention, each token through the head on its own); must divide the token count.
    regions: regions of the ``parallel`` schedule, equal rectangles of the token grid (on an 8 x 8 grid, 4 or 16
        make 19 steps of the 64 tokens, 8 makes 15).
    scales: the scales of the ``flow_scale`` schedule (default: sides that double up to the latent's).
    frames: clip length of a video model (``schedule: next_frame``, one unit a frame over a KL tokenizer applied
        frame by frame, ``head: flow``); 0 for images.
    context_noise: video training: each context frame's input latent gets Gaussian noise of a standard deviation
        drawn uniformly in [0, context_noise] per clip and frame, except a tenth of the frames kept clean (FAR's
        stochastic clean context, Gu et al. 2025, against exposure bias: at sampling the context is the model's own
        imperfect frames); 0 keeps every context clean.
    unit: the ``pixel`` schedule's unit: ``subpixel`` (one 8-bit value a step, categorical head) or ``pixel`` (a
        whole pixel a step, its channels jointly through the ``dmol`` head: a third of the steps).
    class_names: names of the classes, in label order (filled from the training data).
    """

    tokenizer: str = "asset:cifar10-vq"
    image_size: int = 32
    num_classes: int = 10
    schedule: str = "raster"
    backbone: str | dict = field(default_factory=lambda: "cifar")
    class_dropout: float = 0.1
    head: str = "categorical"
    head_options: dict = field(default_factory=dict)
    scales: list[int] | None = None
    class_names: list[str] = field(default_factory=list)
    unit_size: int = 1
    unit: str = "subpixel"
    frames: int = 0
    context_noise: float = 0.0
    regions: int = 4


def build_tokenizer_ref(ref: str, image_size: int, base: Path | None = None) -> Tokenizer:
    """The tokenizer a generator's reference names: the pixel tokenizer, or one loaded from its folder."""
    channels = pixel_tokenizer_ref(ref)
    if channels is not None:
        return PixelTokenizer(PixelConfig(channels=channels, image_size=image_size))
    return load_model(resolve_tokenizer(ref, base))


def resolve_tokenizer(ref: str, base: Path | None = None) -> Path:
    """The folder a tokenizer reference points at."""
    if ref.startswith("asset:"):
        path = ASSETS / ref[len("asset:") :]
    else:
        path = Path(ref).expanduser()
        if not path.is_absolute() and base is not None and (base / path).exists():
            path = base / path
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"tokenizer {ref!r} not found (looked in {path})")
    return path


@register_model("ar-generator")
class Generator(PretrainedMixin, nn.Module):
    """An AR generator over a tokenizer's tokens; see ``GeneratorConfig`` and the module docstring."""

    config_class = GeneratorConfig

    def __init__(self, config: GeneratorConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.config = config
        if tokenizer is None:
            tokenizer = build_tokenizer_ref(config.tokenizer, config.image_size)
        object.__setattr__(self, "tokenizer", tokenizer.eval().requires_grad_(False))  # referenced, not owned
        self.schedule = build_schedule(
            config.schedule,
            tokenizer,
            config.image_size,
            config.scales,
            config.unit_size,
            config.unit,
            config.frames,
            config.regions,
        )
        if not config.context_noise >= 0:
            raise ConfigError(f"model.context_noise must be >= 0, got {config.context_noise}")
        self.backbone_cfg = backbone_config(config.backbone)
        d = self.backbone_cfg.d_model
        self.backbone = Transformer(self.backbone_cfg)
        self.class_emb = nn.Embedding(config.num_classes + 1, d)
        nn.init.normal_(self.class_emb.weight, std=0.02)
        n0 = self.schedule.unit_sizes[0]  # unit 0's positions told apart (see the module docstring)
        self.start_pos = nn.Parameter(0.02 * torch.randn(n0, d)) if n0 > 1 else None
        if self.schedule.input_kind == "tokens":
            self.input_emb = nn.Embedding(tokenizer.vocab_size, d)
            nn.init.normal_(self.input_emb.weight, std=0.02)
        else:
            self.input_emb = nn.Linear(self.schedule.input_dim, d)
        whole_pixels = config.schedule == "pixel" and config.unit == "pixel"
        if whole_pixels and config.head != "dmol":
            raise ConfigError("whole-pixel units (unit: pixel) predict a pixel's channels jointly: use head: dmol")
        if config.head == "dmol" and not whole_pixels:
            raise ConfigError(
                "the dmol head predicts whole pixels: use schedule: pixel with unit: pixel (sub-pixel units take "
                "head: categorical)"
            )
        if config.head == "categorical":
            if not tokenizer.discrete:
                raise ConfigError("the categorical head needs a discrete tokenizer (VQ); this one is continuous")
            self.head = CategoricalHead(d, tokenizer.vocab_size, **config.head_options)
        elif config.head == "dmol":
            try:
                self.head = DMoLHead(d, tokenizer.config.channels, **config.head_options)
            except TypeError as e:
                raise ConfigError(f"model.head_options for the dmol head: {e}") from None
        elif config.head in CONTINUOUS_HEADS:
            if tokenizer.discrete:
                raise ConfigError(
                    f"the {config.head} head needs a continuous tokenizer (kl, diffusers-kl); this one is discrete "
                    "(use head: categorical)"
                )
            try:
                self.head = CONTINUOUS_HEADS[config.head](d, tokenizer.latent_channels, **config.head_options)
            except TypeError as e:
                raise ConfigError(f"model.head_options for the {config.head} head: {e}") from None
        else:
            raise ConfigError(f"unknown head {config.head!r}; known: categorical, dmol, {', '.join(CONTINUOUS_HEADS)}")
        s = self.schedule
        self.register_buffer("positions", s.positions.clone(), persistent=False)
        self.register_buffer("unit_ids", s.unit_ids, persistent=False)

    def _apply(self, fn, recurse=True):
        # the tokenizer is referenced, not owned (no parameters of ours), yet schedules (VAR's f_hat) and decoding
        # run it beside the generator: it follows the generator's device, whoever moves it, and keeps its dtype
        super()._apply(fn, recurse)
        self.tokenizer.to(self.class_emb.weight.device)
        return self

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def save_pretrained(self, directory, ema_state=None, dtype=None, state=None):
        directory = Path(directory)
        ref = self.config.tokenizer
        if not ref.startswith("asset:") and pixel_tokenizer_ref(ref) is None:  # the pixel tokenizer has no folder
            tok_dir = directory / "tokenizer"
            shutil.rmtree(tok_dir, ignore_errors=True)
            self.tokenizer.save_pretrained(tok_dir)
            self.config.tokenizer = "tokenizer"
        super().save_pretrained(directory, ema_state=ema_state, dtype=dtype, state=state)

    def blank_copy(self):
        cfg = from_dict(GeneratorConfig, to_dict(self.config), "generator config")
        return Generator(cfg, tokenizer=self.tokenizer)  # the tokenizer is referenced, not owned: shared

    @classmethod
    def from_config(cls, meta: dict, directory=None):
        cfg = from_dict(GeneratorConfig, meta["config"], "generator config")
        base = Path(directory) if directory is not None else None
        return cls(cfg, tokenizer=build_tokenizer_ref(cfg.tokenizer, cfg.image_size, base))

    # ---- the sequence ------------------------------------------------------------------------------------------

    def start(self, labels_B: torch.Tensor, n: int) -> torch.Tensor:
        """Unit 0's input: the class embedding at each of its ``n`` positions (plus each position's own embedding
        where unit 0 has several)."""
        x = self.class_emb(labels_B)[:, None].expand(-1, n, -1)
        return x if self.start_pos is None else x + self.start_pos[:n]

    def _fill_missing(self, key: str) -> bool:
        if key != "start_pos":
            return False
        with torch.no_grad():  # a checkpoint from before unit 0's positions had embeddings: they read as it did then
            self.start_pos.zero_()
        return True

    def cond(self, labels_B: torch.Tensor) -> torch.Tensor | None:
        return self.class_emb(labels_B) if self.backbone_cfg.adaln else None

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens; clips (B, T, C, H, W) frame by frame -> (B, T, ...)."""
        if images.dim() == 5:
            B, T = images.shape[:2]
            return self.tokenizer.encode(images.flatten(0, 1)).unflatten(0, (B, T))
        return self.tokenizer.encode(images)

    def _noised_context(self, inputs: torch.Tensor) -> torch.Tensor:
        """Training inputs of a video model with ``context_noise`` (see ``GeneratorConfig``)."""
        n, B = self.schedule.unit_sizes[0], len(inputs)
        frames = inputs.shape[1] // n
        std = torch.rand(B, frames, 1, 1, device=inputs.device) * self.config.context_noise
        std = std * (torch.rand(B, frames, 1, 1, device=inputs.device) >= 0.1)  # a tenth stay clean
        noisy = inputs.unflatten(1, (frames, n)) + std * torch.randn_like(inputs.unflatten(1, (frames, n)))
        return noisy.flatten(1, 2)

    def features(self, seq: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        """Teacher-forced features (B, L, d) for a known sequence in generation order."""
        s = self.schedule
        inputs = s.teacher_inputs(seq)
        if self.training and self.config.context_noise > 0:
            inputs = self._noised_context(inputs)
        x = torch.cat([self.start(labels_B, s.unit_sizes[0]), self.input_emb(inputs)], dim=1)
        mask = None if s.is_causal else self.unit_ids[None, :] <= self.unit_ids[:, None]
        return self.backbone(x, self.positions, self.cond(labels_B), mask=mask, is_causal=s.is_causal)

    def drop_labels(self, labels_B: torch.Tensor) -> torch.Tensor:
        """Training: each label replaced by the null class with probability ``class_dropout`` (what guidance needs)."""
        if self.training and self.config.class_dropout > 0:
            drop = torch.rand(labels_B.shape, device=labels_B.device) < self.config.class_dropout
            labels_B = labels_B.masked_fill(drop, self.null_class)
        return labels_B

    def loss(self, tokens: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        """Training loss for a batch of token grids; labels are dropped to the null class at ``class_dropout``."""
        seq, labels_B = self.schedule.to_sequence(tokens), self.drop_labels(labels_B)
        return self.head.loss(seq, self.features(seq, labels_B), self.schedule.unit_sizes)

    def decode_unit(
        self, k: int, inputs, labels_B: torch.Tensor, cache, kv_len: int | None = None, masked: bool = True
    ) -> torch.Tensor:
        """Features (B, n, d) of unit ``k`` (n = its size), appending its keys and values to ``cache``; ``inputs``
        is None for unit 0.

        Units are contiguous in sequence order, so unit k sees exactly the slots before its end. ``kv_len`` (default
        the whole cache) bounds the slots read; ``masked=False`` says it equals this unit's end (or that the
        backbone's decode kernel reads exactly the prefix), so no mask is needed. The unit's positions and RoPE
        tables are tensors kept per device (views or tensors of their own, no kernel to select them), so a captured
        graph of the sampling loop holds no host work."""
        s = self.schedule
        off, n = s.unit_offsets[k], s.unit_sizes[k]
        x = self.start(labels_B, n) if inputs is None else self.input_emb(inputs)
        positions, cos, sin = self._decode_tables(labels_B.device)
        kv_len = kv_len or s.seq_len
        # (n, kv_len): this unit and all before it
        mask = self.unit_ids[None, :kv_len] <= self.unit_ids[off : off + n, None] if masked else None
        return self._decode(x, labels_B, cache, mask, positions[k], kv_len, (cos[off : off + n], sin[off : off + n]))

    def decode_prefix(self, inputs: list, labels_B: torch.Tensor, cache) -> torch.Tensor:
        """``decode_unit`` of units 0..k-1 in one pass (a known prefix: context frames, a window): ``inputs`` their k
        inputs as ``decode_unit`` takes them (None for unit 0); features (B, n_0 + ... + n_{k-1}, d), every unit
        reading itself and the units before it, their keys and values into ``cache``."""
        s, k = self.schedule, len(inputs)
        end = s.unit_offsets[k - 1] + s.unit_sizes[k - 1]
        x = torch.cat([self.start(labels_B, s.unit_sizes[0]) if u is None else self.input_emb(u) for u in inputs], 1)
        positions, cos, sin = self._decode_tables(labels_B.device)
        mask = self.unit_ids[None, :end] <= self.unit_ids[:end, None]
        return self._decode(x, labels_B, cache, mask, torch.cat(positions[:k]), end, (cos[:end], sin[:end]))

    def decode_unit_at(self, pos_n: torch.Tensor, inputs, labels_B: torch.Tensor, cache, kv_len: int,
                       masked: bool = True) -> torch.Tensor:  # fmt: skip
        """``decode_unit`` for a unit after the first named by its positions on the device (``pos_n`` (n,)), not
        by a Python index: what a CUDA graph captured once and replayed for every unit of one cache read runs (the
        unit comes from a counter on the device). ``kv_len`` and ``masked`` as ``decode_unit``'s, which the sampler
        gives every unit it replays with this graph."""
        _, cos, sin = self._decode_tables(labels_B.device)
        mask = self.unit_ids[None, :kv_len] <= self.unit_ids[pos_n][:, None] if masked else None
        return self._decode(self.input_emb(inputs), labels_B, cache, mask, pos_n, kv_len, (cos[pos_n], sin[pos_n]))

    def _decode(self, x, labels_B, cache, mask, input_pos, kv_len: int, rope) -> torch.Tensor:
        """The backbone over one unit's inputs ``x`` at ``input_pos``, appending to ``cache``."""
        return self.backbone(x, None, self.cond(labels_B), mask=mask, cache=cache, input_pos=input_pos,
                             kv_len=kv_len, rope=rope)  # fmt: skip

    def decode_rows(self, inputs, labels_B: torch.Tensor, cache, pos_Bn: torch.Tensor) -> torch.Tensor:
        """Features (B, n, d) of one-token units at positions of each row's own, ``pos_Bn`` (B, n): rows of a batch
        at different points of their sequences (speculative decoding accepts different lengths per row). Each
        position reads its input (``inputs`` (B, n) tokens or (B, n, C) latents), writes its keys and values at its
        slot and attends to every slot at or before it: slots past a row's position are never read, so moving a
        row back is only a smaller position. Positions past the sequence (a finished row) take the last position's
        rotation; what they compute is discarded."""
        if set(self.schedule.unit_sizes) != {1}:
            raise ConfigError("decoding at per-row positions needs one-token units (raster with unit_size 1)")
        _, cos, sin = self._decode_tables(labels_B.device)
        slots = cache.k.shape[3]
        at = pos_Bn.clamp(max=self.schedule.seq_len - 1)
        mask = None if self.backbone.rows_kernel else torch.arange(slots, device=pos_Bn.device) <= pos_Bn[:, None, :, None]
        return self.backbone(
            self.input_emb(inputs), None, self.cond(labels_B), mask=mask, cache=cache, input_pos=pos_Bn,
            kv_len=slots, rope=(cos[at][:, None], sin[at][:, None]),
        )  # fmt: skip

    def _decode_tables(self, device) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """What decoding reads, built once per device and kept out of the buffers: each unit's sequence positions
        (n,), a tensor of its own per unit (aligned: compiled code and Triton kernels take it as they were compiled
        for), and the backbone's RoPE tables (cos, sin) at every sequence position, fp32 (casting the model to bf16
        for sampling leaves them as training computes them)."""
        tables = self.__dict__.setdefault("_decode_tables_by_device", {})
        if device not in tables:
            s, b = self.schedule, self.backbone
            positions = [torch.arange(o, o + n, device=device) for o, n in zip(s.unit_offsets, s.unit_sizes)]
            tables[device] = (positions, *rope_tables(self.positions.to(device), b.head_dim, b.cfg.rope_theta))
        return tables[device]

    def decode_tokens(self, tokens: torch.Tensor, tokenizer: Tokenizer | None = None) -> torch.Tensor:
        """Token grid -> images in [-1, 1] through the tokenizer (or a copy of it, e.g. the sampler's bf16 one;
        an fp32 tokenizer on a GPU decodes under bf16 autocast)."""
        if self.config.frames and tokens.dim() == 5:  # a clip: each frame through the image tokenizer
            B, T = tokens.shape[:2]
            return self.decode_tokens(tokens.flatten(0, 1), tokenizer).unflatten(0, (B, T))
        tok = (tokenizer or self.tokenizer).to(tokens.device)
        dtype = next(tok.parameters(), torch.empty(0)).dtype  # fp32 for a tokenizer of no weights (pixels)
        fp32 = dtype == torch.float32
        if tokens.is_floating_point():  # continuous tokens in whatever dtype their head produced (fp32 states)
            tokens = tokens.to(dtype)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=tokens.is_cuda and fp32):
            return tok.decode(tokens).float().clamp(-1, 1)
