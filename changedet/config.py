"""One configuration object for the whole pipeline: notebooks, the CLI and config files.

The configuration is a tree of frozen dataclasses, one section per stage. Every field has a
documented default for 0.3–1 m imagery; sizes are in metres. Unknown keys are rejected with the
list of valid ones.

Examples
--------
>>> from changedet.config import Config
>>> cfg = Config()
>>> cfg.io.chunk_px
1024
>>> cfg2 = cfg.updated({"io": {"chunk_px": 2048}})
>>> cfg2.io.chunk_px, cfg.io.chunk_px
(2048, 1024)
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from changedet.change import ChangeParams
from changedet.craters import CraterParams
from changedet.damage import DamageParams
from changedet.errors import ConfigError
from changedet.normalize import NormalizeParams
from changedet.sun import SunParams

T = TypeVar("T")


def _doc(text: str, **kw: Any) -> Any:
    """A dataclass field whose meaning is shown by ``changedet config --template``."""
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class IOConfig:
    """Reading rasters."""

    chunk_px: int = _doc(
        "Dask chunk size in pixels (square chunks); memory scales with it (and with the "
        "number of threads). Results do not depend on it.",
        default=1024,
    )


@dataclass(frozen=True)
class AlignConfig:
    """Putting the after image on the before image's grid."""

    resampling: Literal["nearest", "bilinear", "cubic", "lanczos"] = _doc(
        "Resampling used when the after image must be reprojected onto the before grid.",
        default="cubic",
    )
    min_overlap_px: int = _doc(
        "Smallest common valid extent (pixels, each side) accepted; below it the pair is refused.",
        default=256,
    )
    bands: Literal["strict", "common"] = _doc(
        "Different band counts: 'strict' refuses the pair, 'common' uses the first N common bands.",
        default="strict",
    )


@dataclass(frozen=True)
class CoregisterConfig:
    """Sub-pixel co-registration of the after image onto the before image."""

    method: Literal["global", "local"] = _doc(
        "'global': one translation from a sample of windows; 'local': a tie-point grid.",
        default="local",
    )
    model: Literal["translation", "affine", "field"] = _doc(
        "Model fitted to the local tie points: one shift, an affine, or affine + smooth field.",
        default="affine",
    )
    window_m: float = _doc(
        "Correlation window size in metres (square); converted with the before raster's GSD "
        "and kept within 64-1024 px (128 m = 256 px at 0.5 m, 427 px at 0.3 m, 128 px at 1 m).",
        default=128.0,
    )
    step_m: float = _doc(
        "Tie-point grid spacing in metres (local method; 32-4096 px); reduced on small scenes so "
        "that at least 8 windows fit along the shorter side.",
        default=256.0,
    )
    max_shift_m: float = _doc(
        "Largest displacement (metres) a window may have relative to the global estimate "
        "(32-256 px).",
        default=16.0,
    )
    window_px: int | None = _doc(
        "Window size in pixels; when set, overrides window_m.", default=None
    )
    step_px: int | None = _doc("Grid spacing in pixels; when set, overrides step_m.", default=None)
    global_windows: int = _doc("Number of sample windows of the global estimate.", default=25)
    max_shift_px: int | None = _doc(
        "Largest displacement in pixels; when set, overrides max_shift_m.", default=None
    )
    iterations: int = _doc(
        "Re-measurements of each window after resampling at the current estimate.", default=3
    )
    min_reliability: float = _doc(
        "Tie points whose correlation peak reliability (1 - second peak / peak) is lower are "
        "rejected.",
        default=0.3,
    )
    min_valid_fraction: float = _doc(
        "Windows with a smaller share of valid (non-nodata) pixels are rejected.", default=0.9
    )
    ransac_threshold_px: float = _doc("RANSAC inlier distance in pixels.", default=1.0)
    mad_k: float = _doc("Outlier cut after RANSAC: median + k x MAD of residuals.", default=3.5)
    min_tie_points: int = _doc("Quality gate: fewest kept tie points.", default=6)
    min_kept_fraction: float = _doc(
        "Quality gate: smallest kept share of measured windows.", default=0.3
    )
    max_rmse_px: float = _doc(
        "Quality gate: largest residual RMSE of kept tie points (px).", default=0.5
    )
    on_fail: Literal["raise", "flag"] = _doc(
        "When the quality gate fails: 'raise' a CoregistrationError, or 'flag' the pair and go on.",
        default="flag",
    )
    batch_windows: int = _doc(
        "Windows measured per batch; batches run in parallel threads (bounds memory).", default=32
    )


