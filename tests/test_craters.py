"""Tests of changedet.craters on scenes rendered here with known answers.

The renderer is independent of ``changedet.synthetic``: a height field (bowl craters with a
raised rim, hemispherical tree crowns, box buildings) lit by a sun vector (Lambertian shading
plus cast shadows by ray marching) times an albedo (textured ground, darker disturbed soil in the
bowl, a bright irregular ejecta blanket fading out to ~3 radii, debris specks), plus noise.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pandas.testing as pd_testing
import pytest
import rioxarray
import shapely
import xarray as xr
from affine import Affine
from scipy import ndimage
from shapely.geometry import LineString, Point, box

from changedet.craters import COLUMNS, CraterParams, detect_craters, road_areas
from changedet.errors import BandMismatchError, ChangedetError
from changedet.testing import make_raster

GSD = 0.5
TRANSFORM = Affine(GSD, 0.0, 500_000.0, 0.0, -GSD, 4_000_000.0)


def _texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    tex = np.zeros(shape)
    for sigma, amp in ((20, 0.06), (4, 0.04), (1, 0.03)):
        tex += amp * ndimage.gaussian_filter(rng.normal(size=shape), sigma) * sigma**0.5
    return tex


def render(
    shape: tuple[int, int],
    *,
    craters: list[tuple[float, float, float]] = (),  # (row, col, diameter_m)
    trees: list[tuple[float, float, float]] = (),  # (row, col, crown diameter_m)
    boxes: list[tuple[int, int, int, int, float]] = (),  # (r0, r1, c0, c1, height_m) buildings
    sun_az: float = 135.0,
    sun_el: float = 45.0,
    seed: int = 0,
    noise: float = 2.0,
) -> np.ndarray:
    """Render one luminance image (y, x), ~0-255, north up, rows pointing south."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    z = np.zeros(shape)  # metres
    albedo = 0.55 + _texture(shape, rng)
    for row, col, d in craters:
        r = d / 2 / GSD  # px
        rho = np.hypot(yy - row, xx - col) / r
        depth = 0.25 * d  # depth/diameter ratio of a fresh explosion crater
        z += np.where(rho < 1, -depth * (1 - rho**2), 0.0) + 0.08 * d * np.exp(
            -(((rho - 1) / 0.3) ** 2)
        )
        ang = np.arctan2(yy - row, xx - col)
        lobes = (
            1
            + 0.4 * np.cos(5 * ang + rng.uniform(0, 6))
            + 0.3 * np.cos(3 * ang + rng.uniform(0, 6))
        )
        ejecta = np.where(rho >= 0.95, np.exp(-(rho - 1) / (0.6 * lobes)), 0.0)
        albedo = np.where(rho < 0.95, albedo * 0.7, albedo * (1 + 0.45 * ejecta))
        specks = (rng.random(shape) < 0.03) & (rho > 1.0) & (rho < 2.5)
        albedo = np.where(specks, albedo * 1.3, albedo)
    for row, col, d in trees:
        r = d / 2 / GSD
        rho = np.hypot(yy - row, xx - col) / r
        crown = np.sqrt(np.clip(1 - rho**2, 0, None))
        z = np.maximum(z, np.where(rho < 1, 2.0 + 0.5 * d * crown, 0.0))  # trunk + crown
        albedo = np.where(rho < 1, 0.32 + 0.05 * rng.normal(size=shape), albedo)
    for r0, r1, c0, c1, h in boxes:
        z[r0:r1, c0:c1] = h
        albedo[r0:r1, c0:c1] = 0.8
    # Lambertian shading; image y (rows) points south
    gy, gx = np.gradient(z, GSD)
    az, el = math.radians(sun_az), math.radians(sun_el)
    sun = np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)])
    nxv, nyv = -gx, gy  # east and north components of the (unnormalised) normal
    norm = np.sqrt(nxv**2 + nyv**2 + 1)
    lam = np.clip((nxv * sun[0] + nyv * sun[1] + sun[2]) / norm, 0, None)
    # cast shadows: march towards the sun
    shadow = np.zeros(shape, bool)
    step_px = 0.5
    tan_el = math.tan(el)
    for k in range(1, int(60 / GSD / step_px)):
        dist = k * step_px
        sr = yy - math.cos(az) * dist
        sc = xx + math.sin(az) * dist
        zt = ndimage.map_coordinates(z, [sr, sc], order=1, mode="nearest")
        shadow |= zt > z + dist * GSD * tan_el + 0.05
    light = 0.25 + 0.75 * lam * ~shadow
    img = 255 * albedo * light + rng.normal(0, noise, shape)
    return img.astype(np.float32)


def raster(img: np.ndarray, bands: int = 1) -> xr.DataArray:
    data = np.repeat(img[None], bands, axis=0) if img.ndim == 2 else img
    return make_raster(data, transform=TRANSFORM)


def to_px(found) -> np.ndarray:
    col = (found.x.to_numpy() - TRANSFORM.c) / GSD - 0.5
    row = (TRANSFORM.f - found.y.to_numpy()) / GSD - 0.5
    return np.stack([row, col], axis=1)


def match(found, truth: list[tuple[float, float, float]]) -> list[int | None]:
    """Index of the detection matching each true crater (centre within max(2 m, r/2))."""
    pos = to_px(found)
    out: list[int | None] = []
    for row, col, d in truth:
        if len(pos) == 0:
            out.append(None)
            continue
        dist = np.hypot(pos[:, 0] - row, pos[:, 1] - col) * GSD
        k = int(np.argmin(dist))
        out.append(k if dist[k] <= max(2.0, d / 4) else None)
    return out


CRATERS = [(60.0, 70.0, 4.0), (70.0, 190.0, 12.0), (180.0, 60.0, 2.5), (190.0, 180.0, 20.0)]


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    before = render((256, 256), seed=3)
    after = render((256, 256), craters=CRATERS, seed=3)
    return before, after


def test_detect_craters__finds_each_crater_with_its_diameter(scene) -> None:
    before, after = scene
    found = detect_craters(raster(after, 3), raster(before, 3), sun_azimuth_deg=135.0)
    assert list(found.columns[: len(COLUMNS)]) == list(COLUMNS)
    idx = match(found, CRATERS)
    assert all(k is not None for k in idx), (found, idx)
    for (_, _, d), k in zip(CRATERS, idx, strict=True):
        assert found.diameter_m.iloc[k] == pytest.approx(d, rel=0.15)
    assert len(found) == len(CRATERS)
    assert found.new.tolist() == [True] * len(CRATERS)
    assert found.newness_verified.all()
    assert (found.shading > 0).all()
    assert found.crs.to_epsg() == 32637


def test_detect_craters__bowls_under_5_px_are_not_judged_from_one_image() -> None:
    # a 2 m crater is 4 px across at 0.5 m: too few pixels to judge its shading (in real
    # scenes such blobs are mostly gaps in rubble or clutter); 2.5 m (5 px) is found
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    small = render((96, 96), craters=[(48.0, 48.0, 2.0)], seed=5)
    assert len(detect_craters(raster(small), **sun)) == 0
    found = detect_craters(raster(render((96, 96), craters=[(48.0, 48.0, 2.5)], seed=5)), **sun)
    assert match(found, [(48.0, 48.0, 2.5)]) == [0]


def _small_crater_site(d_m: float) -> tuple[np.ndarray, np.ndarray, list]:
    crater = [(64.0, 64.0, d_m)]
    return render((128, 128), seed=5), render((128, 128), craters=crater, seed=5), crater


def _weak_dipole_crater(share_turned: float) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
    """``(before, after, crater, rho)``: the small-crater site's ground with a 6 m crater whose
    bowl is blended with itself turned 180° about its centre (``share_turned`` of it: the
    dipole falls to ``1 − 2 × share_turned`` of the rendered one, its shape stays; 1 gives a
    mound's dipole). ``rho``: each pixel's distance from the centre, px."""
    before, _, _ = _small_crater_site(2.0)
    crater = [(64.0, 64.0, 6.0)]
    after = render((128, 128), craters=crater, seed=5)
    yy, xx = np.mgrid[0:128, 0:128]
    rho = np.hypot(yy - 64, xx - 64)
    bowl = rho < 6.5
    turned = np.roll(after[::-1, ::-1], (1, 1), axis=(0, 1))  # 180° about (64, 64)
    after[bowl] = (1 - share_turned) * after[bowl] + share_turned * turned[bowl]
    return before, after, crater, rho


@pytest.mark.parametrize("d_m", [1.6, 2.0])
def test_detect_craters__small_isolated_crater_is_found_with_a_before_image(d_m: float) -> None:
    # 3-4 px across: no shading test, but a fresh apron on ground that is otherwise unchanged
    before, after, crater = _small_crater_site(d_m)
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    found = detect_craters(raster(after), raster(before), **sun)
    assert len(found) == 1 and match(found, crater) == [0], found
    assert found.new[0] and found.far_change[0] <= CraterParams().isolated_max_far_change
    assert found.diameter_m[0] == pytest.approx(d_m, rel=0.15)
    assert len(detect_craters(raster(after), **sun)) == 0  # not searched without a before


