"""Lazy resampling of the after image by a displacement model (private to ``coregister``).

Output pixel ``(c, r)`` on the before grid takes the after value at ``(c + dx, r + dy)``
(cubic B-spline, ``scipy.ndimage.map_coordinates(order=3)``). On Dask arrays this runs with
``map_overlap``; the halo is the model's largest displacement plus the spline support plus a
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

    from changedet.io import window_reader

    chunks = (
        data.chunks[0],
        ensure_minimum_chunksize(depth, data.chunks[1]),
        ensure_minimum_chunksize(depth, data.chunks[2]),
    )
    row_offsets = np.concatenate([[0], np.cumsum(chunks[1])])
    col_offsets = np.concatenate([[0], np.cumsum(chunks[2])])
    read = window_reader(data)
    if read is not None and len(chunks[0]) == 1:
        return _warp_windows(read, data.shape, chunks, depth, model, order)

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


def _warp_windows(
    read: Any,
    shape: tuple[int, int, int],
    chunks: tuple[tuple[int, ...], ...],
    depth: int,
    model: DisplacementModel,
    order: int,
) -> Any:
    """:func:`warp_array` of a raster :func:`changedet.io.open_raster` opened, as a Dask array
    whose every block reads its own haloed window from the file (``read``, see
    :func:`changedet.io.window_reader`).

    The blocks are the haloed blocks ``map_overlap`` would assemble (the same extents, NaN
    beyond the image), so the values are the same; but no task depends on another. With
    ``map_overlap`` each source chunk and the halo slices cut from it (NumPy views, which keep
    the whole chunk) wait for all eight neighbours, and the threaded scheduler read chunks far
    ahead of the warps that consume them: up to 765 results holding 1.9 GB at 16384² with 1024²
    chunks (measured, see ``benchmarks/RESULTS.md``). Reading the halo again costs a little
    decoding (a 1024² block with its halo touches 25 rather than 16 tiles of 256²).
    """
    import uuid

    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    nb, ny, nx = shape
    rows = np.concatenate([[0], np.cumsum(chunks[1])])
    cols = np.concatenate([[0], np.cumsum(chunks[2])])

    def block(i: int, j: int) -> np.ndarray:
        r0, r1, c0, c1 = int(rows[i]), int(rows[i + 1]), int(cols[j]), int(cols[j + 1])
        haloed = np.full((nb, r1 - r0 + 2 * depth, c1 - c0 + 2 * depth), np.nan, np.float32)
        y0, y1 = max(r0 - depth, 0), min(r1 + depth, ny)
        x0, x1 = max(c0 - depth, 0), min(c1 + depth, nx)
        oy, ox = y0 - (r0 - depth), x0 - (c0 - depth)
        haloed[:, oy : oy + y1 - y0, ox : ox + x1 - x0] = read(y0, y1, x0, x1)
        return _warp_block(haloed, r0, c0, depth, model, order)

    name = f"warp-windows-{uuid.uuid4().hex}"
    dsk = {
        (name, 0, i, j): (block, i, j) for i in range(len(chunks[1])) for j in range(len(chunks[2]))
    }
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(
        graph, name, chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32)
    )
