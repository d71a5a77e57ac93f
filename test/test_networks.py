"""Networks: shapes and ranges, the fusion rule, size limits, pose layout, the exported module."""

import copy

import pytest
import torch

from dualdepth_ros.config import load_config
from dualdepth_ros.geometry import Intrinsics
from dualdepth_ros.networks import (
    BasicBlock,
    DepthModel,
    DepthNet,
    ExportModule,
    PoseNet,
    ResNetEncoder,
    build_depth_net,
    count_flops,
    count_parameters,
    fuse_branches,
)

SMALL = dict(encoder="resnet10", encoder_width=16, decoder_channels=(8, 16, 16, 32, 32))


def test_depth_outputs_at_four_scales_in_range() -> None:
    torch.manual_seed(0)
    net = DepthNet(**SMALL)
    out = net(torch.rand(2, 3, 64, 208))  # 208 is not a multiple of 32: sizes follow the skips
    expected = {0: (64, 208), 1: (32, 104), 2: (16, 52), 3: (8, 26)}
    for s, hw in expected.items():
        for b in range(2):
            d, c = out[("depth", b, s)], out[("conf", b, s)]
            assert d.shape == (2, 1, *hw) and c.shape == (2, 1, *hw)
            assert float(d.min()) >= 1 / 10.01 - 1e-6 and float(d.max()) <= 100.0
            assert float(c.min()) >= 0.0 and float(c.max()) <= 1.0
        assert out[("depth_fused", s)].shape == (2, 1, *hw)
    feats = out[("features",)]
    assert [f.shape[1] for f in feats] == [16, 16, 32, 64, 128]
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 104), (16, 52), (8, 26), (4, 13), (2, 7)]


def test_depth_range_is_0p1_to_100_model_units() -> None:
    net = DepthNet(**SMALL).eval()
    head = net.branches[0].heads["0"]
    with torch.no_grad():  # saturate the head: bias ±50
        head.bias.fill_(50.0)
        near = net(torch.rand(1, 3, 32, 32))[("depth", 0, 0)]
        head.bias.fill_(-50.0)
        far = net(torch.rand(1, 3, 32, 32))[("depth", 0, 0)]
    torch.testing.assert_close(near, torch.full_like(near, 1 / 10.01))
    torch.testing.assert_close(far, torch.full_like(far, 100.0))


def test_fusion_picks_the_more_confident_branch() -> None:
    d0 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    d1 = torch.tensor([[[[10.0, 20.0], [30.0, 40.0]]]])
    c0 = torch.tensor([[[[0.9, 0.1], [0.5, 0.7]]]])
    c1 = torch.tensor([[[[0.2, 0.8], [0.5, 0.6]]]])
    d, c = fuse_branches([d0, d1], [c0, c1])
    torch.testing.assert_close(d, torch.tensor([[[[1.0, 20.0], [3.0, 4.0]]]]))  # tie (0.5) → branch 0
    torch.testing.assert_close(c, torch.tensor([[[[0.9, 0.8], [0.5, 0.7]]]]))
    # gradient reaches only the selected branch's depth
    d0.requires_grad_(True)
    d1.requires_grad_(True)
    fuse_branches([d0, d1], [c0, c1])[0].sum().backward()
    torch.testing.assert_close(d0.grad, torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]]))
    torch.testing.assert_close(d1.grad, torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]]))


def test_single_branch_without_confidence_outputs_ones() -> None:
    net = DepthNet(num_branches=1, predict_confidence=False, **SMALL)
    out = net(torch.rand(1, 3, 32, 64))
    torch.testing.assert_close(out[("conf_fused", 0)], torch.ones(1, 1, 32, 64))
    torch.testing.assert_close(out[("depth_fused", 0)], out[("depth", 0, 0)])
    assert ("conf_logit", 0, 0) not in out
    with pytest.raises(ValueError):
        DepthNet(num_branches=2, predict_confidence=False)


