"""The loss terms, one function each, registered with their config section (:mod:`.registry`).

Every function takes the shared :class:`~.context.LossContext` and its own config section and
returns unweighted per-sample (``B``) values; multi-scale terms average over their scales.
Registration order is evaluation order.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

from .consistency import occlusion_mask
from .context import (
    K_at,
    LossContext,
    _confidence_unit,
    _featuremetric_unit,
    _smoothness_unit,
    _temporal_unit,
    resize_depth,
)
from .registry import loss_term

__all__ = [
    "photometric",
    "structure",
    "smoothness",
    "temporal",
    "featuremetric",
    "two_branch",
    "confidence",
    "pose_prior",
    "scale_anchor",
    "road_floor",
]


@loss_term(
    "photometric",
    weights={"photometric": "weight"},
    reference_depth=lambda cfg: cfg.loss.photometric.bidirectional or cfg.loss.occlusion.enabled,
    source="method.md §2–3, §5: monodepth2 min reprojection + auto-mask; CN113160294B bidirectional, ERF",
)
def photometric(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    """Target 0 from sources ±1 on the **fused** depth (+ each source from the target), every scale."""
    tgt, srcs = ctx.layout.target, ctx.layout.sources
    scales = ctx.cfg.model.scales
    total = 0.0
    for s in scales:
        grids, _ = ctx.photometric_units(s)
        photo = grids[tgt]
        if cfg.bidirectional:
            photo = photo + sum(grids[r] for r in srcs) / len(srcs)
        total = total + photo / len(scales)
    return {"photometric": total}


@loss_term(
    "structure",
    weights={"structure": "weight"},
    reference_depth=True,
    source="method.md §5: CN113160294B depth structure consistency",
)
def structure(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    """Mean ``depth_diff`` over valid, flow-consistent pixels of every reconstruction, every scale."""
    scales = ctx.cfg.model.scales
    total = 0.0
    for s in scales:
        dsc = list(ctx.photometric_units(s)[1].values())
        total = total + sum(dsc) / len(dsc) / len(scales)
    return {"structure": total}


@loss_term(
    "smoothness",
    weights={"smoothness": "weight", "feature_smoothness": "feature_weight"},
    source="method.md §3 (monodepth2 edge-aware, / 2^s) and §5 (CN113160294B feature smoothness)",
)
def smoothness(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    """Edge-aware smoothness of mean-normalised inverse depth (per scale, at its own resolution)."""
    out: dict[str, torch.Tensor] = {}
    frames = ctx.layout.depth_frames
    scales = ctx.cfg.model.scales
    if cfg.weight > 0:
        nb = ctx.cfg.model.num_branches
        total = 0.0
        for s in scales:
            sm = 0.0
            for f in frames:
                if cfg.target == "fused":
                    d_list = [ctx.outputs[("depth_fused", f, s)]]
                else:
                    d_list = [ctx.outputs[("depth", f, b, s)] for b in range(nb)]
                for d in d_list:
                    fn = functools.partial(_smoothness_unit, image=ctx.color(f, tuple(d.shape[-2:])), inverse=True)
                    sm = sm + ctx.unit(fn, d) / len(d_list)
            total = total + sm / len(frames) / (2**s) / len(scales)
        out["smoothness"] = total
    if cfg.feature_weight > 0:
        feat = ctx.outputs[("features", ctx.layout.target)][0]
        fn = functools.partial(
            _smoothness_unit, image=ctx.color(ctx.layout.target, tuple(feat.shape[-2:])), inverse=False
        )
        out["feature_smoothness"] = ctx.unit(fn, feat)
    return out


@loss_term(
    "temporal",
    weights={"temporal": "weight"},
    reference_depth=True,
    source="method.md §6: OPPO patent, relative term between D_t and D_{t−1} warped into t",
)
def temporal(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    """Scale 0: scale-invariant log difference of ``D_0`` and ``D_{−1}`` warped into 0, on consistent pixels."""
    tgt, lc = ctx.layout.target, ctx.lc
    fn = functools.partial(
        _temporal_unit,
        size=ctx.size,
        K=ctx.K,
        occlusion=ctx.occlusion(0)[(tgt, -1)] if lc.occlusion.enabled else None,
        erf_eps=lc.structure.erf_eps,
        max_depth_diff=cfg.max_depth_diff,
        si_lambda=cfg.si_lambda,
    )
    depths = [ctx.outputs[("depth_fused", f, 0)] for f in (tgt, -1)]
    return {"temporal": ctx.unit(fn, *depths, ctx.T(tgt, -1), ctx.T(-1, tgt))}


@loss_term(
    "featuremetric",
    weights={"featuremetric": "weight"},
    reference_depth=True,
    source="method.md §5: CN113160294B feature-metric loss on the stride-2 encoder features",
)
def featuremetric(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    """``|f_tgt − f̂_ref| + |f_ref − f̂_tgt|`` at the features' resolution, averaged over references."""
    lc, tgt, srcs = ctx.lc, ctx.layout.target, ctx.layout.sources
    feats = {}
    for f in (tgt, *srcs):
        x = ctx.outputs[("features", f)][0]
        feats[f] = x.detach() if cfg.detach_features else x
    size = tuple(feats[tgt].shape[-2:])
    K = K_at(ctx.K, ctx.size, size)
    pairs = [p for r in srcs for p in ((tgt, r), (r, tgt))]
    occ: dict[tuple[int, int], torch.Tensor] = {}
    if lc.occlusion.enabled:
        with torch.no_grad():
            d = {f: resize_depth(ctx.outputs[("depth_fused", f, 0)].float(), size) for f in (tgt, *srcs)}
            for g, src in pairs:
                occ[(g, src)] = (
                    occlusion_mask(
                        d[g], d[src], ctx.T(g, src), ctx.T(src, g), K, lc.occlusion.alpha1, lc.occlusion.alpha2
                    )
                    > 0
                )
    kept = {}
    for g in dict.fromkeys(g for g, _ in pairs):  # automask_scope all: the pixels the auto-mask keeps (in pair
        # order: an identity error not drawn yet draws its tie-breaker noise now)
        m = ctx.kept_by_automask(g)
        if m is not None:
            kept[g] = F.interpolate(m, size=size, mode="area") > 0.5
    total = 0.0
    for g, src in pairs:  # one pair at a time (a stride-2 map of 64 channels each)
        mask = occ.get((g, src))
        if g in kept:
            mask = kept[g] if mask is None else mask & kept[g]
        fn = functools.partial(_featuremetric_unit, K=K, occlusion=mask)
        total = total + ctx.unit(fn, feats[g], feats[src], ctx.outputs[("depth_fused", g, 0)], ctx.T(g, src))
    return {"featuremetric": total / len(srcs)}


