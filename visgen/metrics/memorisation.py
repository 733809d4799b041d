"""Does a generator copy its training images? Nearest neighbours of samples in the training set, against a floor.

FD and IS against the training set reward a model that reproduces training images, so every FD visgen reports
from a data set carries this beside it. For each generated image: its nearest training image in the FD
extractor's features (cosine distance, 1 - cos) and in pixels (L2 of the [0, 1] images over all H x W x C values,
the horizontal flip of each training image counted too, since training flips). The same for images of a held-out
split that no model saw: how close *real new* images come to the training set is the floor a generator should not
beat. ``copy_rate`` is the fraction of samples whose feature distance lies below the held-out images' 1st
percentile (about 0.01 means no copying; 1 means every sample sits on a training image); ``copy_rate_pixel`` the
same in pixels. The held-out rate is measured 2-fold (threshold from one half, rate on the other), so it is an
estimate of the floor, not 0.01 by construction.

The searches are matrix products in chunks: on a GPU 10k samples against CIFAR-10's 50k images take seconds, and
on two CPU cores a few minutes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

PERCENTILE = 1.0  # the held-out quantile that marks "closer than real new images come"


def _chunk_rows(n_ref: int, dim: int) -> int:
    # rows of queries per chunk, so one (rows, n_ref) distance block plus a block of queries stays near 256 MiB
    budget = (256 << 20) // 4
    return max(1, min(4096, budget // max(1, n_ref + dim)))


@torch.no_grad()
def nearest_feature(query: torch.Tensor, ref: torch.Tensor, device: str | torch.device = "cpu"):
    """(distance, index) of each query row's nearest ``ref`` row in cosine distance 1 - cos."""
    device = torch.device(device)
    r = F.normalize(ref.float().to(device), dim=1)
    dist, idx = [], []
    for q in query.split(_chunk_rows(len(r), r.shape[1])):
        sim = F.normalize(q.float().to(device), dim=1) @ r.T
        best, i = sim.max(dim=1)
        dist.append((1 - best).clamp_min(0).cpu())
        idx.append(i.cpu())
    return torch.cat(dist), torch.cat(idx)


def _as_unit(images_NHWC: torch.Tensor, device) -> torch.Tensor:
    return images_NHWC.to(device).flatten(1).float() / 255.0


@torch.no_grad()
def nearest_pixel(
    query_NHWC: torch.Tensor, ref_NHWC: torch.Tensor, device: str | torch.device = "cpu", flips: bool = True
):
    """(distance, index) of each uint8 query image's nearest reference image in L2 over its [0, 1] values; with
    ``flips`` a reference image's mirror counts as that image. The search ranks by |q|^2 + |r|^2 - 2 q.r in fp32
    (matrix products); the distance to the neighbour found is then computed directly, so a copy measures 0."""
    device = torch.device(device)
    refs = [ref_NHWC, ref_NHWC.flip(2)] if flips else [ref_NHWC]
    best_d = torch.full((len(query_NHWC),), math.inf)
    best_i = torch.zeros(len(query_NHWC), dtype=torch.long)
    best_f = torch.zeros(len(query_NHWC), dtype=torch.long)
    for f, ref in enumerate(refs):
        for r0 in range(0, len(ref), 8192):  # reference blocks keep memory bounded for 50k+ images
            r = _as_unit(ref[r0 : r0 + 8192], device)
            r2 = (r * r).sum(1)
            rows = _chunk_rows(len(r), r.shape[1])
            for q0 in range(0, len(query_NHWC), rows):
                q = _as_unit(query_NHWC[q0 : q0 + rows], device)
                d2, i = ((q * q).sum(1, keepdim=True) + r2[None] - 2 * q @ r.T).min(dim=1)
                d2, sl = d2.cpu(), slice(q0, q0 + len(q))
                better = d2 < best_d[sl]
                best_d[sl] = torch.where(better, d2, best_d[sl])
                best_i[sl] = torch.where(better, i.cpu() + r0, best_i[sl])
                best_f[sl] = torch.where(better, f, best_f[sl])
    nearest = ref_NHWC[best_i]
    nearest = torch.where(best_f.bool().view(-1, 1, 1, 1), nearest.flip(2), nearest)  # the mirror where it won
    exact = (_as_unit(query_NHWC, "cpu") - _as_unit(nearest, "cpu")).norm(dim=1)
    return exact, best_i


