"""Evaluation against ground truth: matching rules, F1, diameter error, coreg error, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import Point, box

from changedet.cli import main
from changedet.errors import UnreadableFileError
from changedet.evaluate import KEYS, evaluate_run, match_craters

CRS = "EPSG:32637"


def _points(xy_d: list[tuple[float, float, float]]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"diameter_m": [d for _, _, d in xy_d]},
        geometry=[Point(500_000 + x, 4_000_000 + y) for x, y, _ in xy_d],
        crs=CRS,
    ).to_crs("EPSG:4326")


def _buildings(classes: dict[str, str], column: str) -> gpd.GeoDataFrame:
    geoms = [
        box(500_000 + 20 * i, 4_000_000, 500_010 + 20 * i, 4_000_010) for i in range(len(classes))
    ]
    return gpd.GeoDataFrame(
        {"id": list(classes), column: list(classes.values())}, geometry=geoms, crs=CRS
    ).to_crs("EPSG:4326")


def _write(tmp: Path) -> tuple[Path, Path]:
    truth, det = tmp / "truth", tmp / "out"
    truth.mkdir()
    det.mkdir()
    _points([(0, 0, 10), (100, 0, 4), (200, 0, 20), (300, 0, 2)]).to_file(truth / "craters.geojson")
    # hit within d/2 (4.9 m of a 10 m crater), hit within 2 m of a 2 m crater, a duplicate of
    # the first, a miss 3 m from the 4 m crater (tolerance 2 m), and one far away.
    _points([(4.9, 0, 11), (300, 1.9, 2.2), (0, 1, 9), (103, 0, 4), (1000, 1000, 5)]).to_file(
        det / "craters.geojson"
    )
    _buildings(
        {"a": "destroyed", "b": "none", "c": "severe", "d": "possible", "e": "moderate"}, "damage"
    ).to_file(truth / "damage.geojson")
    _buildings(
        {
            "a": "destroyed",
            "b": "moderate",
            "c": "no visible damage",
            "d": "destroyed",
            "e": "severe",
        },
        "damage_class",
    ).to_file(det / "damage.geojson")
    (truth / "misregistration.json").write_text(
        json.dumps({"matrix": [[1, 0, 2.0], [0, 1, -1.0]], "shift_px": [2.0, -1.0]})
    )
    grid = {"cols": [0, 100, 0, 100], "rows": [0, 0, 100, 100], "dx": [2.03] * 4, "dy": [-1.04] * 4}
    (det / "coreg.json").write_text(json.dumps({"displacement_grid": grid}))
    return det, truth


def test_evaluate_run__known_answer(tmp_path: Path) -> None:
    det, truth = _write(tmp_path)
    s = evaluate_run(det, truth)
    assert set(KEYS) <= set(s)
    assert s["n_matched_craters"] == 2
    assert s["crater_precision"] == pytest.approx(2 / 5)
    assert s["crater_recall"] == pytest.approx(2 / 4)
    assert s["crater_f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert s["diameter_error_median"] == pytest.approx(0.1)  # 11 vs 10 and 2.2 vs 2
    # buildings (d, truth 'possible', ignored): a TP, b FP, c FN, e TP -> P=2/3, R=2/3
    assert s["building_f1"] == pytest.approx(2 / 3)
    assert s["coreg_error_px"] == pytest.approx(np.hypot(0.03, 0.04))
    # area from the damage footprints' extent (no before.tif beside truth/)
    assert s["false_craters_per_km2"] == pytest.approx(3 / s["scene_area_km2"])


def test_evaluate_run__on_agreement_counts_only_exact_labels(tmp_path: Path) -> None:
    det, truth = _write(tmp_path)
    assert np.isnan(evaluate_run(det, truth)["crater_on_agreement"])  # no labels: not scored
    t = gpd.read_file(truth / "craters.geojson")
    t["on"] = ["open", "road", "building", "road"]
    t.to_file(truth / "craters.geojson")
    d = gpd.read_file(det / "craters.geojson")
    # matched: det 0 or its duplicate det 2 -> truth 0 (open), det 1 -> truth 3 (road)
    for (at_0, at_3), want in (
        (("open ground", "road"), 1.0),
        (("open ground", "road or open ground"), 0.5),  # true, but says less than the truth
        (("building", "unknown"), 0.0),
    ):
        d["on"] = [at_0, at_3, at_0, "open ground", "open ground"]
        d.to_file(det / "craters.geojson")
        assert evaluate_run(det, truth)["crater_on_agreement"] == pytest.approx(want)


def test_match_craters__one_to_one(tmp_path: Path) -> None:
    truth = _points([(0, 0, 10)])
    det = _points([(1, 0, 10), (0.5, 0, 10)])
    m = match_craters(det, truth)
    assert len(m) == 1 and m[0][0] == 1  # the nearer detection wins


def test_evaluate_run__missing_file_names_it(tmp_path: Path) -> None:
    det, truth = _write(tmp_path)
    (det / "craters.geojson").unlink()
    with pytest.raises(UnreadableFileError, match=r"craters.geojson: is missing"):
        evaluate_run(det, truth)


def test_main__evaluate_json_has_required_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    det, truth = _write(tmp_path)
    assert main(["evaluate", str(det), str(truth), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(KEYS) <= set(data)
    assert main(["evaluate", str(det), str(truth)]) == 0
    assert "crater_f1" in capsys.readouterr().out


def test_evaluate_run__detections_not_new_do_not_count(tmp_path: Path) -> None:
    det, truth = _write(tmp_path)
    craters = gpd.read_file(det / "craters.geojson")
    craters["new"] = [True, True, False, None, False]  # the duplicate and the far one: not new
    craters.to_file(det / "craters.geojson")
    s = evaluate_run(det, truth)
    assert s["n_detected_craters"] == 3
    assert s["crater_precision"] == pytest.approx(2 / 3)
