"""The loss terms, one function each, registered with their config section (:mod:`.registry`).

Every function takes the shared :class:`~.context.LossContext` and its own config section and
returns unweighted per-sample (``B``) values; multi-scale terms average over their scales.
Registration order is evaluation order.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..geometry import backproject, sample, transform_points, warp
from .consistency import (
    edge_aware_smoothness,
    featuremetric_error,
    occlusion_mask,
    scale_invariant_log_error,
    structure_consistency,
)
from .context import K_at, LossContext, resize, resize_depth
from .photometric import masked_mean
from .registry import loss_term
from .two_branch import confidence_loss, two_branch_terms

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
        views = ctx.views(s)
        photo = ctx.photometric(views, tgt, srcs)
        if cfg.bidirectional:
            photo = photo + sum(ctx.photometric(views, r, (tgt,)) for r in srcs) / len(srcs)
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
        dsc = [masked_mean(v.depth_diff, v.valid) for v in ctx.views(s).values()]
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
                    d = d.float()
                    sm = sm + edge_aware_smoothness(1.0 / d, ctx.color(f, tuple(d.shape[-2:]))) / len(d_list)
            total = total + sm / len(frames) / (2**s) / len(scales)
        out["smoothness"] = total
    if cfg.feature_weight > 0:
        feat = ctx.outputs[("features", ctx.layout.target)][0].float()
        out["feature_smoothness"] = edge_aware_smoothness(feat, ctx.color(ctx.layout.target, tuple(feat.shape[-2:])))
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
    v = ctx.views(0)[(tgt, -1)]
    prev = ctx.depth(-1, 0)
    with torch.no_grad():
        dd = v.depth_diff
        if dd is None:
            dd = structure_consistency(v.warp.z, sample(prev, v.warp.pix), lc.structure.erf_eps)
        mask = v.valid * (dd < cfg.max_depth_diff).to(v.valid.dtype)
    # D_{t−1} warped into t: frame −1's points expressed in camera t, sampled where t's pixels land.
    z_prev_in_t = transform_points(ctx.T(-1, tgt), backproject(prev, ctx.K))[:, 2:3]
    warped_prev = sample(z_prev_in_t, v.warp.pix)
    return {"temporal": scale_invariant_log_error(ctx.depth(tgt, 0), warped_prev, mask, cfg.si_lambda)}


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
        x = ctx.outputs[("features", f)][0].float()
        feats[f] = x.detach() if cfg.detach_features else x
    size = tuple(feats[tgt].shape[-2:])
    K = K_at(ctx.K, ctx.size, size)
    d = {f: resize_depth(ctx.depth(f, 0), size) for f in (tgt, *srcs)}
    pairs = [p for r in srcs for p in ((tgt, r), (r, tgt))]
    n = len(pairs)
    w = warp(
        torch.cat([feats[src] for _, src in pairs]),
        torch.cat([d[g] for g, _ in pairs]),
        torch.cat([ctx.T(g, src) for g, src in pairs]),
        K.repeat(n, 1, 1),
    )
    mask = w.valid
    if lc.occlusion.enabled:
        mask = mask * occlusion_mask(
            torch.cat([d[g] for g, _ in pairs]),
            torch.cat([d[src] for _, src in pairs]),
            torch.cat([ctx.T(g, src) for g, src in pairs]),
            torch.cat([ctx.T(src, g) for g, src in pairs]),
            K.repeat(n, 1, 1),
            lc.occlusion.alpha1,
            lc.occlusion.alpha2,
        )
    err = masked_mean(featuremetric_error(torch.cat([feats[g] for g, _ in pairs]), w.image), mask)
    return {"featuremetric": err.view(n, -1).sum(0) / len(srcs)}


def _two_branch_scales(ctx: LossContext) -> list[int]:
    return [s for s in ctx.cfg.model.scales if s in ctx.lc.two_branch.scales]


def _branch_terms(ctx: LossContext, s: int) -> list[tuple[Any, ...]]:
    """:func:`two_branch_terms` of each branch's own maps at scale ``s`` (cached: used twice)."""

    def make() -> list[tuple[Any, ...]]:
        identity = [ctx.identity(g, srcs, "min") for g, srcs in ctx.layout.branch_grids]
        ident = None if any(i is None for i in identity) else identity
        return [two_branch_terms(es, vs, ident) for es, vs in ctx.branch_maps(s)]

    return ctx._cached(("branch_terms", s), make)


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
        per_branch = _branch_terms(ctx, s)
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
    for s in scales:
        per_branch = _branch_terms(ctx, s if s in rule_scales else 0)
        for i, g in enumerate(grids):
            logits = [resize(ctx.outputs[("conf_logit", g, b, s)].float(), ctx.size) for b in range(2)]
            errs = [per_branch[b][2][i] for b in range(2)]
            mask = per_branch[0][3][i] * per_branch[1][3][i]
            sl, cl = confidence_loss(logits, errs, mask, cfg.selection_tau, cfg.calibration_tau)
            sel = sel + sl / len(grids) / len(scales)
            cal = cal + cl / len(grids) / len(scales)
    return {"conf_selection": sel, "conf_calibration": cal}


@loss_term(
    "pose_prior",
    weights={"pose_prior": "weight"},
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
    batch (the same value for every sample), and nothing else: the ratios between the pairs' motions
    (speed changes) and all of depth stay free, and depth takes whatever scale the motion has. It is
    put on the motion, not on depth, because a mean over depth pixels can be met by pushing pixels
    that no loss sees (image borders) to the far limit.
    """
    ts = torch.stack([ctx.T(a, b)[:, :3, 3].norm(dim=1) for a, b in ctx.layout.pose_pairs])
    value = (torch.log(ts.mean().clamp(min=1e-6)) - math.log(cfg.translation)) ** 2
    return {"scale_anchor": value.expand(ctx.bsz)}
