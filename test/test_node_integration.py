"""depth_node as its own process with the real shipped model (ONNX Runtime, CPU), fed the sample
drive over real DDS on localhost by this test process.

Every frame is sent after the previous one's outputs arrived, so each is processed (none
dropped) and the published depths can be compared frame by frame with the offline pipeline
(the same FrameProcessor over the same backend, no DDS) and scored against the sample's GT.

Stated bounds (the shipped model: models/MODEL_CARD.md):

* median-scaled AbsRel of the published depth on the 100 sample frames < 0.3 (measured 0.204;
  a constant depth scores about 0.7 on these drives);
* equal to ``dualdepth eval``'s median-scaled AbsRel on the same frames (the PyTorch checkpoint
  the model was exported from) within 0.005 absolute;
* every published depth equal to the offline pipeline's within 1e-4 relative (same ONNX graph);
* with ``scale_mode: camera_height`` (1.5 m, the sample's camera), the metric AbsRel (depth as
  published, no median scaling) at most 15 % above the median-scaled one (measured 0.197 against
  0.204); test_node_scale.py shows the same bound on the ground-truth depth.
"""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from node_harness import (
    DEFAULT_MODEL,
    SAMPLE_BAG,
    Client,
    NodeProcess,
    image_array,
    sample_frames,
    sample_gt,
    set_node_parameters,
)

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (make setup installs the ROS 2 Jazzy wheels)")

NS = "/integration"


@pytest.fixture(scope="module")
def running():
    """The node process and a connected client (module scope: one start for all tests here)."""
    node = NodeProcess(
        "-r",
        f"__ns:={NS}",
        "-p",
        "scale_mode:=none",
        "-p",
        "backend:=onnxruntime",
        "-p",
        "threads:=1",
        "-p",
        "diagnostics_period_s:=0.5",
    )
    rclpy.init()
    client = None
    try:
        assert node.wait_for_line("ready:", 90), node.output
        client = Client(NS)
        assert client.wait_connected(60), node.output
        yield node, client
    finally:
        if client is not None:
            client.close()
        rclpy.shutdown()
        node.stop()


@pytest.fixture(scope="module")
def frames():
    return sample_frames()


def _offline(frames, scale_mode: str):
    """The same frames through FrameProcessor + the real ONNX Runtime backend, in this process."""
    from dualdepth_ros.inference import open_backend
    from dualdepth_ros.ros.params import DEFAULTS, output_settings, scale_settings
    from dualdepth_ros.ros.processing import FrameProcessor

    backend = open_backend(DEFAULT_MODEL, "onnxruntime", device="cpu", threads=1)
    try:
        p = FrameProcessor(backend, output_settings(DEFAULTS), scale_settings({**DEFAULTS, "scale_mode": scale_mode}))
        outs = {}
        for f in frames:
            out = p.process(f.image, f.info)
            p.update_scale(out)
            outs[f.stamp_ns] = out
        return outs, p
    finally:
        backend.close()


def _score(outputs: dict, frames, metric: bool):
    from dualdepth_ros.inference import load_metadata
    from dualdepth_ros.ros.scoring import GroundTruthScorer

    scorer = GroundTruthScorer(load_metadata(DEFAULT_MODEL).preprocessor(), metric)
    gt = sample_gt()
    for f in frames:
        depth = image_array(outputs[f.stamp_ns]["depth"]).astype(np.float32)
        conf = image_array(outputs[f.stamp_ns]["conf"]).astype(np.float32)
        scorer.add(depth, conf, gt[f.stamp_ns], f.info)
    return scorer.summary()


def _lockstep(client: Client, frames) -> dict:
    client.send_info(frames[0].info)
    out = {}
    for f in frames:
        got = client.send_and_wait(f.image, timeout=15)
        assert got is not None, f"no outputs for the frame stamped {f.stamp_ns}"
        out[f.stamp_ns] = got
    return out


