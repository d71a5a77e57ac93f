"""Which image topic is used: never ground truth, never a silent fallback (:func:`dualdepth_ros.data.select_topics`).

The bags have the layout ``dualdepth make-sample`` records (camera, ``/gt/depth`` 32FC1,
``/gt/camera_info``, ``/gt/moving_mask`` mono8) with the camera stream broken in the three ways
the issue met: absent, in ``yuv422`` (common on USB cameras), or without its camera_info. Before,
``train`` and ``infer`` then trained on / inferred from ``/gt/moving_mask`` with exit 0
("12 images of /gt/moving_mask → 12 depth frames"). Now each is refused with one line that lists
the image topics with their type, encoding and why each is not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_data_bags import K_DEFAULT, PERIOD, T0, H, W, moving_frames

from dualdepth_ros import bagio
from dualdepth_ros.cli import main
from dualdepth_ros.data import Bag, BagError, load_frames, resolve_gt_topics, select_topics
from dualdepth_ros.data.bags import ground_truth_reason
from dualdepth_ros.preprocess import Preprocessor

N = 12
REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "dualdepth_default"


def yuv422_msg(h: int, w: int, stamp: int):
    """A raw ``yuv422`` (UYVY) Image, as ``usb_cam`` publishes by default."""
    return bagio.msg_class(bagio.IMAGE)(
        header=bagio.header(stamp, "cam"),
        height=h,
        width=w,
        encoding="yuv422",
        is_bigendian=0,
        step=2 * w,
        data=np.full(2 * w * h, 128, np.uint8),
    )


def drive(path: Path, camera: str | None = "rgb8", camera_info: bool = True) -> Path:
    """A make-sample-like bag; ``camera``: the camera's encoding (``rgb8``/``yuv422``) or None for no camera."""
    frames = moving_frames(N)
    with bagio.BagWriter(path) as bag:
        if camera:
            bag.add_topic("/camera/image_raw", bagio.IMAGE)
        if camera_info:
            bag.add_topic("/camera/camera_info", bagio.CAMERA_INFO)
        for topic in ("/gt/depth", "/gt/moving_mask"):
            bag.add_topic(topic, bagio.IMAGE)
        bag.add_topic("/gt/camera_info", bagio.CAMERA_INFO)
        for i, rgb in enumerate(frames):
            ts = T0 + i * PERIOD
            if camera == "rgb8":
                bag.write("/camera/image_raw", bagio.image_msg(rgb, "rgb8", ts, "cam"), ts)
            elif camera == "yuv422":
                bag.write("/camera/image_raw", yuv422_msg(H, W, ts), ts)
            if camera_info:
                info = bagio.camera_info_msg(W, H, K_DEFAULT, ts, "cam", D=[0.1, 0.0, 0.0, 0.0, 0.0])
                bag.write("/camera/camera_info", info, ts)
            bag.write("/gt/depth", bagio.image_msg(np.full((H, W), 5.0, np.float32), "32FC1", ts, "cam"), ts)
            mask = np.where(np.arange(W)[None, :] < 20, 255, 0).repeat(H, 0).astype(np.uint8)
            bag.write("/gt/moving_mask", bagio.image_msg(mask, "mono8", ts, "cam"), ts)
            bag.write("/gt/camera_info", bagio.camera_info_msg(W, H, K_DEFAULT, ts, "cam"), ts)
    return path


def _select(path: Path, **kw):
    with Bag(path) as bag:
        return select_topics(bag, **kw)


