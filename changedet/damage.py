"""Structural damage per building footprint, or per damaged region when no footprints are given.

Evidence per pixel comes from :mod:`changedet.change`: a pixel is *damaged* when its change score
(structural dissimilarity gated by a change vector beyond noise) exceeds the scene threshold. A
collapsed or burnt roof replaces a roof's regular texture by rubble or soot, so most of its
pixels change structure; a moved shadow or a residual gain difference changes brightness but
keeps structure and scores low.

With footprints (GeoJSON/GeoPackage, e.g. OpenStreetMap or Microsoft building footprints), each
building gets the share and the area of its assessable pixels that are damaged, and a class
after UNOSAT:

============================  ===============================================================
class                          damaged part of the footprint (defaults)
============================  ===============================================================
``destroyed``                  share ≥ 0.60, and ≥ 50 % of the edge band (walls gone)
``severe``                     share ≥ 0.35, and ≥ 25 % of the edge band (partial collapse)
``moderate``                   share ≥ 0.15, or ≥ 8 m² damaged (a roof hole and its debris)
``possible``                   share ≥ 0.05
``no visible damage``          below that
``not assessable``             < 50 % of the footprint assessable
============================  ===============================================================

The area rule matters on large roofs: a hole with debris round it is moderate damage on a
600 m² hospital as on a 60 m² house, where a share alone would call it ``possible`` or nothing.
The edge-band rule (image evidence only) is UNOSAT's line between the heavy classes: whether
the structure stands. A collapse throws rubble across the wall line; holes and debris inside
standing walls leave the roof's edge strip intact, and the building is at most ``moderate``
however much of the roof is covered.

Footprints are shrunk first, by ``edge_buffer_m`` or ``edge_fraction`` of their width whichever
is larger, so that walls, eaves, parapet shadows and residual misregistration at the edges do
not count in the damaged share; the strip left out (the *edge band*) gets its own damaged share,
``edge_damaged_share``, read for the class only.

When the co-registered pair is passed too (``before=``, ``after=``), a pixel counts as damaged on
image evidence (:func:`damage_evidence`) rather than on the change score: the roof's structure is
lost (low before/after correlation, with a noise floor so that a plain roof turned rough counts
as lost) *and* the change is what rubble or fire does, over an area
(morphological opening): new rough texture that edges do not explain, in a change that is itself
rough (rubble replaces the roof pixel by pixel, while light multiplies a surface by one factor,
so the after/before ratio is flat inside a moved shadow), or strong darkening (soot, voids).
The change score alone lights up moved shadows (of buildings and of water tanks, stairwells
and parapets on roofs), walls and misregistration when the sun moves between dates. Without
footprints, damaged pixels are pooled on a coarse grid (``region_cell_m``), and connected cells
over ``min_region_m2`` become regions.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    edge_fraction
        ... and by at least this fraction of their width (short side of the minimum rotated
        rectangle): walls, eaves and parapet shadows change with the view and sun angles, and
        a wider building has taller walls and longer parapet shadows.
    window_sigma_m, truncate
        Gaussian window of the image evidence (:func:`damage_evidence`); the chunk halo follows.
    max_correlation
        Image evidence: a pixel is damaged only where the before/after correlation in the
        Gaussian window, with a noise floor (variance of SSIM's C3) added to both images, is
        below this: a moved shadow or a gain change keeps the roof's structure, rubble does
        not; two featureless windows count as unchanged, while a plain roof that turned rough
        (rubble on a smooth slab) has lost its uniform surface.
    texture_window_m
        Side of the square windows of the texture measure: the local standard deviation is
        the second smallest over the four windows that have the pixel at a corner, so that the
        straight edges and corners of shadows, walls and roof objects do not count as texture
        (rubble is rough in every window, or all but one at the corner of a slab fragment).
        About the size of a rubble block or void; at least 3 pixels.
    min_texture_gain
        ... and where that texture grows by more than this (``log σ_after/σ_before``): rubble
        is rough ...
    min_change_texture
        ... and where the change itself is rough: the log-ratio after/before varies by more
        than this (standard deviation, same corner windows). Light multiplies a surface by one
        factor, so inside a moved shadow (of a water tank or stairwell on the roof) the ratio
        is flat and steps only at the shadow's edges; 0.05 (5 %) is a few times the sensor
        noise of a mid-grey pixel. ...
    max_log_darkening
        ... or the area darkens beyond this (``log`` of the after/before mean brightness):
        a burnt roof (soot) or a void.
    min_extent_m
        Damaged pixels are opened with a disc of this radius: rubble covers areas, while the
        edges of moved shadows, walls and residual misregistration are thin lines.
    fill_gap_m
        ... then closed with a disc of this radius: smooth slab fragments and dust between
        rough patches of one rubble field count as damaged.
    destroyed, severe, moderate, possible
        Lower bounds of the damaged share of a footprint for each class.
    moderate_area_m2
        A footprint whose damaged area reaches this is at least ``moderate`` whatever its
        share: 8 m² is a hole of about 1.5 m across with the debris round it, visible
        structural damage on a 600 m² hospital as on a 60 m² house, where a share alone would
        call it ``possible`` or nothing on the large roof. It is about 2.5 times the smallest
        patch the ``min_extent_m`` opening keeps (a disc of 1 m radius, π m²).
    destroyed_edge_share, severe_edge_share
        With image evidence, a building is ``destroyed`` only when at least this share of its
        edge band (the strip between the outline and the counted interior: walls, roof edge)
        is damaged too, and ``severe`` only when at least ``severe_edge_share`` is; below, the
        class drops by one or two steps (not under ``moderate``). UNOSAT's line between the
        classes is whether the structure stands: a collapse throws rubble across the wall
        line, while a roof holed and covered in debris inside standing walls keeps its edge.
        The band is left out of the damaged share (walls and parapet shadows change with the
        sun), but the image evidence ignores moved shadows, so its damaged share is read for
        this.
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
    edge_fraction: float = 0.10
    window_sigma_m: float = 0.75
    truncate: float = 3.5
    max_correlation: float = 0.3
    texture_window_m: float = 1.5
    min_texture_gain: float = 0.2
    min_change_texture: float = 0.05
    max_log_darkening: float = -0.4
    min_extent_m: float = 1.0
    fill_gap_m: float = 1.0
    destroyed: float = 0.60
    severe: float = 0.35
    moderate: float = 0.15
    possible: float = 0.05
    moderate_area_m2: float = 8.0
    destroyed_edge_share: float = 0.5
    severe_edge_share: float = 0.25
    min_assessable_share: float = 0.5
    region_cell_m: float = 2.0
    region_min_share: float = 0.5
    min_region_m2: float = 20.0

    def __post_init__(self) -> None:
        if not (0 <= self.possible <= self.moderate <= self.severe <= self.destroyed <= 1):
            raise ValueError(
                "damage class bounds must satisfy 0 <= possible <= moderate <= severe <= destroyed <= 1"
            )
        if not (0 <= self.severe_edge_share <= self.destroyed_edge_share <= 1):
            raise ValueError(
                "edge band bounds must satisfy 0 <= severe_edge_share <= destroyed_edge_share <= 1"
            )

    def classify(
        self,
        share: float,
        assessable_share: float,
        damaged_m2: float = 0.0,
        edge_share: float = math.nan,
    ) -> str:
        """The UNOSAT class for a damaged share, an assessable share, a damaged area and the
        damaged share of the edge band (walls and roof edge; NaN: not known).

        Examples
        --------
        >>> p = DamageParams()
        >>> p.classify(0.4, 1.0), p.classify(0.02, 1.0), p.classify(0.02, 1.0, damaged_m2=12.0)
        ('severe', 'no visible damage', 'moderate')
        >>> p.classify(0.9, 1.0, edge_share=0.8), p.classify(0.9, 1.0, edge_share=0.1)
        ('destroyed', 'moderate')
        """
        if not assessable_share >= self.min_assessable_share:
            return "not assessable"
        standing = {  # NaN (no band, or no image evidence) never lowers a class
            "destroyed": edge_share < self.destroyed_edge_share,
            "severe": edge_share < self.severe_edge_share,
        }
        for name in ("destroyed", "severe", "moderate"):  # standing walls: on to the next
            if share >= getattr(self, name) and not standing.get(name, False):
                return name
        if damaged_m2 >= self.moderate_area_m2:  # a hole in a large roof
            return "moderate"
        return "possible" if share >= self.possible else "no visible damage"


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


def _sparse_block_counts(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_block_counts` as ``(columns, counts[:, columns])``: the footprints the block
    touches (the columns not all zero; the others add nothing to the sums).

    A dense result is ``6 × (footprints + 1)`` float64 per block, and Dask holds every
    block's result until the last one: at 16384² (256 chunks, ~10⁵ footprints) 1.2 GB, the
    damage stage's peak (measured, see ``benchmarks/RESULTS.md``, 2026-11-30 session 3)."""
    counts = _block_counts(*args, **kwargs)
    cols = np.flatnonzero(counts.any(axis=0))
    return cols, counts[:, cols]


