"""The pipeline end to end on a generated site: documented outputs, known answers, chunking."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from changedet.cli import main
from changedet.config import Config
from changedet.errors import ChangedetError
from changedet.evaluate import evaluate_run
from changedet.pipeline import RUN_LOG_REASON, run_pair
from changedet.synthetic import SceneSettings, generate_site

OUTPUTS = [
    "change_score.tif",
    "change_mask.tif",
    "craters.geojson",
    "damage.geojson",
    "coreg.json",
    "facilities.csv",
    "facilities.geojson",
    "results.gpkg",
    "figures",
    "report.html",
    "manifest.json",
    "run.log",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = SceneSettings(seed=11, size_px=512, n_craters=5, shift_px=(3.3, -2.2))
    return generate_site(tmp_path_factory.mktemp("site") / "s", settings)


@pytest.fixture(scope="module")
def sun(site: Path) -> tuple[float, float]:
    scene = json.loads((site / "truth" / "scene.json").read_text())
    settings = scene.get("settings", scene)
    az, el = settings["sun_after"]
    return float(az), float(el)


def _run_site(site: Path, sun: tuple[float, float], out: Path) -> None:
    """The whole pipeline on the generated site, with footprints, facilities and the sun."""
    run_pair(
        site / "before.tif",
        site / "after.tif",
        out=out,
        footprints=site / "footprints.geojson",
        facilities=site / "facilities.geojson",
        sun_azimuth_deg=sun[0],
        sun_elevation_deg=sun[1],
    )


@pytest.fixture(scope="module")
def run(site: Path, sun: tuple[float, float], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    _run_site(site, sun, out)
    return out


def test_run_pair__writes_documented_outputs(run: Path, site: Path) -> None:
    assert sorted(p.name for p in run.iterdir()) == sorted(OUTPUTS)
    with rasterio.open(site / "before.tif") as ref, rasterio.open(run / "change_mask.tif") as mask:
        assert mask.crs == ref.crs
        assert mask.dtypes[0] == "uint8" and mask.nodata == 255
        assert set(np.unique(mask.read(1))) <= {0, 1, 255}
        assert mask.overviews(1) or max(mask.shape) <= 512  # a COG has overviews when large
    assert gpd.read_file(run / "craters.geojson").crs.to_epsg() == 4326
    with rasterio.open(site / "before.tif") as ref:
        for layer in ("craters", "damage", "facilities"):
            assert gpd.read_file(run / "results.gpkg", layer=layer).crs == ref.crs
    coreg = json.loads((run / "coreg.json").read_text())
    assert {"shift_px", "rmse_px", "passed", "displacement_grid", "normalization"} <= set(coreg)


def test_run_pair__known_answers(run: Path, site: Path) -> None:
    scores = evaluate_run(run, site / "truth")
    assert scores["coreg_error_px"] < 0.3
    assert scores["crater_recall"] >= 0.6
    assert scores["crater_precision"] >= 0.6
    assert scores["diameter_error_median"] <= 0.15
    assert scores["building_f1"] >= 0.7


def test_run_pair__facility_table_matches_truth(run: Path, site: Path) -> None:
    scene = json.loads((site / "truth" / "scene.json").read_text())
    table = gpd.read_file(run / "facilities.geojson").set_index("id")
    assert table.crs.to_epsg() == 4326
    for truth in scene["facilities"]:
        row = table.loc[truth["id"]]
        assert bool(row["in_scene"]) and bool(row["assessable"])
        # a missed or extra crater moves a count by one at most on this small scene
        for r in (50, 100, 250):
            assert abs(row[f"craters_within_{r}m"] - truth[f"craters_within_{r}m"]) <= 1
        true_damaged = truth["damage"] in ("destroyed", "severe", "moderate")
        assert (row["damage_class"] in ("destroyed", "severe", "moderate")) == true_damaged


def test_run_pair__chunk_size_does_not_change_results(
    site: Path, sun: tuple[float, float], run: Path, tmp_path: Path
) -> None:
    cfg = Config().updated({"io": {"chunk_px": 200}})  # odd chunks: 512 = 200 + 200 + 112
    run_pair(
        site / "before.tif",
        site / "after.tif",
        out=tmp_path,
        footprints=site / "footprints.geojson",
        config=cfg,
        sun_azimuth_deg=sun[0],
        sun_elevation_deg=sun[1],
    )
    with (
        rasterio.open(run / "change_score.tif") as a,
        rasterio.open(tmp_path / "change_score.tif") as b,
    ):
        np.testing.assert_allclose(a.read(1), b.read(1), atol=1e-5)
    for name in ("craters.geojson", "damage.geojson"):
        big, small = gpd.read_file(run / name), gpd.read_file(tmp_path / name)
        assert len(big) == len(small)
        if name == "damage.geojson":
            assert list(big["damage_class"]) == list(small["damage_class"])
        else:
            np.testing.assert_allclose(big["diameter_m"], small["diameter_m"], rtol=1e-4)


def test_main__run_missing_file_is_one_line(
    tmp_path: Path, site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["run", str(site / "before.tif"), str(tmp_path / "nope.tif"), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "nope.tif" in err and "\n" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_main__run_pairs_that_do_not_overlap(
    tmp_path: Path, site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    far = generate_site(tmp_path / "far", SceneSettings(seed=12, size_px=256, n_craters=0))
    code = main(
        [
            "run",
            str(site / "before.tif"),
            str(far / "after.tif"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert code == 2
    assert "overlap" in capsys.readouterr().err


def test_run_pair__results_gpkg_holds_the_same_rows_as_the_files(run: Path) -> None:
    import pyogrio

    assert sorted(name for name, _ in pyogrio.list_layers(run / "results.gpkg")) == [
        "craters",
        "damage",
        "facilities",
    ]
    for layer in ("craters", "damage", "facilities"):
        gpkg = gpd.read_file(run / "results.gpkg", layer=layer)
        geojson = gpd.read_file(run / f"{layer}.geojson")
        assert list(gpkg["id"].astype(str)) == list(geojson["id"].astype(str))


def test_run_pair__one_figure_per_facility_at_150_dpi(run: Path, site: Path) -> None:
    from PIL import Image

    ids = [str(i) for i in gpd.read_file(site / "facilities.geojson")["id"]]
    names = sorted(p.name for p in (run / "figures").iterdir())
    assert names == sorted(["overview.png", *(f"facility_{i}.png" for i in ids)])
    for p in (run / "figures").iterdir():
        with Image.open(p) as img:
            assert img.info["dpi"][0] >= 149.9 and img.width > 900
            assert "Software" not in img.info  # no version stamp: bytes reproducible


def test_run_pair__run_log_and_manifest_entries(run: Path) -> None:
    text = (run / "run.log").read_text()
    from changedet import __version__

    assert text.splitlines()[0].endswith(f"INFO changedet {__version__}: run_pair")
    for stage in ("read", "coregister", "craters", "facilities", "write", "report"):
        assert f"INFO {stage} done in" in text
    manifest = json.loads((run / "manifest.json").read_text())
    assert "report.html" in manifest["outputs"] and "figures/overview.png" in manifest["outputs"]
    assert "run.log" not in manifest["outputs"]
    assert manifest["unchecked_outputs"]["run.log"]["reason"] == RUN_LOG_REASON
    assert manifest["timings_s"]["report"] >= 0
    assert manifest["sun"]["source"] == "given"
    assert manifest["craters_not_searched"] is None
    assert manifest["crater_shading_calibration"] is None  # the elevation was given
    assert "sun of the after image: azimuth" in text
    # small dark blobs on roofs not reported as craters: none in this scene, so no line
    # (tests/test_demo.py has a scene with some)
    assert manifest["crater_roof_fixtures_dropped"] == 0
    assert "inside building footprints not reported" not in text
    assert "small dark blobs on roofs" not in (run / "report.html").read_text()


def test_run_pair__without_sun_angles_estimates_the_azimuth_from_tree_shadows(
    site: Path, sun: tuple[float, float]
) -> None:
    res = run_pair(
        site / "before.tif",
        site / "after.tif",
        footprints=site / "footprints.geojson",
        config=Config().updated({"report": {"after_date": "2024-01-15"}}),
    )
    assert res.sun.source == "tree shadows" and res.sun.elevation_deg is None
    # the analyst's date bounds the unknown elevation by that day's noon sun (36° N: 35°)
    assert res.sun.detail["date"] == "2024-01-15" and res.sun.highest_elevation_deg < 40
    assert abs((res.sun.azimuth_deg - sun[0] + 180) % 360 - 180) <= 10
    # the crater stage used it: shading is measured (it is NaN without an azimuth)
    assert len(res.craters) and np.isfinite(res.craters["shading"]).all()
    # the bowl dipole expected under that day's highest sun, or the scene's isolated craters'
    cal = res.craters.attrs["shading_calibration"]
    cap = math.radians(res.sun.highest_elevation_deg)
    assert cal["assumed_expected_dipole"] == pytest.approx(0.6 * math.cos(cap), abs=1e-3)
    assert cal["assumed_expected_dipole"] <= cal["expected_dipole"] <= 0.6


def test_run_pair__azimuth_from_the_isolated_craters_without_trees(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # no angles, no metadata and no tree-shadow estimate (one-band imagery would have none):
    # the crater stage reads the azimuth from the shading of the scene's isolated craters
    # (sample site_02 has one; its sun stands at 205°)
    site = Path(__file__).resolve().parents[1] / "sample_tiles" / "site_02"
    no_trees = Config().updated({"sun": {"estimate": False}})
    with caplog.at_level(logging.INFO, logger="changedet"):
        res = run_pair(
            site / "before.tif",
            site / "after.tif",
            footprints=site / "footprints.geojson",
            config=no_trees,
        )
    assert res.sun.source == "isolated craters" and res.sun.elevation_deg is None
    assert res.sun.detail["isolated_craters"] >= 1
    assert abs((res.sun.azimuth_deg - 205.0 + 180) % 360 - 180) <= 15
    assert len(res.craters) and np.isfinite(res.craters["shading"]).all()
    messages = [r.getMessage() for r in caplog.records]
    assert any("source: isolated craters" in m for m in messages)
    assert not any("sun azimuth unknown" in m for m in messages)
    # the same run told not to: the azimuth stays unknown, and the shading test is skipped
    off = no_trees.updated({"craters": {"azimuth_from_craters": False}})
    plain = run_pair(site / "before.tif", site / "after.tif", config=off)
    assert plain.sun.azimuth_deg is None and plain.craters["shading"].isna().all()


def test_run_pair__unknown_sun_azimuth_is_warned(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # no angles, no metadata and no estimate: the shading test cannot run, and the analyst
    # must hear that the crater list is weaker for it
    no_estimate = Config().updated(
        {"sun": {"estimate": False}, "craters": {"azimuth_from_craters": False}}
    )
    with caplog.at_level(logging.WARNING, logger="changedet"):
        res = run_pair(site / "before.tif", site / "after.tif", config=no_estimate)
    assert res.sun.azimuth_deg is None and res.craters["shading"].isna().all()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("sun azimuth unknown" in m and "--sun-azimuth" in m for m in warned), warned
    # where no crater is searched (pixels too coarse), the shading test is no concern
    caplog.clear()
    coarse = no_estimate.updated_dotted({"craters.max_diameter_m": 2.0})
    with caplog.at_level(logging.WARNING, logger="changedet"):
        with pytest.warns(UserWarning, match="cannot be resolved"):
            run_pair(site / "before.tif", site / "after.tif", config=coarse)
    assert not any("sun azimuth unknown" in r.getMessage() for r in caplog.records)


def _fail_coregistration(monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet import coregister

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk vanished")

    monkeypatch.setattr(coregister, "coregister", boom)


def test_run_pair__failed_run_leaves_its_log_and_the_folder_free(
    site: Path, sun: tuple[float, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from changedet.manifest import guard_output_folder

    out = tmp_path / "out"
    args = (site / "before.tif", site / "after.tif")
    kwargs = {"out": out, "footprints": site / "footprints.geojson"}
    _fail_coregistration(monkeypatch)
    with pytest.raises(RuntimeError, match="disk vanished"):
        run_pair(*args, **kwargs, sun_azimuth_deg=sun[0], sun_elevation_deg=sun[1])
    assert sorted(p.name for p in out.iterdir()) == ["run.log"]  # no manifest, no .part files
    lines = (out / "run.log").read_text().splitlines()
    assert "INFO read done in" in "\n".join(lines)
    assert lines[-1].endswith("ERROR run failed: RuntimeError: disk vanished")
    # a folder holding only a failed run's log is free for the next run ...
    guard_output_folder(out, inputs={}, options={}, config={}, overwrite=False)
    # ... but not once that run left other files next to it
    (out / "change_score.tif").write_bytes(b"partial")
    with pytest.raises(ChangedetError, match="partial outputs of a failed run"):
        guard_output_folder(out, inputs={}, options={}, config={}, overwrite=False)


def test_run_pair__failed_rerun_keeps_the_finished_runs_log(
    run: Path,
    site: Path,
    sun: tuple[float, float],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(run, out)
    log_before = (out / "run.log").read_bytes()
    _fail_coregistration(monkeypatch)
    with pytest.raises(RuntimeError, match="disk vanished"):
        _run_site(site, sun, out)
    assert (out / "run.log").read_bytes() == log_before


def test_run_pair__scratch_lives_in_the_output_folder_and_goes(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import changedet.pipeline as pipeline
    from changedet import change

    monkeypatch.setattr(pipeline, "SCRATCH_IN_MEMORY_BYTES", 0)  # store even a small scene
    out = tmp_path / "out"
    out.mkdir()
    stale = out / (pipeline.SCRATCH_PREFIX + "killed")  # left by a run killed with -9
    stale.mkdir()
    (stale / "after_corrected.tif").write_bytes(b"half")
    (out / "run.log").write_text("... ERROR run failed: RuntimeError: x\n")
    seen: list[str] = []

    def boom(*args: object, **kwargs: object) -> None:
        seen.extend(sorted(p.name for p in out.iterdir()))
        raise RuntimeError("disk vanished")

    monkeypatch.setattr(change, "change_scores", boom)
    with pytest.raises(RuntimeError, match="disk vanished"):
        run_pair(site / "before.tif", site / "after.tif", out=out)
    # while it ran: the stale folder was gone and the run's own scratch was in the output folder
    assert [n for n in seen if n.startswith(pipeline.SCRATCH_PREFIX)] != []
    assert stale.name not in seen
    # after it: only the failed run's log is left
    assert sorted(p.name for p in out.iterdir()) == ["run.log"]


def test_run_pair__refused_folder_gets_no_log(site: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("someone else's\n")
    with pytest.raises(ChangedetError, match="holds no changedet manifest"):
        run_pair(site / "before.tif", site / "after.tif", out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_run_log__records_python_warnings_and_still_shows_them() -> None:
    import warnings

    from changedet.pipeline import _RunLog

    before = warnings.showwarning
    with pytest.warns(UserWarning, match="odd georeferencing"), _RunLog() as run_log:
        warnings.warn("odd georeferencing", UserWarning, stacklevel=1)
    assert warnings.showwarning is before
    line = [x for x in run_log.lines if " WARNING " in x]
    assert len(line) == 1 and "UserWarning: odd georeferencing (test_pipeline.py:" in line[0]


def test_run_pair__report_html_is_self_contained_and_deterministic(run: Path) -> None:
    page = (run / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page and 'src="http' not in page
    assert str(run) not in page  # nothing about where the run was written
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["created_utc"][:10] not in page  # no date
    for name in ("overview.png", "facility_"):
        assert name in page


def test_run_pair__report_renders_in_headless_chromium(run: Path, site: Path) -> None:
    from tests.test_report import chromium_dom

    dom = chromium_dom(run / "report.html")
    ids = [str(i) for i in gpd.read_file(site / "facilities.geojson")["id"]]
    assert '<table class="facilities">' in dom
    assert all(f'data-facility="{i}"' in dom for i in ids)


def _results(site: Path, sun: tuple[float, float]) -> tuple[object, list[Path]]:
    """run_pair (no files) on 200 px chunks, with the scratch folders it used."""
    import changedet.pipeline as pl

    used: list[Path] = []
    keep = pl._Scratch.keep

    def spy(self: pl._Scratch, raster, name):  # type: ignore[no-untyped-def]
        out = keep(self, raster, name)
        if self.dir is not None:
            used.append(self.dir)
        return out

    pl._Scratch.keep = spy  # type: ignore[method-assign]
    try:
        res = run_pair(
            site / "before.tif",
            site / "after.tif",
            footprints=site / "footprints.geojson",
            facilities=site / "facilities.geojson",
            config=Config().updated({"io": {"chunk_px": 200}}),
            sun_azimuth_deg=sun[0],
            sun_elevation_deg=sun[1],
        )
    finally:
        pl._Scratch.keep = keep  # type: ignore[method-assign]
    return res, used


def test_run_pair__stored_rasters_give_the_numbers_of_the_lazy_chain(
    site: Path, sun: tuple[float, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The after image and score map computed once (on disk, or in memory) and read by every
    stage give exactly what each stage got by recomputing the whole lazy chain itself."""
    from geopandas.testing import assert_geodataframe_equal

    import changedet.pipeline as pl

    monkeypatch.setattr(pl, "SCRATCH_IN_MEMORY_BYTES", 0)
    on_disk, used = _results(site, sun)
    assert used and not any(p.exists() for p in used)  # written, then removed
    monkeypatch.setattr(pl, "SCRATCH_IN_MEMORY_BYTES", 2**40)
    in_memory, used = _results(site, sun)
    assert not used
    monkeypatch.setattr(pl._Scratch, "keep", lambda self, raster, name: raster)
    lazy, _ = _results(site, sun)
    for res in (on_disk, in_memory):
        assert res.threshold == lazy.threshold
        assert len(res.craters) >= 3 and len(res.damage) and res.facilities is not None
        assert_geodataframe_equal(res.craters, lazy.craters)
        assert_geodataframe_equal(res.damage, lazy.damage)
        assert_geodataframe_equal(res.facilities, lazy.facilities)
        # the returned rasters are lazy again (the scratch folder is gone) and still right
        np.testing.assert_array_equal(res.scores["score"].values, lazy.scores["score"].values)
        np.testing.assert_array_equal(res.after.values, lazy.after.values)


