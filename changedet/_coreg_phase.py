"""Batched sub-pixel phase correlation on many windows at once (private to ``coregister``).

One call measures the displacement of the after window's content relative to the before window
for a whole stack of windows ``(n, h, w)``: FFTs run over the stack, the integer peak is found
with one ``argmax`` and refined by a parabolic vertex; then each after window is resampled at the
current estimate (cubic B-spline) and the small residual is measured by a least-squares fit of the
cross-spectrum's phase plane, a few times. The iteration removes the bias the window taper and
the common shadow weight put on any single estimate (each re-measurement is pulled ~20 % toward
the current estimate; the updates are scaled by ``RELAX`` = 1.25 to compensate, and a window stops
once its update is below ``STOP_PX``: two re-measurements end closer to the fixed point than three
unscaled ones). Everything stays numpy, in blocks of a few windows that stay in the CPU cache.

Representations (illumination-robust, so a gain/offset change, a seasonal brightness change or a
contrast inversion do not bias the peak): the integer search and the peak reliability use the
gradient magnitude of the luminance (robust and well-peaked); the sub-pixel re-measurements use
the doubled-angle gradient orientation (unit vectors, two channels, :func:`orientation`; the
cross-spectrum is summed over the channels), with both windows multiplied by one smooth weight
that is 0 on and next to the shadows of either date (:func:`common_shadow_weight`, filtered on a
2× coarser grid). Gradient magnitude alone lets cast-shadow edges — the strongest edges of a town
scene, which move when the sun moves — dominate: it biased the fit by ~0.15 px along the change
of the shadows between the dates on the synthetic generator's scenes (0.02 px with this scheme).

Costs (8192² benchmark, 256² windows): per-window quantiles come from a subsample
(:func:`window_quantiles`), the after crop is low-passed once before the B-spline prefilter
instead of at every re-measurement, and the weight is folded into the orientation's
normalisation.

Sign convention: a feature at before pixel ``(c, r)`` that appears in the after window at
``(c + dx, r + dy)`` gives ``(dx, dy)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.fft

# highest frequency (cycles/px) of the phase-plane fit; shifts < 1.1 px do not wrap there
PHASE_FMAX = 0.45
# pixels kept around the first estimate for the re-measurements: 1 px error + 2 px spline
# support + a tail over which the mirror boundary of the spline prefilter has died out
SUB_MARGIN = 12
# re-measurements: each update is scaled by RELAX (the taper and the common shadow weight, fixed
# patterns in both windows, pull every re-measurement ~20 % toward the current estimate: measured
# 15-28 % on 128² and 256² windows); a window stops once its update is below STOP_PX (what is
# left is ~10x smaller, below 0.003 px on the tuning seeds)
RELAX = 1.25
STOP_PX = 0.02
# windows processed together by measure_windows (see its ``block``)
BLOCK = 4

__all__ = [
    "PeakResult",
    "common_shadow_weight",
    "gradient_magnitude",
    "orientation",
    "phase_correlate",
    "shadow_weight",
    "window_quantiles",
]


@dataclass(frozen=True)
class PeakResult:
    """Per-window phase-correlation results (arrays of length ``n``)."""

    dx: np.ndarray
    dy: np.ndarray
    peak: np.ndarray
    reliability: np.ndarray


def fill_nan(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace NaN by each window's mean of valid pixels; return (filled, valid fraction)."""
    valid = np.isfinite(stack)
    frac = valid.mean(axis=(-2, -1))
    if frac.min() < 1.0:
        cnt = np.maximum(valid.sum(axis=(-2, -1), keepdims=True), 1)
        mean = np.where(valid, stack, 0).sum(axis=(-2, -1), keepdims=True) / cnt
        stack = np.where(valid, stack, mean)
    return stack, frac