def _block_counts(
    score: np.ndarray,
    unassessable: np.ndarray | None,
    shapes: list[tuple[object, int]],
    transform_coeffs: tuple[float, ...],
    n: int,
    threshold: float,
    evidence: np.ndarray | None = None,
    outline_shapes: list[tuple[object, int]] | None = None,
) -> np.ndarray:
    """Per-footprint counts in one block: [pixels, assessable, damaged, sum of score] of the
    counted interiors (``shapes``), then [assessable, damaged] of the edge bands (pixels of
    ``outline_shapes``, the whole footprints, outside every counted interior).

    The transform travels as its six coefficients: dask rebuilds tuples it traverses, which
    would turn an ``Affine`` (a named tuple) into a plain one.
    """
    labels = _label_block(score.shape, shapes, transform_coeffs)
    ok = np.isfinite(score)
    if unassessable is not None:
        ok &= ~unassessable
    flat = labels.ravel()
    counts = np.zeros((6, n + 1))
    counts[0] = np.bincount(flat, minlength=n + 1)
    counts[1] = np.bincount(flat, weights=ok.ravel(), minlength=n + 1)
    if evidence is None:
        damaged = ok & (score > threshold)
    else:
        damaged = ok & (evidence > 0.5)
    counts[2] = np.bincount(flat, weights=damaged.ravel(), minlength=n + 1)
    counts[3] = np.bincount(flat, weights=np.where(ok, score, 0).ravel(), minlength=n + 1)
    if outline_shapes is not None:
        outline = _label_block(score.shape, outline_shapes, transform_coeffs)
        band = np.where(labels == 0, outline, 0).ravel()
        counts[4] = np.bincount(band, weights=ok.ravel(), minlength=n + 1)
        counts[5] = np.bincount(band, weights=damaged.ravel(), minlength=n + 1)
    return counts


