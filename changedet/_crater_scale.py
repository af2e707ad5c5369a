"""Dark-blob candidates for :mod:`changedet.craters`: a scale-normalised LoG pyramid on one tile.

Scales are crater radii in pixels, ``σ = r / √2`` (the normalised Laplacian of Gaussian of a
disc of radius ``r`` peaks at that ``σ``). Large scales run on a block-averaged copy of the
tile (factor ``f``, a power of two with ``σ / f`` in ``[1.6, 3.2)``), so the cost barely grows
with the largest radius. Block grids are anchored to multiples of ``f`` in *scene* pixels, which
is why tiles are cut at such multiples: every value a detection depends on is then the same
whichever tile computed it (see :func:`changedet.craters.detect_craters`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Octave base: scales below ``2 * _SIGMA_BASE`` px run at full resolution.
_SIGMA_BASE = 1.6
#: Gaussian kernels are cut at this many standard deviations.
TRUNCATE = 3.5
#: The local-texture windows (σ = r and 2 r) are cut shorter.
LOCAL_TRUNCATE = 2.5


@dataclass(frozen=True)
class Scales:
    """Radii (px) of the pyramid levels and the block factor each runs at.

    The first ``n_below`` levels were added below the pyramid (:func:`extend_down`): their
    candidates never displace those of the other levels.
    """

    radii_px: tuple[float, ...]
    factors: tuple[int, ...]
    n_below: int = 0

    @property
    def max_factor(self) -> int:
        return max(self.factors) if self.factors else 1

    @property
    def max_sigma_px(self) -> float:
        return max(self.radii_px) / math.sqrt(2) if self.radii_px else 0.0


def make_scales(r_min_px: float, r_max_px: float, per_octave: int) -> Scales:
    """Geometric radii from ``r_min_px`` to ``r_max_px`` (both included), ``per_octave`` a doubling."""
    n = max(1, math.ceil(per_octave * math.log2(r_max_px / r_min_px)) + 1)
    radii = np.geomspace(r_min_px, r_max_px, n) if n > 1 else np.array([r_min_px])
    factors = []
    for r in radii:
        sigma = r / math.sqrt(2)
        factors.append(2 ** max(0, math.floor(math.log2(sigma / _SIGMA_BASE))))
    return Scales(tuple(float(r) for r in radii), tuple(int(f) for f in factors))


def extend_down(scales: Scales, r_min_px: float, per_octave: int) -> Scales:
    """``scales`` with levels added below its smallest, in the same steps, down to ``r_min_px``.

    The levels already there stay as they are, and :func:`find_candidates` lets no candidate of
    the new levels displace one of theirs, so the larger blobs are found exactly as without the
    extension.

    Examples
    --------
    >>> s = extend_down(make_scales(2.5, 10.0, 3), 1.5, 3)
    >>> [round(r, 2) for r in s.radii_px[:4]], s.factors[:2]
    ([1.57, 1.98, 2.5, 3.15], (1, 1))
    """
    extra: list[float] = []
    r = scales.radii_px[0] if scales.radii_px else r_min_px
    step = 2 ** (-1 / per_octave)
    while r * step >= r_min_px / 1.05:  # a level within 5 % of the bound still counts
        r *= step
        extra.insert(0, r)
    return Scales(
        tuple(extra) + scales.radii_px,
        (1,) * len(extra) + scales.factors,
        len(extra) + scales.n_below,
    )


def block_mean(img: np.ndarray, f: int) -> np.ndarray:
    """Mean of ``f × f`` blocks; the last partial block is padded with its edge values."""
    if f == 1:
        return img
    ny, nx = img.shape
    py, px = (-ny) % f, (-nx) % f
    if py or px:
        img = np.pad(img, ((0, py), (0, px)), mode="edge")
    return img.reshape(img.shape[0] // f, f, img.shape[1] // f, f).mean(axis=(1, 3))


#: Least radius (px) of a blob that may pass the prominence test in the near window (σ = r).
_MIN_NEAR_RADIUS_PX = 3.0

#: Rows of the tile filtered at a time by :func:`local_stats` (bounds its working set).
_STRIP_ROWS = 128


def _mirror(q: np.ndarray, n: int) -> np.ndarray:
    """Row indices ``q`` (any integers) mirrored into ``[0, n)`` as ``np.pad(..., "symmetric")``."""
    q = np.mod(q, 2 * n)
    return np.where(q >= n, 2 * n - 1 - q, q)


def local_stats(
    img: np.ndarray, iy: np.ndarray, ix: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted mean and variance of ``img`` around the points ``(iy, ix)`` only.

    The same numbers as ``ndimage.gaussian_filter(img, sigma, truncate=LOCAL_TRUNCATE)`` (and of
    ``img²``, minus the mean squared) read at the points, with the image mirrored at its edges
    as scipy's ``reflect`` mode does; computed in each point's window only, which is much
    cheaper than filtering the whole tile when the points are few.

    Examples
    --------
    >>> img = np.arange(100.0).reshape(10, 10)
    >>> m, v = local_stats(img, np.array([5]), np.array([5]), 1.0)
    >>> bool(np.isclose(m[0], ndimage.gaussian_filter(img, 1.0, truncate=LOCAL_TRUNCATE)[5, 5]))
    True
    """
    w = int(LOCAL_TRUNCATE * sigma + 0.5)  # scipy's kernel radius
    k = np.exp(-0.5 * (np.arange(-w, w + 1) / sigma) ** 2)
    k /= k.sum()
    img = np.asarray(img)
    ny = img.shape[0]
    iy, ix = np.asarray(iy, np.int64), np.asarray(ix, np.int64)
    mean = np.empty(len(iy))
    sq = np.empty(len(iy))
    # along x on the rows the points need (one pass each, a strip of rows at a time: bounded
    # memory), then along y at the points only; rows beyond the edge are mirrored (scipy's
    # "reflect", numpy's "symmetric")
    strip = iy // _STRIP_ROWS
    for b in np.unique(strip):
        idx = np.nonzero(strip == b)[0]
        top = int(b) * _STRIP_ROWS
        strip_end = top + _STRIP_ROWS
        src = _mirror(np.arange(top - w, min(strip_end, ny) + w), ny)
        block = np.asarray(img[src], np.float64)
        rows_m = ndimage.correlate1d(block, k, axis=1, mode="reflect")
        rows_s = ndimage.correlate1d(block * block, k, axis=1, mode="reflect")
        yy = (iy[idx] - top)[:, None] + np.arange(2 * w + 1)[None, :]
        # einsum, not BLAS: a point's sum must not depend on how many points share the strip
        mean[idx] = np.einsum("pj,j->p", rows_m[yy, ix[idx, None]], k)
        sq[idx] = np.einsum("pj,j->p", rows_s[yy, ix[idx, None]], k)
    return mean, sq - mean * mean


