"""Camera geometry: intrinsics, projection, SE(3) poses and image warping.

Every projection, back-projection, pose conversion and resize of intrinsics in the
package lives here; nothing else re-derives them. :class:`Intrinsics` is defined in
:mod:`dualdepth_ros.intrinsics` (importable without torch, for the runtime path) and
re-exported here.

Conventions
-----------
* Camera frames are ROS *optical* frames (REP 103): x right, y down, z forward.
* Pixel ``(u, v)`` has its centre at integer coordinates: the top-left pixel's centre
  is ``(0, 0)`` and the image spans ``[-0.5, W - 0.5]`` horizontally.
* ``T_a_to_b`` (4×4) maps a point expressed in camera ``a`` into camera ``b``:
  ``P_b = R P_a + t``.  The pose of a camera in the world is ``T_cam_to_world``; the
  relative motion between two such poses is ``relative_pose(T_a_to_world, T_b_to_world)``.
* Pose vectors are ``[rx, ry, rz, tx, ty, tz]``: an axis-angle rotation (radians) followed
  by a translation (metres or model units), i.e. ``P' = exp([r]×) P + t``.
* Depth is z-depth (distance along the optical axis), not range.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .intrinsics import Intrinsics  # torch-free, re-exported here (the node imports it without torch)

__all__ = [
    "Intrinsics",
    "pixel_grid",
    "scale_intrinsics",
    "backproject",
    "project",
    "transform_points",
    "pose_vec_to_mat",
    "mat_to_pose_vec",
    "invert_pose",
    "relative_pose",
    "pixels_to_grid",
    "sample",
    "WarpResult",
    "reproject",
    "warp",
    "rigid_flow",
]


# ---------------------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------------------
def scale_intrinsics(K: torch.Tensor, sx: float, sy: float | None = None) -> torch.Tensor:
    """``K`` (``B×3×3`` or ``3×3`` tensor) of the image resampled by ``sx``, ``sy``.

    The tensor form of :meth:`Intrinsics.scaled` (half-pixel rule): ``f' = f·s``,
    ``c' = (c + 0.5)·s − 0.5``. For a resize to ``W'×H'`` use ``sx = W'/W``, ``sy = H'/H``.
    """
    sy = sx if sy is None else sy
    S = torch.tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]], dtype=K.dtype)
    return torch.matmul(S.to(K.device), K)


def pixel_grid(height: int, width: int, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Homogeneous pixel coordinates ``3×H×W``: rows ``u`` (column index), ``v`` (row index), 1."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([u, v, torch.ones_like(u)], dim=0)


def backproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """3-D points of every pixel.

    Parameters
    ----------
    depth : ``B×1×H×W`` z-depth.
    K : ``B×3×3`` (or ``3×3``) intrinsics at the depth's resolution.

    Returns
    -------
    ``B×3×H×W`` points in the camera frame, same units as ``depth``.
    """
    b, _, h, w = depth.shape
    K = K.expand(b, 3, 3) if K.dim() == 2 else K
    grid = pixel_grid(h, w, device=depth.device, dtype=depth.dtype).reshape(1, 3, -1)
    # inv(K) of B 3×3 matrices then one bmm: ~10× cheaper than solving with H·W right-hand sides.
    rays = torch.bmm(torch.linalg.inv(K.to(depth.dtype)), grid.expand(b, 3, h * w))
    return (rays * depth.reshape(b, 1, -1)).reshape(b, 3, h, w)


def project(points: torch.Tensor, K: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates of 3-D points.

    Parameters
    ----------
    points : ``B×3×H×W`` points in the camera frame.
    K : ``B×3×3`` (or ``3×3``) intrinsics.

    Returns
    -------
    pix : ``B×2×H×W`` pixel coordinates ``(u, v)``.
    z : ``B×1×H×W`` depth of each point (non-positive means behind the camera).
    """
    b, _, h, w = points.shape
    K = K.expand(b, 3, 3) if K.dim() == 2 else K
    cam = torch.bmm(K.to(points.dtype), points.reshape(b, 3, -1)).reshape(b, 3, h, w)
    z = cam[:, 2:3]
    pix = cam[:, :2] / z.clamp(min=eps)
    return pix, z


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply ``B×4×4`` rigid transforms to ``B×3×H×W`` points."""
    b, _, h, w = points.shape
    flat = points.reshape(b, 3, -1)
    out = torch.bmm(T[:, :3, :3].to(points.dtype), flat) + T[:, :3, 3:4].to(points.dtype)
    return out.reshape(b, 3, h, w)


# ---------------------------------------------------------------------------------------
# SE(3)
# ---------------------------------------------------------------------------------------
def _skew(v: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(v[:, 0])
    return torch.stack([zero, -v[:, 2], v[:, 1], v[:, 2], zero, -v[:, 0], -v[:, 1], v[:, 0], zero], dim=1).reshape(
        -1, 3, 3
    )


def pose_vec_to_mat(vec: torch.Tensor) -> torch.Tensor:
    """``B×6`` ``[axis-angle, translation]`` → ``B×4×4`` transform (Rodrigues, stable near 0)."""
    r, t = vec[:, :3], vec[:, 3:]
    theta2 = (r * r).sum(dim=1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-12)
    small = theta2 < 1e-8
    # sin(θ)/θ and (1 − cos θ)/θ² with Taylor series near zero.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    bcoef = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp(min=1e-12))
    S = _skew(r)
    eye = torch.eye(3, device=vec.device, dtype=vec.dtype).expand_as(S)
    R = eye + a[:, :, None] * S + bcoef[:, :, None] * torch.bmm(S, S)
    T = torch.zeros(vec.shape[0], 4, 4, device=vec.device, dtype=vec.dtype)
    T[:, :3, :3] = R
    T[:, :3, 3] = t
    T[:, 3, 3] = 1
    return T


def mat_to_pose_vec(T: torch.Tensor) -> torch.Tensor:
    """``B×4×4`` transform → ``B×6`` ``[axis-angle, translation]`` (rotation angle in [0, π]).

    The angle is ``atan2(sin θ, cos θ)`` with ``sin θ = |w|/2`` from the antisymmetric part ``w``
    (``acos`` of the trace loses most digits near 0 and π in float32); near π the axis comes
    from the symmetric part ``(R + Rᵀ)/2 = cos θ I + (1 − cos θ) aaᵀ``.
    """
    R = T[:, :3, :3]
    cos = (R.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    w = torch.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], dim=1)
    sin = w.norm(dim=1) / 2
    theta = torch.atan2(sin, cos)
    small = theta < 1e-4
    near_pi = theta > np.pi - 1e-2
    r = torch.where(small[:, None], w / 2, w * (theta / (2 * sin.clamp(min=1e-12)))[:, None])
    if bool(near_pi.any()):
        # Near π the antisymmetric part vanishes; use the symmetric part: (S − cos θ I)/(1 − cos θ) = aaᵀ.
        eye = torch.eye(3, device=T.device, dtype=T.dtype)
        S = (R + R.transpose(1, 2)) / 2
        A = (S - cos[:, None, None] * eye) / (1 - cos).clamp(min=1e-12)[:, None, None]
        diag = A.diagonal(dim1=1, dim2=2).clamp(min=0)
        idx = diag.argmax(dim=1)
        col = A[torch.arange(A.shape[0]), :, idx]
        axis = col / col.norm(dim=1, keepdim=True).clamp(min=1e-12)
        sign = torch.sign((axis * w).sum(dim=1, keepdim=True))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        r = torch.where(near_pi[:, None], axis * sign * theta[:, None], r)
    return torch.cat([r, T[:, :3, 3]], dim=1)


def invert_pose(T: torch.Tensor) -> torch.Tensor:
    """Inverse of ``B×4×4`` rigid transforms, using ``Rᵀ`` (exact for rotations)."""
    R = T[:, :3, :3]
    t = T[:, :3, 3:4]
    inv = torch.zeros_like(T)
    inv[:, :3, :3] = R.transpose(1, 2)
    inv[:, :3, 3:4] = -torch.bmm(R.transpose(1, 2), t)
    inv[:, 3, 3] = 1
    return inv


def relative_pose(T_a_to_world: torch.Tensor, T_b_to_world: torch.Tensor) -> torch.Tensor:
    """``T_a_to_b`` from two camera poses in a common world frame (both ``B×4×4``)."""
    return torch.bmm(invert_pose(T_b_to_world), T_a_to_world)


# ---------------------------------------------------------------------------------------
# Sampling and warping
# ---------------------------------------------------------------------------------------
def pixels_to_grid(pix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``B×2×H'×W'`` pixel coordinates → ``B×H'×W'×2`` grid for ``grid_sample(align_corners=True)``."""
    u = pix[:, 0] * (2.0 / max(width - 1, 1)) - 1.0
    v = pix[:, 1] * (2.0 / max(height - 1, 1)) - 1.0
    return torch.stack([u, v], dim=-1)


