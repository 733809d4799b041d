"""Frequency family (NFIG): the frequency-band tokenizer and next-frequency prediction on the scale engine."""

import json
from pathlib import Path

import pytest
import torch

from tests.test_engine import assert_cached_equals_full
from tests.test_tokenizers import train_briefly
from visgen.checkpoint import load_model
from visgen.config import ConfigError
from visgen.data import DataConfig, build_dataset, collate
from visgen.generator import Generator, GeneratorConfig
from visgen.nn.resize import resize
from visgen.sampling import Sampler, SamplingConfig
from visgen.schedules import NextScaleSchedule
from visgen.tokenizers import FrequencyVQConfig, FrequencyVQTokenizer
from visgen.tokenizers.freqvq import band_masks, exact_grids, nyquist_grids, radial_frequency
from visgen.train.tokenizer_task import TokenizerLossConfig

TINY = dict(channels=8, channel_mult=(1, 2), z_channels=8, codebook_size=32, codebook_dim=4, latent_size=8)
EDGES = (0.0625, 0.125, 0.25, 0.5)


def nfig_generator(seed: int = 0, resample: str = "area") -> Generator:
    torch.manual_seed(seed)
    tok = FrequencyVQTokenizer(FrequencyVQConfig(**TINY, band_edges=EDGES, resample=resample)).eval()
    cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=4, schedule="next_frequency",
                          backbone={"preset": "tiny", "rope_axes": 3, "adaln": True})  # fmt: skip
    gen = Generator(cfg, tokenizer=tok).eval()
    for p in list(gen.head.parameters()) + [b.ada[1].weight for b in gen.backbone.blocks]:
        torch.nn.init.normal_(p, std=0.3)  # non-trivial head and AdaLN (both start at zero)
    return gen


def test_the_band_split_is_a_partition_of_the_spectrum():
    tok = FrequencyVQTokenizer(FrequencyVQConfig(**TINY, band_edges=(0.1, 0.2, 0.35, 0.5)))
    f = torch.randn(2, 4, 8, 8)
    bands = tok.band_split(f)
    torch.testing.assert_close(sum(bands), f, atol=1e-5, rtol=0)  # they sum to the latent
    r = radial_frequency(8)
    edges = [-1.0, 0.1, 0.2, 0.35, float("inf")]
    for k, band in enumerate(bands):
        spectrum = torch.fft.fft2(band).abs()
        outside = ~((r > edges[k]) & (r <= edges[k + 1]))
        assert spectrum[..., outside].max() < 1e-4 and spectrum[..., ~outside].max() > 1e-2  # zero off its annulus
    assert band_masks(8, (0.1, 0.2, 0.35, 0.5)).sum(0).eq(1).all()


def test_grids_follow_the_nyquist_rule():
    assert nyquist_grids(8, EDGES) == [1, 2, 4, 8]
    assert nyquist_grids(16, (0.05, 0.1, 0.2, 0.3, 0.5)) == [2, 4, 7, 10, 16]
    assert FrequencyVQConfig(**TINY, band_edges=(0.0625, 0.5), grids=(3, 8)).scales == (3, 8)  # a grid may be larger
    # resample: spectral: 2 m + 1 for the largest per-axis frequency m of the bands so far (DC only: 1)
    assert exact_grids(8, EDGES) == [1, 3, 5, 8]
    assert exact_grids(16, (0.03125, 0.0625, 0.125, 0.25, 0.375, 0.5)) == [1, 3, 5, 9, 13, 16]
    assert FrequencyVQConfig(**TINY, band_edges=EDGES, resample="spectral").scales == (1, 3, 5, 8)


