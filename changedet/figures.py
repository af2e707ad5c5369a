"""Report figures: one style, a colour-blind-safe palette, map furniture, deterministic files.

Everything here draws on numpy arrays and GeoDataFrames already read (bounded windows or
decimated previews, see :mod:`changedet.report`); nothing here reads a raster. Figures are
made with :class:`matplotlib.figure.Figure` (no pyplot state) inside :func:`figure_style`, a
fixed rc context, so the user's ``matplotlibrc`` cannot change a byte, and written by
:func:`save_figure` without timestamps or version strings: the same run gives the same files
(``changedet verify`` compares their SHA-256).

Reusable pieces: :data:`PALETTE` (Okabe & Ito), :data:`STYLE` (which colour means what),
:data:`DAMAGE_COLOURS`, :data:`CHANGE_CMAP`, :func:`figure_style`, :func:`new_figure`,
:func:`add_scale_bar`, :func:`add_north_arrow`, :func:`set_map_axes`, :func:`draw_craters`,
:func:`draw_outline`, :func:`figure_bytes` and :func:`save_figure`.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> from changedet.figures import new_figure, add_scale_bar, add_north_arrow, save_figure
>>> with figure_style():
...     fig = new_figure((4, 4))
...     ax = fig.add_subplot()
...     _ = ax.imshow(np.zeros((10, 10)), extent=(0, 100, 0, 100))
...     _ = add_scale_bar(ax)
...     _ = add_north_arrow(ax)
...     paths = save_figure(fig, pathlib.Path(tempfile.mkdtemp()) / "a.png", formats=("pdf",))
>>> [p.suffix for p in paths]
['.png', '.pdf']
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changedet._atomic import atomic_path
from changedet.errors import ConfigError

#: Okabe & Ito (2008) colour-blind-safe palette.
PALETTE: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

#: What each colour means, in every figure.
STYLE: dict[str, str] = {
    "crater": PALETTE["sky_blue"],
    "facility": PALETTE["reddish_purple"],
    "ring": "#FFFFFF",
    "halo": PALETTE["black"],
}

#: Damage classes (UNOSAT), most severe first; ``no visible damage`` is not drawn.
DAMAGE_COLOURS: dict[str, str] = {
    "destroyed": PALETTE["vermillion"],
    "severe": PALETTE["orange"],
    "moderate": PALETTE["yellow"],
    "possible": PALETTE["bluish_green"],
}

#: Colormap of change scores (perceptually uniform, readable with colour-vision deficiencies).
CHANGE_CMAP = "cividis"

#: Formats :func:`save_figure` writes, and the metadata that keeps their bytes reproducible.
FORMAT_METADATA: dict[str, dict[str, Any]] = {
    "png": {"Software": None},
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
    "svg": {"Date": None, "Creator": None},
}

_RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 8.0,
    "axes.titlesize": 9.0,
    "axes.labelsize": 8.0,
    "xtick.labelsize": 7.0,
    "ytick.labelsize": 7.0,
    "legend.fontsize": 7.0,
    "figure.dpi": 100.0,
    "savefig.dpi": 150.0,
    "savefig.facecolor": "white",
    "image.interpolation": "nearest",
    "image.resample": False,
    "svg.hashsalt": "changedet",
    "svg.fonttype": "path",
    "pdf.fonttype": 42,
    "path.simplify": False,
}
# rc_context is process-global: one figure is drawn at a time (batch runs may use threads).
_LOCK = threading.RLock()


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Draw inside matplotlib's defaults plus changedet's style, whatever the user's rc says.

    Holds a lock (matplotlib's rc parameters are global), so figures from concurrent threads
    are drawn one at a time. Create, draw and save a figure inside one ``with`` block.

    Examples
    --------
    >>> import matplotlib
    >>> with figure_style():
    ...     matplotlib.rcParams["svg.hashsalt"]
    'changedet'
    """
    import matplotlib as mpl

    with _LOCK, mpl.rc_context():
        mpl.rcdefaults()
        mpl.rcParams.update(_RC)
        yield


