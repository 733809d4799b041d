"""Motion scores that only synthetic video allows: do the items of a Moving Fashion-MNIST clip move as the data
moves them (constant velocity, 2 to 4 pixels a frame, elastic bounces off the walls)?

Each clip's first item is tracked: its box is the brightest 28 x 28 window of the first frame trimmed to the item's
pixels, and in every later frame it is found again by the smallest sum of squared differences to the previous frame's
box, within a few pixels of where it was. Three scores read the tracks:

- ``dynamics_error``: the mean absolute second difference of the track (pixels / frame^2) over frames whose window is
  clear of every wall at t - 1, t and t + 1 (bounces happen at walls). Constant velocity has none; nor has an item
  that does not move, so this term alone rewards a frozen clip;
- ``speed_distance``: how far the per-frame speeds of the tracked item (pixels / frame, away from the walls) are from
  the real clips' speeds, as the 1-Wasserstein distance of the two distributions. A frozen clip (speed 0) or one
  whose item moves at half the data's speed is far from them;
- ``prediction_error_px``: for clips predicted from the first frames of real ones, the mean distance between the
  tracked item and the same item tracked in the true continuation, over the first predicted frames.

``motion_scores`` reports each beside its floor (held-out real clips) and two baselines that must fail: the real
clips shuffled in time (no motion law: fails the acceleration term) and frozen at their first frame (no motion:
fails the speed term).
"""

from __future__ import annotations

import torch


def track(clip: torch.Tensor, item: int = 28, reach: int = 6) -> tuple[torch.Tensor, tuple[int, int]]:
    """(T, 2) top-left (row, column) of the first item in every frame of ``clip`` (T, H, W) (grey, any scale), and
    the item's box (height, width): the brightest ``item`` x ``item`` window of the first frame, trimmed to the
    pixels above a tenth of its peak (so the box cannot slide over the item's dark border)."""
    x = clip.float()[:, None]
    T = x.shape[0]
    mass = x[0, 0].unfold(0, item, 1).unfold(1, item, 1).sum((-2, -1))  # every item x item window's brightness
    r, c = divmod(int(mass.argmax()), mass.shape[1])
    win = x[0, 0, r : r + item, c : c + item]
    rows, cols = (win > 0.1 * win.max()).any(1).nonzero(), (win > 0.1 * win.max()).any(0).nonzero()
    r, c = r + int(rows.min()), c + int(cols.min())
    h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
    pos = torch.tensor([r, c])
    out = [pos]
    for t in range(1, T):
        window = x[t - 1, :, pos[0] : pos[0] + h, pos[1] : pos[1] + w][None]
        r0, c0 = max(0, int(pos[0]) - reach), max(0, int(pos[1]) - reach)
        frame = x[t, 0, r0 : int(pos[0]) + reach + h, c0 : int(pos[1]) + reach + w]  # the reachable region
        # sum of squared differences at every reachable placement (patches as views: no large-kernel convolution)
        near = (frame.unfold(0, h, 1).unfold(1, w, 1) - window[0, 0]).pow(2).sum((-2, -1))
        dr, dc = divmod(int(near.argmin()), near.shape[1])
        pos = torch.tensor([r0 + dr, c0 + dc])
        out.append(pos)
    return torch.stack(out).float(), (h, w)


def _tracks(clips: torch.Tensor, item: int = 28, margin: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each clip's track (T, 2) and which of its frames (T,) keep the item's window ``margin`` pixels from every
    wall; clips (N, T, H, W) or (N, T, C, H, W) (channels averaged). Tracking is the costly part: every score reads
    these."""
    clips = clips.float()
    out = []
    for clip in clips.mean(2) if clips.dim() == 5 else clips:
        p, box = track(clip, item)
        limit = torch.tensor([clip.shape[-2] - box[0], clip.shape[-1] - box[1]])
        out.append((p, ((p >= margin) & (p <= limit - margin)).all(-1)))
    return out


def _mean_acceleration(tracks) -> float:
    errors = []
    for p, clear in tracks:
        accel = (p[2:] - 2 * p[1:-1] + p[:-2]).abs()  # (T - 2, 2) at frames 1 .. T - 2
        errors.append(accel[clear[2:] & clear[1:-1] & clear[:-2]].flatten())
    errors = torch.cat(errors)
    return float(errors.mean()) if len(errors) else float("nan")


def _speeds(tracks) -> torch.Tensor:
    return torch.cat([(p[1:] - p[:-1]).norm(dim=-1)[clear[1:] & clear[:-1]] for p, clear in tracks])


def dynamics_error(clips: torch.Tensor, item: int = 28, margin: int = 5) -> float:
    """Mean |second difference| of the first item's track (pixels / frame^2) away from the walls, over clips
    (N, T, H, W) or (N, T, C, H, W) (channels averaged); NaN when no frame of any clip is clear of the walls."""
    return _mean_acceleration(_tracks(clips, item, margin))


def speeds(clips: torch.Tensor, item: int = 28, margin: int = 5) -> torch.Tensor:
    """The first item's speed (pixels / frame) between consecutive frames clear of the walls, over all ``clips``."""
    return _speeds(_tracks(clips, item, margin))


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor, levels: int = 200) -> float:
    """The 1-Wasserstein distance of two samples of numbers: the mean gap between their quantiles (samples of any
    sizes); NaN when either is empty."""
    if not len(a) or not len(b):
        return float("nan")
    q = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
    return float((torch.quantile(a.double(), q) - torch.quantile(b.double(), q)).abs().mean())


