"""Losses against independent implementations and against ground truth of hand-made scenes.

The scenes are ray-cast analytically here (numpy, float64): a textured fronto-parallel wall, a
textured box face in front of it (optionally moving), cameras translating sideways. They share
no code with the warping under test, so they are independent checks of it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dualdepth_ros.config import ConfigError, load_config
from dualdepth_ros.geometry import Intrinsics, backproject, project, relative_pose, transform_points, warp
from dualdepth_ros.losses import (
    clip_layout,
    compute_losses,
    confidence_loss,
    dssim,
    edge_aware_smoothness,
    gate_statistic,
    min_mean_first_difference,
    occlusion_mask,
    photometric_error,
    scale_invariant_log_error,
    select_reprojection,
    ssim,
    structure_consistency,
)
from dualdepth_ros.networks import DepthModel, fuse_branches

# ---------------------------------------------------------------------------------------
# A hand-made scene
# ---------------------------------------------------------------------------------------
K_SCENE = Intrinsics(fx=60.0, fy=60.0, cx=47.5, cy=23.5, width=96, height=48)


@dataclasses.dataclass
class Rect:
    """A fronto-parallel textured rectangle at world depth ``z`` (infinite if no bounds)."""

    z: float
    x: tuple[float, float] = (-np.inf, np.inf)
    y: tuple[float, float] = (-np.inf, np.inf)
    seed: int = 0
    base: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def texture(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        out = np.zeros((*X.shape, 3))
        for c in range(3):
            acc = np.full(X.shape, self.base[c])
            for _ in range(4):
                w = rng.uniform(0.6, 2.2, size=2) * rng.choice([-1, 1], size=2)
                acc += rng.uniform(0.05, 0.12) * np.sin(w[0] * X + w[1] * Y + rng.uniform(0, 2 * np.pi))
            out[..., c] = acc
        return np.clip(out, 0, 1)


def cam_pose(tx: float = 0.0, ty: float = 0.0, tz: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = (tx, ty, tz)
    return T  # T_cam_to_world (no rotation: the world frame is the first camera's)


def render(T_cam_to_world: np.ndarray, rects: list[Rect], K: Intrinsics = K_SCENE, pix=None):
    """Ray-cast ``rects`` → (rgb H×W×3, depth H×W, id H×W) at pixel centres (or at ``pix`` = (u, v))."""
    if pix is None:
        u, v = np.meshgrid(np.arange(K.width, dtype=np.float64), np.arange(K.height, dtype=np.float64))
    else:
        u, v = pix
    d_cam = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], -1)
    R, c = T_cam_to_world[:3, :3], T_cam_to_world[:3, 3]
    d = d_cam @ R.T
    depth = np.full(u.shape, np.inf)
    ident = np.full(u.shape, -1)
    rgb = np.zeros((*u.shape, 3))
    for i, r in enumerate(rects):
        t = (r.z - c[2]) / d[..., 2]  # d_cam has z = 1, so t is the camera z-depth
        X, Y = c[0] + t * d[..., 0], c[1] + t * d[..., 1]
        hit = (t > 0) & (X >= r.x[0]) & (X <= r.x[1]) & (Y >= r.y[0]) & (Y <= r.y[1]) & (t < depth)
        depth = np.where(hit, t, depth)
        ident = np.where(hit, i, ident)
        rgb = np.where(hit[..., None], r.texture(X, Y), rgb)
    return rgb, depth, ident


def wall_and_box(box_z: float = 8.0, box_x=(-1.5, 1.5), box_y=(-1.2, 1.2)) -> list[Rect]:
    return [
        Rect(z=20.0, seed=1, base=(0.35, 0.55, 0.6)),
        Rect(z=box_z, x=box_x, y=box_y, seed=2, base=(0.7, 0.35, 0.3)),
    ]


def to_t(x: np.ndarray) -> torch.Tensor:
    """H×W(×C) numpy → 1×C×H×W float32 tensor."""
    x = x[..., None] if x.ndim == 2 else x
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).float()[None]


def T_rel(T_a_to_world: np.ndarray, T_b_to_world: np.ndarray) -> torch.Tensor:
    """``T_a_to_b`` via geometry.relative_pose."""
    a = torch.from_numpy(T_a_to_world)[None]
    b = torch.from_numpy(T_b_to_world)[None]
    return relative_pose(a, b).float()


def make_clip(
    offsets=(-2, -1, 0, 1, 2),
    step: float = 0.6,
    box_motion: float = 0.0,
    box_dz: float = 0.0,
    size: Intrinsics = K_SCENE,
):
    """A clip with the camera sliding sideways by ``step`` per frame; the box moves by ``box_motion``
    in x and ``box_dz`` in depth per frame.

    Returns (batch, gt) where ``gt`` holds GT depths, ids, poses and relative transforms.
    """
    batch, gt = {}, {"depth": {}, "id": {}, "pose": {}, "rects": {}}
    for f in offsets:
        rects = wall_and_box(box_z=8.0 + box_dz * f, box_x=(-1.5 + box_motion * f, 1.5 + box_motion * f))
        pose = cam_pose(tx=step * f)
        rgb, depth, ident = render(pose, rects, size)
        batch[("color", f, 0)] = to_t(rgb)
        gt["depth"][f], gt["id"][f], gt["pose"][f], gt["rects"][f] = to_t(depth), ident, pose, rects
    batch[("K", 0)] = size.tensor(1)
    gt["T"] = {(a, b): T_rel(gt["pose"][a], gt["pose"][b]) for a in offsets for b in offsets}
    return batch, gt


def synth_clip(
    offsets=(-2, -1, 0, 1, 2), t0: float = 2.0, width: int = 208, height: int = 64, seed: int = 3, stride: int = 1
):
    """The same layout from the synthetic driving world (dualdepth_ros.synth): GT depth, poses, moving mask.

    10 fps at 10 m/s: the camera moves about 1 m forward per frame; a lead car drives at the ego speed.
    Sky depth (NaN) is replaced by 1000 m.
    """
    from dualdepth_ros.synth import SynthConfig, World, render_frame

    world = World.from_seed(seed, SynthConfig(width=width, height=height, supersample=1))
    batch, gt = {}, {"depth": {}, "moving": {}, "pose": {}, "sky": {}}
    for f in offsets:
        fr = render_frame(world, t0 + stride * f / world.config.fps)
        batch[("color", f, 0)] = to_t(fr.rgb.astype(np.float64) / 255.0)
        gt["depth"][f] = to_t(np.nan_to_num(fr.depth, nan=1000.0).astype(np.float64))
        gt["sky"][f], gt["moving"][f], gt["pose"][f] = np.isnan(fr.depth), fr.moving_mask, fr.T_cam_to_world
        K = fr.intrinsics
    batch[("K", 0)] = K.tensor(1)
    gt["T"] = {(a, b): T_rel(gt["pose"][a], gt["pose"][b]) for a in offsets for b in offsets}
    return batch, gt


# ---------------------------------------------------------------------------------------
# SSIM and photometric error against straightforward loops
# ---------------------------------------------------------------------------------------
def _ssim_loop(x: np.ndarray, y: np.ndarray, c1: float, c2: float) -> np.ndarray:
    """Per pixel: 3×3 window with reflection (mirror without edge repeat), population statistics."""
    C, H, W = x.shape
    out = np.zeros_like(x)

    def refl(i: int, n: int) -> int:
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    for c in range(C):
        for i in range(H):
            for j in range(W):
                wx = np.array([x[c, refl(i + a, H), refl(j + b, W)] for a in (-1, 0, 1) for b in (-1, 0, 1)])
                wy = np.array([y[c, refl(i + a, H), refl(j + b, W)] for a in (-1, 0, 1) for b in (-1, 0, 1)])
                mx, my = wx.mean(), wy.mean()
                vx, vy = ((wx - mx) ** 2).mean(), ((wy - my) ** 2).mean()
                cxy = ((wx - mx) * (wy - my)).mean()
                out[c, i, j] = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return out


def test_ssim_and_photometric_error_match_a_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 7, 9))
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    c1, c2 = 0.01**2, 0.03**2
    ref = np.stack([_ssim_loop(x[b], y[b], c1, c2) for b in range(2)])
    got = ssim(torch.from_numpy(x), torch.from_numpy(y), c1, c2).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ssim(torch.from_numpy(x), torch.from_numpy(x)).numpy(), 1.0, atol=1e-12)

    d = np.clip((1 - ref) / 2, 0, 1)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for rho, r in (("l1", np.abs(x - y)), ("erf", np.sqrt((x - y) ** 2 + 0.01**2))):
        expected = (0.85 * d + 0.15 * r).mean(axis=1, keepdims=True)
        got = photometric_error(tx, ty, alpha=0.85, rho=rho, eps=0.01).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=rho)
    torch.testing.assert_close(dssim(tx, tx), torch.zeros_like(tx), atol=1e-12, rtol=0)


def test_reprojection_selection_and_first_difference() -> None:
    e = [torch.tensor([[[[0.1, 0.5, 0.3]]]]), torch.tensor([[[[0.4, 0.2, 9.0]]]])]
    v = [torch.ones(1, 1, 1, 3), torch.tensor([[[[1.0, 1.0, 0.0]]]])]  # the 9.0 is out of view
    mn, valid, share = select_reprojection(e, v, "min")
    torch.testing.assert_close(mn, torch.tensor([[[[0.1, 0.2, 0.3]]]]))
    torch.testing.assert_close(share[0, :, 0, 2], torch.tensor([1.0, 0.0]))
    mean, _, _ = select_reprojection(e, v, "mean")
    torch.testing.assert_close(mean, torch.tensor([[[[0.25, 0.35, 0.3]]]]))
    _, _, fd, _ = min_mean_first_difference(e, v)
    torch.testing.assert_close(fd, torch.tensor([[[[0.15, 0.15, 0.0]]]]))
    none = [torch.zeros(1, 1, 1, 3)] * 2
    mn, valid, _ = select_reprojection(e, none, "min")
    assert float(valid.sum()) == 0 and float(mn.abs().sum()) == 0


def test_smoothness_hand_computed_and_scale_blind() -> None:
    disp = torch.tensor([[[[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]]]])  # two equal rows: no y-gradients
    img = torch.zeros(1, 3, 2, 3)
    img[..., 2] = 1.0  # an image edge between columns 1 and 2
    mean = 7.0 / 3
    expected = (1 / mean * 1.0 + 2 / mean * np.exp(-1.0)) / 2  # mean over the 2 x-gradients of a row
    got = edge_aware_smoothness(disp, img)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(edge_aware_smoothness(5 * disp, img)) == pytest.approx(expected, rel=1e-6)


def test_scale_invariant_log_error() -> None:
    d = torch.rand(2, 1, 8, 8) + 0.5
    mask = torch.ones_like(d)
    assert float(scale_invariant_log_error(d, 3.0 * d, mask).abs().max()) < 1e-6
    other = d.clone()
    other[..., :4] *= 2.0
    got = scale_invariant_log_error(d, other, mask)
    assert torch.allclose(got, torch.full((2,), np.log(2.0) ** 2 / 4), rtol=1e-4)  # variance of {0, log 2}


# ---------------------------------------------------------------------------------------
# Ground truth of the hand-made scene
# ---------------------------------------------------------------------------------------
def _gt_occluded(gt: dict, t: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(occluded, in_view) for frame t's pixels seen from r, by ray-casting r at the exact projection."""
    P = backproject(gt["depth"][t].double(), K_SCENE.tensor(1, dtype=torch.float64))
    Pr = transform_points(T_rel(gt["pose"][t], gt["pose"][r]).double(), P)
    pix, z = project(Pr, K_SCENE.tensor(1, dtype=torch.float64))
    u, v = pix[0, 0].numpy(), pix[0, 1].numpy()
    in_view = (u >= 0) & (u <= K_SCENE.width - 1) & (v >= 0) & (v <= K_SCENE.height - 1)
    _, depth_r, _ = render(gt["pose"][r], gt["rects"][r], pix=(u, v))
    occluded = depth_r < z[0, 0].numpy() * (1 - 1e-3)
    return occluded, in_view


