"""Tests of changedet.coregister: known answers, dask = numpy, quality gate, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from changedet.config import CoregisterConfig
from changedet.coregister import CoregResult, GlobalShift, LocalGrid, coregister
from changedet.errors import CoregistrationError, NoOverlapError
from changedet.testing import make_pair, make_raster, truth_displacement, warp_image

DATA = Path(__file__).parents[1].parent / "shared" / "data"
SMALL = {"window_px": 128, "step_px": 64}


def _field_error(result: CoregResult, truth: dict, shape: tuple[int, int], edge: int = 64) -> float:
    """RMSE (px) between fitted and true displacement over the scene interior."""
    rows, cols = np.mgrid[edge : shape[0] - edge : 16, edge : shape[1] - edge : 16]
    ex, ey = result.displacement_at(cols.ravel(), rows.ravel())
    tx, ty = truth_displacement(truth, cols.ravel(), rows.ravel())
    return float(np.sqrt(np.mean((ex - tx) ** 2 + (ey - ty) ** 2)))


@pytest.mark.parametrize("shift", [(0.3, -0.45), (-14.6, 9.25), (6.5, 14.9)])
def test_global_shift__known_shift(shift: tuple[float, float]) -> None:
    before, after, truth = make_pair((1, 640, 640), shift_px=shift, shadows=False, seed=11)
    res = GlobalShift(window_px=128, global_windows=16).fit(before, after).result
    assert res.passed, res.reasons
    assert res.shift_px == pytest.approx(shift, abs=0.05)
    assert _field_error(res, truth, (640, 640)) < 0.05


@pytest.mark.parametrize(
    ("shift", "rotation"), [((-7.3, 12.6), 0.3), ((11.2, -3.7), -0.25), ((0.4, 0.2), 0.1)]
)
def test_local_grid__affine_with_rotation_and_moved_shadows(shift, rotation) -> None:
    before, after, truth = make_pair((3, 768, 768), shift_px=shift, rotation_deg=rotation, seed=5)
    res = LocalGrid(**SMALL).fit(before, after).result
    assert res.passed, res.reasons
    assert res.model.kind == "affine"
    assert _field_error(res, truth, (768, 768)) < 0.05
    assert res.n_kept >= 0.9 * res.n_tie_points


def test_local_grid__field_and_translation_models() -> None:
    before, after, truth = make_pair((1, 640, 640), shift_px=(2.2, -1.3), seed=3)
    for model in ("translation", "field"):
        res = LocalGrid(model=model, **SMALL).fit(before, after).result
        assert res.model.kind == model
        assert _field_error(res, truth, (640, 640)) < 0.05


def test_local_grid__dask_input_matches_numpy() -> None:
    before, after, _ = make_pair((1, 512, 512), shift_px=(3.3, -2.1), seed=4)
    res_np = LocalGrid(**SMALL).fit(before, after).result
    res_da = (
        LocalGrid(**SMALL)
        .fit(before.chunk({"y": 97, "x": 131}), after.chunk({"y": 97, "x": 131}))
        .result
    )
    np.testing.assert_allclose(res_np.model.matrix, res_da.model.matrix, atol=1e-6)


def test_fit_from_files__windowed_reads_give_the_dask_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files opened with open_raster are read window by window from the file; the fit is the
    one the Dask slices give."""
    import changedet.coregister as coreg
    from changedet.io import open_raster, write_cog

    before, after, _ = make_pair((1, 512, 512), shift_px=(3.3, -2.1), seed=4)
    write_cog(before, tmp_path / "b.tif")
    write_cog(after, tmp_path / "a.tif")
    reads: list[object] = []
    reader = coreg.window_reader

    def spy(data: object) -> object:
        got = reader(data)
        reads.append(got)
        return got

    def fits() -> list[CoregResult]:
        b = open_raster(tmp_path / "b.tif", chunks=200)
        a = open_raster(tmp_path / "a.tif", chunks=200)
        return [stage.fit(b, a).result for stage in (GlobalShift(), LocalGrid(**SMALL))]

    monkeypatch.setattr(coreg, "window_reader", spy)
    windowed = fits()
    assert reads and all(r is not None for r in reads)
    monkeypatch.setattr(coreg, "window_reader", lambda data: None)
    for w, d in zip(windowed, fits(), strict=True):
        assert w.shift_px == d.shift_px and w.n_kept == d.n_kept
        np.testing.assert_array_equal(w.model.matrix, d.model.matrix)


