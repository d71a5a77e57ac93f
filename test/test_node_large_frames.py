"""Camera-sized frames over DDS into a depth_node process (real model, ONNX Runtime, Fast DDS).

A player process publishes the sample drive resized to 1280×720 and 1920×1080 rgb8 at 30 Hz with
a camera driver's QoS (best effort, keep last 5), pre-serialized so that the player costs little
CPU. Asserted, from the node's own diagnostics and what this test receives:

* with the node's default DDS profile (``config/dds/fastdds_udp.xml``) and a stock publisher (no
  profile: what a camera driver is), the node receives at least 90 % of the frames sent;
* with ``config/dds/fastdds_shm.xml`` on both sides (shared memory), the same;
* the node publishes at its own processing rate: every frame it received was published or
  dropped for a newer one (newest-frame mailbox), and this test received every depth it published;
* frames lost in transport are counted and reported: with a user's own Fast DDS profile whose
  socket receive buffer is too small for 1280×720 frames, the node leaves that profile in place,
  and its diagnostics count the lost frames and turn to WARN.

Without the profile (Fast DDS defaults) 13 of 300 1920×1080 frames and 28 of 300 1280×720 frames
arrived in a bare subscriber on this machine (config/dds/README.md); ``dualdepth bench node --mode
delivery`` prints the table.
"""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from node_harness import ORT_ONE_THREAD, REPO, SAMPLE_BAG, Client, NodeProcess, child_env, wait_until

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (make setup installs the ROS 2 Jazzy wheels)")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402

from dualdepth_ros.ros import dds  # noqa: E402

SIZES = [(1280, 720), (1920, 1080)]
RATE_HZ = 30.0
NODE_ARGS = [*ORT_ONE_THREAD, "-p", "diagnostics_period_s:=0.5"]
COUNTERS = (
    "frames received",
    "frames published",
    "frames dropped",
    "frames without camera_info",
    "frames without scale",
)


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def _stock_env(**extra: str) -> dict[str, str]:
    """A child environment without any Fast DDS configuration (a camera driver as installed)."""
    env = child_env(**extra)
    for var in (*dds.USER_VARIABLES, dds.ENV):
        if var not in extra:
            env.pop(var, None)
    return env


def _play(ns: str, size: tuple[int, int], seconds: float, env: dict[str, str]) -> tuple[int, float]:
    """Run the player (a second process) for ``seconds``; returns (frames sent, seconds it took)."""
    cmd = [
        sys.executable,
        "-m",
        "dualdepth_ros.ros.player",
        "--bag",
        str(SAMPLE_BAG),
        "--size",
        f"{size[0]}x{size[1]}",
        "--max-frames",
        "4",
        "--rate",
        str(RATE_HZ),
        "--duration",
        str(seconds),
        "--reliability",
        "best_effort",
        "--depth",
        "5",
        "--publish-image-topic",
        f"{ns}/image",
        "--publish-info-topic",
        f"{ns}/camera_info",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 90, cwd=REPO)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    m = re.search(r"played (\d+) frames in ([\d.]+) s", text)
    assert m, text[-3000:]
    return int(m.group(1)), float(m.group(2))


def _values(client: Client) -> dict[str, str]:
    return {kv.key: kv.value for kv in client.diag[-1].values} if client.diag else {}


def _counts(client: Client) -> dict[str, int]:
    v = _values(client)
    return {k: int(v[k]) for k in (*COUNTERS, "frames lost in transport")} if v else {}


def _settled(client: Client, node_published_before: int, received_before: int) -> bool:
    """Every frame the node received is accounted for, and every depth it published has arrived here."""
    c = _counts(client)
    if not c:
        return False
    received = c["frames received"] - received_before
    # withheld before the first road-plane fit (scale_mode camera_height, the default) counts as accounted for
    accounted = (
        c["frames published"] + c["frames dropped"] + c["frames without camera_info"] + c["frames without scale"]
    )
    arrived = sum(1 for o in client.outputs.values() if "depth" in o)
    return (
        received > 0 and c["frames received"] == accounted and arrived == c["frames published"] - node_published_before
    )