def test_outputs_are_well_formed_accurate_and_equal_to_the_offline_pipeline(running, frames) -> None:
    node, client = running
    outputs = _lockstep(client, frames)
    assert len(outputs) == len(frames) == 100
    for f in frames:
        o = outputs[f.stamp_ns]
        depth, conf, info, conf_info = o["depth"], o["conf"], o["depth_info"], o["conf_info"]
        # headers: the input's, identical on all four outputs
        assert depth.header == f.image.header == info.header == conf.header == conf_info.header
        assert (depth.encoding, depth.width, depth.height, depth.step, depth.is_bigendian) == ("32FC1", 160, 48, 640, 0)
        assert (conf.encoding, conf.width, conf.height) == ("32FC1", 160, 48)
        # camera_info at the published resolution: 320×96 → 160×48, half-pixel rule
        for ci in (info, conf_info):
            assert (ci.width, ci.height) == (160, 48)
            np.testing.assert_allclose(ci.k, [80, 0, 79.5, 0, 80, 23.5, 0, 0, 1])
            np.testing.assert_allclose(ci.p, [80, 0, 79.5, 0, 0, 80, 23.5, 0, 0, 0, 1, 0])
            np.testing.assert_allclose(ci.r, np.eye(3).ravel())
            assert list(ci.d) == [0.0] * 5
        c = image_array(conf)
        assert np.all((c >= 0) & (c <= 1))

    offline, _ = _offline(frames, "none")
    for f in frames:
        np.testing.assert_allclose(image_array(outputs[f.stamp_ns]["depth"]), offline[f.stamp_ns].depth, rtol=1e-4)
        np.testing.assert_allclose(image_array(outputs[f.stamp_ns]["conf"]), offline[f.stamp_ns].confidence, atol=1e-5)

    summary = _score(outputs, frames, metric=False)
    abs_rel = summary["median_scaled"]["abs_rel"]
    assert summary["n_images"] == 100

    def offline_eval(*extra: str) -> float:
        proc = subprocess.run(
            [sys.executable, "-m", "dualdepth_ros.cli", "eval", "--checkpoint", "models/dualdepth_default.pt"]
            + ["--bag", str(SAMPLE_BAG), "--no-pose", "--cache-dir", "memory", "--json", "-", *extra],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=str(SAMPLE_BAG.parents[2]),
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["median_scaled"]["abs_rel"]

    eval_abs_rel, constant = offline_eval(), offline_eval("--constant-reference")
    print(f"\nnode median-scaled AbsRel {abs_rel:.4f}, dualdepth eval {eval_abs_rel:.4f}, constant {constant:.4f}")
    assert abs(abs_rel - eval_abs_rel) < 0.005
    # The shipped model is trained on real roads; on this synthetic drive it must still beat a constant depth
    # clearly (models/MODEL_CARD.md gives both figures).
    assert abs_rel < 0.8 * constant


def test_camera_height_scale_gives_metric_depth(running, frames) -> None:
    node, client = running
    results = set_node_parameters(
        client.node, f"{NS}/depth_node", {"scale_mode": "camera_height", "camera_height_m": 1.5}
    )
    assert all(r.successful for r in results), [r.reason for r in results]
    client.outputs.clear()
    outputs = _lockstep(client, frames)
    offline, p = _offline(frames, "camera_height")
    for f in frames[::10]:
        np.testing.assert_allclose(image_array(outputs[f.stamp_ns]["depth"]), offline[f.stamp_ns].depth, rtol=1e-4)
    assert client.diag, "no diagnostics received"
    values = {kv.key: kv.value for kv in client.diag[-1].values}
    assert values["scale mode"] == "camera_height"
    assert float(values["scale"]) == pytest.approx(p.scaler.scale, rel=1e-3)
    assert values["backend"] == "onnxruntime"
    summary = _score(outputs, frames, metric=True)
    med, met = summary["median_scaled"]["abs_rel"], summary["metric_scale"]["abs_rel"]
    ratio = summary["scale_ratio"]["median"]
    print(
        f"\ncamera_height 1.5 m: metric AbsRel {met:.4f}, median-scaled {med:.4f} (× {met / med:.3f}); "
        f"ground truth / published depth {ratio:.2f}"
    )
    assert np.isfinite(met) and met > 0
    # The bound: the road plane of the shipped model's depth puts the camera 1.5 m above it.
    assert met <= 1.15 * med, (
        f"shipped model: metric AbsRel {met:.3f} is {100 * (met / med - 1):.0f} % above the median-scaled "
        f"{med:.3f} (goal ≤ 15 %); its road geometry puts the camera-height scale {ratio:.2f}× off"
    )


def test_sigterm_shuts_down_cleanly(running) -> None:
    node, _ = running
    assert node.stop(signal.SIGTERM) == 0, node.output
    assert "shut down:" in node.output
    assert "Traceback" not in node.output
