"""``dualdepth demo``: depth_node as its own process, fed a recorded drive through real ROS 2 pub/sub.

What it does (``make demo`` runs it on the bundled sample drive after ``colcon build``):

1. reads the bag's camera stream (and its ``/gt/depth`` when present);
2. starts ``depth_node`` as a child process (``--node-command``; default: the ``depth_node`` on
   ``PATH``, i.e. the colcon install space once sourced, else the venv's) with the topics
   remapped to the bag's and the scale parameters given here;
3. waits until the node is discovered, then publishes every frame (camera_info, then image) at
   the bag's own timing (``--speed``) or ``--rate``, while it records what the node publishes
   (depth, confidence, their camera_info, ``/diagnostics``);
4. stops the node with SIGINT and writes, under ``--out``:
   ``bag/`` (the input stream plus the outputs, ``ros2 bag play``-able), ``mosaic.png``
   (image | depth | confidence for three frames), ``summary.json``, ``node.log``;
5. prints frames in/out, output rate, the node's own latency (receive → publish, from its
   diagnostics) and the end-to-end latency (publish → receive across the two processes),
   the backend, the scale, and the accuracy of the published depth against the ground truth
   (median-scaled, and as published when the scale mode gives metres).

All ROS traffic stays on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) on a
private ``ROS_DOMAIN_ID`` (random unless one is set).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DualDepthError
from ..outdir import DEMO_MARKER, DEMO_RUN, check_output_dir, check_separate, replace_dir, temporary_sibling

__all__ = ["add_arguments", "run"]

OUTPUTS = {
    "/depth/image": "sensor_msgs/msg/Image",
    "/depth/camera_info": "sensor_msgs/msg/CameraInfo",
    "/confidence/image": "sensor_msgs/msg/Image",
    "/confidence/camera_info": "sensor_msgs/msg/CameraInfo",
    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bag", default="test/data/sample_drive", help="recorded drive (default: the sample drive)")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo run at --out (only that)")
    parser.add_argument("--model", help="model folder (default: the node's default model)")
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime or torch")
    parser.add_argument("--scale-mode", default="camera_height", choices=("none", "fixed", "camera_height"))
    parser.add_argument("--camera-height", type=float, default=1.5, help="metres (the sample drive's camera: 1.5)")
    parser.add_argument("--fixed-scale", type=float, help="factor of --scale-mode fixed")
    parser.add_argument("--speed", type=float, default=1.0, help="playback speed with the bag's timing (default 1)")
    parser.add_argument("--rate", type=float, help="play at this many frames per second instead of the bag's timing")
    parser.add_argument("--gt-depth-topic", default="/gt/depth", help="ground-truth depth topic (if the bag has it)")
    parser.add_argument(
        "--node-command",
        help="how to start depth_node (default: depth_node on PATH, else the venv's, else python -m)",
    )
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the node")
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")


def _node_command(given: str | None) -> list[str]:
    if given:
        return shlex.split(given)
    on_path = shutil.which("depth_node")
    if on_path:
        return [on_path]
    venv = Path(sys.executable).with_name("depth_node")
    if venv.exists():
        return [str(venv)]
    return [sys.executable, "-m", "dualdepth_ros.ros.node"]


class _Recorder:
    """Receives the node's outputs (rclpy messages) with their arrival times."""

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, Image

        types = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CameraInfo": CameraInfo}
        types["diagnostic_msgs/msg/DiagnosticArray"] = DiagnosticArray
        self.received: dict[str, list[tuple[float, Any]]] = {t: [] for t in OUTPUTS}
        self.lock = threading.Lock()
        for topic, msgtype in OUTPUTS.items():
            node.create_subscription(types[msgtype], topic, self._cb(topic), 100)

    def _cb(self, topic: str) -> Any:
        def on_msg(msg: Any) -> None:
            with self.lock:
                self.received[topic].append((time.monotonic(), msg))

        return on_msg

    def last_time(self) -> float | None:
        with self.lock:
            items = self.received["/depth/image"]
            return items[-1][0] if items else None


