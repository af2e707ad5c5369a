"""Draw roofs (intact or damaged), roof tanks and craters for ``_synth_render``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from changedet._synth_layout import Layout
from changedet._synth_noise import block_noise, value_noise
from changedet._synth_render import (
    _CRATER,
    _EJECTA,
    _RUBBLE,
    _blend,
    _cov,
    _local,
    _rect_sd,
    _swept_rect_sd,
    _Window,
)

F32 = NDArray[np.float32]
_POSSIBLE, _MODERATE, _SEVERE, _DESTROYED = 1, 2, 3, 4


def _rubble(win: _Window, sl: Any, roof: NDArray[Any], seed: int, n_fine: F32) -> F32:
    """Grey-brown, blocky, high-contrast rubble: roof slab fragments, dust, dark voids."""
    u, v = win.U[sl], win.V[sl]
    b1 = block_noise(u, v, 1.6, seed)
    b2 = block_noise(u + 0.3, v + 0.55, 0.7, seed + 1)
    b3 = block_noise(u + 0.15, v + 0.2, 0.45, seed + 3)
    slab = (b1 > 0.35)[..., None]  # larger pieces of the old roof
    void = (b2 > 0.62) | (b3 > 0.8)
    dust = 0.55 + 0.45 * (value_noise(u, v, 2.5, seed + 4)[..., None] + 1) / 2
    base = np.where(slab, roof * 0.9, _RUBBLE * dust)
    tex = (1 + 0.16 * b2 + 0.12 * b3 + 0.1 * n_fine) * np.where(void, 0.38, 1.0)
    return (base * tex[..., None]).astype(np.float32)


def draw_buildings(
    img: F32,
    win: _Window,
    lay: Layout,
    s: Any,
    after: bool,
    shadow_dir: tuple[float, float],
    tan_el: float,
    sun3: NDArray[Any],
    noise: tuple[F32, F32, F32, F32],
) -> None:
    """Roofs with texture, parapet shadow, courtyards, tile gables; damage in the after image."""
    n_fine, n_med, n_low, n_blk = noise
    b = lay.buildings
    sd0 = s.seed * 7919 + 13
    pix = win.pix
    spill_extra = 5.0 if after else 0.0
    for k, sl in win.objects(b, spill_extra):
        if not after and not b["before"][k]:
            continue
        th = b["th"][k]
        w, lb = b["w"][k], b["l"][k]
        x, y = _local(win, sl, b["cu"][k], b["cv"][k], th)
        sd = _rect_sd(x, y, w, lb)
        a = _cov(sd, pix)
        c, sn = math.cos(th), math.sin(th)
        sdx, sdy = shadow_dir[0] * c + shadow_dir[1] * sn, -shadow_dir[0] * sn + shadow_dir[1] * c
        rgb = np.append(b["rgb"][k], float(np.mean(b["rgb"][k])) * 0.9).astype(np.float32)
        stain = np.where(n_low[sl] > 0.35, 0.93, 1.0)
        tex = (1 + 0.05 * n_med[sl] + 0.045 * n_fine[sl] + 0.03 * n_blk[sl]) * stain
        if b["tile"][k]:
            side = np.sign(y) if w >= lb else np.sign(x)
            nrm = (-sn, c) if w >= lb else (c, sn)  # ridge normal in scene frame
            lit = 1 + 0.22 * side * (nrm[0] * sun3[0] + nrm[1] * sun3[1]) / (
                math.hypot(sun3[0], sun3[1]) + 1e-9
            )
            tex = tex * lit * (1 + 0.06 * block_noise(win.U[sl], win.V[sl], 0.5, sd0 + 31))
            roof = rgb * tex[..., None]
        else:
            rim = np.where(sd > -0.45, 1.07, 1.0)
            sp = min(0.9 / tan_el, 2.5)
            par = _cov(-(_rect_sd(x - sp * sdx, y - sp * sdy, w, lb) + 0.45), pix)
            roof = rgb * (tex * rim * (1 - 0.3 * (1 - par)))[..., None]
        court = b["court"][k]
        if court > 0:
            cw, cl = court * w, court * lb
            ln = b["h"][k] / tan_el
            lit_c = _cov(_rect_sd(x - ln * sdx, y - ln * sdy, cw, cl), pix)  # 1 where sun reaches
            in_c = _cov(_rect_sd(x, y, cw, cl), pix)
            img[sl] *= (1 - in_c * (1 - lit_c) * 0.68)[..., None]
            a = a * (1 - in_c)
        dmg = int(b["dmg"][k]) if after else 0
        if dmg == 0:
            _blend(img, sl, a, roof)
            continue
        rub = _rubble(
            win, sl, np.append(b["rgb"][k], 0.45).astype(np.float32), sd0 + 40, n_fine[sl]
        )
        if dmg == _DESTROYED:
            spill = b["spill"][k] * (0.45 + 0.9 * n_med[sl])
            _blend(
                img, sl, _cov(sd - spill, pix) * np.where(sd < 0, 1.0, 0.85).astype(np.float32), rub
            )
        elif dmg == _SEVERE:
            ct = b["cut_th"][k]
            proj = x * math.cos(ct) + y * math.sin(ct)
            rub_part = _cov(b["cut_off"][k] - proj + 0.8 * n_med[sl], pix)
            _blend(img, sl, a, roof * 0.85)
            spill = b["spill"][k] * (0.55 + 0.45 * n_med[sl])
            out = _cov(sd - spill, pix) * np.where(
                sd < 0, rub_part, 0.8 * np.clip(rub_part + 0.3, 0, 1)
            )
            _blend(img, sl, out.astype(np.float32), rub)
        else:
            _blend(img, sl, a, roof)
            spill = b["spill"][k] * (0.55 + 0.45 * n_med[sl])
            if dmg == _MODERATE:
                ring = _cov(sd - spill, pix) * (1 - a) * 0.7
                _blend(img, sl, ring.astype(np.float32), rub)
            for hx, hy, hr in b["holes"][k]:
                if hr <= 0:
                    continue
                d = np.hypot(x - hx, y - hy)
                deb = (
                    _cov(d - 2.0 * hr * (1 + 0.3 * n_med[sl]), pix)
                    * a
                    * (0.8 if dmg == _MODERATE else 0.45)
                )
                _blend(img, sl, deb.astype(np.float32), rub)
                _blend(img, sl, _cov(d - hr, pix) * a, rub * 0.25)
        if b["burnt"][k]:
            soot = _cov(sd - 0.8 * b["spill"][k], pix) * np.clip(0.75 + 0.5 * n_low[sl], 0, 1)
            img[sl] *= (1 - 0.7 * soot)[..., None]

    bx = lay.boxes
    for k, sl in win.objects(bx):
        if after and bx["dmg"][k] >= _MODERATE:
            continue
        th = bx["th"][k]
        c, sn = math.cos(th), math.sin(th)
        ln = bx["h"][k] / tan_el
        dx = ln * (shadow_dir[0] * c + shadow_dir[1] * sn)
        dy = ln * (-shadow_dir[0] * sn + shadow_dir[1] * c)
        x, y = _local(win, sl, bx["cu"][k], bx["cv"][k], th)
        px, py = _local(win, sl, bx["pu"][k], bx["pv"][k], th)
        on_roof = _cov(_rect_sd(px, py, bx["pw"][k], bx["pl"][k]), pix)
        shadow = _cov(_swept_rect_sd(x, y, bx["w"][k], bx["l"][k], dx, dy), pix) * on_roof
        img[sl] *= (1 - 0.62 * shadow)[..., None]
        rgb = np.append(bx["rgb"][k], 0.5).astype(np.float32)
        _blend(
            img,
            sl,
            _cov(_rect_sd(x, y, bx["w"][k], bx["l"][k]), pix),
            rgb * (1 + 0.04 * n_fine[sl])[..., None],
        )

    tk = lay.tanks
    for k, sl in win.objects(tk):
        if after and tk["dmg"][k] >= _MODERATE:
            continue
        du, dv = win.U[sl] - tk["cu"][k], win.V[sl] - tk["cv"][k]
        ln = min(1.3 / tan_el, 3.0)
        sd = (
            np.hypot(du - 0.5 * ln * shadow_dir[0], dv - 0.5 * ln * shadow_dir[1])
            - tk["r"][k]
            - 0.3 * ln
        )
        img[sl] *= (1 - 0.55 * _cov(sd, pix))[..., None]
        r = tk["r"][k]
        lit = 1 + 0.25 * (du * sun3[0] + dv * sun3[1]) / (r * math.hypot(sun3[0], sun3[1]) + 1e-9)
        col = (
            np.float32(tk["tone"][k]) * np.array([1.0, 1.0, 1.02, 0.9], np.float32) * lit[..., None]
        )
        _blend(img, sl, _cov(np.hypot(du, dv) - r, pix), col.astype(np.float32))


def draw_craters(
    img: F32,
    win: _Window,
    lay: Layout,
    s: Any,
    sun3: NDArray[Any],
    noise: tuple[F32, F32, F32, F32],
) -> None:
    """Bowl with sun-consistent wall shading, raised rim, irregular fading ejecta and debris."""
    n_fine, n_med, _, n_blk = noise
    cr = lay.craters
    sd0 = s.seed * 7919 + 13
    pix = win.pix
    for k, sl in win.objects(cr):
        r = float(cr["r"][k])
        du, dv = win.U[sl] - cr["cu"][k], win.V[sl] - cr["cv"][k]
        dist = np.hypot(du, dv)
        rho = dist / r
        cs, sn = du / np.maximum(dist, 1e-6), dv / np.maximum(dist, 1e-6)
        cid = sd0 + 1000 + int(cr["id"][k]) * 17
        ang_n = value_noise(cs * 2.5, sn * 2.5, 1.0, cid)  # seamless around the circle
        rays = value_noise(cs * 9.0, sn * 9.0, 1.0, cid + 1)
        reach = 1.0 + 1.6 * (0.6 + 0.4 * ang_n)
        # ejecta: bright, irregular, fading outwards; zero beyond 3 radii
        a = np.exp(-(rho - 1.0) / (0.35 * reach)) * np.clip(
            0.75 + 0.35 * ang_n + 0.3 * rays, 0, 1.1
        )
        a = np.where(rho < 3.0, a, 0.0) * np.clip((3.0 - rho) / 0.4, 0, 1)
        patch = np.clip(0.7 + 0.6 * value_noise(win.U[sl], win.V[sl], 1.8, cid + 4), 0.2, 1.0)
        a = np.clip(a * patch * np.clip(1 - 0.25 * n_med[sl], 0, 1.2), 0, 0.92)
        ej = _EJECTA * (1 + 0.05 * n_fine[sl] + 0.04 * n_blk[sl] + 0.06 * rays)[..., None]
        # raised rim with sun shading (radial slope of a bump at 1.1 r)
        g_rim = -0.3 * (rho - 1.1) / 0.12**2 * np.exp(-(((rho - 1.1) / 0.12) ** 2)) * 0.15
        shade_rim = 1 + 0.8 * g_rim * (cs * sun3[0] + sn * sun3[1]) / max(sun3[2], 0.2)
        a_out = _cov(r - dist, pix)  # outside the bowl
        _blend(
            img,
            sl,
            (a * a_out).astype(np.float32),
            (ej * np.clip(shade_rim, 0.5, 1.5)[..., None]).astype(np.float32),
        )
        # debris: scattered blocks, denser near the rim
        u, v = win.U[sl], win.V[sl]
        deb_n = block_noise(u, v, 0.5, cid + 2)
        p = np.clip(0.12 * np.exp(-(rho - 1.0) / 0.8), 0, 1) * (rho > 1.0) * (rho < 3.0)
        deb = (deb_n + 1) / 2 > 1 - p
        tone = np.where(block_noise(u, v, 0.5, cid + 3) > 0, 0.9, 0.22).astype(np.float32)
        _blend(
            img,
            sl,
            deb.astype(np.float32) * 0.8,
            np.array([1.0, 0.97, 0.92, 0.85], np.float32) * tone[..., None],
        )
        # bowl: z = -D (1 - rho^2); Lambert shading with the after sun
        depth = 0.32 * r
        gu, gv = 2 * depth * du / r**2, 2 * depth * dv / r**2
        ndot = (-gu * sun3[0] - gv * sun3[1] + sun3[2]) / np.sqrt(gu * gu + gv * gv + 1) / sun3[2]
        shade = np.clip(ndot, 0.12, 1.7)
        # rim shadow: the sun-side wall shades the bowl (ray leaves the bowl below the rim)
        hs = math.hypot(sun3[0], sun3[1])
        su, sv = sun3[0] / hs, sun3[1] / hs
        tan_el = sun3[2] / hs
        p_along = (du * su + dv * sv) / r
        perp = (-du * sv + dv * su) / r
        exit_t = (
            np.sqrt(np.clip(1 - perp**2, 0, 1)) - p_along
        )  # distance to rim toward the sun (r units)
        z_here = -depth * (1 - np.clip(rho, 0, 1) ** 2)
        in_shadow = z_here + exit_t * r * tan_el < -0.05 * depth
        shade = np.where(in_shadow, np.minimum(shade, 0.25), shade)
        floor = 1 + 0.1 * n_fine[sl] + 0.1 * n_blk[sl] + 0.12 * block_noise(u, v, 0.9, cid + 5)
        col = _CRATER * ((0.7 + 0.3 * np.clip(rho, 0, 1) ** 2) * floor)[..., None]
        _blend(img, sl, _cov(dist - r, pix), (col * shade[..., None]).astype(np.float32))
