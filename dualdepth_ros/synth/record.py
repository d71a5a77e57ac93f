"""``dualdepth make-sample``: render a synthetic drive and record it as a rosbag2 with ground truth.

Topics (all headers share the frame's stamp; camera topics use ``frame_id`` ``camera_optical_frame``):

=============================== =============================== ==============================================
topic                           type                            content
=============================== =============================== ==============================================
``/camera/image_raw``           ``sensor_msgs/Image``           ``rgb8`` raw image (distorted with --distortion)
``/camera/image_raw/compressed`` ``sensor_msgs/CompressedImage`` instead of the above with ``--compressed`` (PNG)
``/camera/camera_info``         ``sensor_msgs/CameraInfo``      ``K``/``D`` of the raw camera, ``P = [K|0]``, ``R = I``
``/gt/depth``                   ``sensor_msgs/Image``           ``32FC1`` z-depth in metres, NaN for sky
``/gt/camera_info``             ``sensor_msgs/CameraInfo``      the camera of ``/gt/*`` images: ``K``, no distortion
``/gt/moving_mask``             ``sensor_msgs/Image``           ``mono8``, 255 on vehicles in traffic, else 0
``/gt/pose``                    ``geometry_msgs/PoseStamped``   pose of the camera optical frame in ``world``
=============================== =============================== ==============================================

Conventions: ``/gt/pose`` is ``T_cam_to_world`` (it maps points of ``camera_optical_frame``
— x right, y down, z forward — into ``world``: X along the start of the road, Y left, Z up,
road surface at Z = 0); the relative motion between frames ``a`` and ``b`` is
``geometry.relative_pose(T_a, T_b)`` = ``T_a_to_b``. Ground-truth images are on the
undistorted pinhole grid, i.e. aligned with the raw image rectified with ``K``, ``D`` and
``P`` from ``/camera/camera_info``; without ``--distortion`` that is the raw image itself.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import bagio
from ..errors import DualDepthError
from .config import DEFAULT_DISTORTION, MAX_TRAFFIC_VEHICLES, SynthConfig, stop_and_go_stops
from .render import render_frame
from .world import World

__all__ = ["add_arguments", "run", "record", "TOPICS", "MAX_FRAMES", "auto_stops"]

CAMERA_FRAME = "camera_optical_frame"
WORLD_FRAME = "world"
MAX_FRAMES = 20_000
FORMATS = tuple(bagio.STORAGES)

#: Topic names by role.
TOPICS = {
    "image": "/camera/image_raw",
    "compressed": "/camera/image_raw/compressed",
    "camera_info": "/camera/camera_info",
    "depth": "/gt/depth",
    "gt_camera_info": "/gt/camera_info",
    "moving_mask": "/gt/moving_mask",
    "pose": "/gt/pose",
}


def auto_stops(frames: int, fps: float, ramp: float = 2.0) -> tuple[tuple[float, float], ...]:
    """The default standstill: one stop in drives of at least 7 s, so static-frame filters have work.

    The car is fully stopped from 40 % of the drive for ``max(0.8 s, 10 %)`` of it (about
    ``0.1·frames`` identical camera poses), braking and accelerating over ``ramp`` seconds.
    """
    duration = frames / fps
    if duration < 7.0:
        return ()
    return ((round(0.4 * duration, 3), round(max(0.8, 0.1 * duration), 3)),)


def _parse_stop(text: str) -> tuple[float, float]:
    try:
        at, dur = (float(v) for v in text.split(":"))
    except ValueError:
        raise DualDepthError(f"--stop expects AT:FOR in seconds (e.g. 4:1.5), got {text!r}") from None
    return at, dur


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="bag directory to create")
    parser.add_argument("--frames", type=int, default=100, help="number of frames (default 100)")
    parser.add_argument("--width", type=int, default=416, help="image width in pixels (default 416)")
    parser.add_argument("--height", type=int, default=128, help="image height in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0); same seed, same bag")
    parser.add_argument("--format", default="mcap", metavar="{mcap,sqlite3}", help="bag storage (default mcap)")
    parser.add_argument("--compressed", action="store_true", help="record PNG CompressedImage instead of raw rgb8")
    parser.add_argument(
        "--distortion", action="store_true", help=f"render through a plumb_bob lens D={list(DEFAULT_DISTORTION)}"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bag at --out")
    parser.add_argument("--speed", type=float, default=10.0, help="ego cruising speed in m/s (default 10)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate in Hz (default 10)")
    parser.add_argument("--hfov", type=float, default=90.0, help="horizontal field of view in degrees (default 90)")
    parser.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="AT:FOR",
        help="stand still from AT seconds for FOR seconds (repeatable); default: one stop in drives of 7 s or more",
    )
    parser.add_argument("--no-stop", action="store_true", help="never stop")
    parser.add_argument(
        "--stop-and-go",
        action="store_true",
        help="traffic jam speed profile: cruise 2 s, brake 2 s, stand 2 s, accelerate 2 s, repeated "
        "(the lead and side vehicles do the same)",
    )
    parser.add_argument(
        "--lead-vehicles",
        type=int,
        default=1,
        metavar="N",
        help=f"vehicles ahead in the ego lane, 0..{MAX_TRAFFIC_VEHICLES} (default 1: a car 14 m ahead)",
    )
    parser.add_argument(
        "--side-vehicles",
        type=int,
        default=0,
        metavar="N",
        help=f"vehicles in the neighbouring lane in the ego's direction, the first a truck beside the car, "
        f"0..{MAX_TRAFFIC_VEHICLES} (default 0; with N > 0 that lane has no oncoming traffic)",
    )
    parser.add_argument(
        "--traffic-speed-ratio",
        type=float,
        default=1.0,
        metavar="R",
        help="speed of the lead and side vehicles / ego speed, 0..3 (default 1: they keep pace with the camera)",
    )
    parser.add_argument("--noise", type=float, default=0.0, help="sensor noise std in 8-bit levels (default 0)")
    parser.add_argument("--exposure-jitter", type=float, default=0.0, help="relative exposure variation (default 0)")
    parser.add_argument("--supersample", type=int, default=2, help="rays per pixel side for anti-aliasing (default 2)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces this bag (non-default options only, plus the essentials)."""
    parts = ["dualdepth", "make-sample", "--out", str(args.out), "--frames", str(args.frames)]
    parts += ["--width", str(args.width), "--height", str(args.height), "--seed", str(args.seed)]
    parts += ["--format", args.format]
    for flag in ("compressed", "distortion", "no_stop", "stop_and_go"):
        if getattr(args, flag, False):
            parts.append("--" + flag.replace("_", "-"))
    defaults = {
        "speed": 10.0,
        "fps": 10.0,
        "hfov": 90.0,
        "noise": 0.0,
        "exposure_jitter": 0.0,
        "supersample": 2,
        "lead_vehicles": 1,
        "side_vehicles": 0,
        "traffic_speed_ratio": 1.0,
    }
    for key, default in defaults.items():
        value = getattr(args, key, default)
        if value != default:
            parts += ["--" + key.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
    for stop in args.stop or []:
        parts += ["--stop", stop]
    return shlex.join(parts)


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """The :class:`SynthConfig` of the command line (raises :class:`DualDepthError` on bad values)."""
    if args.format not in FORMATS:
        raise DualDepthError(f"unknown --format {args.format!r}; choose one of: {', '.join(FORMATS)}")
    if not 1 <= args.frames <= MAX_FRAMES:
        raise DualDepthError(f"--frames must be between 1 and {MAX_FRAMES}, got {args.frames}")
    if args.width <= 0 or args.height <= 0:
        raise DualDepthError(f"--width and --height must be positive, got {args.width}x{args.height}")
    if args.fps <= 0:
        raise DualDepthError(f"--fps must be positive, got {args.fps}")
    stop_and_go = getattr(args, "stop_and_go", False)
    if args.no_stop and args.stop:
        raise DualDepthError("--stop and --no-stop contradict each other")
    if stop_and_go and (args.no_stop or args.stop):
        raise DualDepthError("--stop-and-go sets the stops itself: drop --stop / --no-stop")
    if args.no_stop:
        stops: tuple[tuple[float, float], ...] = ()
    elif stop_and_go:
        stops = stop_and_go_stops(args.frames / args.fps)
    elif args.stop:
        stops = tuple(_parse_stop(s) for s in args.stop)
    else:
        stops = auto_stops(args.frames, args.fps)
    duration = args.frames / args.fps
    return SynthConfig(
        width=args.width,
        height=args.height,
        hfov_deg=args.hfov,
        distortion=DEFAULT_DISTORTION if args.distortion else None,
        supersample=args.supersample,
        speed=args.speed,
        fps=args.fps,
        stops=stops,
        route_length=max(200.0, args.speed * duration + 100.0),
        noise_std=args.noise,
        exposure_jitter=args.exposure_jitter,
        lead_vehicles=getattr(args, "lead_vehicles", 1),
        side_vehicles=getattr(args, "side_vehicles", 0),
        traffic_speed_ratio=getattr(args, "traffic_speed_ratio", 1.0),
    )


def _traffic_line(cfg: SynthConfig) -> str:
    """The README's description of the moving vehicles."""
    ratio = cfg.traffic_speed_ratio
    pace = "exactly the ego speed (static in the image)" if ratio == 1 else f"{ratio:g} × the ego speed"
    parts = []
    if cfg.lead_vehicles:
        first = f"the first {cfg.lead_gap:g} m ahead" if cfg.lead_vehicles > 1 else f"{cfg.lead_gap:g} m ahead"
        parts.append(f"{cfg.lead_vehicles} lead vehicle(s) in the ego lane, {first}")
    if cfg.side_vehicles:
        parts.append(
            f"{cfg.side_vehicles} side vehicle(s) in the neighbouring lane in the ego's direction "
            "(every third a truck, the first beside the car)"
        )
    text = "; ".join(parts) + (f", at {pace}" if parts else "no lead or side vehicles")
    if cfg.side_vehicles == 0 and cfg.oncoming_per_km > 0:
        text += "; oncoming cars"
    return text + "; every vehicle in traffic is marked in `/gt/moving_mask`, also while it stands"


def _readme(cfg: SynthConfig, seed: int, frames: int, command: str, topics: list[str], storage: str) -> str:
    K = cfg.intrinsics()
    D = cfg.distortion_coeffs()
    stops = ", ".join(f"fully stopped {a:g}–{a + d:g} s" for a, d in cfg.stops) or "none"
    return f"""# Synthetic drive (dualdepth make-sample)

Recorded with:

```
{command}
```

- {frames} frames at {cfg.fps:g} Hz, {cfg.width}×{cfg.height} px, seed {seed}, storage `{storage}`.
- Camera: fx = {K.fx:g}, fy = {K.fy:g}, cx = {K.cx:g}, cy = {K.cy:g} px (hFOV {cfg.hfov_deg:g}°), \
{cfg.camera_height:g} m above the road, pitch {cfg.pitch_deg:g}°; distortion (plumb_bob) D = {list(map(float, D))}.
- Ego speed {cfg.speed:g} m/s; stops: {stops} (braking/accelerating over {cfg.stop_ramp:g} s).
- Traffic: {_traffic_line(cfg)}; parked cars; buildings with gaps, poles and trees as occluders; sky at infinity.

## Topics

{chr(10).join(f"- `{t}`" for t in topics)}

## Conventions

- `/gt/pose` is the pose of `camera_optical_frame` (x right, y down, z forward) in `world`
  (X along the start of the road, Y left, Z up, road surface Z = 0): `T_cam_to_world`, which maps
  camera points into the world. Frame a → frame b motion: `T_a_to_b = inv(T_b) · T_a`
  (`dualdepth_ros.geometry.relative_pose`).
- `/gt/depth` is z-depth (along the optical axis) in metres, `32FC1`, NaN for sky.
- `/gt/moving_mask` is `mono8`, 255 on the vehicles in traffic (also while they stand).
- Ground truth is on the undistorted pinhole grid described by `/gt/camera_info` (K, no distortion),
  i.e. aligned with the raw image rectified with `/camera/camera_info` (K, D → P = [K|0], R = I).
- Message timestamps equal header stamps; every topic has one message per frame.
"""


def record(
    out: str | Path,
    config: SynthConfig,
    seed: int,
    frames: int,
    storage: str = "mcap",
    compressed: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    progress: bool | None = None,
) -> dict:
    """Render ``frames`` frames of the world of ``seed`` and write them to a new bag at ``out``.

    Returns
    -------
    The summary dict (path, frames, duration_s, topics, bytes, seconds, ...).

    Raises
    ------
    DualDepthError : ``out`` is not empty (without ``overwrite``) or an option is invalid.
    """
    t_start = time.perf_counter()
    world = World.from_seed(seed, config)
    K = config.intrinsics().matrix()
    D = config.distortion_coeffs()
    image_topic = TOPICS["compressed"] if compressed else TOPICS["image"]
    topics = {
        image_topic: bagio.COMPRESSED_IMAGE if compressed else bagio.IMAGE,
        TOPICS["camera_info"]: bagio.CAMERA_INFO,
        TOPICS["depth"]: bagio.IMAGE,
        TOPICS["gt_camera_info"]: bagio.CAMERA_INFO,
        TOPICS["moving_mask"]: bagio.IMAGE,
        TOPICS["pose"]: bagio.POSE_STAMPED,
    }
    n_moving = 0
    with bagio.BagWriter(out, storage=storage, overwrite=overwrite) as bag:
        for topic, msgtype in topics.items():
            bag.add_topic(topic, msgtype)
        if command:
            bag.set_custom_data("dualdepth.make_sample", command)
        bag.set_custom_data("dualdepth.seed", str(seed))
        disable = None if progress is None else not progress  # None: only on a terminal
        for i in tqdm(range(frames), desc="rendering", unit="frame", file=sys.stderr, disable=disable):
            frame = render_frame(world, config.frame_time(i))
            ts = frame.stamp_ns
            if compressed:
                bag.write(image_topic, bagio.compressed_image_msg(frame.rgb, ts, CAMERA_FRAME, "png"), ts)
            else:
                bag.write(image_topic, bagio.image_msg(frame.rgb, "rgb8", ts, CAMERA_FRAME), ts)
            bag.write(
                TOPICS["camera_info"],
                bagio.camera_info_msg(
                    config.width, config.height, K, ts, CAMERA_FRAME, D=D, distortion_model="plumb_bob"
                ),
                ts,
            )
            bag.write(TOPICS["depth"], bagio.image_msg(frame.depth, "32FC1", ts, CAMERA_FRAME), ts)
            bag.write(
                TOPICS["gt_camera_info"],
                bagio.camera_info_msg(config.width, config.height, K, ts, CAMERA_FRAME, D=np.zeros(5)),
                ts,
            )
            mask = frame.moving_mask.astype(np.uint8) * np.uint8(255)
            n_moving += int(frame.moving_mask.any())
            bag.write(TOPICS["moving_mask"], bagio.image_msg(mask, "mono8", ts, CAMERA_FRAME), ts)
            bag.write(TOPICS["pose"], bagio.pose_stamped_msg(frame.T_cam_to_world, ts, WORLD_FRAME), ts)
        bag.write_text("README.md", _readme(config, seed, frames, command or "", list(topics), storage))
    seconds = time.perf_counter() - t_start
    out = Path(out)
    return {
        "path": str(out),
        "storage": storage,
        "frames": frames,
        "width": config.width,
        "height": config.height,
        "seed": seed,
        "duration_s": round((frames - 1) / config.fps, 6) if frames > 1 else 0.0,
        "stops": [list(s) for s in config.stops],
        "topics": list(topics),
        "frames_with_moving_objects": n_moving,
        "traffic": world.traffic,
        "traffic_speed_ratio": config.traffic_speed_ratio,
        "bytes": bagio.bag_size(out),
        "seconds": round(seconds, 3),
        "frames_per_second": round(frames / seconds, 3) if seconds > 0 else None,
    }


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    command = _command_line(args)
    summary = record(
        args.out,
        config,
        seed=args.seed,
        frames=args.frames,
        storage=args.format,
        compressed=args.compressed,
        overwrite=args.overwrite,
        command=command,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"wrote {summary['path']} ({summary['storage']}): {summary['frames']} frames, "
            f"{summary['duration_s']:.1f} s of drive, {summary['bytes'] / 1e6:.2f} MB, "
            f"in {summary['seconds']:.1f} s ({summary['frames_per_second']:.1f} frames/s)"
        )
        for topic in summary["topics"]:
            print(f"  {topic}")
    return 0
