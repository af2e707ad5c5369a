"""Radiometric normalisation recovers known gain, offset and gamma differences."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from changedet.errors import AllNodataError, BandMismatchError
from changedet.normalize import RelativeNormalizer, irmad_weights, sample_pixels


def _scene(seed: int = 0, shape: tuple[int, int] = (120, 150)) -> xr.DataArray:
    """A textured 3-band scene in [10, 230] with band-to-band correlation like real imagery."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(0, 1, shape), 3)
    base = (base - base.min()) / np.ptp(base)
    bands = [base * 200 + 15 + rng.normal(0, 2, shape) * (i + 1) for i in range(3)]
    return xr.DataArray(np.stack(bands), dims=("band", "y", "x"), name="before")


def test_fit__recovers_gain_and_offset_linear() -> None:
    before = _scene()
    after = before * xr.DataArray([1.2, 0.8, 1.5], dims="band") + xr.DataArray(
        [10.0, -5.0, 3.0], dims="band"
    )
    res = RelativeNormalizer(model="linear").fit(before, after).result
    np.testing.assert_allclose(res.gain, [1 / 1.2, 1 / 0.8, 1 / 1.5], rtol=1e-6)
    np.testing.assert_allclose(res.offset, [-10 / 1.2, 5 / 0.8, -3 / 1.5], rtol=1e-5)


def test_fit__ignores_changed_pixels() -> None:
    """A large changed area (here a fifth of the scene) must not bias the fit."""
    before = _scene(1)
    after = before * 1.1 + 7.0
    after[:, :40, :60] = 230.0 - after[:, :40, :60]  # strong change in 13 % of pixels
    norm = RelativeNormalizer(model="linear").fit(before, after)
    np.testing.assert_allclose(norm.result.gain, [1 / 1.1] * 3, rtol=0.01)
    assert norm.result.n_nochange < norm.result.n_sampled * 0.95
    out = norm.apply(after)
    err = np.abs(out.values[:, 60:, 80:] - before.values[:, 60:, 80:])
    assert err.max() < 1.0


def test_apply__quantile_model_undoes_gamma() -> None:
    before = _scene(2)
    curve = 255.0 * (before / 255.0) ** 0.7 + 4.0  # tone curve + offset
    noise = np.random.default_rng(9).normal(0, 1.0, before.shape)  # independent sensor noise
    errors = {}
    for model in ("linear", "quantile"):
        norm = RelativeNormalizer(model=model).fit(before, curve + noise)
        errors[model] = float(np.abs(norm.apply(curve) - before).mean())  # the fitted mapping
    assert errors["quantile"] < 0.8
    assert errors["quantile"] < errors["linear"] * 0.8


def test_apply__dask_equals_numpy_on_odd_chunks() -> None:
    before = _scene(3)
    after = 255.0 * (before / 255.0) ** 1.2
    lazy_after = after.copy(data=da.from_array(after.values, chunks=(3, 37, 41)))
    lazy_before = before.copy(data=da.from_array(before.values, chunks=(3, 29, 53)))
    for model in ("linear", "quantile"):
        eager = RelativeNormalizer(model=model).fit_and_apply(before, after)
        lazy = RelativeNormalizer(model=model).fit_and_apply(lazy_before, lazy_after)
        assert isinstance(lazy.data, da.Array)
        np.testing.assert_array_equal(lazy.values, eager.values)


def test_apply__nodata_stays_nodata() -> None:
    before = _scene(4)
    after = before * 0.9
    after[:, 10:20, 10:20] = np.nan
    out = RelativeNormalizer().fit_and_apply(before, after)
    assert np.isnan(out.values[:, 10:20, 10:20]).all()
    assert np.isfinite(out.values[:, 30:, 30:]).all()


def test_irmad_weights__flags_changed_samples() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (4000, 3)) @ np.array([[1, 0.8, 0.6], [0, 1, 0.5], [0, 0, 1]])
    y = 2 * x + 1 + rng.normal(0, 0.05, x.shape)
    y[:200] = rng.normal(0, 3, (200, 3))
    w, rho, _ = irmad_weights(x, y)
    # IR-MAD concentrates weight on the most consistent pixels; what matters is the ranking:
    # no changed sample among the most similar half, and changed ones far below unchanged ones.
    top_half = np.argsort(w)[len(w) // 2 :]
    assert (top_half >= 200).all()
    assert np.median(w[:200]) < 1e-6 * np.median(w[200:])
    assert rho.max() > 0.99


def test_sample_pixels__skips_nodata() -> None:
    before = _scene(6)
    after = before.copy()
    after[:, :, :75] = np.nan
    b, a = sample_pixels(before, after, max_samples=1000)
    assert len(b) > 0 and np.isfinite(a).all()


def test_sample_pixels__dask_keeps_no_chunk_alive(tmp_path: Path) -> None:
    """Each chunk's strided sample is a copy, not a view holding its whole source chunk: Dask
    holds every chunk's sample until the end, so views would hold the whole scene (3 GiB
    at 16384², see benchmarks/RESULTS.md). Same values as the in-memory sample."""
    from dask.callbacks import Callback

    from changedet.io import open_raster, write_cog
    from changedet.testing import make_raster

    before = _scene(9, (256, 320)).astype("float32")
    after = before * np.float32(1.1) + np.float32(3.0)
    write_cog(make_raster(before.values), tmp_path / "b.tif")
    write_cog(make_raster(after.values), tmp_path / "a.tif")
    lazy_b = open_raster(tmp_path / "b.tif", chunks=64)  # chunks read from files, as in a run
    lazy_a = open_raster(tmp_path / "a.tif", chunks=64)
    held: list[int] = []

    def posttask(key, result, dsk, state, worker_id) -> None:  # type: ignore[no-untyped-def]
        for v in state["cache"].values():
            if isinstance(v, np.ndarray) and v.base is not None:
                held.append(np.asarray(v.base).nbytes - v.nbytes)

    with Callback(posttask=posttask):
        b, a = sample_pixels(lazy_b, lazy_a, max_samples=1000)
    eb, ea = sample_pixels(lazy_b.compute(), lazy_a.compute(), max_samples=1000)
    np.testing.assert_array_equal(b, eb)
    np.testing.assert_array_equal(a, ea)
    assert max(held, default=0) == 0  # no held result is a view into a larger array


def test_fit__all_nodata_raises() -> None:
    before = _scene(7)
    after = before * np.nan
    with pytest.raises(AllNodataError, match="valid in both"):
        RelativeNormalizer().fit(before, after)


def test_fit__band_mismatch_raises() -> None:
    before = _scene(8)
    with pytest.raises(BandMismatchError, match="has 2 bands, before has 3"):
        RelativeNormalizer().fit(before, before.isel(band=slice(0, 2)).rename("after"))