def _two_branch_scales(ctx: LossContext) -> list[int]:
    return [s for s in ctx.cfg.model.scales if s in ctx.lc.two_branch.scales]


@loss_term(
    "two_branch",
    weights={"branch_min": "min_weight", "branch_difference": "difference_weight"},
    source="method.md §4: CN114037087A, branch 1 ← minimum, branch 2 ← first difference",
)
def two_branch(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    """Model branch 0 on the per-pixel minimum, branch 1 on mean − minimum, each with its own depth."""
    scales = _two_branch_scales(ctx)
    b1 = b2 = 0.0
    for s in scales:
        per_branch = ctx.branch_units(s)
        b1 = b1 + per_branch[0][0] / len(scales)
        if cfg.difference_loss == "first_difference":
            b2 = b2 + per_branch[1][1] / len(scales)
        else:  # "mean" = minimum + first difference: branch 2 fits all neighbours at once
            b2 = b2 + (per_branch[1][0] + per_branch[1][1]) / len(scales)
    return {"branch_min": b1, "branch_difference": b2}


@loss_term(
    "confidence",
    weights={"conf_selection": "selection_weight", "conf_calibration": "calibration_weight"},
    enabled=lambda cfg: cfg.loss.two_branch.enabled,
    source="ours (CN114037087A leaves it open): see two_branch.confidence_loss",
)
def confidence(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    """Every scale's confidences learn which branch reconstructs each pixel better.

    The per-branch errors come from the rule's maps at that scale, or from scale 0 for scales the
    rule does not use (``two_branch.scales``); the logits are upsampled to the input size.
    """
    grids = [g for g, _ in ctx.layout.branch_grids]
    scales = ctx.cfg.model.scales
    rule_scales = _two_branch_scales(ctx)
    sel = cal = 0.0
    masks: dict[int, list[torch.Tensor]] = {}
    for s in scales:
        s_rule = s if s in rule_scales else 0
        per_branch = ctx.branch_units(s_rule)
        if s_rule not in masks:
            masks[s_rule] = [per_branch[0][3][i] * per_branch[1][3][i] for i in range(len(grids))]
        for i, g in enumerate(grids):
            fn = functools.partial(
                _confidence_unit,
                size=ctx.size,
                errors=[per_branch[b][2][i] for b in range(2)],
                mask=masks[s_rule][i],
                selection_tau=cfg.selection_tau,
                calibration_tau=cfg.calibration_tau,
                selection_pool=cfg.selection_pool,
            )
            sl, cl = ctx.unit(fn, *[ctx.outputs[("conf_logit", g, b, s)] for b in range(2)])
            sel = sel + sl / len(grids) / len(scales)
            cal = cal + cl / len(grids) / len(scales)
    return {"conf_selection": sel, "conf_calibration": cal}


@loss_term(
    "pose_prior",
    weights={"pose_prior": "weight"},
    enabled=lambda cfg: cfg.loss.pose_prior.enabled and cfg.pose.source == "network",
    source="ours: two-view geometry of the images (five-point RANSAC, data/epipolar.py); odometry-free",
)
def pose_prior(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    """PoseNet rotation and translation direction against the images' own epipolar geometry.

    Per adjacent pair with an estimate (``("epipolar", a, b)`` in the batch, NaN where RANSAC was
    unsure): ``‖R − R̂‖_F / √2 + ‖t/|t| − t̂‖`` (each ≈ the angle in radians for small errors). The
    translation's length, which two images cannot give, is left to the photometric loss.
    """
    total, count = 0.0, 0.0
    for a, b in ctx.layout.pose_pairs:
        prior = ctx.batch.get(("epipolar", a, b))
        if prior is None:
            continue
        prior = prior.float().to(ctx.device)
        ok = torch.isfinite(prior).flatten(1).all(1).float()
        prior = torch.nan_to_num(prior)
        T = ctx.T(a, b)
        rot = (T[:, :3, :3] - prior[:, :3, :3]).flatten(1).norm(dim=1) / 2**0.5
        t = T[:, :3, 3]
        direction = t / t.norm(dim=1, keepdim=True).clamp(min=1e-4)
        total = total + ok * (rot + (direction - prior[:, :3, 3]).norm(dim=1))
        count = count + ok
    return {"pose_prior": total / torch.as_tensor(count).clamp(min=1.0)}


@loss_term(
    "scale_anchor",
    weights={"scale_anchor": "weight"},
    enabled=lambda cfg: cfg.loss.scale_anchor.enabled and cfg.pose.source == "network",
    source="ours (the gauge of monocular SfM, cf. Wang et al. 2018 depth normalisation)",
)
def scale_anchor(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    """Fix the one free global scale: the batch's mean translation per frame at ``translation`` model units.

    Depth and the PoseNet's translations are known only up to one common factor; left free it can
    drift until depth saturates at the head's limits (``1/(10σ + 0.01)`` ∈ [0.1, 100]), where its
    gradient vanishes. This pins that factor, ``(log mean |t| − log t₀)²`` over every pair of the
    samples the gate keeps (the same value for every sample), and nothing else: the ratios between the pairs' motions
    (speed changes) and all of depth stay free, and depth takes whatever scale the motion has. It is
    put on the motion, not on depth, because a mean over depth pixels can be met by pushing pixels
    that no loss sees (image borders) to the far limit.
    """
    ts = torch.stack([ctx.T(a, b)[:, :3, 3].norm(dim=1) for a, b in ctx.layout.pose_pairs]).mean(0)
    mean = (ts * ctx.gate).sum() / ctx.gate.sum().clamp(min=1.0)  # over the samples the gate keeps
    value = (torch.log(mean.clamp(min=1e-6)) - math.log(cfg.translation)) ** 2
    return {"scale_anchor": value.expand(ctx.bsz)}


@loss_term(
    "road_floor",
    weights={"road_floor": "weight"},
    source="ours (traffic): the road is opaque; a visible point lies on or in front of the road plane",
)
def road_floor(ctx: LossContext, cfg: Any) -> dict[str, torch.Tensor]:
    """No pixel may lie beyond the road: ``mean relu(log D − log D_road − margin)`` below the horizon.

    Per sample, the road plane is fitted to the target's own fused depth (detached;
    :func:`~dualdepth_ros.ros.scale.fit_road_plane`, RANSAC on the lower ``region`` of the image, a
    plane below the camera within ``max_tilt_deg`` of its down axis; no plane, no term). ``D_road``
    is the depth at which each pixel's ray meets that plane. A vehicle that keeps pace with the
    camera looks infinitely far to every warp term, but its pixels below the horizon cannot be
    farther than the road they stand on: this pulls them to at most that depth and leaves every
    pixel in front of the road (and the sky, whose rays never meet it) alone. Scale-free (log depth),
    so it does not fix the scale. A road that falls away beyond a crest breaks the premise: ``margin``
    tolerates mild slopes.
    """
    from ..geometry import backproject
    from ..intrinsics import Intrinsics
    from ..ros.scale import fit_road_plane

    depth = ctx.outputs[("depth_fused", ctx.layout.target, 0)].float()
    h, w = depth.shape[-2:]
    K = K_at(ctx.K, ctx.size, (h, w)).float()[:, :3, :3].expand(depth.shape[0], 3, 3)
    rays = backproject(torch.ones_like(depth), K)  # B×3×H×W, each pixel's ray with z = 1
    Ks = K.detach().double().cpu().numpy()
    values = []
    for b in range(depth.shape[0]):
        fit = fit_road_plane(
            depth[b, 0].detach().cpu().numpy(),
            Intrinsics.from_matrix(Ks[b], w, h),
            region=cfg.region,
            max_tilt_deg=cfg.max_tilt_deg,
        )
        if fit is None:
            values.append(depth.new_zeros(()))
            continue
        normal = torch.as_tensor(fit.normal, dtype=rays.dtype, device=rays.device)
        toward = torch.einsum("c,chw->hw", normal, rays[b])  # n · ray: > 0 where the ray meets the road
        below = toward > 1e-6
        road = fit.height / toward.clamp(min=1e-6)
        excess = torch.relu(torch.log(depth[b, 0].clamp(min=1e-6)) - torch.log(road) - cfg.margin)
        values.append((excess * below).sum() / below.sum().clamp(min=1))
    return {"road_floor": torch.stack(values)}