def test_detect_craters__small_blob_amid_an_unchanged_roof_is_not_kept() -> None:
    # the isolated 2 m blob of the test above, inside a building footprint: a hole in a roof
    # that did not change around it is damage, not a crater
    before, after, crater = _small_crater_site(2.0)
    x0, y0 = TRANSFORM * (24, 24)
    x1, y1 = TRANSFORM * (104, 104)
    fp = gpd.GeoDataFrame(geometry=[box(x0, y1, x1, y0)], crs=32637)
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    assert match(detect_craters(raster(after), raster(before), **sun), crater) == [0]
    found = detect_craters(raster(after), raster(before), footprints=fp, **sun)
    assert match(found, crater) == [None], found


def test_detect_craters__small_blob_needs_its_blanket_changed_all_round() -> None:
    # a dark 2 m bowl with a bright fresh apron, all round or with three eighths of the ring
    # unchanged (a car that moved, a shadow that moved with the sun change one side only)
    before = render((128, 128), seed=5)
    yy, xx = np.mgrid[0:128, 0:128]
    rho = np.hypot(yy - 64, xx - 64)
    crater = [(64.0, 64.0, 2.0)]
    ring = (rho >= 2) & (rho < 4)
    missing = (xx < 64) & ((yy < 64) | (yy - 64 < 64 - xx))
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    # enclosure (which a one-sided apron also lowers) out of the way: the blanket rule alone
    p = CraterParams(isolated_min_enclosure=0.0)
    found = []
    for apron in (ring, ring & ~missing):
        after = before + np.random.default_rng(9).normal(0, 2.0, before.shape)
        after[rho < 2] *= 0.5
        after[apron] *= 1.35
        pair = (raster(after.astype(np.float32)), raster(before))
        found.append(match(detect_craters(*pair, params=p, **sun), crater)[0])
        off = dataclasses.replace(p, min_surround_change=0.0)  # the blanket rule off: kept
        assert match(detect_craters(*pair, params=off, **sun), crater) == [0]
    assert found == [0, None]


def test_detect_craters__small_dark_gap_in_a_field_of_change_is_not_kept() -> None:
    # the same 2 m crater, with new rubble all round beyond its ejecta (a gap in a collapsed
    # building's debris looks like this): the ground beyond 3 R changed, so it is not isolated
    before, after, crater = _small_crater_site(2.0)
    rng = np.random.default_rng(3)
    blocks = np.kron(rng.uniform(0.5, 1.6, (64, 64)), np.ones((2, 2)))
    yy, xx = np.mgrid[0:128, 0:128]
    rho = np.hypot(yy - 64, xx - 64)
    field = (rho > 6) & (rho < 30)
    after[field] *= blocks[field]
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    found = detect_craters(raster(after), raster(before), **sun)
    assert match(found, crater) == [None], found
    off = CraterParams(isolated_max_far_change=math.inf)  # the isolation test off: kept
    kept = detect_craters(raster(after), raster(before), params=off, **sun)
    (k,) = match(kept, crater)
    assert k is not None and kept.far_change[k] > 3 * CraterParams().isolated_max_far_change


def test_detect_craters__isolated_crater_with_a_weak_dipole_needs_only_its_sign() -> None:
    # a 6 m crater whose bowl is made 40 % point-symmetric (a shallow bowl, an irregular floor):
    # its dipole falls below shading_ramp, but it is an isolated fresh disturbance
    before, after, crater, _ = _weak_dipole_crater(0.4)
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    found = detect_craters(raster(after), raster(before), **sun)
    assert match(found, crater) == [0] and found.new[0], found
    expected = 0.6 * math.cos(math.radians(45.0))
    assert 0 < found.shading[0] < CraterParams().shading_ramp[0] * expected
    assert found.far_change[0] <= CraterParams().isolated_max_far_change
    # no isolation (and no allowance for a clear bowl's weak dipole): the dipole decides
    off = CraterParams(isolated_max_far_change=0.0, clear_bowl_shading_share=1.0)
    assert match(detect_craters(raster(after), raster(before), params=off, **sun), crater) == [None]
    # turned into a mound's dipole (the walls' shading swapped), isolation does not keep it
    _, mound, _, _ = _weak_dipole_crater(1.0)
    assert match(detect_craters(raster(mound), raster(before), **sun), crater) == [None]


def test_detect_craters__crater_present_before_is_not_new(scene) -> None:
    _, after = scene
    old = render((256, 256), craters=CRATERS[:2], seed=3)  # two craters were there already
    found = detect_craters(raster(after), raster(old), sun_azimuth_deg=135.0)
    idx = match(found, CRATERS)
    assert all(k is not None for k in idx)
    assert [found.new.iloc[k] for k in idx] == [False, False, True, True]
    assert found.persistence.iloc[idx[0]] > 0.5 > found.persistence.iloc[idx[2]]


def test_detect_craters__single_image_mode_flags_unverified(scene) -> None:
    _, after = scene
    found = detect_craters(raster(after))
    assert all(k is not None for k in match(found, CRATERS))
    assert found.new.isna().all() and not found.newness_verified.any()
    assert found.shading.isna().all()  # sun unknown: the directional test is skipped


def _nuisance() -> tuple[np.ndarray, np.ndarray]:
    trees = [(60.0, 60.0, 5.0), (60.0, 190.0, 9.0), (190.0, 70.0, 3.0)]
    boxes = [(150, 200, 150, 175, 9.0)]  # a 25 m x 12.5 m building, 9 m tall: long shadow
    before = render((256, 256), trees=trees, boxes=boxes, seed=5, sun_az=135.0, sun_el=35.0)
    after = render((256, 256), trees=trees, boxes=boxes, seed=5, sun_az=160.0, sun_el=30.0)
    after[20:28, 100:140] *= 0.35  # an isolated elongated dark shadow, 20 m x 4 m
    return before, after


def test_detect_craters__ignores_trees_and_shadows() -> None:
    before, after = _nuisance()
    assert len(detect_craters(raster(after), sun_azimuth_deg=160.0, sun_elevation_deg=30.0)) == 0
    # azimuth only: mounds (opposite shading) and the elongated shadow are still rejected
    assert len(detect_craters(raster(after), sun_azimuth_deg=160.0)) == 0
    # no sun at all, single image: a dark round tree shadow can pass (a known limitation), but
    # never the elongated shadow, and with the before image nothing is new
    alone = to_px(detect_craters(raster(after)))
    assert not (alone[:, 0] < 40).any(), alone
    paired = detect_craters(raster(after), raster(before))
    assert paired.new.tolist() == [False] * len(paired)


def _frame(found) -> object:
    return found.drop(columns="geometry").reset_index(drop=True)


def test_detect_craters__dask_on_odd_chunks_equals_in_memory(scene) -> None:
    before, after = scene
    a, b = raster(after, 2), raster(before, 2)
    eager = detect_craters(a, b, sun_azimuth_deg=135.0)
    # tile_px 64: every chunk is a tile of its own, so the seams are tile seams
    lazy = detect_craters(
        a.chunk({"band": 1, "y": 97, "x": 131}),
        b.chunk({"y": 97, "x": 131}),
        sun_azimuth_deg=135.0,
        params=CraterParams(tile_px=64),
    )
    assert len(eager) == len(CRATERS)
    pd_testing.assert_frame_equal(_frame(lazy), _frame(eager))
    tiled = detect_craters(a, b, sun_azimuth_deg=135.0, params=CraterParams(tile_px=100))
    pd_testing.assert_frame_equal(_frame(tiled), _frame(eager))


def test_detect_craters__tiles_reading_their_own_file_windows_equal_in_memory(
    scene, tmp_path
) -> None:
    """Inputs read from files (and a persisted change map): each tile reads its windows
    itself, so no tile waits for chunks its neighbours share, with the same result."""
    from changedet import craters as craters_mod
    from changedet.testing import stored_pair

    before, after = scene
    a, b = raster(after, 3), raster(before, 3)
    rng = np.random.default_rng(5)
    change = a.isel(band=0, drop=True).copy(data=rng.random(a.shape[1:]).astype("float32"))
    eager = detect_craters(a, b, change=change, sun_azimuth_deg=135.0)
    stored_b, stored_a = stored_pair(b, a, tmp_path, chunks=96)
    lazy_change = change.chunk({"y": 96, "x": 96}).persist()
    calls = []
    real = craters_mod._detect_tile_from_files
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            craters_mod,
            "_detect_tile_from_files",
            lambda *args, **kw: calls.append(1) or real(*args, **kw),
        )
        lazy = detect_craters(
            stored_a,
            stored_b,
            change=lazy_change,
            sun_azimuth_deg=135.0,
            params=CraterParams(tile_px=64),
        )
    assert len(calls) > 4  # the file-window path ran, one call per tile
    assert len(eager) == len(CRATERS)
    pd_testing.assert_frame_equal(_frame(lazy), _frame(eager))


def test_detect_craters__small_chunks_are_merged_into_tiles(scene) -> None:
    before, after = scene
    a, b = raster(after), raster(before)
    eager = detect_craters(a, b, sun_azimuth_deg=135.0)
    # 64 px chunks, tiles of at least 128 px: runs of 2 chunks (halo read 4x less often)
    small = detect_craters(
        a.chunk({"y": 64, "x": 64}),
        b.chunk({"y": 64, "x": 64}),
        sun_azimuth_deg=135.0,
        params=CraterParams(tile_px=128),
    )
    pd_testing.assert_frame_equal(_frame(small), _frame(eager))
    from changedet.craters import _tiles

    assert _tiles(256, (64,) * 4, 128) == [(0, 128), (128, 256)]
    assert _tiles(300, (100, 100, 100), 128) == [(0, 200), (200, 300)]


