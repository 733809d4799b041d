"""FID / IS / KID / precision-recall through torch-fidelity, with offline features and cached reference statistics.

Features come from torch-fidelity feature extractors: its standard ``inception-v3-compat`` (reported as ``fid``,
``isc``, ...) or a visgen classifier trained on the data set (``cifar10cls``: reported as ``fd_cifar10cls``,
``is_cifar10cls``, ...), registered in torch-fidelity's registry so ``torch_fidelity.calculate_metrics`` can use it
too. The metrics themselves are torch-fidelity's functions; visgen adds inputs it lacks (a statistics file as the
reference, a generator sampled across processes) and a cache of reference statistics that never unpickles.

torch-fidelity 0.4.0 defects designed around here:
- its generator wrapper calls ``np.int`` when ``num_classes > 0`` (gone since numpy 1.24): visgen samples with
  its own sampler and hands torch-fidelity images, never a generator;
- ``feature_extractor_internal_dtype="float64"`` silently means float32 (``helpers.text_to_dtype``): visgen
  computes statistics in float64 from the float32 features instead of promising a float64 extractor.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from visgen.checkpoint import CheckpointError
from visgen.metrics.classifier import Classifier
from visgen.metrics.recon import to_uint8

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CLASSIFIER_ASSETS = {"cifar10cls": "cifar10-classifier", "fmnistcls": "fashion-mnist-classifier"}
INCEPTION = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class ClassifierFeatures(FeatureExtractorBase):
    """torch-fidelity extractor over a visgen ``Classifier``: ``pool`` features (FD, KID, PR), ``logits`` (IS).

    Takes uint8 images (B, 3, H, W) like every torch-fidelity extractor. The weights are a visgen model folder:
    ``feature_extractor_weights_path`` or the bundled asset of the extractor's name.
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        path = feature_extractor_weights_path or ASSETS / CLASSIFIER_ASSETS[name]
        self.net = Classifier.from_pretrained(path).eval()

    @staticmethod
    def get_provided_features_list():
        return ("pool", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "pool"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return None

    def forward(self, x):
        pooled, logits = self.net(x.float() / 127.5 - 1.0)
        out = {"pool": pooled.float(), "logits": logits.float()}
        return tuple(out[k] for k in self.features_list)


for _name in CLASSIFIER_ASSETS:
    if _name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(_name, ClassifierFeatures)


class UInt8Dataset(torch.utils.data.Dataset):
    """Images as uint8 (3, H, W) tensors, the input torch-fidelity reads."""

    def __init__(self, images_NHWC: np.ndarray | torch.Tensor):
        self.images = torch.as_tensor(images_NHWC)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i].permute(2, 0, 1)
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def images_from_dataset(ds) -> torch.Tensor:
    """A visgen data set as uint8 (N, H, W, 3) by the one float-to-uint8 rule; unreadable images are skipped."""
    out = []
    for i in range(len(ds)):
        item = ds[i]
        if item is not None:
            x = to_uint8(item["image"])
            out.append((x.expand(3, -1, -1) if x.shape[0] == 1 else x).permute(1, 2, 0))
    return torch.stack(out)


def load_npz_images(path: str | Path) -> torch.Tensor:
    """``arr_0`` of an ADM-style ``.npz`` (uint8 N x H x W x 3), read without pickle."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arr = f["arr_0"]
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not an ADM-style .npz with arr_0 (uint8 N x H x W x 3): {e}") from e
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: arr_0 must be uint8 N x H x W x 3, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(arr)


# ---- statistics ---------------------------------------------------------------------------------------------------


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), in float64 (Heusel et al. 2017)."""
    mu1, mu2, s1, s2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, sigma1, sigma2))
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).astype(np.complex128)).real)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    f = features.double().numpy()
    return {"mu": f.mean(0), "sigma": np.cov(f, rowvar=False)}