def gradient_magnitude(stack: np.ndarray) -> np.ndarray:
    """Central-difference gradient magnitude of ``(n, h, w)`` windows → ``(n, h-2, w-2)``."""
    gx = stack[:, 1:-1, 2:] - stack[:, 1:-1, :-2]
    gy = stack[:, 2:, 1:-1] - stack[:, :-2, 1:-1]
    return np.sqrt(gx * gx + gy * gy)


# orientation representation: gradient-magnitude floor, as a share of the window's median |g|
ORIENT_EPS = 0.5
# Gaussian pre-smoothing (px) of the luminance before the orientation
ORIENT_SIGMA = 1.0
# shadow weight: 0 below SHADOW_LO x the window's median luminance (above its 1st percentile),
# 1 above SHADOW_HI, eroded over SHADOW_SIZE² px (both sides of a shadow edge excluded), then
# smoothed (Gaussian, WEIGHT_SIGMA px) so that the common weight adds no sharp fixed structure.
# common_shadow_weight (used by measure_windows) erodes over 2x2 blocks then 3x3 blocks (~6² px)
# and smooths with WEIGHT_SIGMA / 2 on the 2x coarser grid (0 disables each step)
SHADOW_LO, SHADOW_HI, SHADOW_SIZE = 0.5, 0.9, 5
DARK_PCT = 1
WEIGHT_SIGMA = 2.0


def window_quantiles(stack: np.ndarray, qs: tuple[float, ...], stride: int = 4) -> list[np.ndarray]:
    """Per-window quantiles ``(n, 1, 1)`` of ``(n, h, w)`` windows, from every ``stride``-th pixel.

    One ``np.partition`` over a regular subsample (nearest rank): a 256² window gives 4096
    samples, whose median lies within ~1 % of the window's spread from the full median, at a
    twentieth of the cost of ``np.median`` + ``np.percentile``.

    Examples
    --------
    >>> x = np.arange(64, dtype="float32").reshape(1, 8, 8)
    >>> [float(q[0, 0, 0]) for q in window_quantiles(x, (0.0, 0.5, 1.0), stride=1)]
    [0.0, 32.0, 63.0]
    """
    sub = stack[:, ::stride, ::stride].reshape(stack.shape[0], -1)
    ks = [round(q * (sub.shape[1] - 1)) for q in qs]
    part = np.partition(sub, sorted(set(ks)), axis=1)
    return [part[:, k, None, None] for k in ks]


def orientation(
    stack: np.ndarray,
    eps: float | None = None,
    floor: np.ndarray | None = None,
    smooth: bool = True,
) -> np.ndarray:
    """Doubled-angle gradient orientation of ``(n, h, w)`` windows → ``(n, 2, h-2, w-2)``.

    Channels ``(cos 2θ, sin 2θ)`` of the central-difference gradient, with unit length where the
    gradient is strong (``|g| >> eps × the window's median |g|``) and fading to 0 where it is
    weak (Fitch et al.'s orientation correlation; the doubled angle also makes it blind to
    contrast inversion). Every edge pixel weighs the same whatever its contrast, so the few
    strongest edges of a scene — typically cast-shadow boundaries, which move when the sun
    moves — no longer dominate the correlation as they do in gradient magnitude. ``floor``
    (``(n, 1, 1)``) overrides the per-window floor (e.g. to reuse the before window's);
    ``smooth=False`` skips the Gaussian pre-smoothing (input already smoothed). The median
    ``|g|`` is taken on a subsample (:func:`window_quantiles`).

    Examples
    --------
    >>> x = np.add.outer(np.arange(6.0), np.zeros(6)).astype("float32")[None]  # ramp along y
    >>> o = orientation(x, smooth=False)
    >>> o.shape, round(float(o[0, 0, 1, 1]), 2)  # vertical gradient: cos 2θ = -1 (× fade)
    ((1, 2, 4, 4), -0.8)
    """
    return _orientation(stack, eps, floor, smooth)[0]


