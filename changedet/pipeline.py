"""One before/after pair end to end: read, align, co-register, normalise, change, detect, write.

:func:`run_pair` is what ``changedet run`` and the notebooks call. It returns a
:class:`PairResult` with everything it computed, and (when ``out`` is given) writes:

=============================  =============================================================
file                           content
=============================  =============================================================
``change_score.tif``           change score in [0, 1] (float32 COG, NaN = not assessable)
``change_mask.tif``            1 = change, 0 = no change, 255 = not assessable (uint8 COG)
``craters.geojson``            crater detections (``id``, ``diameter_m``, ``new``...), EPSG:4326
``damage.geojson``             damage per footprint (or per damaged region), EPSG:4326
``facilities.csv``             with facilities: one row per facility (geometry as WKT, scene CRS)
``facilities.geojson``         the same, EPSG:4326
``results.gpkg``               layers ``craters``, ``damage``, ``facilities`` in the scene CRS
``coreg.json``                 the fitted co-registration, its quality and a displacement grid
``figures/overview.png``       the after image, new craters, damage, facilities (+ PDF/SVG)
``figures/facility_<id>.png``  before | after | change crops of each facility (+ PDF/SVG)
``report.html``                one self-contained page: figures, tables, diagnostics, provenance
``manifest.json``              inputs, config, versions, timings, SHA-256 of every output
``run.log``                    the run's log lines and Python warnings with UTC times (listed
                               in the manifest, not hash-checked: its times differ every run)
=============================  =============================================================

Intermediate rasters that several stages read (the warped, normalised after image and the
change score) are computed once, chunk by chunk, into a private temporary folder (a hidden
``.changedet-scratch-*`` folder in the output folder, or under ``TMPDIR`` when nothing is
written, or ``scratch_dir``; kept in memory when smaller than :data:`SCRATCH_IN_MEMORY_BYTES`)
and read back lazily, so the co-registration warp runs once and memory does not grow with the
scene; the folder is deleted when the run ends, also on failure (a killed run's is removed by
the next run into that output folder). The :class:`PairResult` hands these rasters back as lazy
computations from the inputs, with the same values.

Every file is written atomically; inputs are only read. ``run.log`` is written last. When a run
fails after it claimed its output folder, ``run.log`` is still written (atomically), ending
with an ``ERROR run failed: ...`` line, unless the folder holds a finished run's manifest
(whose own log stays); only ``manifest.json`` marks a finished run, and a folder that holds
nothing but a failed run's ``run.log`` is free for the next run.

Examples
--------
>>> from changedet.pipeline import run_pair  # doctest: +SKIP
>>> res = run_pair("site/before.tif", "site/after.tif", out="out", footprints="site/footprints.geojson")  # doctest: +SKIP
>>> res.craters[["diameter_m", "score"]].head()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import xarray as xr

from changedet.config import Config
from changedet.sun import acquisition_date, parse_date, resolve_sun

log = logging.getLogger("changedet")

PathLike = str | os.PathLike[str]


@dataclass
class PairResult:
    """Everything :func:`run_pair` computed for one pair.

    Attributes
    ----------
    before, after
        The before image and the corrected, normalised after image on the before grid (lazy).
    scores
        The change score maps (:func:`changedet.change.change_scores`), lazy.
    threshold
        The change-score threshold used for the mask.
    not_assessable
        Boolean ``(y, x)`` mask, lazy.
    coreg
        The co-registration result (:class:`changedet.coregister.CoregResult`).
    normalization
        The radiometric normalisation fitted.
    craters, damage
        GeoDataFrames in the scene CRS.
    facilities
        One row per facility (:func:`changedet.facilities.score_facilities`), or ``None``.
    sun
        The after image's sun position the crater shading test used, and where it came from
        (:class:`changedet.sun.Sun`).
    craters_not_searched
        Why no crater was searched (:func:`changedet.craters.not_searched`: pixels too coarse),
        or ``None``. An empty ``craters`` then means "not looked for", not "none found".
    outputs
        Files written, by name.
    timings
        Seconds per stage.
    """

    before: xr.DataArray
    after: xr.DataArray
    scores: xr.Dataset
    threshold: float
    not_assessable: xr.DataArray
    coreg: Any
    normalization: Any
    craters: gpd.GeoDataFrame
    damage: gpd.GeoDataFrame
    facilities: gpd.GeoDataFrame | None = None
    sun: Any = None
    craters_not_searched: str | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    from changedet._memory import release_memory

    log.info("%s ...", name)
    t0 = time.perf_counter()
    yield
    release_memory()  # what the stage freed goes back to the system before the next one
    timings[name] = round(time.perf_counter() - t0, 3)
    log.info("%s done in %.1f s", name, timings[name])


def _progress(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext()
    from dask.diagnostics import ProgressBar

    return ProgressBar(minimum=1.0, dt=0.5)


def displacement_grid(coreg: Any, shape: tuple[int, int], n: int = 9) -> dict[str, list[float]]:
    """The fitted displacement on an ``n × n`` grid of before pixel centres (for checking)."""
    rows = np.linspace(0, shape[0] - 1, n)
    cols = np.linspace(0, shape[1] - 1, n)
    cc, rr = np.meshgrid(cols, rows)
    dx, dy = coreg.displacement_at(cc.ravel(), rr.ravel())
    return {
        "cols": [round(float(v), 3) for v in cc.ravel()],
        "rows": [round(float(v), 3) for v in rr.ravel()],
        "dx": [round(float(v), 5) for v in np.ravel(dx)],
        "dy": [round(float(v), 5) for v in np.ravel(dy)],
    }


def run_pair(
    before: PathLike | list[PathLike],
    after: PathLike | list[PathLike],
    *,
    out: PathLike | None = None,
    footprints: PathLike | gpd.GeoDataFrame | None = None,
    facilities: PathLike | gpd.GeoDataFrame | None = None,
    config: Config | None = None,
    sun_azimuth_deg: float | None = None,
    sun_elevation_deg: float | None = None,
    progress: bool = False,
    overwrite: bool = False,
    scratch_dir: PathLike | None = None,
    roads: PathLike | gpd.GeoDataFrame | None = None,
) -> PairResult:
    """Run the pipeline on one pair.

    Parameters
    ----------
    before, after
        Raster paths (GeoTIFF/COG/JPEG 2000), or lists of tiles forming a mosaic.
    out
        Output folder; nothing is written when ``None``.
    footprints
        Building footprints (GeoJSON/GeoPackage path or GeoDataFrame) for per-building damage;
        without them damage is reported per damaged region.
    facilities
        Facility list (GeoJSON/GeoPackage/CSV path or GeoDataFrame, see
        :func:`changedet.facilities.read_facilities`): scored per facility when given.
    roads
        Roads (GeoJSON/GeoPackage path or GeoDataFrame of centre lines or polygons, e.g.
        OpenStreetMap highways): craters on them are labelled ``on="road"``
        (:func:`changedet.craters.road_areas`, ``config.craters.road_width_m``).
    config
        :class:`changedet.config.Config`; defaults when omitted.
    sun_azimuth_deg, sun_elevation_deg
        Sun azimuth (degrees clockwise from north) and elevation of the after image, when
        known: they enable the crater shading test (a bowl's sun-side wall is in shadow, a
        mound's is lit). Either left ``None`` is read from the after image's metadata, and the
        azimuth otherwise estimated from tree shadows (:func:`changedet.sun.resolve_sun`,
        ``config.sun``); ``PairResult.sun`` and the manifest record what was used.
    progress
        Show progress bars for the chunked computations.
    overwrite
        Replace the results of a different run in ``out``; without it such a folder is refused
        before any work starts (re-running the same run into its own folder is allowed).
    scratch_dir
        Folder under which the run keeps its private scratch rasters (the warped, normalised
        after image and the change score, computed once and read by every later stage);
        deleted when the run ends, also when it fails. Default: a hidden
        ``.changedet-scratch-*`` folder inside ``out`` (on the disk the user chose for the
        results, which has room for them: a 30,000² scene needs tens of GB, more than a RAM-backed
        ``/tmp`` holds), or the system's temporary folder (``TMPDIR``) when ``out`` is None. On a
        Dask cluster spanning machines, give a folder every worker sees at the same path.
        It never changes a result.

    Returns
    -------
    PairResult

    Raises
    ------
    changedet.errors.ChangedetError
        On bad input (unreadable file, no CRS, no overlap, band mismatch, all nodata), or when
        the co-registration quality gate fails and ``config.coregister.on_fail == "raise"``.
    """
    import rasterio

    from changedet._memory import trimming

    # GDAL's block cache defaults to 5 % of RAM and fills with whatever the run reads (inputs,
    # scratch rasters): bound it, so that memory does not grow with the scene up to that cap.
    # Heap memory freed by the chunk computations goes back to the system as they run (glibc
    # would otherwise keep hundreds of MiB of freed chunk temporaries, see changedet._memory).
    with (
        _RunLog() as run_log,
        _Scratch(scratch_dir if scratch_dir is not None else out) as scratch,
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        trimming(),
    ):
        try:
            return _run_pair(
                before,
                after,
                out=out,
                footprints=footprints,
                facilities=facilities,
                roads=roads,
                config=config,
                sun_azimuth_deg=sun_azimuth_deg,
                sun_elevation_deg=sun_elevation_deg,
                progress=progress,
                overwrite=overwrite,
                run_log=run_log,
                scratch=scratch,
            )
        except BaseException as exc:
            run_log.write_failure(exc)
            raise


def _run_pair(
    before: PathLike | list[PathLike],
    after: PathLike | list[PathLike],
    *,
    out: PathLike | None,
    footprints: PathLike | gpd.GeoDataFrame | None,
    facilities: PathLike | gpd.GeoDataFrame | None,
    roads: PathLike | gpd.GeoDataFrame | None,
    config: Config | None,
    sun_azimuth_deg: float | None,
    sun_elevation_deg: float | None,
    progress: bool,
    overwrite: bool,
    run_log: _RunLog,
    scratch: _Scratch,
) -> PairResult:
    from changedet import align, change, coregister, craters, damage, normalize
    from changedet import facilities as facilities_mod
    from changedet import io as cio

    cfg = config or Config()
    timings: dict[str, float] = {}
    inputs = {
        "before": before,
        "after": after,
        "footprints": _path(footprints),
        "facilities": _path(facilities),
        "roads": _path(roads),
    }
    options = {"sun_azimuth_deg": sun_azimuth_deg, "sun_elevation_deg": sun_elevation_deg}
    if out is not None:
        from changedet.manifest import guard_output_folder

        for role, value in inputs.items():
            for p in (value if isinstance(value, list) else [value]) if value is not None else []:
                if not Path(p).is_file():
                    from changedet.errors import UnreadableFileError

                    raise UnreadableFileError(p, f"{role} file not found", "Check the path.")
        guard_output_folder(
            out, inputs=inputs, options=options, config=cfg.to_dict(), overwrite=overwrite
        )
        run_log.claimed = Path(out)  # the folder is this run's: a failure is logged there
        _remove_stale_scratch(Path(out))
    with _stage("read", timings):
        before_da = cio.open_raster(before, chunks=cfg.io.chunk_px, name="before")
        after_da = cio.open_raster(after, chunks=cfg.io.chunk_px, name="after")
        fp = (
            cio.read_footprints(footprints)
            if isinstance(footprints, (str, os.PathLike))
            else footprints
        )
        fac = (
            facilities_mod.read_facilities(facilities)
            if isinstance(facilities, (str, os.PathLike))
            else facilities
        )
        # read and checked now (a bad file fails the run before any work), widened once
        road_areas = (
            None
            if roads is None
            else craters.road_areas(roads, before_da.rio.crs, cfg.craters.road_width_m)
        )
    with _stage("align", timings):
        before_da, after_da = align.align_pair(before_da, after_da, cfg.align)
    with _stage("coregister", timings), _progress(progress):
        after_c_lazy, coreg_result = coregister.coregister(before_da, after_da, cfg.coregister)
        # the warp runs once, here: every later stage reads its result
        after_c = scratch.keep(after_c_lazy, "after_corrected")
    with _stage("normalize", timings), _progress(progress):
        norm = normalize.RelativeNormalizer.from_params(cfg.normalize).fit(before_da, after_c)
        after_n = scratch.keep(norm.apply(after_c), "after_normalised")
        value_range = _value_range(before_da, after_n)
    with _stage("change", timings), _progress(progress):
        scores = change.change_scores(before_da, after_n, cfg.change, value_range=value_range)
        # only the score map feeds the threshold, the detectors and the files
        scores["score"] = scratch.keep(scores["score"], "change_score")
        thr = change.threshold_score(scores["score"], cfg.change.threshold)
        na = change.not_assessable(before_da, after_c, saturation=cfg.change.saturation)
    with _stage("craters", timings), _progress(progress):
        after_file = after[0] if isinstance(after, list) else after
        rgb = cfg.craters.rgb_bands or _rgb_bands(after_file, after_n)
        sun = resolve_sun(
            after_file,
            given=(sun_azimuth_deg, sun_elevation_deg),
            image=after_n,
            rgb_bands=rgb,
            params=cfg.sun,
            # the analyst's date for the captions, else an acquisition-date tag
            date=parse_date(cfg.report.after_date) or acquisition_date(after_da.attrs),
            footprints=fp,
        )
        log.info("sun of the after image: %s", sun.describe())
        # beyond the tropics the sun never stands as high as the general assumption
        crater_params = dataclasses.replace(
            cfg.craters,
            max_sun_elevation_deg=sun.elevation_cap(cfg.craters.max_sun_elevation_deg),
            rgb_bands=rgb,
        )
        crater_gdf = craters.detect_craters(
            after_n,
            before_da,
            change=scores,
            params=crater_params,
            sun_azimuth_deg=sun.azimuth_deg,
            sun_elevation_deg=sun.elevation_deg,
            footprints=fp,
            roads=road_areas,
        )
        crater_note = craters.not_searched(crater_params, change.gsd_of(after_n))
        found = crater_gdf.attrs.get("sun_from_craters")
        if found:
            # the crater stage read the azimuth from the scene's isolated craters' shading
            sun = dataclasses.replace(
                sun,
                azimuth_deg=found["azimuth_deg"],
                source="isolated craters",
                detail={**sun.detail, **found},
            )
            log.info("sun of the after image: %s", sun.describe())
        if sun.azimuth_deg is None and crater_note is None:
            log.warning(
                "sun azimuth unknown: the crater shading test is skipped, so cast shadows and "
                "dark patches pass for craters far more often (6 in 10 detections were false on "
                "the synthetic evaluation scenes); give --sun-azimuth and --sun-elevation from "
                "the image's metadata"
            )
        cal = crater_gdf.attrs.get("shading_calibration")
        if cal:
            log.info("crater shading test: %s", craters.describe_calibration(cal))
        if n_roof := crater_gdf.attrs.get("roof_fixtures"):
            log.info(
                "craters: %d dark round blob%s under %g m inside building footprints not "
                "reported (roof fixtures or holes: craters.min_roof_diameter_m)",
                n_roof,
                "" if n_roof == 1 else "s",
                crater_params.min_roof_diameter_m,
            )
    with _stage("damage", timings), _progress(progress):
        evidence: dict[str, Any] = {
            "threshold": thr,
            "not_assessable": na,
            "params": cfg.damage,
            "before": before_da,
            "after": after_n,
            "value_range": value_range,
        }
        if fp is not None:  # per building footprint, else per connected damaged region
            damage_gdf = damage.assess_damage(scores["score"], fp, **evidence)
        else:
            damage_gdf = damage.damaged_regions(scores["score"], **evidence)
    fac_scores = None
    if fac is not None:
        with _stage("facilities", timings), _progress(progress):
            from shapely.geometry import box

            fac_scores = facilities_mod.score_facilities(
                fac,
                crater_gdf,
                damage_gdf if fp is not None else None,
                scene_extent=box(*before_da.rio.bounds()),
                rings_m=cfg.facilities.rings_m,
                score=scores["score"],
                threshold=thr,
                not_assessable=na,
                damage_params=cfg.damage,
                craters_searched=crater_note is None,
                before=before_da,
                after=after_n,
                value_range=value_range,
            )
    result = PairResult(
        before=before_da,
        after=after_n,
        scores=scores,
        threshold=thr,
        not_assessable=na,
        coreg=coreg_result,
        normalization=norm.result,
        craters=crater_gdf,
        damage=damage_gdf,
        facilities=fac_scores,
        sun=sun,
        craters_not_searched=crater_note,
        timings=timings,
    )
    if out is not None:
        with _stage("write", timings), _progress(progress):
            result.outputs = write_outputs(result, out, config=cfg)
        from changedet._atomic import sha256_file
        from changedet.manifest import build_manifest, write_manifest

        manifest = build_manifest(
            inputs=inputs,
            options=options,
            config=cfg.to_dict(),
            coreg=json.loads(Path(result.outputs["coreg.json"]).read_text()),
            timings=timings,
            outputs=result.outputs,
            out_dir=Path(out),
        )
        manifest["sun"] = sun.to_dict()
        manifest["craters_not_searched"] = result.craters_not_searched
        crater_attrs = getattr(result.craters, "attrs", None) or {}
        manifest["crater_shading_calibration"] = crater_attrs.get("shading_calibration")
        manifest["crater_roof_fixtures_dropped"] = crater_attrs.get("roof_fixtures")
        if footprints is not None and _path(footprints) is None:
            manifest["inputs"].append(
                {"role": "footprints", "path": None, "note": "in-memory GeoDataFrame"}
            )
        if facilities is not None and _path(facilities) is None:
            manifest["inputs"].append(
                {"role": "facilities", "path": None, "note": "in-memory GeoDataFrame"}
            )
        if roads is not None and _path(roads) is None:
            manifest["inputs"].append(
                {"role": "roads", "path": None, "note": "in-memory GeoDataFrame"}
            )
        with _stage("report", timings):
            report = write_report(result, out, manifest=manifest, config=cfg)
        result.outputs["report.html"] = report
        manifest["outputs"]["report.html"] = {"path": report.name, "sha256": sha256_file(report)}
        manifest["unchecked_outputs"] = {"run.log": {"path": "run.log", "reason": RUN_LOG_REASON}}
        result.outputs["manifest.json"] = write_manifest(manifest, out)
        log.info("wrote %d files and manifest.json to %s", len(result.outputs), out)
        result.outputs["run.log"] = run_log.write(Path(out) / "run.log")
    # The materialised rasters live in the scratch folder, which goes when run_pair returns:
    # hand back the same rasters as lazy computations from the inputs (no data recomputed now).
    after_n_lazy = norm.apply(after_c_lazy)
    result.after = after_n_lazy
    result.scores = change.change_scores(
        before_da,
        after_n_lazy,
        cfg.change,
        value_range=value_range,
        noise_sigma=np.asarray(scores.attrs["noise_sigma"]),
    )
    result.not_assessable = change.not_assessable(
        before_da, after_c_lazy, saturation=cfg.change.saturation
    )
    return result


#: GDAL block cache during a run, bytes: tiles are read once per pass, chunk by chunk, so a
#: few chunks' worth is enough (a 1024² chunk of three float32 bands is 12 MiB).
GDAL_CACHE_BYTES = 128 * 2**20

#: Rasters up to this size are kept in memory by :class:`_Scratch` (a 2048² scene of three
#: float32 bands is 48 MiB); larger ones go to disk, so memory does not grow with the scene.
SCRATCH_IN_MEMORY_BYTES = 64 * 2**20

#: Name prefix of a run's scratch folder (hidden: inside an output folder it is no output).
SCRATCH_PREFIX = ".changedet-scratch-"


def _remove_stale_scratch(out: Path) -> None:
    """Delete scratch folders a killed run left in ``out`` (this run has claimed the folder)."""
    import shutil

    if out.is_dir():
        for p in out.glob(SCRATCH_PREFIX + "*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


class _Scratch:
    """Rasters a run computes once and reads many times (the warped, normalised after image,
    the change score), kept in a private temporary folder for the length of one run.

    :meth:`keep` computes a lazy raster once, chunk by chunk, and returns it reading back from
    a tiled GeoTIFF in the folder (or, when it is small, from memory), with the same chunks,
    coordinates and attributes: every later stage reads the stored values instead of
    recomputing the chain behind them, and memory stays bounded by the chunk size. The folder
    is made under the system's temporary directory (``TMPDIR``) on first use and deleted when
    the run ends, also when it fails.
    """

    def __init__(self, parent: PathLike | None = None) -> None:
        self.parent = None if parent is None else Path(parent)
        self.dir: Path | None = None

    def __enter__(self) -> _Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the folder and everything in it."""
        if self.dir is not None:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def keep(self, raster: xr.DataArray, name: str) -> xr.DataArray:
        """Compute ``raster`` once (lazy ``(band, y, x)`` or ``(y, x)`` with a CRS) and return
        it stored, read lazily with its own chunks; in-memory rasters are returned as they are.
        """
        data = raster.data
        if not hasattr(data, "dask"):
            return raster
        if raster.nbytes <= SCRATCH_IN_MEMORY_BYTES:
            return raster.persist()
        import tempfile

        from changedet import io as cio

        if self.dir is None:
            if self.parent is not None:
                self.parent.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=self.parent))
        path = self.dir / f"{name}.tif"
        flat = "band" not in raster.dims
        stored = raster.expand_dims(band=[1]) if flat else raster
        stored = stored.transpose("band", "y", "x").copy()
        stored.attrs, stored.encoding = {}, {}  # float32 as computed, not the input's encoding
        # ZSTD: lossless, and cheaper to write and read than the DEFLATE of the outputs; a plain
        # tiled GeoTIFF (no overviews, no COG translation: read back chunk by chunk only)
        cio.write_cog(stored, path, compress="ZSTD", cog=False)
        read = cio.open_raster(path, chunks=max(max(c) for c in data.chunks[-2:]), name=name)
        back = read.isel(band=0, drop=True) if flat else read
        back = back.transpose(*raster.dims)
        if back.chunks != raster.chunks:
            back = back.chunk(dict(zip(raster.dims, raster.chunks, strict=True)))
        if back.data.name != read.data.name:  # same values: windows can still be read from the file
            cio.rechunked_reader(back.data, read.data)
        # the stored raster on the original's grid: same coordinates, name and attributes
        back = back.assign_coords({d: raster.coords[d] for d in raster.dims if d in raster.coords})
        back.attrs = dict(raster.attrs)
        back.name = raster.name
        return back


