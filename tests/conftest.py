"""Shared fixtures: paths to the repository, the shipped samples and the real test rasters."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TILES = REPO / "sample_tiles"
#: Small public rasters beside the checkout (see ../shared/data/README.md); optional.
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real rasters; tests that need it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test rasters not found at {SHARED_DATA} (optional; see DESIGN.md)")
    return SHARED_DATA