def _orientation(
    stack: np.ndarray,
    eps: float | None = None,
    floor: np.ndarray | None = None,
    smooth: bool = True,
    weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`orientation` (times ``weight``, ``(n, h-2, w-2)``) and the floor (``(n, 1, 1)``)."""
    # orientation is a non-linear map: low-pass first against aliasing
    if smooth and ORIENT_SIGMA > 0:
        from scipy import ndimage

        stack = ndimage.gaussian_filter(stack, (0, ORIENT_SIGMA, ORIENT_SIGMA), mode="nearest")
    stack = stack.astype(np.float32, copy=False)
    n, h, w = stack.shape
    gx = stack[:, 1:-1, 2:] - stack[:, 1:-1, :-2]
    gy = stack[:, 2:, 1:-1] - stack[:, :-2, 1:-1]
    out = np.empty((n, 2, h - 2, w - 2), np.float32)
    cos2, sin2 = out[:, 0], out[:, 1]
    np.multiply(gx, gy, out=sin2)
    gx *= gx
    gy *= gy
    np.subtract(gx, gy, out=cos2)
    gx += gy  # |g|²
    if floor is None:
        eps = ORIENT_EPS if eps is None else eps
        floor = np.float32(eps) * np.sqrt(window_quantiles(gx, (0.5,))[0])
    gx += floor * floor + np.float32(1e-20)
    if weight is None:
        np.reciprocal(gx, out=gx)
    else:
        np.divide(weight, gx, out=gx)
    cos2 *= gx
    gx *= 2
    sin2 *= gx
    return out, floor


def shadow_weight(
    stack: np.ndarray,
    lo: float | None = None,
    hi: float | None = None,
    size: int | None = None,
) -> np.ndarray:
    """Per-pixel weight ``(n, h, w)`` in [0, 1] that is 0 on shadows and next to them.

    Shadows are a multiplicative drop of the illumination (to ~30-50 % on sunlit ground), so a
    pixel darker than ``lo`` × the window's median luminance counts as shadow (weight 0),
    brighter than ``hi`` × median as lit (1), linear in between (luminance measured above the
    window's 1st percentile, so a sensor offset or haze does not matter); the weight is then
    eroded (minimum filter of ``size``) so both sides of a shadow boundary are excluded, and
    smoothed. Windows whose median is not above the dark level are left unweighted. The
    percentile and median come from a subsample (:func:`window_quantiles`).

    Examples
    --------
    >>> x = np.full((1, 40, 40), 100.0, "float32")
    >>> x[0, :, :10] = 30.0  # a shadow on the left
    >>> w = shadow_weight(x)
    >>> float(w[0, 20, 2]), float(w[0, 20, 35])
    (0.0, 1.0)
    """
    from scipy import ndimage

    size = SHADOW_SIZE if size is None else size
    w = _shadow_ramp(stack, lo, hi)
    if size > 1:
        w = _minimum_filter(w, size)
    if WEIGHT_SIGMA > 0:
        w = ndimage.gaussian_filter(w, (0, WEIGHT_SIGMA, WEIGHT_SIGMA), mode="nearest")
    return w


def common_shadow_weight(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Common weight of two dates: 0 on and next to the shadows of either, filtered at half size.

    Like ``shadow_weight(before) * shadow_weight(after)``, at a fraction of the cost: the weight
    only has to be smooth and 0 on and next to shadows, so the luminance ramp (``SHADOW_LO`` to
    ``SHADOW_HI`` × median) is taken at full resolution, then eroded by a 2×2 block minimum and a
    3×3 minimum filter on the 2× coarser grid (~6 px, a little wider than ``shadow_weight``'s
    5 px: 0.022 instead of 0.025 px mean error on the tuning seeds), smoothed there with
    ``WEIGHT_SIGMA / 2``, and the product of both dates is interpolated back (bilinear).

    Examples
    --------
    >>> x = np.full((1, 40, 40), 100.0, "float32")
    >>> y = x.copy()
    >>> x[0, :, :10] = 30.0  # a shadow on the left of the before window
    >>> y[0, :, -10:] = 30.0  # and on the right of the after window
    >>> w = common_shadow_weight(x, y)
    >>> w.shape, [round(float(w[0, 20, c]), 2) for c in (2, 20, 37)]
    ((1, 40, 40), [0.0, 1.0, 0.0])
    """
    return _upsample2(_coarse_weight(before) * _coarse_weight(after), before.shape[1:])


def _coarse_weight(stack: np.ndarray) -> np.ndarray:
    """One date's shadow weight on the 2× coarser grid (see :func:`common_shadow_weight`)."""
    from scipy import ndimage

    coarse = (
        _block_min(_shadow_ramp(stack)) if SHADOW_SIZE > 1 else _shadow_ramp(stack)[:, ::2, ::2]
    )
    if SHADOW_SIZE > 1:
        coarse = _minimum_filter(coarse, 3)
    if WEIGHT_SIGMA > 0:
        sigma = WEIGHT_SIGMA / 2
        coarse = ndimage.gaussian_filter(coarse, (0, sigma, sigma), mode="nearest")
    return coarse


def _shadow_ramp(stack: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Luminance above the dark level over the median, mapped from ``[lo, hi]`` to [0, 1]."""
    lo = SHADOW_LO if lo is None else lo
    hi = SHADOW_HI if hi is None else hi
    dark, med = window_quantiles(stack, (DARK_PCT / 100.0, 0.5))
    if not DARK_PCT:
        dark = np.zeros_like(dark)
    med = med - dark
    ok = med > 0
    # (lum - dark) / med mapped linearly from [lo, hi] to [0, 1], in one pass
    scale = np.where(ok, 1.0 / ((hi - lo) * np.where(ok, med, 1)), 0).astype(np.float32)
    shift = np.where(ok, dark + lo * med, 0).astype(np.float32)
    w = np.subtract(stack, shift, dtype=np.float32)
    w *= scale
    w[~ok[:, 0, 0]] = 1
    np.clip(w, 0, 1, out=w)
    return w


def _block_min(stack: np.ndarray) -> np.ndarray:
    """Minimum over 2×2 blocks of ``(n, h, w)`` → ``(n, ceil(h/2), ceil(w/2))`` (edge padded)."""
    _, h, w = stack.shape
    if h % 2 or w % 2:
        stack = np.pad(stack, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    out = np.minimum(stack[:, 0::2, 0::2], stack[:, 0::2, 1::2])
    np.minimum(out, stack[:, 1::2, 0::2], out=out)
    np.minimum(out, stack[:, 1::2, 1::2], out=out)
    return out


def _upsample2(coarse: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Bilinear interpolation of a 2× coarser grid (block centres) to ``size`` (edges clamped)."""
    out = coarse
    for axis, n in ((1, size[0]), (2, size[1])):
        a = np.moveaxis(out, axis, 0)
        prev = np.concatenate([a[:1], a[:-1]])
        nxt = np.concatenate([a[1:], a[-1:]])
        up = np.empty((2 * a.shape[0], *a.shape[1:]), np.float32)
        up[0::2] = 0.75 * a + 0.25 * prev  # full-res pixel 2j sits at coarse j - 1/4
        up[1::2] = 0.75 * a + 0.25 * nxt  # and 2j + 1 at j + 1/4
        out = np.moveaxis(up[:n], 0, axis)
    return np.ascontiguousarray(out)


def _minimum_filter(stack: np.ndarray, size: int) -> np.ndarray:
    """``ndimage.minimum_filter(stack, (1, size, size), mode="nearest")``, from shifted slices.

    Twice as fast as ``ndimage`` for small sizes (a handful of vectorised ``np.minimum``).
    """
    r = size // 2
    out = stack
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (r, size - 1 - r)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        lead = (slice(None),) * axis
        acc = padded[(*lead, slice(0, n))].copy()
        for k in range(1, size):
            np.minimum(acc, padded[(*lead, slice(k, k + n))], out=acc)
        out = acc
    return out


@functools.lru_cache(maxsize=8)
def _taper(h: int, w: int) -> np.ndarray:
    """2-D Hann taper (float32, cached: do not modify)."""
    return np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _lowpass(h: int, w: int, cutoff: float) -> np.ndarray:
    """Raised-cosine low-pass weight on the FFT grid: 1 below ``cutoff`` × Nyquist, 0 at Nyquist."""
    fy = np.abs(np.fft.fftfreq(h))[:, None] * 2.0
    fx = np.abs(np.fft.fftfreq(w))[None, :] * 2.0
    f = np.sqrt(fy**2 + fx**2)
    weight = np.where(
        f <= cutoff, 1.0, 0.5 * (1 + np.cos(np.pi * np.clip((f - cutoff) / (1 - cutoff), 0, 1)))
    )
    return weight.astype(np.float32)


def _spectrum(stack: np.ndarray, workers: int) -> np.ndarray:
    """Real FFT (``rfft2``) of mean-removed, Hann-tapered windows (complex64).

    ``stack`` is ``(n, h, w)`` or ``(n, channels, h, w)``; the FFT runs over the last two axes.
    """
    h, w = stack.shape[-2:]
    x = stack.astype(np.float32, copy=False)
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    x *= _taper(h, w)
    return scipy.fft.rfft2(x, axes=(-2, -1), workers=workers, overwrite_x=True)


def _cross(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Cross-power spectrum ``F_after · conj(F_before)``, summed over channels if any."""
    spec = fa * np.conj(fb)
    return spec.sum(axis=1) if spec.ndim == 4 else spec


@functools.lru_cache(maxsize=8)
def _phase_plane(h: int, w: int, width: int, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the frequencies used, and the ``(k, 2)`` least-squares solve matrix."""
    fy = np.broadcast_to(np.fft.fftfreq(h)[:, None], (h, w))
    fx = np.broadcast_to(np.arange(w)[None, :] / float(width), (h, w))
    band = (fx**2 + fy**2) <= fmax**2
    a = np.column_stack([fx[band], fy[band]]) * (-2 * np.pi)  # phase = a @ (dx, dy)
    solve = np.linalg.pinv(a).T  # (k, 2): d = phi @ solve
    return np.flatnonzero(band.ravel()), solve.astype(np.float32)


def _phase_slope(spec: np.ndarray, width: int, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Shift from a weighted least-squares plane fit to the cross-spectrum phase (|shift| < 1 px).

    ``spec = F_after · conj(F_before)`` has phase ``-2π (fx dx + fy dy)``; frequencies above
    ``fmax`` cycles/px are ignored (no phase wrapping for shifts below ``0.5 / fmax`` px); all
    frequencies weigh the same (as in whitened phase correlation): magnitude weights let a few
    strong edges — e.g. moved shadows — dominate and bias the fit.
    """
    _, h, w = spec.shape  # half spectrum (rfft2): w = w_full // 2 + 1
    idx, solve = _phase_plane(h, w, width, fmax)
    sub = spec.reshape(spec.shape[0], -1)[:, idx]  # (n, k)
    phi = np.angle(sub)  # float32
    # unit weights: the normal matrix is the same for every window, precomputed in ``solve``
    # einsum, not BLAS: no nested thread pool under the caller's threads
    d = np.einsum("nk,kc->nc", phi, solve).astype(np.float64)  # (n, 2)
    dx, dy = d[:, 0], d[:, 1]
    return dx, dy


def phase_correlate(
    before: np.ndarray,
    after: np.ndarray,
    *,
    lowpass: float = 0.7,
    exclude_px: int = 3,
    workers: int = -1,
    near_zero: bool = False,
) -> PeakResult:
    """Measure sub-pixel shifts between stacks of windows.

    Parameters
    ----------
    before, after
        ``(n, h, w)`` float arrays of the representation to correlate (e.g. gradient magnitude),
        NaN-free. ``before`` may also be a precomputed spectrum (complex, from ``_spectrum``).
    lowpass
        Fraction of the Nyquist frequency above which the cross-power spectrum is tapered to 0.
    exclude_px
        Radius around the main peak ignored when looking for the second-highest peak.
    workers
        FFT worker threads (``-1``: all cores).
    near_zero
        The shift is known to be within ±1 px (a re-measurement): fit the cross-spectrum phase
        plane instead of searching the correlation peak (``peak``/``reliability`` set to 1).

    Returns
    -------
    PeakResult
        ``dx``, ``dy`` (after content relative to before, in pixels), the normalised ``peak``
        height (1 for identical content) and ``reliability`` = 1 − second peak / main peak
        (0: ambiguous, 1: unique).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(size=(1, 80, 80)).astype("float32")
    >>> res = phase_correlate(img[:, 10:74, 10:74], img[:, 7:71, 12:76])
    >>> round(float(res.dx[0]), 2), round(float(res.dy[0]), 2)
    (-2.0, 3.0)
    """
    fb = _spectrum(before, workers) if before.dtype.kind != "c" else before
    fa = _spectrum(after, workers)
    n = after.shape[0]
    h, w = after.shape[-2:]
    spec = _cross(fa, fb)
    if near_zero:
        dx, dy = _phase_slope(spec, w, fmax=PHASE_FMAX)
        return PeakResult(dx=dx, dy=dy, peak=np.ones(n), reliability=np.ones(n))
    spec /= np.abs(spec) + 1e-12
    spec *= _lowpass(h, w, lowpass)[:, : w // 2 + 1]
    corr = scipy.fft.irfft2(spec, s=(h, w), workers=workers)
    flat = corr.reshape(n, -1)
    idx = flat.argmax(axis=1)
    iy, ix = np.unravel_index(idx, (h, w))
    nb = np.arange(n)
    peak0 = flat[nb, idx]
    sy = np.where(iy > h // 2, iy - h, iy).astype(np.float64)
    sx = np.where(ix > w // 2, ix - w, ix).astype(np.float64)
    # parabolic vertex through the integer peak's neighbours (periodic surface)
    iyp, iym = (iy + 1) % h, (iy - 1) % h
    ixp, ixm = (ix + 1) % w, (ix - 1) % w
    c = peak0
    cyp, cym = corr[nb, iyp, ix], corr[nb, iym, ix]
    cxp, cxm = corr[nb, iy, ixp], corr[nb, iy, ixm]
    with np.errstate(divide="ignore", invalid="ignore"):
        dyy = cyp - 2 * c + cym
        dxx = cxp - 2 * c + cxm
        oy = np.where(dyy < 0, -(cyp - cym) / 2 / dyy, 0.0)
        ox = np.where(dxx < 0, -(cxp - cxm) / 2 / dxx, 0.0)
    sy = sy + np.clip(np.nan_to_num(oy), -0.5, 0.5)
    sx = sx + np.clip(np.nan_to_num(ox), -0.5, 0.5)
    # second peak: blank a small square around the main peak (periodic), in place
    off = np.arange(-exclude_px, exclude_px + 1)
    ry = (iy[:, None, None] + off[None, :, None]) % h
    rx = (ix[:, None, None] + off[None, None, :]) % w
    corr[nb[:, None, None], ry, rx] = -np.inf
    second = flat.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        reliability = np.where(peak0 > 0, 1.0 - np.maximum(second, 0) / peak0, 0.0)
    peak = peak0
    return PeakResult(dx=sx, dy=sy, peak=peak, reliability=np.clip(reliability, 0, 1))


def _bspline_weights(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights ``(n, 4)`` for taps at ``floor-1 .. floor+2``, fraction ``t``."""
    t = t[:, None]
    return (
        np.concatenate(
            [(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=1
        )
        / 6.0
    )


def _shift_windows(
    coef: np.ndarray,
    fx: np.ndarray,
    fy: np.ndarray,
    margin: int,
    size: tuple[int, int],
    sel: np.ndarray | None = None,
) -> np.ndarray:
    """Sample B-spline coefficients ``coef`` (n, h+2m, w+2m) at ``(y + m + fy, x + m + fx)``.

    ``sel`` picks the windows of ``coef`` to sample (``fx``, ``fy`` then have one entry per
    picked window); default all.
    """
    sel = np.arange(coef.shape[0]) if sel is None else sel
    n = sel.size
    h, w = size
    ix = np.floor(fx).astype(int)
    iy = np.floor(fy).astype(int)
    crop = np.empty((n, h + 3, w + 3), np.float32)
    for k, i in enumerate(sel):
        r0 = margin + iy[k] - 1
        c0 = margin + ix[k] - 1
        crop[k] = coef[i, r0 : r0 + h + 3, c0 : c0 + w + 3]
    wx = _bspline_weights(fx - ix).astype(np.float32)
    wy = _bspline_weights(fy - iy).astype(np.float32)
    tmp = wx[:, 0, None, None] * crop[:, :, 0:w]
    for k in range(1, 4):
        tmp += wx[:, k, None, None] * crop[:, :, k : k + w]
    out = wy[:, 0, None, None] * tmp[:, 0:h, :]
    for k in range(1, 4):
        out += wy[:, k, None, None] * tmp[:, k : k + h, :]
    return out


def measure_windows(
    before: np.ndarray,
    after: np.ndarray,
    margin: int,
    *,
    iterations: int = 2,
    lowpass: float = 0.7,
    workers: int = -1,
    block: int = BLOCK,
) -> PeakResult:
    """Iterated phase correlation of window stacks, free of the taper bias.

    Parameters
    ----------
    before
        ``(n, h, w)`` luminance windows (NaN-free).
    after
        ``(n, h + 2*margin, w + 2*margin)`` luminance windows around the same places (NaN-free),
        so the after window can be resampled at the current estimate.
    margin
        Extra pixels on each side of the after windows.
    iterations
        Largest number of re-measurements after resampling the after windows at the current
        estimate (cubic B-spline); each removes most of the bias the taper leaves on the
        previous estimate. A window stops once its update is below ``STOP_PX``.
    block
        Windows processed together (consecutive groups of ``block``): small blocks keep the
        working arrays in the CPU cache. Results depend on it only in the last bits (batched
        FFTs round differently), so callers split their windows at multiples of ``block``.

    Returns
    -------
    PeakResult
        Displacements relative to the windows' nominal positions; ``reliability`` and ``peak`` of
        the first measurement.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(size=(1, 100, 100)).astype("float32")
    >>> res = measure_windows(img[:, 20:84, 20:84], img[:, 11:81, 17:87], margin=3)
    >>> round(float(res.dx[0]), 2) + 0.0, round(float(res.dy[0]), 2)
    (0.0, 6.0)
    """
    parts = [
        _measure_block(
            before[i : i + block],
            after[i : i + block],
            margin,
            iterations=iterations,
            lowpass=lowpass,
            workers=workers,
        )
        for i in range(0, before.shape[0], max(1, block))
    ]
    if len(parts) == 1:
        return parts[0]
    return PeakResult(
        **{
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in ("dx", "dy", "peak", "reliability")
        }
    )


def _measure_block(
    before: np.ndarray,
    after: np.ndarray,
    margin: int,
    *,
    iterations: int,
    lowpass: float,
    workers: int,
) -> PeakResult:
    """:func:`measure_windows` on one block of windows."""
    from scipy import ndimage

    h, w = before.shape[1:]
    # integer search (and the reliability the gate uses) on gradient magnitude: robust, and its
    # shadow bias (~0.15 px) is far below the 1-px reach of the re-measurements
    crop = after[:, margin : margin + h, margin : margin + w]
    first = phase_correlate(
        gradient_magnitude(before), gradient_magnitude(crop), lowpass=lowpass, workers=workers
    )
    dx, dy = first.dx.copy(), first.dy.copy()
    ok = (np.abs(dx) < margin - SUB_MARGIN) & (np.abs(dy) < margin - SUB_MARGIN)
    if iterations > 0 and ok.any():
        # keep only what the re-measurements can reach: +-(SUB_MARGIN) px around the estimate
        idx = np.flatnonzero(ok)
        m2 = SUB_MARGIN
        coef = np.empty((idx.size, h + 2 * m2, w + 2 * m2), np.float32)
        base_x = np.round(dx[idx]).astype(int)
        base_y = np.round(dy[idx]).astype(int)
        for k, i in enumerate(idx):
            r0 = margin + base_y[k] - m2
            c0 = margin + base_x[k] - m2
            coef[k] = after[i, r0 : r0 + h + 2 * m2, c0 : c0 + w + 2 * m2]
        sub_dx = dx[idx] - base_x
        sub_dy = dy[idx] - base_y
        # one common weight for both windows: the union of both dates' shadows (smooth, like the
        # taper, so it adds no sharp fixed structure), from the raw luminance; the after window
        # at the integer estimate is close enough (its weight is eroded and smoothed over px)
        bsel = before[idx]
        wab = common_shadow_weight(bsel, coef[:, m2 : m2 + h, m2 : m2 + w])[:, 1:-1, 1:-1]
        # the orientation needs low-passed luminance: smooth the after crops once, before the
        # B-spline prefilter (both linear and shift-invariant: resampling the smoothed crop is
        # smoothing the resampled window, minus border effects that the margin keeps away)
        if ORIENT_SIGMA > 0:
            sigma = (0, ORIENT_SIGMA, ORIENT_SIGMA)
            coef = ndimage.gaussian_filter(coef, sigma, mode="nearest")
            bsel = ndimage.gaussian_filter(bsel, sigma, mode="nearest")
        for axis in (1, 2):  # not axis 0: windows are independent
            coef = ndimage.spline_filter1d(
                coef, order=3, axis=axis, mode="mirror", output=np.float32
            )
        # one orientation floor for both dates: the before window's
        ob, floor = _orientation(bsel, smooth=False, weight=wab)
        fb = _spectrum(ob, workers)
        lim = m2 - 2.5
        active = np.arange(idx.size)  # windows still moving by >= STOP_PX
        for _ in range(iterations):
            # window of size (h, w) starting at the nominal corner shifted by the estimate
            np.clip(sub_dx, -lim, lim, out=sub_dx)
            np.clip(sub_dy, -lim, lim, out=sub_dy)
            shifted = _shift_windows(coef, sub_dx[active], sub_dy[active], m2, (h, w), active)
            full = active.size == idx.size
            oa, _ = _orientation(
                shifted,
                floor=floor if full else floor[active],
                smooth=False,
                weight=wab if full else wab[active],
            )
            res = phase_correlate(
                fb if full else fb[active], oa, lowpass=lowpass, workers=workers, near_zero=True
            )
            sub_dx[active] += RELAX * res.dx
            sub_dy[active] += RELAX * res.dy
            active = active[RELAX * np.hypot(res.dx, res.dy) >= STOP_PX]
            if not active.size:
                break
        dx[idx] = sub_dx + base_x
        dy[idx] = sub_dy + base_y
    return PeakResult(
        dx=dx, dy=dy, peak=first.peak, reliability=np.where(ok, first.reliability, 0.0)
    )
