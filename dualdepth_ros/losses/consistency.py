"""Geometric consistency between views: occlusion, depth structure, features, time (method.md §5, §6).

Pure functions on ``B×C×H×W`` tensors; all geometry goes through :mod:`dualdepth_ros.geometry`.
"""

from __future__ import annotations

import torch

from ..geometry import pixel_grid, rigid_flow, sample
from .photometric import erf_distance, masked_mean

__all__ = [
    "flow_consistency_mask",
    "occlusion_mask",
    "structure_consistency",
    "featuremetric_error",
    "scale_invariant_log_error",
    "edge_aware_smoothness",
]


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
