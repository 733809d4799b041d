"""Speculative decoding inside the one sampler: several one-token AR steps verified in one pass of the target.

Four ways to draft the next ``gamma`` tokens, one verification:

- ``draft`` (Leviathan et al. 2023; Chen et al. 2023): a small generator over the same tokenizer drafts them.
- ``feature`` (EAGLE, Li et al. 2024): a small transformer reads the target's own features (``FeatureDraft``):
  each round it first reads the features the last verifying pass left at the committed positions, then drafts on its
  own predicted features, the target's head turning each into a distribution. Its cache holds, at every committed
  position, what the target's true feature there gave it.
- ``jacobi`` (speculative Jacobi decoding, Teng et al. 2025): no draft model; the window of the next ``gamma``
  tokens is iterated, each round's drafts sampled from the target's own distributions of the round before (where the
  window is new: the committed token one row up in raster order, ``jacobi_init="above"``, or a random token). A
  position's draft noise is keyed by the position itself, not by the round (coupled draws, as MC-SJD): a position
  drafted again from a distribution that barely moved gets the same token, so the context that later positions were
  drafted under stays put. Exact still: a position is drafted again only after an earlier one was rejected, which its
  own noise does not touch.
- ``cspd`` (continuous speculative decoding, Wang et al. 2024): a small diffusion-head generator drafts continuous
  tokens along the same denoising noise as the target (trajectory alignment), and a token's density is the last
  denoising step's Gaussian of each head (``DiffusionHead.final_gaussian``).

The target reads the last committed token and the drafts in one pass of gamma + 1 positions through its KV cache.
Discrete tokens: token i is accepted with probability min(1, p_i / q_i) under the distributions the sampler
samples from (guidance, temperature, top-k, top-p alike for both models); the first rejected one is resampled from
max(0, p - q) normalised, and on full acceptance one more token comes from p: the output is exactly the target's
distribution. ``cspd`` does the same with the two Gaussians' densities, the residual drawn by acceptance-rejection
with the target's Gaussian as the proposal (a fixed number of proposals; a row where all fail takes the first one
and is counted in ``residual_fallbacks``); ``cspd_rule="reference"`` is the reference code's relaxation instead
(standard deviations scaled by 42 inside the ratio, and every drafted token decided on its own, so tokens after a
rejection are kept): not exact, measured beside the exact rule.

Rows of a batch accept different numbers of tokens, so every row keeps its own position (``Generator.decode_rows``
writes each row's keys and values at its own slots); a round is the same work whatever was accepted, all on the
device, and on GPUs one captured CUDA graph replayed: the host looks at the rows only every ``sync_every`` rounds,
to stop when every row has all its tokens. Every random number of a round is keyed by (seed, sample, the row's
position when the round starts), so a sample does not depend on the batch it was drawn in.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from visgen.config import ConfigError
from visgen.sampling.noise import CounterNoise
from visgen.schedules import RasterSchedule

METHODS = ("draft", "feature", "jacobi", "cspd")
CSPD_RULES = ("path", "final", "reference")
REFERENCE_TEMPERATURE = 42.0  # the reference code's temperature inside the CSpD ratio
PROPOSALS = 128  # acceptance-rejection proposals per residual draw (cspd, the final rule)
# the path rule's: a step is rejected with probability its total variation TV, and TV (1 - TV)^R of proposals all
# fail, at most 1 / (e R) a step, so S steps want many: arithmetic only, no network pass
PATH_PROPOSALS = 1024

# counter-noise streams (the heads' own draws use 0-2 at a token's position)
_DRAFT, _ACCEPT, _RESIDUAL, _JACOBI, _FINAL, _PROPOSAL = 8, 9, 10, 11, 12, 13


# ---- the acceptance rules (pure functions on distributions: the tests check them) ---------------------------------


def leading_accepts(accept_BG: torch.Tensor) -> torch.Tensor:
    """(B,) how many drafts are accepted: the run of accepted ones before the first rejection."""
    return accept_BG.long().cumprod(-1).sum(-1)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """max(0, p - q), unnormalised: what a rejected token is drawn from (p itself where q is all zero)."""
    res = (p - q).clamp_min(0)
    return torch.where(res.sum(-1, keepdim=True) > 0, res, p)  # p == q to rounding: never rejected, guard anyway


def verify_tokens(p, q, drafts, u, gumbel) -> tuple[torch.Tensor, torch.Tensor]:
    """Discrete verification. p (B, G + 1, V): the target's distributions at the G drafted positions and one more;
    q (B, G, V): those the drafts were drawn from; drafts (B, G); u (B, G) uniforms; gumbel (B, V).
    Returns (accepted (B,), tokens (B, G + 1)): tokens[:, :accepted] are the accepted drafts and tokens[:, accepted]
    the resampled (or, on full acceptance, extra) token; later entries are meaningless."""
    G, V = drafts.shape[1], p.shape[-1]
    p_d = p[:, :G].gather(-1, drafts[..., None])[..., 0]
    q_d = q.gather(-1, drafts[..., None])[..., 0]
    a = leading_accepts(u * q_d < p_d)  # u < p / q without dividing
    at = a[:, None, None].expand(-1, 1, V)
    q_a = F.pad(q, (0, 0, 0, 1)).gather(1, at)[:, 0]  # a zero row at index G: full acceptance draws from p
    token = (residual(p.gather(1, at)[:, 0], q_a).log() + gumbel).argmax(-1)  # Gumbel-max: exactly the residual
    return a, torch.cat([drafts, drafts[:, :1]], 1).scatter(1, a[:, None], token[:, None])


def gaussian_log_density(x, mean, log_var) -> torch.Tensor:
    """log N(x; mean, exp(log_var)) summed over the last axis."""
    return (-0.5 * ((x - mean).pow(2) * torch.exp(-log_var) + log_var + math.log(2 * math.pi))).sum(-1)


def gaussian_residual(mp, lvp, mq, lvq, e, v) -> tuple[torch.Tensor, torch.Tensor]:
    """A draw from max(0, p - q) normalised for Gaussians p = N(mp, exp(lvp)), q = N(mq, exp(lvq)) (..., C) by
    acceptance-rejection with p as the proposal: proposal y is kept with probability 1 - q(y) / p(y) (max(0, p - q)
    <= p, so the bound is 1; CSpD sec. 3.4). ``e`` (..., R, C) standard normals for R proposals, ``v`` (..., R)
    uniforms. Returns (the first kept proposal, whether one was kept)."""
    y = mp[..., None, :] + torch.exp(0.5 * lvp)[..., None, :] * e
    log_ratio = gaussian_log_density(y, mq[..., None, :], lvq[..., None, :]) - gaussian_log_density(
        y, mp[..., None, :], lvp[..., None, :]
    )
    kept = v < -torch.expm1(log_ratio.clamp(max=0.0))  # 1 - q/p, 0 where q >= p
    first = kept.long().argmax(-1)  # the first kept one (0 when none is)
    pick = y.gather(-2, first[..., None, None].expand(*first.shape, 1, y.shape[-1]))[..., 0, :]
    return pick, kept.any(-1)


def cspd_log_ratio(x, mp, lvp, mq, lvq, rule: str = "final") -> torch.Tensor:
    """log p(x) / q(x) of drafted tokens x under the two Gaussians; ``reference``: both standard deviations scaled
    by 42 inside the exponent (the reference code's relaxation; the normalisers as in the exact ratio)."""
    if rule == "final":
        return gaussian_log_density(x, mp, lvp) - gaussian_log_density(x, mq, lvq)
    t2 = 2 * math.log(REFERENCE_TEMPERATURE)  # the scaled normalisers' ratio is the exact ratio's
    return gaussian_log_density(x, mp, lvp + t2) - gaussian_log_density(x, mq, lvq + t2)


def verify_gaussians(x, mp, lvp, mq, lvq, u, e, v, bonus, rule: str = "final"):
    """Continuous verification. x (B, G, C) drafted tokens; (mp, lvp) (B, G + 1, C) the target's Gaussians at the
    drafted positions and one more; (mq, lvq) (B, G, C) the draft's; u (B, G) uniforms; e (B, G, R, C) and v
    (B, G, R) for the residual draws; bonus (B, C) the target's own draw at position G. Returns (accepted (B,),
    decided (B,): drafts accepted on their own (the reference rule counts every one), tokens (B, G + 1, C),
    commit (B,): how many of tokens to keep, fallbacks (B,))."""
    G = x.shape[1]
    ok = u.log() < cspd_log_ratio(x, mp[:, :G], lvp[:, :G], mq, lvq, rule)
    y, found = gaussian_residual(mp[:, :G], lvp[:, :G], mq, lvq, e, v)
    if rule == "reference":  # each token on its own: a rejected one is replaced and the ones after it are kept
        tokens = torch.cat([torch.where(ok[..., None], x, y), bonus[:, None]], 1)
        fallbacks = (~ok & ~found).sum(-1)
        full = torch.full_like(ok[:, 0], G, dtype=torch.long)
        return full, ok.sum(-1), tokens, full + 1, fallbacks
    a = leading_accepts(ok)
    at = a.clamp(max=G - 1)[:, None, None].expand(-1, 1, x.shape[-1])
    resampled = torch.where((a < G)[:, None], y.gather(1, at)[:, 0], bonus)
    tokens = torch.cat([x, x[:, :1]], 1).scatter(1, a[:, None, None].expand(-1, 1, x.shape[-1]), resampled[:, None])
    fallbacks = ((a < G) & ~found.gather(1, a.clamp(max=G - 1)[:, None])[:, 0]).long()
    return a, a, tokens, a + 1, fallbacks


def verify_path_steps(log_ratio, u) -> tuple[torch.Tensor, torch.Tensor]:
    """The path rule's decisions. log_ratio (B, G, S): log p / q of each denoising step of each drafted token's
    path, both heads' Gaussians at the same state (the draft's); u (B, G, S) uniforms. A step is kept with
    probability min(1, p / q), and a token when every step of its path is. Returns (accepted (B,): the run of kept
    tokens, first (B, G): each token's first rejected step, 0 where none is)."""
    ok = u.log() < log_ratio
    return leading_accepts(ok.all(-1)), (~ok).long().argmax(-1)


# ---- checks --------------------------------------------------------------------------------------------------------


def _tokenizer_id(gen) -> tuple:
    """What makes the tokens a model reads: the tokenizer's type, vocabulary and the weights outside its decoder (a
    draft and a target whose decoders differ, one fine-tuned on the same tokens, still read the same tokens)."""
    tok = gen.tokenizer
    state = {k: v for k, v in tok.token_state().items() if v.is_floating_point()}
    fingerprint = tuple(round(float(v.double().sum()), 4) for v in state.values())
    return type(tok).__name__, getattr(tok, "vocab_size", None), getattr(tok, "latent_channels", None), fingerprint


def check_models(target, draft, method: str, cfg) -> None:
    """Clear errors for what speculative decoding cannot do."""
    if set(target.schedule.unit_sizes) != {1}:
        raise ConfigError(
            "speculative decoding verifies one-token units (token, continuous-token and pixel families); this model's "
            f"units hold {sorted(set(target.schedule.unit_sizes))} tokens (scale, frame or multi-token units)"
        )
    discrete = getattr(target.head, "discrete", False)
    if method in ("draft", "feature", "jacobi") and not discrete:
        raise ConfigError(f"speculative={method!r} verifies categorical tokens; for the diffusion head use 'cspd'")
    if method == "cspd":
        if type(target.head).__name__ != "DiffusionHead":
            raise ConfigError(
                f"speculative='cspd' needs the diffusion head (head: diffusion); this model's head is "
                f"{target.config.head!r}" + (" (use 'draft' or 'jacobi')" if discrete else "")
            )
        if not cfg.temperature > 0:
            raise ConfigError("speculative='cspd' needs temperature > 0 (a token's density is a Gaussian)")
        if draft is not None and len(draft.head.train_schedule) != len(target.head.train_schedule):
            raise ConfigError(f"the draft's diffusion head was trained over {len(draft.head.train_schedule)} noise "
                              f"levels, the target's over {len(target.head.train_schedule)}: a CSpD pair needs one "
                              "noise schedule")  # fmt: skip
        if target.head.solver != "ddpm":
            raise ConfigError(f"speculative='cspd' needs the diffusion head's ddpm solver, not {target.head.solver!r} "
                              "(DDIM's steps are deterministic and give a token no density)")  # fmt: skip
    if method == "jacobi":
        return
    if draft is None:
        raise ConfigError(f"speculative={method!r} needs a draft model: SamplingConfig.draft / --draft FOLDER")
    if method == "feature":
        if getattr(draft, "model_type", None) != "feature-draft":
            raise ConfigError(
                "speculative='feature' needs a feature draft (a 'feature-draft' checkpoint, eval/feature_draft.py "
                f"--out); got a {getattr(draft, 'model_type', type(draft).__name__)!r}"
            )
        draft.check_target(target)
        return
    if not hasattr(draft, "schedule"):
        raise ConfigError(f"the draft must be a generator checkpoint; got a {type(draft).__name__}")
    if draft.config.schedule != target.config.schedule or draft.config.head != target.config.head:
        raise ConfigError(
            f"the draft is another family (schedule {draft.config.schedule!r}, head {draft.config.head!r}) than the "
            f"target (schedule {target.config.schedule!r}, head {target.config.head!r})"
        )
    if draft.schedule.seq_len != target.schedule.seq_len or draft.config.unit_size != target.config.unit_size:
        raise ConfigError(
            f"the draft's sequence ({draft.schedule.seq_len} tokens) is not the target's ({target.schedule.seq_len})"
        )
    if draft.config.num_classes != target.config.num_classes:
        raise ConfigError(f"the draft has {draft.config.num_classes} classes, the target {target.config.num_classes}")
    if _tokenizer_id(draft) != _tokenizer_id(target):
        raise ConfigError(
            "the draft was trained over another tokenizer or vocabulary than the target; a draft must share the "
            "target's tokenizer (its weights too)"
        )


# ---- the decoder ---------------------------------------------------------------------------------------------------


class _State:
    """One batch size's buffers (and captured graphs): caches, committed tokens, each row's position, statistics."""

    def __init__(self, sd: SpeculativeDecoder, batch: int):
        s, dev = sd.sampler, sd.sampler.device
        self.guided = s.guided
        rows = 2 * batch if self.guided else batch
        self.cache = sd.target.backbone.new_cache(rows, sd.slots, s.dtype, dev)
        self.dcache = sd.draft_body.new_cache(rows, sd.slots, s.dtype, dev) if sd.draft is not None else None
        self.labels = torch.zeros(rows, dtype=torch.long, device=dev)
        self.ids = torch.zeros(batch, dtype=torch.long, device=dev)
        self.noise = CounterNoise(0, self.ids)
        C = sd.channels
        shape = (batch, sd.slots, C) if C else (batch, sd.slots)
        self.tokens = torch.zeros(shape, dtype=torch.float32 if C else torch.long, device=dev)
        self.pos = torch.zeros(batch, dtype=torch.long, device=dev)
        self.stats = torch.zeros(5, batch, dtype=torch.float32, device=dev)  # accepted, offered, passes, committed, fb
        V = sd.vocab
        self.window = torch.zeros(batch, sd.gamma, dtype=torch.long, device=dev) if sd.method == "jacobi" else None
        self.window_q = torch.zeros(batch, sd.gamma, V, device=dev) if sd.method == "jacobi" else None
        if sd.method == "feature":  # the last verifying pass's features (both halves when guided), from position base
            self.feats = torch.zeros(rows, sd.gamma + 1, sd.target.backbone.cfg.d_model, dtype=s.dtype, device=dev)
            self.base = torch.zeros(batch, dtype=torch.long, device=dev)
        self.prefix_graph = self.round_graph = None


class SpeculativeDecoder:
    """The sampler's speculative path (``SamplingConfig.speculative``); built by ``Sampler``, not by users.

    ``stats`` after sampling: ``acceptance`` (accepted drafts / drafts offered for tokens of the image),
    ``tokens_per_pass`` (tokens committed per verifying pass), ``target_passes_per_image`` (the prefix's one-token
    steps included), ``residual_fallbacks`` (cspd rows whose proposals all failed)."""

    def __init__(self, sampler, draft=None):
        cfg, m = sampler.cfg, sampler.model
        self.sampler, self.target, self.method, self.gamma = sampler, m, cfg.speculative, cfg.gamma
        check_models(m, draft, self.method, cfg)
        self.draft = None
        if draft is not None and self.method != "jacobi":
            self.draft = copy.deepcopy(draft).to(device=sampler.device, dtype=sampler.dtype).eval()
            self.draft.requires_grad_(False)
            if self.method == "cspd":  # a CSpD pair follows one path: the target's steps, DDPM's (with densities)
                self.draft.head.set_sampling_steps(m.head.steps)
                self.draft.head.set_solver("ddpm")
            elif cfg.head_steps and hasattr(self.draft.head, "set_sampling_steps"):
                self.draft.head.set_sampling_steps(cfg.head_steps)
            self.draft_body = self.draft.body if self.method == "feature" else self.draft.backbone
            if sampler.decode_kernel != "sdpa":  # its steps through the target's kernels too (a copy: ours)
                self.draft_body.set_decode_kernel(sampler.decode_kernel, rows=sampler.rows_kernel)
        L = self.L = m.schedule.seq_len
        self.prefix = min(L, max(2, math.ceil(cfg.prefill * L)))  # >= 2: a round reads the last two tokens
        self.slots = L + 2 * self.gamma + 2  # a finished row keeps running rounds past its end: room for them
        self.channels = 0 if m.head.discrete else m.tokenizer.latent_channels
        self.vocab = m.tokenizer.vocab_size if m.head.discrete else 0
        scales = sampler.scales + [sampler.scales[-1]] * (self.slots - L)
        self.scale_table = torch.tensor(scales, dtype=torch.float32, device=sampler.device)
        self._states: dict[int, _State] = {}
        # compiled, discrete: a round is one graph (the draft's steps, the verifying pass, the acceptance and the
        # counter noise fused), static per batch size. cspd: a round holds gamma + 1 whole denoising loops, too big
        # a graph to unroll, so the draft's blocks and denoising step compile as the target's do and the round's
        # own arithmetic stays eager
        self._round_fn = self._round
        if cfg.compile and self.vocab:
            options = {**sampler.compile_options, "dynamic": False}
            self._round_fn = torch.compile(self._round, fullgraph=True, **options)
        elif cfg.compile and self.method == "cspd":
            self.draft.backbone.compile_blocks(**sampler.compile_options)
            self.draft.head.compile_step(**sampler.compile_options)
        self.totals = torch.zeros(5, dtype=torch.float64)
        self.images = self.batches = self.rounds = 0

    def reset_stats(self):
        self.totals.zero_()
        self.images = self.batches = self.rounds = 0

    @property
    def stats(self) -> dict:
        acc, offered, passes, committed, fallbacks = self.totals.tolist()
        n = max(self.images, 1)
        return {
            "acceptance": acc / max(offered, 1),
            "tokens_per_pass": committed / max(passes, 1),
            "target_passes_per_image": passes / n + self.prefix,
            "residual_fallbacks": int(fallbacks),
            "rounds_per_row": passes / n,  # the rounds a row needed, on average
            "rounds_per_batch": self.rounds / max(self.batches, 1),  # the rounds a batch ran: its slowest row's
            "prefix_units": self.prefix,  # the plain steps before the rounds
        }

    # ---- pieces of a round ---------------------------------------------------------------------------------------

    def _dup(self, st, t):
        return torch.cat([t, t]) if st.guided else t

    def _rows(self, model, cache, st, inputs, at):
        """Features (B, n, d) at per-row positions ``at`` (B, n); guided: the conditional and the null rows."""
        if inputs.is_floating_point():
            inputs = inputs.to(self.sampler.dtype)
        return model.decode_rows(self._dup(st, inputs), st.labels, cache, self._dup(st, at))

    def _final(self, model, h, st, at):
        """(mean, log_var) (B, n, C) of the last denoising step of tokens at positions ``at`` (B, n), each token
        with the counter noise of its own position (the draft's and the target's paths aligned), fp32, with the
        temperature in the variance."""
        c = self.sampler.cfg
        B, n = at.shape
        flat = lambda t: t.reshape(-1, 1, t.shape[-1])
        h = torch.cat([flat(t) for t in h.chunk(2)]) if st.guided else flat(h)
        scale = self.scale_table[at].reshape(-1, 1)
        noise = st.noise.repeat(n) if n > 1 else st.noise
        mean, log_var = model.head.final_gaussian(h, scale, noise, at.reshape(-1), st.guided, c.temperature)
        return mean.view(B, n, -1), log_var.view(B, n, -1) + 2 * math.log(c.temperature)

    def _path(self, model, h, st, at):
        """As ``_final`` for one token a row (``at`` (B, 1)), with the whole denoising path: (states (S + 1, B, C),
        whose last is the token, drawn with the last step's noise too; means (S, B, C); log variances (S, B, C), the
        temperature in them)."""
        c = self.sampler.cfg
        h = torch.cat([t[:, -1] for t in h.chunk(2)]) if st.guided else h[:, -1]
        path = model.head.trajectory(h[:, None], self.scale_table[at], st.noise, at[:, 0], st.guided, c.temperature)
        mean, log_var = path["mean"][:, :, 0], path["log_var"][:, :, 0] + 2 * math.log(c.temperature)
        e0 = st.noise.normal(at[:, 0], (self.channels,), stream=_FINAL)
        token = mean[-1] + torch.exp(0.5 * log_var[-1]) * e0
        return torch.cat([path["xs"][:-1, :, 0], token[None]]), mean, log_var

    def _commit(self, st, tokens, commit, accepted, offered, fallbacks):
        G1 = self.gamma + 1
        pos, L = st.pos, self.L
        active = pos < L
        at = (pos[:, None] + torch.arange(G1, device=pos.device)).clamp(max=self.slots - 1)
        if tokens.dim() == 3:
            st.tokens.scatter_(1, at[..., None].expand(-1, -1, tokens.shape[-1]), tokens.float())
        else:
            st.tokens.scatter_(1, at, tokens)
        left = (L - pos).clamp(min=0)  # tokens this row still needs: drafts past the image are not counted
        f = active.float()
        st.stats += torch.stack([
            torch.minimum(accepted, left) * f, torch.minimum(torch.full_like(left, offered), left) * f, f,
            torch.minimum(commit, left) * f, fallbacks * f,
        ])  # fmt: skip
        st.pos.copy_(torch.where(active, pos + commit, pos))

    # ---- the three methods' rounds -------------------------------------------------------------------------------

    def _draft_steps(self, st, pos):
        """gamma one-token steps of the draft model from each row's position. The first reads the last two
        committed tokens (slot pos - 1 rewritten: after a fully accepted round the draft never read the last
        accepted draft). Returns the drafts and, per method, what verification needs."""
        d, G = self.draft, self.gamma
        ar2 = torch.arange(-2, 0, device=pos.device)
        inputs = st.tokens.gather(1, self._expand(st, (pos[:, None] + ar2)))
        at = pos[:, None] + ar2 + 1
        c = self.sampler.cfg
        drafts, dists = [], []
        gumbel = st.noise.gumbel(pos, (G, self.vocab), stream=_DRAFT) if self.vocab else None
        for i in range(G):
            h = self._rows(d, st.dcache, st, inputs, at)[:, -1:]
            if self.vocab:
                q = d.head.probs(h, self.scale_table[pos + i][:, None, None], st.guided, c.temperature, c.top_k,
                                 c.top_p)[:, 0]  # fmt: skip
                x = (q.log() + gumbel[:, i]).argmax(-1)
                dists.append(q)
                inputs = x[:, None]
            elif c.cspd_rule == "path":
                xs, mq, lvq = self._path(d, h, st, (pos + i)[:, None])
                x = xs[-1]
                dists.append((xs, mq, lvq))
                inputs = x[:, None]
            else:
                mq, lvq = self._final(d, h, st, (pos + i)[:, None])
                e0 = st.noise.normal(pos + i, (1, self.channels), stream=_FINAL)
                x = (mq + torch.exp(0.5 * lvq) * e0)[:, 0]
                dists.append((mq[:, 0], lvq[:, 0]))
                inputs = x[:, None]
            drafts.append(x)
            at = (pos + i + 1)[:, None]
        return torch.stack(drafts, 1), dists

    def _feature_steps(self, st, pos):
        """gamma draws of the feature draft from each row's position. It first reads the target's features of the
        last verifying pass (positions base .. base + gamma, its cache rewritten there; those past a row's committed
        tokens are overwritten before anything reads them) and takes its prediction at pos - 1, then reads its own."""
        d, G, c, m = self.draft, self.gamma, self.sampler.cfg, self.target
        _, cos, sin = m._decode_tables(pos.device)
        at = st.base[:, None] + torch.arange(G + 1, device=pos.device)
        tokens = st.tokens.gather(1, at.clamp(max=self.slots - 1))
        f = d.decode_rows(st.feats, self._dup(st, m.input_emb(tokens)), st.dcache, self._dup(st, at), cos, sin)
        last = (pos - 1 - st.base).clamp(min=0)  # a finished row stays put (pos == base): what it drafts is dropped
        f = f.gather(1, self._dup(st, last)[:, None, None].expand(-1, 1, f.shape[-1]))
        gumbel = st.noise.gumbel(pos, (G, self.vocab), stream=_DRAFT)
        drafts, dists = [], []
        for i in range(G):
            q = m.head.probs(f, self.scale_table[pos + i][:, None, None], st.guided, c.temperature, c.top_k,
                             c.top_p)[:, 0]  # fmt: skip
            x = (q.log() + gumbel[:, i]).argmax(-1)
            drafts.append(x)
            dists.append(q)
            if i + 1 < G:
                emb = self._dup(st, m.input_emb(x[:, None]))
                f = d.decode_rows(f, emb, st.dcache, self._dup(st, (pos + i)[:, None]), cos, sin)
        return torch.stack(drafts, 1), dists

    def _expand(self, st, idx):
        return idx[..., None].expand(-1, -1, self.channels) if self.channels else idx

    def _verify_pass(self, st, pos, drafts):
        last = st.tokens.gather(1, self._expand(st, (pos - 1)[:, None]))
        at = pos[:, None] + torch.arange(self.gamma + 1, device=pos.device)
        return self._rows(self.target, st.cache, st, torch.cat([last, drafts], 1), at), at

    def _round(self, st):
        pos, G, c = st.pos, self.gamma, self.sampler.cfg
        u = st.noise.uniform(pos, (G,), stream=_ACCEPT)
        if self.method == "jacobi":
            h, at = self._verify_pass(st, pos, st.window)
            p = self.target.head.probs(h, self.scale_table[at][..., None], st.guided, c.temperature, c.top_k, c.top_p)
            a, tokens = verify_tokens(p, st.window_q, st.window, u, st.noise.gumbel(pos, (self.vocab,), _RESIDUAL))
            self._commit(st, tokens, a + 1, a, G, torch.zeros_like(a))
            # the next window: position pos + a + 1 + i from this pass's distribution there, when the pass had it
            src = a[:, None] + 1 + torch.arange(G, device=pos.device)
            q_next = p.gather(1, src.clamp(max=G)[..., None].expand(-1, -1, self.vocab))
            q_next = torch.where((src <= G)[..., None], q_next, self._window_prior(st, pos[:, None] + src))
            self._draw_window(st, q_next, pos[:, None] + src)
            return
        drafts, dists = self._feature_steps(st, pos) if self.method == "feature" else self._draft_steps(st, pos)
        h, at = self._verify_pass(st, pos, drafts)
        if self.method == "feature":
            st.feats.copy_(h)
            st.base.copy_(pos)
        if self.vocab:
            p = self.target.head.probs(h, self.scale_table[at][..., None], st.guided, c.temperature, c.top_k, c.top_p)
            a, tokens = verify_tokens(
                p, torch.stack(dists, 1), drafts, u, st.noise.gumbel(pos, (self.vocab,), _RESIDUAL)
            )
            self._commit(st, tokens, a + 1, a, G, torch.zeros_like(a))
            return
        if c.cspd_rule == "path":
            return self._path_verify(st, pos, drafts, dists, h)
        mp, lvp = self._final(self.target, h, st, at)
        mq, lvq = torch.stack([m for m, _ in dists], 1), torch.stack([lv for _, lv in dists], 1)
        e = st.noise.normal(pos, (G, PROPOSALS, self.channels), stream=_PROPOSAL)
        v = st.noise.uniform(pos, (G, PROPOSALS), stream=_RESIDUAL)
        e_bonus = st.noise.normal(pos + G, (1, self.channels), stream=_FINAL)[:, 0]
        bonus = mp[:, G] + torch.exp(0.5 * lvp[:, G]) * e_bonus
        a, decided, tokens, commit, fallbacks = verify_gaussians(
            drafts, mp, lvp, mq, lvq, u, e, v, bonus, self.sampler.cfg.cspd_rule
        )
        self._commit(st, tokens, commit, decided, G, fallbacks)

    def _path_verify(self, st, pos, drafts, dists, h):
        """The path rule: the target's Gaussian at every denoising step of each drafted token's path (the draft's
        states, all steps in one pass), each step kept with probability min(1, p / q); at the first rejected step of
        the first rejected token, the state is redrawn from max(0, p - q) and the target finishes that path itself
        (on full acceptance it draws the extra token's whole path). A path drawn so is exactly the target's: each
        step is the target's step from the state before (speculative sampling, one step at a time). With the target
        as its own draft every step is kept and the tokens are the plain sampler's but for the last step's noise."""
        G, C, c, head = self.gamma, self.channels, self.sampler.cfg, self.target.head
        xs, mq, lvq = (torch.stack(t, 2) for t in zip(*dists))  # (S + 1, B, G, C), (S, B, G, C) twice
        S, B = mq.shape[0], len(pos)
        halves = h[:, :G].chunk(2) if st.guided else (h[:, :G],)  # guided: the conditional rows, then the null ones
        h_rows = torch.cat([t.reshape(-1, t.shape[-1]) for t in halves])
        scale = self.scale_table[pos[:, None] + torch.arange(G, device=pos.device)].reshape(-1, 1)
        mp, lvp = head.step_gaussians(h_rows, xs, scale, st.guided)
        lvp = lvp + 2 * math.log(c.temperature)
        log_ratio = gaussian_log_density(xs[1:], mp, lvp) - gaussian_log_density(xs[1:], mq, lvq)
        a, first = verify_path_steps(log_ratio.permute(1, 2, 0), st.noise.uniform(pos, (G, S), stream=_ACCEPT))
        rejected = a < G
        step = first.gather(1, a.clamp(max=G - 1)[:, None])[:, 0]  # the rejected token's first rejected step
        idx = (a.clamp(max=G - 1) * S + step)[:, None, None].expand(-1, 1, C)
        pick = lambda t: t.permute(1, 2, 0, 3).reshape(B, G * S, C).gather(1, idx)[:, 0]  # (B, C) at (a, step)
        e = st.noise.normal(pos, (PATH_PROPOSALS, C), stream=_PROPOSAL)
        v = st.noise.uniform(pos, (PATH_PROPOSALS,), stream=_RESIDUAL)
        y, found = gaussian_residual(pick(mp), pick(lvp), pick(mq), pick(lvq), e, v)
        # the path at position pos + a goes on with the noise a plain step there draws (the draft's path drew it
        # too, but only its steps before the rejected one decided anything), its last step with the draft's e0
        at = pos + a
        h_a = h.gather(1, self._dup(st, a)[:, None, None].expand(-1, 1, h.shape[-1]))[:, 0]
        last = st.noise.normal(at, (C,), stream=_FINAL)
        token = head.resume(h_a, y, torch.where(rejected, step + 1, 0), self.scale_table[at][:, None], st.noise, at,
                            last, st.guided, c.temperature)  # fmt: skip
        tokens = torch.cat([drafts, drafts[:, :1]], 1).scatter(1, a[:, None, None].expand(-1, 1, C), token[:, None])
        self._commit(st, tokens, a + 1, a, G, (rejected & ~found).long())

    def _window_prior(self, st, at):
        """(B, G, V) the draft distribution of window positions ``at`` (B, G) that no pass has reached: one-hot at
        the committed token one row up (raster order, ``jacobi_init="above"``), else uniform."""
        V, s = self.vocab, self.target.schedule
        uniform = torch.full((*at.shape, V), 1 / V, device=at.device)
        if self.sampler.cfg.jacobi_init != "above" or not isinstance(s, RasterSchedule):
            return uniform
        w = s.grid[1]
        above = (at - w).clamp(min=0, max=self.slots - 1)
        hot = F.one_hot(st.tokens.gather(1, above), V).float()
        return torch.where(((at >= w) & (at - w < st.pos[:, None]))[..., None], hot, uniform)

    def _draw_window(self, st, q, at):
        """Draft window positions ``at`` (B, G) from ``q`` (B, G, V), each with the noise of its own position (one
        draw for the whole window: a row per position)."""
        gumbel = st.noise.repeat(self.gamma).gumbel(at.flatten(), (self.vocab,), _JACOBI).view_as(q)
        st.window.copy_((q.log() + gumbel).argmax(-1))
        st.window_q.copy_(q)

    # ---- a batch -------------------------------------------------------------------------------------------------

    def _prefix(self, st):
        """The first tokens from the target alone (the plain loop's steps), the draft's cache filled with them,
        positions and statistics reset, the Jacobi window drawn at random."""
        s, m = self.sampler, self.target
        units, state, feats = [], None, []
        for k in range(self.prefix):
            inputs, state = m.schedule.step_input(state, units) if k else (None, None)
            if inputs is not None and inputs.is_floating_point():
                inputs = inputs.to(s.dtype)
            units.append(s._step(st, k, inputs, feats if self.method == "feature" else None))
        seq = torch.cat(units, 1)
        st.tokens[:, : self.prefix].copy_(seq)
        if self.method == "feature":
            # the draft's cache at positions 0 .. prefix - 2 from the target's features there; the first round reads
            # position prefix - 1 (base), whose feature waits in st.feats
            h = torch.cat(feats, 1)
            P = self.prefix
            at = torch.arange(P - 1, device=seq.device).expand(len(st.ids), -1)
            _, cos, sin = m._decode_tables(seq.device)
            emb = self._dup(st, m.input_emb(seq[:, : P - 1]))
            self.draft.decode_rows(h[:, : P - 1], emb, st.dcache, self._dup(st, at), cos, sin)
            st.feats.zero_()
            st.feats[:, 0].copy_(h[:, P - 1])
            st.base.fill_(P - 1)
        elif self.draft is not None:
            self.draft.decode_unit(0, None, st.labels, st.dcache, self.L)
            if self.prefix > 2:  # slots 1 .. prefix - 2; a round writes prefix - 1 and on
                at = torch.arange(1, self.prefix - 1, device=seq.device).expand(len(st.ids), -1)
                self._rows(self.draft, st.dcache, st, seq[:, : self.prefix - 2], at)
        st.pos.fill_(self.prefix)
        st.stats.zero_()
        if st.window is not None:
            at = st.pos[:, None] + torch.arange(self.gamma, device=st.pos.device)
            self._draw_window(st, self._window_prior(st, at), at)

    def _run(self, st, graph_name: str, fn):
        """``fn(st)`` eagerly, or through the batch state's captured graph (captured at the first call, after one
        eager run that warms kernels up, and replayed after)."""
        if not self.sampler.use_graph:
            return fn(st)
        graph = getattr(st, graph_name)
        if graph is None:
            self.sampler._warm_up(lambda: fn(st))  # a real run: its work is the first call's
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn(st)
            setattr(st, graph_name, graph)
            return None  # capturing does not run it: the caller's next call replays
        graph.replay()

    def sample_batch(self, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        B, m = len(labels), self.target
        st = self._states.get(B)
        if st is None:
            st = self._states[B] = _State(self, B)
        st.labels[:B].copy_(labels)
        if st.guided:
            st.labels[B:].fill_(m.null_class)
        st.ids.copy_(ids)
        st.noise.key.copy_(CounterNoise(self.sampler.cfg.seed, ids).key)
        self._run(st, "prefix_graph", self._prefix)  # at the first batch of a size: run eagerly, then captured
        every, rounds = self.sampler.cfg.sync_every, 0
        for r in range(self.L - self.prefix + 1):  # a round commits at least one token per row
            self._run(st, "round_graph", self._round_fn)
            rounds += 1
            if (r + 1) % every == 0 and bool((st.pos >= self.L).all()):
                break
        # a graph's capture interrupts the loop once (nothing ran in it): finish what is left
        while not bool((st.pos >= self.L).all()):
            self._run(st, "round_graph", self._round_fn)
            rounds += 1
        self.totals += st.stats.sum(1).double().cpu()
        self.images += B
        self.batches, self.rounds = self.batches + 1, self.rounds + rounds
        return m.schedule.from_sequence(st.tokens[:, : self.L].clone())  # the buffer is the next batch's