def _delivery(
    ns: str, node_env: dict[str, str], player_env: dict[str, str], seconds: float, profile: Path
) -> list[str]:
    """Play every size into one node; assert delivery and output accounting; return the figures printed."""
    lines = []
    with NodeProcess("-r", f"__ns:={ns}", *NODE_ARGS, env=node_env) as node:
        assert node.wait_for_line("ready:", 90), node.output
        assert node.wait_for_line(f"DDS: Fast DDS profile {profile}", 10), node.output
        client = Client(ns, name=f"{ns.strip('/')}_client")
        try:
            assert client.wait_connected(60)
            assert wait_until(lambda: bool(_counts(client)), 10), node.output[-3000:]
            for size in SIZES:
                before = _counts(client)
                client.outputs.clear()
                sent, took = _play(ns, size, seconds, player_env)
                assert wait_until(
                    lambda b=before: _settled(client, b["frames published"], b["frames received"]), 120
                ), (
                    _counts(client),
                    len(client.outputs),
                    node.output[-3000:],
                )
                after = _counts(client)
                d = {k: after[k] - before[k] for k in after}
                line = (
                    f"{size[0]}x{size[1]}: sent {sent} in {took:.1f} s ({sent / took:.1f} Hz); node received "
                    f"{d['frames received']}, lost in transport {d['frames lost in transport']}, published "
                    f"{d['frames published']} ({d['frames published'] / took:.1f} Hz), dropped for a newer frame "
                    f"{d['frames dropped']}"
                )
                lines.append(line)
                print("\n" + line)
                assert d["frames received"] >= 0.9 * sent, line
                assert d["frames received"] <= sent, line
                # its processing rate: whatever it received was published or replaced by a newer frame …
                assert (
                    d["frames received"]
                    == d["frames published"]
                    + d["frames dropped"]
                    + d["frames without camera_info"]
                    + d["frames without scale"]
                ), line
                assert d["frames published"] > 0, line
                # … and what it published arrived here (reliable output), each a frame that was sent at this size
                depths = [o["depth"] for o in client.outputs.values() if "depth" in o]
                assert len(depths) == d["frames published"], line
            assert node.proc.poll() is None, node.output[-3000:]
        finally:
            client.close()
    assert "Traceback" not in node.output
    return lines


def test_large_frames_from_a_stock_publisher_with_the_default_profile(ros) -> None:
    limit = dds.rmem_max()
    if limit is not None and limit < dds.RMEM_MAX_ADVISED:
        pytest.skip(
            f"net.core.rmem_max is {limit} B, below the {dds.RMEM_MAX_ADVISED} B that 1920x1080 frames over UDP need "
            f"(host tuning: sudo sysctl -w net.core.rmem_max={dds.UDP_RECEIVE_BUFFER}); the shared-memory test covers "
            "this host"
        )
    # no DDS configuration anywhere: the node picks its default profile itself, the player stays stock
    _delivery("/lf_udp", _stock_env(), _stock_env(), 10.0, REPO / "config" / "dds" / "fastdds_udp.xml")


def test_large_frames_with_the_shm_profile_on_both_sides(ros) -> None:
    shm = dds.profile_path("shm")
    node_env = _stock_env(**{dds.ENV: "shm"})
    _delivery("/lf_shm", node_env, _stock_env(FASTRTPS_DEFAULT_PROFILES_FILE=str(shm)), 5.0, shm)


