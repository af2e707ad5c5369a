"""Structural damage per building footprint, or per damaged region when no footprints are given.

Evidence per pixel comes from :mod:`changedet.change`: a pixel is *damaged* when its change score
(structural dissimilarity gated by a change vector beyond noise) exceeds the scene threshold. A
collapsed or burnt roof replaces a roof's regular texture by rubble or soot, so most of its
pixels change structure; a moved shadow or a residual gain difference changes brightness but
keeps structure and scores low.

With footprints (GeoJSON/GeoPackage, e.g. OpenStreetMap or Microsoft building footprints), each
building gets the share of its assessable pixels that are damaged, and a class after UNOSAT:

============================  ============================================
class                          damaged share of the footprint (defaults)
============================  ============================================
``destroyed``                  ≥ 0.60
``severe``                     ≥ 0.35
``moderate``                   ≥ 0.15
``possible``                   ≥ 0.05
``no visible damage``          below that
``not assessable``             < 50 % of the footprint assessable
============================  ============================================

Footprints are shrunk by ``edge_buffer_m`` first so that walls, eaves and residual
misregistration at the edges do not count. Without footprints, damaged pixels are pooled on a
coarse grid (``region_cell_m``), and connected cells over ``min_region_m2`` become regions.

All statistics are accumulated chunk by chunk (footprints rasterised per chunk), so memory stays
bounded by the chunk size.

Examples
--------
>>> import numpy as np, xarray as xr, geopandas as gpd, rioxarray  # noqa: F401
>>> from shapely.geometry import box
>>> from changedet.damage import assess_damage
>>> score = xr.DataArray(np.zeros((40, 40), "float32"), dims=("y", "x"),
...                      coords={"y": 19.75 - 0.5 * np.arange(40), "x": 0.25 + 0.5 * np.arange(40)})
>>> score = score.rio.write_crs("EPSG:32637")
>>> score[4:16, 4:16] = 0.9                      # a 6 m × 6 m roof, all changed
>>> fp = gpd.GeoDataFrame({"id": ["a", "b"]}, geometry=[box(2, 12, 8, 18), box(12, 2, 18, 8)],
...                       crs="EPSG:32637")
>>> out = assess_damage(score, fp, threshold=0.5)
>>> list(out["damage_class"])
['destroyed', 'no visible damage']
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import xarray as xr
from shapely.geometry import box

from changedet.errors import FacilityError, MissingCRSError

CLASSES = ("destroyed", "severe", "moderate", "possible", "no visible damage", "not assessable")


@dataclass(frozen=True)
class DamageParams:
    """Parameters of damage assessment (sizes in metres).

    Attributes
    ----------
    edge_buffer_m
        Footprints are shrunk by this much before counting pixels (walls, eaves, residual
        misregistration). Footprints that vanish are used unshrunk.
    destroyed, severe, moderate, possible
        Lower bounds of the damaged share of a footprint for each class.
    min_assessable_share
        Below this share of assessable pixels a footprint is ``not assessable``.
    region_cell_m
        Cell size of the grid on which damaged pixels are pooled without footprints.
    region_min_share
        A cell is damaged when this share of its pixels is damaged.
    min_region_m2
        Smallest damaged region reported without footprints.
    """

    edge_buffer_m: float = 0.5
    destroyed: float = 0.60
    severe: float = 0.35
    moderate: float = 0.15
    possible: float = 0.05
    min_assessable_share: float = 0.5
    region_cell_m: float = 2.0
    region_min_share: float = 0.5
    min_region_m2: float = 20.0

    def __post_init__(self) -> None:
        if not (0 <= self.possible <= self.moderate <= self.severe <= self.destroyed <= 1):
            raise ValueError(
                "damage class bounds must satisfy 0 <= possible <= moderate <= severe <= destroyed <= 1"
            )

    def classify(self, share: float, assessable_share: float) -> str:
        """The UNOSAT class for a damaged share and an assessable share."""
        if not assessable_share >= self.min_assessable_share:
            return "not assessable"
        for name in ("destroyed", "severe", "moderate", "possible"):
            if share >= getattr(self, name):
                return name
        return "no visible damage"


def _blocks(raster: xr.DataArray) -> list[tuple[slice, slice]]:
    """Row/column slices of the raster's chunks (one block when in memory)."""
    data = raster.data
    if isinstance(data, np.ndarray):
        return [(slice(0, raster.sizes["y"]), slice(0, raster.sizes["x"]))]
    ychunks, xchunks = data.chunks[-2], data.chunks[-1]
    ys = np.cumsum((0, *ychunks))
    xs = np.cumsum((0, *xchunks))
    return [
        (slice(int(ys[i]), int(ys[i + 1])), slice(int(xs[j]), int(xs[j + 1])))
        for i in range(len(ychunks))
        for j in range(len(xchunks))
    ]