def _corner_variance(img: np.ndarray, half: int) -> np.ndarray:
    """Local variance in the four square windows of side ``2 * half + 1`` that have the pixel
    at a corner, ignoring NaN: the second smallest of the four.

    An edge-preserving texture measure (as Kuwahara's filter chooses its window): next to a
    straight edge of a shadow, wall or roof object two windows lie on one side and see no
    texture, and outside a corner three do; in rubble all four are rough, or all but one where
    the pixel sits at the corner of a smooth slab fragment (hence the second smallest).
    Beyond the array the nearest pixel is repeated; window sums are direct sums in a fixed
    order, so a block with its halo gives bit-for-bit the values of the whole array.

    The four windows of a pixel are one window grid read at four offsets, so the variance is
    computed once per window (not once per pixel and corner), and the pairs of windows side
    by side are compared once for both rows of corners.
    """
    size = 2 * half + 1
    ny, nx = img.shape
    valid = np.isfinite(img)
    all_valid = bool(valid.all())
    # Padded once; squaring the padded image gives the padded squares (edge mode copies).
    q = np.pad(img if all_valid else np.where(valid, img, 0.0), 2 * half, mode="edge")

    def sums(a: np.ndarray) -> np.ndarray:
        """Sums over the windows starting at each pixel of the padded ``a``: rows first, then
        columns, each in the order of the offsets (fixed, so that seams never show)."""
        if size == 1:
            return a.copy()
        rows = a[: ny + 2 * half] + a[1 : ny + 2 * half + 1]
        for d in range(2, size):
            rows += a[d : d + ny + 2 * half]
        out = rows[:, : nx + 2 * half] + rows[:, 1 : nx + 2 * half + 1]
        for d in range(2, size):
            out += rows[:, d : d + nx + 2 * half]
        return out

    s1 = sums(q).astype("float64", copy=False)  # new arrays: divided in place below
    s2 = sums(q * q).astype("float64", copy=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        if all_valid:
            count = float(size * size)
            s1 /= count  # the window means
            s2 /= count
            s2 -= s1 * s1
            var = np.maximum(s2, 0, out=s2) if size > 1 else np.full_like(s2, np.inf)
        else:
            n = sums(np.pad(valid, 2 * half, mode="edge").astype("float64"))
            s1 /= n
            s2 /= n
            s2 -= s1 * s1
            var = np.where(n >= 2 - 1e-9, np.maximum(s2, 0), np.inf)  # ≥ 2 valid pixels
    # Window starting at offset 0 on an axis ends at the pixel; offset 2 * half starts at it.
    # Corners (0, 0), (0, 2h), (2h, 0), (2h, 2h) are a, b, c, d; second smallest of the four.
    lo = np.minimum(var[:, :nx], var[:, 2 * half :])  # min(a, b) on top rows, min(c, d) below
    hi = np.maximum(var[:, :nx], var[:, 2 * half :])
    out = np.minimum(
        np.maximum(lo[:ny], lo[2 * half :]),
        np.minimum(hi[:ny], hi[2 * half :]),
    )
    out[~np.isfinite(out)] = np.nan
    return out


def _gauss_mean(
    img: np.ndarray,
    sigma: float,
    truncate: float,
    dens: list[tuple[np.ndarray | None, np.ndarray, bool]],
) -> np.ndarray:
    """Gaussian mean ignoring NaN (normalised convolution), NaN where no valid neighbour: the
    values of :func:`changedet.change._gauss_nan`, bit for bit, with less work per call.

    ``dens`` is shared by the calls on one block: each validity mask is filtered once (its
    entry: the mask, or ``None`` for all valid; the filtered mask; whether it is > 1e-6
    everywhere). Without NaN, the image is filtered as it is and divided in place."""
    from scipy import ndimage

    valid = np.isfinite(img)
    all_valid = bool(valid.all())
    filled = img if all_valid else np.where(valid, img, 0.0)
    num = ndimage.gaussian_filter(filled, sigma, truncate=truncate, mode="nearest")
    known = [
        (den, positive)
        for mask, den, positive in dens
        if ((mask is None) if all_valid else (mask is not None and np.array_equal(mask, valid)))
    ]
    if known:
        den, positive = known[0]
    else:
        den = ndimage.gaussian_filter(
            valid.astype("float64"), sigma, truncate=truncate, mode="nearest"
        )
        positive = bool((den > 1e-6).all())
        dens.append((None if all_valid else valid, den, positive))
    if positive:
        num /= den
        return num
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-6, num / den, np.nan)


