"""Heads: the distribution of a unit given the backbone's features."""

from visgen.heads.categorical import CategoricalHead, filter_logits

__all__ = ["CategoricalHead", "filter_logits"]
