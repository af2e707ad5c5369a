"""The sun's position in the after image: given, read from the image's metadata, or estimated
from the shadows trees cast.

The crater shading test needs the sun's azimuth (a bowl's inner wall nearest the sun is in
shadow, a mound's is lit) and, at full strength, its elevation (how strong that shading is).
Without the azimuth the test is skipped, and a scene's cast shadows, bushes and dark patches
pass for craters far more often (see ``benchmarks/RESULTS.md``, "Sun position").

Where the angles come from, in this order (:func:`resolve_sun`):

1. **given** by the caller (``--sun-azimuth`` / ``--sun-elevation``);
2. **metadata** of the after image, in any GDAL metadata domain: DigitalGlobe/Maxar ``.IMD``
   (``IMAGE_1.meanSunAz`` / ``meanSunEl``, which GDAL reads from the file beside the image),
   tags such as ``SUN_AZIMUTH`` / ``SUN_ELEVATION`` that other deliveries carry, and JSON
   beside the image (Planet's ``<stem>_metadata.json``: ``sun_azimuth`` / ``sun_elevation``)
   (:func:`sun_from_metadata`);
3. **estimated** azimuth from tree shadows (:func:`estimate_sun_azimuth`): an elevated object
   casts its shadow away from the sun. Tree crowns are the objects — green (excess-green index),
   and round, so free of the bias of rectangular buildings laid out on a grid (their shadows
   favour the directions of the street grid). Each crown mask is moved 1–8 m in each direction
   θ, and the median brightness of the ground it lands on (outside any crown) is taken; the
   direction where that ground is darkest is the shadow's, and the sun lies opposite. The
   estimate is kept only when the shadow side is clearly darker than the sun side
   (``min_shadow_contrast``) over enough crown pixels, else the azimuth stays unknown. It needs
   red, green and blue bands and trees resolved by a few pixels (≤ 2 m pixels).
4. **estimated** azimuth from building shadows (:func:`estimate_sun_azimuth_from_footprints`),
   when building footprints are given and the trees settle nothing (one-band imagery, no
   trees): a building's shadow reaches farthest beyond its walls straight away from the sun.
   It comes after the trees, whose round crowns are free of the buildings' shapes and layout;
5. failing all these, with a before image, the crater stage itself reads the azimuth from the
   shading of the scene's isolated craters (a bowl's wall nearest the sun is its dark one;
   :attr:`changedet.craters.CraterParams.azimuth_from_craters`), and
   :func:`changedet.pipeline.run_pair` records it with the source ``"isolated craters"``.

The elevation is not estimated: a shadow's length depends on the unknown heights of the trees.
Without it the shading test assumes the highest plausible sun
(:attr:`changedet.craters.CraterParams.max_sun_elevation_deg`), or, beyond the tropics, the
highest the sun ever stands at the scene's latitude if that is lower
(:func:`highest_sun_elevation`: 63° at 50° N, on any day; 21° at noon on 15 January).

Examples
--------
>>> from changedet.sun import resolve_sun
>>> resolve_sun(None, given=(160.0, 42.0)).source
'given'
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import warnings
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "Sun",
    "SunParams",
    "estimate_sun_azimuth",
    "estimate_sun_azimuth_from_footprints",
    "highest_sun_elevation",
    "resolve_sun",
    "sun_elevation_at_azimuth",
    "sun_from_metadata",
]

#: The sun's greatest declination, degrees: the latitude of the tropics.
_OBLIQUITY_DEG = 23.44

_AZIMUTH_KEY = re.compile(r"(^|[._])(mean)?_?sun_?az(imuth)?(_?angle)?$", re.IGNORECASE)
_ELEVATION_KEY = re.compile(r"(^|[._])(mean)?_?sun_?el(evation)?(_?angle)?$", re.IGNORECASE)


@dataclass(frozen=True)
class SunParams:
    """How the sun position is found when not given.

    Attributes
    ----------
    read_metadata
        Look for the sun angles in the after image's metadata.
    estimate
        Estimate the azimuth from tree shadows when neither given nor in the metadata.
    min_shadow_contrast
        Least ``1 − dark / lit`` between the ground on the shadow side of the crowns and on
        the sun side: sunlit ground next to a tree is 1.5–3 times as bright as its shadow, so a
        real shadow gives 0.3–0.6; a scene without resolved tree shadows gives about 0.
    min_crown_px
        Fewest crown pixels the estimate rests on.
    window_px, max_windows
        The estimate reads up to ``max_windows`` windows of ``window_px`` pixels, spread over
        the scene (memory does not grow with the scene).
    greenness
        Least excess-green index ``(2G − R − B) / (R + G + B)`` of a crown pixel (bare soil,
        roofs and roads lie below 0.05; leaves 0.08–0.25).
    max_buildings
        With building footprints and no azimuth from the trees: the estimate from building
        shadows reads the ground beside at most this many footprints (the largest).
    azimuth_tolerance_deg
        With the acquisition date and an azimuth but no elevation: how far the azimuth may be
        off when the elevation is bounded by the sun's path on that day
        (:func:`sun_elevation_at_azimuth`). Tree-shadow estimates err up to 11° on the
        synthetic evaluation scenes (median 1.5°).
    """

    read_metadata: bool = True
    estimate: bool = True
    min_shadow_contrast: float = 0.2
    min_crown_px: int = 400
    window_px: int = 1024
    max_windows: int = 9
    greenness: float = 0.08
    azimuth_tolerance_deg: float = 12.0
    max_buildings: int = 400

    def __post_init__(self) -> None:
        if not 0 < self.min_shadow_contrast < 1:
            raise ValueError("SunParams: min_shadow_contrast must lie in (0, 1)")
        if self.window_px < 64 or self.max_windows < 1 or self.min_crown_px < 1:
            raise ValueError("SunParams: window_px >= 64, max_windows >= 1, min_crown_px >= 1")
        if self.max_buildings < 1:
            raise ValueError("SunParams: max_buildings must be at least 1")
        if not 0 <= self.azimuth_tolerance_deg <= 180:
            raise ValueError("SunParams: azimuth_tolerance_deg must lie in [0, 180]")


@dataclass(frozen=True)
class Sun:
    """The sun's position used for the after image, and where it came from.

    Attributes
    ----------
    azimuth_deg, elevation_deg
        Degrees clockwise from north, degrees above the horizon; ``None`` when unknown.
    source
        ``"given"``, ``"metadata"``, ``"tree shadows"`` or ``"building shadows"`` (estimated
        azimuth), ``"isolated craters"`` (the azimuth from the shading of the scene's isolated
        craters, found by the crater stage: ``CraterParams.azimuth_from_craters``) or
        ``"unknown"``.
    detail
        How it was found: the metadata keys read, or the estimate's shadow contrast and crown
        pixels (also when the estimate was rejected, with the reason).
    highest_elevation_deg
        The highest the sun stands at the scene's latitude (:func:`highest_sun_elevation`), on
        the acquisition date when known, else on any day, and with the date and the azimuth
        at that azimuth on that day (:func:`sun_elevation_at_azimuth`, ``detail
        ["elevation_bound"]``): a bound on an unknown elevation; ``None`` when the latitude is
        unknown.
    """

    azimuth_deg: float | None
    elevation_deg: float | None
    source: str
    detail: dict[str, Any]
    highest_elevation_deg: float | None = None

    def elevation_cap(self, general_deg: float) -> float:
        """The highest sun to assume when the elevation is unknown: ``general_deg`` (e.g.
        ``CraterParams.max_sun_elevation_deg``), or lower where the latitude allows no higher.

        Examples
        --------
        >>> Sun(160.0, None, "given", {}, highest_elevation_deg=63.44).elevation_cap(70.0)
        63.44
        """
        if self.highest_elevation_deg is None:
            return float(general_deg)
        return min(float(general_deg), self.highest_elevation_deg)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for the manifest and the report)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for the log and the report.

        Examples
        --------
        >>> Sun(160.0, 42.0, "given", {}).describe()
        'azimuth 160.0°, elevation 42.0° (source: given)'
        """
        if self.azimuth_deg is None:
            why = self.detail.get("reason")
            az = "azimuth unknown" + (f" ({why})" if why else "")
        else:
            az = f"azimuth {self.azimuth_deg:.1f}°"
        if self.elevation_deg is not None:
            el = f"elevation {self.elevation_deg:.1f}°"
        elif (self.highest_elevation_deg or 90.0) < 90.0:
            when = f" on {self.detail['date']}" if "date" in self.detail else ""
            if "elevation_bound" in self.detail:
                when += " at this azimuth"
            el = f"elevation unknown, at most {self.highest_elevation_deg:.1f}° at this latitude{when}"
        else:
            el = "elevation unknown"
        return f"{az}, {el} (source: {self.source})"