def _haloed_evidence_kernel(
    before: np.ndarray,
    after: np.ndarray,
    *,
    core: tuple[int, int, int, int],
    window: tuple[int, int, int, int],
    **kw: Any,
) -> np.ndarray:
    """:func:`_evidence_kernel` on haloed windows, trimmed to the block (see
    :func:`changedet._haloed.haloed_map`)."""
    from changedet._haloed import trim_to_core

    return trim_to_core(_evidence_kernel(before, after, **kw), core, window)


def _evidence_kernel(
    before: np.ndarray,
    after: np.ndarray,
    *,
    sigma: float,
    truncate: float,
    scale: float,
    max_correlation: float,
    min_texture_gain: float,
    max_log_darkening: float,
    open_px: int,
    min_change_texture: float = 0.05,
    close_px: int = 0,
    texture_half_px: int = 1,
) -> np.ndarray:
    """Damage evidence of one ``(band, y, x)`` block pair: a float32 ``(y, x)`` map, 1 where
    damaged, 0 where not, NaN where not assessable."""
    from scipy import ndimage

    x = before.astype("float64").mean(axis=0) / scale
    y = after.astype("float64").mean(axis=0) / scale
    invalid = ~(np.isfinite(x) & np.isfinite(y))

    dens: list[tuple[np.ndarray | None, np.ndarray, bool]] = []  # filtered masks, reused

    def g(img: np.ndarray) -> np.ndarray:
        return _gauss_mean(img, sigma, truncate, dens)

    mx, my = g(x), g(y)
    vx = np.maximum(g(x * x) - mx * mx, 0)
    vy = np.maximum(g(y * y) - my * my, 0)
    cxy = g(x * y) - mx * my
    # Correlation with a noise floor of variance C3 = C2 / 2 (SSIM's constant) added to both
    # images: where neither has structure above the floor (a smooth roof, a shadow on it) it
    # tends to 1; where a smooth roof has become rough (rubble on a plain slab) it tends to
    # sqrt(C3 / var_after), low: the uniform roof surface is gone. (SSIM's own structure term,
    # (cov + C3) / (σ_b σ_a + C3), tends to 1 whenever one image is smooth, so a plain roof
    # that collapsed counted as unchanged: destroyed roofs came out severe or moderate.)
    c3 = 0.03**2 / 2
    corr = (cxy + c3) / np.sqrt((vx + c3) * (vy + c3))

    # Texture that edges do not explain: the smallest standard deviation over the four windows
    # with the pixel at a corner. Rubble is rough in every window; the straight edges and
    # corners of a moved shadow (of the building, a parapet or a water tank on the roof), a wall
    # or a residual misregistration leave at least one window smooth.
    eps = 0.01  # texture floor (reflectance units): sensor noise, JPEG blocks
    tx = np.sqrt(_corner_variance(x, texture_half_px))
    ty = np.sqrt(_corner_variance(y, texture_half_px))
    texture_gain = np.log((ty + eps) / (tx + eps))
    # A change of illumination (a moved shadow, haze, a gain change) multiplies a surface by
    # one factor, so the log-ratio after/before is flat inside a shadow and steps at its edge;
    # rubble replaces the roof pixel by pixel, so the log-ratio is as rough as the rubble.
    ratio = np.log((np.maximum(y, 0) + 0.02) / (np.maximum(x, 0) + 0.02))
    ratio_texture = np.sqrt(_corner_variance(ratio, texture_half_px))
    darkening = np.log((my + 0.01) / (mx + 0.01))
    with np.errstate(invalid="ignore"):
        rough = (texture_gain > min_texture_gain) & (ratio_texture > min_change_texture)
        damaged = (corr < max_correlation) & (rough | (darkening < max_log_darkening))
    damaged &= ~invalid

    def disc(r: int) -> np.ndarray:
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        return xx * xx + yy * yy <= r * r + 0.5

    if open_px > 0:
        damaged = ndimage.binary_opening(damaged, structure=disc(open_px))
    if close_px > 0:  # gaps inside a rubble field (smooth slab fragments) are rubble too
        damaged = ndimage.binary_closing(damaged, structure=disc(close_px))
        damaged &= ~invalid
    out = damaged.astype("float32")
    out[invalid] = np.nan
    return out


