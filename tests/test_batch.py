"""Batch runs: discovery, safe tile ids, Dask execution (local and a real loopback cluster),
a lost worker, kill -9 and resume, the summary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from changedet.batch import (
    PairSpec,
    check_tile_id,
    discover_pairs,
    pair_is_done,
    run_batch,
)
from changedet.cli import main
from changedet.config import Config
from changedet.errors import ChangedetError
from changedet.pipeline import run_pair
from changedet.synthetic import SceneSettings, generate_site

from .conftest import REPO, SAMPLE_TILES

BIN = Path(sys.executable).parent
#: Files whose content records wall-clock times: compared without those fields.
VOLATILE = {"manifest.json", "run.log"}


def _sun(site: Path) -> tuple[float, float]:
    scene = json.loads((site / "truth" / "scene.json").read_text())
    az, el = scene.get("settings", scene)["sun_after"]
    return float(az), float(el)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small pairs in two conventions, and one pair too small to co-register (fails)."""
    root = tmp_path_factory.mktemp("tiles")
    gen = tmp_path_factory.mktemp("gen")
    generate_site(root / "alpha", SceneSettings(size_px=384, seed=2, n_craters=3))
    beta = generate_site(gen / "beta", SceneSettings(size_px=384, seed=4, n_craters=3))
    shutil.copy(beta / "before.tif", root / "beta_pre.tif")
    shutil.copy(beta / "after.tif", root / "beta_post.tif")
    shutil.copy(beta / "facilities.geojson", root / "beta_facilities.geojson")
    generate_site(root / "tiny", SceneSettings(size_px=256, seed=5, n_craters=1))
    (root / "notes.txt").write_text("not a pair\n")
    return root


