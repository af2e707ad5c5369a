"""Read rasters lazily and write every output atomically.

Reading
-------
:func:`open_raster` opens a GeoTIFF / COG / JPEG 2000 (anything GDAL reads), or a list of tiles
that form a mosaic, as a lazily-read ``xarray.DataArray`` with dims ``(band, y, x)``, Dask chunks
and a CRS.

- **Nodata convention**: values are ``float32`` and nodata is ``NaN`` (from the file's nodata value
  or its internal mask, via ``masked=True``). The valid mask is ``da.notnull()``; a pixel that is
  NaN in any band counts as nodata downstream. ``float32`` holds every ``uint8``/``uint16``/
  ``int16`` value exactly.
- **Mosaics**: a list of tiles on one grid (same CRS, same pixel size, origins a whole number of
  pixels apart) is read through a GDAL VRT written to a private temporary folder. It stays lazy
  (GDAL reads only the tiles a chunk touches), unlike ``rioxarray.merge`` which is eager; tiles on
  different grids must be aligned first (:func:`changedet.align.align_to`).
- Reads are lock-free (``lock=False``: every read opens its own handle), so threads read chunks in
  parallel.
- A file that is missing, unreadable, or truncated (a GeoTIFF whose blocks run past the end of the
  file) raises :class:`~changedet.errors.UnreadableFileError` naming the file.

Writing
-------
:func:`write_cog` writes a Cloud-Optimized GeoTIFF blockwise from Dask into a temporary tiled
GeoTIFF, then translates it with GDAL's ``COG`` driver (overviews, deflate); the final name
appears only when complete (:func:`changedet._atomic.atomic_path`). The chunks are computed by
whichever Dask scheduler is active (threads, synchronous, ``processes`` or a
``dask.distributed`` cluster) and written by the calling process as they arrive, a bounded
number at a time: memory stays bounded by the chunk size, workers never open the output, and
the bytes written do not depend on the scheduler.
:func:`write_geojson` (EPSG:4326), :func:`write_gpkg` (scene CRS) and :func:`write_csv` are atomic too.

Examples
--------
>>> import tempfile, pathlib
>>> from changedet.testing import make_raster
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> src = make_raster(np.arange(64, dtype="float32").reshape(1, 8, 8))
>>> _ = write_cog(src, d / "a.tif")
>>> da = open_raster(d / "a.tif")
>>> da.dims, da.dtype.name, da.rio.crs.to_epsg()
(('band', 'y', 'x'), 'float32', 32637)
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rioxarray
import xarray as xr

from changedet._atomic import atomic_path
from changedet.errors import MissingCRSError, UnreadableFileError

__all__ = [
    "open_raster",
    "read_footprints",
    "read_vector",
    "write_cog",
    "write_csv",
    "write_geojson",
    "write_gpkg",
    "write_vector",
]

PathLike = str | os.PathLike[str]

_VRT_DIR: Path | None = None


def _check_readable(path: Path) -> None:
    """Open ``path`` with rasterio and check it is complete; raise UnreadableFileError if not."""
    if not path.exists():
        raise UnreadableFileError(path, "file not found", "Check the path.")
    try:
        with rasterio.open(path) as src:
            size = path.stat().st_size
            if src.driver == "GTiff":
                _check_tiff_blocks(src, size, path)
            # read the last block of the last band: fails on most truncations of other formats
            h, w = src.block_shapes[0]
            win = rasterio.windows.Window(
                max(src.width - w, 0), max(src.height - h, 0), min(w, src.width), min(h, src.height)
            )
            src.read(src.count, window=win)
    except UnreadableFileError:
        raise
    except Exception as exc:
        raise UnreadableFileError(
            path,
            f"cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
            "The file is missing, truncated or not a raster GDAL reads; re-download or re-export it.",
        ) from None


def _check_tiff_blocks(src: Any, size: int, path: Path) -> None:
    """Every block's offset + byte count must lie inside the file (cheap TIFF tag check)."""
    h, w = src.block_shapes[0]
    nby = -(-src.height // h)
    nbx = -(-src.width // w)
    if nbx * nby * src.count > 100_000:
        nb = [(nbx - 1, nby - 1)]
    else:
        nb = [(i, j) for j in range(nby) for i in range(nbx)]
    for band in range(1, src.count + 1):
        for i, j in nb:
            off = src.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=band)
            cnt = src.get_tag_item(f"BLOCK_SIZE_{i}_{j}", "TIFF", bidx=band)
            if off is None or cnt is None:
                return
            if int(off) + int(cnt) > size:
                raise UnreadableFileError(
                    path,
                    f"is truncated: block ({i}, {j}) of band {band} ends at byte "
                    f"{int(off) + int(cnt)} but the file has {size} bytes",
                    "Re-download or re-export the file.",
                )


def _vrt_dir() -> Path:
    global _VRT_DIR
    if _VRT_DIR is None:
        _VRT_DIR = Path(tempfile.mkdtemp(prefix="changedet-vrt-"))
    return _VRT_DIR


def build_mosaic_vrt(paths: Sequence[PathLike]) -> Path:
    """Write a VRT that mosaics ``paths`` (tiles on one grid) and return its path.

    The VRT lives in a private temporary folder (inputs are never touched). Tiles must share CRS,
    pixel size, band count and data type, and their origins must lie a whole number of pixels
    apart; where tiles overlap, the later one wins.

    Raises
    ------
    UnreadableFileError, MissingCRSError
        For an unreadable tile or one without CRS.
    ValueError
        Via :class:`~changedet.errors.ChangedetError` subclasses when tiles are not on one grid.
    """
    from changedet.errors import BandMismatchError, NoOverlapError

    infos = []
    for p in paths:
        p = Path(p)
        _check_readable(p)
        with rasterio.open(p) as src:
            if src.crs is None:
                raise MissingCRSError(p)
            infos.append(
                (
                    p,
                    src.crs,
                    src.transform,
                    src.width,
                    src.height,
                    src.count,
                    src.dtypes[0],
                    src.nodata,
                )
            )
    p0, crs0, t0, *_, count0, dtype0, nodata0 = infos[0]
    xs, ys = [], []
    for p, crs, t, w, h, count, dtype, _nd in infos:
        if crs != crs0 or not np.allclose([t.a, t.e, t.b, t.d], [t0.a, t0.e, t0.b, t0.d]):
            raise NoOverlapError(
                p,
                f"tile is not on the grid of {p0.name} (CRS or pixel size differ)",
                "Reproject the tiles to one grid first (changedet.align.align_to).",
            )
        if count != count0 or dtype != dtype0:
            raise BandMismatchError(
                p,
                f"tile has {count} bands of {dtype}, {p0.name} has {count0} of {dtype0}",
                "Use tiles from one product.",
            )
        ox, oy = (t.c - t0.c) / t0.a, (t.f - t0.f) / t0.e
        if abs(ox - round(ox)) > 1e-3 or abs(oy - round(oy)) > 1e-3:
            raise NoOverlapError(
                p,
                "tile origin is not a whole number of pixels from the first tile's",
                "Resample the tiles to one grid first.",
            )
        xs += [round(ox), round(ox) + w]
        ys += [round(oy), round(oy) + h]
    x0, y0 = min(xs), min(ys)
    width, height = max(xs) - x0, max(ys) - y0
    gt = (t0.c + x0 * t0.a, t0.a, 0.0, t0.f + y0 * t0.e, 0.0, t0.e)
    gdal_type = {
        "uint8": "Byte",
        "uint16": "UInt16",
        "int16": "Int16",
        "uint32": "UInt32",
        "int32": "Int32",
        "float32": "Float32",
        "float64": "Float64",
    }[dtype0]
    lines = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"  <SRS>{escape(crs0.to_wkt())}</SRS>",
        f"  <GeoTransform>{', '.join(repr(v) for v in gt)}</GeoTransform>",
    ]
    for b in range(1, count0 + 1):
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{b}">')
        if nodata0 is not None:
            lines.append(f"    <NoDataValue>{nodata0!r}</NoDataValue>")
        for p, _crs, t, w, h, *_ in infos:
            ox, oy = round((t.c - t0.c) / t0.a) - x0, round((t.f - t0.f) / t0.e) - y0
            lines += [
                "    <ComplexSource>",
                f'      <SourceFilename relativeToVRT="0">{escape(str(Path(p).resolve()))}</SourceFilename>',
                f"      <SourceBand>{b}</SourceBand>",
                f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                f'      <DstRect xOff="{ox}" yOff="{oy}" xSize="{w}" ySize="{h}"/>',
            ]
            if nodata0 is not None:
                lines.append(f"      <NODATA>{nodata0!r}</NODATA>")
            lines.append("    </ComplexSource>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    fd, name = tempfile.mkstemp(suffix=".vrt", dir=_vrt_dir())
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines))
    return Path(name)


