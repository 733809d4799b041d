"""Heads: the distribution of a unit given the backbone's features."""

from visgen.heads.categorical import CategoricalHead, filter_logits
from visgen.heads.flow import FlowHead

__all__ = ["CategoricalHead", "FlowHead", "filter_logits"]
