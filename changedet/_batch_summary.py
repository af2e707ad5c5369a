"""The batch summary: ``OUT/summary/`` across every pair of a :func:`changedet.batch.run_batch`.

``facilities.csv`` holds one row per facility across all pairs (the choice of tile for a
facility seen in several, and the rows of a global list that no tile covers, are described in
:mod:`changedet.batch`), ``overview.png`` maps the tiles and facilities, ``report.html`` shows
both. Nothing here records a date or a duration: the same results give the same bytes.

Examples
--------
>>> from changedet._batch_summary import summarize_facilities  # doctest: +SKIP
>>> summarize_facilities("batch_out", ["site_01", "site_02"])[["id", "tile"]]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from changedet.batch import PairSpec

PathLike = str | os.PathLike[str]

__all__ = ["summarize_facilities", "write_summary"]


def _pair_facilities(out: Path, tile_id: str) -> Any:
    """A pair's facility table with lon/lat, tile id and distance to the tile edge."""
    import geopandas as gpd
    import pandas as pd
    import rasterio
    from shapely import wkt
    from shapely.geometry import box

    path = out / tile_id / "facilities.csv"
    mask = out / tile_id / "change_mask.tif"
    if not path.is_file() or not mask.is_file():
        return None
    df = pd.read_csv(path, dtype={"id": str, "nearest_crater_id": str})
    with rasterio.open(mask) as src:
        crs, bounds = src.crs, src.bounds
    geoms = gpd.GeoSeries([wkt.loads(g) for g in df["geometry"]], crs=crs)
    edge = box(*bounds).exterior
    df["edge_distance_m"] = [
        round(float(edge.distance(g.representative_point())), 2) for g in geoms
    ]
    pts = geoms.representative_point().to_crs("EPSG:4326")
    df["lon"], df["lat"] = pts.x.round(7).to_numpy(), pts.y.round(7).to_numpy()
    df["tile"] = tile_id
    return df.drop(columns=["geometry"])


def _same_place(a: Any, b: Any, tol_m: float = 5.0) -> bool:
    dy = (a["lat"] - b["lat"]) * 111_320.0
    dx = (a["lon"] - b["lon"]) * 111_320.0 * math.cos(math.radians(a["lat"]))
    return math.hypot(dx, dy) <= tol_m


def summarize_facilities(out: PathLike, tile_ids: list[str], global_facilities: Any = None) -> Any:
    """One row per facility across the pairs in ``out`` (rule in the module docstring).

    Examples
    --------
    >>> summarize_facilities("batch_out", ["site_01", "site_02"])[["id", "tile"]]  # doctest: +SKIP
    """
    import pandas as pd

    out = Path(out)
    tables = [t for t in (_pair_facilities(out, i) for i in sorted(tile_ids)) if t is not None]
    rows = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    chosen = []
    if len(rows):
        rows = rows[rows["in_scene"].astype(str).str.lower() == "true"]
        for _, group in rows.groupby("id", sort=True):
            # same id, different place: different facilities (per-site lists may reuse ids)
            places: list[list[Any]] = []
            for _, r in group.iterrows():
                for place in places:
                    if _same_place(place[0], r):
                        place.append(r)
                        break
                else:
                    places.append([r])
            for place in places:
                best = sorted(
                    place,
                    key=lambda r: (
                        not str(r["assessable"]).lower() == "true",
                        -float(r["edge_distance_m"]),
                        r["tile"],
                    ),
                )[0].copy()
                best["tiles"] = ";".join(sorted(r["tile"] for r in place))
                best["same_id_elsewhere"] = len(places) > 1
                chosen.append(best)
    table = pd.DataFrame(chosen)
    if global_facilities is not None:
        seen = set(table["id"]) if len(table) else set()
        missing = global_facilities[~global_facilities["id"].isin(seen)]
        if len(missing):
            pts = missing.geometry.representative_point().to_crs("EPSG:4326")
            extra = pd.DataFrame(
                {
                    "id": missing["id"].to_numpy(),
                    "name": missing["name"].to_numpy(),
                    "type": missing["type"].to_numpy(),
                    "in_scene": False,
                    "damage_class": "not covered",
                    "lon": pts.x.round(7).to_numpy(),
                    "lat": pts.y.round(7).to_numpy(),
                    "tile": "",
                    "tiles": "",
                }
            )
            table = pd.concat([table, extra], ignore_index=True)
    if not len(table):
        return table
    first = ["id", "name", "type", "tile", "tiles", "damage_class", "damaged_share", "assessable"]
    cols = [c for c in first if c in table.columns] + [
        c for c in table.columns if c not in first and c not in ("lon", "lat")
    ]
    return table[[*cols, "lon", "lat"]].sort_values(["id", "tile"]).reset_index(drop=True)


