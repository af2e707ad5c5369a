"""Provenance: ``manifest.json`` for every run, and re-running a manifest to verify it.

A manifest lets a sceptic reproduce every number: it records the inputs (path, SHA-256, size,
CRS, shape), the full configuration, the package versions, the co-registration result, the
timings, and the SHA-256 of every output (``run.log``, which holds wall-clock times, is listed
under ``unchecked_outputs`` with that reason instead). :func:`verify_manifest` re-runs the
pipeline from a manifest into a fresh folder and compares every output's hash (runs are
deterministic).

Examples
--------
>>> from changedet.manifest import verify_manifest  # doctest: +SKIP
>>> report = verify_manifest("out/manifest.json")  # doctest: +SKIP
>>> report["ok"]  # doctest: +SKIP
True
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from changedet._atomic import sha256_file, write_json_atomic
from changedet.errors import ChangedetError, UnreadableFileError

PathLike = str | os.PathLike[str]

MANIFEST_VERSION = 1
#: Status of an output listed under ``unchecked_outputs`` (e.g. run.log), with the reason.
NOT_COMPARED = "not compared"
PACKAGES = (
    "changedet",
    "numpy",
    "scipy",
    "scikit-image",
    "rasterio",
    "rioxarray",
    "xarray",
    "dask",
    "distributed",
    "geopandas",
    "shapely",
    "pyproj",
    "pyogrio",
    "matplotlib",
)


def versions() -> dict[str, str]:
    """Versions of Python, GDAL/PROJ and the packages that shape the results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    import pyproj
    import rasterio

    out["gdal"] = rasterio.__gdal_version__
    out["proj"] = pyproj.proj_version_str
    return out


def describe_input(path: PathLike, role: str) -> dict[str, Any]:
    """Path, SHA-256, size, and for rasters CRS, shape and resolution."""
    p = Path(path)
    entry: dict[str, Any] = {
        "role": role,
        "path": str(p.resolve()),
        "sha256": sha256_file(p),
        "bytes": p.stat().st_size,
    }
    if p.suffix.lower() in (".tif", ".tiff", ".jp2", ".vrt"):
        import rasterio

        with rasterio.open(p) as src:
            entry.update(
                crs=src.crs.to_string() if src.crs else None,
                shape=[src.count, src.height, src.width],
                resolution=list(src.res),
                dtype=src.dtypes[0],
                acquired=src.tags().get("TIFFTAG_DATETIME"),
            )
    return entry


def build_manifest(
    *,
    inputs: dict[str, PathLike | list[PathLike] | None],
    options: dict[str, Any],
    config: dict[str, Any],
    coreg: dict[str, Any],
    timings: dict[str, float],
    outputs: dict[str, Path],
    out_dir: Path,
) -> dict[str, Any]:
    """The manifest of a run (see the module docstring)."""
    described = []
    for role, value in inputs.items():
        if value is None:
            continue
        for path in value if isinstance(value, list) else [value]:
            described.append(describe_input(path, role))
    return {
        "manifest_version": MANIFEST_VERSION,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "changedet.pipeline.run_pair",
        "inputs": described,
        "options": options,
        "config": config,
        "versions": versions(),
        "coregistration": coreg,
        "timings_s": timings,
        "outputs": {
            name: {
                "path": str(Path(p).resolve().relative_to(out_dir.resolve())),
                "sha256": sha256_file(p),
            }
            for name, p in sorted(outputs.items())
        },
    }


def write_manifest(manifest: dict[str, Any], out_dir: PathLike) -> Path:
    """Write ``manifest.json`` atomically into ``out_dir``."""
    return write_json_atomic(Path(out_dir) / "manifest.json", manifest)


