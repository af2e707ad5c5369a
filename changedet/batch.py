"""Batch runs: many before/after pairs from a tile folder, on a Dask cluster, resumable.

``changedet batch TILE_DIR --out OUT`` (and :func:`run_batch`) finds the pairs in ``TILE_DIR``,
runs :func:`changedet.pipeline.run_pair` on each into ``OUT/<id>/``, and writes one summary
across all of them.

Finding pairs
-------------
:func:`discover_pairs` accepts three conventions and reports what it found and what it skipped,
with the reason (a lone ``before.tif``, an unreadable CSV row, a duplicate id...):

1. **site folders**: ``TILE_DIR/<id>/before.tif`` + ``after.tif``, with optional
   ``footprints.geojson``, ``facilities.geojson``, ``roads.geojson`` and ``truth/scene.json``
   (a synthetic site: its after-image sun angles are used, as in ``changedet demo``);
2. **suffixes**: ``TILE_DIR/<id>_pre.tif`` + ``<id>_post.tif`` (``.tif`` or ``.tiff``), with
   optional ``<id>_footprints.geojson``, ``<id>_facilities.geojson`` and
   ``<id>_roads.geojson``;
3. **a CSV manifest** (``TILE_DIR`` is a ``.csv`` file): columns ``id``, ``before``, ``after``
   and optionally ``footprints``, ``facilities``, ``roads``, ``sun_azimuth``,
   ``sun_elevation``; relative paths are relative to the CSV's folder.

A tile id becomes a folder name, so it must be 1-128 characters of ``A-Z a-z 0-9 . _ -``, start
with a letter or digit, and not be ``summary`` or ``inputs`` (:func:`check_tile_id`). An id that
could escape ``OUT`` (``../x``, ``/abs``, ``a/b``, control characters) refuses the whole batch
before any work starts, naming the id and where it came from.

With ``facilities=F`` one global list replaces the per-site lists: each pair scores the
facilities that intersect its before image's footprint; the subset is written to
``OUT/inputs/facilities_<id>.geojson`` (an input of that pair: its manifest records its
SHA-256). A pair whose scene holds none of them runs without facilities.

How pairs map onto the cluster
------------------------------
*Pair-parallel* (the default for every pair): the driver submits one task per pair; the task
runs the whole pipeline on one worker thread with Dask's synchronous scheduler inside it (a
task that called ``dask.compute`` on the cluster would block its worker thread waiting for
tasks that may need that very thread: a deadlock with one thread per worker). Parallelism is
therefore one pair per worker thread, and the default ``LocalCluster`` has one single-threaded
worker process per core, so a 2-core machine runs 2 pairs at a time and never oversubscribes.

*Chunk-parallel* (a pair whose before image has at least ``chunk_parallel_min_chunks`` Dask
chunks, default 64, i.e. 8192² with 1024² chunks): the driver itself runs ``run_pair`` with the
cluster's client as Dask's default scheduler, so every chunked stage (warping, normalisation,
change scores, detectors) is spread over the workers chunk by chunk. Rasters are written by the
driver: :func:`changedet.io.write_cog` fetches each chunk from the cluster as it is computed and
writes it, a bounded number of chunks in flight, so no worker opens an output file. The files
are byte-identical to a pair-parallel run's and to ``changedet run``'s. The workers must see the
inputs and the run's scratch rasters, kept under ``OUT/.staging`` (the local cluster does; a
cluster on other machines needs ``TILE_DIR`` and ``OUT`` on a shared file system, as for pair
tasks).

Low-level graph fusion is switched off for chunk-parallel runs. The pipeline computes
overlapping graphs in several ``compute`` calls while earlier results stay on the cluster, and
fusion can give one key a different task from one call to the next (it renames fused chains
according to what each call asks for); the distributed scheduler remembers keys between calls
and warns "Detected different `run_spec` for key ... between two consecutive calls to
`update_graph`" (dask/dask#9888), which can end in a lost key or a deadlock. Seen with the
pipeline that kept its score maps persisted on the cluster: the warning for fused
normalisation/change keys, and a damage-stage ``KeyError`` on a fused
``concatenate-open_rasterio-getitem-...`` key. Unfused graphs keep every key's task the same;
the local schedulers, which remember nothing between calls, are not affected.

Before the first big pair, :func:`chunk_parallel_problem` writes a two-chunk raster through the
cluster; if that fails, or a chunk-parallel run fails for another reason than bad input, the
pair is re-run as an ordinary pair task (correct, just not spread) and ``batch.json`` records
why (``chunk_parallel_error``). Each pair's record says how it ran: ``mode`` is ``"chunks"`` or
``"pair"``.

Resuming and atomicity
----------------------
Each pair is written into ``OUT/.staging/<id>.<random>/`` and renamed to ``OUT/<id>/`` only
after its ``manifest.json`` is written; an older ``OUT/<id>/`` is first renamed into
``OUT/.trash/`` (renames are atomic), then deleted. A re-run first removes ``.staging/``,
``.trash/`` and leftover ``.*.part`` temporary files, then skips every pair whose folder
verifies against its manifest (every output's SHA-256, the inputs' SHA-256, the same options
and configuration) and redoes the others. So a batch killed at any moment (``kill -9``) loses
at most the pairs that were running, and leaves no half-written folder under an id: a pair
folder exists complete or not at all. ``OUT/.lock`` stops two batches writing into one folder.

``OUT/batch.json`` (rewritten atomically after each pair) records each pair's status
(``done``, ``skipped`` = verified from an earlier run, ``failed``), its error and its duration.
A failing pair does not stop the others; :func:`run_batch` returns the record and the command
exits with status 1 when any pair failed.

Summary
-------
``OUT/summary/facilities.csv``: one row per facility across all pairs. A facility seen in
several tiles (same ``id`` at the same place, within 5 m) appears once, assessed in **one**
tile chosen by a fixed rule: a tile where it is assessable first, then the tile where it lies
farthest from the tile edge (rounded to 1 cm), then the smallest tile id. ``tile`` names that
tile, ``tiles`` lists every tile that covers it, ``edge_distance_m`` is its distance to the
chosen tile's edge. Facilities of the global list that no tile covers appear with
``damage_class`` = ``not covered``. ``OUT/summary/overview.png`` maps the tiles and facilities,
``OUT/summary/report.html`` shows both. Summary files hold no date or duration: the same
results give the same bytes.

Examples
--------
>>> from changedet.batch import run_batch  # doctest: +SKIP
>>> record = run_batch("sample_tiles", "batch_out", workers=2)  # doctest: +SKIP
>>> sorted(p["status"] for p in record["pairs"].values())  # doctest: +SKIP
['done', 'done', 'done']
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import fcntl
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from changedet._atomic import write_json_atomic
from changedet._batch_summary import summarize_facilities, write_summary
from changedet.config import Config
from changedet.errors import ChangedetError

__all__ = [
    "RESERVED_IDS",
    "Discovery",
    "PairSpec",
    "check_tile_id",
    "chunk_parallel_problem",
    "discover_pairs",
    "pair_is_done",
    "run_batch",
    "run_pair_task",
    "summarize_facilities",
    "write_summary",
]

log = logging.getLogger("changedet")

PathLike = str | os.PathLike[str]

#: Tile ids: folder names that cannot escape ``OUT`` on any common file system.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Names under ``OUT`` the batch uses itself.
RESERVED_IDS = frozenset({"summary", "inputs"})
_TIF = (".tif", ".tiff")


# ---------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class PairSpec:
    """One pair to run: its id (the output folder name), inputs and after-image sun angles."""

    id: str
    before: Path
    after: Path
    footprints: Path | None = None
    facilities: Path | None = None
    sun_azimuth_deg: float | None = None
    sun_elevation_deg: float | None = None
    source: str = ""
    roads: Path | None = None


@dataclass
class Discovery:
    """What :func:`discover_pairs` found: the pairs (sorted by id) and what it skipped, why."""

    pairs: list[PairSpec] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        """A human-readable account, one line per skipped item.

        Examples
        --------
        >>> Discovery(skipped=[("x_pre.tif", "no matching x_post.tif")]).describe()
        'found 0 pair(s), skipped 1:\\n  x_pre.tif: no matching x_post.tif'
        """
        lines = [
            f"found {len(self.pairs)} pair(s), skipped {len(self.skipped)}"
            + (":" if self.skipped else "")
        ]
        lines += [f"  {what}: {why}" for what, why in self.skipped]
        return "\n".join(lines)


def check_tile_id(tile_id: str, source: str) -> str:
    """Return ``tile_id`` if it is a safe output folder name, else raise.

    Parameters
    ----------
    tile_id
        The id (from a folder name, a file name or a CSV row).
    source
        Where it came from, for the error message (e.g. ``"pairs.csv row 3"``).

    Raises
    ------
    ChangedetError
        When the id is empty, too long, holds a path separator, ``..``, a control character or
        any character outside ``A-Z a-z 0-9 . _ -``, starts with ``.``/``-``/``_``, or is
        reserved.

    Examples
    --------
    >>> check_tile_id("site_01", "folder")
    'site_01'
    >>> check_tile_id("../etc", "pairs.csv row 2")
    Traceback (most recent call last):
    ...
    changedet.errors.ChangedetError: pairs.csv row 2: tile id '../etc' could escape the output folder. Use 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit.
    """
    text = str(tile_id)
    fix = "Use 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit."
    if ".." in text or "/" in text or "\\" in text or os.path.isabs(text) or "\x00" in text:
        raise ChangedetError(source, f"tile id {text!r} could escape the output folder", fix)
    if not _ID_RE.match(text):
        raise ChangedetError(source, f"tile id {text!r} is not a safe folder name", fix)
    if text.lower() in RESERVED_IDS:
        raise ChangedetError(source, f"tile id {text!r} is reserved for the batch's own files", fix)
    return text


def _sun_of_site(site: Path) -> tuple[float | None, float | None]:
    from changedet.demo import sun_after  # synthetic sites: after-image sun from truth/

    az, el = sun_after(site)
    return (None if az is None else float(az)), (None if el is None else float(el))


def discover_pairs(tiles: PathLike) -> Discovery:
    """Find the pairs in a tile folder (or CSV manifest) by the conventions in the module doc.

    Parameters
    ----------
    tiles
        A folder, or a ``.csv`` file listing the pairs.

    Returns
    -------
    Discovery
        Pairs sorted by id, and ``(item, reason)`` for everything skipped.

    Raises
    ------
    ChangedetError
        When ``tiles`` does not exist, a CSV lacks ``id``/``before``/``after`` columns, or a
        tile id is unsafe (see :func:`check_tile_id`).

    Examples
    --------
    >>> found = discover_pairs("sample_tiles")  # doctest: +SKIP
    >>> [p.id for p in found.pairs]  # doctest: +SKIP
    ['site_01', 'site_02', 'site_03']
    """
    tiles = Path(tiles)
    if tiles.is_file() and tiles.suffix.lower() == ".csv":
        found = _discover_csv(tiles)
    elif tiles.is_dir():
        found = _discover_folder(tiles)
    else:
        raise ChangedetError(
            tiles, "is neither a folder nor a .csv file", "Pass the tile folder or a pair CSV."
        )
    # Ids differing only by case would share a folder on case-insensitive file systems.
    by_key: dict[str, list[PairSpec]] = {}
    for p in found.pairs:
        by_key.setdefault(p.id.lower(), []).append(p)
    pairs = []
    for group in by_key.values():
        if len(group) == 1:
            pairs.append(group[0])
            continue
        where = "; ".join(p.source for p in group)
        for p in group:
            found.skipped.append((p.source, f"duplicate tile id {p.id!r} (found in: {where})"))
    found.pairs = sorted(pairs, key=lambda p: p.id)
    return found


def _discover_folder(tiles: Path) -> Discovery:
    found = Discovery()
    entries = sorted(tiles.iterdir())
    files = {p.name: p for p in entries if p.is_file()}
    used: set[str] = set()
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            b, a = entry / "before.tif", entry / "after.tif"
            if b.is_file() and a.is_file():
                tile_id = check_tile_id(entry.name, f"{entry} (folder name)")
                fp, fac = entry / "footprints.geojson", entry / "facilities.geojson"
                rd = entry / "roads.geojson"
                az, el = _sun_of_site(entry)
                found.pairs.append(
                    PairSpec(
                        tile_id,
                        b,
                        a,
                        fp if fp.is_file() else None,
                        fac if fac.is_file() else None,
                        az,
                        el,
                        source=f"{entry.name}/",
                        roads=rd if rd.is_file() else None,
                    )
                )
            elif b.is_file() or a.is_file():
                have, lack = (
                    ("before.tif", "after.tif") if b.is_file() else ("after.tif", "before.tif")
                )
                found.skipped.append((f"{entry.name}/", f"{have} without {lack}"))
            else:
                found.skipped.append((f"{entry.name}/", "holds no before.tif and after.tif"))
    for name, path in files.items():
        if name.startswith(".") or name in used:
            continue
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in _TIF or not (stem.endswith("_pre") or stem.endswith("_post")):
            if suffix.lower() in _TIF:
                found.skipped.append((name, "a raster that is not <id>_pre.tif / <id>_post.tif"))
            continue
        base, role = stem.rsplit("_", 1)
        other_role = "post" if role == "pre" else "pre"
        partner = next(
            (
                files[f"{base}_{other_role}{s}"]
                for s in (suffix, *_TIF)
                if f"{base}_{other_role}{s}" in files
            ),
            None,
        )
        if partner is None:
            found.skipped.append((name, f"no matching {base}_{other_role}{suffix}"))
            continue
        used.update({name, partner.name})
        before, after = (path, partner) if role == "pre" else (partner, path)
        tile_id = check_tile_id(base, f"{tiles / name} (file name)")
        fp, fac = tiles / f"{base}_footprints.geojson", tiles / f"{base}_facilities.geojson"
        rd = tiles / f"{base}_roads.geojson"
        found.pairs.append(
            PairSpec(
                tile_id,
                before,
                after,
                fp if fp.is_file() else None,
                fac if fac.is_file() else None,
                source=f"{before.name} + {after.name}",
                roads=rd if rd.is_file() else None,
            )
        )
    return found


def _discover_csv(table: Path) -> Discovery:
    found = Discovery()
    try:
        with open(table, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            header = [h.strip().lower() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ChangedetError(table, f"cannot be read as CSV ({exc})", None) from None
    missing = [c for c in ("id", "before", "after") if c not in header]
    if missing:
        raise ChangedetError(
            table,
            f"missing column(s) {', '.join(missing)}",
            "A pair CSV needs id, before, after (and optionally footprints, facilities, "
            "roads, sun_azimuth, sun_elevation).",
        )
    base = table.parent
    for n, raw in enumerate(rows, start=2):  # row 1 is the header
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        where = f"{table.name} row {n}"
        tile_id = check_tile_id(row.get("id", ""), f"{table} row {n}")

        def path_of(col: str, row: dict[str, str] = row) -> Path | None:
            value = row.get(col, "")
            return (
                None if not value else (base / value if not os.path.isabs(value) else Path(value))
            )

        before, after = path_of("before"), path_of("after")
        problems = [
            f"{col} {p} not found" if p else f"no {col} given"
            for col, p in (("before", before), ("after", after))
            if p is None or not p.is_file()
        ]
        extras = {c: path_of(c) for c in ("footprints", "facilities", "roads")}
        problems += [
            f"{c} {p} not found" for c, p in extras.items() if p is not None and not p.is_file()
        ]
        try:
            az = float(row["sun_azimuth"]) if row.get("sun_azimuth") else None
            el = float(row["sun_elevation"]) if row.get("sun_elevation") else None
        except ValueError:
            problems.append("sun_azimuth / sun_elevation is not a number")
            az = el = None
        if problems:
            found.skipped.append((where, "; ".join(problems)))
            continue
        assert before is not None and after is not None
        found.pairs.append(
            PairSpec(
                tile_id,
                before,
                after,
                extras["footprints"],
                extras["facilities"],
                az,
                el,
                where,
                roads=extras["roads"],
            )
        )
    return found


# ---------------------------------------------------------------------------- one pair


def _pair_inputs(spec: PairSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inputs and options as :func:`run_pair` records them in its manifest."""
    inputs = {
        "before": spec.before,
        "after": spec.after,
        "footprints": spec.footprints,
        "facilities": spec.facilities,
        "roads": spec.roads,
    }
    options = {"sun_azimuth_deg": spec.sun_azimuth_deg, "sun_elevation_deg": spec.sun_elevation_deg}
    return inputs, options