def write_summary(
    out: PathLike, specs: list[PairSpec], record: dict[str, Any], global_facilities: Any = None
) -> dict[str, Path]:
    """Write ``OUT/summary/``: ``facilities.csv``, ``overview.png`` and ``report.html``.

    Examples
    --------
    >>> write_summary("batch_out", specs, record)["facilities.csv"].name  # doctest: +SKIP
    'facilities.csv'
    """
    from changedet._atomic import write_text_atomic

    out = Path(out)
    summary = out / "summary"
    summary.mkdir(parents=True, exist_ok=True)
    ok = [s.id for s in specs if record["pairs"][s.id]["status"] in ("done", "skipped")]
    table = summarize_facilities(out, ok, global_facilities)
    files = {"facilities.csv": summary / "facilities.csv"}
    write_text_atomic(files["facilities.csv"], table.to_csv(index=False, lineterminator="\n"))
    files["overview.png"] = _overview_map(out, specs, record, table, summary / "overview.png")
    files["report.html"] = _summary_report(out, specs, record, table, files["overview.png"])
    return files


def _tile_outline(out: Path, spec: PairSpec) -> Any:
    import rasterio
    from shapely.geometry import box

    try:
        with rasterio.open(spec.before) as src:
            return box(*src.bounds), src.crs
    except Exception:
        return None, None


