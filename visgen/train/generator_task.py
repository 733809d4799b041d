"""Training task for AR generators, on tokens computed on the fly or cached once with the tokenizer."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from visgen.config import ConfigError, from_dict
from visgen.data import DataError, ImageDataset, collate
from visgen.generator import Generator, GeneratorConfig
from visgen.sampling import Sampler, SamplingConfig
from visgen.schedules import PixelSchedule


@dataclass
class DistillConfig:
    """The recipe's ``distill`` section: train this generator to match a teacher's next-token distributions
    (a draft for speculative decoding, whose acceptance rate is the overlap of the two).

    teacher: a trained generator's folder (the same tokenizer, schedule and classes; a categorical head, or a
        diffusion head sampling in as many steps as this one's); empty: off.
    weight: the loss is (1 - weight) x cross-entropy on the data + weight x KL(teacher || this model), per token
        (a diffusion head: its own loss on the data, and the KL of its denoising steps from the teacher's along the
        teacher's sampling paths, ``DiffusionHead.distill_loss``: what CSpD's path rule pays).
    path_tokens: a diffusion head: the tokens of a batch (drawn at random; 0: all) whose teacher paths are drawn
        and distilled, each path costing the teacher's S sampling steps and both heads' Gaussians at S states.
    """

    teacher: str = ""
    weight: float = 1.0
    path_tokens: int = 512

    def __post_init__(self):
        if not 0 <= self.weight <= 1:
            raise ConfigError(f"distill.weight must be in [0, 1], got {self.weight}")
        if not (isinstance(self.path_tokens, int) and self.path_tokens >= 0):
            raise ConfigError(f"distill.path_tokens must be an integer >= 0 (0: all), got {self.path_tokens!r}")


@dataclass
class TokenCacheConfig:
    """The recipe's ``tokenizer`` section for generator training.

    cache: encode the training set once before training (both orientations when ``data.random_flip``), instead
        of running the tokenizer's encoder at every step.
    batch_size: images per encoding batch.
    crops: 1, or 5 for LlamaGen's ten-crop augmentation of the cache: each training image enlarged by ``crop_scale``
        and cut to its size at the centre and the four corners (with the mirror of each under ``data.random_flip``:
        ten), and each epoch every image trains on one of its crops, drawn per (seed, epoch, index). The validation
        set is encoded as it is.
    crop_scale: how much an image is enlarged before it is cut (LlamaGen's ``crop_range``).
    """

    cache: bool = True
    batch_size: int = 512
    crops: int = 1
    crop_scale: float = 1.1

    def __post_init__(self):
        if self.crops not in (1, 5):
            raise ConfigError(f"tokenizer.crops must be 1 or 5, got {self.crops}")
        if not 1 <= self.crop_scale <= 2:
            raise ConfigError(f"tokenizer.crop_scale must be in [1, 2], got {self.crop_scale}")
        if self.crops > 1 and not self.cache:
            raise ConfigError("tokenizer.crops needs tokenizer.cache: true (the crops are cut when the cache is made)")


def five_crops(x: torch.Tensor, scale: float) -> list[torch.Tensor]:
    """The centre and four corners of the images ``x`` (..., H, W) enlarged by ``scale`` (bicubic, antialiased), each
    of their size."""
    H, W = x.shape[-2:]
    big_h, big_w = round(H * scale), round(W * scale)
    big = F.interpolate(x.flatten(0, -4), size=(big_h, big_w), mode="bicubic", antialias=True, align_corners=False)
    big = big.clamp(-1, 1).unflatten(0, x.shape[:-3])
    dy, dx = big_h - H, big_w - W
    corners = [(dy // 2, dx // 2), (0, 0), (0, dx), (dy, 0), (dy, dx)]
    return [big[..., y : y + H, x0 : x0 + W] for y, x0 in corners]


class TokenDataset(torch.utils.data.Dataset):
    """Tokens of an image data set, encoded once (``encode``) or given: ``variants`` (N, V, ...), V token grids per
    image (the image itself; its mirror second under flips; or its crops and their mirrors), one drawn per (seed,
    epoch, index), flips like ``ImageDataset``'s. ``skipped`` counts the unreadable images of the encoding pass (the
    trainer adds them to its count)."""

    def __init__(self, variants: torch.Tensor, labels: torch.Tensor, seed: int = 0, skipped: int = 0):
        self.variants, self.labels = variants, labels
        self.seed, self.epoch, self.skipped = seed, 0, skipped
        self.set_epoch(0)

    @property
    def tokens(self) -> torch.Tensor:
        """The token grids of the images as they are (the first variant)."""
        return self.variants[:, 0]

    @classmethod
    def encode(cls, images: ImageDataset, tokenizer, batch_size: int = 512, seed: int = 0, crops: int = 1,
               crop_scale: float = 1.1) -> TokenDataset:  # fmt: skip
        """Encode ``images`` once with ``tokenizer`` (both orientations when ``images`` flips at random; ``crops``
        5: the five crops of ``five_crops`` instead of the image, each in both orientations then)."""
        flip = images.cfg.random_flip
        images.cfg.random_flip = False
        device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer = tokenizer.to(device)
        # clips (B, T, C, H, W) are encoded frame by frame
        encode = lambda x: (
            tokenizer.encode(x.flatten(0, 1)).unflatten(0, x.shape[:2]) if x.dim() == 5 else tokenizer.encode(x)
        )
        loader = torch.utils.data.DataLoader(
            images, batch_size=batch_size, collate_fn=collate, num_workers=min(4, os.cpu_count() or 1)
        )
        variants, labels, skipped = [], [], 0
        with torch.no_grad():
            for batch in tqdm(loader, desc="encode", disable=len(images) < 10 * batch_size):
                skipped += batch["skipped"]
                if not len(batch["image"]):
                    continue
                x = batch["image"].to(device)
                views = five_crops(x, crop_scale) if crops > 1 else [x]
                if flip:
                    views = [v for view in views for v in (view, view.flip(-1))]
                variants.append(torch.stack([encode(v) for v in views], 1).cpu())
                labels.append(batch["label"])
        if not variants:
            raise DataError(
                f"no usable image in {images.cfg.path}: all {skipped} images are unreadable (corrupt or "
                "truncated files?)"
            )
        return cls(torch.cat(variants), torch.cat(labels), seed, skipped)

    def __len__(self) -> int:
        return len(self.variants)

    @property
    def device(self) -> torch.device:
        return self.variants.device

    def to_device(self, device: torch.device, max_bytes: int = 2 << 30):
        """Keep the cache on ``device`` (batches are then gathered there, with no copy a step) when it takes at most
        ``max_bytes`` there; a larger cache stays in host memory."""
        if sum(t.numel() * t.element_size() for t in (self.variants, self.labels)) <= max_bytes:
            self.variants, self.labels = self.variants.to(device), self.labels.to(device)
            self.set_epoch(self.epoch)

    def set_epoch(self, epoch: int):
        """This epoch's variant of every image: with two (flips) mirrored about half the time, as before crops."""
        self.epoch = epoch
        gen = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        n, v = self.variants.shape[:2]
        if v == 2:
            choice = (torch.rand(n, generator=gen) < 0.5).long()
        else:
            choice = torch.randint(0, v, (n,), generator=gen)
        self.choice = choice.to(self.device)

    def __getitem__(self, i: int) -> dict:
        one = self.get_batch(torch.tensor([i]))
        return {"tokens": one["tokens"][0], "label": one["label"][0]}

    def get_batch(self, idx: torch.Tensor) -> dict:
        """A whole batch by tensor indexing (no per-item Python), with this epoch's flips."""
        idx = idx.to(self.device)
        return {"tokens": self.variants[idx, self.choice[idx]], "label": self.labels[idx], "skipped": 0}


