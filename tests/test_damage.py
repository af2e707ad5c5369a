"""Damage per footprint and per region: known answers, chunked equals in-memory, bad input."""

from __future__ import annotations

import dask.array as da
import geopandas as gpd
import numpy as np
import pytest
import rioxarray  # noqa: F401 - registers .rio
import xarray as xr
from shapely.geometry import box

from changedet.damage import DamageParams, assess_damage, damaged_regions
from changedet.errors import MissingCRSError

GSD = 0.5


def _score(shape: tuple[int, int] = (200, 240)) -> xr.DataArray:
    ny, nx = shape
    x0, y_top = 500_000.0, 4_000_000.0
    coords = {"y": y_top - GSD * (np.arange(ny) + 0.5), "x": x0 + GSD * (np.arange(nx) + 0.5)}
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 0.2, shape).astype("float32")
    return xr.DataArray(data, dims=("y", "x"), coords=coords).rio.write_crs("EPSG:32637")


def _fp(score: xr.DataArray, rows: slice, cols: slice, fid: str) -> tuple[str, object]:
    x = score.x.values
    y = score.y.values
    return fid, box(
        x[cols.start] - GSD / 2,
        y[rows.stop - 1] - GSD / 2,
        x[cols.stop - 1] + GSD / 2,
        y[rows.start] + GSD / 2,
    )


def _scene() -> tuple[xr.DataArray, gpd.GeoDataFrame, dict[str, float]]:
    """Five buildings with known damaged shares (of their shrunk interiors)."""
    score = _score()
    specs = {  # id: (rows, cols, damaged share of the interior)
        "destroyed": (slice(10, 50), slice(10, 50), 0.9),
        "severe": (slice(10, 50), slice(70, 110), 0.45),
        "moderate": (slice(70, 110), slice(10, 50), 0.25),
        "possible": (slice(70, 110), slice(70, 110), 0.10),
        "intact": (slice(130, 170), slice(130, 170), 0.0),
    }
    rows = []
    for fid, (r, c, share) in specs.items():
        inner_r = slice(r.start + 1, r.stop - 1)  # the 0.5 m edge buffer removes one pixel
        inner_c = slice(c.start + 1, c.stop - 1)
        n_rows = round((inner_r.stop - inner_r.start) * share)
        score[inner_r.start : inner_r.start + n_rows, inner_c] = 0.8
        rows.append(_fp(score, r, c, fid))
    fp = gpd.GeoDataFrame(
        {"id": [r[0] for r in rows]}, geometry=[r[1] for r in rows], crs="EPSG:32637"
    )
    return score, fp, {k: v[2] for k, v in specs.items()}


def test_assess_damage__classes_follow_damaged_share() -> None:
    score, fp, truth = _scene()
    out = assess_damage(score, fp, threshold=0.5)
    assert list(out["id"]) == list(truth)
    assert list(out["damage_class"]) == [
        "destroyed",
        "severe",
        "moderate",
        "possible",
        "no visible damage",
    ]
    for share, expected in zip(out["damaged_share"], truth.values(), strict=True):
        assert share == pytest.approx(expected, abs=0.03)
    assert (out["n_pixels"] > 1000).all()


@pytest.mark.parametrize("chunks", [(37, 41), (200, 23), (61, 240)])
def test_assess_damage__dask_equals_numpy(chunks: tuple[int, int]) -> None:
    score, fp, _ = _scene()
    eager = assess_damage(score, fp, threshold=0.5)
    lazy_score = score.copy(data=da.from_array(score.values, chunks=chunks))
    lazy = assess_damage(lazy_score, fp, threshold=0.5)
    for col in ("damage_class", "damaged_share", "mean_score", "assessable_share", "n_pixels"):
        assert list(lazy[col]) == list(eager[col])


def test_assess_damage__footprints_in_wgs84_are_reprojected() -> None:
    score, fp, _ = _scene()
    out = assess_damage(score, fp.to_crs("EPSG:4326"), threshold=0.5)
    assert out.crs == score.rio.crs
    assert out["damage_class"].iloc[0] == "destroyed"


def test_assess_damage__not_assessable_when_mostly_nodata() -> None:
    score, fp, _ = _scene()
    score[:60, :60] = np.nan
    out = assess_damage(score, fp, threshold=0.5)
    assert out.set_index("id").loc["destroyed", "damage_class"] == "not assessable"
    assert out.set_index("id").loc["severe", "damage_class"] == "severe"


def test_assess_damage__mask_marks_not_assessable() -> None:
    score, fp, _ = _scene()
    mask = xr.zeros_like(score, dtype=bool)
    mask[130:170, 130:170] = True
    out = assess_damage(score, fp, threshold=0.5, not_assessable=mask)
    assert out.set_index("id").loc["intact", "damage_class"] == "not assessable"


def test_assess_damage__footprints_without_crs() -> None:
    score, fp, _ = _scene()
    with pytest.raises(MissingCRSError, match="footprints: no CRS"):
        assess_damage(score, fp.set_crs(None, allow_override=True), threshold=0.5)


def test_damage_params__bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="possible <= moderate"):
        DamageParams(moderate=0.5, severe=0.3)


def test_damaged_regions__finds_damaged_blocks_only() -> None:
    score, _, _ = _scene()
    regions = damaged_regions(score, threshold=0.5)
    # Damaged strips of 17, 8.5, 4.5 and 2 m by 19 m (shares 0.9 .. 0.1 of 19 m interiors),
    # pooled on 2 m cells: each region's area is right to within one row of cells (38 m²).
    expected = [0.9 * 19 * 19, 0.45 * 19 * 19, 0.25 * 19 * 19, 0.10 * 19 * 19]
    got = sorted(regions["area_m2"], reverse=True)
    assert len(got) == 4
    for g, e in zip(got, expected, strict=True):
        assert abs(g - e) <= 38
    lazy = damaged_regions(
        score.copy(data=da.from_array(score.values, chunks=(37, 41))), threshold=0.5
    )
    assert lazy["area_m2"].tolist() == regions["area_m2"].tolist()


def test_damaged_regions__empty_scene() -> None:
    out = damaged_regions(_score(), threshold=0.5)
    assert out.empty and out.crs == "EPSG:32637"