def test_detect_craters__crater_on_a_chunk_corner_found_once() -> None:
    craters = [(128.0, 128.0, 14.0), (40.0, 127.5, 6.0)]  # on a 4-chunk corner; on a seam
    img = render((256, 256), craters=craters, seed=11)
    found = detect_craters(
        raster(img).chunk({"y": 128, "x": 128}),
        sun_azimuth_deg=135.0,
        params=CraterParams(tile_px=64),  # one tile per chunk
    )
    assert len(found) == 2
    assert all(k is not None for k in match(found, craters))
    pd_testing.assert_frame_equal(
        _frame(found), _frame(detect_craters(raster(img), sun_azimuth_deg=135.0))
    )


def test_detect_craters__on_says_only_what_the_layers_given_tell() -> None:
    a = raster(render((128, 128), craters=[(64.0, 64.0, 8.0)], seed=2))
    cx, cy = TRANSFORM * (64.5, 64.5)  # the crater's centre (pixel centres)
    far = gpd.GeoDataFrame(geometry=[box(cx + 40, cy + 40, cx + 60, cy + 60)], crs=32637)
    over = gpd.GeoDataFrame(geometry=[box(cx - 15, cy - 15, cx + 15, cy + 15)], crs=32637)

    def road(dy: float, **attrs: object) -> gpd.GeoDataFrame:
        line = LineString([(cx - 40, cy + dy), (cx + 40, cy + dy)])
        return gpd.GeoDataFrame({k: [v] for k, v in attrs.items()}, geometry=[line], crs=32637)

    def on(**layers: object) -> list[str]:
        return detect_craters(a, **layers).on.tolist()  # type: ignore[arg-type]

    assert on(footprints=far) == ["road or open ground"]
    assert on(roads=road(0.0)) == ["road"]
    assert on(roads=road(30.0)) == ["building or open ground"]
    assert on(footprints=far, roads=road(30.0)) == ["open ground"]
    assert on(footprints=far, roads=road(0.0)) == ["road"]
    assert on(footprints=over, roads=road(0.0)) == ["building"]  # a building before a road
    # a centre line 5 m away: on the road only when the road is over 10 m wide
    assert on(footprints=far, roads=road(5.0)) == ["open ground"]  # road_width_m: 7 m
    assert on(footprints=far, roads=road(5.0, width_m=12.0)) == ["road"]
    assert on(footprints=far, roads=road(5.0, width="12 m")) == ["road"]  # OpenStreetMap's tag
    assert on(footprints=far, roads=road(5.0, width="wide")) == ["open ground"]  # unusable
    # OpenStreetMap ways without a width: their class's typical width; footways are no roads
    assert on(footprints=far, roads=road(4.0, highway="primary")) == ["road"]  # 10 m
    assert on(footprints=far, roads=road(4.0, highway="residential")) == ["open ground"]  # 6 m
    with_path = pd.concat([road(30.0, highway="residential"), road(0.0, highway="footway")])
    assert on(footprints=far, roads=with_path) == ["open ground"]
    wide = CraterParams(road_width_m=12.0)
    assert detect_craters(a, roads=road(5.0), params=wide).on.tolist() == ["road"]
    # roads that miss the scene altogether (another area, or lat/lon swapped) are said to
    with pytest.warns(UserWarning, match="none of the 1 roads reaches the scene"):
        assert on(roads=road(5_000.0)) == ["building or open ground"]
    # road polygons are taken as they are, in any CRS
    assert on(roads=gpd.GeoDataFrame(geometry=[over.geometry[0]], crs=32637).to_crs(4326)) == [
        "road"
    ]


def test_road_areas__bad_roads_are_refused_in_one_line() -> None:
    line = LineString([(0, 0), (100, 0)])
    with pytest.raises(ChangedetError, match="holds no road line or polygon"):
        road_areas(gpd.GeoDataFrame(geometry=[], crs=32637), "EPSG:32637")
    with pytest.raises(ChangedetError, match=r"no road line or polygon \(only points\)"):
        road_areas(gpd.GeoDataFrame(geometry=[Point(0, 0)], crs=32637), "EPSG:32637")
    # an OpenStreetMap export's tagged nodes (traffic signals) beside the ways: left out, said
    mixed = gpd.GeoDataFrame(geometry=[line, Point(0, 0)], crs=32637)
    with pytest.warns(UserWarning, match="1 point feature"):
        assert len(road_areas(mixed, "EPSG:32637")) == 1
    paths = gpd.GeoDataFrame({"highway": ["footway", "path"]}, geometry=[line, line], crs=32637)
    with pytest.raises(ChangedetError, match="only footways, paths and the like"):
        road_areas(paths, "EPSG:32637")
    with pytest.raises(ChangedetError, match="GeometryCollection geometries; roads must be"):
        collection = shapely.GeometryCollection([line, Point(0, 0)])
        road_areas(gpd.GeoDataFrame(geometry=[collection], crs=32637), "EPSG:32637")
    with pytest.raises(ChangedetError, match="no CRS"):
        road_areas(gpd.GeoDataFrame(geometry=[line]), "EPSG:32637")
    with pytest.raises(ValueError, match="road_width_m"):
        CraterParams(road_width_m=0.0)


def test_detect_craters__footprints_and_empty_result() -> None:
    img = render((128, 128), craters=[(64.0, 64.0, 8.0)], seed=2)
    a = raster(img)
    x0, y0 = TRANSFORM * (50, 50)
    x1, y1 = TRANSFORM * (80, 80)
    fp = gpd.GeoDataFrame(geometry=[box(x0, y1, x1, y0)], crs=32637)
    found = detect_craters(a, footprints=fp)
    assert found.on.tolist() == ["building"]
    assert detect_craters(a).on.tolist() == ["unknown"]  # no layer: nothing known
    empty = detect_craters(raster(render((128, 128), seed=2)))
    assert len(empty) == 0 and list(empty.columns) == list(found.columns)
    assert empty.crs == found.crs


def test_detect_craters__ignores_nodata() -> None:
    img = render((128, 128), craters=[(64.0, 64.0, 8.0)], seed=2)
    img[:, :40] = np.nan
    assert len(detect_craters(raster(img))) == 1


def test_detect_craters__bad_input_raises() -> None:
    a = raster(render((64, 64), seed=1), 3)
    with pytest.raises(ValueError, match="min_diameter_m < max_diameter_m"):
        CraterParams(min_diameter_m=20.0, max_diameter_m=2.0)
    with pytest.raises(ValueError, match="debris_width_m"):
        CraterParams(debris_width_m=-1.0)
    with pytest.raises(BandMismatchError, match="has 1 bands, after has 3"):
        detect_craters(a, raster(render((64, 64), seed=1), 1))
    with pytest.raises(ChangedetError, match="one grid"):
        detect_craters(a, a.isel(y=slice(0, 60)))
    with pytest.raises(ValueError, match="pass gsd_m"):
        detect_craters(xr.DataArray(a.values, dims=("band", "y", "x")))
    with pytest.warns(UserWarning, match="cannot be resolved"):
        assert len(detect_craters(a, gsd_m=30.0)) == 0


def test_detect_craters__change_map_is_extra_evidence(scene) -> None:
    from changedet.change import change_scores

    before, after = scene
    a, b = raster(after), raster(before)
    change = change_scores(b, a, gsd_m=GSD)
    found = detect_craters(a, b, change=change, sun_azimuth_deg=135.0, sun_elevation_deg=45.0)
    idx = match(found, CRATERS)
    assert all(k is not None for k in idx)
    assert (found.change.iloc[idx] > 0.1).all() and found.new.iloc[idx].all()
    # no change at all: nothing is new, even where the before image lacks the blob
    calm = change.copy()
    calm["score"] = calm["score"] * 0
    quiet = detect_craters(a, b, change=calm, sun_azimuth_deg=135.0, sun_elevation_deg=45.0)
    assert not quiet.new.any()


def _colour(img: np.ndarray, mask: np.ndarray, tint: tuple[float, float, float]) -> np.ndarray:
    """RGB bands of a luminance image: dry soil colour, ``tint`` (mean 1) inside ``mask``."""
    soil = np.array([1.08, 1.0, 0.92])[:, None, None]
    colour = np.where(mask[None], np.array(tint)[:, None, None], soil)
    return (img[None] * colour).astype(np.float32)


