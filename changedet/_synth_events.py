"""Events of the synthetic after scene: craters, building damage, burns, new construction.

Called by ``_synth_layout.build_layout`` once the town exists; fills the layout's groups.
Damage follows the UNOSAT classes ``none < possible < moderate < severe < destroyed``; a crater
damages the buildings it touches by distance from its centre to their footprint.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from changedet._synth_layout import _NAME_WORDS, _TYPE_LABEL, Layout, _group, _rect_point_dist

ON_LABELS = ("building", "road", "open")
_NONE, _POSSIBLE, _MODERATE, _SEVERE, _DESTROYED = range(5)


def clear_radius(s: Any) -> float:
    """Radius (m) kept free of craters around unhit facilities: ``facility_clear_m``, at most
    0.45 of the scene's shorter side (so that small scenes keep room for craters)."""
    return float(min(s.facility_clear_m, 0.45 * min(s.shape) * s.gsd_m))


class _Index:
    """Points sorted by v for radius queries."""

    def __init__(self, cu: NDArray[Any], cv: NDArray[Any], rad: float) -> None:
        self.order = np.argsort(cv, kind="stable")
        self.cv = cv[self.order]
        self.cu = cu[self.order]
        self.rad = rad

    def near(self, u: float, v: float, dist: float) -> NDArray[np.intp]:
        lo = int(np.searchsorted(self.cv, v - dist - self.rad))
        hi = int(np.searchsorted(self.cv, v + dist + self.rad, "right"))
        ok = np.abs(self.cu[lo:hi] - u) <= dist + self.rad
        return self.order[lo:hi][ok]


