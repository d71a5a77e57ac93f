"""The node's road-plane fit run on a drive's ground-truth depth instead of the model's (models/MODEL_CARD.md).

``scale_mode: camera_height`` scales the published depth so that the road plane fitted to it lies
``camera_height_m`` below the camera (``dualdepth_ros/ros/scale.py``). Fitting the same plane to the
LiDAR ground truth checks the fit itself: on a KITTI drive it must find the camera's 1.65 m. When it
does, any error of the published metres comes from the model's road geometry, not from the fit.

Run from the repository root:
    .venv/bin/python docs/road_plane_check.py ../shared/data/kitti_raw_0009/bag
"""

from __future__ import annotations

import sys

import numpy as np

from dualdepth_ros.bagio import read_messages
from dualdepth_ros.intrinsics import Intrinsics
from dualdepth_ros.ros.scale import fit_road_plane
from dualdepth_ros.ros.scoring import depth_metres


def main(bag: str, depth_topic: str = "/gt/depth", info_topic: str = "/camera/camera_info") -> None:
    info = next(m.msg for m in read_messages(bag, [info_topic]))
    heights = []
    for m in read_messages(bag, [depth_topic]):
        depth = depth_metres(m.msg).astype(np.float32)
        depth[~(depth > 0)] = np.nan  # sparse LiDAR: no return is no point
        k = Intrinsics(info.k[0], info.k[4], info.k[2], info.k[5], depth.shape[1], depth.shape[0])
        fit = fit_road_plane(depth, k)
        heights.append(np.nan if fit is None else fit.height)
    h = np.asarray(heights)
    print(
        f"{np.isfinite(h).sum()} of {h.size} frames fitted; camera height above the fitted road plane: "
        f"median {np.nanmedian(h):.3f} m, std {np.nanstd(h):.3f} m"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