def _one_crater(d_m: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    after = render((128, 128), craters=[(64.0, 64.0, d_m)], seed=11)
    yy, xx = np.mgrid[0:128, 0:128]
    bowl = np.hypot(yy - 64.0, xx - 64.0) < 0.95 * d_m / 2 / GSD
    return after, bowl


def test_detect_craters__green_round_blob_is_vegetation_not_a_crater() -> None:
    after, bowl = _one_crater()
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    bare = detect_craters(raster(_colour(after, bowl, (1.08, 1.0, 0.92))), **sun)
    assert len(bare) == 1 and abs(bare.greenness[0]) < 0.05
    # the same dark round blob, but green (foliage reflects green more than red and blue)
    green = detect_craters(raster(_colour(after, bowl, (0.85, 1.3, 0.85))), **sun)
    assert len(green) == 0
    # grey (one band): no colour, the test is skipped
    assert np.isnan(detect_craters(raster(after), **sun).greenness[0])


def test_detect_craters__dark_blob_with_a_crown_on_its_sun_side_is_that_trees_shadow() -> None:
    # the same dark round blob, with a green crown right beside it: on the sun's side (the
    # blob is the tree's shadow) or on the far side (a crater beside a tree)
    after, _ = _one_crater()
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}  # south-east: down and right
    yy, xx = np.mgrid[0:128, 0:128]
    found = {}
    for side, sign in (("sun", 1), ("far", -1)):
        centre = 64.0 + sign * 10 * math.sqrt(0.5)  # 1.25 R from the blob, towards or away
        crown = np.hypot(yy - centre, xx - centre) < 5
        rgb = _colour(after, crown, (0.85, 1.3, 0.85))
        found[side] = detect_craters(raster(rgb), **sun)
    assert len(found["sun"]) == 0
    assert len(found["far"]) == 1 and found["far"].sun_side_greenness[0] < 0.05
    off = CraterParams(vegetation_ramp=(10.0, 11.0))  # the colour tests off: both kept
    crown = np.hypot(yy - 71.1, xx - 71.1) < 5
    kept = detect_craters(raster(_colour(after, crown, (0.85, 1.3, 0.85))), params=off, **sun)
    assert len(kept) == 1 and kept.sun_side_greenness[0] > CraterParams().vegetation_ramp[1]
    # without the sun azimuth the side is unknown: no test
    assert np.isnan(detect_craters(raster(after)).sun_side_greenness[0])


def test_detect_craters__blue_dark_blob_is_a_shadow_not_a_crater() -> None:
    after, bowl = _one_crater()
    # lit by the sky only, a shadow is bluer than the sunlit soil around it
    shadow = detect_craters(raster(_colour(after, bowl, (0.88, 0.95, 1.17))))
    assert len(shadow) == 0
    found = detect_craters(raster(_colour(after, bowl, (1.08, 1.0, 0.92))))
    assert len(found) == 1 and abs(found.blueness[0]) < 0.02


def test_detect_craters__crater_where_a_tree_stood_is_new() -> None:
    d = 8.0
    after, bowl = _one_crater(d)
    before = render((128, 128), trees=[(64.0, 64.0, d)], seed=11)
    yy, xx = np.mgrid[0:128, 0:128]
    crown = np.hypot(yy - 64.0, xx - 64.0) < d / 2 / GSD
    found = detect_craters(
        raster(_colour(after, bowl, (1.08, 1.0, 0.92))),
        raster(_colour(before, crown, (0.8, 1.35, 0.85))),
        sun_azimuth_deg=135.0,
        sun_elevation_deg=45.0,
    )
    assert len(found) == 1
    assert found.new[0] is True and found.newness_verified[0]
    # an older crater (the same crater before) stays not new
    old = detect_craters(
        raster(_colour(after, bowl, (1.08, 1.0, 0.92))),
        raster(
            _colour(render((128, 128), craters=[(64.0, 64.0, d)], seed=11), bowl, (1.08, 1.0, 0.92))
        ),
        sun_azimuth_deg=135.0,
        sun_elevation_deg=45.0,
    )
    assert old.new.tolist() == [False]


def test_detect_craters__crater_where_a_shadow_lay_is_new() -> None:
    after, bowl = _one_crater()
    before = render((128, 128), seed=11)
    before[bowl] *= 0.45  # a dark disc where the crater now is
    soil = (1.08, 1.0, 0.92)
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    # a dark patch of soil colour could be an older crater: not new
    grey = detect_craters(
        raster(_colour(after, bowl, soil)), raster(_colour(before, bowl, soil)), **sun
    )
    assert grey.new.tolist() == [False] and grey.persistence[0] > CraterParams().max_persistence
    # a blue one is a cast shadow (lit by the sky only): no older crater, the crater is new
    shadow = detect_craters(
        raster(_colour(after, bowl, soil)),
        raster(_colour(before, bowl, (0.88, 0.95, 1.17))),
        **sun,
    )
    assert shadow.new.tolist() == [True] and shadow.persistence[0] < 0.1


def test_detect_craters__dark_blob_on_unchanged_ground_is_not_new() -> None:
    crater, bowl = _one_crater()
    soil = (1.08, 1.0, 0.92)
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    after = raster(_colour(crater, bowl, soil))
    # before the blast: plain ground; the blast changed the bowl *and* its surroundings
    ground = render((128, 128), seed=11)
    blast = detect_craters(after, raster(_colour(ground, bowl, soil)), **sun)
    assert blast.new.tolist() == [True] and blast.surround_change[0] > 0.05
    # the same dark blob, but everything around it was there before (a bush that dried, a dark
    # object put down): around it only the noise of the pair differs
    noise = np.random.default_rng(5).normal(0, 1.0, crater.shape).astype(np.float32)
    same_ground = raster(_colour(np.where(bowl, ground, crater + noise), bowl, soil))
    still = detect_craters(after, same_ground, **sun)
    # new by persistence alone (the before image has no dark bowl there)
    assert still.new.tolist() == [False]
    assert still.persistence[0] < CraterParams().max_persistence
    off = CraterParams(min_surround_change=0.0)
    assert detect_craters(after, same_ground, params=off, **sun).new.tolist() == [True]


def _crater_in_a_broken_building(
    d: float, half: int, yard: float = 1.0
) -> tuple[np.ndarray, np.ndarray, gpd.GeoDataFrame]:
    """After, before and footprint: a ``d`` m crater amid the rubble of a building (2 half px
    wide) it brought down, the yard around ``yard`` times as bright."""
    before = render((160, 160), boxes=[(80 - half, 80 + half, 80 - half, 80 + half, 6.0)], seed=6)
    after = render((160, 160), craters=[(80.0, 80.0, d)], seed=6)
    yy, xx = np.mgrid[0:160, 0:160]
    building = (abs(yy - 79.5) < half) & (abs(xx - 79.5) < half)
    rubble = building & (np.hypot(yy - 80, xx - 80) >= 0.95 * d / 2 / GSD)
    blocks = np.kron(np.random.default_rng(4).uniform(0.8, 1.0, (80, 80)), np.ones((2, 2)))
    after[rubble] *= blocks[rubble]
    after[~building] *= yard
    before[~building] *= yard
    x0, y0 = TRANSFORM * (80 - half, 80 - half)
    x1, y1 = TRANSFORM * (80 + half, 80 + half)
    return after, before, gpd.GeoDataFrame(geometry=[box(x0, y1, x1, y0)], crs=32637)


def test_detect_craters__no_ejecta_penalty_inside_a_broken_building() -> None:
    # a crater in the rubble of a building, in a bright yard: its ring (rubble) is darker than
    # the "background" beyond it (the yard), which would count against an ejecta blanket
    d, half = 8.0, 18
    after, before, fp = _crater_in_a_broken_building(d, half, yard=1.5)
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    truth = [(80.0, 80.0, d)]
    # a bowl this smooth and this fully shaded is spared the ejecta test anyway
    # (CraterParams.shaded_bowl); the rest of this test holds it to that test
    spared = detect_craters(
        raster(after), raster(before), params=CraterParams(score_threshold=0.0), **sun
    )
    k = match(spared, truth)[0]
    assert k is not None and spared.score[k] == pytest.approx(1.0, abs=0.01)
    p = CraterParams(score_threshold=0.0, shaded_bowl=(0.0, 0.3))
    plain = detect_craters(raster(after), raster(before), params=p, **sun)
    k = match(plain, truth)[0]
    assert k is not None and plain.ejecta[k] < p.ejecta_ramp[0]
    assert plain.score[k] == pytest.approx(1 - p.ejecta_weight, abs=0.01)
    # with footprints: inside a building whose roof broke, there is no ground to show a
    # blanket against, and the ejecta evidence is not held against it
    inside = detect_craters(raster(after), raster(before), params=p, footprints=fp, **sun)
    k = match(inside, truth)[0]
    assert k is not None and inside.on[k] == "building"
    assert inside.surround_change[k] > p.roof_change_ramp[1]
    assert inside.score[k] == pytest.approx(1.0, abs=0.01)
    # the same on Dask chunks cut through the building
    chunked = detect_craters(
        raster(after).chunk({"x": 70, "y": 90}),
        raster(before).chunk({"x": 70, "y": 90}),
        params=dataclasses.replace(p, tile_px=64),
        footprints=fp,
        **sun,
    )
    pd_testing.assert_frame_equal(_frame(chunked), _frame(inside))


def test_refine_all__matches_per_candidate_refine() -> None:
    from changedet._crater_measure import WINDOW_RADII, refine, refine_all, window

    img = render((160, 160), craters=[(50.0, 60.0, 6.0), (110.0, 100.0, 14.0)], seed=2)
    lum = (img - img.min()) / np.ptp(img)
    rows, cols, r0 = np.array([51, 108]), np.array([59, 101]), np.array([5.0, 12.0])
    dy, dx, r = refine_all(lum, rows, cols, r0)
    for k in range(2):
        half = math.ceil(WINDOW_RADII * 1.6 * r0[k]) + 2
        ey, ex, er = refine(window(lum, int(rows[k]), int(cols[k]), half), float(r0[k]))
        assert abs(dy[k] - ey) < 0.3 and abs(dx[k] - ex) < 0.3
        assert abs(r[k] - er) < 0.05 * er