@dataclass(frozen=True)
class FacilitiesConfig:
    """Scoring listed facilities."""

    rings_m: tuple[float, ...] = _doc(
        "Distance rings (metres) in which craters are counted around each facility.",
        default=(50.0, 100.0, 250.0),
    )


@dataclass(frozen=True)
class ReportConfig:
    """Figures and ``report.html``."""

    dpi: int = _doc("Resolution of the PNG figures (at least 150 for reports).", default=150)
    formats: tuple[Literal["pdf", "svg"], ...] = _doc(
        "Extra figure formats written beside each PNG (vector, for print): 'pdf', 'svg'.",
        default=(),
    )
    crop_m: float = _doc(
        "Side of the square facility crops, metres (centred on the facility). Craters within "
        "the outermost ring but outside the crop are still listed under the figure.",
        default=240.0,
    )
    before_date: str = _doc(
        "Acquisition date of the before image for captions; empty: the raster's "
        "TIFFTAG_DATETIME tag, else 'unknown'.",
        default="",
    )
    after_date: str = _doc("Acquisition date of the after image (as before_date).", default="")
    sensor: str = _doc(
        "Sensor / satellite for captions; empty: the raster's SENSOR or SATELLITEID tag, else "
        "'unknown'.",
        default="",
    )
    attribution: str = _doc(
        "Image credit shown in every caption (e.g. the licence's required attribution); "
        "empty: the raster's TIFFTAG_COPYRIGHT tag, else 'unknown'.",
        default="",
    )
    title: str = _doc("Title of report.html; empty: the before image's folder name.", default="")

    def __post_init__(self) -> None:
        if not self.dpi >= 150:
            raise ConfigError(
                None,
                f"option 'report.dpi' is {self.dpi}",
                "Use at least 150 dpi for report figures.",
            )
        if not self.crop_m > 0:
            raise ConfigError(
                None, f"option 'report.crop_m' is {self.crop_m}", "Give a crop side in metres > 0."
            )


