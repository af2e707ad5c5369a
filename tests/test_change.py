"""Change maps: known answers, chunked equals in-memory, thresholds, not-assessable mask."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from changedet.change import ChangeParams, change_scores, not_assessable, threshold_score


def _pair(seed: int = 0, shape: tuple[int, int] = (140, 170)) -> tuple[xr.DataArray, xr.DataArray]:
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2)
    base = 60 + 120 * (base - base.min()) / np.ptp(base)
    before = np.stack([base + rng.normal(0, 2, shape) for _ in range(3)])
    after = before + rng.normal(0, 2, before.shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    crater = (yy - 70) ** 2 + (xx - 60) ** 2 < 8**2
    after[:, crater] = 25.0
    roof = (slice(20, 45), slice(110, 150))
    after[:, roof[0], roof[1]] = rng.uniform(30, 220, (3, 25, 40))  # rubble texture
    dims = ("band", "y", "x")
    return xr.DataArray(before, dims=dims), xr.DataArray(after, dims=dims)


def test_change_scores__high_on_change_low_elsewhere() -> None:
    before, after = _pair()
    s = change_scores(before, after, gsd_m=0.5, value_range=255)
    assert float(s["score"][70, 60]) > 0.3
    assert float(s["score"][32, 130]) > 0.3
    assert float(s["texture"][32, 130]) > 0.5
    quiet = s["score"][100:, 100:]
    assert float(quiet.quantile(0.99)) < 0.05
    assert 0.5 < float(s["cva"][100:, 100:].median()) < 2.5  # noise is ~1 sigma by construction


@pytest.mark.parametrize("chunks", [(3, 37, 41), (3, 140, 23), (3, 61, 170)])
def test_change_scores__dask_equals_numpy(chunks: tuple[int, int, int]) -> None:
    before, after = _pair(1)
    eager = change_scores(before, after, gsd_m=0.5, value_range=255)
    lazy = change_scores(
        before.copy(data=da.from_array(before.values, chunks=chunks)),
        after.copy(data=da.from_array(after.values, chunks=chunks)),
        gsd_m=0.5,
        value_range=255,
    )
    for name in ("cva", "dssim", "texture", "score"):
        assert isinstance(lazy[name].data, da.Array)
        np.testing.assert_allclose(lazy[name].values, eager[name].values, rtol=1e-6, atol=1e-6)


def test_change_scores__halo_follows_window() -> None:
    before, after = _pair(2)
    small = change_scores(
        before, after, ChangeParams(window_sigma_m=0.5), gsd_m=0.5, value_range=255
    )
    big = change_scores(before, after, ChangeParams(window_sigma_m=2.0), gsd_m=0.5, value_range=255)
    assert big.attrs["halo_px"] > small.attrs["halo_px"] >= 4


def test_change_scores__nodata_is_nan() -> None:
    before, after = _pair(3)
    after[:, :10, :] = np.nan
    s = change_scores(before, after, gsd_m=0.5, value_range=255)
    assert np.isnan(s["score"].values[:10]).all()
    assert np.isfinite(s["score"].values[20:]).all()


def test_change_scores__gsd_needed_without_transform() -> None:
    before, after = _pair(4)
    with pytest.raises(ValueError, match="gsd_m"):
        change_scores(before, after)


@pytest.mark.parametrize("method", ["otsu", "kittler"])
def test_threshold_score__separates_two_classes(method: str) -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.03, 9000), rng.normal(0.7, 0.05, 1000)])
    score = xr.DataArray(np.clip(values, 0, 1).reshape(100, 100), dims=("y", "x"))
    t = threshold_score(score, method)
    assert 0.15 < t < 0.6
    lazy = score.copy(data=da.from_array(score.values, chunks=(33, 47)))
    assert threshold_score(lazy, method) == t


def test_threshold_score__manual_override_and_bad_values() -> None:
    score = xr.DataArray(np.zeros((4, 4)), dims=("y", "x"))
    assert threshold_score(score, 0.42) == 0.42
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold_score(score, 1.5)
    with pytest.raises(ValueError, match="threshold method"):
        threshold_score(score, "median")  # type: ignore[arg-type]


def test_not_assessable__nodata_and_saturation() -> None:
    before, after = _pair(5)
    after[:, 0, 0] = np.nan
    before[1, 5, 5] = 255
    mask = not_assessable(before, after, saturation=255)
    assert mask[0, 0] and mask[5, 5] and not mask[50, 50]
    assert int(mask.sum()) == 2


def test_change_scores__given_noise_sigma_is_lazy_and_equal() -> None:
    """With both scales given (as the pipeline does for the result it hands back), nothing is
    computed until the maps are, and the maps equal those with the scales estimated."""
    import dask

    from changedet.normalize import sample_pixels

    before, after = _pair()
    estimated = change_scores(before, after, gsd_m=0.5)
    b, _ = sample_pixels(before, after, 100_000)  # the estimate change_scores makes
    value_range = float(np.percentile(b, 99.9))
    chunks = {"band": 3, "y": 37, "x": 41}
    calls: list[int] = []

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return dask.get(*args, **kwargs)

    with dask.config.set(scheduler=counting):
        given = change_scores(
            before.chunk(chunks),
            after.chunk(chunks),
            gsd_m=0.5,
            value_range=value_range,
            noise_sigma=np.asarray(estimated.attrs["noise_sigma"]),
        )
    assert not calls  # built, not computed
    for name in ("cva", "dssim", "texture", "score"):
        np.testing.assert_array_equal(given[name].values, estimated[name].values)
    with pytest.raises(ValueError, match="noise_sigma needs one value per band"):
        change_scores(before, after, gsd_m=0.5, noise_sigma=np.ones(2))


def test_change_scores__from_files_read_haloed_windows_same_values(tmp_path) -> None:
    """Rasters opened with open_raster: every block reads its haloed windows from the files
    (no block waits for its neighbours: bounded memory); the maps are exactly those of the
    overlap path, nodata, scene edges and chunks smaller than the halo included (300 rows in
    chunks of 98: the last one, 6 rows, takes 2 rows from its neighbour, the halo being 8 px)."""
    from changedet.testing import make_pair, stored_pair

    before, after, _ = make_pair((3, 300, 340), shift_px=(0, 0), seed=6)
    after = after.where(after.x < after.x[300])  # a nodata block
    b, a = stored_pair(before, after, tmp_path, chunks=98)
    windowed = change_scores(b, a)
    assert windowed.attrs["halo_px"] == 8 and windowed["dssim"].chunks[0][-2:] == (96, 8)
    assert any(str(k[0]).startswith("haloed-") for k in dict(windowed["score"].data.dask))
    # arithmetic gives arrays that are not the files' own: the overlap path
    overlap = change_scores(b.copy(data=b.data + np.float32(0)), a.copy(data=a.data + 0))
    assert not any(str(k[0]).startswith("haloed-") for k in dict(overlap["score"].data.dask))
    for name in ("cva", "dssim", "texture", "score"):
        assert windowed[name].chunks == overlap[name].chunks
        np.testing.assert_array_equal(windowed[name].values, overlap[name].values)