def test_measure_all__equals_one_window_at_a_time() -> None:
    from changedet._crater_measure import (
        WINDOW_RADII,
        _hessian_roundness,
        annulus_means,
        measure_all,
        rings,
        window,
    )

    rng = np.random.default_rng(4)
    lum = render((200, 220), craters=[(80.0, 90.0, 8.0)], seed=4) / 255.0
    lum[:15] = np.nan  # nodata along one edge
    n = 60
    rows, cols = rng.integers(-5, 205, n), rng.integers(0, 220, n)  # some beyond the tile
    dy, dx = rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)
    r = rng.uniform(2.0, 20.0, n)
    sun = (0.6, 0.8)
    got = measure_all(lum, rows, cols, dy, dx, r, sun)
    disc = annulus_means(lum, rows, cols, dy, dx, 0.0, 0.75 * r)
    for k in range(n):
        win = window(lum, int(rows[k]), int(cols[k]), math.ceil(WINDOW_RADII * r[k]) + 2)
        want = rings(win, dy[k], dx[k], r[k], sun)
        for key, value in want.items():
            assert got[key][k] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
        fill = want["m_ring"] if np.isfinite(want["m_ring"]) else 0.0
        assert got["roundness"][k] == pytest.approx(
            _hessian_roundness(win, dy[k], dx[k], r[k], fill), abs=1e-9
        )
        yy, xx = np.mgrid[
            -win.shape[0] // 2 + 1 : win.shape[0] // 2 + 1,
            -win.shape[0] // 2 + 1 : win.shape[0] // 2 + 1,
        ]
        vals = win[np.hypot(yy - dy[k], xx - dx[k]) < 0.75 * r[k]]
        vals = vals[np.isfinite(vals)]
        assert disc[k] == pytest.approx(vals.mean() if vals.size else np.nan, nan_ok=True)


def test_detect_craters__crater_beside_a_building_and_its_shadow_is_found() -> None:
    # a 9 m tall building and its shadow come up to the crater's rim: the bowl is still round
    box_ = [(126, 176, 96, 146, 9.0)]
    crater = [(108.0, 78.0, 8.0)]
    before = render((192, 192), boxes=box_, seed=8)
    after = render((192, 192), boxes=box_, craters=crater, seed=8)
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    found = detect_craters(raster(after), raster(before), **sun)
    idx = match(found, crater)
    assert len(found) == 1 and idx[0] is not None, found
    assert found.roundness[0] > 0.75 and found.new[0]
    assert found.diameter_m[0] == pytest.approx(8.0, rel=0.15)


def test_detect_craters__dark_hollow_full_of_debris_is_not_a_crater() -> None:
    # the same dark round hollow twice: a smooth bowl (a crater), and one strewn with bright
    # 1 m blocks, as a gap in the rubble of a collapsed building is
    craters = [(60.0, 60.0, 8.0), (60.0, 160.0, 8.0)]
    before = render((128, 224), seed=12)
    after = render((128, 224), craters=craters, seed=12)
    rng = np.random.default_rng(3)
    blocks = np.kron(rng.uniform(0.5, 1.6, (64, 112)), np.ones((2, 2)))
    yy, xx = np.mgrid[0:128, 0:224]
    hollow = np.hypot(yy - 60, xx - 160) < 6
    after[hollow] *= blocks[hollow]
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    found = detect_craters(raster(after), raster(before), **sun)
    assert match(found, craters) == [0, None], found
    assert found.texture[0] < CraterParams().texture_ramp[0]
    off = CraterParams(texture_ramp=(10.0, 11.0))  # the texture test off: both pass
    both = detect_craters(raster(after), raster(before), params=off, **sun)
    clean, debris = match(both, craters)
    assert clean is not None and debris is not None
    assert both.texture[debris] > max(CraterParams().texture_ramp[0], 3 * both.texture[clean])


def test_detect_craters__dark_blob_on_an_intact_roof_needs_a_broken_roof() -> None:
    box_ = [(40, 120, 40, 120, 6.0)]
    before = render((160, 160), boxes=box_, seed=6)
    bowl = render((160, 160), craters=[(80.0, 80.0, 6.0)], seed=6)
    after = before.copy()
    yy, xx = np.mgrid[0:160, 0:160]
    inner = np.hypot(yy - 80, xx - 80) < 6.0  # the bowl only: the roof around it is intact
    after[inner] = 0.8 * bowl[inner] * 0.8 / 0.55
    x0, y0 = TRANSFORM * (40, 40)
    x1, y1 = TRANSFORM * (120, 120)
    fp = gpd.GeoDataFrame(geometry=[box(x0, y1, x1, y0)], crs=32637)
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    plain = detect_craters(raster(after), raster(before), **sun)
    assert len(plain) == 1 and plain.surround_change[0] < CraterParams().roof_change_ramp[0]
    # with footprints the blob lies inside an unchanged roof: damage, not a crater
    assert len(detect_craters(raster(after), raster(before), footprints=fp, **sun)) == 0
    # single-image mode cannot tell an intact roof: the blob stays, on a building
    alone = detect_craters(raster(after), footprints=fp, **sun)
    assert alone.on.tolist() == ["building"] and np.isnan(alone.surround_change[0])


def test_detect_craters__crater_on_a_roof_must_span_the_roof_fixture_size() -> None:
    # a crater in the rubble of a building it brought down: found inside the footprint while
    # it spans min_roof_diameter_m; a smaller dark blob there reads as a roof fixture or hole
    d = 8.0
    after, before, fp = _crater_in_a_broken_building(d, 18)
    kw = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0, "footprints": fp}
    pair = (raster(after), raster(before))
    found = detect_craters(*pair, **kw)
    assert match(found, [(80.0, 80.0, d)]) == [0] and found.on[0] == "building"
    assert CraterParams().min_roof_diameter_m < found.diameter_m[0]
    assert found.attrs["roof_fixtures"] == 0
    above = CraterParams(min_roof_diameter_m=found.diameter_m[0] + 0.1)
    dropped = detect_craters(*pair, params=above, **kw)
    assert len(dropped) == 0 and dropped.attrs["roof_fixtures"] == 1  # counted, for the log
    # off the footprints the rule does not apply
    kw.pop("footprints")
    assert match(detect_craters(*pair, params=above, **kw), [(80.0, 80.0, d)]) == [0]


def test_before_match__a_lower_sun_s_longer_shadows_do_not_read_as_change(monkeypatch) -> None:
    # the after image has a third of the scene in shadow (a low sun), the before little: the
    # two images' quantiles no longer correspond, but the sunlit ground that did not change
    # does; the no-change level is that ground's, not the shadows'
    import changedet.craters as craters

    rng = np.random.default_rng(3)
    ground = 0.5 + _texture((400, 400), rng) * 3
    before = ground + rng.normal(0, 0.005, ground.shape)
    after = ground + rng.normal(0, 0.005, ground.shape)
    field = ndimage.gaussian_filter(rng.normal(size=ground.shape), 6)
    shade = field > 0.43 * field.std()  # a third of it
    after[shade] *= 0.45
    after[~shade & (rng.random(ground.shape) < 0.02)] *= 0.4  # and a few small dark things
    a, b = raster(after.astype(np.float32))[0], raster(before.astype(np.float32))[0]
    stats_a, stats_b = craters._range_stats(a), craters._range_stats(b)
    gain, offset, level = craters._before_match(a, b, stats_a, stats_b)
    # the unchanged ground, in the after's units: its true relation and noise
    lum_a = (after - stats_a[0]) / stats_a[1]
    lum_b = (before - stats_b[0]) / stats_b[1]
    true_gain, true_offset = stats_b[1] / stats_a[1], (stats_b[0] - stats_a[0]) / stats_a[1]
    assert gain == pytest.approx(true_gain, rel=0.02)
    assert offset == pytest.approx(true_offset, abs=0.01)
    noise = np.median(np.abs(lum_a - (true_gain * lum_b + true_offset))[~shade])
    assert level < 3 * noise
    # matched by the quantiles alone, the shadows shift the match: every pixel looks changed
    monkeypatch.setattr(craters, "MATCH_ROUNDS", 0)
    assert craters._before_match(a, b, stats_a, stats_b)[2] > 3 * level


def test_detect_craters__dark_block_in_a_big_craters_ejecta_is_not_a_crater() -> None:
    big, small = (96.0, 96.0, 18.0), (96.0, 96.0 + 1.8 * 18.0, 3.0)  # small at 1.8 R of big
    before = render((192, 192), seed=9)
    after = render((192, 192), craters=[big, small], seed=9)
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    both = detect_craters(
        raster(after), raster(before), params=CraterParams(blanket_size_ratio=0.0), **sun
    )
    assert all(k is not None for k in match(both, [big, small])), both
    found = detect_craters(raster(after), raster(before), **sun)
    assert match(found, [big])[0] is not None and match(found, [small])[0] is None
    # a chunk seam between the two (the big crater's centre in one chunk, the small one's in
    # another) changes nothing
    chunked = detect_craters(
        raster(after).chunk({"x": 110}),
        raster(before).chunk({"x": 110}),
        params=CraterParams(tile_px=64),
        **sun,
    )
    pd_testing.assert_frame_equal(_frame(chunked), _frame(found))


def test_find_candidates__levels_added_below_leave_the_others_as_they_were() -> None:
    from changedet._crater_scale import extend_down, find_candidates, make_scales

    img = render((160, 160), craters=[(50.0, 50.0, 2.0), (100.0, 110.0, 6.0)], seed=4)
    img = (img - img.min()) / np.ptp(img)
    main = make_scales(2.5, 12.0, 3)
    more = extend_down(main, 1.5, 3)
    assert more.n_below == 2 and more.radii_px[2:] == main.radii_px
    base = find_candidates(img.astype(np.float64), main, 0.015, 1.1)
    ext = find_candidates(img.astype(np.float64), more, 0.015, 1.1)
    np.testing.assert_array_equal(ext[: len(base)], base)
    added = ext[len(base) :]
    assert len(added) and (added[:, 2] < 2.5).all()
    # the 2 m crater (2 px radius) is among the added candidates
    assert (np.hypot(added[:, 0] - 50, added[:, 1] - 50) < 1.5).any()


