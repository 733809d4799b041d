"""The README's examples run as tests, so the documentation cannot rot."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_examples(code):
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_main_job(tmp_path):
    """The README's main job: ``python sample.py`` writes a grid from the bundled model."""
    assert "&& python sample.py\n" in README
    r = subprocess.run(
        [sys.executable, "sample.py", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    folder = next(tmp_path.iterdir())
    assert (folder / "grid.png").is_file() and (folder / "settings.json").is_file()


@pytest.mark.parametrize("recipe", ["tokenizers/quickstart.yaml", "tokenizers/diffusers-kl-tiny.yaml"])
def test_tokenizer_recipes(recipe, tmp_path):
    cmd = [sys.executable, "train.py", "tokenizer", "--recipe", recipe, f"train.out_dir={tmp_path}", "train.steps=3"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "final" / "model.safetensors").is_file()
