"""``dualdepth bench memory``: peak host memory of one training step, per configuration.

Each case runs in a fresh subprocess (peak RSS is a per-process high-water mark): build the
model, run forward + losses + backward on random clips once, report the peak resident set size.
Used to measure what ``loss.photometric.checkpoint`` (recompute the photometric maps in backward)
saves. On CUDA use ``dualdepth bench train --device cuda``, which reports peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = {
    "two-branch, checkpoint on": ["loss.photometric.checkpoint=true"],
    "two-branch, checkpoint off": ["loss.photometric.checkpoint=false"],
}

_CHILD = r"""
import json, resource, sys, torch
from dualdepth_ros.config import DEFAULT_CONFIG, load_config
from dualdepth_ros.losses import SelfSupervisedLoss, clip_layout
from dualdepth_ros.networks import DepthModel
w, h, b = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cfg = load_config(DEFAULT_CONFIG, overrides=[f"input.width={w}", f"input.height={h}"] + sys.argv[4:])
model, loss_fn, layout = DepthModel(cfg), SelfSupervisedLoss(cfg), clip_layout(cfg)
g = torch.Generator().manual_seed(0)
batch = {("color", f, 0): torch.rand(b, 3, h, w, generator=g) for f in layout.frames}
batch[("K", 0)] = torch.tensor([[w / 2, 0, w / 2 - .5], [0, w / 2, h / 2 - .5], [0, 0, 1]]).expand(b, 3, 3).clone()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
total, _ = loss_fn(batch, model(batch))
total.backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_gib": before / 2**20, "peak_gib": peak / 2**20}))
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="320x96", metavar="WxH")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    w, h = (int(v) for v in args.size.lower().split("x"))
    results = []
    for name, overrides in CASES.items():
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(w), str(h), str(args.batch_size), *overrides],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = {"case": name, "size": f"{w}x{h}", "batch": args.batch_size, **json.loads(out.strip().splitlines()[-1])}
        results.append(r)
        if not args.json:
            print(
                f"{name:>28} {r['size']} batch {r['batch']}: peak RSS {r['peak_gib']:.2f} GiB "
                f"(model and data {r['before_gib']:.2f} GiB)",
                flush=True,
            )
    if args.json:
        print(json.dumps({"results": results}, indent=2))
    return 0