def highest_sun_elevation(lat_deg: float, date: _dt.date | None = None) -> float:
    """The highest elevation the sun reaches at a latitude, on a date or on any day (degrees).

    At noon the sun stands ``90 − |lat − δ|`` high, with its declination ``δ`` within ±23.44°:
    overhead once a year in the tropics, never higher than ``90 − (|lat| − 23.44)`` beyond. With
    the date, ``δ ≈ −23.44° cos(360° (day of year + 10) / 365.25)`` (within 1.5°; 2° are added
    so that the bound holds).

    Examples
    --------
    >>> highest_sun_elevation(50.0), highest_sun_elevation(-10.0)
    (63.44, 90.0)
    >>> import datetime
    >>> highest_sun_elevation(50.0, datetime.date(2024, 1, 15))  # a winter noon at 50° N
    20.69
    """
    lat = float(lat_deg)
    bound = 90.0 - max(0.0, abs(lat) - _OBLIQUITY_DEG)
    if date is not None:
        bound = min(bound, 90.0 - abs(lat - _declination(date)) + 2.0)
    return round(bound, 2)


def _declination(date: _dt.date) -> float:
    """The sun's declination on ``date``, degrees (within 1.5°)."""
    day = date.timetuple().tm_yday
    return -_OBLIQUITY_DEG * math.cos(math.radians(360.0 * (day + 10) / 365.25))


