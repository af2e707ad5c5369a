"""Per-pixel change between two co-registered, radiometrically matched rasters.

Score maps, each ``(y, x)`` float32, computed chunk by chunk with ``dask.array.map_overlap`` and
a halo derived from the kernel (``ceil(truncate * sigma)``), so chunk seams never change a value:

``cva``
    change-vector magnitude over all bands, in units of the pair's noise (robust standard
    deviation of the band differences): ~1 for noise, large for real change.
``dssim``
    structural dissimilarity ``(1 - SSIM) / 2`` of luminance in a Gaussian window, in [0, 1].
    SSIM compares local mean, contrast and structure; a collapsed roof (new texture) or a crater
    (new dark disc, bright rim) scores high, a residual gain difference does not.
``texture``
    ``|log(σ_after / σ_before)|`` of local luminance standard deviation: rubble adds texture,
    a burnt or cleared area removes it.
``score``
    the change score written to ``change_score.tif``: ``dssim`` where the change vector is also
    beyond noise (``dssim * (1 - exp(-cva² / 2 k²))`` with ``k`` = ``cva_noise_k``), in [0, 1].

A threshold on ``score`` (Otsu or Kittler–Illingworth on a chunked histogram, or a manual value)
gives the change mask. Pixels that are nodata in either image, or saturated, are not assessable:
NaN in the scores and flagged in :func:`not_assessable`.

Examples
--------
>>> import numpy as np, xarray as xr
>>> from changedet.change import change_scores, threshold_score
>>> rng = np.random.default_rng(1)
>>> before = xr.DataArray(rng.normal(100, 5, (3, 80, 80)), dims=("band", "y", "x"))
>>> after = before + rng.normal(0, 1, before.shape)
>>> after[:, 30:50, 30:50] = 40.0
>>> s = change_scores(before, after, gsd_m=0.5)
>>> float(s["score"][40, 40]) > 0.25, float(s["score"][5, 5]) < 0.1
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr
from scipy import ndimage

from changedet._haloed import haloed_map, trim_to_core
from changedet.errors import BandMismatchError

ThresholdMethod = Literal["otsu", "kittler"]

#: SSIM stabilising constants for data scaled to [0, 1] (Wang et al. 2004: K1=0.01, K2=0.03).
_C1 = 0.01**2
_C2 = 0.03**2


@dataclass(frozen=True)
class ChangeParams:
    """Parameters of the change maps (sizes in metres).

    Attributes
    ----------
    window_sigma_m
        Standard deviation of the Gaussian window for SSIM and texture. 1 m suits 0.3–1 m
        imagery: about the size of a car, smaller than a room.
    truncate
        The Gaussian is cut at ``truncate`` standard deviations; the chunk halo follows.
    cva_noise_k
        How many noise standard deviations a change vector needs to count fully in ``score``.
    threshold
        Threshold of the change mask: 'otsu', 'kittler' (Kittler–Illingworth minimum error),
        or a number in [0, 1] (manual override).
    saturation
        Values at or above this in any band of either image are not assessable (e.g. 255 for
        8-bit data); 'none' disables the check.
    """

    window_sigma_m: float = 1.0
    truncate: float = 3.5
    cva_noise_k: float = 3.0
    threshold: Literal["otsu", "kittler"] | float = "otsu"
    saturation: float | None = None


def gsd_of(raster: xr.DataArray) -> float:
    """Ground sample distance (metres) of a raster from its coordinates, or raise."""
    try:
        res = raster.rio.resolution()
        gsd = float(np.sqrt(abs(res[0] * res[1])))
    except Exception:  # no rio accessor or no transform
        gsd = float("nan")
    if not np.isfinite(gsd) or gsd <= 0:
        raise ValueError("cannot tell the ground sample distance: pass gsd_m")
    return gsd


def _luminance(raster: xr.DataArray) -> xr.DataArray:
    return raster.mean("band", skipna=False)


def noise_sigma(
    before: xr.DataArray, after: xr.DataArray, max_samples: int = 250_000
) -> np.ndarray:
    """Robust per-band standard deviation of ``after - before`` (MAD × 1.4826) on a sample."""
    from changedet.normalize import sample_pixels

    b, a = sample_pixels(before, after, max_samples)
    if len(b) == 0:
        return np.ones(before.sizes["band"])
    d = a - b
    mad = np.median(np.abs(d - np.median(d, axis=0)), axis=0) * 1.4826
    return np.maximum(mad, 1e-6)


_noise_sigma = noise_sigma  # change_scores' keyword of the same name hides the function


def _gauss_nan(
    img: np.ndarray,
    sigma: float,
    truncate: float,
    dens: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """Gaussian mean ignoring NaN (normalised convolution); NaN where no valid neighbour.

    ``dens``: a list shared by calls on images of one block; the filtered validity mask (the
    denominator) is kept there and reused by calls whose mask is the same, which is most of
    them (``x``, ``x * x``...): same values, half the filtering."""
    valid = np.isfinite(img)
    filled = np.where(valid, img, 0.0)
    num = ndimage.gaussian_filter(filled, sigma, truncate=truncate, mode="nearest")
    den = None
    for mask, known in dens or ():
        if np.array_equal(mask, valid):
            den = known
            break
    if den is None:
        den = ndimage.gaussian_filter(
            valid.astype("float64"), sigma, truncate=truncate, mode="nearest"
        )
        if dens is not None:
            dens.append((valid, den))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-6, num / den, np.nan)


def _haloed_window_kernel(
    before: np.ndarray,
    after: np.ndarray,
    *,
    core: tuple[int, int, int, int],
    window: tuple[int, int, int, int],
    **kw: Any,
) -> np.ndarray:
    """:func:`_window_kernel` on the luminance of haloed ``(band, y, x)`` windows, trimmed to
    the block (see :func:`changedet._haloed.haloed_map`)."""
    maps = _window_kernel(before.mean(axis=0), after.mean(axis=0), **kw)
    return trim_to_core(maps, core, window)


def _window_kernel(
    before_l: np.ndarray, after_l: np.ndarray, *, sigma: float, truncate: float, scale: float
) -> np.ndarray:
    """dssim and texture maps of one block of luminance: returns (2, y, x)."""
    x = before_l.astype("float64") / scale
    y = after_l.astype("float64") / scale
    dens: list[tuple[np.ndarray, np.ndarray]] = []
    mx, my = _gauss_nan(x, sigma, truncate, dens), _gauss_nan(y, sigma, truncate, dens)
    vx = np.maximum(_gauss_nan(x * x, sigma, truncate, dens) - mx * mx, 0)
    vy = np.maximum(_gauss_nan(y * y, sigma, truncate, dens) - my * my, 0)
    cxy = _gauss_nan(x * y, sigma, truncate, dens) - mx * my
    ssim = ((2 * mx * my + _C1) * (2 * cxy + _C2)) / ((mx * mx + my * my + _C1) * (vx + vy + _C2))
    dssim = np.clip((1 - ssim) / 2, 0, 1)
    eps = 0.005  # texture floor: a flat area (σ ≈ sensor noise) vs another flat area is no change
    texture = np.abs(np.log((np.sqrt(vy) + eps) / (np.sqrt(vx) + eps)))
    invalid = ~(np.isfinite(x) & np.isfinite(y))
    out = np.stack([dssim, texture]).astype("float32")
    out[:, invalid] = np.nan
    return out


def change_scores(
    before: xr.DataArray,
    after: xr.DataArray,
    params: ChangeParams | None = None,
    *,
    gsd_m: float | None = None,
    value_range: float | None = None,
    noise_sigma: np.ndarray | None = None,
) -> xr.Dataset:
    """Compute the change score maps of a co-registered, normalised pair.

    Parameters
    ----------
    before, after
        ``(band, y, x)`` rasters on the same grid; NaN is nodata. Dask-backed inputs give lazy
        outputs computed with ``map_overlap`` (chunks may be any size; the band axis is
        gathered into one chunk), or, when both are read from files (``open_raster``, scratch
        rasters), from haloed windows each block reads (:mod:`changedet._haloed`; the same
        values, bounded memory).
    params
        :class:`ChangeParams`; defaults when omitted.
    gsd_m
        Ground sample distance in metres; read from the rasters' transform when omitted.
    value_range
        Scale of the data for SSIM (e.g. 255 for 8-bit); the 99.9th percentile of a sample of
        the before image when omitted.
    noise_sigma
        Per-band noise standard deviation of ``after - before`` (:func:`noise_sigma`), e.g.
        the ``noise_sigma`` attribute of an earlier result for this pair; estimated from a
        sample when omitted. Given both scales, nothing is computed until the maps are.

    Returns
    -------
    xarray.Dataset
        Variables ``cva``, ``dssim``, ``texture``, ``score`` on the rasters' ``(y, x)`` grid.

    Raises
    ------
    BandMismatchError
        When the band counts differ.
    """
    params = params or ChangeParams()
    if before.sizes["band"] != after.sizes["band"]:
        raise BandMismatchError(
            after.name or "after",
            f"has {after.sizes['band']} bands, before has {before.sizes['band']}",
            "Select matching bands first.",
        )
    gsd = gsd_m if gsd_m is not None else gsd_of(before)
    sigma = params.window_sigma_m / gsd
    depth = math.ceil(params.truncate * sigma) + 1
    if noise_sigma is None:
        sigma_noise = _noise_sigma(before, after)
    else:
        sigma_noise = np.asarray(noise_sigma, dtype="float64")
        if sigma_noise.shape != (before.sizes["band"],):
            raise ValueError(
                f"noise_sigma needs one value per band ({before.sizes['band']}), "
                f"not {sigma_noise.shape}"
            )
    if value_range is None:
        from changedet.normalize import sample_pixels

        b, _ = sample_pixels(before, after, 100_000)
        value_range = float(np.percentile(b, 99.9)) if len(b) else 1.0
    value_range = max(float(value_range), 1e-9)

    bf = before.astype("float32")
    af = after.astype("float32")
    noise = xr.DataArray(sigma_noise.astype("float32"), dims="band")
    cva = np.sqrt((((af - bf) / noise) ** 2).sum("band", skipna=False))

    bl, al = _luminance(bf), _luminance(af)
    kw = {"sigma": sigma, "truncate": params.truncate, "scale": value_range}
    if isinstance(bl.data, np.ndarray):
        maps = _window_kernel(bl.values, al.values, **kw)
    else:
        maps = None
        if bf.dims == af.dims == ("band", "y", "x"):
            # both read from files (the before image, a scratch raster): every block reads its
            # haloed windows, no block waits for its neighbours (bounded memory, same values)
            maps = haloed_map(
                _haloed_window_kernel,
                [bf.data, af.data],
                depth,
                pad_nan=False,
                leading=((2,),),
                **kw,
            )
        if maps is None:
            import dask.array as da

            # map_overlap cannot add an output axis, so do its three steps by hand: add halos,
            # run the kernel per block, trim the halos (none at the scene's outer edges).
            halo = {0: depth, 1: depth}
            blocks_b = da.overlap.overlap(bl.data, depth=halo, boundary="none")
            blocks_a = da.overlap.overlap(al.data, depth=halo, boundary="none")
            maps = da.map_blocks(
                _window_kernel,
                blocks_b,
                blocks_a,
                new_axis=0,
                chunks=((2,), *blocks_b.chunks),
                dtype="float32",
                meta=np.empty((0, 0, 0), "float32"),
                **kw,
            )
            maps = da.overlap.trim_internal(maps, {0: 0, 1: depth, 2: depth}, boundary="none")
    dssim = bl.copy(data=maps[0])
    texture = bl.copy(data=maps[1])
    k = params.cva_noise_k
    score = dssim * (1 - np.exp(-(cva**2) / (2 * k * k)))
    ds = xr.Dataset(
        {
            "cva": cva.astype("float32"),
            "dssim": dssim,
            "texture": texture,
            "score": score.astype("float32"),
        }
    )
    ds.attrs.update(
        gsd_m=gsd, window_sigma_px=sigma, halo_px=depth, noise_sigma=sigma_noise.tolist()
    )
    return ds


def _histogram(values: xr.DataArray, bins: int, vmax: float) -> tuple[np.ndarray, np.ndarray]:
    data = values.data
    if isinstance(data, np.ndarray):
        finite = data[np.isfinite(data)]
        hist, edges = np.histogram(finite, bins=bins, range=(0, vmax))
    else:
        import dask.array as da

        hist, edges = da.histogram(data, bins=bins, range=(0, vmax))  # NaN are not counted
        hist = hist.compute()
    return hist.astype("float64"), edges


def _otsu(hist: np.ndarray, centers: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(hist=(hist, centers)))


def _kittler(hist: np.ndarray, centers: np.ndarray) -> float:
    """Kittler–Illingworth minimum-error threshold (two Gaussian classes)."""
    p = hist / hist.sum()
    best, best_t = np.inf, centers[len(centers) // 2]
    c_p = np.cumsum(p)
    c_m = np.cumsum(p * centers)
    c_s = np.cumsum(p * centers**2)
    total_m, total_s = c_m[-1], c_s[-1]
    for i in range(1, len(p) - 1):
        p1, p2 = c_p[i], 1 - c_p[i]
        if p1 < 1e-6 or p2 < 1e-6:
            continue
        m1, m2 = c_m[i] / p1, (total_m - c_m[i]) / p2
        v1 = c_s[i] / p1 - m1 * m1
        v2 = (total_s - c_s[i]) / p2 - m2 * m2
        if v1 <= 1e-12 or v2 <= 1e-12:
            continue
        j = (
            1
            + 2 * (p1 * np.log(np.sqrt(v1)) + p2 * np.log(np.sqrt(v2)))
            - 2 * (p1 * np.log(p1) + p2 * np.log(p2))
        )
        if j < best:
            best, best_t = j, (centers[i] + centers[i + 1]) / 2
    return float(best_t)


def threshold_score(
    score: xr.DataArray, method: ThresholdMethod | float = "otsu", *, bins: int = 512
) -> float:
    """Choose a threshold for a score map in [0, 1].

    Parameters
    ----------
    score
        A score map; NaN pixels are ignored. Dask-backed maps are reduced to a histogram
        chunk by chunk.
    method
        ``"otsu"``, ``"kittler"`` (Kittler–Illingworth minimum error), or a number (manual
        override, returned as is).
    bins
        Histogram bins over [0, 1].

    Returns
    -------
    float
        The threshold.
    """
    if not isinstance(method, str):
        value = float(method)
        if not 0 <= value <= 1:
            raise ValueError(f"a manual threshold must lie in [0, 1], not {value}")
        return value
    hist, edges = _histogram(score, bins, 1.0)
    if hist.sum() == 0:
        raise ValueError("the score map has no valid pixel")
    centers = (edges[:-1] + edges[1:]) / 2
    if method == "otsu":
        return _otsu(hist, centers)
    if method == "kittler":
        return _kittler(hist, centers)
    raise ValueError(f"threshold method must be 'otsu', 'kittler' or a number, not {method!r}")


def not_assessable(
    before: xr.DataArray, after: xr.DataArray, *, saturation: float | None = None
) -> xr.DataArray:
    """Pixels where change cannot be assessed: nodata in either image, or saturated.

    Parameters
    ----------
    before, after
        ``(band, y, x)`` rasters, NaN for nodata.
    saturation
        Values at or above this (in any band of either image) count as saturated; e.g. 255
        for 8-bit data. ``None`` skips the check.

    Returns
    -------
    xarray.DataArray
        Boolean ``(y, x)``; True where not assessable.
    """
    bad = before.isnull().any("band") | after.isnull().any("band")
    if saturation is not None:
        bad = bad | (before >= saturation).any("band") | (after >= saturation).any("band")
    return bad.rename("not_assessable")
