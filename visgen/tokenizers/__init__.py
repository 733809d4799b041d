"""Tokenizers: pixels <-> tokens. Build one from a recipe's ``model`` section with ``build_tokenizer``."""

from __future__ import annotations

from visgen.config import ConfigError, from_dict
from visgen.tokenizers.base import Tokenizer
from visgen.tokenizers.diffusers_adapter import DiffusersKLTokenizer, DiffusersVAEConfig, DiffusersVQTokenizer
from visgen.tokenizers.freqvq import FrequencyVQConfig, FrequencyVQTokenizer
from visgen.tokenizers.kl import KLConfig, KLTokenizer
from visgen.tokenizers.msvq import MultiScaleVQConfig, MultiScaleVQTokenizer
from visgen.tokenizers.pixel import PixelConfig, PixelTokenizer
from visgen.tokenizers.vq import VQConfig, VQTokenizer

TOKENIZERS = {
    "vq": VQTokenizer,
    "kl": KLTokenizer,
    "diffusers-kl": DiffusersKLTokenizer,
    "diffusers-vq": DiffusersVQTokenizer,
    "msvq": MultiScaleVQTokenizer,
    "freqvq": FrequencyVQTokenizer,
    "pixel": PixelTokenizer,
}


def build_tokenizer(section: dict) -> Tokenizer:
    """A fresh tokenizer from ``{"type": name, **config}``."""
    section = dict(section)
    kind = section.pop("type", None)
    if kind not in TOKENIZERS:
        raise ConfigError(f"unknown tokenizer type {kind!r}; known: {sorted(TOKENIZERS)}")
    cls = TOKENIZERS[kind]
    return cls(from_dict(cls.config_class, section, f"model ({kind})"))


__all__ = [
    "Tokenizer", "VQTokenizer", "VQConfig", "KLTokenizer", "KLConfig", "DiffusersKLTokenizer",
    "DiffusersVQTokenizer", "DiffusersVAEConfig", "MultiScaleVQTokenizer", "MultiScaleVQConfig", "PixelTokenizer", "PixelConfig", "FrequencyVQTokenizer", "FrequencyVQConfig", "build_tokenizer",
    "TOKENIZERS",
]  # fmt: skip