def _erode(mask: np.ndarray, r: int = 2) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def test_occlusion_mask_flags_pixels_hidden_behind_the_box() -> None:
    batch, gt = make_clip(offsets=(0, 1), step=1.0)
    occluded, in_view = _gt_occluded(gt, 0, 1)
    assert occluded.sum() > 40  # a band of the wall left of the box is hidden in frame 1
    K = batch[("K", 0)]
    mask = occlusion_mask(gt["depth"][0], gt["depth"][1], gt["T"][(0, 1)], gt["T"][(1, 0)], K)[0, 0].numpy()
    flagged = mask < 0.5
    core_occ = _erode(occluded, 1) & in_view  # away from the band's edges (bilinear mixing)
    core_vis = _erode(~occluded, 2) & in_view
    assert flagged[core_occ].mean() > 0.95
    assert flagged[core_vis].mean() < 0.01
    # the occluded band is where the wall meets the box's left edge in frame 0
    assert (gt["id"][0][occluded] == 0).all()


def test_structure_consistency_small_on_static_large_on_moving() -> None:
    batch, gt = make_clip(offsets=(0, 1), step=0.5, box_motion=0.3, box_dz=-2.0)  # the box comes 2 m closer
    K = batch[("K", 0)]
    w = warp(gt["depth"][1], gt["depth"][0], gt["T"][(0, 1)], K)  # sample the ref's GT depth
    dd = structure_consistency(w.z, w.image)[0, 0].numpy()
    valid = w.valid[0, 0].numpy() > 0
    ids = gt["id"][0]
    static = _erode(ids == 0, 3) & valid
    # static wall pixels that stay visible (not hidden behind the moved box in frame 1)
    occluded, _ = _gt_occluded(gt, 0, 1)
    static &= _erode(~occluded, 2)
    moving = _erode(ids == 1, 2) & valid
    assert np.median(dd[static]) < 0.002 and np.percentile(dd[static], 95) < 0.01
    assert np.median(dd[moving]) > 0.1  # |8 − 6| / (8 + 6) = 0.14
    # with the GT motion of everything static, the box is consistent too
    batch_s, gt_s = make_clip(offsets=(0, 1), step=0.5)
    w = warp(gt_s["depth"][1], gt_s["depth"][0], gt_s["T"][(0, 1)], K)
    box = _erode(gt_s["id"][0] == 1, 2) & (w.valid[0, 0].numpy() > 0)
    assert np.median(structure_consistency(w.z, w.image)[0, 0].numpy()[box]) < 0.002