def _rgb_bands(after: PathLike, image: xr.DataArray) -> tuple[int, int, int]:
    """The after image's red, green and blue bands: as its file labels them, else the first
    three (logged when the file has more than three bands and labels none)."""
    import rasterio

    from changedet import io as cio
    from changedet.craters import DEFAULT_RGB_BANDS

    with rasterio.open(after) as src:
        count = src.count
    found = cio.rgb_band_indices(after) if count == image.sizes.get("band") else None
    if found is None and count > 3:
        log.warning(
            "%s: %d bands, none labelled red, green and blue; using bands %s as red, green, "
            "blue (set craters.rgb_bands if they are not)",
            Path(after).name,
            count,
            DEFAULT_RGB_BANDS,
        )
    elif found is not None and found != DEFAULT_RGB_BANDS:
        log.info("%s: red, green, blue are bands %s", Path(after).name, found)
    return found or DEFAULT_RGB_BANDS


def _value_range(before: xr.DataArray, after: xr.DataArray) -> float:
    """The data scale the change and damage stages estimate when not given one (the 99.9th
    percentile of a regular sample of ``before`` valid in both), estimated once per run."""
    from changedet.normalize import sample_pixels

    b, _ = sample_pixels(before, after, 100_000)
    return float(np.percentile(b, 99.9)) if len(b) else 1.0


