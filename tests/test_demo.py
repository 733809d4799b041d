"""The demo page: its callback directly, and the page end to end in a headless Chromium driven by Playwright."""

import shutil
import socket
import time

import pytest
from PIL import Image

from visgen.config import ConfigError
from visgen.demo import ALL_CLASSES, Demo, bundled_generators
from visgen.demo import main as demo_main

BUNDLED = "cifar10-token-ar (bundled)"


def test_the_callback_samples_a_grid_with_its_settings_and_pngs(tmp_path):
    demo = Demo(bundled_generators(), out_dir=str(tmp_path))
    assert BUNDLED in demo.checkpoints and demo.class_names(BUNDLED)[:2] == [ALL_CLASSES, "airplane"]
    grid, settings, paths = demo.generate(BUNDLED, "cat", 2.0, "linear", 3, 5)
    assert isinstance(grid, Image.Image) and grid.width > 5 * 32
    assert "5 image(s) of cat" in settings and "images/s" in settings and "guidance 2 (linear)" in settings
    assert len(paths) == 5 and Image.open(paths[0]).size == (32, 32)
    again = demo.generate(BUNDLED, "cat", 2.0, "linear", 3, 5)[2]
    assert Image.open(again[4]).tobytes() == Image.open(paths[4]).tobytes()  # the same seed, the same images
    with pytest.raises(ConfigError, match="unknown class"):
        demo.generate(BUNDLED, "unicorn", 2.0, "constant", 0, 2)
    with pytest.raises(ConfigError, match="between 1 and 64"):
        demo.generate(BUNDLED, ALL_CLASSES, 2.0, "constant", 0, 0)
    with pytest.raises(ConfigError, match="unknown model"):
        demo.generate("nope", ALL_CLASSES, 2.0, "constant", 0, 2)


def test_the_command_refuses_a_folder_that_is_no_generator(capsys):
    pytest.importorskip("gradio")
    assert demo_main(["--checkpoint", "visgen/assets/cifar10-vq"]) == 2
    assert "not a generator checkpoint" in capsys.readouterr().err


def test_the_page_is_built_with_its_controls(tmp_path):
    gr = pytest.importorskip("gradio")
    page = Demo(bundled_generators(), out_dir=str(tmp_path)).build()
    labels = {getattr(b, "label", None) for b in page.blocks.values()}
    assert {
        "model",
        "class",
        "guidance scale",
        "guidance schedule",
        "seed",
        "number of images",
        "samples",
        "PNGs",
    } <= labels
    assert any(isinstance(b, gr.Button) and b.value == "Generate" for b in page.blocks.values())


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_the_page_in_a_real_browser(tmp_path):
    missing = [name for name in ("gradio", "playwright") if __import__("importlib").util.find_spec(name) is None]
    browser_path = _chromium()
    if missing or browser_path is None:
        reason = f"not installed: {', '.join(missing + ([] if browser_path else ['chromium']))}"
        print(f"browser test skipped ({reason}); the callback is tested above")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page_app = Demo(bundled_generators(), out_dir=str(tmp_path)).build()
    page_app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.get_by_label("number of images").last.fill("4")
            page.get_by_label("number of images").last.press("Enter")
            page.click("#generate")
            page.wait_for_selector("#settings :text('images/s')", timeout=60_000)
            text = page.inner_text("#settings")
            assert "4 image(s)" in text and BUNDLED in text
            assert page.locator("#grid img").count() >= 1
            browser.close()
    finally:
        page_app.close()
    time.sleep(0.1)
