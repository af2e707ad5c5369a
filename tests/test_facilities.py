"""Facilities: reading and validation errors, and scoring against known answers."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import Point, box

from changedet.errors import FacilityError
from changedet.facilities import read_facilities, score_facilities
from tests.conftest import SAMPLE_TILES

CRS = "EPSG:32637"
EXTENT = box(-1000, -1000, 1000, 1000)


def _craters(
    xy_d: list[tuple[float, float, float]], new: list[object] | None = None
) -> gpd.GeoDataFrame:
    data = {"id": list(range(1, len(xy_d) + 1)), "diameter_m": [d for *_, d in xy_d]}
    if new is not None:
        data["new"] = new
    return gpd.GeoDataFrame(data, geometry=[Point(x, y) for x, y, _ in xy_d], crs=CRS)


def test_read_facilities__csv_lon_lat(tmp_path: Path) -> None:
    p = tmp_path / "f.csv"
    p.write_text("name,type,lon,lat\nSt Mary,hospital,37.9,36.1\nSchool 4,school,37.91,36.11\n")
    fac = read_facilities(p)
    assert list(fac["id"]) == ["F1", "F2"]
    assert fac.crs.to_epsg() == 4326 and fac.geometry.x.iloc[0] == pytest.approx(37.9)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name,type,x,y\nA,school,1,2\n", r"f\.csv: missing column\(s\) lon, lat"),
        ("name,lon,lat\n", r"f\.csv: holds no facility"),
        ("name,lon,lat\nA,36.1,137.9\n", r"row\(s\) 1 have coordinates outside"),
        ("id,name,lon,lat\n7,A,37.9,36.1\n7,B,37.8,36.1\n", r"duplicate facility id\(s\) 7"),
    ],
)
def test_read_facilities__bad_csv(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "f.csv"
    p.write_text(text)
    with pytest.raises(FacilityError, match=match):
        read_facilities(p)


def test_read_facilities__geojson_without_geometry(tmp_path: Path) -> None:
    p = tmp_path / "f.geojson"
    p.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "geometry": None, "properties": {"name": "A"}}],
            }
        )
    )
    with pytest.raises(FacilityError, match=r"row\(s\) 1 have no geometry"):
        read_facilities(p)


def test_score_facilities__rings_nearest_largest() -> None:
    fac = gpd.GeoDataFrame(
        {"id": ["P", "Q"]}, geometry=[Point(0, 0), box(400, 0, 420, 20)], crs=CRS
    )
    craters = _craters([(30, 0, 4), (0, 90, 10), (0, -240, 20), (410, 10, 8), (700, 0, 30)])
    out = score_facilities(fac, craters, scene_extent=EXTENT).set_index("id")
    assert out.loc[
        "P", ["craters_within_50m", "craters_within_100m", "craters_within_250m"]
    ].tolist() == [1, 2, 3]
    assert out.loc["P", "nearest_crater_m"] == pytest.approx(30)
    assert out.loc["P", "largest_crater_m"] == pytest.approx(20)
    # a crater on the footprint is at distance 0; the 30 m one lies 280 m from its edge
    assert out.loc["Q", "nearest_crater_m"] == 0
    assert out.loc["Q", "craters_within_250m"] == 1


def test_score_facilities__only_new_craters_count() -> None:
    fac = gpd.GeoDataFrame({"id": ["P"]}, geometry=[Point(0, 0)], crs=CRS)
    craters = _craters([(10, 0, 4), (20, 0, 4), (30, 0, 4)], new=[False, True, None])
    row = score_facilities(fac, craters, scene_extent=EXTENT).iloc[0]
    assert row["craters_within_50m"] == 2 and row["nearest_crater_m"] == pytest.approx(20)


def test_score_facilities__outside_scene_is_flagged_all_outside_is_an_error() -> None:
    fac = gpd.GeoDataFrame({"id": ["in", "out"]}, geometry=[Point(0, 0), Point(5000, 0)], crs=CRS)
    out = score_facilities(fac, _craters([(10, 0, 4)]), scene_extent=EXTENT).set_index("id")
    assert bool(out.loc["in", "in_scene"]) and not bool(out.loc["out", "in_scene"])
    assert out.loc["out", "damage_class"] == "outside scene" and not out.loc["out", "assessable"]
    with pytest.raises(FacilityError, match="no facility lies inside the scene"):
        score_facilities(fac.iloc[[1]], _craters([(10, 0, 4)]), scene_extent=EXTENT)


def test_score_facilities__matches_generator_truth_on_true_craters() -> None:
    """Scored with the true craters, the table reproduces the generator's own facility truth."""
    site = SAMPLE_TILES / "site_01"
    scene = json.loads((site / "truth" / "scene.json").read_text())
    fac = read_facilities(site / "facilities.geojson")
    craters = gpd.read_file(site / "truth" / "craters.geojson")
    craters = craters.to_crs(craters.estimate_utm_crs())
    out = score_facilities(
        fac, craters, scene_extent=box(*craters.total_bounds).buffer(2000)
    ).set_index("id")
    for truth in scene["facilities"]:
        row = out.loc[truth["id"]]
        for r in (50, 100, 250):
            assert row[f"craters_within_{r}m"] == truth[f"craters_within_{r}m"], (truth["id"], r)
        assert row["nearest_crater_m"] == pytest.approx(truth["nearest_crater_m"], abs=0.5)
    assert np.isfinite(out["largest_crater_m"]).any()