def _evidence_windows(params: DamageParams, gsd: float) -> tuple[float, int, int, int, int]:
    """Window sizes of :func:`damage_evidence` in pixels: Gaussian sigma, opening and closing
    radii, half side of the corner windows, and the chunk halo they need."""
    sigma = params.window_sigma_m / gsd
    open_px = round(params.min_extent_m / gsd)
    close_px = round(params.fill_gap_m / gsd)
    texture_half_px = max(1, round((params.texture_window_m / gsd - 1) / 2))
    # Gaussian window and corner windows side by side, then the opening and the closing.
    window_px = max(math.ceil(params.truncate * sigma), 2 * texture_half_px)
    depth = window_px + 1 + 2 * open_px + 2 * close_px
    return sigma, open_px, close_px, texture_half_px, depth


def evidence_halo_px(params: DamageParams, gsd_m: float) -> int:
    """Pixels of context :func:`damage_evidence` needs round a pixel for its whole-scene value
    (the ``halo_px`` attribute of its result), without building the map.

    Examples
    --------
    >>> evidence_halo_px(DamageParams(), 0.5)
    15
    """
    return _evidence_windows(params, gsd_m)[4]


def damage_evidence(
    before: xr.DataArray,
    after: xr.DataArray,
    params: DamageParams | None = None,
    *,
    gsd_m: float | None = None,
    value_range: float | None = None,
) -> xr.DataArray:
    """Per-pixel damage evidence from the co-registered, normalised pair.

    A pixel is damaged when the roof's structure is lost (low before/after correlation in a
    Gaussian window, with a noise floor: a plain roof turned rough has lost its structure)
    *and* the change is one rubble or fire makes: new rough texture that edges do not explain
    (the second smallest standard deviation of the four windows with the pixel at a corner
    grows, :func:`_corner_variance`) in a change that is itself rough (the log-ratio
    after/before varies in those windows), or strong darkening (soot, voids). A
    moved shadow only darkens a roof whose texture stays (high correlation, or too little
    structure to tell); its straight edges and corners leave windows smooth, and the ratio
    inside it is flat, also for the short shadows of water tanks and stairwells on a roof;
    thin lines that remain (walls, shadow borders, residual misregistration) are removed by an
    opening of radius ``min_extent_m``.

    Parameters
    ----------
    before, after
        ``(band, y, x)`` rasters on the same grid, NaN for nodata. Dask-backed inputs give a
        lazy map computed with ``map_overlap`` (halo from the window and the opening), or,
        when both are read from files, from haloed windows each block reads
        (:mod:`changedet._haloed`; the same values, bounded memory).
    params
        :class:`DamageParams`.
    gsd_m
        Ground sample distance; read from the rasters when omitted.
    value_range
        Scale of the data (e.g. 255); the 99.9th percentile of a sample of ``before`` when
        omitted.

    Returns
    -------
    xarray.DataArray
        float32 ``(y, x)``: 1 damaged, 0 not, NaN not assessable.

    Examples
    --------
    >>> import numpy as np, xarray as xr, rioxarray  # noqa: F401
    >>> rng = np.random.default_rng(0)
    >>> yx = {"y": 20.25 - 0.5 * np.arange(40), "x": 0.25 + 0.5 * np.arange(40)}
    >>> roof = rng.normal(150, 3, (1, 40, 40)).astype("float32")  # a plain roof, 20 m wide
    >>> before = xr.DataArray(roof, dims=("band", "y", "x"), coords=yx).rio.write_crs(32637)
    >>> rubble = roof.copy()
    >>> rubble[0, 10:30, 10:30] = rng.uniform(40, 220, (20, 20))  # 10 m × 10 m of rubble
    >>> ev = damage_evidence(before, before.copy(data=rubble), value_range=255)
    >>> float(ev[10:30, 10:30].mean()) > 0.7, float(ev[:5].max())
    (True, 0.0)
    """
    from changedet.change import gsd_of
    from changedet.normalize import sample_pixels

    params = params or DamageParams()
    gsd = gsd_m if gsd_m is not None else gsd_of(before)
    sigma, open_px, close_px, texture_half_px, depth = _evidence_windows(params, gsd)
    if value_range is None:
        b, _ = sample_pixels(before, after, 100_000)
        value_range = float(np.percentile(b, 99.9)) if len(b) else 1.0
    kw = {
        "sigma": sigma,
        "truncate": params.truncate,
        "scale": max(float(value_range), 1e-9),
        "max_correlation": params.max_correlation,
        "min_texture_gain": params.min_texture_gain,
        "min_change_texture": params.min_change_texture,
        "max_log_darkening": params.max_log_darkening,
        "open_px": open_px,
        "close_px": close_px,
        "texture_half_px": texture_half_px,
    }
    bf, af = before.astype("float32"), after.astype("float32")
    template = bf.isel(band=0, drop=True)
    if isinstance(bf.data, np.ndarray) and isinstance(af.data, np.ndarray):
        data = _evidence_kernel(bf.values, af.values, **kw)
    else:
        from changedet._haloed import haloed_map

        data = None
        if bf.dims == af.dims == ("band", "y", "x"):
            # both read from files (the before image, a scratch raster): every block reads its
            # haloed windows, no block waits for its neighbours (bounded memory, same values)
            data = haloed_map(
                _haloed_evidence_kernel, [bf.data, af.data], depth, pad_nan=False, **kw
            )
        if data is None:
            import dask.array as da

            bd = da.asarray(bf.data).rechunk({0: -1})
            ad = da.asarray(af.data).rechunk(bd.chunks)
            data = da.map_overlap(
                _evidence_kernel,
                bd,
                ad,
                depth={0: 0, 1: depth, 2: depth},
                boundary="none",
                drop_axis=0,
                dtype="float32",
                meta=np.empty((0, 0), "float32"),
                **kw,
            )
    out = template.copy(data=data).rename("damage_evidence")
    out.attrs = {"gsd_m": gsd, "halo_px": depth}
    return out


