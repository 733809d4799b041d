"""Models by Hub id, against a local folder standing in for the Hugging Face cache (no network), and pushing."""

import os
import subprocess
import sys

from tests.conftest import REPO
from tests.test_engine import tiny_generator

REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(root, repo_id: str):
    """The Hub cache's layout (models--USER--REPO/{refs/main, snapshots/REV/...}) holding a saved generator."""
    folder = root / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(REVISION)
    gen = tiny_generator()
    gen.config.image_size = 16
    gen.save_pretrained(folder / "snapshots" / REVISION)
    return gen


def run(code: str, cache, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf")}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_load_and_sample_by_hub_id_from_the_cache(tmp_path):
    fake_hub_cache(tmp_path / "hub", "someone/tiny-visgen")
    r = run("from visgen.checkpoint import load_model; m = load_model('someone/tiny-visgen'); print(m.model_type)",
            tmp_path / "hub")  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "ar-generator", r.stderr
    r = run("", tmp_path / "hub", "sample.py", "--checkpoint", "someone/tiny-visgen", "--num-images", "2", "--out",
            str(tmp_path / "s"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert next((tmp_path / "s").iterdir()).name.startswith("someone--tiny-visgen-")  # the repo id names the samples


def test_offline_without_the_model_and_pushing_offline_say_what_to_do(tmp_path):
    (tmp_path / "hub").mkdir()
    r = run("", tmp_path / "hub", "sample.py", "--checkpoint", "someone/not-here", "--num-images", "2")
    assert r.returncode == 2 and "huggingface-cli download someone/not-here" in r.stderr, r.stderr
    tiny_generator().save_pretrained(tmp_path / "g")
    r = run("", tmp_path / "hub", "-m", "visgen", "push", str(tmp_path / "g"), "someone/tiny")
    assert r.returncode == 2 and "HF_HUB_OFFLINE is set" in r.stderr, r.stderr
    r = run("", tmp_path / "hub", "-m", "visgen", "push", str(tmp_path), "someone/tiny")
    assert r.returncode == 2 and "not a visgen model folder" in r.stderr
