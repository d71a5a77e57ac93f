"""Pictures of an evaluation (OpenCV only): the one depth colouriser, mosaics, sparsification plots.

:func:`colorize_inverse_depth` and :func:`colorize_confidence` are the package's only
colourisers: ``dualdepth eval``'s mosaics and the trainer's TensorBoard images
(:mod:`dualdepth_ros.training.runlog`) both use them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from .metrics import as_map
from .sparsification import SparsificationResult

__all__ = [
    "MOSAIC_MIN_PANEL_WIDTH",
    "colorize_inverse_depth",
    "colorize_confidence",
    "make_mosaic",
    "mosaic_rows",
    "draw_sparsification_plot",
    "save_png",
    "save_mosaic",
    "save_sparsification_plot",
]

#: Mosaic panels are enlarged (nearest neighbour, integer factor) to at least this width.
MOSAIC_MIN_PANEL_WIDTH = 320


def colorize_inverse_depth(
    depth: np.ndarray, vmax_percentile: float = 95.0, colormap: int = cv2.COLORMAP_MAGMA
) -> np.ndarray:
    """``H×W×3`` uint8 RGB of the inverse depth (near = bright).

    Normalised to ``[min, percentile]`` of the valid inverse depths; invalid pixels are black.
    """
    depth = as_map(depth, "depth").astype(np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    inv = np.zeros_like(depth)
    inv[valid] = 1.0 / depth[valid]
    if valid.any():
        lo = float(inv[valid].min())
        hi = float(np.percentile(inv[valid], vmax_percentile))
        norm = np.clip((inv - lo) / max(hi - lo, 1e-12), 0, 1)
    else:
        norm = inv
    out = cv2.applyColorMap((norm * 255).astype(np.uint8), colormap)
    out[~valid] = 0
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def colorize_confidence(confidence: np.ndarray, colormap: int = cv2.COLORMAP_VIRIDIS) -> np.ndarray:
    """``H×W×3`` uint8 RGB of a confidence map in [0, 1] (NaN black)."""
    conf = as_map(confidence, "confidence").astype(np.float32)
    valid = np.isfinite(conf)
    u8 = (np.clip(np.where(valid, conf, 0), 0, 1) * 255).astype(np.uint8)
    out = cv2.applyColorMap(u8, colormap)
    out[~valid] = 0
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def _as_rgb_u8(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3:
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


def mosaic_rows(examples: Sequence[Any], min_panel_width: int = MOSAIC_MIN_PANEL_WIDTH) -> np.ndarray:
    """One ``RGB`` uint8 picture: a row ``image | inverse depth | confidence`` per example.

    ``examples`` have ``rgb`` (``h×w×3`` uint8), ``depth`` and ``confidence`` (``h×w`` or
    None), e.g. :class:`~dualdepth_ros.evaluation.sequence.Example`. Panels are the network
    input size times ``max(1, ceil(min_panel_width / w))`` (nearest neighbour), so small
    models stay legible; without confidence a row has two panels.
    """
    if not examples:
        raise ValueError("no example frames to draw")
    rows = []
    for e in examples:
        row = make_mosaic(e.rgb, e.depth, e.confidence, vertical=False)
        f = max(1, math.ceil(min_panel_width / e.rgb.shape[1]))
        rows.append(np.repeat(np.repeat(row, f, axis=0), f, axis=1) if f > 1 else row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def make_mosaic(
    image: Any, depth: np.ndarray, confidence: np.ndarray | None = None, vertical: bool | None = None
) -> np.ndarray:
    """Image | colourised inverse depth | confidence, as one ``RGB`` uint8 array.

    ``image`` is ``H×W×3`` uint8 or float ``3×H×W`` in [0, 1]; the maps are resized to it.
    ``vertical`` stacks the panels top to bottom (default: for images wider than 2:1).
    """
    rgb = _as_rgb_u8(image)
    h, w = rgb.shape[:2]

    def fit(panel: np.ndarray) -> np.ndarray:
        return panel if panel.shape[:2] == (h, w) else cv2.resize(panel, (w, h), interpolation=cv2.INTER_NEAREST)

    panels = [rgb, fit(colorize_inverse_depth(depth))]
    if confidence is not None:
        panels.append(fit(colorize_confidence(confidence)))
    if vertical is None:
        vertical = w > 2 * h
    return np.concatenate(panels, axis=0 if vertical else 1)


_PLOT_COLOURS = {"model": (31, 119, 180), "oracle": (44, 160, 44), "random": (214, 39, 40)}


def draw_sparsification_plot(
    fractions: np.ndarray,
    curves: Mapping[str, np.ndarray],
    title: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (640, 480),
) -> np.ndarray:
    """A line plot (``RGB`` uint8, ``size = (width, height)``) of curves over removed fractions."""
    width, height = size
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 40, 50
    pw, ph = width - left - right, height - top - bottom
    ys = np.concatenate([np.asarray(c, dtype=np.float64) for c in curves.values()]) if curves else np.zeros(1)
    ys = ys[np.isfinite(ys)]
    ymax = float(ys.max()) if ys.size and ys.max() > 0 else 1.0
    ymax *= 1.05
    font = cv2.FONT_HERSHEY_SIMPLEX

    def to_px(x: float, y: float) -> tuple[int, int]:
        return int(round(left + x * pw)), int(round(top + ph - (y / ymax) * ph))

    for i in range(6):  # grid and ticks
        x = i / 5
        px, _ = to_px(x, 0)
        cv2.line(img, (px, top), (px, top + ph), (225, 225, 225), 1)
        cv2.putText(img, f"{x:.1f}", (px - 12, top + ph + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        y = ymax * i / 5
        _, py = to_px(0, y)
        cv2.line(img, (left, py), (left + pw, py), (225, 225, 225), 1)
        cv2.putText(img, f"{y:.3g}", (5, py + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.putText(img, "fraction of pixels removed", (left + pw // 2 - 95, height - 12), font, 0.45, (0, 0, 0), 1)
    if ylabel:
        cv2.putText(img, ylabel, (5, top - 10), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if title:
        cv2.putText(img, title, (left + 60, 25), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    extra = [(0, 0, 0), (148, 103, 189), (255, 127, 14), (140, 86, 75)]
    for k, (name, values) in enumerate(curves.items()):
        colour = _PLOT_COLOURS.get(name, extra[k % len(extra)])
        pts = np.array([to_px(float(x), float(y)) for x, y in zip(fractions, values) if np.isfinite(y)], np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        ly = top + 18 + 18 * k
        cv2.line(img, (left + pw - 130, ly - 4), (left + pw - 105, ly - 4), colour, 2)
        cv2.putText(img, name, (left + pw - 100, ly), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an ``RGB`` uint8 image as PNG (creating the folder)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    if not cv2.imwrite(path, bgr):
        raise OSError(f"could not write {path}")


def save_mosaic(
    path: str | os.PathLike, image: Any, depth: np.ndarray, confidence: np.ndarray | None = None
) -> np.ndarray:
    """Write :func:`make_mosaic` as a PNG and return it."""
    mosaic = make_mosaic(image, depth, confidence)
    save_png(path, mosaic)
    return mosaic


def save_sparsification_plot(
    path: str | os.PathLike, result: SparsificationResult, metric: str = "abs_rel", title: str | None = None
) -> np.ndarray:
    """Write the model/oracle/random sparsification curves of ``metric`` as a PNG and return it."""
    if metric not in result.curves:
        raise ValueError(f"no {metric!r} curves; have {sorted(result.curves)}")
    if title is None:
        title = f"{metric}: AUSE {result.ause[metric]:.4f}  AURG {result.aurg[metric]:.4f}"
    img = draw_sparsification_plot(result.fractions, result.curves[metric], title=title, ylabel=metric)
    save_png(path, img)
    return img
