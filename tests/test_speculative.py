"""Speculative decoding: exactness against enumerated target distributions, greedy equality, batch-size
invariance, rollback, CSpD's rule on a Gaussian mixture, and clear errors."""

import copy
import itertools
import json
import math

import pytest
import torch
from scipy.stats import chi2

from tests.test_diffusion_ar import diffusion_generator
from tests.test_engine import tiny_generator
from tests.test_scale import var_generator
from tests.test_tokenizers import TINY_KL, TINY_VQ
from visgen.config import ConfigError
from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import Sampler, SamplingConfig, speculative
from visgen.sampling.feature_draft import FeatureDraft
from visgen.tokenizers import KLTokenizer, VQTokenizer
from visgen.tokenizers.vq import VQConfig


def feature_draft(gen: Generator, seed: int, std: float = 0.5) -> FeatureDraft:
    """An untrained feature draft for ``gen`` (exactness holds for any draft)."""
    torch.manual_seed(seed)
    draft = FeatureDraft.for_target(gen).eval()
    torch.nn.init.normal_(draft.fc.weight, std=std)
    return draft


def draft_for(method: str, gen: Generator, seed: int, std: float = 0.5):
    return feature_draft(gen, seed, std) if method == "feature" else sibling(gen, seed, std)


def sibling(gen: Generator, seed: int, std: float = 0.5, **config) -> Generator:
    """Another generator over the same tokenizer (a draft), its head randomised."""
    torch.manual_seed(seed)
    cfg = GeneratorConfig(**{**gen.config.__dict__, **config})
    other = Generator(cfg, tokenizer=gen.tokenizer).eval()
    for p in other.head.parameters():
        torch.nn.init.normal_(p, std=std)
    return other


# ---- discrete: exactly the target's distribution -------------------------------------------------------------------

TOY = dict(cfg_scale=2.0, top_k=4, temperature=1.0)  # 6 tokens, 4 positions, class-conditional, guided, top-k


@pytest.fixture(scope="module")
def toy_pair():
    """A target and a draft over a 6-token vocabulary and a 2 x 2 grid (image 4, downsampled by 2)."""
    torch.manual_seed(0)
    tok = VQTokenizer(VQConfig(**{**TINY_VQ.__dict__, "codebook_size": 6})).eval()
    cfg = GeneratorConfig(tokenizer="-", image_size=4, num_classes=2, backbone="tiny")
    target = Generator(cfg, tokenizer=tok).eval()
    for p in target.head.parameters():
        torch.nn.init.normal_(p, std=1.0)
    return target, sibling(target, seed=1, std=1.0)


def exact_joint(gen: Generator, label: int) -> torch.Tensor:
    """The target's probability of each of the 6^4 sequences, by enumeration through teacher forcing."""
    seqs = torch.tensor(list(itertools.product(range(6), repeat=4)))
    n = len(seqs)
    with torch.no_grad():
        h = torch.cat([gen.features(seqs, torch.full((n,), label)), gen.features(seqs, torch.full((n,), 2))])
        p = gen.head.probs(h, TOY["cfg_scale"], True, TOY["temperature"], TOY["top_k"])
    return p.gather(-1, seqs[..., None])[..., 0].prod(-1)


