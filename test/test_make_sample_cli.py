"""``dualdepth make-sample``: real rosbag2 output, bit-exact round trips, refusals, atomicity, the committed sample."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from dualdepth_ros import bagio, cli
from dualdepth_ros.images import decode_image, decode_rgb
from dualdepth_ros.synth import World, record, render_frame

SMALL = ["--frames", "3", "--width", "64", "--height", "32", "--seed", "5"]


def _config_of(argv: list[str]):
    """The SynthConfig the CLI builds for ``argv`` (same parser, same defaults)."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    record.add_arguments(sub.choices["make-sample"])
    args = parser.parse_args(["make-sample", *argv])
    return record.config_from_args(args), args


@pytest.mark.parametrize(
    ("fmt", "compressed"), [("mcap", False), ("mcap", True), ("sqlite3", False), ("sqlite3", True)]
)
def test_round_trip_is_bit_exact(tmp_path, fmt, compressed, capsys):
    out = tmp_path / "bag"
    argv = ["--out", str(out), *SMALL, "--format", fmt, "--distortion"] + (["--compressed"] if compressed else [])
    assert cli.main(["make-sample", *argv]) == 0
    assert "wrote" in capsys.readouterr().out
    cfg, _ = _config_of(argv)
    world = World.from_seed(5, cfg)
    expected = [render_frame(world, cfg.frame_time(i)) for i in range(3)]

    msgs: dict[str, list] = {}
    for m in bagio.read_messages(out):
        msgs.setdefault(m.topic, []).append(m)
    image_topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    topics = {image_topic, "/camera/camera_info", "/gt/depth", "/gt/camera_info", "/gt/moving_mask", "/gt/pose"}
    assert set(msgs) == topics and all(len(v) == 3 for v in msgs.values())
    K = cfg.intrinsics().matrix()
    for i, f in enumerate(expected):
        stamps = {bagio.stamp_to_ns(msgs[t][i].msg.header.stamp) for t in topics} | {
            msgs[t][i].timestamp_ns for t in topics
        }
        assert stamps == {f.stamp_ns}
        img = msgs[image_topic][i].msg
        if compressed:
            assert "png" in img.format
            np.testing.assert_array_equal(decode_rgb(img), f.rgb)
        else:
            assert img.encoding == "rgb8"
            np.testing.assert_array_equal(decode_image(img), f.rgb)
        depth = msgs["/gt/depth"][i].msg
        assert depth.encoding == "32FC1" and decode_image(depth).tobytes() == f.depth.tobytes()
        mask = decode_image(msgs["/gt/moving_mask"][i].msg)
        np.testing.assert_array_equal(mask, f.moving_mask.astype(np.uint8) * 255)
        np.testing.assert_allclose(bagio.pose_to_matrix(msgs["/gt/pose"][i].msg), f.T_cam_to_world, atol=1e-12)
        assert msgs["/gt/pose"][i].msg.header.frame_id == "world"
        info = msgs["/camera/camera_info"][i].msg
        assert info.header == img.header and info.header.frame_id == "camera_optical_frame"
        assert (info.width, info.height, info.distortion_model) == (64, 32, "plumb_bob")
        np.testing.assert_array_equal(info.k, K.reshape(-1))
        np.testing.assert_array_equal(info.d, f.distortion)
        np.testing.assert_array_equal(info.p, np.hstack([K, np.zeros((3, 1))]).reshape(-1))
        gt_info = msgs["/gt/camera_info"][i].msg
        assert not np.any(gt_info.d) and np.array_equal(gt_info.k, info.k)
    readme = (out / "README.md").read_text()
    assert f"--out {out}" in readme and "--distortion" in readme and f"--format {fmt}" in readme


