"""``dualdepth kitti-to-bag``: a KITTI raw drive folder that the test writes itself, converted and checked.

The drive has 5 frames of 166×50 (KITTI's aspect, so ``dualdepth eval`` picks the kitti
protocol), hand-placed Velodyne points whose pixels and depths are known, and oxts records
with known motion: 1 m east, then 2 m east turned 90° left. Frame 2 has no Velodyne scan and
frame 4 no oxts record. Expected values are worked out by hand below (or through the inverse
of each calibration step), not with the module's own composition.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from small_model import write_small_checkpoint

from dualdepth_ros import bagio, cli
from dualdepth_ros.data import kitti
from dualdepth_ros.images import decode_image, decode_rgb

W, H = 166, 50
F, CX, CY = 100.0, 83.0, 25.0
BASELINE = 0.06  # camera 2 sits 6 cm left of camera 0: P_rect_02[0, 3] = f · 0.06
# Velodyne (x forward, y left, z up) → camera 0 (x right, y down, z forward), lever arm T.
R_SWAP = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
T_VELO_CAM = np.array([0.0, -0.08, -0.27])
T_IMU_VELO = np.array([-0.8, 0.3, -0.8])  # IMU → Velodyne: no rotation
FIRST_STAMP = "2011-09-26 13:08:24.967930880"
FIRST_NS = 1317042504967930880  # the first stamp of ../shared/data/kitti_raw_0009 (image_02, read as UTC)
FRAME_NS = [FIRST_NS + i * 103_500_000 for i in range(5)]
LAT0, LON0, ALT0 = 49.0, 8.4, 110.0
EARTH = 6378137.0

# The real calibration of the KITTI raw day 2011_09_26 (the day of the shared drive kitti_raw_0009).
REAL_CAM_TO_CAM = """calib_time: 09-Jan-2012 13:57:47
corner_dist: 9.950000e-02
S_rect_00: 1.242000e+03 3.750000e+02
R_rect_00: 9.999239e-01 9.837760e-03 -7.445048e-03 -9.869795e-03 9.999421e-01 -4.278459e-03 7.402527e-03 \
4.351614e-03 9.999631e-01
P_rect_00: 7.215377e+02 0.000000e+00 6.095593e+02 0.000000e+00 0.000000e+00 7.215377e+02 1.728540e+02 \
0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
S_rect_02: 1.242000e+03 3.750000e+02
P_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 1.728540e+02 \
2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03
"""
REAL_VELO_TO_CAM = """calib_time: 15-Mar-2012 11:37:16
R: 7.533745e-03 -9.999714e-01 -6.166020e-04 1.480249e-02 7.280733e-04 -9.998902e-01 9.998621e-01 7.523790e-03 \
1.480755e-02
T: -4.069766e-03 -7.631618e-02 -2.717806e-01
delta_f: 0.000000e+00 0.000000e+00
delta_c: 0.000000e+00 0.000000e+00
"""
REAL_IMU_TO_VELO = """calib_time: 25-May-2012 16:47:16
R: 9.999976e-01 7.553071e-04 -2.035826e-03 -7.854027e-04 9.998898e-01 -1.482298e-02 2.024406e-03 1.482454e-02 \
9.998881e-01
T: -8.086759e-01 3.195559e-01 -7.997231e-01
"""


def _fmt(values) -> str:
    return " ".join(f"{v:.9e}" for v in np.asarray(values, dtype=np.float64).reshape(-1))


def write_calib(folder: Path, R_rect=None, width: int = W, height: int = H) -> None:
    R_rect = np.eye(3) if R_rect is None else R_rect
    P = np.array([[F, 0, CX, F * BASELINE], [0, F, CY, 0], [0, 0, 1, 0]])
    (folder / "calib_cam_to_cam.txt").write_text(
        f"calib_time: 09-Jan-2012 13:57:47\nS_rect_02: {width} {height}\nR_rect_00: {_fmt(R_rect)}\n"
        f"P_rect_02: {_fmt(P)}\n"
    )
    (folder / "calib_velo_to_cam.txt").write_text(f"calib_time: x\nR: {_fmt(R_SWAP)}\nT: {_fmt(T_VELO_CAM)}\n")
    (folder / "calib_imu_to_velo.txt").write_text(f"R: {_fmt(np.eye(3))}\nT: {_fmt(T_IMU_VELO)}\n")


def cam2_to_velo(X_cam2: np.ndarray, R_rect=None) -> np.ndarray:
    """Undo each calibration step in turn: camera 2 → rectified camera 0 → camera 0 → Velodyne."""
    X_rect0 = X_cam2 - np.array([BASELINE, 0.0, 0.0])
    X_cam0 = X_rect0 if R_rect is None else np.linalg.inv(R_rect) @ X_rect0
    return R_SWAP.T @ (X_cam0 - T_VELO_CAM)


def at_pixel(u: float, v: float, z: float, R_rect=None) -> np.ndarray:
    """The Velodyne point that camera 2 sees at pixel coordinates ``(u, v)`` and depth ``z``."""
    return cam2_to_velo(np.array([(u - CX) * z / F, (v - CY) * z / F, z]), R_rect)


# Hand-placed points of frame 0: (column, row) of the depth image, depth. KITTI's devkit puts a
# point at pixel coordinates (u, v) into column round(u) − 1 and row round(v) − 1.
HAND = [
    (40, 30, 10.0),
    (40, 30, 7.5),  # the same pixel, nearer: wins
    (40, 30, 12.0),  # the same pixel, farther: loses
    (0, 20, 5.0),  # first column
    (W - 1, H - 1, 6.0),  # last column, last row
    (100, 35, 70.0),  # beyond 65.535 m
]


def frame0_points(R_rect=None) -> np.ndarray:
    pts = [at_pixel(c + 1, r + 1, z, R_rect) for c, r, z in HAND]
    pts[1] = at_pixel(40 + 1.3, 30 + 0.8, 7.5, R_rect)  # still rounds to the same pixel
    pts.append(at_pixel(0.4, 10, 8.0, R_rect))  # round(0.4) − 1 = −1: left of the image
    pts.append(at_pixel(W + 5, 10, 8.0, R_rect))  # right of the image
    pts.append(np.array([-5.0, 0.0, 0.0]))  # behind the Velodyne
    pts.append(np.array([-5.0, 0.3, 0.1]))
    return np.array(pts)


def road_points(rng: np.random.Generator) -> np.ndarray:
    """A road 1.73 m below the Velodyne plus a wall 30 m ahead: depth for the evaluation."""
    x, y = rng.uniform(4.0, 60.0, 3000), rng.uniform(-8.0, 8.0, 3000)
    road = np.stack([x, y, np.full_like(x, -1.73)], axis=1)
    wy, wz = rng.uniform(-10, 10, 800), rng.uniform(-1.7, 2.0, 800)
    wall = np.stack([np.full_like(wy, 30.0), wy, wz], axis=1)
    return np.concatenate([road, wall])


def oxts_line(east: float, yaw: float) -> str:
    """An oxts record ``east`` metres east of the start (at LAT0, LON0), heading ``yaw`` (0: east)."""
    scale = np.cos(np.deg2rad(LAT0))
    lon = LON0 + np.rad2deg(east / (scale * EARTH))
    values = [LAT0, lon, ALT0, 0.0, 0.0, yaw] + [0.0] * 24
    return " ".join(f"{v:.12f}" for v in values)


OXTS = {0: oxts_line(0.0, 0.0), 1: oxts_line(1.0, 0.0), 2: oxts_line(1.5, 0.0), 3: oxts_line(2.0, np.pi / 2)}


def _stamp_text(ns: int) -> str:
    # FIRST_STAMP plus whole nanoseconds, written the way KITTI writes them.
    seconds, frac = divmod(ns - FIRST_NS + 967930880, 1_000_000_000)
    return f"2011-09-26 13:08:{24 + seconds:02d}.{frac:09d}"


def write_drive(root: Path, R_rect=None, width: int = W, height: int = H, seed: int = 0) -> tuple[Path, list]:
    """A 5-frame KITTI raw day folder ``root/2011_09_26`` with one ``*_sync`` drive; returns (drive, images)."""
    rng = np.random.default_rng(seed)
    day = root / "2011_09_26"
    drive = day / "2011_09_26_drive_0001_sync"
    for sub in ("image_02/data", "velodyne_points/data", "oxts/data"):
        (drive / sub).mkdir(parents=True)
    write_calib(day, R_rect, width, height)
    assert _stamp_text(FIRST_NS) == FIRST_STAMP
    (drive / "image_02" / "timestamps.txt").write_text("".join(_stamp_text(ns) + "\n" for ns in FRAME_NS))
    (drive / "oxts" / "timestamps.txt").write_text("".join(_stamp_text(ns) + "\n" for ns in FRAME_NS))
    images = []
    for i in range(5):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        cv2.imwrite(str(drive / "image_02" / "data" / f"{i:010d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        images.append(rgb)
        if i != 2:  # frame 2: no Velodyne scan
            pts = frame0_points(R_rect) if i == 0 else road_points(rng)
            scan = np.hstack([pts, np.ones((len(pts), 1))]).astype("<f4")
            (drive / "velodyne_points" / "data" / f"{i:010d}.bin").write_bytes(scan.tobytes())
        if i in OXTS:  # frame 4: no oxts record
            (drive / "oxts" / "data" / f"{i:010d}.txt").write_text(OXTS[i] + "\n")
    return drive, images


def convert_cli(*argv: object) -> int:
    return cli.main(["kitti-to-bag", *map(str, argv)])


def by_topic(bag: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in bagio.read_messages(bag):
        out.setdefault(m.topic, []).append(m)
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    drive, images = write_drive(root)
    out = root / "bag"
    assert convert_cli(drive, "--calib", drive.parent, "--out", out, "--png") == 0
    return drive, images, out, by_topic(out)


# ---------------------------------------------------------------------------------------
# The converted drive
# ---------------------------------------------------------------------------------------
def test_topics_counts_and_stamps(converted):
    _, _, out, msgs = converted
    assert {t: len(v) for t, v in msgs.items()} == {
        "/camera/image_raw/compressed": 5,
        "/camera/camera_info": 5,
        "/gt/depth": 4,  # frame 2 has no scan
        "/gt/pose": 4,  # frame 4 has no oxts record
    }
    expected = {"/gt/depth": [0, 1, 3, 4], "/gt/pose": [0, 1, 2, 3]}
    for topic, ms in msgs.items():
        frames = expected.get(topic, range(5))
        assert [m.timestamp_ns for m in ms] == [FRAME_NS[i] for i in frames]
        assert [bagio.stamp_to_ns(m.msg.header.stamp) for m in ms] == [FRAME_NS[i] for i in frames]
        frame_id = "world" if topic == "/gt/pose" else "camera_optical_frame"
        assert {m.msg.header.frame_id for m in ms} == {frame_id}
    assert "KITTI" in (out / "README.md").read_text()


def test_images_are_the_drive_png_files(converted):
    drive, images, _, msgs = converted
    for i, m in enumerate(msgs["/camera/image_raw/compressed"]):
        assert m.msg.format == "rgb8; png compressed bgr8"
        assert m.msg.data.tobytes() == (drive / "image_02" / "data" / f"{i:010d}.png").read_bytes()
        np.testing.assert_array_equal(decode_rgb(m.msg), images[i])


def test_camera_info_is_the_rectified_camera_2(converted):
    for m in converted[3]["/camera/camera_info"]:
        info = m.msg
        assert (info.width, info.height, info.distortion_model) == (W, H, "plumb_bob")
        np.testing.assert_array_equal(info.k, [F, 0, CX, 0, F, CY, 0, 0, 1])
        np.testing.assert_array_equal(info.p, [F, 0, CX, 0, 0, F, CY, 0, 0, 0, 1, 0])  # [K | 0]: camera 2's frame
        np.testing.assert_array_equal(info.r, np.eye(3).reshape(-1))
        np.testing.assert_array_equal(info.d, np.zeros(5))


def test_depth_at_known_pixels_nearest_wins(converted):
    depth_msg = converted[3]["/gt/depth"][0].msg
    assert (depth_msg.encoding, depth_msg.width, depth_msg.height) == ("16UC1", W, H)
    depth = decode_image(depth_msg)
    assert depth.dtype == np.uint16
    assert depth[30, 40] == 7500  # three points, the nearest wins
    assert depth[20, 0] == 5000 and depth[H - 1, W - 1] == 6000
    assert depth[35, 100] == 65535  # 70 m saturates in millimetres
    assert np.count_nonzero(depth) == 4  # nothing from the points outside or behind


def test_depth_of_a_scene_is_metric_z(converted):
    # Frame 1: the wall 30 m ahead of the Velodyne is 30 − 0.27 m ahead of camera 2 (the lever arm of T_VELO_CAM).
    depth = decode_image(converted[3]["/gt/depth"][1].msg).astype(np.float64) / 1000.0
    rows_above_road = depth[: int(CY), :]
    wall = rows_above_road[rows_above_road > 0]
    assert wall.size > 50
    np.testing.assert_allclose(wall, 30.0 - 0.27, atol=0.0015)


def test_poses_of_known_motion(converted):
    poses = [bagio.pose_to_matrix(m.msg) for m in converted[3]["/gt/pose"]]
    np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-9)
    # Frame 1: the car drove 1 m east (its forward): camera 2 moved 1 m along its optical axis.
    np.testing.assert_allclose(poses[1][:3, :3], np.eye(3), atol=1e-7)
    np.testing.assert_allclose(poses[1][:3, 3], [0.0, 0.0, 1.0], atol=1e-4)
    # Frame 3: 2 m east, turned 90° left (now facing north). Camera 2 sits at p = (1.07, −0.24, 0.72) m in the
    # IMU frame (IMU→Velodyne −T = (0.8, −0.3, 0.8), Velodyne→camera 0 (0.27, 0, −0.08), camera 2 is 0.06 m to the
    # left: +y). It moved (2, 0, 0) + Rz(90°)·p − p = (1.17, 1.31, 0) in IMU coordinates; camera axes: x = −y_imu,
    # y = −z_imu, z = x_imu, so (−1.31, 0, 1.17) m, and its optical axis points to the first camera's left (−x).
    np.testing.assert_allclose(poses[3][:3, 3], [-1.31, 0.0, 1.17], atol=1e-4)
    np.testing.assert_allclose(poses[3][:3, 2], [-1.0, 0.0, 0.0], atol=1e-7)  # its z axis in world
    np.testing.assert_allclose(poses[3][:3, 1], [0.0, 1.0, 0.0], atol=1e-7)  # y still down


def test_eval_runs_on_the_converted_drive(converted, tmp_path, capsys):
    ckpt = write_small_checkpoint(tmp_path, tmp_path / "cache")
    out_json = tmp_path / "eval.json"
    rc = cli.main(
        ["eval", "--checkpoint", str(ckpt), "--bag", str(converted[2]), "--constant-reference", "--json", str(out_json)]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(out_json.read_text())
    assert result["protocol"]["name"] == "kitti"  # KITTI-shaped sparse LiDAR depth: the kitti protocol
    assert (result["n_images"], result["n_skipped"]) == (4, 1)  # frame 2 has no depth
    assert result["bags"][0]["gt_depth_topic"] == "/gt/depth"
    # The constant, median-scaled, by hand: per frame, the GT points inside Garg's crop and the columns the model
    # saw, in (1e-3, 80] m; the prediction becomes their median; AbsRel averaged over frames.
    first, last = result["gt_coverage"]["columns"]
    top, bottom, left, right = (np.array([0.40810811, 0.99189189, 0.03594771, 0.96405229]) * [H, H, W, W]).astype(int)
    per_frame = []
    for m in bagio.read_messages(converted[2], ["/gt/depth"]):
        gt = decode_image(m.msg).astype(np.float64)[top:bottom, max(left, first) : min(right, last)] / 1000.0
        gt = gt[(gt > 1e-3) & (gt <= 80.0)]
        per_frame.append(np.mean(np.abs(np.median(gt) - gt) / gt))
    assert result["median_scaled"]["abs_rel"] == pytest.approx(np.mean(per_frame), rel=1e-6)


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------
def test_every_max_frames_sqlite_raw_and_float_depth(tmp_path, capsys):
    drive, images = write_drive(tmp_path)
    out = tmp_path / "bag"
    rc = convert_cli(
        drive, "--out", out, "--format", "sqlite3", "--raw", "--depth-encoding", "32FC1", "--every", 2,
        "--max-frames", 2, "--json",
    )  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 2 and summary["frames_without_depth"] == [2]
    assert "sqlite3" in (out / "metadata.yaml").read_text()
    msgs = by_topic(out)
    assert [m.timestamp_ns for m in msgs["/camera/image_raw"]] == [FRAME_NS[0], FRAME_NS[2]]
    assert msgs["/camera/image_raw"][0].msg.encoding == "rgb8"
    np.testing.assert_array_equal(decode_image(msgs["/camera/image_raw"][1].msg), images[2])
    assert len(msgs["/gt/depth"]) == 1 and len(msgs["/gt/pose"]) == 2
    depth = decode_image(msgs["/gt/depth"][0].msg)
    assert msgs["/gt/depth"][0].msg.encoding == "32FC1"
    assert depth[35, 100] == pytest.approx(70.0, abs=1e-4) and depth[30, 40] == pytest.approx(7.5, abs=1e-5)
    assert np.isnan(depth[0, 0]) and np.count_nonzero(np.isfinite(depth)) == 4


def test_velodyne_x_depth_and_frames_from_a_split_file(tmp_path, capsys):
    drive, _ = write_drive(tmp_path)
    split = tmp_path / "test_files.txt"
    split.write_text(
        "2011_09_26/2011_09_26_drive_0002_sync 0000000001 l\n"  # another drive
        f"2011_09_26/{drive.name} 0000000003 l\n2011_09_26/{drive.name} 0000000000 l\n"
    )
    out = tmp_path / "bag"
    assert convert_cli(drive, "--out", out, "--frames-from", split, "--depth-value", "velodyne-x") == 0
    assert "2 frames" in capsys.readouterr().out
    msgs = by_topic(out)
    assert [m.timestamp_ns for m in msgs["/camera/camera_info"]] == [FRAME_NS[0], FRAME_NS[3]]
    depth = decode_image(msgs["/gt/depth"][0].msg)
    # The Eigen ground truth's value: the Velodyne's forward x, here the camera's z + 0.27 m (T_VELO_CAM's lever arm).
    assert depth[30, 40] == 7770 and depth[20, 0] == 5270 and depth[H - 1, W - 1] == 6270
    assert np.count_nonzero(depth) == 4


@pytest.mark.parametrize(
    ("lines", "extra", "needle"),
    [
        ("2011_09_26/2011_09_26_drive_0002_sync 0000000001 l\n", [], "lists no frame of"),
        ("2011_09_26/DRIVE 0000000009 l\n", [], "which has no image_02/data/0000000009.png"),
        ("2011_09_26/DRIVE 0000000001 r\n", [], "right camera"),
        ("2011_09_26/DRIVE one l\n", [], "line 1"),
        ("2011_09_26/DRIVE 0000000001 l\n", ["--every", "2"], "contradict"),
    ],
)
def test_bad_split_files(tmp_path, capsys, lines, extra, needle):
    drive, _ = write_drive(tmp_path)
    split = tmp_path / "split.txt"
    split.write_text(lines.replace("DRIVE", drive.name))
    assert convert_cli(drive, "--out", tmp_path / "bag", "--frames-from", split, *extra) == 2
    assert needle in one_error_line(capsys)
    assert not (tmp_path / "bag").exists()


def test_default_is_jpeg_q95_and_calib_defaults_to_the_day_folder(tmp_path, capsys, monkeypatch):
    drive, images = write_drive(tmp_path)
    out = tmp_path / "bag"
    monkeypatch.chdir(drive / "image_02")
    assert convert_cli("..", "--out", out, "--max-frames", 1) == 0  # the drive as "..": its parent is the day
    assert "wrote" in capsys.readouterr().out
    img = by_topic(out)["/camera/image_raw/compressed"][0].msg
    assert img.format == "rgb8; jpeg compressed bgr8"
    assert bytes(img.data[:2]) == b"\xff\xd8"
    ok = cv2.imdecode(np.frombuffer(img.data.tobytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert ok.shape == (H, W, 3)


def test_rectification_rotation_enters_depth_and_pose(tmp_path):
    # R_rect_00 a 3° rotation about x: points placed through its inverse still land on their pixels.
    a = np.deg2rad(3.0)
    R_rect = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    write_calib(tmp_path, R_rect)
    calib = kitti.load_calibration(tmp_path)
    depth = kitti.velodyne_depth(frame0_points(R_rect), calib)
    assert depth[30, 40] == pytest.approx(7.5, abs=1e-5) and depth[35, 100] == pytest.approx(70.0, abs=1e-4)
    assert np.count_nonzero(depth) == 4
    # Driving straight forward moves camera 2 along R_rect·(0, 0, 1) of its first frame.
    records = [np.array([float(v) for v in OXTS[i].split()]) for i in (0, 1)]
    poses = kitti.camera_poses(records, calib)
    np.testing.assert_allclose(poses[1][:3, 3], R_rect @ [0.0, 0.0, 1.0], atol=1e-4)


def test_real_calibration_gives_the_shared_drive_camera_info(tmp_path):
    for name, text in zip(kitti.CALIB_FILES, (REAL_CAM_TO_CAM, REAL_VELO_TO_CAM, REAL_IMU_TO_VELO)):
        (tmp_path / name).write_text(text)
    calib = kitti.load_calibration(tmp_path)
    assert (calib.width, calib.height) == (1242, 375)
    # ../shared/data/kitti_raw_0009/README.md: fx = fy = 721.5377, cx = 609.5593, cy = 172.8540.
    np.testing.assert_array_equal(calib.K, [[721.5377, 0, 609.5593], [0, 721.5377, 172.854], [0, 0, 1]])
    # P_rect_02 = K·[I | t]: t = K⁻¹·P[:, 3] = ((44.85728 − 609.5593·0.002745884) / 721.5377, …, 0.002745884):
    # camera 2 is 5.98 cm left of camera 0 (KITTI's T_02 before rectification: 5.956621e-02 m).
    t = calib.T_rect0_to_cam[:3, 3]
    assert t[0] == pytest.approx((44.85728 - 609.5593 * 2.745884e-3) / 721.5377, rel=1e-9)
    assert t[0] == pytest.approx(0.0598, abs=1e-4) and t[2] == pytest.approx(2.745884e-3, rel=1e-9)


def test_oxts_orientation_and_northward_motion():
    # roll a about x, pitch b about y, yaw c about z (x forward, y left, z up): R = Rz(c)·Ry(b)·Rx(a). By hand, the
    # forward axis is (cos b cos c, cos b sin c, −sin b) and, at c = 0, the left axis (sin a sin b, cos a, sin a cos b).
    a, b, c = 0.1, -0.2, 0.7
    start = np.array([LAT0, LON0, ALT0, a, b, c] + [0.0] * 24)
    north = start.copy()
    north[0] += np.rad2deg(5.0 / EARTH)  # 5 m north: Mercator y with the scale cos(lat₀) grows by R·δlat here
    north[2] += 0.5
    T0, T1 = kitti.oxts_imu_poses([start, north])
    np.testing.assert_allclose(T0[:3, 0], [np.cos(b) * np.cos(c), np.cos(b) * np.sin(c), -np.sin(b)], atol=1e-12)
    np.testing.assert_allclose(T1[:3, 3] - T0[:3, 3], [0.0, 5.0, 0.5], atol=1e-5)
    level = kitti.rotation_rpy(a, b, 0.0)
    np.testing.assert_allclose(level[:, 1], [np.sin(a) * np.sin(b), np.cos(a), np.sin(a) * np.cos(b)], atol=1e-12)


def test_timestamps_are_exact_nanoseconds_utc():
    assert kitti.parse_timestamp(FIRST_STAMP) == FIRST_NS
    assert kitti.parse_timestamp("2011-09-26 13:08:24.5") == FIRST_NS - 467930880
    assert kitti.parse_timestamp("1970-01-01 00:00:01") == 1_000_000_000
    with pytest.raises(ValueError):
        kitti.parse_timestamp("2011-09-26T13:08:24")


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti_raw_0009" / "bag"


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/kitti_raw_0009 is not in this clone")
def test_same_conventions_as_the_shared_kitti_drive(tmp_path):
    """Topics, types, encodings, frame ids, camera_info and per-frame order equal the shared drive's."""
    day = tmp_path / "2011_09_26"
    drive = day / "2011_09_26_drive_0009_sync"
    (drive / "image_02" / "data").mkdir(parents=True)
    for name, text in zip(kitti.CALIB_FILES, (REAL_CAM_TO_CAM, REAL_VELO_TO_CAM, REAL_IMU_TO_VELO)):
        (day / name).write_text(text)
    (drive / "image_02" / "timestamps.txt").write_text(f"{FIRST_STAMP}\n")
    cv2.imwrite(str(drive / "image_02" / "data" / "0000000000.png"), np.full((375, 1242, 3), 90, np.uint8))
    (drive / "velodyne_points" / "data").mkdir(parents=True)
    (drive / "velodyne_points" / "data" / "0000000000.bin").write_bytes(
        np.array([[10.0, 0.0, -1.0, 1.0]], "<f4").tobytes()
    )
    (drive / "oxts" / "data").mkdir(parents=True)
    (drive / "oxts" / "data" / "0000000000.txt").write_text(OXTS[0])
    out = tmp_path / "bag"
    kitti.convert(drive, out, progress=False)
    ours = [(m.topic, m.msgtype, m.timestamp_ns, m.msg) for m in bagio.read_messages(out)]
    theirs = []
    for m in bagio.read_messages(SHARED):
        if len(theirs) == len(ours):
            break
        theirs.append((m.topic, m.msgtype, m.timestamp_ns, m.msg))
    assert [t[:3] for t in ours] == [t[:3] for t in theirs]  # same topics, types, order and the same first stamp
    for (topic, _, _, a), (_, _, _, b) in zip(ours, theirs):
        assert (a.header.stamp.sec, a.header.stamp.nanosec, a.header.frame_id) == (
            b.header.stamp.sec, b.header.stamp.nanosec, b.header.frame_id,
        ), topic  # fmt: skip
        if topic == "/camera/camera_info":
            for field in ("width", "height", "distortion_model", "binning_x", "binning_y"):
                assert getattr(a, field) == getattr(b, field), field
            roi = ("x_offset", "y_offset", "height", "width", "do_rectify")
            assert [getattr(a.roi, f) for f in roi] == [getattr(b.roi, f) for f in roi]
            for field in ("d", "k", "r", "p"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        elif topic == "/gt/depth":
            assert (a.encoding, a.width, a.height, a.step, a.is_bigendian) == (
                b.encoding, b.width, b.height, b.step, b.is_bigendian,
            )  # fmt: skip
        elif topic == "/camera/image_raw/compressed":
            assert a.format == b.format
        else:
            np.testing.assert_allclose(bagio.pose_to_matrix(a), bagio.pose_to_matrix(b), atol=1e-6)  # identity


# ---------------------------------------------------------------------------------------
# Refusals: one line, nothing lost
# ---------------------------------------------------------------------------------------
def test_out_refusals_keep_what_was_there(tmp_path, capsys):
    drive, _ = write_drive(tmp_path)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert convert_cli(drive, "--out", folder) == 2
    assert "not empty" in one_error_line(capsys)
    assert convert_cli(drive, "--out", folder, "--overwrite") == 2
    assert "does not look like a rosbag2" in one_error_line(capsys)
    assert (folder / "keep.txt").read_text() == "mine" and len(list(folder.iterdir())) == 1
    bag = tmp_path / "bag"
    assert convert_cli(drive, "--out", bag, "--max-frames", 1) == 0
    assert convert_cli(drive, "--out", bag, "--overwrite", "--max-frames", 2) == 0
    assert len(by_topic(bag)["/camera/camera_info"]) == 2


def _break(drive: Path, what: str) -> str:
    """Damage the drive; return a word the error line must contain."""
    day = drive.parent
    if what == "velodyne":
        (drive / "velodyne_points" / "data" / "0000000003.bin").write_bytes(b"\0" * 17)
        return "0000000003.bin"
    if what == "oxts":
        (drive / "oxts" / "data" / "0000000001.txt").write_text("49.0 8.4 110.0")
        return "0000000001.txt"
    if what == "calib":
        (day / "calib_velo_to_cam.txt").unlink()
        return "calib_velo_to_cam.txt"
    if what == "calib_entry":
        (day / "calib_cam_to_cam.txt").write_text("S_rect_02: 166 50\nP_rect_02: 1 2 3\n")
        return "P_rect_02"
    if what == "timestamps":
        (drive / "image_02" / "timestamps.txt").write_text(FIRST_STAMP + "\n" + "2011-09-26 13:08:25.1\n")
        return "no timestamp"
    if what == "bad_stamp":
        (drive / "image_02" / "timestamps.txt").write_text("yesterday\n")
        return "line 1"
    if what == "image":
        (drive / "image_02" / "data" / "0000000004.png").write_bytes(b"not a png")
        return "0000000004.png"
    if what == "size":
        cv2.imwrite(str(drive / "image_02" / "data" / "0000000001.png"), np.zeros((40, W, 3), np.uint8))
        return "S_rect_02"
    if what == "extract":
        return "unsynced"
    if what == "not_a_drive":
        (drive / "image_02" / "data").rename(drive / "image_02" / "png")
        return "image_02/data"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what",
    ["velodyne", "oxts", "calib", "calib_entry", "timestamps", "bad_stamp", "image", "size", "not_a_drive", "extract"],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, what):
    drive, _ = write_drive(tmp_path)
    needle = _break(drive, what)
    if what == "extract":
        drive = drive.rename(drive.with_name("2011_09_26_drive_0001_extract"))
    out = tmp_path / "bag"
    assert convert_cli(drive, "--out", out) == 2
    assert needle in one_error_line(capsys)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bag")]
