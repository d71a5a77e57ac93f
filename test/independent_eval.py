"""An evaluator written from the definitions, independent of :mod:`dualdepth_ros.evaluation`.

Plain loops over the ground-truth points, to check the package's vectorised code against:

* a ground-truth pixel centre ``(u, v)`` of a ``W×H`` image lies at ``x = (u + 0.5)·sw/W − 0.5 − x0``,
  ``y = (v + 0.5)·sh/H − 0.5 − y0`` in a network input that resized the image to ``sw×sh`` and kept
  the ``w×h`` window at ``(x0, y0)`` (pixel centres at integer coordinates); it was seen when
  ``−0.5 ≤ x ≤ w − 0.5`` and ``−0.5 ≤ y ≤ h − 0.5``;
* the prediction there is the bilinear interpolation of its inverse depth (coordinates clamped
  to the edge pixels), as monodepth2's ``cv2.resize`` of the disparity;
* Garg's crop keeps rows ``[int(0.40810811·H), int(0.99189189·H))`` and columns
  ``[int(0.03594771·W), int(0.96405229·W))``; valid depth is in ``(min_depth, max_depth]``;
* median scaling, clamping and the seven metrics as in Eigen et al. / monodepth2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def score_frame(
    gt: np.ndarray,
    pred: np.ndarray,
    window: tuple[int, int, int, int],
    *,
    garg: bool,
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
) -> tuple[dict[str, float], int]:
    """Metrics of one frame and the number of ground-truth points scored.

    ``window = (sw, sh, x0, y0)``: the input was resized to ``sw×sh``, then the prediction's
    ``w×h`` window at ``(x0, y0)`` kept (``w×h`` is ``pred``'s shape).
    """
    H, W = gt.shape
    h, w = pred.shape
    sw, sh, x0, y0 = window
    top, bottom = int(0.40810811 * H), int(0.99189189 * H)
    left, right = int(0.03594771 * W), int(0.96405229 * W)
    pairs = []
    for v, u in np.argwhere(np.isfinite(gt) & (gt > 0)):
        z = float(gt[v, u])
        if not (min_depth < z <= max_depth):
            continue
        if garg and not (top <= v < bottom and left <= u < right):
            continue
        x = (u + 0.5) * sw / W - 0.5 - x0
        y = (v + 0.5) * sh / H - 0.5 - y0
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            continue
        x, y = min(max(x, 0.0), w - 1.0), min(max(y, 0.0), h - 1.0)
        i0, j0 = int(math.floor(x)), int(math.floor(y))
        i1, j1 = min(i0 + 1, w - 1), min(j0 + 1, h - 1)
        a, b = x - i0, y - j0
        disp = (
            (1 - a) * (1 - b) / pred[j0, i0]
            + a * (1 - b) / pred[j0, i1]
            + (1 - a) * b / pred[j1, i0]
            + a * b / pred[j1, i1]
        )
        pairs.append((z, 1.0 / disp))
    g = np.array([p[0] for p in pairs])
    p = np.array([p[1] for p in pairs])
    p = np.clip(p * np.median(g) / np.median(p), min_depth, max_depth)
    n = len(g)
    ratio = [max(gi / pi, pi / gi) for gi, pi in zip(g, p)]
    metrics = {
        "abs_rel": sum(abs(gi - pi) / gi for gi, pi in zip(g, p)) / n,
        "sq_rel": sum((gi - pi) ** 2 / gi for gi, pi in zip(g, p)) / n,
        "rmse": math.sqrt(sum((gi - pi) ** 2 for gi, pi in zip(g, p)) / n),
        "rmse_log": math.sqrt(sum((math.log(gi) - math.log(pi)) ** 2 for gi, pi in zip(g, p)) / n),
        "a1": sum(r < 1.25 for r in ratio) / n,
        "a2": sum(r < 1.25**2 for r in ratio) / n,
        "a3": sum(r < 1.25**3 for r in ratio) / n,
    }
    return metrics, n


def score(
    gts: Sequence[np.ndarray], preds: Sequence[np.ndarray], window: tuple[int, int, int, int], **kw: object
) -> tuple[dict[str, float], float]:
    """Metrics averaged over frames (each frame's metrics first, as the standard protocol) and mean points."""
    rows = [score_frame(g, p, window, **kw) for g, p in zip(gts, preds)]
    mean = {k: float(np.mean([r[0][k] for r in rows])) for k in rows[0][0]}
    return mean, float(np.mean([r[1] for r in rows]))
