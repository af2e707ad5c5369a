"""Report figures and report.html: bounded reads, one style, reproducible bytes, renders in a browser."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from changedet.demo import find_sites, run_demo
from changedet.errors import ConfigError, UnreadableFileError
from changedet.figures import (
    add_north_arrow,
    add_scale_bar,
    figure_bytes,
    figure_style,
    new_figure,
    nice_length,
    save_figure,
    set_map_axes,
)
from changedet.report import (
    Section,
    facility_craters,
    html_image,
    html_table,
    plot_before_after,
    read_preview,
    render_report_html,
    write_figures,
    write_report_html,
)
from tests.conftest import SAMPLE_TILES


def test_read_preview__bounded_and_on_the_before_grid() -> None:
    site = SAMPLE_TILES / "site_03"  # after image in another CRS and resolution
    before = read_preview(site / "before.tif", max_px=200)
    after = read_preview(site / "after.tif", like=site / "before.tif", max_px=200)
    assert before.shape == after.shape
    assert max(before.shape[:2]) == 200 and before.shape[2] == 3
    assert np.nanmin(after) >= 0 and np.nanmax(after) <= 1
    # the warped after image covers (almost) all of the before grid
    assert np.isfinite(after).all(axis=2).mean() > 0.9


def test_read_preview__unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(UnreadableFileError, match=r"broken\.tif"):
        read_preview(bad)


def test_plot_before_after__writes_png(tmp_path: Path) -> None:
    site = SAMPLE_TILES / "site_01"
    out = plot_before_after(site / "before.tif", site / "after.tif", tmp_path / "f" / "pair.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["pair.png"]


def test_run_demo__one_figure_per_site(tmp_path: Path) -> None:
    written = run_demo(SAMPLE_TILES, tmp_path, pipeline=False)
    assert [p.parent.name for p in written] == [s.name for s in find_sites(SAMPLE_TILES)]
    assert all(p.stat().st_size > 10_000 for p in written)


# ---------------------------------------------------------------------------- helpers for tests

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    """Path of a headless-capable Chromium; skips the test (with the reason) when absent."""
    import shutil

    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no Chromium on PATH (looked for " + ", ".join(CHROMIUM_NAMES) + "); on Debian "
        "`apt-get install chromium` (.ci/run does this when run as root)"
    )
    raise AssertionError  # unreachable


def _chromium(args: list[str], page: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        chromium(),
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def chromium_dom(page: Path) -> str:
    """The DOM of ``page`` after headless Chromium has parsed and laid it out."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = _chromium(["--dump-dom"], page, Path(tmp))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _figure(seed: int = 0) -> Figure:
    rng = np.random.default_rng(seed)
    fig = new_figure((4, 3))
    ax = fig.add_subplot()
    ax.imshow(rng.random((20, 30)), extent=(500_000, 500_300, 4_000_000, 4_000_200))
    set_map_axes(ax, (500_000, 4_000_000, 500_300, 4_000_200), crs_name="EPSG:32637")
    add_scale_bar(ax)
    add_north_arrow(ax)
    ax.set_title("test")
    return fig


# ---------------------------------------------------------------------------- figures


