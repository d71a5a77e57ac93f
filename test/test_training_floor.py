"""The photometric floor (:mod:`dualdepth_ros.training.floor`): its geometries against independent poses
and scales, its figures against an untrained model, and ``dualdepth eval --photometric-floor``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from small_model import GT_TOPICS, H, W, eval_cli, write_small_checkpoint

from dualdepth_ros.data import DataConfig, FrameSequence
from dualdepth_ros.data.batch import to_model_batch
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.training.checkpoint import model_from_checkpoint
from dualdepth_ros.training.floor import FLOOR_FAR_DEPTH, _floor_cases, floor_clips, photometric_floor


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("frame_cache")


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, cache_dir):
    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt"), cache_dir)


def _store(sample_bag, cache_dir, width=W, height=H):
    return FrameSequence.from_bag(sample_bag, DataConfig(cache_dir=str(cache_dir), **GT_TOPICS), width, height).store


def test_photometric_floor_geometries_match_independent_poses_and_scale(small_checkpoint, sample_bag, cache_dir):
    from dualdepth_ros.geometry import relative_pose

    loaded = model_from_checkpoint(small_checkpoint)
    store = _store(sample_bag, cache_dir)
    clips = floor_clips(loaded, [store])
    picks = [0, len(clips) // 2, len(clips) - 1]
    batch = to_model_batch(torch.utils.data.default_collate([clips[i] for i in picks]), torch.device("cpu"))
    with torch.inference_mode():
        outputs = loaded.model(batch)
    cases = _floor_cases(batch, outputs, clips.offsets)
    assert cases["model"][("T", 0, 1)] is outputs[("T", 0, 1)]
    world = torch.from_numpy(store.gt_pose)  # camera → world, as recorded
    for key in [k for k in outputs if isinstance(k, tuple) and k[0] == "T"]:
        a, b = key[1], key[2]
        for row, i in enumerate(picks):
            frames = clips.clip_frames(i)[1]
            fa, fb = (int(frames[clips.offsets.index(o)]) for o in (a, b))
            expected = relative_pose(world[fa][None], world[fb][None])[0].float()
            assert torch.allclose(cases["gt_depth_gt_pose"][key][row], expected, atol=1e-4), key
    for row, i in enumerate(picks):  # GT depth of each frame of the clip, far where the GT has none
        frames = clips.clip_frames(i)[1]
        for o, f in zip(clips.offsets, frames):
            if ("depth_fused", o, 0) not in outputs:
                continue
            gt = torch.from_numpy(np.array(store.gt_depth[int(f)]))
            got = cases["gt_depth_gt_pose"][("depth_fused", o, 0)][row, 0]
            assert torch.equal(got, torch.where(gt > 0, gt, torch.full_like(gt, FLOOR_FAR_DEPTH)))
    gt0 = batch[("gt_depth", 0)]
    scaled = cases["model_depth_gt_pose"][("depth_fused", 0, 0)]
    for row in range(len(picks)):
        valid = gt0[row] > 0
        assert float(scaled[row][valid].median()) == pytest.approx(float(gt0[row][valid].median()), rel=1e-3)


def test_photometric_floor_is_far_below_an_untrained_model_and_in_the_cli(
    small_checkpoint, sample_bag, cache_dir, capsys
):
    loaded = model_from_checkpoint(small_checkpoint)
    store = _store(sample_bag, cache_dir)
    floor = photometric_floor(loaded, [store], max_clips=8)
    assert floor["clips"] == 8
    # The true geometry explains the synthetic frames; random weights do not.
    assert 0 < floor["gt_depth_gt_pose"] < 0.5 * floor["model"]
    # A wrong geometry (GT depth × 3 with the metric GT pose) is worse than the true one.
    wrong = dataclasses.replace(store, gt_depth=np.asarray(store.gt_depth) * 3.0)
    assert photometric_floor(loaded, [wrong], max_clips=8)["gt_depth_gt_pose"] > 1.2 * floor["gt_depth_gt_pose"]
    with pytest.raises(DualDepthError, match="needs GT depth and GT pose"):
        photometric_floor(loaded, [dataclasses.replace(store, gt_pose=None)], max_clips=8)
    # Frames without a matched pose (NaN) leave their clips out; no clip left is an error.
    holes = np.array(store.gt_pose)
    holes[:40] = np.nan
    partial = photometric_floor(loaded, [dataclasses.replace(store, gt_pose=holes)], max_clips=8)
    assert partial["clips"] == 8 and all(math.isfinite(v) for v in partial.values())
    with pytest.raises(DualDepthError, match="no clip whose frames all have a GT pose"):
        photometric_floor(loaded, [dataclasses.replace(store, gt_pose=holes * np.nan)], max_clips=8)

    rc = eval_cli(
        "--checkpoint", small_checkpoint, "--bag", sample_bag, "--max-frames", 4, "--no-pose",
        "--photometric-floor", 8, "--json", "-",
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(captured.out)["photometric_floor"]
    assert data == pytest.approx(floor, rel=1e-5)  # seeded: the same figures every run
    assert "GT depth + GT pose" in captured.err
