import json

import pytest
import torch

from visgen.checkpoint import CheckpointError, load_model
from visgen.config import ConfigError
from visgen.data import DataConfig, build_dataset, collate
from visgen.tokenizers import (
    DiffusersKLTokenizer,
    DiffusersVAEConfig,
    DiffusersVQTokenizer,
    KLConfig,
    KLTokenizer,
    VQConfig,
    VQTokenizer,
    build_tokenizer,
)  # fmt: skip
from visgen.train.tokenizer_task import TokenizerLossConfig, TokenizerTask

TINY_VQ = VQConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=8, codebook_size=32, codebook_dim=4)
TINY_KL = KLConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3)
TINY_DIFFUSERS = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 8], "layers_per_block": 1, "norm_num_groups": 4,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
}  # fmt: skip


def tiny_tokenizers():
    return [
        VQTokenizer(TINY_VQ),
        KLTokenizer(TINY_KL),
        DiffusersKLTokenizer(DiffusersVAEConfig(model_config={**TINY_DIFFUSERS, "latent_channels": 4})),
        DiffusersVQTokenizer(
            DiffusersVAEConfig(model_config={**TINY_DIFFUSERS, "latent_channels": 4, "num_vq_embeddings": 16})
        ),
    ]


@pytest.mark.parametrize("tok", tiny_tokenizers(), ids=lambda t: t.model_type)
def test_shapes(tok):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    tokens = tok.encode(x)
    h, w = tok.grid_shape(16)
    if tok.discrete:
        assert tokens.shape == (2, h, w) and tokens.dtype == torch.long and tokens.max() < tok.vocab_size
    else:
        assert tokens.shape == (2, tok.latent_channels, h, w)
    assert tok.decode(tokens).shape == x.shape


@pytest.mark.parametrize("tok", tiny_tokenizers(), ids=lambda t: t.model_type)
def test_save_load_round_trip(tok, tmp_path):
    tok.eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        before = tok.decode(tok.encode(x))
    tok.save_pretrained(tmp_path)
    loaded = load_model(tmp_path).eval()
    assert type(loaded) is type(tok)
    with torch.no_grad():
        assert torch.allclose(loaded.decode(loaded.encode(x)), before, atol=1e-5)
    assert type(tok).from_pretrained(tmp_path) is not None


def test_loading_another_model_type_fails(tmp_path):
    VQTokenizer(TINY_VQ).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="holds a 'vq' model"):
        KLTokenizer.from_pretrained(tmp_path)


def test_corrupt_weights_fail_clearly(tmp_path):
    VQTokenizer(TINY_VQ).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope")


def test_weights_of_another_config_fail(tmp_path):
    VQTokenizer(TINY_VQ).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["config"]["codebook_dim"] = 6
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path)


def test_build_tokenizer_errors():
    with pytest.raises(ConfigError, match="unknown tokenizer type"):
        build_tokenizer({"type": "vqgan9000"})
    with pytest.raises(ConfigError, match="unknown field"):
        build_tokenizer({"type": "vq", "codebok_size": 3})


def test_diffusers_offline_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="local-dir"):
        DiffusersKLTokenizer(DiffusersVAEConfig(pretrained="no-such-user/no-such-vae"))


