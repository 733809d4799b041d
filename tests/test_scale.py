"""Scale family (VAR): multi-scale residual VQ tokenizer and the next-scale schedule on the shared engine."""

import pytest
import torch

from tests.test_tokenizers import train_briefly
from visgen.checkpoint import load_model
from visgen.data import DataConfig, build_dataset, collate
from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import Sampler, SamplingConfig
from visgen.schedules import NextScaleSchedule
from visgen.tokenizers import MultiScaleVQConfig, MultiScaleVQTokenizer
from visgen.train.tokenizer_task import TokenizerLossConfig

TINY_MSVQ = MultiScaleVQConfig(
    channels=8, channel_mult=(1, 2), z_channels=8, codebook_size=32, codebook_dim=4, scales=(1, 2, 4, 8)
)


def var_generator(seed=0) -> Generator:
    torch.manual_seed(seed)
    tok = MultiScaleVQTokenizer(TINY_MSVQ).eval()
    cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=4, schedule="next_scale",
                          backbone={"preset": "tiny", "rope_axes": 3, "adaln": True})  # fmt: skip
    gen = Generator(cfg, tokenizer=tok).eval()
    for p in list(gen.head.parameters()) + [b.ada[1].weight for b in gen.backbone.blocks]:
        torch.nn.init.normal_(p, std=0.3)  # non-trivial head and AdaLN (both start at zero)
    return gen


def test_msvq_round_trip_and_save_load(tmp_path):
    tok = MultiScaleVQTokenizer(TINY_MSVQ).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = tok.encode(x)
    assert codes.shape == (2, 1 + 4 + 16 + 64) and codes.max() < 32
    assert tok.decode(codes).shape == x.shape
    tok.save_pretrained(tmp_path)
    loaded = load_model(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), codes) and torch.allclose(
            loaded.decode(codes), tok.decode(codes), atol=1e-5
        )


def test_msvq_training_lowers_error(cifar_train):
    torch.manual_seed(0)
    tok = MultiScaleVQTokenizer(TINY_MSVQ)
    x = collate([build_dataset(DataConfig(path=cifar_train, image_size=16, limit=32))[i] for i in range(32)])["image"]
    start, end, _ = train_briefly(tok, TokenizerLossConfig(), x, chunks=1)
    assert end < 0.6 * start


def test_scale_mask_is_block_causal():
    s = NextScaleSchedule(MultiScaleVQTokenizer(TINY_MSVQ))
    mask, u = s.attn_mask(), s.unit_ids
    assert s.unit_sizes == [1, 4, 16, 64] and not s.is_causal
    for i in (0, 3, 10, 84):
        assert torch.equal(mask[i], u <= u[i])  # this scale and every earlier one, nothing later
    assert mask[1:5, 1:5].all() and not mask[1:5, 5:].any()


def test_teacher_inputs_equal_sampling_inputs():
    gen = var_generator()
    s, seen = gen.schedule, []
    original = s.step_input  # the sampler carries a running f_hat through step_input

    def record(state, units):
        x, state = original(state, units)
        seen.append((x, s.next_input(units)))  # and the definition, recomputed from every unit
        return x, state

    s.step_input = record
    tokens = Sampler(gen, SamplingConfig(seed=1)).sample_tokens([0, 1])
    s.step_input = original
    stepped, defined = (torch.cat(t, dim=1) for t in zip(*seen))
    assert torch.allclose(stepped, defined, atol=1e-6)
    assert torch.allclose(stepped, s.teacher_inputs(s.to_sequence(tokens)), atol=1e-6)


def test_kv_cached_scale_decoding_equals_full_recompute():
    gen = var_generator()
    s = gen.schedule
    tokens = torch.randint(0, 32, (3, s.seq_len))
    labels = torch.tensor([0, 2, 3])
    with torch.no_grad():
        full = gen.head.logits(gen.features(tokens, labels))
        cache = gen.backbone.new_cache(3, s.seq_len, torch.float32, "cpu")
        units, cached = s.split_units(tokens), []
        for k in range(s.num_units):
            cached.append(gen.head.logits(gen.decode_unit(k, s.next_input(units[:k]) if k else None, labels, cache)))
    assert torch.allclose(torch.cat(cached, 1), full, atol=1e-4)


def test_scale_sampling_seeded_per_sample():
    gen = var_generator()
    labels = torch.tensor([0, 1, 2, 3, 1])
    runs = [
        Sampler(gen, SamplingConfig(cfg_scale=3.0, cfg_schedule="linear", top_k=8, seed=5, batch_size=b)).sample_tokens(
            labels
        )
        for b in (1, 2, 5)
    ]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert Sampler(gen, SamplingConfig()).sample_images([0]).shape == (1, 3, 16, 16)