#: Least share of a blob's LoG response left in ``texture`` for it to be judged against that
#: map: a dark bowl stays dark once bright specks are opened away, a gap among specks does not
#: (0.3-0.7 gave the same craters on the dev and dense splits).
_TEXTURE_RESPONSE_SHARE = 0.5


def find_candidates(
    lum: np.ndarray,
    scales: Scales,
    min_response: float,
    min_prominence: float,
    texture: np.ndarray | None = None,
    texture_min_radius_px: float = 0.0,
    weak_prominence: float | None = None,
) -> np.ndarray:
    """Dark-blob candidates of one tile.

    Parameters
    ----------
    lum
        ``(y, x)`` luminance of the tile with NaN already filled; its origin must be a multiple
        of ``scales.max_factor`` in scene pixels.
    scales
        The pyramid levels.
    min_response
        Least normalised LoG response (same units as ``lum``) of a candidate.
    min_prominence
        Least ratio of the response to the local standard deviation of ``lum`` in a Gaussian
        window of ``2 r`` or, for ``r >= 3`` px, of ``r`` (cut at ``2.5 r``: its own rim and
        ejecta apron), the smaller of the two: a blob must stand out from the texture around
        it, and a building or shadow in only one of the windows does not hide it.
    texture
        Optional ``(y, x)`` map like ``lum`` (``lum`` with bright specks opened away): a blob of
        radius ``texture_min_radius_px`` or more that fails the prominence test passes it when
        it stands out from this map's texture instead, provided this map keeps at least half
        of its response (a dark bowl stays dark without the specks; a gap among them does not).
    texture_min_radius_px
        Least radius, px, of the blobs judged against ``texture``.
    weak_prominence
        Optional lower floor for ``min_prominence``: a blob of the pyramid's own levels (not
        those added below it) that fails both tests above but reaches this floor is returned
        too, flagged *weak*: a crater against a shadow's edge or a wall stands out less from
        that step than from open ground, and its own evidence (an ejecta apron) must then
        decide. Weak blobs are suppressed among themselves and dropped within half a radius
        of a stronger other candidate; they suppress no other.

    Returns
    -------
    numpy.ndarray
        ``(n, 6)`` float64 rows ``(row, col, radius_px, response, local_mean, weak)`` in tile
        pixels (``local_mean``: mean of ``lum`` in a Gaussian window of ``2 r``; ``weak``: 1
        for a blob that passed ``weak_prominence`` only, else 0), after
        non-maximum suppression across scales: a candidate is dropped when a stronger one lies
        within half the larger of the two radii. Candidates of the ``scales.n_below`` levels
        added below the pyramid are suppressed among themselves, and dropped within half a
        radius of a stronger other one (a weaker one near it stays too: both are measured);
        so are those that pass against ``texture`` only, after all others: a wide dark patch
        (rubble) that stands out only once its bright specks are gone does not suppress a
        crater within it.
    """
    rows: list[np.ndarray] = []
    below: list[np.ndarray] = []
    extra: list[np.ndarray] = []  # prominent against ``texture`` only
    weak: list[np.ndarray] = []  # prominent above ``weak_prominence`` only
    cache: dict[int, np.ndarray] = {}
    tex_cache: dict[int, np.ndarray] = {}
    for k, (r, f) in enumerate(zip(scales.radii_px, scales.factors, strict=True)):
        if f not in cache:
            cache[f] = block_mean(lum, f).astype(np.float32)
        small = cache[f]
        sigma = r / math.sqrt(2)
        # the box average already blurred by (f² - 1) / 12 px²; blur the rest
        sigma_d = math.sqrt(max(sigma**2 - (f * f - 1) / 12.0, 0.25 * f * f)) / f
        resp = sigma_d**2 * ndimage.gaussian_laplace(small, sigma_d, truncate=TRUNCATE)
        peak = ndimage.maximum_filter(resp, size=3, mode="nearest")
        iy, ix = np.nonzero((resp == peak) & (resp >= min_response))
        if len(iy) == 0:
            continue
        ratio, mean = _prominence(small, resp, iy, ix, r, f, min_prominence)
        ok = ratio >= min_prominence
        by_texture = np.zeros(len(iy), bool)
        if texture is not None and r >= texture_min_radius_px and not ok.all():
            if f not in tex_cache:
                tex_cache[f] = block_mean(texture, f).astype(np.float32)
            tex = tex_cache[f]
            rest = np.nonzero(~ok)[0]
            # still a dark blob without the specks (a gap among bright specks is not), and
            # standing out from the texture that is left
            resp_t = sigma_d**2 * ndimage.gaussian_laplace(tex, sigma_d, truncate=TRUNCATE)
            dark = resp_t[iy[rest], ix[rest]] >= _TEXTURE_RESPONSE_SHARE * resp[iy[rest], ix[rest]]
            rest = rest[dark]
            tex_ratio = _prominence(tex, resp, iy[rest], ix[rest], r, f, min_prominence)[0]
            by_texture[rest] = tex_ratio >= min_prominence
        by_weak = np.zeros(len(iy), bool)
        if weak_prominence is not None and k >= scales.n_below:
            by_weak = ~ok & ~by_texture & (ratio >= weak_prominence)
        for keep, into, flag in (
            (ok, below if k < scales.n_below else rows, 0.0),
            (by_texture, extra, 0.0),
            (by_weak, weak, 1.0),
        ):
            if not keep.any():
                continue
            out = np.empty((int(keep.sum()), 6))
            out[:, 0] = iy[keep] * f + (f - 1) / 2.0
            out[:, 1] = ix[keep] * f + (f - 1) / 2.0
            out[:, 2] = r
            out[:, 3] = resp[iy[keep], ix[keep]]
            out[:, 4] = mean[keep]
            out[:, 5] = flag
            into.append(out)
    cand = np.concatenate(rows) if rows else np.empty((0, 6))
    cand = suppress(cand[:, :2], cand[:, 2], cand[:, 3], factor=0.5, rows=cand)
    for more in (below, extra, weak):
        if not more:
            continue
        # suppressed among themselves; dropped within half a radius of a stronger one above
        # (a weaker one above near it stays: both are measured)
        add = np.concatenate(more)
        add = suppress(add[:, :2], add[:, 2], add[:, 3], factor=0.5, rows=add)
        cand = np.concatenate([cand, add[~_near_stronger(add, cand)]])
    return cand


