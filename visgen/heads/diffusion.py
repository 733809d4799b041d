"""Diffusion head (MAR, Li et al. 2024, sec. 3 and appendix): a per-token denoising diffusion model of the next
token's continuous latent given the backbone's feature for it.

Training: the improved-DDPM cosine schedule of 1000 steps (Nichol & Dhariwal 2021), epsilon prediction with a
learned variance (the hybrid loss: MSE on epsilon plus the variational bound through the variance only), each
token's latent noised ``batch_mul`` times per step (MAR's diffusion batch multiplier, 4). Sampling: DDPM ancestral
steps on the schedule respaced to ``steps`` (100), the sampling noise scaled by a temperature (MAR's), guidance on
epsilon with the conditional and unconditional rows sharing their noise; or DDIM's deterministic steps (Song et al.
2021, eta = 0: the predicted clean latent carried to the next kept step along the predicted noise), the temperature
scaling the starting noise, as the flow heads do. Every random draw comes from the sampler's counter noise keyed by
(sample, unit, denoising step), so two heads can follow one aligned trajectory and ``log_density`` gives each DDPM
step's Gaussian log-density for continuous speculative decoding (CSpD).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from visgen.config import ConfigError
from visgen.heads.mlp import MLPDenoiser
from visgen.sampling.noise import CounterNoise

SOLVERS = ("ddpm", "ddim")


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t of alpha_bar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), s = 0.008 (Nichol & Dhariwal 2021, eq. 17)."""
    f = lambda t: math.cos((t / num_steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - f(i + 1) / f(i), max_beta) for i in range(num_steps)], dtype=torch.float64)


def respaced(num_steps: int, steps: int) -> list[int]:
    """``steps`` timesteps of ``num_steps``, evenly spaced from 0 to num_steps - 1 (improved DDPM's respacing)."""
    if steps == 1:
        return [num_steps - 1]
    return sorted({round(i * (num_steps - 1) / (steps - 1)) for i in range(steps)})


class _Schedule(nn.Module):
    """The per-step constants of a (respaced) DDPM, as fp32 buffers; index k of each is the k-th kept timestep."""

    def __init__(self, betas_full: torch.Tensor, use: list[int]):
        super().__init__()
        ab_full = torch.cumprod(1 - betas_full, 0)
        ab = ab_full[use]
        ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
        betas = 1 - ab / ab_prev  # the respaced process keeps alpha_bar at the kept steps
        post_var = betas * (1 - ab_prev) / (1 - ab)
        consts = {
            "timestep": torch.tensor(use, dtype=torch.float64),  # what the network sees: the original step index
            "sqrt_ab": ab.sqrt(), "sqrt_1m_ab": (1 - ab).sqrt(),
            "sqrt_ab_prev": ab_prev.sqrt(), "sqrt_1m_ab_prev": (1 - ab_prev).sqrt(),
            "sqrt_recip_ab": (1 / ab).sqrt(), "sqrt_recipm1_ab": (1 / ab - 1).sqrt(),
            "coef_x0": betas * ab_prev.sqrt() / (1 - ab), "coef_xt": (1 - ab_prev) * (1 - betas).sqrt() / (1 - ab),
            # log of the posterior variance, its first (zero) entry replaced by the second, as improved DDPM
            "post_log_var": torch.log(torch.cat([post_var[1:2], post_var[1:]])), "log_beta": betas.log(),
        }  # fmt: skip
        self._master = {k: v.float() for k, v in consts.items()}
        for k, v in self._master.items():
            self.register_buffer(k, v, persistent=False)

    def _apply(self, fn, recurse=True):
        # follow the model's device but stay fp32 whatever its dtype: sqrt(1 / alpha_bar - 1) reaches ~600, and a
        # bf16 copy for sampling would carry 3 significant digits of it
        super()._apply(fn, recurse)
        device = self.timestep.device
        for k, v in self._master.items():
            self._buffers[k] = v.to(device)
        return self

    def __len__(self) -> int:
        return len(self.timestep)


