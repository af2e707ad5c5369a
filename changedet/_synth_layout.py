"""Vector layout of a synthetic town: roads, buildings, trees, cars, craters, damage.

Everything is generated once, globally, from the seed, as flat numpy arrays (one row an object),
in *scene metres*: ``u`` east and ``v`` south of the top-left corner of the before raster. The
renderer (``_synth_render``) then draws any window from these lists. Objects are kept sorted by
``v`` so a window can find its objects with a binary search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

DAMAGE_CLASSES = ("none", "possible", "moderate", "severe", "destroyed")
FACILITY_TYPES = ("hospital", "school", "market", "water_plant")
_NAME_WORDS = (
    "Al-Noor",
    "Al-Amal",
    "Al-Salam",
    "Al-Rahma",
    "Al-Huda",
    "Al-Furat",
    "Al-Nahda",
    "Al-Quds",
    "Al-Wafa",
    "Al-Karama",
    "Al-Hikma",
    "Al-Zahra",
    "Al-Shifa",
    "Al-Ihsan",
    "Al-Rashid",
    "Al-Ward",
)
_TYPE_LABEL = {
    "hospital": "Hospital",
    "school": "School",
    "market": "Market",
    "water_plant": "Water Plant",
}

_FLAT_ROOFS = np.array(
    [
        [0.80, 0.74, 0.63],  # beige concrete
        [0.67, 0.66, 0.64],  # light grey
        [0.90, 0.89, 0.86],  # white
        [0.52, 0.51, 0.50],  # dark concrete
        [0.76, 0.67, 0.53],  # sand
        [0.84, 0.80, 0.72],  # cream
    ],
    np.float32,
)
_TILE_ROOF = np.array([0.62, 0.33, 0.25], np.float32)
_CAR_COLOURS = np.array(
    [
        [0.92, 0.92, 0.92],
        [0.70, 0.71, 0.73],
        [0.12, 0.12, 0.13],
        [0.55, 0.12, 0.10],
        [0.15, 0.22, 0.45],
        [0.85, 0.85, 0.80],
        [0.40, 0.40, 0.42],
        [0.80, 0.70, 0.20],
    ],
    np.float32,
)


@dataclass
class Group:
    """A set of objects as named arrays of equal length, sorted by ``cv`` (metres south)."""

    data: dict[str, NDArray[Any]]
    maxrad: float = 0.0

    def __len__(self) -> int:
        return len(self.data["cu"])

    def __getitem__(self, key: str) -> NDArray[Any]:
        return self.data[key]

    def finish(self) -> Group:
        """Sort by ``cv`` and record the largest culling radius ``rad``."""
        order = np.argsort(self.data["cv"], kind="stable")
        self.data = {k: np.ascontiguousarray(a[order]) for k, a in self.data.items()}
        self.maxrad = float(self.data["rad"].max()) if len(self) else 0.0
        return self

    def select(self, umin: float, umax: float, vmin: float, vmax: float) -> NDArray[np.intp]:
        """Indices of objects whose culling disc meets the box (u in [umin, umax], v in [vmin, vmax])."""
        if not len(self):
            return np.zeros(0, np.intp)
        cv = self.data["cv"]
        lo = int(np.searchsorted(cv, vmin - self.maxrad, "left"))
        hi = int(np.searchsorted(cv, vmax + self.maxrad, "right"))
        sl = slice(lo, hi)
        cu, r = self.data["cu"][sl], self.data["rad"][sl]
        ok = (cu + r >= umin) & (cu - r <= umax) & (cv[sl] + r >= vmin) & (cv[sl] - r <= vmax)
        return np.nonzero(ok)[0] + lo


@dataclass
class Layout:
    """The whole scene as object lists (see module docstring for the frame)."""

    buildings: Group
    roads: Group
    trees: Group
    cars: Group
    craters: Group
    veg: Group
    burns: Group
    tanks: Group
    boxes: Group = field(default_factory=lambda: Group({}))
    facilities: list[dict[str, Any]] = field(default_factory=list)


def _group(**arrays: Any) -> Group:
    return Group({k: np.asarray(v) for k, v in arrays.items()}).finish()


def _rect_point_dist(bu, bv, bw, bl, bth, pu, pv):  # type: ignore[no-untyped-def]
    """Distance from points to rotated rectangles (0 inside); arrays broadcast."""
    du, dv = pu - bu, pv - bv
    c, s = np.cos(bth), np.sin(bth)
    x = du * c + dv * s
    y = -du * s + dv * c
    ex = np.maximum(np.abs(x) - bw / 2, 0.0)
    ey = np.maximum(np.abs(y) - bl / 2, 0.0)
    return np.hypot(ex, ey)


class _Roads:
    """Wobbly near-vertical and near-horizontal streets plus a few straight diagonals."""

    def __init__(self, rng: np.random.Generator, ext: tuple[float, float, float, float]) -> None:
        u0, u1, v0, v1 = ext
        self.ext = ext
        self.vx = self._family(rng, u0, u1)  # vertical roads: base u
        self.hy = self._family(rng, v0, v1)  # horizontal roads: base v
        area_km2 = (u1 - u0) * (v1 - v0) / 1e6
        n_diag = max(1, round(area_km2 * 1.2))
        self.diag = []
        for _ in range(n_diag):
            pu, pv = rng.uniform(u0, u1), rng.uniform(v0, v1)
            ang = math.radians(rng.choice([1, -1]) * rng.uniform(25, 65))
            self.diag.append((pu, pv, math.cos(ang), math.sin(ang), rng.uniform(9, 13), 0))

    @staticmethod
    def _family(rng: np.random.Generator, a0: float, a1: float) -> dict[str, NDArray[Any]]:
        base, width, kind, amp, lam, ph = [], [], [], [], [], []
        x = a0 - rng.uniform(0, 60)
        while x < a1 + 60:
            main = rng.random() < 0.15
            base.append(x)
            width.append(rng.uniform(12, 16) if main else rng.uniform(6, 9))
            kind.append(1 if (not main and rng.random() < 0.15) else 0)  # 1 = dirt road
            amp.append(rng.uniform(0, 6))
            lam.append(rng.uniform(400, 1500))
            ph.append(rng.uniform(0, 2 * math.pi))
            x += rng.uniform(60, 135)
        return {
            "base": np.array(base),
            "w": np.array(width),
            "kind": np.array(kind),
            "amp": np.array(amp),
            "lam": np.array(lam),
            "ph": np.array(ph),
        }

    @staticmethod
    def _pos(f: dict[str, NDArray[Any]], k: NDArray[Any], t: NDArray[Any]) -> NDArray[Any]:
        return f["base"][k] + f["amp"][k] * np.sin(2 * np.pi * t / f["lam"][k] + f["ph"][k])

    def clearance(self, u: NDArray[Any], v: NDArray[Any]) -> NDArray[Any]:
        """Distance from points to the nearest road edge (negative on a road)."""
        best = np.full(u.shape, np.inf)
        for f, a, t in ((self.vx, u, v), (self.hy, v, u)):
            k0 = np.searchsorted(f["base"], a)
            for dk in (-2, -1, 0, 1):
                k = np.clip(k0 + dk, 0, len(f["base"]) - 1)
                best = np.minimum(best, np.abs(a - self._pos(f, k, t)) - f["w"][k] / 2)
        for pu, pv, cu, cv, w, _ in self.diag:
            best = np.minimum(best, np.abs(-(u - pu) * cv + (v - pv) * cu) - w / 2)
        return best

    def segments(self, step: float = 20.0) -> Group:
        u0, u1, v0, v1 = self.ext
        cols: dict[str, list[Any]] = {k: [] for k in ("u0", "v0", "u1", "v1", "w", "kind")}

        def add(a: NDArray[Any], b: NDArray[Any], w: float, kind: int) -> None:
            cols["u0"].append(a[:-1, 0]), cols["v0"].append(a[:-1, 1])
            cols["u1"].append(b[1:, 0]), cols["v1"].append(b[1:, 1])
            cols["w"].append(np.full(len(a) - 1, w)), cols["kind"].append(np.full(len(a) - 1, kind))

        tv = np.arange(v0 - 40, v1 + 40 + step, step)
        for k in range(len(self.vx["base"])):
            pu = self._pos(self.vx, np.full(tv.shape, k), tv)
            pts = np.stack([pu, tv], 1)
            add(pts, pts, float(self.vx["w"][k]), int(self.vx["kind"][k]))
        tu = np.arange(u0 - 40, u1 + 40 + step, step)
        for k in range(len(self.hy["base"])):
            pv = self._pos(self.hy, np.full(tu.shape, k), tu)
            pts = np.stack([tu, pv], 1)
            add(pts, pts, float(self.hy["w"][k]), int(self.hy["kind"][k]))
        span = math.hypot(u1 - u0, v1 - v0) + 100
        for pu, pv, cu, cv, w, kind in self.diag:
            t = np.arange(-span, span + step, step)
            pts = np.stack([pu + t * cu, pv + t * cv], 1)
            keep = (
                (pts[:, 0] > u0 - 60)
                & (pts[:, 0] < u1 + 60)
                & (pts[:, 1] > v0 - 60)
                & (pts[:, 1] < v1 + 60)
            )
            if keep.sum() >= 2:
                add(pts[keep], pts[keep], w, kind)
        a = {k: np.concatenate(v) for k, v in cols.items()}
        cu, cv = (a["u0"] + a["u1"]) / 2, (a["v0"] + a["v1"]) / 2
        rad = np.hypot(a["u1"] - a["u0"], a["v1"] - a["v0"]) / 2 + a["w"] / 2 + 1
        return _group(cu=cu, cv=cv, rad=rad, **a)


def build_layout(s: Any, ext: tuple[float, float, float, float]) -> Layout:
    """Generate the vector layout for settings ``s`` over the extent ``ext`` = (u0, u1, v0, v1).

    The before scene covers ``[0, W*gsd] x [0, H*gsd]``; ``ext`` is larger (a margin for the
    misregistered after image). Craters, damage and facilities lie inside the before scene.
    """
    rng = np.random.default_rng([s.seed, 20240517])
    u0, u1, v0, v1 = ext
    sw, sh = s.shape[1] * s.gsd_m, s.shape[0] * s.gsd_m  # scene width/height (m)
    roads = _Roads(rng, ext)
    cell = 15.0
    gap = 1.6
    nx, ny = math.ceil((u1 - u0) / cell), math.ceil((v1 - v0) / cell)
    occ = np.zeros((ny, nx), bool)
    cu_grid = u0 + (np.arange(nx) + 0.5) * cell
    cv_grid = v0 + (np.arange(ny) + 0.5) * cell
    bl: dict[str, list[float]] = {k: [] for k in ("cu", "cv", "w", "l", "th", "h", "fac")}

    def add_building(
        i: int, j: int, n: int, fac: int, wl: tuple[float, float], floors: int
    ) -> bool:
        """Place a building in the n x n cell block with top-left cell (i=row, j=col)."""
        half = n * cell / 2 - gap / 2
        bcu = u0 + (j + n / 2) * cell
        bcv = v0 + (i + n / 2) * cell
        th = rng.normal(0, math.radians(2)) if rng.random() > 0.12 else rng.uniform(-0.6, 0.6)
        w, lb = wl
        c, sn = abs(math.cos(th)), abs(math.sin(th))
        ex, ey = (w * c + lb * sn) / 2, (w * sn + lb * c) / 2
        f = min(1.0, half / ex, half / ey)
        w, lb, ex, ey = w * f, lb * f, ex * f, ey * f
        bcu += rng.uniform(-1, 1) * max(0.0, half - ex)
        bcv += rng.uniform(-1, 1) * max(0.0, half - ey)
        if roads.clearance(np.array([bcu]), np.array([bcv]))[0] < math.hypot(ex, ey) + 1.0:
            return False
        occ[i : i + n, j : j + n] = True
        for k, val in zip(
            ("cu", "cv", "w", "l", "th", "h", "fac"),
            (bcu, bcv, w, lb, th, 3.0 * floors + rng.uniform(0.5, 1.2), fac),
            strict=True,
        ):
            bl[k].append(val)
        return True

    # facilities: 3x3-cell compounds inside the before scene
    area_km2 = sw * sh / 1e6
    n_fac = s.n_facilities if s.n_facilities is not None else max(3, round(area_km2 * 4))
    fac_meta: list[dict[str, Any]] = []
    spacing = min(150.0, 0.3 * min(sw, sh))
    tries = 0
    while len(fac_meta) < n_fac and tries < 400 * n_fac:
        tries += 1
        j = int((rng.uniform(40, sw - 40) - u0) // cell) - 1
        i = int((rng.uniform(40, sh - 40) - v0) // cell) - 1
        if (
            i < 0
            or j < 0
            or i + 3 > ny
            or j + 3 > nx
            or occ[max(0, i - 1) : i + 4, max(0, j - 1) : j + 4].any()
        ):
            continue
        far = all(
            math.hypot(cu_grid[j + 1] - f["cu"], cv_grid[i + 1] - f["cv"]) > spacing
            for f in fac_meta
        )
        if not far:
            continue
        wl = (rng.uniform(32, 43), rng.uniform(26, 43))
        if add_building(i, j, 3, len(fac_meta), wl, int(rng.integers(2, 4))):
            ftype = FACILITY_TYPES[len(fac_meta) % len(FACILITY_TYPES)]
            fac_meta.append(
                {"cu": bl["cu"][-1], "cv": bl["cv"][-1], "type": ftype, "b": len(bl["cu"]) - 1}
            )
    dens = 0.5 + 0.5 * _lowfreq(rng, cu_grid[None, :], cv_grid[:, None])  # 0..1 urban density
    for i in range(0, ny - 1, 2):
        for j in range(0, nx - 1, 2):
            if not occ[i : i + 2, j : j + 2].any() and rng.random() < 0.12 * dens[i, j] + 0.02:
                add_building(
                    i, j, 2, -1, (rng.uniform(16, 28), rng.uniform(12, 28)), int(rng.integers(1, 5))
                )
    p_build = np.clip(0.3 + 0.7 * dens, 0.2, 0.95)
    draws = rng.random((ny, nx))
    for i, j in zip(*np.nonzero((draws < p_build) & ~occ), strict=True):
        if not occ[i, j]:
            add_building(
                int(i),
                int(j),
                1,
                -1,
                (rng.uniform(8, 14.5), rng.uniform(7, 14.5)),
                int(rng.integers(1, 4)),
            )
    nb = len(bl["cu"])
    b = {k: np.array(v, np.float64) for k, v in bl.items()}
    tile = rng.random(nb) < 0.12
    bright = rng.uniform(0.9, 1.06, (nb, 1))
    roof = (
        _FLAT_ROOFS[rng.integers(0, len(_FLAT_ROOFS), nb)] * bright + rng.normal(0, 0.008, (nb, 3))
    ).astype(np.float32)
    roof[tile] = (_TILE_ROOF * bright[tile] + rng.normal(0, 0.015, (int(tile.sum()), 3))).astype(
        np.float32
    )
    court = np.where(
        (np.minimum(b["w"], b["l"]) > 14) & (rng.random(nb) < 0.45) & ~tile,
        rng.uniform(0.3, 0.5, nb),
        0.0,
    )

    # open cells: trees and vegetation; cars on roads
    free = ~occ
    free_cells = np.argwhere(free)
    tr: dict[str, list[NDArray[Any]]] = {"cu": [], "cv": [], "r": []}
    pick = free_cells[rng.random(len(free_cells)) < 0.35]
    for i, j in pick:
        k = int(rng.integers(1, 5))
        r = rng.uniform(1.2, 3.4, k)
        tr["cu"].append(cu_grid[j] + rng.uniform(-1, 1, k) * (cell / 2 - r))
        tr["cv"].append(cv_grid[i] + rng.uniform(-1, 1, k) * (cell / 2 - r))
        tr["r"].append(r)
    t_cu = np.concatenate(tr["cu"]) if tr["cu"] else np.zeros(0)
    t_cv = np.concatenate(tr["cv"]) if tr["cv"] else np.zeros(0)
    t_r = np.concatenate(tr["r"]) if tr["r"] else np.zeros(0)
    ok = roads.clearance(t_cu, t_cv) > 0.5
    t_cu, t_cv, t_r = t_cu[ok], t_cv[ok], t_r[ok]
    nveg = max(2, round((u1 - u0) * (v1 - v0) / 1e6 * 40))
    g_cu, g_cv, g_r = rng.uniform(u0, u1, nveg), rng.uniform(v0, v1, nveg), rng.uniform(6, 22, nveg)

    segs = roads.segments()
    cars = _cars(rng, segs)

    lay = Layout(
        buildings=Group({}),
        roads=segs,
        trees=Group({}),
        cars=cars,
        craters=Group({}),
        veg=_group(cu=g_cu, cv=g_cv, r=g_r, rad=g_r * 1.6),
        burns=Group({}),
        tanks=Group({}),
    )
    bld = {
        "cu": b["cu"],
        "cv": b["cv"],
        "w": b["w"],
        "l": b["l"],
        "th": b["th"],
        "h": b["h"],
        "fac": b["fac"].astype(np.int64),
        "tile": tile,
        "rgb": roof,
        "court": court,
        "id": np.arange(nb, dtype=np.int64),
        "before": np.ones(nb, bool),
    }
    from changedet._synth_events import add_events

    add_events(s, rng, lay, bld, roads, fac_meta, occ, (u0, v0, cell), (t_cu, t_cv, t_r))
    return lay


def _lowfreq(rng: np.random.Generator, u: NDArray[Any], v: NDArray[Any]) -> NDArray[Any]:
    """A smooth random field in [-1, 1] (sum of a few random plane waves, ~300-900 m)."""
    out = np.zeros(np.broadcast_shapes(u.shape, v.shape))
    for _ in range(4):
        ang, lam, ph = (
            rng.uniform(0, 2 * math.pi),
            rng.uniform(300, 900),
            rng.uniform(0, 2 * math.pi),
        )
        out = out + np.sin(2 * math.pi * (u * math.cos(ang) + v * math.sin(ang)) / lam + ph)
    return np.clip(out / 2.0, -1, 1)


def _cars(rng: np.random.Generator, segs: Group) -> Group:
    """Parked and driving cars along asphalt road segments; some move between the two dates."""
    du, dv = segs["u1"] - segs["u0"], segs["v1"] - segs["v0"]
    ln = np.hypot(du, dv)
    n = rng.poisson(np.where(segs["kind"] == 0, ln / 28.0, 0.0))
    idx = np.repeat(np.arange(len(ln)), n)
    t = rng.random(len(idx))
    side = rng.choice([-1.0, 1.0], len(idx))
    w = segs["w"][idx]
    lat = side * np.where(rng.random(len(idx)) < 0.7, w / 2 - 1.3, w / 4)
    ux, vx = du[idx] / ln[idx], dv[idx] / ln[idx]
    cu = segs["u0"][idx] + t * du[idx] - vx * lat
    cv = segs["v0"][idx] + t * dv[idx] + ux * lat
    th = np.arctan2(vx, ux) + rng.normal(0, 0.03, len(idx))
    big = rng.random(len(idx)) < 0.1
    length = np.where(big, rng.uniform(5.5, 7.5, len(idx)), rng.uniform(4.0, 4.8, len(idx)))
    width = np.where(big, 2.2, rng.uniform(1.7, 1.9, len(idx)))
    state = rng.choice(
        3, len(idx), p=[0.55, 0.22, 0.23]
    )  # 0 both dates, 1 before only, 2 after only
    rgb = _CAR_COLOURS[rng.integers(0, len(_CAR_COLOURS), len(idx))]
    return _group(
        cu=cu,
        cv=cv,
        th=th,
        len=length,
        wid=width,
        rgb=rgb,
        before=state != 2,
        after=state != 1,
        rad=length / 2 + 2.0,
    )