def test_save_figure__dpi_formats_and_identical_bytes(tmp_path: Path) -> None:
    from PIL import Image

    runs = []
    for k in range(2):
        with figure_style():
            paths = save_figure(
                _figure(), tmp_path / str(k) / "f.png", formats=("pdf", "svg"), dpi=200
            )
        runs.append(paths)
    assert [p.name for p in runs[0]] == ["f.png", "f.pdf", "f.svg"]
    for a, b in zip(*runs, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    with Image.open(runs[0][0]) as img:
        assert round(img.info["dpi"][0]) == 200 and img.size == (800, 600)
    assert b"CreationDate" not in runs[0][1].read_bytes()
    assert b"<dc:date>" not in runs[0][2].read_bytes()


def test_save_figure__unknown_format(tmp_path: Path) -> None:
    with figure_style(), pytest.raises(ConfigError, match="unknown figure format 'jpg'"):
        save_figure(_figure(), tmp_path / "f.png", formats=("jpg",))
    assert not list(tmp_path.glob("*.jpg"))


def test_figure_style__user_rc_does_not_change_bytes(tmp_path: Path) -> None:
    import matplotlib as mpl

    with figure_style():
        ref = figure_bytes(_figure())
    with mpl.rc_context({"lines.linewidth": 9, "font.size": 20, "axes.facecolor": "red"}):
        with figure_style():
            mine = figure_bytes(_figure())
        assert mpl.rcParams["font.size"] == 20  # the user's settings are back afterwards
    assert mine == ref


def test_nice_length__round_numbers() -> None:
    assert [nice_length(s) for s in (9.0, 240.0, 384.0, 7_000.0)] == [1.0, 20.0, 50.0, 1000.0]


def test_facility_craters__same_counts_as_score_facilities() -> None:
    import geopandas as gpd
    from shapely.geometry import Point, box

    from changedet.facilities import score_facilities

    rng = np.random.default_rng(3)
    xy = rng.uniform(-300, 300, (40, 2))
    craters = gpd.GeoDataFrame(
        {
            "id": np.arange(40) + 100,
            "diameter_m": rng.uniform(2, 15, 40),
            "new": rng.random(40) > 0.3,
        },
        geometry=[Point(x, y) for x, y in xy],
        crs="EPSG:32637",
    )
    fac = gpd.GeoDataFrame(
        {"id": ["A", "B"]}, geometry=[box(0, 0, 30, 20), Point(-120, 80)], crs="EPSG:32637"
    )
    table = score_facilities(fac, craters, scene_extent=box(-400, -400, 400, 400))
    for geom, (_, row) in zip(fac.geometry, table.iterrows(), strict=True):
        listed = facility_craters(geom, craters, (50, 100, 250), (-60, -60, 60, 60))
        for r in (50, 100, 250):
            assert (listed["distance_m"] <= r).sum() == row[f"craters_within_{r}m"]
        assert list(listed["distance_m"]) == sorted(listed["distance_m"])
        if len(listed):
            assert str(listed["id"].iloc[0]) == str(row["nearest_crater_id"])
        assert set(listed["id"]) <= set(craters.loc[craters["new"], "id"])


def test_write_figures__crater_list_and_files(tmp_path: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import Point, box

    from changedet.config import ReportConfig
    from changedet.testing import make_raster

    rng = np.random.default_rng(0)
    img = make_raster(rng.random((3, 200, 200)).astype("float32"))
    left, bottom, right, top = img.rio.bounds()
    cx, cy = (left + right) / 2, (bottom + top) / 2
    change = make_raster(rng.random((1, 200, 200)).astype("float32"))
    craters = gpd.GeoDataFrame(
        {"id": [7, 8], "diameter_m": [4.0, 6.0], "new": [True, True]},
        geometry=[Point(cx + 5, cy + 5), Point(cx - 30, cy)],
        crs=img.rio.crs,
    )
    fac = gpd.GeoDataFrame(
        {"id": ["S/1"], "name": ["School"], "type": ["school"], "craters_within_50m": [2]},
        geometry=[box(cx - 4, cy - 4, cx + 4, cy + 4)],
        crs=img.rio.crs,
    )
    files = write_figures(
        tmp_path, before=img, after=img, change=change, craters=craters, facilities=fac,
        threshold=0.5, config=ReportConfig(crop_m=40.0, formats=("svg",)),
    )  # fmt: skip
    assert sorted(files) == [
        "figures/facility_S_1.png",
        "figures/facility_S_1.svg",
        "figures/overview.png",
        "figures/overview.svg",
    ]
    listed = facility_craters(
        fac.geometry[0], craters, (50, 100, 250), (cx - 20, cy - 20, cx + 20, cy + 20)
    )
    assert list(listed["id"]) == [7, 8] and list(listed["in_crop"]) == [True, False]
    svg = (tmp_path / "figures" / "facility_S_1.svg").read_text()
    assert "outside this crop" in svg  # the crater list under the panels (SVG keeps the text)


# ---------------------------------------------------------------------------- report.html


def test_html_table__escapes_and_formats() -> None:
    out = html_table([{"name": "<b>A&B</b>", "n": np.int64(3), "x": float("nan")}])
    assert "&lt;b&gt;A&amp;B&lt;/b&gt;" in out and "<b>" not in out
    assert '<td class="num">3</td>' in out and "<td>–</td>" in out


def test_embedded_image__preview_is_small_and_linked_to_the_full_png(tmp_path: Path) -> None:
    import base64
    import io
    import re

    from PIL import Image

    from changedet.report import PREVIEW_WIDTH_PX, EmbeddedImage

    def embedded(html: str) -> tuple[str, bytes]:
        mime, b64 = re.search(r'src="data:([^;]+);base64,([^"]+)"', html).groups()
        return mime, base64.b64decode(b64)

    rng = np.random.default_rng(0)
    for kind, image in (("flat", rng.random((20, 30))), ("photo", rng.random((400, 600)))):
        png = tmp_path / f"facility_{kind}.png"
        with figure_style():
            fig = new_figure((8, 4))
            fig.add_subplot().imshow(image, interpolation="nearest")
            save_figure(fig, png, dpi=300)  # wider than the page
        with Image.open(png) as full:
            assert full.width > PREVIEW_WIDTH_PX
            ratio = full.height / full.width
        img = EmbeddedImage(png, alt="F", caption="c", preview=True, link=f"figures/{png.name}")
        html = str(img)
        assert html == str(img)  # the same bytes every time
        assert f'<a href="figures/{png.name}"><img src="data:' in html
        mime, data = embedded(html)
        # flat graphics stay the PNG itself, photographic content becomes a downscaled JPEG:
        # whichever is smaller
        assert len(data) <= png.stat().st_size
        if kind == "flat":
            assert (mime, data) == ("image/png", png.read_bytes())
        else:
            assert mime == "image/jpeg" and len(data) < png.stat().st_size / 2
            with Image.open(io.BytesIO(data)) as small:
                assert small.width == PREVIEW_WIDTH_PX
                assert small.height == pytest.approx(PREVIEW_WIDTH_PX * ratio, abs=1)
    # without preview: the file itself, as PNG
    assert embedded(str(EmbeddedImage(png, alt="F")))[1] == png.read_bytes()


def test_write_report_html__renders_in_headless_chromium(tmp_path: Path) -> None:
    with figure_style():
        png = figure_bytes(_figure())
    page = write_report_html(
        tmp_path / "r.html",
        "Site <1>",
        [
            Section("Facilities", html_table([{"id": "F01", "craters": 2}], attrs='class="f"')),
            Section("Figure", html_image(png, alt="map", caption="a map")),
        ],
    )
    assert page.read_text() == render_report_html(
        "Site <1>",
        [
            Section("Facilities", html_table([{"id": "F01", "craters": 2}], attrs='class="f"')),
            Section("Figure", html_image(png, alt="map", caption="a map")),
        ],
    )
    dom = chromium_dom(page)
    assert "<td>F01</td>" in dom and "Site &lt;1&gt;" in dom
    shot = tmp_path / "shot.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=800,900"], page, tmp_path)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as img:
        arr = np.asarray(img.convert("L"), dtype=float)
    assert arr.std() > 10  # not a blank page: text, table lines and the figure