def _stamp(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _node_status(diag: list[tuple[float, Any]]) -> dict[str, Any]:
    """The key/values of the node's last ``/diagnostics`` status, with ``level`` and ``message``."""
    for _, msg in reversed(diag):
        for status in msg.status:
            if status.name.endswith(": depth"):
                level = status.level[0] if isinstance(status.level, bytes) else int(status.level)
                return {"level": level, "message": status.message, **{kv.key: kv.value for kv in status.values}}
    return {}


def run(args: argparse.Namespace) -> int:
    """Check the model and the bag, then ``--out``; play the drive through depth_node (module docstring).

    The run is written to a temporary folder beside ``--out`` and renamed into place at the end
    (also when the node fails, so that ``--out/node.log`` tells why); an interrupted run leaves
    ``--out`` as it was. ``--overwrite`` replaces only a demo run folder.
    """
    from ..bagio import read_messages
    from ..inference import load_metadata
    from .params import default_model_dir
    from .player import load_stream

    final = Path(args.out)
    model_dir = Path(args.model) if args.model else default_model_dir()
    try:
        metadata = load_metadata(model_dir)
    except FileNotFoundError as err:
        raise DualDepthError(f"no model at {model_dir}: {err} (make export-default writes the default model)") from None
    stream = load_stream(args.bag)
    gt: dict[int, Any] = {}
    try:
        gt = {_stamp(m.msg.header): m.msg for m in read_messages(args.bag, [args.gt_depth_topic])}
    except DualDepthError:
        print(f"(no {args.gt_depth_topic} in {args.bag}: accuracy is not computed)")
    check_output_dir(final, args.overwrite, DEMO_RUN)
    check_separate(final, {"--bag": args.bag, "--model": model_dir})
    out = temporary_sibling(final)
    try:
        (out / DEMO_MARKER).write_text("written by dualdepth demo\n", encoding="utf-8")
        _run(args, out, final, metadata.preprocessor(), stream, gt)
    except (DualDepthError, subprocess.SubprocessError):
        try:
            replace_dir(out, final, args.overwrite, DEMO_RUN)  # node.log and what was measured
        except BaseException:  # noqa: BLE001 - the demo's own error is the one to report
            shutil.rmtree(out, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    replace_dir(out, final, args.overwrite, DEMO_RUN)
    return 0


def _run(  # noqa: C901 - one linear script
    args: argparse.Namespace, out: Path, final: Path, pre: Any, stream: Any, gt: dict[int, Any]
) -> None:
    """The demo proper, writing into ``out`` (a temporary folder that becomes ``final``)."""
    from rclpy.serialization import serialize_message

    from ..bagio import BagWriter
    from .player import Player
    from .scoring import Example, GroundTruthScorer, mosaic_rows, save_png

    env = os.environ.copy()
    env.setdefault("ROS_DOMAIN_ID", str(random.Random().randint(1, 100)))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_LOCALHOST_ONLY"] = "1"
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY")})
    image_remap = stream.image_topic[: -len("/compressed")] if stream.compressed else stream.image_topic
    params = {"scale_mode": args.scale_mode, "camera_height_m": args.camera_height, "backend": args.backend}
    if args.fixed_scale is not None:
        params["fixed_scale"] = args.fixed_scale
    if args.model:
        params["model_path"] = str(Path(args.model).absolute())
    if stream.compressed:
        params["image_transport"] = "compressed"
    ros_args = ["--ros-args", "-r", "__node:=depth_node"]
    for k, v in params.items():
        ros_args += ["-p", f"{k}:={v}"]
    ros_args += ["-r", f"image:={image_remap}", "-r", f"image/compressed:={image_remap}/compressed"]
    ros_args += ["-r", f"camera_info:={stream.info_topic}"]
    cmd = [*_node_command(args.node_command), *ros_args]
    print(f"starting depth_node (ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, localhost only): {shlex.join(cmd)}")
    log_file = open(out / "node.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    import rclpy

    rclpy.init()
    node = rclpy.create_node("dualdepth_demo")
    recorder = _Recorder(node)
    player = Player(node, stream, reliability="reliable")

    def spin(seconds: float) -> None:
        rclpy.spin_once(node, timeout_sec=seconds)

    def node_failed() -> None:
        log_file.flush()
        text = (out / "node.log").read_text(encoding="utf-8", errors="replace")
        raise DualDepthError(f"depth_node exited with status {proc.returncode}:\n{text.strip()[-3000:]}")

    summary: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + args.startup_timeout
        while not (
            player.image_pub.get_subscription_count()
            and player.info_pub.get_subscription_count()
            and node.count_publishers("/depth/image")
        ):
            if proc.poll() is not None:
                node_failed()
            if time.monotonic() > deadline:
                raise DualDepthError(
                    f"depth_node did not come up within {args.startup_timeout:.0f} s (see {final / 'node.log'})"
                )
            spin(0.1)
        print(
            f"depth_node is up; playing {len(stream.frames)} frames of {stream.image_topic} "
            + (f"at {args.rate} frames/s" if args.rate else f"at {args.speed}x the recorded timing")
        )
        player.info_pub.publish(stream.frames[0].info)
        t_end = time.monotonic() + 0.5
        while time.monotonic() < t_end:
            spin(0.05)
        t_play = time.monotonic()
        n_sent = player.play(args.rate, args.speed, spin=spin, should_stop=lambda: proc.poll() is not None)
        t_played = time.monotonic()
        if proc.poll() is not None:
            node_failed()
        # Let the last frames arrive, and one more diagnostics period pass.
        quiet = time.monotonic()
        while time.monotonic() - quiet < 1.5 and time.monotonic() - t_played < 30:
            before = len(recorder.received["/depth/image"])
            spin(0.1)
            if len(recorder.received["/depth/image"]) != before:
                quiet = time.monotonic()
        n_diag = len(recorder.received["/diagnostics"])
        t_wait = time.monotonic()
        while len(recorder.received["/diagnostics"]) == n_diag and time.monotonic() - t_wait < 3:
            spin(0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_file.close()

    rec = recorder.received
    depth = rec["/depth/image"]
    status = _node_status(rec["/diagnostics"])
    sent_at = dict(player.sent)
    e2e = np.array([t - sent_at[_stamp(m.header)] for t, m in depth if _stamp(m.header) in sent_at])
    span = depth[-1][0] - depth[0][0] if len(depth) > 1 else 0.0
    conf_by_stamp = {_stamp(m.header): m for _, m in rec["/confidence/image"]}
    info_by_stamp = {f.stamp_ns: f.info for f in stream.frames}
    image_by_stamp = {f.stamp_ns: f.image for f in stream.frames}

    # Accuracy of what was published, against the ground truth of the same stamps.
    scorer = GroundTruthScorer(pre, metric=args.scale_mode != "none")
    from ..images import decode_image

    examples = []
    picks = set(np.linspace(0, len(depth) - 1, 3).round().astype(int).tolist()) if depth else set()
    for i, (_, m) in enumerate(depth):
        stamp = _stamp(m.header)
        d = np.array(decode_image(m), dtype=np.float32)
        c_msg = conf_by_stamp.get(stamp)
        c = np.array(decode_image(c_msg), dtype=np.float32) if c_msg is not None else None
        if stamp in gt and stamp in info_by_stamp:
            scorer.add(d, c, gt[stamp], info_by_stamp[stamp])
        if i in picks and stamp in image_by_stamp:
            rgb, _ = pre.prepare(image_by_stamp[stamp], info_by_stamp[stamp])
            examples.append(Example(i, stamp, rgb, d, c, None))
    if examples:
        save_png(out / "mosaic.png", mosaic_rows(examples))

    # The output bag: what was played plus what the node published.
    with BagWriter(out / "bag", storage="mcap") as bag:
        in_img_type = "sensor_msgs/msg/CompressedImage" if stream.compressed else "sensor_msgs/msg/Image"
        bag.add_topic(stream.image_topic, in_img_type)
        bag.add_topic(stream.info_topic, "sensor_msgs/msg/CameraInfo")
        for topic, msgtype in OUTPUTS.items():
            bag.add_topic(topic, msgtype)
        rows = []
        for f in stream.frames:
            if f.stamp_ns in sent_at:
                rows.append((f.stamp_ns, stream.info_topic, f.info))
                rows.append((f.stamp_ns, stream.image_topic, f.image))
        for topic in OUTPUTS:
            for _, m in rec[topic]:
                rows.append((_stamp(m.header), topic, m))
        for stamp, topic, m in sorted(rows, key=lambda r: r[0]):
            bag.write_raw(topic, serialize_message(m), stamp)

    acc = scorer.summary()
    summary = {
        "bag": str(args.bag),
        "out": str(final),
        "node_command": cmd,
        "node_exit_status": proc.returncode,
        "frames_in": n_sent,
        "frames_out": len(depth),
        "play_seconds": round(t_played - t_play, 3),
        "output_rate_hz": round((len(depth) - 1) / span, 3) if span > 0 else None,
        "latency_node_ms": {"p50": status.get("latency p50 (ms)"), "p95": status.get("latency p95 (ms)")},
        "latency_end_to_end_ms": {
            "p50": round(float(np.percentile(e2e, 50)) * 1e3, 3) if e2e.size else None,
            "p95": round(float(np.percentile(e2e, 95)) * 1e3, 3) if e2e.size else None,
        },
        "node_dropped": status.get("frames dropped"),
        "node_without_scale": status.get("frames without scale"),
        "node_without_camera_info": status.get("frames without camera_info"),
        "node_refused": status.get("frames refused (bad input)"),
        "backend": status.get("backend"),
        "backend_reason": status.get("backend reason"),
        "device": status.get("device"),
        "input_size": status.get("input size"),
        "scale_mode": args.scale_mode,
        "scale": status.get("scale"),
        "accuracy": acc,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    print(format_summary(summary, args))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    if not depth:
        raise DualDepthError(f"depth_node published nothing (see {final / 'node.log'})")


def format_summary(s: dict[str, Any], args: argparse.Namespace) -> str:
    """The printed report of :func:`run`."""
    e2e = s["latency_end_to_end_ms"]
    lines = [
        "",
        f"depth_node: {s['backend']} on {s['device']}, model input {s['input_size']}",
        f"frames: {s['frames_in']} in, {s['frames_out']} out over {s['play_seconds']:.1f} s of playback (in the node: "
        f"{s['node_dropped']} dropped for a newer frame, {s['node_without_scale']} before the first road-plane fit, "
        f"{s['node_without_camera_info']} without camera_info, {s['node_refused']} refused)",
        f"output rate: {s['output_rate_hz'] or 0:.1f} frames/s (the input's rate: the node keeps up when they match)",
        f"latency in the node (receive → publish): p50 {s['latency_node_ms']['p50']} ms, "
        f"p95 {s['latency_node_ms']['p95']} ms",
        f"latency end to end (publish → receive, two processes): p50 {e2e['p50']} ms, p95 {e2e['p95']} ms",
        f"scale: {s['scale_mode']}"
        + (f" (camera {args.camera_height} m above the road)" if s["scale_mode"] == "camera_height" else "")
        + f" → factor {s['scale']}",
    ]
    acc = s["accuracy"]
    if acc["n_images"]:
        from .scoring import format_evaluation

        lines.append(f"\naccuracy of the published depth against {args.gt_depth_topic} (valid pixels):")
        lines.append(format_evaluation(acc))
        ratio = (acc.get("scale_ratio") or {}).get("median")
        if ratio and s["scale_mode"] != "none":
            lines.append(
                f"ground truth / published depth, median over frames: {ratio:.3g} (1 = the published metres are "
                "right; the camera-height scale is only as good as the model's road geometry)"
            )
    lines.append(
        f"\nwrote {s['out']}/bag (ros2 bag play), {s['out']}/mosaic.png, {s['out']}/summary.json, {s['out']}/node.log"
    )
    return "\n".join(lines)
