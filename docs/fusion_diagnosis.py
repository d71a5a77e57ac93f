"""Why the fused depth of a two-branch model is or is not better than its best branch (models/MODEL_CARD.md).

For every valid ground-truth pixel of a drive, on the ground truth's own grid (the prediction is
upsampled to it as ``dualdepth eval`` does: bilinear in inverse depth, Garg crop and 0.001–80 m for
KITTI-shaped sparse LiDAR, the whole image up to 80 m for dense ground truth): which branch the
confidence picks, which branch is closer to the ground truth, and the AbsRel of the fused depth, of
each branch and of an oracle that always picks the closer branch. Each frame is median-scaled once,
with the fused depth's factor, so that the four depths are compared on the same scale. The oracle
gap (fused − oracle) is what a perfect confidence would gain.

Run from the repository root:
    .venv/bin/python docs/fusion_diagnosis.py models/dualdepth_default.pt ../shared/data/kitti_raw_0009/bag
    .venv/bin/python docs/fusion_diagnosis.py models/dualdepth_default.pt runs/data/heldout_9001
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch

from dualdepth_ros.data import FrameSequence
from dualdepth_ros.evaluation import garg_crop_mask, is_kitti_shaped
from dualdepth_ros.evaluation.grid import GridMap
from dualdepth_ros.training.checkpoint import model_from_checkpoint


def _upsample(grid: GridMap, depth: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Depth sampled at the ground-truth pixels ``where``: bilinear in inverse depth (eval's default)."""
    return 1.0 / grid.sample(1.0 / np.maximum(depth, 1e-6), "bilinear", where)


def main(checkpoint: str, bag: str, max_depth: float = 80.0) -> None:
    loaded = model_from_checkpoint(checkpoint)
    cfg = loaded.cfg
    data = dataclasses.replace(loaded.data, gt_depth_topic=loaded.data.gt_depth_topic or "/gt/depth")
    frames = FrameSequence.from_bag(bag, data, cfg.input.width, cfg.input.height)
    net = loaded.depth_net.eval()
    if int(getattr(net, "num_branches", 1)) != 2:
        raise SystemExit("needs a two-branch model")
    errors: dict[str, list[np.ndarray]] = {"fused": [], "branch 0": [], "branch 1": [], "oracle": []}
    picked_1 = agree = total = 0
    grids: dict[tuple, GridMap] = {}
    with torch.inference_mode():
        for frame in frames:
            gt = frame.gt_depth_native
            if gt is None:
                continue
            sparse = float(np.mean(gt > 1e-3)) < 0.5
            valid = (gt > 1e-3) & (gt < max_depth)
            if sparse and is_kitti_shaped(*gt.shape):
                valid &= garg_crop_mask(*gt.shape)
            key = (frame.gt_intrinsics.as_tuple(), frame.intrinsics.as_tuple())
            grid = grids.get(key)
            if grid is None:  # one map per camera, not per frame
                grid = grids[key] = GridMap.between(frame.gt_intrinsics, frame.intrinsics)
            valid &= grid.inside()
            if not valid.any():
                continue
            out = net(torch.from_numpy(np.asarray(frame.image, dtype=np.float32))[None])
            fused = _upsample(grid, out[("depth_fused", 0)][0, 0].numpy(), valid)
            d = [_upsample(grid, out[("depth", b, 0)][0, 0].numpy(), valid) for b in (0, 1)]
            c = [grid.sample(out[("conf", b, 0)][0, 0].numpy(), "bilinear", valid) for b in (0, 1)]
            g = gt[valid].astype(np.float64)
            scale = np.median(g) / np.median(fused)
            rel = [np.abs(x * scale - g) / g for x in d]
            pick_1 = c[1] > c[0]  # the rule: the more confident branch (ties → branch 0)
            better_1 = rel[1] < rel[0]
            picked_1 += int(pick_1.sum())
            agree += int((pick_1 == better_1).sum())
            total += int(valid.sum())
            errors["fused"].append(np.abs(fused * scale - g) / g)
            errors["branch 0"].append(rel[0])
            errors["branch 1"].append(rel[1])
            errors["oracle"].append(np.minimum(rel[0], rel[1]))
    if not total:
        raise SystemExit(f"{bag}: no frame with ground-truth depth on /gt/depth")
    print(
        f"{total} ground-truth pixels of {len(errors['fused'])} frames; "
        f"network input {cfg.input.width}x{cfg.input.height}"
    )
    print(f"the confidence picks branch 1 for {100 * picked_1 / total:.1f} % of the pixels")
    print(f"the pick is the branch closer to the ground truth for {100 * agree / total:.1f} % of the pixels")
    means = {k: float(np.concatenate(v).mean()) for k, v in errors.items()}
    print(
        "AbsRel (one median scale per frame, the fused depth's): " + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
    )
    best = min(means["branch 0"], means["branch 1"])
    print(
        f"fused − best branch {means['fused'] - best:+.4f}; "
        f"oracle gap (fused − oracle) {means['fused'] - means['oracle']:.4f}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
