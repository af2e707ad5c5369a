"""Render the synthetic scene at arbitrary ground points (one window at a time).

``render_scene(layout, settings, U, V, pix_m, epoch)`` returns reflectance-like values in [0, 1]
(R, G, B, NIR) for every point ``(U[i, j], V[i, j])`` in scene metres. Every value is a pure
function of the point, the layout and the seed: shapes are drawn with analytic signed distances
(antialiased over ``pix_m``, the ground size of a pixel) and textures come from
``_synth_noise``, so the result does not depend on how the scene is cut into windows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from changedet._synth_layout import Layout
from changedet._synth_noise import fbm, value_noise

F32 = NDArray[np.float32]
_SHADOW_TINT = np.array([0.30, 0.33, 0.43, 0.22], np.float32)
_ASPHALT = np.array([0.34, 0.34, 0.35, 0.30], np.float32)
_DIRT = np.array([0.62, 0.56, 0.47, 0.55], np.float32)
_SOIL_A = np.array([0.68, 0.60, 0.49, 0.58], np.float32)
_SOIL_B = np.array([0.60, 0.57, 0.52, 0.54], np.float32)
_VEG = {
    False: np.array([0.33, 0.41, 0.20, 0.55], np.float32),
    True: np.array([0.55, 0.50, 0.35, 0.40], np.float32),
}
_TREE = {
    False: np.array([0.15, 0.23, 0.10, 0.48], np.float32),
    True: np.array([0.25, 0.26, 0.12, 0.36], np.float32),
}
_RUBBLE = np.array([0.50, 0.46, 0.41, 0.44], np.float32)
_EJECTA = np.array([0.86, 0.82, 0.74, 0.68], np.float32)
_CRATER = np.array([0.34, 0.31, 0.28, 0.30], np.float32)


def _cov(sd: NDArray[Any], pix: float) -> F32:
    """Area coverage of a shape from its signed distance (negative inside), box-filtered."""
    return np.clip(0.5 - sd / pix, 0.0, 1.0).astype(np.float32)


def _blend(img: F32, sl: Any, a: F32, colour: Any) -> None:
    """img[sl] = img[sl] * (1 - a) + colour * a (colour: (4,) or (h, w, 4))."""
    a3 = a[..., None]
    img[sl] = img[sl] * (1 - a3) + colour * a3


class _Window:
    """Points of one window and the (near-affine) map from metres back to its array indices."""

    def __init__(self, U: NDArray[np.float64], V: NDArray[np.float64], pix: float) -> None:
        self.U, self.V = U, V
        self.pix = 1.4 * pix  # edge softness: the pixel box widened a little for the sensor's PSF
        h, w = U.shape
        self.shape = (h, w)
        a = np.array(
            [
                [(U[0, -1] - U[0, 0]) / max(w - 1, 1), (U[-1, 0] - U[0, 0]) / max(h - 1, 1)],
                [(V[0, -1] - V[0, 0]) / max(w - 1, 1), (V[-1, 0] - V[0, 0]) / max(h - 1, 1)],
            ]
        )
        self.ainv = np.linalg.inv(a)
        self.o = (U[0, 0], V[0, 0])
        self.box = (float(U.min()), float(U.max()), float(V.min()), float(V.max()))

    def slices(self, cu: NDArray[Any], cv: NDArray[Any], rad: NDArray[Any]) -> NDArray[np.int64]:
        """Index box (i0, i1, j0, j1) per object covering its disc of radius ``rad``."""
        js, is_ = [], []
        for su in (-1, 1):
            for sv in (-1, 1):
                du, dv = cu + su * rad - self.o[0], cv + sv * rad - self.o[1]
                js.append(self.ainv[0, 0] * du + self.ainv[0, 1] * dv)
                is_.append(self.ainv[1, 0] * du + self.ainv[1, 1] * dv)
        j, i = np.array(js), np.array(is_)
        h, w = self.shape
        out = np.stack(
            [
                np.floor(i.min(0)) - 3,
                np.ceil(i.max(0)) + 4,
                np.floor(j.min(0)) - 3,
                np.ceil(j.max(0)) + 4,
            ],
            1,
        )
        out[:, :2] = np.clip(out[:, :2], 0, h)
        out[:, 2:] = np.clip(out[:, 2:], 0, w)
        return out.astype(np.int64)

    def objects(self, group: Any, extra: float = 0.0) -> list[tuple[int, tuple[slice, slice]]]:
        """(index, array slice) of each object of ``group`` that can touch this window."""
        u0, u1, v0, v1 = self.box
        k = group.select(u0 - extra, u1 + extra, v0 - extra, v1 + extra)
        if not len(k):
            return []
        b = self.slices(group["cu"][k], group["cv"][k], group["rad"][k] + extra)
        return [
            (int(kk), (slice(bb[0], bb[1]), slice(bb[2], bb[3])))
            for kk, bb in zip(k, b, strict=True)
            if bb[0] < bb[1] and bb[2] < bb[3]
        ]


def _local(
    win: _Window, sl: Any, cu: float, cv: float, th: float
) -> tuple[NDArray[Any], NDArray[Any]]:
    du, dv = win.U[sl] - cu, win.V[sl] - cv
    c, s = math.cos(th), math.sin(th)
    return du * c + dv * s, -du * s + dv * c


def _rect_sd(x: NDArray[Any], y: NDArray[Any], w: float, lb: float) -> NDArray[Any]:
    return np.maximum(np.abs(x) - w / 2, np.abs(y) - lb / 2)


def _capsule_sd(du: NDArray[Any], dv: NDArray[Any], eu: float, ev: float, r: float) -> NDArray[Any]:
    """Signed distance to the capsule from (0, 0) to (eu, ev) with radius r."""
    ll = eu * eu + ev * ev
    t = np.clip((du * eu + dv * ev) / ll, 0.0, 1.0) if ll > 0 else 0.0
    return np.hypot(du - t * eu, dv - t * ev) - r


def _swept_rect_sd(
    x: NDArray[Any], y: NDArray[Any], w: float, lb: float, dx: float, dy: float
) -> NDArray[Any]:
    """Signed distance (exact inside, a lower bound near corners) to a w x lb rectangle swept by
    the vector (dx, dy) (building frame): the intersection of 6 half-planes of the Minkowski sum."""
    sd = np.maximum(x - w / 2 - max(0.0, dx), -x - w / 2 - max(0.0, -dx))
    sd = np.maximum(sd, np.maximum(y - lb / 2 - max(0.0, dy), -y - lb / 2 - max(0.0, -dy)))
    n = math.hypot(dx, dy)
    if n > 1e-9:
        px, py = -dy / n, dx / n
        hp = abs(px) * w / 2 + abs(py) * lb / 2
        proj = x * px + y * py
        sd = np.maximum(sd, np.abs(proj) - hp)
    return sd


def render_scene(
    lay: Layout, s: Any, U: NDArray[np.float64], V: NDArray[np.float64], pix: float, epoch: str
) -> F32:
    """Render (R, G, B, NIR) reflectance in [0, 1] at scene points ``U``, ``V`` (metres).

    ``epoch`` is ``"before"`` or ``"after"``: the after scene has the events (craters, damage,
    burns, new construction), the after sun, the after season and the after cars.
    """
    after = epoch == "after"
    az, el = s.sun_after if after else s.sun_before
    shadow_dir = (-math.sin(math.radians(az)), math.cos(math.radians(az)))  # u east, v south
    tan_el = math.tan(math.radians(el))
    sun3 = np.array(
        [
            math.sin(math.radians(az)) * math.cos(math.radians(el)),
            -math.cos(math.radians(az)) * math.cos(math.radians(el)),
            math.sin(math.radians(el)),
        ]
    )
    season = bool(after and s.seasonal_change)
    win = _Window(U, V, pix)
    sd0 = s.seed * 7919 + 13
    # textures are smooth at the pixel scale (band-limited, like a real sensor's MTF): point
    # sampling of sharper noise would alias and lock sub-pixel shifts to whole pixels
    n_fine = value_noise(U, V, 0.9, sd0 + 1)
    n_med = value_noise(U, V, 3.0, sd0 + 2)
    n_low = fbm(U, V, 40.0, sd0 + 3, 2)
    n_vlow = value_noise(U, V, 300.0, sd0 + 4)
    n_blk = value_noise(U, V, 1.4, sd0 + 5)

    # ground: dusty soil with grain, stones and low-frequency tone changes
    t = (0.5 + 0.5 * n_vlow)[..., None]
    n_mid = value_noise(U, V, 12.0, sd0 + 6)
    tex = (1 + 0.09 * n_low + 0.05 * n_mid + 0.06 * n_med + 0.07 * n_fine + 0.04 * n_blk)[..., None]
    img = ((_SOIL_A * t + _SOIL_B * (1 - t)) * tex).astype(np.float32)
    img += (0.25 * np.clip(n_blk - 0.6, 0.0, 1.0)).astype(np.float32)[..., None]  # pebbles

    for k, sl in win.objects(lay.veg):
        g = lay.veg
        d = np.hypot(win.U[sl] - g["cu"][k], win.V[sl] - g["cv"][k]) / g["r"][k]
        sd = (d - 1 + 0.4 * n_med[sl]) * g["r"][k]
        a = _cov(sd, max(pix, 1.5)) * (0.6 + 0.3 * n_low[sl])
        _blend(img, sl, a, _VEG[season] * (1 + 0.18 * n_fine[sl] + 0.12 * n_med[sl])[..., None])

    # roads (asphalt and dirt coverage, then one blend each)
    cov_road = [np.zeros(win.shape, np.float32), np.zeros(win.shape, np.float32)]
    r = lay.roads
    for k, sl in win.objects(r):
        sd = _capsule_sd(
            win.U[sl] - r["u0"][k],
            win.V[sl] - r["v0"][k],
            r["u1"][k] - r["u0"][k],
            r["v1"][k] - r["v0"][k],
            r["w"][k] / 2,
        )
        kind = int(r["kind"][k])
        np.maximum(cov_road[kind][sl], _cov(sd, pix), out=cov_road[kind][sl])
    asphalt = _ASPHALT * (1 + 0.06 * n_low + 0.04 * n_med + 0.05 * n_fine)[..., None]
    _blend(img, (slice(None), slice(None)), cov_road[0], asphalt)
    _blend(
        img,
        (slice(None), slice(None)),
        cov_road[1] * (1 - cov_road[0]) * 0.85,
        _DIRT * (1 + 0.08 * n_med + 0.06 * n_fine)[..., None],
    )

    if after:
        for k, sl in win.objects(lay.burns):
            g = lay.burns
            d = np.hypot(win.U[sl] - g["cu"][k], win.V[sl] - g["cv"][k]) / g["r"][k]
            a = _cov((d - 1 + 0.5 * n_med[sl]) * g["r"][k], 1.5) * (0.55 + 0.25 * n_low[sl])
            img[sl] *= (1 - 0.75 * a)[..., None]

    # cast shadows on the ground
    shade = np.zeros(win.shape, np.float32)
    b = lay.buildings
    present = b["before"] if not after else np.ones(len(b), bool)
    hkey = "h_after" if after else "h"
    for k, sl in win.objects(b):
        if not present[k]:
            continue
        x, y = _local(win, sl, b["cu"][k], b["cv"][k], b["th"][k])
        ln = b[hkey][k] / tan_el
        c, sn = math.cos(b["th"][k]), math.sin(b["th"][k])
        dx = ln * (shadow_dir[0] * c + shadow_dir[1] * sn)
        dy = ln * (-shadow_dir[0] * sn + shadow_dir[1] * c)
        np.maximum(
            shade[sl], _cov(_swept_rect_sd(x, y, b["w"][k], b["l"][k], dx, dy), pix), out=shade[sl]
        )
    tr = lay.trees
    for k, sl in win.objects(tr):
        if after and not tr["after"][k]:
            continue
        ln = tr["h"][k] / tan_el
        sd = _capsule_sd(
            win.U[sl] - tr["cu"][k] - 0.3 * ln * shadow_dir[0],
            win.V[sl] - tr["cv"][k] - 0.3 * ln * shadow_dir[1],
            0.7 * ln * shadow_dir[0],
            0.7 * ln * shadow_dir[1],
            tr["r"][k] * 0.9,
        )
        np.maximum(shade[sl], _cov(sd + 0.4 * n_med[sl], max(pix, 0.8)) * 0.9, out=shade[sl])
    ca = lay.cars
    on = ca["after"] if after else ca["before"]
    for k, sl in win.objects(ca):
        if on[k]:
            off = min(1.4 / tan_el, 3.0)
            x, y = _local(
                win,
                sl,
                ca["cu"][k] + off * shadow_dir[0],
                ca["cv"][k] + off * shadow_dir[1],
                ca["th"][k],
            )
            np.maximum(
                shade[sl],
                _cov(_rect_sd(x, y, ca["len"][k], ca["wid"][k]), pix) * 0.8,
                out=shade[sl],
            )
    img *= (1 - shade[..., None] * (1 - _SHADOW_TINT)).astype(np.float32)

    for k, sl in win.objects(ca):
        if on[k]:
            x, y = _local(win, sl, ca["cu"][k], ca["cv"][k], ca["th"][k])
            a = _cov(_rect_sd(x, y, ca["len"][k] - 0.2, ca["wid"][k] - 0.2), pix)
            col = np.append(ca["rgb"][k], 0.5).astype(np.float32)
            glass = (np.abs(x) > 0.18 * ca["len"][k]) & (np.abs(x) < 0.33 * ca["len"][k])
            _blend(img, sl, a, np.where(glass[..., None], np.float32(0.12), col))

    from changedet._synth_damage import draw_buildings, draw_craters

    draw_buildings(img, win, lay, s, after, shadow_dir, tan_el, sun3, (n_fine, n_med, n_low, n_blk))

    n_clump = value_noise(U, V, 1.1, sd0 + 9) if len(tr) else n_fine
    for k, sl in win.objects(tr):
        if after and not tr["after"][k]:
            continue
        du, dv = win.U[sl] - tr["cu"][k], win.V[sl] - tr["cv"][k]
        rr = tr["r"][k]
        clump = n_clump[sl]
        a = _cov(np.hypot(du, dv) - rr * (1 + 0.12 * n_med[sl] + 0.08 * clump), pix)
        lit = 1.0 + 0.45 * (du * sun3[0] + dv * sun3[1]) / (
            rr * math.hypot(sun3[0], sun3[1]) + 1e-9
        )
        col = _TREE[season] * (1 + 0.12 * tr["tone"][k]) * (lit * (1 + 0.3 * clump))[..., None]
        _blend(img, sl, a, col.astype(np.float32))

    if after:
        draw_craters(img, win, lay, s, sun3, (n_fine, n_med, n_low, n_blk))
    return np.clip(img, 0.0, 1.0)
