"""Synthetic before/after VHR scenes of a town with exact ground truth.

A scene is generated deterministically from a seed: a vector layout (streets, buildings with
heights, courtyards, roof tanks, trees, vegetation, cars, craters, damage) is built once, then
rendered window by window into tiled, DEFLATE-compressed GeoTIFFs, so memory stays bounded by the
window size whatever the scene size (256² to 32768² pixels). The after image has the events
(craters with sun-consistent shading and ejecta, damaged and burnt buildings following the UNOSAT
classes, burn scars) and nuisance change that is not damage (another sun angle, seasonal
vegetation, moved cars, new construction, another gain/offset/gamma per band, haze, noise,
8x8 block-quantisation artefacts), and it is misregistered by a known affine displacement.

Conventions
-----------
* **Pixel coordinates** ``(col, row)`` refer to pixel *centres*: pixel ``(0, 0)`` covers
  ``[x0, x0 + gsd] x [y0 - gsd, y0]`` and its centre is at ``(x0 + gsd/2, y0 - gsd/2)``.
* **Scene metres** (internal): ``u`` east and ``v`` south of the before raster's top-left corner;
  before pixel ``(col, row)`` is at ``u = (col + 0.5) * gsd``, ``v = (row + 0.5) * gsd``.
* **Misregistration** (``truth/misregistration.json``): ``matrix`` ``[[a, b, c], [d, e, f]]``
  maps a before-grid pixel ``(col, row)`` to the ``(col', row')`` on the before grid where the same
  ground point appears in the after image once the after image is put on the before grid using
  its own (claimed) georeferencing::

      col' = a * col + b * row + c        row' = d * col + e * row + f

  It is ``q = center + scale * R(rotation) @ (p - center) + shift`` with
  ``R = [[cos, -sin], [sin, cos]]`` acting on ``(col, row)`` vectors (a positive
  ``rotation_deg`` turns the content clockwise on screen, since rows run down). For a pure shift
  a feature at before pixel ``(c, r)`` shows at ``(c + dx, r + dy)`` in the after image resampled
  to the before grid. The after raster's geotransform and CRS are the honest nominal ones (the
  before grid, or another CRS/resolution); the misregistration is in the content only.
* **Sun**: ``(azimuth, elevation)`` in degrees, azimuth clockwise from north. Shadows fall
  opposite the azimuth with length ``height / tan(elevation)``.
* **Files** of a site folder: ``before.tif``, ``after.tif``, ``facilities.geojson``,
  ``footprints.geojson`` (EPSG:4326, buildings as they stood before), ``truth/craters.geojson``,
  ``truth/damage.geojson``, ``truth/misregistration.json``, ``truth/scene.json``.

Examples
--------
>>> import tempfile
>>> from changedet.synthetic import SceneSettings, generate_site
>>> site = generate_site(tempfile.mkdtemp(), SceneSettings(size_px=256, seed=3))
>>> sorted(p.name for p in site.iterdir())
['after.tif', 'before.tif', 'facilities.geojson', 'footprints.geojson', 'truth']
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from changedet.errors import ConfigError

__all__ = ["PRESETS", "SceneSettings", "generate_site", "misregistration_matrix", "write_samples"]

PRESETS = ("samples",)
_FULL_SCALE = {"uint8": 255.0, "uint16": 2047.0}  # uint16 holds 11-bit data like most VHR sensors


def _bad(name: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"SceneSettings.{name}", problem, fix)


@dataclass(frozen=True)
class SceneSettings:
    """Everything that defines a synthetic site; same settings, same bytes.

    Parameters
    ----------
    size_px
        Scene size in pixels, ``n`` (square) or ``(rows, cols)``; each 256 to 32768.
    gsd_m
        Ground sampling distance of the before image (metres). Default 0.5.
    crs
        Projected CRS (metres) of the before image. Default ``"EPSG:32637"`` (UTM 37N).
    seed
        Random seed of the layout and textures.
    origin
        ``(x, y)`` of the before raster's top-left corner in ``crs``; default
        ``(300000 + 5000 * (seed % 40), 4000000)`` (about 36.1°N, 36.8°E).
    bands, dtype
        3 (RGB) or 4 (RGB + NIR) bands; ``"uint8"`` (0-255) or ``"uint16"`` (11-bit, 0-2047).
    sun_before, sun_after
        ``(azimuth, elevation)`` in degrees. Defaults (135, 58) and (160, 42).
    shift_px, rotation_deg, scale, center_px
        Misregistration of the after image content (see module docstring). ``|shift| <= 15``,
        ``|rotation_deg| <= 0.5``, ``scale`` in [0.98, 1.02]; ``center_px`` defaults to the scene
        centre ``((cols - 1) / 2, (rows - 1) / 2)``.
    after_crs, after_gsd_m
        Grid of the after raster; ``None`` means the before CRS / GSD.
    n_craters, crater_density_km2
        Number of craters, or (when ``n_craters`` is None) craters per km². Default 40 / km².
    n_facilities, facility_clear_m
        Number of facilities (default about 4 / km², at least 3); one facility in three is kept
        clear of craters within ``facility_clear_m`` metres and of damage.
    damage_share
        Share of buildings damaged without a crater next to them (shelling, fire). Default 0.03.
    n_new_buildings
        New buildings in the after image (default about 6 / km², at least 1).
    seasonal_change
        Vegetation greener before, drier after.
    gain_after, offset_after, gamma_after
        Per-band (R, G, B, NIR) sensor response of the after image: ``(gain * x + offset) ** gamma``.
    haze_before, haze_after
        Strength of additive, low-frequency, bluish haze (reflectance units).
    noise_sigma
        Sensor noise (reflectance units, per pixel, both images).
    jpeg_strength
        Strength of the 8x8 block quantisation (JPEG table multiplier; 0 disables).

    Examples
    --------
    >>> SceneSettings(size_px=512, seed=1).shape
    (512, 512)
    """

    size_px: int | tuple[int, int] = 1024
    gsd_m: float = 0.5
    crs: str = "EPSG:32637"
    seed: int = 0
    origin: tuple[float, float] | None = None
    bands: int = 3
    dtype: str = "uint8"
    sun_before: tuple[float, float] = (135.0, 58.0)
    sun_after: tuple[float, float] = (160.0, 42.0)
    shift_px: tuple[float, float] = (4.37, -2.81)
    rotation_deg: float = 0.0
    scale: float = 1.0
    center_px: tuple[float, float] | None = None
    after_crs: str | None = None
    after_gsd_m: float | None = None
    n_craters: int | None = None
    crater_density_km2: float = 40.0
    n_facilities: int | None = None
    facility_clear_m: float = 250.0
    damage_share: float = 0.03
    n_new_buildings: int | None = None
    seasonal_change: bool = True
    gain_after: tuple[float, ...] = (1.04, 1.0, 0.95, 1.05)
    offset_after: tuple[float, ...] = (0.01, 0.01, 0.0, 0.0)
    gamma_after: tuple[float, ...] = (0.95, 1.0, 1.04, 1.0)
    haze_before: float = 0.01
    haze_after: float = 0.05
    noise_sigma: float = 0.008
    jpeg_strength: float = 0.3

    def __post_init__(self) -> None:
        shape = (
            (self.size_px, self.size_px) if isinstance(self.size_px, int) else tuple(self.size_px)
        )
        if len(shape) != 2 or not all(
            isinstance(n, (int, np.integer)) and 256 <= n <= 32768 for n in shape
        ):
            raise _bad(
                "size_px",
                f"must be an int or (rows, cols) with each 256 to 32768, got {self.size_px!r}",
                "Use e.g. size_px=1024.",
            )
        if not 0.05 <= self.gsd_m <= 10:
            raise _bad(
                "gsd_m", f"must be 0.05 to 10 metres, got {self.gsd_m}", "VHR imagery is 0.3-1 m."
            )
        if self.after_gsd_m is not None and not 0.05 <= self.after_gsd_m <= 10:
            raise _bad(
                "after_gsd_m",
                f"must be 0.05 to 10 metres or None, got {self.after_gsd_m}",
                "Use e.g. 0.6.",
            )
        for name in ("crs", "after_crs"):
            value = getattr(self, name)
            if value is None:
                continue
            crs = _crs(value, name)
            if not crs.is_projected or crs.axis_info[0].unit_name not in ("metre", "meter"):
                raise _bad(
                    name,
                    f"{value!r} is not a projected CRS in metres",
                    "Use a UTM zone, e.g. 'EPSG:32637'.",
                )
        if self.bands not in (3, 4):
            raise _bad(
                "bands",
                f"must be 3 (RGB) or 4 (RGB+NIR), got {self.bands}",
                "Use bands=3 or bands=4.",
            )
        if self.dtype not in _FULL_SCALE:
            raise _bad(
                "dtype", f"must be 'uint8' or 'uint16', got {self.dtype!r}", "Use dtype='uint8'."
            )
        for name in ("sun_before", "sun_after"):
            az, el = getattr(self, name)
            if not (0 <= az < 360 and 5 <= el <= 89):
                raise _bad(
                    name,
                    f"(azimuth, elevation) must be in [0, 360) x [5, 89] degrees, got {(az, el)}",
                    "Use e.g. (135.0, 58.0).",
                )
        if len(self.shift_px) != 2 or max(abs(self.shift_px[0]), abs(self.shift_px[1])) > 15:
            raise _bad(
                "shift_px",
                f"must be (dx, dy) with |dx|, |dy| <= 15 px, got {self.shift_px}",
                "Use e.g. (4.37, -2.81).",
            )
        if abs(self.rotation_deg) > 0.5:
            raise _bad(
                "rotation_deg",
                f"must be within +-0.5 degrees, got {self.rotation_deg}",
                "Use e.g. 0.2.",
            )
        if not 0.98 <= self.scale <= 1.02:
            raise _bad("scale", f"must be 0.98 to 1.02, got {self.scale}", "Use e.g. 1.001.")
        for name in ("gain_after", "offset_after", "gamma_after"):
            if len(getattr(self, name)) != 4:
                raise _bad(name, "needs 4 values (R, G, B, NIR)", "Use e.g. (1.0, 1.0, 1.0, 1.0).")
        if not 0 <= self.damage_share <= 0.5:
            raise _bad(
                "damage_share", f"must be 0 to 0.5, got {self.damage_share}", "Use e.g. 0.03."
            )
        for name in ("n_craters", "n_facilities", "n_new_buildings"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 100000:
                raise _bad(
                    name,
                    f"must be None or 0 to 100000, got {value}",
                    "Leave it None for the default density.",
                )

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the before raster."""
        if isinstance(self.size_px, int):
            return (self.size_px, self.size_px)
        return (int(self.size_px[0]), int(self.size_px[1]))

    @property
    def origin_xy(self) -> tuple[float, float]:
        """``(x, y)`` of the before raster's top-left corner in ``crs``."""
        if self.origin is not None:
            return (float(self.origin[0]), float(self.origin[1]))
        return (300000.0 + 5000.0 * (self.seed % 40), 4000000.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON settings (tuples as lists), with the derived values filled in."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["size_px"] = list(self.shape)
        d["origin"] = list(self.origin_xy)
        d["center_px"] = list(_center(self))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _crs(value: str, name: str) -> Any:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(value)
    except CRSError as err:
        raise _bad(
            name, f"{value!r} is not a CRS pyproj understands ({err})", "Use e.g. 'EPSG:32637'."
        ) from None


def _center(s: SceneSettings) -> tuple[float, float]:
    if s.center_px is not None:
        return (float(s.center_px[0]), float(s.center_px[1]))
    return ((s.shape[1] - 1) / 2.0, (s.shape[0] - 1) / 2.0)


def misregistration_matrix(s: SceneSettings) -> np.ndarray:
    """The 2x3 affine ``matrix`` of ``truth/misregistration.json`` for settings ``s``.

    Examples
    --------
    >>> misregistration_matrix(SceneSettings(shift_px=(2.0, -1.5))).round(6).tolist()
    [[1.0, 0.0, 2.0], [0.0, 1.0, -1.5]]
    """
    t = math.radians(s.rotation_deg)
    a = s.scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    c = np.array(_center(s))
    off = c - a @ c + np.array(s.shift_px, float)
    return np.hstack([a, off[:, None]]) + 0.0  # + 0.0: no negative zeros in the JSON


def generate_site(
    out_dir: str | os.PathLike[str],
    settings: SceneSettings | None = None,
    *,
    window_px: int = 512,
    workers: int | None = None,
) -> Path:
    """Generate one site (rasters, facilities, footprints, ground truth) into ``out_dir``.

    Parameters
    ----------
    out_dir
        Site folder; created if needed. Files are written atomically (existing ones replaced).
    settings
        The scene; default ``SceneSettings()`` (1024², seed 0).
    window_px
        Rendering window, a multiple of 64. Changes speed and memory, never the pixels.
    workers
        Processes rendering windows in parallel (forked; 1 renders in this process). Default:
        up to 4, one per CPU. Never changes the pixels.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    ConfigError
        When a setting is out of range (raised when building ``SceneSettings``) or
        ``window_px`` / ``workers`` is invalid.

    Examples
    --------
    >>> import tempfile
    >>> site = generate_site(tempfile.mkdtemp(), SceneSettings(size_px=256, seed=5))
    >>> (site / "truth" / "craters.geojson").exists()
    True
    """
    from changedet._synth_io import write_site

    s = settings if settings is not None else SceneSettings()
    if window_px < 64 or window_px % 64:
        raise ConfigError(
            "window_px", f"must be a positive multiple of 64, got {window_px}", "Use 512 or 1024."
        )
    if workers is None:
        workers = max(1, min(4, os.cpu_count() or 1))
    if workers < 1:
        raise ConfigError(
            "workers", f"must be at least 1, got {workers}", "Use 1 to render in this process."
        )
    return write_site(Path(out_dir), s, window_px=window_px, workers=workers)


def _sample_settings() -> list[SceneSettings]:
    return [
        SceneSettings(size_px=768, seed=101, shift_px=(4.37, -2.81), n_craters=7),
        SceneSettings(
            size_px=768,
            seed=202,
            shift_px=(-7.62, 5.18),
            rotation_deg=0.3,
            scale=1.0008,
            sun_after=(205.0, 38.0),
            n_craters=7,
        ),
        SceneSettings(
            size_px=768,
            seed=303,
            shift_px=(2.45, 3.9),
            rotation_deg=-0.15,
            after_crs="EPSG:32636",
            after_gsd_m=0.6,
            sun_after=(110.0, 35.0),
            n_craters=7,
        ),
    ]


def write_samples(
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    size_px: int = 1024,
    n_sites: int = 1,
    preset: str | None = None,
) -> list[Path]:
    """Write synthetic sample sites ``site_01``, ``site_02``, ... into ``out``.

    Parameters
    ----------
    out
        Output folder (one sub-folder a site).
    seed, size_px, n_sites
        Seed of the first site (site ``i`` uses ``seed + i``), scene size, number of sites.
        Sites cycle through three kinds of misregistration: a shift; a shift with a small
        rotation and scale; a shift and rotation with the after image in the neighbouring UTM
        zone at 0.6 m. Ignored when ``preset`` is given.
    preset
        ``"samples"``: the three committed ``sample_tiles/`` sites, bit for bit.

    Returns
    -------
    list of Path
        The site folders.

    Raises
    ------
    ConfigError
        Unknown preset, or bad ``size_px`` / ``n_sites``.

    Examples
    --------
    >>> import tempfile
    >>> [p.name for p in write_samples(tempfile.mkdtemp(), seed=1, size_px=256, n_sites=2)]
    ['site_01', 'site_02']
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(
                "preset", f"unknown preset {preset!r}", f"Valid presets: {', '.join(PRESETS)}."
            )
        settings = _sample_settings()
    else:
        if not 1 <= n_sites <= 1000:
            raise ConfigError("n_sites", f"must be 1 to 1000, got {n_sites}", "Use e.g. --sites 3.")
        settings = []
        for i in range(n_sites):
            rng = np.random.default_rng([seed + i, 7])
            shift = tuple(float(x) for x in np.round(rng.uniform(-10, 10, 2), 2))
            kind: dict[str, Any] = {}
            if i % 3 == 1:
                kind = {"rotation_deg": 0.25, "scale": 1.0005}
            elif i % 3 == 2:
                kind = {"rotation_deg": -0.15, "after_crs": "EPSG:32636", "after_gsd_m": 0.6}
            settings.append(SceneSettings(size_px=size_px, seed=seed + i, shift_px=shift, **kind))  # type: ignore[arg-type]
    return [generate_site(Path(out) / f"site_{i + 1:02d}", s) for i, s in enumerate(settings)]
