"""The main job run by ``make demo``: the pipeline on every site under a tile folder.

A site is a folder holding ``before.tif`` and ``after.tif``, and optionally
``footprints.geojson`` (building outlines), ``facilities.geojson`` (the listed facilities),
``roads.geojson`` (road centre lines) and ``truth/`` (ground truth of a synthetic site). For each site the demo runs
:func:`changedet.pipeline.run_pair` into ``OUT/<site>/`` (figures, ``report.html``, manifest:
the full output folder), prints one line per site and where its ``report.html`` is, and, when the
site has ground truth, scores the run against it. A site folder that already holds an earlier
changedet run (a ``manifest.json``) is replaced; any other non-empty folder is refused.

The sun angles of a synthetic site's after image are read from ``truth/scene.json``; for real
imagery they come from the image metadata (pass them to ``changedet run``).

Examples
--------
>>> from changedet.demo import run_demo  # doctest: +SKIP
>>> run_demo("sample_tiles", "demo_out")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from changedet.errors import ChangedetError
from changedet.report import plot_before_after


def find_sites(tiles: str | os.PathLike[str]) -> list[Path]:
    """Return the sub-folders of ``tiles`` that hold ``before.tif`` and ``after.tif``, sorted.

    Raises
    ------
    ChangedetError
        When ``tiles`` is not a folder or holds no site.
    """
    tiles = Path(tiles)
    if not tiles.is_dir():
        raise ChangedetError(tiles, "is not a folder", "Pass the folder that holds the sites.")
    sites = sorted(
        p for p in tiles.iterdir() if (p / "before.tif").is_file() and (p / "after.tif").is_file()
    )
    if not sites:
        raise ChangedetError(
            tiles,
            "holds no site (a sub-folder with before.tif and after.tif)",
            "Run `changedet sample --out DIR` to make sample sites.",
        )
    return sites


def sun_after(site: str | os.PathLike[str]) -> tuple[float | None, float | None]:
    """The after image's sun ``(azimuth, elevation)`` in degrees of a synthetic site.

    Read from ``site/truth/scene.json`` (``settings.sun_after``); ``(None, None)`` when the site
    has no ground truth (real imagery: take the angles from the image metadata).

    Parameters
    ----------
    site
        A site folder (``before.tif``, ``after.tif``, optionally ``truth/scene.json``).

    Returns
    -------
    tuple
        ``(azimuth_deg, elevation_deg)``, or ``(None, None)``.

    Examples
    --------
    >>> import tempfile
    >>> sun_after(tempfile.mkdtemp())
    (None, None)
    """
    scene = Path(site) / "truth" / "scene.json"
    if not scene.is_file():
        return None, None
    data = json.loads(scene.read_text())
    az, el = data.get("settings", data).get("sun_after", (None, None))
    return az, el


def _synthetic_caption(site: Path) -> dict[str, Any]:
    """Caption fields of a synthetic site (from its truth/scene.json): what made the images."""
    scene = site / "truth" / "scene.json"
    if not scene.is_file():
        return {}
    data = json.loads(scene.read_text())
    seed = data.get("settings", data).get("seed")
    generator = data.get("generator", "changedet.synthetic")
    return {
        "sensor": f"synthetic scene ({generator}, seed {seed})",
        "attribution": "synthetic, made by changedet (no third-party imagery)",
    }


def _holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` holds the results of an earlier changedet run (a demo may replace
    them, e.g. after an upgrade changed the configuration; any other folder is protected)."""
    from changedet.manifest import load_manifest

    try:
        load_manifest(folder / "manifest.json")
    except ChangedetError:
        return False
    return True


def run_demo(
    tiles: str | os.PathLike[str], out: str | os.PathLike[str], *, pipeline: bool = True
) -> list[Path]:
    """Run the demo over every site in ``tiles``; return the folders (or figures) written.

    Parameters
    ----------
    tiles
        Folder of sites.
    out
        Output folder; one sub-folder per site.
    pipeline
        Run the full pipeline (default); with ``False`` only the before/after figures.

    Returns
    -------
    list of pathlib.Path
        One output folder per site (``pipeline``), else one figure per site.
    """
    from changedet.config import Config
    from changedet.evaluate import evaluate_run
    from changedet.pipeline import run_pair

    written = []
    for site in find_sites(tiles):
        site_out = Path(out) / site.name
        if not pipeline:
            written.append(
                plot_before_after(
                    site / "before.tif", site / "after.tif", site_out / "before_after.png"
                )
            )
            continue
        az, el = sun_after(site)
        footprints = site / "footprints.geojson"
        facilities = site / "facilities.geojson"
        roads = site / "roads.geojson"
        cfg = Config().updated({"report": _synthetic_caption(site)})
        res = run_pair(
            site / "before.tif",
            site / "after.tif",
            out=site_out,
            footprints=footprints if footprints.is_file() else None,
            facilities=facilities if facilities.is_file() else None,
            roads=roads if roads.is_file() else None,
            config=cfg,
            sun_azimuth_deg=az,
            sun_elevation_deg=el,
            overwrite=_holds_a_run(site_out),
        )
        new = int((res.craters["new"] == True).sum()) if len(res.craters) else 0  # noqa: E712
        damaged = int(res.damage["damage_class"].isin(["destroyed", "severe", "moderate"]).sum())
        line = (
            f"{site.name}: shift ({res.coreg.shift_px[0]:+.2f}, {res.coreg.shift_px[1]:+.2f}) px, "
            f"{new} new craters, {damaged} damaged buildings"
        )
        if res.facilities is not None:
            fac = res.facilities
            inner = f"craters_within_{min(cfg.facilities.rings_m):g}m"
            hit = (fac[inner] > 0) | fac["damage_class"].isin(["destroyed", "severe", "moderate"])
            line += (
                f", {int(hit.sum())}/{len(fac)} facilities with a crater within "
                f"{min(cfg.facilities.rings_m):g} m or damaged"
            )
        if (site / "truth").is_dir():
            s = evaluate_run(site_out, site / "truth")
            line += (
                f" | vs truth: crater F1 {s['crater_f1']:.2f}, building F1 {s['building_f1']:.2f}, "
                f"co-registration error {s['coreg_error_px']:.2f} px"
            )
        print(line, flush=True)
        print(f"  report: {(site_out / 'report.html').resolve()}", flush=True)
        written.append(site_out)
    return written