def _rate_below(values: torch.Tensor, threshold: float) -> float:
    return float((values < threshold).float().mean())


def _two_fold_rate(holdout: torch.Tensor) -> float:
    """The held-out images' own rate under a threshold taken from the other half (a fixed split)."""
    perm = torch.randperm(len(holdout), generator=torch.Generator().manual_seed(0))
    a, b = holdout[perm[: len(perm) // 2]], holdout[perm[len(perm) // 2 :]]
    if not len(a) or not len(b):
        return float("nan")
    q = PERCENTILE / 100
    return 0.5 * (_rate_below(a, float(b.quantile(q))) + _rate_below(b, float(a.quantile(q))))


def memorisation_report(
    gen_features: torch.Tensor,
    gen_images: torch.Tensor,
    ref_features: torch.Tensor,
    ref_images: torch.Tensor,
    holdout_features: torch.Tensor,
    holdout_images: torch.Tensor,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Metrics (``nn_feature_median``, ``nn_pixel_median``, ``copy_rate``, ``copy_rate_pixel`` and each with
    ``_holdout`` for the floor, plus the thresholds) and the per-sample neighbours (``feature_distance``,
    ``feature_index``, ``pixel_distance``, ``pixel_index``) for the pair picture."""
    if len(ref_features) != len(ref_images):
        raise ValueError(f"{len(ref_features)} reference features for {len(ref_images)} reference images")
    gf, gi = nearest_feature(gen_features, ref_features, device)
    gp, gpi = nearest_pixel(gen_images, ref_images, device)
    hf, _ = nearest_feature(holdout_features, ref_features, device)
    hp, _ = nearest_pixel(holdout_images, ref_images, device)
    q = PERCENTILE / 100
    t_feat, t_pix = float(hf.quantile(q)), float(hp.quantile(q))
    metrics = {
        "nn_feature_median": float(gf.median()),
        "nn_pixel_median": float(gp.median()),
        "copy_rate": _rate_below(gf, t_feat),
        "copy_rate_pixel": _rate_below(gp, t_pix),
        "nn_feature_median_holdout": float(hf.median()),
        "nn_pixel_median_holdout": float(hp.median()),
        "copy_rate_holdout": _two_fold_rate(hf),
        "copy_rate_pixel_holdout": _two_fold_rate(hp),
        "copy_threshold_feature": t_feat,
        "copy_threshold_pixel": t_pix,
        "holdout_images": len(holdout_features),
    }
    return metrics, {"feature_distance": gf, "feature_index": gi, "pixel_distance": gp, "pixel_index": gpi}


def save_pairs(
    path: str | Path, gen_images: torch.Tensor, ref_images: torch.Tensor, neighbours: dict, pairs: int = 32
) -> Path:
    """A PNG of the ``pairs`` samples closest to a training image (in features), each beside that image: a sample,
    then its neighbour, four pairs a row, closest first."""
    from torchvision.utils import save_image

    order = neighbours["feature_distance"].argsort()[:pairs]
    tiles = []
    for i in order.tolist():
        tiles += [gen_images[i], ref_images[neighbours["feature_index"][i]]]
    grid = torch.stack(tiles).permute(0, 3, 1, 2).float() / 255.0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path, nrow=8, padding=2, pad_value=1.0)
    return path


def summary_line(m: dict[str, float]) -> str:
    return (
        f"copy_rate={m['copy_rate']:.3f} (held-out floor {m['copy_rate_holdout']:.3f}), "
        f"nn_feature_median={m['nn_feature_median']:.4g} (held-out {m['nn_feature_median_holdout']:.4g}), "
        f"nn_pixel_median={m['nn_pixel_median']:.4g} (held-out {m['nn_pixel_median_holdout']:.4g})"
    )
