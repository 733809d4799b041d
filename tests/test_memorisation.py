"""The memorisation report: copies of training images are told from generation, against a held-out floor."""

import json

import numpy as np
import pytest
import torch

from visgen.cli.fid import main as fid_main
from visgen.data import DataConfig, build_dataset
from visgen.metrics.fidelity import Extractor, images_from_dataset
from visgen.metrics.memorisation import memorisation_report, nearest_feature, nearest_pixel


@pytest.fixture(scope="module")
def cut():
    train = images_from_dataset(build_dataset(DataConfig(path="tests/data/cifar10/train")))
    test = images_from_dataset(build_dataset(DataConfig(path="tests/data/cifar10/test")))
    ext = Extractor("cifar10cls")
    return train, test, ext.features(train, "cpu")["fd"], ext.features(test, "cpu")["fd"], ext


def test_nearest_neighbours_are_exact():
    g = torch.Generator().manual_seed(0)
    ref = torch.randint(0, 256, (50, 8, 8, 3), dtype=torch.uint8, generator=g)
    query = ref[[3, 17, 42]].clone()
    query[1] = query[1].flip(1)  # a mirrored copy is still a copy
    d, i = nearest_pixel(query, ref)
    assert i.tolist() == [3, 17, 42] and torch.allclose(d, torch.zeros(3), atol=1e-3)
    other = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8, generator=g)  # against a brute-force search
    brute = ((other[:, None].float() - ref[None].float()) / 255).flatten(2).norm(dim=2)
    brute = torch.minimum(brute, ((other[:, None].float() - ref.flip(2)[None].float()) / 255).flatten(2).norm(dim=2))
    d, i = nearest_pixel(other, ref)
    assert torch.equal(i, brute.argmin(1)) and torch.allclose(d, brute.min(1).values, atol=1e-3)
    feats = torch.randn(50, 16, generator=g)
    d, i = nearest_feature(feats[[7, 9]] * 3.0, feats)  # cosine: scale does not matter
    assert i.tolist() == [7, 9] and d.max() < 1e-5


def test_copies_score_near_one_and_held_out_images_near_the_floor(cut):
    train, test, f_train, f_test, ext = cut
    # a "model" that returns training images, verbatim and lightly noised
    g = torch.Generator().manual_seed(1)
    noised = (train.int() + torch.randint(-3, 4, train.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    for images in (train, noised):
        m, nn = memorisation_report(ext.features(images, "cpu")["fd"], images, f_train, train, f_test, test)
        assert m["copy_rate"] > 0.95 and m["copy_rate_pixel"] > 0.95
        assert m["nn_feature_median"] < m["nn_feature_median_holdout"] / 5
    # real images no model saw: at the floor (1% by the rule; 80 images make that one or two)
    m, _ = memorisation_report(f_test, test, f_train, train, f_test, test)
    assert m["copy_rate"] <= 0.05 and m["copy_rate_holdout"] <= 0.1
    assert m["nn_pixel_median"] == pytest.approx(m["nn_pixel_median_holdout"])


def test_fid_reports_memorisation_and_writes_pairs(tmp_path, cut):
    train, *_ = cut
    np.savez(tmp_path / "copies.npz", arr_0=train[:100].numpy())
    report = tmp_path / "r.json"
    args = ["--input", str(tmp_path / "copies.npz"), "--ref", "tests/data/cifar10/train", "--no-kid",
            "--cache-dir", str(tmp_path / "c"), "--report", str(report)]  # fmt: skip
    assert fid_main(args) == 0
    out = json.loads(report.read_text())
    m, s = out["metrics"], out["settings"]
    assert m["copy_rate"] == 1.0 and m["nn_pixel_median"] < 1e-3
    assert {"nn_feature_median", "nn_pixel_median", "copy_rate_holdout", "nn_feature_median_holdout"} <= set(m)
    # the report names the reference and the held-out split it measured against
    assert s["memorisation_reference"]["data"].endswith("cifar10/train")
    assert s["memorisation_holdout"]["data"].endswith("cifar10/test") and s["memorisation_holdout"]["split"] == "test"
    assert (tmp_path / "r-nearest.png").is_file()
    from PIL import Image

    assert Image.open(tmp_path / "r-nearest.png").size[0] > 8 * 32
    # no held-out split beside a reference: FD is still reported, with a note instead of the report
    assert fid_main([*args[:2], "--ref", "tests/data/cifar10/train/cat", "--no-kid", "--no-cache",
                     "--report", str(report)]) == 0  # fmt: skip
    out = json.loads(report.read_text())
    assert "copy_rate" not in out["metrics"] and "no held-out images" in out["settings"]["memorisation"]


def test_explicit_holdout_and_resized_references(tmp_path):
    from tests.test_engine import tiny_generator

    gen = tiny_generator()  # 16 x 16 images against a 32 x 32 reference
    gen.save_pretrained(tmp_path / "g")
    report = tmp_path / "r.json"
    args = ["--input", str(tmp_path / "g"), "--ref", "tests/data/cifar10/train", "--holdout",
            "tests/data/cifar10/test", "--num-samples", "8", "--batch-size", "8", "--no-kid", "--no-prc",
            "--no-cache", "--report", str(report), "--pairs", str(tmp_path / "p.png")]  # fmt: skip
    assert fid_main(args) == 0
    m = json.loads(report.read_text())["metrics"]
    assert 0 <= m["copy_rate"] <= 1 and m["nn_pixel_median"] > 0 and (tmp_path / "p.png").is_file()
