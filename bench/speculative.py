"""Speculative decoding on trained models: images/s against visgen's plain sampler (same settings, same run), the
acceptance statistics, and FD with and without.

Discrete: ``--target`` (a GPT-B-sized token model) with ``--draft`` (a small one over the same VQ tokenizer) for
``draft``, with ``--feature-draft`` (a ``FeatureDraft`` trained on the target by ``train.py feature-draft``) for
``feature``, and the target alone for ``jacobi``. Continuous: ``--cspd-target`` / ``--cspd-draft`` (two diffusion-head
models over the same KL tokenizer) for ``cspd`` under the path rule (exact, the default), the paper's final-step
rule (``cspd_final``, exact) and the reference's relaxation (``cspd_reference``). Figures: ``speedup_{method}_b{batch}`` (images/s, decoding included, over the plain
sampler's in this run), ``images_per_s_{method}_b{batch}``, ``acceptance_{method}``, ``tokens_per_pass_{method}``,
``target_passes_per_image_{method}`` (pooled over the timed batches), ``rounds_per_batch_{method}_b{batch}`` (the
rounds a batch runs: its slowest row's) beside ``rounds_per_row_{method}_b{batch}`` (the mean row's),
``round_cost_plain_steps_{method}_b{batch}`` (a round's time over a plain step's, both timed on tokens only, the
rounds' share of a batch being its time less its prefix of plain steps), and with ``--ref``
``fd_cifar10cls_{method}`` of ``--fd-samples`` samples (``--cspd-fd-samples`` for the continuous models, whose plain
FD is taken at each of ``--seeds`` for the seed-to-seed spread). ``--profile-batches 8`` adds, for the plain sampler
and each method, what one batch launches per token (``profile_{method}_b8_kernels_per_token``) and its device time
(``..._device_ms_per_token``), with the profiler's top operators in ``--profile-table``: where a round's time goes.
``--compile`` (with ``--compile-mode``) times the plain sampler and every method compiled alike, a speculative round
then one compiled graph (``compiled``: 1 in the figures).

    python bench/speculative.py --target T --draft D --cspd-target CT --cspd-draft CD --ref DATA/train \
        --name bench-speculative          # a GPU; --tiny: tiny random models, to check the script on a CPU
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from common import Record, bench_sampling, parser, profile_sampling

from visgen.checkpoint import load_model
from visgen.cli.fid import main as fid_main
from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import SamplingConfig
from visgen.sampling.feature_draft import FeatureDraft
from visgen.sampling.sampler import COMPILE_MODES
from visgen.tokenizers import KLConfig, KLTokenizer, VQConfig, VQTokenizer


def tiny_checkpoints(folder: Path) -> dict[str, str]:
    """Random tiny target / draft pairs over shared tokenizers, saved as checkpoints (a CPU check of the script)."""
    vq = VQTokenizer(VQConfig(channels=8, channel_mult=(1, 2), z_channels=8, codebook_size=32, codebook_dim=4))
    kl = KLTokenizer(KLConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3))
    out = {}
    for name, tok, head in (("target", vq, "categorical"), ("cspd_target", kl, "diffusion")):
        for role, seed in ((name, 0), (name.replace("target", "draft"), 1)):
            torch.manual_seed(seed)
            opts = {"width": 16, "depth": 1, "steps": 4} if head == "diffusion" else {}
            cfg = GeneratorConfig(tokenizer="-", image_size=16, num_classes=10, backbone="tiny", head=head,
                                  head_options=opts)  # fmt: skip
            gen = Generator(cfg, tokenizer=tok)
            for p in gen.head.parameters():
                torch.nn.init.normal_(p, std=0.1)
            gen.save_pretrained(folder / role)
            out[role] = str(folder / role)
            if role == "target":
                FeatureDraft.for_target(gen).save_pretrained(folder / "feature_draft")
                out["feature_draft"] = str(folder / "feature_draft")
    return out


def fd(args, checkpoint: str, n: int, seed: int = 0, **spec) -> float:
    """FD of ``n`` samples through the harness (eval/fid.py), with the speculative flags ``spec``."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in spec.items()]
        argv = ["--input", checkpoint, "--ref", args.ref, "--num-samples", str(n), "--cfg-scale", str(args.cfg_scale),
                "--seed", str(seed), "--batch-size", str(args.fd_batch), "--no-kid", "--report", str(report),
                "--top-k", str(args.top_k), *flags]  # fmt: skip
        if fid_main(argv) != 0:
            raise SystemExit(f"eval/fid.py failed for {checkpoint} {spec}")
        return json.loads(report.read_text())["metrics"]["fd_cifar10cls"]


