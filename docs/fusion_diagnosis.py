"""Why the fused depth of a two-branch model is not better than its best branch (models/MODEL_CARD.md).

For every valid ground-truth pixel of a held-out drive, at the network's resolution: which branch
the confidence picks, which branch is closer to the ground truth, and the AbsRel of the fused depth,
of each branch and of an oracle that always picks the closer branch. Each frame is median-scaled
once, with the fused depth's factor, so that the four depths are compared on the same scale.

Run from the repository root (after `make data`):
    .venv/bin/python docs/fusion_diagnosis.py models/dualdepth_default.pt runs/data/heldout_9001
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from dualdepth_ros.data import FrameSequence
from dualdepth_ros.training.checkpoint import model_from_checkpoint


def main(checkpoint: str, bag: str, max_depth: float = 80.0) -> None:
    loaded = model_from_checkpoint(checkpoint)
    cfg = loaded.cfg
    frames = FrameSequence.from_bag(bag, loaded.data, cfg.input.width, cfg.input.height)
    net = loaded.depth_net.eval()
    if int(getattr(net, "num_branches", 1)) != 2:
        raise SystemExit("needs a two-branch model")
    errors = {"fused": [], "branch 0": [], "branch 1": [], "oracle": []}
    picked_1 = agree = total = 0
    with torch.inference_mode():
        for frame in frames:
            gt = frame.gt_depth
            if gt is None:
                continue
            valid = (gt > 1e-3) & (gt < max_depth)
            if not valid.any():
                continue
            out = net(torch.from_numpy(np.asarray(frame.image, dtype=np.float32))[None])
            fused = out[("depth_fused", 0)][0, 0].numpy()
            d = [out[("depth", b, 0)][0, 0].numpy() for b in (0, 1)]
            c = [out[("conf", b, 0)][0, 0].numpy() for b in (0, 1)]
            g = gt[valid]
            scale = np.median(g) / np.median(fused[valid])
            rel = [np.abs(x[valid] * scale - g) / g for x in d]
            pick_1 = c[1][valid] > c[0][valid]  # the rule: the more confident branch (ties → branch 0)
            better_1 = rel[1] < rel[0]
            picked_1 += int(pick_1.sum())
            agree += int((pick_1 == better_1).sum())
            total += int(valid.sum())
            errors["fused"].append(np.abs(fused[valid] * scale - g) / g)
            errors["branch 0"].append(rel[0])
            errors["branch 1"].append(rel[1])
            errors["oracle"].append(np.minimum(rel[0], rel[1]))
    if not total:
        raise SystemExit(f"{bag}: no frame with ground-truth depth")
    print(f"{total} pixels of {len(errors['fused'])} frames at {cfg.input.width}x{cfg.input.height}")
    print(f"the confidence picks branch 1 for {100 * picked_1 / total:.1f} % of the pixels")
    print(f"the pick is the branch closer to the ground truth for {100 * agree / total:.1f} % of the pixels")
    print(
        "AbsRel (one median scale per frame, the fused depth's): "
        + ", ".join(f"{k} {np.concatenate(v).mean():.4f}" for k, v in errors.items())
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
