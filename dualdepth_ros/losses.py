"""Self-supervised losses: small pure functions, combined by :func:`compute_losses`.

Every term names its source (method.md section); every weight and switch is in
``config/train.yaml`` (``loss:``). All geometry goes through :mod:`dualdepth_ros.geometry`.

Interface with the trainer
==========================
The trainer's step is::

    model = DepthModel(cfg)                      # networks.py
    loss_fn = SelfSupervisedLoss(cfg)            # this module
    outputs = model(batch)
    total, terms = loss_fn(batch, outputs)       # total: scalar tensor; terms: name → scalar tensor
    total.backward()

Clip layout (:func:`clip_layout`)
---------------------------------
Frames are named by their integer offset from the clip's centre frame 0.

* **Standard** (two-branch rule off): ``frames = (-1, 0, 1)``. Frame 0 is the *target*
  (monodepth2's vocabulary: the frame whose depth is trained), ±1 the *sources* (CN113160294B:
  *references*). Depth is predicted for 0 only (monodepth2 baseline) or for −1, 0, +1 when a term
  needs a reference's depth (bidirectional, occlusion, structure, feature-metric, temporal).
* **Two-branch rule** (CN114037087A, method.md §4): ``frames = (-2, -1, 0, 1, 2)``. In the patent's
  words frame 0 is the *source image*, ±1 its *target images*, and each target's *neighbouring
  images* are ``{-2, 0}`` for −1 and ``{0, 2}`` for +1. Depth is predicted for −1, 0, +1.
  The reprojection maps of the rule live on three pixel grids, each reconstructed from its two
  adjacent frames with its own depth: grid −1 from −2 and 0 (contains the patent's 3←4 and our
  completion 3←2), grid 0 from −1 and +1 (the patent's 4←3, 4←5), grid +1 from 0 and +2 (5←4, 5←6).
  The patent's 2←3 and 6←5 would need depth of the clip's end frames and have no partner on
  their grid, so we use the symmetric completion above (see :func:`two_branch_terms`).
  The other terms (photometric etc.) use the standard layout inside this clip.

``batch`` (what the data loader provides)
-----------------------------------------
``("color", f, 0)``      ``B×3×H×W`` float RGB in [0, 1], for every ``f`` in ``layout.frames``
                         (the loss compares these; optional ``("color", f, s)`` at lower scales are
                         used when their size matches, otherwise they are made by area resizing).
``("color_aug", f, 0)``  optional, same shape: what the networks see (colour augmentation).
``("K", 0)``             ``B×3×3`` intrinsics at ``H×W`` (pixels, centre convention of geometry.py);
                         other scales are derived with the half-pixel rule.

``outputs`` (what :class:`~dualdepth_ros.networks.DepthModel` returns)
------------------------------------------------------------------------
``("depth", f, b, s)``     ``B×1×H_s×W_s`` depth of branch ``b`` at scale ``s``, model units
``("conf", f, b, s)``      ``B×1×H_s×W_s`` confidence in [0, 1]
``("conf_logit", f, b, s)`` its logit (needed by the confidence loss when the two-branch rule is on)
``("depth_fused", f, s)``  ``B×1×H_s×W_s`` per pixel the most confident branch's depth
``("features", f)``        list of encoder maps; ``[0]`` is the highest resolution (stride 2)
``("T", a, b)``            ``B×4×4`` ``T_a_to_b`` (points of camera ``a`` into camera ``b``) for every
                           adjacent pair of ``layout.pose_pairs`` in both directions
for every ``f`` in ``layout.depth_frames``, branch ``b < num_branches``, scale ``s`` in ``model.scales``.

``terms`` (returned)
--------------------
Unweighted per-term means over the samples the gate kept (tensors that still carry gradient:
``photometric, smoothness, structure, featuremetric, temporal, feature_smoothness, branch_min,
branch_difference, conf_selection, conf_calibration``, only the enabled ones), and detached diagnostics
``gate_kept`` (fraction of samples kept) and ``first_difference`` (mean gate statistic).

Terms, their sources and which depth they use
---------------------------------------------
* ``photometric`` (monodepth2 §3; CN113160294B §5) on the **fused** depth: target 0 from sources ±1,
  per-pixel minimum (or mean) reprojection, auto-mask, invalid pixels dropped; with
  ``bidirectional`` plus each source reconstructed from the target with its own depth and the
  inverse pose; each map restricted to flow-consistent pixels (``occlusion``) and weighted by
  ``1 − depth_diff`` (``structure.weight_photometric``). Full-resolution multi-scale.
* ``structure`` (CN113160294B): mean ``depth_diff`` over valid, flow-consistent pixels, both directions.
* ``smoothness`` (monodepth2): edge-aware, mean-normalised inverse depth, ``/ 2^s``; ``feature_smoothness``
  (CN113160294B): the same on the stride-2 encoder features of frame 0.
* ``featuremetric`` (CN113160294B), scale 0: ``|f_tgt − f̂_ref| + |f_ref − f̂_tgt|`` on the stride-2 features.
* ``temporal`` (OPPO, §6), scale 0: scale-invariant log difference of ``D_0`` and ``D_{−1}`` warped into
  frame 0, on valid, flow-consistent pixels with ``depth_diff < temporal.max_depth_diff``.
* ``branch_min`` trains model branch ``b = 0`` (the patent's branch 1) on the per-pixel minimum of the
  rule's reprojection maps computed with **its own** depth; ``branch_difference`` trains ``b = 1``
  (branch 2) on the first difference (mean − minimum) computed with **its own** depth (CN114037087A).
* ``conf_selection`` / ``conf_calibration``: our confidence training (:func:`confidence_loss`).
* Gate (CN114037087A): per sample, the largest over the rule's three grids of the image-mean first
  difference of the fused depth (scale 0, no gradient); ``≥ two_branch.gate_threshold`` → the sample
  has weight 0 in **every** term (in train mode BatchNorm statistics still see it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .geometry import (
    WarpResult,
    backproject,
    pixel_grid,
    rigid_flow,
    sample,
    scale_intrinsics,
    transform_points,
    warp,
)

__all__ = [
    "ClipLayout",
    "clip_layout",
    "ssim",
    "dssim",
    "erf_distance",
    "photometric_error",
    "select_reprojection",
    "min_mean_first_difference",
    "automask",
    "masked_mean",
    "edge_aware_smoothness",
    "flow_consistency_mask",
    "occlusion_mask",
    "structure_consistency",
    "featuremetric_error",
    "scale_invariant_log_error",
    "confidence_loss",
    "two_branch_terms",
    "gate_statistic",
    "compute_losses",
    "SelfSupervisedLoss",
]


# ---------------------------------------------------------------------------------------
# Clip layout
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ClipLayout:
    """Which frames a configuration needs (see the module docstring).

    Attributes
    ----------
    frames : offsets the batch must hold as ``("color", f, 0)``.
    depth_frames : offsets the depth net runs on.
    pose_pairs : adjacent ``(a, a + 1)`` pairs whose ``T`` is predicted (both directions are output).
    target : the frame of the standard photometric term.
    sources : its source (reference) frames.
    branch_grids : ``(grid, (source, source))`` of the two-branch rule; empty when it is off.
    """

    frames: tuple[int, ...]
    depth_frames: tuple[int, ...]
    pose_pairs: tuple[tuple[int, int], ...]
    target: int = 0
    sources: tuple[int, ...] = (-1, 1)
    branch_grids: tuple[tuple[int, tuple[int, int]], ...] = ()


def clip_layout(cfg: Any) -> ClipLayout:
    """The :class:`ClipLayout` of a :class:`~dualdepth_ros.config.Config`."""
    lc = cfg.loss
    two = lc.two_branch.enabled
    need_ref_depth = two or any(
        (
            lc.photometric.bidirectional,
            lc.occlusion.enabled,
            lc.structure.enabled,
            lc.temporal.enabled,
            lc.featuremetric.enabled,
        )
    )
    if two:
        return ClipLayout(
            frames=(-2, -1, 0, 1, 2),
            depth_frames=(-1, 0, 1),
            pose_pairs=((-2, -1), (-1, 0), (0, 1), (1, 2)),
            branch_grids=((-1, (-2, 0)), (0, (-1, 1)), (1, (0, 2))),
        )
    return ClipLayout(
        frames=(-1, 0, 1),
        depth_frames=(-1, 0, 1) if need_ref_depth else (0,),
        pose_pairs=((-1, 0), (0, 1)),
    )


# ---------------------------------------------------------------------------------------
# Photometric error (method.md §2: CN113160294B; monodepth2)
# ---------------------------------------------------------------------------------------
def _box3(x: torch.Tensor) -> torch.Tensor:
    """3×3 mean filter without padding (depthwise conv: much faster than ``avg_pool2d`` on CPU)."""
    c = x.shape[1]
    k = torch.full((c, 1, 3, 3), 1.0 / 9.0, dtype=x.dtype, device=x.device)
    return F.conv2d(x, k, groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, c1: float = 0.01**2, c2: float = 0.03**2) -> torch.Tensor:
    """SSIM index map over a 3×3 window, reflection padding (monodepth2's ``SSIM``).

    Parameters
    ----------
    x, y : ``B×C×H×W`` images in [0, 1].

    Returns
    -------
    ``B×C×H×W`` SSIM (1 = identical), computed per channel with population (co)variances.
    """
    c = x.shape[1]
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    y = F.pad(y, (1, 1, 1, 1), mode="reflect")
    stats = _box3(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mu_x, mu_y, xx, yy, xy = torch.split(stats, c, dim=1)
    sigma_x = xx - mu_x**2
    sigma_y = yy - mu_y**2
    sigma_xy = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
    return num / den


def dssim(x: torch.Tensor, y: torch.Tensor, c1: float = 0.01**2, c2: float = 0.03**2) -> torch.Tensor:
    """``clamp((1 − SSIM) / 2, 0, 1)``, ``B×C×H×W``."""
    return torch.clamp((1 - ssim(x, y, c1, c2)) / 2, 0, 1)


def erf_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """Robust distance ``ERF(a, b) = sqrt((a − b)² + ε²)`` (CN113160294B), elementwise."""
    return torch.sqrt((a - b) ** 2 + eps * eps)


def photometric_error(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.85,
    rho: str = "l1",
    eps: float = 0.01,
    c1: float = 0.01**2,
    c2: float = 0.03**2,
) -> torch.Tensor:
    """``pe = α (1 − SSIM)/2 + (1 − α) ρ(pred − target)``, averaged over channels (method.md §2).

    Parameters
    ----------
    pred, target : ``B×C×H×W`` images in [0, 1].
    rho : ``"l1"`` (monodepth2) or ``"erf"`` (CN113160294B, ``sqrt(d² + ε²)``).

    Returns
    -------
    ``B×1×H×W`` error (image units; 0 for identical images with ``l1``, ``(1−α)ε`` with ``erf``).
    """
    if rho == "l1":
        r = (pred - target).abs()
    elif rho == "erf":
        r = erf_distance(pred, target, eps)
    else:
        raise ValueError(f"rho must be 'l1' or 'erf', got {rho!r}")
    return alpha * dssim(pred, target, c1, c2).mean(1, keepdim=True) + (1 - alpha) * r.mean(1, keepdim=True)


# ---------------------------------------------------------------------------------------
# Reprojection selection and masks (method.md §3: monodepth2)
# ---------------------------------------------------------------------------------------
_BIG = 1e4


def select_reprojection(
    errors: Sequence[torch.Tensor], valids: Sequence[torch.Tensor], mode: str = "min"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine per-source reprojection errors per pixel, ignoring invalid sources.

    Parameters
    ----------
    errors, valids : one ``B×1×H×W`` error map and {0, 1} validity map per source.
    mode : ``"min"`` (per-pixel minimum reprojection, monodepth2) or ``"mean"`` (over valid sources).

    Returns
    -------
    error : ``B×1×H×W`` selected error (0 where no source is valid).
    valid : ``B×1×H×W`` 1 where at least one source is valid.
    weights : ``B×S×H×W`` each source's share of the selected error (one-hot for ``min``), so that
        per-source weights can be combined the same way: ``(weights * w).sum(1)``.
    """
    e = torch.cat(list(errors), 1)
    v = torch.cat(list(valids), 1)
    any_valid = v.amax(1, keepdim=True)
    if mode == "min":
        idx = torch.min(torch.where(v > 0, e, e + _BIG), dim=1, keepdim=True).indices  # first minimum on ties
        share = torch.zeros_like(e).scatter_(1, idx, 1.0) * any_valid
    elif mode == "mean":
        share = v / v.sum(1, keepdim=True).clamp(min=1)
    else:
        raise ValueError(f"reprojection mode must be 'min' or 'mean', got {mode!r}")
    return (share * e).sum(1, keepdim=True), any_valid, share


def min_mean_first_difference(
    errors: Sequence[torch.Tensor], valids: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel minimum, mean and first difference (mean − minimum) over valid maps (CN114037087A).

    Returns ``(minimum, mean, first_difference, any_valid)``, each ``B×1×H×W``; where only one map
    is valid the first difference is 0; where none is, everything is 0.
    """
    mn, any_valid, _ = select_reprojection(errors, valids, "min")
    mean, _, _ = select_reprojection(errors, valids, "mean")
    return mn, mean, (mean - mn) * any_valid, any_valid


def automask(reprojection: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """Auto-mask (monodepth2): 1 where warping explains the pixel better than not warping.

    ``identity`` is the selected error of the *unwarped* sources, already carrying the 1e-5 random
    tie-breaker. Returns a detached ``B×1×H×W`` float mask.
    """
    return (reprojection < identity).to(reprojection.dtype).detach()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``x`` over ``mask`` (both ``B×C×H×W``, mask broadcastable) → ``B``; 0 if empty."""
    mask = mask.expand_as(x)
    return (x * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1.0)


# ---------------------------------------------------------------------------------------
# Smoothness (method.md §3, §5)
# ---------------------------------------------------------------------------------------
def edge_aware_smoothness(x: torch.Tensor, image: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Edge-aware first-order smoothness ``|∂x x*| e^{−|∂x I|} + |∂y x*| e^{−|∂y I|}`` (monodepth2).

    Parameters
    ----------
    x : ``B×C×H×W``: inverse depth (``C = 1``) or feature maps.
    image : ``B×3×H×W`` image at the same resolution.
    normalise : divide ``x`` by its per-sample, per-channel spatial mean of ``|x|`` (``d* = d / mean d``),
        which makes the term blind to scale (no reward for shrinking depth or features).

    Returns
    -------
    ``B`` per-sample loss (mean over pixels and channels).
    """
    if normalise:
        x = x / (x.abs().mean(dim=(2, 3), keepdim=True) + 1e-7)
    gx = (x[..., :, :-1] - x[..., :, 1:]).abs()
    gy = (x[..., :-1, :] - x[..., 1:, :]).abs()
    ix = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    iy = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (gx * torch.exp(-ix)).flatten(1).mean(1) + (gy * torch.exp(-iy)).flatten(1).mean(1)


# ---------------------------------------------------------------------------------------
# Occlusion, structure, feature-metric, temporal (method.md §5, §6)
# ---------------------------------------------------------------------------------------
def flow_consistency_mask(
    flow: torch.Tensor, flow_back: torch.Tensor, alpha1: float = 0.01, alpha2: float = 0.5
) -> torch.Tensor:
    """Forward-backward consistency (CN113160294B): ``|u + û|² < α1 (|u|² + |û|²) + α2``.

    Parameters
    ----------
    flow : ``B×2×H×W`` rigid flow ``u`` of the target's pixels into the reference (pixels).
    flow_back : ``B×2×H×W`` the reference→target flow sampled where each target pixel lands (``û``).

    Returns
    -------
    ``B×1×H×W`` float, 1 where consistent (visible in both views), 0 where occluded. We weight the
    losses by this mask (the patent's ``1 − mask`` contradicts its own definition; method.md §5).
    """
    lhs = (flow + flow_back).pow(2).sum(1, keepdim=True)
    rhs = alpha1 * (flow.pow(2).sum(1, keepdim=True) + flow_back.pow(2).sum(1, keepdim=True)) + alpha2
    return (lhs < rhs).to(flow.dtype)


def occlusion_mask(
    depth_target: torch.Tensor,
    depth_ref: torch.Tensor,
    T_target_to_ref: torch.Tensor,
    T_ref_to_target: torch.Tensor,
    K: torch.Tensor,
    alpha1: float = 0.01,
    alpha2: float = 0.5,
    pix: torch.Tensor | None = None,
    flow_back: torch.Tensor | None = None,
) -> torch.Tensor:
    """Non-occluded mask of the target view against one reference, from rigid flows (CN113160294B).

    Parameters
    ----------
    depth_target, depth_ref : ``B×1×H×W`` depths (model units) of the two views.
    T_target_to_ref, T_ref_to_target : ``B×4×4``.
    K : ``B×3×3`` at this resolution.
    pix, flow_back : optional precomputed target→reference pixel positions and ref→target flow.

    Returns
    -------
    ``B×1×H×W`` detached float mask, 1 = consistent (not occluded).
    """
    with torch.no_grad():
        h, w = depth_target.shape[-2:]
        grid = pixel_grid(h, w, device=depth_target.device, dtype=depth_target.dtype)[:2].unsqueeze(0)
        if pix is None:
            pix = grid + rigid_flow(depth_target, T_target_to_ref, K)
        if flow_back is None:
            flow_back = rigid_flow(depth_ref, T_ref_to_target, K)
        u = pix - grid
        u_hat = sample(flow_back, pix)
        return flow_consistency_mask(u, u_hat, alpha1, alpha2)


def structure_consistency(z_hat: torch.Tensor, d_hat: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """``depth_diff = ERF(Ẑ, d̂) / (Ẑ + d̂)`` (CN113160294B; SC-SfMLearner with the robust ERF).

    Parameters
    ----------
    z_hat : ``B×1×H×W`` depth of each target pixel's 3-D point seen from the reference camera.
    d_hat : ``B×1×H×W`` the reference's predicted depth sampled where that point projects.

    Returns
    -------
    ``B×1×H×W`` in [0, 1) (about ``ε / 2Z`` for equal depths, → 1 for very different ones).
    """
    z_hat = z_hat.clamp(min=1e-3)
    return erf_distance(z_hat, d_hat, eps) / (z_hat + d_hat)


def featuremetric_error(feat_target: torch.Tensor, feat_warped: torch.Tensor) -> torch.Tensor:
    """``|f_tgt − f̂_ref|`` averaged over channels (CN113160294B feature-metric loss) → ``B×1×h×w``."""
    return (feat_target - feat_warped).abs().mean(1, keepdim=True)


def scale_invariant_log_error(
    depth: torch.Tensor, depth_other: torch.Tensor, mask: torch.Tensor, lam: float = 1.0
) -> torch.Tensor:
    """Scale-invariant log difference (Eigen et al. 2014) between two depth maps on ``mask``.

    ``d = log D − log D'``; returns per sample ``mean(d²) − λ mean(d)²`` over the mask (``B``).
    With ``λ = 1`` it is the variance of ``d``: blind to a global scale between the two maps.
    Used for the temporal term (OPPO patent, method.md §6) between ``D_t`` and ``D_{t−1}`` warped into ``t``.
    """
    d = torch.log(depth.clamp(min=1e-3)) - torch.log(depth_other.clamp(min=1e-3))
    m1 = masked_mean(d, mask)
    m2 = masked_mean(d * d, mask)
    return (m2 - lam * m1 * m1).clamp(min=0)


# ---------------------------------------------------------------------------------------
# Two-branch rule and confidences (method.md §4: CN114037087A)
# ---------------------------------------------------------------------------------------
def confidence_loss(
    logits: Sequence[torch.Tensor],
    errors: Sequence[torch.Tensor],
    mask: torch.Tensor,
    selection_tau: float = 0.01,
    calibration_tau: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence training: the higher confidence marks the branch that reconstructs the pixel better.

    Our design (the patent leaves it open; method.md §4). With per-pixel reprojection errors
    ``e_b`` of each branch ``b`` computed with its own depth (detached: the confidences never
    move the depths):

    Both are binary cross-entropies with soft targets, reported minus the targets' entropy (i.e. as
    KL divergences: same gradients, 0 at the optimum).

    * **selection** (pairwise, 2 branches): a per-pixel classification target
      ``y = sigmoid((e_1 − e_0) / τ_sel)`` (≈1 where branch 0 is clearly better, ½ on ties) and
      BCE on ``sigmoid(l_0 − l_1)``, i.e. a softmax over the two confidence logits. This trains
      exactly the decision the fusion takes (``argmax`` of the confidences).
    * **calibration** (each branch): BCE of ``sigmoid(l_b)`` against ``exp(−e_b / τ_cal)``, a monotone
      map of the branch's own error to (0, 1]. It fixes the absolute level, so the fused
      confidence ranks pixels across the image by expected error (what AUSE/AURG measure); and at
      its optimum it alone also orders the branches correctly.

    Parameters
    ----------
    logits : per branch ``B×1×H×W`` confidence logits (same resolution as ``errors``).
    errors : per branch ``B×1×H×W`` photometric errors (per-pixel min over sources).
    mask : ``B×1×H×W`` pixels where every branch has a valid error.

    Returns
    -------
    selection, calibration : ``B`` per-sample losses (selection is 0 for one branch).
    """
    errs = [e.detach() for e in errors]
    cal = sum(masked_mean(_bce_kl(lg, torch.exp(-e / calibration_tau)), mask) for lg, e in zip(logits, errs)) / len(
        logits
    )
    if len(logits) < 2:
        return torch.zeros_like(cal), cal
    if len(logits) != 2:
        raise ValueError("the selection term is defined for two branches")
    y = torch.sigmoid((errs[1] - errs[0]) / selection_tau)
    sel = masked_mean(_bce_kl(logits[0] - logits[1], y), mask)
    return sel, cal


def _bce_kl(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with soft targets minus the targets' entropy: ``KL(target ‖ sigmoid(logit))`` ≥ 0.

    Same gradient as BCE; the constant removed makes the optimum 0 (BCE's floor is the entropy).
    """
    t = target.clamp(1e-6, 1 - 1e-6)
    entropy = -(t * torch.log(t) + (1 - t) * torch.log1p(-t))
    return F.binary_cross_entropy_with_logits(logit, target, reduction="none") - entropy


def two_branch_terms(
    errors: Sequence[Sequence[torch.Tensor]],
    valids: Sequence[Sequence[torch.Tensor]],
    identity: Sequence[torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The two-branch rule for one branch's reprojection maps (CN114037087A; method.md §4).

    Parameters
    ----------
    errors, valids : per grid, the ``B×1×H×W`` maps of that grid reconstructed from each of its
        neighbours with *this branch's* depth (see the module docstring for the grids).
    identity : per grid the auto-mask identity error (minimum over the unwarped neighbours), or
        ``None`` (no auto-masking).

    Returns
    -------
    minimum, first_difference : ``B`` per-sample means over the grids (each over its masked pixels).
        The caller trains branch 1 with the **minimum** computed from branch 1's depth and branch 2
        with the **first difference** (mean − minimum) computed from branch 2's depth.
    per_grid_min, per_grid_mask : the per-pixel minimum and the mask per grid (for the confidences).
    """
    mins, fds, maps, masks = [], [], [], []
    for g, (es, vs) in enumerate(zip(errors, valids)):
        mn, _, fd, any_valid = min_mean_first_difference(es, vs)
        mask = any_valid if identity is None else any_valid * automask(mn, identity[g])
        mins.append(masked_mean(mn, mask))
        fds.append(masked_mean(fd, mask))
        maps.append(mn)
        masks.append(any_valid)
    return torch.stack(mins).mean(0), torch.stack(fds).mean(0), maps, masks


# ---------------------------------------------------------------------------------------
# Combination
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class _View:
    """Grid ``g`` reconstructed from frame ``r``: error, validity, photometric weight, depth_diff."""

    warp: WarpResult
    error: torch.Tensor
    valid: torch.Tensor
    weight: torch.Tensor
    depth_diff: torch.Tensor | None


def _resize_depth(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize depth by bilinear interpolation of inverse depth (monodepth2 upsamples disparity)."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return 1.0 / F.interpolate(1.0 / depth, size=size, mode="bilinear", align_corners=False)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _K_at(K: torch.Tensor, full: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    return scale_intrinsics(K, size[1] / full[1], size[0] / full[0])


class _Context:
    """Shared state of one :func:`compute_losses` call (caches of identity errors)."""

    def __init__(self, batch: Mapping[Any, Any], outputs: Mapping[Any, Any], cfg: Any) -> None:
        self.batch, self.outputs, self.cfg = batch, outputs, cfg
        self.lc = cfg.loss
        p = self.lc.photometric
        self.pe_kwargs = dict(alpha=p.alpha, rho=p.rho, eps=p.erf_eps, c1=p.ssim_c1, c2=p.ssim_c2)
        self.layout = clip_layout(cfg)
        self.K = batch[("K", 0)]
        img0 = batch[("color", self.layout.target, 0)]
        self.size = (img0.shape[-2], img0.shape[-1])
        self._identity: dict[tuple[int, ...], torch.Tensor] = {}

    def color(self, f: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None or tuple(size) == self.size:
            return self.batch[("color", f, 0)]
        for key in (k for k in self.batch if isinstance(k, tuple) and k[:2] == ("color", f)):
            t = self.batch[key]
            if tuple(t.shape[-2:]) == tuple(size):
                return t
        return _resize(self.batch[("color", f, 0)], size, "area")

    def pe(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fn = functools.partial(photometric_error, **self.pe_kwargs)
        if self.lc.photometric.checkpoint and torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad):
            # Keep only the inputs; recompute SSIM's ~20 full-resolution intermediates in backward.
            return torch.utils.checkpoint.checkpoint(fn, pred, target, use_reentrant=False)
        return fn(pred, target)

    def identity(self, g: int, sources: Sequence[int], mode: str | None = None) -> torch.Tensor | None:
        """Auto-mask identity error of grid ``g``: selected ``pe(I_g, I_s)`` + 1e-5 noise (cached)."""
        p = self.lc.photometric
        if not p.automask:
            return None
        mode = mode or p.reprojection
        key = (g, mode, *sources)
        if key not in self._identity:
            with torch.no_grad():
                errs = [self.pe(self.color(s), self.color(g)) for s in sources]
                ones = [torch.ones_like(e) for e in errs]
                sel, _, _ = select_reprojection(errs, ones, mode)
                self._identity[key] = sel + p.automask_noise * torch.randn_like(sel)
        return self._identity[key]

    def T(self, a: int, b: int) -> torch.Tensor:
        return self.outputs[("T", a, b)]

    def views(
        self, pairs: Sequence[tuple[int, int]], depth: Mapping[int, torch.Tensor], K: torch.Tensor
    ) -> dict[tuple[int, int], _View]:
        """Reconstruct grid ``g`` from ``r`` for each ``(g, r)`` with masks and weights of the config."""
        lc = self.lc
        warps = {(g, r): warp(self.color(r), depth[g], self.T(g, r), K) for g, r in pairs}
        out: dict[tuple[int, int], _View] = {}
        for (g, r), w in warps.items():
            valid = w.valid
            if lc.occlusion.enabled:
                back = warps.get((r, g))
                h, wd = depth[g].shape[-2:]
                flow_back = None
                if back is not None:
                    flow_back = back.pix - pixel_grid(h, wd, device=w.pix.device, dtype=w.pix.dtype)[:2].unsqueeze(0)
                mask = occlusion_mask(
                    depth[g],
                    depth[r],
                    self.T(g, r),
                    self.T(r, g),
                    K,
                    lc.occlusion.alpha1,
                    lc.occlusion.alpha2,
                    pix=w.pix.detach(),
                    flow_back=None if flow_back is None else flow_back.detach(),
                )
                valid = valid * mask
            dd = None
            weight = torch.ones_like(valid)
            if lc.structure.enabled:
                d_hat = sample(depth[r], w.pix)
                dd = structure_consistency(w.z, d_hat, lc.structure.erf_eps)
                if lc.structure.weight_photometric:
                    weight = 1 - (dd.detach() if lc.structure.detach_weight else dd)
            error = self.pe(w.image, self.color(g))
            out[(g, r)] = _View(w, error, valid, weight, dd)
        return out

    def photometric(self, views: Mapping[tuple[int, int], _View], g: int, sources: Sequence[int]) -> torch.Tensor:
        """Photometric term of grid ``g`` over ``sources``: selection, weights, auto-mask → ``B``."""
        vs = [views[(g, r)] for r in sources]
        mode = self.lc.photometric.reprojection
        err, any_valid, share = select_reprojection([v.error for v in vs], [v.valid for v in vs], mode)
        weight = (share * torch.cat([v.weight for v in vs], 1)).sum(1, keepdim=True)
        mask = any_valid
        ident = self.identity(g, sources)
        if ident is not None:
            mask = mask * automask(err, ident)
        return masked_mean(weight * err, mask)


def compute_losses(
    batch: Mapping[Any, Any], outputs: Mapping[Any, Any], cfg: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total self-supervised loss and its terms (layout and ``terms``: module docstring).

    Per scale ``s`` (full-resolution multi-scale, monodepth2), each depth is upsampled to the input
    resolution before warping; scale terms are averaged over scales. Per sample::

        total = w_photo·L_photo + w_s·Σ_s L_smooth,s / 2^s / n_s + w_dsc·L_dsc + w_feat·L_feat
              + w_temp·L_temp + w_fs·L_feature_smooth + w_min·L_branch_min + w_diff·L_branch_difference
              + w_sel·L_conf_selection + w_cal·L_conf_calibration

    With the two-branch gate on, samples whose gate statistic (the largest, over the rule's grids,
    image-mean first difference of the fused depth at scale 0) is ≥ the threshold get weight 0 in
    every term; the total is the mean over the kept samples (0, still differentiable, if none).
    """
    ctx = _Context(batch, outputs, cfg)
    lc, layout = ctx.lc, ctx.layout
    H, W = ctx.size
    K = ctx.K
    scales = list(cfg.model.scales)
    nb = cfg.model.num_branches
    tgt, srcs = layout.target, layout.sources
    have_ref_depth = all(f in layout.depth_frames for f in srcs)
    bsz = batch[("color", tgt, 0)].shape[0]
    zero = batch[("color", tgt, 0)].new_zeros(bsz)

    acc: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        acc[name] = acc.get(name, zero) + value

    for s in scales:
        depth = {f: _resize_depth(outputs[("depth_fused", f, s)], (H, W)) for f in layout.depth_frames}

        # --- photometric on the fused depth (monodepth2 + CN113160294B) -------------------
        pairs = [(tgt, r) for r in srcs]
        if lc.photometric.bidirectional:
            pairs += [(r, tgt) for r in srcs]
        views = ctx.views(pairs, depth, K)
        photo = ctx.photometric(views, tgt, srcs)
        if lc.photometric.bidirectional:
            photo = photo + sum(ctx.photometric(views, r, (tgt,)) for r in srcs) / len(srcs)
        add("photometric", photo / len(scales))

        if lc.structure.enabled:
            dsc = [masked_mean(v.depth_diff, v.valid) for v in views.values()]
            add("structure", sum(dsc) / len(dsc) / len(scales))

        # --- smoothness (monodepth2), at the scale's own resolution -----------------------
        if lc.smoothness.weight > 0:
            sm = zero
            frames = layout.depth_frames
            for f in frames:
                if lc.smoothness.target == "fused":
                    d_list = [outputs[("depth_fused", f, s)]]
                else:
                    d_list = [outputs[("depth", f, b, s)] for b in range(nb)]
                for d in d_list:
                    sm = sm + edge_aware_smoothness(1.0 / d, ctx.color(f, d.shape[-2:])) / len(d_list)
            add("smoothness", sm / len(frames) / (2**s) / len(scales))

        # --- scale 0 only: feature-metric, temporal ----------------------------------------
        if s == 0 and lc.temporal.enabled and -1 in layout.depth_frames:
            v = views[(tgt, -1)]
            with torch.no_grad():
                mask = v.valid
                dd = v.depth_diff
                if dd is None:
                    dd = structure_consistency(v.warp.z, sample(depth[-1], v.warp.pix), lc.structure.erf_eps)
                mask = mask * (dd < lc.temporal.max_depth_diff).to(mask.dtype)
            # D_{t−1} warped into t: frame −1's points expressed in camera t, sampled where t's pixels land.
            z_prev_in_t = transform_points(ctx.T(-1, tgt), backproject(depth[-1], K))[:, 2:3]
            warped_prev = sample(z_prev_in_t, v.warp.pix)
            add("temporal", scale_invariant_log_error(depth[tgt], warped_prev, mask, lc.temporal.si_lambda))

        if s == 0 and lc.featuremetric.enabled and have_ref_depth:
            add("featuremetric", _featuremetric(ctx, depth))

        # --- two-branch rule and confidences (CN114037087A) -------------------------------
        if lc.two_branch.enabled:
            b1, b2, sel, cal = _two_branch(ctx, s)
            add("branch_min", b1 / len(scales))
            add("branch_difference", b2 / len(scales))
            add("conf_selection", sel / len(scales))
            add("conf_calibration", cal / len(scales))

    if lc.smoothness.feature_weight > 0:
        feat = outputs[("features", tgt)][0]
        add("feature_smoothness", edge_aware_smoothness(feat, ctx.color(tgt, feat.shape[-2:])))

    # --- gate --------------------------------------------------------------------------------
    gate = torch.ones_like(zero)
    stat = torch.zeros_like(zero)
    if lc.two_branch.enabled:
        stat = _gate_statistic(ctx)
        if lc.two_branch.gate:
            gate = (stat < lc.two_branch.gate_threshold).to(zero.dtype)

    weights = {
        "photometric": lc.photometric.weight,
        "smoothness": lc.smoothness.weight,
        "structure": lc.structure.weight,
        "featuremetric": lc.featuremetric.weight,
        "temporal": lc.temporal.weight,
        "feature_smoothness": lc.smoothness.feature_weight,
        "branch_min": lc.two_branch.min_weight,
        "branch_difference": lc.two_branch.difference_weight,
        "conf_selection": lc.confidence.selection_weight,
        "conf_calibration": lc.confidence.calibration_weight,
    }
    kept = gate.sum().clamp(min=1.0)
    per_sample = zero
    terms: dict[str, torch.Tensor] = {}
    for name, value in acc.items():
        per_sample = per_sample + weights[name] * value
        terms[name] = (gate * value).sum() / kept
    total = (gate * per_sample).sum() / kept
    terms["gate_kept"] = gate.mean().detach()
    terms["first_difference"] = stat.mean().detach()
    return total, terms


def _featuremetric(ctx: _Context, depth: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """``|f_tgt − f̂_ref| + |f_ref − f̂_tgt|`` on the stride-2 encoder features, averaged over refs."""
    lc, tgt, srcs = ctx.lc, ctx.layout.target, ctx.layout.sources
    feats = {}
    for f in (tgt, *srcs):
        x = ctx.outputs[("features", f)][0]
        feats[f] = x.detach() if lc.featuremetric.detach_features else x
    size = tuple(feats[tgt].shape[-2:])
    K = _K_at(ctx.K, ctx.size, size)
    d = {f: _resize_depth(depth[f], size) for f in (tgt, *srcs)}
    total = 0.0
    for r in srcs:
        for g, src in ((tgt, r), (r, tgt)):
            w = warp(feats[src], d[g], ctx.T(g, src), K)
            mask = w.valid
            if lc.occlusion.enabled:
                mask = mask * occlusion_mask(
                    d[g], d[src], ctx.T(g, src), ctx.T(src, g), K, lc.occlusion.alpha1, lc.occlusion.alpha2
                )
            total = total + masked_mean(featuremetric_error(feats[g], w.image), mask)
    return total / len(srcs)


def _branch_depths(ctx: _Context, b: int, s: int) -> dict[int, torch.Tensor]:
    return {f: _resize_depth(ctx.outputs[("depth", f, b, s)], ctx.size) for f in ctx.layout.depth_frames}


def _grid_maps(
    ctx: _Context, depth: Mapping[int, torch.Tensor]
) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Plain reprojection maps (validity only) of the two-branch grids with the given depths."""
    errors, valids = [], []
    for g, sources in ctx.layout.branch_grids:
        es, vs = [], []
        for r in sources:
            fn = functools.partial(_warp_error, ctx, ctx.color(r), ctx.color(g))
            if ctx.lc.photometric.checkpoint and torch.is_grad_enabled():
                e, v = torch.utils.checkpoint.checkpoint(fn, depth[g], ctx.T(g, r), use_reentrant=False)
            else:
                e, v = fn(depth[g], ctx.T(g, r))
            es.append(e)
            vs.append(v)
        errors.append(es)
        valids.append(vs)
    return errors, valids


def _warp_error(
    ctx: _Context, source: torch.Tensor, target: torch.Tensor, depth: torch.Tensor, T: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    w = warp(source, depth, T, ctx.K)
    return photometric_error(w.image, target, **ctx.pe_kwargs), w.valid


def _two_branch(ctx: _Context, s: int) -> tuple[torch.Tensor, ...]:
    """Branch 1 ← minimum, branch 2 ← first difference (each with its own depth), confidences."""
    lc = ctx.lc
    identity = [ctx.identity(g, srcs, "min") for g, srcs in ctx.layout.branch_grids]
    if any(i is None for i in identity):
        identity = None
    per_branch = []
    for b in range(2):
        errors, valids = _grid_maps(ctx, _branch_depths(ctx, b, s))
        per_branch.append(two_branch_terms(errors, valids, identity))
    b1 = per_branch[0][0]
    if lc.two_branch.difference_loss == "first_difference":
        b2 = per_branch[1][1]
    else:  # "mean" = minimum + first difference: branch 2 fits all neighbours at once
        b2 = per_branch[1][0] + per_branch[1][1]
    sel = cal = 0.0
    grids = [g for g, _ in ctx.layout.branch_grids]
    for i, g in enumerate(grids):
        logits = [_resize(ctx.outputs[("conf_logit", g, b, s)], ctx.size) for b in range(2)]
        errs = [per_branch[b][2][i] for b in range(2)]
        mask = per_branch[0][3][i] * per_branch[1][3][i]
        sl, cl = confidence_loss(logits, errs, mask, lc.confidence.selection_tau, lc.confidence.calibration_tau)
        sel, cal = sel + sl / len(grids), cal + cl / len(grids)
    return b1, b2, sel, cal


def _gate_statistic(ctx: _Context) -> torch.Tensor:
    """Per sample: the largest, over the two-branch grids, image-mean first difference (fused depth, scale 0)."""
    with torch.no_grad():
        depth = {f: _resize_depth(ctx.outputs[("depth_fused", f, 0)], ctx.size) for f in ctx.layout.depth_frames}
        errors, valids = _grid_maps(ctx, depth)
        stats = []
        for es, vs in zip(errors, valids):
            _, _, fd, any_valid = min_mean_first_difference(es, vs)
            stats.append(masked_mean(fd, any_valid))
        return torch.stack(stats).amax(0)


def gate_statistic(batch: Mapping[Any, Any], outputs: Mapping[Any, Any], cfg: Any) -> torch.Tensor:
    """``B`` gate statistic of the two-branch rule (what ``two_branch.gate_threshold`` is compared with)."""
    return _gate_statistic(_Context(batch, outputs, cfg))


class SelfSupervisedLoss(nn.Module):
    """``loss_fn(batch, outputs) → (total, terms)``: :func:`compute_losses` bound to a config."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.layout = clip_layout(cfg)

    def forward(
        self, batch: Mapping[Any, Any], outputs: Mapping[Any, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return compute_losses(batch, outputs, self.cfg)