def test_frames_lost_in_transport_are_counted_and_reported(ros, tmp_path: Path) -> None:
    """A user's profile with a 208 KiB socket buffer: 1280x720 frames (2.8 MB) get lost, and the node says so."""
    text = (REPO / "config" / "dds" / "fastdds_udp.xml").read_text()
    small = tmp_path / "small_buffer.xml"
    small.write_text(
        text.replace("<receiveBufferSize>33554432</receiveBufferSize>", "<receiveBufferSize>212992</receiveBufferSize>")
    )
    node_env = _stock_env(FASTRTPS_DEFAULT_PROFILES_FILE=str(small))
    ns = "/lf_lost"
    with NodeProcess("-r", f"__ns:={ns}", *NODE_ARGS, env=node_env) as node:
        assert node.wait_for_line("ready:", 90), node.output
        assert node.wait_for_line(f"DDS: your Fast DDS configuration (FASTRTPS_DEFAULT_PROFILES_FILE={small})", 10)
        client = Client(ns, name="lf_lost_client")
        try:
            assert client.wait_connected(60)
            sent, _ = _play(ns, (1280, 720), 4.0, _stock_env())
            assert wait_until(lambda: _counts(client).get("frames lost in transport", 0) > 0, 10), (
                sent,
                _counts(client),
                node.output[-3000:],
            )
            warned = [s for s in client.diag if s.level == DiagnosticStatus.WARN and "lost in transport" in s.message]
            assert warned, [s.message for s in client.diag]
            c = _counts(client)
            received, lost = c["frames received"], c["frames lost in transport"]
            print(f"\nsmall buffer, 1280x720: sent {sent}, received {received}, lost {lost}")
            assert received + lost <= sent
            assert node.wait_for_line("lost in transport", 5), node.output[-3000:]
        finally:
            client.close()
    assert "Traceback" not in node.output


def test_dds_configure_never_overrides_a_users_configuration(tmp_path: Path) -> None:
    env = {}
    setup = dds.configure(env, cwd=tmp_path)
    assert setup.profile == dds.profile_path("udp") and env["FASTRTPS_DEFAULT_PROFILES_FILE"] == str(setup.profile)
    env = {dds.ENV: "shm"}
    assert dds.configure(env, cwd=tmp_path).profile == dds.profile_path("shm")
    for user in (
        {"FASTRTPS_DEFAULT_PROFILES_FILE": "/mine.xml"},
        {"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"},
        {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"},
        {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"},
        {dds.ENV: "off"},
    ):
        env = dict(user)
        setup = dds.configure(env, cwd=tmp_path)
        assert setup.profile is None and env == user, user
    (tmp_path / "DEFAULT_FASTRTPS_PROFILES.xml").write_text("<profiles/>")
    env = {}
    assert dds.configure(env, cwd=tmp_path).profile is None and env == {}
    with pytest.raises(dds.DdsProfileError, match="DUALDEPTH_DDS_PROFILE must be one of udp, shm, off"):
        dds.configure({dds.ENV: "tcp"}, cwd=tmp_path)


def test_stats_separate_frames_lost_in_transport_from_frames_replaced_in_the_queue() -> None:
    from dualdepth_ros.ros.diagnostics import NodeStats, diagnostic_status

    stats = NodeStats(window=5.0)
    for seq in (1, 2, 6):  # the publisher's frames 3, 4, 5 never reached the callback …
        stats.received(time.monotonic(), seq)
    stats.lost(1)  # … DDS reported one of them lost in transport: the other two were replaced in the queue
    snap = stats.snapshot()
    assert (snap["received"], snap["lost"], snap["dropped"], snap["dropped_in_queue"]) == (5, 1, 2, 2)
    assert snap["recent_lost"] == 1
    status = diagnostic_status("n: depth", "cpu", snap, {"name": "fake"}, {"mode": "none"}, {"loss_reporting": True})
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.WARN and "1 frame(s) lost in transport" in status.message
    assert values["frames lost in transport"] == "1" and values["frames replaced in the DDS queue"] == "2"
    stats.received(time.monotonic(), 1)  # a publisher restarted: its numbers start again, nothing counted
    assert stats.snapshot()["received"] == 6
    old = NodeStats(window=0.05)
    old.lost(3, t=time.monotonic() - 1.0)  # losses older than the window no longer warn
    snap = old.snapshot()
    assert snap["recent_lost"] == 0 and snap["lost"] == 3
    status = diagnostic_status("n: depth", "cpu", snap, {"name": "fake"}, {"mode": "none"}, {"loss_reporting": False})
    assert status.level == DiagnosticStatus.OK
    assert {kv.key: kv.value for kv in status.values}["frames lost in transport"] == "unknown"
