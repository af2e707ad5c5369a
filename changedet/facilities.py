"""Facilities: read and validate the list, and score each facility against the detections.

A facility is a named site (hospital, school, market, water plant...) given as a point or a
footprint polygon, in GeoJSON, GeoPackage or CSV (``lon``, ``lat`` in degrees, EPSG:4326).
Columns ``id``, ``name`` and ``type`` are kept; ``id`` is made (``F1``, ``F2``...) when absent,
``name`` defaults to the id and ``type`` to ``unknown``.

Per facility, in the scene CRS and in metres:

* ``craters_within_<r>m`` — new craters whose centre lies within ``r`` of the facility (distance
  to the point, or to the footprint's edge; 0 inside it), for each ring ``r`` (default 50, 100,
  250 m);
* ``nearest_crater_m`` and ``nearest_crater_id``; ``largest_crater_m`` — the largest diameter
  within the outermost ring;
* ``damaged_share`` and ``damage_class`` — of the facility's footprint (a polygon facility), or
  of the building footprint that holds a point facility; empty when neither is known;
* ``in_scene`` — whether the facility lies in the scene's valid extent; ``assessable`` —
  whether its footprint (or point) is on assessable pixels.

Only craters flagged ``new`` (or unverified, in single-image mode) count; craters already in
the before image are not evidence of this event.

Examples
--------
>>> import geopandas as gpd
>>> from shapely.geometry import Point, box
>>> from changedet.facilities import score_facilities
>>> fac = gpd.GeoDataFrame({"id": ["H1"], "name": ["Hospital"], "type": ["hospital"]},
...                        geometry=[box(0, 0, 20, 20)], crs="EPSG:32637")
>>> craters = gpd.GeoDataFrame({"id": [1, 2], "diameter_m": [6.0, 12.0], "new": [True, True]},
...                            geometry=[Point(30, 10), Point(120, 10)], crs="EPSG:32637")
>>> row = score_facilities(fac, craters, scene_extent=box(-500, -500, 500, 500)).iloc[0]
>>> int(row.craters_within_50m), int(row.craters_within_250m), float(row.nearest_crater_m)
(1, 2, 10.0)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from shapely.geometry.base import BaseGeometry

from changedet.craters import new_craters
from changedet.errors import FacilityError, MissingCRSError

PathLike = str | os.PathLike[str]

#: Default distance rings, metres.
RINGS_M = (50.0, 100.0, 250.0)


def read_facilities(path: PathLike) -> gpd.GeoDataFrame:
    """Read and validate a facility list.

    Parameters
    ----------
    path
        GeoJSON, GeoPackage (first layer), shapefile, or CSV with ``lon`` and ``lat`` columns
        (degrees, EPSG:4326) and optionally ``id``, ``name``, ``type``.

    Returns
    -------
    geopandas.GeoDataFrame
        ``id`` (str, unique), ``name``, ``type``, geometry (points or polygons), in the file's CRS.

    Raises
    ------
    FacilityError
        Empty list, missing ``lon``/``lat`` columns, bad or empty geometry, coordinates out of
        range, duplicate ids.
    UnreadableFileError, MissingCRSError
        When the file cannot be read or has no CRS.
    """
    from changedet import io as cio

    path = Path(path)
    if path.suffix.lower() == ".csv":
        head = pd.read_csv(path, nrows=0) if path.is_file() else None
        if head is not None:
            cols = {c.lower() for c in head.columns}
            missing = [c for c in ("lon", "lat") if c not in cols]
            if missing and "geometry" not in cols:
                raise FacilityError(
                    path,
                    f"missing column(s) {', '.join(missing)}",
                    "A facility CSV needs lon and lat columns in degrees (EPSG:4326).",
                )
    gdf = cio.read_vector(path)
    return validate_facilities(gdf, source=path)


def validate_facilities(
    gdf: gpd.GeoDataFrame, *, source: PathLike | str = "facilities"
) -> gpd.GeoDataFrame:
    """Check a facility GeoDataFrame and fill ``id``, ``name``, ``type`` (see :func:`read_facilities`)."""
    if gdf.crs is None:
        raise MissingCRSError(source)
    if len(gdf) == 0:
        raise FacilityError(source, "holds no facility", "List at least one facility.")
    gdf = gdf.copy()
    bad = gdf.geometry.isna() | gdf.geometry.is_empty
    if bad.any():
        rows = ", ".join(str(i + 1) for i in np.flatnonzero(bad.to_numpy())[:5])
        raise FacilityError(
            source, f"facility row(s) {rows} have no geometry", "Give each a point or polygon."
        )
    kinds = set(gdf.geometry.geom_type)
    if not kinds <= {"Point", "Polygon", "MultiPolygon"}:
        raise FacilityError(
            source, f"unsupported geometry type(s) {sorted(kinds)}", "Use points or polygons."
        )
    if gdf.crs.is_geographic:
        point = gdf.geometry.representative_point()
        x, y = point.x, point.y
        out = (x.abs() > 180) | (y.abs() > 90) | ~np.isfinite(x) | ~np.isfinite(y)
        if out.any():
            rows = ", ".join(str(i + 1) for i in np.flatnonzero(out.to_numpy())[:5])
            raise FacilityError(
                source,
                f"facility row(s) {rows} have coordinates outside lon -180..180 / lat -90..90",
                "Check that lon and lat are not swapped or in metres.",
            )
    invalid = ~gdf.geometry.is_valid
    if invalid.any():
        gdf.loc[invalid, "geometry"] = gdf.geometry[invalid].make_valid()
    if "id" not in gdf.columns:
        gdf["id"] = [f"F{i + 1}" for i in range(len(gdf))]
    gdf["id"] = gdf["id"].astype(str)
    dup = gdf["id"][gdf["id"].duplicated()]
    if len(dup):
        raise FacilityError(
            source,
            f"duplicate facility id(s) {', '.join(sorted(set(dup))[:5])}",
            "Make ids unique.",
        )
    if "name" not in gdf.columns:
        gdf["name"] = gdf["id"]
    gdf["name"] = gdf["name"].fillna(gdf["id"]).astype(str)
    if "type" not in gdf.columns:
        gdf["type"] = "unknown"
    gdf["type"] = gdf["type"].fillna("unknown").astype(str)
    return gdf.reset_index(drop=True)


def score_facilities(
    facilities: gpd.GeoDataFrame,
    craters: gpd.GeoDataFrame | None,
    damage: gpd.GeoDataFrame | None = None,
    *,
    scene_extent: BaseGeometry,
    rings_m: Sequence[float] = RINGS_M,
    score: Any = None,
    threshold: float | None = None,
    not_assessable: Any = None,
    damage_params: Any = None,
    before: Any = None,
    after: Any = None,
    value_range: float | None = None,
    craters_searched: bool = True,
) -> gpd.GeoDataFrame:
    """One row per facility: craters in each ring, nearest and largest crater, damage.

    Parameters
    ----------
    facilities
        Validated facilities (:func:`read_facilities`), any CRS.
    craters
        Crater detections (:func:`changedet.craters.detect_craters`), in the scene CRS.
    damage
        Per-footprint damage (:func:`changedet.damage.assess_damage`), used for point facilities
        (the footprint that contains the point).
    scene_extent
        The scene's valid extent, a polygon in the scene CRS (the craters' CRS).
    rings_m
        Distance rings in metres.
    score, threshold, not_assessable, damage_params
        The change score map, its threshold, the not-assessable mask and
        :class:`~changedet.damage.DamageParams`: when ``score`` is given, polygon facilities get
        their own damaged share from the pixels of their footprint.
    before, after
        The co-registered, normalised pair: when given, a footprint's damage is judged on
        image evidence as in :func:`changedet.damage.assess_damage`.
    value_range
        Scale of the data for that evidence (e.g. 255); estimated from the whole scene as
        :func:`changedet.damage.assess_damage` does when omitted. Pass the value the damage
        stage used so that both judge pixels alike.
    craters_searched
        ``False`` when no crater could be searched (:func:`changedet.craters.not_searched`):
        the ring counts are then missing (``<NA>``, an empty cell in the CSV), not 0, so that
        "not looked for" never reads as "none found".

    Returns
    -------
    geopandas.GeoDataFrame
        In the scene CRS, columns as in the module docstring.

    Raises
    ------
    FacilityError
        When no facility lies in the scene.
    """
    crs = craters.crs if craters is not None and craters.crs is not None else None
    if crs is None and damage is not None:
        crs = damage.crs
    if crs is None:
        raise MissingCRSError("craters", "Pass the detections with their CRS.")
    rings = sorted(float(r) for r in rings_m)
    if not rings or rings[0] <= 0:
        raise ValueError("rings_m must be positive distances in metres")
    fac = validate_facilities(facilities).to_crs(crs)
    in_scene = fac.geometry.intersects(scene_extent).to_numpy()
    if not in_scene.any():
        raise FacilityError(
            "facilities",
            "no facility lies inside the scene",
            "Check that the facility list and the images cover the same place.",
        )
    new = new_craters(craters)
    rows: dict[str, list[Any]] = {f"craters_within_{r:g}m": [] for r in rings}
    nearest, nearest_id, largest = [], [], []
    for geom in fac.geometry:
        if new is None or len(new) == 0:
            d = np.array([])
        else:
            d = new.geometry.distance(geom).to_numpy()
        for r in rings:
            rows[f"craters_within_{r:g}m"].append(int((d <= r).sum()) if craters_searched else None)
        if len(d):
            i = int(np.argmin(d))
            nearest.append(round(float(d[i]), 2))
            nearest_id.append(str(new["id"].iloc[i]) if "id" in new.columns else str(i))
            within = d <= rings[-1]
            largest.append(
                round(float(new["diameter_m"].to_numpy()[within].max()), 2)
                if within.any()
                else np.nan
            )
        else:
            nearest.append(np.nan)
            nearest_id.append(None)
            largest.append(np.nan)
    out = pd.DataFrame(fac[["id", "name", "type"]])
    out["in_scene"] = in_scene
    for k, v in rows.items():
        out[k] = pd.array(v, dtype="Int64") if not craters_searched else v
    out["nearest_crater_m"] = nearest
    out["nearest_crater_id"] = nearest_id
    out["largest_crater_m"] = largest
    share, klass, assessable = _facility_damage(
        fac, damage, score, threshold, not_assessable, damage_params, before, after, value_range
    )
    out["damaged_share"] = share
    out["damage_class"] = klass
    out["assessable"] = assessable & in_scene
    out.loc[~in_scene, "damage_class"] = "outside scene"
    return gpd.GeoDataFrame(out, geometry=fac.geometry.to_numpy(), crs=crs)


def _facility_damage(
    fac: gpd.GeoDataFrame,
    damage: gpd.GeoDataFrame | None,
    score: Any,
    threshold: float | None,
    not_assessable: Any,
    params: Any,
    before: Any = None,
    after: Any = None,
    value_range: float | None = None,
) -> tuple[list[float], list[str | None], np.ndarray]:
    n = len(fac)
    share: list[float] = [np.nan] * n
    klass: list[str | None] = [None] * n
    assessable = np.ones(n, bool)
    polys = fac.geometry.geom_type.isin(["Polygon", "MultiPolygon"]).to_numpy()
    if score is not None and threshold is not None and polys.any():
        res = _polygon_damage(
            fac[polys], score, threshold, not_assessable, params, before, after, value_range
        )
        for i, (_, r) in zip(np.flatnonzero(polys), res.iterrows(), strict=True):
            share[i] = float(r["damaged_share"])
            klass[i] = str(r["damage_class"])
            assessable[i] = r["damage_class"] != "not assessable"
    if damage is not None and len(damage):
        dmg = damage.to_crs(fac.crs)
        for i, geom in enumerate(fac.geometry):
            if klass[i] is not None:
                continue
            hit = dmg[
                dmg.geometry.contains(geom) | (dmg.geometry.intersects(geom) if polys[i] else False)
            ]
            if len(hit):
                best = hit.iloc[int(np.argmax(hit.geometry.intersection(geom.buffer(0.01)).area))]
                share[i] = float(best.get("damaged_share", np.nan))
                klass[i] = str(best["damage_class"])
                assessable[i] = klass[i] != "not assessable"
    if not_assessable is not None and not polys.all():
        points = np.flatnonzero(~polys)
        for i, value in zip(
            points, _point_values(not_assessable, fac.geometry[points]), strict=True
        ):
            assessable[i] = assessable[i] and not value
    return share, klass, assessable


def _point_values(mask: Any, points: gpd.GeoSeries) -> np.ndarray:
    """The boolean ``(y, x)`` mask at the pixels nearest to the points, read in one pass
    (True where it cannot be read: no such coordinates)."""
    import xarray as xr

    xs = xr.DataArray(points.x.to_numpy(), dims="point")
    ys = xr.DataArray(points.y.to_numpy(), dims="point")
    try:
        return np.asarray(mask.sel(x=xs, y=ys, method="nearest").values, bool)
    except (KeyError, ValueError):
        return np.ones(len(points), bool)


def _polygon_damage(
    polys: gpd.GeoDataFrame,
    score: Any,
    threshold: float,
    not_assessable: Any,
    params: Any,
    before: Any,
    after: Any,
    value_range: float | None,
) -> gpd.GeoDataFrame:
    """:func:`changedet.damage.assess_damage` of the facility polygons, one row each in order.

    With the image pair, the evidence is computed only in windows round the facilities (each
    the facilities' bounding box plus the evidence's halo, so every pixel inside a facility
    gets the value it has in the whole scene), not over the whole scene again. Facilities
    whose windows overlap are assessed together, in their order, so that overlapping
    polygons share pixels as they do in one call over the scene. All windows are computed in
    one Dask pass: a chunk that several windows need (the not-assessable mask, computed from
    whole chunks of both images) is read and computed once, not once per facility.
    """
    from changedet.change import gsd_of
    from changedet.damage import (
        DamageParams,
        assess_damage,
        assess_damage_windows,
        evidence_halo_px,
    )

    if before is None or after is None:
        return assess_damage(
            score, polys, threshold=threshold, not_assessable=not_assessable, params=params
        )
    params = params or DamageParams()
    if value_range is None:
        from changedet.normalize import sample_pixels

        b, _ = sample_pixels(before, after, 100_000)
        value_range = float(np.percentile(b, 99.9)) if len(b) else 1.0
    halo = evidence_halo_px(params, gsd_of(before))
    transform = score.rio.transform()
    ny, nx = score.sizes["y"], score.sizes["x"]
    inverse = ~transform
    pad = halo + 2
    windows = []
    for geom in polys.to_crs(score.rio.crs).geometry:
        x0, y0, x1, y1 = geom.bounds
        cols, rows = zip(*(inverse * (x, y) for x, y in ((x0, y0), (x1, y1))), strict=True)
        windows.append(
            [
                max(0, int(np.floor(min(rows))) - pad),
                min(ny, int(np.ceil(max(rows))) + pad),
                max(0, int(np.floor(min(cols))) - pad),
                min(nx, int(np.ceil(max(cols))) + pad),
            ]
        )
    groups = _overlapping_groups(windows)
    selections = []
    for members in groups:
        r0 = min(windows[k][0] for k in members)
        r1 = max(windows[k][1] for k in members)
        c0 = min(windows[k][2] for k in members)
        c1 = max(windows[k][3] for k in members)
        if r0 >= r1 or c0 >= c1:  # outside the raster: any window says "no pixel" alike
            win = {"y": slice(0, min(ny, 2 * pad)), "x": slice(0, min(nx, 2 * pad))}
        else:
            win = {"y": slice(r0, r1), "x": slice(c0, c1)}
        selections.append((win, polys.iloc[members]))
    tables = assess_damage_windows(
        score,
        selections,
        threshold=threshold,
        not_assessable=not_assessable,
        params=params,
        before=before,
        after=after,
        value_range=value_range,
    )
    rows_out: list[Any] = [None] * len(polys)
    for members, res in zip(groups, tables, strict=True):
        for k, (_, r) in zip(members, res.iterrows(), strict=True):
            rows_out[k] = r
    return gpd.GeoDataFrame(rows_out, crs=score.rio.crs)


def _overlapping_groups(windows: list[list[int]]) -> list[list[int]]:
    """Indices of the windows ``[r0, r1, c0, c1]`` in groups of (transitively) overlapping
    ones, each group sorted; groups in order of their first member.

    >>> _overlapping_groups([[0, 10, 0, 10], [20, 30, 0, 10], [5, 25, 5, 8], [50, 60, 50, 60]])
    [[0, 1, 2], [3]]
    """
    parent = list(range(len(windows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(windows):
        for j in range(i + 1, len(windows)):
            b = windows[j]
            if a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]:
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(windows)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])
