import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_tokenizers import TINY_VQ
from visgen.checkpoint import load_model
from visgen.cli.sample import main as sample_main
from visgen.config import ConfigError
from visgen.generator import Generator, GeneratorConfig
from visgen.heads import filter_logits
from visgen.nn import backbone_config
from visgen.sampling import CounterNoise, Sampler, SamplingConfig, guidance_scales
from visgen.schedules import RasterSchedule, Schedule
from visgen.tokenizers import VQTokenizer


def tiny_generator(adaln: bool = False, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    tok = VQTokenizer(TINY_VQ).eval()
    cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=4, backbone={"preset": "tiny", "adaln": adaln})
    gen = Generator(cfg, tokenizer=tok).eval()
    for p in gen.head.parameters():  # a non-trivial head (it starts at zero)
        torch.nn.init.normal_(p, std=0.5)
    return gen


def assert_cached_equals_full(gen, seq, labels, read=lambda h: h, atol=1e-4, rtol=1e-4):
    """Decoding ``seq`` unit by unit through the KV cache gives what the whole sequence gives at once (through
    ``read``, e.g. the head's logits)."""
    s = gen.schedule
    with torch.no_grad():
        full = read(gen.features(seq, labels))
        cache = gen.backbone.new_cache(len(labels), s.seq_len, torch.float32, "cpu")
        units, cached = s.split_units(seq), []
        for k in range(s.num_units):
            cached.append(read(gen.decode_unit(k, s.next_input(units[:k]) if k else None, labels, cache)))
    torch.testing.assert_close(torch.cat(cached, 1), full, atol=atol, rtol=rtol)


@pytest.mark.parametrize("adaln", [False, True])
def test_kv_cached_decoding_equals_full_recompute(adaln):
    gen = tiny_generator(adaln)
    B, s = 3, gen.schedule
    tokens = torch.randint(0, gen.tokenizer.vocab_size, (B, 8, 8))
    labels = torch.tensor([0, 2, 3])
    seq = s.to_sequence(tokens)
    # training norms each block's input inside the block; inference ends each block with the next one's norm
    trained = gen.head.logits(gen.features(seq, labels))
    with torch.no_grad():
        full = gen.head.logits(gen.features(seq, labels))
        torch.testing.assert_close(trained.detach(), full)
        cache = gen.backbone.new_cache(B, s.seq_len, torch.float32, "cpu")
        units, cached = s.split_units(seq), []
        for k in range(s.num_units):
            inputs = s.next_input(units[:k]) if k else None
            cached.append(gen.head.logits(gen.decode_unit(k, inputs, labels, cache)))
    assert torch.allclose(torch.cat(cached, 1), full, atol=1e-4)


