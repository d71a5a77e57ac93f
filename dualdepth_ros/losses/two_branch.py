"""The two-branch rule and confidence training (method.md §4: CN114037087A).

Pure functions; :mod:`.terms` applies them to the maps the loss context computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .photometric import automask, masked_mean, min_mean_first_difference

__all__ = ["confidence_loss", "two_branch_grid", "two_branch_terms"]


def confidence_loss(
    logits: Sequence[torch.Tensor],
    errors: Sequence[torch.Tensor],
    mask: torch.Tensor,
    selection_tau: float = 0.01,
    calibration_tau: float = 0.1,
    selection_pool: int = 1,
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
      exactly the decision the fusion takes (``argmax`` of the confidences). With
      ``selection_pool`` ``k > 1`` the errors are first averaged over the valid pixels of a ``k×k``
      window: the target says which branch reconstructs the pixel's neighbourhood better, not which
      one wins a single pixel's noisy comparison.
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
    sel_errs = errs if selection_pool <= 1 else [_window_mean(e, mask, selection_pool) for e in errs]
    y = torch.sigmoid((sel_errs[1] - sel_errs[0]) / selection_tau)
    sel = masked_mean(_bce_kl(logits[0] - logits[1], y), mask)
    return sel, cal


def _window_mean(x: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of ``x`` over the ``mask`` pixels of the ``k×k`` window around each pixel (``x`` where none is)."""
    m = mask.to(x.dtype)
    num = F.avg_pool2d(x * m, k, stride=1, padding=k // 2, count_include_pad=False)
    den = F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False)
    return torch.where(den > 0, num / den.clamp(min=1e-12), x)


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
        mn_mean, fd_mean, mn, any_valid = two_branch_grid(es, vs, None if identity is None else identity[g])
        mins.append(mn_mean)
        fds.append(fd_mean)
        maps.append(mn)
        masks.append(any_valid)
    return torch.stack(mins).mean(0), torch.stack(fds).mean(0), maps, masks


def two_branch_grid(
    errors: Sequence[torch.Tensor], valids: Sequence[torch.Tensor], identity: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two-branch rule on one grid: :func:`two_branch_terms` for a single grid.

    Parameters
    ----------
    errors, valids : the grid's ``B×1×H×W`` maps reconstructed from each of its neighbours.
    identity : the grid's auto-mask identity error, or ``None``.

    Returns
    -------
    minimum, first_difference : ``B`` per-sample means over the masked pixels.
    min_map, any_valid : ``B×1×H×W`` per-pixel minimum and the pixels with a valid neighbour.
    """
    mn, _, fd, any_valid = min_mean_first_difference(errors, valids)
    mask = any_valid if identity is None else any_valid * automask(mn, identity)
    return masked_mean(mn, mask), masked_mean(fd, mask), mn, any_valid
