"""Model cards: a ``README.md`` in every saved model folder, in the Hugging Face Hub's format (YAML metadata between
``---`` lines, then Markdown). ``save_pretrained`` writes what the model is; the trainer adds how it was trained;
``eval/fid.py`` adds the results it measures, so a folder carries its own account wherever it is copied."""

from __future__ import annotations

from pathlib import Path

import yaml

CARD_NAME = "README.md"
FAMILIES = {
    ("raster", "categorical"): "token",
    ("raster", "diffusion"): "continuous token",
    ("raster", "flow_mlp"): "continuous token",
    ("raster", "flow"): "continuous token",
    ("next_scale", "categorical"): "scale (VAR)",
    ("flow_scale", "flow"): "scale (FlowAR)",
    ("next_frequency", "categorical"): "frequency (NFIG)",
    ("pixel", "categorical"): "pixel",
    ("pixel", "dmol"): "pixel",
    ("next_frame", "flow"): "video (frame-level)",
}


def describe(model) -> dict:
    """What a model is, for its card: type, family, parameters, and for generators their parts."""
    out = {"model_type": model.model_type, "parameters": sum(p.numel() for p in model.parameters())}
    cfg = model.config
    if model.model_type == "ar-generator":
        out.update(
            family=FAMILIES.get((cfg.schedule, cfg.head), cfg.schedule), tokenizer=cfg.tokenizer,
            schedule=cfg.schedule, head=cfg.head, unit_size=cfg.unit_size, num_classes=cfg.num_classes,
            image_size=cfg.image_size, backbone=cfg.backbone if isinstance(cfg.backbone, str) else dict(cfg.backbone),
        )  # fmt: skip
    else:
        out["family"] = "tokenizer" if hasattr(model, "encode") else model.model_type
    return out


def read_card(directory: str | Path) -> dict:
    """A folder's card metadata (empty when it has none)."""
    path = Path(directory) / CARD_NAME
    if not path.is_file():
        return {}
    text = path.read_text()
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        return {}
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)]) or {}


def write_card(directory: str | Path, model=None, training: dict | None = None, results: dict | None = None) -> Path:
    """Write (or update) the card: the model's description, and training / results merged into what is there."""
    directory = Path(directory)
    meta = read_card(directory)
    visgen = meta.get("visgen", {})
    if model is not None:
        visgen["model"] = describe(model)
    if training:
        visgen["training"] = {**visgen.get("training", {}), **training}
    if results:
        visgen["results"] = {**visgen.get("results", {}), **results}
    info = visgen.get("model", {})
    meta = {
        "library_name": "visgen",
        "tags": ["visgen", "autoregressive", "image-generation", *([info["family"]] if info.get("family") else [])],
        "visgen": visgen,
    }
    (directory / CARD_NAME).write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + _body(visgen))
    return directory / CARD_NAME


def _body(visgen: dict) -> str:
    m, t, r = visgen.get("model", {}), visgen.get("training", {}), visgen.get("results", {})
    lines = [f"# visgen {m.get('family', m.get('model_type', 'model'))} model", ""]
    if m:
        parts = ", ".join(f"{k} `{v}`" for k, v in m.items() if k not in ("family",))
        lines += [f"{parts}.", ""]
    if t:
        lines += ["## Training", ""]
        if t.get("command"):
            lines += ["```bash", t["command"], "```", ""]
        lines += [f"- {k}: {v}" for k, v in t.items() if k not in ("command", "recipe")] + [""]
        if t.get("recipe"):
            lines += ["Recipe:", "", "```yaml", yaml.safe_dump(t["recipe"], sort_keys=False).rstrip(), "```", ""]
    if r:
        lines += ["## Results", ""]
        for name, res in r.items():
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items())
            lines += [f"- {name}: {shown}"]
        lines += [""]
    if m.get("model_type") == "ar-generator":
        lines += ["## Sampling", "", "```bash", "python sample.py --checkpoint THIS_FOLDER --num-images 100", "```", "",
                  "```python", "from visgen.checkpoint import load_model", "from visgen.sampling import Sampler",
                  "", 'images = Sampler(load_model("THIS_FOLDER", ema=True)).sample_images([0, 1, 2])', "```", ""]  # fmt: skip
    return "\n".join(lines)
