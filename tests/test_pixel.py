"""Pixel-level AR: the pixel tokenizer, the pixel schedule, the DMoL head, bits per dimension, end to end."""

import itertools
import json
import math

import pytest
import torch
from scipy.stats import chi2

from tests.test_engine import assert_cached_equals_full
from visgen.checkpoint import load_model
from visgen.config import ConfigError
from visgen.data import DataConfig, build_dataset
from visgen.generator import Generator, GeneratorConfig
from visgen.heads import DMoLHead
from visgen.sampling import CounterNoise, Sampler, SamplingConfig
from visgen.schedules import PixelSchedule, Schedule
from visgen.tokenizers import PixelConfig, PixelTokenizer


def pixel_generator(unit: str = "subpixel", size: int = 4, channels: int = 3, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    head = "dmol" if unit == "pixel" else "categorical"
    cfg = GeneratorConfig(tokenizer="pixel" if channels == 3 else "pixel:grey", image_size=size, num_classes=3,
                          schedule="pixel", unit=unit, head=head, backbone="tiny")  # fmt: skip
    gen = Generator(cfg).eval()
    for p in gen.head.parameters():  # a non-trivial head (the categorical one starts at zero)
        torch.nn.init.normal_(p, std=0.3)
    return gen


def test_tokenizer_round_trip_is_exact(cifar_test):
    tok = PixelTokenizer(PixelConfig(channels=3, image_size=32))
    tokens = torch.randint(0, 256, (4, 3, 32, 32))
    assert torch.equal(tok.encode(tok.decode(tokens)), tokens)
    images = torch.stack([build_dataset(DataConfig(path=cifar_test))[i]["image"] for i in range(8)])
    assert torch.equal(tok.decode(tok.encode(images)), images)  # the data's own uint8 grid, both ways
    grey = PixelTokenizer(PixelConfig(channels=1, image_size=28))
    assert grey.encode(torch.zeros(2, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_schedule_order_and_positions():
    tokens = torch.arange(12).view(1, 3, 2, 2)  # channel c, row r, column w holds 4c + 2r + w
    s = PixelSchedule(2, 3, "subpixel")
    seq = s.to_sequence(tokens)
    # raster over rows and columns, the channels of a pixel in turn: R, G, B of pixel (0, 0), then of (0, 1), ...
    assert seq.tolist() == [[0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]]
    assert s.positions[:4].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0]]
    assert torch.equal(s.from_sequence(seq), tokens)
    assert torch.equal(s.teacher_inputs(seq), Schedule.teacher_inputs(s, seq))
    whole = PixelSchedule(2, 3, "pixel")
    pixels = whole.to_sequence(tokens)
    assert (
        whole.seq_len == 4 and pixels[0, 1].tolist() == [1, 5, 9] and torch.equal(whole.from_sequence(pixels), tokens)
    )
    torch.testing.assert_close(whole.teacher_inputs(pixels), Schedule.teacher_inputs(whole, pixels))
    assert torch.allclose(whole.next_input([pixels[:, :1]]), pixels[:, :1].float() / 127.5 - 1)


def test_a_uniform_model_scores_exactly_8_bits_per_dim(tmp_path, cifar_test):
    from visgen.cli.bpd import main as bpd_main

    cfg = GeneratorConfig(tokenizer="pixel", image_size=32, num_classes=10, schedule="pixel", backbone="tiny")
    Generator(cfg).save_pretrained(tmp_path / "g")  # the categorical head starts at zero: all logits equal
    assert bpd_main(["--checkpoint", str(tmp_path / "g"), "--data", cifar_test, "--limit", "6", "--name", "b",
                     "--results-dir", str(tmp_path)]) == 0  # fmt: skip
    m = json.loads((tmp_path / "b.json").read_text())["metrics"]
    # log 256 per sub-pixel, to fp32 rounding
    assert m["bpd"] == pytest.approx(8.0, abs=1e-5) and m["bpd_unconditional"] == pytest.approx(8.0, abs=1e-5)
    assert m["images"] == 6
    card = (tmp_path / "g" / "README.md").read_text()
    assert "bits/dim on" in card and "bpd 8" in card and "pixel" in card  # the model card carries the result


@pytest.mark.parametrize("channels", [1, 3])
def test_dmol_likelihood_sums_to_one(channels):
    torch.manual_seed(0)
    head = DMoLHead(8, channels, mixtures=3, bins=8)
    torch.nn.init.normal_(head.proj.weight, std=0.5)
    h = torch.randn(5, 8)
    values = torch.tensor(list(itertools.product(range(8), repeat=channels)))  # every pixel at 3 bits
    logp = head.log_prob(values[:, None].expand(-1, 5, -1), h.expand(len(values), -1, -1))
    torch.testing.assert_close(logp.logsumexp(0), torch.zeros(5), atol=1e-5, rtol=0)
    full = DMoLHead(8, 1, mixtures=3)  # and every grey value at 8 bits, far tails included
    torch.nn.init.normal_(full.proj.weight, std=3.0)
    logp = full.log_prob(torch.arange(256)[:, None, None].expand(-1, 5, -1), h.expand(256, -1, -1))
    torch.testing.assert_close(logp.logsumexp(0), torch.zeros(5), atol=1e-5, rtol=0)


def test_dmol_samples_follow_its_likelihood():
    """Sampling rounds each channel before the next one's mean reads it: the frequencies of 3-bit RGB samples match
    exp(log_prob) under a chi-square test."""
    torch.manual_seed(1)
    head = DMoLHead(8, 3, mixtures=2, bins=8)
    torch.nn.init.normal_(head.proj.weight, std=0.5)
    h, n = torch.randn(1, 1, 8), 40000
    with torch.no_grad():
        x = head.sample(h.expand(n, 1, 8), 1.0, CounterNoise(0, torch.arange(n)), torch.tensor(0))[:, 0]
        values = torch.tensor(list(itertools.product(range(8), repeat=3)))
        probs = head.log_prob(values, h[0].expand(len(values), -1)).exp().double()
    counts = torch.bincount((x * torch.tensor([64, 8, 1])).sum(-1), minlength=512).double()
    expected = probs * n
    big = expected >= 5
    obs, exp = (
        torch.cat([counts[big], counts[~big].sum()[None]]),
        torch.cat([expected[big], expected[~big].sum()[None]]),
    )
    assert chi2.sf(((obs - exp) ** 2 / exp).sum().item(), len(obs) - 1) > 1e-3


@pytest.mark.parametrize("unit", ["subpixel", "pixel"])
def test_kv_cached_decoding_equals_full_recompute(unit):
    gen = pixel_generator(unit)
    seq = gen.schedule.to_sequence(torch.randint(0, 256, (2, 3, 4, 4)))
    assert_cached_equals_full(gen, seq, torch.tensor([0, 2]))


def test_same_seed_same_images_at_any_batch_size_and_speculation():
    gen = pixel_generator("pixel")
    labels = torch.tensor([0, 1, 2, 0, 1])
    runs = [Sampler(gen, SamplingConfig(cfg_scale=2.0, batch_size=bs, seed=3)).sample_tokens(labels) for bs in (1, 5)]
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (5, 3, 4, 4) and 0 <= runs[0].min() <= runs[0].max() < 256
    sub = pixel_generator("subpixel")  # one-token categorical units: speculative Jacobi decoding applies
    plain = Sampler(sub, SamplingConfig(temperature=0.0)).sample_tokens(labels)
    assert torch.equal(Sampler(sub, SamplingConfig(temperature=0.0, speculative="jacobi")).sample_tokens(labels), plain)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="use head: dmol"):
        Generator(GeneratorConfig(tokenizer="pixel", image_size=4, schedule="pixel", unit="pixel", backbone="tiny"))
    with pytest.raises(ConfigError, match="dmol head predicts whole pixels"):
        Generator(GeneratorConfig(tokenizer="pixel", image_size=4, schedule="pixel", head="dmol", backbone="tiny"))
    with pytest.raises(ConfigError, match="schedule: pixel"):
        Generator(GeneratorConfig(tokenizer="pixel", image_size=4, schedule="raster", backbone="tiny"))
    with pytest.raises(ConfigError, match="model.tokenizer must be pixel"):
        Generator(GeneratorConfig(image_size=32, schedule="pixel", backbone="tiny"))  # the bundled VQ
    with pytest.raises(ConfigError, match="unknown pixel tokenizer"):
        Generator(GeneratorConfig(tokenizer="pixel:cmyk", image_size=4, schedule="pixel", backbone="tiny"))
    with pytest.raises(ConfigError, match="unit"):
        Generator(GeneratorConfig(tokenizer="pixel", image_size=4, schedule="pixel", unit="band", backbone="tiny"))
    tok = pixel_generator().tokenizer
    with pytest.raises(ConfigError, match=r"reads 3 x 4 x 4 images .* got 1 x 4 x 4"):
        tok.encode(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ConfigError, match="got 3 x 8 x 8"):
        tok.encode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ConfigError, match="speculative"):
        Sampler(pixel_generator("pixel"), SamplingConfig(speculative="jacobi"))  # dmol: no categorical to verify


