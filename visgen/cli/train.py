"""``train.py tokenizer|generator|feature-draft --recipe FILE [section.key=value ...]``: train from a recipe."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import torch

from visgen.checkpoint import CheckpointError
from visgen.config import ConfigError, from_dict, load_recipe
from visgen.data import DataConfig, DataError, build_dataset
from visgen.train.trainer import (
    NonFiniteLossError,
    Preempted,
    RunLockedError,
    RunStorageError,
    TrainConfig,
    Trainer,
)  # fmt: skip

KNOWN_SECTIONS = {
    "tokenizer": {"model", "loss", "data", "val", "train"},
    "generator": {"model", "tokenizer", "data", "val", "train", "distill"},
    "feature-draft": {"model", "tokenizer", "data", "val", "train"},
}
OPTIONAL_SECTIONS = {"generator": ("distill",)}  # an override may add them to a recipe without them


def build_datasets(recipe: dict, seed: int):
    data_cfg = from_dict(DataConfig, recipe.get("data"), "data")
    val_cfg = from_dict(DataConfig, {**recipe.get("data", {}), "random_flip": False, **recipe.get("val", {})}, "val")
    return build_dataset(data_cfg, seed), build_dataset(val_cfg, seed)


def build_task(kind: str, recipe: dict, train_set, val_set):
    """The training task and the data sets it trains and validates on."""
    if kind == "tokenizer":
        from visgen.tokenizers import build_tokenizer
        from visgen.train.tokenizer_task import TokenizerLossConfig, TokenizerTask

        loss = from_dict(TokenizerLossConfig, recipe.get("loss"), "loss")
        model = dict(recipe["model"])
        finetune, source = model.pop("finetune", "all"), model.pop("from_trained", "")
        tokenizer = trained_tokenizer(source, model) if source else build_tokenizer(model)
        return TokenizerTask(tokenizer, loss, finetune), train_set, val_set
    if kind == "feature-draft":
        from visgen.train.feature_draft_task import build_feature_draft_task

        return build_feature_draft_task(recipe, train_set, val_set)
    from visgen.train.generator_task import build_generator_task

    return build_generator_task(recipe, train_set, val_set)


def trained_tokenizer(ref: str, rest: dict):
    """A trained tokenizer (``model.from_trained``: a folder, ``asset:NAME`` or a Hub id), whole: its own config."""
    from visgen.checkpoint import load_model
    from visgen.tokenizers.base import Tokenizer

    if rest:
        raise ConfigError(f"model.from_trained loads a trained tokenizer with its own settings; drop {sorted(rest)}")
    model = load_model(ref)  # a folder, asset:NAME or a Hub id
    if not isinstance(model, Tokenizer):
        raise ConfigError(f"model.from_trained {ref!r} is a {type(model).__name__}, not a tokenizer")
    return model


def run(kind: str, recipe: dict, command: str | None = None) -> dict:
    """Train a ``kind`` model as ``recipe`` says; returns the trainer's summary."""
    unknown = set(recipe) - KNOWN_SECTIONS[kind]
    if unknown:
        raise ConfigError(
            f"unknown recipe section(s) {sorted(unknown)} for {kind}; known: {sorted(KNOWN_SECTIONS[kind])}"
        )
    if "model" not in recipe:
        raise ConfigError("the recipe has no model section")
    cfg = from_dict(TrainConfig, recipe.get("train"), "train")
    train_set, val_set = build_datasets(recipe, cfg.seed)
    torch.manual_seed(cfg.seed)  # the same initial weights on every process and every run of the recipe
    task, train_set, val_set = build_task(kind, recipe, train_set, val_set)
    return Trainer(task, train_set, val_set, cfg, recipe, command=command).fit()


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("kind", choices=sorted(KNOWN_SECTIONS), help="what to train")
    p.add_argument("--recipe", required=True, help="YAML recipe (tokenizers/*.yaml, generators/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=100")
    args = p.parse_intermixed_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides, optional=OPTIONAL_SECTIONS.get(args.kind, ()))
        invoked = ["python", "train.py"] if prog == "train.py" else prog.split()
        summary = run(args.kind, recipe, shlex.join([*invoked, *(sys.argv[1:] if argv is None else argv)]))
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return Preempted.exit_code
    except (ConfigError, DataError, CheckpointError, NonFiniteLossError, RunStorageError, RunLockedError,
            ValueError) as e:  # fmt: skip
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=float))
    return 0
