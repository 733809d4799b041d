"""Every saved model folder carries a model card (README.md, the Hub's format) that says what it is, how it was
trained and what the harness measured."""

import json

import torch
from safetensors.torch import load_file

from tests.test_engine import tiny_generator
from visgen.checkpoint import export_model, load_model
from visgen.cli.train import main as train_main
from visgen.model_card import read_card


def test_a_trained_generator_card_has_model_training_and_results(tmp_path):
    from visgen.cli.fid import main as fid_main

    out = tmp_path / "run"
    assert train_main(["generator", "--recipe", "generators/quickstart.yaml", "model.backbone={preset: tiny, n_layer: 1}",
                       f"train.out_dir={out}", "train.steps=3", "train.batch_size=16"]) == 0  # fmt: skip
    text = (out / "final" / "README.md").read_text()
    assert text.startswith("---\n") and "library_name: visgen" in text and "## Training" in text
    card = read_card(out / "final")["visgen"]
    assert card["model"]["family"] == "token" and card["model"]["parameters"] > 0
    assert card["training"]["steps"] == 3 and card["training"]["recipe"]["train"]["steps"] == 3
    assert "loss" in card["training"]["validation"] and "train.py" in card["training"]["command"]
    assert fid_main(["--input", str(out / "final"), "--ref", "tests/data/cifar10/train", "--num-samples", "8",
                     "--no-kid", "--no-cache"]) == 0  # fmt: skip
    card = read_card(out / "final")["visgen"]
    ((key, res),) = card["results"].items()
    assert "cifar10cls" in key and "8 samples" in key and res["fd_cifar10cls"] > 0 and "copy_rate" in res
    assert "## Results" in (out / "final" / "README.md").read_text()
    load_model(out / "final")  # the card changes nothing of what loads
    shipped = export_model(out / "final", tmp_path / "fp16")  # EMA weights in fp16, the training account kept
    assert {t.dtype for t in load_file(shipped / "model.safetensors").values()} == {torch.float16}
    assert read_card(shipped)["visgen"]["training"] == card["training"]


def test_every_saved_folder_has_a_card(tmp_path):
    tiny_generator().save_pretrained(tmp_path / "g")
    card = read_card(tmp_path / "g")
    assert card["library_name"] == "visgen" and "token" in card["tags"]
    assert json.loads((tmp_path / "g" / "config.json").read_text())["model_type"] == "ar-generator"
