"""Write a synthetic site: grids, window-by-window rasters, GeoJSON layers and ground truth."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from changedet import __version__
from changedet._atomic import atomic_path, sha256_file, write_json_atomic
from changedet._synth_events import clear_radius
from changedet._synth_layout import DAMAGE_CLASSES, Layout, build_layout
from changedet._synth_noise import block_quantize, gaussian_pixels, value_noise
from changedet._synth_render import render_scene

_ANCHOR = 32  # after-grid pixels between exact pyproj transforms (bilinear in between)
_HAZE_TINT = np.array([0.85, 0.95, 1.15, 0.6], np.float32)
_ON = ("building", "road", "open")


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, GDAL-order geotransform ``(x0, gsd, 0, y0, 0, -gsd)`` and shape."""

    crs: str
    x0: float
    y0: float
    gsd: float
    rows: int
    cols: int

    @property
    def transform(self) -> Any:
        from rasterio.transform import Affine

        return Affine(self.gsd, 0.0, self.x0, 0.0, -self.gsd, self.y0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0 - self.rows * self.gsd, self.x0 + self.cols * self.gsd, self.y0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "crs": self.crs,
            "transform": list(self.transform)[:6],
            "shape": [self.rows, self.cols],
            "bounds": list(self.bounds),
            "gsd_m": self.gsd,
        }


def before_grid(s: Any) -> Grid:
    x0, y0 = s.origin_xy
    return Grid(s.crs, x0, y0, s.gsd_m, s.shape[0], s.shape[1])


def after_grid(s: Any) -> Grid:
    from pyproj import CRS
    from rasterio.warp import transform_bounds

    b = before_grid(s)
    crs = s.after_crs or s.crs
    gsd = s.after_gsd_m or s.gsd_m
    if CRS.from_user_input(crs) == CRS.from_user_input(s.crs):
        left, bottom, right, top = b.bounds
    else:
        left, bottom, right, top = transform_bounds(s.crs, crs, *b.bounds, densify_pts=101)
    left, top = math.floor(left / gsd) * gsd, math.ceil(top / gsd) * gsd
    cols = math.ceil(round((right - left) / gsd, 6))
    rows = math.ceil(round((top - bottom) / gsd, 6))
    return Grid(crs, left, top, gsd, rows, cols)


