"""Vectorised ray casting of a :class:`~dualdepth_ros.synth.world.World` into camera frames.

For each frame the renderer

1. casts one ray through the centre of every pixel of the **pinhole** grid: the nearest hit
   gives the ground-truth z-depth (metres along the optical axis; the ray direction is
   ``K⁻¹ (u, v, 1)``, so the ray parameter *is* the z-depth), the moving-object mask and
   the semantic class;
2. casts ``supersample²`` rays per pixel of the **raw** image (through the lens distortion
   when one is configured), shades each hit (Lambertian, matte, textures filtered by the
   sample's footprint) and averages them in linear light: edges and textures are
   anti-aliased, so consecutive frames stay photometrically consistent;
3. applies the exposure gain, an sRGB-like gamma, optional Gaussian noise, and quantises.

With distortion the RGB image is the distorted raw image a real camera would produce, while
``depth``, ``moving_mask`` and ``semantic`` are on the undistorted pinhole grid ``K``: the grid
of the image rectified with ``cv2.initUndistortRectifyMap(K, D, I, K, …)`` (CameraInfo ``P = [K|0]``).

Objects are culled per frame by distance and by the screen-space bounding rectangle of their
bounding box (clipped at the near plane), so each primitive only tests the rays it can hit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import DualDepthError
from ..geometry import Intrinsics
from .textures import TEXTURES, box, pulse_train
from .world import (
    BOX,
    BUILDING,
    CAR_BODY,
    CAR_CABIN,
    CURB_HEIGHT,
    CYLINDER,
    LANE_WIDTH,
    ROAD_HALF_WIDTH,
    SIDEWALK_WIDTH,
    SPHERE,
    WHEEL,
    Objects,
    World,
)

__all__ = ["Frame", "CLASSES", "render_frame", "render_index", "distort_points", "undistort_points"]

#: Semantic class names by id (``Frame.semantic``).
CLASSES = ("sky", "road", "curb", "sidewalk", "lot", "building", "car", "pole", "trunk", "vegetation")
_KIND_TO_CLASS = np.array([5, 6, 6, 6, 7, 8, 9], dtype=np.uint8)  # BUILDING … CROWN

# Hit codes below zero (object hits are the object's row, ≥ 0).
SKY, ROAD, CURB, SIDEWALK, LOT = -1, -2, -3, -4, -5
NEAR = 0.05  # metres; nothing is closer to the camera
AMBIENT, DIFFUSE = 0.42, 0.62
BAND_RAYS = 1 << 16  # rays traced and shaded at once (see render_frame)
ANISO = 2.0  # how far textures are filtered along a surface's major footprint axis (see _footprint)


@dataclasses.dataclass
class Frame:
    """One rendered frame.

    Attributes
    ----------
    t : seconds since the start of the drive. stamp_ns : header stamp (ns since the epoch).
    rgb : ``H×W×3`` uint8, the raw camera image (distorted when the config has distortion).
    depth : ``H×W`` float32 z-depth in metres on the undistorted pinhole grid; NaN for sky.
    moving_mask : ``H×W`` bool, True on moving cars (pinhole grid).
    semantic : ``H×W`` uint8 class ids, names in :data:`CLASSES` (pinhole grid).
    T_cam_to_world : 4×4 float64 pose of the camera optical frame (x right, y down, z forward)
        in the world frame (X along the road start, Y left, Z up, road surface at Z = 0).
    intrinsics : the pinhole camera ``K`` of ``depth`` (and of the rectified image).
    distortion : the 5 ``plumb_bob`` coefficients of the raw image (zeros: none).
    exposure : the exposure gain applied to ``rgb``.
    """

    t: float
    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray
    moving_mask: np.ndarray
    semantic: np.ndarray
    T_cam_to_world: np.ndarray
    intrinsics: Intrinsics
    distortion: np.ndarray
    exposure: float


# ---------------------------------------------------------------------------------------
# Lens model
# ---------------------------------------------------------------------------------------
def distort_points(x: np.ndarray, y: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV ``plumb_bob``: undistorted normalised coordinates → distorted ones."""
    k1, k2, p1, p2, k3 = (float(v) for v in D)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    return (
        x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
        y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y,
    )