def open_raster(
    path: PathLike | Sequence[PathLike],
    *,
    chunks: int | None = 1024,
    require_crs: bool = True,
    name: str | None = None,
    nodata: float | None = None,
) -> xr.DataArray:
    """Open a raster (or a mosaic of tiles) lazily as a float32 ``(band, y, x)`` DataArray.

    Parameters
    ----------
    path
        A file GDAL reads (GeoTIFF, COG, JPEG 2000, VRT, ...) or a list of tiles on one grid.
    chunks
        Square Dask chunk size in pixels (all bands in one chunk); ``None`` reads eagerly.
    require_crs
        Raise :class:`MissingCRSError` when the file has no CRS.
    name
        Name of the DataArray (defaults to the file name); used in error messages downstream.
    nodata
        A nodata value to use when the file declares none (e.g. ``0`` for a JPEG 2000 whose
        border is filled with zeros); pixels equal to it become NaN.

    Returns
    -------
    xarray.DataArray
        float32, nodata as NaN, with ``.rio`` CRS/transform; ``attrs["source"]`` holds the path(s).

    Raises
    ------
    UnreadableFileError
        Missing, unreadable or truncated file.
    MissingCRSError
        No CRS and ``require_crs``.

    Examples
    --------
    >>> from changedet.testing import make_raster
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.tif"
    >>> _ = write_cog(make_raster(np.ones((1, 4, 4), "float32")), p)
    >>> open_raster(p, chunks=2).chunks
    ((1,), (2, 2), (2, 2))
    """
    if isinstance(path, (str, os.PathLike)):
        sources = [Path(path)]
        src_path = Path(path)
        _check_readable(src_path)
    else:
        sources = [Path(p) for p in path]
        if not sources:
            raise UnreadableFileError(None, "empty list of tiles", "Give at least one file.")
        src_path = build_mosaic_vrt(sources) if len(sources) > 1 else sources[0]
        if len(sources) == 1:
            _check_readable(src_path)
    label = name or (
        sources[0].name
        if len(sources) == 1
        else f"mosaic of {len(sources)} tiles ({sources[0].name}, ...)"
    )
    with rasterio.open(src_path) as src:
        if require_crs and src.crs is None:
            raise MissingCRSError(sources[0] if len(sources) == 1 else label)
        nbands = src.count
    chunk_arg: Any = None if chunks is None else {"band": nbands, "y": chunks, "x": chunks}
    try:
        da = rioxarray.open_rasterio(src_path, chunks=chunk_arg, masked=True, lock=False)
    except Exception as exc:  # pragma: no cover - _check_readable catches nearly all
        raise UnreadableFileError(src_path, f"cannot be read ({exc})", None) from None
    assert isinstance(da, xr.DataArray)
    if da.dtype != np.float32:
        da = da.astype(np.float32)
    if nodata is not None:
        da = da.where(da != np.float32(nodata))
        da = da.rio.write_nodata(np.nan, encoded=False)
    da.name = label
    da.attrs["source"] = [str(s) for s in sources] if len(sources) > 1 else str(sources[0])
    if chunks is not None:
        _remember_reader(da.data, src_path, nodata)
    return da