def test_score_facilities__windowed_damage_equals_whole_scene_assessment() -> None:
    """Polygon facilities judged in windows round them get the numbers of one assessment over
    the whole scene (overlapping facilities, one across chunk seams, one outside the scene)."""
    from changedet.change import change_scores, not_assessable, threshold_score
    from changedet.damage import DamageParams, assess_damage
    from changedet.io import open_raster

    site = SAMPLE_TILES / "site_01"
    before = open_raster(site / "before.tif", chunks=200)  # 768 = 200 + 200 + 200 + 168
    after = open_raster(site / "after.tif", chunks=200)
    score = change_scores(before, after)["score"]
    thr = threshold_score(score)
    na = not_assessable(before, after)
    fac = read_facilities(site / "facilities.geojson").to_crs(before.rio.crs)
    x0, y0, x1, y1 = before.rio.bounds()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    extra = gpd.GeoDataFrame(
        {"id": ["seams", "overlap", "outside"]},
        geometry=[
            box(cx - 60, cy - 60, cx + 60, cy + 60),  # 240 px across chunk seams
            box(cx - 20, cy - 20, cx + 100, cy + 30),  # overlaps "seams": shares its pixels
            box(x1 + 500, y1 + 500, x1 + 520, y1 + 520),
        ],
        crs=before.rio.crs,
    )
    fac = gpd.GeoDataFrame(
        gpd.pd.concat([fac[["id", "geometry"]], extra], ignore_index=True), crs=before.rio.crs
    )
    params = DamageParams()
    whole = assess_damage(
        score, fac, threshold=thr, not_assessable=na, params=params, before=before, after=after
    )
    out = score_facilities(
        fac,
        _craters([(cx, cy, 5.0)]).set_crs(before.rio.crs, allow_override=True),
        scene_extent=box(x0, y0, x1, y1),
        score=score,
        threshold=thr,
        not_assessable=na,
        damage_params=params,
        before=before,
        after=after,
    )
    inside = out["in_scene"].to_numpy()
    assert list(out["id"][~inside]) == ["outside"]
    np.testing.assert_array_equal(out["damaged_share"], whole["damaged_share"])
    assert list(out["damage_class"][inside]) == list(whole["damage_class"][inside])
    assert (whole["damaged_share"][inside] > 0).any()  # some damage to agree on


def test_score_facilities__point_on_unassessable_pixels_is_flagged() -> None:
    import xarray as xr

    xs, ys = 0.25 + 0.5 * np.arange(400) - 100, 99.75 - 0.5 * np.arange(400)
    na = xr.DataArray(np.zeros((400, 400), bool), dims=("y", "x"), coords={"y": ys, "x": xs})
    na[:, :100] = True  # the western quarter is nodata
    fac = gpd.GeoDataFrame(
        {"id": ["west", "east", "edge"]},
        geometry=[Point(-80, 0), Point(50, 0), Point(-50.3, 0)],  # -50.3: nearest column 99
        crs=CRS,
    )
    out = score_facilities(
        fac, _craters([(0, 0, 4)]), scene_extent=EXTENT, not_assessable=na
    ).set_index("id")
    assert out["assessable"].to_dict() == {"west": False, "east": True, "edge": False}


def test_score_facilities__windows_computed_in_one_pass() -> None:
    """The facilities' windows are computed together: a chunk of the not-assessable mask that
    several windows need (two facilities in one chunk, one across a seam) is computed once
    (the mask reduces over bands, so Dask computes its whole chunks), and the rows still equal
    one assessment over the whole scene."""
    from changedet.change import not_assessable
    from changedet.damage import DamageParams, assess_damage
    from changedet.testing import make_raster

    rng = np.random.default_rng(5)
    shape, chunks = (240, 260), {"y": 100, "x": 110}
    before = make_raster(rng.uniform(60, 200, (3, *shape)).astype("float32"))
    after_data = before.values.copy()
    after_data[:, 60:120, 40:150] = rng.uniform(20, 240, (3, 60, 110))  # rubble
    after_data[:, 5:8, 5:9] = np.nan  # some unassessable pixels
    after = before.copy(data=after_data).chunk({"band": -1, **chunks})
    before = before.chunk({"band": -1, **chunks})
    score = before.isel(band=0, drop=True).copy(data=rng.uniform(0, 1, shape).astype("float32"))
    computed: dict[tuple[int, ...], int] = {}

    def count(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info:
            loc = tuple(block_info[0]["chunk-location"])
            computed[loc] = computed.get(loc, 0) + 1
        return block

    counted = before.copy(data=before.data.map_blocks(count, dtype=before.dtype))
    na = not_assessable(counted, after)
    x, y = score.x.values, score.y.values

    def fac_box(r: int, c: int, size: int = 12) -> object:
        return box(x[c], y[r + size], x[c + size], y[r])

    fac = gpd.GeoDataFrame(
        {"id": ["a", "b", "seam", "rubble", "far"]},
        geometry=[
            fac_box(10, 10),  # a and b: one chunk, windows apart
            fac_box(70, 12),
            fac_box(94, 100),  # across the seams of four chunks
            fac_box(80, 60),
            fac_box(200, 220),
        ],
        crs=CRS,
    )
    params = DamageParams()
    whole = assess_damage(
        score,
        fac,
        threshold=0.5,
        not_assessable=na.compute(),
        params=params,
        before=before.compute(),
        after=after.compute(),
        value_range=255.0,
    )
    computed.clear()
    out = score_facilities(
        fac,
        _craters([(x[0], y[0], 5.0)]),
        scene_extent=box(*score.rio.bounds()),
        score=score.chunk(chunks),
        threshold=0.5,
        not_assessable=na,
        damage_params=params,
        before=before,
        after=after,
        value_range=255.0,
    )
    assert computed and max(computed.values()) == 1, computed
    np.testing.assert_array_equal(out["damaged_share"], whole["damaged_share"])
    assert list(out["damage_class"]) == list(whole["damage_class"])
    assert (whole["damaged_share"] > 0).any()