def test_find_candidates__a_bowl_amid_bright_debris_stands_out_once_the_specks_are_gone() -> None:
    # a dark bowl (8 px radius) beside a building's dark shadow, the ground around strewn with
    # bright 1-px debris: the specks and the shadow together make the texture around the bowl
    # as strong as the bowl itself; with the specks opened away only the shadow is left
    from changedet._crater_scale import find_candidates, make_scales

    scales = make_scales(2.0, 20.0, 3)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:128, 0:128]
    rho = np.hypot(yy - 64, xx - 64) / 8.0
    ground = 0.5 + 0.01 * rng.normal(size=(128, 128))
    ground[:, 77:] = 0.2  # the shadow, from 1.6 radii east of the centre
    specks = (rng.random((128, 128)) < 0.2) & (rho > 1.15) & (rho < 3)
    lum = ground - np.where(rho < 1, 0.15 * (1 - rho**2), 0.0) + 0.8 * specks
    opened = ndimage.grey_opening(lum, size=(3, 3), mode="reflect")

    def at_bowl(cand: np.ndarray) -> int:
        return int((np.hypot(cand[:, 0] - 64, cand[:, 1] - 64) < 3).sum())

    assert at_bowl(find_candidates(lum, scales, 0.015, 1.1)) == 0
    assert at_bowl(find_candidates(lum, scales, 0.015, 1.1, opened, 4.0)) == 1
    # only blobs of at least texture_min_radius_px are judged against the opened map
    assert at_bowl(find_candidates(lum, scales, 0.015, 1.1, opened, 9.0)) == 0
    # the same debris without the bowl: the gaps among the specks are no darker than the
    # ground once the specks are gone, and pass no more than they did
    field = ground + 0.8 * ((rng.random((128, 128)) < 0.2) & (xx < 77))
    plain = find_candidates(field, scales, 0.015, 1.1)
    np.testing.assert_array_equal(
        find_candidates(field, scales, 0.015, 1.1, ndimage.grey_opening(field, size=(3, 3)), 4.0),
        plain,
    )


def test_find_candidates__weak_blobs_are_flagged_and_leave_the_others_as_they_were() -> None:
    # a bowl (5 px radius) with a bright apron, dug where a building's shadow begins at its
    # eastern rim: the step from lit ground to shadow makes the texture around it nearly as
    # strong as the bowl; it passes only the weak floor, and is flagged so
    from changedet._crater_scale import find_candidates, make_scales

    scales = make_scales(2.5, 12.0, 3)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:96, 0:96]
    rho = np.hypot(yy - 48, xx - 48) / 5.0
    lum = 0.6 + 0.01 * rng.normal(size=(96, 96))
    lum -= np.where(rho < 1, 0.2 * (1 - rho**2), 0.0)
    lum += np.where((rho >= 1) & (rho < 2), 0.08 * (2 - rho), 0.0)
    lum[:, 53:] -= 0.5

    def at_bowl(cand: np.ndarray) -> np.ndarray:
        return cand[np.hypot(cand[:, 0] - 48, cand[:, 1] - 48) < 2.5]

    strict = find_candidates(lum, scales, 0.015, 1.1)
    assert len(at_bowl(strict)) == 0 and (strict[:, 5] == 0).all()
    both = find_candidates(lum, scales, 0.015, 1.1, weak_prominence=0.9)
    assert len(at_bowl(both)) == 1 and at_bowl(both)[0, 5] == 1
    # the candidates that passed the strict test are the same, in the same order
    np.testing.assert_array_equal(both[both[:, 5] == 0], strict)


def test_detect_craters__crater_against_a_shadow_is_found_by_its_ejecta(tmp_path) -> None:
    # a generated site (seed 1045, no misregistration) where a 5.5 m crater on open ground
    # lies against a building's shadow: not prominent enough against that step for the strict
    # test, found as a weak candidate whose apron of ejecta shows; every other detection stays
    truth, crater, found = _generated_site_finder(tmp_path, 1045, 5.515)
    assert truth.on[crater] == "open"
    strict, hit_strict = found(CraterParams(weak_prominence=None))
    assert crater not in hit_strict
    both, hit_both = found(CraterParams())
    assert crater in hit_both
    k = hit_both[crater]
    _assert_same_craters(both.drop(index=k), strict)
    # the apron decides: asked for one brighter than any, the weak blob is nothing
    assert crater not in found(CraterParams(weak_ejecta_ramp=(5.0, 6.0)))[1]


def test_apron__all_round_not_one_bright_neighbour() -> None:
    # the apron of a weak candidate is the median of 8 sectors' ring-over-beyond brightening:
    # a shadow over one side leaves it to the others; a bright object on one side of a bare
    # dark blob raises the whole ring's mean (``ejecta``) but not the median
    from changedet.craters import _apron

    yy, xx = np.mgrid[0:80, 0:80]
    rho = np.hypot(yy - 40, xx - 40) / 5.0
    bowl = np.where(rho < 1, -0.2 * (1 - rho**2), 0.0)
    ground = np.full((80, 80), 0.5)
    # centre, offsets, radius, and the bowl's depth below its ring (as detect_craters measures)
    at = (
        np.array([40]),
        np.array([40]),
        np.zeros(1),
        np.zeros(1),
        np.array([5.0]),
        np.full(1, 0.2),
    )
    crater = ground + bowl + np.where((rho >= 1) & (rho < 2), 0.1, 0.0)
    crater[:, 49:] -= 0.3  # a shadow from 1.8 radii east
    assert _apron(crater, *at)[0] >= CraterParams().weak_ejecta_ramp[1]
    blob = ground + bowl
    blob[(rho >= 1.15) & (rho < 2) & (xx > 45)] += 0.3  # a lit wall or roof fixture, east
    ring_mean = blob[(rho >= 1.15) & (rho < 2)].mean()
    assert ring_mean - 0.5 > 0.05  # the whole ring is brighter than the ground beyond
    assert abs(_apron(blob, *at)[0]) < 0.05


def test_detect_craters__bright_debris_beside_a_shadow_does_not_hide_a_crater() -> None:
    # a 6 m crater, a building's shadow from 1.3 radii east, the sunlit ground around strewn
    # with bright debris of 0.5 m (a fifth of it, within 3 radii): found with the debris rule,
    # not without it (nor the weak candidates, which find it by its apron too); the same on
    # Dask chunks whose seams cross the bowl
    d = 6.0
    yy, xx = np.mgrid[0:128, 0:128]
    rho = np.hypot(yy - 64, xx - 64) / (d / 2 / GSD)
    after = render((128, 128), craters=[(64.0, 64.0, d)], seed=2)
    before = render((128, 128), seed=2)
    shadow = xx >= 64 + 1.3 * d / 2 / GSD
    after[shadow] *= 0.3
    before[shadow] *= 0.3
    debris = (np.random.default_rng(1).random((128, 128)) < 0.2) & (rho > 1.15) & (rho < 3)
    after[debris & ~shadow] = np.minimum(after[debris & ~shadow] * 2.5, 255)
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    truth = [(64.0, 64.0, d)]
    off = detect_craters(
        raster(after),
        raster(before),
        params=CraterParams(debris_width_m=0, weak_prominence=None),
        **sun,
    )
    assert match(off, truth) == [None]
    found = detect_craters(raster(after), raster(before), **sun)
    assert match(found, truth) == [0] and len(found) == 1 and found.new[0]
    assert found.diameter_m[0] == pytest.approx(d, rel=0.15)
    chunked = detect_craters(
        raster(after).chunk({"x": 32, "y": 32}),
        raster(before).chunk({"x": 32, "y": 32}),
        params=CraterParams(tile_px=64),  # four tiles, their corner at the crater's centre
        **sun,
    )
    pd_testing.assert_frame_equal(_frame(chunked), _frame(found))


def test_local_stats__equals_gaussian_filter_at_the_points() -> None:
    from changedet._crater_scale import LOCAL_TRUNCATE, local_stats

    rng = np.random.default_rng(7)
    img = rng.random((37, 53)).astype(np.float32)
    iy, ix = rng.integers(0, 37, 300), rng.integers(0, 53, 300)  # edges included
    for sigma in (0.9, 2.3, 5.1):
        mean, var = local_stats(img, iy, ix, sigma)
        m = ndimage.gaussian_filter(img.astype(np.float64), sigma, truncate=LOCAL_TRUNCATE)
        v = ndimage.gaussian_filter(img.astype(np.float64) ** 2, sigma, truncate=LOCAL_TRUNCATE)
        np.testing.assert_allclose(mean, m[iy, ix], atol=1e-12)
        np.testing.assert_allclose(var, (v - m * m)[iy, ix], atol=1e-12)