def sample(
    image: torch.Tensor, pix: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border"
) -> torch.Tensor:
    """Sample ``B×C×H×W`` ``image`` at ``B×2×H'×W'`` pixel coordinates (bilinear by default)."""
    grid = pixels_to_grid(pix, image.shape[-2], image.shape[-1]).to(image.dtype)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


@dataclasses.dataclass
class WarpResult:
    """What :func:`warp` returns; every tensor is at the target's resolution.

    Attributes
    ----------
    image : ``B×C×H×W`` the source image resampled into the target view.
    valid : ``B×1×H×W`` float 1 where the target pixel projects inside the source image
        and in front of the source camera, else 0.
    pix : ``B×2×H×W`` where each target pixel lands in the source image (pixels).
    z : ``B×1×H×W`` depth of each target pixel's 3-D point in the source camera.
    """

    image: torch.Tensor
    valid: torch.Tensor
    pix: torch.Tensor
    z: torch.Tensor


def warp(
    source: torch.Tensor,
    depth_target: torch.Tensor,
    T_target_to_source: torch.Tensor,
    K: torch.Tensor,
    padding_mode: str = "border",
    min_z: float = 1e-3,
) -> WarpResult:
    """Reconstruct the target view from ``source`` (inverse warping).

    Parameters
    ----------
    source : ``B×C×H×W`` image (or any feature map) seen by the source camera.
    depth_target : ``B×1×H×W`` z-depth of the target view.
    T_target_to_source : ``B×4×4`` transform from the target camera to the source camera.
    K : ``B×3×3`` intrinsics at this resolution (the same camera for both views).
    """
    pix, z, valid = reproject(depth_target, T_target_to_source, K, tuple(source.shape[-2:]), min_z, source.dtype)
    image = sample(source, pix, padding_mode=padding_mode)
    return WarpResult(image=image, valid=valid, pix=pix, z=z)


