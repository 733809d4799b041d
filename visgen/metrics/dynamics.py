"""A dynamics score that only synthetic video allows: do the items of a Moving Fashion-MNIST clip move as the data
moves them (constant velocity, elastic bounces off the walls)?

Each clip's first item is tracked: its box is the brightest 28 x 28 window of the first frame trimmed to the item's
pixels, and in every later frame it is found again by the smallest sum of squared differences to the previous frame's
box, within a few pixels of where it was (the data's items move 2 to 4 pixels a frame). Away from the walls a constant velocity has no
acceleration, so the score is the mean absolute second difference of the track, in pixels per frame squared, over
the frames whose window is clear of every wall at t - 1, t and t + 1 (bounces happen at walls). Real clips score
near the rounding of positions to pixels (the floor); the same clips with their frames shuffled in time score far
above (a ceiling); a model's clips land between.
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


def dynamics_error(clips: torch.Tensor, item: int = 28, margin: int = 5) -> float:
    """Mean |second difference| of the first item's track (pixels / frame^2) away from the walls, over clips
    (N, T, H, W) or (N, T, C, H, W) (channels averaged); NaN when no frame of any clip is clear of the walls."""
    clips = clips.float()
    if clips.dim() == 5:
        clips = clips.mean(2)
    errors = []
    for clip in clips:
        p, box = track(clip, item)
        accel = (p[2:] - 2 * p[1:-1] + p[:-2]).abs()  # (T - 2, 2) at frames 1 .. T - 2
        limit = torch.tensor([clip.shape[-2] - box[0], clip.shape[-1] - box[1]])
        clear = ((p >= margin) & (p <= limit - margin)).all(-1)
        ok = clear[2:] & clear[1:-1] & clear[:-2]
        errors.append(accel[ok].flatten())
    errors = torch.cat(errors)
    return float(errors.mean()) if len(errors) else float("nan")


def shuffled_in_time(clips: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The clips with each one's frames in a random order (the ceiling of the score)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([c[torch.randperm(len(c), generator=g)] for c in clips])
