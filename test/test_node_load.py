"""Load: the sample drive at 100 Hz for 10 s into a depth_node process (real model, ONNX Runtime).

Everything asserted is what the node guarantees, measured in the same run (the machine may be
slow or loaded; absolute figures — the rate this process reaches, latency in milliseconds — are
printed here and by ``dualdepth bench node --mode load``):

* it stays up, and publishes only frames that were sent, in order;
* nothing queues: the node's own latency (image callback → published) of its last frames is at most
  two of its frame times (the frame in progress when one arrives, then its own), by its diagnostics;
* it publishes at its processing rate: every frame it received was published, dropped for a newer
  frame, or (warm-up) waited for the first scale, and it published until the input stopped (the last
  frame it published was sent within two of its frame times, plus 0.5 s for frames lost at the end,
  of the end of the input);
* its memory stays flat (resident set growth from second 2 to the end under 40 MB).
"""

import time

import numpy as np
import pytest
from node_harness import Client, NodeProcess, sample_frames, stamp_ns, wait_until

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (make setup installs the ROS 2 Jazzy wheels)")


def _values(client: Client) -> dict[str, str]:
    return {kv.key: kv.value for kv in client.diag[-1].values} if client.diag else {}


def _ms(values: dict[str, str], key: str) -> float:
    return float(values[key]) / 1e3


def test_100hz_for_10s() -> None:
    frames = sample_frames()
    ns = "/load"
    rclpy.init()
    args = ["-p", "backend:=onnxruntime", "-p", "threads:=1", "-p", "diagnostics_period_s:=0.5"]
    try:
        with NodeProcess("-r", f"__ns:={ns}", *args) as node:
            assert node.wait_for_line("ready:", 90), node.output
            client = Client(ns, name="load_client")
            try:
                assert client.wait_connected(60)
                client.send_info(frames[0].info)
                assert client.send_and_wait(frames[0].image, timeout=60) is not None  # warm (and a first scale)
                client.outputs.clear()
                client.sent.clear()
                client.diag.clear()
                assert wait_until(lambda: bool(client.diag), 10)
                before = _values(client)  # the warm-up frame(s), from a diagnostics message sent after them
                period, duration = 0.01, 10.0
                t0 = time.monotonic()
                rss = {}
                k = 0
                while True:
                    now = time.monotonic()
                    if now - t0 >= duration:
                        break
                    if "start" not in rss and now - t0 >= 2.0:
                        rss["start"] = node.rss_bytes()
                    f = frames[k % len(frames)]
                    img = f.image
                    img.header.stamp.sec, img.header.stamp.nanosec = divmod(2_000_000_000_000 + k * 10_000_000, 10**9)
                    client.info_pub.publish(f.info)
                    client.send(img)
                    k += 1
                    time.sleep(max(0.0, t0 + k * period - time.monotonic()))
                sent_seconds = time.monotonic() - t0
                rss["end"] = node.rss_bytes()
                t_end = time.monotonic()

                def settled() -> bool:  # every frame it received accounted for, in a diagnostics message
                    v = _values(client)
                    if not v:
                        return False
                    c = {k: int(v[k]) for k in ("frames received", "frames published", "frames dropped")}
                    return c["frames received"] == c["frames published"] + c["frames dropped"] + int(
                        v["frames without scale"]
                    )

                assert wait_until(settled, 60), _values(client)
                time.sleep(1.0)  # the last outputs and one more diagnostics message
                assert node.proc.poll() is None, node.output[-3000:]
            finally:
                client.close()
            values = _values(client)
            outs = sorted((o["t"], s) for s, o in client.outputs.items() if "t" in o)
            stamps = [s for _, s in outs]
            latency = np.array([t - client.sent[s] for t, s in outs])
            growth = (rss["end"] - rss["start"]) / 2**20
            received, published, dropped = (
                int(values[key]) - int(before[key]) for key in ("frames received", "frames published", "frames dropped")
            )
            print(
                f"\nsent {k} frames at {k / sent_seconds:.1f} Hz; the node received {received}, published {published}, "
                f"dropped {dropped}; here {len(outs)} arrived; latency end to end p50 "
                f"{1e3 * np.median(latency):.1f} ms, p95 {1e3 * np.percentile(latency, 95):.1f} ms; in the node "
                f"p50 {values['latency p50 (ms)']} ms, max {values['latency max (ms)']} ms, frame time p50 "
                f"{values['frame time p50 (ms)']} ms, max {values['frame time max (ms)']} ms, inference p50 "
                f"{values['inference p50 (ms)']} ms, waiting in its DDS queue p95 {values['queue wait p95 (ms)']} "
                f"ms, max {values['queue wait max (ms)']} ms; RSS {rss['start'] / 2**20:.1f} → "
                f"{rss['end'] / 2**20:.1f} MiB ({growth:+.1f} MiB)"
            )
            # only frames that were sent, in order, each output with its own header
            assert outs and set(stamps) <= set(client.sent) and stamps == sorted(stamps)
            assert [stamp_ns(client.outputs[s]["depth"].header) for s in stamps] == stamps
            # nothing queues: latency <= the frame in progress + its own frame (the node's own clock and figures)
            assert _ms(values, "latency max (ms)") <= 2 * _ms(values, "frame time max (ms)") + 1e-3, values
            # its processing rate: every received frame published or dropped for a newer one (checked in settled()),
            # at most the input, and it kept publishing until the input stopped: the newest frame it got is published
            assert 0 < published <= received <= k
            # (frames sent last may be lost in transport, best effort, unnoticed: a loss shows when a later frame comes)
            assert client.sent[stamps[-1]] >= t_end - 2 * _ms(values, "frame time max (ms)") - 0.5, values
            assert int(values["frames refused (bad input)"]) == 0
            assert growth < 40
    finally:
        rclpy.shutdown()
