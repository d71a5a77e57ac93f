"""``dualdepth bench memory``: peak host memory of one training step, per configuration and per clip.

Each measurement runs in a fresh subprocess (peak RSS is a per-process high-water mark): build the
model, run forward + losses + backward on random clips once, report the peak resident set size
above what the process held before the step. Each configuration is measured at batch 1 and batch
2; the difference is the memory **per clip** (what the trainer's micro-batching scales with), the
rest is the fixed cost. On CUDA the trainer's own measurement (:mod:`dualdepth_ros.training.memory`)
reports the allocator's peak instead.

glibc keeps much of what a step frees (its mmap threshold grows with the buffers freed, and freed
heap memory stays resident), so the resident set overstates the memory the step's tensors hold at
once. ``--live`` runs the children with ``MALLOC_MMAP_THRESHOLD_=65536``: every buffer of 64 KiB or
more is returned when freed, and the peak is that of the memory in use, the quantity a GPU's
allocator reports (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

#: label → (config files/names, overrides).
CASES = {
    "monodepth2 baseline": (["monodepth2"], []),
    "full method": (["train"], []),
    "full method, photometric checkpoint off": (["train"], ["loss.photometric.checkpoint=false"]),
}

_CHILD = r"""
import json, os, resource, sys, torch
from dualdepth_ros.config import load_config
from dualdepth_ros.losses import SelfSupervisedLoss, clip_layout
from dualdepth_ros.networks import DepthModel
w, h, b, n_cfg = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
configs, overrides = sys.argv[5:5 + n_cfg], sys.argv[5 + n_cfg:]
torch.set_num_threads(1)
cfg = load_config(*configs, overrides=[f"input.width={w}", f"input.height={h}"] + overrides)
model, loss_fn, layout = DepthModel(cfg), SelfSupervisedLoss(cfg), clip_layout(cfg)
g = torch.Generator().manual_seed(0)
batch = {("color", f, 0): torch.rand(b, 3, h, w, generator=g) for f in layout.frames}
batch[("K", 0)] = torch.tensor([[w / 2, 0, w / 2 - .5], [0, w / 2, h / 2 - .5], [0, 0, 1]]).expand(b, 3, 3).clone()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
total, _ = loss_fn(batch, model(batch))
total.backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
print(json.dumps({"before_gib": before / 2**20, "peak_gib": peak / 2**20, "mmap_threshold": threshold}))
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="640x192", metavar="WxH")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--live",
        action="store_true",
        help="memory in use rather than resident: freed buffers are returned at once (glibc mmap threshold 64 KiB)",
    )


#: ``--live``: glibc returns every freed buffer of at least this many bytes to the system at once.
LIVE_MMAP_THRESHOLD = 65536


def _measure(
    w: int, h: int, batch: int, configs: list[str], overrides: list[str], live: bool = False
) -> dict[str, Any]:
    """Peak RSS (GiB) of one step in a fresh process: ``before_gib``, ``peak_gib``, and the child's
    ``mmap_threshold`` (glibc's, as set by ``live``; ``None``: glibc's dynamic default).
    """
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if live:
        env["MALLOC_MMAP_THRESHOLD_"] = str(LIVE_MMAP_THRESHOLD)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(w), str(h), str(batch), str(len(configs)), *configs, *overrides],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> int:
    w, h = (int(v) for v in args.size.lower().split("x"))
    results = []
    for name, (configs, overrides) in CASES.items():
        one = _measure(w, h, 1, configs, overrides, args.live)
        two = _measure(w, h, 2, configs, overrides, args.live)
        step1 = one["peak_gib"] - one["before_gib"]
        step2 = two["peak_gib"] - two["before_gib"]
        per_clip = step2 - step1
        results.append(
            {
                "case": name,
                "size": f"{w}x{h}",
                "per_clip_gib": per_clip,
                "fixed_gib": step1 - per_clip,
                "step_gib_batch1": step1,
                "step_gib_batch2": step2,
                "model_gib": one["before_gib"],
                "memory": "live" if args.live else "resident",
            }
        )
    base = results[0]["per_clip_gib"]
    for r in results:
        r["per_clip_ratio"] = r["per_clip_gib"] / base if base > 0 else float("nan")
    if args.json:
        print(json.dumps({"results": results}, indent=2))
        return 0
    what = "in use (--live: freed buffers returned at once)" if args.live else "resident (RSS)"
    print(f"peak host memory {what} of one training step above the loaded model, {w}x{h}, 1 thread")
    for r in results:
        print(
            f"{r['case']:>42}: {r['per_clip_gib']:.3f} GiB per clip ({r['per_clip_ratio']:.2f}× the baseline), "
            f"{r['fixed_gib']:.3f} GiB fixed "
            f"(batch 1: {r['step_gib_batch1']:.2f} GiB, batch 2: {r['step_gib_batch2']:.2f})"
        )
    return 0
