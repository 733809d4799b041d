"""Continuous tokens one at a time: MAR's diffusion head, a per-token flow head, units of several raster tokens."""

import copy
import json
import math

import pytest
import torch

from tests.test_tokenizers import TINY_KL, TINY_VQ
from visgen.checkpoint import load_model
from visgen.config import ConfigError
from visgen.generator import Generator, GeneratorConfig
from visgen.heads import DiffusionHead, FlowHead, FlowMLPHead
from visgen.heads.diffusion import cosine_betas
from visgen.sampling import CounterNoise, Sampler, SamplingConfig
from visgen.schedules import RasterSchedule, Schedule
from visgen.tokenizers import KLTokenizer, VQTokenizer

CENTERS, WEIGHT, STD = torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), 0.7, 0.3


def mixture(n: int) -> torch.Tensor:
    """Two modes in 2-D: weight 0.3 at (-2, 0), 0.7 at (2, 1), std 0.3. A head trained for 600 steps on the CPU
    (seconds) gets the weight within 0.1, the modes within 0.2 and their spread within 0.12."""
    mode = (torch.rand(n) < WEIGHT).long()
    return CENTERS[mode] + STD * torch.randn(n, 2)


def train_toy(head, steps: int = 600) -> torch.Tensor:
    torch.manual_seed(0)
    z = torch.randn(1, 1, 8)
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    for _ in range(steps):
        loss = head.loss(mixture(128)[:, None], z.expand(128, 1, 8))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return z