#: Why ``run.log`` is listed in the manifest but not hash-checked by ``changedet verify``.
RUN_LOG_REASON = "holds wall-clock times and dates, which differ on every run"


class _RunLog(logging.Handler):
    """Collects the ``changedet`` log lines of one run (from the calling thread) for run.log.

    While active, INFO records are enabled on the ``changedet`` logger so that run.log has the
    stage lines even when logging is not configured; records below the level the user set
    are not passed on to the user's handlers. Python warnings shown during the run (e.g. from
    rasterio, GDAL or numpy) are also written to run.log, and still shown as before.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        import threading

        self.lines: list[str] = []
        self._thread = threading.get_ident()
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        fmt.converter = time.gmtime
        self.setFormatter(fmt)
        self._saved: tuple[int, bool] | None = None
        self._forward: logging.Handler | None = None
        self._showwarning: Any = None
        #: The output folder once this run has claimed it (see :meth:`write_failure`).
        self.claimed: Path | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            self.lines.append(self.format(record))

    def __enter__(self) -> _RunLog:
        from changedet import __version__

        effective = log.getEffectiveLevel()
        self._saved = (log.level, log.propagate)
        log.addHandler(self)
        if effective > logging.INFO:
            # enable INFO for run.log only: the user's handlers see what they saw before
            log.setLevel(logging.INFO)
            log.propagate = False
            self._forward = _Forward(effective)
            log.addHandler(self._forward)
        # the header goes to run.log only: on the console, bad input stays a one-line error
        header = log.makeRecord(
            log.name, logging.INFO, __file__, 0, "changedet %s: run_pair", (__version__,), None
        )
        self.emit(header)
        import warnings

        self._showwarning = shown = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            where = f"{Path(str(filename)).name}:{lineno}"
            self.lines.append(f"{stamp} WARNING {category.__name__}: {message} ({where})")
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        return self

    def __exit__(self, *exc: object) -> None:
        import warnings

        if self._showwarning is not None:
            warnings.showwarning = self._showwarning
        log.removeHandler(self)
        if self._forward is not None:
            log.removeHandler(self._forward)
        if self._saved is not None:
            log.setLevel(self._saved[0])
            log.propagate = self._saved[1]

    def write(self, path: Path) -> Path:
        """Write the lines so far to ``path`` atomically."""
        from changedet._atomic import write_text_atomic

        return write_text_atomic(path, "\n".join(self.lines) + "\n")

    def write_failure(self, exc: BaseException) -> Path | None:
        """After a failed run, write the log so far and the error to ``OUT/run.log``.

        Only into a folder this run claimed (the output guard let it write there) and that
        holds no manifest: a finished run's folder keeps its own log, so a failed re-run
        cannot make it disagree with its manifest. A folder holding only such a log is free
        for the next run (:func:`changedet.manifest.guard_output_folder`). Errors writing the
        log are logged, never raised over the run's own error.
        """
        out = self.claimed
        if out is None or (out / "manifest.json").exists():
            return None
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        reason = str(exc).strip() or (
            "interrupted" if isinstance(exc, KeyboardInterrupt) else "(no message)"
        )
        self.lines.append(f"{stamp} ERROR run failed: {type(exc).__name__}: {reason}")
        try:
            out.mkdir(parents=True, exist_ok=True)
            return self.write(out / "run.log")
        except OSError as err:  # pragma: no cover - a full or read-only disk
            log.warning("could not write run.log of the failed run to %s: %s", out, err)
            return None


class _Forward(logging.Handler):
    """Passes records at or above ``level`` on to the parent loggers' handlers."""

    def __init__(self, level: int) -> None:
        super().__init__(level)

    def emit(self, record: logging.LogRecord) -> None:
        found = 0
        parent = log.parent
        while parent is not None:
            for handler in parent.handlers:
                found += 1
                if record.levelno >= handler.level:
                    handler.handle(record)
            parent = parent.parent if parent.propagate else None
        if not found and logging.lastResort and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)


