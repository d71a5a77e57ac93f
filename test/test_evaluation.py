"""Tests of :mod:`dualdepth_ros.evaluation` against hand-computed cases and identities."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from dualdepth_ros import evaluation as ev
from dualdepth_ros.geometry import pose_vec_to_mat, relative_pose


# ---------------------------------------------------------------------------------------
# Depth metrics
# ---------------------------------------------------------------------------------------
def test_depth_errors_hand_computed():
    gt = np.array([1.0, 2.0, 4.0])
    pred = np.array([1.0, 1.5, 5.0])
    m = ev.compute_depth_errors(gt, pred)
    assert m["abs_rel"] == pytest.approx((0 + 0.25 + 0.25) / 3)
    assert m["sq_rel"] == pytest.approx((0 + 0.25 / 2 + 1 / 4) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 0.25 + 1) / 3))
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(4 / 3) ** 2 + math.log(5 / 4) ** 2) / 3))
    # max ratios 1, 4/3, 5/4: only the first is < 1.25 (strict), all are < 1.5625.
    assert m["a1"] == pytest.approx(1 / 3)
    assert m["a2"] == 1.0 and m["a3"] == 1.0


def test_perfect_prediction():
    rng = np.random.default_rng(0)
    gt = rng.uniform(2, 70, (24, 32))
    res = ev.evaluate_depth(gt.copy(), gt)
    assert res is not None and res.scale == pytest.approx(1.0)
    assert res.metrics["abs_rel"] == pytest.approx(0, abs=1e-12)
    assert res.metrics["rmse"] == pytest.approx(0, abs=1e-9)
    assert res.metrics["a1"] == res.metrics["a2"] == res.metrics["a3"] == 1.0


def test_median_scaling_invariance():
    rng = np.random.default_rng(1)
    gt = rng.uniform(2, 60, (20, 30))
    pred = gt * rng.uniform(0.7, 1.3, gt.shape)
    base = ev.evaluate_depth(pred, gt).metrics
    for c in (0.01, 0.37, 25.0):
        scaled = ev.evaluate_depth(pred * c, gt)
        for k in ev.DEPTH_METRICS:
            assert scaled.metrics[k] == pytest.approx(base[k], rel=1e-9, abs=1e-12)
    # Without median scaling the scale matters.
    unscaled = ev.evaluate_depth(pred * 0.37, gt, median_scaling=False).metrics
    assert unscaled["abs_rel"] > base["abs_rel"] + 0.3


def test_valid_range_and_clamp():
    gt = np.array([[0.0, np.nan, 100.0, 10.0, 1e-4]])
    pred = np.array([[5.0, 5.0, 5.0, 20.0, 5.0]])
    res = ev.evaluate_depth(pred, gt)  # only the 10 m pixel is valid; median scaling makes it exact
    assert res.n_valid == 1 and res.scale == pytest.approx(0.5)
    assert res.metrics["abs_rel"] == pytest.approx(0.0)
    res = ev.evaluate_depth(pred, gt, median_scaling=False)
    assert res.metrics["abs_rel"] == pytest.approx(1.0)
    # Clamping to max_depth: a prediction of 1000 m on 40 m GT counts as 80 m.
    res = ev.evaluate_depth(np.array([[1000.0]]), np.array([[40.0]]), median_scaling=False)
    assert res.metrics["abs_rel"] == pytest.approx(1.0)
    assert ev.evaluate_depth(pred, np.zeros((1, 5))) is None


def test_garg_crop_kitti_numbers():
    mask = ev.garg_crop_mask(375, 1242)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (153, 371, 44, 1197)
    assert ev.is_kitti_shaped(375, 1242) and not ev.is_kitti_shaped(480, 640)
    gt = np.full((375, 1242), 10.0)
    pred = gt.copy()
    pred[:100] = 1.0  # wrong only outside the crop
    assert ev.evaluate_depth(pred, gt, garg_crop=True, median_scaling=False).metrics["abs_rel"] == 0.0


def test_prediction_resized_to_gt():
    gt = np.full((20, 40), 12.0)
    res = ev.evaluate_depth(np.full((10, 20), 3.0), gt)
    assert res.metrics["abs_rel"] == pytest.approx(0.0) and res.scale == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------
# Sparsification
# ---------------------------------------------------------------------------------------
def test_sparsification_hand_computed():
    gt = np.ones(4)
    pred = np.array([1.0, 1.1, 1.2, 1.4])  # abs_rel errors 0, .1, .2, .4
    worst = np.array([0.0, 0.1, 0.2, 0.3])  # confidence rises with error: the worst possible order
    r = ev.sparsification(gt, pred, worst, steps=4, metrics=["abs_rel"])
    np.testing.assert_allclose(r.fractions, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(r.curves["abs_rel"]["oracle"], [0.175, 0.1, 0.05, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(r.curves["abs_rel"]["model"], [0.175, 0.7 / 3, 0.3, 0.4, 0.0], atol=1e-12)
    oracle_area = 0.25 * ((0.175 + 0.1) / 2 + (0.1 + 0.05) / 2 + 0.05 / 2)
    model_area = 0.25 * ((0.175 + 0.7 / 3) / 2 + (0.7 / 3 + 0.3) / 2 + (0.3 + 0.4) / 2 + 0.4 / 2)
    random_area = 0.25 * (0.175 * 3 + 0.175 / 2)
    assert r.ause["abs_rel"] == pytest.approx(model_area - oracle_area)
    assert r.aurg["abs_rel"] == pytest.approx(random_area - model_area)


def test_oracle_confidence_has_zero_ause():
    rng = np.random.default_rng(2)
    gt = rng.uniform(2, 50, 5000)
    pred = gt * np.exp(rng.normal(0, 0.2, gt.size))
    for metric in ("abs_rel", "rmse", "a1"):
        err = ev.pixel_errors(gt, pred, metric) if metric != "a1" else np.maximum(gt / pred, pred / gt)
        r = ev.sparsification(gt, pred, -err, metrics=[metric])
        assert r.ause[metric] == pytest.approx(0.0, abs=1e-12)
        assert r.aurg[metric] > 0


def test_random_confidence_has_zero_aurg():
    rng = np.random.default_rng(3)
    gt = rng.uniform(2, 50, 200_000)
    pred = gt * np.exp(rng.normal(0, 0.2, gt.size))
    r = ev.sparsification(gt, pred, rng.random(gt.size), metrics=["abs_rel", "rmse"])
    full_abs = ev.compute_depth_errors(gt, pred)["abs_rel"]
    assert abs(r.aurg["abs_rel"]) < 0.01 * full_abs
    assert abs(r.aurg["rmse"]) < 0.01 * ev.compute_depth_errors(gt, pred)["rmse"]
    assert r.ause["abs_rel"] > 0
    # A constant confidence behaves like random removal (ties broken randomly).
    c = ev.sparsification(gt, pred, np.ones(gt.size), metrics=["abs_rel"])
    assert abs(c.aurg["abs_rel"]) < 0.01 * full_abs


def test_report_layer_and_pictures(tmp_path):
    rng = np.random.default_rng(4)
    report = ev.EvaluationReport()
    for _ in range(3):
        gt = rng.uniform(3, 60, (24, 80))
        noise = rng.normal(0, 0.1, gt.shape)
        pred = 0.1 * gt * np.exp(noise)
        conf = -np.abs(noise)  # informative confidence
        gt[:3] = 0
        report.add(pred, gt, confidence=conf)
    report.add(np.ones((24, 80)), np.zeros((24, 80)))  # no valid GT: skipped
    s = report.summary()
    assert s["n_images"] == 3 and s["n_skipped"] == 1
    assert s["scale_ratio"]["median"] == pytest.approx(10, rel=0.05)
    assert s["median_scaled"]["abs_rel"] < 0.15 < s["metric_scale"]["abs_rel"]
    assert s["confidence"]["ause"]["abs_rel"] >= 0 and s["confidence"]["aurg"]["abs_rel"] > 0
    text = ev.format_evaluation(s)
    assert "AbsRel" in text and "AUSE" in text
    report.write_json(tmp_path / "out" / "metrics.json")
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(data["sparsification_curves"]["fractions"]) == 21

    sp = report.sparsification_mean()
    img = ev.save_sparsification_plot(tmp_path / "sparse.png", sp, "abs_rel")
    back = cv2.imread(str(tmp_path / "sparse.png"))
    assert back.shape == img.shape == (480, 640, 3)
    assert len(np.unique(back.reshape(-1, 3), axis=0)) > 5  # something was drawn
    rgb = rng.integers(0, 255, (24, 80, 3), dtype=np.uint8)
    mosaic = ev.save_mosaic(tmp_path / "mosaic.png", rgb, gt, rng.random((12, 40)))
    assert mosaic.shape == (72, 80, 3)  # wide image: panels stacked vertically
    assert cv2.imread(str(tmp_path / "mosaic.png")).shape == (72, 80, 3)
    # Near is bright in the inverse-depth colouring; invalid is black.
    depth = np.array([[1.0, 50.0, 0.0]])
    col = ev.colorize_inverse_depth(depth)
    assert col[0, 0].sum() > col[0, 1].sum() and col[0, 2].sum() == 0


# ---------------------------------------------------------------------------------------
# Temporal stability
# ---------------------------------------------------------------------------------------
def _forward_motion(dz: float = 1.0):
    K = np.array([[40.0, 0, 31.5], [0, 40.0, 23.5], [0, 0, 1]])
    T_t_to_prev = np.eye(4)
    T_t_to_prev[2, 3] = dz  # the camera moved forward by dz: points are dz farther in t−1
    gt_prev = np.full((48, 64), 10.0)
    gt_t = gt_prev - dz
    return K, T_t_to_prev, gt_t, gt_prev


def test_temporal_stability_hand_computed():
    K, T, gt_t, gt_prev = _forward_motion()
    # A perfect prediction up to one scale is as stable as the GT (0 on a wall).
    r = ev.temporal_stability(gt_t * 0.2, gt_prev * 0.2, gt_t, gt_prev, T, K)
    assert r["gt"] == pytest.approx(0.0, abs=1e-9) and r["pred"] == pytest.approx(0.0, abs=1e-9)
    assert r["scale"] == pytest.approx(5.0)
    # Scale flicker: t−1 predicted 10 % too far. ẑ = 10, d̂ = 11 → |10 − 11| / 11.
    r = ev.temporal_stability(gt_t, gt_prev * 1.1, gt_t, gt_prev, T, K)
    assert r["pred"] == pytest.approx(1 / 11, rel=1e-6)
    assert r["n_pixels"] > 0.5 * gt_t.size


def test_temporal_stability_ignores_moving_pixels():
    K, T, gt_t, gt_prev = _forward_motion()
    pred_prev = gt_prev.copy()
    pred_prev[20:30, 25:40] = 3.0  # garbage on a "moving object"
    moving = np.zeros(gt_t.shape, np.uint8)
    moving[15:35, 20:45] = 255
    polluted = ev.temporal_stability(gt_t, pred_prev, gt_t, gt_prev, T, K, scale=1.0)
    clean = ev.temporal_stability(gt_t, pred_prev, gt_t, gt_prev, T, K, scale=1.0, moving_t=moving, moving_prev=moving)
    assert polluted["pred"] > 0.05
    assert clean["pred"] == pytest.approx(0.0, abs=1e-9)
    assert clean["n_pixels"] < polluted["n_pixels"]


# ---------------------------------------------------------------------------------------
# Pose ATE
# ---------------------------------------------------------------------------------------
def test_snippet_ate_hand_computed():
    gt = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]])
    pred = np.array([[0.0, 0, 0], [1, 0, 0], [1, 0, 0]])
    # s = (1 + 2) / (1 + 1) = 1.5; errors 0, 0.5, −0.5.
    assert ev.snippet_ate(gt, pred) == pytest.approx(math.sqrt(0.5) / 3)


def _trajectory(n: int = 12, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    poses = [np.eye(4)]
    for _ in range(n - 1):
        step = pose_vec_to_mat(torch.tensor([[*rng.normal(0, 0.05, 3), *rng.normal(0, 0.3, 2), 1.0]]))[0]
        poses.append(poses[-1] @ step.numpy())
    return np.array(poses)


def test_pose_ate_perfect_and_scaled():
    gt = _trajectory()
    T = torch.from_numpy(gt)
    rel = relative_pose(T[1:], T[:-1]).numpy()  # T_{i+1 → i}
    np.testing.assert_allclose(rel, [np.linalg.inv(gt[i]) @ gt[i + 1] for i in range(len(gt) - 1)], atol=1e-12)
    r = ev.pose_ate(gt, rel)
    assert r["n_snippets"] == len(gt) - 4
    assert r["ate_mean"] == pytest.approx(0.0, abs=1e-9)
    scaled = rel.copy()
    scaled[:, :3, 3] *= 7.5  # monocular scale ambiguity
    assert ev.pose_ate(gt, scaled)["ate_mean"] == pytest.approx(0.0, abs=1e-9)
    noisy = scaled.copy()
    noisy[:, :3, 3] += np.random.default_rng(6).normal(0, 0.5, noisy[:, :3, 3].shape)
    assert ev.pose_ate(gt, noisy)["ate_mean"] > 0.01
    with pytest.raises(ValueError):
        ev.pose_ate(gt[:3], rel[:2])


def test_tensorboard_images_use_the_one_colouriser(tmp_path):
    """The trainer's TensorBoard depth/confidence images are coloured by evaluation.plots (no second copy)."""
    from dualdepth_ros.training.runlog import RunLogger

    logged = []

    class Writer:
        def add_image(self, tag, img, step, dataformats):
            logged.append((tag, img, dataformats))

        def flush(self):
            pass

        def close(self):
            pass

    log = RunLogger(tmp_path, total_steps=1)
    log.writer.close()
    log.writer = Writer()
    depth = torch.rand(12, 40, dtype=torch.bfloat16) * 20 + 1  # AMP outputs may be bfloat16
    log.depth_image(3, "depth", depth)
    log.depth_image(3, "conf", depth / 21, confidence=True)
    log.close()
    (t1, d, f1), (t2, c, f2) = logged
    assert (t1, f1, t2, f2) == ("depth", "HWC", "conf", "HWC")
    np.testing.assert_array_equal(d, ev.colorize_inverse_depth(depth.float().numpy()))
    np.testing.assert_array_equal(c, ev.colorize_confidence((depth / 21).float().numpy()))
