"""Per-candidate crater measurements for :mod:`changedet.craters` (numpy, one tile at a time).

Every measurement is made in a window centred on an integer scene pixel, with sub-pixel offsets
relative to that pixel, so the numbers do not depend on which tile computed them.

Geometry of a crater of rim radius ``R`` around its centre (distances ``ρ``):

* interior ``ρ < 0.75 R`` — the bowl: dark (shadowed wall, disturbed or moist soil);
* ring ``1.15 R ≤ ρ < 2 R`` — rim and ejecta: bright, irregular, all around;
* outside ``2.3 R ≤ ρ < 3 R`` — the undisturbed background and its texture.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

N_RAYS = 32
N_SECTORS = 8
#: Measurement window half-size, in rim radii (the outside annulus ends at 3 R).
WINDOW_RADII = 3.2


def window(lum: np.ndarray, row: int, col: int, half: int) -> np.ndarray:
    """``(2 half + 1)²`` window of ``lum`` centred on ``(row, col)``, NaN outside the tile."""
    ny, nx = lum.shape
    out = np.full((2 * half + 1, 2 * half + 1), np.nan, dtype=np.float64)
    r0, r1 = max(row - half, 0), min(row + half + 1, ny)
    c0, c1 = max(col - half, 0), min(col + half + 1, nx)
    if r0 < r1 and c0 < c1:
        out[r0 - row + half : r1 - row + half, c0 - col + half : c1 - col + half] = lum[
            r0:r1, c0:c1
        ]
    return out


def _nanmean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def _rays(win: np.ndarray, dy: float, dx: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Intensity along ``N_RAYS`` rays from the offset centre: returns (rho, values (ray, rho))."""
    half = (win.shape[0] - 1) / 2
    step = max(0.25, r / 24)
    rho = np.arange(0.2 * r, 2.0 * r + step, step)
    theta = 2 * np.pi * np.arange(N_RAYS) / N_RAYS
    ys = half + dy + np.sin(theta)[:, None] * rho[None]
    xs = half + dx + np.cos(theta)[:, None] * rho[None]
    filled = np.where(np.isfinite(win), win, np.nanmean(win))
    vals = ndimage.map_coordinates(filled, [ys.ravel(), xs.ravel()], order=1, mode="nearest")
    return rho, vals.reshape(N_RAYS, len(rho))


def _parabola_peak(y: np.ndarray, i: int) -> float:
    """Sub-sample offset of the maximum at ``i`` of a sampled curve (in samples, |off| <= 0.5)."""
    if 0 < i < len(y) - 1:
        a, b, c = y[i - 1], y[i], y[i + 1]
        den = a - 2 * b + c
        if den < 0:
            return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return 0.0


def rim_radius(rho: np.ndarray, vals: np.ndarray, r: float, psf_px: float = 0.7) -> float:
    """Rim radius from the azimuthal mean profile of ray samples ``vals`` (ray, rho).

    The crater's edge is where the dark bowl gives way to the bright rim: the steepest rise of
    the profile. Blur (the sensor's PSF, ~0.7 px, and the profile smoothing ``s``) pulls the
    steepest point of a small disc's profile inwards by about ``s² / 2R``; ``sqrt(ρ² + s²)``
    undoes that to first order (it matters only for craters of a few pixels).
    """
    step = rho[1] - rho[0]
    smooth = max(0.5, 0.06 * r / step)
    prof = ndimage.gaussian_filter1d(vals.mean(axis=0), smooth, mode="nearest")
    grad = np.gradient(prof, step)
    band = np.nonzero((rho >= 0.45 * r) & (rho <= 1.7 * r))[0]
    i = int(band[np.argmax(grad[band])])
    steep = float(rho[i]) + _parabola_peak(grad, i) * step
    return math.sqrt(steep**2 + (smooth * step) ** 2 + psf_px**2)