class AfterMap:
    """Maps after-grid pixels to the before-grid pixel of their claimed ground point, and to the
    scene metres of the ground point they really show (through the misregistration)."""

    def __init__(self, s: Any, before: Grid, after: Grid) -> None:
        from pyproj import CRS, Transformer

        from changedet.synthetic import misregistration_matrix

        self.s, self.b, self.a = s, before, after
        self.same = CRS.from_user_input(after.crs) == CRS.from_user_input(before.crs)
        self.tr = None if self.same else Transformer.from_crs(after.crs, before.crs, always_xy=True)
        m = misregistration_matrix(s)
        self.ainv = np.linalg.inv(m[:, :2])
        self.t = m[:, 2]

    def claimed_px(
        self, rows: NDArray[Any], cols: NDArray[Any]
    ) -> tuple[NDArray[Any], NDArray[Any]]:
        """Before-grid (col, row) of the ground point each after pixel claims (its georeference)."""
        a, b = self.a, self.b
        if self.same:
            x = a.x0 + (cols[None, :] + 0.5) * a.gsd + 0 * rows[:, None]
            y = a.y0 - (rows[:, None] + 0.5) * a.gsd + 0 * cols[None, :]
        else:
            lo_r, lo_c = _ANCHOR * (rows[0] // _ANCHOR), _ANCHOR * (cols[0] // _ANCHOR)
            ar = np.arange(lo_r, _ANCHOR * (rows[-1] // _ANCHOR + 1) + 1, _ANCHOR)
            ac = np.arange(lo_c, _ANCHOR * (cols[-1] // _ANCHOR + 1) + 1, _ANCHOR)
            gx = a.x0 + (ac[None, :] + 0.5) * a.gsd + 0 * ar[:, None]
            gy = a.y0 - (ar[:, None] + 0.5) * a.gsd + 0 * ac[None, :]
            assert self.tr is not None
            px, py = self.tr.transform(gx, gy)
            px, py = np.asarray(px), np.asarray(py)
            kr, fr = (rows - lo_r) // _ANCHOR, ((rows - lo_r) % _ANCHOR) / _ANCHOR
            kc, fc = (cols - lo_c) // _ANCHOR, ((cols - lo_c) % _ANCHOR) / _ANCHOR
            fr, fc = fr[:, None], fc[None, :]

            def lerp(g: NDArray[Any]) -> NDArray[Any]:
                top = g[kr][:, kc] * (1 - fc) + g[kr][:, kc + 1] * fc
                bot = g[kr + 1][:, kc] * (1 - fc) + g[kr + 1][:, kc + 1] * fc
                return top * (1 - fr) + bot * fr

            x, y = lerp(px), lerp(py)
        return (x - b.x0) / b.gsd - 0.5, (b.y0 - y) / b.gsd - 0.5

    def scene_uv(self, rows: NDArray[Any], cols: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
        """Scene metres (u, v) of the ground point really shown by each after pixel."""
        qc, qr = self.claimed_px(rows, cols)
        dc, dr = qc - self.t[0], qr - self.t[1]
        pc = self.ainv[0, 0] * dc + self.ainv[0, 1] * dr
        pr = self.ainv[1, 0] * dc + self.ainv[1, 1] * dr
        return (pc + 0.5) * self.b.gsd, (pr + 0.5) * self.b.gsd


def _sensor(
    rho: NDArray[np.float32],
    U: NDArray[Any],
    V: NDArray[Any],
    rows: NDArray[Any],
    cols: NDArray[Any],
    s: Any,
    after: bool,
) -> NDArray[Any]:
    """Reflectance -> digital numbers: haze, gain/offset/gamma, noise, 8x8 block quantisation."""
    from changedet.synthetic import _FULL_SCALE

    nb, full = s.bands, _FULL_SCALE[s.dtype]
    x = rho[..., :nb]
    haze = (s.haze_after if after else s.haze_before) * (
        0.55 + 0.45 * value_noise(U, V, 700.0, s.seed * 31 + 3 + after)
    )
    x = x + haze[..., None] * _HAZE_TINT[:nb]
    if after:
        g = np.array(s.gain_after[:nb], np.float32)
        o = np.array(s.offset_after[:nb], np.float32)
        x = np.clip(g * x + o, 0.0, 1.0) ** np.array(s.gamma_after[:nb], np.float32)
    x = x * np.float32(full)
    r2, c2 = np.broadcast_arrays(rows[:, None], cols[None, :])
    for band in range(nb):
        x[..., band] += np.float32(s.noise_sigma * full) * gaussian_pixels(
            c2, r2, s.seed * 131 + 17 * band + 5 * after
        )
    x = block_quantize(x.astype(np.float32), s.jpeg_strength, full)
    return np.round(np.clip(x, 0, full)).astype(s.dtype)


def _render_before(
    lay: Layout, s: Any, g: Grid, rows: NDArray[Any], cols: NDArray[Any]
) -> NDArray[Any]:
    U = (cols[None, :] + 0.5) * g.gsd + 0.0 * rows[:, None]
    V = (rows[:, None] + 0.5) * g.gsd + 0.0 * cols[None, :]
    rho = render_scene(lay, s, U, V, g.gsd, "before")
    return _sensor(rho, U, V, rows, cols, s, after=False)


def _render_after(
    lay: Layout, s: Any, amap: AfterMap, rows: NDArray[Any], cols: NDArray[Any]
) -> NDArray[Any]:
    U, V = amap.scene_uv(rows, cols)
    h, w = U.shape
    ju, iu = (U[0, -1] - U[0, 0]) / max(w - 1, 1), (U[-1, 0] - U[0, 0]) / max(h - 1, 1)
    jv, iv = (V[0, -1] - V[0, 0]) / max(w - 1, 1), (V[-1, 0] - V[0, 0]) / max(h - 1, 1)
    pix = math.sqrt(abs(ju * iv - iu * jv))
    rho = render_scene(lay, s, U, V, pix, "after")
    return _sensor(rho, U, V, rows, cols, s, after=True)


_RENDER: Any = None  # the window renderer, set before forking worker processes


def _render_window(args: tuple[int, int, int, int]) -> NDArray[Any]:
    r0, r1, c0, c1 = args
    rows = np.arange(r0, 8 * math.ceil(r1 / 8), dtype=np.int64)  # whole 8x8 blocks
    cols = np.arange(c0, 8 * math.ceil(c1 / 8), dtype=np.int64)
    return np.ascontiguousarray(_RENDER(rows, cols)[: r1 - r0, : c1 - c0].transpose(2, 0, 1))


def _write_raster(
    path: Path, g: Grid, s: Any, render: Any, band_names: list[str], window_px: int, workers: int
) -> None:
    """Render ``g`` window by window (optionally in forked worker processes) into a tiled,
    DEFLATE-compressed GeoTIFF, written atomically. At most ``2 * workers`` windows are in flight."""
    import multiprocessing as mp
    from collections import deque

    import rasterio
    from rasterio.windows import Window

    global _RENDER
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": g.cols,
        "height": g.rows,
        "count": s.bands,
        "dtype": s.dtype,
        "crs": g.crs,
        "transform": g.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
        "zlevel": 6,
        "interleave": "pixel",
    }
    if s.bands == 3:
        profile["photometric"] = "RGB"
    wins = [
        (r0, min(r0 + window_px, g.rows), c0, min(c0 + window_px, g.cols))
        for r0 in range(0, g.rows, window_px)
        for c0 in range(0, g.cols, window_px)
    ]
    _RENDER = render
    pool = None
    if workers > 1 and len(wins) > 1 and "fork" in mp.get_all_start_methods():
        pool = mp.get_context("fork").Pool(min(workers, len(wins)))
    try:
        with (
            atomic_path(path) as tmp,
            rasterio.Env(GDAL_CACHEMAX=16),
            rasterio.open(tmp, "w", **profile) as dst,
        ):
            pending: deque[tuple[tuple[int, int, int, int], Any]] = deque()
            todo = iter(wins)
            while True:
                while (
                    pool is not None
                    and len(pending) < 2 * workers
                    and (w := next(todo, None)) is not None
                ):
                    pending.append((w, pool.apply_async(_render_window, (w,))))
                if pool is None:
                    w = next(todo, None)
                    if w is None:
                        break
                    win, block = w, _render_window(w)
                elif pending:
                    win, res = pending.popleft()
                    block = res.get()
                else:
                    break
                r0, r1, c0, c1 = win
                dst.write(block, window=Window(c0, r0, c1 - c0, r1 - r0))
            for i, name in enumerate(band_names[: s.bands]):
                dst.set_band_description(i + 1, name)
            dst.update_tags(generator=f"changedet.synthetic {__version__}", seed=str(s.seed))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _RENDER = None


def _layout_extent(s: Any, b: Grid, amap: AfterMap) -> tuple[float, float, float, float]:
    a = amap.a
    edge_r = np.unique(np.linspace(0, a.rows - 1, 65).round().astype(np.int64))
    edge_c = np.unique(np.linspace(0, a.cols - 1, 65).round().astype(np.int64))
    U, V = amap.scene_uv(edge_r, edge_c)
    m = 40.0
    return (
        min(0.0, float(U.min())) - m,
        max(b.cols * b.gsd, float(U.max())) + m,
        min(0.0, float(V.min())) - m,
        max(b.rows * b.gsd, float(V.max())) + m,
    )


def _feature(geom: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geom, "properties": props}


def _write_geojson(path: Path, name: str, feats: Any) -> int:
    """Stream a FeatureCollection to ``path`` atomically, one feature a line; returns the count."""
    import json

    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"type": "FeatureCollection", "name": ' + json.dumps(name) + ', "features": [')
        for f in feats:
            fh.write(("\n" if n == 0 else ",\n") + json.dumps(f, sort_keys=True))
            n += 1
        fh.write("\n]}\n")
    return n


def _lonlat(s: Any, b: Grid) -> Any:
    """``ll(u, v)``: scene metres (east, south of the before grid's corner) to rounded lon/lat."""
    from pyproj import Transformer

    to_ll = Transformer.from_crs(s.crs, "EPSG:4326", always_xy=True)

    def ll(u: NDArray[Any], v: NDArray[Any]) -> list[list[float]]:
        lon, lat = to_ll.transform(b.x0 + np.asarray(u), b.y0 - np.asarray(v))
        return [
            [round(float(x), 9), round(float(y), 9)]
            for x, y in zip(np.atleast_1d(lon), np.atleast_1d(lat), strict=True)
        ]

    return ll


def _write_roads(out: Path, lay: Any, b: Grid, ll: Any) -> None:
    """``roads.geojson``: the centre lines of the roads that reach the before scene."""
    sw, sh = b.cols * b.gsd, b.rows * b.gsd
    rd = lay.roads
    rd_in = np.nonzero(
        (np.maximum(rd["u0"], rd["u1"]) > -rd["w"])
        & (np.minimum(rd["u0"], rd["u1"]) < sw + rd["w"])
        & (np.maximum(rd["v0"], rd["v1"]) > -rd["w"])
        & (np.minimum(rd["v0"], rd["v1"]) < sh + rd["w"])
    )[0]
    road_feats = [
        _feature(
            {
                "type": "LineString",
                "coordinates": ll([rd["u0"][k], rd["u1"][k]], [rd["v0"][k], rd["v1"][k]]),
            },
            {
                "width_m": round(float(rd["w"][k]), 2),
                "surface": "unpaved" if rd["kind"][k] else "asphalt",
            },
        )
        for k in rd_in
    ]
    _write_geojson(out / "roads.geojson", "roads", road_feats)


def write_roads(out: Path, s: Any) -> Path:
    """Write only ``roads.geojson`` of the site of settings ``s`` into ``out`` (no rendering).

    For sites generated before the roads were written: the layout, hence the roads, are the
    same as :func:`write_site` draws (the layout depends on the settings alone).
    """
    b = before_grid(s)
    lay = build_layout(s, _layout_extent(s, b, AfterMap(s, b, after_grid(s))))
    out.mkdir(parents=True, exist_ok=True)
    _write_roads(out, lay, b, _lonlat(s, b))
    return out / "roads.geojson"


def write_site(out: Path, s: Any, window_px: int = 512, workers: int = 1) -> Path:
    """Generate the site for settings ``s`` into ``out`` (see ``changedet.synthetic``)."""
    from shapely.geometry import Point, Polygon

    from changedet.synthetic import misregistration_matrix

    out.mkdir(parents=True, exist_ok=True)
    b, a = before_grid(s), after_grid(s)
    amap = AfterMap(s, b, a)
    lay = build_layout(s, _layout_extent(s, b, amap))
    names = ["red", "green", "blue", "nir"]
    _write_raster(
        out / "before.tif",
        b,
        s,
        lambda r, c: _render_before(lay, s, b, r, c),
        names,
        window_px,
        workers,
    )
    _write_raster(
        out / "after.tif",
        a,
        s,
        lambda r, c: _render_after(lay, s, amap, r, c),
        names,
        window_px,
        workers,
    )

    sw, sh = b.cols * b.gsd, b.rows * b.gsd
    ll = _lonlat(s, b)

    bd = lay.buildings
    keep = np.nonzero((bd["cu"] > 0) & (bd["cu"] < sw) & (bd["cv"] > 0) & (bd["cv"] < sh))[0]
    keep = keep[np.argsort(bd["id"][keep], kind="stable")]
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) / 2

    def ring_uv(k: int) -> tuple[NDArray[Any], NDArray[Any]]:
        x, y = corners[:, 0] * bd["w"][k], corners[:, 1] * bd["l"][k]
        c, sn = math.cos(bd["th"][k]), math.sin(bd["th"][k])
        return bd["cu"][k] + x * c - y * sn, bd["cv"][k] + x * sn + y * c

    def polygon(k: int) -> dict[str, Any]:
        ring = ll(*ring_uv(k))
        area2 = sum(
            p[0] * q[1] - q[0] * p[1] for p, q in zip(ring, ring[1:] + ring[:1], strict=True)
        )
        if area2 < 0:  # RFC 7946: exterior rings counter-clockwise
            ring = ring[::-1]
        return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}

    fac_of = {f["building_id"]: f["id"] for f in lay.facilities}

    def building_features(with_new: bool) -> Any:
        for k in keep:
            new = not bool(bd["before"][k])
            if new and not with_new:
                continue
            props: dict[str, Any] = {"id": f"B{int(bd['id'][k]):06d}"}
            if with_new:
                props.update(
                    {
                        "damage": DAMAGE_CLASSES[int(bd["dmg"][k])],
                        "new_construction": new,
                        "burnt": bool(bd["burnt"][k]),
                        "height_m": round(float(bd["h"][k]), 2),
                        "facility_id": fac_of.get(int(bd["id"][k])),
                    }
                )
            else:
                props["building"] = "yes"
            yield _feature(polygon(int(k)), props)

    cr = lay.craters
    order = np.argsort(cr["id"], kind="stable")
    crater_feats = []
    m = misregistration_matrix(s)
    for k in order:
        u, v = float(cr["cu"][k]), float(cr["cv"][k])
        col, row = u / b.gsd - 0.5, v / b.gsd - 0.5
        crater_feats.append(
            _feature(
                {"type": "Point", "coordinates": ll(u, v)[0]},
                {
                    "id": f"C{int(cr['id'][k]) + 1:04d}",
                    "diameter_m": round(2 * float(cr["r"][k]), 3),
                    "on": _ON[int(cr["on"][k])],
                    "x": round(b.x0 + u, 3),
                    "y": round(b.y0 - v, 3),
                    "col_px": round(col, 3),
                    "row_px": round(row, 3),
                    "after_col_px": round(float(m[0, 0] * col + m[0, 1] * row + m[0, 2]), 3),
                    "after_row_px": round(float(m[1, 0] * col + m[1, 1] * row + m[1, 2]), 3),
                },
            )
        )

    by_id = {int(bd["id"][k]): int(k) for k in range(len(bd))}
    fac_feats, fac_truth = [], []
    hit_m = clear_radius(s)
    pts = [Point(b.x0 + u, b.y0 - v) for u, v in zip(cr["cu"], cr["cv"], strict=True)]
    for f in lay.facilities:
        k = by_id[f["building_id"]]
        fac_feats.append(
            _feature(polygon(k), {"id": f["id"], "name": f["name"], "type": f["type"]})
        )
        uu, vv = ring_uv(k)
        poly = Polygon(list(zip(b.x0 + uu, b.y0 - vv, strict=True)))
        dist = sorted(poly.distance(p) for p in pts)
        dmg = DAMAGE_CLASSES[int(bd["dmg"][k])]
        near = dist[0] if dist else None
        fac_truth.append(
            {
                "id": f["id"],
                "name": f["name"],
                "type": f["type"],
                "building_id": f"B{f['building_id']:06d}",
                "damage": dmg,
                "nearest_crater_m": None if near is None else round(near, 2),
                "craters_within_50m": sum(d <= 50 for d in dist),
                "craters_within_100m": sum(d <= 100 for d in dist),
                "craters_within_250m": sum(d <= 250 for d in dist),
                "hit": bool((near is not None and near <= hit_m) or dmg != "none"),
            }
        )

    _write_geojson(out / "facilities.geojson", "facilities", fac_feats)
    n_foot = _write_geojson(out / "footprints.geojson", "footprints", building_features(False))
    _write_roads(out, lay, b, ll)
    _write_geojson(out / "truth" / "craters.geojson", "craters", crater_feats)
    _write_geojson(out / "truth" / "damage.geojson", "damage", building_features(True))
    mis = {
        "model": "affine",
        "matrix": [[float(x) for x in row] for row in m],
        "shift_px": [float(x) for x in s.shift_px],
        "rotation_deg": float(s.rotation_deg),
        "scale": float(s.scale),
        "center_px": list(s.to_dict()["center_px"]),
        "before_crs": s.crs,
        "before_gsd_m": float(s.gsd_m),
        "after_crs": a.crs,
        "after_gsd_m": float(a.gsd),
        "description": (
            "matrix maps a before-grid pixel (col, row) (pixel centres) to the (col, row) on the before "
            "grid where the same ground point appears in the after image once the after image is put "
            "on the before grid using its own georeferencing: q = center + scale * R(rotation) @ "
            "(p - center) + shift, R = [[cos, -sin], [sin, cos]] on (col, row). The after raster's "
            "CRS and geotransform are nominal; the misregistration is in the content."
        ),
    }
    write_json_atomic(out / "truth" / "misregistration.json", mis)
    present = [int(x) for x in bd["dmg"][keep][bd["before"][keep]]]
    counts = {
        "buildings_before": n_foot,
        "new_construction": int((~bd["before"][keep]).sum()),
        "damage": {c: present.count(i) for i, c in enumerate(DAMAGE_CLASSES)},
        "craters": len(crater_feats),
        "craters_on": {o: sum(f["properties"]["on"] == o for f in crater_feats) for o in _ON},
        "cars_before": int(lay.cars["before"].sum()),
        "cars_after": int(lay.cars["after"].sum()),
        "trees": len(lay.trees),
        "facilities": len(fac_feats),
    }
    files = sorted(
        p
        for p in out.rglob("*")
        if p.is_file() and p.name != "scene.json" and not p.name.startswith(".")
    )
    scene = {
        "generator": f"changedet.synthetic {__version__}",
        "settings": s.to_dict(),
        "before_grid": b.to_dict(),
        "after_grid": a.to_dict(),
        "counts": counts,
        "facilities": fac_truth,
        "facility_hit_definition": f"a crater within {hit_m:g} m of the footprint, or the building damaged",
        "files_sha256": {p.relative_to(out).as_posix(): sha256_file(p) for p in files},
    }
    write_json_atomic(out / "truth" / "scene.json", scene)
    return out
