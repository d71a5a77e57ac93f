"""Geometry against hand computations and identities (no network, no learned parts)."""

import math

import numpy as np
import pytest
import torch

from dualdepth_ros.geometry import (
    Intrinsics,
    backproject,
    invert_pose,
    mat_to_pose_vec,
    pixel_grid,
    pose_vec_to_mat,
    project,
    relative_pose,
    rigid_flow,
    sample,
    scale_intrinsics,
    transform_points,
    warp,
)

K0 = Intrinsics(fx=120.0, fy=110.0, cx=47.3, cy=23.6, width=96, height=48)


def _rand_pose(n: int, angle: float | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=1, keepdim=True)
    ang = torch.rand(n, 1, generator=g, dtype=torch.float64) * 3.0 if angle is None else torch.full((n, 1), angle)
    t = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return torch.cat([axis * ang, t], dim=1)


def test_project_of_backproject_is_identity() -> None:
    depth = torch.rand(2, 1, 48, 96, dtype=torch.float64) * 50 + 0.5
    K = K0.tensor(2, dtype=torch.float64)
    pix, z = project(backproject(depth, K), K)
    grid = pixel_grid(48, 96, dtype=torch.float64)[:2]
    torch.testing.assert_close(pix, grid.expand_as(pix), atol=1e-9, rtol=0)
    torch.testing.assert_close(z, depth)


def test_backproject_hand_computed() -> None:
    depth = torch.full((1, 1, 48, 96), 4.0, dtype=torch.float64)
    pts = backproject(depth, K0.tensor(1, dtype=torch.float64))
    # pixel (u=10, v=5): X = (10 − cx)·Z/fx, Y = (5 − cy)·Z/fy
    expected = torch.tensor([(10 - 47.3) * 4 / 120, (5 - 23.6) * 4 / 110, 4.0], dtype=torch.float64)
    torch.testing.assert_close(pts[0, :, 5, 10], expected)


def test_identity_pose_warps_image_onto_itself() -> None:
    img = torch.rand(2, 3, 48, 96)
    depth = torch.rand(2, 1, 48, 96) * 10 + 1
    res = warp(img, depth, torch.eye(4).expand(2, 4, 4), K0.tensor(2))
    torch.testing.assert_close(res.image, img, atol=1e-4, rtol=0)  # float32 round-off of K⁻¹
    assert bool(res.valid.all())
    torch.testing.assert_close(res.z, depth)


def test_warp_marks_out_of_view_and_behind_camera_invalid() -> None:
    depth = torch.full((1, 1, 48, 96), 5.0)
    T = pose_vec_to_mat(torch.tensor([[0.0, 0, 0, -1.0, 0, 0]]))  # points move 1 unit left: flow −fx/5 = −24 px
    res = warp(torch.rand(1, 3, 48, 96), depth, T, K0.tensor(1))
    assert torch.all(res.valid[..., :20] == 0) and torch.all(res.valid[..., 30:] == 1)
    behind = pose_vec_to_mat(torch.tensor([[0.0, 0, 0, 0, 0, -6.0]]))
    assert torch.all(warp(torch.rand(1, 3, 48, 96), depth, behind, K0.tensor(1)).valid == 0)


def test_intrinsics_scaling_half_pixel_rule() -> None:
    k = Intrinsics(fx=720.0, fy=710.0, cx=639.5, cy=191.5, width=1280, height=384)
    s = k.resized(640, 192)
    # hand-computed: f' = f/2; c' = (c + 0.5)/2 − 0.5
    assert (s.fx, s.fy, s.cx, s.cy, s.width, s.height) == (360.0, 355.0, 319.5, 95.5, 640, 192)
    s3 = k.scaled(0.25)
    assert s3.cx == pytest.approx((639.5 + 0.5) * 0.25 - 0.5) and s3.cx == pytest.approx(159.5)
    # the image centre stays the image centre under any resize
    assert s3.cx == pytest.approx((s3.width - 1) / 2) and s3.cy == pytest.approx((s3.height - 1) / 2)
    # tensor version agrees with the dataclass
    Kt = scale_intrinsics(k.tensor(2, dtype=torch.float64), 0.5, 0.25)
    np.testing.assert_allclose(Kt[1].numpy(), k.scaled(0.5, 0.25).matrix())


def test_resized_intrinsics_project_consistently() -> None:
    """A point's pixel in the resized image is where the resize sends its original pixel."""
    k = K0
    s = k.resized(48, 24)
    P = torch.tensor([[[[1.3]], [[-0.4]], [[7.0]]]], dtype=torch.float64)
    p_full, _ = project(P, k.tensor(1, dtype=torch.float64))
    p_half, _ = project(P, s.tensor(1, dtype=torch.float64))
    # a pixel centre u maps to (u + 0.5)·s − 0.5 under a resize by s
    torch.testing.assert_close(p_half[0, 0, 0, 0], (p_full[0, 0, 0, 0] + 0.5) * 0.5 - 0.5)
    torch.testing.assert_close(p_half[0, 1, 0, 0], (p_full[0, 1, 0, 0] + 0.5) * 0.5 - 0.5)


