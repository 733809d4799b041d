import json
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch_fidelity

from visgen.checkpoint import CheckpointError
from visgen.cli.fid import main as fid_main
from visgen.cli.recon import main as recon_main
from visgen.data import DataConfig, build_dataset
from visgen.metrics.fidelity import (
    ASSETS,
    Extractor,
    bits_per_dim,
    frechet_distance,
    images_from_dataset,
    inception_score,
    load_npz_images,
    load_stats,
    reference_features,
    save_stats,
    statistics,
)  # fmt: skip

CLS = str(ASSETS / "cifar10-classifier")


def test_agrees_with_torch_fidelity_calculate_metrics(cifar_train, cifar_test):
    ours_ext = Extractor("cifar10cls")
    a = images_from_dataset(build_dataset(DataConfig(path=cifar_test)))
    b = images_from_dataset(build_dataset(DataConfig(path=cifar_train)))
    sa, sb = statistics(ours_ext.features(a, "cpu")["fd"]), statistics(ours_ext.features(b, "cpu")["fd"])
    ours = frechet_distance(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"])
    theirs = torch_fidelity.calculate_metrics(
        input1=cifar_test, input2=cifar_train, fid=True, cuda=False, verbose=False, samples_find_deep=True,
        feature_extractor="cifar10cls", feature_extractor_weights_path=CLS, save_cpu_ram=True, cache=False,
    )["frechet_inception_distance"]  # fmt: skip
    assert ours > 0 and abs(ours - theirs) / theirs < 1e-3


def test_frechet_distance_of_gaussians_matches_closed_form():
    rng = np.random.RandomState(0)
    mu1, mu2 = rng.randn(5), rng.randn(5)
    v1, v2 = rng.rand(5) + 0.5, rng.rand(5) + 0.5
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)
    q, _ = np.linalg.qr(rng.randn(5, 5))  # rotating both Gaussians changes nothing
    got = frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-6)


def test_inception_score_of_a_perfect_classifier_is_the_class_count():
    logits = torch.full((1000, 10), -1e4).scatter(1, (torch.arange(1000) % 10)[:, None], 1e4)
    mean, _ = inception_score(logits, splits=1)
    assert mean == pytest.approx(10.0, rel=1e-6)
    assert inception_score(torch.zeros(100, 10), splits=1)[0] == pytest.approx(1.0)


def test_reference_cache_is_hit_and_keyed(tmp_path, cifar_test):
    ds = build_dataset(DataConfig(path=cifar_test))
    ref_id = {"data": cifar_test, "n": len(ds)}
    s1, f1, hit1 = reference_features(lambda: images_from_dataset(ds), ref_id, Extractor("cifar10cls"), "cpu", tmp_path)
    s2, f2, hit2 = reference_features(
        lambda: pytest.fail("recomputed"), ref_id, Extractor("cifar10cls"), "cpu", tmp_path
    )
    assert (hit1, hit2) == (False, True)
    assert np.allclose(s1["sigma"], s2["sigma"]) and torch.equal(f1.float(), f2)
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically
    with np.load(next(tmp_path.glob("*.npz")), allow_pickle=False) as f:  # and readable without pickle
        assert set(f.files) >= {"mu", "sigma", "features"}
    other = {**ref_id, "n": 1}
    _, _, hit3 = reference_features(
        lambda: images_from_dataset(ds)[:50], other, Extractor("cifar10cls"), "cpu", tmp_path
    )
    assert hit3 is False