@dataclass(frozen=True)
class Config:
    """The whole pipeline's parameters, one section per stage."""

    io: IOConfig = _doc("Reading rasters.", default_factory=IOConfig)
    align: AlignConfig = _doc(
        "Putting the after image on the before grid.", default_factory=AlignConfig
    )
    coregister: CoregisterConfig = _doc(
        "Sub-pixel co-registration.", default_factory=CoregisterConfig
    )
    normalize: NormalizeParams = _doc(
        "Relative radiometric normalisation (IR-MAD).", default_factory=NormalizeParams
    )
    change: ChangeParams = _doc(
        "Change score maps and the change mask.", default_factory=ChangeParams
    )
    sun: SunParams = _doc(
        "The after image's sun position when not given: its metadata, else tree shadows.",
        default_factory=SunParams,
    )
    craters: CraterParams = _doc("Crater detection.", default_factory=CraterParams)
    facilities: FacilitiesConfig = _doc(
        "Scoring listed facilities.", default_factory=FacilitiesConfig
    )
    damage: DamageParams = _doc(
        "Structural damage per footprint or region.", default_factory=DamageParams
    )
    report: ReportConfig = _doc("Figures and report.html.", default_factory=ReportConfig)

    # ------------------------------------------------------------------ construction
    def updated(self, changes: Mapping[str, Any]) -> Config:
        """Return a copy with ``changes`` (a nested mapping, as in a config file) applied.

        Raises
        ------
        ConfigError
            On an unknown section or key (the message lists the valid ones) or a wrong type.
        """
        return _update(self, changes, "")

    def updated_dotted(self, changes: Mapping[str, Any]) -> Config:
        """Like :meth:`updated` with dotted keys, e.g. ``{"io.chunk_px": 1024}``."""
        nested: dict[str, Any] = {}
        for key, value in changes.items():
            node = nested
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return self.updated(nested)

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        """Read a TOML (``.toml``), YAML (``.yml``/``.yaml``) or JSON file of overrides.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.toml"
        >>> _ = p.write_text("[io]\\nchunk_px = 512\\n")
        >>> Config.from_file(p).io.chunk_px
        512
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(path, f"cannot be read ({exc.strerror})", "Check the path.") from None
        suffix = path.suffix.lower()
        try:
            if suffix == ".toml":
                if sys.version_info >= (3, 11):
                    import tomllib
                else:  # pragma: no cover
                    import tomli as tomllib
                data = tomllib.loads(text)
            elif suffix in (".yml", ".yaml"):
                import yaml

                data = yaml.safe_load(text) or {}
            elif suffix == ".json":
                data = json.loads(text)
            else:
                raise ConfigError(path, "unknown config format", "Use .toml, .yaml or .json.")
        except ConfigError:
            raise
        except Exception as exc:  # parse errors of three libraries
            raise ConfigError(path, f"cannot be parsed ({exc})".replace("\n", " "), None) from None
        if not isinstance(data, dict):
            raise ConfigError(path, "top level must be a table of sections", None)
        try:
            return cls().updated(data)
        except ConfigError as exc:
            raise ConfigError(path, exc.problem, exc.fix) from None

    # ------------------------------------------------------------------ export
    def to_dict(self) -> dict[str, Any]:
        """The full configuration as plain nested dicts (for manifests and files)."""
        return dataclasses.asdict(self)

    @classmethod
    def template(cls) -> str:
        """Every parameter with its default and meaning, as a commented TOML file."""
        lines = ["# changedet configuration: every parameter with its default.", ""]
        cfg = cls()
        for sec in dataclasses.fields(cfg):
            section = getattr(cfg, sec.name)
            lines.append(f"# {sec.metadata.get('doc', '')}")
            lines.append(f"[{sec.name}]")
            docs = _attribute_docs(type(section))
            for f in dataclasses.fields(section):
                doc = f.metadata.get("doc") or docs.get(f.name, "")
                lines.extend(f"# {line}" for line in doc.splitlines() or [""])
                lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
            lines.append("")
        return "\n".join(lines)


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from a numpydoc ``Attributes`` section (``a, b`` lines share one)."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Attributes\n-+\n(.*?)(?:\n\S[^\n]*\n-+\n|\Z)", doc, re.S | re.M)
    if not match:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    text: list[str] = []
    for line in [*match.group(1).splitlines(), ""]:
        if line and not line.startswith(" "):
            for n in names:
                out[n] = " ".join(text).strip()
            names, text = [n.strip() for n in line.split(",")], []
        elif line.strip():
            text.append(line.strip())
    for n in names:
        out[n] = " ".join(text).strip()
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return '"none"'
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _update(obj: T, changes: Mapping[str, Any], where: str) -> T:
    if not isinstance(changes, Mapping):
        raise ConfigError(None, f"'{where or 'config'}' must be a table", None)
    names = {f.name: f for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(type(obj))
    kwargs: dict[str, Any] = {}
    for key, value in changes.items():
        full = f"{where}.{key}" if where else key
        if key not in names:
            valid = ", ".join(sorted(names))
            raise ConfigError(None, f"unknown option '{full}'", f"Valid options here: {valid}.")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            kwargs[key] = _update(current, value, full)
        else:
            kwargs[key] = _coerce(value, hints[key], full)
    return dataclasses.replace(obj, **kwargs)  # type: ignore[type-var]


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check ``value`` against a simple type hint, converting where it is safe."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or value == "none":
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError:
                continue
        raise ConfigError(
            None, f"option '{name}' has an invalid value {value!r}", f"Expected {hint}."
        )
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(None, f"option '{name}' must be one of {list(args)}, not {value!r}", None)
    if origin in (tuple, list):
        if isinstance(value, (str, int, float)):
            value = [
                value
            ]  # one value for a list option: a list of one (`--set report.formats=pdf`)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(None, f"option '{name}' must be a list, not {value!r}", None)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, name) for v in value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    else:
        return value
    raise ConfigError(
        None, f"option '{name}' must be {getattr(hint, '__name__', hint)}, not {value!r}", None
    )