def test_run_pair__scratch_folder_removed_when_a_stage_fails(
    site: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The scratch folder is made under ``scratch_dir`` and removed, also when a stage fails."""
    import changedet.craters
    import changedet.pipeline as pl

    monkeypatch.setattr(pl, "SCRATCH_IN_MEMORY_BYTES", 0)
    dirs: list[Path] = []
    close = pl._Scratch.close

    def spy_close(self: pl._Scratch) -> None:
        dirs.append(self.dir)  # type: ignore[arg-type]
        close(self)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("crater stage failed")

    monkeypatch.setattr(pl._Scratch, "close", spy_close)
    monkeypatch.setattr(changedet.craters, "detect_craters", boom)
    with pytest.raises(RuntimeError, match="crater stage failed"):
        run_pair(
            site / "before.tif",
            site / "after.tif",
            config=Config().updated({"io": {"chunk_px": 200}}),
            scratch_dir=tmp_path / "scratch",
        )
    assert dirs and dirs[0] is not None and not dirs[0].exists()
    assert dirs[0].parent == tmp_path / "scratch" and not any((tmp_path / "scratch").iterdir())


def test_scratch_keep__per_band_chunks_still_read_window_by_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept raster chunked one band per chunk (the quantile-normalised after image) is
    rechunked back to those chunks, and window_reader still reads it from the scratch file:
    the change and damage maps then read haloed windows (bounded memory) instead of overlap."""
    import xarray as xr

    import changedet.pipeline as pl
    from changedet.io import open_raster, window_reader, write_cog
    from changedet.testing import make_raster

    monkeypatch.setattr(pl, "SCRATCH_IN_MEMORY_BYTES", 0)
    rng = np.random.default_rng(0)
    write_cog(make_raster(rng.uniform(0, 255, (3, 96, 80)).astype("float32")), tmp_path / "a.tif")
    src = open_raster(tmp_path / "a.tif", chunks=32)
    per_band = xr.concat([src.isel(band=[i]) * 2 for i in range(3)], dim="band")
    assert per_band.chunks[0] == (1, 1, 1)
    with pl._Scratch(tmp_path) as scratch:
        kept = scratch.keep(per_band, "x")
        assert kept.chunks == per_band.chunks
        read = window_reader(kept.data)
        assert read is not None
        np.testing.assert_array_equal(read(10, 50, 5, 70), per_band.values[:, 10:50, 5:70])


def _reversed_bands(src_path: Path, dst_path: Path) -> Path:
    """The same image stored blue, green, red (as a BGR(N) delivery is), bands labelled."""
    with rasterio.open(src_path) as src:
        profile = dict(src.profile)
        data = src.read()[::-1]
    profile.update(photometric="MINISBLACK")
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = ("blue", "green", "red")
        dst.colorinterp = [rasterio.enums.ColorInterp.gray] * 3
    return dst_path


def test_run_pair__finds_the_red_green_and_blue_bands_by_their_labels(
    site: Path, sun: tuple[float, float], tmp_path: Path
) -> None:
    from changedet.io import rgb_band_indices

    before = _reversed_bands(site / "before.tif", tmp_path / "before.tif")
    after = _reversed_bands(site / "after.tif", tmp_path / "after.tif")
    assert rgb_band_indices(after) == (2, 1, 0)
    kw = {"footprints": site / "footprints.geojson", "sun_azimuth_deg": sun[0]}
    rgb = run_pair(site / "before.tif", site / "after.tif", **kw)
    bgr = run_pair(before, after, **kw)
    assert len(rgb.craters) > 0
    columns = ["x", "y", "diameter_m", "score", "greenness", "blueness"]
    # the same detections; the band mean sums in another order (float32 rounding)
    assert list(bgr.craters["new"]) == list(rgb.craters["new"])
    np.testing.assert_allclose(bgr.craters[columns], rgb.craters[columns], rtol=1e-4, atol=1e-4)
    # read as red, green, blue in file order, the colour tests measure other things
    wrong = run_pair(
        before, after, config=Config().updated({"craters": {"rgb_bands": [0, 1, 2]}}), **kw
    )
    shades = {round(v, 3) for v in rgb.craters["blueness"]}
    assert shades != {round(v, 3) for v in wrong.craters["blueness"]}


def test_run_pair__craters_not_searched_is_said_not_counted_as_none(
    site: Path, sun: tuple[float, float], tmp_path: Path
) -> None:
    # pixels too coarse for the crater sizes asked (5 px floor > 2 m / 0.5 m): nothing is
    # searched, and the summary, report, manifest and facility table say so instead of "0"
    import pandas as pd

    cfg = Config().updated_dotted({"craters.max_diameter_m": 2.0})
    with pytest.warns(UserWarning, match="cannot be resolved"):
        result = run_pair(
            site / "before.tif",
            site / "after.tif",
            out=tmp_path / "o",
            footprints=site / "footprints.geojson",
            facilities=site / "facilities.geojson",
            sun_azimuth_deg=sun[0],
            sun_elevation_deg=sun[1],
            config=cfg,
        )
    assert len(result.craters) == 0
    assert "cannot be resolved" in (result.craters_not_searched or "")
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["craters_not_searched"] == result.craters_not_searched
    html = (tmp_path / "o" / "report.html").read_text()
    assert "not searched: craters of 1.5-2 m" in html and "&lt;NA&gt;" not in html
    assert "does not mean no crater is there" in html
    table = pd.read_csv(tmp_path / "o" / "facilities.csv")
    rings = [c for c in table.columns if c.startswith("craters_within_")]
    assert rings and table[rings].isna().all().all()
    assert result.facilities is not None and result.facilities[rings].isna().all().all()
