"""A draft that reads the target's own features (EAGLE, Li et al. 2024): ``SamplingConfig(speculative="feature")``.

The target's feature f_i (its backbone's output at sequence position i, which its head turns into token i's
distribution) and the embedding of the token drawn there go through one linear layer and a small causal transformer
that predicts f_(i+1); the target's own head turns the prediction into the draft's distribution q. Drafting further,
the draft reads its own predicted feature (EAGLE sec. 3). It keeps no embedding and no head of its own, so it is a few
percent of the target, and it fits only a target of the same width, sequence and vocabulary (``check_target``).

Trained with the target frozen (``draft_loss``, through the trainer: ``train.py feature-draft``,
``visgen.train.feature_draft_task``): KL(p || q) at every next position plus a smooth-L1 pull of the predicted
features toward the target's (EAGLE sec. 4). Any draft keeps speculative decoding exact; a good one makes it fast
(``eval/feature_draft.py`` measures the overlap sum(min(p, q)) that acceptance follows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from visgen.checkpoint import PretrainedMixin, register_model
from visgen.config import ConfigError
from visgen.nn import Transformer, TransformerConfig


@dataclass
class FeatureDraftConfig:
    """n_layer: the draft's transformer blocks (EAGLE uses one); n_head, d_model, rope_axes, rope_theta: the target's
    backbone's, so the draft attends with the target's RoPE tables; seq_len, vocab_size: the target's sequence and
    vocabulary (checked when the draft meets a target); target: where the target it was trained on came from (a
    note for its users, not checked)."""

    n_head: int
    d_model: int
    seq_len: int
    vocab_size: int
    n_layer: int = 1
    rope_axes: int = 2
    rope_theta: float = 10000.0
    target: str = ""


@register_model("feature-draft")
class FeatureDraft(PretrainedMixin, nn.Module):
    """Predicts the target's next feature from its feature here and the token drawn here: (B, n, d) -> (B, n, d)."""

    model_type = "feature-draft"
    config_class = FeatureDraftConfig

    def __init__(self, config: FeatureDraftConfig):
        super().__init__()
        c = self.config = config
        self.fc = nn.Linear(2 * c.d_model, c.d_model)
        self.body = Transformer(TransformerConfig(n_layer=c.n_layer, n_head=c.n_head, d_model=c.d_model,
                                                  rope_axes=c.rope_axes, rope_theta=c.rope_theta))  # fmt: skip

    @classmethod
    def for_target(cls, target, n_layer: int = 1) -> FeatureDraft:
        """An untrained draft shaped for ``target`` (a token generator of one-token units)."""
        b = target.backbone.cfg
        vocab = getattr(target.tokenizer, "vocab_size", 0)
        return cls(FeatureDraftConfig(n_head=b.n_head, d_model=b.d_model, seq_len=target.schedule.seq_len,
                                      vocab_size=vocab, n_layer=n_layer, rope_axes=b.rope_axes,
                                      rope_theta=b.rope_theta))  # fmt: skip

    def check_target(self, target) -> None:
        """A clear error where this draft cannot read ``target``'s features."""
        c, b = self.config, target.backbone.cfg
        theirs = (b.d_model, b.n_head, b.rope_axes, target.schedule.seq_len, getattr(target.tokenizer, "vocab_size", 0))
        ours = (c.d_model, c.n_head, c.rope_axes, c.seq_len, c.vocab_size)
        if theirs != ours:
            names = "width, heads, RoPE axes, sequence length, vocabulary"
            raise ConfigError(f"this feature draft was made for a target of ({names}) {ours}; this target has {theirs}")

    def forward(self, feats: torch.Tensor, token_emb: torch.Tensor, positions_LA: torch.Tensor) -> torch.Tensor:
        """Training: predicted features of the positions after ``positions_LA``'s, causal over the sequence."""
        return self.body(self.fc(torch.cat([feats, token_emb], -1)), positions_LA, is_causal=True)

    def decode_rows(self, feats, token_emb, cache, pos_Bn: torch.Tensor, cos, sin) -> torch.Tensor:
        """Decoding at per-row positions ``pos_Bn`` (B, n) against ``cache``, as ``Generator.decode_rows``: each
        position writes its slot and reads every slot at or before it. ``cos``/``sin``: the target's RoPE tables at
        every position (positions past the sequence take the last one's)."""
        slots = cache.k.shape[3]
        at = pos_Bn.clamp(max=self.config.seq_len - 1)
        mask = None if self.body.rows_kernel else torch.arange(slots, device=pos_Bn.device) <= pos_Bn[:, None, :, None]
        x = self.fc(torch.cat([feats, token_emb], -1))
        return self.body(x, None, mask=mask, cache=cache, input_pos=pos_Bn, kv_len=slots,
                         rope=(cos[at][:, None], sin[at][:, None]))  # fmt: skip


def check_token_target(target, name: str) -> None:
    """A clear error where ``target`` (named ``name`` in it) is not a token model a feature draft can read."""
    token_model = getattr(target, "model_type", None) == "ar-generator" and set(target.schedule.unit_sizes) == {1}
    if not (token_model and getattr(target.head, "discrete", False)):
        raise ConfigError(f"{name}: a feature draft needs a token model (one-token units, categorical)")


