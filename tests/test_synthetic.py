"""Tests of changedet.synthetic: determinism, truth agrees with pixels, georeferencing, memory."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from pyproj import Transformer

from changedet._atomic import sha256_file
from changedet.errors import ConfigError
from changedet.synthetic import SceneSettings, generate_site, misregistration_matrix, write_samples

REPO = Path(__file__).resolve().parents[1]


def _read(path: Path) -> tuple[np.ndarray, Any]:
    with rasterio.open(path) as src:
        return src.read(), src.profile


def _gray(arr: np.ndarray) -> np.ndarray:
    return arr[:3].astype(np.float64).mean(0)


def _load(site: Path, name: str) -> Any:
    return json.loads((site / name).read_text())


def _to_scene(geom: Any, crs: Any) -> Any:
    """A GeoJSON geometry (EPSG:4326) as a shapely geometry in ``crs``."""
    import shapely
    from shapely.geometry import shape

    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return shapely.transform(
        shape(geom), lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))
    )


def _after_px(site: Path, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where before-grid pixels (col, row) appear in the after raster, via the truth files only."""
    mis = _load(site, "truth/misregistration.json")
    scene = _load(site, "truth/scene.json")
    m = np.array(mis["matrix"])
    qc = m[0, 0] * col + m[0, 1] * row + m[0, 2]
    qr = m[1, 0] * col + m[1, 1] * row + m[1, 2]
    bt, at = scene["before_grid"]["transform"], scene["after_grid"]["transform"]
    x, y = bt[2] + (qc + 0.5) * bt[0], bt[5] + (qr + 0.5) * bt[4]
    if scene["after_grid"]["crs"] != scene["before_grid"]["crs"]:
        x, y = Transformer.from_crs(
            scene["before_grid"]["crs"], scene["after_grid"]["crs"], always_xy=True
        ).transform(x, y)
    return (np.asarray(x) - at[2]) / at[0] - 0.5, (np.asarray(y) - at[5]) / at[4] - 0.5


@pytest.fixture(scope="module")
def site_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    s = SceneSettings(size_px=(512, 576), seed=11, shift_px=(3.37, -2.61), n_craters=8)
    return generate_site(tmp_path_factory.mktemp("plain") / "site", s, workers=2)


@pytest.fixture(scope="module")
def site_utm36(tmp_path_factory: pytest.TempPathFactory) -> Path:
    s = SceneSettings(
        size_px=512,
        seed=12,
        shift_px=(-5.5, 2.25),
        rotation_deg=0.3,
        scale=1.001,
        after_crs="EPSG:32636",
        after_gsd_m=0.6,
        n_craters=8,
    )
    return generate_site(tmp_path_factory.mktemp("utm36") / "site", s, workers=2)


