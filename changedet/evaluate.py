"""Score a run's detections against ground truth.

Compares an output folder of :func:`changedet.pipeline.run_pair` (``craters.geojson``,
``damage.geojson``, ``coreg.json``) with a truth folder as :mod:`changedet.synthetic` writes it
(``craters.geojson``, ``damage.geojson``, ``misregistration.json``, and the site's
``before.tif`` beside it for the scene area).

Rules, fixed so that numbers can be compared across runs:

* only detections the run claims as new craters count: ``new`` true, or unknown (single-image
  mode); detections with ``new`` false were already in the before image;
* a detected crater matches a true one when its centre lies within ``max(2 m, d/2)`` of the
  true centre (``d``: true diameter); matching is one-to-one and minimises total distance
  (Hungarian algorithm), so a crater found twice counts once as a hit and once as a false
  crater;
* diameter error: median of ``|d_detected - d_true| / d_true`` over matched craters;
* false craters per km²: unmatched detections divided by the scene area;
* buildings: a building is *damaged* when its class is ``destroyed``, ``severe`` or
  ``moderate``. Truth ``possible`` buildings are left out of the building score (neither a
  hit nor a miss); buildings are joined on ``id``;
* co-registration error: RMSE in pixels, over the displacement grid stored in ``coreg.json``,
  of the fitted minus the true displacement.

Examples
--------
>>> from changedet.evaluate import evaluate_run  # doctest: +SKIP
>>> scores = evaluate_run("out/site_01", "sample_tiles/site_01/truth")  # doctest: +SKIP
>>> scores["crater_f1"]  # doctest: +SKIP
0.97
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from scipy.optimize import linear_sum_assignment

from changedet.craters import new_craters
from changedet.errors import ChangedetError, UnreadableFileError

DAMAGED = ("destroyed", "severe", "moderate")
IGNORED = ("possible",)
#: The truth's ``on`` values that a detection's ``on`` spells otherwise.
TRUTH_ON = {"open": "open ground"}

#: Keys always present in the result of :func:`evaluate_run`.
KEYS = (
    "crater_precision",
    "crater_recall",
    "crater_f1",
    "diameter_error_median",
    "building_f1",
    "false_craters_per_km2",
    "coreg_error_px",
)


def _read(path: Path) -> gpd.GeoDataFrame:
    if not path.is_file():
        raise UnreadableFileError(path, "is missing", "Check the folder: it must hold this file.")
    try:
        return gpd.read_file(path)
    except Exception as exc:
        raise UnreadableFileError(path, f"cannot be read ({exc})", None) from None


def _prf(tp: int, n_det: int, n_true: int) -> tuple[float, float, float]:
    precision = tp / n_det if n_det else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def match_craters(
    detected: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, *, min_tolerance_m: float = 2.0
) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(detected row, true row, distance m)`` within tolerance.

    Both frames are projected to a local UTM CRS; ``truth`` needs ``diameter_m``.
    """
    if detected.empty or truth.empty:
        return []
    crs = truth.estimate_utm_crs()
    d = detected.to_crs(crs)
    t = truth.to_crs(crs)
    dx = d.geometry.x.to_numpy()[:, None] - t.geometry.x.to_numpy()[None, :]
    dy = d.geometry.y.to_numpy()[:, None] - t.geometry.y.to_numpy()[None, :]
    dist = np.hypot(dx, dy)
    tol = np.maximum(min_tolerance_m, t["diameter_m"].to_numpy() / 2)[None, :]
    big = 1e9
    cost = np.where(dist <= tol, dist, big)
    rows, cols = linear_sum_assignment(cost)
    return [
        (int(r), int(c), float(dist[r, c]))
        for r, c in zip(rows, cols, strict=True)
        if cost[r, c] < big
    ]


def _scene_area_km2(truth_dir: Path, truth_damage: gpd.GeoDataFrame) -> float:
    before = truth_dir.parent / "before.tif"
    if before.is_file():
        import rasterio

        with rasterio.open(before) as src:
            b = src.bounds
            return abs((b.right - b.left) * (b.top - b.bottom)) / 1e6
    if not truth_damage.empty:  # fall back to the extent of the buildings
        utm = truth_damage.to_crs(truth_damage.estimate_utm_crs())
        minx, miny, maxx, maxy = utm.total_bounds
        return max((maxx - minx) * (maxy - miny) / 1e6, 1e-6)
    return float("nan")


def _class_column(df: gpd.GeoDataFrame, path: Path) -> str:
    for col in ("damage_class", "damage"):
        if col in df.columns:
            return col
    raise ChangedetError(path, "has no 'damage_class' or 'damage' column", None)


