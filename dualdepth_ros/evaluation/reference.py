"""The constant-depth reference: what a model scores with the scene's median depth and no structure."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ConstantDepthNet"]


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