def test_crop_and_flip() -> None:
    c = K0.cropped(10, 4, 64, 32)
    assert (c.fx, c.fy, c.cx, c.cy, c.width, c.height) == (120.0, 110.0, 37.3, 19.6, 64, 32)
    with pytest.raises(ValueError):
        K0.cropped(40, 0, 64, 32)
    f = K0.flipped()
    assert f.cx == pytest.approx(96 - 1 - 47.3) and f.cy == K0.cy
    # a point mirrored in x projects to the mirrored column: u' = W − 1 − u
    P = torch.tensor([[[[0.7]], [[0.2]], [[3.0]]]], dtype=torch.float64)
    Pm = P.clone()
    Pm[:, 0] *= -1
    u, _ = project(P, K0.tensor(1, dtype=torch.float64))
    um, _ = project(Pm, f.tensor(1, dtype=torch.float64))
    torch.testing.assert_close(um[0, 0], 96 - 1 - u[0, 0])


@pytest.mark.parametrize("angle", [0.0, 1e-9, 1e-6, 1e-3, 0.5, 2.0, math.pi - 1e-2, math.pi - 1e-4, math.pi])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pose_vector_round_trip(angle: float, dtype: torch.dtype) -> None:
    vec = _rand_pose(32, angle).to(dtype)
    T = pose_vec_to_mat(vec)
    R = T[:, :3, :3]
    eye = torch.eye(3, dtype=dtype).expand_as(R)
    tol = 1e-10 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(torch.bmm(R, R.transpose(1, 2)), eye, atol=tol, rtol=0)
    back = mat_to_pose_vec(T)
    torch.testing.assert_close(pose_vec_to_mat(back), T, atol=10 * tol, rtol=0)
    if angle < math.pi - 1e-3:  # near π the vector is ±: compare the transforms only
        torch.testing.assert_close(back, vec, atol=10 * tol, rtol=0)


def test_pose_vec_to_mat_hand_computed() -> None:
    # 90° about z: x → y; then translate
    T = pose_vec_to_mat(torch.tensor([[0.0, 0.0, math.pi / 2, 1.0, 2.0, 3.0]], dtype=torch.float64))
    expected = torch.tensor(
        [[0.0, -1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 3.0], [0, 0, 0, 1]], dtype=torch.float64
    )
    torch.testing.assert_close(T[0], expected, atol=1e-12, rtol=0)


def test_invert_and_relative_pose() -> None:
    T = pose_vec_to_mat(_rand_pose(8, seed=3))
    eye = torch.eye(4, dtype=T.dtype).expand_as(T)
    torch.testing.assert_close(torch.bmm(T, invert_pose(T)), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(invert_pose(T), torch.linalg.inv(T), atol=1e-12, rtol=0)
    A, B = pose_vec_to_mat(_rand_pose(8, seed=4)), pose_vec_to_mat(_rand_pose(8, seed=5))
    # a point of camera a, mapped to the world and back into camera b
    P = torch.randn(8, 3, 1, 1, dtype=T.dtype)
    via_world = transform_points(invert_pose(B), transform_points(A, P))
    torch.testing.assert_close(transform_points(relative_pose(A, B), P), via_world, atol=1e-12, rtol=0)


def test_rigid_flow_of_translation_on_a_plane() -> None:
    """Fronto-parallel plane at Z; camera moves by c: a point at P is at P − c in the new camera.

    Hand computation: u' = fx (X − cx_m)/(Z − cz) + cx with X = (u − cx) Z / fx.
    """
    Z, c = 8.0, (0.5, -0.2, 1.0)
    depth = torch.full((1, 1, 48, 96), Z, dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64)[None].clone()
    T[0, :3, 3] = -torch.tensor(c, dtype=torch.float64)  # T_0_to_1: P1 = P0 − c
    flow = rigid_flow(depth, T, K0.tensor(1, dtype=torch.float64))
    u, v = np.meshgrid(np.arange(96.0), np.arange(48.0))
    X = (u - K0.cx) * Z / K0.fx
    Y = (v - K0.cy) * Z / K0.fy
    u1 = K0.fx * (X - c[0]) / (Z - c[2]) + K0.cx
    v1 = K0.fy * (Y - c[1]) / (Z - c[2]) + K0.cy
    np.testing.assert_allclose(flow[0, 0].numpy(), u1 - u, atol=1e-9)
    np.testing.assert_allclose(flow[0, 1].numpy(), v1 - v, atol=1e-9)


def test_sample_uses_pixel_centre_convention() -> None:
    img = torch.arange(12.0).reshape(1, 1, 3, 4)
    pix = torch.tensor([[[[0.0, 3.0, 1.5]], [[0.0, 2.0, 1.0]]]])  # (u, v) = (0,0), (3,2), (1.5,1)
    out = sample(img, pix)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 11.0, 5.5]))
