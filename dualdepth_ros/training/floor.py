"""The photometric floor: the training objective at the model's geometry and at the ground truth's.

Loss code, not evaluation: on clips of decoded bags with GT depth and GT pose, the training
loss's photometric term is computed with the networks' depth and pose, with the depth net's
depth and GT poses, and with GT depth and GT poses (:func:`photometric_floor`). The last is the
value the loss takes at the true geometry of these frames — the floor a well-trained model
approaches. ``dualdepth eval --photometric-floor`` prints the three.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..config import config_from_dict, config_to_dict
from ..data import ClipDataset
from ..data.batch import to_model_batch
from ..errors import DualDepthError
from ..geometry import invert_pose
from ..losses import clip_layout, compute_losses

__all__ = ["FLOOR_FAR_DEPTH", "photometric_floor", "floor_clips"]

#: Depth given to ground-truth pixels without a value (sky): far enough to warp by rotation only.
FLOOR_FAR_DEPTH = 1000.0


def photometric_floor(
    loaded: Any,
    stores: Sequence[Any],
    *,
    max_clips: int = 64,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """The photometric term of the training loss with the model's and with the ground truth's geometry.

    On evenly spaced clips of ``stores`` (decoded bags with GT depth for every frame and GT
    pose), the loss of the checkpoint's configuration (two-branch gate off, so that every case
    averages the same samples) is computed three times:

    ``model``
        the networks' depth and pose, as training sees them;
    ``model_depth_gt_pose``
        the depth net's depth, median-scaled per clip to the GT depth of the target frame, with
        the GT relative poses (isolates the depth from the pose);
    ``gt_depth_gt_pose``
        GT depth (``FLOOR_FAR_DEPTH`` where it has no value) and GT poses: the value this loss
        takes at the true geometry of these frames, i.e. the floor a well-trained model
        approaches. A model far above it is under-trained; one *below* it found a geometry the
        loss prefers to the truth (e.g. a textureless road or a car moving with the camera).

    Returns ``{"clips": n, "model": …, "model_depth_gt_pose": …, "gt_depth_gt_pose": …}``.
    """
    cfg_dict = config_to_dict(loaded.cfg)
    cfg_dict["loss"]["two_branch"]["gate"] = False
    cfg = config_from_dict(cfg_dict)
    missing = [str(st.bag) for st in stores if st.gt_depth is None or st.gt_pose is None]
    if missing:
        raise DualDepthError(f"the photometric floor needs GT depth and GT pose; missing in {', '.join(missing)}")
    clips = floor_clips(loaded, stores)
    usable = [i for i in range(len(clips)) if _clip_has_gt_pose(clips, i)]
    if not usable:
        raise DualDepthError("the photometric floor found no clip whose frames all have a GT pose")
    n = min(len(usable), max_clips)
    index = np.asarray(usable)[np.linspace(0, len(usable) - 1, n).round().astype(int)]
    model = loaded.model
    dev = torch.device(device) if device is not None else next(model.depth.parameters()).device
    was_training = model.training
    model.eval()
    sums = {"model": 0.0, "model_depth_gt_pose": 0.0, "gt_depth_gt_pose": 0.0}
    try:  # seeded: the auto-mask's tie-break noise is random, the figures should not be
        cuda = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.inference_mode():
            torch.manual_seed(0)
            for start in range(0, n, batch_size):
                items = [clips[int(i)] for i in index[start : start + batch_size]]
                batch = to_model_batch(torch.utils.data.default_collate(items), dev)
                outputs = model(batch)
                cases = _floor_cases(batch, outputs, clips.offsets)
                for name, case in cases.items():
                    _, terms = compute_losses(batch, case, cfg)
                    sums[name] += float(terms["photometric"]) * len(items)
    finally:
        model.train(was_training)
    return {"clips": int(n), **{k: v / max(n, 1) for k, v in sums.items()}}


def floor_clips(loaded: Any, stores: Sequence[Any]) -> Any:
    """Every clip of ``stores`` in the layout ``loaded`` trains on, in order, GT depth for each frame."""
    data = dataclasses.replace(loaded.data, val_fraction=0.0, frame_offsets=list(clip_layout(loaded.cfg).frames))
    return ClipDataset(stores, data, "all", augment=False, gt_all_frames=True)


def _clip_has_gt_pose(clips: Any, index: int) -> bool:
    store, frames = clips.clip_frames(index)
    return bool(np.isfinite(np.asarray(store.gt_pose)[frames]).all())


def _floor_cases(
    batch: Mapping[Any, torch.Tensor], outputs: Mapping[Any, torch.Tensor], offsets: Sequence[int]
) -> dict[str, dict[Any, torch.Tensor]]:
    """The three geometries of :func:`photometric_floor` as network-output dictionaries."""
    gt_T = {o: batch[("gt_pose", o)] for o in offsets}  # T_target_to_o
    with_gt_pose = dict(outputs)
    for key in outputs:
        if isinstance(key, tuple) and key[0] == "T":
            a, b = key[1], key[2]
            with_gt_pose[key] = gt_T[b] @ invert_pose(gt_T[a])  # T_a_to_b
    gt0 = batch[("gt_depth", 0)]
    pred0 = outputs[("depth_fused", 0, 0)]
    valid = gt0 > 0
    ratio = torch.stack(
        [
            gt0[i][valid[i]].median() / pred0[i][valid[i]].median() if valid[i].any() else gt0.new_ones(())
            for i in range(len(gt0))
        ]
    ).view(-1, 1, 1, 1)
    scaled, at_gt = dict(with_gt_pose), dict(with_gt_pose)
    for key, value in outputs.items():
        if isinstance(key, tuple) and key[0] in ("depth_fused", "depth"):
            scaled[key] = value * ratio
            gt = batch[("gt_depth", key[1])]
            at_gt[key] = torch.where(gt > 0, gt, torch.full_like(gt, FLOOR_FAR_DEPTH))
    return {"model": dict(outputs), "model_depth_gt_pose": scaled, "gt_depth_gt_pose": at_gt}
