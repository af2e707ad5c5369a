"""Every run writes a manifest; re-running it reproduces every output byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from changedet._atomic import sha256_file
from changedet.cli import main
from changedet.errors import ChangedetError, UnreadableFileError
from changedet.manifest import load_manifest, verify_manifest
from changedet.pipeline import run_pair
from changedet.synthetic import SceneSettings, generate_site


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = generate_site(
        tmp_path_factory.mktemp("site") / "s", SceneSettings(seed=21, size_px=512, n_craters=3)
    )
    out = tmp_path_factory.mktemp("out")
    run_pair(
        site / "before.tif",
        site / "after.tif",
        out=out,
        footprints=site / "footprints.geojson",
        facilities=site / "facilities.geojson",
        roads=site / "roads.geojson",  # verify must pass them back: they set craters' "on"
        sun_azimuth_deg=160.0,
        sun_elevation_deg=42.0,
    )
    return out


def test_run_pair__manifest_records_inputs_config_versions_outputs(run_dir: Path) -> None:
    m = load_manifest(run_dir / "manifest.json")
    roles = sorted(e["role"] for e in m["inputs"])
    assert roles == ["after", "before", "facilities", "footprints", "roads"]
    before = next(e for e in m["inputs"] if e["role"] == "before")
    assert before["sha256"] == sha256_file(before["path"]) and before["crs"].startswith("EPSG:")
    assert m["config"]["change"]["threshold"] == "otsu"
    assert {"numpy", "rasterio", "gdal", "dask", "changedet"} <= set(m["versions"])
    assert "shift_px" in m["coregistration"] and "coregister" in m["timings_s"]
    names = set(m["outputs"])
    assert {"change_score.tif", "craters.geojson", "facilities.csv", "coreg.json"} <= names
    for entry in m["outputs"].values():
        assert sha256_file(run_dir / entry["path"]) == entry["sha256"]


def test_verify_manifest__rerun_reproduces_every_hash(run_dir: Path) -> None:
    report = verify_manifest(run_dir / "manifest.json")
    assert report["ok"], report
    assert set(report["rerun"]) == set(load_manifest(run_dir / "manifest.json")["outputs"])


def _copy_run(run_dir: Path, copy: Path) -> None:
    for p in run_dir.rglob("*"):
        if p.is_file():
            (copy / p.relative_to(run_dir)).parent.mkdir(parents=True, exist_ok=True)
            (copy / p.relative_to(run_dir)).write_bytes(p.read_bytes())


def test_verify_manifest__detects_a_changed_output_byte(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    _copy_run(run_dir, copy)
    data = bytearray((copy / "craters.geojson").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "craters.geojson").write_bytes(bytes(data))
    report = verify_manifest(copy / "manifest.json", rerun=False)
    assert not report["ok"] and report["outputs"]["craters.geojson"] == "changed"
    assert main(["verify", str(copy / "manifest.json"), "--no-rerun"]) == 1


def test_verify_manifest__detects_a_changed_figure_byte(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _copy_run(run_dir, tmp_path)
    assert verify_manifest(tmp_path / "manifest.json", rerun=False)["ok"]
    fig = tmp_path / "figures" / "overview.png"
    data = bytearray(fig.read_bytes())
    data[len(data) // 2] ^= 0x01
    fig.write_bytes(bytes(data))
    report = verify_manifest(tmp_path / "manifest.json", rerun=False)
    assert not report["ok"] and report["outputs"]["figures/overview.png"] == "changed"
    assert main(["verify", str(tmp_path / "manifest.json"), "--no-rerun"]) == 1
    assert "figures/overview.png: changed" in capsys.readouterr().out


def test_verify_manifest__run_log_is_listed_but_not_compared(run_dir: Path, tmp_path: Path) -> None:
    _copy_run(run_dir, tmp_path)
    (tmp_path / "run.log").write_text("edited\n")  # run.log holds wall-clock times
    report = verify_manifest(tmp_path / "manifest.json", rerun=False)
    assert report["ok"]
    assert report["outputs"]["run.log"].startswith("not compared: holds wall-clock times")


def test_load_manifest__bad_files(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match="is missing"):
        load_manifest(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ChangedetError, match="not a changedet manifest"):
        load_manifest(tmp_path / "manifest.json")


def test_run_pair__refuses_a_folder_with_another_run(run_dir: Path, tmp_path: Path) -> None:
    from changedet.errors import OutputExistsError

    m = load_manifest(run_dir / "manifest.json")
    paths = {e["role"]: e["path"] for e in m["inputs"]}
    before_hashes = {n: e["sha256"] for n, e in m["outputs"].items()}
    with pytest.raises(OutputExistsError, match=r"different run.*--overwrite"):
        run_pair(paths["before"], paths["after"], out=run_dir)  # no footprints: another run
    assert {n: sha256_file(run_dir / e["path"]) for n, e in m["outputs"].items()} == before_hashes
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["run", paths["before"], paths["after"], "--out", str(tmp_path), "--quiet"]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"
