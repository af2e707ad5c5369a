"""One configuration object for the whole pipeline: notebooks, the CLI and config files.

The configuration is a tree of frozen dataclasses, one section per stage. Every field has a
documented default for 0.3–1 m imagery; sizes are in metres. Unknown keys are rejected with the
list of valid ones.

Examples
--------
>>> from changedet.config import Config
>>> cfg = Config()
>>> cfg.io.chunk_px
2048
>>> cfg2 = cfg.updated({"io": {"chunk_px": 1024}})
>>> cfg2.io.chunk_px, cfg.io.chunk_px
(1024, 2048)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from changedet.errors import ConfigError

T = TypeVar("T")


def _doc(text: str, **kw: Any) -> Any:
    """A dataclass field whose meaning is shown by ``changedet config --template``."""
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class IOConfig:
    """Reading rasters."""

    chunk_px: int = _doc(
        "Dask chunk size in pixels (square chunks); memory scales with it.", default=2048
    )


@dataclass(frozen=True)
class Config:
    """The whole pipeline's parameters, one section per stage."""

    io: IOConfig = _doc("Reading rasters.", default_factory=IOConfig)

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
            for f in dataclasses.fields(section):
                doc = f.metadata.get("doc", "")
                lines.append(f"# {doc}")
                lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
            lines.append("")
        return "\n".join(lines)


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