def test_structure_consistency_on_the_synthetic_drive() -> None:
    """GT depth + GT pose of the synthetic world: static pixels agree, the moving lead car does not."""
    batch, gt = synth_clip(offsets=(0, 1))
    w = warp(gt["depth"][1], gt["depth"][0], gt["T"][(0, 1)], batch[("K", 0)])
    dd = structure_consistency(w.z, w.image)[0, 0].numpy()
    valid = (w.valid[0, 0].numpy() > 0) & ~gt["sky"][0]
    moving = _erode(gt["moving"][0], 1) & valid
    static = ~gt["moving"][0] & valid
    assert moving.sum() > 50, "the lead car should be in view"
    assert np.median(dd[static]) < 0.002
    assert np.median(dd[moving]) > 0.02 and np.median(dd[moving]) > 20 * np.median(dd[static])


def test_min_reprojection_beats_mean_at_occlusion_boundaries() -> None:
    batch, gt = make_clip(offsets=(-1, 0, 1), step=1.0)
    K = batch[("K", 0)]
    errs, valids = [], []
    for r in (-1, 1):
        w = warp(batch[("color", r, 0)], gt["depth"][0], gt["T"][(0, r)], K)
        errs.append(photometric_error(w.image, batch[("color", 0, 0)]))
        valids.append(w.valid)
    mn, _, _ = select_reprojection(errs, valids, "min")
    mean, valid, _ = select_reprojection(errs, valids, "mean")
    occ_left, _ = _gt_occluded(gt, 0, -1)
    occ_right, _ = _gt_occluded(gt, 0, 1)
    boundary = (occ_left ^ occ_right) & (valid[0, 0].numpy() > 0)  # hidden in exactly one source
    assert boundary.sum() > 40
    mn, mean = mn[0, 0].numpy(), mean[0, 0].numpy()
    assert mn[boundary].mean() < 0.5 * mean[boundary].mean()
    visible = _erode(~(occ_left | occ_right), 2) & (valids[0][0, 0].numpy() > 0) & (valids[1][0, 0].numpy() > 0)
    assert mn[visible].mean() < 0.05  # GT depth and pose reconstruct visible pixels well