def _label_block(
    shape: tuple[int, int], shapes: list[tuple[object, int]], transform_coeffs: tuple[float, ...]
) -> np.ndarray:
    """Rasterise polygons into a label block: a pixel takes a polygon's label when its centre
    lies inside (as GDAL's rasterize without ``all_touched``). Pure numpy/shapely, so it is safe
    in Dask's threads (rasterio's rasterize warns spuriously there)."""
    import shapely
    from affine import Affine

    transform = Affine(*transform_coeffs[:6])
    inverse = ~transform
    labels = np.zeros(shape, "int32")
    for geom, value in shapes:
        minx, miny, maxx, maxy = geom.bounds  # type: ignore[attr-defined]
        cols, rows = zip(*(inverse @ (x, y) for x, y in ((minx, miny), (maxx, maxy))), strict=True)
        r0, r1 = max(0, int(np.floor(min(rows)))), min(shape[0], int(np.ceil(max(rows))) + 1)
        c0, c1 = max(0, int(np.floor(min(cols)))), min(shape[1], int(np.ceil(max(cols))) + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        cc, rr = np.meshgrid(np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5)
        xs = transform.a * cc + transform.b * rr + transform.c
        ys = transform.d * cc + transform.e * rr + transform.f
        inside = shapely.contains_xy(geom, xs, ys)
        labels[r0:r1, c0:c1][inside] = value
    return labels


def _block_counts(
    score: np.ndarray,
    unassessable: np.ndarray | None,
    shapes: list[tuple[object, int]],
    transform_coeffs: tuple[float, ...],
    n: int,
    threshold: float,
) -> np.ndarray:
    """Per-footprint counts in one block: [pixels, assessable, damaged, sum of score].

    The transform travels as its six coefficients: dask rebuilds tuples it traverses, which
    would turn an ``Affine`` (a named tuple) into a plain one.
    """
    labels = _label_block(score.shape, shapes, transform_coeffs)
    ok = np.isfinite(score)
    if unassessable is not None:
        ok &= ~unassessable
    flat = labels.ravel()
    counts = np.zeros((4, n + 1))
    counts[0] = np.bincount(flat, minlength=n + 1)
    counts[1] = np.bincount(flat, weights=ok.ravel(), minlength=n + 1)
    damaged = ok & (score > threshold)
    counts[2] = np.bincount(flat, weights=damaged.ravel(), minlength=n + 1)
    counts[3] = np.bincount(flat, weights=np.where(ok, score, 0).ravel(), minlength=n + 1)
    return counts


def _prepare_footprints(
    footprints: gpd.GeoDataFrame, crs: object, buffer_m: float
) -> gpd.GeoDataFrame:
    if footprints.crs is None:
        raise MissingCRSError("footprints", "Set it with GeoDataFrame.set_crs(...) or in the file.")
    fp = footprints.to_crs(crs).copy()
    fp = fp[fp.geometry.notna() & ~fp.geometry.is_empty]
    fp["geometry"] = fp.geometry.make_valid()
    fp = fp[fp.geometry.geom_type.isin(["Polygon", "MultiPolygon", "GeometryCollection"])]
    if fp.empty:
        raise FacilityError("footprints", "holds no polygon", "Pass building outlines as polygons.")
    if "id" not in fp.columns:
        fp["id"] = [str(i) for i in range(len(fp))]
    shrunk = fp.geometry.buffer(-buffer_m) if buffer_m > 0 else fp.geometry
    fp["_count_geom"] = shrunk.where(~shrunk.is_empty & (shrunk.area > 0), fp.geometry)
    return fp.reset_index(drop=True)


def assess_damage(
    score: xr.DataArray,
    footprints: gpd.GeoDataFrame,
    *,
    threshold: float,
    not_assessable: xr.DataArray | None = None,
    params: DamageParams | None = None,
) -> gpd.GeoDataFrame:
    """Damage class of every building footprint.

    Parameters
    ----------
    score
        Change score map ``(y, x)`` in [0, 1] with a CRS (NaN where not assessable), e.g.
        ``change_scores(...)["score"]``. Dask-backed maps are processed chunk by chunk.
    footprints
        Building polygons with a CRS (any; reprojected to the scene's). An ``id`` column is
        kept; one is made when absent.
    threshold
        Score above which a pixel counts as damaged (e.g. from
        :func:`changedet.change.threshold_score`).
    not_assessable
        Optional boolean ``(y, x)`` mask (True: not assessable) on the same grid.
    params
        :class:`DamageParams`.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per footprint, in the scene CRS: ``id``, ``damage_class``, ``damaged_share``,
        ``mean_score``, ``assessable_share``, ``n_pixels``, ``geometry`` (the original
        footprint).

    Raises
    ------
    MissingCRSError
        When the score map or the footprints have no CRS.
    """
    params = params or DamageParams()
    crs = score.rio.crs
    if crs is None:
        raise MissingCRSError("change score", "Keep the CRS of the input rasters (rioxarray).")
    fp = _prepare_footprints(footprints, crs, params.edge_buffer_m)
    n = len(fp)
    transform = score.rio.transform()
    import dask
    from affine import Affine

    tasks = []
    for ys, xs in _blocks(score):
        block_transform = transform @ Affine.translation(xs.start, ys.start)
        # Only the footprints that touch this block are rasterised in it.
        x0, y0 = block_transform @ (0, 0)
        x1, y1 = block_transform @ (xs.stop - xs.start, ys.stop - ys.start)
        idx = fp.sindex.query(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        if len(idx) == 0:
            continue
        shapes = [(fp["_count_geom"].iloc[i], int(i) + 1) for i in idx]
        s_block = score.data[ys, xs]
        m_block = None if not_assessable is None else not_assessable.data[ys, xs]
        tasks.append(
            dask.delayed(_block_counts)(
                s_block, m_block, shapes, list(block_transform)[:6], n, threshold
            )
        )
    counts = np.zeros((4, n + 1))
    for c in dask.compute(*tasks):
        counts += c
    pixels, assessable, damaged, ssum = counts[:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(assessable > 0, damaged / assessable, np.nan)
        mean_score = np.where(assessable > 0, ssum / assessable, np.nan)
        ass_share = np.where(pixels > 0, assessable / pixels, 0.0)
    out = gpd.GeoDataFrame(
        {
            "id": fp["id"].astype(str).to_numpy(),
            "damage_class": [params.classify(s, a) for s, a in zip(share, ass_share, strict=True)],
            "damaged_share": share.round(4),
            "mean_score": mean_score.round(4),
            "assessable_share": ass_share.round(4),
            "n_pixels": pixels.astype("int64"),
        },
        geometry=fp.geometry.to_numpy(),
        crs=crs,
    )
    return out


def damaged_regions(
    score: xr.DataArray,
    *,
    threshold: float,
    not_assessable: xr.DataArray | None = None,
    params: DamageParams | None = None,
) -> gpd.GeoDataFrame:
    """Connected damaged regions when no footprints are available.

    Damaged pixels are pooled on a coarse grid of ``region_cell_m`` cells (chunk by chunk with
    ``dask.array.coarsen``); cells whose damaged share reaches ``region_min_share`` are
    connected (8-neighbourhood) and regions over ``min_region_m2`` are returned as polygons.

    Returns
    -------
    geopandas.GeoDataFrame
        ``id``, ``damage_class``, ``damaged_share`` (mean over the region's cells), ``area_m2``,
        ``geometry`` (cell-aligned polygon), in the scene CRS.
    """
    from rasterio import features
    from scipy import ndimage

    params = params or DamageParams()
    crs = score.rio.crs
    if crs is None:
        raise MissingCRSError("change score", "Keep the CRS of the input rasters (rioxarray).")
    transform = score.rio.transform()
    gsd = math.sqrt(abs(transform.a * transform.e))
    cell = max(1, round(params.region_cell_m / gsd))
    ok = score.notnull()
    if not_assessable is not None:
        ok = ok & ~not_assessable
    damaged = (ok & (score > threshold)).astype("float32")
    coarse = {"y": cell, "x": cell}
    dam = damaged.coarsen(coarse, boundary="pad").sum()
    valid = ok.astype("float32").coarsen(coarse, boundary="pad").sum()
    share = (dam / valid.where(valid > 0)).values  # small: one value per cell
    mask = np.nan_to_num(share) >= params.region_min_share
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    from affine import Affine

    cell_transform = transform @ Affine.scale(cell)
    rows = []
    for geom, value in features.shapes(
        labels.astype("int32"), mask=labels > 0, transform=cell_transform
    ):
        rows.append((int(value), geom))
    if not rows:
        return gpd.GeoDataFrame(
            {"id": [], "damage_class": [], "damaged_share": [], "area_m2": []},
            geometry=[],
            crs=crs,
        )
    from shapely.geometry import shape

    polys = gpd.GeoDataFrame(
        {"label": [r[0] for r in rows]}, geometry=[shape(r[1]) for r in rows], crs=crs
    ).dissolve("label")
    means = ndimage.mean(np.nan_to_num(share), labels, index=polys.index.to_numpy())
    polys["damaged_share"] = np.round(means, 4)
    polys["area_m2"] = polys.geometry.area.round(1)
    polys = polys[polys["area_m2"] >= params.min_region_m2].reset_index(drop=True)
    polys["damage_class"] = [params.classify(s, 1.0) for s in polys["damaged_share"]]
    polys["id"] = [f"region_{i + 1}" for i in range(len(polys))]
    return polys[["id", "damage_class", "damaged_share", "area_m2", "geometry"]]