def pair_is_done(folder: PathLike, spec: PairSpec, config: Config) -> bool:
    """Whether ``folder`` holds this pair's run, with every output matching its manifest.

    Checks the outputs' and inputs' SHA-256 against ``manifest.json`` and that the run had the
    same inputs, options and configuration (no re-run).

    Examples
    --------
    >>> pair_is_done("batch_out/site_01", spec, Config())  # doctest: +SKIP
    True
    """
    from changedet.errors import OutputExistsError
    from changedet.manifest import guard_output_folder, verify_manifest

    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        return False
    try:
        if not verify_manifest(folder / "manifest.json", rerun=False)["ok"]:
            return False
        inputs, options = _pair_inputs(spec)
        guard_output_folder(
            folder, inputs=inputs, options=options, config=config.to_dict(), overwrite=False
        )
    except (ChangedetError, OutputExistsError, KeyError, TypeError, ValueError):
        return False
    return True


_SYNC_LOCK = threading.Lock()
_SYNC_USERS = 0
_SYNC_CTX: Any = None


@contextlib.contextmanager
def _synchronous_dask() -> Iterator[None]:
    """Dask's synchronous scheduler for this worker process while any pair task runs in it.

    ``dask.config.set`` is process-wide, not per thread: with several threads per worker, the
    first task to finish must not restore the old setting under the others, so entries count.
    """
    global _SYNC_USERS, _SYNC_CTX
    import dask

    with _SYNC_LOCK:
        if _SYNC_USERS == 0:
            _SYNC_CTX = dask.config.set(scheduler="synchronous")
            _SYNC_CTX.__enter__()
        _SYNC_USERS += 1
    try:
        yield
    finally:
        with _SYNC_LOCK:
            _SYNC_USERS -= 1
            if _SYNC_USERS == 0:
                _SYNC_CTX.__exit__(None, None, None)
                _SYNC_CTX = None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, ChangedetError) else text


