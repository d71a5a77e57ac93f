"""Self-supervised losses: small pure functions, registered terms, combined by :func:`compute_losses`.

Every term names its source (method.md section); every weight and switch is in
``config/train.yaml`` (``loss:``). All geometry goes through :mod:`dualdepth_ros.geometry`.

Package layout
==============
``photometric`` SSIM, photometric error, reprojection selection, auto-mask (pure functions);
``consistency`` occlusion, structure, feature-metric, temporal, smoothness primitives;
``two_branch`` the rule's per-branch terms and the confidence loss; ``registry`` the term
registry and the clip layout; ``context`` what terms share within one call and the units they
evaluate one at a time (checkpointed: the losses keep almost no memory for backward); ``terms`` one
registered function per term. A new term is one
function in ``terms`` and one config section (see :mod:`.registry`).

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
* The rule's terms run at ``two_branch.scales`` (default: scale 0, the output that is served); the
  confidences of the other scales learn from the scale-0 maps. The photometric term stays multi-scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from . import terms as _terms  # noqa: F401 - registers the terms
from .consistency import (
    edge_aware_smoothness,
    featuremetric_error,
    flow_consistency_mask,
    occlusion_mask,
    scale_invariant_log_error,
    structure_consistency,
)
from .context import LossContext, fp32
from .photometric import (
    automask,
    dssim,
    erf_distance,
    masked_mean,
    min_mean_first_difference,
    photometric_error,
    select_reprojection,
    ssim,
)
from .registry import REGISTRY, ClipLayout, LossTerm, clip_layout, enabled_terms, loss_term
from .two_branch import confidence_loss, two_branch_terms

__all__ = [
    "ClipLayout",
    "clip_layout",
    "LossTerm",
    "REGISTRY",
    "loss_term",
    "enabled_terms",
    "LossContext",
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


def compute_losses(
    batch: Mapping[Any, Any], outputs: Mapping[Any, Any], cfg: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total self-supervised loss and its terms (layout and ``terms``: module docstring).

    Walks :data:`REGISTRY`: every enabled term returns per-sample values, weighted by its
    config section. Per sample::

        total = Σ_terms Σ_outputs w · value          (e.g. w_photo·L_photo + w_s·L_smooth + …)

    With the two-branch gate on, samples whose gate statistic (the largest, over the rule's grids,
    image-mean first difference of the fused depth at scale 0) is ≥ the threshold get weight 0 in
    every term; the total is the mean over the kept samples (0, still differentiable, if none).

    Runs in float32 with autocast off (geometry and SSIM in reduced precision are off by pixels);
    network outputs in bfloat16/float16 are cast on the way in.
    """
    ctx = LossContext(batch, outputs, cfg)
    lc = cfg.loss
    zero = torch.zeros(ctx.bsz, device=ctx.device)
    with fp32(ctx.device.type):
        gate = torch.ones_like(zero)
        stat = torch.zeros_like(zero)
        if lc.two_branch.enabled:
            stat = ctx.gate_statistic()
            if lc.two_branch.gate:
                gate = (stat < lc.two_branch.gate_threshold).to(zero.dtype)
        ctx.gate = gate  # batch-level terms (the scale anchor) leave gated samples out too
        values: dict[str, tuple[float, torch.Tensor]] = {}
        for term in enabled_terms(cfg):
            section = getattr(lc, term.name)
            for name, value in term.fn(ctx, section).items():
                values[name] = (float(getattr(section, term.weights[name])), value + zero)
        kept = gate.sum().clamp(min=1.0)
        per_sample = zero
        out: dict[str, torch.Tensor] = {}
        for name, (weight, value) in values.items():
            per_sample = per_sample + weight * value
            out[name] = (gate * value).sum() / kept
        total = (gate * per_sample).sum() / kept
    out["gate_kept"] = gate.mean().detach()
    out["first_difference"] = stat.mean().detach()
    return total, out


def gate_statistic(batch: Mapping[Any, Any], outputs: Mapping[Any, Any], cfg: Any) -> torch.Tensor:
    """``B`` gate statistic of the two-branch rule (what ``two_branch.gate_threshold`` is compared with)."""
    ctx = LossContext(batch, outputs, cfg)
    with fp32(ctx.device.type):
        return ctx.gate_statistic()


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