def overlap(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_x min(p(x), q(x)) per position: the probability that a token drafted from q is accepted under p."""
    return torch.minimum(logp.exp(), logq.exp()).sum(-1)


def target_pass(target, tokens: torch.Tensor, labels: torch.Tensor):
    """(sequence, features (B, L, d), log p (B, L, V)) of the frozen target, teacher-forced, no guidance."""
    with torch.no_grad():
        seq = target.schedule.to_sequence(tokens)
        feats = target.features(seq, labels)
        return seq, feats, target.head.logits(feats).float().log_softmax(-1)


def draft_pass(draft: FeatureDraft, target, seq, feats, depth2: bool = False):
    """The draft's predicted features and log q at positions 1..L-1 (depth 1: it reads the target's features), and
    with ``depth2`` its log q at 2..L-1 (it reads its own prediction of the feature before, as drafting further
    does)."""
    pred1 = draft(feats[:, :-1], target.input_emb(seq[:, :-1]), target.positions[1:])
    pred2 = second_step(draft, target, seq, pred1) if depth2 else None
    return pred1, log_q(target, pred1), log_q(target, pred2) if depth2 else None


def second_step(draft: FeatureDraft, target, seq, pred1):
    """The draft's predicted features at positions 2..L-1 where it reads its own prediction ``pred1`` of the feature
    before (``draft_pass``'s first step), as drafting a second token does."""
    return draft(pred1[:, :-1], target.input_emb(seq[:, 1:-1]), target.positions[2:])


def held_out_overlaps(draft: FeatureDraft, target, tokens: torch.Tensor, labels: torch.Tensor) -> dict:
    """What a validation pass over a batch measures, each per position: ``depth1`` / ``depth2`` (``overlap`` of the
    first and second drafted token's q with p, ``draft_pass``), ``null`` (the first, where the target reads the null
    class, as the unguided half of a guided batch does); ``kl`` (KL(p || q) at depth 1) and the passes' outputs
    (``pred``, ``feats``, ``logp``, ``logq``, ``pred2``, ``logq2``) for ``validation_loss``."""
    seq, feats, logp = target_pass(target, tokens, labels)
    pred, logq1, _ = draft_pass(draft, target, seq, feats)
    pred2 = second_step(draft, target, seq, pred)
    logq2 = log_q(target, pred2)
    _, feats_null, logp_null = target_pass(target, tokens, torch.full_like(labels, target.null_class))
    _, logq_null, _ = draft_pass(draft, target, seq, feats_null)
    return {"depth1": overlap(logp[:, 1:], logq1), "depth2": overlap(logp[:, 2:], logq2),
            "null": overlap(logp_null[:, 1:], logq_null),
            "kl": F.kl_div(logq1, logp[:, 1:], log_target=True, reduction="none").sum(-1),
            "pred": pred, "feats": feats, "logp": logp, "logq": logq1, "pred2": pred2, "logq2": logq2}  # fmt: skip


def log_q(target, features):
    return target.head.logits(features).float().log_softmax(-1)


def draft_loss(draft: FeatureDraft, target, tokens, labels, feature_weight: float = 1.0,
               depth2_weight: float = 0.0) -> torch.Tensor:  # fmt: skip
    """KL(p || q) at every next position plus ``feature_weight`` x smooth-L1 to the target's features; with
    ``depth2_weight``, that weight times the same loss of the second drafted token, where the draft reads its own
    prediction of the feature before, trained through both steps (EAGLE-3's training-time test, one step deep)."""
    seq, feats, logp = target_pass(target, tokens, labels)
    pred, logq, _ = draft_pass(draft, target, seq, feats)
    loss = loss_of(pred, logq, feats, logp, feature_weight)
    if depth2_weight:
        pred2 = second_step(draft, target, seq, pred)
        loss = loss + depth2_weight * loss_of(pred2, log_q(target, pred2), feats[:, 1:], logp[:, 1:], feature_weight)
    return loss


def validation_loss(o: dict, feature_weight: float = 1.0, depth2_weight: float = 0.0) -> torch.Tensor:
    """``draft_loss`` (the training objective, second drafted token included where ``depth2_weight`` weighs it) from
    ``held_out_overlaps``' outputs ``o``, its depth-1 KL reused."""
    loss = o["kl"].mean() + feature_weight * F.smooth_l1_loss(o["pred"].float(), o["feats"][:, 1:].float())
    if depth2_weight:
        feats, logp = o["feats"][:, 1:], o["logp"][:, 1:]
        loss = loss + depth2_weight * loss_of(o["pred2"], o["logq2"], feats, logp, feature_weight)
    return loss


def loss_of(pred, logq, feats, logp, feature_weight: float) -> torch.Tensor:
    """``draft_loss`` from the two passes' outputs (``target_pass``, ``draft_pass``)."""
    kl = F.kl_div(logq, logp[:, 1:], log_target=True, reduction="none").sum(-1).mean()
    return kl + feature_weight * F.smooth_l1_loss(pred.float(), feats[:, 1:].float())