def _overview_map(
    out: Path, specs: list[PairSpec], record: dict[str, Any], table: Any, path: Path
) -> Path:
    import geopandas as gpd

    from changedet.figures import (
        DAMAGE_COLOURS,
        PALETTE,
        STYLE,
        add_north_arrow,
        add_scale_bar,
        figure_style,
        legend_handles,
        new_figure,
        save_figure,
        set_map_axes,
    )

    outlines, ids, status = [], [], []
    for spec in specs:
        geom, crs = _tile_outline(out, spec)
        if geom is None:
            continue
        outlines.append(gpd.GeoSeries([geom], crs=crs).to_crs("EPSG:4326").iloc[0])
        ids.append(spec.id)
        status.append(record["pairs"][spec.id]["status"])
    tiles = gpd.GeoDataFrame({"id": ids, "status": status}, geometry=outlines, crs="EPSG:4326")
    fac = (
        gpd.GeoDataFrame(
            table, geometry=gpd.points_from_xy(table["lon"], table["lat"]), crs="EPSG:4326"
        )
        if len(table)
        else gpd.GeoDataFrame({"damage_class": []}, geometry=[], crs="EPSG:4326")
    )
    everything = gpd.GeoSeries([*tiles.geometry, *fac.geometry], crs="EPSG:4326")
    utm = everything.estimate_utm_crs() if len(everything) else "EPSG:3857"
    tiles, fac = tiles.to_crs(utm), fac.to_crs(utm)
    left, bottom, right, top = gpd.GeoSeries([*tiles.geometry, *fac.geometry], crs=utm).total_bounds
    # a square extent around everything: tiles spread along one axis stay readable
    half = max(right - left, top - bottom, 100.0) * 0.55
    cx, cy = (left + right) / 2, (top + bottom) / 2
    extent = (cx - half, cy - half, cx + half, cy + half)
    # tiles far apart (each under 8 % of the map's width) would be dots: add one panel per tile
    sizes = [max(g.bounds[2] - g.bounds[0], g.bounds[3] - g.bounds[1]) for g in tiles.geometry]
    panels = _panel_tiles(tiles, fac) if len(tiles) > 1 and max(sizes) < 0.08 * 2 * half else []
    with figure_style():
        if panels:
            ncol = min(3, len(panels))
            nrow = math.ceil(len(panels) / ncol)
            fig = new_figure((6.5 + 2.6 * ncol, max(5.5, 2.6 * nrow)))
            grid = fig.add_gridspec(nrow, ncol + 2)
            ax = fig.add_subplot(grid[:, :2])
        else:
            fig = new_figure((9.5, 7.0))
            ax = fig.add_subplot()
        # with panels, the facilities are labelled there (here they would sit on each other)
        _draw_tiles_and_facilities(ax, tiles, fac, tile_labels=True, facility_labels=not panels)
        set_map_axes(ax, extent, crs_name=str(utm))
        add_scale_bar(ax)
        add_north_arrow(ax)
        for k, tile_id in enumerate(panels):
            sub = fig.add_subplot(grid[k // ncol, 2 + k % ncol])
            g = tiles.loc[tiles["id"] == tile_id].geometry.iloc[0]
            x0, y0, x1, y1 = g.bounds
            pad = 0.08 * max(x1 - x0, y1 - y0)
            mid_x, mid_y, h = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2 + pad
            _draw_tiles_and_facilities(sub, tiles, fac, tile_labels=False, facility_labels=True)
            sub.set_xlim(mid_x - h, mid_x + h)
            sub.set_ylim(mid_y - h, mid_y + h)
            sub.set_aspect("equal")
            sub.set_xticks([])
            sub.set_yticks([])
            sub.set_title(f"tile {tile_id}", fontsize=8)
            add_scale_bar(sub)
        items = [
            ("line", PALETTE["blue"], "tile (done / skipped)"),
            ("line", PALETTE["vermillion"], "tile (failed)"),
        ]
        items += [("circle", v, f"facility: {k}") for k, v in DAMAGE_COLOURS.items()]
        items += [("circle", STYLE["facility"], "facility: no visible damage / other")]
        with contextlib.suppress(Exception):
            (fig if panels else ax).legend(
                handles=legend_handles(items),
                loc="outside lower center" if panels else "upper left",
                **({"ncol": 4} if panels else {"bbox_to_anchor": (1.02, 1.0)}),
                fontsize=7,
                frameon=False,
            )
        title = f"Batch overview: {len(tiles)} tile(s), {len(fac)} facilities"
        n_tiles = len(tiles)
        if panels and len(panels) < n_tiles:
            title += f"; right: the {len(panels)} tiles with the most damaged facilities"
        ax.set_title(title, fontsize=9)
        save_figure(fig, path)
    return path


#: At most this many tiles get a panel of their own in ``overview.png``.
_MAX_PANELS = 9


def _panel_tiles(tiles: Any, fac: Any) -> list[str]:
    """Ids of the tiles shown in panels: most damaged facilities first, then most facilities."""
    ranked = []
    for tile_id, geom in zip(tiles["id"], tiles.geometry, strict=True):
        inside = fac[fac.within(geom)] if len(fac) else fac
        damaged = (
            int(inside["damage_class"].isin(["destroyed", "severe", "moderate"]).sum())
            if len(inside)
            else 0
        )
        ranked.append((-damaged, -len(inside), str(tile_id)))
    return [t for _, _, t in sorted(ranked)[:_MAX_PANELS]]


def _draw_tiles_and_facilities(
    ax: Any, tiles: Any, fac: Any, *, tile_labels: bool, facility_labels: bool
) -> None:
    from changedet.figures import DAMAGE_COLOURS, PALETTE, STYLE

    for _, t in tiles.iterrows():
        colour = PALETTE["vermillion"] if t["status"] == "failed" else PALETTE["blue"]
        x, y = t.geometry.exterior.xy
        ax.fill(x, y, facecolor=colour, alpha=0.15, edgecolor=colour, lw=1.2)
        if tile_labels:
            c = t.geometry.centroid
            ax.annotate(
                t["id"],
                (c.x, c.y),
                xytext=(0, 7),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                color=colour,
            )
    for _, f in fac.iterrows():
        colour = DAMAGE_COLOURS.get(str(f["damage_class"]), STYLE["facility"])
        marker = "x" if f["damage_class"] == "not covered" else "o"
        ax.plot(f.geometry.x, f.geometry.y, marker=marker, color=colour, mec="black", ms=6)
        if not facility_labels:
            continue
        ax.annotate(
            str(f["id"]),
            (f.geometry.x, f.geometry.y),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=6,
            annotation_clip=True,
        )


def _summary_report(
    out: Path, specs: list[PairSpec], record: dict[str, Any], table: Any, overview: Path
) -> Path:
    from changedet.report import Section, html_image, html_table, write_report_html

    pairs = [
        {
            "tile": s.id,
            # results, not history: a pair verified from an earlier run is as done as a new one
            # (batch.json keeps 'skipped'), so a resumed batch's summary equals an uninterrupted one
            "status": "failed" if record["pairs"][s.id]["status"] == "failed" else "done",
            "error": record["pairs"][s.id].get("error", ""),
            "report": f"{s.id}/report.html" if (out / s.id / "report.html").is_file() else "",
        }
        for s in specs
    ]
    sections = [
        Section(
            "Overview",
            html_image(
                overview,
                alt="map of tiles and facilities",
                caption="Tiles (outlines) and facilities, coloured by damage class.",
            ),
        ),
        Section(
            "Facilities", html_table(table) if len(table) else "<p>No facility was scored.</p>"
        ),
        Section("Pairs", html_table(pairs)),
        Section(
            "Inputs skipped",
            html_table(record.get("skipped_inputs", []))
            if record.get("skipped_inputs")
            else "<p>none</p>",
        ),
    ]
    n_failed = sum(p["status"] == "failed" for p in pairs)
    return write_report_html(
        out / "summary" / "report.html",
        "changedet batch summary",
        sections,
        subtitle=f"{len(pairs)} pair(s), {n_failed} failed. Per-pair results in OUT/<tile>/.",
    )
