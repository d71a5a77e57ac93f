"""Procedural, tileable, mip-mapped textures and box-filtered analytic patterns.

Anti-aliasing is what keeps the synthetic world photometrically consistent between frames:
a texture sampled at a point aliases as soon as a pixel covers more than a texel, and the
aliasing pattern changes with every camera motion. Two tools avoid it:

* :class:`TextureBank` holds periodic single-channel "detail" tiles (mean ≈ 1, multiplied
  onto a material's colour) with a full mip pyramid; :meth:`TextureBank.sample` filters
  trilinearly with a level chosen from the sample's footprint on the surface (metres).
* :func:`box` and :func:`pulse_train` return the exact coverage of a box filter of width
  ``fp`` (metres) over a stripe or a periodic train of stripes: lane markings, paving
  joints, windows, lamps.

Every texture is generated from a seed with numpy only, so a world is bit-reproducible.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TEXTURES", "TextureBank", "box", "pulse_train"]

#: Texture name → (index, tile size in metres). The index is what :meth:`TextureBank.sample` takes.
TEXTURES: dict[str, tuple[int, float]] = {
    "asphalt": (0, 4.0),
    "concrete": (1, 4.0),
    "lot": (2, 4.0),
    "brick": (3, 4.0),
    "plaster": (4, 4.0),
    "bark": (5, 1.0),
    "leaves": (6, 2.0),
    "paint": (7, 2.0),
    "metal": (8, 1.0),
    "clouds": (9, 1.0),
}

TILE = 256  # texels per tile side (a power of two)


def _noise(rng: np.random.Generator, n: int, beta: float, lo: float = 0.0, hi: float = 0.5, aniso: float = 1.0):
    """Periodic Gaussian noise ``n×n`` with spectrum ``|f|^-beta`` on ``lo ≤ |f| ≤ hi`` (cycles/texel), std 1.

    ``aniso`` > 1 stretches features along the second axis (bark, brushed metal).
    """
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    f = np.sqrt(fx**2 + (fy * aniso) ** 2)
    amp = np.where((f >= max(lo, 1.0 / n)) & (f <= hi), np.maximum(f, 1e-9) ** (-beta), 0.0)
    spec = (rng.normal(size=amp.shape) + 1j * rng.normal(size=amp.shape)) * amp
    out = np.fft.irfft2(spec, s=(n, n))
    return (out - out.mean()) / (out.std() + 1e-12)


def _brick(rng: np.random.Generator, n: int, tile_m: float) -> np.ndarray:
    """Running-bond bricks (0.25 × 0.0625 m courses) with light mortar and per-brick shade."""
    texel = tile_m / n
    v, u = np.meshgrid((np.arange(n) + 0.5) * texel, (np.arange(n) + 0.5) * texel, indexing="ij")
    course_h, brick_w, mortar = 0.0625, 0.25, 0.012
    row = np.floor(v / course_h).astype(int)
    shifted = u + (row % 2) * brick_w / 2
    col = np.floor(shifted / brick_w).astype(int)
    n_rows, n_cols = int(round(tile_m / course_h)), int(round(tile_m / brick_w))
    shade = rng.normal(1.0, 0.13, size=(n_rows, n_cols + 1))
    brick = shade[row % n_rows, col % n_cols]
    in_mortar = ((v % course_h) < mortar) | ((shifted % brick_w) < mortar)
    out = np.where(in_mortar, 1.45, brick) * (1 + 0.07 * _noise(rng, n, 0.5))
    return out


class TextureBank:
    """All textures of a world with their mip pyramids, flattened for vectorised gathers.

    Parameters
    ----------
    seed : seeds every texture.
    """

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([seed, 0x7E47])
        n = TILE
        tiles: dict[str, np.ndarray] = {}
        tiles["asphalt"] = (
            1.0
            + 0.16 * _noise(rng, n, 0.2, lo=0.08)  # grain
            + 0.10 * _noise(rng, n, 1.6, hi=0.08)  # patches
            + 0.22 * np.clip(_noise(rng, n, 0.0, lo=0.1) - 1.8, 0, None)  # light stones
        )
        tiles["concrete"] = 1.0 + 0.07 * _noise(rng, n, 1.4) + 0.06 * _noise(rng, n, 0.2, lo=0.1)
        tiles["lot"] = 1.0 + 0.22 * _noise(rng, n, 1.0) + 0.15 * _noise(rng, n, 0.3, lo=0.1)
        tiles["brick"] = _brick(rng, n, TEXTURES["brick"][1])
        tiles["plaster"] = 1.0 + 0.08 * _noise(rng, n, 1.6) + 0.05 * _noise(rng, n, 0.3, lo=0.1)
        tiles["bark"] = 1.0 + 0.28 * _noise(rng, n, 1.0, aniso=6.0) + 0.08 * _noise(rng, n, 0.2)
        tiles["leaves"] = 1.0 + 0.40 * np.tanh(_noise(rng, n, 0.9, lo=0.02)) + 0.10 * _noise(rng, n, 0.1, lo=0.15)
        tiles["paint"] = 1.0 + 0.06 * _noise(rng, n, 1.2) + 0.03 * _noise(rng, n, 0.2, lo=0.1)
        tiles["metal"] = 1.0 + 0.12 * _noise(rng, n, 1.0, aniso=8.0)
        tiles["clouds"] = _noise(rng, n, 1.8, hi=0.1)
        order = sorted(TEXTURES, key=lambda k: TEXTURES[k][0])
        self.levels = int(np.log2(n)) + 1
        self.tile_m = np.array([TEXTURES[k][1] for k in order], dtype=np.float32)
        chunks, base = [], np.zeros((len(order), self.levels), dtype=np.int64)
        offset = 0
        for i, name in enumerate(order):
            level = np.clip(tiles[name], 0.05, None).astype(np.float64)
            for lvl in range(self.levels):
                base[i, lvl] = offset
                chunks.append(level.astype(np.float32).reshape(-1))
                offset += level.size
                if level.shape[0] > 1:
                    level = 0.25 * (level[0::2, 0::2] + level[1::2, 0::2] + level[0::2, 1::2] + level[1::2, 1::2])
        self.data = np.concatenate(chunks)
        self.base = base
        self.mean = np.array([tiles[k].mean() for k in order], dtype=np.float32)
        self._inv_pow2 = (0.5 ** np.arange(self.levels)).astype(np.float32)

    def sample(self, tex: np.ndarray | int, u: np.ndarray, v: np.ndarray, fp: np.ndarray) -> np.ndarray:
        """Trilinearly filtered texture values.

        Parameters
        ----------
        tex : texture index (see :data:`TEXTURES`): an int, or an int array of ``u``'s shape.
        u, v : surface coordinates in metres (any range; tiles repeat).
        fp : filter footprint in metres (the size one sample covers on the surface).

        Returns
        -------
        float32 array of ``u``'s shape.
        """
        if np.ndim(tex) == 0:
            inv_texel = np.float32(TILE / self.tile_m[int(tex)])
            base, off = self.base[int(tex)], 0
        else:
            inv_texel = (TILE / self.tile_m).astype(np.float32)[tex]
            base, off = self.base.reshape(-1), np.asarray(tex, dtype=np.int64) * self.levels
        ut = np.asarray(u, dtype=np.float32) * inv_texel  # level-0 texel units
        vt = np.asarray(v, dtype=np.float32) * inv_texel
        lod = np.log2(np.maximum(fp * inv_texel, np.float32(1e-6)), dtype=np.float32)
        np.clip(lod, 0.0, self.levels - 1, out=lod)
        l0 = lod.astype(np.int64)
        frac = lod - l0.astype(np.float32)
        l1 = np.minimum(l0 + 1, self.levels - 1)
        a = self._bilinear(base[off + l0], l0, ut, vt)
        b = self._bilinear(base[off + l1], l1, ut, vt)
        return a + frac * (b - a)

    def _bilinear(self, b: np.ndarray, lvl: np.ndarray, ut: np.ndarray, vt: np.ndarray) -> np.ndarray:
        """Bilinear lookup at mip level ``lvl`` (per sample) whose data starts at offset ``b``."""
        shrink = self._inv_pow2[lvl]
        # Texel centres of level l sit at (i + 0.5)·2^l level-0 texels; tiles wrap (TILE is a power of two).
        x = ut * shrink - np.float32(0.5)
        y = vt * shrink - np.float32(0.5)
        x0 = np.floor(x)
        y0 = np.floor(y)
        fx = x - x0
        fy = y - y0
        n = TILE >> lvl
        m = n - 1
        ix0 = x0.astype(np.int64) & m
        iy0 = y0.astype(np.int64) & m
        ix1 = (ix0 + 1) & m
        r0 = b + iy0 * n
        r1 = b + ((iy0 + 1) & m) * n
        d = self.data
        top = d[r0 + ix0]
        top += fx * (d[r0 + ix1] - top)
        bot = d[r1 + ix0]
        bot += fx * (d[r1 + ix1] - bot)
        return top + fy * (bot - top)


def box(x: np.ndarray, a: float | np.ndarray, b: float | np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of the interval ``[a, b]`` by a box filter of width ``fp`` centred at ``x``."""
    half = 0.5 * fp
    return (np.clip(x + half, a, b) - np.clip(x - half, a, b)) / np.maximum(fp, 1e-9)


def pulse_train(
    x: np.ndarray, period: float | np.ndarray, start: float | np.ndarray, width: float | np.ndarray, fp: np.ndarray
) -> np.ndarray:
    """Box-filtered coverage of the stripes ``[start + k·period, start + k·period + width]`` (all integers ``k``).

    Exact for any filter width: the integral of the stripe indicator over ``[x − fp/2, x + fp/2]``
    divided by ``fp``. Requires ``0 ≤ start`` and ``start + width ≤ period``. Computed in float32
    after reducing ``x`` modulo the period (sub-millimetre error for ``|x|`` up to kilometres).
    """
    f32 = np.float32
    period = np.asarray(period, dtype=f32)
    start = np.asarray(start, dtype=f32)
    width = np.asarray(width, dtype=f32)
    x = np.asarray(x, dtype=f32)
    xr = x - np.floor(x / period) * period  # in [0, period): keeps the subtraction below well conditioned
    half = f32(0.5) * np.asarray(fp, dtype=f32)

    def integral(y):
        kk = np.floor(y / period)
        return kk * width + np.clip(y - kk * period - start, f32(0), width)

    return (integral(xr + half) - integral(xr - half)) / np.maximum(2 * half, f32(1e-9))
