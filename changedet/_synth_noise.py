"""Deterministic, window-independent noise for the synthetic scene generator.

Every value here is a pure function of *global* coordinates (metres or output pixel indices) and
an integer seed, computed element by element, so a pixel gets the same value whichever window it
is rendered in. No filtering, no reductions across pixels, no global random state.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

_M1 = np.uint32(0x8DA6B343)
_M2 = np.uint32(0xD8163841)
_M4 = np.uint32(0x5BD1E995)
_M5 = np.uint32(0x27D4EB2F)


def hash_u32(ix: NDArray[np.int64], iy: NDArray[np.int64], seed: int) -> NDArray[np.uint32]:
    """Hash integer lattice coordinates and a seed to uniformly spread uint32 values."""
    s = np.uint32((((seed * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFFFF) * 0xCB1AB31F) & 0xFFFFFFFF)
    h = (ix.astype(np.uint32) * _M1) ^ (iy.astype(np.uint32) * _M2) ^ s
    h ^= h >> np.uint32(15)
    h *= _M4
    h ^= h >> np.uint32(13)
    h *= _M5
    h ^= h >> np.uint32(16)
    return h


def hash_unit(ix: NDArray[np.int64], iy: NDArray[np.int64], seed: int) -> F32:
    """Hash lattice coordinates to floats uniform in [-1, 1)."""
    h = hash_u32(ix, iy, seed)
    return ((h >> np.uint32(8)).astype(np.float32) * np.float32(2.0 / 16777216.0)) - np.float32(1.0)


def value_noise(u: F64, v: F64, scale_m: float, seed: int) -> F32:
    """Smooth value noise in [-1, 1] on a lattice of ``scale_m`` metres (smoothstep interpolation).

    Lattice values are hashed once per lattice node of the window and gathered, so the cost does
    not depend on the scale; each value depends only on the point and the seed.
    """
    x = u / scale_m
    y = v / scale_m
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0).astype(np.float32)
    fy = (y - y0).astype(np.float32)
    ix = x0.astype(np.int64)
    iy = y0.astype(np.int64)
    ixm, iym = int(ix.min()), int(iy.min())
    nx, ny = int(ix.max()) - ixm + 2, int(iy.max()) - iym + 2
    gx = np.broadcast_to(np.arange(ixm, ixm + nx, dtype=np.int64)[None, :], (ny, nx))
    gy = np.broadcast_to(np.arange(iym, iym + ny, dtype=np.int64)[:, None], (ny, nx))
    table = hash_unit(gx, gy, seed).ravel()
    k = (iy - iym) * nx + (ix - ixm)
    n00, n10 = table[k], table[k + 1]
    n01, n11 = table[k + nx], table[k + nx + 1]
    sx = fx * fx * (np.float32(3.0) - np.float32(2.0) * fx)
    sy = fy * fy * (np.float32(3.0) - np.float32(2.0) * fy)
    a = n00 + (n10 - n00) * sx
    b = n01 + (n11 - n01) * sx
    return a + (b - a) * sy


def fbm(u: F64, v: F64, scale_m: float, seed: int, octaves: int = 3) -> F32:
    """Fractal sum of value noise (roughly in [-1, 1]); finest lattice is ``scale_m / 2**(o-1)``."""
    out = np.zeros(u.shape, np.float32)
    amp = np.float32(1.0)
    total = 0.0
    for k in range(octaves):
        out += amp * value_noise(u, v, scale_m / (2.0**k), seed + 101 * k)
        total += float(amp)
        amp = amp * np.float32(0.5)
    return out / np.float32(total)


def block_noise(u: F64, v: F64, cell_m: float, seed: int) -> F32:
    """Piecewise-constant noise in [-1, 1) on square cells of ``cell_m`` metres (blocky rubble)."""
    return hash_unit(
        np.floor(u / cell_m).astype(np.int64), np.floor(v / cell_m).astype(np.int64), seed
    )


def gaussian_pixels(cols: NDArray[np.int64], rows: NDArray[np.int64], seed: int) -> F32:
    """Standard normal noise per integer pixel (Box-Muller on two hashes)."""
    h1 = hash_u32(cols, rows, seed)
    h2 = hash_u32(cols, rows, seed + 7919)
    u1 = ((h1 >> np.uint32(8)).astype(np.float64) + 0.5) / 16777216.0
    u2 = (h2 >> np.uint32(8)).astype(np.float64) / 16777216.0
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


# JPEG luminance quantisation table (ITU T.81, Annex K).
_JPEG_Q = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.float64,
)


def block_quantize(img: F32, strength: float, full_scale: float) -> F32:
    """JPEG-like 8x8 DCT quantisation of an (H, W, B) image whose H and W are multiples of 8.

    ``strength`` scales the JPEG luminance table (0 disables; ~0.3 is a mild, quality-85-like
    setting); ``full_scale`` is the value range the table is applied to (255 for 8-bit).
    Blocks must be aligned to the global 8x8 grid by the caller.
    """
    if strength <= 0:
        return img
    from scipy.fft import dctn, idctn

    h, w, nb = img.shape
    q = _JPEG_Q * strength * (full_scale / 255.0)
    x = img.astype(np.float64).reshape(h // 8, 8, w // 8, 8, nb).transpose(0, 2, 4, 1, 3)
    c = dctn(x, axes=(3, 4), norm="ortho")
    c = np.round(c / q) * q
    y = idctn(c, axes=(3, 4), norm="ortho")
    return y.transpose(0, 3, 1, 4, 2).reshape(h, w, nb).astype(np.float32)