def test_apply__dask_equals_numpy_on_odd_chunks() -> None:
    before, after, _ = make_pair((2, 300, 340), shift_px=(4.3, -2.7), rotation_deg=0.2, seed=6)
    after = after.where(after.x < after.x[300])  # a nodata block
    stage = LocalGrid(window_px=96, step_px=64).fit(before, after)
    eager = stage.apply(after)
    lazy = stage.apply(after.chunk({"band": 1, "y": 97, "x": 131}))
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.values, eager.values, rtol=1e-5, atol=1e-3, equal_nan=True)
    assert np.isnan(eager.values[:, :, 300:]).all()


def test_apply__from_file_reads_windows_and_gives_the_map_overlap_result(tmp_path: Path) -> None:
    """A file opened with open_raster is warped block by block from haloed windows read from
    the file (no task depends on another: bounded memory); the values are exactly those of
    the map_overlap path, nodata, scene edges and small edge chunks included."""
    from changedet.io import open_raster, write_cog

    before, after, _ = make_pair((3, 300, 340), shift_px=(4.3, -2.7), rotation_deg=0.2, seed=6)
    after = after.where(after.x < after.x[300])  # a nodata block
    write_cog(after.astype("float32"), tmp_path / "a.tif", nodata=float("nan"))
    stage = LocalGrid(window_px=96, step_px=64).fit(before, after)
    a = open_raster(tmp_path / "a.tif", chunks=97)
    windowed = stage.apply(a)
    assert all(k[0].startswith("haloed-") for k in dict(windowed.data.dask))
    via_overlap = stage.apply(a.copy(data=a.data + np.float32(0)))  # not the file's array
    assert not any(k[0].startswith("haloed-") for k in dict(via_overlap.data.dask))
    assert windowed.chunks == via_overlap.chunks
    np.testing.assert_array_equal(windowed.values, via_overlap.values)
    assert np.isnan(windowed.values[:, :, 300:]).all()


def test_apply__corrected_after_lines_up_with_before() -> None:
    shift = (5.6, -3.2)
    before, after, _ = make_pair(
        (1, 512, 512),
        shift_px=shift,
        gain=1,
        offset=0,
        gamma=1,
        seasonal=0,
        shadows=False,
        noise=0.5,
        seed=8,
    )
    corrected = GlobalShift(window_px=128).fit_and_apply(before, after)
    check = GlobalShift(window_px=128).fit(before, corrected).result
    assert np.hypot(*check.shift_px) < 0.03
    inner = (slice(None), slice(20, -20), slice(20, -20))
    err = np.abs(corrected.values[inner] - before.values[inner])
    assert np.nanmedian(err) < 2.0  # noise sigma 0.5 in each image


def test_fit__quality_gate_flags_unrelated_images(caplog: pytest.LogCaptureFixture) -> None:
    before, _, _ = make_pair((1, 512, 512), seed=1)
    other, _, _ = make_pair((1, 512, 512), seed=2)
    with caplog.at_level(logging.WARNING, logger="changedet.coregister"):
        res = LocalGrid(**SMALL).fit(before, other.rename("other.tif")).result
    assert not res.passed
    assert res.reasons
    assert "quality gate failed" in caplog.text
    corrected = LocalGrid(**SMALL).fit_and_apply(before, other)
    assert corrected.attrs["coregistration_passed"] == 0


def test_fit__quality_gate_raises_when_asked() -> None:
    before, _, _ = make_pair((1, 512, 512), seed=1)
    other, _, _ = make_pair((1, 512, 512), seed=2)
    with pytest.raises(
        CoregistrationError, match=r"other\.tif: co-registration quality gate failed"
    ):
        GlobalShift(window_px=128, on_fail="raise").fit(before, other.rename("other.tif"))


def test_fit__nodata_windows_are_rejected() -> None:
    before, after, truth = make_pair((1, 512, 512), shift_px=(1.2, 0.8), seed=9)
    after = after.where(after.y < after.y[200])  # top 200 rows nodata
    res = LocalGrid(**SMALL).fit(before, after).result
    tp = res.tie_points
    assert (tp["reason"] == "nodata").any()
    assert not tp.loc[tp["reason"] == "nodata", "kept"].any()
    assert res.passed
    assert _field_error(res, truth, (512, 512)) < 0.05