def _prominence(
    img: np.ndarray,
    resp: np.ndarray,
    iy: np.ndarray,
    ix: np.ndarray,
    r: float,
    f: int,
    min_prominence: float,
) -> tuple[np.ndarray, np.ndarray]:
    """How far LoG peaks ``(iy, ix)`` of one level stand out from the texture of ``img``, and
    the mean of ``img`` around each (σ = 2 r).

    The response over the texture's standard deviation (+ 0.005) in the wider neighbourhood
    (σ = 2 r) or, where that falls short of ``min_prominence``, the larger of it and the same
    in the crater's own surroundings (σ = r, cut at 2.5 r: bowl, rim and ejecta apron): the
    calmer texture decides, so a building, edge or shadow beyond the apron does not hide a
    crater, nor one at its rim. The second window not for blobs under 3 px, whose bowl the
    texture and roundness tests (which reject the clutter this lets through) cannot judge.
    Exact for any threshold up to ``min_prominence``.
    """
    mean, var = local_stats(img, iy, ix, 2 * r / f)
    peak = resp[iy, ix]
    ratio = peak / (np.sqrt(np.maximum(var, 0.0)) + 0.005)
    near = np.nonzero(ratio < min_prominence)[0]
    if r >= _MIN_NEAR_RADIUS_PX and len(near):
        _, var_near = local_stats(img, iy[near], ix[near], r / f)
        ratio[near] = np.maximum(
            ratio[near], peak[near] / (np.sqrt(np.maximum(var_near, 0.0)) + 0.005)
        )
    return ratio, mean