def _approx_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) for x in [-1, 1] on 256 bins under N(mean, exp(log_scale)^2) (improved DDPM's decoder term at t = 0,
    which MAR keeps for latents)."""
    centered, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus, cdf_min = (
        _approx_normal_cdf(inv_std * (centered + 1 / 255)),
        _approx_normal_cdf(inv_std * (centered - 1 / 255)),
    )
    log_cdf_plus, log_1m_cdf_min = cdf_plus.clamp_min(1e-12).log(), (1 - cdf_min).clamp_min(1e-12).log()
    mid = (cdf_plus - cdf_min).clamp_min(1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_1m_cdf_min, mid))


class DiffusionHead(nn.Module):
    """p(x | z) for each token's latent x (``channels``) given its feature z (``d_model``); module docstring.

    width, depth: the denoiser MLP (MAR-B: 1024 x 6); train_steps: diffusion steps of training (1000); steps:
    respaced steps when sampling (100); batch_mul: noise draws per token per training step (4); x0_clip: when
    sampling, the clean latent predicted at each step is clipped to +-x0_clip (0: never, as MAR). DDPM clips it to
    the image range; latents scaled to unit variance need it at the first step, where alpha_bar is 2.4e-9 and an
    epsilon error e moves the predicted latent by e / 4.9e-5: without it a head trained for minutes (epsilon off by
    0.03 there) draws latents in the hundreds (a test shows both). solver: ``ddpm`` (ancestral steps, MAR's) or
    ``ddim`` (deterministic steps; on a Gaussian whose noise prediction is exact, 40 of them land nearer than 100
    of DDPM's, a test shows, but on a briefly trained toy head they spread a mode wider than DDPM's:
    ``results/diffusion-head-ddim-cpu.json``; CSpD needs ``ddpm``, whose steps have densities).
    """

    discrete = False

    def __init__(self, d_model: int, channels: int, width: int = 1024, depth: int = 6, train_steps: int = 1000,
                 steps: int = 100, batch_mul: int = 4, x0_clip: float = 5.0, solver: str = "ddpm"):  # fmt: skip
        super().__init__()
        if not 1 <= steps <= train_steps:
            raise ConfigError(f"head_options.steps must be between 1 and train_steps ({train_steps}), got {steps}")
        if min(width, depth, batch_mul) < 1:
            raise ConfigError("head_options width, depth and batch_mul must be at least 1")
        if not x0_clip >= 0:
            raise ConfigError(f"head_options.x0_clip must be >= 0 (0: off), got {x0_clip}")
        self.set_solver(solver, "head_options.solver")
        self.channels, self.batch_mul, self.steps, self.x0_clip = channels, batch_mul, steps, float(x0_clip)
        self.net = MLPDenoiser(channels, d_model, width, depth, out_channels=2 * channels)  # epsilon, variance
        betas = cosine_betas(train_steps)
        self.train_schedule = _Schedule(betas, list(range(train_steps)))
        self.sample_schedule = _Schedule(betas, respaced(train_steps, steps))

    def set_sampling_steps(self, steps: int):
        """Sample with ``steps`` respaced steps instead of the recipe's (fewer: faster, and the density of each step
        changes with it, so a CSpD pair must use the same number)."""
        train_steps = len(self.train_schedule)
        if not isinstance(steps, int) or not 1 <= steps <= train_steps:
            raise ConfigError(f"head steps must be between 1 and the head's train_steps ({train_steps}), got {steps}")
        device = self.train_schedule.timestep.device
        self.steps = steps
        self.sample_schedule = _Schedule(cosine_betas(train_steps), respaced(train_steps, steps)).to(device)

    def set_solver(self, solver: str, what: str = "head solver"):
        """Sample with ``solver`` (``ddpm`` or ``ddim``) instead of the recipe's."""
        if solver not in SOLVERS:
            raise ConfigError(f"{what} must be one of {', '.join(SOLVERS)}, got {solver!r}")
        self.solver = solver

    # ---- training --------------------------------------------------------------------------------------------------

    def _gaussian(self, sch: _Schedule, x_t, t, eps, v, clip: float = 0.0):
        """(mean, log variance) of p(x_{t-1} | x_t) from predicted epsilon and variance values (indices ``t``); the
        predicted clean latent clipped to +-``clip`` when it is not 0."""

        def g(name):  # per row (t of shape (N,), training), or one step (an int, or a 1-element tensor when compiled)
            v = getattr(sch, name)[t]
            return v[:, None] if v.dim() else v

        x0 = g("sqrt_recip_ab") * x_t - g("sqrt_recipm1_ab") * eps
        if clip:
            x0 = x0.clamp(-clip, clip)
        mean = g("coef_x0") * x0 + g("coef_xt") * x_t
        frac = (v + 1) / 2  # the learned variance interpolates log beta and the posterior's log variance
        return mean, frac * g("log_beta") + (1 - frac) * g("post_log_var")

    def loss(self, target_BLC: torch.Tensor, h_BLD: torch.Tensor, unit_sizes: list[int] | None = None) -> torch.Tensor:
        """Hybrid loss per token, averaged over tokens (every token weighs the same, whatever its unit)."""
        C, m, sch = self.channels, self.batch_mul, self.train_schedule
        x0 = target_BLC.reshape(-1, C).float().repeat(m, 1)
        z = h_BLD.reshape(-1, h_BLD.shape[-1]).repeat(m, 1)
        t = torch.randint(0, len(sch), (len(x0),), device=x0.device)
        eps = torch.randn_like(x0)
        x_t = sch.sqrt_ab[t][:, None] * x0 + sch.sqrt_1m_ab[t][:, None] * eps
        out = self.net(x_t.to(z.dtype), sch.timestep[t], z).float()
        eps_pred, v = out[:, :C], out[:, C:]
        mse = (eps_pred - eps).pow(2).mean(-1)
        # the bound trains the variance only: the mean through it is the frozen epsilon's (improved DDPM, sec. 3.1)
        mean, log_var = self._gaussian(sch, x_t, t, eps_pred.detach(), v)
        true_mean = sch.coef_x0[t][:, None] * x0 + sch.coef_xt[t][:, None] * x_t
        true_log_var = sch.post_log_var[t][:, None]
        kl = 0.5 * (-1 + log_var - true_log_var + torch.exp(true_log_var - log_var)
                    + (true_mean - mean).pow(2) * torch.exp(-log_var))  # fmt: skip
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        vb = torch.where(t == 0, nll.mean(-1), kl.mean(-1)) / math.log(2)  # bits, as improved DDPM
        return (mse + vb).mean()

    def distill_loss(self, teacher: DiffusionHead, h_BLD: torch.Tensor, teacher_h_BLD: torch.Tensor,
                     tokens: int = 0) -> torch.Tensor:  # fmt: skip
        """KL(teacher's step || this head's step) summed over channels and over the S steps of the teacher's own
        sampling paths, per token: what continuous speculative decoding's path rule pays when this head drafts for
        ``teacher`` (it keeps a step with probability 1 - the two steps' total variation, which the KL bounds).
        ``tokens`` of the batch's (0: all), drawn at random, each get a path of the teacher's from noise (no
        gradients; the clean latent clipped as when sampling), and both heads' Gaussians at every state of it; the
        teacher's features ``teacher_h`` come without gradients."""
        C, S = self.channels, len(self.sample_schedule)
        z, z_t = h_BLD.reshape(-1, h_BLD.shape[-1]), teacher_h_BLD.reshape(-1, teacher_h_BLD.shape[-1])
        if 0 < tokens < len(z):
            pick = torch.randperm(len(z), device=z.device)[:tokens]
            z, z_t = z[pick], z_t[pick]
        with torch.no_grad():  # the teacher's paths, their noise seeded from torch's generator
            seed = int(torch.randint(0, 2**31, (1,)))
            path = teacher.trajectory(z_t[:, None], 1.0, CounterNoise(seed, torch.arange(len(z), device=z.device)), 0)
            mp, lvp = path["mean"].reshape(S * len(z), C), path["log_var"].reshape(S * len(z), C)
        k = torch.arange(S - 1, -1, -1, device=z.device).repeat_interleave(len(z))
        mq, lvq = self._step(k, path["xs"][:S].reshape(-1, C), self._prepare(z.repeat(S, 1)), 1.0, False)
        kl = 0.5 * (lvq - lvp + torch.exp(lvp - lvq) - 1 + (mp - mq).pow(2) * torch.exp(-lvq))
        return kl.sum(-1).view(S, -1).sum(0).mean()

    # ---- sampling --------------------------------------------------------------------------------------------------

    def compile_step(self, **options):
        """``torch.compile`` one denoising step (trunk, guidance, the step's mean and variance) for sampling: the
        step index goes in as a 1-element tensor, so all steps share one graph instead of one compile each (what
        ``SamplingConfig(compile=True)`` calls on the sampler's copy of the model)."""
        self._compiled_step = torch.compile(self._step, fullgraph=True, **options)

    def _prepare(self, h: torch.Tensor):
        """What every denoising step of a unit shares (``MLPDenoiser.prepare`` at the kept timesteps)."""
        return self.net.prepare(h, self.sample_schedule.timestep)

    def _step(self, k, x: torch.Tensor, shared, cfg_scale, guided: bool):
        """(mean, log variance) of the sampling step at kept timestep k (an int, a 1-element tensor, or one per row)
        for states ``x`` (N, C), fp32; ``shared``: ``_prepare`` of the unit's features. DDIM: (the next state, None)."""
        sch, C = self.sample_schedule, self.channels
        rows_k = torch.is_tensor(k) and k.numel() > 1  # a kept step per row (``step_gaussians``)
        out = self.net.step(torch.cat([x, x]) if guided else x, shared, torch.cat([k, k]) if guided and rows_k else k)
        eps, v = out[:, :C], out[:, C:]
        if guided:  # guidance on epsilon; the variance is the conditional half's (MAR's forward_with_cfg)
            (eps_c, eps_u), v = eps.chunk(2), v.chunk(2)[0]
            eps = eps_u + torch.as_tensor(cfg_scale, device=eps.device, dtype=eps.dtype) * (eps_c - eps_u)
        if self.solver == "ddim":
            return self._ddim(sch, x, k, eps), None
        return self._gaussian(sch, x, k, eps, v, self.x0_clip)

    def _ddim(self, sch: _Schedule, x_t, k, eps):
        """DDIM's step (eta = 0) from kept timestep k to the one before: the predicted clean latent (clipped as
        DDPM's) and the noise that the clipped latent implies, put together at the earlier step's noise level."""
        x0 = sch.sqrt_recip_ab[k] * x_t - sch.sqrt_recipm1_ab[k] * eps
        if self.x0_clip:
            x0 = x0.clamp(-self.x0_clip, self.x0_clip)
            eps = (x_t - sch.sqrt_ab[k] * x0) / sch.sqrt_1m_ab[k]
        return sch.sqrt_ab_prev[k] * x0 + sch.sqrt_1m_ab_prev[k] * eps

    def _check_densities(self):
        if self.solver != "ddpm":
            raise ConfigError("continuous speculative decoding (cspd) needs the diffusion head's ddpm solver: DDIM's "
                              "steps are deterministic and give a token no density")  # fmt: skip

    def _denoise(self, h, cfg_scale, noise: CounterNoise, step, guided: bool, temperature: float, keep: str):
        """The sampling loop; ``keep``: ``sample`` (the latents), ``path`` (``trajectory``) or ``final`` (the last
        step's Gaussian, ``final_gaussian``)."""
        B, n, D = h.shape
        B = B // 2 if guided else B
        S, C = len(self.sample_schedule), self.channels
        ddim = self.solver == "ddim"
        if keep != "sample":
            self._check_densities()
        shared = self._prepare(h)
        shape = lambda t: t.view(B, n, C)
        x = noise.normal(step, (n, C), stream=0).reshape(B * n, C)
        if ddim:  # no noise along the way: the temperature scales where the path starts (as the flow heads')
            x = x * temperature
        # every step's noise drawn at once (one counter-noise call a unit), step i of the path at [:, i]
        e_all = noise.normal(step, (S, n, C), stream=1) if S > 1 and not ddim else None
        xs, means, log_vars = [x], [], []
        step_fn = getattr(self, "_compiled_step", None)
        # compiled: the step index as a 1-element tensor (a view of one arange: no copies), so every step is one
        # graph; indexing by it is a gather, where a 0-d index would be read back as a Python int (torch 2.11's
        # dynamo stops there: "data-dependent expression")
        index = range(S) if step_fn is None else torch.arange(S, device=x.device).view(S, 1)
        step_fn = step_fn or self._step
        for i, k in enumerate(reversed(range(S))):
            mean, log_var = step_fn(index[k], x, shared, cfg_scale, guided)
            if ddim:
                x = mean
            elif k > 0:  # the last step adds no noise (DDPM)
                x = mean + torch.exp(0.5 * log_var) * e_all[:, i].reshape(B * n, C) * temperature
            elif keep == "final":
                return shape(mean), shape(log_var)
            else:
                x = mean
            if keep == "path":
                xs.append(x)
                means.append(mean)
                log_vars.append(log_var)
        if keep == "sample":
            return shape(x)
        return {"xs": torch.stack([shape(t) for t in xs]), "mean": torch.stack([shape(t) for t in means]),
                "log_var": torch.stack([shape(t) for t in log_vars])}  # fmt: skip

    def sample(self, h: torch.Tensor, cfg_scale, noise: CounterNoise, step, guided: bool = False,
               temperature: float = 1.0, **_) -> torch.Tensor:  # fmt: skip
        """Latents (B, n, C) from features ``h`` (B, n, D), or (2B, n, D) when ``guided`` (conditional rows, then
        unconditional); noise keyed by (sample, ``step``, denoising step)."""
        return self._denoise(h, cfg_scale, noise, step, guided, temperature, keep="sample")

    # ---- densities, for continuous speculative decoding ---------------------------------------------------------

    def trajectory(self, h: torch.Tensor, cfg_scale, noise: CounterNoise, step, guided: bool = False,
                   temperature: float = 1.0) -> dict[str, torch.Tensor]:  # fmt: skip
        """A sample with its whole denoising path: ``xs`` (S + 1, B, n, C) from the initial noise to the sample,
        and each step's Gaussian ``mean`` and ``log_var`` (S, B, n, C) before the temperature."""
        return self._denoise(h, cfg_scale, noise, step, guided, temperature, keep="path")

    def final_gaussian(self, h: torch.Tensor, cfg_scale, noise: CounterNoise, step, guided: bool = False,
                       temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(mean, log_var) (B, n, C) of the last denoising step, x_0 ~ N(mean, exp(log_var)), along the path
        that ``sample`` takes under the same noise (``sample`` returns its mean). Continuous speculative decoding
        takes a token's density to be this Gaussian: two heads on one aligned path (the same counter noise) give
        the two densities of one token (CSpD, Wang et al. 2024, sec. 3)."""
        return self._denoise(h, cfg_scale, noise, step, guided, temperature, keep="final")

    def step_gaussians(self, h: torch.Tensor, xs: torch.Tensor, cfg_scale, guided: bool = False):
        """This head's (mean, log_var) (S, B, n, C) for each step of a given path ``xs`` (S + 1, B, n, C; another
        head's, say), every step at once: the path is known, so its S steps are one pass over S * B * n rows."""
        self._check_densities()
        S, C = len(self.sample_schedule), self.channels
        rows = xs[0].numel() // C
        halves = h.reshape(2 if guided else 1, rows, h.shape[-1])  # guided: the conditional rows, then the null ones
        h_all = halves[:, None].expand(-1, S, -1, -1).reshape(-1, h.shape[-1])
        k = torch.arange(S - 1, -1, -1, device=xs.device).repeat_interleave(rows)  # path step i is kept step S-1-i
        if torch.is_tensor(cfg_scale) and cfg_scale.dim():  # a scale per row, (rows, 1): the same at every step
            cfg_scale = cfg_scale.reshape(1, rows, -1).expand(S, -1, -1).reshape(S * rows, -1)
        mean, log_var = self._step(k, xs[:S].reshape(-1, C).float(), self._prepare(h_all), cfg_scale, guided)
        return mean.view(S, *xs.shape[1:]), log_var.view(S, *xs.shape[1:])

    def resume(self, h: torch.Tensor, x: torch.Tensor, start: torch.Tensor, cfg_scale, noise: CounterNoise, step,
               last: torch.Tensor, guided: bool = False, temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
        """Paths of one token a row finished by this head: ``x`` (N, C) is row r's state before path step
        ``start[r]`` (S: nothing left to do); rows that start at 0 begin where ``sample`` begins under ``noise`` at
        ``step`` (x ignored there), and every step draws ``sample``'s noise, but the last, which ``sample`` leaves
        noiseless, draws ``last`` (N, C) standard normals: the token has a density (continuous speculative
        decoding's path rule: a rejected step redrawn, the rest of the path the target's own). One loop over the S
        steps, each row moving from its own start on. ``h`` (N, D), or (2N, D) when ``guided``."""
        self._check_densities()
        S, C, N = len(self.sample_schedule), self.channels, len(x)
        x = torch.where((start == 0)[:, None], noise.normal(step, (1, C), stream=0).reshape(N, C), x.float())
        e_all = noise.normal(step, (S, 1, C), stream=1) if S > 1 else None  # as ``_denoise`` draws them
        shared = self._prepare(h)
        step_fn = getattr(self, "_compiled_step", None)
        index = range(S) if step_fn is None else torch.arange(S, device=x.device).view(S, 1)
        step_fn = step_fn or self._step
        for i, k in enumerate(reversed(range(S))):
            mean, log_var = step_fn(index[k], x, shared, cfg_scale, guided)
            e = e_all[:, i, 0] if k > 0 else last
            x = torch.where((start <= i)[:, None], mean + torch.exp(0.5 * log_var) * e * temperature, x)
        return x

    @staticmethod
    def log_density(xs: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, temperature: float = 1.0):
        """log N(xs[i + 1]; mean[i], exp(log_var[i]) * temperature^2) summed over channels, (S - 1, B, n): each
        step that draws noise (the last one is deterministic)."""
        x, mu, lv = xs[1:-1].float(), mean[:-1].float(), log_var[:-1].float() + 2 * math.log(temperature)
        return (-0.5 * ((x - mu).pow(2) * torch.exp(-lv) + lv + math.log(2 * math.pi))).sum(-1)