def test_fit__outlier_windows_are_rejected() -> None:
    before, after, truth = make_pair((1, 512, 512), shift_px=(-2.5, 1.5), seed=10)
    data = after.values.copy()
    data[:, 300:420, 300:420] = warp_image(before.values[0], [[1, 0, 9.0], [0, 1, -7.0]])[
        300:420, 300:420
    ]
    res = LocalGrid(**SMALL).fit(before, after.copy(data=data)).result
    assert (~res.tie_points["kept"]).sum() >= 1
    assert _field_error(res, truth, (512, 512)) < 0.05


def test_fit__grid_mismatch_and_small_scene_errors() -> None:
    before, after, _ = make_pair((1, 300, 300), seed=0)
    with pytest.raises(NoOverlapError, match="align_to"):
        GlobalShift().fit(before, after.isel(x=slice(0, 299)))
    with pytest.raises(NoOverlapError, match="smaller than one correlation window"):
        GlobalShift(window_px=512).fit(before, after)


def test_result__not_fitted_error() -> None:
    with pytest.raises(CoregistrationError, match="not fitted"):
        _ = GlobalShift().result


def test_result__to_dict_plot_and_geodataframe(tmp_path: Path) -> None:
    before, after, _ = make_pair((1, 512, 512), shift_px=(3.0, 1.0), rotation_deg=0.2, seed=12)
    res = LocalGrid(**SMALL).fit(before, after).result
    d = json.loads(json.dumps(res.to_dict()))
    assert d["n_kept"] == res.n_kept and d["passed"] is True
    fig = res.plot(before)
    fig.savefig(tmp_path / "tie_points.png", dpi=60)
    assert (tmp_path / "tie_points.png").stat().st_size > 1000
    gdf = res.tie_points_gdf()
    assert gdf.crs.to_epsg() == 32637 and len(gdf) == res.n_tie_points
    assert res.rmse_m == pytest.approx(res.rmse_px * 0.5)


def test_coregister__function_uses_config() -> None:
    before, after, _ = make_pair((1, 400, 400), shift_px=(1.5, 0.5), seed=4)
    corrected, res = coregister(before, after, CoregisterConfig(method="global", window_px=128))
    assert res.method == "global" and corrected.shape == after.shape


# ---------------------------------------------------------------------------- real data


def _landsat():
    path = DATA / "landsat7_rgb" / "RGB.byte.tif"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/data is absent)")
    from changedet.io import open_raster

    return open_raster(path, chunks=256)


@pytest.mark.realdata
@pytest.mark.parametrize("shift", [(2.37, -1.61), (-9.5, 6.25)])
def test_global_shift__landsat_known_shift(shift: tuple[float, float]) -> None:
    base = _landsat()
    img = base.values
    matrix = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], float)
    warped = np.stack([warp_image(b, matrix) for b in img])
    after = make_raster(0.8 * warped + 12.0, crs=base.rio.crs, transform=base.rio.transform())
    before = make_raster(img, crs=base.rio.crs, transform=base.rio.transform())
    res = LocalGrid(window_px=128, step_px=64, model="translation").fit(before, after).result
    assert res.passed, res.reasons
    assert res.shift_px == pytest.approx(shift, abs=0.05)


@pytest.mark.realdata
def test_local_grid__sentinel2_pair_consistent_field() -> None:
    ref = DATA / "sentinel2_pair" / "ref_S2A_20160608T153121_T33UUU_sub.jp2"
    tgt = DATA / "sentinel2_pair" / "tgt_S2A_20160529T153631_T33UUU_sub.jp2"
    if not ref.exists():
        pytest.skip(f"real data not found at {ref.parent} (../shared/data is absent)")
    from changedet.align import align_pair
    from changedet.io import open_raster

    # read once into memory (decoding JPEG 2000 windows one by one is slow); nodata = 0 border
    pair = align_pair(
        open_raster(ref, chunks=None, nodata=0), open_raster(tgt, chunks=None, nodata=0)
    )
    res = LocalGrid(window_px=256, step_px=256).fit(pair.before, pair.after).result
    assert res.passed, res.reasons
    kept = res.tie_points[res.tie_points["kept"]]
    assert len(kept) >= 20
    # consistent: the kept tie points agree with a smooth (affine) field to well under a pixel
    assert res.rmse_px < 0.3
    assert 0.5 < np.hypot(*res.shift_px) < 5