def bench_family(args, rec: Record, target: str, draft: str, methods: dict[str, dict], fd_samples: int,
                 seeds: list[int]):  # fmt: skip
    gen, drafter = load_model(target, ema=True), load_model(draft, ema=True)
    own = lambda spec: None if "draft" in spec else drafter  # noqa: E731  (a method naming its own draft loads it)
    key = methods_key(methods)
    rec.add(f"params_target_{key}", sum(p.numel() for p in gen.parameters()), ",d")
    rec.add(f"params_draft_{key}", sum(p.numel() for p in drafter.parameters()), ",d")
    pooled: dict[str, list[dict]] = {m: [] for m in methods}
    for b in args.sample_batches:
        repeats = max(2, args.images // b)
        base = dict(cfg_scale=args.cfg_scale, batch_size=b, top_k=args.top_k, decode_kernel=args.decode_kernel)
        plain = bench_sampling(gen, SamplingConfig(**base), repeats, decode=True)
        rec.add(f"images_per_s_plain_{key}_b{b}", plain["images_per_s"], ".2f")
        step_s = None
        if args.round_images:  # tokens only: what a round costs in plain steps (the decoder left out of both)
            tok_repeats = max(2, args.round_images // b)
            tok = bench_sampling(gen, SamplingConfig(**base), tok_repeats, decode=False)
            step_s = b / tok["images_per_s"] / gen.schedule.seq_len  # one plain step of a batch
        for name, spec in methods.items():
            r = bench_sampling(gen, SamplingConfig(**base, **spec), repeats, decode=True, draft=own(spec))
            rec.add(f"images_per_s_{name}_b{b}", r["images_per_s"], ".2f")
            rec.add(f"speedup_{name}_b{b}", r["images_per_s"] / plain["images_per_s"], ".3f")
            rec.add(f"rounds_per_batch_{name}_b{b}", r["rounds_per_batch"], ".2f")  # the slowest row's
            rec.add(f"rounds_per_row_{name}_b{b}", r["rounds_per_row"], ".2f")  # the mean row's
            pooled[name].append({**r, "images": repeats * b})
            if step_s:
                t = bench_sampling(gen, SamplingConfig(**base, **spec), tok_repeats, decode=False, draft=own(spec))
                rounds_s = b / t["images_per_s"] - t["prefix_units"] * step_s  # the batch's time past its prefix
                rec.add(f"round_cost_plain_steps_{name}_b{b}", rounds_s / t["rounds_per_batch"] / step_s, ".3f")
    for name, runs in pooled.items():
        n = sum(r["images"] for r in runs)
        for stat in ("acceptance", "tokens_per_pass", "target_passes_per_image"):
            rec.add(f"{stat}_{name}", sum(r[stat] * r["images"] for r in runs) / n, ".3f")
    for b in args.profile_batches:  # what each method launches per token, where a round's time goes
        base = dict(
            cfg_scale=args.cfg_scale,
            batch_size=b,
            top_k=args.top_k,
            decode_kernel=args.decode_kernel,
            **compile_settings(args),
        )
        for name, spec in {f"plain_{key}": {}, **methods}.items():
            r = profile_sampling(gen, SamplingConfig(**base, **spec), own(spec) if spec else None, args.profile_table,
                                 f"{name} at batch {b}")  # fmt: skip
            rec.add(f"profile_{name}_b{b}_kernels_per_token", r["kernels"], ".1f")
            rec.add(f"profile_{name}_b{b}_device_ms_per_token", r["device_ms"], ".4f")
    if not args.ref or fd_samples < 1:
        return
    for s in seeds:
        rec.add(f"fd_cifar10cls_plain_{key}_seed{s}", fd(args, target, fd_samples, s), ".4f")
    for name, spec in methods.items():
        rec.add(f"fd_cifar10cls_{name}", fd(args, target, fd_samples, seeds[0], **{"draft": draft, **spec}), ".4f")


def compile_settings(args) -> dict:
    """``--compile``: the plain sampler and every method compiled alike (blocks, head, the speculative round)."""
    return dict(compile=True, compile_mode=args.compile_mode) if args.compile else {}


def methods_key(methods: dict) -> str:
    return "cspd" if any(m.get("speculative") == "cspd" for m in methods.values()) else "discrete"


def main():
    p = parser(__doc__)
    p.set_defaults(sample_batches=[1, 8, 64])
    p.add_argument("--target")
    p.add_argument("--draft")
    p.add_argument("--feature-draft", help="a FeatureDraft of --target (adds the method 'feature')")
    p.add_argument("--cspd-target")
    p.add_argument("--cspd-draft")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--cspd-gamma", type=int, default=4)
    p.add_argument("--cspd-prefill", type=float, default=0.0)
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--top-k", type=int, default=0, help="top-k of both models' distributions (0: all tokens)")
    p.add_argument("--images", type=int, default=64, help="images timed per batch size (at least two batches)")
    p.add_argument("--round-images", type=int, default=16,
                   help="images of tokens only (no decoder) per batch size and method, timed to give what a round "
                   "costs in plain steps (round_cost_plain_steps_{method}_b{batch}); 0: not timed")  # fmt: skip
    p.add_argument("--ref", help="training images for FD (skipped without)")
    p.add_argument("--fd-samples", type=int, default=10000)
    p.add_argument("--cspd-fd-samples", type=int, default=2000)
    p.add_argument("--fd-batch", type=int, default=500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the plain FD (cspd models)")
    p.add_argument(
        "--profile-batches",
        type=int,
        nargs="*",
        default=[],
        help="batch sizes to profile one batch of each method at (kernels and device time per token)",
    )
    p.add_argument("--profile-table", help="a text file the profiler's top operators of each profiled batch go to")
    p.add_argument("--compile", action="store_true", help="compiled sampling for the plain sampler and every method")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES)
    p.add_argument(
        "--decode-kernel",
        default="auto",
        choices=["auto", "sdpa", "triton"],
        help="triton: speculative windows through the rows kernel as well (auto leaves them to SDPA)",
    )
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    rec = Record(args.name)
    rec.add("compiled", int(args.compile), "d")  # 1: every figure of this run comes from compiled sampling
    rec.add("decode_kernel", args.decode_kernel)
    with tempfile.TemporaryDirectory() as tmp:
        paths = tiny_checkpoints(Path(tmp)) if args.tiny else {}
        target, draft = paths.get("target", args.target), paths.get("draft", args.draft)
        if target and draft:
            methods = {"draft": dict(speculative="draft", gamma=args.gamma), "jacobi": dict(speculative="jacobi",
                       gamma=args.gamma)}  # fmt: skip
            feature = paths.get("feature_draft", args.feature_draft)
            if feature:
                methods["feature"] = dict(speculative="feature", gamma=args.gamma, draft=feature)
            bench_family(args, rec, target, draft, methods, args.fd_samples, args.seeds[:1])
        ct, cd = paths.get("cspd_target", args.cspd_target), paths.get("cspd_draft", args.cspd_draft)
        if ct and cd:
            common = dict(speculative="cspd", gamma=args.cspd_gamma, prefill=args.cspd_prefill)
            methods = {"cspd": {**common, "cspd_rule": "path"}, "cspd_final": {**common, "cspd_rule": "final"},
                       "cspd_reference": {**common, "cspd_rule": "reference"}}  # fmt: skip
            bench_family(args, rec, ct, cd, methods, args.cspd_fd_samples, args.seeds)


if __name__ == "__main__":
    main()
