"""Training a ``FeatureDraft`` (``speculative="feature"``) on a frozen target through the one trainer:
``train.py feature-draft --recipe generators/cifar10-feature-draft.yaml``.

The recipe's ``model`` section names the target and the draft's size (``FeatureDraftRecipe``); the training images'
tokens are cached once with the target's tokenizer (the ``tokenizer`` section, as for generators). The loss is
``draft_loss`` (KL(p || q) at every next position plus the feature pull); validation reports it as ``loss`` (what
the kept model is chosen by) beside ``acceptance`` and ``acceptance_depth2``, the held-out overlap sum_x min(p, q)
at the first and the second drafted token: the rate at which speculative decoding accepts them (temperature 1, no
guidance), and ``acceptance_null``, the first token's where the target reads the null class (the unguided half of a
guided batch). A preview is the target's samples drawn through this draft.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from visgen.config import ConfigError, from_dict
from visgen.sampling import Sampler, SamplingConfig
from visgen.sampling.feature_draft import (
    FeatureDraft,
    check_token_target,
    draft_loss,
    held_out_overlaps,
    validation_loss,
)


@dataclass
class FeatureDraftRecipe:
    """The recipe's ``model`` section. target: the token generator the draft reads (a folder, ``asset:NAME`` or a
    Hub id; its EMA weights where it has them); n_layer: the draft's transformer blocks; feature_weight: the
    smooth-L1 feature term beside the KL; null_labels: the share of training sequences the target reads with the null
    class instead of the image's (under guidance half the rows a draft drafts for are the unguided ones, which read
    the null class; 0: only the images' classes); depth2_weight: the weight of the same loss at the second drafted
    token, where the draft reads its own predicted feature (``draft_loss``; 0: the first token's alone)."""

    target: str = "asset:cifar10-token-ar"
    n_layer: int = 1
    feature_weight: float = 1.0
    null_labels: float = 0.0
    depth2_weight: float = 0.0

    def __post_init__(self):
        if self.n_layer < 1 or min(self.feature_weight, self.depth2_weight) < 0 or not 0 <= self.null_labels <= 1:
            raise ConfigError("model.n_layer must be >= 1, model.feature_weight and model.depth2_weight >= 0 and "
                              f"model.null_labels in [0, 1]; got {self}")  # fmt: skip


class FeatureDraftTask(nn.Module):
    """Trains ``draft`` (``task.model``) with ``target`` frozen; see the module docstring."""

    def __init__(self, draft: FeatureDraft, target, feature_weight: float = 1.0, null_labels: float = 0.0,
                 depth2_weight: float = 0.0):  # fmt: skip
        super().__init__()
        draft.check_target(target)
        self.model, self.feature_weight, self.null_labels = draft, feature_weight, null_labels
        self.depth2_weight = depth2_weight
        target.eval().requires_grad_(False)
        self._target = [target]  # a list: not a submodule (not trained, not saved, not compiled)

    def target_on(self, device: torch.device):
        t = self._target[0]
        if t.class_emb.weight.device != device:
            t.to(device)
        return t

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens, labels = batch["tokens"], batch["label"].clamp_min(0)
        target = self.target_on(tokens.device)
        if self.null_labels > 0:
            null = torch.rand(labels.shape, device=labels.device) < self.null_labels
            labels = labels.masked_fill(null, target.null_class)
        loss = draft_loss(self.model, target, tokens, labels, self.feature_weight, self.depth2_weight)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def validate(self, model: FeatureDraft, batches, accelerator) -> dict[str, float]:
        sums = torch.zeros(5, device=accelerator.device, dtype=torch.float64)
        for batch in batches:
            tokens, labels = batch["tokens"], batch["label"].clamp_min(0)
            target = self.target_on(tokens.device)
            o = held_out_overlaps(model, target, tokens, labels)
            n = len(labels)
            values = [validation_loss(o, self.feature_weight, self.depth2_weight),
                      *(o[k].mean() for k in ("depth1", "depth2", "null"))]  # fmt: skip
            sums += torch.stack([*(v.double() * n for v in values), sums.new_tensor(float(n))])
        sums = accelerator.reduce(sums, "sum").tolist()
        n = max(sums[-1], 1)
        return {"loss": sums[0] / n, "acceptance": sums[1] / n, "acceptance_depth2": sums[2] / n,
                "acceptance_null": sums[3] / n}  # fmt: skip

    @torch.no_grad()
    def preview(self, model: FeatureDraft, batch: dict) -> torch.Tensor:
        """Two of the target's samples per class for the first eight classes, drawn through this draft (it decides
        nothing of what they look like: this shows the draft samples, not how well)."""
        target = self.target_on(batch["label"].device)
        labels = torch.arange(min(8, target.config.num_classes)).repeat(2)
        cfg = SamplingConfig(cfg_scale=2.0, batch_size=16, cuda_graph=False, speculative="feature", gamma=4)
        return Sampler(target, cfg, device=batch["label"].device, draft=model).sample_images(labels)


def build_feature_draft_task(recipe: dict, train_set, val_set=None) -> tuple:
    """(task, training set, validation set) with both sets' tokens cached by the target's tokenizer."""
    from visgen.checkpoint import load_model
    from visgen.train.generator_task import TokenCacheConfig, TokenDataset

    cfg = from_dict(FeatureDraftRecipe, recipe["model"], "model")
    ref = cfg.target
    target = load_model(ref, ema=True).float()
    check_token_target(target, f"model.target {ref}")
    tok_cfg = from_dict(TokenCacheConfig, recipe.get("tokenizer"), "tokenizer")
    seed = recipe.get("train", {}).get("seed", 0)
    train_set = TokenDataset.encode(train_set, target.tokenizer, tok_cfg.batch_size, seed, tok_cfg.crops,
                                    tok_cfg.crop_scale)  # fmt: skip
    if val_set is not None:
        val_set = TokenDataset.encode(val_set, target.tokenizer, tok_cfg.batch_size, seed)
    draft = FeatureDraft.for_target(target, cfg.n_layer)
    draft.config.target = ref
    return FeatureDraftTask(draft, target, cfg.feature_weight, cfg.null_labels, cfg.depth2_weight), train_set, val_set