def test_spectral_resampling_keeps_every_band_on_its_grid():
    """DFT resampling: down after up is the identity, and each band's content comes back exactly from its grid;
    area-down and bicubic-up on the Nyquist grids lose much of it (the reason for resample: spectral)."""
    torch.manual_seed(0)
    for n, m in ((8, 1), (8, 3), (8, 4), (8, 5), (16, 9)):
        z = torch.randn(2, 3, m, m, dtype=torch.float64)
        torch.testing.assert_close(resize(resize(z, n, "spectral"), m, "spectral"), z, atol=1e-12, rtol=0)
    f = torch.randn(4, 4, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(resize(f, 1, "spectral").flatten(1), f.mean((2, 3)), atol=1e-12, rtol=0)
    lost = {}
    for resample in ("spectral", "area"):
        tok = FrequencyVQTokenizer(FrequencyVQConfig(**TINY, band_edges=EDGES, resample=resample)).double()
        for k, g in enumerate(tok.scales[:-1]):
            band = tok._filter(f, tok.lowpass[k])
            back = resize(resize(band, g, tok.down_mode), 8, tok.up_mode)
            lost[resample, k] = ((back - band).norm() / band.norm()).item()
    assert max(lost["spectral", k] for k in range(3)) < 1e-10
    assert lost["area", 1] > 0.2 and lost["area", 2] > 0.2


def test_round_trip_and_save_load(tmp_path):
    tok = FrequencyVQTokenizer(FrequencyVQConfig(**TINY, band_edges=EDGES)).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = tok.encode(x)
    assert codes.shape == (2, 1 + 4 + 16 + 64) and codes.max() < 32
    assert tok.decode(codes).shape == x.shape
    tok.save_pretrained(tmp_path)
    loaded = load_model(tmp_path).eval()
    assert isinstance(loaded, FrequencyVQTokenizer)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), codes)
        torch.testing.assert_close(loaded.decode(codes), tok.decode(codes), atol=1e-5, rtol=0)


def test_training_lowers_reconstruction_error(cifar_train):
    torch.manual_seed(0)
    tok = FrequencyVQTokenizer(FrequencyVQConfig(**TINY, band_edges=EDGES))
    x = collate([build_dataset(DataConfig(path=cifar_train, image_size=16, limit=32))[i] for i in range(32)])["image"]
    start, end, _ = train_briefly(tok, TokenizerLossConfig(), x, chunks=1)
    assert end < 0.6 * start


@pytest.mark.parametrize("resample", ["spectral", "area"])
def test_teacher_inputs_equal_sampling_inputs(resample):
    gen = nfig_generator(resample=resample)
    s, seen = gen.schedule, []
    original = s.step_input

    def record(state, units):
        x, state = original(state, units)
        seen.append((x, s.next_input(units)))  # the running reconstruction, and the definition from every band
        return x, state

    s.step_input = record
    tokens = Sampler(gen, SamplingConfig(seed=1)).sample_tokens([0, 1])
    s.step_input = original
    stepped, defined = (torch.cat(t, dim=1) for t in zip(*seen))
    torch.testing.assert_close(stepped, defined, atol=1e-6, rtol=0)
    torch.testing.assert_close(stepped, s.teacher_inputs(s.to_sequence(tokens)), atol=1e-6, rtol=0)
    assert isinstance(s, NextScaleSchedule) and s.unit_sizes == [g * g for g in gen.tokenizer.scales]


@pytest.mark.parametrize("resample", ["spectral", "area"])
def test_kv_cached_band_decoding_equals_full_recompute(resample):
    gen = nfig_generator(resample=resample)
    tokens = torch.randint(0, 32, (3, gen.schedule.seq_len))
    assert_cached_equals_full(gen, tokens, torch.tensor([0, 2, 3]), read=gen.head.logits, rtol=0)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="increase within"):
        FrequencyVQConfig(**TINY, band_edges=(0.25, 0.125, 0.5))
    with pytest.raises(ConfigError, match="increase within"):
        FrequencyVQConfig(**TINY, band_edges=(0.0, 0.5))
    with pytest.raises(ConfigError, match="end at 0.5"):
        FrequencyVQConfig(**TINY, band_edges=(0.1, 0.3))
    with pytest.raises(ConfigError, match="needs a grid side of at least 4"):
        FrequencyVQConfig(**TINY, band_edges=(0.25, 0.5), grids=(2, 8))
    with pytest.raises(ConfigError, match="needs a grid side of at least 5"):
        FrequencyVQConfig(**TINY, band_edges=(0.25, 0.5), grids=(4, 8), resample="spectral")
    with pytest.raises(ConfigError, match="spectral or area"):
        FrequencyVQConfig(**TINY, band_edges=EDGES, resample="fft")
    tok = FrequencyVQTokenizer(FrequencyVQConfig(**TINY, band_edges=EDGES))
    with pytest.raises(ConfigError, match="8 x 8 latent"):
        Generator(GeneratorConfig(tokenizer="-", image_size=32, schedule="next_frequency", backbone="tiny"),
                  tokenizer=tok)  # fmt: skip
    with pytest.raises(ConfigError, match="next_frequency"):
        Generator(GeneratorConfig(tokenizer="-", image_size=16, schedule="next_scale", backbone="tiny"), tokenizer=tok)
    with pytest.raises(ConfigError, match="frequency-band tokenizer"):
        Generator(GeneratorConfig(image_size=32, schedule="next_frequency", backbone="tiny"))  # the bundled VQ


