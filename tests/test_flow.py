"""Scale family, FlowAR half: continuous multi-scale latents and the flow-matching head on the shared engine."""

import json

import pytest
import torch

from tests.test_tokenizers import TINY_KL
from visgen.generator import Generator, GeneratorConfig
from visgen.heads import FlowHead
from visgen.sampling import CounterNoise, Sampler, SamplingConfig
from visgen.schedules import ContinuousScaleSchedule
from visgen.tokenizers import KLTokenizer

TINY_FLOW = {"width": 32, "depth": 1, "heads": 2, "steps": 6}


def flowar_generator(seed=0) -> Generator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=4, schedule="flow_scale", head="flow",
                          head_options=TINY_FLOW, backbone={"preset": "tiny", "rope_axes": 3, "adaln": True})  # fmt: skip
    gen = Generator(cfg, tokenizer=KLTokenizer(TINY_KL).eval()).eval()
    for w in [b.ada[1].weight for b in gen.backbone.blocks] + [b.ada.weight for b in gen.head.blocks]:
        torch.nn.init.normal_(w, std=0.3)  # AdaLN starts at zero: make the condition matter
    return gen


def test_flow_head_learns_a_toy_distribution():
    torch.manual_seed(0)
    head = FlowHead(d_model=8, channels=2, width=64, depth=1, heads=2, steps=40)
    cond = torch.randn(2, 8)  # two "classes", each a fixed feature vector
    means = torch.tensor([[2.0, -1.0], [-2.0, 1.0]])
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(400):
        c = torch.randint(0, 2, (64,))
        x = means[c][:, None, :] + 0.5 * torch.randn(64, 3, 2)  # 3 tokens per unit
        loss = head.loss(x, cond[c][:, None, :].expand(-1, 3, -1), [3])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-50:]) / 50 < 0.7 * sum(losses[:50]) / 50
    with torch.no_grad():
        for k in range(2):
            h = cond[k].expand(500, 3, 8)
            x = head.sample(h, None, CounterNoise(1, torch.arange(500)), torch.tensor(0))
            assert torch.allclose(x.mean((0, 1)), means[k], atol=0.15)
            assert torch.allclose(x.std((0, 1)), torch.tensor([0.5, 0.5]), atol=0.12)


def test_continuous_scales_inputs_and_sequence():
    s = ContinuousScaleSchedule((8, 8), 4, [1, 2, 4, 8])
    lat = torch.randn(2, 4, 8, 8)
    seq = s.to_sequence(lat)
    assert seq.shape == (2, 85, 4) and torch.allclose(s.from_sequence(seq), lat)
    assert torch.allclose(seq[:, 0], lat.mean((2, 3)), atol=1e-6)  # scale 1 is the area mean


def test_teacher_inputs_equal_sampling_inputs():
    gen = flowar_generator()
    s, original, calls = gen.schedule, gen.schedule.next_input, []
    gen.schedule.next_input = lambda units: calls.append(([u.clone() for u in units], original(units))) or calls[-1][1]
    final = Sampler(gen, SamplingConfig(seed=1)).sample_tokens([0, 1])  # (B, C, 8, 8): the last scale
    gen.schedule.next_input = original
    pyramid = torch.cat(calls[-1][0] + [final.flatten(2).transpose(1, 2)], dim=1)  # every sampled unit
    fed = torch.cat([out for _, out in calls], dim=1)  # what the sampler fed the model for units 1..K-1
    assert torch.allclose(s.teacher_inputs(pyramid), fed, atol=1e-6)


def test_kv_cached_scale_decoding_equals_full_recompute():
    gen = flowar_generator()
    s = gen.schedule
    seq = s.to_sequence(torch.randn(3, 3, 8, 8))
    labels = torch.tensor([0, 2, 3])
    with torch.no_grad():
        full = gen.features(seq, labels)
        cache = gen.backbone.new_cache(3, s.seq_len, torch.float32, "cpu")
        units, cached = s.split_units(seq), []
        for k in range(s.num_units):
            cached.append(gen.decode_unit(k, s.next_input(units[:k]) if k else None, labels, cache))
    assert torch.allclose(torch.cat(cached, 1), full, atol=1e-4)


def test_flow_sampling_seeded_per_sample_and_guided():
    gen = flowar_generator()
    labels = torch.tensor([0, 1, 2, 3, 1])
    cfg = dict(cfg_scale=2.5, cfg_schedule="linear", seed=4)
    runs = [Sampler(gen, SamplingConfig(**cfg, batch_size=b)).sample_tokens(labels) for b in (1, 2, 5)]
    assert torch.allclose(runs[0], runs[1], atol=1e-5) and torch.allclose(runs[0], runs[2], atol=1e-5)
    assert not torch.allclose(Sampler(gen, SamplingConfig(seed=4)).sample_tokens(labels), runs[0], atol=1e-3)


def test_flowar_trains_end_to_end(tmp_path):
    from visgen.cli.sample import main as sample_main
    from visgen.cli.train import main as train_main

    overrides = ["model.tokenizer=asset:cifar10-kl", "model.schedule=flow_scale", "model.head=flow",
                 "model.head_options={width: 32, depth: 1, heads: 2, steps: 4}",
                 "model.backbone={preset: tiny, adaln: true, rope_axes: 3}", f"train.out_dir={tmp_path}",
                 "train.steps=40", "train.log_every=10", "train.lr=1e-3"]  # fmt: skip
    assert train_main(["generator", "--recipe", "generators/quickstart.yaml", *overrides]) == 0
    losses = [
        float(line.split('"loss": ')[1].split(",")[0]) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert losses[-1] < losses[0]
    assert (
        sample_main(["--checkpoint", str(tmp_path / "final"), "--num-images", "4", "--out", str(tmp_path / "s")]) == 0
    )

    # the result file of a trained generator: training, sampling and FD/IS figures from the files the steps wrote
    from eval.generator_result import main as result_main
    from visgen.cli.fid import main as fid_main

    report = tmp_path / "fd.json"
    assert fid_main(["--input", str(tmp_path / "final"), "--ref", "tests/data/cifar10/test", "--num-samples", "10",
                     "--no-kid", "--no-prc", "--report", str(report), "--cache-dir", str(tmp_path / "c")]) == 0  # fmt: skip
    samples = next((tmp_path / "s").iterdir())
    assert result_main(["--run", str(tmp_path), "--samples", str(samples), "--fd-report", str(report),
                        "--name", "flow", "--results-dir", str(tmp_path / "r")]) == 0  # fmt: skip
    m = json.loads((tmp_path / "r" / "flow.json").read_text())["metrics"]
    assert m["steps"] == 40 and m["final_train_loss"] == pytest.approx(losses[-1]) and m["train_minutes"] > 0
    assert m["sample_num_images"] == 4 and m["fd_num_images"] == 10 and m["fd_cifar10cls"] > 0
    assert (tmp_path / "r" / "flow.png").is_file()
    assert result_main(["--run", str(tmp_path / "missing"), "--samples", str(samples), "--fd-report", str(report),
                        "--name", "x", "--results-dir", str(tmp_path / "r")]) == 2  # fmt: skip
