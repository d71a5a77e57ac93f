"""The procedural driving world: a seeded street rendered by ray casting, with exact ground truth.

Quick start::

    from dualdepth_ros.synth import SynthConfig, World, render_frame

    world = World.from_seed(1, SynthConfig(width=416, height=128))
    frame = render_frame(world, t=0.3)  # rgb, depth (m, NaN sky), moving_mask, T_cam_to_world, intrinsics

``dualdepth make-sample`` (:mod:`dualdepth_ros.synth.record`) records such a drive as a rosbag2.
"""

from .config import DEFAULT_DISTORTION, SynthConfig
from .render import CLASSES, Frame, distort_points, render_frame, render_index, undistort_points
from .world import World

__all__ = [
    "CLASSES",
    "DEFAULT_DISTORTION",
    "Frame",
    "SynthConfig",
    "World",
    "distort_points",
    "render_frame",
    "render_index",
    "undistort_points",
]