def refine(win: np.ndarray, r0: float, iterations: int = 2) -> tuple[float, float, float]:
    """Refine centre and rim radius from the dark-to-bright edge along rays.

    Along each ray the rim is where intensity rises fastest going out (dark bowl to bright rim);
    a weighted least-squares fit of ``ρ_i = R + d · u_i`` over rays gives the centre offset ``d``.
    Rays without a rise (the lit far wall under low sun) get no weight. The radius comes from
    the azimuthal mean profile at the final centre (:func:`rim_radius`), which is less noisy.

    Returns
    -------
    (dy, dx, radius_px)
        Offsets from the window centre and the rim radius, in pixels.
    """
    dy = dx = 0.0
    r = r0
    theta = 2 * np.pi * np.arange(N_RAYS) / N_RAYS
    design = np.stack([np.ones(N_RAYS), np.cos(theta), np.sin(theta)], axis=1)
    for it in range(iterations + 1):
        rho, vals = _rays(win, dy, dx, r)
        r = float(np.clip(rim_radius(rho, vals, r), 0.6 * r, 1.6 * r))
        if it == iterations:
            break
        step = rho[1] - rho[0]
        smooth = ndimage.gaussian_filter1d(vals, max(0.5, 0.06 * r / step), axis=1, mode="nearest")
        grad = np.diff(smooth, axis=1) / step  # at mid-points
        mid = 0.5 * (rho[1:] + rho[:-1])
        band = np.nonzero((mid >= 0.45 * r) & (mid <= 1.7 * r))[0]
        g = grad[:, band]
        k = np.argmax(g, axis=1)
        w = np.maximum(g[np.arange(N_RAYS), k], 0.0)
        if np.count_nonzero(w > 0.1 * w.max(initial=0)) < N_RAYS // 3:
            continue
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(design * sw[:, None], mid[band][k] * sw, rcond=None)
        ddx, ddy = float(coef[1]), float(coef[2])
        shift = math.hypot(ddx, ddy)
        if shift > 0.5 * r:  # a wild fit: move at most half a radius
            ddx, ddy = ddx * 0.5 * r / shift, ddy * 0.5 * r / shift
        dx, dy = dx + ddx, dy + ddy
    return dy, dx, r


#: Samples per ray, from 0.2 R to 2 R (step R / 24 whatever the radius, so that every
#: candidate's profile has the same shape and all are refined at once).
_RAY_SAMPLES = 44


#: Candidates refined together: bounds :func:`refine_all`'s ``(candidate, ray, ρ)`` arrays
#: (under 1 MB each) whatever the number of candidates in a tile.
REFINE_BATCH = 64