def test_inception_offline_message(monkeypatch, tmp_path):
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    def offline(*a, **k):
        raise URLError("no network")

    monkeypatch.setattr(inc, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(CheckpointError, match="--inception-weights"):
        Extractor("inception-v3-compat").build("cpu")
    with pytest.raises(CheckpointError, match="unknown feature extractor"):
        Extractor("resnet-9000").build("cpu")


def test_npz_round_trip_and_statistics_reference(tmp_path, cifar_test, cifar_train):
    images = images_from_dataset(build_dataset(DataConfig(path=cifar_test)))
    np.savez(tmp_path / "samples.npz", arr_0=images.numpy())
    assert torch.equal(load_npz_images(tmp_path / "samples.npz"), images)
    base = [
        "--ref",
        cifar_train,
        "--extractor-weights",
        CLS,
        "--no-kid",
        "--no-prc",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    assert fid_main(["--input", str(tmp_path / "samples.npz"), *base, "--report", str(tmp_path / "a.json")]) == 0
    ext = Extractor("cifar10cls", CLS)
    ref = images_from_dataset(build_dataset(DataConfig(path=cifar_train)))
    save_stats(tmp_path / "stats.npz", statistics(ext.features(ref, "cpu")["fd"]))
    stats_args = [
        "--ref",
        str(tmp_path / "stats.npz"),
        "--extractor-weights",
        CLS,
        "--report",
        str(tmp_path / "b.json"),
    ]
    assert fid_main(["--input", str(tmp_path / "samples.npz"), *stats_args]) == 0
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    assert a["metrics"]["fd_cifar10cls"] == pytest.approx(b["metrics"]["fd_cifar10cls"], rel=1e-6)
    assert b["settings"]["reference_kind"] == "statistics file" and "kid_cifar10cls" not in b["metrics"]
    assert load_stats(tmp_path / "stats.npz")[1] is None
    (tmp_path / "bad.npz").write_bytes(b"nope")
    assert fid_main(["--input", str(tmp_path / "bad.npz"), *base]) == 2


def test_checkpoint_input_report(tmp_path, cifar_train, capsys):
    from tests.test_engine import tiny_generator

    gen = tiny_generator()
    gen.config.image_size = 16
    gen.save_pretrained(tmp_path / "g")
    report = tmp_path / "r.json"
    args = ["--input", str(tmp_path / "g"), "--ref", cifar_train, "--num-samples", "12", "--batch-size", "5",
            "--cfg-scale", "1.5", "--report", str(report), "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    assert fid_main(args) == 0
    out = json.loads(report.read_text())
    s = out["settings"]
    assert s["num_images"] == 12 and s["input_kind"] == "checkpoint" and s["sampling"]["cfg_scale"] == 1.5
    assert s["extractor"] == "cifar10cls" and len(s["extractor_weights_sha256_16"]) == 16
    assert {"fd_cifar10cls", "is_cifar10cls", "kid_cifar10cls", "precision_cifar10cls"} <= set(out["metrics"])
    captured = capsys.readouterr()
    assert "fd_cifar10cls=" in captured.out
    # each stage's time on stderr, so a long evaluation's log says where its time went
    assert "reference features (computed):" in captured.err and "features and metrics of 12 images:" in captured.err


def test_tokenizer_reconstruction_fd(tmp_path, cifar_test):
    assert recon_main(["visgen/assets/cifar10-vq", "--data", cifar_test, "--fd-extractor", "cifar10cls",
                       "--name", "t", "--results-dir", str(tmp_path)]) == 0  # fmt: skip
    m = json.loads((tmp_path / "t.json").read_text())["metrics"]
    assert m["psnr"] > 20 and m["rfd_cifar10cls"] > 0 and 0 < m["codebook_usage"] <= 1
    assert Path(tmp_path / "t.png").is_file()


def test_bits_per_dim():
    assert bits_per_dim(3072 * np.log(256), 3072) == pytest.approx(8.0)


def test_sampling_sweep_compares_settings(tmp_path, cifar_train):
    """eval/sweep.py: reports of one checkpoint at two sampling settings side by side, the lowest FD named, and the
    model card's result keys keep settings that differ only in top-k apart."""
    import importlib.util

    from tests.test_engine import tiny_generator
    from visgen.model_card import read_card

    gen = tiny_generator()
    gen.config.image_size = 16
    gen.save_pretrained(tmp_path / "g")
    base = ["--input", str(tmp_path / "g"), "--ref", cifar_train, "--num-samples", "8", "--no-kid", "--no-prc",
            "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    for name, flags in (("plain", []), ("topk8", ["--top-k", "8"])):
        assert fid_main([*base, *flags, "--report", str(tmp_path / f"{name}.json")]) == 0
    results = read_card(tmp_path / "g")["visgen"]["results"]
    assert len(results) == 2 and any("top-k 8" in key for key in results)
    spec = importlib.util.spec_from_file_location("sweep", "eval/sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    reports = [str(tmp_path / "plain.json"), str(tmp_path / "topk8.json")]
    assert sweep.main(["--reports", *reports, "--name", "s", "--results-dir", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "s.json").read_text())["metrics"]
    fd = {k: v["fd_cifar10cls"] for k, v in m["settings"].items()}
    assert set(fd) == {"plain", "topk8"} and m["best_fd"] == min(fd.values()) and fd[m["best_setting"]] == m["best_fd"]
    assert m["settings"]["topk8"]["sampling"]["top_k"] == 8
    assert sweep.main(["--reports", str(tmp_path / "none.json"), "--name", "x", "--results-dir", str(tmp_path)]) == 2
