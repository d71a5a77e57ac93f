"""Tests of :mod:`dualdepth_ros.data.clips` and :mod:`dualdepth_ros.data.augment` (pure functions)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dualdepth_ros.data import ColorJitter, flip_pose, sample_clips, split_masks, static_mask
from dualdepth_ros.data.augment import hsv_to_rgb, rgb_to_hsv
from dualdepth_ros.data.frames import frame_motion
from dualdepth_ros.geometry import backproject, pose_vec_to_mat, project, transform_points

P = 100_000_000  # 10 Hz in ns


def test_static_mask_drops_a_repeated_run():
    # Motion to the previous frame (px): 1..4 moving, 5..8 a standstill, 9..11 moving, 12 unknown.
    motion = np.array([np.nan, 3, 3, 3, 2.5, 0, 0.01, 0.02, 0, 0.6, 2, 3, np.nan])
    keep = static_mask(motion, threshold=0.5)
    assert keep.tolist() == [True] * 5 + [False] * 4 + [True] * 4
    assert static_mask(motion, threshold=0.0).all()


def test_frame_motion_is_robust_to_other_traffic():
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (96, 200), dtype=np.uint8), (0, 0), 1.5)
    car = cv2.GaussianBlur(rng.integers(0, 256, (40, 50), dtype=np.uint8), (0, 0), 1.5)

    def frame(pan: int, car_x: int) -> np.ndarray:
        img = np.ascontiguousarray(scene[:, pan : pan + 160])
        img[30:70, car_x : car_x + 50] = car
        return img

    standing = frame_motion(frame(0, 10), frame(0, 25))  # a car passes 15 px, the camera stands
    panning = frame_motion(frame(0, 10), frame(3, 7))  # the camera pans 3 px, the car with it
    whole_image = np.mean(np.abs(frame(0, 10).astype(float) - frame(0, 25)))
    assert standing < 0.05 and whole_image > 2  # a whole-image difference would call this motion
    assert panning == pytest.approx(3.0, abs=0.2)
    assert np.isnan(frame_motion(np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8)))


def test_sample_clips_respects_offsets_and_gaps():
    stamps = np.arange(12, dtype=np.int64) * P
    stamps[7:] += 10 * P  # a pause between frames 6 and 7
    keep = np.ones(12, dtype=bool)
    keep[3] = False  # a dropped static frame: its neighbours 2 and 4 become consecutive
    clips = sample_clips(stamps, keep, [-1, 0, 1], max_gap_ns=int(2.5 * P))
    # Kept: 0 1 2 4 5 6 | 7 8 9 10 11 (gap 2→4 is 2P: fine; 6→7 is 11P: breaks).
    assert clips.tolist() == [[0, 1, 2], [1, 2, 4], [2, 4, 5], [4, 5, 6], [7, 8, 9], [8, 9, 10], [9, 10, 11]]
    wide = sample_clips(stamps, keep, [-2, -1, 0, 1, 2], max_gap_ns=int(2.5 * P))
    assert wide.tolist() == [[0, 1, 2, 4, 5], [1, 2, 4, 5, 6], [7, 8, 9, 10, 11]]
    tight = sample_clips(stamps, keep, [-1, 0, 1], max_gap_ns=int(1.5 * P))  # now 2→4 breaks too
    assert [0, 1, 2] in tight.tolist() and [1, 2, 4] not in tight.tolist()
    assert sample_clips(stamps, keep, [0, 2], max_gap_ns=int(2.5 * P)).tolist()[0] == [0, 2]
    with pytest.raises(ValueError, match="include 0"):
        sample_clips(stamps, keep, [-1, 1], P)
    assert sample_clips(stamps[:2], keep[:2], [-1, 0, 1], P).shape == (0, 3)


def test_split_is_time_based_and_disjoint():
    stamps = np.arange(100, dtype=np.int64) * P  # 0 .. 9.9 s
    train, val = split_masks(stamps, val_fraction=0.2, gap_ns=int(0.5e9))
    assert not np.any(train & val)
    t_val = stamps[val]
    assert t_val.min() >= 0.8 * stamps.max() and val[-1]
    assert stamps[train].max() < t_val.min() - 0.5e9 + 1  # separated by the gap
    assert np.flatnonzero(val)[0] == 80 and np.flatnonzero(train)[-1] == 74
    tr, va = split_masks(stamps, 0.0, 0)
    assert tr.all() and not va.any()


def test_colour_jitter_identities():
    img = torch.rand(2, 3, 8, 10)
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(img)), img, atol=1e-5)
    neutral = {"order": [0, 1, 2, 3], "brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
    np.testing.assert_allclose(ColorJitter.apply(img, neutral), img, atol=1e-6)
    assert ColorJitter(p=0.0).sample() is None
    params = ColorJitter(p=1.0).sample()
    assert params is not None and sorted(params["order"]) == [0, 1, 2, 3]
    out = ColorJitter.apply(img, params)
    assert out.shape == img.shape and 0 <= out.min() and out.max() <= 1
    grey = torch.full((3, 4, 4), 0.5)
    hue_only = {"order": [3], "brightness": 1, "contrast": 1, "saturation": 1, "hue": 0.3}
    np.testing.assert_allclose(ColorJitter.apply(grey, hue_only), grey, atol=1e-6)  # grey has no hue


def test_flip_pose_matches_mirrored_projection():
    """Mirroring the images maps the projection of every point through F T F."""
    torch.manual_seed(0)
    T = pose_vec_to_mat(torch.tensor([[0.05, -0.1, 0.02, 0.3, -0.1, 1.0]], dtype=torch.float64))
    K = torch.tensor([[[50.0, 0, 0], [0, 50.0, 0], [0, 0, 1]]], dtype=torch.float64)  # cx = 0: mirror is u → −u
    depth = torch.rand(1, 1, 4, 5, dtype=torch.float64) * 5 + 2
    pts = backproject(depth, K)
    mirrored = pts * torch.tensor([-1.0, 1, 1], dtype=torch.float64).view(1, 3, 1, 1)
    pix, _ = project(transform_points(T, pts), K)
    pix_m, _ = project(transform_points(flip_pose(T), mirrored), K)
    np.testing.assert_allclose(pix_m[:, 0], -pix[:, 0], atol=1e-9)
    np.testing.assert_allclose(pix_m[:, 1], pix[:, 1], atol=1e-9)
    np.testing.assert_allclose(flip_pose(flip_pose(T)), T, atol=1e-12)
