"""The main job run by ``make demo``: every site under a tile folder.

A site is a folder holding ``before.tif`` and ``after.tif``. For each one the demo writes a
before/after figure under ``OUT/<site>/``.

Examples
--------
>>> from changedet.demo import run_demo  # doctest: +SKIP
>>> run_demo("sample_tiles", "demo_out")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

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


def run_demo(tiles: str | os.PathLike[str], out: str | os.PathLike[str]) -> list[Path]:
    """Run the demo over every site in ``tiles``; return the files written."""
    written = []
    for site in find_sites(tiles):
        written.append(
            plot_before_after(
                site / "before.tif", site / "after.tif", Path(out) / site.name / "before_after.png"
            )
        )
    return written