def add_events(
    s: Any,
    rng: np.random.Generator,
    lay: Layout,
    bld: dict[str, NDArray[Any]],
    roads: Any,
    fac_meta: list[dict[str, Any]],
    occ: NDArray[np.bool_],
    grid: tuple[float, float, float],
    trees: tuple[NDArray[Any], NDArray[Any], NDArray[Any]],
) -> None:
    """Place craters and damage, new construction, burns and roof tanks; finish ``lay``."""
    sh, sw = s.shape[0] * s.gsd_m, s.shape[1] * s.gsd_m
    area_km2 = sw * sh / 1e6
    nb = len(bld["cu"])
    halfdiag = np.hypot(bld["w"], bld["l"]) / 2
    idx = _Index(bld["cu"], bld["cv"], float(halfdiag.max()) if nb else 0.0)
    inside = (
        (bld["cu"] - halfdiag > 0)
        & (bld["cu"] + halfdiag < sw)
        & (bld["cv"] - halfdiag > 0)
        & (bld["cv"] + halfdiag < sh)
    )

    def bdist(u: float, v: float, reach: float) -> tuple[NDArray[np.intp], NDArray[Any]]:
        k = idx.near(u, v, reach)
        return k, _rect_point_dist(
            bld["cu"][k], bld["cv"][k], bld["w"][k], bld["l"][k], bld["th"][k], u, v
        )

    nf = len(fac_meta)
    # one facility in three (at least one of two) stays clear: the ones farthest from the centre
    far_first = sorted(
        range(nf), key=lambda k: -math.hypot(fac_meta[k]["cu"] - sw / 2, fac_meta[k]["cv"] - sh / 2)
    )
    unhit = set(far_first[: nf // 3 if nf >= 3 else min(nf - 1, 1)]) if nf >= 2 else set()
    hit = set(range(nf)) - unhit
    clear_m = clear_radius(s)
    craters: list[tuple[float, float, float]] = []

    def ok(u: float, v: float, r: float) -> bool:
        m = 3 * r + 4
        if not (m < u < sw - m and m < v < sh - m):
            return False
        if any(math.hypot(u - a, v - b) < 1.6 * (r + c) for a, b, c in craters):
            return False
        for k in range(nf):
            if k not in hit:
                bi = fac_meta[k]["b"]
                d = _rect_point_dist(
                    bld["cu"][bi], bld["cv"][bi], bld["w"][bi], bld["l"][bi], bld["th"][bi], u, v
                )
                if d < clear_m:
                    return False
        return True

    def radius() -> float:
        x = rng.random()
        if x < 0.1:
            return rng.uniform(0.75, 1.5)
        if x < 0.8:
            return math.exp(rng.uniform(math.log(1.5), math.log(6.0)))
        return rng.uniform(6.0, 10.0)

    n_craters = (
        s.n_craters if s.n_craters is not None else max(4, round(area_km2 * s.crater_density_km2))
    )
    for k in sorted(hit)[:n_craters]:
        bi = fac_meta[k]["b"]
        for _ in range(200):
            r = rng.uniform(2.5, 7.0)
            if rng.random() < 0.5:  # crater 50-200 m from the facility
                ang = rng.uniform(0, 2 * math.pi)
                d = halfdiag[bi] + rng.uniform(50, 200)
                u, v = bld["cu"][bi] + d * math.cos(ang), bld["cv"][bi] + d * math.sin(ang)
            else:  # on or just beside the facility building
                x, y = rng.uniform(-0.7, 0.7) * bld["w"][bi], rng.uniform(-0.7, 0.7) * bld["l"][bi]
                c, sn = math.cos(bld["th"][bi]), math.sin(bld["th"][bi])
                u, v = bld["cu"][bi] + x * c - y * sn, bld["cv"][bi] + x * sn + y * c
            if ok(u, v, r):
                craters.append((u, v, r))
                break
    inner = np.nonzero(inside)[0]
    segs = lay.roads
    seg_in = np.nonzero(
        (segs["cu"] > 0) & (segs["cu"] < sw) & (segs["cv"] > 0) & (segs["cv"] < sh)
    )[0]
    tries = 0
    while len(craters) < n_craters and tries < 300 * n_craters:
        tries += 1
        r = radius()
        cat = rng.random()
        if cat < 0.3 and len(seg_in):  # on a road
            g = seg_in[rng.integers(len(seg_in))]
            t = rng.random()
            u = segs["u0"][g] + t * (segs["u1"][g] - segs["u0"][g])
            v = segs["v0"][g] + t * (segs["v1"][g] - segs["v0"][g])
        elif cat < 0.6 or not len(inner):  # open ground
            u, v = rng.uniform(0, sw), rng.uniform(0, sh)
            _, d = bdist(u, v, r + 2)
            if (d < r + 1.5).any() or roads.clearance(np.array([u]), np.array([v]))[0] < r:
                continue
        else:  # next to (60%) or on (40%) a building
            bi = inner[rng.integers(len(inner))]
            w, lb = bld["w"][bi], bld["l"][bi]
            if rng.random() < 0.6:
                side = rng.integers(4)
                off = rng.uniform(0.2, 1.4) * r
                x, y = rng.uniform(-0.5, 0.5) * w, rng.uniform(-0.5, 0.5) * lb
                x, y = (
                    ((w / 2 + off) * (1 if side == 0 else -1), y)
                    if side < 2
                    else (x, (lb / 2 + off) * (1 if side == 2 else -1))
                )
            else:
                x, y = rng.uniform(-0.3, 0.3) * w, rng.uniform(-0.3, 0.3) * lb
            c, sn = math.cos(bld["th"][bi]), math.sin(bld["th"][bi])
            u, v = bld["cu"][bi] + x * c - y * sn, bld["cv"][bi] + x * sn + y * c
        if ok(u, v, r):
            craters.append((u, v, r))

    k_cu = np.array([c[0] for c in craters])
    k_cv = np.array([c[1] for c in craters])
    k_r = np.array([c[2] for c in craters])
    dmg = np.zeros(nb, np.int64)
    on = np.full(len(craters), 2, np.int64)
    for n, (u, v, r) in enumerate(craters):
        k, d = bdist(u, v, 3 * r + 2)
        cls = np.select(
            [d <= 0, d < 0.5 * r, d < 1.5 * r, d < 3 * r + 1],
            [_DESTROYED if r >= 3.0 else _SEVERE, _SEVERE, _MODERATE, _POSSIBLE],
            _NONE,
        )
        dmg[k] = np.maximum(dmg[k], cls)
        if (d <= 0).any():
            on[n] = 0
        elif roads.clearance(np.array([u]), np.array([v]))[0] < 0:
            on[n] = 1
    # damage without a crater nearby (shelling, fire), never on an unhit facility
    unhit_b = {fac_meta[k]["b"] for k in range(nf) if k not in hit}
    cand = np.array([i for i in inner if dmg[i] == 0 and i not in unhit_b], np.int64)
    n_extra = min(len(cand), round(s.damage_share * len(inner)))
    if n_extra:
        extra = rng.choice(cand, n_extra, replace=False)
        dmg[extra] = rng.choice(
            [_POSSIBLE, _MODERATE, _SEVERE, _DESTROYED], n_extra, p=[0.2, 0.3, 0.25, 0.25]
        )
    burnt = rng.random(nb) < np.select([dmg >= _SEVERE, dmg == _MODERATE], [0.35, 0.2], 0.0)

    # per-building damage geometry
    cut_th = rng.uniform(0, 2 * math.pi, nb)
    e = np.abs(np.cos(cut_th)) * bld["w"] / 2 + np.abs(np.sin(cut_th)) * bld["l"] / 2
    cut_off = rng.uniform(-0.5, -0.1, nb) * e
    holes = np.zeros((nb, 3, 3))
    nh = np.where(dmg == _MODERATE, rng.integers(1, 4, nb), np.where(dmg == _POSSIBLE, 1, 0))
    mind = np.minimum(bld["w"], bld["l"])
    for j in range(3):
        holes[:, j, 0] = rng.uniform(-0.3, 0.3, nb) * bld["w"]
        holes[:, j, 1] = rng.uniform(-0.3, 0.3, nb) * bld["l"]
        rmod = rng.uniform(1.0, 1.0 + np.maximum(0.0, np.minimum(1.6, 0.22 * mind - 1.0)))
        holes[:, j, 2] = np.where(
            j < nh, np.where(dmg == _POSSIBLE, rng.uniform(0.5, 0.8, nb), rmod), 0.0
        )
    spill = np.select(
        [dmg == _DESTROYED, dmg == _SEVERE, dmg == _MODERATE],
        [rng.uniform(2.0, 4.5, nb), rng.uniform(1.0, 3.0, nb), rng.uniform(0.3, 1.2, nb)],
        0.0,
    )
    h_after = np.select(
        [dmg == _DESTROYED, dmg == _SEVERE], [rng.uniform(1.0, 1.8, nb), 0.5 * bld["h"]], bld["h"]
    )

    # new construction on free cells far from craters and trees
    u0, v0, cell = grid
    t_cu, t_cv, t_r = trees
    n_new = s.n_new_buildings if s.n_new_buildings is not None else max(1, round(area_km2 * 6))
    free = np.argwhere(~occ)
    rng.shuffle(free)
    new: list[tuple[float, float, float, float, float]] = []
    for i, j in free:
        if len(new) >= n_new:
            break
        cu, cv = u0 + (j + 0.5) * cell, v0 + (i + 0.5) * cell
        if not (20 < cu < sw - 20 and 20 < cv < sh - 20):
            continue
        if len(k_cu) and (np.hypot(k_cu - cu, k_cv - cv) < 3 * k_r + 15).any():
            continue
        if len(t_cu) and (np.hypot(t_cu - cu, t_cv - cv) < t_r + 7.5).any():
            continue
        w, lb = rng.uniform(8, 12), rng.uniform(7, 12)
        if roads.clearance(np.array([cu]), np.array([cv]))[0] < math.hypot(w, lb) / 2 + 1:
            continue
        new.append((cu, cv, w, lb, rng.normal(0, 0.03)))
    nn = len(new)
    newa = np.array(new).reshape(nn, 5)
    z = np.zeros(nn)

    def cat(key: str, extra: NDArray[Any]) -> NDArray[Any]:
        return np.concatenate([bld[key], extra])

    h_new = rng.uniform(3.5, 7.5, nn)
    allh = cat("h", h_new)
    rgb = np.concatenate(
        [bld["rgb"], np.clip(rng.normal(0.9, 0.02, (nn, 3)), 0, 1).astype(np.float32)]
    )
    all_spill = np.concatenate([spill, z])
    max_tan = math.tan(math.radians(min(s.sun_before[1], s.sun_after[1])))
    cols = {
        "cu": cat("cu", newa[:, 0]),
        "cv": cat("cv", newa[:, 1]),
        "w": cat("w", newa[:, 2]),
        "l": cat("l", newa[:, 3]),
        "th": cat("th", newa[:, 4]),
        "h": allh,
        "h_after": np.concatenate([h_after, h_new]),
        "rgb": rgb,
        "tile": np.concatenate([bld["tile"], np.zeros(nn, bool)]),
        "court": cat("court", z),
        "id": cat("id", nb + np.arange(nn)),
        "fac": cat("fac", np.full(nn, -1)),
        "before": np.concatenate([np.ones(nb, bool), np.zeros(nn, bool)]),
        "dmg": np.concatenate([dmg, np.zeros(nn, np.int64)]),
        "burnt": np.concatenate([burnt, np.zeros(nn, bool)]),
        "cut_th": np.concatenate([cut_th, z]),
        "cut_off": np.concatenate([cut_off, z]),
        "holes": np.concatenate([holes, np.zeros((nn, 3, 3))]),
        "spill": all_spill,
    }
    cols["rad"] = np.hypot(cols["w"], cols["l"]) / 2 + all_spill + allh / max_tan + 2
    lay.buildings = _group(**cols)

    lay.craters = _group(cu=k_cu, cv=k_cv, r=k_r, id=np.arange(len(k_r)), on=on, rad=3.2 * k_r + 2)
    # trees and cars inside a crater's blast disc are gone in the after image
    t_after = np.ones(len(t_cu), bool)
    for u, v, r in craters:
        t_after &= np.hypot(t_cu - u, t_cv - v) > 1.3 * r + t_r
    t_h = 2.0 + 2.2 * t_r
    lay.trees = _group(
        cu=t_cu,
        cv=t_cv,
        r=t_r,
        h=t_h,
        after=t_after,
        tone=rng.uniform(-1, 1, len(t_r)),
        rad=t_r + t_h / max_tan + 1,
    )
    ca = lay.cars
    for u, v, r in craters:
        ca.data["after"] &= np.hypot(ca["cu"] - u, ca["cv"] - v) > 1.3 * r + 1
    nburn = max(1, round(area_km2 * 12))
    bu, bv, br = (
        rng.uniform(10, sw - 10, nburn),
        rng.uniform(10, sh - 10, nburn),
        rng.uniform(3, 9, nburn),
    )
    lay.burns = _group(cu=bu, cv=bv, r=br, rad=br * 1.6 + 1)

    # roof water tanks on intact flat roofs of existing buildings
    b = lay.buildings
    cand_t = np.nonzero(
        ~b["tile"] & (b["court"] == 0) & b["before"] & (np.minimum(b["w"], b["l"]) > 5)
    )[0]
    kt = rng.choice(4, len(cand_t), p=[0.35, 0.35, 0.2, 0.1])
    bi = np.repeat(cand_t, kt)
    x = rng.uniform(-0.5, 0.5, len(bi)) * (b["w"][bi] - 2.4)
    y = rng.uniform(-0.5, 0.5, len(bi)) * (b["l"][bi] - 2.4)
    c, sn = np.cos(b["th"][bi]), np.sin(b["th"][bi])
    tr = rng.uniform(0.45, 0.75, len(bi))
    tone = rng.choice([0.1, 0.93, 0.55], len(bi), p=[0.45, 0.45, 0.1])
    lay.tanks = _group(
        cu=b["cu"][bi] + x * c - y * sn,
        cv=b["cv"][bi] + x * sn + y * c,
        r=tr,
        tone=tone,
        dmg=b["dmg"][bi],
        h=b["h"][bi],
        rad=tr + 1.5 / max_tan + 1,
    )

    # stairwell boxes on flat roofs (cast short shadows on the roof)
    cand_b = np.nonzero(
        ~b["tile"] & (b["court"] == 0) & b["before"] & (np.minimum(b["w"], b["l"]) > 7.5)
    )[0]
    bi = cand_b[rng.random(len(cand_b)) < 0.55]
    bw, bl_ = rng.uniform(2.2, 3.2, len(bi)), rng.uniform(2.5, 3.6, len(bi))
    x = rng.uniform(-0.5, 0.5, len(bi)) * (b["w"][bi] - bw - 2.0)
    y = rng.uniform(-0.5, 0.5, len(bi)) * (b["l"][bi] - bl_ - 2.0)
    c, sn = np.cos(b["th"][bi]), np.sin(b["th"][bi])
    lay.boxes = _group(
        cu=b["cu"][bi] + x * c - y * sn,
        cv=b["cv"][bi] + x * sn + y * c,
        w=bw,
        l=bl_,
        th=b["th"][bi],
        h=rng.uniform(2.2, 2.8, len(bi)),
        dmg=b["dmg"][bi],
        pu=b["cu"][bi],
        pv=b["cv"][bi],
        pw=b["w"][bi],
        pl=b["l"][bi],
        rgb=b["rgb"][bi] * 1.04,
        rad=np.hypot(bw, bl_) / 2 + 2.8 / max_tan + 1,
    )

    words = list(_NAME_WORDS)
    rng.shuffle(words)
    for k, f in enumerate(fac_meta):
        bid = int(bld["id"][f["b"]])
        lay.facilities.append(
            {
                "id": f"F{k + 1:02d}",
                "name": f"{words[k % len(words)]} {_TYPE_LABEL[f['type']]}",
                "type": f["type"],
                "building_id": bid,
                "hit_planned": k in hit,
            }
        )