def test_default_model_size_and_init() -> None:
    cfg = load_config()
    net = build_depth_net(cfg.model)
    n = count_parameters(net)
    assert n <= 15_000_000, n
    assert 11_000_000 < count_parameters(net.encoder) < 11_300_000  # ResNet-18 without fc: 11.18 M
    # zero-initialised last BN γ of every residual block; Kaiming-initialised convs
    blocks = [m for m in net.encoder.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all(float(b.bn2.weight.abs().max()) == 0.0 for b in blocks)
    w = net.encoder.conv1.weight
    assert float(w.std()) == pytest.approx((2.0 / (w.shape[0] * 49)) ** 0.5, rel=0.1)


def test_flop_counter_matches_a_hand_count() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, torch.rand(1, 3, 10, 12)) == 2 * 8 * 3 * 9 * 10 * 12
    enc = ResNetEncoder("resnet18", 64).eval()
    gflops = count_flops(enc, torch.rand(1, 3, 224, 224)) / 1e9
    assert gflops == pytest.approx(2 * 1.82, rel=0.03)  # ResNet-18 at 224²: 1.82 GMAC (without fc)


def test_posenet_pairs_and_clip_are_small_at_init() -> None:
    torch.manual_seed(0)
    pair = PoseNet(2, "resnet10", 16)
    x = [torch.rand(3, 3, 64, 96) for _ in range(2)]
    out = pair(x)
    assert out.shape == (3, 1, 6) and float(out.abs().max()) < 0.01
    clip = PoseNet(5, "resnet10", 16)
    assert clip([torch.rand(2, 3, 64, 96) for _ in range(5)]).shape == (2, 4, 6)
    assert clip.anchor == 2


@pytest.mark.parametrize("mode", ["pairs", "clip"])
def test_depth_model_outputs_layout(mode: str) -> None:
    cfg = load_config(overrides=[f"pose.mode={mode}", "model.encoder=resnet10", "model.encoder_width=16"])
    cfg.pose.encoder, cfg.pose.encoder_width = "resnet10", 16
    model = DepthModel(cfg)
    lay = model.layout
    assert lay.frames == (-2, -1, 0, 1, 2) and lay.depth_frames == (-1, 0, 1)
    batch = {("color", f, 0): torch.rand(2, 3, 64, 96) for f in lay.frames}
    batch[("K", 0)] = Intrinsics(50, 50, 47.5, 31.5, 96, 64).tensor(2)
    out = model(batch)
    for f in lay.depth_frames:
        assert out[("depth_fused", f, 0)].shape == (2, 1, 64, 96)
        assert out[("depth", f, 1, 3)].shape == (2, 1, 8, 12)
        assert len(out[("features", f)]) == 5
    for a, b in lay.pose_pairs:
        prod = torch.bmm(out[("T", a, b)], out[("T", b, a)])
        torch.testing.assert_close(prod, torch.eye(4).expand(2, 4, 4), atol=1e-5, rtol=0)
    # the per-frame split keeps samples apart: frame 0 of the model = the net on frame 0 alone (eval mode)
    model.eval()
    with torch.no_grad():
        out = model(batch)
        alone = model.depth(batch[("color", 0, 0)])
    torch.testing.assert_close(out[("depth_fused", 0, 0)], alone[("depth_fused", 0)])


def test_export_module_equals_depth_net_scale_0() -> None:
    """The served module (fused + per-branch at full resolution) equals DepthNet's outputs; the ONNX
    export of it is tested in test/test_export.py.
    """
    torch.manual_seed(0)
    net = DepthNet(**SMALL)
    net.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(3):
            net(torch.rand(4, 3, 64, 96))
    net.eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        out = net(x)
        got = ExportModule(net, per_branch=True)(x)
        fused_only = ExportModule(net)(x)
    ref = [out[("depth_fused", 0)], out[("conf_fused", 0)]]
    for b in range(2):
        ref += [out[("depth", b, 0)], out[("conf", b, 0)]]
    assert len(got) == 6 and len(fused_only) == 2
    for g, r in zip(got, ref):
        assert g.dtype == torch.float32 and g.shape == (2, 1, 64, 96)
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    torch.testing.assert_close(fused_only[0], ref[0], rtol=0, atol=0)


def test_export_module_fp16_keeps_the_fusion_in_fp32() -> None:
    torch.manual_seed(0)
    net = DepthNet(**SMALL).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = ExportModule(net, per_branch=True)(x)
        half = ExportModule(copy.deepcopy(net).half(), per_branch=True, precision="fp16")(x)
    assert all(t.dtype == torch.float32 for t in half)  # outputs (and the argmax input) are float32
    for b in range(2):  # per branch: fp16 rounding only
        torch.testing.assert_close(half[2 + 2 * b], ref[2 + 2 * b], rtol=1e-2, atol=0)
        torch.testing.assert_close(half[3 + 2 * b], ref[3 + 2 * b], rtol=0, atol=1e-2)
    with pytest.raises(ValueError, match="precision"):
        ExportModule(net, precision="int8")