def sun_elevation_at_azimuth(
    lat_deg: float, date: _dt.date, azimuth_deg: float, tolerance_deg: float = 12.0
) -> float | None:
    """The highest the sun stands on ``date`` at a latitude while its azimuth lies within
    ``tolerance_deg`` of ``azimuth_deg`` (degrees), or ``None`` if it never stands there.

    On one day the sun follows one path across the sky, so its azimuth fixes its elevation:
    with the date and an azimuth read from shadows, the elevation is known to within what the
    azimuth's error allows. The path is traced hour by hour angle (``sin e = sin φ sin δ + cos φ
    cos δ cos H``), for the declination ``δ`` of :func:`highest_sun_elevation` and 1.5° either
    side of it (that formula's error), and the highest point within the tolerance is returned.

    Examples
    --------
    >>> import datetime
    >>> equinox = datetime.date(2024, 3, 20)
    >>> # 45° N at the equinox, 9:00 solar time: 30° high, at azimuth 125.3°
    >>> round(sun_elevation_at_azimuth(45.0, equinox, 125.3, tolerance_deg=0.5))
    31
    >>> sun_elevation_at_azimuth(45.0, equinox, 0.0) is None  # never in the north there
    True
    """
    lat = math.radians(float(lat_deg))
    h = np.radians(np.arange(-180.0, 180.0, 0.05))
    best = None
    for decl_deg in (-1.5, 0.0, 1.5):
        d = math.radians(_declination(date) + decl_deg)
        east = -math.cos(d) * np.sin(h)
        north = math.sin(d) * math.cos(lat) - math.cos(d) * math.sin(lat) * np.cos(h)
        up = math.sin(d) * math.sin(lat) + math.cos(d) * math.cos(lat) * np.cos(h)
        az = np.degrees(np.arctan2(east, north)) % 360.0
        off = np.abs((az - float(azimuth_deg) + 180.0) % 360.0 - 180.0)
        ok = (off <= tolerance_deg) & (up > 0)
        if ok.any():
            el = float(np.degrees(np.arcsin(up[ok].max())))
            best = el if best is None else max(best, el)
    return None if best is None else round(best, 2)


#: Metadata tags that hold an image's acquisition date (not TIFFTAG_DATETIME: often the date
#: the file was made, and a wrong date would give a wrong bound on the sun).
ACQUISITION_DATE_TAGS = ("ACQUISITION_DATE", "ACQUISITIONDATETIME", "DATE_ACQUIRED")


