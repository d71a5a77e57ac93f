"""``dualdepth bench render``: how fast the synthetic world renders (frames/s, CPU).

Each size gets its own world (seed ``--seed``); ``--warmup`` frames are rendered and
discarded (ray tables, texture pyramids and caches are built then), then ``--frames`` frames
at consecutive times are timed one by one and the median is reported. World construction
(scene generation and textures) is timed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from ..errors import DualDepthError
from ..synth import SynthConfig, World, render_frame

DEFAULT_SIZES = "640x192,320x96"


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            w, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise DualDepthError(f"--sizes expects WxH[,WxH...], e.g. 640x192, got {item!r}") from None
        sizes.append((w, h))
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"image sizes WxH, comma separated ({DEFAULT_SIZES})")
    parser.add_argument("--frames", type=int, default=7, help="timed frames per size (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed frames first (default 1)")
    parser.add_argument("--supersample", type=int, default=2, help="rays per pixel side (default 2, as make-sample)")
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def bench(width: int, height: int, frames: int, warmup: int, supersample: int, seed: int) -> dict:
    """Render timings for one image size (seconds, frames/s)."""
    cfg = SynthConfig(width=width, height=height, supersample=supersample)
    t0 = time.perf_counter()
    world = World.from_seed(seed, cfg)
    build = time.perf_counter() - t0
    for i in range(warmup):
        render_frame(world, cfg.frame_time(i))
    times = []
    for i in range(warmup, warmup + frames):
        t0 = time.perf_counter()
        render_frame(world, cfg.frame_time(i))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "width": width,
        "height": height,
        "supersample": supersample,
        "frames": frames,
        "median_s": round(median, 5),
        "min_s": round(min(times), 5),
        "max_s": round(max(times), 5),
        "frames_per_second": round(1.0 / median, 3),
        "rays_per_second": round(width * height * (supersample**2 + 1) / median),
        "world_build_s": round(build, 3),
    }


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.warmup < 0:
        raise DualDepthError("--frames must be at least 1 and --warmup non-negative")
    results = [bench(w, h, args.frames, args.warmup, args.supersample, args.seed) for w, h in _parse_sizes(args.sizes)]
    report = {
        "benchmark": "render",
        "machine": {
            "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "processor": platform.processor() or platform.machine(),
        },
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"render benchmark (CPU, numpy; {report['machine']['cpu_count']} cores; median of {args.frames} frames)")
    print(f"{'size':>9} {'ss':>3} {'ms/frame':>9} {'frames/s':>9} {'Mrays/s':>8} {'world s':>8}")
    for r in results:
        print(
            f"{r['width']:>4}x{r['height']:<4} {r['supersample']:>3} {r['median_s'] * 1e3:>9.1f} "
            f"{r['frames_per_second']:>9.2f} {r['rays_per_second'] / 1e6:>8.2f} {r['world_build_s']:>8.2f}"
        )
    return 0
