"""Is a crater new? The before image measured at the same place (for :mod:`changedet.craters`).

An older crater is an enclosed dark bowl in the before image too, not green (vegetation the
blast removed is no older crater), not bluer than the ground around it (a building's or tree's
cast shadow, lit by the sky only, where the crater now lies is no older crater), and resembles the after image (the correlation of the two
within 2 R: a dark road crossing or a building's shadow where a crater now lies does not). The
before image is searched at the same radius on a 3 × 3 grid of offsets (``persistence_search``),
so residual misregistration or a shadow that moved with the sun does not read as new.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from changedet._crater_measure import WINDOW_RADII, annulus_means, ramp, rings, window

if TYPE_CHECKING:
    from changedet.craters import CraterParams

__all__ = ["disc_mean", "persistence", "similarity"]


def disc_mean(arr: np.ndarray, row: int, col: int, dy: float, dx: float, radius: float) -> float:
    """Mean of the finite values of ``arr`` within ``radius`` px of ``(row + dy, col + dx)``.

    Examples
    --------
    >>> disc_mean(np.arange(25.0).reshape(5, 5), 2, 2, 0.0, 0.0, 1.1)
    12.0
    """
    half = math.ceil(radius) + 2
    win = window(arr, row, col, half)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    vals = win[np.hypot(yy - dy, xx - dx) < radius]
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else math.nan


def _blue_shift(blue: np.ndarray, row: int, col: int, dy: float, dx: float, radius: float) -> float:
    """Blue chromaticity of the bowl (``ρ < 0.75 R``) minus the ring's (``1.15–2 R``)."""
    at = (np.array([row]), np.array([col]), np.array([dy]), np.array([dx]))
    bowl = annulus_means(blue, *at, np.zeros(1), np.array([0.75 * radius]))
    ring = annulus_means(blue, *at, np.array([1.15 * radius]), np.array([2.0 * radius]))
    return float(bowl[0] - ring[0])


def similarity(
    wa: np.ndarray, wb: np.ndarray, dy: float, dx: float, oy: float, ox: float, radius: float
) -> float:
    """Correlation of the after window ``wa`` with ``wb`` shifted by ``(oy, ox)`` within ``2 R``.

    ``wa`` and ``wb`` are windows centred on the same pixel (``wb`` may be larger); the crater
    centre is at ``(dy, dx)`` from it. NaN-free pixels only; 0 when too few or flat.

    Examples
    --------
    >>> w = np.random.default_rng(0).random((21, 21))
    >>> round(similarity(w, w, 0.0, 0.0, 0.0, 0.0, 4.0), 6), similarity(w, -w, 0, 0, 0, 0, 4) < 0
    (1.0, True)
    """
    ha, hb = (wa.shape[0] - 1) // 2, (wb.shape[0] - 1) // 2
    yy, xx = np.mgrid[-ha : ha + 1, -ha : ha + 1].astype(np.float64)
    disc = np.hypot(yy - dy, xx - dx) < 2.0 * radius
    a = wa[disc]
    coords = [yy[disc] + oy + hb, xx[disc] + ox + hb]
    b = ndimage.map_coordinates(wb, coords, order=1, mode="constant", cval=np.nan)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 8:
        return 0.0
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else 0.0


def persistence(
    lum: np.ndarray,
    lum_b: np.ndarray,
    green_b: np.ndarray | None,
    blue_b: np.ndarray | None,
    row: int,
    col: int,
    dy: float,
    dx: float,
    radius: float,
    depth: float,
    change_mean: float,
    has_change: bool,
    p: CraterParams,
    surround_ratio: float = math.nan,
) -> dict[str, Any]:
    """``persistence``, ``new`` and ``newness_verified`` of one detection (see the module doc).

    ``surround_ratio`` is ``surround_change`` over the scene's median ``|after − before|``
    (NaN: not known, no test).

    The darkest matching bowl near the same place in the before image: residual
    misregistration and shadows that moved with the sun must not make a blob "new".

    Examples
    --------
    >>> from changedet.craters import CraterParams
    >>> yy, xx = np.mgrid[0:80, 0:80]
    >>> rho = np.hypot(yy - 40, xx - 40)
    >>> after = 1.0 - 0.5 * (rho < 6) + 0.3 * ((rho >= 7) & (rho < 12))
    >>> same = persistence(after, after, None, None, 40, 40, 0.0, 0.0, 7.0, 0.6, 0.0, False,
    ...                    CraterParams())
    >>> same["new"], same["newness_verified"]  # the crater was there before: not new
    (False, True)
    >>> flat = persistence(after, np.ones_like(after), None, None, 40, 40, 0.0, 0.0, 7.0, 0.6,
    ...                    0.0, False, CraterParams())
    >>> flat["new"]
    True
    """
    half = math.ceil(WINDOW_RADII * radius) + 2
    reach_b = max(1.0, p.persistence_search * radius)
    wb = window(lum_b, row, col, half + math.ceil(reach_b))
    wa = window(lum, row, col, half)
    depths = []
    for oy, ox in itertools.product((-reach_b, 0.0, reach_b), repeat=2):
        st = rings(wb, dy + oy, dx + ox, radius, None)
        if st["valid"] >= p.min_valid and np.isfinite(st["depth"]):
            # an enclosed dark blob, not the side of a road or a roof edge; and not a green
            # one: a tree crown or bush that the blast removed is no older crater
            weight = ramp(st["enclosure"], *p.enclosure_ramp)
            if weight > 0:  # (the tests below only scale it down)
                if green_b is not None:
                    g_b = disc_mean(green_b, row, col, dy + oy, dx + ox, 0.75 * radius)
                    if np.isfinite(g_b):
                        weight *= 1 - ramp(g_b, *p.vegetation_ramp)
                if blue_b is not None:
                    # and not a cast shadow: lit by the sky only, it is bluer than the sunlit
                    # ground around it, while an older crater's bowl is sunlit soil
                    b_b = _blue_shift(blue_b, row, col, dy + oy, dx + ox, radius)
                    if np.isfinite(b_b):
                        weight *= 1 - ramp(b_b, *p.shadow_ramp)
                # and the same thing: an older crater looks as it does now (bowl, rim and ejecta
                # in place), while a dark road crossing or a building's shadow where a crater now
                # lies does not resemble it
                weight *= max(similarity(wa, wb, dy, dx, oy, ox, radius), 0.0)
            depths.append(st["depth"] * weight)
    if not depths:
        return {}
    persistence = max(max(depths), 0.0) / depth
    new = persistence < p.max_persistence
    if has_change:
        new = new and bool(change_mean >= p.min_change_score)
    if math.isfinite(surround_ratio):  # the ground around changed beyond the pair's noise
        new = new and bool(surround_ratio >= p.min_surround_change)
    return {"persistence": persistence, "new": bool(new), "newness_verified": True}
