"""The demo page: ``visgen demo [--checkpoint DIR ...]`` (the optional extra ``demo``: ``pip install "visgen[demo]"``).

Pick a bundled or local generator, a class, the guidance scale and schedule, a seed and how many images; the page
shows the grid with its settings and images/s, and offers each image as a PNG to download. ``Demo.generate`` is the
page's callback and works without Gradio (the tests call it directly).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from visgen.checkpoint import CheckpointError, load_model
from visgen.config import ConfigError
from visgen.generator import ASSETS
from visgen.sampling import Sampler, SamplingConfig

ALL_CLASSES = "all classes (balanced)"
MAX_IMAGES = 64


def bundled_generators() -> dict[str, str]:
    """The generators that ship with visgen, by display name."""
    return {f"{p.name} (bundled)": str(p) for p in sorted(ASSETS.iterdir()) if _is_generator(p)}


def _is_generator(path: Path) -> bool:
    import json

    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "ar-generator"


class Demo:
    """Generators by display name, loaded on first use; ``generate`` samples a grid and writes its PNGs."""

    def __init__(self, checkpoints: dict[str, str], device: str | None = None, out_dir: str | None = None):
        if not checkpoints:
            raise ConfigError("the demo needs at least one generator checkpoint")
        self.checkpoints, self.device = dict(checkpoints), device
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="visgen-demo-"))
        self._models: dict[str, torch.nn.Module] = {}

    def model(self, name: str):
        if name not in self.checkpoints:
            raise ConfigError(f"unknown model {name!r}; choose one of {sorted(self.checkpoints)}")
        if name not in self._models:
            ckpt = Path(self.checkpoints[name])
            self._models[name] = load_model(ckpt, ema=(ckpt / "ema.safetensors").is_file()).eval()
        return self._models[name]

    def class_names(self, name: str) -> list[str]:
        gen = self.model(name)
        names = gen.config.class_names or [str(i) for i in range(gen.config.num_classes)]
        return [ALL_CLASSES, *names]

    def generate(self, model_name: str, class_name: str, cfg_scale: float, cfg_schedule: str, seed: int,
                 num_images: int):  # fmt: skip
        """(grid as a PIL image, the settings and speed as Markdown, the PNG paths) for one request."""
        from PIL import Image
        from torchvision.utils import make_grid

        gen = self.model(model_name)
        num_images, seed = int(num_images), int(seed)
        if not 1 <= num_images <= MAX_IMAGES:
            raise ConfigError(f"number of images must be between 1 and {MAX_IMAGES}, got {num_images}")
        names = self.class_names(model_name)
        if class_name not in names:
            raise ConfigError(f"unknown class {class_name!r} for {model_name}; choose one of {names}")
        n_cls = gen.config.num_classes
        labels = (
            torch.arange(num_images) % n_cls if class_name == ALL_CLASSES else torch.full((num_images,), names.index(class_name) - 1)
        )  # fmt: skip
        cfg = SamplingConfig(cfg_scale=float(cfg_scale), cfg_schedule=cfg_schedule, seed=seed, batch_size=num_images)
        sampler = Sampler(gen, cfg, device=self.device)
        t0 = time.perf_counter()
        images = sampler.sample_images(labels)
        seconds = time.perf_counter() - t0
        u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        if u8.shape[1] == 1:
            u8 = u8.expand(-1, 3, -1, -1)
        folder = self.out_dir / f"{Path(self.checkpoints[model_name]).name}-cfg{cfg_scale:g}-{cfg_schedule}-seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, im in enumerate(u8):
            path = folder / f"{i:03d}.png"
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(path)
            paths.append(str(path))
        nrow = n_cls if class_name == ALL_CLASSES and num_images >= n_cls else min(8, num_images)
        grid = Image.fromarray(make_grid(u8, nrow=nrow, padding=2).permute(1, 2, 0).numpy())
        settings = (
            f"**{model_name}**: {num_images} image(s) of {class_name}, guidance {cfg_scale:g} ({cfg_schedule}), "
            f"seed {seed}, on {sampler.device}: {seconds:.2f} s, **{num_images / seconds:.1f} images/s**"
        )
        return grid, settings, paths

    def build(self):
        """The Gradio page."""
        import gradio as gr

        first = next(iter(self.checkpoints))

        def run(model_name, class_name, cfg_scale, cfg_schedule, seed, num_images):
            try:
                return self.generate(model_name, class_name, cfg_scale, cfg_schedule, seed, num_images)
            except (ConfigError, CheckpointError) as e:
                raise gr.Error(str(e)) from None

        def classes(model_name):
            return gr.update(choices=self.class_names(model_name), value=ALL_CLASSES)

        with gr.Blocks(title="visgen demo") as page:
            gr.Markdown("# visgen\nSample a generator: pick the model, class and guidance, then **Generate**.")
            with gr.Row():
                with gr.Column(scale=1):
                    model = gr.Dropdown(list(self.checkpoints), value=first, label="model")
                    label = gr.Dropdown(self.class_names(first), value=ALL_CLASSES, label="class")
                    cfg_scale = gr.Slider(1.0, 8.0, value=2.0, step=0.5, label="guidance scale")
                    schedule = gr.Radio(["constant", "linear"], value="constant", label="guidance schedule")
                    seed = gr.Number(value=0, precision=0, label="seed")
                    count = gr.Slider(1, MAX_IMAGES, value=20, step=1, label="number of images")
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=2):
                    grid = gr.Image(label="samples", type="pil", elem_id="grid")
                    settings = gr.Markdown(elem_id="settings")
                    files = gr.File(label="PNGs", file_count="multiple")
            model.change(classes, model, label)
            button.click(run, [model, label, cfg_scale, schedule, seed, count], [grid, settings, files])
        return page


def build_parser(prog: str = "visgen demo") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], help="a generator folder (repeatable); the bundled "
                   "ones are always offered")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default=None)
    return p


def main(argv: list[str] | None = None, prog: str = "visgen demo") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('error: the demo page needs Gradio: pip install "visgen[demo]" (or pip install gradio)', file=sys.stderr)
        return 2
    checkpoints = bundled_generators()
    for ref in args.checkpoint:
        path = Path(ref)
        if not _is_generator(path):
            print(
                f"error: {ref} is not a generator checkpoint folder (config.json of an ar-generator)", file=sys.stderr
            )
            return 2
        checkpoints[f"{path.parent.name}/{path.name}" if path.name == "final" else path.name] = str(path)
    Demo(checkpoints, device=args.device).build().launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
