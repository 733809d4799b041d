"""Train a draft that reads the target's own features (EAGLE-style, ``visgen.sampling.feature_draft``) and measure
how often speculative decoding would accept its tokens.

A token target's feature f_i (the backbone's output that predicts token i) and the embedding of the token drawn
there go through one linear layer and a small causal transformer, trained with the target frozen to predict the
target's next feature f_(i+1); the target's own head turns that into the draft's distribution q. What matters for
speculative decoding is how much q overlaps the target's p: a drafted token is accepted with probability
sum_x min(p(x), q(x)) (temperature 1, no guidance). Reported on held-out images, per drafted position:

- ``overlap_depth1``: the first drafted token (the draft reads the target's true feature);
- ``overlap_depth2``: the second (it reads its own predicted feature, as drafting further does);
- ``overlap_unigram``: a draft that ignores the context (the training tokens' frequencies), the floor;
- ``tokens_per_pass_gamma{g}``: (1 - a^(g+1)) / (1 - a) at a = ``overlap_depth1``, the tokens a verifying pass would
  keep if every position were accepted as often as the first (an upper bound where depth lowers it).

    python eval/feature_draft.py --data /path/to/cifar10 --train-images 10000 --steps 1500 --name feature-draft-cpu \
        --out runs/feature-draft      # then: sample.py --speculative feature --draft runs/feature-draft
    python eval/feature_draft.py --data /path/to/cifar10 --draft runs/feature-draft --sample-images 50 \
        --name feature-draft-sampling-cpu    # a saved draft measured again, and as the sampler draws

The training here is one process on one device (no accelerate, no checkpoints along the way): a draft trains in
minutes on a CPU.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch
import torch.nn.functional as F

from visgen.checkpoint import load_model
from visgen.config import ConfigError
from visgen.data import DataConfig, DataError, build_dataset
from visgen.model_card import write_card
from visgen.results import metrics_line, write_result
from visgen.sampling import Sampler, SamplingConfig
from visgen.sampling.feature_draft import check_token_target, draft_pass, overlap, target_pass, train_feature_draft
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
    p.add_argument("--train-images", type=int, default=10000)
    p.add_argument("--val-images", type=int, default=2000)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", type=int, default=1, help="transformer blocks of the draft")
    p.add_argument("--feature-weight", type=float, default=1.0, help="weight of the feature regression beside KL")
    p.add_argument("--gammas", type=int, nargs="+", default=[4, 8])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--out", help="save the trained draft here (speculative='feature': sample.py --speculative "
                   "feature --draft OUT)")  # fmt: skip
    p.add_argument("--draft", help="measure this saved draft instead of training one")
    p.add_argument("--sample-images", type=int, default=0,
                   help="also sample this many images through the sampler with speculative 'feature' (and 'jacobi' "
                   "beside it) at --cfg-scale and each of --gammas: acceptance and tokens per pass as sampled")  # fmt: skip
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    try:
        if min(args.train_images, args.val_images, args.steps, args.batch_size) < 1:
            raise ConfigError("--train-images, --val-images, --steps and --batch-size must be at least 1")
        target = load_model(args.target, ema=True).eval().requires_grad_(False)
        check_token_target(target, args.target)
        sets = [build_dataset(DataConfig(path=f"{args.data}/{split}", image_size=target.config.image_size, limit=n))
                for split, n in (("train", args.train_images), ("test", args.val_images))]  # fmt: skip
    except (ConfigError, DataError, OSError) as e:
        print(f"error: {e}")
        return 2
    train, val = (TokenDataset.encode(s, target.tokenizer) for s in sets)
    t0 = time.perf_counter()
    if args.draft:
        draft = load_model(args.draft).float().eval()
        draft.check_target(target)
    else:
        draft = train_feature_draft(target, train.tokens, train.labels, args.steps, args.batch_size, args.lr,
                                    args.layers, args.feature_weight, args.seed, args.device).cpu().float()  # fmt: skip
    target = target.cpu()
    seconds = time.perf_counter() - t0
    freq = torch.bincount(train.tokens.flatten(), minlength=target.tokenizer.vocab_size).float() + 1
    log_unigram = (freq / freq.sum()).log()
    sums, counts = torch.zeros(4), torch.zeros(4)
    with torch.no_grad():
        for idx in torch.arange(len(val)).split(args.batch_size):
            seq, feats, logp = target_pass(target, val.tokens[idx], val.labels[idx])
            _, logq1, logq2 = draft_pass(draft, target, seq, feats, depth2=True)
            kl = F.kl_div(logq1, logp[:, 1:], log_target=True, reduction="none").sum(-1)
            for i, v in enumerate((overlap(logp[:, 1:], logq1), overlap(logp[:, 2:], logq2),
                                   overlap(logp[:, 1:], log_unigram), kl)):  # fmt: skip
                sums[i], counts[i] = sums[i] + v.sum(), counts[i] + v.numel()
    a1, a2, uni, kl = (sums / counts).tolist()
    metrics = {"overlap_depth1": a1, "overlap_depth2": a2, "overlap_unigram": uni, "val_kl": kl,
               "draft_params": sum(q.numel() for q in draft.parameters()),
               "target_params": sum(q.numel() for q in target.parameters()), "train_images": len(train),
               "val_images": len(val)}  # fmt: skip
    metrics.update({"draft": args.draft} if args.draft else {"steps": args.steps, "train_seconds": seconds})
    for g in args.gammas:
        metrics[f"tokens_per_pass_gamma{g}"] = (1 - a1 ** (g + 1)) / (1 - a1) if a1 < 1 else g + 1.0
    if args.sample_images:
        metrics.update(sampled(target, draft, args))
    print(metrics_line(metrics))
    if args.out:
        draft.save_pretrained(args.out)
        write_card(args.out, training={"target": args.target, "command": shlex.join(["python", *sys.argv])},
                   results={"held-out overlap": metrics})  # fmt: skip
    if args.name:
        print(write_result(f"{args.results_dir}/{args.name}.json", args.name, metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
