"""Backbone size presets, one registry (names as in the papers: GPT-B from LlamaGen, VAR-dN from VAR)."""

from __future__ import annotations

import dataclasses

from visgen.config import ConfigError
from visgen.nn.transformer import TransformerConfig

PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, d_model=32),  # tests
    "small": dict(n_layer=6, n_head=6, d_model=384),
    "cifar": dict(n_layer=8, n_head=8, d_model=256),  # the bundled CIFAR-10 model
    "gpt-b": dict(n_layer=12, n_head=12, d_model=768),  # LlamaGen GPT-B (111M)
    "gpt-l": dict(n_layer=24, n_head=16, d_model=1024),  # LlamaGen GPT-L (343M)
    "var-d16": dict(n_layer=16, n_head=16, d_model=1024, adaln=True),  # VAR depth 16 (width 64 x depth)
    "var-d20": dict(n_layer=20, n_head=20, d_model=1280, adaln=True),
}


def backbone_config(spec: str | dict, **overrides) -> TransformerConfig:
    """A ``TransformerConfig`` from a preset name, or a dict with an optional ``preset`` plus fields to change."""
    spec = {"preset": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("preset", None)
    if name is not None and name not in PRESETS:
        raise ConfigError(f"unknown backbone preset {name!r}; known: {sorted(PRESETS)}")
    values = {**(PRESETS[name] if name else {}), **spec, **overrides}
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"backbone: unknown field(s) {unknown}; valid: {sorted(fields)} or preset")
    return TransformerConfig(**values)