class GeneratorTask(nn.Module):
    """Trains a ``Generator`` by teacher forcing; validation reports the held-out loss. With a ``teacher`` (a
    trained generator over the same tokens), the loss mixes in KL(teacher || model) per token at ``distill_weight``,
    and validation adds the held-out KL and ``acceptance``, the mean overlap sum_x min(p_teacher, p_model) of the
    two next-token distributions: the rate at which speculative decoding with this model as the draft accepts a
    drafted token (temperature 1, no guidance or top-k)."""

    def __init__(self, model: Generator, teacher: Generator | None = None, distill_weight: float = 1.0,
                 path_tokens: int = 512):  # fmt: skip
        super().__init__()
        self.model, self.distill_weight, self.path_tokens = model, distill_weight, path_tokens
        if teacher is not None:
            _check_teacher(model, teacher)
            teacher.eval().requires_grad_(False)
        self._teacher = [teacher] if teacher is not None else []  # a list: not a submodule (not trained, not saved)

    @property
    def teacher(self) -> Generator | None:
        return self._teacher[0] if self._teacher else None

    def _teacher_features(self, seq: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = self.teacher
        if t.class_emb.weight.device != seq.device:
            t.to(seq.device)
        with torch.no_grad():
            return t.features(seq, labels)

    def _distill(self, model: Generator, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-token means over the batch: cross-entropy, KL(teacher || model), and the distributions' overlap.
        A diffusion head: its own loss on the data (``ce``) and the KL of its denoising steps from the teacher's,
        summed over a path (``DiffusionHead.distill_loss``)."""
        seq, labels = model.schedule.to_sequence(tokens), model.drop_labels(labels)
        h, h_t = model.features(seq, labels), self._teacher_features(seq, labels)
        if not model.head.discrete:
            return {"ce": model.head.loss(seq, h, model.schedule.unit_sizes),
                    "kl": model.head.distill_loss(self.teacher.head, h, h_t, self.path_tokens)}  # fmt: skip
        logp = model.head.logits(h).log_softmax(-1)
        ce = F.nll_loss(logp.flatten(0, 1), seq.flatten())  # the head's loss, from the one projection
        with torch.no_grad():
            logp_t = self.teacher.head.logits(h_t).float().log_softmax(-1)
        kl = (logp_t.exp() * (logp_t - logp)).sum(-1).mean()
        overlap = torch.minimum(logp_t.exp(), logp.exp()).sum(-1).mean()
        return {"ce": ce, "kl": kl, "acceptance": overlap.detach()}

    def _tokens(self, batch: dict) -> torch.Tensor:
        if "tokens" in batch:
            return batch["tokens"]
        with torch.no_grad():
            return self.model.encode(batch["image"])  # on the model's device (Generator._apply); clips per frame

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.teacher is None:
            loss = self.model.loss(self._tokens(batch), batch["label"].clamp_min(0))
            return loss, {"loss": loss.detach()}
        d = self._distill(self.model, self._tokens(batch), batch["label"].clamp_min(0))
        w = self.distill_weight
        loss = (1 - w) * d["ce"] + w * d["kl"]
        return loss, {"loss": loss.detach(), "ce": d["ce"].detach(), "kl": d["kl"].detach()}

    @torch.no_grad()
    def validate(self, model: Generator, batches, accelerator) -> dict[str, float]:
        names = ["loss"] if self.teacher is None else ["loss", "kl", "acceptance"][: 3 if model.head.discrete else 2]
        sums = torch.zeros(len(names) + 1, device=accelerator.device, dtype=torch.float64)
        for batch in batches:
            n = len(batch["label"])
            tokens, labels = self._tokens(batch), batch["label"].clamp_min(0)
            if self.teacher is None:
                values = [model.loss(tokens, labels)]
            else:  # the held-out loss is the data's cross-entropy, as without a teacher
                d = self._distill(model, tokens, labels)
                values = [d["ce"], d["kl"], d.get("acceptance")][: len(names)]
            sums += torch.stack([*(v.double() * n for v in values), torch.tensor(float(n), device=sums.device,
                                                                                 dtype=torch.float64)])  # fmt: skip
        sums = accelerator.reduce(sums, "sum")
        out = {k: sums[i].item() / max(sums[-1].item(), 1) for i, k in enumerate(names)}
        if isinstance(model.schedule, PixelSchedule):  # the loss is nats per sub-pixel: an exact likelihood
            out["bpd"] = out["loss"] / math.log(2)
        return out

    @torch.no_grad()
    def preview(self, model: Generator, batch: dict) -> torch.Tensor:
        """Eight samples per class for the first eight classes (guidance 2, fixed seed)."""
        n_cls = min(8, model.config.num_classes)
        labels = torch.arange(n_cls).repeat_interleave(8)
        sampler = Sampler(
            model, SamplingConfig(cfg_scale=2.0, batch_size=64, cuda_graph=False), device=batch["label"].device
        )
        return sampler.sample_images(labels)


def build_generator_task(recipe: dict, train_set: ImageDataset, val_set: ImageDataset | None = None) -> tuple:
    """(task, training set, validation set): the training and validation images' tokens cached once when the recipe
    asks for it (the validation set is returned as given without one)."""
    cfg = from_dict(GeneratorConfig, recipe["model"], "model")
    frames = recipe.get("data", {}).get("frames", 0)
    if cfg.frames != frames:
        raise ConfigError(
            f"model.frames is {cfg.frames} but data.frames is {frames}: a video model trains on clips of its own "
            "length (set both), an image model on images (both 0)"
        )
    if not cfg.class_names and train_set.classes:
        cfg.class_names = list(train_set.classes)
    model = Generator(cfg)
    distill = from_dict(DistillConfig, recipe.get("distill"), "distill")
    teacher = None
    if distill.teacher:
        from visgen.checkpoint import load_model

        teacher = load_model(distill.teacher, ema=True)  # its EMA weights where it has them
    tok_cfg = from_dict(TokenCacheConfig, recipe.get("tokenizer"), "tokenizer")
    if tok_cfg.cache:
        seed = recipe.get("train", {}).get("seed", 0)
        train_set = TokenDataset.encode(train_set, model.tokenizer, tok_cfg.batch_size, seed, tok_cfg.crops,
                                        tok_cfg.crop_scale)  # fmt: skip
        if val_set is not None:
            val_set = TokenDataset.encode(val_set, model.tokenizer, tok_cfg.batch_size, seed)
    return GeneratorTask(model, teacher, distill.weight, distill.path_tokens), train_set, val_set


def _check_teacher(model: Generator, teacher) -> None:
    """A teacher must predict the same tokens: the student is its draft, so it passes a draft's checks for
    speculative decoding (categorical heads, or diffusion heads as CSpD's; the same tokenizer, schedule, sequence
    and classes)."""
    from visgen.sampling import SamplingConfig
    from visgen.sampling.speculative import check_models

    if not isinstance(teacher, Generator):
        raise ConfigError(f"distill.teacher must be a generator checkpoint; got a {type(teacher).__name__}")
    try:
        check_models(teacher, model, "draft" if teacher.head.discrete else "cspd", SamplingConfig())
        if not teacher.head.discrete and teacher.head.steps != model.head.steps:
            raise ConfigError(f"the student's head samples in {model.head.steps} steps, the teacher's in "
                              f"{teacher.head.steps}: distillation matches them step by step (set "
                              "model.head_options.steps to the teacher's)")  # fmt: skip
    except ConfigError as e:
        raise ConfigError(f"distill.teacher cannot teach this model: {e}") from None
