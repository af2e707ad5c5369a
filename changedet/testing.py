"""Georeferenced test rasters with known answers (for tests, examples and benchmarks).

:func:`make_scene` draws a textured "urban" scene (multi-scale smoothed noise, bright roofs with
cast shadows); :func:`make_pair` renders a before/after pair of it with a known misregistration
(shift, rotation, scale about the centre), a radiometric change (gain, offset, gamma, a smooth
seasonal brightness field), shadows cast in a different direction, and noise. The truth is a dict
in the same terms as the synthetic generator's ``truth/misregistration.json``: ``matrix`` maps a
before pixel ``(col, row)`` to where its content lies in the after image, on the before grid.

Examples
--------
>>> from changedet.testing import make_pair
>>> before, after, truth = make_pair((1, 128, 128), shift_px=(1.5, -2.25), seed=1)
>>> before.dims, before.rio.crs.to_epsg(), truth["shift_px"]
(('band', 'y', 'x'), 32637, [1.5, -2.25])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from scipy import ndimage

__all__ = [
    "affine_matrix",
    "make_pair",
    "make_raster",
    "make_scene",
    "stored_pair",
    "truth_displacement",
    "warp_image",
]

DEFAULT_TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 4_000_000.0)


def make_raster(
    data: np.ndarray,
    *,
    crs: str | int | None = "EPSG:32637",
    transform: Affine = DEFAULT_TRANSFORM,
    nodata: float | None = None,
    name: str = "raster",
) -> xr.DataArray:
    """Wrap a ``(band, y, x)`` (or ``(y, x)``) array as a georeferenced DataArray.

    Examples
    --------
    >>> da = make_raster(np.zeros((2, 4, 5), "float32"))
    >>> da.shape, float(da.x[0]), float(da.y[0])
    ((2, 4, 5), 500000.25, 3999999.75)
    """
    if data.ndim == 2:
        data = data[None]
    nb, ny, nx = data.shape
    xs = transform.c + transform.a * (np.arange(nx) + 0.5)
    ys = transform.f + transform.e * (np.arange(ny) + 0.5)
    da = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"band": np.arange(1, nb + 1), "y": ys, "x": xs},
        name=name,
    )
    da = da.rio.write_transform(transform)
    if crs is not None:
        da = da.rio.write_crs(crs)
    if nodata is not None:
        da = da.rio.write_nodata(nodata, encoded=False)
    return da


def stored_pair(
    before: xr.DataArray, after: xr.DataArray, folder: Any, *, chunks: int
) -> tuple[xr.DataArray, xr.DataArray]:
    """Write ``before`` and ``after`` as float32 GeoTIFFs (NaN nodata) into ``folder`` and open
    them again in ``chunks`` px chunks: lazy rasters exactly as
    :func:`changedet.io.open_raster` returns them, whose windows the stages can read from the
    files (:func:`changedet.io.window_reader`).

    Examples
    --------
    >>> import tempfile
    >>> r = make_raster(np.zeros((1, 8, 8), "float32"))
    >>> b, a = stored_pair(r, r, tempfile.mkdtemp(), chunks=4)
    >>> b.chunks[1:], a.name
    (((4, 4), (4, 4)), 'after')
    """
    from pathlib import Path

    from changedet.io import open_raster, write_cog

    opened = []
    for name, raster in (("before", before), ("after", after)):
        path = Path(folder) / f"{name}.tif"
        write_cog(raster.astype("float32"), path, nodata=float("nan"))
        opened.append(open_raster(path, chunks=chunks, name=name))
    return opened[0], opened[1]


def make_scene(
    shape: tuple[int, int], *, seed: int = 0, n_buildings: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(ground, roofs, heights)``: textured ground and building roofs, float32.

    ``roofs`` is a mask of building footprints, ``heights`` their height in pixels (for shadows).
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    ground = np.zeros(shape, np.float32)
    for sigma, amp in ((24, 40.0), (6, 20.0), (1.5, 10.0), (0.7, 4.0)):
        ground += (
            amp
            * ndimage.gaussian_filter(rng.normal(size=shape), sigma).astype(np.float32)
            * sigma**0.5
        )
    roofs = np.zeros(shape, bool)
    heights = np.zeros(shape, np.float32)
    if n_buildings is None:
        n_buildings = max(1, ny * nx // 2500)
    for _ in range(n_buildings):
        h, w = rng.integers(6, 28, size=2)
        r, c = rng.integers(0, ny - h), rng.integers(0, nx - w)
        roofs[r : r + h, c : c + w] = True
        heights[r : r + h, c : c + w] = rng.uniform(3, 12)
        ground[r : r + h, c : c + w] = rng.uniform(60, 140)
    return ground + 100.0, roofs, heights


def _shadow(roofs: np.ndarray, heights: np.ndarray, direction_deg: float) -> np.ndarray:
    """Boolean shadow mask cast by ``roofs`` away from the sun (``direction_deg``, image axes)."""
    shadow = np.zeros_like(roofs)
    ux, uy = np.cos(np.radians(direction_deg)), np.sin(np.radians(direction_deg))
    hmax = int(np.ceil(heights.max())) if heights.size else 0
    for step in range(1, hmax + 1):
        sh = ndimage.shift(roofs & (heights >= step), (uy * step, ux * step), order=0)
        shadow |= sh
    return shadow & ~roofs


def affine_matrix(
    shift_px: tuple[float, float] = (0.0, 0.0),
    rotation_deg: float = 0.0,
    scale: float = 1.0,
    center_px: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """``2×3`` matrix mapping before ``(col, row)`` to after-content ``(col, row)``.

    A rotation by ``rotation_deg`` and a ``scale`` about ``center_px``, then a shift
    ``shift_px = (dx, dy)``: ``q = center + scale * R @ (p - center) + shift`` with
    ``R = [[cos, -sin], [sin, cos]]`` on ``(col, row)`` vectors — the same convention as
    :func:`changedet.synthetic.misregistration_matrix` (positive turns content clockwise on screen).

    Examples
    --------
    >>> affine_matrix((2.0, -1.0)).tolist()
    [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]
    """
    t = np.radians(rotation_deg)
    lin = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    c = np.asarray(center_px, float)
    off = c - lin @ c + np.asarray(shift_px, float)
    return np.hstack([lin, off[:, None]]) + 0.0  # no negative zeros


def warp_image(image: np.ndarray, matrix: np.ndarray, *, order: int = 3) -> np.ndarray:
    """Render the after image: content at before ``p`` moves to ``matrix @ [p, 1]``.

    ``image`` is ``(y, x)``; pixels whose source lies outside, or within the interpolation
    support of a NaN, become NaN.
    """
    m = np.vstack([np.asarray(matrix, float), [0, 0, 1]])
    inv = np.linalg.inv(m)
    ny, nx = image.shape
    rows, cols = np.mgrid[0:ny, 0:nx].astype(np.float64)
    src_c = inv[0, 0] * cols + inv[0, 1] * rows + inv[0, 2]
    src_r = inv[1, 0] * cols + inv[1, 1] * rows + inv[1, 2]
    valid = np.isfinite(image)
    filled = np.where(valid, image, np.nanmean(image) if valid.any() else 0.0)
    out = ndimage.map_coordinates(filled, [src_r, src_c], order=order, mode="constant", cval=np.nan)
    if not valid.all():
        vfrac = ndimage.map_coordinates(valid.astype(float), [src_r, src_c], order=1, cval=0.0)
        out[vfrac < 1 - 1e-6] = np.nan
    return out.astype(np.float32)


def make_pair(
    shape: tuple[int, int, int] = (1, 512, 512),
    *,
    shift_px: tuple[float, float] = (0.0, 0.0),
    rotation_deg: float = 0.0,
    scale: float = 1.0,
    gain: float = 1.3,
    offset: float = -20.0,
    gamma: float = 0.9,
    seasonal: float = 0.15,
    shadows: bool = True,
    noise: float = 2.0,
    seed: int = 0,
    crs: str | int | None = "EPSG:32637",
    transform: Affine = DEFAULT_TRANSFORM,
) -> tuple[xr.DataArray, xr.DataArray, dict[str, Any]]:
    """A before/after pair on the same grid with a known misregistration and radiometric change.

    Parameters
    ----------
    shape
        ``(bands, rows, cols)``.
    shift_px, rotation_deg, scale
        The misregistration (see :func:`affine_matrix`; rotation and scale are about the centre).
    gain, offset, gamma, seasonal
        Radiometric change of the after image: ``gain * x**gamma + offset``, times a smooth field
        varying by ±``seasonal``.
    shadows
        Cast shadows to the south-east before and to the south-west after (moved shadows).
    noise
        Standard deviation of independent noise added to each image.
    seed
        Random seed; the same seed gives the same pair.

    Returns
    -------
    before, after, truth
        Two float32 DataArrays (NaN where the after image has no content) and the truth dict.

    Examples
    --------
    >>> b, a, t = make_pair((3, 96, 96), rotation_deg=0.2, seed=3)
    >>> b.shape == a.shape, round(t["rotation_deg"], 1)
    (True, 0.2)
    """
    nb, ny, nx = shape
    rng = np.random.default_rng(seed + 1000)
    pad = 48
    ground, roofs, heights = make_scene((ny + 2 * pad, nx + 2 * pad), seed=seed)
    before_img = ground.copy()
    after_img = ground.copy()
    if shadows:
        before_img[_shadow(roofs, heights, 45.0)] *= 0.45
        after_img[_shadow(roofs, heights, 135.0)] *= 0.45
    center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    matrix = affine_matrix(shift_px, rotation_deg, scale, center)
    # warp on the padded canvas: shift the centre by the pad
    m_pad = matrix.copy()
    m_pad[:, 2] += pad - matrix[:, :2] @ np.array([pad, pad], float)
    warped = warp_image(after_img, m_pad)
    before_bands, after_bands = [], []
    season = 1.0 + seasonal * np.tanh(
        ndimage.gaussian_filter(rng.normal(size=(ny, nx)), 40) * 40
    ).astype(np.float32)
    for i in range(nb):
        w = 1.0 - 0.1 * i
        b = before_img[pad : pad + ny, pad : pad + nx] * w + rng.normal(0, noise, (ny, nx))
        a = warped[pad : pad + ny, pad : pad + nx] * w
        a = (gain * np.clip(a, 1, None) ** gamma + offset) * season + rng.normal(0, noise, (ny, nx))
        before_bands.append(b.astype(np.float32))
        after_bands.append(a.astype(np.float32))
    before = make_raster(np.stack(before_bands), crs=crs, transform=transform, name="before")
    after = make_raster(np.stack(after_bands), crs=crs, transform=transform, name="after")
    truth = {
        "model": "affine",
        "matrix": matrix.tolist(),
        "shift_px": [float(shift_px[0]), float(shift_px[1])],
        "rotation_deg": float(rotation_deg),
        "scale": float(scale),
        "center_px": [center[0], center[1]],
    }
    return before, after, truth


def truth_displacement(
    truth: dict[str, Any], cols: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(dx, dy)`` of the true misregistration at before pixels ``(cols, rows)``."""
    m = np.asarray(truth["matrix"], float)
    cols = np.asarray(cols, float)
    rows = np.asarray(rows, float)
    dx = m[0, 0] * cols + m[0, 1] * rows + m[0, 2] - cols
    dy = m[1, 0] * cols + m[1, 1] * rows + m[1, 2] - rows
    return dx, dy