def write_outputs(
    result: PairResult, out: PathLike, *, config: Config | None = None, figures: bool = True
) -> dict[str, Path]:
    """Write the files of a :class:`PairResult` into ``out`` (atomically); return them by name.

    Rasters, vectors (GeoJSON, ``results.gpkg``, CSV), ``coreg.json`` and (``figures``) the
    figures of :func:`changedet.report.write_figures`; ``report.html``, ``manifest.json`` and
    ``run.log`` are written by :func:`run_pair` after it.
    """
    from changedet import io as cio
    from changedet._atomic import write_json_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    score = result.scores["score"].where(~result.not_assessable)
    mask = xr.where(result.not_assessable, 255, (score > result.threshold).astype("uint8")).astype(
        "uint8"
    )
    crs = result.before.rio.crs
    transform = result.before.rio.transform()
    files: dict[str, Path] = {}
    files["change_score.tif"] = cio.write_cog(
        _with_grid(score.astype("float32"), crs, transform, "change score (0-1)"),
        out / "change_score.tif",
        nodata=float("nan"),
    )
    files["change_mask.tif"] = cio.write_cog(
        _with_grid(mask, crs, transform, "change mask (1 change, 0 none, 255 not assessable)"),
        out / "change_mask.tif",
        nodata=255,
    )
    layers = {"craters": _for_output(result.craters), "damage": _for_output(result.damage)}
    for name, gdf in layers.items():
        files[f"{name}.geojson"] = cio.write_vector(gdf, out / f"{name}.geojson")
    if result.facilities is not None:
        fac = _for_output(result.facilities)
        layers["facilities"] = fac
        files["facilities.geojson"] = cio.write_vector(fac, out / "facilities.geojson")
        files["facilities.csv"] = cio.write_vector(fac, out / "facilities.csv")
    files["results.gpkg"] = _write_gpkg_layers(layers, out / "results.gpkg")
    coreg = result.coreg.to_dict()
    # Outputs must be reproducible byte for byte: wall times go to the manifest, not here.
    coreg.pop("seconds", None)
    coreg["displacement_grid"] = displacement_grid(result.coreg, result.coreg.shape)
    coreg["normalization"] = result.normalization.to_dict()
    coreg["change_threshold"] = result.threshold
    files["coreg.json"] = write_json_atomic(
        out / "coreg.json", json.loads(json.dumps(coreg, default=float))
    )
    if figures:
        from changedet.report import write_figures

        cfg = config or Config()
        files.update(
            write_figures(
                out,
                before=result.before,
                after=result.after,
                change=cio.open_raster(files["change_score.tif"], chunks=cfg.io.chunk_px),
                craters=layers["craters"],
                damage=layers["damage"],
                facilities=layers.get("facilities"),
                threshold=result.threshold,
                rings_m=cfg.facilities.rings_m,
                config=cfg.report,
                title=_title(result, cfg),
                craters_not_searched=result.craters_not_searched,
            )
        )
    return files