def new_figure(figsize: tuple[float, float], **kwargs: Any) -> Any:
    """A :class:`matplotlib.figure.Figure` with constrained layout, not registered with pyplot.

    Examples
    --------
    >>> with figure_style():
    ...     new_figure((3, 2)).get_size_inches().tolist()
    [3.0, 2.0]
    """
    from matplotlib.figure import Figure

    kwargs.setdefault("layout", "constrained")
    return Figure(figsize=figsize, **kwargs)


def nice_length(span: float, fraction: float = 0.2) -> float:
    """The largest round length (1, 2 or 5 × 10^k) not above ``fraction`` of ``span``.

    Examples
    --------
    >>> nice_length(384.0), nice_length(240.0), nice_length(12_000.0)
    (50.0, 20.0, 2000.0)
    """
    target = max(span * fraction, 1e-9)
    exp = math.floor(math.log10(target))
    best = 10.0**exp
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10.0**exp <= target:
            best = m * 10.0**exp
    return float(best)


def add_scale_bar(
    ax: Any,
    *,
    length_m: float | None = None,
    metres_per_unit: float = 1.0,
    loc: str = "lower left",
) -> Any:
    """Add a scale bar in metres to a map axes whose data units are CRS units.

    Parameters
    ----------
    ax
        Axes showing a projected CRS (set its limits first).
    length_m
        Bar length in metres; default a round number near a fifth of the axes width.
    metres_per_unit
        Metres per CRS unit (1 for metric projected CRSs, 0.3048 for US feet).
    loc
        Legend-style location.

    Returns
    -------
    matplotlib.offsetbox.AnchoredOffsetbox
        The artist added.

    Examples
    --------
    >>> with figure_style():
    ...     ax = new_figure((3, 3)).add_subplot()
    ...     ax.set_xlim(0, 400); ax.set_ylim(0, 400)
    ...     add_scale_bar(ax).txt_label.get_text()
    (0.0, 400.0)
    (0.0, 400.0)
    '50 m'
    """
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    x0, x1 = ax.get_xlim()
    width_m = abs(x1 - x0) * metres_per_unit
    length = length_m or nice_length(width_m)
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    bar = AnchoredSizeBar(
        ax.transData,
        length / metres_per_unit,
        label,
        loc,
        pad=0.4,
        borderpad=0.6,
        sep=3,
        color="black",
        frameon=True,
        size_vertical=abs(ax.get_ylim()[1] - ax.get_ylim()[0]) / 150,
        fontproperties=FontProperties(size=7),
    )
    bar.patch.set_alpha(0.8)
    ax.add_artist(bar)
    return bar


def add_north_arrow(ax: Any, *, grid: bool = True, xy: tuple[float, float] = (0.95, 0.8)) -> Any:
    """Add a north arrow (pointing up) in the axes' upper right corner.

    Parameters
    ----------
    ax
        A map axes with north up (a projected CRS's grid north, or a geographic CRS).
    grid
        Label it "grid N" (projected CRS: up is grid north, which differs from true north by
        the meridian convergence, under 2° near a UTM zone's centre).
    xy
        Arrow tip in axes fractions.

    Returns
    -------
    matplotlib.text.Annotation

    Examples
    --------
    >>> with figure_style():
    ...     add_north_arrow(new_figure((3, 3)).add_subplot()).get_text()
    'N\\ngrid'
    """
    x, y = xy
    return ax.annotate(
        "N\ngrid" if grid else "N",
        xy=(x, y),
        xytext=(x, y - 0.13),
        xycoords="axes fraction",
        textcoords="axes fraction",
        ha="center",
        va="top",
        fontsize=7,
        fontweight="bold",
        linespacing=0.9,
        arrowprops={"facecolor": "black", "edgecolor": "white", "width": 3, "headwidth": 9},
        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
    )