@pytest.fixture(scope="module")
def reference(tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`run_pair` on each good pair, one at a time, in this process."""
    ref = tmp_path_factory.mktemp("ref")
    az, el = _sun(tiles / "alpha")
    run_pair(
        tiles / "alpha" / "before.tif",
        tiles / "alpha" / "after.tif",
        out=ref / "alpha",
        footprints=tiles / "alpha" / "footprints.geojson",
        facilities=tiles / "alpha" / "facilities.geojson",
        roads=tiles / "alpha" / "roads.geojson",
        sun_azimuth_deg=az,
        sun_elevation_deg=el,
    )
    run_pair(
        tiles / "beta_pre.tif",
        tiles / "beta_post.tif",
        out=ref / "beta",
        facilities=tiles / "beta_facilities.geojson",
    )
    return ref


@pytest.fixture(scope="module")
def local_batch(tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("batch") / "out"
    run_batch(tiles, out, workers=2, progress=False)
    return out


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_pair(got: Path, want: Path) -> None:
    """Every file byte-identical, except the wall times in manifest.json and run.log."""
    a, b = _files(got), _files(want)
    assert sorted(a) == sorted(b)
    for name in a:
        if Path(name).name in VOLATILE:
            continue
        assert a[name].read_bytes() == b[name].read_bytes(), f"{got.name}/{name} differs"
    ma = json.loads((got / "manifest.json").read_text())
    mb = json.loads((want / "manifest.json").read_text())
    assert ma["outputs"] == mb["outputs"]
    assert ma["inputs"] == mb["inputs"]
    assert ma["config"] == mb["config"] and ma["options"] == mb["options"]


def assert_no_leftovers(out: Path) -> None:
    assert not (out / ".staging").exists() and not (out / ".trash").exists()
    parts = [p for p in out.rglob("*") if p.name.endswith(".part") or ".tif." in p.name]
    assert parts == []


# ---------------------------------------------------------------------------- fast checks


@pytest.mark.parametrize(
    "tile_id",
    ["../x", "..", "/etc", "a/b", "a\\b", "x\x00", "line\nbreak", ".hidden", "", "summary", "é"],
)
def test_check_tile_id__refuses_unsafe_names(tile_id: str) -> None:
    with pytest.raises(ChangedetError, match="tile id"):
        check_tile_id(tile_id, "test")


def test_check_tile_id__accepts_plain_names() -> None:
    for name in ("site_01", "A-3.b", "2024-05-01_tile7"):
        assert check_tile_id(name, "test") == name


def test_run_batch__csv_id_escaping_out_is_refused(tmp_path: Path, tiles: Path) -> None:
    table = tmp_path / "pairs.csv"
    table.write_text(
        "id,before,after\n"
        f"ok,{tiles / 'beta_pre.tif'},{tiles / 'beta_post.tif'}\n"
        f"../../escape,{tiles / 'beta_pre.tif'},{tiles / 'beta_post.tif'}\n"
    )
    out = tmp_path / "out"
    with pytest.raises(ChangedetError, match=r"pairs.csv row 3: tile id '\.\./\.\./escape'"):
        run_batch(table, out, workers=1, progress=False)
    assert not (tmp_path / "escape").exists() and not out.exists()
    assert main(["batch", str(table), "--out", str(out), "--quiet"]) == 2


def test_discover_pairs__conventions_and_reasons(tmp_path: Path) -> None:
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "before.tif").write_bytes(b"")
    (tmp_path / "s1" / "after.tif").write_bytes(b"")
    (tmp_path / "s1" / "footprints.geojson").write_text("{}")
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "before.tif").write_bytes(b"")
    for name in ("t2_pre.tif", "t2_post.tiff", "t3_pre.tif", "S1_pre.tif", "S1_post.tif"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "t2_facilities.geojson").write_text("{}")
    (tmp_path / "t2_roads.geojson").write_text("{}")
    found = discover_pairs(tmp_path)
    assert [p.id for p in found.pairs] == ["t2"]
    t2 = found.pairs[0]
    assert t2.before.name == "t2_pre.tif" and t2.after.name == "t2_post.tiff"
    assert t2.facilities == tmp_path / "t2_facilities.geojson"
    assert t2.roads == tmp_path / "t2_roads.geojson" and t2.footprints is None
    reasons = dict(found.skipped)
    assert reasons["lonely/"] == "before.tif without after.tif"
    assert reasons["t3_pre.tif"].startswith("no matching t3_post")
    # s1/ and S1_pre/post would share a folder on a case-insensitive file system
    assert "duplicate tile id" in reasons["s1/"]
    assert "duplicate tile id" in reasons["S1_pre.tif + S1_post.tif"]

    table = tmp_path / "pairs.csv"
    table.write_text(
        "id,before,after,sun_azimuth,roads\n"
        "a,t2_pre.tif,t2_post.tiff,160,t2_roads.geojson\n"
        "b,missing.tif,t2_post.tiff,,\n"
        "c,t2_pre.tif,t2_post.tiff,south,\n"
        "d,t2_pre.tif,t2_post.tiff,,no_roads.geojson\n"
    )
    found = discover_pairs(table)
    assert [(p.id, p.sun_azimuth_deg) for p in found.pairs] == [("a", 160.0)]
    assert found.pairs[0].roads == tmp_path / "t2_roads.geojson"
    reasons = dict(found.skipped)
    assert "not found" in reasons["pairs.csv row 3"]
    assert "not a number" in reasons["pairs.csv row 4"]
    assert (
        reasons["pairs.csv row 5"].startswith("roads ")
        and "not found" in reasons["pairs.csv row 5"]
    )


# ---------------------------------------------------------------------------- local cluster


def test_run_batch__local_cluster_equals_run_pair(local_batch: Path, reference: Path) -> None:
    record = json.loads((local_batch / "batch.json").read_text())
    status = {k: v["status"] for k, v in record["pairs"].items()}
    assert status == {"alpha": "done", "beta": "done", "tiny": "failed"}
    # small pairs (one 2048² chunk each) run as one task each
    assert {v["mode"] for v in record["pairs"].values()} == {"pair"}
    assert "smaller than one correlation window" in record["pairs"]["tiny"]["error"]
    assert not (local_batch / "tiny").exists()
    for tile_id in ("alpha", "beta"):
        assert_same_pair(local_batch / tile_id, reference / tile_id)
    assert_no_leftovers(local_batch)


def test_run_batch__summary_one_row_per_facility(local_batch: Path) -> None:
    table = pd.read_csv(local_batch / "summary" / "facilities.csv", dtype={"id": str})
    per_pair = [
        pd.read_csv(local_batch / t / "facilities.csv", dtype={"id": str})
        for t in ("alpha", "beta")
    ]
    # both synthetic sites number their facilities F01...: different places, so both kept
    assert len(table) == sum(len(t[t["in_scene"]]) for t in per_pair)
    assert set(table["tile"]) == {"alpha", "beta"}
    row = table[(table["tile"] == "alpha")].iloc[0]
    src = per_pair[0].set_index("id").loc[row["id"]]
    assert row["damage_class"] == src["damage_class"]
    assert row["craters_within_250m"] == src["craters_within_250m"]
    html = (local_batch / "summary" / "report.html").read_text()
    assert "tiny" in html and "smaller than one correlation window" in html
    assert (local_batch / "summary" / "overview.png").read_bytes()[:4] == b"\x89PNG"


def test_run_batch__global_facilities_seen_in_two_tiles(tmp_path: Path, local_batch: Path) -> None:
    """One facility list over overlapping tiles: each facility once, in one documented tile."""
    import geopandas as gpd
    from shapely.geometry import Point

    # Two 'tiles' of the same pair (copies): every facility is seen twice, at the same edge
    # distance, both assessable: the rule picks the smaller tile id.
    for name in ("t1", "t2"):
        shutil.copytree(local_batch / "alpha", tmp_path / "out" / name)
    alpha = gpd.read_file(local_batch / "alpha" / "facilities.geojson")
    outside = gpd.GeoDataFrame(
        {"id": ["FAR"], "name": ["far away"], "type": ["school"]},
        geometry=[Point(40.0, 10.0)],
        crs="EPSG:4326",
    )
    both = pd.concat([alpha[["id", "name", "type", "geometry"]], outside], ignore_index=True)
    from changedet.batch import summarize_facilities

    table = summarize_facilities(tmp_path / "out", ["t2", "t1"], gpd.GeoDataFrame(both))
    assert list(table["id"]) == sorted(both["id"])
    covered = table[table["id"] != "FAR"]
    assert set(covered["tile"]) == {"t1"} and set(covered["tiles"]) == {"t1;t2"}
    far = table[table["id"] == "FAR"].iloc[0]
    assert far["damage_class"] == "not covered" and far["tile"] == ""


def test_pair_is_done__detects_changed_output(
    tmp_path: Path, local_batch: Path, tiles: Path
) -> None:
    shutil.copytree(local_batch / "beta", tmp_path / "beta")
    spec = PairSpec(
        "beta",
        tiles / "beta_pre.tif",
        tiles / "beta_post.tif",
        facilities=tiles / "beta_facilities.geojson",
    )
    assert pair_is_done(tmp_path / "beta", spec, Config())
    other = Config().updated_dotted({"change.threshold": 0.9})
    assert not pair_is_done(tmp_path / "beta", spec, other)  # another configuration
    with open(tmp_path / "beta" / "craters.geojson", "ab") as fh:
        fh.write(b" ")
    assert not pair_is_done(tmp_path / "beta", spec, Config())


def test_run_batch__says_where_it_runs_with_the_dashboard_link(
    tmp_path: Path, local_batch: Path, tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(local_batch, tmp_path / "out")
    record = run_batch(tiles, tmp_path / "out", workers=1, progress=True)
    statuses = [p["status"] for p in record["pairs"].values()]
    assert "skipped" in statuses and "done" not in statuses  # resumed (the bad pair fails again)
    err = capsys.readouterr().err
    assert "running on a local cluster of 1 worker(s); Dask dashboard: http" in err


# ---------------------------------------------------------------------------- chunk-parallel


def test_run_batch__big_pairs_run_chunk_parallel_equal_changedet_run(
    tiles: Path, tmp_path: Path
) -> None:
    """384² pairs in 128² chunks (9 chunks each) over the threshold run chunk by chunk on the
    cluster; their files equal `changedet run` / `run_pair` in this process (threads)."""
    cfg = Config().updated_dotted({"io.chunk_px": 128})
    out = tmp_path / "out"
    record = run_batch(
        tiles, out, config=cfg, workers=2, chunk_parallel_min_chunks=9, progress=False
    )
    runs = {k: (v["status"], v.get("mode")) for k, v in record["pairs"].items()}
    # tiny (256²: 4 chunks) stays an ordinary pair task, and fails as before
    assert runs == {
        "alpha": ("done", "chunks"),
        "beta": ("done", "chunks"),
        "tiny": ("failed", "pair"),
    }
    assert not [k for k, v in record["pairs"].items() if "chunk_parallel_error" in v]
    assert json.loads((out / "batch.json").read_text())["pairs"]["alpha"]["mode"] == "chunks"

    ref = tmp_path / "ref"
    az, el = _sun(tiles / "alpha")
    site = tiles / "alpha"
    args = [
        "run", str(site / "before.tif"), str(site / "after.tif"), "--out", str(ref / "alpha"),
        "--footprints", str(site / "footprints.geojson"),
        "--facilities", str(site / "facilities.geojson"),
        "--roads", str(site / "roads.geojson"),
        "--sun-azimuth", str(az), "--sun-elevation", str(el), "--set", "io.chunk_px=128",
        "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    run_pair(
        tiles / "beta_pre.tif",
        tiles / "beta_post.tif",
        out=ref / "beta",
        facilities=tiles / "beta_facilities.geojson",
        config=cfg,
    )
    for tile_id in ("alpha", "beta"):
        assert_same_pair(out / tile_id, ref / tile_id)
    assert_no_leftovers(out)


# ---------------------------------------------------------------------------- real cluster


@pytest.fixture
def loopback_cluster(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1, killed in teardown."""
    sched_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp_path / "cluster.log", "wb")
    common = {"stdout": log, "stderr": subprocess.STDOUT, "start_new_session": True}
    try:
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "dask"),
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(sched_file),
                ],
                **common,  # type: ignore[arg-type]
            )
        )
        deadline = time.monotonic() + 60
        while not sched_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "dask"),
                        "worker",
                        "--scheduler-file",
                        str(sched_file),
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                    ],
                    **common,  # type: ignore[arg-type]
                )
            )
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address, procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        log.close()


