"""The after image's sun position: read from metadata, estimated from tree shadows, or unknown."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray
from rasterio.transform import Affine, from_origin

from changedet.sun import (
    SunParams,
    acquisition_date,
    estimate_sun_azimuth,
    highest_sun_elevation,
    parse_date,
    resolve_sun,
    sun_elevation_at_azimuth,
    sun_from_metadata,
)
from changedet.synthetic import SceneSettings, generate_site
from changedet.testing import make_raster


def _grid(gsd: float) -> Affine:
    return Affine(gsd, 0.0, 500000.0, 0.0, -gsd, 4000000.0)


def _angle_error(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.fixture(scope="module", params=[(60.0, 30.0), (250.0, 55.0)], ids=["az60", "az250"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = SceneSettings(seed=31, size_px=512, sun_after=request.param)
    return generate_site(tmp_path_factory.mktemp("sun") / "s", settings, workers=1)


def _after(site: Path):
    return rioxarray.open_rasterio(site / "after.tif", chunks=256)


def test_estimate_sun_azimuth__tree_shadows_give_the_true_azimuth(site: Path) -> None:
    true_az = json.loads((site / "truth" / "scene.json").read_text())["settings"]["sun_after"][0]
    az, detail = estimate_sun_azimuth(_after(site))
    assert az is not None, detail
    assert _angle_error(az, true_az) <= 10.0, (az, true_az)
    assert detail["shadow_contrast"] >= 0.3


def test_estimate_sun_azimuth__turns_with_the_image(site: Path) -> None:
    """The same scene turned a quarter anticlockwise: north becomes west, the sun 90° less."""
    after = _after(site).load()
    az, _ = estimate_sun_azimuth(after)
    turned = after.copy(data=np.rot90(after.values, k=1, axes=(1, 2)).copy())
    az_turned, detail = estimate_sun_azimuth(turned)
    assert az is not None and az_turned is not None, detail
    assert _angle_error(az_turned, az - 90.0) <= 5.0, (az, az_turned)


def test_estimate_sun_azimuth__green_blobs_without_shadows_are_no_evidence() -> None:
    rng = np.random.default_rng(0)
    img = 100 + 5 * rng.standard_normal((3, 300, 300))
    yy, xx = np.mgrid[0:300, 0:300]
    for cy, cx in rng.integers(20, 280, size=(40, 2)):
        crown = np.hypot(yy - cy, xx - cx) < 5
        img[1][crown] += 40  # green crowns on even ground, nothing dark beside them
        img[0][crown] -= 20
    az, detail = estimate_sun_azimuth(make_raster(img, transform=_grid(0.5)))
    assert az is None
    assert "unclear" in detail["reason"]


def test_estimate_sun_azimuth__needs_colour_and_resolved_trees() -> None:
    grey = make_raster(np.full((1, 100, 100), 100.0), transform=_grid(0.5))
    assert estimate_sun_azimuth(grey) == (
        None,
        {"method": "tree shadows", "reason": "needs red, green and blue bands"},
    )
    coarse = make_raster(np.full((3, 100, 100), 100.0), transform=_grid(30.0))
    az, detail = estimate_sun_azimuth(coarse)
    assert az is None and "do not resolve" in detail["reason"]


def _tif(path: Path, tags: dict[str, str], ns: str | None = None) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000, 4000000, 0.5, 0.5),
    ) as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))
        if ns:
            dst.update_tags(ns=ns, **tags)
        else:
            dst.update_tags(**tags)
    return path


def test_sun_from_metadata__reads_common_tags_and_maxar_imd(tmp_path: Path) -> None:
    plain = _tif(tmp_path / "a.tif", {"SUN_AZIMUTH": "160.5", "SUN_ELEVATION": "42.0 deg"})
    assert sun_from_metadata(plain) == (160.5, 42.0, ["SUN_AZIMUTH", "SUN_ELEVATION"])
    imd = _tif(
        tmp_path / "b.tif", {"IMAGE_1.meanSunAz": "123.4", "IMAGE_1.meanSunEl": "55.1"}, "IMD"
    )
    az, el, keys = sun_from_metadata(imd)
    assert (az, el) == (123.4, 55.1) and keys == ["IMAGE_1.meanSunAz", "IMAGE_1.meanSunEl"]
    none = _tif(tmp_path / "c.tif", {"SUN_ELEVATION": "120", "SENSOR": "sunny"})
    assert sun_from_metadata(none) == (None, None, [])  # out of range, or not a sun angle
    planet = _tif(tmp_path / "d.tif", {})
    meta = {"properties": {"sun_azimuth": 141.2, "sun_elevation": 61.5, "view_angle": 3.1}}
    (tmp_path / "d_metadata.json").write_text(json.dumps(meta))
    assert sun_from_metadata(planet) == (
        141.2,
        61.5,
        ["properties.sun_azimuth", "properties.sun_elevation"],
    )


def test_resolve_sun__given_then_metadata_then_estimate(tmp_path: Path, site: Path) -> None:
    tagged = _tif(tmp_path / "t.tif", {"SUN_AZIMUTH": "200", "SUN_ELEVATION": "40"})
    assert resolve_sun(tagged, given=(100.0, 30.0)).to_dict()["source"] == "given"
    half = resolve_sun(tagged, given=(100.0, None))
    assert (half.azimuth_deg, half.elevation_deg, half.source) == (
        100.0,
        40.0,
        "given; elevation from metadata",
    )
    meta = resolve_sun(tagged, image=_after(site))
    assert (meta.azimuth_deg, meta.elevation_deg, meta.source) == (200.0, 40.0, "metadata")
    bare = _tif(tmp_path / "u.tif", {})
    est = resolve_sun(bare, image=_after(site))
    assert est.source == "tree shadows" and est.elevation_deg is None
    off = resolve_sun(bare, image=_after(site), params=SunParams(estimate=False))
    assert off.azimuth_deg is None and off.source == "unknown"
    assert "estimate off" in off.describe()


def test_sun_params__bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="min_shadow_contrast"):
        SunParams(min_shadow_contrast=1.5)


def test_highest_sun_elevation__bounds_an_unknown_elevation_by_latitude() -> None:
    assert highest_sun_elevation(0.0) == highest_sun_elevation(23.44) == 90.0
    assert highest_sun_elevation(50.0) == highest_sun_elevation(-50.0) == 63.44
    # a scene at 50° N (UTM 37N): the bound is recorded and shown with an unknown elevation
    north = make_raster(
        np.full((1, 16, 16), 100.0), transform=Affine(0.5, 0, 500000.0, 0, -0.5, 5540000.0)
    )
    sun = resolve_sun(None, given=(120.0, None), image=north)
    assert sun.highest_elevation_deg == pytest.approx(63.44, abs=0.05)
    assert "at most 63.4° at this latitude" in sun.describe()
    assert sun.elevation_cap(70.0) == pytest.approx(63.44, abs=0.05)
    assert sun.elevation_cap(60.0) == 60.0
    tropics = make_raster(
        np.full((1, 16, 16), 100.0), transform=Affine(0.5, 0, 500000.0, 0, -0.5, 1000000.0)
    )
    assert resolve_sun(None, given=(120.0, None), image=tropics).highest_elevation_deg == 90.0


def test_highest_sun_elevation__on_a_date_bounds_that_days_noon_sun() -> None:
    winter = highest_sun_elevation(50.0, datetime.date(2024, 1, 15))
    assert 18.7 <= winter <= 21.0  # the true noon sun: 90 - (50 + 21.3) = 18.7°
    assert highest_sun_elevation(50.0, datetime.date(2024, 6, 21)) == 63.44  # the solstice
    assert highest_sun_elevation(-33.9, datetime.date(2024, 12, 21)) == 79.54  # Sydney, solstice
    assert parse_date("2024:01:15 10:12:00") == parse_date("20240115") == datetime.date(2024, 1, 15)
    assert parse_date("unknown") is None and parse_date("2024-13-40") is None
    tags = {"TIFFTAG_DATETIME": "2020:01:01 00:00:00", "acquisition_date": "2024-06-21"}
    assert acquisition_date(tags) == datetime.date(2024, 6, 21)
    assert acquisition_date({"TIFFTAG_DATETIME": "2020:01:01"}) is None  # a file date only


def test_sun_elevation_at_azimuth__follows_the_days_path() -> None:
    # 45° N at the equinox (declination ~0): the sun's position at each hour angle in closed
    # form; the bound at its azimuth is its elevation, up to the declination's 1.5° margin
    equinox, lat = datetime.date(2024, 3, 20), math.radians(45.0)
    for hours in (-4, -2.5, -1, 0, 1.5, 3):
        h = math.radians(15.0 * hours)
        east, north = -math.sin(h), -math.sin(lat) * math.cos(h)
        elevation = math.degrees(math.asin(math.cos(lat) * math.cos(h)))
        azimuth = math.degrees(math.atan2(east, north)) % 360
        got = sun_elevation_at_azimuth(45.0, equinox, azimuth, tolerance_deg=0.5)
        assert elevation - 0.1 <= got <= elevation + 2.0, hours
    # a morning sun stands lower than noon's; the tolerance widens the bound toward noon
    morning = sun_elevation_at_azimuth(45.0, equinox, 125.3, tolerance_deg=0.5)
    assert morning < sun_elevation_at_azimuth(45.0, equinox, 125.3, tolerance_deg=20.0)
    assert morning < highest_sun_elevation(45.0, equinox) - 10
    assert sun_elevation_at_azimuth(45.0, equinox, 0.0) is None  # never in the north


def test_resolve_sun__date_and_azimuth_bound_the_elevation() -> None:
    # a scene at 50° N on 15 January with the sun in the south-east: lower than that noon's
    north = make_raster(
        np.full((1, 16, 16), 100.0), transform=Affine(0.5, 0, 500000.0, 0, -0.5, 5540000.0)
    )
    day = datetime.date(2024, 1, 15)
    noon = highest_sun_elevation(50.0, day)
    sun = resolve_sun(None, given=(140.0, None), image=north, date=day)
    assert sun.highest_elevation_deg < noon - 3
    assert sun.detail["elevation_bound"] and "on 2024-01-15 at this azimuth" in sun.describe()
    # at noon's azimuth the path gives about the noon bound (their margins differ: 1.5° and
    # 2°); an azimuth the sun never has that day (the north, in a northern winter) leaves the
    # noon bound and says so
    at_noon = resolve_sun(None, given=(180.0, None), image=north, date=day)
    assert at_noon.highest_elevation_deg == pytest.approx(noon, abs=1.0)
    off = resolve_sun(None, given=(0.0, None), image=north, date=day)
    assert off.highest_elevation_deg == pytest.approx(noon, abs=0.05)
    assert off.detail["azimuth_off_the_path"]
    # with the elevation given, nothing is bounded
    both = resolve_sun(None, given=(140.0, 20.0), image=north, date=day)
    assert "elevation_bound" not in both.detail


@pytest.fixture(scope="module")
def one_band_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the before image is on the footprints' grid exactly; its sun is set for the test
    settings = SceneSettings(seed=32, size_px=512, sun_before=(300.0, 45.0))
    return generate_site(tmp_path_factory.mktemp("sun1") / "s", settings, workers=1)


def test_estimate_sun_azimuth_from_footprints__buildings_shadows_give_the_azimuth(
    one_band_site: Path,
) -> None:
    import geopandas as gpd

    from changedet.sun import estimate_sun_azimuth_from_footprints

    before = rioxarray.open_rasterio(one_band_site / "before.tif").astype("float32")
    grey = before.mean("band", keep_attrs=True).expand_dims(band=[1]).rio.write_crs(before.rio.crs)
    footprints = gpd.read_file(one_band_site / "footprints.geojson")
    az, detail = estimate_sun_azimuth_from_footprints(grey, footprints)
    assert az is not None, detail
    assert _angle_error(az, 300.0) <= 10.0, (az, detail)
    assert (
        detail["buildings"] >= 20 and detail["shadow_contrast"] >= SunParams().min_shadow_contrast
    )
    # lazy, the same; and resolve_sun falls back to it where the trees say nothing (one band)
    lazy, _ = estimate_sun_azimuth_from_footprints(grey.chunk(128), footprints)
    assert lazy == az
    sun = resolve_sun(None, image=grey, footprints=footprints)
    assert sun.source == "building shadows" and sun.azimuth_deg == az
    assert "red, green and blue" in sun.detail["trees"]
    # footprints over ground without shadows, or over noise: no azimuth, and why
    flat = grey.copy(data=np.full(grey.shape, 120.0, np.float32))
    none, why = estimate_sun_azimuth_from_footprints(flat, footprints)
    assert none is None and "20 needed" in why["reason"]
    speckle = np.random.default_rng(0).uniform(40, 200, grey.shape).astype(np.float32)
    none, why = estimate_sun_azimuth_from_footprints(grey.copy(data=speckle), footprints)
    assert none is None and "shadow contrast" in why["reason"], why
