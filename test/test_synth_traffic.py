"""Synthetic traffic (issue 14 §3): lead and side vehicles that keep pace with the camera, stop-and-go.

The drives are tiny (160×48, 1×1 supersampling, 20 frames). Image motion is measured independently
of the renderer's own bookkeeping: the vehicles through the moving-object mask that the bag records,
the background through the ground-truth depth and poses (back-project, move, project).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from small_model import write_small_checkpoint

from dualdepth_ros import bagio, cli
from dualdepth_ros.errors import DualDepthError
from dualdepth_ros.images import decode_image
from dualdepth_ros.synth import SynthConfig, World, render_frame
from dualdepth_ros.synth.config import stop_and_go_stops

W, H, FRAMES = 160, 48, 20
TRAFFIC = ["--lead-vehicles", "2", "--side-vehicles", "3"]


def _make(out, *extra: str, frames: int = FRAMES, seed: int = 7) -> dict:
    argv = ["make-sample", "--out", str(out), "--frames", str(frames), "--width", str(W), "--height", str(H)]
    argv += ["--seed", str(seed), "--supersample", "1", "--json", *extra]
    assert cli.main(argv) == 0
    return argv


def _read(bag) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in bagio.read_messages(bag, ["/gt/depth", "/gt/moving_mask", "/gt/pose", "/gt/camera_info"]):
        out.setdefault(m.topic, []).append(m.msg)
    return {
        "depth": [decode_image(m) for m in out["/gt/depth"]],
        "mask": [decode_image(m) > 0 for m in out["/gt/moving_mask"]],
        "pose": [bagio.pose_to_matrix(m) for m in out["/gt/pose"]],
        "K": np.asarray(out["/gt/camera_info"][0].k, dtype=np.float64).reshape(3, 3),
    }


def _background_flow(depth, mask, T_a, T_b, K) -> float:
    """Median image displacement (px) of the static, finite-depth pixels of frame a, moved into frame b."""
    v, u = np.nonzero(np.isfinite(depth) & ~mask)
    z = depth[v, u].astype(np.float64)
    P = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z, np.ones_like(z)])
    Q = np.linalg.inv(T_b) @ T_a @ P
    front = Q[2] > 0.1
    ub = K[0, 0] * Q[0, front] / Q[2, front] + K[0, 2]
    vb = K[1, 1] * Q[1, front] / Q[2, front] + K[1, 2]
    return float(np.median(np.hypot(ub - u[front], vb - v[front])))


def _mask_motion(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(centroid shift in px, IoU) of two masks."""
    ca = np.array(np.nonzero(a)).mean(axis=1)
    cb = np.array(np.nonzero(b)).mean(axis=1)
    return float(np.hypot(*(ca - cb))), float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def traffic_bag(tmp_path_factory):
    out = tmp_path_factory.mktemp("traffic") / "bag"
    _make(out, *TRAFFIC, "--no-stop")
    return out


def test_vehicles_that_keep_pace_stay_put_in_the_image_while_the_background_flows(traffic_bag, capsys):
    gt = _read(traffic_bag)
    assert len(gt["mask"]) == FRAMES
    shifts, ious, flows = [], [], []
    for i in range(FRAMES - 1):
        shift, iou = _mask_motion(gt["mask"][i], gt["mask"][i + 1])
        shifts.append(shift)
        ious.append(iou)
        flows.append(_background_flow(gt["depth"][i], gt["mask"][i], gt["pose"][i], gt["pose"][i + 1], gt["K"]))
    # The truck beside the car and the cars ahead cover a good part of the image in every frame ...
    coverage = np.mean([m.mean() for m in gt["mask"]])
    assert coverage > 0.15
    # ... and stay where they are (the road bends a little: a fraction of a pixel), while the street flows.
    assert max(shifts) < 0.3 and min(ious) > 0.98
    assert min(flows) > 2.0 and min(flows) > 5 * max(shifts)


def test_slower_traffic_moves_in_the_image(tmp_path):
    """The same measurement fails when the traffic does not keep pace (the test can tell them apart)."""
    out = tmp_path / "slow"
    _make(out, *TRAFFIC, "--no-stop", "--traffic-speed-ratio", "0.5")
    gt = _read(out)
    shifts, ious = zip(*(_mask_motion(gt["mask"][i], gt["mask"][i + 1]) for i in range(FRAMES - 1)))
    assert max(shifts) > 5.0 and np.median(ious) < 0.9  # the ego overtakes the truck: it slides out of view


def test_the_mask_is_exactly_the_traffic():
    """Mask = the pixels where the traffic hides the static street (the same world rendered without it)."""
    kw = dict(width=W, height=H, supersample=1, speed=4.0, stops=stop_and_go_stops(4.0), route_length=200.0)
    busy = World.from_seed(7, SynthConfig(lead_vehicles=2, side_vehicles=3, **kw))
    empty = World.from_seed(7, SynthConfig(lead_vehicles=0, side_vehicles=0, oncoming_per_km=0.0, **kw))
    assert busy.traffic == {"lead": 2, "side": 3, "trucks": 1, "oncoming": 0}
    assert empty.traffic == {"lead": 0, "side": 0, "trucks": 0, "oncoming": 0}
    for t in (0.0, 1.3, 2.9):
        a, b = render_frame(busy, t), render_frame(empty, t)
        hidden = np.isfinite(a.depth) & ~(a.depth >= np.nan_to_num(b.depth, nan=np.inf) - 1e-4)
        assert hidden.mean() > 0.15
        np.testing.assert_array_equal(a.moving_mask, hidden)


