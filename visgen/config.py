"""Recipes: YAML files of nested sections, overridden from the command line with ``key.sub=value``."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A recipe, an override or a config field a user got wrong."""


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Read a YAML recipe and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path} (recipes live in tokenizers/ and generators/)")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(recipe).__name__}")
    return apply_overrides(recipe, overrides)


def apply_overrides(recipe: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of ``recipe`` with each ``a.b.c=value`` applied; unknown sections are an error."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"override {item!r}: the key must name a section and a field, e.g. train.steps=100")
        node = recipe
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                known = ", ".join(k for k, v in node.items() if isinstance(v, dict)) or "none"
                raise ConfigError(f"override {item!r}: no section {p!r} (sections here: {known})")
            node = node[p]
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        node[parts[-1]] = value
    return recipe


def from_dict(cls: type, values: dict | None, where: str):
    """Build dataclass ``cls`` from ``values``, naming every unknown field and the valid ones."""
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
    return cls(**values)


def to_dict(obj: Any) -> dict:
    """A dataclass as a plain dict (tuples become lists, so it survives JSON and YAML)."""
    return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(obj)))