@pytest.mark.parametrize("family", ["token", "var", "video"])
def test_a_prefix_decoded_in_one_pass_equals_unit_by_unit(family):
    """``Generator.decode_prefix`` (given units: context frames, a window, a known prefix) gives the features and
    the cache that decoding the same units one by one gives, for one-token units, scales and frames alike."""
    from tests.test_scale import var_generator
    from tests.test_video import video_generator

    gen = {"token": tiny_generator, "var": var_generator, "video": video_generator}[family]()
    s, labels = gen.schedule, torch.tensor([0, 1, 3])
    side = gen.config.image_size
    frames = (gen.config.frames,) if family == "video" else ()
    tokens = gen.encode(torch.rand(3, *frames, 3, side, side) * 2 - 1)
    units = s.split_units(s.to_sequence(tokens))
    k = max(2, s.num_units // 2)
    inputs, state, drawn = [], None, []
    for i in range(k):
        x, state = s.step_input(state, drawn) if i else (None, None)
        inputs.append(x)
        drawn.append(units[i])
    with torch.no_grad():
        one, each = (gen.backbone.new_cache(3, s.seq_len, torch.float32, "cpu") for _ in range(2))
        whole = gen.decode_prefix(inputs, labels, one)
        parts = torch.cat([gen.decode_unit(i, x, labels, each) for i, x in enumerate(inputs)], 1)
    end = s.unit_offsets[k - 1] + s.unit_sizes[k - 1]
    torch.testing.assert_close(whole, parts, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(one.k[..., :end, :], each.k[..., :end, :], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(one.v[..., :end, :], each.v[..., :end, :], atol=1e-5, rtol=1e-4)


def test_teacher_inputs_equal_sampling_inputs():
    s = RasterSchedule((4, 5))
    seq = torch.randint(0, 100, (2, 20))
    generic = Schedule.teacher_inputs(s, seq)  # next_input called unit by unit
    assert torch.equal(s.teacher_inputs(seq), generic)
    assert torch.equal(s.from_sequence(s.to_sequence(seq.view(2, 4, 5))), seq.view(2, 4, 5))


class ThreeUnits(Schedule):
    unit_sizes = [1, 2, 3]


def test_block_causal_mask():
    mask = ThreeUnits().attn_mask()
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    raster = RasterSchedule((3, 3))
    assert raster.is_causal and torch.equal(raster.attn_mask(), torch.ones(9, 9, dtype=torch.bool).tril())


def test_guidance_scale_one_equals_conditional():
    gen = tiny_generator()
    h = torch.randn(4, 1, 32)  # two conditional rows, then two unconditional
    assert torch.allclose(gen.head.guided_logits(h, 1.0, guided=True), gen.head.logits(h[:2]))
    labels = torch.arange(4)
    plain = Sampler(gen, SamplingConfig(cfg_scale=1.0, seed=3)).sample_tokens(labels)
    guided_path = Sampler(gen, SamplingConfig(cfg_scale=1.0, seed=3))
    guided_path.guided = True  # run the doubled (cond + null class) batch at scale 1
    assert torch.equal(guided_path.sample_tokens(labels), plain)
    assert not torch.equal(Sampler(gen, SamplingConfig(cfg_scale=4.0, seed=3)).sample_tokens(labels), plain)


def test_same_seed_same_images_at_any_batch_size():
    gen = tiny_generator()
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    runs = [
        Sampler(gen, SamplingConfig(cfg_scale=2.0, seed=7, batch_size=bs)).sample_tokens(labels) for bs in (1, 3, 8)
    ]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    other_seed = Sampler(gen, SamplingConfig(cfg_scale=2.0, seed=8)).sample_tokens(labels)
    assert not torch.equal(other_seed, runs[0])
    # a sample's noise depends on its own index only: sample 5 alone equals sample 5 in the batch
    alone = Sampler(gen, SamplingConfig(cfg_scale=2.0, seed=7)).sample_tokens(labels[5:6], sample_ids=[5])
    assert torch.equal(alone[0], runs[0][5])
    # images decode batch by batch as they are drawn: the same as decoding all the tokens afterwards
    sampler = Sampler(gen, SamplingConfig(cfg_scale=2.0, seed=7, batch_size=3))
    assert torch.allclose(sampler.sample_images(labels), gen.decode_tokens(runs[0], sampler.decoder), atol=1e-6)


def test_guidance_schedules():
    cfg = SamplingConfig(cfg_scale=3.0, cfg_schedule="linear")
    assert guidance_scales(cfg, 3) == [1.0, 2.0, 3.0]
    cfg = SamplingConfig(cfg_scale=3.0, cfg_schedule="interval", cfg_interval=(0.25, 0.75))
    assert guidance_scales(cfg, 4) == [1.0, 3.0, 3.0, 1.0]
    with pytest.raises(ConfigError, match="cfg_schedule"):
        guidance_scales(SamplingConfig(cfg_schedule="cosine"), 4)


def test_top_k_top_p_and_greedy():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.85)).tolist() == [[False, False, False, True]]
    # top-p after top-k sorts only the k kept logits: the same set as top-p over the whole top-k-filtered row
    torch.manual_seed(0)
    many = torch.randn(50, 300) * 3
    for k, p in ((40, 0.9), (300, 0.5), (7, 0.99), (0, 0.8)):
        ref = many.masked_fill(many < torch.topk(many, k).values[:, -1:], float("-inf")) if k else many
        srt, order = ref.sort(-1, descending=True)
        probs = srt.softmax(-1)
        drop = probs.cumsum(-1) - probs > p
        assert torch.equal(torch.isinf(filter_logits(many, k, p)), torch.isinf(ref) | drop.scatter(-1, order, drop))
    assert torch.isinf(filter_logits(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), top_k=2)).tolist() == [[0, 0, 0, 1]]  # ties
    gen = tiny_generator()
    greedy = Sampler(gen, SamplingConfig(temperature=0, seed=1)).sample_tokens([0, 0])
    assert torch.equal(greedy[0], greedy[1])  # no randomness left
    topk1 = Sampler(gen, SamplingConfig(top_k=1, seed=2)).sample_tokens([0])
    assert torch.equal(topk1, greedy[:1])


def test_counter_noise_is_uniform_and_keyed():
    noise = CounterNoise(0, torch.arange(4))
    u = noise.uniform(0, (10000,))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    assert not torch.equal(u[0], u[1]) and not torch.equal(u, noise.uniform(1, (10000,)))
    z = noise.normal(0, (20000,))
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.03


