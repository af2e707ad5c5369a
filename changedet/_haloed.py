"""Blockwise computations with halos whose every block reads its own haloed window from files.

``dask.array.map_overlap`` (and ``overlap``) builds each haloed block from its source chunk and
slices of its eight neighbours. The slices are NumPy views, each keeping its whole source chunk
alive, and a source chunk waits for all its neighbours' blocks; the threaded scheduler then
reads chunks far ahead of the blocks that consume them. Measured at 16384² with 1024² chunks:
writing the warped after image held up to 765 results and 1.9 GB (see ``benchmarks/RESULTS.md``,
2026-11-30 session 3), and memory grew with the number of chunks across the scene.

:func:`haloed_map` computes the same thing with no task depending on another: block ``(i, j)``
reads its haloed window of every input from its file (:func:`changedet.io.window_reader`) and
calls the kernel on it. The windows have exactly the extents ``overlap`` would give (the same
chunks, the same halo, NaN or nothing beyond the scene), so the values are the same. Inputs
that are not untouched :func:`changedet.io.open_raster` arrays get ``None``: callers then use
``map_overlap``. Reading a halo again costs a little decoding (a 1024² block with a 40 px halo
touches 25 rather than 16 tiles of 256²).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["haloed_map", "trim_to_core"]

#: ``(row0, row1, col0, col1)`` of a block's core and of its haloed window, in scene pixels.
Box = tuple[int, int, int, int]


def haloed_map(
    func: Callable[..., np.ndarray],
    arrays: Sequence[Any],
    depth: int,
    *,
    pad_nan: bool,
    leading: tuple[tuple[int, ...], ...] = (),
    dtype: Any = np.float32,
    **kwargs: Any,
) -> Any:
    """``func`` on every block of ``(band, y, x)`` Dask arrays, with ``depth`` px of halo read
    from their files; ``None`` unless :func:`changedet.io.window_reader` reads every array from
    its file and they share their grid and ``y``/``x`` chunks (windows hold all bands, however
    the bands are chunked).

    Parameters
    ----------
    func
        ``func(*windows, core=core, window=window, **kwargs)``: ``windows`` are the haloed
        ``(band, rows, cols)`` float32 windows, one per array; ``core`` and ``window`` the
        :data:`Box` of the block and of the windows. Returns the block's output without halo,
        shaped ``(*leading, core rows, core cols)``.
    depth
        Halo in pixels along ``y`` and ``x``. Chunks smaller than it are merged with their
        neighbours first, as ``dask.array.overlap`` does.
    pad_nan
        ``True``: windows always carry the full halo, NaN beyond the scene (``overlap`` with
        ``boundary=np.nan``); ``False``: windows stop at the scene's edges
        (``boundary="none"``).
    leading
        Chunks of the output's leading axes, one chunk each (e.g. ``((2,),)`` for two maps
        per block).
    dtype
        Output dtype.

    Returns
    -------
    dask.array.Array or None
        ``(*leading, y, x)``.
    """
    import dask.array as da
    from dask.array.overlap import ensure_minimum_chunksize
    from dask.highlevelgraph import HighLevelGraph

    from changedet.io import window_reader

    if not arrays or any(not hasattr(a, "dask") for a in arrays):
        return None
    readers = [window_reader(a) for a in arrays]
    first = arrays[0]
    if any(r is None for r in readers) or any(
        a.ndim != 3 or a.shape != first.shape or a.chunks[1:] != first.chunks[1:] for a in arrays
    ):
        return None
    _, ny, nx = first.shape
    cy = ensure_minimum_chunksize(depth, first.chunks[1]) if depth else first.chunks[1]
    cx = ensure_minimum_chunksize(depth, first.chunks[2]) if depth else first.chunks[2]
    rows = np.concatenate([[0], np.cumsum(cy)]).astype(int)
    cols = np.concatenate([[0], np.cumsum(cx)]).astype(int)

    def block(i: int, j: int) -> np.ndarray:
        core = (int(rows[i]), int(rows[i + 1]), int(cols[j]), int(cols[j + 1]))
        r0, r1, c0, c1 = core
        y0, y1 = max(r0 - depth, 0), min(r1 + depth, ny)
        x0, x1 = max(c0 - depth, 0), min(c1 + depth, nx)
        windows = []
        for read in readers:
            w = read(y0, y1, x0, x1)
            if pad_nan and (y0, y1, x0, x1) != (r0 - depth, r1 + depth, c0 - depth, c1 + depth):
                full = np.full(
                    (w.shape[0], r1 - r0 + 2 * depth, c1 - c0 + 2 * depth), np.nan, w.dtype
                )
                oy, ox = y0 - (r0 - depth), x0 - (c0 - depth)
                full[:, oy : oy + y1 - y0, ox : ox + x1 - x0] = w
                w = full
            windows.append(w)
        window = (r0 - depth, r1 + depth, c0 - depth, c1 + depth) if pad_nan else (y0, y1, x0, x1)
        return func(*windows, core=core, window=window, **kwargs)

    name = f"haloed-{getattr(func, '__name__', 'func')}-{uuid.uuid4().hex}"
    lead = (0,) * len(leading)
    dsk = {(name, *lead, i, j): (block, i, j) for i in range(len(cy)) for j in range(len(cx))}
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    meta = np.empty((0,) * (len(leading) + 2), dtype)
    return da.Array(graph, name, chunks=(*leading, cy, cx), dtype=dtype, meta=meta)


def trim_to_core(block: np.ndarray, core: Box, window: Box) -> np.ndarray:
    """The part of ``block`` (last two axes on ``window``) that lies on ``core``, as a copy (a
    view would keep the whole haloed block in memory while Dask holds the result)."""
    r0, r1, c0, c1 = core
    y0, _, x0, _ = window
    return np.ascontiguousarray(block[..., r0 - y0 : r1 - y0, c0 - x0 : c1 - x0])
