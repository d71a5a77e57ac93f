"""Where a model trained on the synthetic traffic drive goes wrong: the vehicles in traffic or the rest.

For every frame of a drive with dense ground-truth depth and the moving-object mask
(``dualdepth make-sample ... --lead-vehicles N --side-vehicles N``), the fused depth at the
network's resolution is median-scaled once per frame over all valid pixels (as ``dualdepth eval``
does), then scored separately on the vehicles in traffic (``/gt/moving_mask``) and on everything
else. A vehicle that keeps pace with the camera looks infinitely far to the photometric losses: a
model that learnt that shows it as a median predicted/true depth ratio well above 1 on the vehicles.
(Model grid, not the ground truth's: the figures are for comparing runs, not for a results table.)

Run from the repository root:
    .venv/bin/python docs/traffic_diagnosis.py RUN/last.pt runs/traffic/traffic_42
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch

from dualdepth_ros.data import FrameSequence
from dualdepth_ros.training.checkpoint import model_from_checkpoint


def main(checkpoint: str, bag: str) -> None:
    loaded = model_from_checkpoint(checkpoint)
    cfg = loaded.cfg
    data = dataclasses.replace(loaded.data, gt_depth_topic="/gt/depth", gt_moving_mask_topic="/gt/moving_mask")
    frames = FrameSequence.from_bag(bag, data, cfg.input.width, cfg.input.height)
    net = loaded.depth_net.eval()
    rel = {"vehicles": [], "rest": []}
    ratio = {"vehicles": [], "rest": []}
    share = []
    with torch.inference_mode():
        for frame in frames:
            if frame.gt_depth is None or frame.moving_mask is None:
                raise SystemExit(f"{bag}: needs /gt/depth and /gt/moving_mask")
            gt = np.asarray(frame.gt_depth, np.float64)
            valid = (gt > 1e-3) & (gt < 80.0)
            if not valid.any():
                continue
            pred = net(torch.from_numpy(np.asarray(frame.image, np.float32))[None])[("depth_fused", 0)][0, 0].numpy()
            pred = pred * np.median(gt[valid]) / np.median(pred[valid])
            vehicles = np.asarray(frame.moving_mask, bool)
            share.append(float((valid & vehicles).sum() / valid.sum()))
            for name, where in (("vehicles", valid & vehicles), ("rest", valid & ~vehicles)):
                if where.any():
                    rel[name].append(np.abs(pred[where] - gt[where]) / gt[where])
                    ratio[name].append(float(np.median(pred[where] / gt[where])))
    print(f"{len(share)} frames; vehicles in traffic hold {np.mean(share):.1%} of the valid pixels")
    for name in ("vehicles", "rest"):
        if rel[name]:
            print(
                f"{name}: AbsRel {np.concatenate(rel[name]).mean():.3f}, "
                f"median predicted / true depth {np.median(ratio[name]):.2f}"
            )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