def test_generator_save_load_round_trip(tmp_path):
    gen = tiny_generator()
    gen.save_pretrained(tmp_path / "g")
    assert (tmp_path / "g" / "tokenizer" / "config.json").is_file()  # self-contained folder
    loaded = load_model(tmp_path / "g").eval()
    labels = torch.arange(4)
    a = Sampler(gen, SamplingConfig(seed=1)).sample_images(labels)
    b = Sampler(loaded, SamplingConfig(seed=1)).sample_images(labels)
    assert torch.allclose(a, b, atol=1e-5)


def test_presets():
    assert backbone_config("gpt-b").n_layer == 12 and backbone_config("gpt-b").d_model == 768
    assert backbone_config({"preset": "gpt-b", "n_layer": 2}).n_layer == 2
    with pytest.raises(ConfigError, match="unknown backbone preset"):
        backbone_config("gpt-zz")
    with pytest.raises(ConfigError, match="unknown field"):
        backbone_config({"preset": "tiny", "depth": 3})


def test_training_lowers_loss_and_sample_cli(tmp_path, capsys):
    from visgen.cli.train import main as train_main

    out = tmp_path / "run"
    rc = train_main(
        [
            "generator",
            "--recipe",
            "generators/quickstart.yaml",
            f"train.out_dir={out}",
            "train.steps=60",
            "train.log_every=10",
            "train.ema_decay=0.9",
        ]
    )
    assert rc == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0] - 0.3
    rc = sample_main(["--checkpoint", str(out / "final"), "--num-images", "6", "--labels", "cat,2", "--npz", "--png",
                      "--cfg-scale", "1.5", "--out", str(tmp_path / "s")])  # fmt: skip
    assert rc == 0
    folder = next((tmp_path / "s").iterdir())
    sha = json.loads((out / "final" / "config.json").read_text())["sha256"]["ema.safetensors"][:8]
    # named by the run, the weights' checksum and every sampling setting (labels hashed)
    assert folder.name.startswith(f"{out.name}-final-ema-{sha}-cfg1.5-constant-T1-topk0-topp1-seed0-n6-labels-")
    arr = np.load(folder / "samples.npz")["arr_0"]
    assert arr.shape == (6, 32, 32, 3) and arr.dtype == np.uint8
    assert len(list((folder / "images").glob("*.png"))) == 6 and (folder / "grid.png").is_file()
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["labels"] == [3, 2, 3, 2, 3, 2] and settings["sampling"]["cfg_scale"] == 1.5