def test_generate_site__same_seed_identical_bytes(tmp_path: Path) -> None:
    s = SceneSettings(size_px=256, seed=5, rotation_deg=0.2, n_craters=3)
    a = generate_site(tmp_path / "a", s, workers=1)
    b = generate_site(tmp_path / "b", s, workers=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert {Path("before.tif"), Path("after.tif"), Path("truth/scene.json")} <= set(files)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert sha256_file(a / f) == sha256_file(b / f), f
    c = generate_site(
        tmp_path / "c", SceneSettings(size_px=256, seed=6, rotation_deg=0.2, n_craters=3), workers=1
    )
    assert sha256_file(a / "before.tif") != sha256_file(c / "before.tif")


@pytest.mark.parametrize("after_crs", [None, "EPSG:32636"])
def test_generate_site__window_size_does_not_change_pixels(
    tmp_path: Path, after_crs: str | None
) -> None:
    s = SceneSettings(
        size_px=(264, 328),
        seed=7,
        shift_px=(1.3, 2.7),
        rotation_deg=0.4,
        n_craters=4,
        after_crs=after_crs,
        after_gsd_m=0.6 if after_crs else None,
    )
    a = generate_site(tmp_path / "a", s, window_px=64, workers=1)
    b = generate_site(tmp_path / "b", s, window_px=512, workers=1)
    for name in ("before.tif", "after.tif"):
        pa, _ = _read(a / name)
        pb, _ = _read(b / name)
        np.testing.assert_array_equal(pa, pb)


@pytest.mark.parametrize("fixture", ["site_plain", "site_utm36"])
def test_generate_site__craters_dark_inside_bright_ejecta_after_only(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    site = request.getfixturevalue(fixture)
    before, bprof = _read(site / "before.tif")
    after, aprof = _read(site / "after.tif")
    gb, ga = _gray(before), _gray(after)
    craters = [f["properties"] for f in _load(site, "truth/craters.geojson")["features"]]
    checked = 0
    for c in craters:
        if c["diameter_m"] < 4:
            continue
        contrast = []
        for img, gsd, (col, row) in (
            (gb, bprof["transform"].a, (c["col_px"], c["row_px"])),
            (
                ga,
                aprof["transform"].a,
                _after_px(site, np.array(c["col_px"]), np.array(c["row_px"])),
            ),
        ):
            rr, cc = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
            d = np.hypot(cc - float(col), rr - float(row)) * gsd / (c["diameter_m"] / 2)
            contrast.append(img[(d > 1.2) & (d < 2.0)].mean() - img[d < 0.6].mean())
        assert contrast[1] > 25, (c, contrast)  # after: interior much darker than the ejecta ring
        assert contrast[0] < contrast[1] - 20, (c, contrast)  # before: no such crater
        checked += 1
    assert checked >= 3


def test_generate_site__damaged_roofs_change_intact_roofs_do_not(site_plain: Path) -> None:
    from rasterio.features import rasterize
    from scipy.ndimage import binary_erosion, map_coordinates

    before, prof = _read(site_plain / "before.tif")
    after, _ = _read(site_plain / "after.tif")
    m = misregistration_matrix(SceneSettings(size_px=(512, 576), shift_px=(3.37, -2.61)))
    rr, cc = np.mgrid[0 : before.shape[1], 0 : before.shape[2]].astype(float)
    qc, qr = m[0, 0] * cc + m[0, 1] * rr + m[0, 2], m[1, 0] * cc + m[1, 1] * rr + m[1, 2]
    aligned = np.stack(
        [map_coordinates(b.astype(float), [qr, qc], order=1, mode="nearest") for b in after[:3]]
    )
    feats = _load(site_plain, "truth/damage.geojson")["features"]
    labels = rasterize(
        ((_to_scene(f["geometry"], prof["crs"]), i + 1) for i, f in enumerate(feats)),
        out_shape=before.shape[1:],
        transform=prof["transform"],
        dtype="int32",
    )
    roofs = {}
    for i, f in enumerate(feats):
        mask = binary_erosion(labels == i + 1, iterations=2)
        if mask.sum() >= 30 and not f["properties"]["new_construction"]:
            roofs[f["properties"]["id"]] = (f["properties"]["damage"], mask)
    intact = np.any([mk for d, mk in roofs.values() if d == "none"], axis=0)
    b = before[:3].astype(float)
    resid = np.zeros_like(aligned)
    for k in range(3):  # the after sensor's gain/offset, fitted on intact roofs
        g, o = np.polyfit(b[k][intact], aligned[k][intact], 1)
        resid[k] = np.abs(aligned[k] - (g * b[k] + o))
    # median over the roof: robust to the moving shadows of roof boxes and tanks (a nuisance)
    score = {i: (d, float(np.median(resid[:, mk].mean(0)))) for i, (d, mk) in roofs.items()}
    none = np.array([v for d, v in score.values() if d == "none"])
    heavy = np.array([v for d, v in score.values() if d in ("destroyed", "severe")])
    assert len(none) > 50 and len(heavy) >= 2
    print(np.round(np.percentile(none, [50, 90, 100]), 1), np.round(np.sort(heavy), 1))
    assert np.median(none) < 8 and np.percentile(none, 90) < 12
    assert heavy.min() > 2 * np.percentile(none, 90), (heavy, np.percentile(none, 90))


def test_generate_site__recorded_shift_is_recovered(tmp_path: Path) -> None:
    from skimage.registration import phase_cross_correlation

    s = SceneSettings(
        size_px=512,
        seed=21,
        shift_px=(6.37, -3.81),
        sun_after=(135.0, 58.0),
        seasonal_change=False,
        n_craters=4,
    )
    site = generate_site(tmp_path / "s", s, workers=2)
    before, _ = _read(site / "before.tif")
    after, _ = _read(site / "after.tif")
    crop = (slice(64, 448), slice(64, 448))
    est, _, _ = phase_cross_correlation(
        _gray(before)[crop], _gray(after)[crop], upsample_factor=100
    )
    dx, dy = _load(site, "truth/misregistration.json")["shift_px"]
    assert (dx, dy) == (6.37, -3.81)
    # phase_cross_correlation returns the shift that registers `after` onto `before`: (-dy, -dx)
    assert abs(est[1] + dx) < 0.1 and abs(est[0] + dy) < 0.1, est


def test_generate_site__integer_shift_without_nuisance_moves_pixels_exactly(tmp_path: Path) -> None:
    s = SceneSettings(
        size_px=256,
        seed=8,
        shift_px=(3.0, -2.0),
        sun_after=(135.0, 58.0),
        seasonal_change=False,
        gain_after=(1, 1, 1, 1),
        offset_after=(0, 0, 0, 0),
        gamma_after=(1, 1, 1, 1),
        haze_before=0.0,
        haze_after=0.0,
        noise_sigma=0.0,
        jpeg_strength=0.0,
        n_craters=0,
        damage_share=0.0,
        n_new_buildings=0,
    )
    site = generate_site(tmp_path / "s", s, workers=1)
    before, _ = _read(site / "before.tif")
    after, _ = _read(site / "after.tif")
    # a feature at before (c, r) shows at (c + 3, r - 2) in the after image
    b, a = before[:, 2:, :-3].astype(int), after[:, :-2, 3:].astype(int)
    same = (np.abs(a - b) <= 1).all(0)
    assert same.mean() > 0.97  # all but moved cars
    assert not (np.abs(before.astype(int) - after.astype(int)) <= 1).all(0).mean() > 0.9


def test_generate_site__georeferencing(site_plain: Path, site_utm36: Path) -> None:
    from rasterio.warp import transform_bounds
    from shapely.geometry import Point, box

    for site in (site_plain, site_utm36):
        scene = _load(site, "truth/scene.json")
        st = scene["settings"]
        with rasterio.open(site / "before.tif") as src:
            assert src.crs.to_string() == "EPSG:32637" == st["crs"]
            assert tuple(src.transform)[:6] == (
                0.5,
                0.0,
                st["origin"][0],
                0.0,
                -0.5,
                st["origin"][1],
            )
            assert [src.height, src.width] == st["size_px"] == scene["before_grid"]["shape"]
            assert list(src.bounds) == scene["before_grid"]["bounds"]
            assert src.profile["tiled"] and src.profile["compress"] == "deflate"
            bbox = box(*src.bounds)
        to_scene = Transformer.from_crs("EPSG:4326", "EPSG:32637", always_xy=True).transform
        for name in ("facilities.geojson", "footprints.geojson", "truth/damage.geojson"):
            feats = _load(site, name)["features"]
            assert feats
            for f in feats:
                assert bbox.buffer(20).contains(_to_scene(f["geometry"], "EPSG:32637")), (
                    name,
                    f["properties"],
                )
        facs = _load(site, "facilities.geojson")["features"]
        assert {f["properties"]["type"] for f in facs} <= {
            "hospital",
            "school",
            "market",
            "water_plant",
        }
        assert all(f["properties"]["name"] and f["properties"]["id"] for f in facs)
        for f in _load(site, "truth/craters.geojson")["features"]:
            p = f["properties"]
            x, y = to_scene(*f["geometry"]["coordinates"])
            assert abs(x - p["x"]) < 1e-3 and abs(y - p["y"]) < 1e-3
            assert bbox.contains(Point(x, y))
    with rasterio.open(site_utm36 / "after.tif") as src:
        assert src.crs.to_string() == "EPSG:32636"
        assert src.res == (0.6, 0.6)
        after_in_before = box(*transform_bounds(src.crs, "EPSG:32637", *src.bounds))
    with rasterio.open(site_utm36 / "before.tif") as src:
        assert after_in_before.intersection(box(*src.bounds)).area > 0.99 * box(*src.bounds).area


def test_generate_site__truth_is_consistent(site_plain: Path) -> None:
    scene = _load(site_plain, "truth/scene.json")
    dmg = [f["properties"] for f in _load(site_plain, "truth/damage.geojson")["features"]]
    foot = {f["properties"]["id"] for f in _load(site_plain, "footprints.geojson")["features"]}
    new = {d["id"] for d in dmg if d["new_construction"]}
    assert new and not new & foot and foot == {d["id"] for d in dmg} - new
    assert all(d["damage"] == "none" for d in dmg if d["new_construction"])
    classes = {d["damage"] for d in dmg}
    assert (
        {"none", "destroyed"} <= classes <= {"none", "possible", "moderate", "severe", "destroyed"}
    )
    hits = [f["hit"] for f in scene["facilities"]]
    assert any(hits) and not all(hits)
    mis = _load(site_plain, "truth/misregistration.json")
    assert mis["model"] == "affine" and mis["shift_px"] == [3.37, -2.61]
    np.testing.assert_allclose(mis["matrix"], [[1, 0, 3.37], [0, 1, -2.61]])
    for name, sha in scene["files_sha256"].items():
        assert sha256_file(site_plain / name) == sha


def test_generate_site__roads_carry_the_truths_road_craters(
    site_plain: Path, tmp_path: Path
) -> None:
    # the roads file is what a crater's "on" reads: the truth's road craters lie on it, and its
    # open-ground craters off it; write_roads (for sites cached before it) writes the same bytes
    import geopandas as gpd

    from changedet._synth_io import write_roads
    from changedet.craters import road_areas

    roads = gpd.read_file(site_plain / "roads.geojson")
    assert len(roads) and set(roads.geom_type) == {"LineString"}
    assert roads["width_m"].between(6, 16).all()
    assert set(roads["surface"]) <= {"asphalt", "unpaved"}
    truth = gpd.read_file(site_plain / "truth" / "craters.geojson").to_crs(32637)
    areas = road_areas(roads, "EPSG:32637").union_all()
    on_road = truth.geometry.within(areas)
    assert {"road", "open"} <= set(truth["on"])
    assert on_road[truth["on"] == "road"].all() and not on_road[truth["on"] == "open"].any()
    s = SceneSettings(size_px=(512, 576), seed=11, shift_px=(3.37, -2.61), n_craters=8)
    again = write_roads(tmp_path / "site", s)
    assert again.read_bytes() == (site_plain / "roads.geojson").read_bytes()


def test_generate_site__four_band_uint16(tmp_path: Path) -> None:
    s = SceneSettings(size_px=256, seed=3, bands=4, dtype="uint16", n_craters=2)
    site = generate_site(tmp_path / "s", s, workers=1)
    for name in ("before.tif", "after.tif"):
        arr, prof = _read(site / name)
        assert prof["count"] == 4 and prof["dtype"] == "uint16"
        assert 0 < arr.max() <= 2047


_MEM_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from changedet.synthetic import SceneSettings, generate_site
    n = int(sys.argv[1])
    generate_site(sys.argv[2], SceneSettings(size_px=n, seed=1), window_px=128, workers=1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def test_generate_site__memory_bounded(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MEM_SCRIPT, str(n), str(tmp_path / str(n))],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in (384, 1152)
    ]
    rss = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        rss.append(int(out.split()[-1]) / 1024)  # MiB (ru_maxrss is KiB on Linux)
    # 9x the pixels; one float32 RGBN copy of the larger scene alone would be 20 MiB
    assert rss[1] - rss[0] < 10, rss


def test_write_samples__match_committed_sample_tiles(tmp_path: Path) -> None:
    committed = REPO / "sample_tiles"
    if not (committed / "site_01" / "before.tif").exists():
        pytest.skip("sample_tiles/ not generated")
    sites = write_samples(tmp_path, preset="samples")
    assert [p.name for p in sites] == ["site_01", "site_02", "site_03"]
    for site in sites:
        ref = committed / site.name
        for name in ("before.tif", "after.tif"):
            a, pa = _read(site / name)
            b, pb = _read(ref / name)
            # bit for bit with the libraries that wrote them; the simulated JPEG's float32 DCT
            # (scipy.fft) of another release may round a coefficient that lies on a half step
            # the other way: one 8 x 8 block off by one grey level (seen with scipy 1.17.1)
            diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
            assert diff.max(initial=0) <= 1, (site.name, name)
            assert np.count_nonzero(diff) <= 2 * 64 * a.shape[0], (site.name, name)
            assert pa["crs"] == pb["crs"] and pa["transform"] == pb["transform"]
        for name in (
            "facilities.geojson",
            "footprints.geojson",
            "truth/craters.geojson",
            "truth/damage.geojson",
            "truth/misregistration.json",
        ):
            assert _load(site, name) == _load(ref, name), name
        fresh, old = _load(site, "truth/scene.json"), _load(ref, "truth/scene.json")
        for key in ("settings", "before_grid", "after_grid", "counts", "facilities"):
            assert fresh[key] == old[key], key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size_px": 100}, "size_px.*256 to 32768"),
        ({"size_px": 40000}, "size_px.*256 to 32768"),
        ({"gsd_m": 0}, "gsd_m"),
        ({"crs": "EPSG:4326"}, "not a projected CRS"),
        ({"crs": "EPSG:999999"}, "not a CRS"),
        ({"bands": 5}, "bands"),
        ({"dtype": "float32"}, "dtype"),
        ({"sun_after": (120.0, 2.0)}, "sun_after"),
        ({"shift_px": (20.0, 0.0)}, "shift_px"),
        ({"rotation_deg": 2.0}, "rotation_deg"),
        ({"scale": 1.5}, "scale"),
        ({"damage_share": 0.9}, "damage_share"),
    ],
)
def test_scene_settings__bad_values_raise_clear_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SceneSettings(**kwargs)


def test_write_samples__bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown preset .nope.*samples"):
        write_samples(tmp_path, preset="nope")
    with pytest.raises(ConfigError, match="n_sites"):
        write_samples(tmp_path, n_sites=0)
    with pytest.raises(ConfigError, match="window_px"):
        generate_site(tmp_path, SceneSettings(size_px=256), window_px=100)
    assert not any(tmp_path.iterdir())


def test_misregistration_matrix__rotation_about_center() -> None:
    s = SceneSettings(
        size_px=256, shift_px=(1.0, 2.0), rotation_deg=0.5, scale=1.01, center_px=(10.0, 20.0)
    )
    m = misregistration_matrix(s)
    np.testing.assert_allclose(m @ [10.0, 20.0, 1.0], [11.0, 22.0])
    t = math.radians(0.5)
    np.testing.assert_allclose(
        m[:, :2], 1.01 * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    )