def parse_date(text: str | None) -> _dt.date | None:
    """The date at the start of ``text`` (``2024-01-15``, ``2024:01:15 10:12``, ``20240115``...),
    or ``None``.

    Examples
    --------
    >>> parse_date("2024:01:15 10:12:00"), parse_date("unknown")
    (datetime.date(2024, 1, 15), None)
    """
    m = re.match(r"\s*(\d{4})[-:/]?(\d{2})[-:/]?(\d{2})", str(text or ""))
    if not m:
        return None
    try:
        return _dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def acquisition_date(attrs: dict[str, Any]) -> _dt.date | None:
    """The acquisition date in a raster's tags (:data:`ACQUISITION_DATE_TAGS`), or ``None``."""
    upper = {str(k).upper(): v for k, v in (attrs or {}).items()}
    for name in ACQUISITION_DATE_TAGS:
        date = parse_date(upper.get(name))
        if date is not None:
            return date
    return None


def _latitude(image: xr.DataArray) -> float | None:
    """Latitude of the image's centre, or ``None`` without a CRS."""
    crs = image.rio.crs if hasattr(image, "rio") else None
    if crs is None:
        return None
    from pyproj import Transformer

    xs = np.asarray(image[image.dims[-1]], np.float64)
    ys = np.asarray(image[image.dims[-2]], np.float64)
    to_geo = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    _, lat = to_geo.transform(float(xs[xs.size // 2]), float(ys[ys.size // 2]))
    return float(lat) if np.isfinite(lat) else None


def _number(text: str) -> float | None:
    m = re.search(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?", str(text))
    return float(m.group(0)) if m else None


def sun_from_metadata(path: str | PathLike[str]) -> tuple[float | None, float | None, list[str]]:
    """Sun azimuth and elevation recorded in a raster's metadata, in any GDAL domain.

    Parameters
    ----------
    path
        Raster file (GeoTIFF, NITF, JPEG 2000...); side-car metadata GDAL knows (a Maxar
        ``.IMD`` or ``.XML`` beside the image) is read too, and JSON beside it
        (``<stem>.json`` or ``<stem>_metadata.json``: Planet's ``sun_azimuth`` /
        ``sun_elevation``).

    Returns
    -------
    tuple
        ``(azimuth_deg, elevation_deg, keys)``: each ``None`` when not recorded (or out of
        range), and the metadata keys they came from.

    Examples
    --------
    >>> sun_from_metadata("scene.tif")  # doctest: +SKIP
    (160.0, 42.0, ['SUN_AZIMUTH', 'SUN_ELEVATION'])
    """
    import rasterio

    found: dict[str, tuple[float, str]] = {}

    def look(items: Any) -> None:
        for key, value in items:
            name = str(key).rsplit(".", 1)[-1]
            v = _number(value) if isinstance(value, (str, int, float)) else None
            if v is None:
                continue
            if "az" not in found and _AZIMUTH_KEY.search(name) and 0 <= v <= 360:
                found["az"] = (v % 360, str(key))
            elif "el" not in found and _ELEVATION_KEY.search(name) and 0 < v <= 90:
                found["el"] = (v, str(key))

    with rasterio.open(path) as src:
        for ns in [None, *[d for d in src.tag_namespaces() if d]]:
            look(sorted((src.tags(ns=ns) if ns else src.tags()).items()))
    for sidecar in _json_sidecars(Path(path)):
        look(_flatten(sidecar))
    keys = [found[k][1] for k in ("az", "el") if k in found]
    az = found["az"][0] if "az" in found else None
    el = found["el"][0] if "el" in found else None
    return az, el, keys


def _json_sidecars(path: Path) -> list[Any]:
    """JSON metadata delivered beside an image (``<stem>.json``, ``<stem>_metadata.json``, as
    Planet does), parsed; unreadable or absent ones are skipped."""
    import json

    out = []
    for candidate in (path.with_suffix(".json"), path.with_name(path.stem + "_metadata.json")):
        if candidate.is_file() and candidate.stat().st_size < 10_000_000:
            try:
                out.append(json.loads(candidate.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
    return out


def _flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` pairs of the leaves of nested JSON."""
    if isinstance(node, dict):
        return [kv for k, v in sorted(node.items()) for kv in _flatten(v, f"{prefix}{k}.")]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in _flatten(v, f"{prefix}{i}.")]
    return [(prefix[:-1], node)]


def _windows(ny: int, nx: int, size: int, n: int) -> list[tuple[int, int, int, int]]:
    """Up to ``n`` windows of ``size`` (clipped to the scene) on an even grid over the scene."""
    k = max(1, math.isqrt(n))
    rows = np.unique(np.linspace(0, max(ny - size, 0), k).round().astype(int))
    cols = np.unique(np.linspace(0, max(nx - size, 0), k).round().astype(int))
    return [(r, min(r + size, ny), c, min(c + size, nx)) for r in rows for c in cols]


def _crowns(rgb: np.ndarray, greenness: float) -> np.ndarray:
    """Tree-crown mask: green pixels, specks removed (a crown is a few pixels across)."""
    from scipy import ndimage as ndi

    r, g, b = (np.asarray(x, np.float64) for x in rgb)
    total = r + g + b
    with np.errstate(invalid="ignore", divide="ignore"):
        exg = np.where(total > 0, (2 * g - r - b) / total, np.nan)
    mask = np.nan_to_num(exg, nan=-1.0) > greenness
    return ndi.binary_opening(mask, structure=np.ones((2, 2), bool))


def _lowest_direction(profile: np.ndarray, k: int) -> tuple[int, float, np.ndarray]:
    """The lowest direction of a profile every 5° from north: its index, its angle refined by
    a parabola through it and its neighbours, and the profile smoothed (circularly) over
    ``±5 k`` degrees, where the lowest is found.

    Examples
    --------
    >>> profile = np.cos(np.radians(np.arange(0.0, 360.0, 5.0) - 92.0))
    >>> i, angle, _ = _lowest_direction(profile, 2)
    >>> i, round(angle, 1)
    (54, 272.0)
    """
    padded = np.r_[profile[-k:], profile, profile[:k]]
    smooth = np.convolve(padded, np.ones(2 * k + 1) / (2 * k + 1), "valid")
    j = int(np.argmin(smooth))
    a, b, c = smooth[j - 1], smooth[j], smooth[(j + 1) % smooth.size]
    denom = a - 2 * b + c
    frac = 0.5 * (a - c) / denom if denom > 0 else 0.0
    return j, (5.0 * j + 5.0 * float(np.clip(frac, -1, 1))) % 360, smooth


def estimate_sun_azimuth(
    image: xr.DataArray,
    *,
    rgb_bands: tuple[int, int, int] = (0, 1, 2),
    params: SunParams | None = None,
) -> tuple[float | None, dict[str, Any]]:
    """Sun azimuth of an RGB image from the shadows tree crowns cast (see the module notes).

    Parameters
    ----------
    image
        ``(band, y, x)`` raster with x/y coordinates in metres (a projected CRS), lazy or in
        memory; only ``params.max_windows`` windows are read.
    rgb_bands
        Indices of the red, green and blue bands.
    params
        :class:`SunParams`; defaults when omitted.

    Returns
    -------
    tuple
        ``(azimuth_deg, detail)``: the azimuth in degrees clockwise from north, or ``None``
        when the shadows do not settle it; ``detail`` holds ``shadow_contrast``, ``crown_px``,
        ``windows`` and, when rejected, ``reason``.

    Examples
    --------
    >>> from changedet.synthetic import SceneSettings, generate_site  # doctest: +SKIP
    >>> az, detail = estimate_sun_azimuth(after)  # doctest: +SKIP
    >>> round(az), round(detail["shadow_contrast"], 2)  # doctest: +SKIP
    (158, 0.51)
    """
    p = params or SunParams()
    detail: dict[str, Any] = {"method": "tree shadows"}
    if image.ndim != 3 or image.sizes[image.dims[0]] < 3 or max(rgb_bands) >= image.shape[0]:
        detail["reason"] = "needs red, green and blue bands"
        return None, detail
    crs = image.rio.crs if hasattr(image, "rio") else None
    if crs is not None and crs.is_geographic:
        detail["reason"] = "needs a projected CRS (distances in metres)"
        return None, detail
    xs = np.asarray(image[image.dims[2]], np.float64)
    ys = np.asarray(image[image.dims[1]], np.float64)
    if xs.size < 2 or ys.size < 2:
        detail["reason"] = "image too small"
        return None, detail
    gsd_x, gsd_y = xs[1] - xs[0], ys[1] - ys[0]
    # columns grow eastward when gsd_x > 0; rows grow southward when gsd_y < 0
    lengths_px = [m / abs(gsd_x) for m in (1.0, 2.0, 4.0, 8.0) if m / abs(gsd_x) >= 1.0]
    if len(lengths_px) < 2:
        detail["reason"] = f"pixels of {abs(gsd_x):g} m do not resolve tree shadows"
        return None, detail
    thetas = np.arange(0.0, 360.0, 5.0)
    sums = np.zeros((len(lengths_px), thetas.size))
    weights = np.zeros_like(sums)
    crown_px = 0
    ny, nx = image.shape[1:]
    wins = _windows(ny, nx, p.window_px, p.max_windows)
    for r0, r1, c0, c1 in wins:
        block = np.asarray(image[list(rgb_bands), r0:r1, c0:c1].values, np.float64)
        lum = block.mean(axis=0)
        valid = np.isfinite(lum)
        if valid.sum() < 64:
            continue
        crowns = _crowns(block, p.greenness) & valid
        n_crown = int(crowns.sum())
        if n_crown < 16:
            continue
        crown_px += n_crown
        lum = lum / np.nanmedian(lum[valid])
        h, w = lum.shape
        for i, length in enumerate(lengths_px):
            for j, th in enumerate(np.radians(thetas)):
                dc = round(length * math.sin(th) * math.copysign(1, gsd_x))
                dr = round(-length * math.cos(th) * math.copysign(1, -gsd_y))
                # crown pixels moved by (dr, dc): the ground they land on
                src = crowns[max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)]
                dst = (slice(max(0, dr), h - max(0, -dr)), slice(max(0, dc), w - max(0, -dc)))
                land = src & ~crowns[dst] & valid[dst]
                vals = lum[dst][land]
                if vals.size >= 16:
                    med = float(np.median(vals))
                    sums[i, j] += med * vals.size
                    weights[i, j] += vals.size
    detail.update(crown_px=crown_px, windows=len(wins))
    if crown_px < p.min_crown_px or (weights == 0).any():
        detail["reason"] = f"too few tree crowns ({crown_px} px, {p.min_crown_px} needed)"
        return None, detail
    prof = sums / weights  # median ground brightness by (distance, direction)
    z = (prof - prof.mean(axis=1, keepdims=True)) / (prof.std(axis=1, keepdims=True) + 1e-12)
    # the darkest direction, smoothed over +-10 degrees
    j, dark_dir, _ = _lowest_direction(z.mean(axis=0), 2)
    opposite = (j + thetas.size // 2) % thetas.size
    contrast = float(np.median(1 - prof[:, j] / prof[:, opposite]))
    detail["shadow_contrast"] = round(contrast, 4)
    if contrast < p.min_shadow_contrast:
        detail["reason"] = (
            f"tree shadows unclear (contrast {contrast:.2f} < {p.min_shadow_contrast:g})"
        )
        return None, detail
    return round((dark_dir + 180.0) % 360, 1), detail


#: Ground darker than this share of a building's open ground is in its shadow (sunlit ground
#: is 1.5-3 times as bright as shadow).
SHADOW_SHARE = 0.7


def estimate_sun_azimuth_from_footprints(
    image: xr.DataArray,
    footprints: Any,
    *,
    params: SunParams | None = None,
) -> tuple[float | None, dict[str, Any]]:
    """Sun azimuth from the shadows buildings cast beside their footprints.

    A building casts its shadow away from the sun, and the shadow reaches farthest beyond the
    walls straight along the shadow's direction. For each of up to ``params.max_buildings``
    footprints (the largest), rays from its centroid every 5° are followed out from the wall
    (0.5–12 m, every 0.5 m), and the shadow's extent along each is the run of ground darker
    than ``SHADOW_SHARE`` of the building's open ground (the median of its rays' outer 3 m:
    sunlit ground is 1.5–3 times as bright as shadow). Each building's extents, as shares of its
    longest, are combined by their median over the buildings; smoothed over ±15° and refined
    by a parabola, they peak in the shadows' direction, and the sun lies opposite. Unlike the
    darkness of a strip along each wall, which is full on both walls a low sun shades, the
    extent keeps the direction on a street grid. Kept when the peak stands at least
    ``params.min_shadow_contrast`` above the opposite direction over at least 20 buildings.

    Parameters
    ----------
    image
        ``(band, y, x)`` raster (its bands averaged) in a projected CRS, lazy or in memory;
        only the pixels sampled are read.
    footprints
        Building footprint polygons (GeoDataFrame or GeoSeries) with a CRS.
    params
        :class:`SunParams`; defaults when omitted.

    Returns
    -------
    tuple
        ``(azimuth_deg, detail)`` as :func:`estimate_sun_azimuth`; ``detail`` holds
        ``shadow_contrast``, ``buildings`` and, when rejected, ``reason``.
    """
    import shapely

    p = params or SunParams()
    detail: dict[str, Any] = {"method": "building shadows"}
    crs = image.rio.crs if hasattr(image, "rio") else None
    if crs is None or crs.is_geographic:
        detail["reason"] = "needs a projected CRS (distances in metres)"
        return None, detail
    geoms = footprints.to_crs(crs).geometry.values if footprints.crs else None
    if geoms is None:
        detail["reason"] = "footprints without a CRS"
        return None, detail
    geoms = shapely.get_parts(geoms[shapely.is_valid(geoms) & ~shapely.is_empty(geoms)])
    geoms = geoms[shapely.get_type_id(geoms) == 3]  # polygons (multipolygons' parts)
    geoms = geoms[np.argsort(-shapely.area(geoms), kind="stable")[: p.max_buildings]]
    th = np.radians(np.arange(0.0, 360.0, 5.0))
    east, north = np.sin(th), np.cos(th)
    steps = np.arange(0.5, 12.0, 0.5)  # metres beyond the wall
    inv = ~image.rio.transform()
    ny, nx = image.shape[1:]
    rows_all, cols_all = [], []
    for g in geoms:
        c = shapely.centroid(g)
        reach = 2 * math.sqrt(shapely.area(g)) + 10.0
        rays = shapely.linestrings(
            np.stack(
                [
                    np.column_stack([np.full(th.size, c.x), np.full(th.size, c.y)]),
                    np.column_stack([c.x + reach * east, c.y + reach * north]),
                ],
                axis=1,
            )
        )
        crossings = shapely.intersection(rays, shapely.get_exterior_ring(g))
        wall = np.full(th.size, np.nan)
        for j, hit in enumerate(crossings):
            pts = shapely.get_coordinates(hit)
            if len(pts):  # the farthest crossing: beyond every wall along the ray
                wall[j] = np.hypot(pts[:, 0] - c.x, pts[:, 1] - c.y).max()
        dist = wall[:, None] + steps[None, :]
        col, row = inv * (c.x + dist * east[:, None], c.y + dist * north[:, None])
        rows_all.append(np.floor(row))
        cols_all.append(np.floor(col))
    if not rows_all:
        detail["reason"] = "no building footprint"
        return None, detail
    rows = np.stack(rows_all)  # (building, direction, step)
    cols = np.stack(cols_all)
    inside = np.isfinite(rows) & (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    r_ok, c_ok = rows[inside].astype(np.int64), cols[inside].astype(np.int64)
    lum = np.full(rows.shape, np.nan)
    data = image.data
    if isinstance(data, np.ndarray):
        picked = data[:, r_ok, c_ok]
    else:  # dask: read only the chunks that hold sampled pixels, band by band
        picked = np.stack([data[b].vindex[r_ok, c_ok].compute() for b in range(data.shape[0])])
    lum[inside] = np.asarray(picked, np.float64).mean(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rays with no valid pixel
        open_ground = np.nanmedian(lum[:, :, -6:], axis=(1, 2))  # (building,)
    # the run of shadowed ground from the wall out, per building and direction
    dark = lum < SHADOW_SHARE * open_ground[:, None, None]
    run = np.argmin(np.concatenate([dark, np.zeros((*dark.shape[:2], 1), bool)], axis=2), axis=2)
    longest = run.max(axis=1)
    full = np.isfinite(lum[:, :, 0]).mean(axis=1) >= 0.8
    keep = full & (open_ground > 0) & (longest > 0)
    n = int(keep.sum())
    detail["buildings"] = n
    if n < 20:
        detail["reason"] = f"{n} footprints with a shadow and ground all round (20 needed)"
        return None, detail
    prof = np.median(run[keep] / longest[keep, None], axis=0)
    # the direction of the longest shadows, smoothed over +-15 degrees
    i, shadow_deg, smooth = _lowest_direction(-prof, 3)
    contrast = float(smooth[(i + th.size // 2) % th.size] - smooth[i])
    detail["shadow_contrast"] = round(contrast, 3)
    if contrast < p.min_shadow_contrast:
        detail["reason"] = f"shadow contrast {contrast:.2f} below {p.min_shadow_contrast}"
        return None, detail
    return round((shadow_deg + 180.0) % 360.0, 1), detail


def resolve_sun(
    after: str | PathLike[str] | None,
    *,
    given: tuple[float | None, float | None] = (None, None),
    image: xr.DataArray | None = None,
    rgb_bands: tuple[int, int, int] = (0, 1, 2),
    params: SunParams | None = None,
    date: _dt.date | None = None,
    footprints: Any = None,
) -> Sun:
    """The sun's position for the after image: given, else from its metadata, else estimated.

    Parameters
    ----------
    after
        Path of the after image (its metadata is read), or ``None``.
    given
        ``(azimuth_deg, elevation_deg)`` from the caller; each may be ``None``. A given value
        is never replaced; a missing one is looked up.
    image
        The after image as a ``(band, y, x)`` raster with its CRS, for the estimate and the
        latitude (:attr:`Sun.highest_elevation_deg`); ``None`` skips both.
    rgb_bands
        Red, green and blue band indices of ``image``.
    params
        :class:`SunParams`; defaults when omitted.
    footprints
        Building footprints (GeoDataFrame or GeoSeries), or ``None``: when the trees settle
        no azimuth, it is estimated from the buildings' shadows
        (:func:`estimate_sun_azimuth_from_footprints`).
    date
        The after image's acquisition date, when known: it lowers the bound on an unknown
        elevation to that day's noon sun (:func:`highest_sun_elevation`) and, with an azimuth,
        to the highest the sun stands that day within ``params.azimuth_tolerance_deg`` of it
        (:func:`sun_elevation_at_azimuth`; a morning or afternoon sun stands lower than noon's).

    Returns
    -------
    Sun

    Examples
    --------
    >>> resolve_sun(None, given=(205.0, None)).describe()
    'azimuth 205.0°, elevation unknown (source: given)'
    """
    p = params or SunParams()
    az, el = given
    detail: dict[str, Any] = {}
    source = "given" if az is not None else "unknown"
    if (az is None or el is None) and p.read_metadata and after is not None:
        m_az, m_el, keys = sun_from_metadata(after)
        if keys:
            detail["metadata_keys"] = keys
        if az is None and m_az is not None:
            az, source = m_az, "metadata"
        if el is None and m_el is not None:
            el = m_el
            if source == "given":
                source = "given; elevation from metadata"
    if az is None and p.estimate and image is not None:
        az, est = estimate_sun_azimuth(image, rgb_bands=rgb_bands, params=p)
        detail.update(est)
        if az is not None:
            source = "tree shadows"
    if az is None and p.estimate and image is not None and footprints is not None:
        trees = detail.get("reason")
        az, est = estimate_sun_azimuth_from_footprints(image, footprints, params=p)
        if az is not None:
            detail = {**{k: v for k, v in detail.items() if k != "reason"}, **est}
            if trees:
                detail["trees"] = trees
            source = "building shadows"
        else:
            detail["buildings_reason"] = est.get("reason")
    if az is None and "reason" not in detail:
        detail["reason"] = "not given, not in the metadata" + (
            "" if p.estimate else ", estimate off"
        )
    lat = _latitude(image) if image is not None else None
    highest = None if lat is None else highest_sun_elevation(lat, date)
    if date is not None:
        detail["date"] = date.isoformat()
        if lat is not None and az is not None and el is None:
            # that day's path of the sun: at this azimuth it stands no higher than this
            on_path = sun_elevation_at_azimuth(lat, date, az, p.azimuth_tolerance_deg)
            if on_path is None:
                detail["azimuth_off_the_path"] = True  # date or azimuth wrong: noon bound
            elif highest is not None and on_path < highest:
                highest = on_path
                detail["elevation_bound"] = "the sun's path on the date, at this azimuth"
    return Sun(
        azimuth_deg=None if az is None else float(az),
        elevation_deg=None if el is None else float(el),
        source=source,
        detail=detail,
        highest_elevation_deg=highest,
    )