def refine_all(
    lum: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    r0: np.ndarray,
    iterations: int = 2,
    batch: int = REFINE_BATCH,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`refine` for many candidates at once (``lum`` NaN-free; integer centres).

    Every candidate's rays are sampled bilinearly on the tile (:func:`_bilinear`), at ``ρ = R · (0.2 … 2)`` in steps of ``R / 24``, smoothed and differentiated as
    one ``(candidate, ray, ρ)`` array; the weighted least-squares circle fits are solved as
    a batch of 3 × 3 normal equations. Candidates are processed ``batch`` at a time (memory
    bounded; each candidate's numbers do not depend on the others). Returns
    ``(dy, dx, radius_px)`` arrays.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:64, 0:64]
    >>> rho = np.hypot(yy - 32.4, xx - 31.7)
    >>> lum = np.where(rho < 8, 0.2, 1.0)
    >>> dy, dx, r = refine_all(lum, np.array([32]), np.array([32]), np.array([7.0]))
    >>> round(float(dy[0]), 1), round(float(dx[0]), 1), round(float(r[0]))
    (0.4, -0.3, 8)
    """
    rows, cols, r0 = np.asarray(rows), np.asarray(cols), np.asarray(r0, np.float64)
    if len(rows) <= batch:
        return _refine_batch(lum, rows, cols, r0, iterations)
    parts = [
        _refine_batch(lum, rows[i : i + batch], cols[i : i + batch], r0[i : i + batch], iterations)
        for i in range(0, len(rows), batch)
    ]
    return tuple(np.concatenate(x) for x in zip(*parts, strict=True))  # type: ignore[return-value]


def _bilinear(
    img: np.ndarray, rows: np.ndarray, cols: np.ndarray, fy: np.ndarray, fx: np.ndarray
) -> np.ndarray:
    """Bilinear samples of ``img`` at ``(rows + fy, cols + fx)``, edge values beyond the edge.

    ``rows``/``cols`` are each candidate's integer pixel, ``fy``/``fx`` ``(n, ...)`` offsets
    from it. The interpolation weights come from the offsets alone, never from tile
    coordinates (``1069.3`` and ``45.3`` do not share their rounding), so a candidate's samples
    are the same whichever tile holds it; otherwise as ``map_coordinates(order=1,
    mode="nearest")``.

    Examples
    --------
    >>> img = np.arange(12.0).reshape(3, 4)
    >>> _bilinear(img, np.array([1]), np.array([1]), np.array([[0.5]]), np.array([[0.25]]))
    array([[7.25]])
    """
    ny, nx = img.shape
    extra = (slice(None),) + (None,) * (fy.ndim - 1)
    by, bx = np.floor(fy), np.floor(fx)
    wy, wx = fy - by, fx - bx
    y0 = rows[extra] + by.astype(np.int64)
    x0 = cols[extra] + bx.astype(np.int64)
    y0c, y1c = np.clip(y0, 0, ny - 1), np.clip(y0 + 1, 0, ny - 1)
    x0c, x1c = np.clip(x0, 0, nx - 1), np.clip(x0 + 1, 0, nx - 1)
    top = img[y0c, x0c] * (1 - wx) + img[y0c, x1c] * wx
    bottom = img[y1c, x0c] * (1 - wx) + img[y1c, x1c] * wx
    return top * (1 - wy) + bottom * wy


def _refine_batch(
    lum: np.ndarray, rows: np.ndarray, cols: np.ndarray, r0: np.ndarray, iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`refine_all` for one batch of candidates."""
    n = len(rows)
    dy = np.zeros(n)
    dx = np.zeros(n)
    r = np.asarray(r0, np.float64).copy()
    if n == 0:
        return dy, dx, r
    u = np.linspace(0.2, 2.0, _RAY_SAMPLES)  # ρ / R
    du = u[1] - u[0]
    smooth = max(0.5, 0.06 / du)  # in samples, as in rim_radius
    theta = 2 * np.pi * np.arange(N_RAYS) / N_RAYS
    ct, st = np.cos(theta), np.sin(theta)
    design = np.stack([np.ones(N_RAYS), ct, st], axis=1)  # (ray, 3)
    mid_u = 0.5 * (u[1:] + u[:-1])
    cy = np.asarray(rows, np.int64)
    cx = np.asarray(cols, np.int64)
    for it in range(iterations + 1):
        rho = r[:, None] * u[None]  # (n, s)
        fy = dy[:, None, None] + st[None, :, None] * rho[:, None, :]
        fx = dx[:, None, None] + ct[None, :, None] * rho[:, None, :]
        vals = _bilinear(lum, cy, cx, fy, fx)
        # radius from the azimuthal mean profile: steepest rise between 0.45 R and 1.7 R
        prof = ndimage.gaussian_filter1d(vals.mean(axis=1), smooth, axis=1, mode="nearest")
        grad = np.gradient(prof, du, axis=1)
        band = (u >= 0.45) & (u <= 1.7)
        gb = np.where(band[None], grad, -np.inf)
        i = np.argmax(gb, axis=1)
        ii = np.clip(i, 1, _RAY_SAMPLES - 2)
        a, b, c = grad[np.arange(n), ii - 1], grad[np.arange(n), ii], grad[np.arange(n), ii + 1]
        den = a - 2 * b + c
        inner = (i > 0) & (i < _RAY_SAMPLES - 1) & (den < 0)
        off = np.where(inner, np.clip(0.5 * (a - c) / np.where(den < 0, den, -1.0), -0.5, 0.5), 0)
        r_s = r  # the radius the rays were sampled with
        steep = (u[i] + off * du) * r_s
        new_r = np.sqrt(steep**2 + (smooth * du * r_s) ** 2 + 0.7**2)
        r = np.clip(new_r, 0.6 * r_s, 1.6 * r_s)
        if it == iterations:
            break
        sm = ndimage.gaussian_filter1d(vals, smooth, axis=2, mode="nearest")
        g = np.diff(sm, axis=2) / (du * r_s[:, None, None])  # (n, ray, s - 1) at mid-points
        mid_px = mid_u[None] * r_s[:, None]
        bmask = (mid_px >= 0.45 * r[:, None]) & (mid_px <= 1.7 * r[:, None])
        g = np.where(bmask[:, None, :], g, -np.inf)
        k = np.argmax(g, axis=2)  # (n, ray)
        w = np.maximum(np.take_along_axis(g, k[..., None], axis=2)[..., 0], 0.0)
        ok = np.count_nonzero(w > 0.1 * w.max(axis=1, keepdims=True), axis=1) >= N_RAYS // 3
        ok &= w.max(axis=1) > 0
        target = mid_u[k] * r_s[:, None]  # (n, ray) edge distances in px
        # weighted least squares with weights sqrt(w) on rows: normal equations A^T W A
        ata = np.einsum("nr,ri,rj->nij", w, design, design)
        atb = np.einsum("nr,ri,nr->ni", w, design, target)
        ata[~ok] = np.eye(3)
        atb[~ok] = 0.0
        coef = np.linalg.solve(ata + 1e-12 * np.eye(3), atb[..., None])[..., 0]
        ddx, ddy = coef[:, 1], coef[:, 2]
        shift = np.hypot(ddx, ddy)
        lim = np.where(shift > 0.5 * r, 0.5 * r / np.maximum(shift, 1e-12), 1.0)
        dx = dx + np.where(ok, ddx * lim, 0.0)
        dy = dy + np.where(ok, ddy * lim, 0.0)
    return dy, dx, r


#: Roundness is measured on the bowl and rim only: beyond this many rim radii the image is
#: replaced by the ring's mean brightness (a building, road edge or shadow next to a crater
#: must not make its bowl look elongated).
ROUND_CLIP = 1.3


def _hessian_roundness(win: np.ndarray, dy: float, dx: float, r: float, fill: float) -> float:
    """Ratio of the Hessian eigenvalues (small/large) of the bowl at scale ``R/√2``.

    The odd (dipole) part of directional shading has no second derivative at the centre, so a
    shaded bowl still reads as round; an elongated shadow or car reads as a ridge (ratio ≈ 0).
    Pixels beyond ``ROUND_CLIP R`` (and NaN) are replaced by ``fill`` (the ring's mean).
    """
    half = (win.shape[0] - 1) / 2
    sigma = r / math.sqrt(2)
    yy, xx = np.mgrid[0 : win.shape[0], 0 : win.shape[1]].astype(np.float64)
    y, x = yy - half - dy, xx - half - dx
    g = np.exp(-(x * x + y * y) / (2 * sigma**2))
    g /= g.sum()
    img = np.where(np.isfinite(win) & (np.hypot(x, y) <= ROUND_CLIP * r), win, fill)
    s4 = sigma**4
    hxx = float(np.sum(img * (x * x / s4 - 1 / sigma**2) * g))
    hyy = float(np.sum(img * (y * y / s4 - 1 / sigma**2) * g))
    hxy = float(np.sum(img * (x * y / s4) * g))
    tr, det = hxx + hyy, hxx * hyy - hxy * hxy
    disc = math.sqrt(max(tr * tr / 4 - det, 0.0))
    lmax, lmin = tr / 2 + disc, tr / 2 - disc
    if lmax <= 0:
        return 0.0
    return float(max(lmin, 0.0) / lmax)


def rings(
    win: np.ndarray, dy: float, dx: float, r: float, sun_px: tuple[float, float] | None
) -> dict[str, float]:
    """Interior / ring / outside statistics of a window at a given centre offset and radius."""
    half = (win.shape[0] - 1) / 2
    ax = np.arange(win.shape[0], dtype=np.float64) - half
    y, x = (ax - dy)[:, None], (ax - dx)[None, :]
    rho = np.hypot(x, y)
    finite = np.isfinite(win)
    inside = rho < 3.0 * r
    n_inside = np.count_nonzero(inside)
    valid = float(np.count_nonzero(finite & inside)) / n_inside if n_inside else 0.0
    # one label per pixel: 0 interior, 1-8 ring sectors, 9 outside, 10 none; then bincount
    sector = np.floor((np.arctan2(y, x) + np.pi) / (2 * np.pi) * N_SECTORS).astype(int) % N_SECTORS
    label = np.full(win.shape, 10, np.int64)
    label[rho < 0.75 * r] = 0
    ring = (rho >= 1.15 * r) & (rho < 2.0 * r)
    label[ring] = 1 + sector[ring]
    outside = (rho >= 2.3 * r) & (rho < 3.0 * r)
    label[outside] = 9
    lab, val = label[finite], win[finite]
    cnt = np.bincount(lab, minlength=11).astype(np.float64)
    tot = np.bincount(lab, weights=val, minlength=11)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = tot / cnt
    m_in = float(means[0])
    m_ring = float(tot[1:9].sum() / cnt[1:9].sum()) if cnt[1:9].sum() else math.nan
    m_out = float(means[9])
    sd_out = (
        float(
            np.sqrt(
                max(np.bincount(lab, weights=val * val, minlength=11)[9] / cnt[9] - m_out**2, 0.0)
            )
        )
        if cnt[9] > 2
        else math.nan
    )
    depth = m_ring - m_in
    sect = means[1:9] - m_in
    sect = np.sort(np.where(np.isfinite(sect), sect, -np.inf))
    shading = math.nan
    if sun_px is not None:
        proj = x * sun_px[0] + y * sun_px[1]
        bowl = rho < 0.85 * r
        near = _nanmean(win[bowl & (proj > 0.2 * r)])  # the wall nearest the sun
        far = _nanmean(win[bowl & (proj < -0.2 * r)])
        d = near - far  # < 0 for a depression (near wall in shadow), > 0 for a mound
        shading = float(-d / (abs(d) + max(depth, 1e-9))) if np.isfinite(d) else math.nan
    return {
        "m_in": m_in,
        "m_ring": m_ring,
        "m_out": m_out,
        "sd_out": sd_out,
        "depth": depth,
        "enclosure": float(sect[1]) / depth if depth > 0 else 0.0,
        "shading": shading,
        "valid": valid,
    }


def ramp(x: float, lo: float, hi: float) -> float:
    """0 below ``lo``, 1 above ``hi``, linear between (NaN gives 0)."""
    if not np.isfinite(x):
        return 0.0
    return float(np.clip((x - lo) / (hi - lo), 0.0, 1.0))


def _groups(half: np.ndarray, budget: int = 1_500_000) -> list[np.ndarray]:
    """Indices of candidates grouped by window half-size, each group at most ``budget`` pixels.

    Every candidate is measured in its own ``(2 half + 1)²`` window, exactly as
    :func:`window` would cut it, so a batch's composition never changes a number.
    """
    out = []
    order = np.argsort(half, kind="stable")
    hs = half[order]
    for h in np.unique(hs):
        idx = order[hs == h]
        per = max(1, budget // (2 * int(h) + 1) ** 2)
        out.extend(idx[i : i + per] for i in range(0, len(idx), per))
    return out


def _windows(arr: np.ndarray, rows: np.ndarray, cols: np.ndarray, h: int) -> np.ndarray:
    """``(n, 2h + 1, 2h + 1)`` float64 windows of ``arr`` around ``(rows, cols)``, NaN outside.

    Gathered from the tile directly (no padded copy of the whole tile): the same values as
    :func:`window` cuts, whatever the number of candidates.
    """
    ny, nx = arr.shape
    off = np.arange(-h, h + 1)
    ri = rows[:, None, None] + off[None, :, None]
    ci = cols[:, None, None] + off[None, None, :]
    out = np.asarray(arr[np.clip(ri, 0, ny - 1), np.clip(ci, 0, nx - 1)], np.float64)
    outside = (ri < 0) | (ri >= ny) | (ci < 0) | (ci >= nx)
    if outside.any():
        out[np.broadcast_to(outside, out.shape)] = np.nan
    return out


def _polar(h: int, dy: np.ndarray, dx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, x, rho)`` of every window pixel relative to each candidate's sub-pixel centre."""
    ax = np.arange(-h, h + 1, dtype=np.float64)
    y = ax[None, :, None] - dy[:, None, None]
    x = ax[None, None, :] - dx[:, None, None]
    return y, x, np.hypot(x, y)


def _masked_mean(val: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-candidate mean of the finite ``val`` where ``mask`` (NaN where none)."""
    m = mask & np.isfinite(val)
    cnt = m.sum(axis=(1, 2))
    tot = np.where(m, val, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / cnt, np.nan)


def _plane_residual_sd(
    win: np.ndarray, mask: np.ndarray, y: np.ndarray, x: np.ndarray
) -> np.ndarray:
    """Per-candidate standard deviation of ``win`` where ``mask``, about its best-fitting plane.

    A bowl lit from one side is a brightness ramp from the shadowed to the lit wall: the plane
    takes that out, what is left is the bowl's texture. NaN with fewer than 6 pixels.
    """
    w = mask.astype(np.float64)
    v = np.where(mask, win, 0.0)
    yb, xb = np.broadcast_to(y, win.shape), np.broadcast_to(x, win.shape)
    n = w.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (w * xb).sum(axis=(1, 2)) / n
        my = (w * yb).sum(axis=(1, 2)) / n
        mv = v.sum(axis=(1, 2)) / n
        dx = (xb - mx[:, None, None]) * w
        dy = (yb - my[:, None, None]) * w
        dv = (v - mv[:, None, None]) * w
        sxx, syy, sxy = (
            (dx * dx).sum(axis=(1, 2)),
            (dy * dy).sum(axis=(1, 2)),
            (dx * dy).sum(axis=(1, 2)),
        )
        svx, svy, svv = (
            (dv * dx).sum(axis=(1, 2)),
            (dv * dy).sum(axis=(1, 2)),
            (dv * dv).sum(axis=(1, 2)),
        )
        det = sxx * syy - sxy * sxy
        explained = np.where(
            det > 0,
            (syy * svx * svx - 2 * sxy * svx * svy + sxx * svy * svy) / np.where(det > 0, det, 1),
            0.0,
        )
        res = np.sqrt(np.maximum(svv - explained, 0.0) / np.maximum(n - 3, 1))
    return np.where(n >= 6, res, np.nan)


def measure_all(
    lum: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    r: np.ndarray,
    sun_px: tuple[float, float] | None,
) -> dict[str, np.ndarray]:
    """:func:`rings` and the Hessian roundness for many candidates at once.

    Candidates sit at integer tile pixels ``(rows, cols)`` with sub-pixel centre offsets
    ``(dy, dx)`` and rim radii ``r`` (px); each is measured in the window of half-size
    ``ceil(WINDOW_RADII r) + 2`` that :func:`window` cuts around it, grouped by that size so that
    the pixels and weights are exactly those of the one-at-a-time measurement.

    Returns
    -------
    dict
        Arrays ``m_in``, ``m_ring``, ``m_out``, ``sd_out`` and ``sd_ring`` (the standard
        deviations outside and in the ring), ``sd_in`` (the interior's, about the plane that best
        fits it: the wall shading removed), ``depth``, ``enclosure``,
        ``shading`` (NaN without the sun), ``valid`` and ``roundness`` (of the bowl, see
        :func:`_hessian_roundness`), one value per candidate.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:64, 0:64]
    >>> img = np.where(np.hypot(yy - 32, xx - 32) < 5, 0.2, 0.8)
    >>> m = measure_all(img, np.array([32]), np.array([32]), np.zeros(1), np.zeros(1),
    ...                 np.array([5.0]), None)
    >>> round(float(m["depth"][0]), 2), round(float(m["roundness"][0]), 2)
    (0.6, 1.0)
    """
    n = len(rows)
    keys = (
        "m_in",
        "m_ring",
        "m_out",
        "sd_out",
        "sd_ring",
        "sd_in",
        "depth",
        "enclosure",
        "shading",
        "valid",
    )
    out = {k: np.full(n, np.nan) for k in (*keys, "roundness")}
    if n == 0:
        return out
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    r = np.asarray(r, np.float64)
    half = np.ceil(WINDOW_RADII * r).astype(np.int64) + 2
    for idx in _groups(half):
        h = int(half[idx[0]])
        win = _windows(lum, rows[idx], cols[idx], h)
        rr = r[idx][:, None, None]
        y, x, rho = _polar(h, dy[idx], dx[idx])
        m = len(idx)
        finite = np.isfinite(win)
        inside = rho < 3.0 * rr
        n_inside = inside.sum(axis=(1, 2))
        valid = np.where(
            n_inside > 0, (finite & inside).sum(axis=(1, 2)) / np.maximum(n_inside, 1), 0.0
        )
        sector = (
            np.floor((np.arctan2(y, x) + np.pi) / (2 * np.pi) * N_SECTORS).astype(np.int64)
            % N_SECTORS
        )
        label = np.full(rho.shape, 10, np.int64)
        label[rho < 0.75 * rr] = 0
        ring = (rho >= 1.15 * rr) & (rho < 2.0 * rr)
        label = np.where(ring, 1 + sector, label)
        label[(rho >= 2.3 * rr) & (rho < 3.0 * rr)] = 9
        lab = (label + 11 * np.arange(m)[:, None, None])[finite]
        val = win[finite]
        cnt = np.bincount(lab, minlength=11 * m).reshape(m, 11).astype(np.float64)
        tot = np.bincount(lab, weights=val, minlength=11 * m).reshape(m, 11)
        sq = np.bincount(lab, weights=val * val, minlength=11 * m).reshape(m, 11)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = tot / cnt
            c_ring = cnt[:, 1:9].sum(axis=1)
            m_ring = np.where(c_ring > 0, tot[:, 1:9].sum(axis=1) / c_ring, np.nan)
            m_out = means[:, 9]
            sd_out = np.where(
                cnt[:, 9] > 2, np.sqrt(np.maximum(sq[:, 9] / cnt[:, 9] - m_out**2, 0.0)), np.nan
            )
            sd_ring = np.where(
                c_ring > 2,
                np.sqrt(np.maximum(sq[:, 1:9].sum(axis=1) / c_ring - m_ring**2, 0.0)),
                np.nan,
            )
        m_in = means[:, 0]
        depth = m_ring - m_in
        sect = means[:, 1:9] - m_in[:, None]
        sect = np.sort(np.where(np.isfinite(sect), sect, -np.inf), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            enclosure = np.where(depth > 0, sect[:, 1] / np.where(depth > 0, depth, 1.0), 0.0)
        # the interior (rho < 0.75 R) lies in the window's centre: fit the plane there only
        ri = min(h, math.ceil(0.75 * float(rr.max())) + 1)
        c = slice(h - ri, h + ri + 1)
        sd_in = _plane_residual_sd(
            win[:, c, c], (finite & (label == 0))[:, c, c], y[:, c, :], x[:, :, c]
        )
        shading = np.full(m, np.nan)
        if sun_px is not None:
            proj = x * sun_px[0] + y * sun_px[1]
            bowl = rho < 0.85 * rr
            near = _masked_mean(win, bowl & (proj > 0.2 * rr))
            far = _masked_mean(win, bowl & (proj < -0.2 * rr))
            d = near - far
            with np.errstate(invalid="ignore"):
                shading = -d / (np.abs(d) + np.maximum(depth, 1e-9))
        # Hessian eigenvalue ratio at scale R / sqrt(2), as in _hessian_roundness
        sigma2 = (rr / math.sqrt(2)) ** 2
        g = np.exp(-(x * x + y * y) / (2 * sigma2))
        g /= g.sum(axis=(1, 2), keepdims=True)
        fill = np.where(np.isfinite(m_ring), m_ring, 0.0)[:, None, None]
        img = np.where(finite & (rho <= ROUND_CLIP * rr), win, fill) * g
        s4 = sigma2 * sigma2
        hxx = (img * (x * x / s4 - 1 / sigma2)).sum(axis=(1, 2))
        hyy = (img * (y * y / s4 - 1 / sigma2)).sum(axis=(1, 2))
        hxy = (img * (x * y / s4)).sum(axis=(1, 2))
        tr, det = hxx + hyy, hxx * hyy - hxy * hxy
        disc = np.sqrt(np.maximum(tr * tr / 4 - det, 0.0))
        lmax, lmin = tr / 2 + disc, tr / 2 - disc
        with np.errstate(invalid="ignore", divide="ignore"):
            roundness = np.where(
                lmax > 0, np.maximum(lmin, 0.0) / np.where(lmax > 0, lmax, 1.0), 0.0
            )
        for k, v in zip(
            (*keys, "roundness"),
            (
                m_in,
                m_ring,
                m_out,
                sd_out,
                sd_ring,
                sd_in,
                depth,
                enclosure,
                shading,
                valid,
                roundness,
            ),
            strict=True,
        ):
            out[k][idx] = v
    return out


def bowl_gradient(
    lum: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    r: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Brightness across each bowl (``ρ < 0.85 R``) along the tile's columns and rows.

    The mean of the half with ``x > 0.2 R`` minus that with ``x < −0.2 R``, and the same along
    ``y`` (rows): the halves the shading test compares along the sun's direction. A bowl's
    wall nearest the sun is in shadow, so the sun lies against this vector.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:21, 0:21]
    >>> ramp_east = 1.0 + 0.1 * (xx - 10)  # brighter to the east: the sun stands west
    >>> gx, gy = bowl_gradient(ramp_east, np.array([10]), np.array([10]), np.zeros(1),
    ...                        np.zeros(1), np.array([6.0]))
    >>> bool(gx[0] > 0), bool(abs(gy[0]) < 1e-12)
    (True, True)
    """
    n = len(rows)
    gx, gy = np.full(n, np.nan), np.full(n, np.nan)
    if n == 0:
        return gx, gy
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    r = np.broadcast_to(np.asarray(r, np.float64), (n,))
    half = np.ceil(r).astype(np.int64) + 2
    for idx in _groups(half):
        h = int(half[idx[0]])
        win = _windows(lum, rows[idx], cols[idx], h)
        y, x, rho = _polar(h, dy[idx], dx[idx])
        rr = r[idx][:, None, None]
        bowl = rho < 0.85 * rr
        gx[idx] = _masked_mean(win, bowl & (x > 0.2 * rr)) - _masked_mean(
            win, bowl & (x < -0.2 * rr)
        )
        gy[idx] = _masked_mean(win, bowl & (y > 0.2 * rr)) - _masked_mean(
            win, bowl & (y < -0.2 * rr)
        )
    return gx, gy


def annulus_means(
    arr: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    r_in: np.ndarray,
    r_out: np.ndarray,
    minus: np.ndarray | None = None,
    minus_scale: tuple[float, float] = (1.0, 0.0),
    sectors: int = 0,
) -> np.ndarray:
    """Mean of the finite values of ``arr`` with ``r_in <= ρ < r_out`` px of each centre.

    Centres are integer tile pixels plus sub-pixel offsets; NaN where no value is finite. With
    ``minus`` (an array like ``arr``), the mean of ``|arr − (g · minus + o)|`` instead, with
    ``(g, o) = minus_scale``, computed in the windows only (no difference image of the whole
    tile). With ``sectors > 0``, an ``(n, sectors)`` array: the mean in each of that many equal
    angular sectors of the annulus, the first starting at −x and turning through −y.

    Examples
    --------
    >>> a = np.arange(25.0).reshape(5, 5)
    >>> annulus_means(a, np.array([2]), np.array([2]), np.zeros(1), np.zeros(1),
    ...               np.zeros(1), np.array([1.5]))
    array([12.])
    >>> annulus_means(a, np.array([2]), np.array([2]), np.zeros(1), np.zeros(1),
    ...               np.full(1, 0.5), np.array([1.5]), sectors=2)  # upper half, lower half
    array([[ 8., 16.]])
    """
    n = len(rows)
    res = np.full((n, sectors) if sectors else n, np.nan)
    if n == 0:
        return res
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    r_in = np.broadcast_to(np.asarray(r_in, np.float64), (n,))
    r_out = np.broadcast_to(np.asarray(r_out, np.float64), (n,))
    half = np.ceil(r_out).astype(np.int64) + 2
    for idx in _groups(half):
        h = int(half[idx[0]])
        win = _windows(arr, rows[idx], cols[idx], h)
        if minus is not None:
            other = _windows(minus, rows[idx], cols[idx], h)
            if minus_scale != (1.0, 0.0):
                other = minus_scale[0] * other + minus_scale[1]
            win = np.abs(win - other)
        y, x, rho = _polar(h, dy[idx], dx[idx])
        mask = (rho >= r_in[idx][:, None, None]) & (rho < r_out[idx][:, None, None])
        if not sectors:
            res[idx] = _masked_mean(win, mask)
            continue
        ang = np.arctan2(*np.broadcast_arrays(y, x))
        sec = np.floor((ang + np.pi) / (2 * np.pi) * sectors).astype(np.int64) % sectors
        for k in range(sectors):
            res[idx, k] = _masked_mean(win, mask & (sec == k))
    return res


def ramps(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """:func:`ramp` of an array (NaN gives 0).

    Examples
    --------
    >>> ramps(np.array([0.0, 0.5, 2.0, np.nan]), 0.0, 1.0)
    array([0. , 0.5, 1. , 0. ])
    """
    x = np.asarray(x, np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(x), np.clip((x - lo) / (hi - lo), 0.0, 1.0), 0.0)