def chi_square_p(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of samples (N, 4) against the sequence probabilities; bins of expected count < 5 pooled."""
    index = (samples.flatten(1) * torch.tensor([216, 36, 6, 1])).sum(-1)
    counts = torch.bincount(index, minlength=len(probs)).double()
    expected = probs.double() * len(samples)
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    stat = ((obs - exp) ** 2 / exp.clamp_min(1e-12)).sum().item()
    return float(chi2.sf(stat, len(obs) - 1))


def toy_samples(pair, method: str, n: int = 20000, **kw) -> torch.Tensor:
    target, draft = pair
    if method == "feature":
        draft = feature_draft(target, seed=1, std=1.0)
    cfg = SamplingConfig(**TOY, speculative=method, gamma=3, batch_size=n, seed=11, **kw)
    return Sampler(target, cfg, draft=draft).sample_tokens(torch.ones(n, dtype=torch.long))


@pytest.mark.parametrize(
    "method, init", [("draft", "above"), ("feature", "above"), ("jacobi", "above"), ("jacobi", "uniform")]
)
def test_speculative_samples_follow_the_targets_exact_distribution(toy_pair, method, init):
    """Jacobi's coupled draws and its token-above drafts (the toy's 2 x 2 grid has a row above) stay exact."""
    samples = toy_samples(toy_pair, method, jacobi_init=init)
    assert chi_square_p(samples, exact_joint(toy_pair[0], 1)) > 1e-3


def test_a_wrong_acceptance_rule_fails_the_same_test(toy_pair, monkeypatch):
    monkeypatch.setattr(speculative, "residual", lambda p, q: p)  # a rejected token redrawn from p, not p - q
    assert chi_square_p(toy_samples(toy_pair, "draft"), exact_joint(toy_pair[0], 1)) < 1e-6


@pytest.mark.parametrize("method", ["draft", "feature", "jacobi"])
def test_temperature_zero_gives_the_targets_greedy_tokens(method):
    target = tiny_generator()
    labels = torch.tensor([0, 1, 2, 3, 1])
    plain = Sampler(target, SamplingConfig(cfg_scale=2.0, temperature=0.0)).sample_tokens(labels)
    cfg = SamplingConfig(cfg_scale=2.0, temperature=0.0, speculative=method, gamma=3)
    assert torch.equal(Sampler(target, cfg, draft=draft_for(method, target, 1)).sample_tokens(labels), plain)


@pytest.mark.parametrize("method", ["draft", "feature", "jacobi", "cspd"])
def test_same_seed_same_images_at_any_batch_size(method):
    target = diffusion_generator() if method == "cspd" else tiny_generator()
    draft = draft_for(method, target, 3, std=0.1 if method == "cspd" else 0.5)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    gamma = 2 if method == "cspd" else 3  # cspd's rounds run a diffusion head per draft: keep the test to seconds
    runs = [
        Sampler(target, SamplingConfig(cfg_scale=2.0, speculative=method, gamma=gamma, batch_size=bs, seed=5), draft=draft)
        .sample_tokens(labels)
        for bs in (1, 3, 8)
    ]  # fmt: skip
    for run in runs[1:]:
        torch.testing.assert_close(run, runs[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["draft", "feature", "cspd"])
def test_compiled_rounds_give_the_eager_tokens(monkeypatch, method):
    """SamplingConfig(compile=True): a discrete round (drafting, the verifying pass, acceptance, commit) compiles as
    one graph (fullgraph: no break); cspd compiles the draft's blocks and denoising step. Either way the tokens and
    statistics are the eager rounds'. Dynamo's eager backend checks the tracing in seconds; inductor's kernels are
    the GPU bench's."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn=None, **kw: compile_(fn, **{**kw, "backend": "eager"}))
    target = diffusion_generator() if method == "cspd" else tiny_generator()
    draft = draft_for(method, target, 3, std=0.1 if method == "cspd" else 0.5)
    cfg = dict(cfg_scale=2.0, speculative=method, gamma=2 if method == "cspd" else 3, seed=2)
    eager = Sampler(target, SamplingConfig(**cfg), draft=draft)
    compiled = Sampler(target, SamplingConfig(**cfg, compile=True), draft=draft)
    sd = compiled.speculative
    if method == "cspd":
        assert sd._round_fn == sd._round and hasattr(sd.draft.head, "_compiled_step")
    else:
        assert sd._round_fn is not sd._round
    labels = torch.tensor([0, 1, 2])
    torch.testing.assert_close(compiled.sample_tokens(labels), eager.sample_tokens(labels), atol=1e-5, rtol=0)
    assert compiled.speculative.stats == eager.speculative.stats


def test_compile_mode_is_checked():
    assert SamplingConfig(compile_mode="max-autotune-no-cudagraphs").compile_mode == "max-autotune-no-cudagraphs"
    with pytest.raises(ConfigError, match="compile_mode"):
        SamplingConfig(compile_mode="reduce-overhead")  # its CUDA graphs would nest in the sampler's own


def test_a_draft_equal_to_the_target_is_always_accepted():
    target = tiny_generator()
    s = Sampler(target, SamplingConfig(cfg_scale=2.0, top_k=8, speculative="draft", gamma=3), draft=target)
    s.sample_tokens(torch.arange(4))
    stats = s.speculative.stats
    assert stats["acceptance"] == 1.0 and stats["tokens_per_pass"] > 3.5  # 4 tokens a pass but for the last ones
    assert stats["target_passes_per_image"] < 20  # of 64 tokens
    # every row accepts all: the batch runs its rows' rounds, and at most sync_every - 1 more before the host looks
    assert stats["rounds_per_row"] == stats["target_passes_per_image"] - stats["prefix_units"]
    assert stats["rounds_per_row"] <= stats["rounds_per_batch"] < stats["rounds_per_row"] + s.cfg.sync_every