# Dask name of an array open_raster returned -> (file, extra nodata): see window_reader.
_READERS: dict[str, tuple[Path, float | None]] = {}
_READERS_MAX = 256


def rgb_band_indices(path: PathLike) -> tuple[int, int, int] | None:
    """0-based indices of the bands a raster labels red, green and blue, or ``None``.

    Read from GDAL's colour interpretation, else the band descriptions (``"red"``, ``"Red"``,
    ``"B4 red"``...). A 4-band blue-green-red-NIR delivery (Maxar, Planet) gives ``(2, 1, 0)``:
    the colour tests of the crater detector then read the right bands.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from changedet.testing import make_raster
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "bgrn.tif"
    >>> r = make_raster(np.zeros((4, 8, 8), "float32"))
    >>> r.attrs["long_name"] = ("blue", "green", "red", "nir")
    >>> _ = write_cog(r, p)
    >>> rgb_band_indices(p)
    (2, 1, 0)
    """
    with rasterio.open(path) as src:
        interp = [c.name.lower() for c in src.colorinterp]
        described = [(d or "").lower() for d in src.descriptions]
    for labels in (interp, described):
        found = []
        for colour in ("red", "green", "blue"):
            hits = [i for i, text in enumerate(labels) if re.search(rf"\b{colour}\b", text)]
            if len(hits) != 1:
                break
            found.append(hits[0])
        if len(found) == 3 and len(set(found)) == 3:
            return (found[0], found[1], found[2])
    return None