def speed_distance(clips: torch.Tensor, ref_speeds: torch.Tensor, item: int = 28) -> float:
    """How far the tracked speeds of ``clips`` are from ``ref_speeds`` (``speeds`` of real clips), in pixels / frame."""
    return wasserstein_1d(speeds(clips, item), ref_speeds)


def prediction_error_px(predicted: torch.Tensor, true: torch.Tensor, context: int, horizon: int = 4,
                        item: int = 28) -> float:  # fmt: skip
    """Mean distance (pixels) between the first item tracked in ``predicted`` clips and in the ``true`` clips they
    continue, over the ``horizon`` frames after the first ``context`` (which both share)."""
    errors = []
    for (a, _), (b, _) in zip(_tracks(predicted, item), _tracks(true, item)):
        errors.append((a - b)[context : context + horizon].norm(dim=-1))
    return float(torch.cat(errors).mean())


def shuffled_in_time(clips: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The clips with each one's frames in a random order (no motion law: the acceleration term's ceiling)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([c[torch.randperm(len(c), generator=g)] for c in clips])


def frozen(clips: torch.Tensor, from_frame: int = 0) -> torch.Tensor:
    """The clips with every frame after ``from_frame`` replaced by it (nothing moves: the speed term's ceiling)."""
    out = clips.clone()
    out[:, from_frame + 1 :] = clips[:, from_frame : from_frame + 1]
    return out


def motion_scores(clips: torch.Tensor, real: torch.Tensor | None, ref: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """``dynamics_error`` and ``speed_distance`` of ``clips`` (the generated ones), and the same of the held-out
    ``real`` clips (``_real``, the floor), of them shuffled in time (``_shuffled``) and frozen (``_frozen``); speeds
    are compared with those of the reference clips ``ref`` (other real clips than ``real``). Without ``real``, the
    generated clips' scores alone."""
    ref_speeds = speeds(ref)
    out = {}
    cases = [("", clips)]
    if real is not None:
        cases += [("_real", real), ("_shuffled", shuffled_in_time(real, seed)), ("_frozen", frozen(real))]
    for suffix, c in cases:  # each set tracked once for both scores
        tracks = _tracks(c)
        out[f"dynamics_error{suffix}"] = _mean_acceleration(tracks)
        out[f"speed_distance{suffix}"] = wasserstein_1d(_speeds(tracks), ref_speeds)
    return out


def prediction_scores(predicted: torch.Tensor, true: torch.Tensor, context: int, horizon: int = 4,
                      seed: int = 0) -> dict[str, float]:  # fmt: skip
    """``prediction_error_px`` of clips predicted from the first ``context`` frames of ``true``, beside the true
    continuation (``_real``: 0, the tracker is deterministic), it shuffled in time (``_shuffled``) and the last
    context frame held (``_frozen``)."""
    tail = shuffled_in_time(true[:, context:], seed)
    cases = (("", predicted), ("_real", true), ("_shuffled", torch.cat([true[:, :context], tail], 1)),
             ("_frozen", frozen(true, context - 1)))  # fmt: skip
    return {f"prediction_error_px{s}": prediction_error_px(c, true, context, horizon) for s, c in cases}


def prediction_motion(predicted: torch.Tensor, true: torch.Tensor, context: int, ref: torch.Tensor) -> dict[str, float]:
    """``dynamics_error`` and ``speed_distance`` (against the speeds of ``ref``) of the frames clips ``predicted``
    from the first ``context`` frames of ``true`` drew themselves (from the last given frame on), as
    ``prediction_<score>``, beside the same of the true continuations (``prediction_<score>_real``). From one given
    frame these tell the motion a model makes apart from the first frames it draws."""
    out = {}
    for suffix, c in (("", predicted), ("_real", true)):
        out.update({f"prediction_{k}{suffix}": v for k, v in motion_scores(c[:, context - 1 :], None, ref).items()})
    return out