def set_map_axes(ax: Any, bounds: Sequence[float], *, crs_name: str, labels: bool = True) -> None:
    """Limits, equal aspect and labelled coordinate ticks (CRS units) for a map axes.

    Parameters
    ----------
    ax
        The axes.
    bounds
        ``(left, bottom, right, top)`` in CRS units.
    crs_name
        Shown in the axis labels, e.g. ``"EPSG:32637"``.
    labels
        Axis labels (tick labels are always drawn).
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    left, bottom, right, top = bounds
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    fmt = FuncFormatter(lambda v, _pos: f"{v:,.0f}".replace(",", "\u2009"))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10]))
        axis.set_major_formatter(fmt)
    ax.tick_params(axis="y", labelrotation=90)
    for label in ax.get_yticklabels():
        label.set_verticalalignment("center")
    if labels:
        ax.set_xlabel(f"easting (m, {crs_name})")
        ax.set_ylabel(f"northing (m, {crs_name})")


def _halo(width: float = 2.5) -> list[Any]:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=width, foreground=STYLE["halo"])]


def draw_outline(
    ax: Any, geom: Any, *, color: str, lw: float = 1.5, ls: str = "-", label: str | None = None
) -> None:
    """Outline a shapely (Multi)Polygon, LineString or Point on ``ax`` (CRS units), with a halo."""
    import shapely

    parts = getattr(geom, "geoms", [geom])
    first = True
    for part in parts:
        if part.is_empty:
            continue
        if part.geom_type == "Point":
            ax.plot(
                [part.x],
                [part.y],
                marker="s",
                ms=7,
                mfc="none",
                mec=color,
                mew=lw,
                ls="none",
                path_effects=_halo(lw + 1.5),
                label=label if first else None,
            )
        else:
            rings = [part.exterior, *part.interiors] if part.geom_type == "Polygon" else [part]
            for ring in rings:
                xy = shapely.get_coordinates(ring)
                ax.plot(
                    xy[:, 0],
                    xy[:, 1],
                    color=color,
                    lw=lw,
                    ls=ls,
                    path_effects=_halo(lw + 1.5),
                    label=label if first else None,
                )
                first = False
        first = False


def draw_craters(
    ax: Any,
    craters: Any,
    *,
    numbers: bool = True,
    fontsize: float = 7.0,
    lw: float = 1.2,
) -> int:
    """Circle craters at their detected diameter and number them with their ``id``.

    Parameters
    ----------
    ax
        Map axes in the craters' CRS.
    craters
        GeoDataFrame of points with ``diameter_m`` and ``id`` (the number shown, the same as in
        ``craters.geojson``, the facility table's ``nearest_crater_id`` and report.html).
    numbers
        Write each crater's id beside its circle.

    Returns
    -------
    int
        Number of craters drawn.
    """
    from matplotlib.patches import Circle

    if craters is None or len(craters) == 0:
        return 0
    xs = craters.geometry.x.to_numpy()
    ys = craters.geometry.y.to_numpy()
    diam = craters["diameter_m"].to_numpy(float)
    ids = craters["id"].to_numpy() if "id" in craters.columns else np.arange(len(craters))
    for x, y, d, cid in zip(xs, ys, diam, ids, strict=True):
        ax.add_patch(
            Circle(
                (x, y),
                radius=d / 2,
                fill=False,
                ec=STYLE["crater"],
                lw=lw,
                path_effects=_halo(lw + 1.5),
            )
        )
        if numbers:
            ax.annotate(
                str(cid),
                xy=(x + d / 2 * 0.71, y + d / 2 * 0.71),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=fontsize,
                fontweight="bold",
                color=STYLE["crater"],
                path_effects=_halo(2.0),
                annotation_clip=True,
            )
    return len(craters)


def legend_handles(items: Sequence[tuple[str, str, str]]) -> list[Any]:
    """Legend handles from ``(kind, colour, label)``; kind is ``circle``, ``line``, ``dashed``.

    Drawn with the same black halo as on the map, so white symbols show on a white legend.
    """
    from matplotlib.lines import Line2D

    out = []
    for kind, colour, label in items:
        style: dict[str, Any]
        if kind == "circle":
            style = {"marker": "o", "ms": 8, "mfc": "none", "mec": colour, "mew": 1.5, "ls": "none"}
        else:
            style = {"color": colour, "lw": 1.5, "ls": "--" if kind == "dashed" else "-"}
        out.append(Line2D([], [], label=label, path_effects=_halo(2.8), **style))
    return out


def rgba(image: np.ndarray) -> np.ndarray:
    """An RGB float image in [0, 1] with NaN holes as RGBA (holes transparent), uint8."""
    valid = np.isfinite(image).all(axis=-1)
    rgb = np.clip(np.nan_to_num(image, nan=0.0), 0, 1)
    out = np.empty((*image.shape[:2], 4), np.uint8)
    out[..., :3] = np.round(rgb * 255).astype(np.uint8)
    out[..., 3] = np.where(valid, 255, 0)
    return out


def figure_bytes(fig: Any, fmt: str = "png", *, dpi: int = 150) -> bytes:
    """Render ``fig`` to bytes in ``fmt`` (png, pdf, svg) without time stamps or versions.

    Examples
    --------
    >>> with figure_style():
    ...     fig = new_figure((2, 2))
    ...     figure_bytes(fig) == figure_bytes(fig)
    True
    """
    if fmt not in FORMAT_METADATA:
        raise ConfigError(
            None, f"unknown figure format '{fmt}'", f"Use one of {', '.join(FORMAT_METADATA)}."
        )
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=FORMAT_METADATA[fmt])
    return buf.getvalue()


def save_figure(
    fig: Any,
    path: str | os.PathLike[str],
    *,
    formats: Sequence[str] = (),
    dpi: int = 150,
) -> list[Path]:
    """Write ``fig`` as PNG at ``path`` (suffix replaced by ``.png``) and in ``formats``, atomically.

    Parameters
    ----------
    fig
        The figure (call inside :func:`figure_style` so the bytes do not depend on the user's rc).
    path
        Output file; the PNG always, plus one file per extra format beside it (same stem).
    formats
        Extra formats: ``"pdf"``, ``"svg"``.
    dpi
        Resolution of the PNG (and of images embedded in PDF/SVG).

    Returns
    -------
    list of pathlib.Path
        The files written, PNG first.

    Raises
    ------
    ConfigError
        On an unknown format.
    """
    path = Path(path)
    written = []
    for fmt in dict.fromkeys(["png", *formats]):
        data = figure_bytes(fig, fmt, dpi=dpi)
        target = path.with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
        written.append(target)
    return written


def _caption(fig: Any, text: str) -> None:
    fig.supxlabel(text, fontsize=6.5, ha="left", x=0.01, wrap=True)


def plot_overview(
    image: np.ndarray,
    image_bounds: Sequence[float],
    *,
    crs_name: str,
    projected: bool = True,
    craters: Any = None,
    damage: Any = None,
    facilities: Any = None,
    rings_m: Sequence[float] = (),
    title: str = "",
    caption: str = "",
    crater_note: str | None = None,
) -> Any:
    """The overview map: the after image, detections, facilities labelled, map furniture.

    Parameters
    ----------
    image
        RGB preview ``(rows, cols, 3)`` in [0, 1], NaN = no data (e.g. decimated).
    image_bounds
        ``(left, bottom, right, top)`` of the preview in CRS units.
    crs_name
        The scene CRS, for the axis labels.
    projected
        Whether the CRS is projected in metres (scale bar, "grid north").
    craters
        New craters to circle (``id``, ``diameter_m``), scene CRS.
    damage
        Buildings or regions with ``damage_class``; classes in :data:`DAMAGE_COLOURS` are drawn.
    facilities
        Facilities (``id``, ``name``), outlined and labelled, with their outermost ring dashed.
    rings_m
        Facility rings; the largest is drawn.
    title, caption
        Figure title and the caption line (dates, sensor, attribution).
    crater_note
        Legend text for the craters instead of their count (e.g. "not searched").

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows, cols = image.shape[:2]
    fig = new_figure((9.5, 7.5 * rows / max(cols, 1) + 1.0))
    ax = fig.add_subplot()
    left, bottom, right, top = image_bounds
    ax.set_facecolor("#DDDDDD")
    ax.imshow(rgba(image), extent=(left, right, bottom, top), origin="upper")
    items: list[tuple[str, str, str]] = []
    if damage is not None and len(damage) and "damage_class" in damage.columns:
        for klass, colour in DAMAGE_COLOURS.items():
            sel = damage[damage["damage_class"] == klass]
            for geom in sel.geometry:
                draw_outline(ax, geom, color=colour, lw=1.0)
            if len(sel):
                items.append(("line", colour, f"{klass} ({len(sel)})"))
    if facilities is not None and len(facilities):
        outer = max(rings_m) if len(rings_m) else None
        for _, fac in facilities.iterrows():
            draw_outline(ax, fac.geometry, color=STYLE["facility"], lw=2.0)
            if outer:
                draw_outline(
                    ax, fac.geometry.buffer(outer).exterior, color=STYLE["ring"], lw=0.8, ls="--"
                )
            c = fac.geometry.centroid
            ax.annotate(
                f"{fac['id']} {fac.get('name', '')}".strip(),
                xy=(c.x, c.y),
                xytext=(0, 12),
                textcoords="offset points",
                ha="center",
                fontsize=7.5,
                fontweight="bold",
                color="white",
                path_effects=_halo(2.5),
                annotation_clip=True,
            )
        items.insert(0, ("line", STYLE["facility"], "facility"))
        if outer:
            items.insert(1, ("dashed", STYLE["ring"], f"{outer:g} m ring"))
    n = draw_craters(ax, craters, fontsize=6.5)
    label = crater_note or f"new crater, at its diameter ({n})"
    items.insert(0, ("circle", STYLE["crater"], label))
    set_map_axes(ax, image_bounds, crs_name=crs_name)
    if projected:
        add_scale_bar(ax)
    add_north_arrow(ax, grid=projected)
    # outside the map, so that it hides no detection
    fig.legend(handles=legend_handles(items), loc="outside right upper", title="after image")
    ax.set_title(title)
    if caption:
        _caption(fig, caption)
    return fig


def plot_facility(
    before: np.ndarray,
    after: np.ndarray,
    change: np.ndarray,
    image_bounds: Sequence[float],
    crop_bounds: Sequence[float],
    *,
    facility: Any,
    crs_name: str,
    projected: bool = True,
    craters: Any = None,
    crater_list: Any = None,
    crater_note: str | None = None,
    damage: Any = None,
    rings_m: Sequence[float] = (),
    threshold: float | None = None,
    title: str = "",
    caption: str = "",
    max_listed: int = 20,
) -> Any:
    """Before | after | change crops of one facility on one grid, craters circled and numbered.

    Parameters
    ----------
    before, after
        RGB crops ``(rows, cols, 3)`` in [0, 1] (one stretch for both), NaN = no data.
    change
        Change score crop ``(rows, cols)`` in [0, 1], NaN = not assessable.
    image_bounds
        ``(left, bottom, right, top)`` of the three arrays, CRS units.
    crop_bounds
        The requested square (may reach beyond the scene: the rest is left grey).
    facility
        A row with ``geometry``, ``id``, ``name``, ``type``.
    craters
        New craters to draw (``id``, ``diameter_m``), scene CRS.
    crater_list
        Table printed under the panels (``id``, ``diameter_m``, ``distance_m``, ``ring``,
        ``in_crop``): every new crater within the outermost ring.
    crater_note
        Printed instead of that table when no crater was searched (why not).
    damage
        Buildings with ``damage_class`` (damaged ones outlined on the after panel).
    rings_m
        Rings drawn dashed around the facility (those that fit in the crop).
    threshold
        The change threshold, marked on the colour bar.
    max_listed
        Longest crater list printed in the figure (the rest is counted; report.html lists all).

    Returns
    -------
    matplotlib.figure.Figure
    """
    n_list = 0 if crater_list is None else min(len(crater_list), max_listed)
    fig = new_figure((11.0, 4.6 + 0.13 * max(n_list, 2)))
    grid = fig.add_gridspec(2, 3, height_ratios=[4.0, 0.3 + 0.16 * max(n_list, 2)])
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    left, bottom, right, top = image_bounds
    extent = (left, right, bottom, top)
    cl, cb, cr, ct = crop_bounds
    span = max(cr - cl, ct - cb)
    for ax, img, label in ((axes[0], before, "before"), (axes[1], after, "after (co-registered)")):
        ax.set_facecolor("#DDDDDD")
        ax.imshow(rgba(img), extent=extent, origin="upper")
        ax.set_title(label)
    axes[2].set_facecolor("#DDDDDD")
    im = axes[2].imshow(
        np.ma.masked_invalid(change),
        extent=extent,
        origin="upper",
        cmap=CHANGE_CMAP,
        vmin=0,
        vmax=1,
    )
    axes[2].set_title("change score")
    cbar = fig.colorbar(im, ax=axes[2], shrink=0.85, pad=0.02)
    label = "change score (0-1)"
    if threshold is not None and np.isfinite(threshold):
        cbar.ax.axhline(threshold, color="white", lw=2.0)
        cbar.ax.axhline(threshold, color="black", lw=0.8)
        label += f"; line: change threshold {threshold:.2f}"
    cbar.set_label(label)
    geom = facility.geometry
    drawn = [r for r in rings_m if r * 2 <= span * 1.5]  # rings (partly) inside the crop
    for i, ax in enumerate(axes):
        for r in drawn:
            draw_outline(ax, geom.buffer(r).exterior, color=STYLE["ring"], lw=0.8, ls="--")
        if i == 1 and damage is not None and len(damage) and "damage_class" in damage.columns:
            for klass, colour in DAMAGE_COLOURS.items():
                for g in damage[damage["damage_class"] == klass].geometry:
                    draw_outline(ax, g, color=colour, lw=0.9)
        draw_outline(ax, geom, color=STYLE["facility"], lw=2.0)
        draw_craters(ax, craters)
        set_map_axes(ax, crop_bounds, crs_name=crs_name, labels=i == 0)
        if i > 0:
            ax.set_yticklabels([])
        if projected:
            add_scale_bar(ax)
        add_north_arrow(ax, grid=projected)
    items = [
        ("circle", STYLE["crater"], "new crater (id), at its diameter"),
        ("line", STYLE["facility"], "facility"),
    ]
    if drawn:
        items.append(
            ("dashed", STYLE["ring"], "rings " + ", ".join(f"{r:g}" for r in drawn) + " m")
        )
    if damage is not None and len(damage) and "damage_class" in damage.columns:
        present = set(damage["damage_class"])
        items += [
            ("line", c, f"{k} (after panel)") for k, c in DAMAGE_COLOURS.items() if k in present
        ]
    text_ax = fig.add_subplot(grid[1, :])
    text_ax.axis("off")
    text_ax.text(
        0,
        1,
        crater_note or _crater_lines(crater_list, max_listed, rings_m),
        va="top",
        ha="left",
        family="DejaVu Sans Mono",
        fontsize=6.8,
        transform=text_ax.transAxes,
    )
    text_ax.legend(handles=legend_handles(items), loc="upper right", ncols=2, frameon=False)
    fig.suptitle(title, fontsize=10)
    if caption:
        _caption(fig, caption)
    return fig


def _crater_lines(crater_list: Any, max_listed: int, rings_m: Sequence[float]) -> str:
    outer = f"{max(rings_m):g} m" if len(rings_m) else "the outermost ring"
    if crater_list is None or len(crater_list) == 0:
        return f"No new crater detected within {outer} of the facility."
    head = f"New craters within {outer} of the facility ({len(crater_list)}):"
    ring_w = max(len("ring"), *(len(str(r)) for r in crater_list["ring"]))
    has_on = "on" in crater_list.columns
    on_w = max(len("on"), *(len(str(v)) for v in crater_list["on"])) if has_on else 0
    on_head = f"  {'on':<{on_w}}" if has_on else ""
    lines = [head, f"{'id':>5}  {'diameter':>9}  {'distance':>9}  {'ring':<{ring_w}}{on_head}"]
    for _, c in crater_list.head(max_listed).iterrows():
        note = "" if bool(c["in_crop"]) else "   (outside this crop: see the overview)"
        on = f"  {c['on']!s:<{on_w}}" if has_on else ""
        lines.append(
            f"{c['id']!s:>5}  {c['diameter_m']:>7.1f} m  {c['distance_m']:>7.1f} m  "
            f"{c['ring']!s:<{ring_w}}{on}{note}"
        )
    if len(crater_list) > max_listed:
        lines.append(f"... and {len(crater_list) - max_listed} more: see report.html")
    return "\n".join(lines)