def save_stats(
    path: Path, stats: dict[str, np.ndarray], features: torch.Tensor | None = None, meta: dict | None = None
):
    """Write ``mu``/``sigma`` (and features, for KID / PR) to an ``.npz``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    arrays = {"mu": stats["mu"], "sigma": stats["sigma"], "meta": np.array(json.dumps(meta or {}))}
    if features is not None:
        arrays["features"] = features.float().numpy()
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_stats(path: str | Path) -> tuple[dict[str, np.ndarray], torch.Tensor | None]:
    """A statistics file (``mu``, ``sigma``; ADM reference batches qualify) read without pickle."""
    try:
        with np.load(path, allow_pickle=False) as f:
            stats = {"mu": f["mu"], "sigma": f["sigma"]}
            features = torch.from_numpy(f["features"]) if "features" in f.files else None
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a statistics file with mu and sigma: {e}") from e
    return stats, features


# ---- feature extraction -------------------------------------------------------------------------------------------


def weights_digest(path: str | Path) -> str:
    """16 hex digits of SHA-256 over a weights file, or over a model folder's safetensors: what a statistics
    cache key holds of an extractor."""
    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else [Path(path)]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Extractor:
    """A feature extractor: its torch-fidelity name, weights, and the prefix its metrics are reported under."""

    name: str
    weights: str | None = None

    @property
    def is_inception(self) -> bool:
        return self.name == INCEPTION

    def metric_names(self) -> dict[str, str]:
        if self.is_inception:
            return {"fd": "fid", "is": "isc", "kid": "kid", "precision": "precision", "recall": "recall"}
        return {k: f"{k}_{self.name}" for k in ("fd", "is", "kid", "precision", "recall")}

    def weights_hash(self) -> str:
        path = self.resolved_weights()
        return "torch-fidelity-default" if path is None else weights_digest(path)

    def resolved_weights(self) -> str | None:
        if self.weights:
            return self.weights
        if self.name in CLASSIFIER_ASSETS:
            path = ASSETS / CLASSIFIER_ASSETS[self.name]
            if not (path / "config.json").is_file():
                raise CheckpointError(
                    f"no weights for {self.name} at {path}: train them with eval/train_classifier.py "
                    "or pass --extractor-weights DIR"
                )
            return str(path)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        return str(cached) if cached.is_file() else None

    def build(self, device: str) -> FeatureExtractorBase:
        if self.name not in FEATURE_EXTRACTORS_REGISTRY:
            known = sorted(set(CLASSIFIER_ASSETS) | {INCEPTION})
            raise CheckpointError(f"unknown feature extractor {self.name!r}; known: {known}")
        weights = self.resolved_weights()
        if self.is_inception and weights is not None:
            # torch-fidelity unpickles this file; check first that it holds nothing but tensors
            torch.load(weights, map_location="cpu", weights_only=True)
        try:
            return create_feature_extractor(
                self.name, list(self._layers()), cuda=device == "cuda", verbose=False,
                feature_extractor_weights_path=weights,
            )  # fmt: skip
        except (OSError, RuntimeError, ValueError) as e:
            if self.is_inception:
                raise CheckpointError(
                    f"could not load the Inception weights ({e}). Offline? Download {INCEPTION_FILE} from "
                    "https://github.com/toshas/torch-fidelity/releases/tag/v0.2.0 and pass --inception-weights PATH "
                    f"(or put it in {Path(torch.hub.get_dir()) / 'checkpoints'}); or use --extractor cifar10cls."
                ) from e
            raise CheckpointError(f"could not load feature extractor {self.name!r} from {weights}: {e}") from e

    def _layers(self) -> tuple[str, str]:
        return ("2048", "logits_unbiased") if self.is_inception else ("pool", "logits")

    def features(self, images_NHWC: torch.Tensor, device: str, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """{"fd": pooled features, "is": logits} of uint8 images."""
        fe = self.build(device)
        fd = get_featuresdict_from_dataset(UInt8Dataset(images_NHWC), fe, batch_size, device == "cuda", True, False)
        pool, logits = self._layers()
        return {"fd": fd[pool], "is": fd[logits]}


# ---- the harness --------------------------------------------------------------------------------------------------


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def reference_features(
    ref_images_fn, ref_id: dict, extractor: Extractor, device: str, cache_dir: str | Path | None
) -> tuple[dict, torch.Tensor | None, bool]:
    """(stats, features, cache_hit) of a reference, from the cache when everything that changes it matches."""
    key = cache_key(ref=ref_id, extractor=extractor.name, weights=extractor.weights_hash(), rule="uint8-round")
    path = Path(cache_dir) / f"{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        stats, feats = load_stats(path)
        return stats, feats, True
    feats = extractor.features(ref_images_fn(), device)["fd"]
    stats = statistics(feats)
    if path is not None:
        save_stats(path, stats, feats, meta={"ref": ref_id, "extractor": extractor.name})
    return stats, feats, False


def score(
    images_NHWC: torch.Tensor,
    extractor: Extractor,
    device: str,
    ref_stats: dict | None = None,
    ref_features: torch.Tensor | None = None,
    kid: bool = True,
    prc: bool = True,
    isc: bool = True,
    features: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, float], float]:
    """Metrics of generated uint8 images against a reference; returns (metrics, feature images/s). ``features``:
    the images' ``Extractor.features`` when the caller already has them (the memorisation report reuses them; the
    rate is then None: the caller timed the extraction)."""
    names = extractor.metric_names()
    t0 = time.perf_counter()
    feats = features if features is not None else extractor.features(images_NHWC, device)
    feat_rate = None if features is not None else len(images_NHWC) / (time.perf_counter() - t0)
    out: dict[str, float] = {}
    if isc:
        out[names["is"]], out[names["is"] + "_std"] = inception_score(feats["is"])
    if ref_stats is not None:
        s = statistics(feats["fd"])
        out[names["fd"]] = frechet_distance(s["mu"], s["sigma"], ref_stats["mu"], ref_stats["sigma"])
    if ref_features is not None:
        # equal-size random subsets (fixed seed): a reference read in class order must not be cut to its first classes
        n = min(len(feats["fd"]), len(ref_features))
        rng = np.random.RandomState(0)
        gen_sub = feats["fd"][torch.from_numpy(rng.permutation(len(feats["fd"]))[:n])]
        ref_sub = ref_features[torch.from_numpy(rng.permutation(len(ref_features))[:n])]
        if kid:
            r = kid_features_to_metric(feats["fd"], ref_features, kid_subset_size=min(1000, n), verbose=False)
            out[names["kid"]], out[names["kid"] + "_std"] = (
                r["kernel_inception_distance_mean"],
                r["kernel_inception_distance_std"],
            )
        if prc:
            r = prc_features_to_metric(gen_sub, ref_sub, verbose=False)
            out[names["precision"]], out[names["recall"]] = r["precision"], r["recall"]
    return out, feat_rate


def inception_score(logits: torch.Tensor, splits: int | None = None) -> tuple[float, float]:
    """IS (Salimans et al. 2016) mean and std over splits (10, as usual, from 1000 samples on; else 1)."""
    splits = splits or (10 if len(logits) >= 1000 else 1)
    r = isc_features_to_metric(logits, splits=splits)
    return r["inception_score_mean"], r["inception_score_std"]


def bits_per_dim(nll_nats: float, num_dims: int) -> float:
    """Bits per dimension of a likelihood model: total NLL in nats over all sub-pixels, in bits each."""
    return nll_nats / (num_dims * np.log(2))