# ---------------------------------------------------------------------------------------
# Compute_losses with ground truth: the terms vanish where they should
# ---------------------------------------------------------------------------------------
def _gt_outputs(cfg, batch: dict, gt: dict, depth_scale: dict | None = None) -> dict:
    """Outputs dict with GT depth in both branches (branch 1 scaled per frame by ``depth_scale``)."""
    lay = clip_layout(cfg)
    out: dict = {}
    for f in lay.depth_frames:
        for s in cfg.model.scales:
            h, w = batch[("color", 0, 0)].shape[-2:]
            size = (h // 2**s, w // 2**s)
            d = torch.nn.functional.interpolate(gt["depth"][f], size=size, mode="nearest")
            for b in range(cfg.model.num_branches):
                scale = 1.0 if (b == 0 or depth_scale is None) else depth_scale.get(f, 1.0)
                out[("depth", f, b, s)] = d * scale
                out[("conf_logit", f, b, s)] = torch.full_like(d, 2.0 if b == 0 else -2.0)
                out[("conf", f, b, s)] = torch.sigmoid(out[("conf_logit", f, b, s)])
            depths = [out[("depth", f, b, s)] for b in range(cfg.model.num_branches)]
            confs = [out[("conf", f, b, s)] for b in range(cfg.model.num_branches)]
            out[("depth_fused", f, s)], out[("conf_fused", f, s)] = fuse_branches(depths, confs)
        out[("features", f)] = [torch.nn.functional.avg_pool2d(batch[("color", f, 0)], 2)]
    for a, b in lay.pose_pairs:
        out[("T", a, b)], out[("T", b, a)] = gt["T"][(a, b)], gt["T"][(b, a)]
    return out


def _scaled_frame0(cfg, batch: dict, gt: dict, factor: float) -> dict:
    out = _gt_outputs(cfg, batch, gt)
    for s in cfg.model.scales:
        out[("depth_fused", 0, s)] = out[("depth_fused", 0, s)] * factor
    return out


def test_compute_losses_with_ground_truth_is_near_zero_and_wrong_depth_is_not() -> None:
    cfg = load_config(overrides=["loss.photometric.automask=false", "loss.two_branch.gate=false"])
    batch, gt = make_clip()
    total, terms = compute_losses(batch, _gt_outputs(cfg, batch, gt), cfg)
    assert float(terms["structure"]) < 0.01
    assert float(terms["temporal"]) < 1e-3
    assert float(terms["photometric"]) < 0.05  # bilinear resampling of the texture and occlusion edges
    # a wrong depth for frame 0 (scaled: shapes change, poses do not) raises photometric and structure
    _, bad_terms = compute_losses(batch, _scaled_frame0(cfg, batch, gt, 0.6), cfg)
    assert float(bad_terms["photometric"]) > 2 * float(terms["photometric"])
    assert float(bad_terms["structure"]) > 10 * float(terms["structure"])


def test_ground_truth_is_the_photometric_minimum_on_the_synthetic_drive() -> None:
    """GT depth beats depths 20–40 % off on the synthetic world (frames with texture, sky, a lead car).

    Without the (1 − depth_diff) weighting: that weight *lowers the value* of the photometric term for
    inconsistent depths (0.096 at ×0.6 vs 0.110 at GT, 96×48), which is why it is detached by default.
    """
    cfg = load_config(
        overrides=[
            "loss.photometric.automask=false",
            "loss.two_branch.gate=false",
            "loss.structure.weight_photometric=false",
        ]
    )
    batch, gt = synth_clip()
    terms = {f: compute_losses(batch, _scaled_frame0(cfg, batch, gt, f), cfg)[1] for f in (1.0, 0.6, 0.8, 1.25, 1.5)}
    for f in (0.6, 0.8, 1.25, 1.5):
        assert float(terms[f]["photometric"]) > 1.2 * float(terms[1.0]["photometric"]), f
        assert float(terms[f]["structure"]) > 3 * float(terms[1.0]["structure"]), f
        assert float(terms[f]["first_difference"]) > float(terms[1.0]["first_difference"]), f


# ---------------------------------------------------------------------------------------
# The two-branch rule: where gradients go, and the gate
# ---------------------------------------------------------------------------------------
def _grad_norms(model: DepthModel) -> tuple[float, float, float]:
    def norm(mod) -> float:
        return float(sum(p.grad.abs().sum() for p in mod.parameters() if p.grad is not None))

    b0, b1 = model.depth.branches
    return norm(b0), norm(b1), norm(model.depth.encoder)


def test_two_branch_gradients_go_to_their_own_branch(repo_root) -> None:
    torch.manual_seed(0)
    cfg = load_config(repo_root / "config/ablations/overfit.yaml", overrides=["loss.two_branch.gate=false"])
    model = DepthModel(cfg)
    batch, _ = make_clip()
    out = model(batch)
    _, terms = compute_losses(batch, out, cfg)
    for name, owner in (("branch_min", 0), ("branch_difference", 1)):
        model.zero_grad(set_to_none=True)
        terms[name].backward(retain_graph=True)
        g = _grad_norms(model)
        assert g[owner] > 0 and g[1 - owner] == 0.0, (name, g)
        assert g[2] > 0  # the shared encoder learns from both
    # and the confidences are trained on both branches' heads, without touching depth through the targets
    model.zero_grad(set_to_none=True)
    terms["conf_selection"].backward(retain_graph=True)
    g = _grad_norms(model)
    assert g[0] > 0 and g[1] > 0


def test_gated_sample_produces_no_update(repo_root) -> None:
    torch.manual_seed(0)
    # no random auto-mask tie-breaker: the two runs below must see identical masks
    cfg = load_config(repo_root / "config/ablations/overfit.yaml", overrides=["loss.photometric.automask_noise=0"])
    model = DepthModel(cfg).eval()  # eval: BatchNorm uses running statistics, samples are independent
    good, _ = make_clip()
    # sample 1: a cut between frames −2 and −1 and between 1 and 2 (unrelated images at the ends)
    cut = {k: v.clone() for k, v in good.items()}
    rng = torch.Generator().manual_seed(1)
    for f in (-2, 2):
        cut[("color", f, 0)] = torch.rand(cut[("color", f, 0)].shape, generator=rng)
    both = {k: torch.cat([good[k], cut[k]]) for k in good}
    with torch.no_grad():
        stat = gate_statistic(both, model(both), cfg)
    assert float(stat[1]) > float(stat[0]) + 0.02, stat
    cfg.loss.two_branch.gate_threshold = float(stat.mean())
    # (1) the gated sample's outputs receive exactly zero gradient
    out = model(both)
    leaves = {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and v.requires_grad and v.dim() == 4}
    total, terms = compute_losses(both, out, cfg)
    assert float(terms["gate_kept"]) == 0.5
    grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True, retain_graph=True)
    assert all(g is None or float(g[1].abs().max()) == 0.0 for g in grads)
    assert any(g is not None and float(g[0].abs().max()) > 0 for g in grads)
    # (2) the parameter update equals the one from the kept sample alone
    model.zero_grad()
    total.backward()
    with_cut = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    torch.manual_seed(0)
    total_alone, _ = compute_losses(good, model(good), cfg)
    total_alone.backward()
    alone = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for a, b in zip(with_cut, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    # (3) everything gated: total is 0 and backward still works
    cfg.loss.two_branch.gate_threshold = 0.0
    total0, terms0 = compute_losses(both, model(both), cfg)
    total0.backward()
    assert total0.item() == 0.0 and terms0["gate_kept"].item() == 0.0


def test_confidence_loss_teaches_fusion_to_pick_the_better_branch() -> None:
    """Free confidence logits trained by the loss end up selecting the lower-error branch per pixel."""
    torch.manual_seed(0)
    e0 = torch.rand(1, 1, 16, 16) * 0.1
    e1 = e0.clone()
    e1[..., :8] += 0.05  # branch 0 better on the left
    e0[..., 8:] += 0.08  # branch 1 better on the right
    logits = [torch.zeros(1, 1, 16, 16, requires_grad=True) for _ in range(2)]
    opt = torch.optim.Adam(logits, lr=0.1)
    mask = torch.ones_like(e0)
    for _ in range(150):
        sel, cal = confidence_loss(logits, [e0, e1], mask, 0.01, 0.1)
        opt.zero_grad()
        (sel + cal).sum().backward()
        opt.step()
    depth = [torch.zeros_like(e0), torch.ones_like(e0)]
    picked, conf = fuse_branches(depth, [torch.sigmoid(lg) for lg in logits])
    assert float(picked[..., :8].max()) == 0.0 and float(picked[..., 8:].min()) == 1.0
    # calibration: confidence falls with the chosen branch's error
    err = torch.minimum(e0, e1).flatten()
    c = conf.detach().flatten()
    assert np.corrcoef(err.numpy(), c.numpy())[0, 1] < -0.9


def test_pooled_selection_target_follows_the_neighbourhood_not_the_pixel_noise() -> None:
    """Branch 0 is better on the left half by 0.02 on average, but each pixel's comparison is noise (±0.05): the
    per-pixel target picks branch 1 on 45 % of the left pixels, the 7×7 pooled target on 8 % (measured); with
    a mask, masked-out pixels do not enter a window's mean.
    """
    from dualdepth_ros.losses.two_branch import _window_mean

    g = torch.Generator().manual_seed(0)
    e0 = 0.1 + 0.05 * torch.randn(1, 1, 32, 32, generator=g)
    e1 = 0.1 + 0.05 * torch.randn(1, 1, 32, 32, generator=g)
    e1[..., :16] += 0.02
    mask = torch.ones_like(e0)

    def picks_branch_1_on_the_left(pool: int) -> float:
        logits = [torch.zeros(1, 1, 32, 32, requires_grad=True) for _ in range(2)]
        opt = torch.optim.Adam(logits, lr=0.1)
        for _ in range(150):
            sel, _ = confidence_loss(logits, [e0, e1], mask, 0.01, 0.1, selection_pool=pool)
            opt.zero_grad()
            sel.sum().backward()
            opt.step()
        return float((logits[1] > logits[0])[..., 4:28, 3:12].float().mean())  # left half, away from the border

    assert picks_branch_1_on_the_left(1) > 0.3 and picks_branch_1_on_the_left(7) < 0.15
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    m = torch.ones_like(x)
    m[..., 0, 0] = 0
    assert float(_window_mean(x, m, 3)[0, 0, 1, 1]) == pytest.approx(36 / 8)  # (0+1+…+8 − 0) / 8 valid
    with pytest.raises(ConfigError, match="odd window"):
        load_config(overrides=["loss.confidence.selection_pool=4"])


# ---------------------------------------------------------------------------------------
# Overfit: the whole step learns on one tiny clip
# ---------------------------------------------------------------------------------------
def test_overfit_one_tiny_clip(repo_root) -> None:
    """20 steps of the full two-branch method (light networks) on one 208×64 clip of the synthetic drive.

    Auto-masking is off here: its masked mean is taken over a pixel set that grows as the model
    learns, so its value is not monotone in the model's quality. The photometric term must close a
    good part of its gap to the value that ground-truth depth and pose give.
    """
    torch.manual_seed(0)
    cfg = load_config(
        repo_root / "config/ablations/overfit.yaml",
        # The scale anchor is off: its transient (the translation growing from ~0 to its anchored size
        # while depth follows) is longer than these 20 steps and raises the photometric term meanwhile.
        overrides=["loss.two_branch.gate=false", "loss.photometric.automask=false", "loss.scale_anchor.enabled=false"],
    )
    batch, gt = synth_clip(t0=5.0)  # one tiny clip of the synthetic drive (≈1 m forward per frame)
    photo_gt = compute_losses(batch, _gt_outputs(cfg, batch, gt), cfg)[1]["photometric"].item()
    model = DepthModel(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.learning_rate)
    losses, photo = [], []
    for _ in range(20):
        total, terms = compute_losses(batch, model(batch), cfg)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
        photo.append(terms["photometric"].item())
    assert np.mean(losses[-3:]) < 0.85 * losses[0], losses
    closed = (photo[0] - np.mean(photo[-3:])) / (photo[0] - photo_gt)
    assert closed > 0.3, (photo, photo_gt)


# ---------------------------------------------------------------------------------------
# Mixed precision: geometry and photometric maps stay in float32 under autocast
# ---------------------------------------------------------------------------------------
def test_bf16_autocast_keeps_the_warp_exact_and_the_loss_equal_to_fp32() -> None:
    """Under CPU bfloat16 autocast (as AMP runs the step), an identity warp at 640×192 is exact to
    1e-3 px and the loss equals its float32 value; the same geometry left to autocast is off by pixels.
    """
    from dualdepth_ros.geometry import pixel_grid
    from dualdepth_ros.losses import LossContext

    torch.manual_seed(0)
    w, h = 640, 192
    K = Intrinsics(fx=0.58 * w, fy=1.92 * h, cx=(w - 1) / 2, cy=(h - 1) / 2, width=w, height=h)
    cfg = load_config(overrides=[f"input.width={w}", f"input.height={h}", "loss.photometric.checkpoint=false"])
    lay = clip_layout(cfg)
    img = torch.rand(1, 3, h, w)
    batch = {("color", f, 0): img for f in lay.frames}
    batch[("K", 0)] = K.tensor(1)
    depth = 5.0 + 45.0 * torch.rand(1, 1, h, w)
    out: dict = {}
    for f in lay.depth_frames:
        for s in cfg.model.scales:
            d = torch.nn.functional.interpolate(depth, scale_factor=0.5**s, mode="area")
            for b in range(2):
                out[("depth", f, b, s)] = d * (1 + 0.05 * b)
                out[("conf_logit", f, b, s)] = torch.randn_like(d)
                out[("conf", f, b, s)] = torch.sigmoid(out[("conf_logit", f, b, s)])
            out[("depth_fused", f, s)], out[("conf_fused", f, s)] = fuse_branches(
                [out[("depth", f, b, s)] for b in range(2)], [out[("conf", f, b, s)] for b in range(2)]
            )
        out[("features", f)] = [torch.nn.functional.avg_pool2d(img, 2).repeat(1, 4, 1, 1)]
    eye = torch.eye(4).unsqueeze(0)
    for a, b in lay.pose_pairs:
        out[("T", a, b)] = out[("T", b, a)] = eye
    grid = pixel_grid(h, w)[:2].unsqueeze(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ctx = LossContext(batch, out, cfg)
        pix = ctx.views(0)[(0, 1)].warp.pix
        unguarded = warp(img, depth, eye, K.tensor(1)).pix  # the same geometry, left to autocast
        total_bf16, terms_bf16 = compute_losses(batch, {k: _to_bf16(v) for k, v in out.items()}, cfg)
    assert pix.dtype == torch.float32
    assert float((pix - grid).abs().max()) < 1e-3
    assert float((unguarded.float() - grid).abs().max()) > 0.1  # what the guard prevents
    total, terms = compute_losses(batch, {k: _to_bf16(v) for k, v in out.items()}, cfg)
    assert total_bf16.dtype == torch.float32
    torch.testing.assert_close(total_bf16, total, rtol=1e-5, atol=1e-6)
    for name in terms:
        torch.testing.assert_close(terms_bf16[name], terms[name], rtol=1e-5, atol=1e-6)


def _to_bf16(v):
    """A network output as a bf16-autocast network would return it (tensors in bfloat16, poses too)."""
    if isinstance(v, list):
        return [_to_bf16(x) for x in v]
    return v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v


# ---------------------------------------------------------------------------------------
# What protects training from collapse: auto-masking of the lead car and of a standing camera
# ---------------------------------------------------------------------------------------
def _automask_of(cfg, batch: dict, out: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The photometric term's auto-mask and validity on the target grid (scale 0)."""
    from dualdepth_ros.losses import LossContext, automask

    ctx = LossContext(batch, out, cfg)
    views = ctx.views(0)
    err, valid, _ = select_reprojection([views[(0, r)].error for r in (-1, 1)], [views[(0, r)].valid for r in (-1, 1)])
    return automask(err, ctx.identity(0, (-1, 1))), valid


def test_automask_hides_the_lead_car_and_a_standing_camera_from_the_photometric_loss() -> None:
    """Auto-masking removes the two cases that teach self-supervised depth "infinitely far" (monodepth2 §3.3).

    * a lead car at exactly the ego speed stays still in the image, so infinite depth reproduces it;
    * a standing camera (the synthetic car stops for 4 s) reproduces every pixel with any depth.
    In both the unwarped neighbour already matches better than any warp.
    """
    ones = load_config(
        overrides=["loss.two_branch.enabled=false", "model.num_branches=1", "model.predict_confidence=false"]
    )
    batch, gt = synth_clip(offsets=(-1, 0, 1), t0=3.0)
    out = _gt_outputs(ones, batch, gt)
    mask, valid = _automask_of(ones, batch, out)
    lead = torch.from_numpy(gt["moving"][0])[None, None]  # at t = 3 s the only moving object is the lead car
    assert 100 < int(lead.sum()) < 400
    static = (valid > 0) & ~lead & ~torch.from_numpy(gt["sky"][0])[None, None]
    assert float(mask[lead].mean()) < 0.1, "the lead car must be masked out"
    assert float(mask[static].mean()) > 0.6, "static scenery must stay in the loss"
    # a standing camera: the same clip taken during the 4 s stop
    from dualdepth_ros.synth import SynthConfig, World, render_frame

    world = World.from_seed(3, SynthConfig(width=208, height=64, supersample=1, stops=((3.0, 4.0),)))
    still = {}
    for f in (-1, 0, 1):
        fr = render_frame(world, 4.5 + f / world.config.fps)
        still[("color", f, 0)] = to_t(fr.rgb.astype(np.float64) / 255.0)
    still[("K", 0)] = batch[("K", 0)]
    mask_still, valid_still = _automask_of(ones, still, out)  # any depth, the moving clip's motion
    assert float(mask_still[valid_still > 0].mean()) < 0.05


@pytest.mark.parametrize("scope", ["photometric", "all"])
def test_automask_scope_all_stops_the_other_warp_terms_pushing_the_lead_car_away(scope: str) -> None:
    """The lead car keeps pace with the camera. With the ground truth's depth and motion, the structure-consistency
    and feature-metric terms (which have no identity error of their own) pull its depth farther; with
    ``automask_scope: all`` they skip the pixels the photometric auto-mask drops and the pull is gone.
    """
    cfg = load_config(
        overrides=["loss.two_branch.gate=false", "model.scales=[0]", f"loss.photometric.automask_scope={scope}"]
    )
    batch, gt = synth_clip(offsets=clip_layout(cfg).frames, t0=3.0)
    out = _gt_outputs(cfg, batch, gt)
    depth = out[("depth_fused", 0, 0)].clone().requires_grad_(True)
    out[("depth_fused", 0, 0)] = depth
    torch.manual_seed(0)
    _, terms = compute_losses(batch, out, cfg)
    lead = torch.from_numpy(gt["moving"][0])[None, None]
    pull = {}
    for name in ("structure", "featuremetric"):
        (grad,) = torch.autograd.grad(terms[name].sum(), depth, retain_graph=True)
        per_pixel = float(grad[lead].sum()) / int(lead.sum()), float(grad[~lead].abs().sum()) / int((~lead).sum())
        pull[name] = per_pixel  # (signed gradient on the car, |gradient| elsewhere), per pixel
        assert per_pixel[1] > 0  # the terms are live on the static scene either way
    if scope == "photometric":  # one-signed: a larger depth lowers the loss (measured: 2.1 and 0.29 × the mean
        assert all(car < -0.2 * rest for car, rest in pull.values()), pull  # |gradient| elsewhere, per pixel)
    else:
        assert pull["featuremetric"][0] == 0.0
        assert abs(pull["structure"][0]) < 0.1 * pull["structure"][1], pull


def test_road_floor_pulls_a_car_beyond_the_road_in_and_leaves_the_rest_alone() -> None:
    """The ground truth never lies beyond the road (0); the lead car pushed 3× too far does, and only its pixels
    get a gradient, towards a smaller depth; an inverted depth has no road plane and no term.
    """
    from dualdepth_ros.losses import LossContext
    from dualdepth_ros.losses.terms import road_floor

    cfg = load_config(overrides=["loss.road_floor.enabled=true", "loss.two_branch.gate=false"])
    batch, gt = synth_clip(offsets=clip_layout(cfg).frames, t0=3.0)
    out = _gt_outputs(cfg, batch, gt)
    lead = torch.from_numpy(gt["moving"][0])[None, None]

    def floor(depth: torch.Tensor) -> torch.Tensor:
        return road_floor(LossContext(batch, {**out, ("depth_fused", 0, 0): depth}, cfg), cfg.loss.road_floor)[
            "road_floor"
        ]

    truth = out[("depth_fused", 0, 0)]
    assert float(floor(truth)) == 0.0
    far = torch.where(lead, truth * 3, truth).requires_grad_(True)
    value = floor(far)
    (grad,) = torch.autograd.grad(value.sum(), far)
    assert float(value) > 0.005
    assert float((grad[lead] > 0).float().mean()) > 0.5  # most of the car lies below the horizon, beyond the road
    assert int((grad[~lead] != 0).sum()) == 0 and float(grad.min()) >= 0  # nothing else moves, nothing goes farther
    assert float(floor(100.0 / truth)) == 0.0  # inverted: no plane below the camera, no term
    assert float(compute_losses(batch, {**out, ("depth_fused", 0, 0): far.detach()}, cfg)[1]["road_floor"]) > 0


# ---------------------------------------------------------------------------------------
# Getting joint depth/pose learning started: the epipolar pose prior and the scale anchor
# ---------------------------------------------------------------------------------------
def test_epipolar_motion_recovers_the_synthetic_cameras_rotation_and_direction() -> None:
    from dualdepth_ros.data.epipolar import epipolar_motion
    from dualdepth_ros.synth import SynthConfig, World, render_frame

    world = World.from_seed(5, SynthConfig(width=320, height=96, supersample=1))
    errs_r, errs_t = [], []
    for t in (2.0, 4.0, 6.0, 8.0):
        a, b = render_frame(world, t), render_frame(world, t + 0.1)
        T = epipolar_motion(a.rgb, b.rgb, a.intrinsics.matrix())
        assert T is not None
        gt = T_rel(a.T_cam_to_world, b.T_cam_to_world)[0].numpy()
        cos_r = (np.trace(T[:3, :3].T @ gt[:3, :3]) - 1) / 2
        errs_r.append(np.degrees(np.arccos(np.clip(cos_r, -1, 1))))
        cos_t = T[:3, 3] @ gt[:3, 3] / np.linalg.norm(gt[:3, 3])
        errs_t.append(np.degrees(np.arccos(np.clip(cos_t, -1, 1))))
        assert abs(np.linalg.norm(T[:3, 3]) - 1.0) < 1e-5
    assert np.median(errs_r) < 0.5 and np.median(errs_t) < 10.0, (errs_r, errs_t)
    # no motion, no direction: a standing camera gives no estimate
    a = render_frame(world, 3.0)
    assert epipolar_motion(a.rgb, a.rgb, a.intrinsics.matrix()) is None


def test_pose_prior_is_zero_at_the_prior_and_grows_with_rotation_and_direction_errors() -> None:
    from dualdepth_ros.geometry import pose_vec_to_mat

    cfg = load_config(overrides=["loss.pose_prior.enabled=true", "loss.two_branch.gate=false"])
    lay = clip_layout(cfg)
    batch, gt = make_clip(offsets=lay.frames)
    out = _gt_outputs(cfg, batch, gt)
    for a, b in lay.pose_pairs:  # the prior: the true rotation and the unit translation
        T = gt["T"][(a, b)].clone()
        T[:, :3, 3] /= T[:, :3, 3].norm(dim=1, keepdim=True)
        batch[("epipolar", a, b)] = T
    _, terms = compute_losses(batch, out, cfg)
    assert float(terms["pose_prior"]) < 1e-5
    # the length of the translation is not the prior's business
    longer = dict(out)
    for a, b in lay.pose_pairs:
        T = out[("T", a, b)].clone()
        T[:, :3, 3] *= 3.0
        longer[("T", a, b)] = T
    assert float(compute_losses(batch, longer, cfg)[1]["pose_prior"]) < 1e-5
    # a 2° rotation error or a 5° direction error shows, about as the angle in radians
    turned = dict(out)
    R = pose_vec_to_mat(torch.tensor([[0.0, np.radians(2.0), 0.0, 0.0, 0.0, 0.0]], dtype=torch.float32))
    for a, b in lay.pose_pairs:
        turned[("T", a, b)] = R @ out[("T", a, b)]
    value = float(compute_losses(batch, turned, cfg)[1]["pose_prior"])
    assert np.radians(2.0) * 0.9 < value < np.radians(2.0) * 2.2 + 0.1, value
    # a pair without an estimate (NaN) is left out
    for a, b in lay.pose_pairs:
        batch[("epipolar", a, b)] = torch.full((1, 4, 4), float("nan"))
    assert float(compute_losses(batch, turned, cfg)[1]["pose_prior"]) == 0.0


def test_scale_anchor_pins_only_the_mean_translation() -> None:
    cfg = load_config(overrides=["loss.scale_anchor.enabled=true", "loss.two_branch.gate=false"])
    lay = clip_layout(cfg)
    batch, gt = make_clip(offsets=lay.frames)
    out = _gt_outputs(cfg, batch, gt)

    def with_mean_translation(m: float) -> dict:
        scaled = dict(out)
        ts = torch.stack([out[("T", a, b)][:, :3, 3].norm(dim=1) for a, b in lay.pose_pairs]).mean()
        for a, b in lay.pose_pairs:
            T = out[("T", a, b)].clone()
            T[:, :3, 3] *= m / ts
            scaled[("T", a, b)] = T
        return scaled

    at = float(compute_losses(batch, with_mean_translation(cfg.loss.scale_anchor.translation), cfg)[1]["scale_anchor"])
    off = float(compute_losses(batch, with_mean_translation(0.3), cfg)[1]["scale_anchor"])
    assert at < 1e-10
    assert off == pytest.approx(np.log(0.3 / cfg.loss.scale_anchor.translation) ** 2, rel=1e-4)
