"""changedet — new craters and structural damage near listed facilities, from before/after imagery.

The pipeline runs in stages, one module each: ``io`` → ``align`` → ``coregister`` → ``normalize`` →
``change`` → ``craters`` / ``damage`` → ``facilities`` → ``report``. ``synthetic`` makes realistic
scenes with exact ground truth for tests, samples and benchmarks.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("changedet")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
