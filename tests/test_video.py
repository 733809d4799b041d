"""Video: the data formats, Moving Fashion-MNIST, the next-frame schedule, training and sampling end to end."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_engine import assert_cached_equals_full
from tests.test_tokenizers import TINY_KL
from visgen.config import ConfigError
from visgen.data import DataConfig, DataError, build_dataset, collate
from visgen.data.video import bounce, moving_fashion_mnist
from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import Sampler, SamplingConfig
from visgen.schedules import NextFrameSchedule, Schedule
from visgen.tokenizers import KLTokenizer


def fmnist_items(fmnist) -> tuple[np.ndarray, np.ndarray]:
    ds = build_dataset(DataConfig(path=fmnist, split="train", image_size=28, channels=1))
    items = [ds[i] for i in range(60)]
    u8 = np.stack([((it["image"][0].numpy() + 1) * 127.5).round().astype(np.uint8) for it in items])
    return u8, np.array([it["label"] for it in items])


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """A small Moving Fashion-MNIST written as the generator writes it: train.npz / test.npz."""
    from tests.conftest import DATA

    folder = tmp_path_factory.mktemp("moving")
    items, labels = fmnist_items(str(DATA / "fashion-mnist"))
    for split, n, seed in (("train", 24, 0), ("test", 8, 1)):
        np.savez(folder / f"{split}.npz", **moving_fashion_mnist(items, labels, n, frames=8, size=32, seed=seed))
    return folder


def test_moving_fashion_mnist_is_seeded_and_obeys_its_physics(fmnist):
    items, labels = fmnist_items(fmnist)
    a = moving_fashion_mnist(items, labels, 6, frames=12, size=40, seed=3)
    assert np.array_equal(a["clips"], moving_fashion_mnist(items, labels, 6, frames=12, size=40, seed=3)["clips"])
    assert not np.array_equal(a["clips"], moving_fashion_mnist(items, labels, 6, frames=12, size=40, seed=4)["clips"])
    limit = 40 - 28
    for n in range(6):
        for k in range(a["counts"][n]):
            path = a["positions"][n, :, k]
            p, v = path[0].copy(), a["velocities"][n, k].copy()  # stepped by hand: move, reflect off each wall
            for t in range(1, 12):
                p = p + v
                for d in range(2):
                    if p[d] < 0 or p[d] > limit:
                        p[d], v[d] = (-p[d], -v[d]) if p[d] < 0 else (2 * limit - p[d], -v[d])
                np.testing.assert_allclose(path[t], p, atol=1e-9)
            r, c = np.rint(path[5]).astype(int)
            assert a["clips"][n, 5, r : r + 28, c : c + 28].sum() > 0  # the item is drawn where it is
    assert np.allclose(bounce(np.array([1.0]), np.array([5.0]), np.arange(4.0), 10.0)[:, 0], [1, 6, 9, 4])


def test_video_formats_give_clips(moving, tmp_path):
    ds = build_dataset(DataConfig(path=str(moving), frames=4, frame_stride=2, image_size=16, channels=1))
    assert len(ds) == 24 and ds[0]["image"].shape == (4, 1, 16, 16)  # one clip of 4 frames per 8-frame video
    full = np.load(moving / "train.npz")
    same = build_dataset(DataConfig(path=str(moving), frames=8, image_size=32, channels=1))[0]["image"]
    assert torch.equal(same[2], torch.from_numpy(full["clips"][0, 2]).float().div(127.5).sub(1)[None])  # exact frames
    # Moving MNIST's own layout: a .npy of (T, N, H, W)
    np.save(tmp_path / "mm.npy", np.swapaxes(full["clips"], 0, 1))
    mm = build_dataset(DataConfig(path=str(tmp_path / "mm.npy"), frames=8, image_size=32, channels=1))
    assert len(mm) == 24 and torch.equal(mm[3]["image"], build_dataset(
        DataConfig(path=str(moving), frames=8, image_size=32, channels=1))[3]["image"])  # fmt: skip
    # frame folders, root/<class>/<video>/<frame>.png, one frame corrupt
    for cls, video in (("a", "v0"), ("a", "v1"), ("b", "v2")):
        (tmp_path / "frames" / cls / video).mkdir(parents=True)
        for t in range(4):
            Image.fromarray(full["clips"][int(video[1]), t]).save(tmp_path / "frames" / cls / video / f"{t:03d}.png")
    (tmp_path / "frames" / "b" / "v2" / "001.png").write_bytes(b"not a png")
    frames = build_dataset(DataConfig(path=str(tmp_path / "frames"), frames=4, image_size=32, channels=3))
    assert frames.classes == ["a", "b"] and len(frames) == 3 and frames[0]["image"].shape == (4, 3, 32, 32)
    batch = collate([frames[i] for i in range(3)])
    assert batch["skipped"] == 1 and batch["label"].tolist() == [0, 0]
    # a GIF through Pillow, an unreadable one, and mp4 (PyAV, an optional extra)
    (tmp_path / "gifs").mkdir()
    pics = [Image.fromarray(f) for f in full["clips"][0]]
    pics[0].save(tmp_path / "gifs" / "a.gif", save_all=True, append_images=pics[1:])
    (tmp_path / "gifs" / "b.gif").write_bytes(b"GIF89a broken")
    gifs = build_dataset(DataConfig(path=str(tmp_path / "gifs"), frames=8, image_size=32, channels=1))
    assert len(gifs) == 1 and gifs.unreadable == 1 and gifs[0]["image"].shape == (8, 1, 32, 32)
    if importlib.util.find_spec("av") is None:
        (tmp_path / "mp4").mkdir()
        (tmp_path / "mp4" / "a.mp4").write_bytes(b"")
        with pytest.raises(DataError, match="pip install"):
            build_dataset(DataConfig(path=str(tmp_path / "mp4"), frames=4))
    with pytest.raises(DataError, match="holds 16 frames"):
        build_dataset(DataConfig(path=str(moving), frames=16))


def video_generator(frames: int = 3, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=4, schedule="next_frame", frames=frames,
                          head="flow", head_options={"width": 16, "depth": 1, "heads": 2, "steps": 3},
                          backbone={"preset": "tiny", "rope_axes": 3})  # fmt: skip
    return Generator(cfg, tokenizer=KLTokenizer(TINY_KL).eval()).eval()


def test_frame_schedule_mask_positions_and_inputs():
    s = NextFrameSchedule(3, (2, 2), 4)
    assert s.unit_sizes == [4, 4, 4] and s.positions[5].tolist() == [1, 0, 1]
    mask = s.attn_mask()
    assert mask[4:8, :8].all() and not mask[4:8, 8:].any()  # frame 1 sees frames 0 and 1, whole
    latents = torch.randn(2, 3, 4, 2, 2)
    seq = s.to_sequence(latents)
    assert torch.equal(s.from_sequence(seq), latents)
    assert torch.equal(s.teacher_inputs(seq), Schedule.teacher_inputs(s, seq))
    assert torch.equal(s.next_input(s.split_units(seq)[:1]), latents[:, 0].permute(0, 2, 3, 1).flatten(1, 2))


def test_kv_cached_frame_decoding_equals_full_recompute():
    gen = video_generator()
    assert_cached_equals_full(gen, torch.randn(2, gen.schedule.seq_len, 3), torch.tensor([0, 3]))


def test_context_noise_is_training_only():
    gen = video_generator()
    gen.config.context_noise = 0.5
    seq = torch.randn(2, gen.schedule.seq_len, 3)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        clean = gen.features(seq, labels)
        gen.train()
        noisy = gen.features(seq, labels)
        gen.eval()
        again = gen.features(seq, labels)
    assert torch.equal(clean, again) and not torch.allclose(noisy[:, 4:], clean[:, 4:])
    torch.testing.assert_close(noisy[:, :4], clean[:, :4])  # the first frame reads the class, not a context


def test_the_first_frames_positions_are_told_apart(tmp_path):
    """Every position of unit 0 reads the class alone and attention cannot tell them apart (RoPE turns queries and
    keys, the values are all one): without its own embedding a position's features equal every other's, and a
    first frame is drawn as a set of tokens with no place. A checkpoint from before the embedding loads, reading
    unit 0 as it did (zeros)."""
    from safetensors.torch import load_file, save_file

    gen = video_generator()
    seq, labels = torch.randn(2, gen.schedule.seq_len, 3), torch.tensor([0, 3])
    with torch.no_grad():
        h = gen.features(seq, labels)[:, :4]  # the first frame's 4 positions
        assert not torch.allclose(h[:, 0], h[:, 1])
        gen.start_pos.zero_()
        h = gen.features(seq, labels)[:, :4]
    torch.testing.assert_close(h[:, 1:], h[:, :1].expand(-1, 3, -1))  # without it, every position alike
    gen.save_pretrained(tmp_path / "old")
    weights = tmp_path / "old" / "model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if k != "start_pos"}, weights)
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config.pop("sha256", None)  # the file was rewritten: as an older visgen wrote it, without checksums
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old = Generator.from_pretrained(tmp_path / "old")
    assert torch.equal(old.start_pos, torch.zeros_like(old.start_pos))
    from tests.test_tokenizers import TINY_VQ
    from visgen.tokenizers import VQTokenizer

    raster = lambda n: Generator(GeneratorConfig(tokenizer="-", image_size=16, num_classes=4, unit_size=n,
                                                 backbone={"preset": "tiny"}),
                                 tokenizer=VQTokenizer(TINY_VQ))  # fmt: skip
    assert raster(1).start_pos is None and raster(4).start_pos.shape[0] == 4


def test_bad_settings_are_clear_errors():
    tok = KLTokenizer(TINY_KL)
    with pytest.raises(ConfigError, match="model.frames"):
        Generator(GeneratorConfig(tokenizer="-", image_size=16, schedule="next_frame", head="flow", backbone="tiny"),
                  tokenizer=tok)  # fmt: skip
    with pytest.raises(ConfigError, match="next_frame"):
        Generator(GeneratorConfig(tokenizer="-", image_size=16, frames=4, head="diffusion", backbone="tiny"),
                  tokenizer=tok)  # fmt: skip
    with pytest.raises(ConfigError, match="kl tokenizer"):
        Generator(GeneratorConfig(image_size=32, schedule="next_frame", frames=4, backbone="tiny"))  # the bundled VQ
    with pytest.raises(ConfigError, match="context_noise"):
        Generator(GeneratorConfig(tokenizer="-", image_size=16, schedule="next_frame", frames=2, head="flow",
                                  backbone="tiny", context_noise=-1.0), tokenizer=tok)  # fmt: skip


def test_a_tiny_video_model_trains_and_samples_gifs(moving, tmp_path):
    from visgen.cli.sample import main as sample_main
    from visgen.cli.train import main as train_main

    tok, gen = tmp_path / "kl", tmp_path / "far"
    common = [f"data.path={moving}", "data.image_size=16", "data.channels=1", f"val.path={moving}", "val.split=test",
              "train.log_every=5", "train.num_workers=0", "train.mixed_precision=no", "train.val_images=8",
              "train.time_limit_minutes=0"]  # fmt: skip
    assert train_main(["tokenizer", "--recipe", "tokenizers/moving-fmnist-kl.yaml", "model.channel_mult=[1, 2]",
                       "model.channels=8", "model.latent_channels=3", *common, f"train.out_dir={tok}",
                       "train.steps=5", "train.batch_size=8", "train.eval_every=0", "train.sample_every=0",
                       "train.ckpt_every=0"]) == 0  # fmt: skip
    overrides = [f"model.tokenizer={tok}/final", "model.image_size=16", "model.schedule=next_frame", "model.frames=4",
                 "model.head=flow", "model.head_options={width: 16, depth: 1, heads: 2, steps: 3}",
                 "model.context_noise=0.1", "model.backbone={preset: tiny, rope_axes: 3}", "model.num_classes=10",
                 "data.frames=4", "data.frame_stride=2", *common, f"train.out_dir={gen}", "train.steps=20",
                 "train.lr=2e-3", "train.batch_size=8", "train.warmup_steps=2", "tokenizer.cache=false"]  # fmt: skip
    assert train_main(["generator", "--recipe", "generators/quickstart.yaml", *overrides]) == 0
    losses = [json.loads(x)["loss"] for x in (gen / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < losses[0]
    out = tmp_path / "s"
    assert sample_main(["--checkpoint", str(gen / "final"), "--num-images", "2", "--npz", "--out", str(out)]) == 0
    folder = next(out.iterdir())
    gif = Image.open(folder / "clips" / "000000.gif")
    assert gif.n_frames == 4 and gif.size == (16, 16)
    assert np.load(folder / "samples.npz")["arr_0"].shape == (2, 4, 16, 16, 3)
    assert Image.open(folder / "grid.png").size == (4 * 16, 2 * 16)
    # video prediction: every sample's first 2 frames are the context clip's, as the tokenizer encodes them
    assert sample_main(["--checkpoint", str(gen / "final"), "--num-images", "2", "--npz", "--out", str(out),
                        "--context", str(moving), "--context-frames", "2"]) == 0  # fmt: skip
    predicted = next(f for f in out.iterdir() if "-ctx2-" in f.name)
    assert (
        sample_main(["--checkpoint", str(gen / "final"), "--num-images", "2", "--frames", "6", "--out", str(out)]) == 0
    )
    longer = next(f for f in out.iterdir() if f.name.endswith("-frames6"))
    assert Image.open(longer / "clips" / "000001.gif").n_frames == 6
    assert np.load(predicted / "samples.npz")["arr_0"].shape == (2, 4, 16, 16, 3)
    assert sample_main(["--checkpoint", str(gen / "final"), "--context", str(moving), "--context-frames", "4",
                        "--out", str(out)]) == 2  # fmt: skip
    with pytest.raises(ConfigError, match="data.frames"):
        from visgen.train.generator_task import build_generator_task

        build_generator_task({"model": {"tokenizer": f"{tok}/final", "image_size": 16, "schedule": "next_frame",
                                        "frames": 4, "head": "flow", "backbone": "tiny"}, "data": {}}, None)  # fmt: skip


def test_the_dynamics_score_separates_real_from_shuffled_clips(fmnist, tmp_path):
    from visgen.cli.dynamics import main as dynamics_main
    from visgen.metrics.dynamics import dynamics_error, shuffled_in_time, track

    items, labels = fmnist_items(fmnist)
    d = moving_fashion_mnist(items, labels, 24, frames=16, size=64, seed=5)
    clips = torch.from_numpy(d["clips"])
    for n in np.flatnonzero(d["counts"] == 1)[:4]:  # one item: the track is its true path, shifted by a constant
        off = track(clips[n])[0].numpy() - np.rint(d["positions"][n, :, 0])
        assert np.abs(off - off[0]).max() == 0
    real, shuffled = dynamics_error(clips), dynamics_error(shuffled_in_time(clips))
    assert real < 1.0 and shuffled > 4 * real  # rounding to pixels, against no motion law at all
    # the command: an .npz of clips (here the real ones, as sample.py writes them) against the reference clips
    np.savez(tmp_path / "test.npz", **moving_fashion_mnist(items, labels, 8, frames=16, size=64, seed=6))
    np.savez(tmp_path / "samples.npz", arr_0=np.repeat(d["clips"][..., None], 3, -1))
    assert dynamics_main(["--input", str(tmp_path / "samples.npz"), "--ref", str(tmp_path), "--name", "dyn",
                          "--results-dir", str(tmp_path)]) == 0  # fmt: skip
    m = json.loads((tmp_path / "dyn.json").read_text())["metrics"]
    assert m["dynamics_error"] == pytest.approx(real) and m["dynamics_error_shuffled"] > 3 * m["dynamics_error_real"]


def test_context_frames_are_kept_and_condition_what_follows():
    gen = video_generator()
    for p in gen.head.parameters():  # a flow head that reads its conditions (AdaLN starts at zero)
        torch.nn.init.normal_(p, std=0.2)
    sampler = Sampler(gen, SamplingConfig(cfg_scale=2.0, seed=4))
    clips = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    labels = torch.tensor([0, 1])
    given = sampler.given_units(clips, 2)
    tokens = sampler.sample_tokens(labels, given=given)
    torch.testing.assert_close(tokens[:, :2], gen.encode(clips)[:, :2])  # the context, as encoded
    free = sampler.sample_tokens(labels)
    assert not torch.allclose(tokens[:, 2], free[:, 2])  # and the next frame follows from it
    # the head draws only the free frame: the given ones are read by the backbone alone (their draws, overruled,
    # would change nothing after them: noise is keyed by the unit)
    draws, head_sample = [], sampler._head_sample
    sampler._head_sample = lambda h, *a, **k: draws.append(h.shape) or head_sample(h, *a, **k)
    torch.testing.assert_close(sampler.sample_tokens(labels, given=given), tokens)
    assert len(draws) == 1
    sampler._head_sample, st = head_sample, sampler._states[2]  # against drawing every unit and overruling two
    sampler._start(st, labels, torch.arange(2))
    units, state = [], None
    for k in range(3):
        inputs, state = gen.schedule.step_input(state, units) if k else (None, None)
        drawn = sampler._step(st, k, inputs)
        units.append(given[k].to(drawn.dtype) if k < 2 else drawn)
    torch.testing.assert_close(tokens[:, 2], gen.schedule.from_sequence(torch.cat(units, 1))[:, 2])
    with pytest.raises(ConfigError, match="context units"):
        sampler.given_units(clips, 3)


def test_clips_longer_than_training_slide_a_window():
    gen = video_generator()
    for p in gen.head.parameters():
        torch.nn.init.normal_(p, std=0.2)
    sampler = Sampler(gen, SamplingConfig(cfg_scale=2.0, seed=1))
    labels = torch.tensor([0, 1])
    tokens = sampler.sample_video_tokens(labels, 5)  # a model of 3 frames, 5 asked
    assert tokens.shape == (2, 5, 3, 8, 8)
    torch.testing.assert_close(tokens[:, :3], sampler.sample_tokens(labels))  # the first 3 as ever
    s = gen.schedule
    for r, t in ((1, 3), (2, 4)):  # each later frame: a recomputation over the window of the 2 frames before it
        window = torch.cat([tokens[:, t - 2 : t], tokens[:, t - 1 : t]], 1)
        direct = sampler.sample_tokens(labels, given=s.split_units(s.to_sequence(window))[:2], round_=r)[:, -1]
        torch.testing.assert_close(tokens[:, t], direct)
    assert not torch.allclose(tokens[:, 3], tokens[:, 4])  # every window draws noise of its own
    assert sampler.sample_video(labels, 4).shape == (2, 4, 3, 16, 16)
    with pytest.raises(ConfigError, match="at least"):
        sampler.sample_video(labels, 2)


def test_sampler_draws_clips_seeded_per_sample():
    gen = video_generator()
    labels = torch.tensor([0, 1, 2])
    a = Sampler(gen, SamplingConfig(cfg_scale=2.0, batch_size=1, seed=2)).sample_images(labels)
    b = Sampler(gen, SamplingConfig(cfg_scale=2.0, batch_size=3, seed=2)).sample_images(labels)
    assert a.shape == (3, 3, 3, 16, 16)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_frames_drawn_without_a_cache_across_frames_equal_the_cached_sampler():
    """``Sampler.sample_prefix`` (bench/video.py's recompute baseline): frame t through a fresh cache after the
    frames before it gives the cached sampler's clip, frame for frame."""
    gen = video_generator(frames=3)
    sampler = Sampler(gen, SamplingConfig(cfg_scale=2.0, seed=4))
    labels, ids = torch.tensor([0, 3]), torch.tensor([5, 9])
    cached = gen.schedule.split_units(gen.schedule.to_sequence(sampler.sample_tokens(labels, ids)))
    units: list = []
    for t in range(3):
        units = sampler.sample_prefix(labels, t + 1, ids, given=units or None)
        torch.testing.assert_close(units[t], cached[t], atol=1e-5, rtol=1e-5)


def test_motion_scores_fail_frozen_shuffled_and_slow_clips(fmnist):
    """The acceleration term alone rewards a clip that does not move; the speed term catches it, and a clip whose item
    moves at half the data's speed; shuffled clips fail the acceleration term. Real clips pass both."""
    from visgen.metrics.dynamics import frozen, motion_scores, prediction_motion, speed_distance, speeds

    items, labels = fmnist_items(fmnist)
    make = lambda seed, **kw: torch.from_numpy(moving_fashion_mnist(items, labels, 24, frames=16, size=64, seed=seed,
                                                                    **kw)["clips"])  # fmt: skip
    ref, real = make(1), make(2)
    m = motion_scores(make(3), real, ref)
    assert m["dynamics_error_frozen"] == 0.0 and m["speed_distance_frozen"] > 2.0  # frozen: no acceleration, no speed
    assert m["dynamics_error_shuffled"] > 4 * m["dynamics_error_real"]
    assert m["speed_distance_real"] < 0.4 and m["speed_distance"] < 0.4 and m["dynamics_error"] < 1.0  # real pass
    slow = speed_distance(make(4, speed=(1.0, 2.0)), speeds(ref))
    assert slow > 1.0 and slow > 4 * m["speed_distance_real"]
    # the motion of predicted frames alone: a true continuation passes, one that holds the last given frame fails
    p = prediction_motion(real, real, 4, ref)
    assert p["prediction_speed_distance"] == p["prediction_speed_distance_real"] < 0.4
    assert prediction_motion(frozen(real, 3), real, 4, ref)["prediction_speed_distance"] > 2.0


def test_prediction_error_and_the_dynamics_command_with_context(moving, tmp_path):
    from visgen.cli.dynamics import main as dynamics_main
    from visgen.metrics.dynamics import prediction_scores

    clips = torch.from_numpy(np.load(moving / "train.npz")["clips"]).float()
    s = prediction_scores(clips, clips, context=3, horizon=4)
    assert s["prediction_error_px"] == 0 == s["prediction_error_px_real"]
    assert s["prediction_error_px_frozen"] > 0  # items bounce in their 4-pixel room: holding still is off
    torch.manual_seed(0)
    cfg = GeneratorConfig(tokenizer="-", image_size=32, num_classes=10, schedule="next_frame", frames=6, head="flow",
                          head_options={"width": 16, "depth": 1, "heads": 2, "steps": 2},
                          backbone={"preset": "tiny", "rope_axes": 3})  # fmt: skip
    gen = Generator(cfg, tokenizer=KLTokenizer(TINY_KL).eval()).eval()
    gen.save_pretrained(tmp_path / "gen")
    args = ["--input", str(tmp_path / "gen"), "--ref", str(moving), "--ref-split", "train", "--num-samples", "3",
            "--batch-size", "3", "--name", "d", "--results-dir", str(tmp_path)]  # fmt: skip
    assert dynamics_main([*args, "--context-frames", "2", "--gif", str(tmp_path / "side.gif")]) == 0
    m = json.loads((tmp_path / "d.json").read_text())["metrics"]
    assert m["prediction_error_px_real"] == 0 and m["prediction_error_px"] >= 0 and "speed_distance_frozen" in m
    assert m["prediction_context_frames"] == 2 and m["prediction_horizon"] == 4 and m["prediction_clips"] == 3
    assert m["head_steps"] == 2 and m["head_solver"] == "euler"  # the recipe's, named beside the figures
    assert m["temperature"] == 1.0
    assert {"prediction_dynamics_error", "prediction_speed_distance_real"} <= set(m)  # 32-pixel frames: NaN
    from PIL import Image

    with Image.open(tmp_path / "side.gif") as gif:  # real, predicted, generated: 3 columns of 3 clips, 6 frames
        assert gif.size == (3 * 32 + 2 * 2, 3 * 32) and gif.n_frames == 6
    from eval.generator_result import prediction_metrics  # what a result file takes of it

    assert prediction_metrics(tmp_path / "d.json") == {k: v for k, v in m.items() if k.startswith("prediction_")}
    # no --context-frames: no prediction figures to take; --head-steps, --temperature: for this run
    argv = [*args, "--name", "plain", "--head-steps", "3", "--head-solver", "heun", "--temperature", "0.9"]
    assert dynamics_main(argv) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())["metrics"]
    assert plain["head_steps"] == 3 and plain["head_solver"] == "heun" and plain["temperature"] == 0.9
    with pytest.raises(KeyError, match="no prediction figures"):
        prediction_metrics(tmp_path / "plain.json")
    assert dynamics_main([*args, "--context-frames", "5"]) == 2  # 5 + a horizon of 4 is past 6 frames
    # eval/fvd.py --dynamics on a checkpoint: the held-out clips through its tokenizer and back give the floor its
    # frames allow (_recon); round_trip is the tokenizer frame by frame, clips (N, T, H, W, C) kept in their layout
    from visgen.cli.fvd import data_clips, round_trip
    from visgen.cli.fvd import main as fvd_main

    assert fvd_main(["--input", str(tmp_path / "gen"), "--ref", str(moving), "--num-samples", "3", "--batch-size", "3",
                     "--frame-extractor", "none", "--video-extractor", "none", "--dynamics", "--name", "f",
                     "--results-dir", str(tmp_path)]) == 0  # fmt: skip
    f = json.loads((tmp_path / "f.json").read_text())["metrics"]
    assert {"speed_distance_recon", "dynamics_error_recon", "speed_distance_real"} <= set(f)
    real = data_clips(str(moving), "test", 6, 32, 3, 2)  # as many channels as the model's clips, as fvd.py reads them
    back = round_trip(tmp_path / "gen", real, "cpu", 2)
    assert back.shape == real.shape and back.dtype == torch.uint8
    x = real[1, 4].permute(2, 0, 1)[None].float() / 127.5 - 1  # clip 1, frame 4 alone, as an image
    one = ((gen.tokenizer.decode(gen.tokenizer.encode(x)).clamp(-1, 1) + 1) * 127.5).round()
    assert (one[0].permute(1, 2, 0) - back[1, 4].float()).abs().max() <= 1
    (tmp_path / "d.json").unlink()  # a GIF that cannot be written fails the command, after the figures are saved
    assert dynamics_main([*args, "--context-frames", "2", "--gif", str(tmp_path / "no" / "side.gif")]) == 2
    assert json.loads((tmp_path / "d.json").read_text())["metrics"]["prediction_clips"] == 3


def test_motion_baselines_script(fmnist, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    r = subprocess.run([sys.executable, "eval/motion_baselines.py", "--fmnist", fmnist, "--clips", "6", "--name", "m",
                        "--results-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert m["speed_distance_frozen"] > 4 * m["speed_distance_real"] and m["speed_distance_half_speed"] > 1.0
    assert m["prediction_error_px_frozen"] > 2 and m["dynamics_error_shuffled"] > 3 * m["dynamics_error_real"]
