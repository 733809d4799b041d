"""Heads: the distribution of a unit given the backbone's features."""

from visgen.heads.categorical import CategoricalHead, filter_logits
from visgen.heads.diffusion import DiffusionHead
from visgen.heads.dmol import DMoLHead
from visgen.heads.flow import FlowHead
from visgen.heads.flow_mlp import FlowMLPHead

__all__ = ["CategoricalHead", "DiffusionHead", "DMoLHead", "FlowHead", "FlowMLPHead", "filter_logits"]