def test_local_stats__strips_of_rows_equal_one_filter_of_the_tile() -> None:
    from changedet._crater_scale import _STRIP_ROWS, LOCAL_TRUNCATE, local_stats

    rng = np.random.default_rng(8)
    ny = 3 * _STRIP_ROWS + 17  # several strips, the last one partial
    img = rng.random((ny, 41)).astype(np.float32)
    edges = np.array([0, _STRIP_ROWS - 1, _STRIP_ROWS, 2 * _STRIP_ROWS, ny - 1])
    iy = np.concatenate([edges, rng.integers(0, ny, 200)])
    ix = np.concatenate([np.array([0, 40, 3, 20, 40]), rng.integers(0, 41, 200)])
    sigma = 7.3  # the kernel reaches across strip boundaries and the image edge
    mean, var = local_stats(img, iy, ix, sigma)
    m = ndimage.gaussian_filter(img.astype(np.float64), sigma, truncate=LOCAL_TRUNCATE)
    v = ndimage.gaussian_filter(img.astype(np.float64) ** 2, sigma, truncate=LOCAL_TRUNCATE)
    np.testing.assert_allclose(mean, m[iy, ix], atol=1e-12)
    np.testing.assert_allclose(var, (v - m * m)[iy, ix], atol=1e-12)
    # a point's numbers do not depend on the other points asked for (tile independence)
    for k in (0, 2, 7):
        m1, v1 = local_stats(img, iy[k : k + 1], ix[k : k + 1], sigma)
        assert m1[0] == mean[k] and v1[0] == var[k]


def test_refine_all__batches_give_the_same_numbers() -> None:
    from changedet._crater_measure import refine_all

    img = render((160, 160), craters=[(50.0, 60.0, 6.0), (110.0, 100.0, 14.0)], seed=2)
    lum = (img - img.min()) / np.ptp(img)
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(20, 140, 11), rng.integers(20, 140, 11)
    r0 = rng.uniform(3.0, 14.0, 11)
    whole = refine_all(lum, rows, cols, r0, batch=100)
    for batch in (1, 4):
        parts = refine_all(lum, rows, cols, r0, batch=batch)
        for a, b in zip(whole, parts, strict=True):
            np.testing.assert_array_equal(a, b)


def test_refine_all__same_numbers_whichever_tile_holds_the_candidate() -> None:
    # the same candidates refined in a tile at the scene's origin and in one far from it
    # (pixel 1069.3 and 45.3 do not round alike): bit for bit
    from changedet._crater_measure import refine_all

    img = render((200, 200), craters=[(120.0, 130.0, 6.0), (150.0, 60.0, 11.0)], seed=4)
    lum = ((img - img.min()) / np.ptp(img)).astype(np.float64)
    rows, cols, r0 = np.array([121, 149]), np.array([129, 61]), np.array([5.5, 10.0])
    near = refine_all(lum, rows, cols, r0)
    for oy, ox in ((1000, 1100), (37, 2011)):
        scene = np.zeros((oy + 200, ox + 200))
        scene[oy:, ox:] = lum
        far = refine_all(scene, rows + oy, cols + ox, r0)
        for a, b in zip(near, far, strict=True):
            np.testing.assert_array_equal(a, b)


def test_bilinear__equals_map_coordinates() -> None:
    from changedet._crater_measure import _bilinear

    rng = np.random.default_rng(5)
    img = rng.random((30, 40))
    rows, cols = rng.integers(0, 30, 50), rng.integers(0, 40, 50)
    fy, fx = rng.uniform(-6, 6, (50, 7)), rng.uniform(-6, 6, (50, 7))  # edges included
    got = _bilinear(img, rows, cols, fy, fx)
    want = ndimage.map_coordinates(
        img, [(rows[:, None] + fy).ravel(), (cols[:, None] + fx).ravel()], order=1, mode="nearest"
    ).reshape(50, 7)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_measure_all__bowl_texture_ignores_the_wall_shading_ramp() -> None:
    from changedet._crater_measure import measure_all

    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    rho = np.hypot(yy - 32, xx - 32)
    ramp_bowl = np.where(rho < 8, 0.2 + 0.02 * (xx - 32) - 0.01 * (yy - 32), 0.8)
    noisy = ramp_bowl + np.where(rho < 8, np.random.default_rng(0).normal(0, 0.05, rho.shape), 0)
    args = (np.array([32]), np.array([32]), np.zeros(1), np.zeros(1), np.array([8.0]), None)
    assert measure_all(ramp_bowl, *args)["sd_in"][0] == pytest.approx(0.0, abs=1e-9)
    assert measure_all(noisy, *args)["sd_in"][0] == pytest.approx(0.05, rel=0.2)


def test_detect_craters__clear_bowl_needs_less_dipole_with_the_elevation_given() -> None:
    # the 6 m crater, its bowl made 35 % point-symmetric (its dipole about 0.45 of the model's,
    # as small bowls and high suns show) and the ground beyond it changed all round (no
    # isolated fresh disturbance): round, enclosed and smooth-floored, it is kept; the same
    # bowl with a rough floor, or with the allowance off, is not; a mound never is
    def weakened(share_turned: float, rough: float = 0.0) -> xr.DataArray:
        _, after, _, rho = _weak_dipole_crater(share_turned)
        bowl = rho < 6.5
        after[(rho >= 18) & (rho < 30)] *= 0.4  # the ground beyond changed all round
        depth = after[(rho >= 7) & (rho < 12)].mean() - after[bowl].mean()
        noise = np.random.default_rng(1).normal(0, rough * depth, int(bowl.sum()))
        after[bowl] += noise.astype(after.dtype)
        return raster(after)

    before, _, crater, _ = _weak_dipole_crater(0.35)
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    expected = 0.6 * math.cos(math.radians(45.0))
    p = CraterParams()
    clear = detect_craters(weakened(0.35), raster(before), **sun)
    (k,) = match(clear, crater)
    assert k is not None, clear
    assert p.shading_ramp[0] * p.clear_bowl_shading_share * expected < clear.shading[k]
    assert clear.shading[k] < 0.5 * sum(p.shading_ramp) * expected  # would score < 0.5
    assert clear.enclosure[k] >= p.clear_bowl[0] and clear.roundness[k] >= p.clear_bowl[1]
    assert clear.texture[k] <= p.clear_bowl[2]
    # the allowance off: scored below the threshold, and not an isolated disturbance either
    off = CraterParams(clear_bowl_shading_share=1.0, score_threshold=0.0)
    strict = detect_craters(weakened(0.35), raster(before), params=off, **sun)
    (k,) = match(strict, crater)
    assert strict.score[k] < p.score_threshold
    assert strict.far_change[k] > p.isolated_max_far_change
    # a rough floor (texture about 0.2: still no penalty of its own, but no clear bowl)
    rough = detect_craters(weakened(0.35, rough=0.3), raster(before), **sun)
    assert match(rough, crater) == [None]
    lax = CraterParams(clear_bowl=(0.85, 0.85, 0.25))  # that floor let pass: kept
    assert (
        match(detect_craters(weakened(0.35, 0.3), raster(before), params=lax, **sun), crater)[0]
        is not None
    )
    # the walls' shading swapped (a mound's dipole): never a crater
    assert match(detect_craters(weakened(0.65), raster(before), **sun), crater) == [None]
    # the elevation not given, the same expected dipole assumed (a 45° highest sun, no
    # calibration): no allowance on top of an assumption
    assumed = CraterParams(max_sun_elevation_deg=45.0, calibrate_shading=False)
    unknown = detect_craters(weakened(0.35), raster(before), params=assumed, sun_azimuth_deg=135.0)
    assert match(unknown, crater) == [None]


def test_detect_craters__moved_shadow_on_one_side_does_not_break_isolation() -> None:
    # the weakly shaded isolated 6 m crater of the test above, with the ground beyond it (3-5 R)
    # darkened on one side, as a building's cast shadow that moved with the sun does: most of
    # the ground beyond is unchanged, so it is still isolated; darkened all round it is not
    before, after, crater, rho = _weak_dipole_crater(0.4)
    yy, xx = np.mgrid[0:128, 0:128]
    sun = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    one_side = after.copy()
    one_side[(xx >= 84) & (xx < 94) & (yy >= 50) & (yy < 78)] *= 0.4  # 5 m x 14 m, east
    found = detect_craters(raster(one_side), raster(before), **sun)
    assert match(found, crater) == [0] and found.new[0], found
    assert found.far_change[0] <= CraterParams().isolated_max_far_change
    all_round = after.copy()
    all_round[(rho >= 18) & (rho < 30)] *= 0.4
    strict = CraterParams(clear_bowl_shading_share=1.0)  # the dipole alone would not keep it
    found = detect_craters(raster(all_round), raster(before), params=strict, **sun)
    assert match(found, crater) == [None]


