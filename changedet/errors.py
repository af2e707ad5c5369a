"""The errors changedet raises on bad input.

Every message names the file (or object) at fault, the problem, and how to fix it, in one line,
so the command line can print it without a traceback.

Examples
--------
>>> from changedet.errors import MissingCRSError
>>> try:
...     raise MissingCRSError("before.tif", "Assign one with `gdal_edit.py -a_srs EPSG:32637 before.tif`.")
... except MissingCRSError as err:
...     print(err)
before.tif: no CRS found. Assign one with `gdal_edit.py -a_srs EPSG:32637 before.tif`.
"""

from __future__ import annotations

from os import PathLike


class ChangedetError(Exception):
    """Base class of every error changedet raises for bad input or a failed check.

    Parameters
    ----------
    source
        The file (or object) at fault; shown first in the message. ``None`` when none applies.
    problem
        What is wrong.
    fix
        How to fix it (optional).
    """

    default_problem = "error"

    def __init__(
        self,
        source: str | PathLike[str] | None = None,
        problem: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem or self.default_problem
        self.fix = fix
        super().__init__(self._message())

    def _message(self) -> str:
        msg = f"{self.source}: {self.problem}" if self.source else self.problem
        if self.fix:
            msg = f"{msg.rstrip('.')}. {self.fix}"
        return msg


class MissingCRSError(ChangedetError):
    """A raster or vector file has no coordinate reference system."""

    default_problem = "no CRS found"

    def __init__(self, source: str | PathLike[str] | None, fix: str | None = None) -> None:
        super().__init__(
            source,
            self.default_problem,
            fix
            or "Assign one, e.g. `rio edit-info --crs EPSG:32637 FILE` or `gdal_edit.py -a_srs`.",
        )


class UnreadableFileError(ChangedetError):
    """A file is missing, truncated, or not in a format changedet can read."""

    default_problem = "cannot be read"


class NoOverlapError(ChangedetError):
    """Two rasters (or a raster and a facility) do not overlap, or overlap too little."""

    default_problem = "no overlap"


class BandMismatchError(ChangedetError):
    """The before and after rasters have band counts that cannot be matched."""

    default_problem = "band counts differ"


class AllNodataError(ChangedetError):
    """A raster holds no valid pixel in the area of interest."""

    default_problem = "holds no valid pixel"


class CoregistrationError(ChangedetError):
    """Co-registration failed, or its quality gate refused the result."""

    default_problem = "co-registration failed"


class FacilityError(ChangedetError):
    """The facility list is empty, malformed, or a facility lies outside the scene."""

    default_problem = "invalid facility list"


class ConfigError(ChangedetError):
    """A configuration file or option is invalid (unknown key, wrong type, out of range)."""

    default_problem = "invalid configuration"


class OutputExistsError(ChangedetError):
    """The output folder holds the results of a different run and ``overwrite`` was not given."""

    default_problem = "output folder already holds another run"
