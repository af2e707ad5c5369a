"""Tests of changedet.align: lazy re-gridding, common extent, bad pairs."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.warp
from affine import Affine
from rasterio.enums import Resampling

from changedet.align import align_pair, align_to, common_valid_extent, select_bands
from changedet.errors import AllNodataError, BandMismatchError, MissingCRSError, NoOverlapError
from changedet.testing import make_raster, make_scene

T0 = Affine(0.5, 0, 500000, 0, -0.5, 4000000)


def _texture(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return make_scene(shape, seed=seed)[0][None]


def test_align_to__same_grid_is_identity() -> None:
    b = make_raster(_texture((64, 64)))
    a = make_raster(_texture((64, 64), 1))
    assert align_to(b, a) is a


def test_align_to__integer_offset_is_exact_and_lazy() -> None:
    img = _texture((120, 140))
    before = make_raster(img[:, 10:110, 20:130])
    after = make_raster(img, transform=T0 * Affine.translation(-20, -10)).chunk({"y": 37, "x": 41})
    out = align_to(before, after)
    assert out.chunks is not None
    np.testing.assert_array_equal(out.values, before.values)
    partial = align_to(
        make_raster(img), make_raster(img[:, 5:, :], transform=T0 * Affine.translation(0, 5))
    )
    assert np.isnan(partial.values[:, :5]).all() and np.isfinite(partial.values[:, 5:]).all()


def test_align_to__reprojection_dask_equals_numpy_and_rasterio() -> None:
    img = _texture((300, 260), 2)
    before = make_raster(
        np.zeros((1, 200, 180), np.float32), transform=Affine(0.7, 0, 500010, 0, -0.7, 3999990)
    )
    after = make_raster(img, transform=T0)
    eager = align_to(before, after, resampling="bilinear")
    lazy = align_to(
        before.chunk({"y": 97, "x": 131}), after.chunk({"y": 53, "x": 71}), resampling="bilinear"
    )
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.values, eager.values, rtol=1e-6, equal_nan=True)
    ref = np.full((1, 200, 180), np.nan, np.float32)
    rasterio.warp.reproject(
        img,
        ref,
        src_transform=T0,
        src_crs="EPSG:32637",
        dst_transform=before.rio.transform(),
        dst_crs="EPSG:32637",
        resampling=Resampling.bilinear,
        src_nodata=np.nan,
        dst_nodata=np.nan,
        XSCALE=0.5 / 0.7,
        YSCALE=0.5 / 0.7,
    )
    np.testing.assert_allclose(eager.values, ref, rtol=1e-5, atol=1e-3, equal_nan=True)
    assert eager.rio.crs == before.rio.crs and eager.rio.transform() == before.rio.transform()


def test_align_to__other_crs() -> None:
    img = _texture((200, 200), 3)
    after = make_raster(img, crs="EPSG:32637")
    b_t = Affine(0.5, 0, after.rio.bounds()[0] + 10, 0, -0.5, after.rio.bounds()[3] - 10)
    # the same place in EPSG:3857 (just a different CRS; values need not be identical)
    left, bottom, right, top = rasterio.warp.transform_bounds(32637, 3857, *after.rio.bounds())
    before = make_raster(
        np.zeros((1, 100, 100), np.float32),
        crs="EPSG:3857",
        transform=Affine((right - left) / 100, 0, left, 0, -(top - bottom) / 100, top),
    )
    out = align_to(before, after.chunk({"y": 64, "x": 64}))
    assert out.shape == (1, 100, 100) and out.rio.crs.to_epsg() == 3857
    assert np.isfinite(out.values[:, 10:90, 10:90]).all()
    del b_t


def test_align_to__errors() -> None:
    a = make_raster(_texture((64, 64)))
    with pytest.raises(MissingCRSError, match=r"nocrs: no CRS found"):
        align_to(a, make_raster(_texture((64, 64)), crs=None, name="nocrs"))
    far = make_raster(
        _texture((64, 64)), transform=T0 * Affine.translation(1000, 0), name="far.tif"
    )
    with pytest.raises(NoOverlapError, match=r"far\.tif: does not overlap the before image"):
        align_to(a, far)


def test_select_bands__strict_and_common() -> None:
    b = make_raster(np.zeros((4, 8, 8), np.float32), name="before.tif")
    a = make_raster(np.zeros((3, 8, 8), np.float32), name="after.tif")
    with pytest.raises(
        BandMismatchError, match=r"after\.tif: has 3 bands, .* has 4. .*bands='common'"
    ):
        select_bands(b, a)
    bb, aa = select_bands(b, a, "common")
    assert bb.sizes["band"] == aa.sizes["band"] == 3


def test_common_valid_extent__dask_equals_numpy() -> None:
    a = np.ones((2, 90, 110), np.float32)
    a[:, :7] = np.nan
    a[1, :, 100:] = np.nan  # one band missing counts as nodata
    b = np.ones((2, 90, 110), np.float32)
    b[:, :, :3] = np.nan
    want = (slice(7, 90), slice(3, 100))
    assert common_valid_extent(make_raster(a), make_raster(b)) == want
    assert (
        common_valid_extent(
            make_raster(a).chunk({"y": 13, "x": 17}), make_raster(b).chunk({"y": 13, "x": 17})
        )
        == want
    )


def test_align_pair__crops_to_common_extent() -> None:
    img = _texture((400, 400), 4)
    before = make_raster(img[:, :300, :300])
    after = make_raster(img[:, 40:, 50:], transform=T0 * Affine.translation(50, 40))
    pair = align_pair(before, after, min_overlap_px=128)
    assert (pair.rows, pair.cols) == (slice(40, 300), slice(50, 300))
    np.testing.assert_array_equal(pair.before.values, pair.after.values)


def test_align_pair__bad_pairs() -> None:
    img = _texture((300, 300), 5)
    before = make_raster(img, name="before.tif")
    small = make_raster(
        img[:, :, 200:], transform=T0 * Affine.translation(200, 0), name="small.tif"
    )
    with pytest.raises(
        NoOverlapError,
        match=r"small.tif: overlap with before.tif is 300 x 100 px, smaller than one correlation window \(256 px\)",
    ):
        align_pair(before, small)
    empty = make_raster(np.full((1, 300, 300), np.nan, np.float32), name="empty.tif")
    with pytest.raises(AllNodataError, match=r"empty\.tif: holds no valid pixel"):
        align_pair(before, empty)
    with pytest.raises(BandMismatchError, match=r"has 2 bands"):
        align_pair(before, make_raster(np.concatenate([img, img]), name="two.tif"))
    half_a = img.copy()
    half_a[:, :, 150:] = np.nan
    half_b = img.copy()
    half_b[:, :, :150] = np.nan
    with pytest.raises(NoOverlapError, match=r"b\.tif: has no valid pixel in common with a\.tif"):
        align_pair(make_raster(half_a, name="a.tif"), make_raster(half_b, name="b.tif"))


def test_align__only_rasterios_spurious_warp_warning_is_silenced() -> None:
    # rasterio.warp's "no geotransform" warning under threads is spurious (every call passes
    # both transforms); the same warning from anywhere else, e.g. opening a plain file, is not
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from changedet.align import _quiet_spurious_warp_warning

    text = "Dataset has no geotransform, gcps, or rpcs. The identity matrix will be returned."
    with warnings.catch_warnings(record=True) as seen:
        _quiet_spurious_warp_warning()  # as each blockwise reprojection does
        _quiet_spurious_warp_warning()  # (twice: no duplicate filter)
        n = sum(f[2] is NotGeoreferencedWarning for f in warnings.filters)
        for module in ("rasterio.warp", "rasterio._base"):
            warnings.warn_explicit(text, NotGeoreferencedWarning, "x.py", 1, module=module)
    assert [w.category for w in seen] == [NotGeoreferencedWarning] and n == 1