def undistort_points(xd: np.ndarray, yd: np.ndarray, D: np.ndarray, tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`distort_points` by fixed-point iteration (float64).

    Raises
    ------
    DualDepthError : the iteration does not converge (distortion too strong for the field of view).
    """
    xd = np.asarray(xd, dtype=np.float64)
    yd = np.asarray(yd, dtype=np.float64)
    k1, k2, p1, p2, k3 = (float(v) for v in D)
    x, y = xd.copy(), yd.copy()
    for _ in range(100):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x = (xd - dx) / radial
        y = (yd - dy) / radial
    ex, ey = distort_points(x, y, D)
    err = float(np.nanmax(np.abs(np.concatenate([(ex - xd).ravel(), (ey - yd).ravel()]))))
    if not np.isfinite(err) or err > tol:
        raise DualDepthError(f"lens distortion {tuple(D)} cannot be inverted over this field of view (error {err:.2e})")
    return x, y


# ---------------------------------------------------------------------------------------
# Ray sets
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Rays:
    """Normalised undistorted camera coordinates ``(H, W, k)`` of ``k`` rays per pixel, plus culling bounds."""

    xn: np.ndarray
    yn: np.ndarray
    colmin: np.ndarray
    colmax: np.ndarray
    rowmin: np.ndarray
    rowmax: np.ndarray
    scale: float  # 1 / (focal length · samples per pixel side): angular size of one sample (rad)

    def rows(self, i0: int, i1: int) -> _Rays:
        """The rays of image rows ``[i0, i1)`` (column bounds stay those of the whole image: conservative)."""
        return _Rays(
            self.xn[i0:i1],
            self.yn[i0:i1],
            self.colmin,
            self.colmax,
            self.rowmin[i0:i1],
            self.rowmax[i0:i1],
            self.scale,
        )

    @staticmethod
    def make(K: Intrinsics, D: np.ndarray | None, samples: int) -> _Rays:
        h, w = K.height, K.width
        off = (np.arange(samples) + 0.5) / samples - 0.5
        oy, ox = np.meshgrid(off, off, indexing="ij")
        u = np.arange(w)[None, :, None] + ox.reshape(1, 1, -1)
        v = np.arange(h)[:, None, None] + oy.reshape(1, 1, -1)
        xd = np.broadcast_to((u - K.cx) / K.fx, (h, w, samples * samples))
        yd = np.broadcast_to((v - K.cy) / K.fy, (h, w, samples * samples))
        if D is not None and np.any(D):
            xn, yn = undistort_points(xd, yd, D)
        else:
            xn, yn = xd.astype(np.float64), yd.astype(np.float64)
        colmin = np.minimum.accumulate(xn.min(axis=(0, 2))[::-1])[::-1]
        colmax = np.maximum.accumulate(xn.max(axis=(0, 2)))
        rowmin = np.minimum.accumulate(yn.min(axis=(1, 2))[::-1])[::-1]
        rowmax = np.maximum.accumulate(yn.max(axis=(1, 2)))
        return _Rays(
            np.ascontiguousarray(xn, dtype=np.float32),
            np.ascontiguousarray(yn, dtype=np.float32),
            colmin,
            colmax,
            rowmin,
            rowmax,
            1.0 / (math.sqrt(K.fx * K.fy) * samples),
        )


def _rays_for(world: World) -> tuple[_Rays, _Rays]:
    """(centre rays on the pinhole grid, shading rays on the raw grid), cached on the world."""
    cached = world._ray_cache
    if cached is None:
        cfg = world.config
        K = cfg.intrinsics()
        D = cfg.distortion_coeffs()
        centre = _Rays.make(K, None, 1)
        if cfg.supersample == 1 and not np.any(D):
            shade = centre
        else:
            shade = _Rays.make(K, D, cfg.supersample)
        cached = (centre, shade)
        world._ray_cache = cached
    return cached


# ---------------------------------------------------------------------------------------
# Geometry pass
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Hits:
    t: np.ndarray  # (H, W, k) ray parameter = z-depth; inf for sky
    code: np.ndarray  # (H, W, k) int32: object row ≥ 0 or SKY/ROAD/CURB/SIDEWALK/LOT
    dirs: tuple[np.ndarray, np.ndarray, np.ndarray]  # world-frame ray directions (unnormalised)
    gs: np.ndarray  # road coordinate s of ground hits (NaN elsewhere)
    gd: np.ndarray  # road coordinate d of ground hits


def _ground(world: World, cam: np.ndarray, dirs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Road, curb, sidewalk and lot hits (flat arrays): t, code, s, d."""
    road = world.road
    dx, dy, dz = (a.reshape(-1) for a in dirs)
    n = dx.size
    t = np.full(n, np.inf, dtype=np.float32)
    code = np.full(n, SKY, dtype=np.int32)
    gs = np.full(n, np.nan, dtype=np.float32)
    gd = np.full(n, np.nan, dtype=np.float32)
    h = float(cam[2])
    idx = np.flatnonzero(dz < -1e-7)
    if idx.size == 0:
        return t, code, gs, gd
    ddx, ddy, ddz = dx[idx], dy[idx], dz[idx]
    inv = (-1.0 / ddz).astype(np.float32)
    camx, camy = np.float32(cam[0]), np.float32(cam[1])
    t_rd = np.float32(h) * inv
    s_rd, d_rd = road.road_coords(camx + t_rd * ddx, camy + t_rd * ddy)
    t_sw = np.float32(h - CURB_HEIGHT) * inv
    # The ray is below curb height only on [t_sw, t_rd]; its horizontal travel there bounds how far
    # d can change, so only rays near the road edge can touch the curb or the sidewalk first.
    travel = (t_rd - t_sw) * np.sqrt(ddx * ddx + ddy * ddy) + np.float32(1e-3)
    cand = np.flatnonzero(np.abs(d_rd) > ROAD_HALF_WIDTH - travel)
    on_road = np.abs(d_rd) <= ROAD_HALF_WIDTH
    res_t, res_code, res_s, res_d = t_rd.copy(), np.full(idx.size, ROAD, np.int32), s_rd, d_rd
    if cand.size:
        ct_sw = t_sw[cand]
        s_sw, d_sw = road.road_coords(camx + ct_sw * ddx[cand], camy + ct_sw * ddy[cand])
        side = np.abs(d_sw) > ROAD_HALF_WIDTH
        # Sidewalk/lot top surface first.
        si = cand[side]
        res_t[si] = ct_sw[side]
        res_s[si], res_d[si] = s_sw[side], d_sw[side]
        outer = np.abs(d_sw[side]) > ROAD_HALF_WIDTH + SIDEWALK_WIDTH
        res_code[si] = np.where(outer, LOT, SIDEWALK)
        # Over the road at curb height but outside it on the road plane: the curb face.
        curb = cand[~side & ~on_road[cand]]
        if curb.size:
            ta, tb = t_sw[curb].astype(np.float64), t_rd[curb].astype(np.float64)
            cx, cy = ddx[curb].astype(np.float64), ddy[curb].astype(np.float64)
            ga = np.abs(d_sw[~side & ~on_road[cand]].astype(np.float64)) - ROAD_HALF_WIDTH
            gb = np.abs(d_rd[curb].astype(np.float64)) - ROAD_HALF_WIDTH
            for _ in range(3):  # regula falsi on |d(t)| − half width (d is almost linear in t here)
                tm = ta + (tb - ta) * (-ga) / np.maximum(gb - ga, 1e-12)
                sm, dm = road.road_coords(cam[0] + tm * cx, cam[1] + tm * cy)
                gm = np.abs(dm) - ROAD_HALF_WIDTH
                lo = gm < 0
                ta, ga = np.where(lo, tm, ta), np.where(lo, gm, ga)
                tb, gb = np.where(lo, tb, tm), np.where(lo, gb, gm)
            res_t[curb] = tm
            res_s[curb], res_d[curb] = sm, dm
            res_code[curb] = CURB
    t[idx], code[idx], gs[idx], gd[idx] = res_t, res_code, res_s, res_d
    return t, code, gs, gd


def _corners(objs: Objects) -> np.ndarray:
    """``N×8×3`` corners of each primitive's (yawed) bounding box, world frame."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local = signs[None] * objs.half[:, None, :]
    c, s = np.cos(objs.yaw)[:, None], np.sin(objs.yaw)[:, None]
    out = np.empty_like(local)
    out[..., 0] = c * local[..., 0] - s * local[..., 1]
    out[..., 1] = s * local[..., 0] + c * local[..., 1]
    out[..., 2] = local[..., 2]
    return out + objs.centre[:, None, :]


_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])


def _screen_bounds(objs: Objects, T_cw: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Visible objects and their normalised image bounds ``[x0, x1, y0, y1]`` (clipped at the near plane)."""
    cam = T_cw[:3, 3]
    R = T_cw[:3, :3]
    rel = objs.centre - cam
    radius = np.linalg.norm(objs.half, axis=1)
    keep = np.linalg.norm(rel, axis=1) - radius <= max_distance
    pts = (_corners(objs) - cam) @ R  # camera coordinates, N×8×3
    z = pts[..., 2]
    keep &= z.max(axis=1) > NEAR
    with np.errstate(divide="ignore", invalid="ignore"):
        front = z >= NEAR
        xs = np.where(front, pts[..., 0] / z, np.nan)
        ys = np.where(front, pts[..., 1] / z, np.nan)
        za, zb = z[:, _EDGES[:, 0]], z[:, _EDGES[:, 1]]
        crosses = (za - NEAR) * (zb - NEAR) < 0
        lam = (NEAR - za) / (zb - za)
        pa, pb = pts[:, _EDGES[:, 0]], pts[:, _EDGES[:, 1]]
        ex = np.where(crosses, (pa[..., 0] + lam * (pb[..., 0] - pa[..., 0])) / NEAR, np.nan)
        ey = np.where(crosses, (pa[..., 1] + lam * (pb[..., 1] - pa[..., 1])) / NEAR, np.nan)
    allx = np.concatenate([xs, ex], axis=1)
    ally = np.concatenate([ys, ey], axis=1)
    idx = np.flatnonzero(keep)
    bounds = np.stack(
        [
            np.nanmin(allx[idx], axis=1),
            np.nanmax(allx[idx], axis=1),
            np.nanmin(ally[idx], axis=1),
            np.nanmax(ally[idx], axis=1),
        ],
        axis=1,
    )
    return idx, bounds


def _trace(world: World, objs: Objects, rays: _Rays, T_cw: np.ndarray) -> _Hits:
    """Nearest hit of every ray (geometry only)."""
    R = T_cw[:3, :3].astype(np.float32)
    cam = T_cw[:3, 3]
    xn, yn = rays.xn, rays.yn
    dirs = tuple(R[i, 0] * xn + R[i, 1] * yn + R[i, 2] for i in range(3))
    shape = xn.shape
    t, code, gs, gd = _ground(world, cam, dirs)
    t, code = t.reshape(shape), code.reshape(shape)
    dx, dy, dz = dirs
    vis, bounds = _screen_bounds(objs, T_cw, world.config.max_distance)
    j0s = np.searchsorted(rays.colmax, bounds[:, 0], side="left")
    j1s = np.searchsorted(rays.colmin, bounds[:, 1], side="right")
    i0s = np.searchsorted(rays.rowmax, bounds[:, 2], side="left")
    i1s = np.searchsorted(rays.rowmin, bounds[:, 3], side="right")
    rel = objs.centre - cam
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for o, i0, i1, j0, j1 in zip(vis, i0s, i1s, j0s, j1s):
            if i1 <= i0 or j1 <= j0:
                continue
            sl = (slice(int(i0), int(i1)), slice(int(j0), int(j1)))
            DX, DY, DZ = dx[sl], dy[sl], dz[sl]
            cx, cy, cz = (float(v) for v in rel[o])
            hx, hy, hz = (float(v) for v in objs.half[o])
            shp = objs.shape[o]
            if shp == BOX:
                c, s = math.cos(objs.yaw[o]), math.sin(objs.yaw[o])
                ox, oy, oz = -(c * cx + s * cy), -(-s * cx + c * cy), -cz
                lx = np.float32(c) * DX + np.float32(s) * DY
                ly = np.float32(c) * DY - np.float32(s) * DX
                tn = tf = None
                for o_, l_, h_ in ((ox, lx, hx), (oy, ly, hy), (oz, DZ, hz)):
                    inv = 1.0 / l_
                    ta = np.float32(-h_ - o_) * inv
                    tb = np.float32(h_ - o_) * inv
                    lo, hi = np.minimum(ta, tb), np.maximum(ta, tb)
                    tn = lo if tn is None else np.maximum(tn, lo)
                    tf = hi if tf is None else np.minimum(tf, hi)
                th = tn
                ok = (tn <= tf) & (tn > NEAR)
            elif shp == CYLINDER:
                a = DX * DX + DY * DY
                bh = DX * np.float32(cx) + DY * np.float32(cy)
                disc = bh * bh - a * np.float32(cx * cx + cy * cy - hx * hx)
                th = (bh - np.sqrt(disc)) / a
                zz = th * DZ
                ok = (disc >= 0) & (th > NEAR) & (zz >= cz - hz) & (zz <= cz + hz)
            else:  # SPHERE
                a = DX * DX + DY * DY + DZ * DZ
                bh = DX * np.float32(cx) + DY * np.float32(cy) + DZ * np.float32(cz)
                disc = bh * bh - a * np.float32(cx * cx + cy * cy + cz * cz - hx * hx)
                th = (bh - np.sqrt(disc)) / a
                ok = (disc >= 0) & (th > NEAR)
            tsl = t[sl]
            ok &= th < tsl
            if ok.any():
                tsl[ok] = th[ok]
                code[sl][ok] = o
    return _Hits(t, code, dirs, gs.reshape(shape), gd.reshape(shape))


# ---------------------------------------------------------------------------------------
# Shading
# ---------------------------------------------------------------------------------------
def _footprint(t, dnorm, cos_inc, scale) -> np.ndarray:
    """Filter width (metres) for one sample: ``range·angle``, stretched (up to ``ANISO``) at grazing angles."""
    minor = t * dnorm * np.float32(scale)
    major = minor / np.maximum(cos_inc, np.float32(0.03))
    return np.maximum(minor, major / np.float32(ANISO))


def _shade(world: World, objs: Objects, hits: _Hits, rays: _Rays, T_cw: np.ndarray) -> np.ndarray:
    """Linear RGB radiance ``(H, W, k, 3)`` float32 of every ray."""
    tex = world.textures
    cam = T_cw[:3, 3]
    t = hits.t.reshape(-1)
    code = hits.code.reshape(-1)
    dx, dy, dz = (a.reshape(-1) for a in hits.dirs)
    n = t.size
    albedo = np.zeros((n, 3), dtype=np.float32)
    normal = np.zeros((n, 3), dtype=np.float32)
    normal[:, 2] = 1
    sky_idx = sky_rad = None
    dnorm = np.sqrt(dx * dx + dy * dy + dz * dz)
    scale = rays.scale
    sun = world.sun.astype(np.float32)

    # -- sky (at infinity; a function of direction only) -----------------------------------
    idx = np.flatnonzero(code == SKY)
    if idx.size:
        ez = np.clip(dz[idx] / dnorm[idx], 1e-3, 1.0)
        k = np.sqrt(ez)[:, None]
        horizon = np.array([0.80, 0.85, 0.92], dtype=np.float32)
        zenith = np.array([0.30, 0.48, 0.85], dtype=np.float32)
        sky = horizon * (1 - k) + zenith * k
        # Clouds on a plane at infinity: coordinates (X/Z, Y/Z) of the direction.
        cu, cv = 0.35 * dx[idx] / (dz[idx] + 0.05), 0.35 * dy[idx] / (dz[idx] + 0.05)
        fp = np.float32(0.35 * scale) * dnorm[idx] / (ez * ez)
        cloud = tex.sample(TEXTURES["clouds"][0], cu, cv, fp)
        cover = (np.clip((cloud - 0.2) / 1.2, 0, 1) * np.clip(ez * 6, 0, 1))[:, None]
        sky_idx, sky_rad = idx, sky * (1 - cover) + np.float32(0.95) * cover

    # -- ground: road, curb, sidewalk, lot ---------------------------------------------------
    gs, gd = hits.gs.reshape(-1), hits.gd.reshape(-1)
    idx = np.flatnonzero((code <= ROAD) & (code >= LOT) & (code != CURB))
    if idx.size:
        ti, s, d, c = t[idx], gs[idx], gd[idx], code[idx]
        fp = _footprint(ti, dnorm[idx], -dz[idx] / dnorm[idx], scale)
        alb = np.empty((idx.size, 3), dtype=np.float32)
        r = c == ROAD
        if r.any():
            fr = fp[r]
            detail = tex.sample(TEXTURES["asphalt"][0], s[r], d[r], fr)
            stain = tex.sample(TEXTURES["lot"][0], s[r] / 5.3 + 17.0, d[r] / 5.3, fr / 5.3)
            grey = 0.11 * detail * (0.8 + 0.2 * stain)
            dd = np.abs(d[r])
            lines = np.maximum(
                box(d[r], -0.06, 0.06, fr) * pulse_train(s[r], 9.0, 0.0, 3.0, fr),
                box(dd, LANE_WIDTH - 0.075, LANE_WIDTH + 0.075, fr),
            )
            paint = 0.62 * (0.8 + 0.2 * detail)
            alb[r] = ((grey * (1 - lines) + paint * lines)[:, None] * np.array([1.0, 1.0, 1.06], np.float32)).astype(
                np.float32
            )
        sw = c == SIDEWALK
        if sw.any():
            fs = fp[sw]
            detail = tex.sample(TEXTURES["concrete"][0], s[sw], d[sw], fs)
            joints = np.maximum(
                pulse_train(s[sw], 1.2, 0.0, 0.025, fs),
                pulse_train(np.abs(d[sw]) - ROAD_HALF_WIDTH, 1.0, 0.0, 0.025, fs),
            )
            v = 0.40 * detail * (1 - 0.45 * joints)
            alb[sw] = v[:, None] * np.array([1.0, 0.97, 0.92], np.float32)
        lt = c == LOT
        if lt.any():
            fl = fp[lt]
            detail = tex.sample(TEXTURES["lot"][0], s[lt], d[lt], fl)
            patch = tex.sample(TEXTURES["concrete"][0], s[lt] / 4.1, d[lt] / 4.1, fl / 4.1)
            alb[lt] = (detail * (0.6 + 0.4 * patch))[:, None] * np.array([0.16, 0.2, 0.09], np.float32)
        albedo[idx] = alb
    idx = np.flatnonzero(code == CURB)
    if idx.size:
        ti = t[idx]
        Z = cam[2] + ti * dz[idx]
        slope = world.road.slope(world.road.x_of_s(gs[idx].astype(np.float64)))
        nrm = np.stack([-slope, np.ones_like(slope), np.zeros_like(slope)], axis=1) / np.sqrt(1 + slope**2)[:, None]
        nrm = (nrm * -np.sign(gd[idx])[:, None]).astype(np.float32)  # faces the road
        normal[idx] = nrm
        cos_inc = np.abs((nrm[:, 0] * dx[idx] + nrm[:, 1] * dy[idx]) / dnorm[idx])
        fp = _footprint(ti, dnorm[idx], cos_inc, scale)
        detail = tex.sample(TEXTURES["concrete"][0], gs[idx] + 3.1, Z, fp)
        albedo[idx] = (0.5 * detail)[:, None] * np.array([1.0, 1.0, 0.97], np.float32)

    # -- objects -------------------------------------------------------------------------
    idx = np.flatnonzero(code >= 0)
    if idx.size:
        _shade_objects(world, objs, idx, code[idx], t[idx], dx[idx], dy[idx], dz[idx], dnorm[idx], cam, scale,
                       albedo, normal)  # fmt: skip

    lit = np.float32(AMBIENT) + np.float32(DIFFUSE) * np.maximum(normal @ sun, 0)
    radiance = albedo * lit[:, None]
    if sky_idx is not None:
        radiance[sky_idx] = sky_rad
    return radiance.reshape(*hits.t.shape, 3)


def _shade_objects(world, objs, idx, o, t, dx, dy, dz, dnorm, cam, scale, albedo, normal) -> None:
    """Albedo and normal of object hits (flat arrays of the hit rays; ``o`` their object rows)."""
    tex = world.textures
    f32 = np.float32
    rel = (objs.centre - cam).astype(f32)
    half_all = objs.half.astype(f32)
    # Hit point relative to the object's centre, world axes.
    px = t * dx - rel[:, 0][o]
    py = t * dy - rel[:, 1][o]
    pz = t * dz - rel[:, 2][o]
    Z = f32(cam[2]) + t * dz  # height above the road
    hx, hy, hz = half_all[:, 0][o], half_all[:, 1][o], half_all[:, 2][o]
    # Boxes (most hits): local coordinates, the face hit (axis 0 along, 1 across, 2 top/bottom) and its normal.
    c = np.cos(objs.yaw).astype(f32)[o]
    s = np.sin(objs.yaw).astype(f32)[o]
    lx = c * px + s * py
    ly = c * py - s * px
    rx, ry, rz = np.abs(lx) / hx, np.abs(ly) / hy, np.abs(pz) / hz
    axis = np.where((rx >= ry) & (rx >= rz), 0, np.where(ry >= rz, 1, 2)).astype(np.int8)
    sign = np.where(np.where(axis == 0, lx, np.where(axis == 1, ly, pz)) >= 0, f32(1), f32(-1))
    nlx = np.where(axis == 0, sign, f32(0))
    nly = np.where(axis == 1, sign, f32(0))
    nrm = np.stack([c * nlx - s * nly, s * nlx + c * nly, np.where(axis == 2, sign, f32(0))], axis=1)
    # Horizontal face coordinate: across the face, from its left edge seen from outside.
    u = np.where(axis == 0, sign * ly + hy, np.where(axis == 1, hx - sign * lx, lx))
    shp = objs.shape[o]
    cy_ = shp == CYLINDER
    if cy_.any():
        r = hx[cy_]
        nrm[cy_, 0], nrm[cy_, 1], nrm[cy_, 2] = px[cy_] / r, py[cy_] / r, 0
        u[cy_] = np.arctan2(py[cy_], px[cy_]) * f32(TEXTURES["bark"][1] / (2 * np.pi))
        axis[cy_] = 1
    sp = shp == SPHERE
    if sp.any():
        r = hx[sp]
        nrm[sp] = np.stack([px[sp], py[sp], pz[sp]], axis=1) / r[:, None]
        tile = TEXTURES["leaves"][1]
        reps = np.maximum(np.round(2 * np.pi * r / tile), 1)
        u[sp] = np.arctan2(py[sp], px[sp]) / f32(2 * np.pi) * reps * f32(tile)
        axis[sp] = 1
    cos_inc = np.abs(nrm[:, 0] * dx + nrm[:, 1] * dy + nrm[:, 2] * dz) / dnorm
    fp = _footprint(t, dnorm, cos_inc, scale)
    # Texture coordinates: (u, height) on walls, (lx, ly) on tops.
    top = axis == 2
    tu = np.where(top, lx, u) + objs.texoff[:, 0][o]
    tv = np.where(top, ly, Z) + objs.texoff[:, 1][o]
    detail = tex.sample(objs.tex[o], tu, tv, fp)
    alb = objs.albedo[o] * detail[:, None]
    kind = objs.kind[o]
    prm = objs.params[o]
    wall = ~top
    lxs = lx
    half = np.stack([hx, hy, hz], axis=1)

    m = (kind == BUILDING) & wall
    if m.any():
        f = fp[m]
        floor_h, bay, ww, wh, sill, glass = prm[m].T
        height = 2 * half[m, 2]
        uu, zz = u[m], Z[m]
        vert = box(zz, 0.9, height - 0.7, f)
        win = pulse_train(uu, bay, (bay - ww) / 2, ww, f) * pulse_train(zz, floor_h, sill, wh, f) * vert
        frame = pulse_train(uu, bay, (bay - ww) / 2 - 0.08, ww + 0.16, f)
        frame = frame * pulse_train(zz, floor_h, sill - 0.08, wh + 0.16, f) * vert
        col = alb[m] * (1 - frame)[:, None] + (np.float32(0.62) * frame)[:, None]
        gl = (glass * (0.8 + 0.4 * detail[m]))[:, None] * np.array([0.85, 0.95, 1.1], np.float32)
        alb[m] = col * (1 - win)[:, None] + gl * win[:, None]
    m = (kind == BUILDING) & (axis == 2)
    if m.any():
        alb[m] = (0.25 * detail[m])[:, None]
    m = kind == CAR_BODY
    if m.any():
        f = fp[m]
        uu, zz, ax, sg = u[m], Z[m], axis[m], sign[m]
        length, wdt, roof = prm[m][:, :3].T
        a = alb[m]
        bumper = box(zz, 0.28, 0.44, f)[:, None]
        dark = np.float32(0.05)
        lateral = uu - wdt / 2  # 0 at the face centre on front/back faces
        lamps = np.maximum(
            box(lateral, -wdt / 2 + 0.12, -wdt / 2 + 0.45, f), box(lateral, wdt / 2 - 0.45, wdt / 2 - 0.12, f)
        )
        lamps = (lamps * box(zz, roof - 0.26, roof - 0.1, f))[:, None]
        plate = (box(lateral, -0.26, 0.26, f) * box(zz, 0.47, 0.6, f))[:, None]
        grille = (box(lateral, -0.4, 0.4, f) * box(zz, 0.5, roof - 0.12, f))[:, None]
        front = ((ax == 0) & (sg > 0))[:, None]
        back = ((ax == 0) & (sg < 0))[:, None]
        side = (ax == 1)[:, None]
        seams = np.maximum(
            box(uu, 0.45 * length, 0.45 * length + 0.012, f), box(uu, 0.7 * length, 0.7 * length + 0.012, f)
        )[:, None]
        out = a * (1 - bumper) + dark * bumper
        tail = np.array([0.55, 0.03, 0.02], np.float32)
        head = np.array([0.8, 0.8, 0.75], np.float32)
        out = np.where(back, out * (1 - lamps) + tail * lamps, out)
        out = np.where(back, out * (1 - plate) + np.float32(0.75) * plate, out)
        out = np.where(front, out * (1 - lamps) + head * lamps, out)
        out = np.where(front, out * (1 - grille * 0.8) + dark * grille * 0.8, out)
        out = np.where(side, out * (1 - seams) + dark * seams, out)
        alb[m] = out
    m = kind == CAR_CABIN
    if m.any():
        f = fp[m]
        uu, zz, ax = u[m], Z[m], axis[m]
        pm = prm[m]
        length, wdt, hgt, glass = pm[:, 0], pm[:, 1], pm[:, 2], pm[:, 5]
        bottom = objs.centre[o[m], 2].astype(np.float32) - hgt / 2
        vert = box(zz, bottom + 0.05, bottom + hgt - 0.07, f)
        side_glass = np.maximum(box(uu, 0.12, length / 2 - 0.05, f), box(uu, length / 2 + 0.05, length - 0.12, f))
        end_glass = box(uu, 0.1, wdt - 0.1, f)
        win = np.where(ax == 1, side_glass, np.where(ax == 0, end_glass, 0)) * vert
        gl = (glass * (0.7 + 0.6 * detail[m]))[:, None] * np.array([0.8, 0.9, 1.0], np.float32)
        alb[m] = alb[m] * (1 - win)[:, None] + gl * win[:, None]
    m = kind == WHEEL
    if m.any():
        f = fp[m]
        radial = np.sqrt((lxs[m]) ** 2 + (Z[m] - half[m, 2]) ** 2)
        rim = (box(radial, 0.0, 0.17, f) * (axis[m] == 1))[:, None]
        alb[m] = alb[m] * (1 - rim) + np.float32(0.35) * detail[m, None] * rim
    albedo[idx] = alb
    normal[idx] = nrm


# ---------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------
def _objects_for(world: World, t: float) -> Objects:
    s = world.ego_s(t)
    return world.objects_at(t, s - 40.0, s + world.config.max_distance + 20.0)


def render_frame(world: World, t: float) -> Frame:
    """Render the frame at time ``t`` (seconds since the start of the drive).

    Deterministic: the same seed, config and ``t`` give bit-identical arrays on one machine and
    numpy build (the sensor noise is seeded by the world's seed and the frame's stamp). Across
    CPUs numpy's SIMD maths may differ in the last bit, so compare with a tolerance there.

    Returns
    -------
    :class:`Frame` (``rgb`` H×W×3 uint8, ``depth`` H×W float32 metres / NaN sky, ``moving_mask``,
    ``semantic``, ``T_cam_to_world`` 4×4, ``intrinsics`` …).
    """
    cfg = world.config
    K = cfg.intrinsics()
    T_cw = world.camera_pose(t)
    objs = _objects_for(world, t)
    centre_rays, shade_rays = _rays_for(world)

    h, w = K.height, K.width
    depth = np.empty((h, w), dtype=np.float32)
    moving = np.zeros((h, w), dtype=bool)
    semantic = np.zeros((h, w), dtype=np.uint8)
    radiance = np.empty((h, w, 3), dtype=np.float32)
    # Horizontal bands of ~BAND_RAYS rays bound the memory and keep the working set in cache.
    band = max(1, BAND_RAYS // (w * shade_rays.xn.shape[2]))
    for i0 in range(0, h, band):
        i1 = min(h, i0 + band)
        centre = _trace(world, objs, centre_rays.rows(i0, i1), T_cw)
        hit_t = centre.t[..., 0]
        code = centre.code[..., 0]
        depth[i0:i1] = np.where(np.isfinite(hit_t), hit_t, np.nan)
        obj = code >= 0
        codes = code[obj]
        moving[i0:i1][obj] = objs.moving[codes]
        sem = semantic[i0:i1]
        for cls, c in ((1, ROAD), (2, CURB), (3, SIDEWALK), (4, LOT)):
            sem[code == c] = cls
        sem[obj] = _KIND_TO_CLASS[objs.kind[codes]]
        rays = shade_rays.rows(i0, i1)
        hits = centre if shade_rays is centre_rays else _trace(world, objs, rays, T_cw)
        radiance[i0:i1] = _shade(world, objs, hits, rays, T_cw).mean(axis=2)
    gain = world.exposure(t)
    srgb = np.clip(radiance * np.float32(gain), 0, 1) ** np.float32(1 / 2.2)
    img = srgb * np.float32(255.0)
    stamp = cfg.stamp_ns(t)
    if cfg.noise_std > 0:
        rng = np.random.default_rng([world.seed, stamp, 0x0015E])
        img = img + rng.normal(0.0, cfg.noise_std, size=img.shape).astype(np.float32)
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Frame(
        t=float(t),
        stamp_ns=stamp,
        rgb=rgb,
        depth=depth,
        moving_mask=moving,
        semantic=semantic,
        T_cam_to_world=T_cw,
        intrinsics=K,
        distortion=cfg.distortion_coeffs(),
        exposure=gain,
    )


def render_index(world: World, index: int) -> Frame:
    """Render frame number ``index`` (time ``index / fps``)."""
    return render_frame(world, world.config.frame_time(index))
