"""Training augmentation: colour jitter and horizontal flip, the same for every frame of a clip.

Colour jitter follows monodepth2 (torchvision's ``ColorJitter`` with brightness, contrast,
saturation ±0.2 and hue ±0.1, applied with probability 0.5, in a random order). It changes
only the network's input (``("color_aug", offset)``); the losses compare the unjittered
images. A flip mirrors images, maps, intrinsics (:meth:`Intrinsics.flipped
<dualdepth_ros.geometry.Intrinsics.flipped>`) and poses (``T' = F T F`` with
``F = diag(−1, 1, 1, 1)``: the world mirrored in the camera's x).

Random numbers come from torch's generator, which ``DataLoader`` seeds differently in every
worker (numpy's global generator would repeat the same jitter in all workers).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["ColorJitter", "rgb_to_hsv", "hsv_to_rgb", "flip_pose"]

_FLIP = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64))


def _grey(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img[..., 0, :, :], img[..., 1, :, :], img[..., 2, :, :]
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """``…×3×H×W`` RGB in [0, 1] → HSV with hue in [0, 1)."""
    r, g, b = img.unbind(-3)
    maxc, _ = img.max(dim=-3)
    minc, _ = img.min(dim=-3)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), torch.zeros_like(maxc))
    safe = delta.clamp(min=1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim=-3)


def hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = img.unbind(-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(img)
    for k, (rr, gg, bb) in enumerate(choices):
        m = i == k
        out[..., 0, :, :] = torch.where(m, rr, out[..., 0, :, :])
        out[..., 1, :, :] = torch.where(m, gg, out[..., 1, :, :])
        out[..., 2, :, :] = torch.where(m, bb, out[..., 2, :, :])
    return out


@dataclasses.dataclass
class ColorJitter:
    """Brightness/contrast/saturation/hue jitter whose parameters are drawn once per clip.

    Factors are drawn uniformly from ``[1 − x, 1 + x]`` (hue: a shift in ``[−hue, hue]`` of a
    full turn); the whole jitter is applied with probability ``p``.
    """

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1
    p: float = 0.5

    def sample(self, generator: torch.Generator | None = None) -> dict[str, Any] | None:
        """Parameters for one clip, or None when this clip is not jittered."""
        u = torch.rand(6, generator=generator)
        if float(u[0]) >= self.p:
            return None

        def factor(x: float, r: torch.Tensor) -> float:
            return 1.0 + x * (2.0 * float(r) - 1.0)

        return {
            "order": torch.randperm(4, generator=generator).tolist(),
            "brightness": factor(self.brightness, u[1]),
            "contrast": factor(self.contrast, u[2]),
            "saturation": factor(self.saturation, u[3]),
            "hue": self.hue * (2.0 * float(u[4]) - 1.0),
        }

    @staticmethod
    def apply(img: torch.Tensor, params: dict[str, Any] | None) -> torch.Tensor:
        """Jitter a ``…×3×H×W`` float image in [0, 1] with :meth:`sample`'s parameters."""
        if params is None:
            return img
        out = img
        for op in params["order"]:
            if op == 0:
                out = (out * params["brightness"]).clamp(0, 1)
            elif op == 1:
                mean = _grey(out).mean(dim=(-3, -2, -1), keepdim=True)
                out = (params["contrast"] * out + (1 - params["contrast"]) * mean).clamp(0, 1)
            elif op == 2:
                out = (params["saturation"] * out + (1 - params["saturation"]) * _grey(out)).clamp(0, 1)
            elif params["hue"] != 0.0:
                hsv = rgb_to_hsv(out)
                hsv[..., 0, :, :] = (hsv[..., 0, :, :] + params["hue"]) % 1.0
                out = hsv_to_rgb(hsv).clamp(0, 1)
        return out


def flip_pose(T: torch.Tensor) -> torch.Tensor:
    """A ``…×4×4`` transform seen in horizontally mirrored cameras: ``F T F``."""
    F = _FLIP.to(dtype=T.dtype, device=T.device)
    return F @ T @ F
