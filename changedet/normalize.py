"""Relative radiometric normalisation: make the after image's radiometry match the before image's.

Different sensors, dates and processing give different gain, offset and tone curve (gamma, dynamic
range adjustment) and haze. None of that is change. The method:

1. take a regular sample of pixels valid in both images (strided, so it is deterministic and
   reads the scene once in chunks — bounded memory);
2. find pixels that are very likely unchanged with **iteratively re-weighted MAD** (IR-MAD,
   Nielsen 2007): canonical correlation between the two images' bands, the chi-square statistic
   of the MAD variates, re-weighting by the no-change probability until the canonical
   correlations settle;
3. per band, map the after values onto the before values using only no-change pixels: either a
   straight line by orthogonal regression (``model="linear"``, right for sensors that differ by
   gain and offset) or a monotone quantile mapping (``model="quantile"``, right when a tone curve
   or gamma differs, as with dynamic-range-adjusted commercial products);
4. apply the mapping lazily, chunk by chunk.

Rasters are ``xarray.DataArray`` ``(band, y, x)``; NaN marks nodata and stays NaN.

Examples
--------
>>> import numpy as np, xarray as xr
>>> from changedet.normalize import RelativeNormalizer
>>> rng = np.random.default_rng(0)
>>> before = xr.DataArray(rng.uniform(20, 200, (3, 64, 64)), dims=("band", "y", "x"))
>>> after = 1.3 * before + 12.0
>>> norm = RelativeNormalizer(model="linear").fit(before, after)
>>> [round(g, 3) for g in norm.result.gain]
[0.769, 0.769, 0.769]
>>> bool(np.allclose(norm.apply(after), before, atol=1e-3))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import xarray as xr
from scipy import linalg, special

from changedet._memory import compact_values
from changedet.errors import AllNodataError, BandMismatchError

Model = Literal["linear", "quantile"]


@dataclass(frozen=True)
class NormalizeParams:
    """Parameters of relative radiometric normalisation.

    Attributes
    ----------
    model
        'quantile' (monotone tone-curve mapping: handles gamma and dynamic-range adjustment) or
        'linear' (gain and offset by orthogonal regression).
    nochange_probability
        A sampled pixel counts as unchanged when its IR-MAD no-change probability exceeds this.
    max_samples
        Pixels sampled on a regular grid to fit the mapping.
    n_quantiles
        Quantiles matched by the quantile model.
    """

    model: Model = "quantile"
    nochange_probability: float = 0.9
    max_samples: int = 200_000
    n_quantiles: int = 256


@dataclass(frozen=True)
class NormalizationResult:
    """What :class:`RelativeNormalizer` fitted.

    Attributes
    ----------
    model
        ``"linear"`` or ``"quantile"``.
    gain, offset
        Per band: ``after_normalised = gain * after + offset`` (the linear fit; for the quantile
        model, the linear fit reported for information).
    quantiles_after, quantiles_before
        Per band, the matched quantiles of no-change pixels (quantile model only).
    canonical_correlations
        IR-MAD canonical correlations at convergence (near 1: images very alike).
    n_sampled, n_nochange
        Pixels sampled (valid in both) and pixels kept as no-change.
    iterations
        IR-MAD iterations run.
    """

    model: Model
    gain: tuple[float, ...]
    offset: tuple[float, ...]
    canonical_correlations: tuple[float, ...]
    n_sampled: int
    n_nochange: int
    iterations: int
    quantiles_after: tuple[tuple[float, ...], ...] = field(default=(), repr=False)
    quantiles_before: tuple[tuple[float, ...], ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, object]:
        """Plain-Python summary for manifests (quantile tables left out)."""
        return {
            "model": self.model,
            "gain": list(self.gain),
            "offset": list(self.offset),
            "canonical_correlations": list(self.canonical_correlations),
            "n_sampled": self.n_sampled,
            "n_nochange": self.n_nochange,
            "iterations": self.iterations,
        }


def sample_pixels(
    before: xr.DataArray, after: xr.DataArray, max_samples: int = 200_000
) -> tuple[np.ndarray, np.ndarray]:
    """A regular, deterministic sample of pixels valid in both rasters.

    Parameters
    ----------
    before, after
        ``(band, y, x)`` rasters on the same grid.
    max_samples
        Upper bound on the number of pixel positions visited (a stride is chosen to meet it).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(n, bands)`` arrays of before and after values at the same pixels.
    """
    _check_pair(before, after)
    ny, nx = before.sizes["y"], before.sizes["x"]
    stride = max(1, math.ceil(math.sqrt(ny * nx / max_samples)))
    sl = {"y": slice(stride // 2, None, stride), "x": slice(stride // 2, None, stride)}
    # each chunk's sample is copied out of the chunk (a strided view would keep it in memory)
    b = compact_values(before.isel(sl).data).reshape(before.sizes["band"], -1).T.astype("float64")
    a = compact_values(after.isel(sl).data).reshape(after.sizes["band"], -1).T.astype("float64")
    ok = np.isfinite(b).all(axis=1) & np.isfinite(a).all(axis=1)
    return b[ok], a[ok]


def irmad_weights(
    x: np.ndarray, y: np.ndarray, *, max_iter: int = 20, tol: float = 1e-4
) -> tuple[np.ndarray, np.ndarray, int]:
    """IR-MAD no-change probabilities of paired samples.

    Parameters
    ----------
    x, y
        ``(n, p)`` before and after samples.
    max_iter, tol
        Stop after ``max_iter`` iterations or when the canonical correlations move less than
        ``tol``.

    Returns
    -------
    (weights, rho, iterations)
        ``weights``: per-sample probability of no change (chi-square survival of the MAD
        statistic); ``rho``: canonical correlations.
    """
    n, p = x.shape
    w = np.ones(n)
    rho_old = np.zeros(p)
    rho = rho_old
    it = 0
    # Products over the n samples use einsum, not BLAS: a multithreaded BLAS on these tall,
    # thin matrices is slow on a busy machine (100x measured) and its sums' order, hence
    # their last bits, would depend on the number of threads.
    for it in range(1, max_iter + 1):  # noqa: B007 - it is reported
        ws = w / w.sum()
        mx, my = np.einsum("i,ij->j", ws, x), np.einsum("i,ij->j", ws, y)
        xc, yc = x - mx, y - my
        xw = xc * ws[:, None]
        sxx = np.einsum("ij,ik->jk", xw, xc) + 1e-9 * np.eye(p)
        syy = np.einsum("ij,ik->jk", yc * ws[:, None], yc) + 1e-9 * np.eye(p)
        sxy = np.einsum("ij,ik->jk", xw, yc)
        # generalized eigenproblem Sxy Syy^-1 Syx a = rho^2 Sxx a
        m = sxy @ linalg.solve(syy, sxy.T, assume_a="pos")
        m = (m + m.T) / 2
        eigval, a = linalg.eigh(m, sxx)
        eigval = np.clip(eigval, 0, 1)
        rho = np.sqrt(eigval)
        b = linalg.solve(syy, sxy.T @ a, assume_a="pos")
        # unit variance canonical variates, signs chosen so that corr(U, V) > 0
        a = a / np.sqrt(np.einsum("ij,jk,ki->i", a.T, sxx, a))
        b = b / np.sqrt(np.einsum("ij,jk,ki->i", b.T, syy, b))
        u, v = np.einsum("ij,jk->ik", xc, a), np.einsum("ij,jk->ik", yc, b)
        sign = np.sign(np.einsum("i,ij,ij->j", ws, u, v))
        sign[sign == 0] = 1
        v = v * sign
        mad = u - v
        var = np.maximum(2 * (1 - rho), 1e-12)
        chi2 = (mad**2 / var).sum(axis=1)
        w = special.gammaincc(p / 2, chi2 / 2)  # chi-square survival, p degrees of freedom
        if np.max(np.abs(rho - rho_old)) < tol:
            break
        rho_old = rho
    return w, rho, it


def _orthogonal_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, float]:
    """Total-least-squares line ``dst = gain * src + offset`` (errors in both variables)."""
    ms, md = src.mean(), dst.mean()
    sxx = np.mean((src - ms) ** 2)
    syy = np.mean((dst - md) ** 2)
    sxy = np.mean((src - ms) * (dst - md))
    if sxy == 0:
        return 1.0, float(md - ms)
    gain = (syy - sxx + math.sqrt((syy - sxx) ** 2 + 4 * sxy**2)) / (2 * sxy)
    return float(gain), float(md - gain * ms)


class RelativeNormalizer:
    """Match the after image's radiometry to the before image's on unchanged pixels (IR-MAD).

    Parameters
    ----------
    model
        ``"quantile"`` (default; monotone tone-curve mapping, handles gamma and dynamic-range
        adjustment) or ``"linear"`` (gain and offset by orthogonal regression).
    nochange_probability
        A sample is "no change" when its IR-MAD no-change probability exceeds this.
    max_samples
        Pixels sampled to fit (a regular grid; the fit reads the scene once, chunk by chunk).
    n_quantiles
        Quantiles matched by the quantile model.

    Examples
    --------
    See the module docstring.
    """

    @classmethod
    def from_params(cls, params: NormalizeParams) -> RelativeNormalizer:
        """Build from the ``normalize`` section of :class:`changedet.config.Config`."""
        return cls(
            params.model,
            nochange_probability=params.nochange_probability,
            max_samples=params.max_samples,
            n_quantiles=params.n_quantiles,
        )

    def __init__(
        self,
        model: Model = "quantile",
        *,
        nochange_probability: float = 0.9,
        max_samples: int = 200_000,
        n_quantiles: int = 256,
    ) -> None:
        if model not in ("linear", "quantile"):
            raise ValueError(f"model must be 'linear' or 'quantile', not {model!r}")
        if not 0 < nochange_probability < 1:
            raise ValueError("nochange_probability must lie in (0, 1)")
        self.model: Model = model
        self.nochange_probability = nochange_probability
        self.max_samples = max_samples
        self.n_quantiles = n_quantiles
        self._result: NormalizationResult | None = None

    @property
    def result(self) -> NormalizationResult:
        """The fitted :class:`NormalizationResult` (after :meth:`fit`)."""
        if self._result is None:
            raise RuntimeError("RelativeNormalizer is not fitted yet: call fit(before, after)")
        return self._result

    def fit(self, before: xr.DataArray, after: xr.DataArray) -> RelativeNormalizer:
        """Fit the mapping of ``after`` onto ``before`` on pixels IR-MAD finds unchanged."""
        x, y = sample_pixels(before, after, self.max_samples)
        name = before.name or "before/after"
        if len(x) < 100:
            raise AllNodataError(
                name, f"only {len(x)} pixels valid in both images", "Check nodata and overlap."
            )
        w, rho, iters = irmad_weights(x, y)
        keep = w > self.nochange_probability
        if keep.sum() < max(50, 0.05 * len(w)):
            # Few pixels pass (very different images, or a near-noiseless pair whose tiny
            # residual non-linearity looks significant): keep the most similar fifth instead.
            keep = w >= np.quantile(w, 0.8)
        gains, offsets, qa, qb = [], [], [], []
        probs = np.linspace(0, 1, self.n_quantiles)
        for band in range(x.shape[1]):
            g, o = _orthogonal_fit(y[keep, band], x[keep, band])
            gains.append(g)
            offsets.append(o)
            if self.model == "quantile":
                qa.append(tuple(np.quantile(y[keep, band], probs).tolist()))
                qb.append(tuple(np.quantile(x[keep, band], probs).tolist()))
        self._result = NormalizationResult(
            model=self.model,
            gain=tuple(gains),
            offset=tuple(offsets),
            canonical_correlations=tuple(float(r) for r in rho),
            n_sampled=len(x),
            n_nochange=int(keep.sum()),
            iterations=iters,
            quantiles_after=tuple(qa),
            quantiles_before=tuple(qb),
        )
        return self

    def apply(self, after: xr.DataArray) -> xr.DataArray:
        """Return the normalised after image (lazy when ``after`` is Dask-backed; float32)."""
        res = self.result
        if after.sizes["band"] != len(res.gain):
            raise BandMismatchError(
                after.name, f"has {after.sizes['band']} bands, the fit had {len(res.gain)}", None
            )
        out = after.astype("float32")
        if res.model == "linear":
            gain = xr.DataArray(np.array(res.gain, "float32"), dims="band")
            offset = xr.DataArray(np.array(res.offset, "float32"), dims="band")
            out = out * gain + offset
        else:
            bands = [
                xr.apply_ufunc(
                    _quantile_map,
                    out.isel(band=i),
                    kwargs={
                        "qa": np.asarray(res.quantiles_after[i]),
                        "qb": np.asarray(res.quantiles_before[i]),
                        "gain": res.gain[i],
                        "offset": res.offset[i],
                    },
                    dask="parallelized",
                    output_dtypes=["float32"],
                )
                for i in range(out.sizes["band"])
            ]
            out = xr.concat(bands, dim="band").transpose(*after.dims)
        out = out.assign_attrs(after.attrs)
        out.attrs["normalization"] = res.model
        return out  # coordinates, spatial_ref (CRS) included, come along

    def fit_and_apply(self, before: xr.DataArray, after: xr.DataArray) -> xr.DataArray:
        """:meth:`fit` then :meth:`apply` to ``after``."""
        return self.fit(before, after).apply(after)


def _quantile_map(
    values: np.ndarray, *, qa: np.ndarray, qb: np.ndarray, gain: float, offset: float
) -> np.ndarray:
    """Monotone piecewise-linear mapping through matched quantiles; linear beyond the ends."""
    # Repeated quantiles (flat histograms) break interpolation: keep strictly increasing knots.
    keep = np.concatenate([[True], np.diff(qa) > 1e-9])
    qa, qb = qa[keep], qb[keep]
    out = np.interp(values, qa, qb)
    # Beyond the no-change range, continue with the slope of the outer tenth of the curve
    # (the tone curve's local slope there), or the overall gain if that tenth is degenerate.
    k = max(1, len(qa) // 10)
    lo_slope = (qb[k] - qb[0]) / (qa[k] - qa[0]) if len(qa) > k else gain
    hi_slope = (qb[-1] - qb[-1 - k]) / (qa[-1] - qa[-1 - k]) if len(qa) > k else gain
    # only the few values beyond the ends are recomputed (same arithmetic as on whole arrays)
    lo, hi = values < qa[0], values > qa[-1]
    if lo.any():
        out[lo] = qb[0] + lo_slope * (values[lo] - qa[0])
    if hi.any():
        out[hi] = qb[-1] + hi_slope * (values[hi] - qa[-1])
    return out.astype("float32")


def _check_pair(before: xr.DataArray, after: xr.DataArray) -> None:
    if before.sizes["band"] != after.sizes["band"]:
        raise BandMismatchError(
            after.name or "after",
            f"has {after.sizes['band']} bands, before has {before.sizes['band']}",
            "Select matching bands before normalising.",
        )
    if (before.sizes["y"], before.sizes["x"]) != (after.sizes["y"], after.sizes["x"]):
        raise ValueError("before and after must be on the same grid: align them first")