def test_detect_craters__shading_calibrated_on_the_scenes_isolated_craters() -> None:
    # the elevation unknown: an isolated 6 m crater (fresh blanket all round, unchanged ground
    # beyond) shows the dipole this scene's craters have; a dark patch with a faint gradient,
    # amid rubble (not isolated), passes the lenient 70° assumption but not that dipole
    crater = [(50.0, 50.0, 6.0)]
    before = render((160, 160), seed=5)
    after = render((160, 160), craters=crater, seed=5)
    yy, xx = np.mgrid[0:160, 0:160]
    rho = np.hypot(yy - 110, xx - 110)
    az = math.radians(135.0)
    towards_sun = ((xx - 110) * math.sin(az) - (yy - 110) * math.cos(az)) / 6.0
    disc = rho < 6
    after[disc] = after[disc] * (0.5 - 0.2 * towards_sun[disc])  # darker on the sun's side
    blocks = np.kron(np.random.default_rng(3).uniform(0.5, 1.6, (80, 80)), np.ones((2, 2)))
    field = (rho > 14) & (rho < 36)
    after[field] *= blocks[field]
    after[(rho >= 7) & (rho < 12)] *= 1.3
    pair = (raster(after.astype(np.float32)), raster(before))
    patch = [(110.0, 110.0, 6.0)]
    off = CraterParams(calibrate_shading=False)
    assumed = detect_craters(*pair, params=off, sun_azimuth_deg=135.0)
    assert match(assumed, crater + patch) == [2, 0] and assumed.attrs["shading_calibration"] is None
    found = detect_craters(*pair, sun_azimuth_deg=135.0)
    assert match(found, crater + patch) == [0, None] and len(found) == 1, found
    cal = found.attrs["shading_calibration"]
    assert cal["isolated_craters"] == 1
    assert cal["expected_dipole"] == pytest.approx(found.shading[0], abs=1e-4)
    assert cal["expected_dipole"] > 2 * cal["assumed_expected_dipole"]
    assert 0 < found.shading[0] < 0.6  # about 0.6 cos 45° = 0.42, the sun it was rendered under
    # with the elevation known nothing is calibrated; the patch, round, enclosed and smooth,
    # is a clear bowl, whose weak dipole CraterParams.clear_bowl_shading_share lets pass
    given = {"sun_azimuth_deg": 135.0, "sun_elevation_deg": 45.0}
    both = detect_craters(*pair, **given)
    assert both.attrs["shading_calibration"] is None
    assert sorted(match(both, crater + patch)) == [0, 1] and len(both) == 2
    strict = CraterParams(clear_bowl_shading_share=1.0)
    both = detect_craters(*pair, params=strict, **given)
    assert match(both, crater + patch) == [0, None] and len(both) == 1


@pytest.mark.parametrize("sun_az", [135.0, 250.0])
def test_detect_craters__azimuth_from_the_isolated_craters_shading(sun_az: float) -> None:
    # no sun given: an isolated crater (blanket changed all round, ground beyond unchanged) is
    # a crater whatever its shading, and its wall nearest the sun is the dark one
    crater = [(64.0, 64.0, 6.0)]
    before = render((128, 128), seed=5, sun_az=sun_az)
    after = render((128, 128), craters=crater, seed=5, sun_az=sun_az)
    pair = (raster(after), raster(before))
    found = detect_craters(*pair)
    sun = found.attrs["sun_from_craters"]
    assert sun["isolated_craters"] == 1 and sun["resultant_length"] == 1.0
    assert abs((sun["azimuth_deg"] - sun_az + 180) % 360 - 180) <= 10, sun
    assert match(found, crater) == [0] and found.shading[0] > 0  # searched again with it
    assert found.attrs["sun_azimuth_deg"] == sun["azimuth_deg"]
    # turned off, or without a before image: no azimuth, no shading test
    off = detect_craters(*pair, params=CraterParams(azimuth_from_craters=False))
    assert off.attrs["sun_from_craters"] is None and off.shading.isna().all()
    alone = detect_craters(pair[0])
    assert alone.attrs["sun_from_craters"] is None and alone.shading.isna().all()


def _assert_same_craters(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    """The same detections, one to one: centres within 0.25 m, diameters within 2 %."""
    assert len(a) == len(b)
    pa, pb = np.c_[a.geometry.x, a.geometry.y], np.c_[b.geometry.x, b.geometry.y]
    dist = np.hypot(*(pa[:, None] - pb[None]).transpose(2, 0, 1))
    nearest = dist.argmin(axis=1)
    assert sorted(nearest.tolist()) == list(range(len(b)))
    assert dist[np.arange(len(a)), nearest].max(initial=0.0) < 0.25
    da, db = a.diameter_m.to_numpy(), b.diameter_m.to_numpy()[nearest]
    np.testing.assert_allclose(da, db, rtol=0.02)


def _generated_site_finder(
    tmp_path, seed: int, diameter_m: float
) -> tuple[gpd.GeoDataFrame, int, Callable[..., tuple[gpd.GeoDataFrame, dict[int, int]]]]:
    """A generated site without misregistration (the after image on the before grid,
    normalised): its true craters, the index of the one of ``diameter_m``, and
    ``found(params, **given)``: the new craters, both sun angles and footprints given (or
    what ``given`` passes to :func:`detect_craters` instead), and ``{truth index: detection
    index}``."""
    from changedet.evaluate import match_craters
    from changedet.normalize import RelativeNormalizer
    from changedet.synthetic import SceneSettings, generate_site

    site = generate_site(
        tmp_path, SceneSettings(seed=seed, size_px=768, shift_px=(0.0, 0.0)), workers=1
    )
    before = rioxarray.open_rasterio(site / "before.tif").astype("float32").load()
    after = RelativeNormalizer().fit_and_apply(
        before, rioxarray.open_rasterio(site / "after.tif").astype("float32").load()
    )
    truth = gpd.read_file(site / "truth" / "craters.geojson").to_crs(before.rio.crs)
    (crater,) = np.nonzero(np.isclose(truth.diameter_m.to_numpy(), diameter_m, atol=0.01))[0]
    az, el = json.loads((site / "truth" / "scene.json").read_text())["settings"]["sun_after"]
    kw = {
        "sun_azimuth_deg": az,
        "sun_elevation_deg": el,
        "footprints": gpd.read_file(site / "footprints.geojson"),
    }

    def found(
        params: CraterParams | None = None, **given: Any
    ) -> tuple[gpd.GeoDataFrame, dict[int, int]]:
        det = detect_craters(after, before, params=params, **{**kw, **given})
        det = det[det.new.astype(bool)].reset_index(drop=True)
        return det, {t: d for d, t, _ in match_craters(det, truth)}

    return truth, int(crater), found


def test_detect_craters__crater_merged_with_rubble_is_found_as_a_second_hypothesis(
    tmp_path,
) -> None:
    # a generated site (seed 1075, no misregistration) where a 7.9 m crater lies at the edge
    # of a building it brought down: bowl and dark rubble make one larger blob, whose scale the
    # LoG picks and whose edge the radius fit finds. Refined again from half and 0.7 of that
    # radius, the bowl is found; every other detection stays
    truth, crater, found = _generated_site_finder(tmp_path, 1075, 7.912)
    assert truth.on[crater] == "building"
    one, hit_one = found(CraterParams(nested_radii=()))
    assert crater not in hit_one
    both, hit_both = found(CraterParams())
    assert crater in hit_both
    k = hit_both[crater]
    p = CraterParams()
    assert both.roundness[k] >= p.nested_bowl[0] and both.texture[k] <= p.nested_bowl[1]
    # every other detection is the same crater (second hypotheses may re-fit one a little)
    _assert_same_craters(both.drop(index=k), one)
    # a rougher floor than the second hypothesis allows: not kept
    strict = CraterParams(nested_bowl=(p.nested_bowl[0], 0.5 * float(both.texture[k])))
    assert crater not in found(strict)[1]


def test_detect_craters__crater_beside_a_larger_dark_blob_is_found_from_its_darkest_point(
    tmp_path, monkeypatch
) -> None:
    # a generated site (seed 1033, no misregistration) where a 7.7 m crater merges with a
    # larger dark blob whose centre lies well off the bowl: started at that centre the second
    # hypotheses do not reach it; started at the blob's darkest point they do
    import changedet.craters as craters_mod

    _, crater, found = _generated_site_finder(tmp_path, 1033, 7.68)
    # (without the shaded-bowl rule, which also keeps the circle a centre start finds)
    params = CraterParams(shaded_bowl=(0.0, 0.3))
    both, hit_both = found(params)
    assert crater in hit_both
    k = hit_both[crater]
    assert both.diameter_m[k] == pytest.approx(7.68, rel=0.15)

    def centres(img, rows, cols, radius):  # the darkest point taken to be the centre
        return rows.astype(np.int64).copy(), cols.astype(np.int64).copy()

    monkeypatch.setattr(craters_mod, "_darkest_within", centres)
    one, hit_one = found(params)
    assert crater not in hit_one
    _assert_same_craters(both.drop(index=k), one)


def test_detect_craters__wide_bowl_shaded_as_the_sun_predicts_is_found_against_dark_ground(
    tmp_path,
) -> None:
    # a generated site (seed 1012, no misregistration) where dark ground lies against an
    # 11.6 m bowl's rim: its ring is not brighter than its floor all round (enclosure 0.16),
    # which scores it under the threshold; its walls show the full dipole the sun predicts
    # and its floor is smooth, so the shaded-bowl rule keeps it
    _, crater, found = _generated_site_finder(tmp_path, 1012, 11.58)
    off, hit_off = found(CraterParams(shaded_bowl=(0.0, 0.3)))
    assert crater not in hit_off
    on, hit_on = found(CraterParams())
    assert crater in hit_on
    k = hit_on[crater]
    p = CraterParams()
    assert on.enclosure[k] < p.enclosure_ramp[1] and on.texture[k] <= p.shaded_bowl[0]
    assert on.diameter_m[k] == pytest.approx(11.58, rel=0.1)
    # every other detection is the same crater
    _assert_same_craters(on.drop(index=k), off)
    # a rougher floor than the rule allows: not kept
    assert crater not in found(CraterParams(shaded_bowl=(0.5 * float(on.texture[k]), 0.3)))[1]
    # the elevation unknown, the dipole the bowl should show is not known: no rule
    assert crater not in found(sun_elevation_deg=None)[1]
