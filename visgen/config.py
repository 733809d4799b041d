"""Recipes: YAML files of nested sections, overridden from the command line with ``key.sub=value``."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A recipe, an override or a config field a user got wrong."""


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict:
    """Read a YAML recipe and apply ``key.sub=value`` overrides (values parsed as YAML); an override may name a
    section in ``optional`` that the recipe leaves out (it starts empty)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path} (recipes live in tokenizers/ and generators/)")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(recipe).__name__}")
    for section in optional:
        if section not in recipe and any(o.split("=", 1)[0].startswith(f"{section}.") for o in overrides):
            recipe[section] = {}
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


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _check_type(value, tp, key: str):
    """Raise a ConfigError naming ``key`` unless ``value`` fits the annotation ``tp``; returns the value (ints are
    accepted where a float is asked for, lists where a tuple is)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            if option is type(None) and value is None:
                return None
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except ConfigError as e:
                errors.append(e)
        names = " or ".join("null" if a is type(None) else _type_name(typing.get_origin(a) or a) for a in args)
        raise ConfigError(f"{key} must be {names}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        inner = args[:1] * len(value) if origin is list or (args and args[-1] is Ellipsis) else args
        return type(value)(_check_type(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, inner)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value  # anything else (Any, nested dataclasses) is the class's own business


def from_dict(cls: type, values: dict | None, where: str):
    """Build dataclass ``cls`` from ``values``: unknown fields, values of the wrong type and out-of-range values
    (the class's ``__post_init__`` checks) are ConfigErrors naming ``where.field``."""
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for k, v in values.items():
        _check_type(v, hints[k], f"{where}.{k}")
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{where}.{e}") from None


def check(ok: bool, field: str, rule: str, value):
    """For a config's ``__post_init__``: a ConfigError ``field: must be RULE, got VALUE`` unless ``ok``
    (``from_dict`` prefixes the section)."""
    if not ok:
        raise ConfigError(f"{field} must be {rule}, got {value!r}")


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def to_dict(obj: Any) -> dict:
    """A dataclass as a plain dict (tuples become lists, so it survives JSON and YAML)."""
    return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(obj)))