def test_var_recipes_train_end_to_end(tmp_path):
    from visgen.cli.sample import main as sample_main
    from visgen.cli.train import main as train_main

    tok_dir = tmp_path / "msvq"
    assert train_main(["tokenizer", "--recipe", "tokenizers/quickstart-msvq.yaml", f"train.out_dir={tok_dir}", "train.steps=20",
                       "model.init_from=visgen/assets/cifar10-vq"]) == 0  # fmt: skip
    gen_dir = tmp_path / "var"
    overrides = [f"model.tokenizer={tok_dir}/final", "model.schedule=next_scale", "model.backbone={preset: tiny, adaln: true, rope_axes: 3}",
                 f"train.out_dir={gen_dir}", "train.steps=40", "train.log_every=10"]  # fmt: skip
    assert train_main(["generator", "--recipe", "generators/quickstart.yaml", *overrides]) == 0
    losses = [
        float(line.split('"loss": ')[1].split(",")[0]) for line in (gen_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert losses[-1] < losses[0]
    assert (
        sample_main(
            [
                "--checkpoint",
                str(gen_dir / "final"),
                "--num-images",
                "4",
                "--cfg-schedule",
                "linear",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )


def test_init_from_vq_copies_the_autoencoder():
    cfg = MultiScaleVQConfig(channels=64, channel_mult=(1, 2, 2), z_channels=64, codebook_size=1024, codebook_dim=8,
                             init_from="visgen/assets/cifar10-vq")  # fmt: skip
    tok = MultiScaleVQTokenizer(cfg)
    assert "decoder.net.0.weight" in tok.initialised_from and "codebook.weight" in tok.initialised_from
    vq = load_model("visgen/assets/cifar10-vq")
    assert torch.equal(tok.decoder.net[0].weight, vq.decoder.net[0].weight.float())


def test_every_family_samples_in_bf16():
    """Low-precision sampling (the GPU default) with continuous inputs (VAR's f_hat, FlowAR's latents) and under a
    caller's autocast, checked on the CPU."""
    from tests.test_engine import tiny_generator
    from tests.test_flow import flowar_generator

    for gen in (tiny_generator(), var_generator(), flowar_generator()):
        sampler = Sampler(gen, SamplingConfig(cfg_scale=2.0, cfg_schedule="linear", dtype="bf16"), device="cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            images = sampler.sample_images([0, 1])
        assert images.shape[0] == 2 and torch.isfinite(images).all()


def test_msvq_codebook_starts_on_data_then_restarts_gradually():
    torch.manual_seed(0)
    tok = MultiScaleVQTokenizer(TINY_MSVQ).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    before = tok.codebook.weight.detach().clone()
    tok.training_losses(x)  # first step: every code moves onto a residual of the batch
    assert not torch.isclose(tok.codebook.weight, before).all(dim=1).any() and bool(tok.codes_from_data)
    tok.usage.fill_(0.0)  # now every code counts as unused: at most codebook_size / 64 (here 1) move per step
    before = tok.codebook.weight.detach().clone()
    tok.training_losses(x)
    moved = ~torch.isclose(tok.codebook.weight, before).all(dim=1)
    assert moved.sum() == 1 and (tok.usage[moved] == 1).all()
    # a codebook taken from a trained VQ (same dimension) is not replaced
    cfg = MultiScaleVQConfig(channels=64, channel_mult=(1, 2, 2), z_channels=64, codebook_size=1024, codebook_dim=8,
                             init_from="visgen/assets/cifar10-vq")  # fmt: skip
    assert bool(MultiScaleVQTokenizer(cfg).codes_from_data)


@pytest.mark.parametrize("mode", ["bicubic", "area", "bilinear", "nearest"])
def test_resize_is_interpolate_as_one_matmul(mode):
    """The scale families resize through the matrix of F.interpolate's linear map: the same numbers, any layout."""
    import torch.nn.functional as F

    from visgen.nn.resize import resize

    x = torch.randn(3, 4, 13, 13)
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    for size in (1, 6, 16):
        ref = F.interpolate(x, size=(size, size), mode=mode, **kw)
        torch.testing.assert_close(resize(x, size, mode), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(resize(x.to(memory_format=torch.channels_last), size, mode), ref, atol=1e-5, rtol=0)
    assert resize(x, 13, mode) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):  # keeps x's dtype and precision, as F.interpolate does
        y = resize(x, 16, mode)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.interpolate(x, size=(16, 16), mode=mode, **kw), atol=1e-5, rtol=0)
    xb = x.bfloat16()  # bf16 in, bf16 out, within bf16 rounding of F.interpolate's bf16 result
    yb = resize(xb, 16, mode)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(
        yb.float(), F.interpolate(xb, size=(16, 16), mode=mode, **kw).float(), atol=0.05, rtol=0.02
    )
    big = torch.randn(1, 2, 40, 40)  # past MAX_MATRIX_SIDE: F.interpolate itself
    torch.testing.assert_close(resize(big, 64, mode), F.interpolate(big, size=(64, 64), mode=mode, **kw))