def test_fit__quality_gate_flags_poorly_spread_tie_points(caplog: pytest.LogCaptureFixture) -> None:
    before, after, _ = make_pair((1, 768, 768), shift_px=(-7.3, 12.6), rotation_deg=0.3, seed=5)
    after = after.where(after.y < after.y[560])  # only a strip of rows holds data
    with caplog.at_level(logging.WARNING, logger="changedet.coregister"):
        res = LocalGrid(**SMALL).fit(before, after).result
    assert not res.passed
    assert any("poorly constrained" in r for r in res.reasons)


def test_local_grid__generator_scene_with_another_sun(tmp_path: Path) -> None:
    """Known answer on a synthetic-generator site whose shadows moved with the sun.

    Default sun (135°, 58°) → (160°, 42°): gradient-magnitude correlation alone was biased by
    ~0.15 px along the shadows' change; the shadow-weighted orientation refinement removes it.
    """
    from changedet.align import align_pair
    from changedet.io import open_raster
    from changedet.synthetic import SceneSettings, generate_site

    site = generate_site(tmp_path / "s", SceneSettings(seed=3, size_px=512, shift_px=(4.3, -2.6)))
    truth = json.loads((site / "truth" / "misregistration.json").read_text())
    pair = align_pair(open_raster(site / "before.tif"), open_raster(site / "after.tif"))
    res = LocalGrid(window_px=128, step_px=64).fit(pair.before, pair.after).result
    assert res.passed, res.reasons
    rows, cols = np.mgrid[64:448:16, 64:448:16]
    ex, ey = res.displacement_at(cols.ravel(), rows.ravel())
    tx, ty = truth_displacement(
        truth, cols.ravel() + pair.cols.start, rows.ravel() + pair.rows.start
    )
    assert float(np.sqrt(np.mean((ex - tx) ** 2 + (ey - ty) ** 2))) <= 0.05


def test_sizes__metres_and_pixels() -> None:
    """Sizes in metres convert with the GSD (clamped); explicit pixel sizes win."""
    from types import SimpleNamespace

    from changedet.coregister import _resolve_sizes

    before, _, _ = make_pair((1, 256, 256), shift_px=(0.0, 0.0), seed=0)
    gsd = abs(before.rio.transform().a)
    cfg = SimpleNamespace(window_m=64 * gsd, step_m=100 * gsd, max_shift_m=40 * gsd)
    cfg.window_px = cfg.step_px = cfg.max_shift_px = None
    s = _resolve_sizes(cfg, before)
    assert (s.window, s.step, s.max_shift) == (64, 100, 40)
    cfg.window_px, cfg.window_m = 96, 1e-6  # explicit pixels win; tiny metres are clamped
    cfg.max_shift_m = 1e-6
    s = _resolve_sizes(cfg, before)
    assert (s.window, s.max_shift) == (96, 32)  # max shift floor: 32 px
    old = CoregisterConfig()  # works with the pixel-only config too
    s = _resolve_sizes(old, before)
    assert s.window == getattr(old, "window_px", None) or s.window > 0


# ---------------------------------------------------------------------------- speed-path pieces


def _reference_windows(data: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """Band-mean windows cut one by one from a NaN-padded copy (the obvious, slow way)."""
    pad = 150  # more than any window lies outside the raster in the test
    padded = np.pad(
        data.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)), constant_values=np.nan
    )
    lum = padded.mean(axis=0)
    return np.stack([lum[r + pad : r + pad + size, c + pad : c + pad + size] for r, c in corners])


@pytest.mark.parametrize("chunks", [None, {"y": 37, "x": 53}])
def test_read_windows__runs_equal_one_by_one_slicing(chunks: dict | None) -> None:
    from changedet.coregister import _read_windows

    rng = np.random.default_rng(3)
    data = rng.uniform(0, 200, (3, 150, 230)).astype(np.float32)
    data[1, 40:45, 60:90] = np.nan
    raster = make_raster(data)
    if chunks is not None:
        raster = raster.chunk(chunks)
    rows = np.repeat([-10, 20, 130], 6)  # runs along rows, partly outside the raster
    cols = np.tile([-20, 5, 30, 90, 160, 215], 3)  # touching, overlapping and gapped windows
    extra = np.array([[-60, 10], [60, -60], [200, 300], [70, 100]])  # fully outside or inside
    corners = np.vstack([np.column_stack([rows, cols]), extra])
    small, large = _read_windows((raster.data, corners, 32), (raster.data, corners - 4, 40))
    for got, size, cor in ((small, 32, corners), (large, 40, corners - 4)):
        want = _reference_windows(data, cor, size)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), rtol=1e-6)