def test_default_world_is_unchanged_by_the_traffic_options():
    """One lead car, oncoming traffic: the default world renders as before (the committed sample drive)."""
    cfg = SynthConfig(width=W, height=H, supersample=1, route_length=200.0)
    default = World.from_seed(3, cfg)
    assert default.traffic["lead"] == 1 and default.traffic["side"] == 0 and default.traffic["oncoming"] > 0
    # Extra vehicles come from their own random stream: the oncoming cars and the lead car stay the same.
    more = World.from_seed(3, SynthConfig(width=W, height=H, supersample=1, route_length=200.0, lead_vehicles=3))
    n = len(default._movers.s0)
    np.testing.assert_array_equal(more._movers.s0[:n], default._movers.s0)
    np.testing.assert_array_equal(more._movers.colour[:n], default._movers.colour)
    assert more.traffic["lead"] == 3


def test_lead_vehicles_queue_instead_of_driving_through_the_camera():
    cfg = SynthConfig(width=W, height=H, supersample=1, lead_vehicles=3, traffic_speed_ratio=0.0, speed=10.0)
    world = World.from_seed(2, cfg)
    lead = np.flatnonzero(world._movers.lead)
    length = world._movers.length[lead]
    for t in np.linspace(0.0, 8.0, 9):
        s = world.mover_positions(float(t))[lead]
        rear, front = s - length / 2, s + length / 2
        assert rear[0] >= world.ego_s(float(t)) + 4.0 - 1e-9
        assert np.all(rear[1:] >= front[:-1] + 2.0 - 1e-9)
    # Standing traffic (ratio 0) ends up pushed ahead at the ego's pace: 10 m/s.
    s7, s8 = world.mover_positions(7.0)[lead], world.mover_positions(8.0)[lead]
    np.testing.assert_allclose(s8 - s7, 10.0, atol=1e-9)


def test_stop_and_go_stands_still_and_the_traffic_stands_with_it(tmp_path, capsys):
    out = tmp_path / "jam"
    _make(out, *TRAFFIC, "--stop-and-go", "--speed", "4", "--fps", "2")  # 10 s: cruise, brake, stand 4–6 s, go
    summary = json.loads(capsys.readouterr().out)
    assert summary["stops"] == [[4.0, 2.0]]  # the next would brake from 10 s: after the drive
    assert summary["traffic"] == {"lead": 2, "side": 3, "trucks": 1, "oncoming": 0}
    gt = _read(out)
    steps = np.array([np.linalg.norm(gt["pose"][i + 1][:3, 3] - gt["pose"][i][:3, 3]) for i in range(FRAMES - 1)])
    still = steps < 1e-9
    assert still.sum() == 4 and np.array_equal(np.flatnonzero(still), [8, 9, 10, 11])  # frames 8–12: t = 4–6 s
    assert steps[:3].min() > 1.5 and steps[-3:].min() > 0.5  # 2 m per frame while cruising, moving again at the end
    for i in np.flatnonzero(still):
        np.testing.assert_array_equal(gt["mask"][i], gt["mask"][i + 1])
        np.testing.assert_array_equal(gt["depth"][i], gt["depth"][i + 1])
    readme = (out / "README.md").read_text()
    assert "--stop-and-go" in readme and "--side-vehicles 3" in readme and "--lead-vehicles 2" in readme
    assert "3 side vehicle(s)" in readme


def test_eval_with_the_constant_reference_runs_on_a_traffic_drive(traffic_bag, tmp_path, capsys):
    ckpt = write_small_checkpoint(tmp_path, tmp_path / "cache")
    out_json = tmp_path / "eval.json"
    rc = cli.main(
        ["eval", "--checkpoint", str(ckpt), "--bag", str(traffic_bag), "--constant-reference", "--json", str(out_json)]
    )
    assert rc == 0, capsys.readouterr().err
    result = json.loads(out_json.read_text())
    assert result["n_images"] == FRAMES
    const = result["median_scaled"]["abs_rel"]  # --constant-reference: the constant in the model's place
    assert np.isfinite(const) and const > 0.1


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--lead-vehicles", "-1"], "lead_vehicles must be 0..20"),
        (["--side-vehicles", "21"], "side_vehicles must be 0..20"),
        (["--traffic-speed-ratio", "-0.5"], "traffic_speed_ratio must be in"),
        (["--traffic-speed-ratio", "nan"], "traffic_speed_ratio must be in"),
        (["--stop-and-go", "--no-stop"], "--stop-and-go sets the stops itself"),
        (["--stop-and-go", "--stop", "1:1"], "--stop-and-go sets the stops itself"),
    ],
)
def test_bad_traffic_options_are_one_line(tmp_path, capsys, extra, match):
    out = tmp_path / "bag"
    argv = ["make-sample", "--out", str(out), "--frames", "3", "--width", "64", "--height", "32", *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_stop_and_go_profile():
    assert stop_and_go_stops(30.0) == ((4.0, 2.0), (12.0, 2.0), (20.0, 2.0), (28.0, 2.0))
    assert stop_and_go_stops(2.0) == ()  # braking would start at 2 s: the end of a 2 s drive
    assert stop_and_go_stops(2.5) == ((4.0, 2.0),)
    with pytest.raises(DualDepthError):
        stop_and_go_stops(0.0)
