"""A runtime given only the shipped ONNX + model.json reproduces ``dualdepth eval``'s per-frame depth
on the sample drive: the same input tensors (model.json's preprocessor on the raw bag messages ==
eval's frame pipeline, bit for bit), the same depth (bounds of test_export.py), the same table.
"""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dualdepth_ros.data import FrameSequence, resolve_gt_topics
from dualdepth_ros.data.bags import Bag, header_stamp_ns
from dualdepth_ros.evaluation import evaluate_sequence
from dualdepth_ros.inference import load_metadata, open_backend
from dualdepth_ros.training.checkpoint import model_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "models" / "dualdepth_default.pt"
SHIPPED = REPO / "models" / "dualdepth_default"


class Recorder(torch.nn.Module):
    """The checkpoint's depth net as eval runs it, keeping every batch's outputs at scale 0."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_branches = net.num_branches
        self.predict_confidence = net.predict_confidence
        self.outputs: list[dict] = []

    def forward(self, images: torch.Tensor) -> dict:
        out = self.net(images)
        self.outputs.append({k: v.numpy().copy() for k, v in out.items() if k != ("features",) and k[-1] == 0})
        return out


class OnnxDepthNet(torch.nn.Module):
    """An ONNX Runtime backend in the shape evaluate_sequence expects of a depth net."""

    def __init__(self, backend) -> None:
        super().__init__()
        self.backend = backend
        self.num_branches = backend.metadata.num_branches
        self.predict_confidence = True
        self.register_buffer("anchor", torch.zeros(1))  # evaluate reads the device from a buffer

    def forward(self, images: torch.Tensor) -> dict:
        r = self.backend.infer(images.numpy())
        out = {("depth_fused", 0): torch.from_numpy(r.depth), ("conf_fused", 0): torch.from_numpy(r.confidence)}
        for b, (d, c) in enumerate(r.branches):
            out[("depth", b, 0)], out[("conf", b, 0)] = torch.from_numpy(d), torch.from_numpy(c)
        return out


def runtime_inputs(md, bag_path: Path) -> list[tuple[int, np.ndarray]]:
    """``(stamp, 3×h×w input)`` of every image of the bag, preprocessed the way the node does."""
    pre = md.preprocessor()
    infos, images = {}, []
    with Bag(bag_path) as bag:
        for topic, log_ns, msg in bag.messages(["/camera/image_raw", "/camera/camera_info"]):
            stamp = header_stamp_ns(msg, log_ns)
            if topic.endswith("camera_info"):
                infos[stamp] = msg
            else:
                images.append((stamp, msg))
    return [(stamp, pre(msg, infos[stamp]).image) for stamp, msg in images]


def test_runtime_reproduces_eval_per_frame_depth(sample_bag) -> None:
    loaded = model_from_checkpoint(CKPT)
    md = load_metadata(SHIPPED)
    inp = loaded.checkpoint["input"]
    # dualdepth eval's frame pipeline (evaluation.cli.run): the checkpoint's data config and input size.
    cfg = dataclasses.replace(loaded.data, resize_mode=inp["resize_mode"], cache_dir=None)
    topics = resolve_gt_topics(sample_bag, preferred={"gt_depth": cfg.gt_depth_topic})
    cfg = dataclasses.replace(
        cfg,
        gt_depth_topic=topics["gt_depth"],
        gt_pose_topic=topics["gt_pose"],
        gt_moving_mask_topic=topics["gt_moving_mask"],
    )
    frames = list(FrameSequence.from_bag(sample_bag, cfg, inp["width"], inp["height"]))
    assert (md.input_width, md.input_height, md.resize_mode) == (inp["width"], inp["height"], inp["resize_mode"])

    # The runtime: model.json's preprocessor on the raw messages gives eval's input tensors exactly.
    runtime = runtime_inputs(md, sample_bag)
    assert [s for s, _ in runtime] == [f.stamp for f in frames]
    for (_, x), f in zip(runtime, frames):
        np.testing.assert_array_equal(x, f.image)

    rec = Recorder(loaded.depth_net)
    ref = evaluate_sequence(SimpleNamespace(depth_net=rec, model=None), frames, with_pose=False, batch_size=10)
    torch_out = {k: np.concatenate([o[k] for o in rec.outputs]) for k in rec.outputs[0]}

    backend = open_backend(SHIPPED, "onnxruntime", per_branch=True, threads=1)
    got = backend.infer(np.stack([x for _, x in runtime]))
    assert got.depth.shape == torch_out[("depth_fused", 0)].shape == (len(frames), 1, md.input_height, md.input_width)
    for b, (d, c) in enumerate(got.branches):
        rd = torch_out[("depth", b, 0)]
        assert np.max(np.abs(d - rd) / rd) <= 1e-4
        assert np.max(np.abs(c - torch_out[("conf", b, 0)])) <= 1e-5
    clear = np.abs(torch_out[("conf", 0, 0)] - torch_out[("conf", 1, 0)]) > 1e-5
    rd = torch_out[("depth_fused", 0)]
    assert clear.mean() > 0.99
    assert np.max((np.abs(got.depth - rd) / rd)[clear]) <= 1e-4

    # And eval's table computed from ONNX Runtime's depth is eval's table.
    mine = evaluate_sequence(SimpleNamespace(depth_net=OnnxDepthNet(backend), model=None), frames, with_pose=False)
    a, b = ref.summary(), mine.summary()
    assert a["n_images"] == b["n_images"] == len(frames)
    for key, value in a["median_scaled"].items():
        assert b["median_scaled"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for metric, value in a["confidence"]["ause"].items():
        assert b["confidence"]["ause"][metric] == pytest.approx(value, rel=1e-3, abs=1e-5), metric