def _textured_windows(shift: tuple[float, float], n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``n`` before windows (66²) and after windows (66² + 2x20 margin) shifted by ``shift``."""
    from scipy import ndimage

    rng = np.random.default_rng(8)
    img = ndimage.gaussian_filter(rng.normal(size=(200, 200 * n)), 1.5).astype(np.float32)
    img = img - img.min() + 1  # positive luminance
    moved = warp_image(img, np.array([[1, 0, shift[0]], [0, 1, shift[1]]], float))
    before = np.stack([img[60:126, 200 * k + 60 : 200 * k + 126] for k in range(n)])
    after = np.stack([moved[40:146, 200 * k + 40 : 200 * k + 146] for k in range(n)])
    return before, after


def test_measure_windows__block_size_and_early_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of any size give the same result; a window stops once its update is small."""
    from changedet import _coreg_phase

    before, after = _textured_windows((2.37, -1.62))
    whole = _coreg_phase.measure_windows(before, after, 20, iterations=3, block=32)
    for block in (1, 4):
        part = _coreg_phase.measure_windows(before, after, 20, iterations=3, block=block)
        np.testing.assert_allclose(part.dx, whole.dx, atol=1e-4)
        np.testing.assert_allclose(part.reliability, whole.reliability, atol=1e-6)
    np.testing.assert_allclose(whole.dx, 2.37, atol=0.03)
    np.testing.assert_allclose(whole.dy, -1.62, atol=0.03)
    # with a huge stop threshold every window stops after its first re-measurement
    monkeypatch.setattr(_coreg_phase, "STOP_PX", 1e9)
    once = _coreg_phase.measure_windows(before, after, 20, iterations=1)
    capped = _coreg_phase.measure_windows(before, after, 20, iterations=3)
    np.testing.assert_array_equal(capped.dx, once.dx)
    assert not np.array_equal(once.dx, whole.dx)  # ... which a real threshold does not do


def test_shadow_helpers__fast_versions_match_references() -> None:
    from scipy import ndimage

    from changedet._coreg_phase import (
        _minimum_filter,
        common_shadow_weight,
        shadow_weight,
        window_quantiles,
    )

    rng = np.random.default_rng(5)
    x = rng.random((3, 23, 31)).astype(np.float32)
    for size in (2, 3, 5):
        np.testing.assert_array_equal(
            _minimum_filter(x, size), ndimage.minimum_filter(x, (1, size, size), mode="nearest")
        )
    lo, med = window_quantiles(x, (0.01, 0.5), stride=1)
    flat = x.reshape(3, -1)
    np.testing.assert_allclose(med[:, 0, 0], np.quantile(flat, 0.5, axis=1, method="nearest"))
    np.testing.assert_allclose(lo[:, 0, 0], np.quantile(flat, 0.01, axis=1, method="nearest"))
    # the half-resolution common weight follows the full-resolution product of both weights
    before, after, _ = make_pair((1, 300, 300), shift_px=(1.3, -0.6), seed=9)
    b = before.values[:, 20:278, 20:278].astype(np.float32)
    a = after.values[:, 20:278, 20:278].astype(np.float32)
    full = shadow_weight(b) * shadow_weight(a)
    half = common_shadow_weight(b, a)
    assert half.shape == full.shape
    assert 0.02 < float((full < 0.01).mean())  # the scene has shadows
    assert float(np.abs(half - full).mean()) < 0.05
    assert float(half[full < 0.01].max()) < 0.5  # shadows stay (nearly) excluded


def test_global_shift__windows_split_over_cores_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import changedet.coregister as coreg_mod

    before, after, _ = make_pair((1, 512, 512), shift_px=(-2.6, 4.1), seed=12)
    monkeypatch.setattr(coreg_mod, "_cores", lambda: 1)
    one = GlobalShift(window_px=128).fit(before, after).result
    monkeypatch.setattr(coreg_mod, "_cores", lambda: 3)
    three = GlobalShift(window_px=128).fit(before, after).result
    cols = ["col", "row", "dx", "dy", "reliability"]
    np.testing.assert_array_equal(
        one.tie_points[cols].to_numpy(), three.tie_points[cols].to_numpy()
    )
    assert one.shift_px == pytest.approx((-2.6, 4.1), abs=0.05)