def _run_into_place(spec: PairSpec, out: Path, config: Config) -> None:
    """Run the pair into a fresh staging folder, then rename it to ``out/<id>`` (atomically)."""
    from changedet.pipeline import run_pair

    staging = out / ".staging" / f"{spec.id}.{uuid.uuid4().hex[:12]}"
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_pair(
            spec.before,
            spec.after,
            out=staging,
            footprints=spec.footprints,
            facilities=spec.facilities,
            roads=spec.roads,
            config=config,
            sun_azimuth_deg=spec.sun_azimuth_deg,
            sun_elevation_deg=spec.sun_elevation_deg,
            # beside the staging folder, so workers on other machines that see OUT see it too;
            # a killed run's leftovers go with .staging on the next run
            scratch_dir=out / ".staging",
        )
        if not (staging / "manifest.json").is_file():  # pragma: no cover - run_pair writes it
            raise ChangedetError(staging, "the run wrote no manifest.json", None)
        final = out / spec.id
        if final.exists():
            trash = out / ".trash" / f"{spec.id}.{uuid.uuid4().hex[:12]}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(final, trash)
            os.replace(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_pair_task(spec: PairSpec, out: str, config: dict[str, Any]) -> dict[str, Any]:
    """Run one pair (the task the driver submits): skip it when its folder verifies.

    Returns a record ``{"status": "done"|"skipped"|"failed", "mode": "pair", "error",
    "traceback", "seconds"}``; bad input or a failing stage is recorded, not raised, so the
    batch goes on.

    Examples
    --------
    >>> run_pair_task(spec, "batch_out", Config().to_dict())["status"]  # doctest: +SKIP
    'done'
    """
    t0 = time.perf_counter()
    cfg = Config().updated(config)
    out_dir = Path(out)
    with _synchronous_dask():
        try:
            if pair_is_done(out_dir / spec.id, spec, cfg):
                return {
                    "status": "skipped",
                    "mode": "pair",
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            _run_into_place(spec, out_dir, cfg)
        except Exception as exc:
            return {
                "status": "failed",
                "mode": "pair",
                "error": _one_line(exc),
                "traceback": traceback.format_exc(limit=8),
                "seconds": round(time.perf_counter() - t0, 2),
            }
    return {"status": "done", "mode": "pair", "seconds": round(time.perf_counter() - t0, 2)}


def _run_chunk_parallel(spec: PairSpec, out: Path, cfg: Config) -> dict[str, Any]:
    """Run a big pair from the driver with the cluster as the default scheduler."""
    import dask

    t0 = time.perf_counter()
    if pair_is_done(out / spec.id, spec, cfg):
        return {
            "status": "skipped",
            "mode": "chunks",
            "seconds": round(time.perf_counter() - t0, 2),
        }
    # unfused graphs: a key keeps one task across the run's compute calls (module docstring)
    with dask.config.set({"optimization.fuse.active": False}):
        _run_into_place(spec, out, cfg)
    return {"status": "done", "mode": "chunks", "seconds": round(time.perf_counter() - t0, 2)}


# ---------------------------------------------------------------------------- the batch


def chunk_parallel_problem(out: PathLike) -> str | None:
    """Why chunk-parallel runs cannot work on the current default scheduler, or ``None``.

    Writes a small two-chunk raster with :func:`changedet.io.write_cog` through the default
    scheduler (the cluster's client in :func:`run_batch`) into ``out/.staging``: a writer
    whose tasks cannot be shipped to the workers fails here in a second, not after the whole
    pipeline has run on a big scene.

    Examples
    --------
    >>> chunk_parallel_problem("batch_out") is None  # doctest: +SKIP
    True
    """
    import dask.array as dsa
    import numpy as np
    import xarray as xr

    from changedet import io as cio

    probe = Path(out) / ".staging" / f"probe.{uuid.uuid4().hex[:12]}"
    probe.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("distributed.protocol.pickle")  # logs the failure with a traceback
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        da = xr.DataArray(
            dsa.zeros((1, 64, 128), dtype="float32", chunks=(1, 64, 64)),
            dims=("band", "y", "x"),
            coords={"y": np.arange(64.0, 0, -1), "x": np.arange(128.0)},
        ).rio.write_crs("EPSG:32637")
        cio.write_cog(da, probe / "probe.tif")
    except Exception as exc:
        return _one_line(exc)
    finally:
        quiet.setLevel(level)
        shutil.rmtree(probe, ignore_errors=True)
    return None


def _n_chunks(spec: PairSpec, chunk_px: int) -> int:
    import rasterio

    try:
        with rasterio.open(spec.before) as src:
            return math.ceil(src.height / chunk_px) * math.ceil(src.width / chunk_px)
    except Exception:  # unreadable: the pair task records the error
        return 0


def _clean_leftovers(out: Path) -> list[str]:
    """Remove what an interrupted batch can leave: staging/trash folders, ``.*.part`` files."""
    removed = []
    for name in (".staging", ".trash"):
        d = out / name
        if d.is_dir():
            removed += [str(p.relative_to(out)) for p in sorted(d.iterdir())]
            shutil.rmtree(d)
    for folder in (out, out / "summary", out / "inputs"):
        if folder.is_dir():
            for p in sorted(folder.glob(".*.part")):
                p.unlink()
                removed.append(str(p.relative_to(out)))
    return removed


@contextlib.contextmanager
def _batch_lock(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".lock", "a+")  # held for the whole batch
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ChangedetError(
                out, "another changedet batch is writing into this folder", "Wait for it to end."
            ) from None
        yield
    finally:
        fh.close()


def _subset_facilities(
    specs: list[PairSpec], facilities: Path, out: Path
) -> tuple[list[PairSpec], Any]:
    """Give each pair the facilities of the global list that intersect its before image."""
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    from changedet import io as cio
    from changedet.facilities import read_facilities

    fac = read_facilities(facilities)
    result = []
    for spec in specs:
        try:
            with rasterio.open(spec.before) as src:
                footprint = gpd.GeoSeries([box(*src.bounds)], crs=src.crs)
        except Exception:  # unreadable: the pair task records the error
            result.append(dataclasses.replace(spec, facilities=None))
            continue
        inside = fac[fac.to_crs(footprint.crs).geometry.intersects(footprint.iloc[0]).to_numpy()]
        if len(inside) == 0:
            result.append(dataclasses.replace(spec, facilities=None))
            continue
        path = out / "inputs" / f"facilities_{spec.id}.geojson"
        cio.write_vector(inside.reset_index(drop=True), path)
        result.append(dataclasses.replace(spec, facilities=path))
    return result, fac


class _Progress:
    """One progress line for the whole batch (a bar on a terminal, a line per pair otherwise)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.t0 = total, enabled, time.perf_counter()
        self.counts: dict[str, int] = {}
        self.tty = sys.stderr.isatty()

    def update(self, tile_id: str, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        if not self.enabled:
            return
        n = sum(self.counts.values())
        width = 30
        bar = "#" * round(width * n / max(self.total, 1))
        detail = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
        line = (
            f"[{bar:<{width}}] {n}/{self.total} pairs ({detail}) "
            f"{time.perf_counter() - self.t0:.0f} s"
        )
        if self.tty:
            print(
                "\r" + line + ("\n" if n == self.total else ""), end="", file=sys.stderr, flush=True
            )
        else:
            print(f"{line} - {tile_id} {status}", file=sys.stderr, flush=True)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise ChangedetError(
                scheduler,
                f"no Dask scheduler answers ({exc})",
                "Check the address (tcp://host:port) or leave --scheduler out for a local cluster.",
            ) from None
        with client:
            yield client
        return
    n = workers or _default_workers()
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never clashes with another cluster
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def run_batch(
    tiles: PathLike,
    out: PathLike,
    *,
    facilities: PathLike | None = None,
    config: Config | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    chunk_parallel_min_chunks: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every pair found in ``tiles`` into ``out`` on a Dask cluster; write the summary.

    Parameters
    ----------
    tiles
        Tile folder or pair CSV (:func:`discover_pairs`).
    out
        Output folder: ``OUT/<id>/`` per pair, ``OUT/batch.json``, ``OUT/summary/``.
    facilities
        A global facility list replacing the per-site ones (see the module docstring).
    config
        Pipeline configuration, the same for every pair.
    scheduler
        Address of a running ``dask.distributed`` scheduler (``tcp://host:port``); by default a
        ``LocalCluster`` of ``workers`` single-threaded processes.
    workers
        Worker processes of the local cluster; default one per available core.
    chunk_parallel_min_chunks
        Pairs whose before image has at least this many Dask chunks run chunk-parallel (module
        docstring); ``0`` disables it.
    progress
        Print discovery and a progress line to stderr.

    Returns
    -------
    dict
        The content of ``OUT/batch.json``: ``pairs`` (``{id: {status, error, seconds,
        ...}}``), ``skipped_inputs``, ``failed`` (count).

    Raises
    ------
    ChangedetError
        Bad tile folder, unsafe tile id, no pair found, unreadable facility list, another batch
        running into ``out``, unreachable scheduler.
    """
    cfg = config or Config()
    out = Path(out)
    found = discover_pairs(tiles)
    if progress:
        print(f"changedet batch: {found.describe()}", file=sys.stderr, flush=True)
    if not found.pairs:
        raise ChangedetError(
            tiles,
            "holds no pair",
            "Use <site>/before.tif + after.tif, <id>_pre.tif + <id>_post.tif, or a CSV.",
        )
    with _batch_lock(out):
        removed = _clean_leftovers(out)
        if removed and progress:
            print(
                f"changedet batch: removed {len(removed)} leftover(s) of an interrupted run",
                file=sys.stderr,
            )
        specs = found.pairs
        global_fac = None
        if facilities is not None:
            specs, global_fac = _subset_facilities(specs, Path(facilities), out)
        record: dict[str, Any] = {
            "command": "changedet.batch.run_batch",
            "tiles": str(Path(tiles).resolve()),
            "facilities": None if facilities is None else str(Path(facilities).resolve()),
            "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "skipped_inputs": [{"item": w, "reason": r} for w, r in found.skipped],
            "pairs": {s.id: {"status": "pending", "source": s.source} for s in specs},
        }
        write_json_atomic(out / "batch.json", record)
        bar = _Progress(len(specs), progress)
        lock = threading.Lock()

        def finish(spec: PairSpec, result: dict[str, Any]) -> None:
            with lock:
                record["pairs"][spec.id] = {"source": spec.source, **result}
                write_json_atomic(out / "batch.json", record)
                bar.update(spec.id, result["status"])

        with _client(scheduler, workers) as client:
            if progress:
                link = getattr(client, "dashboard_link", None)
                where = (
                    scheduler
                    or f"a local cluster of {len(client.scheduler_info()['workers'])} worker(s)"
                )
                print(
                    f"changedet batch: running on {where}"
                    + (f"; Dask dashboard: {link}" if link else ""),
                    file=sys.stderr,
                    flush=True,
                )
            big = {
                s.id
                for s in specs
                if chunk_parallel_min_chunks > 0
                and _n_chunks(s, cfg.io.chunk_px) >= chunk_parallel_min_chunks
            }
            futures = []

            def submit(spec: PairSpec) -> None:
                fut = client.submit(
                    run_pair_task,
                    spec,
                    str(out.resolve()),
                    cfg.to_dict(),
                    key=f"changedet-pair-{spec.id}-{uuid.uuid4().hex[:8]}",
                    pure=False,
                )
                futures.append((spec, fut))

            problem = chunk_parallel_problem(out) if big else None
            if problem:
                log.warning(
                    "chunk-parallel runs unavailable (%s): %d big pair(s) run as one task each",
                    problem,
                    len(big),
                )
                for spec in specs:
                    if spec.id in big:
                        record["pairs"][spec.id]["chunk_parallel_error"] = problem
                big = set()
            for spec in specs:
                if spec.id not in big:
                    submit(spec)
            for spec in specs:
                if spec.id in big:
                    try:
                        finish(spec, _run_chunk_parallel(spec, out.resolve(), cfg))
                    except ChangedetError as exc:
                        finish(spec, {"status": "failed", "error": _one_line(exc)})
                    except Exception as exc:
                        log.warning(
                            "%s: chunk-parallel run failed (%s); running it as one task",
                            spec.id,
                            _one_line(exc),
                        )
                        record["pairs"][spec.id]["chunk_parallel_error"] = _one_line(exc)
                        submit(spec)
            from distributed import as_completed

            by_future = {fut: spec for spec, fut in futures}
            for fut in as_completed(list(by_future)):
                spec = by_future[fut]
                try:
                    result = fut.result()
                except Exception as exc:  # e.g. KilledWorker: the task killed its workers
                    result = {"status": "failed", "error": _one_line(exc)}
                note = record["pairs"][spec.id].get("chunk_parallel_error")
                if note:
                    result["chunk_parallel_error"] = note
                finish(spec, result)
        record["failed"] = sum(p["status"] == "failed" for p in record["pairs"].values())
        record["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(out / "batch.json", record)
        write_summary(out, specs, record, global_fac)
        for name in (".staging", ".trash"):
            with contextlib.suppress(OSError):
                (out / name).rmdir()  # empty by now, unless a lost worker still writes there
    return record