def write_report(
    result: PairResult, out: PathLike, *, manifest: dict[str, Any], config: Config | None = None
) -> Path:
    """Write ``report.html`` of a run whose files :func:`write_outputs` wrote into ``out``."""
    from changedet import report

    cfg = config or Config()
    out = Path(out)
    figures = {name: out / name for name in manifest["outputs"] if name.startswith("figures/")}
    return report.write_report(
        out,
        before=result.before,
        after=result.after,
        craters=_for_output(result.craters),
        damage=_for_output(result.damage),
        facilities=None if result.facilities is None else _for_output(result.facilities),
        coreg=result.coreg,
        threshold=result.threshold,
        manifest=manifest,
        figures=figures,
        rings_m=cfg.facilities.rings_m,
        config=cfg.report,
        title=_title(result, cfg),
    )


def _title(result: PairResult, cfg: Config) -> str:
    """The report title: configured, else the before image's folder name."""
    if cfg.report.title:
        return cfg.report.title
    source = result.before.attrs.get("source")
    first = source[0] if isinstance(source, (list, tuple)) and source else source
    return Path(str(first)).resolve().parent.name if first else "changedet report"


def _write_gpkg_layers(layers: dict[str, gpd.GeoDataFrame], path: Path) -> Path:
    """One GeoPackage with a layer per frame (scene CRS), written atomically."""
    import pyogrio

    from changedet._atomic import atomic_path

    # GeoPackages record a "last change" time; pin it so a re-run writes identical bytes.
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2000-01-01T00:00:00.000Z"})
    with atomic_path(path) as tmp:
        tmp.unlink()  # the GPKG driver creates the file itself, and wants a .gpkg name
        named = tmp.with_suffix(".gpkg")
        try:
            for layer, gdf in layers.items():
                gdf.to_file(named, driver="GPKG", layer=layer, mode="a" if named.exists() else "w")
            os.replace(named, tmp)
        finally:
            named.unlink(missing_ok=True)
    return path


def _path(value: Any) -> Any:
    """A path (or list of paths) as given, or None for in-memory objects."""
    return value if isinstance(value, (str, os.PathLike, list)) else None


def _for_output(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Round what a file states to what the method can support: 4 decimals for measurements
    and scores, 1 mm for coordinates in the scene CRS. Besides avoiding false precision, this
    keeps outputs byte-identical across runs despite last-bit differences of threaded sums."""
    import shapely

    out = gdf.copy()
    for col in out.columns:
        if col != out.geometry.name and out[col].dtype.kind == "f":
            out[col] = out[col].round(4)
    if len(out):
        out[out.geometry.name] = shapely.set_precision(out.geometry.to_numpy(), 0.001)
    return out


def _with_grid(da: xr.DataArray, crs: Any, transform: Any, description: str) -> xr.DataArray:
    """A single-band raster on the before grid, with its own attributes only (the inputs'
    band names and scale factors must not leak into the outputs)."""
    if "band" not in da.dims:
        da = da.expand_dims(band=[1])
    da = da.assign_attrs({}).copy()
    da.attrs = {"long_name": description}
    return da.rio.write_crs(crs).rio.write_transform(transform)