def test_cifar_cut_trains_bits_per_dim_falls_and_samples(tmp_path, cifar_train, cifar_test):
    from visgen.cli.sample import main as sample_main
    from visgen.cli.train import main as train_main

    out = tmp_path / "run"
    overrides = ["model.tokenizer=pixel", "model.image_size=8", "model.schedule=pixel", "model.backbone={preset: tiny}",
                 "data.image_size=8", "tokenizer.cache=false", f"train.out_dir={out}", "train.steps=40",
                 "train.log_every=10", "train.lr=3e-3", "train.eval_every=20", "train.val_images=64"]  # fmt: skip
    assert train_main(["generator", "--recipe", "generators/quickstart.yaml", *overrides]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    bpd = [x["val/bpd"] for x in lines if "val/bpd" in x]
    assert len(bpd) >= 2 and bpd[-1] < bpd[0] < 8.01 and all(math.isfinite(v) for v in bpd)
    assert sample_main(["--checkpoint", str(out / "final"), "--num-images", "3", "--out", str(tmp_path / "s")]) == 0
    assert (next((tmp_path / "s").iterdir()) / "grid.png").is_file()
    gen = load_model(out / "final")
    assert isinstance(gen.tokenizer, PixelTokenizer) and gen.schedule.seq_len == 8 * 8 * 3
