"""The parallel schedule (PAR): several distant tokens a step, for discrete and continuous tokens."""

import pytest
import torch

from tests.test_tokenizers import TINY_KL, TINY_VQ
from visgen.checkpoint import load_model
from visgen.config import ConfigError
from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import Sampler, SamplingConfig
from visgen.schedules import ParallelSchedule, Schedule
from visgen.tokenizers import KLTokenizer, VQTokenizer


def par_generator(head: str = "categorical", regions: int = 4, seed: int = 0) -> Generator:
    """A tiny generator on an 8 x 8 grid (16 px images) in PAR order, its weights spread so outputs vary."""
    torch.manual_seed(seed)
    tok = VQTokenizer(TINY_VQ) if head == "categorical" else KLTokenizer(TINY_KL)
    options = {} if head == "categorical" else {"width": 16, "depth": 1, "steps": 4}
    cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=4, schedule="parallel", regions=regions, head=head,
                          head_options=options, backbone="tiny")  # fmt: skip
    gen = Generator(cfg, tokenizer=tok.eval()).eval()
    for p in gen.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return gen


def test_the_order_visits_every_position_once_and_groups_distant_tokens():
    s = ParallelSchedule((8, 8), regions=4)
    assert sorted(s.order.tolist()) == list(range(64))
    assert s.unit_sizes == [1, 1, 1, 1] + [4] * 15 and s.num_units == 19
    assert s.order[:4].tolist() == [0, 4, 32, 36]  # the first token of each 4 x 4 region, one a step
    assert s.order[4:8].tolist() == [1, 5, 33, 37]  # then one place of every region together: never adjacent
    assert torch.equal(s.positions[4], torch.tensor([0, 1])) and torch.equal(s.positions[6], torch.tensor([4, 1]))
    grid = torch.arange(64).reshape(1, 8, 8)
    assert torch.equal(s.from_sequence(s.to_sequence(grid)), grid)
    latents = torch.randn(2, 3, 8, 8)
    c = ParallelSchedule((8, 8), regions=16, continuous=True, channels=3)
    assert c.unit_sizes == [1] * 16 + [16] * 3 and torch.equal(c.from_sequence(c.to_sequence(latents)), latents)
    seq = s.to_sequence(torch.randint(0, 9, (2, 8, 8)))
    assert torch.equal(s.teacher_inputs(seq), Schedule.teacher_inputs(s, seq))  # next_input unit by unit


@pytest.mark.parametrize("head", ["categorical", "diffusion"])
def test_a_token_sees_exactly_what_the_schedule_says(head):
    """Perturbing one unit's tokens changes the features of later units only; the cached decode equals the full
    teacher-forced pass."""
    gen = par_generator(head)
    s, B = gen.schedule, 2
    grid = torch.randint(0, 32, (B, 8, 8)) if head == "categorical" else torch.randn(B, 3, 8, 8)
    seq, labels = s.to_sequence(grid), torch.tensor([0, 3])
    with torch.no_grad():
        full = gen.features(seq, labels)
        for k in (2, 3, 6):  # a group-0 token, the last one, and a group
            off, n = s.unit_offsets[k], s.unit_sizes[k]
            bent = seq.clone()
            bent[:, off : off + n] = (bent[:, off : off + n] + 1) % 32 if head == "categorical" else -bent[:, off : off + n]
            moved = (gen.features(bent, labels) - full).abs().flatten(2).amax(-1).amax(0) > 1e-6  # per position
            assert not moved[: off + n].any()  # unit k's own outputs read only earlier units
            assert moved[off + n :].any()
        cache = gen.backbone.new_cache(B, s.seq_len, torch.float32, "cpu")
        units = s.split_units(seq)
        cached = [gen.decode_unit(k, s.next_input(units[:k]) if k else None, labels, cache) for k in range(s.num_units)]
    assert torch.allclose(torch.cat(cached, 1), full, atol=1e-4)


