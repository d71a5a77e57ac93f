"""Tests of :mod:`dualdepth_ros.data.clips` and :mod:`dualdepth_ros.data.augment` (pure functions)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dualdepth_ros.data import ColorJitter, flip_pose, sample_clips, split_clips, static_mask
from dualdepth_ros.data.augment import hsv_to_rgb, rgb_to_hsv
from dualdepth_ros.data.frames import MOTION_PERCENTILES, frame_motion
from dualdepth_ros.geometry import backproject, pose_vec_to_mat, project, transform_points

P = 100_000_000  # 10 Hz in ns


def test_static_mask_drops_a_repeated_run():
    # Motion to the previous frame (px): 1..4 moving, 5..8 a standstill, 9..11 moving, 12 unknown.
    motion = np.array([np.nan, 3, 3, 3, 2.5, 0, 0.01, 0.02, 0, 0.6, 2, 3, np.nan])
    keep = static_mask(motion, threshold=0.5)
    assert keep.tolist() == [True] * 5 + [False] * 4 + [True] * 4
    assert static_mask(motion, threshold=0.0).all()


def _scene_with_a_car(seed: int = 0):
    rng = np.random.default_rng(seed)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (96, 200), dtype=np.uint8), (0, 0), 1.5)
    car = cv2.GaussianBlur(rng.integers(0, 256, (40, 50), dtype=np.uint8), (0, 0), 1.5)

    def frame(pan: int, car_x: int, car_w: int = 50) -> np.ndarray:
        img = np.ascontiguousarray(scene[:, pan : pan + 160])
        img[30:70, car_x : car_x + car_w] = car[:, :car_w]
        return img

    return frame


def test_frame_motion_is_robust_to_other_traffic():
    frame = _scene_with_a_car()
    p50, p75 = (MOTION_PERCENTILES.index(p) for p in (50, 75))
    standing = frame_motion(frame(0, 10), frame(0, 25))  # a car passes 15 px, the camera stands
    panning = frame_motion(frame(0, 10), frame(3, 7))  # the camera pans 3 px, the car with it
    whole_image = np.mean(np.abs(frame(0, 10).astype(float) - frame(0, 25)))
    assert standing[p50] < 0.05 and whole_image > 2  # a whole-image difference would call this motion
    assert panning[p50] == pytest.approx(3.0, abs=0.2) and panning[p75] == pytest.approx(3.0, abs=0.2)
    assert np.isnan(frame_motion(np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8))).all()


def test_the_75th_percentile_sees_a_camera_moving_in_a_jam():
    """Vehicles keeping pace with the camera do not move in the image: where they hold over half of
    the tracked corners, the median calls a moving camera still; the 75th percentile does not, and
    still calls a standing camera still while one car passes it.
    """
    rng = np.random.default_rng(1)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (96, 200), dtype=np.uint8), (0, 0), 1.5)
    jam = cv2.GaussianBlur(rng.integers(0, 256, (96, 100), dtype=np.uint8), (0, 0), 1.5)

    def frame(pan: int) -> np.ndarray:
        img = np.ascontiguousarray(scene[:, pan : pan + 160])
        img[:, 30:130] = jam  # lead and side vehicles at the camera's speed, 5/8 of the image: fixed in it
        return img

    p50, p75 = (MOTION_PERCENTILES.index(p) for p in (50, 75))
    moving = frame_motion(frame(0), frame(3))
    assert moving[p50] < 0.5 and moving[p75] == pytest.approx(3.0, abs=0.3)
    assert static_mask(np.array([np.nan, moving[p75]]), 1.0).all()
    assert not static_mask(np.array([np.nan, moving[p50]]), 1.0)[1]
    car = _scene_with_a_car()
    standing = frame_motion(car(0, 10, 30), car(0, 25, 30))  # a narrower car passes a standing camera
    assert standing[p75] < 0.05


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


def _frames_of(clips, idx):
    return {int(f) for c in clips[idx] for f in c}


def test_split_is_spread_disjoint_and_separated_by_the_gap():
    stamps = np.arange(300, dtype=np.int64) * P  # 0 .. 29.9 s
    keep = np.ones(300, dtype=bool)
    keep[200:] = False  # the car stands still for the last third
    clips = sample_clips(stamps, keep, [-2, -1, 0, 1, 2], max_gap_ns=int(2.5 * P))
    train, val, note = split_clips(stamps, clips, val_fraction=0.1, gap_ns=int(0.5e9), blocks=3)
    assert note == "" and len(val) == round(0.1 * len(clips)) and len(train) > 0.6 * len(clips)
    assert not set(train) & set(val)
    tr, va = _frames_of(clips, train), _frames_of(clips, val)
    assert tr.isdisjoint(va)
    assert max(va) < 200  # among moving frames only: the old "last 10 % of the time" would be all standstill
    # Three blocks spread over the drive: early, middle and late among the moving frames.
    runs = np.split(val, np.flatnonzero(np.diff(val) > 1) + 1)
    assert len(runs) == 3
    centres = [float(np.mean(clips[r][:, 2])) for r in runs]
    assert centres[0] < 60 and 80 < centres[1] < 120 and centres[2] > 140
    # The gap: no training frame within 0.5 s (5 frames) of a validation frame.
    t_train, t_val = stamps[sorted(tr)], stamps[sorted(va)]
    assert np.min(np.abs(t_train[:, None] - t_val[None, :])) > 0.5e9
    # No gap: still disjoint, more training clips.
    train0, val0, _ = split_clips(stamps, clips, 0.1, 0, 3)
    assert len(val0) == len(val) and len(train0) > len(train)
    assert _frames_of(clips, train0).isdisjoint(_frames_of(clips, val0))
    assert split_clips(stamps, clips, 0.0, 0)[1].size == 0


def test_too_few_clips_give_no_validation_and_say_why():
    stamps = np.arange(8, dtype=np.int64) * P
    clips = sample_clips(stamps, np.ones(8, bool), [-1, 0, 1], max_gap_ns=int(2.5 * P))  # 6 clips
    train, val, note = split_clips(stamps, clips[:4], 0.1, int(0.5e9))
    assert val.size == 0 and train.tolist() == [0, 1, 2, 3] and "4 clips are too few" in note and "needs 5" in note
    train, val, note = split_clips(stamps, clips, 0.3, int(0.5e9), blocks=1)  # the gap would leave no training clip
    assert val.size == 0 and len(train) == 6 and "keep half to train" in note


def test_short_drives_get_fewer_validation_blocks():
    stamps = np.arange(60, dtype=np.int64) * P
    clips = sample_clips(stamps, np.ones(60, bool), [-2, -1, 0, 1, 2], max_gap_ns=int(2.5 * P))  # 56 clips
    train, val, note = split_clips(stamps, clips, 0.1, int(0.5e9), blocks=3)
    runs = np.split(val, np.flatnonzero(np.diff(val) > 1) + 1)
    # Three blocks with 0.5 s gaps would leave 56 − 6 − 3·18 < 0 training clips; one block leaves 32.
    assert note == "" and len(val) == 6 and len(runs) == 1 and len(train) >= 0.5 * len(clips)


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
