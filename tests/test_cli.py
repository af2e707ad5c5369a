"""The command line: one-line errors with a non-zero exit, documented subcommands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from changedet.cli import main


def test_main__config_template_prints_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--template"]) == 0
    out = capsys.readouterr().out
    assert "[io]" in out and "chunk_px = 1024" in out


def test_main__bad_config_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[io]\nbogus = 1\n")
    assert main(["config", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("changedet: error:") and "c.toml" in err and "bogus" in err


def test_main__demo_on_folder_without_sites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--tiles", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "holds no site" in err and "changedet sample" in err


def test_console_script__no_traceback_on_bad_input(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "changedet.cli", "demo", "--tiles", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "is not a folder" in proc.stderr


def test_console_log__changedet_progress_only(capsys: pytest.CaptureFixture[str]) -> None:
    # `changedet run` prints its own progress; other libraries' INFO records (pyogrio's
    # "Created 0 records" on every vector layer written) stay quiet, as the root logger is untouched
    import logging

    from changedet.cli import _console_log

    root_handlers = list(logging.getLogger().handlers)
    _console_log()
    _console_log()  # again (a second command in the same process): still one line per record
    logging.getLogger("changedet").info("write done")
    logging.getLogger("pyogrio._io").info("Created 0 records")
    err = capsys.readouterr().err
    assert err == "changedet: write done\n"
    assert logging.getLogger().handlers == root_handlers


def test_main__run_with_point_roads_is_one_line_exit_2_before_any_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import geopandas as gpd
    from shapely.geometry import Point

    from tests.conftest import SAMPLE_TILES

    site = SAMPLE_TILES / "site_01"
    roads = tmp_path / "roads.geojson"
    gpd.GeoDataFrame(geometry=[Point(37.94, 36.14)], crs=4326).to_file(roads)
    out = tmp_path / "out"
    args = ["run", str(site / "before.tif"), str(site / "after.tif"), "--out", str(out)]
    assert main([*args, "--roads", str(roads), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("changedet: error:") and str(roads) in err
    assert "holds no road line or polygon (only points)" in err
    # nothing but the failed run's log in the folder it claimed
    assert sorted(p.name for p in out.iterdir()) == ["run.log"]
