"""Small synthetic drives for the tests: any image shape, a car that stops, LiDAR-like sparse ground truth.

Rendered with :mod:`dualdepth_ros.synth` (1×1 supersampling, a short route: about a second
for 24 frames of 331×100) and recorded as real rosbag2 bags; :func:`rewrite_bag` then derives
variants (thinned depth, dropped topics) by re-recording every message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dualdepth_ros import bagio
from dualdepth_ros.images import decode_image
from dualdepth_ros.synth.config import SynthConfig
from dualdepth_ros.synth.record import record

FPS = 10.0


def drive(
    path: Path,
    width: int,
    height: int,
    frames: int,
    *,
    seed: int = 3,
    stop_last_third: bool = False,
    supersample: int = 1,
) -> Path:
    """Render and record a drive; with ``stop_last_third`` the car stands still from 2/3 of it to the end."""
    duration = frames / FPS
    stops = ((round(2 * duration / 3, 3), duration),) if stop_last_third else ()
    cfg = SynthConfig(
        width=width,
        height=height,
        supersample=supersample,
        fps=FPS,
        stops=stops,
        stop_ramp=min(2.0, duration / 3),
        route_length=max(200.0, 10.0 * duration + 100.0),
    )
    record(path, cfg, seed=seed, frames=frames, progress=False)
    return path


def rewrite_bag(
    src: Path, dst: Path, *, drop: tuple[str, ...] = (), depth: Callable[[np.ndarray, int], np.ndarray] | None = None
) -> Path:
    """Re-record ``src`` at ``dst`` without the ``drop`` topics, passing each ``/gt/depth`` map through ``depth``.

    ``depth(array, index)`` gets the ``H×W`` float32 metres of the ``index``-th depth message.
    """
    msgs = [m for m in bagio.read_messages(src) if m.topic not in drop]
    types: dict[str, str] = {}
    for m in msgs:
        types.setdefault(m.topic, m.msgtype)
    k = 0
    with bagio.BagWriter(dst) as bag:
        for topic, msgtype in types.items():
            bag.add_topic(topic, msgtype)
        for m in msgs:
            msg: Any = m.msg
            if m.topic == "/gt/depth" and depth is not None:
                arr = depth(decode_image(msg).astype(np.float32), k)
                msg = bagio.image_msg(arr, "32FC1", bagio.stamp_to_ns(msg.header.stamp), msg.header.frame_id)
                k += 1
            bag.write(m.topic, msg, m.timestamp_ns)
    return dst


def lidar_pattern(
    height: int, width: int, index: int, scanlines: int = 64, dropout: float = 0.3, seed: int = 0
) -> np.ndarray:
    """``H×W`` bool: the pixels a 64-beam LiDAR projected into the image would hit.

    ``scanlines`` rows spread over the lower 70 % of the image (a roof LiDAR sees little above
    the horizon), every second column along each, and a random ``dropout`` of those points
    (no return), different for every frame ``index``.
    """
    rng = np.random.default_rng(seed + index)
    rows = np.unique(np.round(np.linspace(0.3 * (height - 1), height - 1, scanlines)).astype(int))
    mask = np.zeros((height, width), dtype=bool)
    mask[rows, ::2] = True
    return mask & (rng.random((height, width)) >= dropout)


def thin_to_lidar(src: Path, dst: Path, **kw: Any) -> Path:
    """``src`` with its ``/gt/depth`` thinned to :func:`lidar_pattern` (0 = no return, as KITTI's depth maps)."""

    def thin(depth: np.ndarray, index: int) -> np.ndarray:
        hit = lidar_pattern(*depth.shape, index, **kw) & np.isfinite(depth)
        return np.where(hit, depth, 0.0).astype(np.float32)

    return rewrite_bag(src, dst, depth=thin)
