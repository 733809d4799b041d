"""Video metrics: the offline per-frame and clip FDs (bundled classifiers), FVD's I3D plumbing, eval/fvd.py."""

import json

import numpy as np
import pytest
import torch

from tests.test_video import fmnist_items
from visgen.checkpoint import CheckpointError
from visgen.data.video import moving_fashion_mnist
from visgen.metrics.dynamics import shuffled_in_time
from visgen.metrics.fidelity import Extractor, frechet_distance, statistics
from visgen.metrics.video import VideoClassifier, VideoExtractor, i3d_input, motion_labels


@pytest.fixture(scope="module")
def clips64():
    """Moving Fashion-MNIST at the bundled classifiers' size (64 x 64, 16 frames) from the committed cut."""
    from tests.conftest import DATA

    items, labels = fmnist_items(str(DATA / "fashion-mnist"))
    return {split: moving_fashion_mnist(items, labels, n, frames=16, size=64, seed=seed)
            for split, n, seed in (("train", 96, 0), ("test", 96, 1))}  # fmt: skip


def u8(clips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(clips)[..., None]  # (N, T, H, W, 1)


def fd(a: torch.Tensor, b: torch.Tensor) -> float:
    sa, sb = statistics(a), statistics(b)
    return frechet_distance(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"])


def test_offline_video_fds_are_low_real_against_real_and_high_against_broken_clips(clips64):
    real, other = u8(clips64["train"]["clips"]), u8(clips64["test"]["clips"])
    video = VideoExtractor("mfmnistvid")
    f_real, f_other = video.features(real, "cpu")["fd"], video.features(other, "cpu")["fd"]
    f_shuffled = video.features(shuffled_in_time(other), "cpu")["fd"]
    same, shuffled = fd(f_other, f_real), fd(f_shuffled, f_real)
    assert shuffled > 2 * same  # the clip features see the frames' order
    frames = Extractor("fmnistcls")
    g_real = frames.features(real.flatten(0, 1), "cpu")["fd"]
    g_other = frames.features(other.flatten(0, 1), "cpu")["fd"]
    blurred = other.flatten(0, 1).float().reshape(-1, 1, 64, 64)
    blurred = torch.nn.functional.avg_pool2d(blurred, 5, 1, 2).round().to(torch.uint8).reshape(-1, 64, 64, 1)
    g_blurred = frames.features(blurred, "cpu")["fd"]
    assert fd(g_blurred, g_real) > 2 * fd(g_other, g_real)  # per frame: blurred items are far, real ones near


def test_the_bundled_video_classifier_knows_class_and_motion(clips64):
    """On clips of one item (with two, which is "first" is not in the pixels) it names the item and its motion."""
    net = VideoClassifier.from_pretrained("visgen/assets/moving-fmnist-video-classifier").eval()
    d = clips64["test"]
    with torch.no_grad():
        _, lc, lm = net(torch.from_numpy(d["clips"])[:, :, None].float() / 127.5 - 1)
    one = torch.from_numpy(d["counts"] == 1)
    motion_ok = (lm.argmax(1) == motion_labels(d["velocities"]))[one].float().mean()
    class_ok = (lc.argmax(1) == torch.from_numpy(d["labels"]))[one].float().mean()
    assert motion_ok > 0.8 and class_ok > 0.5  # chance: 0.25 and 0.1
    shipped = json.loads(open("visgen/assets/moving-fmnist-video-classifier/metrics.json").read())
    assert shipped["test_motion_accuracy_one_item"] > 0.9


def test_the_i3d_path_feeds_the_torchscript_model_its_input(tmp_path):
    class Stand(torch.nn.Module):  # the I3D's call signature; returns per-channel means in place of features
        def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool) -> torch.Tensor:
            assert not rescale and not resize and return_features
            return x.mean(dim=(2, 3, 4))

    torch.jit.script(Stand()).save(str(tmp_path / "i3d.pt"))
    clips = torch.randint(0, 256, (3, 5, 20, 30, 1), dtype=torch.uint8)
    x = i3d_input(clips)
    assert x.shape == (3, 3, 5, 224, 224) and x.min() >= -1 and x.max() <= 1
    ext = VideoExtractor("i3d", str(tmp_path / "i3d.pt"))
    assert ext.metric_name == "fvd"
    assert torch.allclose(ext.features(clips, "cpu", batch_size=2)["fd"], x.mean(dim=(2, 3, 4)))
    with pytest.raises(CheckpointError, match="i3d_torchscript.pt"):
        VideoExtractor("i3d", str(tmp_path / "missing.pt")).resolved_weights()
    with pytest.raises(CheckpointError, match="known"):
        VideoExtractor("nope").resolved_weights()


def test_eval_fvd_scores_clips_with_copies_and_dynamics(clips64, tmp_path):
    from visgen.cli.fvd import main as fvd_main

    ref = tmp_path / "ref"
    ref.mkdir()
    for split in ("train", "test"):
        np.savez(ref / f"{split}.npz", **clips64[split])
    copies = np.repeat(clips64["train"]["clips"][:32, ..., None], 3, -1)  # training clips handed in as "samples"
    np.savez(tmp_path / "copies.npz", arr_0=copies)
    args = ["--ref", str(ref), "--cache-dir", str(tmp_path / "cache"), "--dynamics", "--results-dir", str(tmp_path)]
    assert (
        fvd_main(["--input", str(tmp_path / "copies.npz"), *args, "--name", "c", "--report", str(tmp_path / "r.json")])
        == 0
    )
    m = json.loads((tmp_path / "c.json").read_text())["metrics"]
    assert {"fd_fmnistcls_frames", "fvd_mfmnistvid", "dynamics_error", "dynamics_error_real",
            "dynamics_error_shuffled", "copy_rate", "copy_rate_holdout"} <= set(m)  # fmt: skip
    assert m["copy_rate"] == 1.0 and m["copy_rate_holdout"] < 0.2  # copies are caught against the held-out floor
    assert m["dynamics_error_shuffled"] > 3 * m["dynamics_error_real"]
    from eval.generator_result import video_metrics  # a result file's video figures: later reports by clip length

    both = video_metrics([str(tmp_path / "r.json"), str(tmp_path / "r.json")])
    assert both["fvd_mfmnistvid"] == m["fvd_mfmnistvid"] and both["dynamics_error_16f"] == m["dynamics_error"]
    # video data as the input (the held-out clips): cache hit on the reference, the same metric names
    assert fvd_main(["--input", str(ref / "test.npz"), *args, "--name", "t"]) == 0
    # bad input: clear errors, nothing sampled
    assert fvd_main(["--input", str(tmp_path / "nope"), *args]) == 2
    assert fvd_main(["--input", str(tmp_path / "copies.npz"), *args, "--video-extractor", "i3d",
                     "--i3d-weights", str(tmp_path / "missing.pt")]) == 2  # fmt: skip
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros((2, 3, 4), np.float32))
    assert fvd_main(["--input", str(tmp_path / "bad.npz"), *args]) == 2
    # held-out clips that are the reference's own: the floors would be the reference's, refused
    assert fvd_main(["--input", str(tmp_path / "copies.npz"), *args, "--ref-split", "test"]) == 2