def load_manifest(path: PathLike) -> dict[str, Any]:
    """Read a manifest, with a clear error when it is missing or not a changedet manifest."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnreadableFileError(p, "is missing", "Pass the manifest.json of a run.") from None
    except ValueError as exc:
        raise UnreadableFileError(p, f"is not valid JSON ({exc})", None) from None
    if not isinstance(data, dict) or data.get("manifest_version") != MANIFEST_VERSION:
        raise ChangedetError(p, "is not a changedet manifest (version 1)", None)
    return data


def run_identity(
    inputs: list[dict[str, Any]], options: dict[str, Any], config: dict[str, Any]
) -> dict[str, Any]:
    """What makes two runs the same run: input hashes by role, options and configuration."""
    return {
        "inputs": sorted((e.get("role"), e.get("sha256")) for e in inputs),
        "options": options,
        "config": config,
    }


def guard_output_folder(
    out_dir: PathLike,
    *,
    inputs: dict[str, Any],
    options: dict[str, Any],
    config: dict[str, Any],
    overwrite: bool,
) -> None:
    """Refuse to write into a folder that holds another run (unless ``overwrite``).

    A folder is free when it does not exist, is empty, holds only the ``run.log`` of a run that
    failed there (and the scratch folder of a killed one), or holds the manifest of the same run (same input hashes, options and
    configuration: re-running it reproduces the same files).

    Raises
    ------
    OutputExistsError
        When the folder holds files of a different run, or files without a manifest.
    """
    from changedet.errors import OutputExistsError

    out = Path(out_dir)
    if overwrite or not out.exists():
        return
    from changedet.pipeline import SCRATCH_PREFIX

    # a killed run's scratch folder is no result (the run that claims the folder removes it)
    entries = {p.name for p in out.iterdir() if not p.name.startswith(SCRATCH_PREFIX)}
    if entries <= {"run.log"}:  # empty, or only what a run that failed here left
        return
    manifest_path = out / "manifest.json"
    fix = "Choose another --out folder, or pass --overwrite (overwrite=True) to replace it."
    if not manifest_path.is_file():
        if "run.log" in entries:
            raise OutputExistsError(
                out, "holds the partial outputs of a failed run (see its run.log)", fix
            )
        raise OutputExistsError(out, "is not empty and holds no changedet manifest", fix)
    try:
        old = load_manifest(manifest_path)
    except ChangedetError:
        raise OutputExistsError(out, "holds an unreadable manifest.json", fix) from None
    described = []
    for role, value in inputs.items():
        if value is None:
            continue
        for path in value if isinstance(value, list) else [value]:
            described.append({"role": role, "sha256": sha256_file(path)})
    new_id = json.loads(json.dumps(run_identity(described, options, config), default=str))
    old_id = json.loads(
        json.dumps(run_identity(old["inputs"], old.get("options", {}), old["config"]), default=str)
    )
    if new_id != old_id:
        raise OutputExistsError(out, "already holds the results of a different run", fix)


def check_outputs(manifest: dict[str, Any], out_dir: PathLike) -> dict[str, str]:
    """Compare the files in ``out_dir`` with the manifest: ``{name: 'ok'|'changed'|'missing'}``."""
    status = {}
    for name, entry in manifest["outputs"].items():
        p = Path(out_dir) / entry["path"]
        if not p.is_file():
            status[name] = "missing"
        else:
            status[name] = "ok" if sha256_file(p) == entry["sha256"] else "changed"
    return status


def verify_manifest(path: PathLike, *, rerun: bool = True) -> dict[str, Any]:
    """Check a run against its manifest.

    Checks that the inputs still have their recorded SHA-256, that the outputs beside the
    manifest still match, and (``rerun``) re-runs the pipeline from the manifest into a
    temporary folder and compares every output's hash with the recorded one.

    Outputs the manifest lists under ``unchecked_outputs`` (``run.log``: wall-clock times)
    are reported as ``"not compared: <reason>"`` and do not fail the check.

    Returns
    -------
    dict
        ``ok`` (bool), ``inputs`` / ``outputs`` / ``rerun`` (per-file status).
    """
    from changedet.config import Config
    from changedet.pipeline import run_pair

    p = Path(path)
    manifest = load_manifest(p)
    inputs = {}
    for entry in manifest["inputs"]:
        ip = Path(entry["path"])
        inputs[entry["path"]] = (
            "missing"
            if not ip.is_file()
            else ("ok" if sha256_file(ip) == entry["sha256"] else "changed")
        )
    report: dict[str, Any] = {"inputs": inputs, "outputs": check_outputs(manifest, p.parent)}
    # records of the run that cannot be byte-identical (run.log: wall-clock times)
    for name, entry in manifest.get("unchecked_outputs", {}).items():
        report["outputs"][name] = f"{NOT_COMPARED}: {entry.get('reason', 'not reproducible')}"
    if rerun and all(v == "ok" for v in inputs.values()):
        by_role: dict[str, list[str]] = {}
        for entry in manifest["inputs"]:
            by_role.setdefault(entry["role"], []).append(entry["path"])

        def one(role: str) -> Any:
            paths = by_role.get(role)
            if not paths:
                return None
            return paths if len(paths) > 1 else paths[0]

        cfg = Config().updated(manifest["config"])
        opts = manifest.get("options", {})
        with tempfile.TemporaryDirectory(prefix="changedet-verify-") as tmp:
            run_pair(
                one("before"),
                one("after"),
                out=tmp,
                footprints=one("footprints"),
                facilities=one("facilities"),
                roads=one("roads"),
                config=cfg,
                sun_azimuth_deg=opts.get("sun_azimuth_deg"),
                sun_elevation_deg=opts.get("sun_elevation_deg"),
            )
            report["rerun"] = check_outputs(manifest, tmp)
    elif rerun:
        report["rerun"] = {"not run": "inputs missing or changed"}
    statuses = [
        *report["inputs"].values(),
        *report["outputs"].values(),
        *report.get("rerun", {}).values(),
    ]
    report["ok"] = all(s == "ok" or s.startswith(NOT_COMPARED) for s in statuses)
    return report