def _near_stronger(add: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Which rows of ``add`` lie within half the larger radius of a stronger row of ``cand``."""
    if len(add) == 0 or len(cand) == 0:
        return np.zeros(len(add), bool)
    from scipy.spatial import cKDTree

    near = cKDTree(cand[:, :2]).query_ball_point(
        add[:, :2], 0.5 * max(float(cand[:, 2].max()), float(add[:, 2].max()))
    )
    return np.array(
        [
            any(
                cand[j, 3] >= add[i, 3]
                and math.hypot(*(add[i, :2] - cand[j, :2])) < 0.5 * max(add[i, 2], cand[j, 2])
                for j in js
            )
            for i, js in enumerate(near)
        ],
        bool,
    )


def suppress(
    centres: np.ndarray,
    radii: np.ndarray,
    strength: np.ndarray,
    *,
    factor: float,
    rows: np.ndarray,
) -> np.ndarray:
    """Keep rows with no stronger neighbour closer than ``factor × max(r_i, r_j)``.

    The rule is local (a row is judged against its neighbours only, not against what was kept
    before), so the result near a tile seam does not depend on where the tile was cut.
    Ties are broken by position so the result does not depend on row order.
    """
    if len(rows) < 2:
        return rows
    from scipy.spatial import cKDTree

    tree = cKDTree(centres)
    pairs = tree.query_pairs(factor * float(radii.max()), output_type="ndarray")
    keep = np.ones(len(rows), bool)
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        d = np.hypot(*(centres[i] - centres[j]).T)
        close = d < factor * np.maximum(radii[i], radii[j])
        i, j = i[close], j[close]
        key = np.lexsort((centres[:, 1], centres[:, 0], strength))  # ascending, ties by position
        rank = np.empty(len(rows), np.int64)
        rank[key] = np.arange(len(rows))
        keep[np.where(rank[i] < rank[j], i, j)] = False
    return rows[keep]