@pytest.mark.parametrize("method", ["draft", "cspd"])
def test_rollback_leaves_the_caches_of_the_accepted_tokens(method):
    """After sampling, the slots of both caches equal caches built by decoding the committed tokens directly."""
    target = diffusion_generator() if method == "cspd" else tiny_generator()
    draft = sibling(target, 4, std=0.1 if method == "cspd" else 0.5)
    labels = torch.tensor([0, 3, 1])
    s = Sampler(target, SamplingConfig(cfg_scale=2.0, speculative=method, gamma=3), draft=draft)
    grids = s.sample_tokens(labels)
    st = s.speculative._states[3]
    L = target.schedule.seq_len
    for model, cache, valid in ((target, st.cache, L), (draft, st.dcache, L - 1)):
        direct = model.backbone.new_cache(6, L, torch.float32, "cpu")
        seq = model.schedule.to_sequence(grids)
        both = torch.cat([labels, torch.full_like(labels, model.null_class)])
        with torch.no_grad():
            for k in range(L):
                inputs = torch.cat([seq[:, k - 1 : k]] * 2) if k else None
                model.decode_unit(k, inputs, both, direct)
        torch.testing.assert_close(cache.k[:, :, :, :valid], direct.k[:, :, :, :valid], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cache.v[:, :, :, :valid], direct.v[:, :, :, :valid], atol=1e-5, rtol=1e-4)


