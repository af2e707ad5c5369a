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
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

N_RAYS = 32
N_SECTORS = 8
#: Measurement window half-size, in rim radii (the outside annulus ends at 3 R).
WINDOW_RADII = 3.2


@dataclass(frozen=True)
class Measure:
    """What one candidate looks like; intensities in units of the scene's luminance range."""

    row: int  # tile pixel nearest the centre
    col: int
    dy: float  # sub-pixel offset of the centre from that pixel
    dx: float
    radius_px: float
    depth: float  # ring mean - interior mean
    ring: float  # ring mean
    contrast_snr: float  # depth / background texture (standard deviation outside)
    enclosure: float  # 2nd-weakest ring sector's depth / depth
    ejecta: float  # (ring mean - outside mean) / depth
    roundness: float  # Hessian eigenvalue ratio at the crater's scale, 1 for a disc
    shading: float  # depression consistency in (-1, 1); NaN when the sun is unknown
    valid: float  # share of valid pixels in the window


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


def refine_all(
    lum: np.ndarray, rows: np.ndarray, cols: np.ndarray, r0: np.ndarray, iterations: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`refine` for many candidates at once (``lum`` NaN-free; integer centres).

    Every candidate's rays are sampled in one :func:`scipy.ndimage.map_coordinates` call on
    the tile, at ``ρ = R · (0.2 … 2)`` in steps of ``R / 24``, smoothed and differentiated as
    one ``(candidate, ray, ρ)`` array; the weighted least-squares circle fits are solved as
    a batch of 3 × 3 normal equations. Returns ``(dy, dx, radius_px)`` arrays.
    """
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
    cy = np.asarray(rows, np.float64)
    cx = np.asarray(cols, np.float64)
    for it in range(iterations + 1):
        rho = r[:, None] * u[None]  # (n, s)
        ys = cy[:, None, None] + dy[:, None, None] + st[None, :, None] * rho[:, None, :]
        xs = cx[:, None, None] + dx[:, None, None] + ct[None, :, None] * rho[:, None, :]
        vals = ndimage.map_coordinates(
            lum, [ys.ravel(), xs.ravel()], order=1, mode="nearest"
        ).reshape(n, N_RAYS, _RAY_SAMPLES)
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


def _hessian_roundness(win: np.ndarray, dy: float, dx: float, r: float, fill: float) -> float:
    """Ratio of the Hessian eigenvalues (small/large) of the image at scale ``R/√2``.

    The odd (dipole) part of directional shading has no second derivative at the centre, so a
    shaded bowl still reads as round; an elongated shadow or car reads as a ridge (ratio ≈ 0).
    """
    half = (win.shape[0] - 1) / 2
    sigma = r / math.sqrt(2)
    yy, xx = np.mgrid[0 : win.shape[0], 0 : win.shape[1]].astype(np.float64)
    y, x = yy - half - dy, xx - half - dx
    g = np.exp(-(x * x + y * y) / (2 * sigma**2))
    g /= g.sum()
    img = np.where(np.isfinite(win), win, fill)
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


def measure(
    lum: np.ndarray,
    row: int,
    col: int,
    r0: float,
    *,
    sun_px: tuple[float, float] | None,
    noise_floor: float,
    refined: tuple[float, float, float] | None = None,
) -> Measure | None:
    """Refine and measure the candidate at integer tile pixel ``(row, col)`` of radius ``r0``.

    ``refined``: ``(dy, dx, radius_px)`` from :func:`refine_all`, when already known.
    Returns ``None`` when the refined centre leaves the first window (a different blob).
    """
    if refined is None:
        half = math.ceil(WINDOW_RADII * 1.6 * r0) + 2
        dy, dx, r = refine(window(lum, row, col, half), r0)
    else:
        dy, dx, r = refined
    # re-centre on the refined integer pixel so the measurement is position independent
    row2, col2 = row + round(dy), col + round(dx)
    dy, dx = dy - round(dy), dx - round(dx)
    half = math.ceil(WINDOW_RADII * r) + 2
    win = window(lum, row2, col2, half)
    st = rings(win, dy, dx, r, sun_px)
    if not np.isfinite(st["depth"]):
        return None
    fill = st["m_ring"] if np.isfinite(st["m_ring"]) else 0.0
    snr = st["depth"] / max(st["sd_out"], noise_floor) if np.isfinite(st["sd_out"]) else 0.0
    return Measure(
        row=row2,
        col=col2,
        dy=dy,
        dx=dx,
        radius_px=r,
        depth=st["depth"],
        ring=st["m_ring"],
        contrast_snr=snr,
        enclosure=st["enclosure"],
        ejecta=(st["m_ring"] - st["m_out"]) / st["depth"] if st["depth"] > 0 else 0.0,
        roundness=_hessian_roundness(win, dy, dx, r, fill),
        shading=st["shading"],
        valid=st["valid"],
    )


def ramp(x: float, lo: float, hi: float) -> float:
    """0 below ``lo``, 1 above ``hi``, linear between (NaN gives 0)."""
    if not np.isfinite(x):
        return 0.0
    return float(np.clip((x - lo) / (hi - lo), 0.0, 1.0))
