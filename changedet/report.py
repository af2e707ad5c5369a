"""The report of a run: its figures (read in bounded windows) and ``report.html``.

:func:`write_figures` draws, from a run's rasters and detections, ``figures/overview.png`` (the
after image, detections, facilities, map furniture) and one ``figures/facility_<id>.png`` per
facility (before | after | change crops on one grid). Rasters are only read decimated
(:func:`preview`) or in small windows (:func:`read_window`), so memory stays bounded whatever the
scene size. :func:`write_report` then writes ``report.html``: one self-contained page (figures
embedded as base64) with the facility table, the crater table, the co-registration diagnostics
and the provenance summary. :func:`write_report_html` is the generic page builder behind it.

Nothing written here holds a date, a wall-clock time or the output folder's name: a re-run
writes the same bytes (``changedet verify``). Drawing lives in :mod:`changedet.figures`.

Examples
--------
>>> from changedet.report import plot_before_after  # doctest: +SKIP
>>> plot_before_after("site/before.tif", "site/after.tif", "pair.png")  # doctest: +SKIP
>>> from changedet.report import Section, write_report_html
>>> import tempfile, pathlib
>>> page = write_report_html(pathlib.Path(tempfile.mkdtemp()) / "r.html", "Site 1",
...                          [Section("Notes", "<p>No crater.</p>")])
>>> "<h2 id=\\"notes\\">Notes</h2>" in page.read_text()
True
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from changedet._atomic import atomic_path
from changedet.errors import MissingCRSError, NoOverlapError, UnreadableFileError

#: Longest side, in pixels, of the image read for a figure panel.
PREVIEW_PX = 1024


def read_preview(
    path: str | os.PathLike[str],
    *,
    like: str | os.PathLike[str] | None = None,
    max_px: int = PREVIEW_PX,
) -> np.ndarray:
    """Read an RGB preview (rows, cols, 3) in [0, 1], decimated to at most ``max_px`` a side.

    Parameters
    ----------
    path
        A raster readable by rasterio. The first three bands are shown as RGB (one band: grey).
    like
        Another raster: when given, ``path`` is warped onto its grid (CRS, bounds, shape) first.
    max_px
        Longest side of the preview.

    Returns
    -------
    numpy.ndarray
        Float array, 1–99 % stretched (one stretch for all bands); nodata pixels are NaN.

    Raises
    ------
    UnreadableFileError, MissingCRSError
        When a file cannot be opened or has no CRS while warping.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise UnreadableFileError(
            path, f"cannot be read ({exc})", "Check the path and format."
        ) from None
    with src:
        bands = [1, 2, 3] if src.count >= 3 else [1]
        if like is not None:
            with rasterio.open(like) as ref:
                if src.crs is None:
                    raise MissingCRSError(path)
                if ref.crs is None:
                    raise MissingCRSError(like)
                height, width, transform, crs = ref.height, ref.width, ref.transform, ref.crs
            reader = WarpedVRT(
                src,
                crs=crs,
                transform=transform,
                width=width,
                height=height,
                resampling=Resampling.bilinear,
                src_nodata=src.nodata,
                nodata=src.nodata or 0,
            )
        else:
            reader = src
            height, width = src.height, src.width
        scale = max(height, width) / max_px
        out_h, out_w = (
            (height, width) if scale <= 1 else (round(height / scale), round(width / scale))
        )
        try:
            data = reader.read(
                bands,
                out_shape=(len(bands), out_h, out_w),
                resampling=Resampling.average,
                masked=True,
            )
        finally:
            if reader is not src:
                reader.close()
    arr = np.ma.filled(data.astype("float64"), np.nan)
    if np.all(np.isnan(arr)):
        raise NoOverlapError(path, "shows no valid pixel on the grid of the other image", None)
    # One stretch for all bands keeps colours true (a per-band stretch tints the image).
    lo, hi = np.nanpercentile(arr, [1, 99])
    out = np.clip((arr - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.moveaxis(out, 0, -1)
    return rgb if rgb.shape[-1] == 3 else np.repeat(rgb, 3, axis=-1)


def plot_before_after(
    before: str | os.PathLike[str],
    after: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Write a side-by-side before | after figure of a pair (after on the before grid).

    Parameters
    ----------
    before, after
        Raster paths. The after image is warped onto the before image's grid for display
        (with its own georeferencing: not co-registered).
    out_png
        Output image (PNG, PDF or SVG by suffix), written atomically.
    title
        Figure title; defaults to the folder name.
    dpi
        Resolution of raster outputs (≥ 150 for reports).

    Returns
    -------
    pathlib.Path
        ``out_png``.
    """
    from changedet.figures import figure_bytes, figure_style, new_figure, rgba

    before_rgb = read_preview(before)
    after_rgb = read_preview(after, like=before)
    with figure_style():
        fig = new_figure((12, 6.4))
        axes = fig.subplots(1, 2)
        for ax, img, label in ((axes[0], before_rgb, "before"), (axes[1], after_rgb, "after")):
            ax.imshow(rgba(img), interpolation="lanczos")
            ax.set_title(f"{label}: {Path(before if label == 'before' else after).name}")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(title or Path(before).parent.name)
        out_png = Path(out_png)
        data = figure_bytes(fig, out_png.suffix.lstrip(".") or "png", dpi=dpi)
    with atomic_path(out_png) as tmp:
        tmp.write_bytes(data)
    return out_png


# ---------------------------------------------------------------------------- bounded reads


def preview(da: Any, max_px: int = PREVIEW_PX) -> tuple[np.ndarray, tuple[float, ...]]:
    """A decimated (block-mean) copy of a ``(band, y, x)`` raster and its bounds.

    Lazy rasters are reduced chunk by chunk (memory bounded by the chunk size).

    Parameters
    ----------
    da
        ``xarray.DataArray`` with ``.rio`` georeferencing.
    max_px
        Longest side of the result.

    Returns
    -------
    array, bounds
        ``(band, rows, cols)`` float array (NaN = no data) and ``(left, bottom, right, top)``.

    Examples
    --------
    >>> from changedet.testing import make_raster
    >>> arr, bounds = preview(make_raster(np.ones((1, 300, 200), "float32")), max_px=100)
    >>> arr.shape
    (1, 100, 66)
    """
    lazy, bounds = _preview_lazy(da, max_px)
    return np.asarray(lazy.values, dtype="float64"), bounds


def _preview_lazy(da: Any, max_px: int) -> tuple[Any, tuple[float, ...]]:
    """:func:`preview` before computing: a (lazy) ``(band, y, x)`` DataArray and its bounds."""
    if "band" not in da.dims:
        da = da.expand_dims(band=[1])
    ny, nx = da.sizes["y"], da.sizes["x"]
    f = max(1, math.ceil(max(ny, nx) / max_px))
    t = da.rio.transform()
    small = da if f == 1 else da.coarsen(y=f, x=f, boundary="trim").mean()
    small = small.transpose("band", "y", "x")
    rows, cols = small.sizes["y"], small.sizes["x"]
    x0, y0 = t.c, t.f
    x1, y1 = x0 + cols * f * t.a, y0 + rows * f * t.e
    return small, (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def read_window(da: Any, bounds: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read the pixels of ``da`` (``(band, y, x)`` or ``(y, x)``) that fall in ``bounds``.

    Only the window is computed (a small slice of a lazy raster).

    Parameters
    ----------
    da
        ``xarray.DataArray`` with ``.rio`` georeferencing (north-up).
    bounds
        ``(left, bottom, right, top)`` in the raster's CRS; may reach beyond the raster.

    Returns
    -------
    array, bounds
        ``(band, rows, cols)`` float array and the bounds of the pixels read (within the
        raster; the array is empty when ``bounds`` misses it).

    Examples
    --------
    >>> from changedet.testing import make_raster
    >>> da = make_raster(np.ones((1, 100, 100), "float32"))
    >>> left, bottom, right, top = da.rio.bounds()
    >>> arr, got = read_window(da, (left - 5, top - 10, left + 10, top + 5))
    >>> arr.shape[0], got[0] == left
    (1, True)
    """
    lazy, got = _window_lazy(da, bounds)
    if lazy is None:
        return np.zeros((da.sizes.get("band", 1), 0, 0)), got
    return np.asarray(lazy.values, dtype="float64"), got


def _window_lazy(da: Any, bounds: Sequence[float]) -> tuple[Any, tuple[float, ...]]:
    """:func:`read_window` before computing: a lazy slice (``None`` when empty) and its bounds."""
    if "band" not in da.dims:
        da = da.expand_dims(band=[1])
    t = da.rio.transform()
    ny, nx = da.sizes["y"], da.sizes["x"]
    left, bottom, right, top = bounds
    inv = ~t
    c0, r0 = inv * (left, top)
    c1, r1 = inv * (right, bottom)
    c0, c1 = sorted((c0, c1))
    r0, r1 = sorted((r0, r1))
    c0, r0 = max(0, math.floor(c0)), max(0, math.floor(r0))
    c1, r1 = min(nx, math.ceil(c1)), min(ny, math.ceil(r1))
    if c1 <= c0 or r1 <= r0:
        return None, (left, bottom, left, bottom)
    win = da.transpose("band", "y", "x").isel(y=slice(r0, r1), x=slice(c0, c1))
    xa, ya = t * (c0, r0)
    xb, yb = t * (c1, r1)
    return win, (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))


def _compute(items: Sequence[Any]) -> list[np.ndarray]:
    """Compute DataArrays together (shared Dask tasks run once) as float64 numpy arrays."""
    import dask

    values = dask.compute(*[getattr(x, "data", x) for x in items]) if items else ()
    return [np.asarray(v, dtype="float64") for v in values]


def to_rgb(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(band, rows, cols)`` values to an RGB ``(rows, cols, 3)`` image in [0, 1] (NaN kept).

    The first three bands are red, green, blue; one band is shown grey.
    """
    out = np.clip((arr - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.moveaxis(out[:3] if out.shape[0] >= 3 else out[:1], 0, -1)
    return rgb if rgb.shape[-1] == 3 else np.repeat(rgb, 3, axis=-1)


def stretch_limits(arr: np.ndarray) -> tuple[float, float]:
    """1–99 % limits of the valid values (one stretch for every band and both images).

    Rounded (4 significant digits) so that last-bit noise cannot change a figure's bytes.
    """
    valid = arr[np.isfinite(arr)]
    if valid.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(valid, [1, 99])
    return float(f"{lo:.4g}"), float(f"{hi:.4g}")


# ---------------------------------------------------------------------------- captions

_DATE_TAGS = ("ACQUISITION_DATE", "ACQUISITIONDATETIME", "DATE_ACQUIRED", "TIFFTAG_DATETIME")
_SENSOR_TAGS = ("SENSOR", "SATELLITEID", "SPACECRAFT_ID", "PLATFORM")
_CREDIT_TAGS = ("TIFFTAG_COPYRIGHT", "COPYRIGHT")


def _tag(attrs: Mapping[str, Any], names: Sequence[str]) -> str | None:
    upper = {str(k).upper(): v for k, v in attrs.items()}
    for name in names:
        value = upper.get(name)
        if value not in (None, ""):
            return str(value)
    return None


def caption_fields(before: Any, after: Any, config: Any = None) -> dict[str, str]:
    """Acquisition dates, sensor and attribution for captions: config, else raster tags, else
    ``"unknown"`` (never guessed).

    Parameters
    ----------
    before, after
        The rasters (``xarray.DataArray``; their ``attrs`` hold the GeoTIFF tags).
    config
        :class:`changedet.config.ReportConfig` (or ``None``).

    Examples
    --------
    >>> from changedet.testing import make_raster
    >>> r = make_raster(np.zeros((1, 8, 8), "float32"))
    >>> r.attrs["TIFFTAG_DATETIME"] = "2024:03:01 10:12:00"
    >>> caption_fields(r, make_raster(np.zeros((1, 8, 8), "float32")))["before_date"]
    '2024:03:01 10:12:00'
    """
    cfg = config
    b_attrs = getattr(before, "attrs", {}) or {}
    a_attrs = getattr(after, "attrs", {}) or {}
    return {
        "before_date": (cfg and cfg.before_date) or _tag(b_attrs, _DATE_TAGS) or "unknown",
        "after_date": (cfg and cfg.after_date) or _tag(a_attrs, _DATE_TAGS) or "unknown",
        "sensor": (cfg and cfg.sensor)
        or _tag(a_attrs, _SENSOR_TAGS)
        or _tag(b_attrs, _SENSOR_TAGS)
        or "unknown",
        "attribution": (cfg and cfg.attribution)
        or _tag(a_attrs, _CREDIT_TAGS)
        or _tag(b_attrs, _CREDIT_TAGS)
        or "unknown",
    }


def caption_text(fields: Mapping[str, str], crs_name: str, projected: bool) -> str:
    """One caption line from :func:`caption_fields`, with the grid and north convention."""
    north = (
        f"Coordinates in {crs_name} (metres); north arrow = grid north."
        if projected
        else f"Coordinates in {crs_name} (degrees)."
    )
    return (
        f"Before: {fields['before_date']}  |  after: {fields['after_date']}  |  "
        f"sensor: {fields['sensor']}  |  imagery: {fields['attribution']}.  {north}  "
        "Circles: new craters at their detected diameter, numbered by crater id."
    )


# ---------------------------------------------------------------------------- facility craters


def facility_craters(
    geom: Any,
    craters: Any,
    rings_m: Sequence[float],
    crop_bounds: Sequence[float] | None = None,
) -> Any:
    """The new craters within the outermost ring of one facility, nearest first.

    The same rule as :func:`changedet.facilities.score_facilities` (distance from the crater
    centre to the facility: to a point, or to a footprint's edge, 0 inside), so the list
    matches the facility table's ring counts.

    Parameters
    ----------
    geom
        The facility geometry, in the craters' CRS.
    craters
        Crater detections (``id``, ``diameter_m``, ``new``).
    rings_m
        Distance rings, metres.
    crop_bounds
        ``(left, bottom, right, top)`` of the facility figure: sets ``in_crop``.

    Returns
    -------
    pandas.DataFrame
        ``id``, ``diameter_m``, ``distance_m``, ``ring`` (e.g. ``"<= 50 m"``), ``on`` (what
        the crater lies on, see :func:`changedet.craters.detect_craters`; ``"unknown"`` when the
        detections do not say), ``in_crop``.

    Examples
    --------
    >>> import geopandas as gpd
    >>> from shapely.geometry import Point, box
    >>> c = gpd.GeoDataFrame({"id": [3, 4], "diameter_m": [5.0, 8.0], "new": [True, True]},
    ...                      geometry=[Point(30, 10), Point(400, 10)], crs="EPSG:32637")
    >>> facility_craters(box(0, 0, 20, 20), c, (50, 100, 250))[["id", "ring"]].values.tolist()
    [[3, '<= 50 m']]
    """
    import pandas as pd

    from changedet.craters import new_craters

    cols = ["id", "diameter_m", "distance_m", "ring", "on", "in_crop"]
    new = new_craters(craters)
    rings = sorted(float(r) for r in rings_m)
    if new is None or len(new) == 0 or not rings:
        return pd.DataFrame({c: [] for c in cols})
    d = new.geometry.distance(geom).to_numpy()
    keep = d <= rings[-1]
    sub = new[keep]
    dist = d[keep]
    ids = sub["id"].to_numpy() if "id" in sub.columns else np.flatnonzero(keep)
    ring = [f"<= {next(r for r in rings if v <= r):g} m" for v in dist]
    if crop_bounds is not None:
        left, bottom, right, top = crop_bounds
        x, y = sub.geometry.x.to_numpy(), sub.geometry.y.to_numpy()
        in_crop = (x >= left) & (x <= right) & (y >= bottom) & (y <= top)
    else:
        in_crop = np.ones(len(sub), bool)
    out = pd.DataFrame(
        {
            "id": ids,
            "diameter_m": sub["diameter_m"].to_numpy(float),
            "distance_m": np.round(dist, 2),
            "ring": ring,
            "on": sub["on"].astype(str).to_numpy() if "on" in sub.columns else "unknown",
            "in_crop": in_crop,
        }
    )
    return out.sort_values(["distance_m", "id"], kind="stable").reset_index(drop=True)


def facility_figure_name(facility_id: Any) -> str:
    """``facility_<id>.png`` with characters unsafe in file names replaced by ``_``.

    Examples
    --------
    >>> facility_figure_name("H/1 north")
    'facility_H_1_north.png'
    """
    return "facility_" + re.sub(r"[^A-Za-z0-9._-]+", "_", str(facility_id)) + ".png"


# ---------------------------------------------------------------------------- figures of a run


def write_figures(
    out: str | os.PathLike[str],
    *,
    before: Any,
    after: Any,
    change: Any,
    craters: Any,
    damage: Any = None,
    facilities: Any = None,
    threshold: float | None = None,
    rings_m: Sequence[float] = (50.0, 100.0, 250.0),
    config: Any = None,
    title: str = "",
    craters_not_searched: str | None = None,
) -> dict[str, Path]:
    """Write ``figures/overview.png`` and ``figures/facility_<id>.png`` (+ PDF/SVG if asked).

    Parameters
    ----------
    out
        The run's output folder (figures go to ``out/figures``).
    before, after
        The before image and the co-registered after image on the same grid (``(band, y, x)``
        ``xarray.DataArray``, lazy is fine: only a preview and small windows are read).
    change
        The change score on the same grid (e.g. ``change_score.tif`` opened lazily).
    craters
        Crater detections (scene CRS); only new ones are drawn.
    damage
        Damage per footprint or region (``damage_class``), scene CRS.
    facilities
        The facility table (:func:`changedet.facilities.score_facilities`), or ``None``.
    threshold
        The change threshold (marked on the colour bar).
    rings_m
        Facility rings, metres.
    config
        :class:`changedet.config.ReportConfig` (dpi, extra formats, crop size, caption fields).
    title
        Prefix of the figure titles (e.g. the site name).
    craters_not_searched
        Why no crater was searched (:func:`changedet.craters.not_searched`), or ``None``: the
        figures then say "not searched" where they would count craters.

    Returns
    -------
    dict
        Files written, by path relative to ``out`` (``figures/overview.png``, ...).
    """
    import pandas as pd

    from changedet.config import ReportConfig
    from changedet.craters import new_craters
    from changedet.figures import figure_style, plot_facility, plot_overview, save_figure

    cfg = config or ReportConfig()
    out = Path(out)
    crs = before.rio.crs
    crs_name = crs.to_string() if crs is not None else "unknown CRS"
    projected = bool(crs is not None and crs.is_projected)
    caption = caption_text(caption_fields(before, after, cfg), crs_name, projected)
    new = new_craters(craters)
    files: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        for p in save_figure(fig, out / "figures" / name, formats=cfg.formats, dpi=cfg.dpi):
            files[f"figures/{p.name}"] = p

    # The overview is a decimated read (chunk by chunk); the facility crops are read a few
    # facilities at a time (windows of one batch share their chunks' reads) and each batch is
    # drawn and released before the next is read, so memory does not grow with the number of
    # facilities.
    over, bounds = _preview_lazy(after, PREVIEW_PX)
    (img,) = _compute([over])
    lo, hi = stretch_limits(img)
    with figure_style():
        fig = plot_overview(
            to_rgb(img, lo, hi),
            bounds,
            crs_name=crs_name,
            projected=projected,
            craters=new,
            damage=damage,
            facilities=facilities,
            rings_m=rings_m,
            crater_note="new craters: not searched" if craters_not_searched else None,
            title=f"{title}: after image, new craters, damage and facilities".lstrip(": "),
            caption=caption,
        )
        save(fig, "overview.png")
    del img
    for fac, crop, got, (b, a, ch) in _facility_crops(
        facilities, (before, after, change), cfg.crop_m
    ):
        lo, hi = stretch_limits(b)
        table = facility_craters(fac.geometry, craters, rings_m, crop)
        shown = (
            new.cx[crop[0] : crop[2], crop[1] : crop[3]] if new is not None and len(new) else new
        )
        dmg = None
        if damage is not None and len(damage):
            dmg = damage.cx[crop[0] : crop[2], crop[1] : crop[3]]
        ring_counts = [fac.get(f"craters_within_{r:g}m", 0) for r in rings_m]
        near = fac.get("nearest_crater_m")
        near_txt = "none" if near is None or near != near else f"{near:.0f} m"
        note = None
        if craters_not_searched or any(pd.isna(c) for c in ring_counts):  # none looked for
            crater_txt = "craters not searched (pixels too coarse)"
            note = "No crater was searched: the pixels are too coarse for the sizes asked."
        else:
            counts = " / ".join(str(int(c)) for c in ring_counts)
            crater_txt = (
                f"{counts} new craters within {' / '.join(f'{r:g}' for r in rings_m)} m, "
                f"nearest {near_txt}"
            )
        fig_title = (
            f"{fac['id']} {fac.get('name', '')} ({fac.get('type', 'unknown')}): "
            f"{crater_txt}, damage: {fac.get('damage_class') or 'not assessed'}"
        )
        with figure_style():
            fig = plot_facility(
                to_rgb(b, lo, hi),
                to_rgb(a, lo, hi),
                ch[0] if ch.size else np.full((1, 1), np.nan),
                got,
                crop,
                facility=fac,
                crs_name=crs_name,
                projected=projected,
                craters=shown,
                crater_list=table,
                crater_note=note,
                damage=dmg,
                rings_m=rings_m,
                threshold=threshold,
                title=fig_title,
                caption=caption,
            )
            save(fig, facility_figure_name(fac["id"]))
    return files


#: Facilities whose crops :func:`write_figures` reads in one ``dask.compute``.
CROP_BATCH = 4


def _facility_crops(
    facilities: Any, sources: Sequence[Any], crop_m: float
) -> Iterator[tuple[Any, tuple[float, ...], tuple[float, ...], list[np.ndarray]]]:
    """``(facility, crop bounds, bounds read, [one array per source])`` for every facility,
    reading the windows of :data:`CROP_BATCH` facilities at a time (an empty window is an
    empty ``(1, 0, 0)`` array)."""
    if facilities is None:
        return
    half = crop_m / 2
    rows = [fac for _, fac in facilities.iterrows()]
    for start in range(0, len(rows), CROP_BATCH):
        batch = []
        for fac in rows[start : start + CROP_BATCH]:
            c = fac.geometry.centroid
            crop = (c.x - half, c.y - half, c.x + half, c.y + half)
            batch.append((fac, crop, [_window_lazy(src, crop) for src in sources]))
        lazy = [w for _, _, wins in batch for w, _ in wins]
        it = iter(_compute([x for x in lazy if x is not None]))
        for fac, crop, wins in batch:
            arrays = [np.full((1, 0, 0), np.nan) if w is None else next(it) for w, _ in wins]
            yield fac, crop, wins[0][1], arrays
        del lazy, it, batch


# ---------------------------------------------------------------------------- report.html


@dataclass(frozen=True)
class Section:
    """One section of a report page: a heading and its HTML body (already escaped).

    ``body`` may also be a sequence of parts, joined by newlines: HTML strings and
    :class:`EmbeddedImage` (an image file embedded only when the page is written, one at a
    time, so that a page with many figures is never held in memory whole).
    """

    title: str
    body: str | Sequence[Any]


#: Width (px) of the facility figure previews embedded in ``report.html``: about the page's
#: width, so nothing is lost on screen; the PNG in ``figures/`` keeps the full resolution.
PREVIEW_WIDTH_PX = 1100
#: JPEG quality of those previews (with full-resolution colour, 4:4:4, so thin coloured lines
#: and text stay sharp). A 150-dpi facility figure is ~1.4 MB as PNG, ~0.2 MB as this preview:
#: a run with 256 facilities wrote a 504 MB page, which browsers struggle to open.
PREVIEW_QUALITY = 85


def preview_image(
    path: str | os.PathLike[str], width_px: int = PREVIEW_WIDTH_PX
) -> tuple[bytes, str]:
    """A preview of a PNG file at most ``width_px`` wide: ``(bytes, media type)``.

    The smallest of a JPEG of the downscaled image (photographic crops: several times
    smaller), a PNG of it, and the file itself (flat graphics, which downscaling only
    complicates); the same bytes every time.

    Examples
    --------
    >>> import io, tempfile
    >>> from PIL import Image
    >>> png = Path(tempfile.mkdtemp()) / "f.png"
    >>> Image.new("RGBA", (3000, 1500), (200, 30, 30, 255)).save(png)
    >>> data, mime = preview_image(png)
    >>> Image.open(io.BytesIO(data)).size, mime  # one flat colour: a small PNG
    ((1100, 550), 'image/png')
    """
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")  # the figures are opaque: the alpha channel carries nothing
        if img.width > width_px:
            height = max(1, round(img.height * width_px / img.width))
            img = img.resize((width_px, height), Image.Resampling.LANCZOS)
        jpeg, png = io.BytesIO(), io.BytesIO()
        img.save(jpeg, format="JPEG", quality=PREVIEW_QUALITY, subsampling=0)
        img.save(png, format="PNG")
    original = Path(path).read_bytes()
    options = [
        (original, "image/png"),
        (png.getvalue(), "image/png"),
        (jpeg.getvalue(), "image/jpeg"),
    ]
    return min(options, key=lambda o: len(o[0]))  # the first of equals: stable


@dataclass(frozen=True)
class EmbeddedImage:
    """An image file for :func:`html_image`, read and encoded only when the page is written.

    With ``preview``, a smaller preview (:func:`preview_image`) is embedded instead, linked to
    the file itself by its path relative to the page (``link``).
    """

    path: Path
    alt: str
    caption: str = ""
    preview: bool = False
    link: str = ""

    def __str__(self) -> str:
        if not self.preview:
            return html_image(self.path, alt=self.alt, caption=self.caption)
        data, mime = preview_image(self.path)
        return html_image(data, alt=self.alt, caption=self.caption, mime=mime, href=self.link)


def _body_parts(body: str | Sequence[Any]) -> Iterator[str]:
    """A section body as HTML pieces whose concatenation is the body (parts joined by ``\n``)."""
    if isinstance(body, str):
        yield body
        return
    for i, part in enumerate(body):
        if i:
            yield "\n"
        yield str(part)


_CSS = """
body{font-family:"DejaVu Sans",Verdana,sans-serif;font-size:14px;color:#222;max-width:1200px;
margin:1em auto;padding:0 1em;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{border-bottom:2px solid #0072B2;padding-bottom:.1em;
margin-top:1.6em}h3{margin-top:1.2em}
table{border-collapse:collapse;margin:.5em 0;font-size:12.5px}
th,td{border:1px solid #bbb;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#eef3f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.8em 0}figure img{max-width:100%;height:auto;border:1px solid #ccc}
figcaption{font-size:12px;color:#444}code,pre{font-size:12px}pre{background:#f6f6f6;
padding:.5em;overflow-x:auto}dl{display:grid;grid-template-columns:max-content auto;gap:2px 1em}
dt{font-weight:bold}dd{margin:0}.bad{color:#D55E00;font-weight:bold}.ok{color:#009E73}
nav a{margin-right:1em}.note{color:#555;font-size:12.5px}
"""


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def html_escape(value: Any) -> str:
    """Escape text for HTML (quotes included)."""
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> tuple[str, bool]:
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
        return "–", False
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), False
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.2f}", True
    return html_escape(value), False


def html_table(
    rows: Any, *, columns: Mapping[str, str] | None = None, attrs: str = "", max_rows: int = 1000
) -> str:
    """An HTML table from a DataFrame (or a list of dicts).

    Parameters
    ----------
    rows
        ``pandas.DataFrame`` or list of dicts.
    columns
        ``{column: header}`` to show, in order; default every column except ``geometry``.
    attrs
        Extra attributes of the ``<table>`` tag (e.g. ``'class="craters"'``).
    max_rows
        Longest table; a note counts the rows left out.

    Examples
    --------
    >>> html_table([{"id": "F1", "n": 2, "share": 0.25, "ok": True}])
    '<table><thead><tr><th>id</th><th>n</th><th>share</th><th>ok</th></tr></thead><tbody><tr><td>F1</td><td class="num">2</td><td class="num">0.25</td><td>yes</td></tr></tbody></table>'
    """
    import pandas as pd

    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    if columns is None:
        columns = {c: c for c in df.columns if c != "geometry"}
    cols = [c for c in columns if c in df.columns]
    head = "".join(f"<th>{html_escape(columns[c])}</th>" for c in cols)
    body = []
    for rec in df[cols].head(max_rows).itertuples(index=False, name=None):
        cells = []
        for v in rec:
            text, num = _cell(v)
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        body.append(f'<tr><td colspan="{max(len(cols), 1)}">none</td></tr>')
    more = (
        f'<p class="note">{len(df) - max_rows} more rows in the files.</p>'
        if len(df) > max_rows
        else ""
    )
    tag = f"<table {attrs}>" if attrs else "<table>"
    return f"{tag}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def html_definitions(items: Mapping[str, Any]) -> str:
    """A definition list (``<dl>``) of label → value (values escaped)."""
    parts = [f"<dt>{html_escape(k)}</dt><dd>{_cell(v)[0]}</dd>" for k, v in items.items()]
    return "<dl>" + "".join(parts) + "</dl>"


def html_image(
    data: bytes | str | os.PathLike[str],
    *,
    alt: str,
    caption: str = "",
    mime: str = "image/png",
    href: str = "",
) -> str:
    """A ``<figure>`` with the image embedded as base64 (the page stays self-contained).

    Parameters
    ----------
    data
        Image bytes, or the path of an image file.
    alt, caption
        Alternative text and caption.
    mime
        The image's media type.
    href
        Optional link target of the image (e.g. the full-resolution file, relative to the page).
    """
    raw = data if isinstance(data, bytes) else Path(data).read_bytes()
    b64 = base64.b64encode(raw).decode("ascii")
    cap = f"<figcaption>{html_escape(caption)}</figcaption>" if caption else ""
    img = f'<img src="data:{mime};base64,{b64}" alt="{html_escape(alt)}">'
    if href:
        img = f'<a href="{html_escape(href)}">{img}</a>'
    return f"<figure>{img}{cap}</figure>"


def render_report_html(title: str, sections: Sequence[Section], *, subtitle: str = "") -> str:
    """A complete, self-contained HTML page: title, a table of contents, the sections.

    No date or time is written: the same content gives the same bytes.
    """
    return "".join(_page_parts(title, sections, subtitle=subtitle))


def _page_parts(title: str, sections: Sequence[Section], *, subtitle: str = "") -> Iterator[str]:
    """The page of :func:`render_report_html` piece by piece (embedded images one at a time)."""
    toc = " ".join(f'<a href="#{_anchor(s.title)}">{html_escape(s.title)}</a>' for s in sections)
    sub = f'<p class="note">{html_escape(subtitle)}</p>' if subtitle else ""
    yield (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html_escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html_escape(title)}</h1>\n{sub}\n<nav>{toc}</nav>\n"
    )
    for i, s in enumerate(sections):
        yield ("\n" if i else "") + f'<section><h2 id="{_anchor(s.title)}">'
        yield f"{html_escape(s.title)}</h2>\n"
        yield from _body_parts(s.body)
        yield "\n</section>"
    yield "\n</body>\n</html>\n"


def write_report_html(
    path: str | os.PathLike[str], title: str, sections: Sequence[Section], *, subtitle: str = ""
) -> Path:
    """Write :func:`render_report_html` to ``path`` atomically; return the path.

    Parameters
    ----------
    path
        Output ``.html`` file.
    title
        Page title (``<title>`` and the top heading).
    sections
        :class:`Section` objects, in order; bodies from :func:`html_table`,
        :func:`html_image`, :func:`html_definitions` or any escaped HTML.
    subtitle
        A line under the title.
    """
    # written piece by piece: a report with many facility figures is hundreds of MB of base64
    # (124 MB at 8192², 64 facilities), which as one string was held several times over
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for part in _page_parts(title, sections, subtitle=subtitle):
            fh.write(part)
    return Path(path)


def _coreg_figure(coreg: Any, before: Any, dpi: int) -> bytes:
    """The tie-point plot of :meth:`CoregResult.plot`, recoloured with the report palette."""
    from changedet.figures import PALETTE, figure_bytes, figure_style, new_figure

    with figure_style():
        ny, nx = coreg.shape
        fig = new_figure((6.5, 6.5 * ny / max(nx, 1) + 0.6))
        ax = fig.add_subplot()
        coreg.plot(image=before, ax=ax)
        # red/green is the colour pair most often confused: kept blue, rejected vermillion
        for artist in [*ax.collections, *ax.lines]:
            kept = str(artist.get_label()).startswith("kept")
            artist.set_color(PALETTE["sky_blue"] if kept else PALETTE["vermillion"])
        if ax.get_legend() is not None:
            ax.legend(loc="lower right", fontsize=7)
        ax.set_xlabel("column (px, before grid)")
        ax.set_ylabel("row (px)")
        return figure_bytes(fig, "png", dpi=dpi)


def _sun_line(sun: Mapping[str, Any] | None) -> str:
    """The manifest's sun record as one line (``"not recorded"`` for older manifests)."""
    if not sun:
        return "not recorded"
    from changedet.sun import Sun

    line = Sun(**sun).describe()
    contrast = sun.get("detail", {}).get("shadow_contrast")
    if sun.get("source") in ("tree shadows", "building shadows") and contrast is not None:
        line += f", shadow contrast {contrast:.2f}"
    if sun.get("source") == "building shadows" and "buildings" in sun.get("detail", {}):
        line += f", {sun['detail']['buildings']} footprints"
    return line


def write_report(
    out: str | os.PathLike[str],
    *,
    before: Any,
    after: Any,
    craters: Any,
    damage: Any,
    facilities: Any,
    coreg: Any,
    threshold: float,
    manifest: Mapping[str, Any],
    figures: Mapping[str, Path],
    rings_m: Sequence[float] = (50.0, 100.0, 250.0),
    config: Any = None,
    title: str = "changedet report",
) -> Path:
    """Write ``out/report.html`` for one run: one self-contained page to browse its results.

    Parameters
    ----------
    out
        The run's output folder.
    before, after
        The pair on one grid (for the caption fields and the tie-point plot's background).
    craters, damage, facilities
        The detections and the facility table as written to the files (scene CRS).
    coreg
        :class:`changedet.coregister.CoregResult`.
    threshold
        The change threshold.
    manifest
        The run's manifest so far (inputs, versions, config, output hashes).
    figures
        The figure files by name (``figures/overview.png`` ...), from :func:`write_figures`.
    rings_m
        Facility rings, metres.
    config
        :class:`changedet.config.ReportConfig`.
    title
        Page title.

    Returns
    -------
    pathlib.Path
        ``out/report.html``.
    """
    import geopandas as gpd

    from changedet.config import ReportConfig
    from changedet.craters import describe_calibration, new_craters
    from changedet.figures import DAMAGE_COLOURS

    cfg = config or ReportConfig()
    out = Path(out)
    crs = before.rio.crs
    crs_name = crs.to_string() if crs is not None else "unknown CRS"
    fields = caption_fields(before, after, cfg)
    new = new_craters(craters)
    n_new = 0 if new is None else len(new)
    n_old = (0 if craters is None else len(craters)) - n_new
    res = before.rio.resolution()
    inputs = list(manifest.get("inputs", []))
    sections: list[Section] = []

    damage_counts = (
        damage["damage_class"].value_counts()
        if damage is not None and len(damage) and "damage_class" in damage.columns
        else None
    )
    gate = "passed" if coreg.passed else "FAILED: " + "; ".join(coreg.reasons)
    summary = {
        "before image": ", ".join(
            Path(e["path"]).name for e in inputs if e.get("role") == "before"
        ),
        "after image": ", ".join(Path(e["path"]).name for e in inputs if e.get("role") == "after"),
        "before acquired": fields["before_date"],
        "after acquired": fields["after_date"],
        "sensor": fields["sensor"],
        "imagery credit": fields["attribution"],
        "grid": f"{crs_name}, pixel {abs(res[0]):g} × {abs(res[1]):g} (CRS units)",
        "co-registration gate": gate,
        "sun of the after image (crater shading test)": _sun_line(manifest.get("sun")),
        **(
            {"crater shading, elevation unknown": describe_calibration(cal)}
            if (cal := manifest.get("crater_shading_calibration"))
            else {}
        ),
        "new craters": (
            f"not searched: {manifest['craters_not_searched']}"
            if manifest.get("craters_not_searched")
            else n_new
        ),
        "detections already in the before image (not counted)": n_old,
        **(
            {
                "small dark blobs on roofs (not counted)": (
                    f"{n_roof} under "
                    f"{manifest['config']['craters']['min_roof_diameter_m']:g} m across: "
                    "roof fixtures or holes"
                )
            }
            if (n_roof := manifest.get("crater_roof_fixtures_dropped"))
            else {}
        ),
        "damage (per footprint or region)": (
            ", ".join(f"{k} {v}" for k, v in damage_counts.items())
            if damage_counts is not None
            else "none assessed"
        ),
        "facilities": 0 if facilities is None else len(facilities),
    }
    body = html_definitions(summary)
    if not coreg.passed:
        body = (
            '<p class="bad">The co-registration quality gate failed: the pair is flagged and '
            "the detections below need checking by eye.</p>" + body
        )
    sections.append(Section("Summary", body))

    if "figures/overview.png" in figures:
        sections.append(
            Section(
                "Overview",
                html_image(
                    figures["figures/overview.png"],
                    alt="overview map: after image with new craters, damage and facilities",
                    caption="figures/overview.png",
                ),
            )
        )

    if facilities is not None:
        ring_cols = {f"craters_within_{r:g}m": f"craters ≤ {r:g} m" for r in rings_m}
        columns = {
            "id": "id",
            "name": "name",
            "type": "type",
            "in_scene": "in scene",
            **ring_cols,
            "nearest_crater_m": "nearest crater (m)",
            "nearest_crater_id": "nearest crater id",
            "largest_crater_m": "largest crater ≤ outer ring (m)",
            "damaged_share": "damaged share",
            "damage_class": "damage class",
            "assessable": "assessable",
        }
        parts: list[Any] = [
            html_table(facilities, columns=columns, attrs='class="facilities"'),
            '<p class="note">Counts are of new craters whose centre lies within the distance '
            "of the facility (of its footprint's edge; 0 inside it). Crater ids are those of "
            "craters.geojson and of the circles in the figures.</p>",
        ]
        if manifest.get("craters_not_searched"):
            parts.append(
                '<p class="note">No crater was searched in this run ('
                + html_escape(manifest["craters_not_searched"])
                + "): the crater columns are empty, which does not mean no crater is there.</p>"
            )
        half = cfg.crop_m / 2
        for _, fac in facilities.iterrows():
            c = fac.geometry.centroid
            crop = (c.x - half, c.y - half, c.x + half, c.y + half)
            table = facility_craters(fac.geometry, craters, rings_m, crop)
            name = f"figures/{facility_figure_name(fac['id'])}"
            parts.append(f"<h3>{html_escape(fac['id'])} {html_escape(fac.get('name', ''))}</h3>")
            if name in figures:
                parts.append(
                    EmbeddedImage(
                        figures[name],
                        alt=f"facility {fac['id']}",
                        caption=f"{name} (preview; the link opens the full-resolution PNG)",
                        preview=True,
                        link=name,
                    )
                )
            parts.append(
                html_table(
                    table,
                    columns={
                        "id": "crater id",
                        "diameter_m": "diameter (m)",
                        "distance_m": "distance (m)",
                        "ring": "ring",
                        "on": "on",
                        "in_crop": "in figure crop",
                    },
                    attrs=f'class="facility-craters" data-facility="{html_escape(fac["id"])}"',
                )
            )
        sections.append(Section("Facilities", parts))

    if new is not None and n_new:
        table = new.copy()
        table["easting"] = table.geometry.x.round(2)
        table["northing"] = table.geometry.y.round(2)
        ll = gpd.GeoSeries(table.geometry, crs=craters.crs).to_crs(4326)
        table["lon"] = ll.x.map(lambda v: f"{v:.6f}")
        table["lat"] = ll.y.map(lambda v: f"{v:.6f}")
        cols = {
            "id": "id",
            "easting": f"easting ({crs_name})",
            "northing": "northing",
            "lon": "lon",
            "lat": "lat",
            "diameter_m": "diameter (m)",
            "score": "score",
            "on": "on",
            "newness_verified": "newness verified",
        }
        crater_html = html_table(table, columns=cols, attrs='class="craters"') + (
            '<p class="note">"on" is what a crater\'s centre lies on, as far as the layers given '
            "tell: building (inside a footprint), road (on a road line widened to its width, or "
            'a road polygon), open ground (neither); it reads "road or open ground" where no '
            'roads were given, "building or open ground" where no footprints were, and '
            '"unknown" with neither.</p>'
        )
    elif manifest.get("craters_not_searched"):
        crater_html = (
            "<p>No crater was searched: "
            + html_escape(manifest["craters_not_searched"])
            + ". An empty list here does not mean no crater is there.</p>"
        )
    else:
        crater_html = "<p>No new crater detected.</p>"
    crater_html += (
        f'<p class="note">{n_old} detection(s) already visible in the before image are in '
        "craters.geojson with new = false and are not counted.</p>"
    )
    sections.append(Section("Craters", crater_html))

    if damage_counts is not None:
        shown = damage[damage["damage_class"].isin(list(DAMAGE_COLOURS))]
        cols = {
            "id": "id",
            "damage_class": "damage class",
            "damaged_share": "damaged share",
            "assessable_share": "assessable share",
        }
        sections.append(
            Section(
                "Damage",
                html_definitions({str(k): int(v) for k, v in damage_counts.items()})
                + html_table(shown, columns=cols, attrs='class="damage"'),
            )
        )

    tp = coreg.tie_points
    rejected = tp.loc[~tp["kept"], "reason"].value_counts() if len(tp) else None
    diag = {
        "method / model": f"{coreg.method} / {coreg.model.kind}",
        "shift at scene centre (px)": f"{coreg.shift_px[0]:+.3f}, {coreg.shift_px[1]:+.3f}",
        "shift (m, east / north)": f"{coreg.shift_m[0]:+.3f}, {coreg.shift_m[1]:+.3f}",
        "residual RMSE (px)": f"{coreg.rmse_px:.3f}",
        "residual RMSE (m)": f"{coreg.rmse_m:.3f}",
        "tie points kept / measured": f"{coreg.n_kept} / {coreg.n_tie_points}",
        "rejected, by reason": (
            ", ".join(f"{k} {v}" for k, v in rejected.items()) if rejected is not None else "none"
        )
        or "none",
        "quality gate": gate,
        "change threshold": f"{threshold:.4f}",
    }
    sections.append(
        Section(
            "Co-registration",
            html_definitions(diag)
            + html_image(
                _coreg_figure(coreg, before, cfg.dpi),
                alt="tie-point displacement vectors",
                caption="Tie points on the before image: measured displacement (exaggerated), "
                "kept in blue, rejected in vermillion.",
            ),
        )
    )

    in_cols = {
        "role": "role",
        "path": "path",
        "sha256": "SHA-256",
        "bytes": "bytes",
        "crs": "CRS",
        "acquired": "acquired (tag)",
    }
    outs = [
        {"file": name, "sha256": e["sha256"]}
        for name, e in sorted(manifest.get("outputs", {}).items())
    ]
    prov = (
        "<h3>Inputs</h3>"
        + html_table(inputs, columns=in_cols, attrs='class="inputs"')
        + "<h3>Outputs</h3>"
        + html_table(outs, attrs='class="outputs"')
        + '<p class="note">manifest.json also records the SHA-256 of this page. run.log is '
        "listed there but not hash-checked (it holds wall-clock times). "
        "<code>changedet verify manifest.json</code> re-runs the pair and compares every "
        "hash.</p><h3>Versions</h3>"
        + html_definitions(manifest.get("versions", {}))
        + "<h3>Configuration</h3><details><summary>every parameter</summary><pre>"
        + html_escape(json.dumps(manifest.get("config", {}), indent=2, sort_keys=True, default=str))
        + "</pre></details>"
    )
    sections.append(Section("Provenance", prov))
    return write_report_html(
        out / "report.html",
        title,
        sections,
        subtitle=caption_text(fields, crs_name, bool(crs is not None and crs.is_projected)),
    )