def test_feature_draft_cache_holds_what_the_targets_features_give_it():
    """After sampling, the feature draft's cache at every committed position but the last equals the draft run over
    the target's teacher-forced features of the final tokens: rejected drafts and the draft's own predictions left
    nothing behind."""
    target = tiny_generator()
    draft = feature_draft(target, 4)
    labels = torch.tensor([0, 3, 1])
    s = Sampler(target, SamplingConfig(cfg_scale=2.0, speculative="feature", gamma=3), draft=draft)
    seq = target.schedule.to_sequence(s.sample_tokens(labels))
    st, L = s.speculative._states[3], target.schedule.seq_len
    both = torch.cat([labels, torch.full_like(labels, target.null_class)])
    with torch.no_grad():
        feats = target.features(torch.cat([seq, seq]), both)
        direct = draft.body.new_cache(6, L, torch.float32, "cpu")
        _, cos, sin = target._decode_tables(seq.device)
        at = torch.arange(L - 1).expand(6, -1)
        draft.decode_rows(feats[:, : L - 1], target.input_emb(torch.cat([seq, seq])[:, : L - 1]), direct, at, cos, sin)
    torch.testing.assert_close(st.dcache.k[:, :, :, : L - 1], direct.k[:, :, :, : L - 1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(st.dcache.v[:, :, :, : L - 1], direct.v[:, :, :, : L - 1], atol=1e-5, rtol=1e-4)


# ---- continuous: CSpD -------------------------------------------------------------------------------------------


def mixture_round(rule: str, n: int = 40000):
    """One token per row from a 1-D mixture: the mode z (weight 0.7 on mode 1) is the randomness both models share
    (the aligned denoising path); given it the target's token is N(mu_p[z], 0.5^2) and the draft's N(mu_q[z], 0.6^2).
    Returns the verified tokens and the modes."""
    g = torch.Generator().manual_seed(0)
    z = (torch.rand(n, generator=g) < 0.7).long()
    mp = torch.tensor([-2.0, 2.0])[z][:, None, None].expand(n, 2, 1)  # the drafted position and the extra one
    mq = (torch.tensor([-1.7, 2.4])[z])[:, None, None]
    lvp, lvq = torch.full_like(mp, math.log(0.25)), torch.full_like(mq, math.log(0.36))
    x = mq + 0.6 * torch.randn(n, 1, 1, generator=g)
    u = torch.rand(n, 1, generator=g)
    e = torch.randn(n, 1, speculative.PROPOSALS, 1, generator=g)
    v = torch.rand(n, 1, speculative.PROPOSALS, generator=g)
    bonus = mp[:, 1] + 0.5 * torch.randn(n, 1, generator=g)
    a, decided, tokens, commit, fallbacks = speculative.verify_gaussians(x, mp, lvp, mq, lvq, u, e, v, bonus, rule)
    return tokens[:, 0, 0], z, a.float().mean().item(), fallbacks.sum().item()


def toy_diffusion_target(steps: int) -> Generator:
    """A diffusion-head target over a 2 x 2 grid of 3-channel latents, its head non-trivial (random weights)."""
    torch.manual_seed(0)
    cfg = GeneratorConfig(tokenizer="-", image_size=4, num_classes=2, schedule="raster", head="diffusion",
                          head_options={"width": 16, "depth": 1, "steps": steps}, backbone="tiny")  # fmt: skip
    target = Generator(cfg, tokenizer=KLTokenizer(TINY_KL).eval()).eval()
    for p in target.head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return target


@pytest.fixture(scope="module")
def cspd_pair():
    """The toy target (4 denoising steps) and a draft near it (its weights perturbed), so that both branches of the
    path rule run: kept paths and redrawn steps."""
    target = toy_diffusion_target(steps=4)
    draft = copy.deepcopy(target)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return target, draft


def cspd_tokens(target, draft, seed: int, n: int = 8000, rule: str = "path"):
    cfg = SamplingConfig(cfg_scale=2.0, batch_size=n, seed=seed, speculative="cspd", gamma=3, cspd_rule=rule)
    s = Sampler(target, cfg, draft=draft)
    return s.sample_tokens(torch.ones(n, dtype=torch.long)).flatten(1), s.speculative.stats


def same_moments(x: torch.Tensor, ref: torch.Tensor) -> bool:
    """Means within 4.5 standard errors, standard deviations within 5 %, correlations within 0.1 (all 12 dims)."""
    se = ref.std(0) * math.sqrt(2 / len(ref))
    return bool(((x.mean(0) - ref.mean(0)).abs() < 4.5 * se).all() and ((x.std(0) / ref.std(0) - 1).abs() < 0.05).all()
                and (torch.corrcoef(x.T) - torch.corrcoef(ref.T)).abs().max() < 0.1)  # fmt: skip


def test_cspd_path_rule_draws_the_targets_paths(cspd_pair, monkeypatch):
    """The path rule keeps exactly the target's distribution whatever the draft: its tokens match those drawn with
    the target as its own draft (every step kept: the target's own paths), means, spreads and correlations between
    positions (the tokens after the prefix are drafted). A rule that verifies only the last step fails the same
    check."""
    target, draft = cspd_pair
    ref, stats = cspd_tokens(target, target, seed=1)
    assert stats["acceptance"] == 1.0
    x, stats = cspd_tokens(target, draft, seed=2)
    assert 0.1 < stats["acceptance"] < 0.9 and stats["residual_fallbacks"] < 0.01 * len(x)  # both branches ran
    assert same_moments(x, ref)
    check = speculative.verify_path_steps
    monkeypatch.setattr(speculative, "verify_path_steps", lambda log_ratio, u: check(log_ratio[..., -1:], u[..., -1:]))
    wrong, stats = cspd_tokens(target, draft, seed=2)
    assert stats["acceptance"] > 0.5 and not same_moments(wrong, ref)


def test_cspd_final_rule_matches_the_targets_mixture():
    x, z, acceptance, fallbacks = mixture_round("final")
    assert 0.3 < acceptance < 0.9 and fallbacks == 0  # both branches (accepted drafts, residual draws) exercised
    assert abs((x > 0).float().mean().item() - 0.7) < 0.01  # mode weight
    for mode, mean in ((0, -2.0), (1, 2.0)):
        assert abs(x[z == mode].mean().item() - mean) < 0.02
        assert abs(x[z == mode].std().item() - 0.5) < 0.02


def test_cspd_reference_relaxation_keeps_the_drafts_distribution():
    x, z, acceptance, _ = mixture_round("reference")
    assert acceptance > 0.99  # a ratio of near-flat Gaussians: nearly every draft kept
    assert abs(x[z == 1].mean().item() - 2.0) > 0.3 and abs(x[z == 1].std().item() - 0.5) > 0.05  # the draft's


def test_cspd_with_a_draft_equal_to_the_target_accepts_every_token():
    target = diffusion_generator()
    s = Sampler(target, SamplingConfig(cfg_scale=2.0, speculative="cspd", gamma=3), draft=target)
    spec = s.sample_tokens(torch.arange(4))
    assert s.speculative.stats["acceptance"] == 1.0
    # the target's own samples under the same noise, but for the last step's noise (std exp(0.5 log_var))
    plain = Sampler(target, SamplingConfig(cfg_scale=2.0)).sample_tokens(torch.arange(4))
    assert (spec - plain).abs().max() < 0.1 < plain.std()


def test_a_draft_whose_decoder_alone_differs_reads_the_targets_tokens():
    """The bundled token model decodes through a decoder fine-tuned on the bundled VQ's tokens; a draft over the
    bundled VQ itself reads the same tokens and is accepted. A change outside the decoder is refused."""
    import copy

    target = tiny_generator()
    tok = copy.deepcopy(target.tokenizer)
    with torch.no_grad():
        for p in tok.decoder_parameters():
            p.add_(0.1)
    draft = sibling(target, 1)
    object.__setattr__(draft, "tokenizer", tok)
    Sampler(target, SamplingConfig(speculative="draft"), draft=draft)
    with torch.no_grad():
        next(tok.encoder.parameters()).add_(0.1)
    with pytest.raises(ConfigError, match="another tokenizer"):
        Sampler(target, SamplingConfig(speculative="draft"), draft=draft)


# ---- bad input ---------------------------------------------------------------------------------------------------


def test_bad_settings_are_clear_errors(tmp_path):
    token, cont = tiny_generator(), diffusion_generator()
    with pytest.raises(ConfigError, match="gamma"):
        SamplingConfig(speculative="draft", gamma=0)
    with pytest.raises(ConfigError, match="speculative"):
        SamplingConfig(speculative="medusa")
    with pytest.raises(ConfigError, match="needs a draft"):
        Sampler(token, SamplingConfig(speculative="draft"))
    with pytest.raises(ConfigError, match="another tokenizer"):
        Sampler(token, SamplingConfig(speculative="draft"), draft=tiny_generator(seed=1))  # its own VQ weights
    with pytest.raises(ConfigError, match="another family"):
        Sampler(token, SamplingConfig(speculative="draft"), draft=cont)
    with pytest.raises(ConfigError, match="classes"):
        Sampler(token, SamplingConfig(speculative="draft"), draft=sibling(token, 1, num_classes=3))
    with pytest.raises(ConfigError, match="diffusion head"):
        Sampler(token, SamplingConfig(speculative="cspd"), draft=token)
    with pytest.raises(ConfigError, match="use 'cspd'"):
        Sampler(cont, SamplingConfig(speculative="jacobi"))
    with pytest.raises(ConfigError, match="temperature > 0"):
        Sampler(cont, SamplingConfig(speculative="cspd", temperature=0.0), draft=cont)
    with pytest.raises(ConfigError, match="one-token units"):
        Sampler(var_generator(), SamplingConfig(speculative="jacobi"))
    with pytest.raises(ConfigError, match="one-token units"):
        Sampler(diffusion_generator(unit_size=4), SamplingConfig(speculative="cspd"), draft=cont)
    token.tokenizer.save_pretrained(tmp_path / "tok")
    with pytest.raises(ConfigError, match="generator checkpoint"):
        Sampler(token, SamplingConfig(speculative="draft", draft=str(tmp_path / "tok")))


# ---- the commands ------------------------------------------------------------------------------------------------


def test_sample_and_fid_commands_speculate(tmp_path, cifar_train):
    from visgen.cli.fid import main as fid_main
    from visgen.cli.sample import main as sample_main

    bundled = "visgen/assets/cifar10-token-ar"  # its own draft: every token accepted
    args = ["--num-images", "3", "--device", "cpu", "--out", str(tmp_path), "--speculative", "draft",
            "--draft", bundled, "--gamma", "3"]  # fmt: skip
    assert sample_main(args) == 0
    (folder,) = tmp_path.iterdir()
    assert "spec-draft-g3" in folder.name and "draft-" in folder.name
    stats = json.loads((folder / "settings.json").read_text())["speculative_stats"]
    assert stats["acceptance"] == 1.0 and stats["target_passes_per_image"] < 20
    gen = tiny_generator()
    gen.config.image_size = 16
    gen.save_pretrained(tmp_path / "g")
    report = tmp_path / "r.json"
    assert fid_main(["--input", str(tmp_path / "g"), "--ref", cifar_train, "--num-samples", "6", "--no-kid",
                     "--speculative", "jacobi", "--report", str(report), "--cache-dir", str(tmp_path / "c")]) == 0  # fmt: skip
    s = json.loads(report.read_text())["settings"]
    assert s["sampling"]["speculative"] == "jacobi" and 0 <= s["speculative_stats"]["acceptance"] <= 1


class OneProcess:  # what GeneratorTask.validate needs of an Accelerator on one process
    device = torch.device("cpu")
    reduce = staticmethod(lambda t, reduction: t)


def distil(task, model, tokens, labels, steps: int, lr: float):
    """``steps`` AdamW steps of ``task``'s loss on batches of 16 of the first 48 tokens, in turn."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        i = torch.arange(16) + 16 * (step % 3)
        loss, _ = task({"tokens": tokens[i], "label": labels[i]}, step)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_distilling_a_draft_raises_its_acceptance():
    """GeneratorTask with a teacher: KL(teacher || draft) falls and the overlap sum_x min(p, q), the rate at which
    speculative decoding accepts a drafted token, rises; the held-out figures come with validation."""
    from visgen.train.generator_task import GeneratorTask

    teacher = tiny_generator(seed=0)
    torch.manual_seed(1)
    cfg = GeneratorConfig(**{**vars(teacher.config), "class_dropout": 0.0})
    draft = Generator(cfg, tokenizer=teacher.tokenizer)  # its own weights over the teacher's tokens
    task = GeneratorTask(draft.train(), teacher, distill_weight=1.0)
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, 32, (64, 8, 8), generator=g), torch.randint(0, 4, (64,), generator=g)
    held_out = [{"tokens": tokens[48:], "label": labels[48:]}]
    before = task.validate(draft, held_out, OneProcess)
    distil(task, draft, tokens, labels, steps=40, lr=3e-3)
    after = task.validate(draft, held_out, OneProcess)
    assert set(after) == {"loss", "kl", "acceptance"} and 0 < before["acceptance"] < 1
    assert after["kl"] < 0.5 * before["kl"] and after["acceptance"] > before["acceptance"] + 0.05
    # the overlap is speculative decoding's acceptance probability for a token drawn from the draft
    seq, lab = draft.schedule.to_sequence(tokens[:2]), labels[:2]
    with torch.no_grad():
        p = teacher.head.logits(teacher.features(seq, lab)).softmax(-1)
        q = draft.eval().head.logits(draft.features(seq, lab)).softmax(-1)
    accept = (q * torch.clamp(p / q, max=1)).sum(-1)  # E_{x~q} min(1, p(x) / q(x))
    torch.testing.assert_close(accept, torch.minimum(p, q).sum(-1), atol=1e-5, rtol=0)


def test_distilling_a_diffusion_draft_raises_its_path_acceptance():
    """A diffusion-head draft distilled on the KL of its denoising steps from the target's, along the target's
    sampling paths: the held-out KL falls, and the path rule then keeps far more of its drafted tokens. 50 steps:
    with few, the last step (from a noisy state to a near-deterministic token) rejects whatever the draft."""
    from visgen.train.generator_task import GeneratorTask

    target = toy_diffusion_target(steps=50)
    torch.manual_seed(1)
    draft = Generator(GeneratorConfig(**{**vars(target.config), "class_dropout": 0.5}), tokenizer=target.tokenizer)
    task = GeneratorTask(draft, target, distill_weight=1.0)
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randn(64, 3, 2, 2, generator=g), torch.randint(0, 2, (64,), generator=g)
    held_out = [{"tokens": tokens[48:], "label": labels[48:]}]
    before = task.validate(draft.eval(), held_out, OneProcess)
    accepted_before = cspd_tokens(target, draft, seed=3, n=500)[1]["acceptance"]
    distil(task, draft.train(), tokens, labels, steps=50, lr=1e-2)
    after = task.validate(draft.eval(), held_out, OneProcess)
    accepted_after = cspd_tokens(target, draft, seed=3, n=500)[1]["acceptance"]
    assert set(after) == {"loss", "kl"} and after["kl"] < 0.25 * before["kl"]
    assert accepted_before < 0.05 and accepted_after > 0.3, (before, after, accepted_before, accepted_after)


def test_a_diffusion_teacher_must_sample_in_the_students_steps(cspd_pair):
    from visgen.train.generator_task import GeneratorTask

    target, _ = cspd_pair
    cfg = GeneratorConfig(**{**vars(target.config), "head_options": {"width": 16, "depth": 1, "steps": 8}})
    with pytest.raises(ConfigError, match="samples in 8 steps, the teacher's in 4"):
        GeneratorTask(Generator(cfg, tokenizer=target.tokenizer), target)


def test_a_draft_distils_from_the_bundled_model_through_the_recipe(tmp_path):
    from visgen.cli.train import main as train_main

    out = tmp_path / "draft"
    args = ["generator", "--recipe", "generators/quickstart.yaml", "distill.teacher=visgen/assets/cifar10-token-ar",
            "distill.weight=0.5", f"train.out_dir={out}", "train.steps=4", "train.log_every=2"]  # fmt: skip
    assert train_main(args) == 0
    final = json.loads((out / "final" / "metrics.json").read_text())["metrics"]
    assert 0 < final["acceptance"] < 1 and final["kl"] > 0 and final["loss"] > 0
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("kl" in r and "ce" in r for r in logged)
    # a teacher over other tokens is refused before any work
    other = ["model.image_size=16", f"train.out_dir={tmp_path / 'x'}"]
    assert train_main([*args[:5], *other]) == 2


def test_train_py_trains_a_feature_draft(tmp_path, capsys):
    """``train.py feature-draft``: the recipe trains a draft through the trainer on the bundled model's cached tokens
    of real images; the held-out loss falls and acceptance rises, the sampler accepts more of its tokens than of an
    untrained draft's, eval/trials.py and eval/feature_draft.py report it, and sample.py draws through it."""
    import importlib.util

    from visgen.checkpoint import load_model
    from visgen.cli.sample import main as sample_main
    from visgen.cli.train import main as train_main

    def script(name: str):
        spec = importlib.util.spec_from_file_location(name, f"eval/{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main

    out = tmp_path / "fd"
    args = ["feature-draft", "--recipe", "generators/cifar10-feature-draft.yaml", "data.path=tests/data/cifar10/train",
            "val.path=tests/data/cifar10/test", "data.limit=96", "val.limit=32", "train.steps=40", "train.batch_size=16",
            "train.lr=3e-3", "train.eval_every=20", "train.log_every=20", "train.num_workers=0",
            "train.val_images=32", "train.warmup_steps=2", f"train.out_dir={out}"]  # fmt: skip
    assert train_main(args) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    acc = [r["val/acceptance"] for r in records if "val/acceptance" in r]
    loss = [r["val/loss"] for r in records if "val/loss" in r]
    assert len(acc) >= 2 and acc[-1] > acc[0] and 0 < acc[-1] <= 1 and loss[-1] < loss[0]
    assert all(0 < r["val/acceptance_null"] <= 1 for r in records if "val/acceptance" in r)
    draft = load_model(out / "final")
    assert isinstance(draft, FeatureDraft) and draft.config.target == "asset:cifar10-token-ar"
    target = load_model("visgen/assets/cifar10-token-ar", ema=True).float().eval()

    def acceptance(d) -> float:
        s = Sampler(target, SamplingConfig(speculative="feature", gamma=3, seed=1), draft=d)
        s.sample_tokens(torch.arange(4))
        return s.speculative.stats["acceptance"]

    assert acceptance(draft) > acceptance(FeatureDraft.for_target(target)) + 0.1
    with pytest.raises(ConfigError, match="feature draft was made for"):
        Sampler(tiny_generator(), SamplingConfig(speculative="feature"), draft=draft)
    with pytest.raises(ConfigError, match="needs a feature draft"):
        Sampler(target, SamplingConfig(speculative="feature"), draft=target)
    # eval/trials.py summarises the run, every validation metric by step
    assert script("trials")(["--runs", str(out), "--name", "t", "--results-dir", str(tmp_path)]) == 0
    run = json.loads((tmp_path / "t.json").read_text())["metrics"]["runs"]["fd"]
    assert list(run["val_acceptance_by_step"].values()) == acc and run["steps"] == 40
    assert run["acceptance_at_best_step"] == run["val_acceptance_by_step"][str(run["best_step"])]
    # eval/feature_draft.py: held-out overlaps per drafted position and as the sampler draws
    feature_draft = script("feature_draft")
    assert feature_draft(["--data", "tests/data/cifar10", "--draft", str(out / "final"), "--train-images", "32",
                          "--val-images", "16", "--sample-images", "2", "--gammas", "2", "--name", "g",
                          "--results-dir", str(tmp_path)]) == 0  # fmt: skip
    m = json.loads((tmp_path / "g.json").read_text())["metrics"]
    assert all(0 < m[k] <= 1 for k in ("overlap_depth1", "overlap_depth2", "overlap_unigram", "overlap_null_depth1"))
    assert m["overlap_depth1"] > m["overlap_unigram"] and m["draft_params"] < m["target_params"]
    assert 1 <= m["tokens_per_pass_gamma2"] <= 3 and 1 <= m["sampler_tokens_per_pass_feature_gamma2"] <= 3
    assert 0 <= m["sampler_acceptance_jacobi_gamma2"] <= 1
    assert feature_draft(["--data", "tests/data/cifar10", "--draft", "visgen/assets/cifar10-token-ar"]) == 2
    assert feature_draft(["--target", "visgen/assets/cifar10-vq", "--data", "tests/data/cifar10", "--draft",
                          str(out / "final")]) == 2  # fmt: skip
    # the saved draft samples through the command (the bundled model is sample.py's default checkpoint)
    sargs = ["--num-images", "2", "--device", "cpu", "--out", str(tmp_path / "s"), "--speculative", "feature",
             "--draft", str(out / "final"), "--gamma", "3"]  # fmt: skip
    assert sample_main(sargs) == 0
    (folder,) = (tmp_path / "s").iterdir()
    assert "spec-feature-g3" in folder.name
    assert 0 <= json.loads((folder / "settings.json").read_text())["speculative_stats"]["acceptance"] <= 1
    capsys.readouterr()
    assert train_main([*args[:-1], f"train.out_dir={tmp_path / 'bad'}", "model.target=visgen/assets/cifar10-vq"]) == 2
    assert "needs a token model" in capsys.readouterr().err


def test_feature_draft_task_reads_null_labels_at_the_recipes_share():
    """``model.null_labels``: that share of training sequences reach the target with the null class (what the
    unguided half of a guided batch reads); 1 is every one, 0 none. Validation reports the held-out acceptance under
    the null class beside the images' own; a share outside [0, 1] is refused."""
    from types import SimpleNamespace

    from visgen.sampling.feature_draft import draft_loss
    from visgen.train.feature_draft_task import FeatureDraftRecipe, FeatureDraftTask

    target = tiny_generator()
    tokens = torch.randint(0, target.tokenizer.vocab_size, (3, *target.tokenizer.grid_shape(16)))
    batch = {"tokens": tokens, "label": torch.tensor([0, 1, 2])}
    null = torch.full((3,), target.null_class)
    for share, labels in ((1.0, null), (0.0, batch["label"])):
        task = FeatureDraftTask(feature_draft(target, 2), target, null_labels=share)
        loss, _ = task(batch, step=0)
        assert torch.allclose(loss, draft_loss(task.model, target, tokens, labels))
    accelerator = SimpleNamespace(device=torch.device("cpu"), reduce=lambda t, op: t)
    val = task.validate(task.model, [batch], accelerator)
    assert 0 < val["acceptance_null"] <= 1 and val["acceptance_null"] != val["acceptance"]
    with pytest.raises(ConfigError, match="null_labels"):
        FeatureDraftRecipe(null_labels=1.5)


def test_feature_draft_loss_trains_the_second_drafted_token_at_its_weight():
    """``model.depth2_weight``: the loss adds that weight times the second drafted token's loss, where the draft reads
    its own predicted feature, and its gradient reaches the draft through both steps; 0 is the first token's alone.
    Validation's overlaps are the ones ``draft_pass`` gives either way, and its loss (what picks the kept model) is
    the training objective at the recipe's weight."""
    from types import SimpleNamespace

    from visgen.sampling.feature_draft import draft_loss, draft_pass, log_q, loss_of, target_pass
    from visgen.train.feature_draft_task import FeatureDraftRecipe, FeatureDraftTask

    target = tiny_generator()
    draft = feature_draft(target, 3)
    tokens = torch.randint(0, target.tokenizer.vocab_size, (2, *target.tokenizer.grid_shape(16)))
    labels = torch.tensor([0, 3])
    seq, feats, logp = target_pass(target, tokens, labels)
    pred1, logq1, logq2 = draft_pass(draft, target, seq, feats, depth2=True)
    first = loss_of(pred1, logq1, feats, logp, 1.0)
    assert torch.allclose(draft_loss(draft, target, tokens, labels), first)
    both = draft_loss(draft, target, tokens, labels, depth2_weight=0.5)
    second = (both - first) / 0.5
    assert second > 0 and torch.allclose(log_q(target, pred1), logq1)
    kl2 = torch.nn.functional.kl_div(logq2, logp[:, 2:], log_target=True, reduction="none").sum(-1).mean()
    assert second >= kl2 - 1e-6  # the second token's KL plus its feature pull
    both.backward()
    assert draft.fc.weight.grad is not None and draft.fc.weight.grad.abs().sum() > 0
    accelerator = SimpleNamespace(device=torch.device("cpu"), reduce=lambda t, op: t)
    for weight in (0.0, 0.5):
        task = FeatureDraftTask(draft, target, depth2_weight=weight)
        val = task.validate(draft, [{"tokens": tokens, "label": labels}], accelerator)
        assert val["loss"] == pytest.approx(draft_loss(draft, target, tokens, labels, depth2_weight=weight).item())
    with pytest.raises(ConfigError, match="depth2_weight"):
        FeatureDraftRecipe(depth2_weight=-1)