def _building_f1(
    detected: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, det_path: Path, truth_path: Path
) -> float:
    tcol, dcol = _class_column(truth, truth_path), _class_column(detected, det_path)
    if "new_construction" in truth.columns:
        truth = truth[~truth["new_construction"].fillna(False).astype(bool)]
    t = truth.set_index(truth["id"].astype(str))[tcol].astype(str)
    d = detected.set_index(detected["id"].astype(str))[dcol].astype(str)
    t = t[~t.isin(IGNORED)]
    common = t.index.intersection(d.index)
    if len(common) == 0 and len(t):
        raise ChangedetError(
            det_path, "shares no building id with the truth", "Run with the site's footprints."
        )
    true_dmg = t.isin(DAMAGED)
    pred_dmg = d.reindex(t.index).fillna("no visible damage").isin(DAMAGED)
    tp = int((true_dmg & pred_dmg).sum())
    return _prf(tp, int(pred_dmg.sum()), int(true_dmg.sum()))[2]


def _coreg_error(coreg_path: Path, truth_path: Path) -> float:
    if not coreg_path.is_file() or not truth_path.is_file():
        return float("nan")
    coreg = json.loads(coreg_path.read_text())
    truth = json.loads(truth_path.read_text())
    grid = coreg.get("displacement_grid")
    if not grid:
        return float("nan")
    cols = np.asarray(grid["cols"], float)
    rows = np.asarray(grid["rows"], float)
    m = np.asarray(truth["matrix"], float)
    true_dx = m[0, 0] * cols + m[0, 1] * rows + m[0, 2] - cols
    true_dy = m[1, 0] * cols + m[1, 1] * rows + m[1, 2] - rows
    err = np.hypot(np.asarray(grid["dx"]) - true_dx, np.asarray(grid["dy"]) - true_dy)
    return float(np.sqrt(np.mean(err**2)))


def evaluate_run(
    detections_dir: str | os.PathLike[str], truth_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Precision, recall, F1 and errors of a run against ground truth.

    Parameters
    ----------
    detections_dir
        Output folder of a run (``craters.geojson``, ``damage.geojson``, ``coreg.json``).
    truth_dir
        Truth folder (``craters.geojson``, ``damage.geojson``, ``misregistration.json``).

    Returns
    -------
    dict
        The :data:`KEYS` plus counts (``n_true_craters``, ``n_detected_craters``,
        ``n_matched_craters``, ``scene_area_km2``) and ``crater_on_agreement``: the share of
        matched craters whose ``on`` names the truth's ``on`` (``building``, ``road``,
        ``open`` as ``open ground``; a run without footprints or roads says less, e.g.
        ``road or open ground``, which does not count). NaN where a part cannot be scored
        (e.g. no ``coreg.json``).
    """
    det_dir, truth_dir = Path(detections_dir), Path(truth_dir)
    for d in (det_dir, truth_dir):
        if not d.is_dir():
            raise ChangedetError(d, "is not a folder", None)
    det_craters = new_craters(_read(det_dir / "craters.geojson"))
    true_craters = _read(truth_dir / "craters.geojson")
    true_damage = _read(truth_dir / "damage.geojson")
    matches = match_craters(det_craters, true_craters)
    tp = len(matches)
    precision, recall, f1 = _prf(tp, len(det_craters), len(true_craters))
    if matches:
        rel = [
            abs(det_craters["diameter_m"].iloc[r] - true_craters["diameter_m"].iloc[c])
            / true_craters["diameter_m"].iloc[c]
            for r, c, _ in matches
        ]
        diam_err = float(np.median(rel))
    else:
        diam_err = float("nan")
    area = _scene_area_km2(truth_dir, true_damage)
    false_per_km2 = (
        (len(det_craters) - tp) / area if area and not math.isnan(area) else float("nan")
    )
    damage_path = det_dir / "damage.geojson"
    building_f1 = (
        _building_f1(_read(damage_path), true_damage, damage_path, truth_dir / "damage.geojson")
        if damage_path.is_file()
        else float("nan")
    )
    return {
        "crater_precision": precision,
        "crater_recall": recall,
        "crater_f1": f1,
        "diameter_error_median": diam_err,
        "building_f1": building_f1,
        "false_craters_per_km2": false_per_km2,
        "coreg_error_px": _coreg_error(det_dir / "coreg.json", truth_dir / "misregistration.json"),
        "n_true_craters": len(true_craters),
        "n_detected_craters": len(det_craters),
        "n_matched_craters": tp,
        "scene_area_km2": area,
        "crater_on_agreement": _on_agreement(det_craters, true_craters, matches),
    }


def _on_agreement(det: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, matches: list[Any]) -> float:
    """Share of matched craters whose ``on`` is the truth's (NaN without matches or labels)."""
    if not matches or "on" not in det.columns or "on" not in truth.columns:
        return float("nan")
    same = [
        str(det["on"].iloc[r]) == TRUTH_ON.get(str(truth["on"].iloc[c]), str(truth["on"].iloc[c]))
        for r, c, _ in matches
    ]
    return float(np.mean(same))


def format_table(scores: dict[str, Any]) -> str:
    """A two-column text table of :func:`evaluate_run`'s result."""
    width = max(len(k) for k in scores)
    lines = []
    for key, value in scores.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)
