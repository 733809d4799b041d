"""Go/no-go for a draft that reads the target's own features (EAGLE-style), before any of it joins the sampler.

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

    python eval/feature_draft.py --data /path/to/cifar10 --train-images 10000 --steps 1500 --name feature-draft-cpu
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from visgen.checkpoint import load_model
from visgen.config import ConfigError
from visgen.data import DataConfig, DataError, build_dataset
from visgen.nn import Transformer, TransformerConfig
from visgen.results import metrics_line, write_result
from visgen.train.generator_task import TokenDataset


class FeatureDraft(nn.Module):
    """Predicts the target's next feature from its feature here and the token drawn here (B, L, d) -> (B, L, d)."""

    def __init__(self, target, layers: int):
        super().__init__()
        cfg = target.backbone.cfg
        self.fc = nn.Linear(2 * cfg.d_model, cfg.d_model)
        self.body = Transformer(TransformerConfig(n_layer=layers, n_head=cfg.n_head, d_model=cfg.d_model,
                                                  rope_axes=cfg.rope_axes, rope_theta=cfg.rope_theta))  # fmt: skip
        self.register_buffer("positions", target.positions.clone(), persistent=False)

    def forward(self, feats: torch.Tensor, token_emb: torch.Tensor, first: int) -> torch.Tensor:
        """Predicted features of sequence positions ``first`` .. ``first + L - 1``."""
        x = self.fc(torch.cat([feats, token_emb], -1))
        return self.body(x, self.positions[first : first + x.shape[1]], is_causal=True)


def target_pass(target, tokens: torch.Tensor, labels: torch.Tensor):
    """(sequence, features (B, L, d), log p (B, L, V)) of the frozen target, teacher-forced."""
    with torch.no_grad():
        seq = target.schedule.to_sequence(tokens)
        feats = target.features(seq, labels)
        return seq, feats, target.head.logits(feats).float().log_softmax(-1)


def overlap(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    return torch.minimum(logp.exp(), logq.exp()).sum(-1)


def draft_pass(draft, target, seq, feats, depth2: bool = False):
    """The draft's predicted features and log q at positions 1..L-1 (depth 1: it reads the target's features), and
    with ``depth2`` its log q at 2..L-1 (it reads its own prediction of the feature before, as drafting further
    does)."""
    emb = target.input_emb(seq)
    logq = lambda f: target.head.logits(f).float().log_softmax(-1)  # noqa: E731
    pred1 = draft(feats[:, :-1], emb[:, :-1], first=1)
    pred2 = draft(pred1[:, :-1], emb[:, 1:-1], first=2) if depth2 else None
    return pred1, logq(pred1), logq(pred2) if depth2 else None


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
    p.add_argument("--name", help="write results/NAME.json")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    try:
        if min(args.train_images, args.val_images, args.steps, args.batch_size) < 1:
            raise ConfigError("--train-images, --val-images, --steps and --batch-size must be at least 1")
        target = load_model(args.target, ema=True).eval().requires_grad_(False)
        token_model = target.model_type == "ar-generator" and set(target.schedule.unit_sizes) == {1}
        if not (token_model and getattr(target.head, "discrete", False)):
            raise ConfigError(f"{args.target}: a feature draft needs a token model (one-token units, categorical)")
        sets = [build_dataset(DataConfig(path=f"{args.data}/{split}", image_size=target.config.image_size, limit=n))
                for split, n in (("train", args.train_images), ("test", args.val_images))]  # fmt: skip
    except (ConfigError, DataError, OSError) as e:
        print(f"error: {e}")
        return 2
    torch.manual_seed(args.seed)
    train, val = (TokenDataset.encode(s, target.tokenizer) for s in sets)
    draft = FeatureDraft(target, args.layers)
    opt = torch.optim.AdamW(draft.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, len(train), (args.batch_size,), generator=gen)
        seq, feats, logp = target_pass(target, train.tokens[idx], train.labels[idx])
        pred, logq, _ = draft_pass(draft, target, seq, feats)
        kl = F.kl_div(logq, logp[:, 1:], log_target=True, reduction="none").sum(-1).mean()
        loss = kl + args.feature_weight * F.smooth_l1_loss(pred, feats[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        for g in opt.param_groups:  # cosine to zero
            g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        opt.step()
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
               "val_images": len(val), "steps": args.steps, "train_seconds": seconds}  # fmt: skip
    for g in args.gammas:
        metrics[f"tokens_per_pass_gamma{g}"] = (1 - a1 ** (g + 1)) / (1 - a1) if a1 < 1 else g + 1.0
    print(metrics_line(metrics))
    if args.name:
        print(write_result(f"{args.results_dir}/{args.name}.json", args.name, metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
