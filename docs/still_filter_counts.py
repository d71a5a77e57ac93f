"""How many frames the still-camera filter keeps per drive, at each percentile of the corners' motion.

The motion is measured on the rectified camera image when a drive is decoded (the frame cache keeps
the 50th, 75th and 90th percentiles), so the counts do not depend on the training size. A frame is
kept when its motion to the previous one reaches ``data.static_threshold`` (1 px by default); the
first frame and frames of unknown motion are kept (``data.clips.static_mask``). docs/traffic.md quotes
these counts.

Run from the repository root:
    .venv/bin/python docs/still_filter_counts.py runs/traffic/traffic_41 runs/data/drive_101 ...
"""

from __future__ import annotations

import sys

from dualdepth_ros.data import DataConfig, load_stores
from dualdepth_ros.data.clips import static_mask
from dualdepth_ros.data.frames import MOTION_PERCENTILES


def main(bags: list[str], threshold: float = DataConfig.static_threshold) -> None:
    print(f"frames kept at data.static_threshold = {threshold:g} px, per data.static_percentile")
    print("drive | frames | " + " | ".join(f"p{p}" for p in MOTION_PERCENTILES))
    for bag in bags:
        (store,) = load_stores([bag], DataConfig(), 160, 48)
        kept = [int(static_mask(store.motion_at(p), threshold).sum()) for p in MOTION_PERCENTILES]
        print(f"{bag} | {len(store)} | " + " | ".join(str(k) for k in kept))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
