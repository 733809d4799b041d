"""Model folders: ``config.json`` + ``model.safetensors`` (+ ``ema.safetensors``), never pickle.

Every saveable model registers its type name; ``load_model(dir)`` reads the type from the folder and builds the
right class, and ``Cls.from_pretrained(dir)`` refuses a folder of another type with a clear message.
``config.json`` records the SHA-256 of each weights file (``sha256``); loading verifies it and refuses non-finite
weights, so a file damaged on disk is an error naming the file, not a model that draws flat textures.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from visgen.config import from_dict, to_dict

MODEL_TYPES: dict[str, type] = {}
CONFIG_NAME, WEIGHTS_NAME, EMA_NAME = "config.json", "model.safetensors", "ema.safetensors"


class CheckpointError(RuntimeError):
    """A model folder that is missing, corrupt, or holds another kind of model."""


def register_model(name: str):
    """Class decorator: make ``name`` loadable by ``load_model`` and tag the class with it."""

    def wrap(cls):
        cls.model_type = name
        MODEL_TYPES[name] = cls
        return cls

    return wrap


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> str:
    """``safetensors.save_file`` with the permissions of any other file written here (it creates 0600 files);
    returns the file's SHA-256."""
    save_file(tensors, str(path))
    os.chmod(path, 0o666 & ~_umask())
    return file_sha256(path)


def check_finite(state: dict[str, torch.Tensor], where: str):
    """A CheckpointError naming the first floating-point tensor with a NaN or an infinity."""
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(f"{where}: tensor {k!r} holds {bad} non-finite value(s) of {v.numel()}; refusing it")


