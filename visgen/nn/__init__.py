"""The shared backbone: transformer, KV cache, size presets."""

from visgen.nn.presets import PRESETS, backbone_config
from visgen.nn.transformer import KVCache, Transformer, TransformerConfig

__all__ = ["PRESETS", "backbone_config", "KVCache", "Transformer", "TransformerConfig"]