def test_json_summary_and_overwrite(tmp_path, capsys):
    out = tmp_path / "bag"
    assert cli.main(["make-sample", "--out", str(out), *SMALL, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 3 and summary["bytes"] == bagio.bag_size(out) > 0
    assert summary["storage"] == "mcap" and "/gt/depth" in summary["topics"]
    assert summary["duration_s"] == pytest.approx(0.2)
    first = (out / "bag.mcap").read_bytes()
    # Same seed again with --overwrite: identical bag content, proving determinism end to end.
    assert cli.main(["make-sample", "--out", str(out), *SMALL, "--overwrite"]) == 0
    assert (out / "bag.mcap").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


def test_non_empty_output_is_refused_and_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("do not touch")
    assert cli.main(["make-sample", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "do not touch"
    # --overwrite never deletes something that is not a bag.
    assert cli.main(["make-sample", "--out", str(out), *SMALL, "--overwrite"]) == 2
    assert "does not look like a rosbag2" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--width", "0"], "must be positive"),
        (["--height", "-4"], "must be positive"),
        (["--width", "8"], "at least 16x16"),
        (["--width", "20000", "--height", "20000"], "too large"),
        (["--frames", "0"], "--frames must be between"),
        (["--format", "bag"], "unknown --format 'bag'"),
        (["--stop", "soon"], "--stop expects AT:FOR"),
        (["--fps", "0"], "--fps must be positive"),
        (["--speed", "-1"], "speed must be in"),
    ],
)
def test_invalid_options_exit_2_with_a_clear_message(tmp_path, capsys, extra, match):
    out = tmp_path / "bag"
    assert cli.main(["make-sample", "--out", str(out), *SMALL, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and "Traceback" not in err
    assert not out.exists()


def test_failure_mid_write_leaves_no_bag(tmp_path, monkeypatch):
    out = tmp_path / "bag"
    calls = {"n": 0}
    real = record.render_frame

    def flaky(world, t):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("renderer crashed")
        return real(world, t)

    monkeypatch.setattr(record, "render_frame", flaky)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        cli.main(["make-sample", "--out", str(out), *SMALL])
    assert list(tmp_path.iterdir()) == []  # neither the bag nor its temporary directory

    def interrupted(world, t):
        raise KeyboardInterrupt

    monkeypatch.setattr(record, "render_frame", interrupted)
    assert cli.main(["make-sample", "--out", str(out), *SMALL]) == 130
    assert list(tmp_path.iterdir()) == []


def test_executable_reports_errors_without_traceback(tmp_path, dualdepth_exe):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    proc = subprocess.run(
        [*dualdepth_exe, "make-sample", "--out", str(out), *SMALL], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: output directory") and "Traceback" not in proc.stderr


def test_auto_stop_only_for_long_drives():
    assert record.auto_stops(40, 10.0) == ()
    ((at, dur),) = record.auto_stops(100, 10.0)
    assert (at, dur) == (4.0, 1.0)


def test_committed_sample_drive(sample_bag):
    """The bundled bag: small, complete, with a standstill, traffic and a lead car at ego speed."""
    assert bagio.bag_size(sample_bag) <= 20e6
    readme = (sample_bag / "README.md").read_text()
    assert "dualdepth make-sample --out test/data/sample_drive" in readme
    poses, masks, counts, frame10 = [], [], {}, {}
    for m in bagio.read_messages(sample_bag, ["/gt/pose", "/gt/moving_mask", "/camera/image_raw", "/gt/depth"]):
        counts[m.topic] = counts.get(m.topic, 0) + 1
        if m.topic == "/gt/pose":
            poses.append(bagio.pose_to_matrix(m.msg))
        elif m.topic == "/gt/moving_mask":
            masks.append(decode_image(m.msg) > 0)
        if counts[m.topic] == 11 and m.topic != "/gt/pose":
            frame10[m.topic] = decode_image(m.msg)
    n = len(poses)
    assert n >= 80 and set(counts.values()) == {n}
    steps = np.array([np.linalg.norm(b[:3, 3] - a[:3, 3]) for a, b in zip(poses, poses[1:])])
    still = steps < 1e-9
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], still.astype(int), [0]]))))[::2]
    assert runs.size and runs.max() >= 3, "no stretch of at least 3 identical consecutive poses"
    assert steps.max() > 0.5  # it does drive
    assert all(m.any() for m in masks)  # the lead car is always in view
    assert np.mean([m.mean() for m in masks]) > 0.005
    # The bag is what the current generator makes from the recorded command (re-record it with
    # `make sample` after changing the renderer). Not bit-exact on purpose: numpy's SIMD maths may
    # differ in the last bit between CPUs.
    cfg, args = _config_of(readme.split("```")[1].split()[2:])
    frame = render_frame(World.from_seed(args.seed, cfg), cfg.frame_time(10))
    np.testing.assert_allclose(frame10["/gt/depth"], frame.depth, rtol=1e-4)
    assert np.abs(frame10["/camera/image_raw"].astype(int) - frame.rgb).mean() < 0.5
    np.testing.assert_allclose(poses[10], frame.T_cam_to_world, atol=1e-9)