def _refusal(path: Path, **kw) -> str:
    with pytest.raises(BagError) as info:
        _select(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg  # one line
    return msg


def test_ground_truth_is_recognised_by_name_and_encoding() -> None:
    assert ground_truth_reason("/gt/moving_mask") == "ground truth"
    assert ground_truth_reason("/ground_truth/image") == "ground truth"
    assert ground_truth_reason("/gt/camera_info") == "ground truth"
    assert ground_truth_reason("/seg/moving_mask/compressed") == "a mask"
    assert ground_truth_reason("/camera/depth/image_raw", "16UC1") == "a depth map"
    assert ground_truth_reason("/camera/depth/compressedDepth") == "a depth map"
    for camera in ("/camera/image_raw", "/cam/image_color/compressed", "/camera/camera_info", "/left/image"):
        assert ground_truth_reason(camera, "rgb8") is None


def test_a_good_drive_resolves_the_camera_and_exposes_it(tmp_path: Path) -> None:
    path = drive(tmp_path / "ok")
    sel = _select(path)
    assert (sel.image, sel.camera_info) == ("/camera/image_raw", "/camera/camera_info")
    store = load_frames(path, Preprocessor(32, 24))
    assert (store.topics.image, store.topics.camera_info) == ("/camera/image_raw", "/camera/camera_info")


def test_no_camera_topic_is_refused_not_replaced_by_the_mask(tmp_path: Path) -> None:
    path = drive(tmp_path / "nocam", camera=None, camera_info=False)
    msg = _refusal(path)
    assert "no camera image topic" in msg and "--image-topic" in msg
    assert "/gt/moving_mask (Image, mono8: ground truth)" in msg
    assert "/gt/depth (Image, 32FC1: ground truth)" in msg
    # The mask is still usable where someone asks for it by name.
    assert _select(path, image_topic="/gt/moving_mask").image == "/gt/moving_mask"


def test_an_unsupported_encoding_is_refused_with_the_candidates(tmp_path: Path) -> None:
    path = drive(tmp_path / "yuv", camera="yuv422")
    msg = _refusal(path)
    assert "image topic /camera/image_raw is in encoding 'yuv422', which cannot be decoded" in msg
    assert "/camera/image_raw (Image, yuv422: unsupported encoding)" in msg
    assert "/gt/moving_mask (Image, mono8: ground truth)" in msg
    msg = _refusal(path, image_topic="/camera/image_raw")  # given explicitly: the same refusal
    assert "'yuv422', which cannot be decoded" in msg


def test_a_camera_without_camera_info_is_refused_not_given_the_ground_truth_one(tmp_path: Path) -> None:
    path = drive(tmp_path / "noinfo", camera_info=False)
    msg = _refusal(path)
    assert "no sensor_msgs/CameraInfo topic for /camera/image_raw" in msg
    assert "/gt/camera_info describes ground truth" in msg and "--intrinsics" in msg and "--info-topic" in msg
    sel = _select(path, need_camera_info=False)  # explicit intrinsics: the camera is used
    assert (sel.image, sel.camera_info) == ("/camera/image_raw", None)
    store = load_frames(path, Preprocessor(32, 24, intrinsics="40,40,31.5,23.5"))
    assert store.topics.image == "/camera/image_raw" and len(store) == N


def test_eval_ground_truth_resolution_still_works_on_these_bags(tmp_path: Path) -> None:
    gt = resolve_gt_topics(drive(tmp_path / "ok"))
    assert (gt.gt_depth, gt.gt_moving_mask) == ("/gt/depth", "/gt/moving_mask")


@pytest.mark.parametrize("camera,camera_info", [(None, False), ("yuv422", True), ("rgb8", False)])
def test_infer_and_train_refuse_with_one_line(tmp_path: Path, capsys, camera, camera_info) -> None:
    path = drive(tmp_path / "bag", camera=camera, camera_info=camera_info)
    out = tmp_path / "out"
    args = ["--bag", str(path), "--out", str(out)]
    assert main(["infer", *args, "--model", str(DEFAULT_MODEL), "--backend", "onnxruntime", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bag "), err
    assert "/gt/moving_mask (Image, mono8: ground truth)" in err[0] or "describes ground truth" in err[0]
    assert not out.exists()
    tiny = ["input.width=64", "input.height=32", "model.encoder=resnet10", "model.encoder_width=8"]
    tiny += ["model.decoder_channels=[4,8,8,16,16]", "pose.encoder=resnet10", "pose.encoder_width=8"]
    tiny += ["train.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}"]
    sets = [x for t in tiny for x in ("--set", t)]
    assert main(["train", *args, *sets, "--max-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: bag "), err
    assert not (out / "last.pt").exists()