def reproject(
    depth_target: torch.Tensor,
    T_target_to_source: torch.Tensor,
    K: torch.Tensor,
    source_size: tuple[int, int],
    min_z: float = 1e-3,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each target pixel lands in the source view: the geometry of :func:`warp` without sampling.

    Parameters
    ----------
    depth_target : ``B×1×H×W`` z-depth of the target view.
    T_target_to_source : ``B×4×4``.
    K : ``B×3×3`` intrinsics at this resolution.
    source_size : ``(height, width)`` of the source image (pixels).
    dtype : of ``valid`` (default: the depth's).

    Returns
    -------
    pix : ``B×2×H×W`` pixel coordinates in the source image.
    z : ``B×1×H×W`` depth of each target pixel's point in the source camera.
    valid : ``B×1×H×W`` 1 where the pixel lands inside the source image in front of its camera, else 0.
    """
    points = transform_points(T_target_to_source, backproject(depth_target, K))
    pix, z = project(points, K)
    h, w = source_size
    # A small tolerance: round-off of the solve/projection must not drop the border pixels (identity warp).
    tol = 1e-3
    u, v = pix[:, 0:1], pix[:, 1:2]
    inside = (u >= -tol) & (u <= w - 1 + tol) & (v >= -tol) & (v <= h - 1 + tol)
    valid = (inside & (z > min_z)).to(depth_target.dtype if dtype is None else dtype)
    return pix, z, valid


def rigid_flow(depth: torch.Tensor, T: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Optical flow ``B×2×H×W`` (pixels) induced by camera motion ``T`` on a scene of ``depth``."""
    b, _, h, w = depth.shape
    pix, _ = project(transform_points(T, backproject(depth, K)), K)
    return pix - pixel_grid(h, w, device=depth.device, dtype=depth.dtype)[:2].unsqueeze(0)
