"""Damage per footprint and per region: known answers, chunked equals in-memory, bad input."""

from __future__ import annotations

import math

import dask.array as da
import geopandas as gpd
import numpy as np
import pytest
import rioxarray  # noqa: F401 - registers .rio
import xarray as xr
from shapely.geometry import box

from changedet.damage import (
    DamageParams,
    _corner_variance,
    _gauss_mean,
    assess_damage,
    damage_evidence,
    damaged_regions,
    evidence_halo_px,
)
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
    # Shares are known on the interiors shrunk by the 0.5 m edge buffer alone; classes by share
    # alone (the area rule would make the 36 m² of the "possible" roof moderate: next test).
    params = DamageParams(edge_fraction=0.0, moderate_area_m2=math.inf)
    out = assess_damage(score, fp, threshold=0.5, params=params)
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


def test_assess_damage__large_damaged_area_is_moderate_whatever_the_share() -> None:
    score, fp, _ = _scene()
    out = assess_damage(score, fp, threshold=0.5, params=DamageParams(edge_fraction=0.0))
    row = out.set_index("id").loc["possible"]
    # 10 % of a 19 m × 19 m interior is 36 m² of damaged roof: more than a roof hole.
    assert row["damaged_m2"] == pytest.approx(0.10 * 19 * 19, abs=0.5 * 19 * GSD)
    assert row["damage_class"] == "moderate"
    small = assess_damage(
        score, fp, threshold=0.5, params=DamageParams(edge_fraction=0.0, moderate_area_m2=40.0)
    )
    assert small.set_index("id").loc["possible", "damage_class"] == "possible"


def test_damage_params__classify_combines_share_and_area() -> None:
    p = DamageParams()
    assert p.classify(0.02, 1.0, damaged_m2=p.moderate_area_m2) == "moderate"
    assert p.classify(0.02, 1.0, damaged_m2=p.moderate_area_m2 - 0.5) == "no visible damage"
    assert p.classify(0.07, 1.0, damaged_m2=1.0) == "possible"
    assert p.classify(0.5, 1.0, damaged_m2=1.0) == "severe"  # area never lowers a class
    assert p.classify(0.9, 0.2, damaged_m2=500.0) == "not assessable"


@pytest.mark.parametrize("chunks", [(37, 41), (200, 23), (61, 240)])
def test_assess_damage__dask_equals_numpy(chunks: tuple[int, int]) -> None:
    score, fp, _ = _scene()
    eager = assess_damage(score, fp, threshold=0.5)
    lazy_score = score.copy(data=da.from_array(score.values, chunks=chunks))
    lazy = assess_damage(lazy_score, fp, threshold=0.5)
    for col in (
        "damage_class",
        "damaged_share",
        "edge_damaged_share",
        "mean_score",
        "assessable_share",
        "n_pixels",
    ):
        assert lazy[col].tolist() == eager[col].tolist()


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
    with pytest.raises(ValueError, match="severe_edge_share <= destroyed_edge_share"):
        DamageParams(severe_edge_share=0.6, destroyed_edge_share=0.5)


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


@pytest.mark.parametrize("kind", ["rubble", "shadow", "roof_object"])
def test_damaged_regions__image_evidence_keeps_rubble_drops_shadows(kind: str) -> None:
    before, after = _pair(kind)
    score = xr.zeros_like(before.isel(band=0, drop=True)) + 0.9  # the score alone says damaged
    regions = damaged_regions(score, threshold=0.5, before=before, after=after, value_range=255)
    if kind == "rubble":  # on the 20 m × 20 m roof (to within a 2 m cell), most of it
        roof = _roof(before).geometry.iloc[0]
        assert regions.geometry.within(roof.buffer(2.0)).all()
        assert 0.5 * roof.area <= regions["area_m2"].sum() <= roof.area
        lazy = damaged_regions(
            score.chunk({"y": 37, "x": 41}),
            threshold=0.5,
            before=before.chunk({"band": -1, "y": 37, "x": 41}),
            after=after.chunk({"band": -1, "y": 37, "x": 41}),
            value_range=255,
        )
        assert lazy["area_m2"].tolist() == regions["area_m2"].tolist()
    else:
        assert regions.empty


def test_damaged_regions__empty_scene() -> None:
    out = damaged_regions(_score(), threshold=0.5)
    assert out.empty and out.crs == "EPSG:32637"


# --- image evidence: moved shadows are not damage, rubble is ------------------------------------


