"""The configuration tree: defaults, overrides from files, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from changedet.config import Config
from changedet.errors import ConfigError


def test_config__defaults_are_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.io.chunk_px = 3  # type: ignore[misc]


def test_updated__returns_new_object_with_change() -> None:
    cfg = Config()
    new = cfg.updated({"io": {"chunk_px": 512}})
    assert new.io.chunk_px == 512
    assert cfg.io.chunk_px == 1024


def test_updated_dotted__same_as_nested() -> None:
    assert Config().updated_dotted({"io.chunk_px": 300}) == Config().updated(
        {"io": {"chunk_px": 300}}
    )


def test_updated__unknown_key_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'io.chunk'.*chunk_px"):
        Config().updated({"io": {"chunk": 1}})


def test_updated__unknown_section() -> None:
    with pytest.raises(ConfigError, match="unknown option 'nope'"):
        Config().updated({"nope": {}})


def test_updated__wrong_type() -> None:
    with pytest.raises(ConfigError, match="must be int"):
        Config().updated({"io": {"chunk_px": "big"}})


def test_updated__one_value_for_a_list_option_is_a_list_of_one() -> None:
    cfg = Config().updated_dotted({"report.formats": "pdf", "facilities.rings_m": 100})
    assert cfg.report.formats == ("pdf",)
    assert cfg.facilities.rings_m == (100.0,)
    with pytest.raises(ConfigError, match="must be one of"):
        Config().updated_dotted({"report.formats": "png"})


def test_cli_set__comma_separated_list() -> None:
    from changedet.cli import _load_config, build_parser

    args = build_parser().parse_args(
        [
            "run",
            "a.tif",
            "b.tif",
            "--out",
            "o",
            "--set",
            "report.formats=pdf,svg",
            "--set",
            "facilities.rings_m=25, 75",
            "--set",
            "change.threshold=0.3",
        ]
    )
    cfg = _load_config(args)
    assert cfg.report.formats == ("pdf", "svg")
    assert cfg.facilities.rings_m == (25.0, 75.0)
    assert cfg.change.threshold == 0.3


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.toml", "[io]\nchunk_px = 777\n"),
        ("c.yaml", "io:\n  chunk_px: 777\n"),
        ("c.json", '{"io": {"chunk_px": 777}}'),
    ],
)
def test_from_file__reads_toml_yaml_json(tmp_path: Path, name: str, text: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    assert Config.from_file(p).io.chunk_px == 777


def test_from_file__error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[io]\nchunk_pxx = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown option 'io.chunk_pxx'"):
        Config.from_file(p)


def test_from_file__unparsable(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[io\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: cannot be parsed"):
        Config.from_file(p)


def test_template__round_trips_to_defaults(tmp_path: Path) -> None:
    p = tmp_path / "t.toml"
    p.write_text(Config.template())
    assert Config.from_file(p) == Config()