def test_train_video_classifier_writes_a_loadable_model(clips64, tmp_path):
    import subprocess
    import sys

    data = tmp_path / "d"
    data.mkdir()
    for split in ("train", "test"):
        np.savez(data / f"{split}.npz", **clips64[split], classes=np.array([str(i) for i in range(10)]))
    out = subprocess.run([sys.executable, "eval/train_video_classifier.py", "--data", str(data), "--out",
                          str(tmp_path / "m"), "--epochs", "1", "--widths", "4", "8", "--batch-size", "32"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    net = VideoClassifier.from_pretrained(tmp_path / "m")
    assert net(torch.zeros(2, 16, 1, 64, 64))[0].shape == (2, 8)
    assert 0 <= json.loads((tmp_path / "m" / "metrics.json").read_text())["test_motion_accuracy"] <= 1


def test_the_bundled_fashion_mnist_classifier_knows_the_committed_test_cut(fmnist):
    from visgen.data import DataConfig, build_dataset
    from visgen.metrics.classifier import Classifier

    ds = build_dataset(DataConfig(path=fmnist, split="test", image_size=32, channels=3))  # as it was trained
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.tensor([ds[i]["label"] for i in range(len(ds))])
    with torch.no_grad():
        acc = (Classifier.from_pretrained("visgen/assets/fashion-mnist-classifier")(x)[1].argmax(1) == y).float().mean()
    assert acc > 0.7  # 89.4% on the full test set (results/fashion-mnist-classifier.json)