def test_sample_cli_errors(tmp_path, capsys):
    assert sample_main(["--checkpoint", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err
    assert sample_main(["--checkpoint", "visgen/assets/cifar10-vq"]) == 2
    assert "needs a generator checkpoint" in capsys.readouterr().err
    assert sample_main(["--labels", "unicorn", "--num-images", "2"]) == 2
    assert "unknown class 'unicorn'" in capsys.readouterr().err
    assert sample_main(["--labels", "12", "--num-images", "2"]) == 2
    assert "out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        sample_main(["--cfg-schedule", "cosine"])
    assert e.value.code == 2
    assert sample_main(["--top-p", "0", "--num-images", "2"]) == 2
    assert sample_main(["--decode-kernel", "triton", "--num-images", "2", "--device", "cpu"]) == 2
    assert "runs on a GPU" in capsys.readouterr().err


def test_prefix_cache_reads_equal_full_cache_reads():
    """The sampler reads a growing cache prefix (bucketed and masked for one-token units, exact and unmasked for
    units of their own size); reading the whole cache under the full mask must give the same samples."""
    from tests.test_scale import var_generator
    from visgen.sampling.sampler import cache_reads, warm_up_units

    assert cache_reads([1] * 6, 6, bucket=4) == [(4, True)] * 4 + [(6, True)] * 2
    assert cache_reads([1, 4, 16], 21) == [(1, False), (5, False), (21, False)]
    # the Triton prefix kernel: every one-token unit offered the whole cache unmasked (one graph), others as before
    reads = cache_reads([1] * 3 + [2, 2, 2], 9, bucket=4, prefix_kernel=True)
    assert reads == [(9, False)] * 3 + [(8, True)] * 2 + [(9, True)]
    # before capturing the loop, the sampler runs units up to the last one of a new kind (compiles happen there)
    assert warm_up_units([1] * 3 + [2, 2, 2], reads) == 6
    assert warm_up_units([1] * 6, [(6, False)] * 6) == 2  # the first unit (class) and one token: the Triton path
    assert warm_up_units([1, 4, 16], cache_reads([1, 4, 16], 21)) == 3
    for gen, bucket in ((tiny_generator(adaln=True), 4), (var_generator(), 64)):
        s = gen.schedule
        fast = Sampler(gen, SamplingConfig(cfg_scale=2.0, seed=3))
        fast.reads = cache_reads(s.unit_sizes, s.seq_len, bucket)
        full = Sampler(gen, SamplingConfig(cfg_scale=2.0, seed=3))
        full.reads = [(s.seq_len, True)] * s.num_units
        labels = torch.tensor([0, 1, 2])
        assert torch.equal(fast.sample_tokens(labels), full.sample_tokens(labels))


def test_units_replayed_by_a_device_counter_equal_the_loop():
    """cuda_graph "unit" captures unit 0 and a later unit per cache read and replays those per unit, the unit read
    from a counter on the device (positions, guidance scale, noise key). Run eagerly here, that unit-by-unit path
    gives the loop's tokens (guidance ramped per unit, top-k and top-p on; the cache read in growing masked buckets);
    only schedules whose units are one size and read the unit before qualify."""
    from tests.test_diffusion_ar import diffusion_generator
    from tests.test_scale import var_generator
    from visgen.sampling.sampler import _BatchState, cache_reads, replays_units

    cfg = dict(cfg_scale=3.0, cfg_schedule="linear", seed=3, top_k=50, top_p=0.9)
    for gen in (tiny_generator(adaln=True), diffusion_generator(), diffusion_generator(unit_size=4)):
        sampler = Sampler(gen, SamplingConfig(**cfg))
        s = gen.schedule
        sampler.reads = cache_reads(s.unit_sizes, s.seq_len, bucket=16)  # several reads: several graphs on a GPU
        labels = torch.tensor([0, 1, 2])
        st = _BatchState(sampler.model, 3, sampler.guided, sampler.dtype, sampler.device)
        sampler._start(st, labels, torch.arange(3))
        by_unit = sampler._unit_by_unit(st).clone()
        assert int(st.k) == s.num_units and replays_units(s)
        sampler._start(st, labels, torch.arange(3))
        assert torch.equal(by_unit, sampler._loop(st))
    assert not replays_units(var_generator().schedule)  # scales: other sizes, inputs from the running f_hat
    with pytest.raises(ConfigError, match="cuda_graph must be true, false, loop or unit"):
        SamplingConfig(cuda_graph="yes")


@pytest.mark.parametrize("family", ["token", "var", "pixel"])
def test_blocks_compile_without_graph_breaks(family):
    """Regional compile traces every block whole (fullgraph) in training and in decoding (the pixel family's 3-axis
    RoPE included); the eager backend checks the tracing on the CPU, the GPU bench measures the inductor kernels."""
    from tests.test_pixel import pixel_generator
    from tests.test_scale import var_generator

    gen = {"token": tiny_generator, "var": var_generator, "pixel": lambda: pixel_generator("pixel")}[family]()
    gen.backbone.compile_blocks(backend="eager")
    size = gen.config.image_size
    tokens = gen.tokenizer.encode(torch.rand(2, 3, size, size) * 2 - 1)
    gen.loss(tokens, torch.tensor([0, 1])).backward()
    sampler = Sampler(gen, SamplingConfig(cfg_scale=2.0))
    assert sampler.sample_tokens([0, 1]).shape[0] == 2


def test_var_sampling_traces_few_block_graphs():
    """A next-scale sampler's blocks trace as few graphs as the shapes need: one for the 1-token first scale, one
    dynamic for the rest; none apart for the first block (its input once a view). Each graph is seconds of a first
    batch in every new process. (The last scale's graph apart under Inductor, whose read once ended at the cache's
    end, shows only with Inductor: results/first-batch-graphs-cpu.json counts both.)"""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from tests.test_scale import var_generator

    gen = var_generator().requires_grad_(False)  # as the sampler's own copy is
    torch._dynamo.reset()
    counters.clear()
    gen.backbone.compile_blocks(backend="eager")
    Sampler(gen, SamplingConfig(cfg_scale=2.0)).sample_tokens([0, 1])
    assert counters["stats"]["unique_graphs"] == 2


def test_activation_checkpointing_gives_the_same_gradients(tmp_path):
    from visgen.cli.train import main as train_main

    gen = tiny_generator(adaln=True).train()
    gen.config.class_dropout = 0.0
    tokens, labels = gen.tokenizer.encode(torch.rand(2, 3, 16, 16) * 2 - 1), torch.tensor([0, 1])
    params = [p for p in gen.parameters() if p.requires_grad]
    plain = torch.autograd.grad(gen.loss(tokens, labels), params)
    gen.backbone.activation_checkpointing = True
    recomputed = torch.autograd.grad(gen.loss(tokens, labels), params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, recomputed))
    # the trainer's switches: on for a generator, a clear error for a model without a transformer
    assert train_main(["generator", "--recipe", "generators/quickstart.yaml", f"train.out_dir={tmp_path / 'g'}",
                       "train.steps=3", "train.activation_checkpointing=true"]) == 0  # fmt: skip
    assert train_main(["tokenizer", "--recipe", "tokenizers/quickstart.yaml", f"train.out_dir={tmp_path / 't'}",
                       "train.steps=3", "train.compile=true"]) == 2  # fmt: skip


def test_compiled_sampling_equals_eager():
    """SamplingConfig(compile=True): inductor-compiled blocks and head give the eager sampler's tokens."""
    gen = tiny_generator(adaln=True)
    cfg = dict(cfg_scale=2.0, top_k=8, top_p=0.9, seed=5)
    eager = Sampler(gen, SamplingConfig(**cfg)).sample_tokens([0, 1, 2])
    compiled = Sampler(gen, SamplingConfig(**cfg, compile=True))
    assert torch.equal(compiled.sample_tokens([0, 1, 2]), eager)
    assert gen.backbone.blocks[0]._compiled_call_impl is None  # the caller's model is left as it was
    # the decoder compiles too (a copy: the caller's tokenizer stays eager)
    assert compiled.decoder is not gen.tokenizer and compiled.decoder.decoder._compiled_call_impl is not None
    assert gen.tokenizer.decoder._compiled_call_impl is None
    torch.testing.assert_close(gen.decode_tokens(eager, compiled.decoder), gen.decode_tokens(eager), atol=1e-4, rtol=0)


def test_triton_decode_kernel_equals_sdpa():
    """SamplingConfig(decode_kernel="triton"): the kernels (run by Triton's interpreter on the CPU) == SDPA on the
    prefix, for one-token steps and for speculative windows at per-row positions, and sampling through them gives the
    same tokens; on a CPU without the interpreter it is a clear error."""
    pytest.importorskip("triton")
    out = subprocess.run([sys.executable, "tests/triton_decode_check.py"], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path.cwd())})  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
    with pytest.raises(ConfigError, match="runs on a GPU"):
        Sampler(tiny_generator(), SamplingConfig(decode_kernel="triton"), device="cpu")
    with pytest.raises(ConfigError, match="sdpa or triton"):
        Sampler(tiny_generator(), SamplingConfig(decode_kernel="flash"), device="cpu")
    assert Sampler(tiny_generator(), SamplingConfig(), device="cpu").decode_kernel == "sdpa"  # auto, on a CPU