def _pair(kind: str, shape: tuple[int, int] = (120, 130)) -> tuple[xr.DataArray, xr.DataArray]:
    """Before/after 8-bit RGB of a 20 m × 20 m roof (rows/cols 30-70) on textured ground.

    ``kind``: ``"intact"`` (noise only), ``"shadow"`` (a neighbour's shadow darkens the roof's
    southern half, bluish, texture kept), ``"rubble"`` (blocky, multi-coloured debris over the
    roof), ``"shift"`` (the whole after image moved by 0.2 px: residual misregistration),
    ``"roof_object"`` (a 2 m water tank on the roof whose shadow turns from 1 m south-east to
    3.5 m west: the sun moved), ``"hole"`` (a dark hole of 1.25 m radius with rubble to
    2.5 m round it, in the middle of the roof), ``"collapse"`` (a plain roof, no texture but
    the sensor noise, replaced by rubble with patches of dust, spilling 2 m beyond the walls:
    the building is down), ``"big_hole"`` (a hole of 3 m radius with debris to 6.5 m, on the
    roof's middle: most of the roof is damaged, but 2.5 m of roof stand all round along the
    walls).
    """
    from scipy import ndimage

    rng = np.random.default_rng(7)
    ny, nx = shape

    def smooth_noise(sigma: float, amp: float) -> np.ndarray:
        z = ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma)
        return amp * z / z.std()

    ground = np.array([120.0, 110.0, 95.0])[:, None, None] * (1 + smooth_noise(3, 0.08))
    roof = np.array([170.0, 150.0, 140.0])[:, None, None] * (
        1 + smooth_noise(2, 0.03) + smooth_noise(0.7, 0.02)
    )
    if kind == "collapse":  # a plain slab: no texture above the sensor noise
        roof = np.array([170.0, 150.0, 140.0])[:, None, None] * np.ones((1, *shape))
    inside = np.zeros(shape, bool)
    inside[30:70, 30:70] = True
    before = np.where(inside, roof, ground)
    after = before.copy()
    if kind == "shadow":
        shade = np.zeros(shape, bool)
        shade[50:75, 25:75] = True  # half the roof and the ground south of it
        factor = np.array([0.45, 0.48, 0.56])[:, None, None]  # darker, a little bluish
        after = np.where(shade, after * factor, after)
    elif kind == "rubble":
        blocks = rng.uniform(0.45, 1.3, (ny // 3 + 1, nx // 3 + 1, 3))
        blocks = np.kron(blocks, np.ones((3, 3, 1)))[:ny, :nx].transpose(2, 0, 1)
        voids = np.kron(rng.random((ny // 2 + 1, nx // 2 + 1)) > 0.75, np.ones((2, 2)))
        debris = np.array([140.0, 130.0, 115.0])[:, None, None] * blocks
        debris = np.where(voids[:ny, :nx], 45.0, debris)
        after = np.where(inside, debris, after)
    elif kind == "collapse":
        blocks = rng.uniform(0.45, 1.3, (ny // 3 + 1, nx // 3 + 1, 3))
        blocks = np.kron(blocks, np.ones((3, 3, 1)))[:ny, :nx].transpose(2, 0, 1)
        voids = np.kron(rng.random((ny // 2 + 1, nx // 2 + 1)) > 0.75, np.ones((2, 2)))
        debris = np.array([140.0, 130.0, 115.0])[:, None, None] * blocks
        debris = np.where(voids[:ny, :nx], 45.0, debris)
        dust = smooth_noise(4, 1.0) > 1.3  # patches of fine dust: smooth, a little darker
        debris = np.where(dust, np.array([150.0, 138.0, 125.0])[:, None, None], debris)
        pile = np.zeros(shape, bool)
        pile[26:74, 26:74] = True  # 2 m beyond the walls
        after = np.where(pile, debris, after)
    elif kind in ("hole", "big_hole"):
        # a dark hole (void) inside a disc of debris: (centre px, debris radius m, void radius m)
        centre, r_debris, r_void = (50.0, 2.5, 1.25) if kind == "hole" else (49.5, 6.5, 3.0)
        yy, xx = np.mgrid[:ny, :nx]
        dist_m = np.hypot(yy - centre, xx - centre) * GSD
        blocks = rng.uniform(0.45, 1.3, (ny // 2 + 1, nx // 2 + 1))
        debris = 140.0 * np.kron(blocks, np.ones((2, 2)))[:ny, :nx] + np.zeros((3, 1, 1))
        after = np.where(dist_m < r_debris, debris, after)
        after = np.where(dist_m < r_void, 30.0, after)
    elif kind == "shift":
        after = np.stack([ndimage.shift(b, (0.2, -0.2), order=3, mode="nearest") for b in before])
    elif kind == "roof_object":
        tank = np.array([215.0, 215.0, 220.0])[:, None, None]
        factor = np.array([0.40, 0.42, 0.50])[:, None, None]  # shadow: darker, a little bluish
        before[:, 46:48, 48:52] *= factor  # short shadow below ...
        before[:, 44:48, 52:54] *= factor  # ... and right of the tank (high sun, north-west)
        after[:, 44:48, 41:48] *= factor  # long shadow to the left (low sun in the east)
        before[:, 44:48, 48:52] = tank
        after[:, 44:48, 48:52] = tank
    noise = rng.normal(0, 1.5, (2, 3, ny, nx))
    x0, y_top = 500_000.0, 4_000_000.0
    coords = {
        "band": [1, 2, 3],
        "y": y_top - GSD * (np.arange(ny) + 0.5),
        "x": x0 + GSD * (np.arange(nx) + 0.5),
    }

    def da_(v: np.ndarray) -> xr.DataArray:
        v = np.clip(v, 0, 254).astype("float32")
        return xr.DataArray(v, dims=("band", "y", "x"), coords=coords).rio.write_crs("EPSG:32637")

    return da_(before + noise[0]), da_(after + noise[1])


def _roof(before: xr.DataArray) -> gpd.GeoDataFrame:
    x, y = before.x.values, before.y.values
    geom = box(x[30] - GSD / 2, y[69] - GSD / 2, x[69] + GSD / 2, y[30] + GSD / 2)
    return gpd.GeoDataFrame({"id": ["roof"]}, geometry=[geom], crs="EPSG:32637")


def _assess_pair(kind: str) -> gpd.GeoDataFrame:
    before, after = _pair(kind)
    score = xr.zeros_like(before.isel(band=0, drop=True)) + 0.9  # the score alone says damaged
    return assess_damage(
        score, _roof(before), threshold=0.5, before=before, after=after, value_range=255
    )


@pytest.mark.parametrize("kind", ["intact", "shadow", "shift", "roof_object"])
def test_assess_damage__shadow_and_misregistration_are_not_damage(kind: str) -> None:
    out = _assess_pair(kind)
    assert out["damaged_share"].iloc[0] < 0.05
    assert out["damaged_m2"].iloc[0] < 2.0  # not even one blob of min_extent_m radius
    assert out["damage_class"].iloc[0] == "no visible damage"


def test_assess_damage__rubble_is_destroyed() -> None:
    out = _assess_pair("rubble")
    assert out["damaged_share"].iloc[0] > 0.6
    assert out["damage_class"].iloc[0] == "destroyed"


def test_assess_damage__roof_hole_with_debris_is_moderate() -> None:
    out = _assess_pair("hole").iloc[0]
    # Hole and debris: π 2.5² ≈ 20 m², a few % of the 18 m × 18 m interior counted: the share
    # alone says "possible", the damaged area says a hole.
    assert DamageParams().moderate_area_m2 <= out["damaged_m2"] < 20
    assert out["damaged_share"] < DamageParams().moderate
    assert out["edge_damaged_share"] == 0  # the walls and roof edge stand
    assert out["damage_class"] == "moderate"


def test_assess_damage__collapsed_plain_roof_is_destroyed() -> None:
    # A plain slab has no structure for rubble to decorrelate from: SSIM's structure term
    # (regularised so that a flat window counts as unchanged) called this collapse "no
    # visible damage" (share 0.02); the correlation with a noise floor sees the plain surface
    # gone.
    out = _assess_pair("collapse").iloc[0]
    assert out["damaged_share"] > 0.8
    assert out["edge_damaged_share"] > 0.8  # rubble across the wall line
    assert out["damage_class"] == "destroyed"


def test_assess_damage__debris_inside_standing_walls_is_moderate() -> None:
    out = _assess_pair("big_hole").iloc[0]
    p = DamageParams()
    # Hole and debris: π 6.5² ≈ 133 m² of the 18 m × 18 m interior counted (≈ 0.41): the share
    # alone says "severe"; the roof's 2.5 m edge strip is intact, so the structure stands.
    assert out["damaged_share"] >= p.severe
    assert out["edge_damaged_share"] < p.severe_edge_share
    assert out["damage_class"] == "moderate"
    # Without the image evidence the edge band is not read (the score lights up walls).
    before, after = _pair("big_hole")
    score = xr.zeros_like(before.isel(band=0, drop=True))
    score.values[(damage_evidence(before, after, value_range=255) > 0.5).values] = 0.9
    by_score = assess_damage(score, _roof(before), threshold=0.5).iloc[0]
    assert by_score["damaged_share"] == out["damaged_share"]
    assert by_score["damage_class"] == "severe"


def test_damage_params__standing_walls_lower_the_class() -> None:
    p = DamageParams()
    assert p.classify(0.9, 1.0, edge_share=0.7) == "destroyed"
    assert p.classify(0.9, 1.0, edge_share=0.3) == "severe"  # part of the walls down
    assert p.classify(0.9, 1.0, edge_share=0.1) == "moderate"  # walls stand: holes, debris
    assert p.classify(0.4, 1.0, edge_share=0.1) == "moderate"
    assert p.classify(0.9, 1.0, edge_share=math.nan) == "destroyed"  # no band: share alone
    assert p.classify(0.9, 1.0) == "destroyed"
    assert p.classify(0.1, 1.0, edge_share=0.0) == "possible"  # never lower than by share


def test_corner_variance__edges_are_smooth_texture_is_not() -> None:
    step = np.zeros((20, 20))
    step[:, 10:] = 1.0  # a straight edge
    corner = np.zeros((20, 20))
    corner[8:, 8:] = 1.0  # the corner of a shadow
    assert np.nanmax(_corner_variance(step, 1)) == 0
    # Only the 2 × 2 pixels just inside the corner see texture (the opening removes them).
    assert np.argwhere(_corner_variance(corner, 1) > 0).tolist() == [[8, 8], [8, 9], [9, 8], [9, 9]]
    rough = np.random.default_rng(1).uniform(0, 1, (20, 20))
    whole = _corner_variance(rough, 1)
    assert whole.min() > 0.005
    # A block with a 2-pixel halo gives the whole array's values, bit for bit.
    np.testing.assert_array_equal(
        _corner_variance(rough[3:17, 3:17], 1)[2:-2, 2:-2], whole[5:15, 5:15]
    )
    holed = rough.copy()
    holed[5:8, 5:8] = np.nan
    assert np.isfinite(_corner_variance(holed, 1)).all()  # every window keeps ≥ 2 valid pixels


def test_corner_variance__is_the_second_smallest_window_variance() -> None:
    """Against the definition: the variance of each of the four corner windows (edge pixels
    repeated beyond the array, NaN ignored, fewer than 2 valid pixels: none), second smallest."""
    rng = np.random.default_rng(3)
    img = rng.normal(0.5, 0.2, (13, 17))
    img[4:6, 2:9] = np.nan
    img[0, 0] = np.nan
    for half in (1, 2):
        size = 2 * half + 1
        q = np.pad(img, 2 * half, mode="edge")
        expected = np.full(img.shape, np.nan)
        for r in range(img.shape[0]):
            for c in range(img.shape[1]):
                var = []
                for dy in (0, 2 * half):
                    for dx in (0, 2 * half):
                        w = q[r + dy : r + dy + size, c + dx : c + dx + size]
                        w = w[np.isfinite(w)]
                        var.append(w.var() if len(w) >= 2 else np.inf)
                v = sorted(var)[1]
                expected[r, c] = v if np.isfinite(v) else np.nan
        np.testing.assert_allclose(_corner_variance(img, half), expected, rtol=1e-9, atol=1e-15)


def test_gauss_mean__equals_the_change_stage_gaussian_bit_for_bit() -> None:
    from changedet.change import _gauss_nan

    rng = np.random.default_rng(4)
    img = rng.normal(0.5, 0.2, (60, 70))
    holed = img.copy()
    holed[rng.uniform(size=img.shape) < 0.2] = np.nan
    wide_hole = img.copy()
    wide_hole[:40] = np.nan  # no valid neighbour deep inside: NaN
    for a in (img, holed, wide_hole):
        dens: list[tuple[np.ndarray | None, np.ndarray, bool]] = []
        for b in (a, a * a, a, a * img):  # a mask seen before is reused
            np.testing.assert_array_equal(_gauss_mean(b, 1.5, 3.5, dens), _gauss_nan(b, 1.5, 3.5))
        assert len(dens) <= 2


def test_evidence_halo_px__is_the_halo_damage_evidence_uses() -> None:
    before, after = _pair("rubble")
    for params in (DamageParams(), DamageParams(window_sigma_m=2.0, fill_gap_m=0.0)):
        ev = damage_evidence(before, after, params, value_range=255)
        assert evidence_halo_px(params, GSD) == ev.attrs["halo_px"]


def test_damage_evidence__shadow_interior_and_edge_are_clean() -> None:
    before, after = _pair("shadow")
    ev = damage_evidence(before, after, value_range=255).values
    assert np.nanmax(ev[55:70, 30:70]) == 0  # the shadowed half: darker, same texture
    assert np.nanmax(ev[30:45, 30:70]) == 0  # the sunlit half
    # The shadow's straight, high-contrast edge leaves at most a speck (< 2 % of the roof).
    assert np.nanmean(ev[30:70, 30:70]) < 0.02


@pytest.mark.parametrize("chunks", [(37, 41), (120, 23), (61, 130)])
def test_damage_evidence__dask_equals_numpy(chunks: tuple[int, int]) -> None:
    before, after = _pair("rubble")
    eager = damage_evidence(before, after, value_range=255)
    lazy_b = before.chunk({"band": -1, "y": chunks[0], "x": chunks[1]})
    lazy_a = after.chunk({"band": 1, "y": chunks[0], "x": chunks[1]})  # gathered inside
    lazy = damage_evidence(lazy_b, lazy_a, value_range=255)
    assert lazy.chunks is not None
    np.testing.assert_array_equal(lazy.values, eager.values)
    score = xr.zeros_like(before.isel(band=0, drop=True))
    fp = _roof(before)
    out_eager = assess_damage(score, fp, threshold=0.5, before=before, after=after, value_range=255)
    out_lazy = assess_damage(
        score.chunk({"y": chunks[0], "x": chunks[1]}),
        fp,
        threshold=0.5,
        before=lazy_b,
        after=lazy_a,
        value_range=255,
    )
    for col in ("damage_class", "damaged_share", "edge_damaged_share"):
        assert out_lazy[col].tolist() == out_eager[col].tolist()


def test_footprints__interior_margin_scales_with_width() -> None:
    from changedet.damage import _prepare_footprints

    fp = gpd.GeoDataFrame(
        {"id": ["small", "wide"]},
        geometry=[box(0, 0, 4, 4), box(100, 0, 140, 40)],
        crs="EPSG:32637",
    )
    out = _prepare_footprints(fp, fp.crs, 0.5, 0.1)
    # 4 m wide: the 0.5 m buffer wins (3 × 3 m); 40 m wide: 10 % = 4 m each side (32 × 32 m).
    assert out["_count_geom"].area.round(3).tolist() == [9.0, 1024.0]


def test_damage_evidence__from_files_read_haloed_windows_same_values(tmp_path) -> None:
    """Rasters opened with open_raster: every block reads its haloed windows from the files
    (bounded memory); the evidence is exactly that of map_overlap, chunks smaller than the
    halo included (300 rows in chunks of 97: the last one, 9 rows, takes 6 from its
    neighbour, the halo being 15 px)."""
    from changedet.testing import make_pair, stored_pair

    before, after, _ = make_pair((3, 300, 340), shift_px=(0, 0), seed=6)
    after = after.where(after.x < after.x[300])  # a nodata block
    b, a = stored_pair(before, after, tmp_path, chunks=97)
    windowed = damage_evidence(b, a, value_range=255)
    assert windowed.attrs["halo_px"] == 15 and windowed.chunks[0][-2:] == (91, 15)
    assert any(str(k[0]).startswith("haloed-") for k in dict(windowed.data.dask))
    overlap = damage_evidence(b.copy(data=b.data + 0), a.copy(data=a.data + 0), value_range=255)
    assert not any(str(k[0]).startswith("haloed-") for k in dict(overlap.data.dask))
    assert windowed.chunks == overlap.chunks
    np.testing.assert_array_equal(windowed.values, overlap.values)


def test_damage_job__sparse_block_counts_give_the_dense_table() -> None:
    """Per block only the footprints it touches are returned and held (a dense 6 × footprints
    array per block held 1.2 GB at 16384²); the table is the same, value for value."""
    import dask
    from geopandas.testing import assert_geodataframe_equal

    from changedet.damage import _plan_damage

    score, fp, _ = _scene()
    lazy = score.copy(data=da.from_array(score.values, chunks=(37, 41)))
    job = _plan_damage(lazy, fp, threshold=0.5)
    sparse = job.compute()
    assert all(isinstance(c, tuple) and c[1].shape[1] < len(fp) + 1 for c in sparse)
    (inputs,) = dask.compute(job.block_inputs())
    dense = job.count(inputs)
    assert_geodataframe_equal(job.table(sparse), job.table(dense))
