"""Lazy resampling of the after image by a displacement model (private to ``coregister``).

Output pixel ``(c, r)`` on the before grid takes the after value at ``(c + dx, r + dy)``
(cubic B-spline, ``scipy.ndimage.map_coordinates(order=3)``). On Dask arrays this runs with
``map_overlap``, or on an after image read from its file with haloed windows each block reads
(:mod:`changedet._haloed`: the same blocks, bounded memory); the halo is the model's largest displacement plus the spline support plus a
tail of :data:`SPLINE_TAIL_PX` pixels over which the B-spline prefilter (an IIR filter with pole
0.268) decays below 1e-7 — so chunk seams do not change the result beyond float32 rounding.

Nodata (NaN) never spreads through the spline: NaNs are replaced by the nearest valid value
before prefiltering, and an output pixel is NaN when any source pixel within the interpolation
support (bilinear footprint of the validity mask, any band) is nodata or outside the image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from changedet._coreg_fit import DisplacementModel

SPLINE_TAIL_PX = 12

__all__ = ["warp_array"]


def _nearest_valid(valid: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Index arrays that take every pixel to its nearest valid one (``None``: all valid).

    Computed once per block and shared by its bands (the distance transform is the costly
    part of the fill)."""
    if valid.all():
        return None
    return tuple(
        ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    )


def _fill_nearest(
    band: np.ndarray, valid: np.ndarray, nearest: tuple[np.ndarray, ...] | None = None
) -> np.ndarray:
    """``band`` with its invalid pixels replaced by the nearest valid value (zeros if none).

    ``nearest``: :func:`_nearest_valid` of ``valid``, when already known."""
    if valid.all():
        return band
    if not valid.any():
        return np.zeros_like(band)
    if nearest is None:
        nearest = _nearest_valid(valid)
        assert nearest is not None
    return band[nearest]


def _warp_block(
    block: np.ndarray, row0: int, col0: int, depth: int, model: DisplacementModel, order: int
) -> np.ndarray:
    """Warp one haloed block; ``row0``/``col0``: global index of its first *output* pixel."""
    nb, hh, ww = block.shape
    h, w = hh - 2 * depth, ww - 2 * depth
    valid = np.isfinite(block).all(axis=0)
    out = np.full((nb, h, w), np.nan, np.float32)
    if not valid.any():
        return out
    rows, cols = np.mgrid[row0 : row0 + h, col0 : col0 + w].astype(np.float64)
    dx, dy = model.displacement_at(cols, rows)
    coords = np.stack([rows + dy - (row0 - depth), cols + dx - (col0 - depth)])
    del rows, cols, dx, dy  # the block's peak memory: keep only what is still needed
    vfrac = ndimage.map_coordinates(
        valid.astype(np.float32), coords, order=1, mode="constant", cval=0.0
    )
    ok = vfrac >= 1.0 - 1e-4
    del vfrac
    nearest = _nearest_valid(valid)
    for b in range(nb):
        filled = _fill_nearest(block[b].astype(np.float64), valid, nearest)
        res = ndimage.map_coordinates(filled, coords, order=order, mode="nearest")
        out[b] = np.where(ok, res, np.nan)
    return out


def warp_array(data: Any, model: DisplacementModel, *, order: int = 3) -> Any:
    """Resample ``data`` (``(band, y, x)``, numpy or dask) by ``model``; same type out.

    Examples
    --------
    >>> m = DisplacementModel("translation", np.array([[1.0, 0, 1.0], [0, 1.0, 0.0]]))
    >>> a = np.arange(20.0, dtype="float32").reshape(1, 4, 5)
    >>> warp_array(a, m)[0, 0].round(3).tolist()
    [1.0, 2.0, 3.0, 4.0, nan]
    """
    _, ny, nx = data.shape
    depth = math.ceil(model.max_abs_displacement((ny, nx))) + 2 + SPLINE_TAIL_PX
    if isinstance(data, np.ndarray):
        padded = np.pad(
            data.astype(np.float32),
            ((0, 0), (depth, depth), (depth, depth)),
            constant_values=np.nan,
        )
        return _warp_block(padded, 0, 0, depth, model, order)

    import dask.array as da
    from dask.array.overlap import ensure_minimum_chunksize

    from changedet._haloed import haloed_map

    chunks = (
        data.chunks[0],
        ensure_minimum_chunksize(depth, data.chunks[1]),
        ensure_minimum_chunksize(depth, data.chunks[2]),
    )
    row_offsets = np.concatenate([[0], np.cumsum(chunks[1])])
    col_offsets = np.concatenate([[0], np.cumsum(chunks[2])])
    # A file opened by open_raster: every block reads its haloed window from the file, the
    # blocks map_overlap would build (same values), but no block waits for its neighbours.
    # With map_overlap the threaded scheduler read chunks far ahead of the warps: 1.9 GB held
    # at 16384² (benchmarks/RESULTS.md, 2026-11-30 session 3).
    out = haloed_map(
        _warp_window,
        [data],
        depth,
        pad_nan=True,
        leading=((data.shape[0],),),
        halo=depth,
        model=model,
        order=order,
    )
    if out is not None:
        return out

    arr = data.astype(np.float32).rechunk(chunks)

    def _func(block: np.ndarray, block_info: dict[Any, Any] | None = None) -> np.ndarray:
        assert block_info is not None
        _, i, j = block_info[0]["chunk-location"]
        return _warp_block(block, int(row_offsets[i]), int(col_offsets[j]), depth, model, order)

    return da.map_overlap(
        _func,
        arr,
        depth={0: 0, 1: depth, 2: depth},
        boundary=np.nan,
        trim=False,  # _warp_block returns the block without its halo
        dtype=np.float32,
        meta=np.array((), np.float32),
    )


def _warp_window(
    haloed: np.ndarray,
    *,
    core: tuple[int, int, int, int],
    window: tuple[int, int, int, int],
    halo: int,
    model: DisplacementModel,
    order: int,
) -> np.ndarray:
    """:func:`_warp_block` of one haloed window read from the file (see :func:`warp_array`)."""
    return _warp_block(haloed, core[0], core[2], halo, model, order)
