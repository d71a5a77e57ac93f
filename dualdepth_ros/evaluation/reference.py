"""The references: a constant depth (the scene's median depth, no structure) and a camera that never moves."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ConstantDepthNet", "StillPoseNet"]


class ConstantDepthNet(torch.nn.Module):
    """A depth "network" that predicts 1 everywhere: after median scaling, the scene's median depth.

    ``dualdepth eval --constant-reference`` and the ablation table score it on the same frames
    as a model, which shows how much of a model's score is structure rather than the scale
    alone. Outputs ``("depth_fused", 0)`` and ``("depth", 0, 0)``, ``B×1×H×W`` ones; no
    confidence.
    """

    num_branches = 1
    predict_confidence = False

    def forward(self, image: torch.Tensor) -> dict[Any, torch.Tensor]:
        ones = image.new_ones(image.shape[0], 1, *image.shape[2:])
        return {("depth_fused", 0): ones, ("depth", 0, 0): ones}


class StillPoseNet(torch.nn.Module):
    """A pair PoseNet that predicts no motion: its ATE is the floor a PoseNet that learned anything beats.

    With no predicted translation the snippet's least-squares scale is 0, so the ATE is the
    ground-truth path's own size (``sqrt(Σ‖g_i‖²)/n``, :func:`~.pose.snippet_ate`). The ablation
    counts a run as started when its ATE is below a tenth of this.
    """

    num_frames = 2
    anchor = 0

    def forward(self, frames: list[torch.Tensor]) -> torch.Tensor:
        return frames[0].new_zeros(frames[0].shape[0], 1, 6)