def draw(head, z, n: int = 2000, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return head.sample(z.expand(n, 1, 8), 1.0, CounterNoise(seed, torch.arange(n)), torch.tensor(0))[:, 0]


def check_mixture(x: torch.Tensor, weight_tol: float = 0.1, mean_tol: float = 0.2, std_tol: float = 0.12):
    right = x[:, 0] > 0
    assert abs(right.float().mean().item() - WEIGHT) < weight_tol
    for mode, rows in ((1, right), (0, ~right)):
        assert torch.allclose(x[rows].mean(0), CENTERS[mode], atol=mean_tol)
        assert torch.allclose(x[rows].std(0), torch.full((2,), STD), atol=std_tol)


@pytest.fixture(scope="module")
def toy_diffusion():
    torch.manual_seed(0)
    head = DiffusionHead(8, 2, width=64, depth=2, steps=100)
    return head, train_toy(head)


def test_diffusion_head_learns_a_two_mode_mixture(toy_diffusion):
    head, z = toy_diffusion
    check_mixture(draw(head, z))
    # respaced to 25 steps, the same distribution within the same tolerances
    fast = DiffusionHead(8, 2, width=64, depth=2, steps=25)
    fast.load_state_dict(head.state_dict())
    check_mixture(draw(fast, z))
    # the trained head told to sample with 25 steps is that head, step for step
    resampled = copy.deepcopy(head)
    resampled.set_sampling_steps(25)
    assert torch.equal(draw(resampled, z, n=64), draw(fast, z, n=64))


def test_ddim_steps_draw_no_noise_but_the_start(toy_diffusion):
    """DDIM (head_options.solver ddim) draws only the starting noise, which the temperature scales: its samples at
    temperature 0.5 are its samples from a start drawn half as wide at temperature 1, whatever the other noise
    (DDPM's differ); CSpD's densities need DDPM; an unknown solver is a clear error."""
    head, z = toy_diffusion
    ddim = copy.deepcopy(head)
    ddim.set_solver("ddim")
    ddim.set_sampling_steps(10)
    noise = CounterNoise(0, torch.arange(4))

    class HalfStart:  # the start half as wide, every later draw moved
        def normal(self, step, shape, stream=0):
            x = noise.normal(step, shape, stream)
            return 0.5 * x if stream == 0 else x + 1

    h, step = z.expand(4, 1, 8), torch.tensor(0)
    with torch.no_grad():
        for solver in ("ddim", "ddpm"):
            ddim.set_solver(solver)
            cold = ddim.sample(h, 1.0, noise, step, temperature=0.5)
            same = torch.allclose(cold, ddim.sample(h, 1.0, HalfStart(), step), atol=1e-6)
            assert same == (solver == "ddim")
    ddim.set_solver("ddim")
    for densities in (lambda: ddim.final_gaussian(h, 1.0, noise, step), lambda: ddim.trajectory(h, 1.0, noise, step),
                      lambda: ddim.step_gaussians(h, torch.zeros(11, 4, 1, 2), 1.0)):  # fmt: skip
        with pytest.raises(ConfigError, match="needs the diffusion head's ddpm solver"):
            densities()
    with pytest.raises(ConfigError, match="head_options.solver must be one of ddpm, ddim, got 'euler'"):
        DiffusionHead(8, 2, solver="euler")


def test_ddim_lands_nearer_in_fewer_steps_on_a_gaussian_whose_noise_is_known():
    """On data N(mu, s^2), a head whose noise prediction is the exact E[eps | x_t] (its variance at the posterior's):
    DDIM's deterministic map approaches mu + s e (the probability flow's) as its steps grow (its gap halves with
    twice the steps), its samples' mean and spread are nearer the data's than DDPM's at 10 steps each, and at 40
    steps nearer than DDPM's at 100."""
    mu, s, n = 1.5, 0.3, 4000
    ab_full = torch.cumprod(1 - cosine_betas(1000), 0).float()

    class ExactNoise(torch.nn.Module):
        def prepare(self, h, times):
            return times

        def step(self, x, times, i):
            ab = ab_full[times[i].long()]
            eps = (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s**2 + 1 - ab)
            return torch.cat([eps, -torch.ones_like(eps)], -1)  # v = -1: the posterior's variance

    def sample(solver, steps, count=n):
        head = DiffusionHead(8, 1, steps=steps, solver=solver)
        head.net = ExactNoise()
        noise = CounterNoise(0, torch.arange(count))
        start = noise.normal(torch.tensor(0), (1, 1), stream=0).reshape(-1)
        return head.sample(torch.zeros(count, 1, 8), 1.0, noise, torch.tensor(0))[:, 0, 0], start

    gap = {}
    for steps in (10, 20, 40):
        x, e = sample("ddim", steps, 64)
        gap[steps] = float((x - (mu + s * e)).abs().max())
    assert 1.7 < gap[10] / gap[20] < 2.3 and 1.7 < gap[20] / gap[40] < 2.3  # first order in the steps
    moments = lambda x: abs(x.mean().item() - mu) + abs(x.std().item() - s)
    assert moments(sample("ddim", 10)[0]) < moments(sample("ddpm", 10)[0])
    assert moments(sample("ddim", 40)[0]) < moments(sample("ddpm", 100)[0])


def test_without_x0_clipping_a_briefly_trained_head_diverges(toy_diffusion):
    head, z = toy_diffusion
    plain = DiffusionHead(8, 2, width=64, depth=2, steps=100, x0_clip=0.0)
    plain.load_state_dict(head.state_dict())
    assert draw(plain, z).abs().mean() > 10 * draw(head, z).abs().mean()


def test_flow_mlp_head_learns_a_two_mode_mixture():
    torch.manual_seed(0)
    head = FlowMLPHead(8, 2, width=64, depth=2, steps=50)
    check_mixture(draw(head, train_toy(head)))


@pytest.mark.parametrize("cls", [DiffusionHead, FlowMLPHead])
def test_guidance_scale_one_equals_the_conditional_head(cls):
    torch.manual_seed(0)
    head = cls(8, 3, width=16, depth=1, steps=5)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    h = torch.randn(2, 4, 8)
    noise = CounterNoise(3, torch.arange(2))
    cond = head.sample(h, 1.0, noise, torch.tensor(1))
    guided = head.sample(torch.cat([h, torch.randn(2, 4, 8)]), torch.tensor([1.0]), noise, torch.tensor(1), guided=True)
    assert torch.allclose(guided, cond, atol=1e-5)
    strong = head.sample(torch.cat([h, torch.randn(2, 4, 8)]), torch.tensor([3.0]), noise, torch.tensor(1), guided=True)
    assert not torch.allclose(strong, cond, atol=1e-3)


def test_stacked_modulation_equals_each_blocks_own():
    torch.manual_seed(0)
    net = DiffusionHead(d_model=8, channels=3, width=16, depth=3, steps=4).net
    for p in net.parameters():  # AdaLN layers start at zero: give them weights
        torch.nn.init.normal_(p, std=0.3)
    x, c = torch.randn(5, 3), torch.randn(5, 16)
    h = net.x_in(x)
    for b in net.blocks:
        shift, scale, gate = b.ada(c).chunk(3, dim=-1)
        h = h + gate * b.mlp(b.norm(h) * (1 + scale) + shift)
    shift, scale = net.final_ada(c).chunk(2, dim=-1)
    want = net.out(net.final_norm(h) * (1 + scale) + shift)
    torch.testing.assert_close(net.trunk(x, c), want)
    torch.testing.assert_close(net.trunk(x, c, net.modulation()), want)


def test_log_density_is_each_steps_gaussian(toy_diffusion):
    head, z = toy_diffusion
    h = z.expand(5, 2, 8)
    tr = head.trajectory(h, 1.0, CounterNoise(0, torch.arange(5)), torch.tensor(2), temperature=0.9)
    steps = len(head.sample_schedule)
    assert tr["xs"].shape == (steps + 1, 5, 2, 2) and tr["mean"].shape == (steps, 5, 2, 2)
    assert torch.equal(tr["xs"][-1], head.sample(h, 1.0, CounterNoise(0, torch.arange(5)), torch.tensor(2),
                                                 temperature=0.9))  # fmt: skip
    logp = head.log_density(tr["xs"], tr["mean"], tr["log_var"], temperature=0.9)
    assert logp.shape == (steps - 1, 5, 2)
    for i in (0, steps // 2, steps - 2):
        direct = torch.distributions.Normal(tr["mean"][i], torch.exp(0.5 * tr["log_var"][i]) * 0.9)
        assert torch.allclose(logp[i], direct.log_prob(tr["xs"][i + 1]).sum(-1), atol=1e-4)
    # a verifier evaluates its own Gaussians on the drafted path: on its own path they are the ones it drew from
    mean, log_var = head.step_gaussians(h, tr["xs"], 1.0)
    assert torch.allclose(mean, tr["mean"], atol=1e-5) and torch.allclose(log_var, tr["log_var"], atol=1e-5)


# ---- the generator: continuous raster tokens, units of several tokens ----------------------------------------------


def diffusion_generator(unit_size: int = 1, head: str = "diffusion", seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=4, schedule="raster", head=head, unit_size=unit_size,
                          head_options={"width": 16, "depth": 1, "steps": 4}, backbone="tiny")  # fmt: skip
    gen = Generator(cfg, tokenizer=KLTokenizer(TINY_KL).eval()).eval()
    for p in gen.head.parameters():  # a non-trivial head (its output starts at zero)
        torch.nn.init.normal_(p, std=0.1)
    return gen


@pytest.mark.parametrize("unit_size", [1, 4])
def test_kv_cached_decoding_equals_full_recompute(unit_size):
    gen = diffusion_generator(unit_size)
    s, B = gen.schedule, 3
    assert s.unit_sizes == [unit_size] * (64 // unit_size) and s.is_causal == (unit_size == 1)
    seq = s.to_sequence(torch.randn(B, 3, 8, 8))
    labels = torch.tensor([0, 2, 3])
    with torch.no_grad():
        full = gen.features(seq, labels)
        cache = gen.backbone.new_cache(B, s.seq_len, torch.float32, "cpu")
        units = s.split_units(seq)
        cached = [gen.decode_unit(k, s.next_input(units[:k]) if k else None, labels, cache) for k in range(s.num_units)]
    assert torch.allclose(torch.cat(cached, 1), full, atol=1e-4)
    generic = Schedule.teacher_inputs(s, seq)  # next_input unit by unit = what training reads
    assert torch.equal(s.teacher_inputs(seq), generic)


@pytest.mark.parametrize("head", ["diffusion", "flow_mlp"])
def test_same_seed_same_images_at_any_batch_size(head):
    gen = diffusion_generator(head=head)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    runs = [
        Sampler(gen, SamplingConfig(cfg_scale=2.0, seed=5, batch_size=bs)).sample_tokens(labels) for bs in (1, 3, 8)
    ]
    assert runs[0].shape == (8, 3, 8, 8)
    assert torch.allclose(runs[0], runs[1], atol=1e-5) and torch.allclose(runs[0], runs[2], atol=1e-5)
    assert not torch.allclose(Sampler(gen, SamplingConfig(seed=6)).sample_tokens(labels), runs[0], atol=1e-3)


@pytest.mark.parametrize("head", ["diffusion", "flow_mlp"])
def test_head_steps_override_the_recipes_on_the_samplers_copy(head):
    """SamplingConfig(head_steps=N) samples as the same weights with N head steps in their recipe would; the caller's
    model keeps its own; other settings are clear errors."""
    gen = diffusion_generator(head=head)
    cfg = dict(cfg_scale=2.0, seed=2)
    fast = Sampler(gen, SamplingConfig(**cfg, head_steps=2)).sample_tokens([0, 1, 2])
    assert gen.head.steps == 4
    built = copy.deepcopy(gen)
    built.head.set_sampling_steps(2)
    assert torch.equal(fast, Sampler(built, SamplingConfig(**cfg)).sample_tokens([0, 1, 2]))
    assert not torch.allclose(fast, Sampler(gen, SamplingConfig(**cfg)).sample_tokens([0, 1, 2]), atol=1e-3)
    with pytest.raises(ConfigError, match="head_steps must be an integer >= 0"):
        SamplingConfig(head_steps=-1)
    if head == "diffusion":
        with pytest.raises(ConfigError, match="between 1 and the head's train_steps"):
            Sampler(gen, SamplingConfig(head_steps=5000))
    with pytest.raises(ConfigError, match="the categorical head draws a token in one step"):
        Sampler(load_model("asset:cifar10-token-ar"), SamplingConfig(head_steps=8), device="cpu")


@pytest.mark.parametrize("cls", [FlowMLPHead, FlowHead])
def test_a_flow_heads_temperature_scales_where_its_path_starts(cls):
    """Both flow heads at temperature 0.5 give what they give at 1 from a start drawn half as wide; 1 is the
    default."""
    torch.manual_seed(0)
    head = cls(8, 3, width=16, depth=1, steps=3)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    h, step, noise = torch.randn(2, 4, 8), torch.tensor(1), CounterNoise(3, torch.arange(2))

    class HalfStart:
        def normal(self, step, shape, stream=0):
            return 0.5 * noise.normal(step, shape, stream)

    with torch.no_grad():
        cold = head.sample(h, 1.0, noise, step, temperature=0.5)
        assert torch.allclose(cold, head.sample(h, 1.0, HalfStart(), step), atol=1e-6)
        assert not torch.allclose(cold, head.sample(h, 1.0, noise, step), atol=1e-3)
        assert torch.equal(head.sample(h, 1.0, noise, step), head.sample(h, 1.0, noise, step, temperature=1.0))


def test_heun_is_second_order_on_a_flow_whose_end_is_known():
    """FlowSteps.integrate on the exact velocity of the linear path from N(0, 1) (t = 1) to N(mu, s^2) (t = 0), whose
    flow carries noise e to mu + s e: Euler's error halves with twice the steps, Heun's falls by about four, and Heun
    at 8 steps (16 passes) lands nearer than Euler at 64."""
    from visgen.heads.flow import FlowSteps

    mu, s = 1.5, 0.3

    def exact(x, t):
        var = (1 - t) ** 2 * s**2 + t**2  # x_t = (1 - t) x0 + t e
        r = x - (1 - t) * mu
        return t * r / var - (mu + (1 - t) * s**2 * r / var)  # E[e | x_t] - E[x0 | x_t]

    e = torch.linspace(-2, 2, 9, dtype=torch.float64)
    err = {}
    for solver in ("euler", "heun"):
        for steps in (8, 16, 32, 64):
            f = FlowSteps()
            f.set_sampling_steps(steps)
            f.set_solver(solver)
            times = f.times("cpu").double()
            end = f.integrate(e, lambda x, i, times=times: exact(x, times[i]))
            err[solver, steps] = float((end - (mu + s * e)).abs().max())
    assert 1.7 < err["euler", 16] / err["euler", 32] < 2.3
    assert 3.3 < err["heun", 16] / err["heun", 32] < 4.7
    assert err["heun", 8] < err["euler", 64]


@pytest.mark.parametrize("head", ["flow_mlp", "flow"])
def test_head_solver_heun_from_the_recipe_or_the_sampling_settings(head):
    """SamplingConfig(head_solver="heun") samples as the same weights with solver heun in their recipe would, two
    head passes a step; the caller's model keeps its own; a head without a solver and an unknown solver are clear
    errors."""
    gen = diffusion_generator(unit_size=4, head=head)
    assert gen.head.solver == "euler"
    cfg = dict(cfg_scale=2.0, seed=2)
    heun = Sampler(gen, SamplingConfig(**cfg, head_solver="heun")).sample_tokens([0, 1, 2])
    assert gen.head.solver == "euler"
    recipe = copy.deepcopy(gen.config)
    recipe.head_options = {**recipe.head_options, "solver": "heun"}
    built = Generator(recipe, tokenizer=gen.tokenizer).eval()
    built.load_state_dict(gen.state_dict())
    assert built.head.solver == "heun"
    assert torch.equal(heun, Sampler(built, SamplingConfig(**cfg)).sample_tokens([0, 1, 2]))
    euler = Sampler(gen, SamplingConfig(**cfg)).sample_tokens([0, 1, 2])
    assert not torch.allclose(heun, euler, atol=1e-3)
    assert torch.equal(euler, Sampler(built, SamplingConfig(**cfg, head_solver="euler")).sample_tokens([0, 1, 2]))
    passes = []
    net = gen.head.net if head == "flow_mlp" else gen.head
    name = "step" if head == "flow_mlp" else "velocity"
    inner = getattr(net, name)
    setattr(net, name, lambda *a: passes.append(1) or inner(*a))
    Sampler(gen, SamplingConfig(head_solver="heun")).sample_tokens([0])
    assert len(passes) == 2 * gen.head.steps * gen.schedule.num_units
    with pytest.raises(ConfigError, match=r"head_solver must be '' \(the recipe's\), euler, heun, ddpm, ddim, got 'rk4'"):
        SamplingConfig(head_solver="rk4")
    with pytest.raises(ConfigError, match="head solver must be one of ddpm, ddim, got 'heun'"):
        Sampler(diffusion_generator(), SamplingConfig(head_solver="heun"))
    with pytest.raises(ConfigError, match="the categorical head has no solver to choose"):
        Sampler(load_model("asset:cifar10-token-ar"), SamplingConfig(head_solver="ddim"), device="cpu")
    with pytest.raises(ConfigError, match="head_options.solver must be one of euler, heun, got 'midpoint'"):
        FlowMLPHead(8, 2, solver="midpoint")


def test_head_solver_ddim_from_the_recipe_or_the_sampling_settings():
    """SamplingConfig(head_solver="ddim") samples as the same weights with solver ddim in their recipe would, the
    same images at any batch size; the caller's model keeps DDPM; CSpD with DDIM is a clear error."""
    gen = diffusion_generator()
    cfg = dict(cfg_scale=2.0, seed=2)
    ddim = [Sampler(gen, SamplingConfig(**cfg, head_solver="ddim", batch_size=b)).sample_tokens([0, 1, 2]) for b in (1, 3)]
    assert torch.allclose(ddim[0], ddim[1], atol=1e-5) and gen.head.solver == "ddpm"
    recipe = copy.deepcopy(gen.config)
    recipe.head_options = {**recipe.head_options, "solver": "ddim"}
    built = Generator(recipe, tokenizer=gen.tokenizer).eval()
    built.load_state_dict(gen.state_dict())
    assert torch.equal(ddim[1], Sampler(built, SamplingConfig(**cfg)).sample_tokens([0, 1, 2]))
    assert not torch.allclose(ddim[1], Sampler(gen, SamplingConfig(**cfg)).sample_tokens([0, 1, 2]), atol=1e-3)
    with pytest.raises(ConfigError, match="speculative='cspd' needs the diffusion head's ddpm solver, not 'ddim'"):
        Sampler(gen, SamplingConfig(head_solver="ddim", speculative="cspd"), draft=gen)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="needs a continuous tokenizer"):
        Generator(GeneratorConfig(tokenizer="-", image_size=16, head="diffusion", backbone="tiny"),
                  tokenizer=VQTokenizer(TINY_VQ))  # fmt: skip
    with pytest.raises(ConfigError, match="unit_size must be at least 1 and divide the 8 x 8 = 64 tokens, got 5"):
        diffusion_generator(unit_size=5)
    with pytest.raises(ConfigError, match="steps must be between 1 and train_steps"):
        DiffusionHead(8, 2, steps=0)
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        FlowMLPHead(8, 2, steps=0)
    with pytest.raises(ConfigError, match="head_options for the diffusion head"):
        Generator(GeneratorConfig(tokenizer="-", image_size=16, head="diffusion", backbone="tiny",
                                  head_options={"widht": 8}), tokenizer=KLTokenizer(TINY_KL))  # fmt: skip
    with pytest.raises(ConfigError, match="unit_size applies to the raster schedule"):
        Generator(GeneratorConfig(tokenizer="-", image_size=16, head="flow", schedule="flow_scale", unit_size=2,
                                  backbone={"preset": "tiny", "rope_axes": 3}), tokenizer=KLTokenizer(TINY_KL))  # fmt: skip


@pytest.mark.parametrize("head, unit_size", [("diffusion", 1), ("flow_mlp", 4)])
def test_cifar_cut_trains_and_samples_end_to_end(tmp_path, head, unit_size):
    from visgen.cli.sample import main as sample_main
    from visgen.cli.train import main as train_main

    out = tmp_path / "run"
    overrides = ["model.tokenizer=asset:cifar10-kl", f"model.head={head}", f"model.unit_size={unit_size}",
                 "model.head_options={width: 32, depth: 1, steps: 8}", "model.backbone={preset: tiny}",
                 f"train.out_dir={out}", "train.steps=30", "train.log_every=10", "train.lr=1e-3"]  # fmt: skip
    assert train_main(["generator", "--recipe", "generators/quickstart.yaml", *overrides]) == 0
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)
    summary = json.loads((out / "final" / "metrics.json").read_text())
    assert math.isfinite(summary["metrics"]["loss"])  # the validation loss on the held-out cut
    assert sample_main(["--checkpoint", str(out / "final"), "--num-images", "4", "--out", str(tmp_path / "s")]) == 0
    grid = next((tmp_path / "s").iterdir()) / "grid.png"
    assert grid.is_file()
    # fewer head steps: another folder, named by them
    argv = ["--checkpoint", str(out / "final"), "--num-images", "4", "--out", str(tmp_path / "s"), "--head-steps", "2"]
    assert sample_main(argv) == 0
    assert (next((tmp_path / "s").glob("*-hs2")) / "grid.png").is_file()
    # another solver (Heun's steps, DDIM's): another folder again, named by the solver
    solver = "heun" if head == "flow_mlp" else "ddim"
    assert sample_main([*argv, "--head-solver", solver]) == 0
    assert (next((tmp_path / "s").glob(f"*-hs2-{solver}")) / "grid.png").is_file()
    # save / load round trip: the same weights, the same samples
    gen = load_model(out / "final")
    gen.save_pretrained(tmp_path / "again")
    again = load_model(tmp_path / "again")
    a = Sampler(gen, SamplingConfig(seed=1)).sample_tokens([0, 1])
    assert torch.equal(a, Sampler(again, SamplingConfig(seed=1)).sample_tokens([0, 1]))
    assert isinstance(gen.schedule, RasterSchedule) and gen.schedule.unit_size == unit_size


def test_images_decode_from_a_low_precision_sampler():
    """The head's fp32 latents meet the sampler's bf16 copy of the decoder."""
    gen = diffusion_generator()
    images = Sampler(gen, SamplingConfig(dtype="bf16", seed=0)).sample_images([0, 1])
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32 and torch.isfinite(images).all()


def test_compiled_denoising_step_equals_eager():
    """SamplingConfig(compile=True) compiles the diffusion head's denoising step once for every step (the step index
    a tensor), on the sampler's copy of the model; the latents are the eager sampler's."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # graphs another test compiled in this process would count against the budget below
    gen = diffusion_generator()
    cfg = dict(cfg_scale=2.0, seed=3)
    eager = Sampler(gen, SamplingConfig(**cfg)).sample_tokens([0, 1, 2])
    compiled = Sampler(gen, SamplingConfig(**cfg, compile=True))
    counters.clear()
    torch.testing.assert_close(compiled.sample_tokens([0, 1, 2]), eager, atol=1e-4, rtol=1e-4)
    assert hasattr(compiled.model.head, "_compiled_step") and not hasattr(gen.head, "_compiled_step")
    # one graph for the blocks and one for every denoising step (not one per step), none added by a second batch
    assert counters["stats"]["unique_graphs"] <= 2 < len(gen.head.sample_schedule)
    counters.clear()
    compiled.sample_tokens([0, 1, 2])
    assert counters["stats"]["unique_graphs"] == 0