def test_nfig_recipes_train_and_sample_end_to_end(tmp_path):
    from visgen.cli.sample import main as sample_main
    from visgen.cli.train import main as train_main

    tok_dir = tmp_path / "freqvq"
    overrides = ["model.type=freqvq", "model.band_edges=[0.0625, 0.125, 0.25, 0.5]", "model.latent_size=8",
                 "model.resample=spectral",
                 "model.init_from=visgen/assets/cifar10-vq", f"train.out_dir={tok_dir}", "train.steps=20"]  # fmt: skip
    assert train_main(["tokenizer", "--recipe", "tokenizers/quickstart-msvq.yaml", *overrides]) == 0
    gen_dir = tmp_path / "nfig"
    overrides = [f"model.tokenizer={tok_dir}/final", "model.schedule=next_frequency", f"train.out_dir={gen_dir}",
                 "model.backbone={preset: tiny, adaln: true, rope_axes: 3}", "train.steps=40", "train.log_every=10"]  # fmt: skip
    assert train_main(["generator", "--recipe", "generators/quickstart.yaml", *overrides]) == 0
    losses = [json.loads(x)["loss"] for x in (gen_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < losses[0]
    out = tmp_path / "s"
    assert sample_main(["--checkpoint", str(gen_dir / "final"), "--num-images", "4", "--cfg-schedule", "linear",
                        "--out", str(out)]) == 0  # fmt: skip
    assert (next(out.iterdir()) / "grid.png").is_file()
    tok = load_model(gen_dir / "final").tokenizer
    assert tok.config.band_edges == (0.0625, 0.125, 0.25, 0.5) and tok.scales == (1, 3, 5, 8)


def test_band_roundtrip_script_reports_both_resamplings(tmp_path, cifar_test):
    import importlib.util

    spec = importlib.util.spec_from_file_location("band_roundtrip", "eval/band_roundtrip.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = str(Path(cifar_test).parent)
    assert script.main(["--data", data, "--limit", "32", "--name", "r", "--results-dir", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert m["grids_spectral"] == [1, 3, 5, 8] and m["grids_area"] == [1, 2, 4, 8]
    assert max(m[f"lost_spectral_band{k}"] for k in range(3)) < 1e-10 and m["lost_area_band1"] > 0.2
    assert script.main(["--data", str(tmp_path / "none")]) == 2


def test_layouts_script_compares_reconstruction_fd(tmp_path, cifar_test):
    """eval/layouts.py: two band layouts scored by visgen recon for real, side by side with their tokens, each rFD
    over the baseline's, the lowest named; a missing report is an error."""
    import importlib.util

    from visgen.cli.recon import main as recon_main

    spec = importlib.util.spec_from_file_location("layouts", "eval/layouts.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = []
    for name, edges in (("four", EDGES), ("five", (0.0625, 0.125, 0.25, 0.35, 0.5))):
        torch.manual_seed(0)
        FrequencyVQTokenizer(FrequencyVQConfig(**TINY, band_edges=edges, resample="spectral")).save_pretrained(
            tmp_path / name
        )
        assert recon_main([str(tmp_path / name), "--data", cifar_test, "--image-size", "16", "--fd-extractor",
                           "cifar10cls", "--name", name, "--results-dir", str(tmp_path)]) == 0  # fmt: skip
        args += ["--layout", name, str(tmp_path / f"{name}.json"), str(tmp_path / name)]
    assert script.main([*args, "--baseline", "four", "--name", "l", "--results-dir", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "l.json").read_text())["metrics"]
    four, five = m["layouts"]["four"], m["layouts"]["five"]
    assert (four["tokens"], five["tokens"]) == (1 + 9 + 25 + 64, 1 + 9 + 25 + 25 + 64)
    assert four["rfd_cifar10cls_over_baseline"] == 1.0
    assert five["rfd_cifar10cls_over_baseline"] == pytest.approx(five["rfd_cifar10cls"] / four["rfd_cifar10cls"])
    assert m["best_rfd_cifar10cls_layout"] == "five" and m["best_rfd_cifar10cls_over_baseline"] == pytest.approx(
        five["rfd_cifar10cls_over_baseline"]
    )
    missing = ["--layout", "six", str(tmp_path / "six.json"), str(tmp_path / "five")]
    assert script.main([*args, *missing, "--baseline", "four", "--name", "x", "--results-dir", str(tmp_path)]) == 2
    assert script.main([*args, "--baseline", "six", "--name", "x", "--results-dir", str(tmp_path)]) == 2