def rechunked_reader(data: Any, like: Any) -> None:
    """Let :func:`window_reader` read ``data`` from the file of ``like``, an array
    :func:`open_raster` returned, when ``data`` holds the same values (``like`` rechunked, e.g.
    one chunk per band, or a one-band ``like`` with its band axis dropped): its windows can then
    be read from the file too (always as ``(band, rows, cols)``)."""
    entry = _READERS.get(getattr(like, "name", None))  # type: ignore[arg-type]
    flat = like.ndim == 3 and like.shape[0] == 1 and data.shape == like.shape[1:]
    if entry is not None and (data.shape == like.shape or flat):
        _remember_reader(data, *entry)


def _remember_reader(data: Any, path: Path, nodata: float | None) -> None:
    if len(_READERS) >= _READERS_MAX:
        _READERS.pop(next(iter(_READERS)))  # oldest first
    _READERS[data.name] = (Path(path), nodata)


def window_reader(data: Any) -> Any:
    """A windowed file reader for a Dask array exactly as :func:`open_raster` returned it.

    Slicing a small window out of a chunked raster decodes the whole Dask chunk under it (a
    2048² RGB chunk: ~0.1 s for a 256² window); reading the window from the file decodes only
    the file's tiles it touches. Returns ``read(row0, row1, col0, col1) -> (band, rows, cols)``
    float32 with NaN for nodata (the same values as the Dask array), or ``None`` when ``data``
    is not an untouched :func:`open_raster` array (any selection, arithmetic or reprojection
    gives a new Dask name, so its values may differ from the file's).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from changedet.testing import make_raster
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.tif"
    >>> _ = write_cog(make_raster(np.arange(64, dtype="float32").reshape(1, 8, 8)), p)
    >>> da = open_raster(p, chunks=4)
    >>> read = window_reader(da.data)
    >>> read(2, 4, 3, 6).tolist()
    [[[19.0, 20.0, 21.0], [27.0, 28.0, 29.0]]]
    >>> window_reader((da + 1).data) is None
    True
    """
    entry = _READERS.get(getattr(data, "name", None))  # type: ignore[arg-type]
    if entry is None:
        return None
    path, nodata = entry

    def read(row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        from rasterio.windows import Window

        with rasterio.open(path) as src:
            arr = src.read(window=Window(col0, row0, col1 - col0, row1 - row0), masked=True)
        out = np.ma.filled(arr.astype(np.float32), np.float32(np.nan))
        if nodata is not None:
            out[out == np.float32(nodata)] = np.nan
        return out

    return read


# ---------------------------------------------------------------------------- writers


def write_cog(
    da: xr.DataArray,
    path: PathLike,
    *,
    nodata: float | None = None,
    compress: str = "DEFLATE",
    blocksize: int = 512,
    overwrite: bool = True,
    cog: bool = True,
) -> Path:
    """Write ``da`` (``(band, y, x)`` or ``(y, x)``, Dask or numpy) as a COG, atomically.

    A Dask array is computed through the active Dask scheduler (threaded, synchronous or a
    ``dask.distributed`` client) with its chunks re-aligned to whole ``blocksize`` tiles; each
    chunk is written by the calling process into a temporary uncompressed tiled GeoTIFF as it
    arrives, and released (see :func:`_write_dask_blocks`), so memory stays bounded by a few
    chunks and workers never touch the output file. GDAL's ``COG`` driver then translates it
    (overviews, ``compress``). The bytes depend only on the values and metadata, never on the
    scheduler. Float data keep NaN as nodata unless ``nodata`` is given.

    Parameters
    ----------
    da
        The raster, with a CRS (``da.rio.crs``).
    path
        The output file; it appears only when complete.
    nodata
        Nodata value to record (float NaN are replaced by it).
    compress
        GDAL compression of the COG.
    blocksize
        Tile size in pixels (a multiple of 16).
    overwrite
        Replace an existing file; otherwise raise ``OutputExistsError``.
    cog
        ``False`` writes a plain tiled, ``compress``-ed GeoTIFF instead, without overviews and
        without the COG translation (for rasters read back chunk by chunk, such as the
        pipeline's scratch rasters: the translation of a 8192² RGB float32 raster takes ~30
        CPU-s and a few hundred MB, growing with the raster's width).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    MissingCRSError
        ``da`` has no CRS.
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from changedet.testing import make_raster
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.tif"
    >>> _ = write_cog(make_raster(np.zeros((1, 600, 600), "float32")), p)
    >>> import rasterio; rasterio.open(p).overviews(1)
    [2]
    """
    import rasterio.shutil

    path = Path(path)
    if path.exists() and not overwrite:
        from changedet.errors import OutputExistsError

        raise OutputExistsError(path, "file exists", "Pass overwrite=True or pick another name.")
    if da.rio.crs is None:
        raise MissingCRSError(da.name, "Set one with `da.rio.write_crs(...)` before writing.")
    out = da
    if "band" in out.dims and "long_name" not in out.attrs:
        # rioxarray would stamp the array's name on every band; readers such as AROSICS refuse
        # duplicate band names, so give each band its own description.
        stem = str(out.name) if out.name is not None else "band"
        n = out.sizes["band"]
        out = out.assign_attrs(
            long_name=tuple(f"{stem} {k + 1}" for k in range(n)) if n > 1 else stem
        )
    if np.issubdtype(out.dtype, np.floating):
        out = out.rio.write_nodata(np.nan if nodata is None else nodata, encoded=False)
        if nodata is not None:
            out = out.fillna(nodata)
    elif nodata is not None:
        out = out.rio.write_nodata(nodata)
    with atomic_path(path) as final_tmp:
        if cog:
            fd, tmp_name = tempfile.mkstemp(suffix=".tif", dir=path.parent, prefix=f".{path.name}.")
            os.close(fd)
            tmp = Path(tmp_name)
        else:
            tmp = final_tmp  # written in place: each block once, compressed as it is written
        try:
            profile: dict[str, Any] = {
                "driver": "GTiff",  # by name: the in-place file has no .tif suffix
                "tiled": True,
                "blockxsize": blocksize,
                "blockysize": blocksize,
                "BIGTIFF": "IF_SAFER",
            }
            if not cog:
                profile["compress"] = compress
            if out.chunks is None:
                out.rio.to_raster(tmp, **profile)  # in memory already: one write
            else:
                # chunks aligned to whole blocks: no block is written twice (no re-compression)
                ny, nx = out.shape[-2:]
                side = max(blocksize, (max(out.data.chunksize[-2:]) // blocksize) * blocksize)
                out = out.chunk({out.dims[-2]: min(side, ny), out.dims[-1]: min(side, nx)})
                # rioxarray creates the file with all its metadata (CRS, transform, nodata, band
                # descriptions, tags) and, with compute=False, returns its own dask store
                # unevaluated: we drop it and write the pixels ourselves.
                out.rio.to_raster(tmp, lock=threading.Lock(), compute=False, **profile)
                from xarray.conventions import encode_cf_variable

                with rasterio.open(tmp, "r+") as dst:
                    pixels = encode_cf_variable(out.variable).data.astype(dst.dtypes[0])
                    _write_dask_blocks(pixels, dst)
            if cog:
                rasterio.shutil.copy(
                    tmp,
                    final_tmp,
                    driver="COG",
                    COMPRESS=compress,
                    BLOCKSIZE=blocksize,
                    OVERVIEWS="AUTO",
                    BIGTIFF="IF_SAFER",
                )
        finally:
            if cog:
                tmp.unlink(missing_ok=True)
    return path


#: Chunks computed at once when the scheduler is neither in-process nor distributed (e.g.
#: ``scheduler="processes"``): each group is one ``dask.compute`` call.
_GROUP_CHUNKS = 4


def _write_window(dst: Any, key: tuple[slice, ...], block: np.ndarray) -> None:
    """Write one chunk (``key``: its slices in the whole array) into the open dataset ``dst``."""
    ys, xs = key[-2], key[-1]
    window = rasterio.windows.Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
    if block.ndim == 2:
        dst.write(block, 1, window=window)
    else:
        bands = key[0]
        dst.write(block, list(range(bands.start + 1, bands.stop + 1)), window=window)


class _WindowWriter:
    """A ``dask.array.store`` target writing each chunk into an open dataset (in-process)."""

    def __init__(self, dst: Any) -> None:
        self.dst = dst
        self.token = os.urandom(8).hex()

    def __dask_tokenize__(self) -> str:  # never pickled to tokenise an open dataset
        return self.token

    def __setitem__(self, key: tuple[slice, ...], block: np.ndarray) -> None:
        _write_window(self.dst, key, block)


def _block_keys(chunks: tuple[tuple[int, ...], ...]) -> list[tuple[slice, ...]]:
    """Slices of every chunk, in the C order of ``Array.to_delayed().ravel()``."""
    import itertools

    edges = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in chunks]
    return [
        tuple(slice(int(e[i]), int(e[i + 1])) for e, i in zip(edges, idx, strict=True))
        for idx in itertools.product(*(range(len(c)) for c in chunks))
    ]


def _distributed_client(arr: Any) -> Any:
    """The ``distributed.Client`` that would compute ``arr`` now, or ``None``."""
    import dask.base

    get = dask.base.get_scheduler(collections=[arr])
    owner = getattr(get, "__self__", None)
    if owner is not None and type(owner).__module__.startswith("distributed"):
        return owner
    return None


def _write_dask_blocks(arr: Any, dst: Any) -> None:
    """Compute the chunks of the Dask array ``arr`` and write each one into ``dst``.

    All writes happen in this process, one at a time, through one open handle; only the
    computation is spread, by the active scheduler:

    - threaded / synchronous (in-process): ``dask.array.store`` into a :class:`_WindowWriter`
      under a lock; each chunk is written as soon as it is computed and then released;
    - ``dask.distributed``: a sliding window of chunk futures, in C order: at most
      ``max(2 × worker threads, chunks per row + 2)`` chunks submitted and not yet written; each
      written chunk's future is released, and once half the window is written the next chunks
      are submitted (in one call). Tasks shared by chunks in flight together (the halos of
      neighbours, including the chunk below) are computed once;
    - any other scheduler (``processes``): ``dask.compute`` on groups of ``_GROUP_CHUNKS``
      chunks (tasks shared by two groups are computed twice).
    """
    import dask
    import dask.array
    import dask.base
    import dask.local
    import dask.threaded

    keys = _block_keys(arr.chunks)
    client = _distributed_client(arr)
    if client is not None:
        from distributed import as_completed

        # optimised once, for all chunks: re-optimising each window's subset could fuse a task
        # differently from one submission to the next, and the scheduler (which remembers a
        # key between submissions) refuses to trust such keys (dask/dask#9888)
        blocks = list(arr.to_delayed(optimize_graph=True).ravel())
        threads = sum(client.nthreads().values()) or 1
        window = max(2 * threads, len(arr.chunks[-1]) + 2)
        where: dict[Any, tuple[slice, ...]] = {}
        arrived = as_completed(loop=client.loop)
        following = 0

        def refill() -> None:  # one submission per refill (the scheduler culls the graph)
            nonlocal following
            upto = min(following + window - len(where), len(blocks))
            if upto > following:
                futures = client.compute(blocks[following:upto], optimize_graph=False)
                where.update({f.key: k for f, k in zip(futures, keys[following:upto], strict=True)})
                arrived.update(futures)
                following = upto

        refill()
        for fut in arrived:
            _write_window(dst, where.pop(fut.key), fut.result())
            fut.release()  # the cluster may forget it now
            del fut
            if len(where) <= window // 2:
                refill()
        return
    get = dask.base.get_scheduler(collections=[arr])
    if get in (dask.threaded.get, dask.local.get_sync):
        dask.array.store(arr, _WindowWriter(dst), lock=threading.Lock())
        return
    blocks = list(arr.to_delayed().ravel())
    for start in range(0, len(blocks), _GROUP_CHUNKS):
        group = blocks[start : start + _GROUP_CHUNKS]
        for key, block in zip(keys[start:], dask.compute(*group), strict=False):
            _write_window(dst, key, block)


def write_geojson(gdf: Any, path: PathLike) -> Path:
    """Write a GeoDataFrame as GeoJSON in EPSG:4326 (RFC 7946), atomically.

    Examples
    --------
    >>> import geopandas as gpd, shapely, tempfile, pathlib
    >>> g = gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.Point(500000, 4000000)], crs=32637)
    >>> p = write_geojson(g, pathlib.Path(tempfile.mkdtemp()) / "g.geojson")
    >>> round(gpd.read_file(p).geometry[0].x, 3)
    39.0
    """
    if gdf.crs is None:
        raise MissingCRSError("GeoDataFrame", "Set one with `gdf.set_crs(...)` before writing.")
    path = Path(path)
    with atomic_path(path) as tmp:
        # layer= names the collection after the final file, not the temporary one
        gdf.to_crs(4326).to_file(tmp, driver="GeoJSON", layer=path.stem)
    return path


def write_gpkg(gdf: Any, path: PathLike, *, layer: str | None = None) -> Path:
    """Write a GeoDataFrame as a GeoPackage in its own (scene) CRS, atomically."""
    if gdf.crs is None:
        raise MissingCRSError("GeoDataFrame", "Set one with `gdf.set_crs(...)` before writing.")
    path = Path(path)
    import pyogrio

    # GeoPackages record a "last change" time; pin it so that a re-run writes identical bytes
    # (changedet verify compares output hashes).
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2000-01-01T00:00:00.000Z"})
    with atomic_path(path) as tmp:
        tmp.unlink()  # the GPKG driver wants to create the file itself, named *.gpkg
        named = tmp.with_suffix(".gpkg")
        try:
            gdf.to_file(named, driver="GPKG", layer=layer or path.stem)
            os.replace(named, tmp)
        finally:
            named.unlink(missing_ok=True)
    return path


def write_csv(df: Any, path: PathLike, **kwargs: Any) -> Path:
    """Write a DataFrame as CSV (no index unless asked), atomically."""
    path = Path(path)
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return path


def write_vector(gdf: Any, path: PathLike, *, layer: str | None = None) -> Path:
    """Write by suffix: ``.geojson``/``.json`` (EPSG:4326), ``.gpkg`` (scene CRS), ``.csv``.

    A CSV of a GeoDataFrame holds the geometry as WKT in the scene CRS.

    Examples
    --------
    >>> import geopandas as gpd, shapely, tempfile, pathlib
    >>> g = gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.Point(500000, 4000000)], crs=32637)
    >>> write_vector(g, pathlib.Path(tempfile.mkdtemp()) / "g.gpkg").suffix
    '.gpkg'
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".geojson", ".json"):
        return write_geojson(gdf, path)
    if suffix == ".gpkg":
        return write_gpkg(gdf, path, layer=layer)
    if suffix == ".csv":
        df = gdf
        if hasattr(gdf, "geometry") and getattr(gdf, "crs", None) is not None:
            import pandas as pd

            # a plain DataFrame: geometry as WKT text in the scene CRS
            df = pd.DataFrame(gdf).assign(**{gdf.geometry.name: gdf.geometry.to_wkt()})
        return write_csv(df, path)
    raise UnreadableFileError(
        path, f"unknown vector format '{suffix}'", "Use .geojson, .gpkg or .csv."
    )


def read_vector(path: PathLike, *, crs: Any = None) -> Any:
    """Read a GeoJSON / GeoPackage / shapefile (or a CSV with ``lon``/``lat`` or WKT ``geometry``).

    Parameters
    ----------
    crs
        Reproject to this CRS when given.

    Raises
    ------
    UnreadableFileError
        Missing or unreadable file.
    MissingCRSError
        The file has no CRS (a CSV with ``lon``/``lat`` is taken as EPSG:4326).
    """
    import geopandas as gpd
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(path, "file not found", "Check the path.")
    try:
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path)
            cols = {c.lower(): c for c in df.columns}
            if "lon" in cols and "lat" in cols:
                gdf = gpd.GeoDataFrame(
                    df, geometry=gpd.points_from_xy(df[cols["lon"]], df[cols["lat"]]), crs=4326
                )
            elif "geometry" in cols:
                gdf = gpd.GeoDataFrame(df, geometry=gpd.GeoSeries.from_wkt(df[cols["geometry"]]))
            else:
                raise UnreadableFileError(
                    path, "CSV has neither lon/lat nor geometry columns", "Add lon and lat columns."
                )
        else:
            gdf = gpd.read_file(path)
    except UnreadableFileError:
        raise
    except Exception as exc:
        raise UnreadableFileError(
            path, f"cannot be read ({exc})".replace("\n", " "), None
        ) from None
    if gdf.crs is None:
        raise MissingCRSError(path)
    return gdf.to_crs(crs) if crs is not None else gdf


def read_footprints(path: PathLike, *, crs: Any = None) -> Any:
    """Building footprints (polygons) as a GeoDataFrame; see :func:`read_vector`."""
    return read_vector(path, crs=crs)