def test_run_batch__real_cluster_and_a_lost_worker(
    loopback_cluster: tuple[str, list[subprocess.Popen[bytes]]],
    tiles: Path,
    reference: Path,
    tmp_path: Path,
) -> None:
    address, procs = loopback_cluster
    out = tmp_path / "out"
    record = run_batch(tiles, out, scheduler=address, progress=False)
    assert record["failed"] == 1  # tiny
    for tile_id in ("alpha", "beta"):
        assert_same_pair(out / tile_id, reference / tile_id)

    # again into a new folder, killing one worker (nanny included) while pairs run on it
    out2 = tmp_path / "out2"
    result: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: result.update(rec=run_batch(tiles, out2, scheduler=address, progress=False))
    )
    thread.start()
    deadline = time.monotonic() + 300
    staging = out2 / ".staging"
    while time.monotonic() < deadline and not (
        staging.is_dir() and any(p.name.startswith(("alpha", "beta")) for p in staging.iterdir())
    ):
        time.sleep(0.2)
    time.sleep(2.0)
    os.killpg(procs[1].pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    rec = result["rec"]
    assert isinstance(rec, dict)
    assert {k: v["status"] for k, v in rec["pairs"].items()} == {
        "alpha": "done",
        "beta": "done",
        "tiny": "failed",
    }
    for tile_id in ("alpha", "beta"):
        assert_same_pair(out2 / tile_id, reference / tile_id)
    for name in ("facilities.csv", "report.html", "overview.png"):
        assert (out2 / "summary" / name).read_bytes() == (out / "summary" / name).read_bytes()


# ---------------------------------------------------------------------------- kill -9


def test_batch__kill_9_then_rerun_equals_uninterrupted(
    tiles: Path, local_batch: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cmd = [
        str(BIN / "changedet"),
        "batch",
        str(tiles),
        "--out",
        str(out),
        "--workers",
        "2",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "alpha" / "manifest.json").is_file() or (
                out / "beta" / "manifest.json"
            ).is_file():
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the batch ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its cluster's processes
        proc.wait(timeout=60)
    assert not (out / "summary").exists()
    done_before = {t for t in ("alpha", "beta") if (out / t).exists()}
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 1, rerun.stderr  # tiny fails, and says so
    assert "failed: tiny:" in rerun.stdout
    record = json.loads((out / "batch.json").read_text())
    for tile_id in done_before:
        assert record["pairs"][tile_id]["status"] == "skipped"
    for tile_id in ("alpha", "beta"):
        assert_same_pair(out / tile_id, local_batch / tile_id)
    for name in ("facilities.csv", "report.html", "overview.png"):
        assert (out / "summary" / name).read_bytes() == (
            local_batch / "summary" / name
        ).read_bytes()
    assert_no_leftovers(out)


# ---------------------------------------------------------------------------- sample tiles


@pytest.mark.slow
def test_run_batch__sample_tiles_equal_changedet_run(tmp_path: Path) -> None:
    out = tmp_path / "batch"
    record = run_batch(SAMPLE_TILES, out, workers=2, progress=False)
    assert record["failed"] == 0 and sorted(record["pairs"]) == ["site_01", "site_02", "site_03"]
    for site in sorted(SAMPLE_TILES.glob("site_*")):
        az, el = _sun(site)
        args = [
            "run", str(site / "before.tif"), str(site / "after.tif"),
            "--out", str(tmp_path / "run" / site.name),
            "--footprints", str(site / "footprints.geojson"),
            "--facilities", str(site / "facilities.geojson"),
            "--roads", str(site / "roads.geojson"),
            "--sun-azimuth", str(az), "--sun-elevation", str(el), "--quiet",
        ]  # fmt: skip
        assert main(args) == 0
        assert_same_pair(out / site.name, tmp_path / "run" / site.name)


def _tile_tif(path: Path, x0: float, y0: float) -> Path:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=1,
        dtype="uint8",
        crs="EPSG:32637",
        transform=from_origin(x0, y0, 0.5, 0.5),
    ) as dst:
        dst.write(np.zeros((1, 64, 64), "uint8"))
    return path


@pytest.mark.parametrize(("gap_m", "panels"), [(50_000.0, True), (0.0, False)])
def test_overview_map__far_apart_tiles_get_a_panel_each(
    tmp_path: Path, gap_m: float, panels: bool
) -> None:
    """32 m tiles 50 km apart would be dots on one map: each also gets a panel of its own."""
    import pandas as pd
    from PIL import Image
    from pyproj import Transformer

    from changedet._batch_summary import _overview_map, _panel_tiles
    from changedet.batch import PairSpec

    to_lonlat = Transformer.from_crs("EPSG:32637", "EPSG:4326", always_xy=True)
    specs, rows = [], []
    for k, cls in enumerate(["no visible damage", "destroyed", "severe"]):
        x0, y0 = 400_000.0 + k * (gap_m + 32.0), 4_000_000.0
        tif = _tile_tif(tmp_path / f"t{k}.tif", x0, y0)
        specs.append(PairSpec(id=f"t{k}", before=tif, after=tif))
        lon, lat = to_lonlat.transform(x0 + 16.0, y0 - 16.0)
        rows.append({"id": f"F{k}", "tile": f"t{k}", "damage_class": cls, "lon": lon, "lat": lat})
    record = {"pairs": {s.id: {"status": "done"} for s in specs}}
    png = _overview_map(tmp_path, specs, record, pd.DataFrame(rows), tmp_path / "overview.png")
    width, height = Image.open(png).size
    # one map (9.5 x 7 in) or the map beside three panels (14.3 x 5.5 in)
    assert (width / height > 2.0) is panels
    import geopandas as gpd
    from shapely.geometry import box as shapely_box

    tiles = gpd.GeoDataFrame(
        {"id": ["a", "b", "c"], "status": ["done"] * 3},
        geometry=[
            shapely_box(0, 0, 10, 10),
            shapely_box(100, 0, 110, 10),
            shapely_box(200, 0, 210, 10),
        ],
        crs="EPSG:32637",
    )
    fac = gpd.GeoDataFrame(
        {"damage_class": ["possible", "destroyed", "severe", "no visible damage"]},
        geometry=gpd.points_from_xy([5, 105, 106, 205], [5, 5, 6, 5]),
        crs="EPSG:32637",
    )
    # the tile with the most damaged facilities first, then by facility count, then by id
    assert _panel_tiles(tiles, fac) == ["b", "a", "c"]
