"""Before/after figures: bounded previews, the after image on the before grid, atomic output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from changedet.demo import find_sites, run_demo
from changedet.errors import UnreadableFileError
from changedet.report import plot_before_after, read_preview
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
