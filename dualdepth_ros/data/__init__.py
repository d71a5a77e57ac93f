"""Training and evaluation data from bags: reading, decoding, caching, clips, augmentation.

Pipeline::

    bag(s) ──bags: open (AnyReader: rosbag2 sqlite3/mcap, ROS 1), select topics──►
    frames: Preprocessor.prepare every image (decode → rectify → resize/crop), GT by stamp,
            cached on disk as uint8 (FrameStore) ──►
    clips: static-frame removal (median sparse optical flow in camera pixels), clips at
           frame_offsets within max_gap, validation blocks among moving clips ──►
    dataset: ClipDataset items (below), FrameSequence for frames in order ──►
    batch: to_model_batch (the losses' key layout, on the device)

Typical use (the trainer)::

    cfg = DataConfig.coerce(config.extra.get("data"))   # the YAML ``data:`` section
    train, val = make_datasets(["drive1", "drive2"], cfg, width=640, height=192)
    loader = torch.utils.data.DataLoader(train, batch_size=12, shuffle=True, num_workers=4)

Item layout of :class:`ClipDataset` (monodepth2 style; ``o`` ranges over
``config.frame_offsets``, e.g. ``-1, 0, 1``; shapes before batching)
-------------------------------------------------------------------------------------------
``("color", o)``
    float32 ``3×H×W`` RGB in [0, 1]: frame ``o`` of the clip, flipped if the clip is
    flipped, **not** colour-jittered. Use it in the losses.
``("color_aug", o)``
    float32 ``3×H×W``: the same frame with the clip's colour jitter (the same jitter for all
    frames of a clip). Feed it to the networks. The very same tensor as ``("color", o)``
    when the clip is not jittered.
``"K"``
    float32 ``3×3`` intrinsics at ``H×W`` (the model input size) of the target frame
    (offset 0), after rectification, resize/crop and flip.
``("gt_depth", 0)``
    only with ``gt_depth_topic``: float32 ``1×H×W`` metres of the target frame, resized/cropped
    with nearest neighbour; 0 where invalid (NaN, ≤ 0, no message).
``("gt_moving_mask", 0)``
    only with ``gt_moving_mask_topic``: float32 ``1×H×W``, 1 on moving objects, else 0.
``("gt_pose", o)``
    only with ``gt_pose_topic``: float32 ``4×4`` ``T_{0→o}``, mapping points of the target
    camera (offset 0) into camera ``o`` — what :func:`dualdepth_ros.geometry.warp` takes as
    ``T_target_to_source``. From the recorded poses ``P`` (assumed camera optical frames in a
    world frame): ``relative_pose(P_0, P_o) = P_o⁻¹ P_0``; identity for ``o = 0``; conjugated
    by the flip; NaN if a frame had no pose.
``"stamp"``
    int, header stamp (ns) of the target frame.
``"index"``
    int, the clip's index in the dataset.
``"flipped"``
    bool, whether the clip was mirrored.

``DataLoader``'s default collate turns these into a batch dict with the same keys (``B×…``
tensors, ``"stamp"``/``"index"`` int64 tensors, ``"flipped"`` a bool tensor).
"""

from ..config import register_section
from .augment import ColorJitter, flip_pose
from .bags import (
    Bag,
    BagError,
    GtTopics,
    PoseSource,
    TopicSelection,
    expand_bag_paths,
    resolve_gt_topics,
    select_topics,
)
from .batch import to_model_batch
from .clips import auto_max_gap_ns, sample_clips, split_clips, static_mask
from .dataset import ClipDataset, DataConfig, Frame, FrameSequence, iter_frames, load_stores, make_datasets
from .frames import FrameStore, default_cache_dir, load_frames

# The training config's top-level ``data:`` section is typed by DataConfig once this package is
# imported (before that it stays a plain mapping; DataConfig.coerce accepts either).
register_section("data", DataConfig)

__all__ = [
    "Bag",
    "BagError",
    "ClipDataset",
    "ColorJitter",
    "DataConfig",
    "Frame",
    "FrameSequence",
    "FrameStore",
    "GtTopics",
    "PoseSource",
    "TopicSelection",
    "auto_max_gap_ns",
    "default_cache_dir",
    "expand_bag_paths",
    "flip_pose",
    "iter_frames",
    "load_frames",
    "load_stores",
    "make_datasets",
    "resolve_gt_topics",
    "sample_clips",
    "select_topics",
    "split_clips",
    "static_mask",
    "to_model_batch",
]