def test_compile_auto_is_on_only_where_it_repays(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from visgen.cli.sample import build_parser, sampler_settings
    from visgen.sampling import resolve_compile, use_compile_cache

    gen, cpu, cuda = tiny_generator(), torch.device("cpu"), torch.device("cuda")
    assert resolve_compile("auto", gen, cuda, 10_000) and not resolve_compile("auto", gen, cuda, 9_999)
    assert not resolve_compile("auto", gen, cpu, 10**6)  # never on a CPU
    pixel = SimpleNamespace(config=SimpleNamespace(schedule="pixel", head="dmol"))
    assert not resolve_compile("auto", pixel, cuda, 10**6) and resolve_compile(True, pixel, cpu, 0)
    mar = SimpleNamespace(config=SimpleNamespace(schedule="raster", head="diffusion"))
    assert resolve_compile("auto", mar, cuda, 10_000) and not resolve_compile("auto", mar, cpu, 10**6)
    nfig = SimpleNamespace(config=SimpleNamespace(schedule="next_frequency", head="categorical"))
    assert resolve_compile("auto", nfig, cuda, 10_000) and not resolve_compile("auto", nfig, cuda, 9_999)
    assert Sampler(gen, SamplingConfig(), device="cpu", images=10**6).cfg.compile is False
    assert Sampler(gen, SamplingConfig(compile=True), device="cpu").cfg.compile is True
    with pytest.raises(ConfigError, match="compile"):
        SamplingConfig(compile="sometimes")
    p = build_parser("sample.py")
    assert [p.parse_args(a).compile for a in ([], ["--compile"], ["--no-compile"])] == ["auto", True, False]
    graphs = [sampler_settings(p.parse_args(a))["cuda_graph"] for a in ([], *(["--cuda-graph", g] for g in
                                                                            ("unit", "loop", "off")))]  # fmt: skip
    assert graphs == [True, "unit", "loop", False]
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "before"))  # restored after the test
    folder = use_compile_cache(tmp_path / "compiled")
    assert folder.is_dir() and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder)