@pytest.mark.parametrize("head", ["categorical", "diffusion", "flow_mlp"])
def test_sampling_is_cached_seeded_and_batch_size_free(head, tmp_path):
    gen = par_generator(head)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    kw = dict(cfg_scale=2.0, seed=3, top_k=20) if head == "categorical" else dict(cfg_scale=2.0, seed=3)
    one, three = (Sampler(gen, SamplingConfig(batch_size=bs, **kw)).sample_tokens(labels) for bs in (1, 3))
    assert torch.allclose(one.float(), three.float(), atol=1e-5)
    eager = Sampler(gen, SamplingConfig(batch_size=3, cuda_graph=False, **kw)).sample_tokens(labels)
    assert torch.allclose(eager.float(), three.float(), atol=1e-5)
    gen.save_pretrained(tmp_path / "par")
    back = load_model(tmp_path / "par")
    assert back.config.schedule == "parallel" and back.schedule.unit_sizes == gen.schedule.unit_sizes
    again = Sampler(back, SamplingConfig(batch_size=3, **kw)).sample_tokens(labels)
    assert torch.allclose(again.float(), three.float(), atol=1e-5)


def test_bad_settings_are_clear_errors():
    assert ParallelSchedule((8, 8), regions=8).unit_sizes == [1] * 8 + [8] * 7  # 2 x 4 regions of 4 x 2 tokens
    assert ParallelSchedule((8, 8), regions=8).order[:2].tolist() == [0, 2]
    with pytest.raises(ConfigError, match="regions must cut the 8 x 8 token grid into equal rectangles.*got 3"):
        par_generator(regions=3)
    with pytest.raises(ConfigError, match="got 64"):
        par_generator(regions=64)  # one token a region: nothing left to draw in parallel
    from tests.test_scale import TINY_MSVQ
    from visgen.tokenizers.msvq import MultiScaleVQTokenizer

    msvq = MultiScaleVQTokenizer(TINY_MSVQ)
    with pytest.raises(ConfigError, match="parallel schedule reads one token grid"):
        Generator(GeneratorConfig(tokenizer="-", image_size=16, schedule="parallel", backbone="tiny"), tokenizer=msvq)
    with pytest.raises(ConfigError, match="video models .* take schedule: next_frame"):
        Generator(GeneratorConfig(tokenizer="-", image_size=16, schedule="parallel", frames=4, head="flow",
                                  backbone="tiny"), tokenizer=KLTokenizer(TINY_KL))  # fmt: skip


@pytest.mark.parametrize("recipe, tokenizer", [("cifar10-token-par", "asset:cifar10-vq"),
                                               ("cifar10-diffusion-par", "asset:cifar10-kl")])  # fmt: skip
def test_the_recipes_train_and_sample_on_the_cifar_cut(recipe, tokenizer, tmp_path, cifar_train, cifar_test):
    import json
    import math

    from visgen.cli.sample import main as sample_main
    from visgen.cli.train import main as train_main

    out = tmp_path / "run"
    overrides = [f"data.path={cifar_train}", f"val.path={cifar_test}", "data.limit=128", "val.limit=32",
                 "model.backbone={preset: tiny}", "model.head_options={width: 32, depth: 1, steps: 4}",
                 f"train.out_dir={out}", "train.steps=25", "train.batch_size=16", "train.warmup_steps=0",
                 "train.log_every=5", "train.eval_every=0", "train.sample_every=0", "train.ckpt_every=0",
                 "train.num_workers=0", "train.lr=1e-3", "train.val_images=32", "train.log_with=[]"]  # fmt: skip
    if "token" in recipe:
        overrides.remove("model.head_options={width: 32, depth: 1, steps: 4}")
    assert train_main(["generator", "--recipe", f"generators/{recipe}.yaml", *overrides]) == 0
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)
    gen = load_model(out / "final")
    assert gen.config.tokenizer == tokenizer and gen.schedule.num_units == 19
    assert sample_main(["--checkpoint", str(out / "final"), "--num-images", "4", "--out", str(tmp_path / "s")]) == 0


@pytest.mark.parametrize("kind", ["token", "diffusion"])
def test_the_parallel_recipes_differ_from_raster_only_in_the_order(kind):
    """eval/gpu/parallel.sh compares each parallel recipe with its raster recipe at equal minutes: the model, data and
    training must be the same, the schedule (and its regions, the raster unit size) and the run folder aside."""
    import yaml

    raster, par = (yaml.safe_load(open(f"generators/cifar10-{kind}-{s}.yaml")) for s in ("ar", "par"))
    for recipe in (raster, par):
        for key in ("schedule", "regions", "unit_size"):
            recipe["model"].pop(key, None)
        recipe["train"].pop("out_dir")
    assert raster == par
