"""The project installs as documented: dependencies agree, the two commands are documented."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# PyPI name -> conda-forge name where they differ; extras such as dask[array] are dropped.
CONDA_NAMES = {"dask": "dask"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml__matches_pyproject_runtime_dependencies() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pip_deps = {CONDA_NAMES.get(_name(d), _name(d)) for d in pyproject["project"]["dependencies"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    conda_deps = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    conda_deps -= {"python", "pip"}
    assert pip_deps == conda_deps, (
        f"only in pyproject: {sorted(pip_deps - conda_deps)}; "
        f"only in environment.yml: {sorted(conda_deps - pip_deps)}"
    )


def test_environment_yml__same_minimum_versions() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pins = {}
    for d in env["dependencies"]:
        if isinstance(d, str) and ">=" in d:
            pins[_name(d)] = d.split(">=")[1].strip()
    for dep in pyproject["project"]["dependencies"]:
        m = re.search(r">=\s*([\w.]+)", dep)
        if m:
            assert pins.get(_name(dep)) == m.group(1), (
                f"{dep}: environment.yml pins {pins.get(_name(dep))}"
            )


def test_pyproject__console_script_points_at_cli_main() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["changedet"] == "changedet.cli:main"
    from changedet.cli import main

    assert callable(main)


@pytest.mark.parametrize("command", ["make demo", "make test"])
def test_readme__shows_the_two_commands(command: str) -> None:
    readme = (REPO / "README.md").read_text()
    assert command in readme


def test_ci_run__calls_make_test() -> None:
    script = (REPO / ".ci" / "run").read_text()
    assert "make test" in script
