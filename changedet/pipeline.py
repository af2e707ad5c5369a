"""One before/after pair end to end: read, align, co-register, normalise, change, detect, write.

:func:`run_pair` is what ``changedet run`` and the notebooks call. It returns a
:class:`PairResult` with everything it computed, and (when ``out`` is given) writes:

====================  ===================================================================
file                  content
====================  ===================================================================
``change_score.tif``  change score in [0, 1] (float32 COG, NaN = not assessable)
``change_mask.tif``   1 = change, 0 = no change, 255 = not assessable (uint8 COG)
``craters.geojson``   crater detections, EPSG:4326 (the GeoJSON standard)
``craters.gpkg``      the same in the scene CRS
``damage.geojson``    damage per footprint (or per damaged region), EPSG:4326
``damage.gpkg``       the same in the scene CRS
``coreg.json``        the fitted co-registration, its quality and a displacement grid
====================  ===================================================================

Every file is written atomically; inputs are only read.

Examples
--------
>>> from changedet.pipeline import run_pair  # doctest: +SKIP
>>> res = run_pair("site/before.tif", "site/after.tif", out="out", footprints="site/footprints.geojson")  # doctest: +SKIP
>>> res.craters[["diameter_m", "score"]].head()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
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
    outputs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    log.info("%s ...", name)
    t0 = time.perf_counter()
    yield
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
    config
        :class:`changedet.config.Config`; defaults when omitted.
    sun_azimuth_deg, sun_elevation_deg
        Sun azimuth (degrees clockwise from north) and elevation of the after image, from its
        metadata, when known: they enable the crater shading test (a bowl's sun-side wall is
        in shadow, a mound's is lit).
    progress
        Show progress bars for the chunked computations.
    overwrite
        Replace the results of a different run in ``out``; without it such a folder is refused
        before any work starts (re-running the same run into its own folder is allowed).

    Returns
    -------
    PairResult

    Raises
    ------
    changedet.errors.ChangedetError
        On bad input (unreadable file, no CRS, no overlap, band mismatch, all nodata), or when
        the co-registration quality gate fails and ``config.coregister.on_fail == "raise"``.
    """
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
    with _stage("align", timings):
        before_da, after_da = align.align_pair(before_da, after_da, cfg.align)
    with _stage("coregister", timings), _progress(progress):
        after_c, coreg_result = coregister.coregister(before_da, after_da, cfg.coregister)
    with _stage("normalize", timings), _progress(progress):
        norm = normalize.RelativeNormalizer.from_params(cfg.normalize).fit(before_da, after_c)
        after_n = norm.apply(after_c)
    with _stage("change", timings), _progress(progress):
        scores = change.change_scores(before_da, after_n, cfg.change)
        if hasattr(scores["score"].data, "dask"):
            scores = scores.persist()  # the maps feed the threshold, both detectors and the files
        thr = change.threshold_score(scores["score"], cfg.change.threshold)
        na = change.not_assessable(before_da, after_c, saturation=cfg.change.saturation)
    with _stage("craters", timings), _progress(progress):
        crater_gdf = craters.detect_craters(
            after_n,
            before_da,
            change=scores,
            params=cfg.craters,
            sun_azimuth_deg=sun_azimuth_deg,
            sun_elevation_deg=sun_elevation_deg,
            footprints=fp,
        )
    with _stage("damage", timings), _progress(progress):
        if fp is not None:
            damage_gdf = damage.assess_damage(
                scores["score"],
                fp,
                threshold=thr,
                not_assessable=na,
                params=cfg.damage,
                before=before_da,
                after=after_n,
            )
        else:
            damage_gdf = damage.damaged_regions(
                scores["score"], threshold=thr, not_assessable=na, params=cfg.damage
            )
    fac_scores = None
    if fac is not None:
        with _stage("facilities", timings):
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
                before=before_da,
                after=after_n,
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
        timings=timings,
    )
    if out is not None:
        with _stage("write", timings), _progress(progress):
            result.outputs = write_outputs(result, out)
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
        if footprints is not None and _path(footprints) is None:
            manifest["inputs"].append(
                {"role": "footprints", "path": None, "note": "in-memory GeoDataFrame"}
            )
        if facilities is not None and _path(facilities) is None:
            manifest["inputs"].append(
                {"role": "facilities", "path": None, "note": "in-memory GeoDataFrame"}
            )
        result.outputs["manifest.json"] = write_manifest(manifest, out)
    return result


def write_outputs(result: PairResult, out: PathLike) -> dict[str, Path]:
    """Write the files of a :class:`PairResult` into ``out`` (atomically); return them by name."""
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
    for name, gdf in (
        ("craters", _for_output(result.craters)),
        ("damage", _for_output(result.damage)),
    ):
        files[f"{name}.geojson"] = cio.write_vector(gdf, out / f"{name}.geojson")
        files[f"{name}.gpkg"] = cio.write_vector(gdf, out / f"{name}.gpkg", layer=name)
    if result.facilities is not None:
        fac = _for_output(result.facilities)
        files["facilities.geojson"] = cio.write_vector(fac, out / "facilities.geojson")
        files["facilities.csv"] = cio.write_vector(fac, out / "facilities.csv")
    coreg = result.coreg.to_dict()
    # Outputs must be reproducible byte for byte: wall times go to the manifest, not here.
    coreg.pop("seconds", None)
    coreg["displacement_grid"] = displacement_grid(result.coreg, result.coreg.shape)
    coreg["normalization"] = result.normalization.to_dict()
    coreg["change_threshold"] = result.threshold
    files["coreg.json"] = write_json_atomic(
        out / "coreg.json", json.loads(json.dumps(coreg, default=float))
    )
    return files


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
