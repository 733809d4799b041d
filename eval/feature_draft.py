"""How often speculative decoding would accept the tokens of a draft that reads the target's own features
(EAGLE-style, ``visgen.sampling.feature_draft``), trained by ``train.py feature-draft``.

A token target's feature f_i (the backbone's output that predicts token i) and the embedding of the token drawn
there go through one linear layer and a small causal transformer, trained with the target frozen to predict the
target's next feature f_(i+1); the target's own head turns that into the draft's distribution q. What matters for
speculative decoding is how much q overlaps the target's p: a drafted token is accepted with probability
sum_x min(p(x), q(x)) (temperature 1, no guidance). Reported on held-out images, per drafted position:

- ``overlap_depth1``: the first drafted token (the draft reads the target's true feature);
- ``overlap_depth2``: the second (it reads its own predicted feature, as drafting further does);
- ``overlap_unigram``: a draft that ignores the context (the training tokens' frequencies), the floor;
- ``overlap_null_depth1``: the first drafted token where the target reads the null class, as the unguided half of a
  guided batch does;
- ``tokens_per_pass_gamma{g}``: (1 - a^(g+1)) / (1 - a) at a = ``overlap_depth1``, the tokens a verifying pass would
  keep if every position were accepted as often as the first (an upper bound where depth lowers it);
- with ``--sample-images``: acceptance and tokens per pass as the sampler draws, Jacobi drafts beside.

    python train.py feature-draft --recipe generators/cifar10-feature-draft.yaml
    python eval/feature_draft.py --data /path/to/cifar10 --draft runs/cifar10-feature-draft/final --sample-images 50 \
        --name feature-draft-sampling-cpu
"""

from __future__ import annotations

import argparse

import torch

from visgen.checkpoint import load_model
from visgen.config import ConfigError
from visgen.data import DataConfig, DataError, build_dataset
from visgen.results import metrics_line, write_result
from visgen.sampling import Sampler, SamplingConfig
from visgen.sampling.feature_draft import FeatureDraft, check_token_target, held_out_overlaps, overlap
from visgen.train.generator_task import TokenDataset


def sampled(target, draft, args) -> dict:
    """Acceptance and tokens per verifying pass as the sampler draws ``args.sample_images`` images (class-balanced,
    guidance ``args.cfg_scale``, temperature 1) with the feature draft, and with Jacobi drafts beside it."""
    labels = torch.arange(args.sample_images) % target.config.num_classes
    out = {"sampler_images": args.sample_images, "sampler_cfg_scale": args.cfg_scale}
    for g in args.gammas:
        for method in ("feature", "jacobi"):
            cfg = SamplingConfig(cfg_scale=args.cfg_scale, speculative=method, gamma=g, seed=args.seed,
                                 batch_size=args.sample_images)  # fmt: skip
            s = Sampler(target, cfg, device="cpu", draft=draft if method == "feature" else None)
            s.sample_tokens(labels)
            stats = s.speculative.stats
            out[f"sampler_acceptance_{method}_gamma{g}"] = stats["acceptance"]
            out[f"sampler_tokens_per_pass_{method}_gamma{g}"] = stats["tokens_per_pass"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="visgen/assets/cifar10-token-ar", help="a token generator's folder")
    p.add_argument("--data", required=True, help="an image folder with train/ and test/ (CIFAR-10)")
    p.add_argument("--draft", required=True, help="a feature draft's folder (train.py feature-draft's final/)")
    p.add_argument("--train-images", type=int, default=10000, help="training images whose token frequencies make "
                   "the context-free floor (overlap_unigram)")  # fmt: skip
    p.add_argument("--val-images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gammas", type=int, nargs="+", default=[4, 8])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--sample-images", type=int, default=0,
                   help="also sample this many images through the sampler with speculative 'feature' (and 'jacobi' "
                   "beside it) at --cfg-scale and each of --gammas: acceptance and tokens per pass as sampled")  # fmt: skip
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    try:
        if min(args.train_images, args.val_images, args.batch_size) < 1:
            raise ConfigError("--train-images, --val-images and --batch-size must be at least 1")
        target = load_model(args.target, ema=True).eval().requires_grad_(False)
        check_token_target(target, args.target)
        sets = [build_dataset(DataConfig(path=f"{args.data}/{split}", image_size=target.config.image_size, limit=n))
                for split, n in (("train", args.train_images), ("test", args.val_images))]  # fmt: skip
        draft = load_model(args.draft).float().eval()
        if not isinstance(draft, FeatureDraft):
            raise ConfigError(f"--draft {args.draft} is a {type(draft).__name__}, not a feature draft (train one "
                              "with train.py feature-draft)")  # fmt: skip
        draft.check_target(target)
    except (ConfigError, DataError, OSError) as e:
        print(f"error: {e}")
        return 2
    train, val = (TokenDataset.encode(s, target.tokenizer) for s in sets)
    target = target.cpu()
    freq = torch.bincount(train.tokens.flatten(), minlength=target.tokenizer.vocab_size).float() + 1
    log_unigram = (freq / freq.sum()).log()
    sums, counts = torch.zeros(5), torch.zeros(5)
    with torch.no_grad():
        for idx in torch.arange(len(val)).split(args.batch_size):
            o = held_out_overlaps(draft, target, val.tokens[idx], val.labels[idx])
            unigram = overlap(o["logp"][:, 1:], log_unigram)
            for i, v in enumerate((o["depth1"], o["depth2"], unigram, o["kl"], o["null"])):
                sums[i], counts[i] = sums[i] + v.sum(), counts[i] + v.numel()
    a1, a2, uni, kl, a_null = (sums / counts).tolist()
    metrics = {"overlap_depth1": a1, "overlap_depth2": a2, "overlap_unigram": uni, "overlap_null_depth1": a_null,
               "val_kl": kl,
               "draft_params": sum(q.numel() for q in draft.parameters()),
               "target_params": sum(q.numel() for q in target.parameters()), "train_images": len(train),
               "val_images": len(val), "draft": args.draft}  # fmt: skip
    for g in args.gammas:
        metrics[f"tokens_per_pass_gamma{g}"] = (1 - a1 ** (g + 1)) / (1 - a1) if a1 < 1 else g + 1.0
    if args.sample_images:
        metrics.update(sampled(target, draft, args))
    print(metrics_line(metrics))
    if args.name:
        print(write_result(f"{args.results_dir}/{args.name}.json", args.name, metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