def test_diffusers_local_folder(tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL(**TINY_DIFFUSERS, latent_channels=4).save_pretrained(tmp_path / "vae")
    tok = DiffusersKLTokenizer(DiffusersVAEConfig(pretrained=str(tmp_path), subfolder="vae"))
    assert tok.encode(torch.zeros(1, 3, 16, 16)).shape == (1, 4, 8, 8)


def test_perceptual_loss_needs_local_weights(tmp_path):
    with pytest.raises(ConfigError, match="perceptual_weights"):
        TokenizerTask(VQTokenizer(TINY_VQ), TokenizerLossConfig(perceptual_weight=1.0))
    from safetensors.torch import save_file
    from torchvision.models import vgg16

    from visgen.losses.perceptual import _CHANNELS, _TAPS

    state = {f"features.{k}": v for k, v in vgg16().features[: _TAPS[-1] + 1].state_dict().items()}
    state.update({f"lin.{i}.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(_CHANNELS)})
    save_file(state, str(tmp_path / "lpips.safetensors"))
    task = TokenizerTask(
        VQTokenizer(TINY_VQ),
        TokenizerLossConfig(perceptual_weight=1.0, perceptual_weights=str(tmp_path / "lpips.safetensors")),
    )
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loss, logs = task({"image": x}, step=0)
    assert torch.isfinite(loss) and logs["perceptual"] > 0


def train_briefly(tok, loss_cfg: TokenizerLossConfig, x: torch.Tensor, chunks: int, steps: int = 40):
    """Train ``tok`` on ``x`` (cycled in ``chunks`` batches); returns (error before, error after, last logs)."""
    task = TokenizerTask(tok, loss_cfg)
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)

    def err():
        with torch.no_grad():
            return (tok.reconstruct(x) - x).pow(2).mean().item()

    start, size = err(), len(x) // chunks
    for step in range(steps):
        loss, logs = task({"image": x[(step % chunks) * size : (step % chunks + 1) * size]}, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return start, err(), logs


@pytest.mark.parametrize("cfg", [TINY_VQ, TINY_KL], ids=["vq", "kl"])
def test_brief_training_lowers_reconstruction_error(cfg, cifar_train):
    torch.manual_seed(0)
    tok = VQTokenizer(cfg) if isinstance(cfg, VQConfig) else KLTokenizer(cfg)
    ds = build_dataset(DataConfig(path=cifar_train, image_size=16, limit=64))
    x = collate([ds[i] for i in range(64)])["image"]
    start, end, logs = train_briefly(tok, TokenizerLossConfig(adv_weight=0.1, adv_start=20), x, chunks=4)
    assert "d_loss" in logs
    assert end < 0.6 * start


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_group_norm_keeps_channels_last_and_equals_the_native_one(dtype, tol):
    from visgen.tokenizers.modules import GroupNorm

    torch.manual_seed(0)
    norm = GroupNorm(8, 32, eps=1e-6)
    torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 32, 5, 7) * 3 + 1
    ref = torch.nn.functional.group_norm(x, 8, norm.weight, norm.bias, 1e-6)
    y = norm.to(dtype)(x.to(dtype, memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == dtype
    assert (y.float() - ref).abs().max() < tol
    assert torch.equal(norm(x.to(dtype)), torch.nn.functional.group_norm(x.to(dtype), 8, norm.weight, norm.bias, 1e-6))


def test_restart_dead_codes_moves_only_dead_codes():
    from visgen.tokenizers.vq import restart_dead_codes

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(8, 3))
    usage = torch.ones(8)
    usage[[2, 5]] = 0.0  # two dead codes
    vectors = torch.randn(20, 3) + 10  # far from the current codes
    restart_dead_codes(weight, usage, torch.zeros(8), vectors, threshold=0.5, decay=1.0)
    moved = weight.detach().abs().sum(1) > 0
    assert moved.tolist() == [i in (2, 5) for i in range(8)]
    assert all(any(torch.equal(weight[i].detach(), v) for v in vectors) for i in (2, 5))
    assert usage[[2, 5]].tolist() == [1.0, 1.0]
    # max_codes: at most that many move per call, the least used first
    usage.copy_(torch.tensor([0.3, 0.1, 1, 1, 0.2, 1, 1, 1]))
    before = weight.detach().clone()
    restart_dead_codes(weight, usage, torch.zeros(8), vectors, threshold=0.5, decay=1.0, max_codes=2)
    assert (weight.detach() != before).any(1).tolist() == [i in (1, 4) for i in range(8)]


def test_decoder_finetune_keeps_every_token(tmp_path, capsys):
    """``model.from_trained`` + ``model.finetune: decoder`` (tokenizers/cifar10-vq-decoder.yaml): the bundled VQ's
    decoder trains on its own tokens, adversarial term on; the encoder and codebook stay as they were, so the tokens
    of real images do too, while what they decode to changes. Bad settings are clear errors."""
    from visgen.cli.train import main as train_main

    out = tmp_path / "dec"
    args = ["tokenizer", "--recipe", "tokenizers/cifar10-vq-decoder.yaml", "data.path=tests/data/cifar10/train",
            "val.path=tests/data/cifar10/test", "data.limit=32", "train.steps=3", "train.batch_size=8",
            "train.lr=1e-3", "train.warmup_steps=0", "train.num_workers=0", "train.val_images=8", "train.eval_every=0",
            "train.sample_every=0", "loss.disc_warmup=0", f"train.out_dir={out}"]  # fmt: skip
    assert train_main(args) == 0
    before, after = load_model("visgen/assets/cifar10-vq"), load_model(out / "final")
    x = collate([build_dataset(DataConfig(path="tests/data/cifar10/test", limit=8))[i] for i in range(8)])["image"]
    with torch.no_grad():
        tokens = before.encode(x)
        assert torch.equal(after.encode(x), tokens)
        assert not torch.allclose(after.decode(tokens), before.decode(tokens))
    b, a = before.state_dict(), after.state_dict()
    changed = {k.split(".")[0] for k in b if not torch.equal(b[k], a[k])}
    assert changed == {"decoder", "post_quant_conv"}
    # eval/swap_decoder.py: the bundled generator decoding through it, its tokens as they were
    import importlib.util

    spec = importlib.util.spec_from_file_location("swap_decoder", "eval/swap_decoder.py")
    swap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(swap)
    gen_out = tmp_path / "gen"
    assert (
        swap.main(["--generator", "asset:cifar10-token-ar", "--tokenizer", str(out / "final"), "--out", str(gen_out)])
        == 0
    )
    gen = load_model(gen_out)
    assert torch.equal(gen.tokenizer.decoder.net[12].weight, after.decoder.net[12].weight)
    assert torch.equal(gen.head.proj.weight, load_model("visgen/assets/cifar10-token-ar").head.proj.weight)
    other = tmp_path / "other"
    VQTokenizer(TINY_VQ).save_pretrained(other)
    assert (
        swap.main(["--generator", "asset:cifar10-token-ar", "--tokenizer", str(other), "--out", str(tmp_path / "g2")])
        == 2
    )
    assert "does not read" in capsys.readouterr().out
    assert train_main([*args[:-1], f"train.out_dir={tmp_path / 'x'}", "model.codebook_size=16"]) == 2
    assert "model.from_trained loads a trained tokenizer" in capsys.readouterr().err
    assert train_main([*args[:-1], f"train.out_dir={tmp_path / 'y'}", "model.finetune=encoder"]) == 2
    assert "model.finetune must be one of all, decoder" in capsys.readouterr().err
    assert train_main([*args[:-1], f"train.out_dir={tmp_path / 'z'}", "model.from_trained=asset:cifar10-token-ar"]) == 2
    assert "not a tokenizer" in capsys.readouterr().err


def test_the_bundle_keeps_the_decoder_that_scores_lower(tmp_path, capsys):
    """eval/bundle_token_ar.py: the fine-tuned decoder's copy becomes the asset only where its FD is lower, and the
    bundled result is the token run's training figures with that copy's FD, the first scoring kept beside."""
    import importlib.util

    from tests.test_engine import tiny_generator

    spec = importlib.util.spec_from_file_location("bundle", "eval/bundle_token_ar.py")
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    swapped, asset, results = tmp_path / "swapped", tmp_path / "asset", tmp_path / "results"
    tiny_generator().save_pretrained(swapped)
    results.mkdir()

    def scoring(name, fd, **extra):
        record = {"name": name, "date": "d", "commit": "c", "hardware": "h", "command": name,
                  "metrics": {"fd_cifar10cls": fd, "copy_rate": 0.001, **extra}}  # fmt: skip
        (results / f"{name}.json").write_text(json.dumps(record))
        (results / f"{name}.png").write_bytes(name.encode())

    args = ["--swapped", str(swapped), "--asset", str(asset), "--results-dir", str(results)]
    scoring("cifar10-token-ar", 0.30, steps=100, kept_val_loss=5.0, sample_images_per_s=9.0)
    scoring("cifar10-token-ar-vq-decoder", 0.35)
    assert bundle.main(args) == 0 and not asset.exists()  # the bundled VQ's decoder scored lower: kept
    scoring("cifar10-token-ar-vq-decoder", 0.25)
    assert bundle.main(args) == 0
    load_model(asset)
    m = json.loads((results / "cifar10-token-ar.json").read_text())["metrics"]
    assert m["fd_cifar10cls"] == 0.25 and m["fd_cifar10cls_bundled_vq_decoder"] == 0.30
    assert m["steps"] == 100 and m["kept_val_loss"] == 5.0 and "sample_images_per_s" not in m
    assert json.loads((results / "cifar10-token-ar-vq.json").read_text())["metrics"]["fd_cifar10cls"] == 0.30
    assert (results / "cifar10-token-ar.png").read_bytes() == b"cifar10-token-ar-vq-decoder"
    assert bundle.main(args) == 2  # not twice
    assert "already a bundled model's result" in capsys.readouterr().err


def test_disc_warmup_trains_only_the_discriminator_first():
    """``loss.disc_warmup``: from ``adv_start`` the discriminator learns alone for that many steps, then the
    tokenizer's adversarial term joins."""
    torch.manual_seed(0)
    task = TokenizerTask(VQTokenizer(TINY_VQ), TokenizerLossConfig(adv_weight=0.1, adv_start=2, disc_warmup=3))
    x = torch.rand(2, 3, 16, 16) * 2 - 1

    def grads(step: int) -> tuple[bool, bool]:
        task.zero_grad(set_to_none=True)
        loss, logs = task({"image": x}, step)
        loss.backward()
        moved = lambda m: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())  # noqa: E731
        return moved(task.model), moved(task.disc)

    assert grads(1) == (True, False)  # before adv_start: the tokenizer alone
    assert grads(3) == (False, True)  # the warm-up: the discriminator alone
    assert grads(5) == (True, True)