def _short_side(geom: object) -> float:
    """Width of a polygon: short side of its minimum rotated rectangle (metres)."""
    rect = geom.minimum_rotated_rectangle  # type: ignore[attr-defined]
    if rect.geom_type != "Polygon":
        return 0.0
    c = np.asarray(rect.exterior.coords)
    sides = np.hypot(*np.diff(c, axis=0).T)
    return float(sides[:2].min())


def _prepare_footprints(
    footprints: gpd.GeoDataFrame, crs: object, buffer_m: float, edge_fraction: float = 0.0
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
    if edge_fraction > 0:
        widths = np.array([_short_side(g) for g in fp.geometry])
        margin = np.maximum(buffer_m, edge_fraction * widths)
    else:
        margin = np.full(len(fp), float(buffer_m))
    shrunk = fp.geometry.buffer(-margin) if (margin > 0).any() else fp.geometry
    fp["_count_geom"] = shrunk.where(~shrunk.is_empty & (shrunk.area > 0), fp.geometry)
    return fp.reset_index(drop=True)


def assess_damage(
    score: xr.DataArray,
    footprints: gpd.GeoDataFrame,
    *,
    threshold: float,
    not_assessable: xr.DataArray | None = None,
    params: DamageParams | None = None,
    before: xr.DataArray | None = None,
    after: xr.DataArray | None = None,
    value_range: float | None = None,
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
    before, after
        Optional co-registered, normalised ``(band, y, x)`` pair on the score's grid. When
        both are given, a pixel counts as damaged by the image evidence of
        :func:`damage_evidence` (structure lost *and* rubble-like texture or soot, over an
        area) instead of ``score > threshold``, which also fires on moved shadows and walls.
    value_range
        Scale of the data for :func:`damage_evidence` (e.g. 255); estimated when omitted.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per footprint, in the scene CRS: ``id``, ``damage_class``, ``damaged_share``,
        ``damaged_m2`` (damaged area inside the footprint), ``edge_damaged_share`` (damaged
        share of the edge band left out of the count: walls, roof edge; NaN where there is
        none; used for the class with image evidence only), ``mean_score``,
        ``assessable_share``, ``n_pixels``, ``geometry`` (the original footprint).

    Raises
    ------
    MissingCRSError
        When the score map or the footprints have no CRS.
    """
    job = _plan_damage(
        score,
        footprints,
        threshold=threshold,
        not_assessable=not_assessable,
        params=params,
        before=before,
        after=after,
        value_range=value_range,
    )
    return job.table(job.compute())


def assess_damage_windows(
    score: xr.DataArray,
    windows: Sequence[tuple[dict[str, slice], gpd.GeoDataFrame]],
    *,
    threshold: float,
    not_assessable: xr.DataArray | None = None,
    params: DamageParams | None = None,
    before: xr.DataArray | None = None,
    after: xr.DataArray | None = None,
    value_range: float | None = None,
) -> list[gpd.GeoDataFrame]:
    """:func:`assess_damage` of several sets of footprints, each in its own window of the maps:
    the tables of one call per window, with the windows' pixels computed in one Dask pass.

    For a few small windows in a large scene (facilities): a chunk that several windows need
    is read and computed once, not once per window (slicing a Dask array whose chunks are
    computed from whole chunks, such as a mask reduced over bands, computes the whole chunk).

    Parameters
    ----------
    score, threshold, not_assessable, params, before, after, value_range
        As for :func:`assess_damage`, over the whole scene.
    windows
        ``(window, footprints)`` pairs: ``window`` an ``isel`` selection
        ``{"y": slice, "x": slice}`` applied to every map, ``footprints`` as for
        :func:`assess_damage`. Each window must hold the halo the evidence needs round its
        footprints (:func:`evidence_halo_px`) for whole-scene values.

    Returns
    -------
    list of geopandas.GeoDataFrame
        One table per window, in order, as :func:`assess_damage` gives.
    """
    import dask

    jobs = [
        _plan_damage(
            score.isel(win),
            fp,
            threshold=threshold,
            not_assessable=None if not_assessable is None else not_assessable.isel(win),
            params=params,
            before=None if before is None else before.isel(win),
            after=None if after is None else after.isel(win),
            value_range=value_range,
        )
        for win, fp in windows
    ]
    (inputs,) = dask.compute([job.block_inputs() for job in jobs])  # small: windows only
    return [job.table(job.count(i)) for job, i in zip(jobs, inputs, strict=True)]


@dataclass
class _DamageJob:
    """One :func:`assess_damage` call, planned: the maps (score, not-assessable mask, image
    evidence; Dask or numpy), the blocks of the score's chunks that hold footprints with the
    footprints to rasterise in each, and what turns the per-block counts into the table.

    :meth:`compute` counts the blocks chunk by chunk; :meth:`block_inputs` and :meth:`count`
    let a caller compute the inputs of several small jobs in one pass (facility windows)."""

    fp: gpd.GeoDataFrame
    transform: object
    crs: object
    params: DamageParams
    threshold: float
    score: object
    not_assessable: object | None
    evidence: object | None
    blocks: list[tuple[slice, slice, list[object], list[object], list[float]]]

    @property
    def with_evidence(self) -> bool:
        return self.evidence is not None

    def _maps(self) -> list[object]:
        return [self.score, self.not_assessable, self.evidence]

    def block_inputs(self) -> list[list[object]]:
        """Per block, the ``[score, mask, evidence]`` pieces (``None`` where absent), as
        slices of the maps (lazy where the maps are)."""
        return [
            [None if m is None else m[ys, xs] for m in self._maps()]  # type: ignore[index]
            for ys, xs, *_ in self.blocks
        ]

    def count(self, inputs: Sequence[Sequence[object]]) -> list[np.ndarray]:
        """The per-block counts from computed :meth:`block_inputs`."""
        n = len(self.fp)
        return [
            _block_counts(s, m, shapes, coeffs, n, self.threshold, e, outlines)  # type: ignore[arg-type]
            for (s, m, e), (_, _, shapes, outlines, coeffs) in zip(inputs, self.blocks, strict=True)
        ]

    def compute(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The per-block counts, one Dask task per block, each as ``(columns, counts)``: only
        the footprints the block touches (see :func:`_sparse_block_counts`).

        Each block's task carries its own graph of the maps, so a block's images are read
        again for its neighbours' halos. One graph for all blocks would read every chunk
        once, but it keeps the chunks a halo still needs in memory: at 8192² (2048² chunks,
        2 threads) the same CPU time and 0.7 GB more peak memory."""
        import dask

        n = len(self.fp)
        tasks = [
            dask.delayed(_sparse_block_counts)(s, m, shapes, coeffs, n, self.threshold, e, outlines)
            for (s, m, e), (_, _, shapes, outlines, coeffs) in zip(
                self.block_inputs(), self.blocks, strict=True
            )
        ]
        return list(dask.compute(*tasks))

    def table(
        self, block_counts: Sequence[np.ndarray | tuple[np.ndarray, np.ndarray]]
    ) -> gpd.GeoDataFrame:
        """The per-footprint table from the per-block counts (in the order of the blocks),
        dense or as ``(columns, counts)`` (:func:`_sparse_block_counts`; the same sums)."""
        params, transform, n = self.params, self.transform, len(self.fp)
        counts = np.zeros((6, n + 1))
        for c in block_counts:
            if isinstance(c, tuple):
                cols, values = c
                counts[:, cols] += values
            else:
                counts += c
        pixels, assessable, damaged, ssum, band_assessable, band_damaged = counts[:, 1:]
        damaged_m2 = damaged * abs(transform.a * transform.e - transform.b * transform.d)  # type: ignore[attr-defined]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(assessable > 0, damaged / assessable, np.nan)
            mean_score = np.where(assessable > 0, ssum / assessable, np.nan)
            ass_share = np.where(pixels > 0, assessable / pixels, 0.0)
            edge_share = np.where(band_assessable > 0, band_damaged / band_assessable, np.nan)
        # The edge band is read on image evidence only: the change score alone lights up walls
        # and moved shadows there, which is why the band is left out of the damaged share.
        edge_for_class = edge_share if self.with_evidence else np.full(n, np.nan)
        return gpd.GeoDataFrame(
            {
                "id": self.fp["id"].astype(str).to_numpy(),
                "damage_class": [
                    params.classify(s, a, m, e)
                    for s, a, m, e in zip(share, ass_share, damaged_m2, edge_for_class, strict=True)
                ],
                "damaged_share": share.round(4),
                "damaged_m2": damaged_m2.round(2),
                "edge_damaged_share": edge_share.round(4),
                "mean_score": mean_score.round(4),
                "assessable_share": ass_share.round(4),
                "n_pixels": pixels.astype("int64"),
            },
            geometry=self.fp.geometry.to_numpy(),
            crs=self.crs,
        )


def _plan_damage(
    score: xr.DataArray,
    footprints: gpd.GeoDataFrame,
    *,
    threshold: float,
    not_assessable: xr.DataArray | None = None,
    params: DamageParams | None = None,
    before: xr.DataArray | None = None,
    after: xr.DataArray | None = None,
    value_range: float | None = None,
) -> _DamageJob:
    """:func:`assess_damage` up to the counting: footprints prepared, the evidence on the
    score's chunks, and the blocks that hold footprints."""
    params = params or DamageParams()
    crs = score.rio.crs
    if crs is None:
        raise MissingCRSError("change score", "Keep the CRS of the input rasters (rioxarray).")
    fp = _prepare_footprints(footprints, crs, params.edge_buffer_m, params.edge_fraction)
    lazy = not isinstance(score.data, np.ndarray)
    chunks = dict(zip(score.dims, score.data.chunks, strict=True)) if lazy else None
    evidence = None
    if before is not None and after is not None:
        evidence = damage_evidence(before, after, params, value_range=value_range)
        # blocks follow the score map's chunks
        evidence = evidence.chunk(chunks) if chunks else evidence.compute()
    transform = score.rio.transform()
    from affine import Affine

    blocks = []
    for ys, xs in _blocks(score):
        block_transform = transform @ Affine.translation(xs.start, ys.start)
        # Only the footprints that touch this block are rasterised in it.
        x0, y0 = block_transform @ (0, 0)
        x1, y1 = block_transform @ (xs.stop - xs.start, ys.stop - ys.start)
        idx = fp.sindex.query(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        if len(idx) == 0:
            continue
        shapes = [(fp["_count_geom"].iloc[i], int(i) + 1) for i in idx]
        outlines = [(fp.geometry.iloc[i], int(i) + 1) for i in idx]
        blocks.append((ys, xs, shapes, outlines, list(block_transform)[:6]))
    return _DamageJob(
        fp,
        transform,
        crs,
        params,
        threshold,
        score.data,
        None if not_assessable is None else not_assessable.data,
        None if evidence is None else evidence.data,
        blocks,
    )


def damaged_regions(
    score: xr.DataArray,
    *,
    threshold: float,
    not_assessable: xr.DataArray | None = None,
    params: DamageParams | None = None,
    before: xr.DataArray | None = None,
    after: xr.DataArray | None = None,
    value_range: float | None = None,
) -> gpd.GeoDataFrame:
    """Connected damaged regions when no footprints are available.

    Damaged pixels are pooled on a coarse grid of ``region_cell_m`` cells (chunk by chunk with
    ``dask.array.coarsen``); cells whose damaged share reaches ``region_min_share`` are
    connected (8-neighbourhood) and regions over ``min_region_m2`` are returned as polygons.

    Parameters
    ----------
    score
        Change score map ``(y, x)`` with a CRS, as for :func:`assess_damage`.
    threshold
        Score above which a pixel counts as damaged (without ``before``/``after``).
    not_assessable
        Optional boolean ``(y, x)`` mask (True: not assessable) on the same grid.
    params
        :class:`DamageParams`.
    before, after
        Optional co-registered, normalised ``(band, y, x)`` pair on the score's grid: when
        both are given, damaged pixels are the image evidence of :func:`damage_evidence`
        (rubble, soot) instead of ``score > threshold``, so that moved shadows, walls and
        misregistration do not become regions.
    value_range
        Scale of the data for :func:`damage_evidence`; estimated when omitted.

    Returns
    -------
    geopandas.GeoDataFrame
        ``id``, ``damage_class``, ``damaged_share`` (mean over the region's cells), ``area_m2``,
        ``geometry`` (cell-aligned polygon), in the scene CRS.

    Examples
    --------
    >>> import numpy as np, xarray as xr, rioxarray  # noqa: F401
    >>> yx = {"y": 20.25 - 0.5 * np.arange(40), "x": 0.25 + 0.5 * np.arange(40)}
    >>> score = xr.DataArray(np.zeros((40, 40), "float32"), dims=("y", "x"), coords=yx)
    >>> score = score.rio.write_crs(32637)
    >>> score[8:28, 8:28] = 0.9  # 10 m × 10 m changed, on the 2 m cells
    >>> damaged_regions(score, threshold=0.5)[["damage_class", "area_m2"]].values.tolist()
    [['destroyed', 100.0]]
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
    if before is not None and after is not None:
        evidence = damage_evidence(before, after, params, value_range=value_range)
        if not isinstance(score.data, np.ndarray):
            evidence = evidence.chunk(dict(zip(score.dims, score.data.chunks, strict=True)))
        evidence = evidence.assign_coords(y=score.y, x=score.x)
        ok = ok & evidence.notnull()
        damaged = (ok & (evidence > 0.5)).astype("float32")
    else:
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
