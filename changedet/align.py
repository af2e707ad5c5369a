"""Put the after image on the before image's grid, lazily, and find the common valid extent.

- :func:`align_to` reprojects/resamples the after raster onto the before grid when CRS, pixel size
  or extent differ. Same grid: returned as is. Same CRS and pixel size with origins a whole number
  of pixels apart: an exact lazy slice/pad (no resampling). Otherwise: a blockwise reprojection —
  one task per output chunk runs ``rasterio.warp.reproject`` on a windowed read of the source (the
  source window is the output chunk's footprint plus a resampling margin), so memory stays bounded
  by the chunk size.
- :func:`common_valid_extent` gives the row/column bounding box where both rasters hold data.
- :func:`align_pair` does both and refuses bad pairs with one clear error: no CRS, no overlap, an
  overlap smaller than one correlation window, different band counts, all-nodata.

Bands
-----
By default (``bands="strict"``) both rasters must have the same number of bands. With
``bands="common"`` the first ``min(n_before, n_after)`` bands of each are used (e.g. RGB vs
RGBN → RGB). Co-registration then compares the mean of the bands used (luminance).

Examples
--------
>>> from changedet.testing import make_raster
>>> from affine import Affine
>>> before = make_raster(np.ones((1, 64, 64), "float32"))
>>> t = before.rio.transform() * Affine.translation(3, -2)
>>> after = make_raster(np.ones((1, 64, 64), "float32"), transform=t)
>>> aligned = align_to(before, after)
>>> aligned.shape, int(aligned.isnull().sum())
((1, 64, 64), 314)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import rasterio.errors
import rasterio.warp
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling

from changedet.errors import AllNodataError, BandMismatchError, MissingCRSError, NoOverlapError


def _quiet_spurious_warp_warning() -> None:
    """Silence rasterio.warp's "Dataset has no geotransform" warning, process-wide.

    rasterio's reproject of in-memory arrays sometimes raises it when several threads reproject
    at once (Dask), though every call here passes both transforms and the results are exact
    (upstream: opendatacube/odc-geo#131, GlacioHack/geoutils#851). Process-wide because
    ``warnings.catch_warnings`` is not thread-safe, and as narrow as it can be: that message,
    from rasterio.warp only (opening a file without a geotransform still warns). Installed by
    the caller's thread before the tasks run; installing it again replaces it.
    """
    warnings.filterwarnings(
        "ignore",
        message="Dataset has no geotransform, gcps, or rpcs",
        category=rasterio.errors.NotGeoreferencedWarning,
        module=r"rasterio\.warp",
    )


if TYPE_CHECKING:
    from changedet.config import AlignConfig

__all__ = ["AlignedPair", "align_pair", "align_to", "common_valid_extent", "select_bands"]

_MARGIN = {"nearest": 1, "bilinear": 2, "cubic": 3, "lanczos": 4}


def _name(da: xr.DataArray, default: str) -> str:
    src = da.attrs.get("source")
    if isinstance(src, str):
        return src
    return str(da.name) if da.name is not None else default


def _require_crs(da: xr.DataArray, default: str) -> None:
    if da.rio.crs is None:
        raise MissingCRSError(_name(da, default))


def select_bands(
    before: xr.DataArray, after: xr.DataArray, bands: Literal["strict", "common"] = "strict"
) -> tuple[xr.DataArray, xr.DataArray]:
    """Make the band counts agree (see the module docstring).

    Raises
    ------
    BandMismatchError
        Counts differ and ``bands="strict"``.

    Examples
    --------
    >>> from changedet.testing import make_raster
    >>> b, a = make_raster(np.zeros((4, 2, 2))), make_raster(np.zeros((3, 2, 2)))
    >>> [x.sizes["band"] for x in select_bands(b, a, "common")]
    [3, 3]
    """
    nb, na = before.sizes["band"], after.sizes["band"]
    if nb == na:
        return before, after
    if bands == "common":
        n = min(nb, na)
        return before.isel(band=slice(0, n)), after.isel(band=slice(0, n))
    raise BandMismatchError(
        _name(after, "after"),
        f"has {na} bands, the before image {_name(before, 'before')} has {nb}",
        "Select the same bands in both, or pass bands='common' to use the first "
        f"{min(nb, na)} bands of each.",
    )


def _same_grid(a: xr.DataArray, b: xr.DataArray) -> bool:
    return (
        a.rio.crs == b.rio.crs
        and a.shape[-2:] == b.shape[-2:]
        and np.allclose(
            tuple(a.rio.transform())[:6], tuple(b.rio.transform())[:6], rtol=0, atol=1e-9
        )
    )


def _bounds_in(da: xr.DataArray, crs: Any) -> tuple[float, float, float, float]:
    left, bottom, right, top = da.rio.bounds()
    return rasterio.warp.transform_bounds(da.rio.crs, crs, left, bottom, right, top, densify_pts=21)


def align_to(
    before: xr.DataArray,
    after: xr.DataArray,
    *,
    resampling: Literal["nearest", "bilinear", "cubic", "lanczos"] = "cubic",
) -> xr.DataArray:
    """Return ``after`` on ``before``'s grid (CRS, transform, shape), lazily on Dask input.

    Pixels of the before grid that the after image does not cover are NaN.

    Raises
    ------
    MissingCRSError
        Either raster has no CRS.
    NoOverlapError
        The footprints do not intersect.

    Examples
    --------
    >>> from changedet.testing import make_raster
    >>> b = make_raster(np.zeros((1, 32, 32), "float32"))
    >>> a = make_raster(np.zeros((1, 40, 40), "float32"), crs="EPSG:32637")
    >>> align_to(b, a).shape
    (1, 32, 32)
    """
    _require_crs(before, "before")
    _require_crs(after, "after")
    if _same_grid(before, after):
        return after
    bl, bb, br, bt = before.rio.bounds()
    al, ab, ar, at = _bounds_in(after, before.rio.crs)
    if min(br, ar) <= max(bl, al) or min(bt, at) <= max(bb, ab):
        raise NoOverlapError(
            _name(after, "after"),
            f"does not overlap the before image {_name(before, 'before')}",
            "Check that both images show the same place (and that their CRSs are right).",
        )
    bt_, at_ = before.rio.transform(), after.rio.transform()
    if before.rio.crs == after.rio.crs and np.allclose(
        [bt_.a, bt_.b, bt_.d, bt_.e], [at_.a, at_.b, at_.d, at_.e], rtol=1e-9, atol=0
    ):
        col_off, row_off = ~at_ * (bt_.c, bt_.f)  # before origin in after pixel coords
        if abs(col_off - round(col_off)) < 1e-6 and abs(row_off - round(row_off)) < 1e-6:
            return _integer_shift(before, after, round(row_off), round(col_off))
    return _reproject_blockwise(before, after, Resampling[resampling], _MARGIN[resampling])


def _like(before: xr.DataArray, after: xr.DataArray, data: Any) -> xr.DataArray:
    out = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"band": after["band"].values, "y": before["y"].values, "x": before["x"].values},
        name=after.name,
        attrs={
            k: v
            for k, v in after.attrs.items()
            if k not in ("_FillValue", "scale_factor", "add_offset")
        },
    )
    out = out.rio.write_crs(before.rio.crs).rio.write_transform(before.rio.transform())
    return out.rio.write_nodata(np.nan, encoded=False)


def _integer_shift(
    before: xr.DataArray, after: xr.DataArray, row_off: int, col_off: int
) -> xr.DataArray:
    """Exact, lazy re-gridding when the grids differ by whole pixels (slice + NaN pad)."""
    ny, nx = before.shape[-2:]
    any_, anx = after.shape[-2:]
    r0, c0 = max(row_off, 0), max(col_off, 0)
    r1, c1 = min(row_off + ny, any_), min(col_off + nx, anx)
    data = after.data.astype(np.float32)[:, r0:r1, c0:c1]
    pad = ((0, 0), (r0 - row_off, ny - (r1 - row_off)), (c0 - col_off, nx - (c1 - col_off)))
    if isinstance(data, np.ndarray):
        data = np.pad(data, pad, constant_values=np.nan)
    else:
        import dask.array as da

        data = da.pad(data, pad, mode="constant", constant_values=np.nan)
        data = data.rechunk(after.data.chunksize)
    return _like(before, after, data)


def _reproject_np(
    src: np.ndarray,
    src_transform: Affine,
    src_crs: Any,
    dst_shape: tuple[int, int],
    dst_transform: Affine,
    dst_crs: Any,
    resampling: Resampling,
    scale: tuple[float, float],
) -> np.ndarray:
    dst = np.full((src.shape[0], *dst_shape), np.nan, np.float32)
    if src.size == 0:
        return dst
    rasterio.warp.reproject(
        source=np.ascontiguousarray(src, dtype=np.float32),
        destination=dst,
        src_transform=src_transform,
        src_crs=src_crs,
        src_nodata=np.nan,
        dst_transform=dst_transform,
        dst_crs=dst_crs,
        dst_nodata=np.nan,
        resampling=resampling,
        # one resampling scale for every chunk: GDAL would otherwise derive it per chunk from
        # the window shapes, and chunk seams would change the result
        XSCALE=scale[0],
        YSCALE=scale[1],
    )
    return dst


def _reproject_blockwise(
    before: xr.DataArray, after: xr.DataArray, resampling: Resampling, margin: int
) -> xr.DataArray:
    """One task per output chunk: windowed source read + ``rasterio.warp.reproject``."""
    _quiet_spurious_warp_warning()
    ny, nx = before.shape[-2:]
    nb = after.sizes["band"]
    bt, at_ = before.rio.transform(), after.rio.transform()
    bcrs, acrs = before.rio.crs, after.rio.crs
    any_, anx = after.shape[-2:]
    src = after.data.astype(np.float32)
    is_dask = not isinstance(src, np.ndarray)
    al, ab, ar, at = _bounds_in(after, bcrs)
    scale = ((ar - al) / anx / abs(bt.a), (at - ab) / any_ / abs(bt.e))
    # kernel support in source pixels widens by 1/scale when downsampling; keep a safe margin
    margin = margin * int(np.ceil(max(1.0, 1.0 / min(scale)))) + 4
    if is_dask:
        import dask
        import dask.array as da

        ychunks = before.data.chunks[1] if not isinstance(before.data, np.ndarray) else (ny,)
        xchunks = before.data.chunks[2] if not isinstance(before.data, np.ndarray) else (nx,)
    else:
        ychunks, xchunks = (ny,), (nx,)
    rows = []
    y0 = 0
    for h in ychunks:
        row = []
        x0 = 0
        for w in xchunks:
            dst_t = bt * Affine.translation(x0, y0)
            left, top = dst_t * (0, 0)
            right, bottom = dst_t * (w, h)
            wl, wb, wr, wt = rasterio.warp.transform_bounds(
                bcrs,
                acrs,
                min(left, right),
                min(bottom, top),
                max(left, right),
                max(bottom, top),
                densify_pts=21,
            )
            inv = ~at_
            cs, rs = zip(*(inv * (xx, yy) for xx in (wl, wr) for yy in (wb, wt)), strict=True)
            c0 = int(np.clip(np.floor(min(cs)) - margin, 0, anx))
            c1 = int(np.clip(np.ceil(max(cs)) + margin, 0, anx))
            r0 = int(np.clip(np.floor(min(rs)) - margin, 0, any_))
            r1 = int(np.clip(np.ceil(max(rs)) + margin, 0, any_))
            win_t = at_ * Affine.translation(c0, r0)
            piece = src[:, r0:r1, c0:c1]
            if is_dask:
                task = dask.delayed(_reproject_np)(
                    piece, win_t, acrs, (h, w), dst_t, bcrs, resampling, scale
                )
                row.append(da.from_delayed(task, shape=(nb, h, w), dtype=np.float32))
            else:
                row.append(
                    _reproject_np(piece, win_t, acrs, (h, w), dst_t, bcrs, resampling, scale)
                )
            x0 += w
        rows.append(row)
        y0 += h
    data = (
        da.block([[blk for blk in row] for row in rows])
        if is_dask
        else np.block([[blk for blk in row] for row in rows])
    )
    return _like(before, after, data)


def common_valid_extent(before: xr.DataArray, after: xr.DataArray) -> tuple[slice, slice]:
    """Row and column slices of the bounding box where both rasters (same grid) hold data.

    Reads both rasters once, chunk by chunk (bounded memory). Empty slices when nothing is valid.

    Examples
    --------
    >>> from changedet.testing import make_raster
    >>> a = np.ones((1, 6, 6), "float32"); a[:, :2] = np.nan
    >>> common_valid_extent(make_raster(a), make_raster(np.ones((1, 6, 6), "float32")))
    (slice(2, 6, None), slice(0, 6, None))
    """
    both = before.notnull().all("band") & after.notnull().all("band")
    rows_any = both.any("x").data
    cols_any = both.any("y").data
    if not isinstance(rows_any, np.ndarray):
        import dask

        rows_any, cols_any = dask.compute(rows_any, cols_any)
    r = np.flatnonzero(rows_any)
    c = np.flatnonzero(cols_any)
    if r.size == 0 or c.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1)


@dataclass(frozen=True)
class AlignedPair:
    """Before and after on one grid, cropped to their common valid extent.

    ``rows``/``cols`` locate the crop in the before raster's pixel grid.
    """

    before: xr.DataArray
    after: xr.DataArray
    rows: slice
    cols: slice

    def __iter__(self) -> Iterator[xr.DataArray]:
        """Unpack as ``before, after = align_pair(...)``."""
        return iter((self.before, self.after))


def align_pair(
    before: xr.DataArray,
    after: xr.DataArray,
    config: AlignConfig | None = None,
    *,
    resampling: Literal["nearest", "bilinear", "cubic", "lanczos"] | None = None,
    min_overlap_px: int | None = None,
    bands: Literal["strict", "common"] | None = None,
) -> AlignedPair:
    """Check a pair, put after on before's grid, and crop both to the common valid extent.

    Parameters
    ----------
    config
        ``Config().align`` (resampling, min_overlap_px, bands); keywords override it.
    resampling
        Used when the after image must be reprojected (default ``"cubic"``).
    min_overlap_px
        Smallest accepted size (each side) of the common valid extent: one correlation window
        (default 256).
    bands
        ``"strict"`` (default) or ``"common"`` (see :func:`select_bands`).

    Returns
    -------
    AlignedPair
        Unpacks as ``before, after``; ``.rows``/``.cols`` locate the crop.

    Raises
    ------
    MissingCRSError, BandMismatchError, NoOverlapError, AllNodataError
        With the file named and the fix.

    Examples
    --------
    >>> from changedet.testing import make_pair
    >>> b, a, _ = make_pair((1, 300, 300), shift_px=(4, 4), seed=0)
    >>> pair = align_pair(b, a, min_overlap_px=128)
    >>> pair.before.shape == pair.after.shape
    True
    """
    from changedet.config import AlignConfig

    cfg = config or AlignConfig()
    resampling = resampling or cfg.resampling
    min_overlap_px = cfg.min_overlap_px if min_overlap_px is None else min_overlap_px
    bands = bands or cfg.bands
    _require_crs(before, "before")
    _require_crs(after, "after")
    before, after = select_bands(before, after, bands)
    aligned = align_to(before, after, resampling=resampling)
    rows, cols = common_valid_extent(before, aligned)
    h, w = rows.stop - rows.start, cols.stop - cols.start
    if h == 0 or w == 0:
        for da_, label in ((before, "before"), (aligned, "after")):
            if not bool(da_.notnull().any()):
                raise AllNodataError(
                    _name(da_, label),
                    "holds no valid pixel (everything is nodata)",
                    "Check the file's nodata value and that it holds data.",
                )
        raise NoOverlapError(
            _name(after, "after"),
            f"has no valid pixel in common with {_name(before, 'before')}",
            "Check that both images cover the same place.",
        )
    if min(h, w) < min_overlap_px:
        raise NoOverlapError(
            _name(after, "after"),
            f"overlap with {_name(before, 'before')} is {h} x {w} px, smaller than one "
            f"correlation window ({min_overlap_px} px)",
            "Use images that overlap more, or lower coregister.window_px / align.min_overlap_px.",
        )
    return AlignedPair(before.isel(y=rows, x=cols), aligned.isel(y=rows, x=cols), rows, cols)
