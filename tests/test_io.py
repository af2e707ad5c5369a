"""Tests of changedet.io: lazy reading, nodata, mosaics, bad files, atomic writers."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import dask.array as dsa
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import xarray as xr
from affine import Affine

from changedet.errors import BandMismatchError, MissingCRSError, NoOverlapError, UnreadableFileError
from changedet.io import open_raster, write_cog, write_csv, write_geojson, write_gpkg
from changedet.testing import make_raster

DATA = Path(__file__).parents[1].parent / "shared" / "data"
T0 = Affine(0.5, 0, 500000, 0, -0.5, 4000000)


def _write_gtiff(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32637",
    transform: Affine = T0,
    nodata: float | None = None,
    tiled: bool = True,
) -> Path:
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "transform": transform,
        "nodata": nodata,
    }
    if crs:
        profile["crs"] = crs
    if tiled:
        profile.update(tiled=True, blockxsize=64, blockysize=64)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_open_raster__lazy_float32_with_nan_nodata(tmp_path: Path) -> None:
    data = np.arange(3 * 100 * 130, dtype=np.uint16).reshape(3, 100, 130) % 1000 + 1
    data[:, :10, :10] = 0
    path = _write_gtiff(tmp_path / "a.tif", data, nodata=0)
    da = open_raster(path, chunks=64)
    assert da.dims == ("band", "y", "x") and da.dtype == np.float32
    assert da.chunks == ((3,), (64, 36), (64, 64, 2))
    assert da.rio.crs.to_epsg() == 32637 and da.attrs["source"] == str(path)
    values = da.values
    assert np.isnan(values[:, :10, :10]).all()
    np.testing.assert_array_equal(values[:, 10:, 10:], data[:, 10:, 10:].astype(np.float32))


def test_open_raster__nodata_override(tmp_path: Path) -> None:
    data = np.ones((1, 64, 64), np.uint8)
    data[0, 0, :5] = 0
    da = open_raster(_write_gtiff(tmp_path / "z.tif", data), nodata=0)
    assert int(da.isnull().sum()) == 5


def test_open_raster__truncated_geotiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = _write_gtiff(tmp_path / "t.tif", rng.integers(0, 255, (1, 256, 256), dtype=np.uint8))
    raw = path.read_bytes()
    cut = tmp_path / "truncated.tif"
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(UnreadableFileError, match=r"truncated\.tif: .*(truncated|cannot be read)"):
        open_raster(cut)


def test_open_raster__missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match=r"nope\.tif: file not found"):
        open_raster(tmp_path / "nope.tif")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a tiff" * 10)
    with pytest.raises(UnreadableFileError, match=r"junk\.tif: cannot be read"):
        open_raster(junk)


def test_open_raster__no_crs(tmp_path: Path) -> None:
    path = _write_gtiff(tmp_path / "nocrs.tif", np.ones((1, 32, 32), np.uint8), crs=None)
    with pytest.raises(MissingCRSError, match=r"nocrs\.tif: no CRS found"):
        open_raster(path)
    assert open_raster(path, require_crs=False).rio.crs is None


def test_open_raster__mosaic_of_tiles_equals_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    whole = rng.integers(1, 255, (2, 150, 170), dtype=np.uint8)
    t = Affine(0.5, 0, 500000, 0, -0.5, 4000000)
    paths = []
    for r0, c0 in ((0, 0), (0, 80), (70, 0), (70, 80)):  # overlapping tiles
        tile = whole[:, r0 : r0 + 80, c0 : c0 + 90]
        paths.append(
            _write_gtiff(
                tmp_path / f"tile_{r0}_{c0}.tif",
                np.ascontiguousarray(tile),
                transform=t * Affine.translation(c0, r0),
                nodata=0,
            )
        )
    da = open_raster(paths, chunks=64)
    assert da.chunks is not None and da.shape == (2, 150, 170)
    assert da.rio.transform() == t
    np.testing.assert_array_equal(da.values, whole.astype(np.float32))


def test_window_reader__same_values_as_the_dask_array(tmp_path: Path) -> None:
    """Windows read from the file equal slices of open_raster's array (nodata from the file,
    from ``nodata=``, a mosaic, float data), and derived arrays get no reader."""
    from changedet.io import window_reader

    rng = np.random.default_rng(3)
    u16 = rng.integers(0, 900, (3, 150, 170), dtype=np.uint16)
    u16[:, :20, :30] = 0
    f32 = rng.normal(size=(1, 150, 170)).astype(np.float32)
    paths = {
        "uint16, file nodata": (_write_gtiff(tmp_path / "a.tif", u16, nodata=0), None),
        "uint16, nodata=7": (_write_gtiff(tmp_path / "b.tif", u16), 7.0),
        "float32": (_write_gtiff(tmp_path / "c.tif", f32), None),
    }
    t = Affine(0.5, 0, 500000, 0, -0.5, 4000000)
    tiles = [
        _write_gtiff(
            tmp_path / f"m{c0}.tif",
            np.ascontiguousarray(u16[:, :, c0 : c0 + 90]),
            transform=t * Affine.translation(c0, 0),
            nodata=0,
        )
        for c0 in (0, 80)
    ]
    arrays = {k: open_raster(p, chunks=64, nodata=nd) for k, (p, nd) in paths.items()}
    arrays["mosaic"] = open_raster(tiles, chunks=64)
    for label, da in arrays.items():
        read = window_reader(da.data)
        assert read is not None, label
        for r0, r1, c0, c1 in ((0, 40, 0, 50), (10, 137, 33, 170), (149, 150, 0, 1)):
            want = da.data[:, r0:r1, c0:c1].compute()
            np.testing.assert_array_equal(read(r0, r1, c0, c1), want, err_msg=label)
        for derived in (da + 0, da.isel(x=slice(1, None)), da.where(da > 1)):
            assert window_reader(derived.data) is None, label
    assert window_reader(np.zeros((1, 4, 4))) is None


def test_open_raster__mosaic_errors(tmp_path: Path) -> None:
    a = _write_gtiff(tmp_path / "a.tif", np.ones((1, 16, 16), np.uint8))
    b = _write_gtiff(tmp_path / "b.tif", np.ones((1, 16, 16), np.uint8), crs="EPSG:32636")
    c = _write_gtiff(tmp_path / "c.tif", np.ones((2, 16, 16), np.uint8))
    d = _write_gtiff(
        tmp_path / "d.tif",
        np.ones((1, 16, 16), np.uint8),
        transform=Affine(0.5, 0, 500000.25, 0, -0.5, 4000000),
    )
    with pytest.raises(NoOverlapError, match=r"b\.tif: tile is not on the grid"):
        open_raster([a, b])
    with pytest.raises(BandMismatchError, match=r"c\.tif: tile has 2 bands"):
        open_raster([a, c])
    with pytest.raises(NoOverlapError, match=r"d\.tif: tile origin"):
        open_raster([a, d])
    with pytest.raises(UnreadableFileError, match=r"empty list"):
        open_raster([])


def test_write_cog__roundtrip_from_dask_is_a_cog(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = rng.normal(size=(2, 700, 650)).astype(np.float32)
    data[:, :20] = np.nan
    src = make_raster(data).chunk({"band": 1, "y": 97, "x": 131})
    path = write_cog(src, tmp_path / "out" / "c.tif")
    with rasterio.open(path) as f:
        assert f.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert f.overviews(1) and f.crs.to_epsg() == 32637
    back = open_raster(path).values
    np.testing.assert_array_equal(back, data)
    assert [p.name for p in path.parent.iterdir()] == ["c.tif"]  # no temporary left


def test_write_cog__failure_leaves_nothing(tmp_path: Path) -> None:
    src = make_raster(np.ones((1, 8, 8), np.float32), crs=None)
    with pytest.raises(MissingCRSError, match=r"Set one with"):
        write_cog(src, tmp_path / "x.tif")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def clusters() -> Iterator[dict[str, Any]]:
    """Two-worker LocalClusters: threads in this process, and worker processes."""
    from distributed import LocalCluster

    opts = {"n_workers": 2, "threads_per_worker": 1, "dashboard_address": ":0"}
    with (
        LocalCluster(processes=False, **opts) as inproc,
        LocalCluster(processes=True, **opts) as procs,
    ):
        yield {"distributed-threads": inproc, "distributed-processes": procs}


@contextmanager
def _scheduler(name: str, clusters: dict[str, Any]) -> Iterator[None]:
    """Make ``name`` Dask's scheduler inside the block (a LocalCluster's client, or a local one)."""
    if name.startswith("distributed"):
        from distributed import Client, get_task_stream

        with (
            Client(clusters[name], set_as_default=False) as client,
            dask.config.set(scheduler=client),
            get_task_stream(client) as stream,
        ):
            yield
        assert stream.data, "the cluster ran no task"  # the work really went to the cluster
    elif name == "processes":  # one pool for the whole block, not one per dask.compute
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with (
            ProcessPoolExecutor(2, mp_context=ctx) as pool,
            dask.config.set(scheduler="processes", pool=pool),
        ):
            yield
    else:
        with dask.config.set(scheduler=name):
            yield


def _gradient(size: int, chunk: int) -> xr.DataArray:
    """A lazy ``(1, size, size)`` float32 raster, each chunk made where it is computed."""

    def fill(block_info: Any = None) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]
        rows = np.arange(y0, y1, dtype=np.float32)[:, None] % 97
        return (rows + np.arange(x0, x1, dtype=np.float32) % 89)[None]

    n = size // chunk
    data = dsa.map_blocks(fill, dtype=np.float32, chunks=((1,), (chunk,) * n, (chunk,) * n))
    return make_raster(data)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SCHEDULERS = ["threads", "synchronous", "processes", "distributed-threads", "distributed-processes"]


def test_write_cog__same_bytes_on_every_scheduler(tmp_path: Path, clusters: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(2, 700, 650)).astype(np.float32)
    data[:, :20] = np.nan
    mask = (data[0] > 0.5).astype(np.uint8)
    rasters = {
        # bands split across chunks, odd chunk sizes (re-aligned to whole 512 tiles)
        "bands.tif": (make_raster(data).chunk({"band": 1, "y": 97, "x": 131}), None),
        # a 2-D (y, x) array, an integer type and an explicit nodata
        "mask.tif": (make_raster(mask).isel(band=0).chunk({"y": 300, "x": 200}), 255),
        "filled.tif": (make_raster(data[:1]).chunk({"y": 256, "x": 256}), -9999.0),
    }
    digests = {}
    for name in SCHEDULERS:
        with _scheduler(name, clusters):
            for fname, (raster, nodata) in rasters.items():
                write_cog(raster, tmp_path / name / fname, nodata=nodata)
        digests[name] = {f: _sha(tmp_path / name / f) for f in rasters}
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == sorted(rasters)
    for name in SCHEDULERS[1:]:
        assert digests[name] == digests["threads"], name
    # and the values are the array's
    np.testing.assert_array_equal(open_raster(tmp_path / "threads" / "bands.tif").values, data)
    with rasterio.open(tmp_path / "threads" / "mask.tif") as f:
        assert f.nodata == 255 and f.count == 1
        np.testing.assert_array_equal(f.read(1), mask)
    back = open_raster(tmp_path / "threads" / "filled.tif").values  # -9999 read back as NaN
    np.testing.assert_array_equal(back, data[:1])


@pytest.mark.parametrize("name", ["threads", "distributed-threads"])
def test_write_cog__memory_bounded_by_chunks_not_scene(
    tmp_path: Path, clusters: dict[str, Any], name: str
) -> None:
    """A 144 MiB lazy raster in 1 MiB chunks: Python's peak (workers included) stays small."""
    raster = _gradient(6144, 512)
    with _scheduler(name, clusters):
        tracemalloc.start()
        try:
            write_cog(raster, tmp_path / "big.tif")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < raster.nbytes / 6, f"peak {peak / 2**20:.1f} MiB"
    with rasterio.open(tmp_path / "big.tif") as f:
        window = rasterio.windows.Window(5000, 3000, 700, 900)  # across chunk seams
        got = f.read(1, window=window)
    want = raster[0, 3000:3900, 5000:5700].values
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["threads", "distributed-threads"])
def test_write_cog__failing_chunk_leaves_old_file(
    tmp_path: Path, clusters: dict[str, Any], name: str
) -> None:
    path = tmp_path / "c.tif"
    path.write_bytes(b"an earlier output")

    def fail(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        if block_info[0]["chunk-location"][1:] == (2, 1):
            raise ValueError("chunk (2, 1) failed")
        return block

    raster = make_raster(np.ones((1, 1536, 1536), np.float32)).chunk({"y": 512, "x": 512})
    broken = raster.copy(data=raster.data.map_blocks(fail, dtype=np.float32))
    with _scheduler(name, clusters), pytest.raises(ValueError, match=r"chunk \(2, 1\) failed"):
        write_cog(broken, path)
    assert path.read_bytes() == b"an earlier output"
    assert [p.name for p in tmp_path.iterdir()] == ["c.tif"]  # no temporary left


def test_write_vectors__geojson_4326_gpkg_scene_crs_csv(tmp_path: Path) -> None:
    gdf = gpd.GeoDataFrame(
        {"id": [1, 2]},
        geometry=[shapely.Point(500000, 4000000), shapely.Point(500100, 4000100)],
        crs=32637,
    )
    gj = gpd.read_file(write_geojson(gdf, tmp_path / "a.geojson"))
    assert gj.crs.to_epsg() == 4326 and gj.geometry[0].x == pytest.approx(39.0, abs=1e-6)
    gp = gpd.read_file(write_gpkg(gdf, tmp_path / "a.gpkg"))
    assert gp.crs.to_epsg() == 32637 and gp.geometry[1].x == pytest.approx(500100)
    path = write_csv(pd.DataFrame({"a": [1, 2]}), tmp_path / "a.csv")
    assert path.read_text().splitlines() == ["a", "1", "2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.geojson", "a.gpkg"]
    with pytest.raises(MissingCRSError):
        write_geojson(gdf.set_crs(None, allow_override=True), tmp_path / "b.geojson")


@pytest.mark.realdata
def test_open_raster__jpeg2000(tmp_path: Path) -> None:
    path = DATA / "sentinel2_pair" / "ref_S2A_20160608T153121_T33UUU_sub.jp2"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/data is absent)")
    da = open_raster(path, chunks=512, nodata=0)
    assert da.shape == (1, 3200, 2400) and da.rio.crs.to_epsg() == 32633
    assert np.isfinite(da[:, 1000:1100, 1000:1100].values).all()