def _state_dict_for_save(module: torch.nn.Module, state: dict | None = None) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (tied weights) and non-contiguous views
    out, seen = {}, {}
    for k, v in (module.state_dict() if state is None else state).items():
        key = (v.data_ptr(), v.shape, v.dtype)
        if v.numel() and key in seen:
            continue
        seen[key] = k
        out[k] = v.detach().contiguous().cpu()
    return out


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` whose ``config`` is a dataclass."""

    model_type: str
    config_class: type

    def save_pretrained(self, directory: str | Path, ema_state: dict | None = None, dtype: torch.dtype | None = None,
                        state: dict | None = None):  # fmt: skip
        """Write config, weights and, if given, EMA weights to ``directory``.

        ``dtype`` stores floating-point weights in that type (fp16 halves the files; loading casts back). ``state``
        is the weights to write where the module's own are not whole (a sharded model's gathered state dict).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cast = lambda v: v.to(dtype) if dtype is not None and v.dtype.is_floating_point else v
        sha = {WEIGHTS_NAME: save_tensors({k: cast(v) for k, v in _state_dict_for_save(self, state).items()},
                                          directory / WEIGHTS_NAME)}  # fmt: skip
        if ema_state is not None:
            sha[EMA_NAME] = save_tensors({k: cast(v.contiguous().cpu()) for k, v in ema_state.items()},
                                         directory / EMA_NAME)  # fmt: skip
        meta = {"model_type": self.model_type, "config": to_dict(self.config), "sha256": sha}
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2))  # its checksums name the files above
        from visgen.model_card import write_card

        write_card(directory, self)  # README.md: what the model is (the trainer and the harness add to it)

    @classmethod
    def from_pretrained(cls, directory: str | Path, ema: bool = False, map_location: str = "cpu"):
        """Load a folder written by ``save_pretrained``; ``ema=True`` takes the EMA weights where present."""
        meta = read_config(directory)
        if meta["model_type"] != cls.model_type:
            raise CheckpointError(
                f"{directory} holds a {meta['model_type']!r} model, not a {cls.model_type!r}; "
                f"load it with visgen.load_model() or point to a {cls.model_type!r} checkpoint"
            )
        model = cls.from_config(meta, directory)
        model.load_weights(directory, ema=ema, map_location=map_location)
        return model

    @classmethod
    def from_config(cls, meta: dict, directory: str | Path | None = None):
        """Build an untrained model from a folder's parsed ``config.json``."""
        return cls(from_dict(cls.config_class, meta["config"], f"{cls.model_type} config"))

    def blank_copy(self):
        """An untrained model of this one's config, built as a saved folder's is (no weights are loaded or
        downloaded): what the trainer gathers a sharded model into to evaluate it."""
        return type(self).from_config({"model_type": self.model_type, "config": to_dict(self.config)})

    def load_weights(self, directory: str | Path, ema: bool = False, map_location: str = "cpu"):
        directory = Path(directory)
        path = directory / EMA_NAME if ema and (directory / EMA_NAME).is_file() else directory / WEIGHTS_NAME
        verify_file(path, read_config(directory).get("sha256"))
        try:
            state = load_file(str(path), device=map_location)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read weights {path}: {e}. The file is missing or corrupt.") from e
        check_finite(state, str(path))
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CheckpointError(f"weights in {path} do not fit this {self.model_type} config: {e}") from e
        # tied weights are saved once, parameters newer than the file are set to what the model did before them;
        # anything else missing means the file belongs to another config
        missing = [k for k in missing if not self._is_tied(k) and not self._fill_missing(k)]
        if missing or unexpected:
            raise CheckpointError(
                f"weights in {path} do not fit this {self.model_type} config "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )

    def _is_tied(self, key: str) -> bool:
        return False

    def _fill_missing(self, key: str) -> bool:
        """For a parameter ``key`` added after a checkpoint was written: set it to what the model did before it
        existed and say True; False for any other key (the file is another model's)."""
        return False


_NOTED: set[str] = set()


def verify_file(path: Path, recorded: dict[str, str] | None):
    """Check ``path`` against the SHA-256 its folder recorded; a folder written before checksums loads with a
    note (once per file and process)."""
    if not recorded or path.name not in recorded:
        if str(path) not in _NOTED and path.is_file():
            _NOTED.add(str(path))
            print(f"note: {path} has no recorded checksum (saved by an older visgen); not verified", file=sys.stderr)
        return
    if not path.is_file():
        raise CheckpointError(f"cannot read weights {path}: the file is missing")
    if file_sha256(path) != recorded[path.name]:
        raise CheckpointError(
            f"{path} is corrupt: its SHA-256 differs from the one recorded when it was saved. Restore the file "
            "(copy it again, or take an earlier checkpoint)"
        )


def read_config(directory: str | Path) -> dict:
    """Parse a model folder's ``config.json``, with a clear error for every way it can be wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {directory}")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a visgen model folder: it has no {CONFIG_NAME}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from e
    if not isinstance(meta, dict) or "model_type" not in meta or "config" not in meta:
        raise CheckpointError(f"{path} is not a visgen config (no model_type/config)")
    return meta


# model types whose modules load_model imports only when a folder holds one (each costs its import)
_REGISTERED_IN = {
    "classifier": "visgen.metrics.classifier",
    "video-classifier": "visgen.metrics.video",
    "feature-draft": "visgen.sampling.feature_draft",
}


def load_model(directory: str | Path, ema: bool = False, map_location: str = "cpu"):
    """Load any registered visgen model from its folder, a bundled one by ``asset:NAME``, or one from the Hugging
    Face Hub by ``user/repo`` id."""
    import visgen.generator  # noqa: F401  (registers the model types)
    import visgen.tokenizers  # noqa: F401
    from visgen.hub import resolve

    directory = resolve(directory)
    meta = read_config(directory)
    if meta["model_type"] in _REGISTERED_IN and meta["model_type"] not in MODEL_TYPES:
        importlib.import_module(_REGISTERED_IN[meta["model_type"]])  # the metrics' models, imported when needed
    cls = MODEL_TYPES.get(meta["model_type"])
    if cls is None:
        raise CheckpointError(f"{directory}: unknown model type {meta['model_type']!r}; known: {sorted(MODEL_TYPES)}")
    return cls.from_pretrained(directory, ema=ema, map_location=map_location)


def export_model(src: str | Path, dst: str | Path, ema: bool = True, dtype: torch.dtype | None = torch.float16) -> Path:
    """Save a trained model for shipping: its EMA weights (where it has them) in ``dtype``, its card's account of
    how it was trained (command, steps, kept step, recipe) carried over, since ``save_pretrained`` writes a new one.
    Returns ``dst``."""
    from visgen.model_card import read_card, write_card

    load_model(src, ema=ema).save_pretrained(dst, dtype=dtype)
    training = read_card(src).get("visgen", {}).get("training")
    if training:
        write_card(dst, training=training)
    return Path(dst)
