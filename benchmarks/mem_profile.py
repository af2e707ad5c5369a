"""Where the memory of one pipeline run goes: RSS over time, per stage, and what Dask holds.

Runs :func:`changedet.pipeline.run_pair` in this process on a ``bench_pipeline`` pair (as its
``changedet`` child does) and samples, every 20 ms from a thread:

* the RSS of the process (psutil) and the stage the run is in (from the ``changedet`` log);
* through a Dask callback, the bytes of the task results Dask holds at that moment (its
  ``cache``: results waiting for their last consumer; a NumPy view counts with its whole base
  array, which it keeps alive), the number of those results, and the number of tasks running;

and prints, per stage, the peak RSS, the Dask-held bytes and tasks in flight at that peak, the
largest Dask-held bytes during the stage and the CPU seconds of the stage. (Not yet: a
tracemalloc snapshot at one stage's peak, to see what holds memory outside Dask's results.)

Usage (from the repository root)::

    .venv/bin/python benchmarks/mem_profile.py --size 4096 [--chunk-px 1024] [--json out.json]

Benchmark-only: not part of the package.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "pipeline"


class _DaskHeld:
    """A Dask local-scheduler callback tracking the bytes of results held and tasks running."""

    def __init__(self) -> None:
        self.held_bytes = 0
        self.held_n = 0
        self.running = 0
        self.lock = threading.Lock()

    def callback(self) -> Any:
        import numpy as np
        from dask.callbacks import Callback

        me = self

        def nbytes(v: Any, seen: dict[int, int]) -> None:
            """Bytes ``v`` keeps alive, into ``seen`` (by buffer): a NumPy view counts its
            whole base (a strided sample of a chunk keeps the whole chunk)."""
            if isinstance(v, (list, tuple)):
                for x in v[:64]:
                    nbytes(x, seen)
                return
            base = v
            while isinstance(getattr(base, "base", None), np.ndarray):
                base = base.base
            n = getattr(base, "nbytes", None)
            if isinstance(n, int):
                seen[id(base)] = n

        class CB(Callback):  # type: ignore[misc]
            def _start_state(self, dsk: Any, state: Any) -> None:
                self._state = state

            def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
                with me.lock:
                    me.running += 1

            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
                cache = state["cache"]
                seen: dict[int, int] = {}
                for v in list(cache.values()):
                    nbytes(v, seen)
                total = sum(seen.values())
                with me.lock:
                    me.running -= 1
                    me.held_bytes = total
                    me.held_n = len(cache)

            def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
                with me.lock:
                    me.held_bytes = 0
                    me.held_n = 0
                    me.running = 0

        return CB()


def _gdal_cache_used() -> Any:
    """A function returning the bytes in GDAL's block cache (the libgdal rasterio loaded)."""
    import ctypes
    import glob

    import rasterio

    libs = glob.glob(str(Path(rasterio.__file__).parents[1] / "rasterio.libs" / "libgdal*"))
    if not libs:
        return lambda: 0
    f = ctypes.CDLL(libs[0]).GDALGetCacheUsed64
    f.restype = ctypes.c_int64
    return f


class _StageLog(logging.Handler):
    """Follows the stage from the ``changedet`` log; with ``trim``, returns freed heap memory
    to the system at every stage start (glibc ``malloc_trim``) and records how much it freed."""

    def __init__(self, trim: bool = False) -> None:
        super().__init__(logging.INFO)
        self.stage = "start"
        self.trim = trim
        self.trimmed: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.endswith(" ..."):
            self.stage = msg[:-4]
            if self.trim:
                import ctypes

                import psutil

                p = psutil.Process()
                r0 = p.memory_info().rss
                ctypes.CDLL("libc.so.6").malloc_trim(0)
                self.trimmed[self.stage] = round((r0 - p.memory_info().rss) / 2**20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--chunk-px", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    ap.add_argument("--trim", action="store_true", help="malloc_trim at every stage start")
    ap.add_argument("--gdal-cache-mb", type=int, default=None, help="GDAL block cache of the run")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import psutil

    from changedet import pipeline
    from changedet.config import Config
    from changedet.pipeline import run_pair

    if args.gdal_cache_mb is not None:
        pipeline.GDAL_CACHE_BYTES = args.gdal_cache_mb * 2**20

    pair = WORK / f"pair_{args.size}"
    cfg = Config()
    if args.chunk_px:
        cfg = cfg.updated({"io": {"chunk_px": args.chunk_px}})
    az, el = json.loads((pair / "truth" / "scene.json").read_text())["settings"]["sun_after"]
    stage_log = _StageLog(args.trim)
    gdal_used = _gdal_cache_used()
    logging.getLogger("changedet").addHandler(stage_log)
    held = _DaskHeld()
    proc = psutil.Process()
    samples: list[tuple[float, str, int, int, int, int, float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            t = proc.cpu_times()
            samples.append(
                (
                    time.perf_counter(),
                    stage_log.stage,
                    proc.memory_info().rss,
                    held.held_bytes,
                    held.held_n,
                    held.running,
                    t.user + t.system,
                    gdal_used(),
                )
            )
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="memprof-"))
    c0 = time.perf_counter()
    th.start()
    with held.callback():
        run_pair(
            pair / "before.tif",
            pair / "after.tif",
            out=out,
            footprints=pair / "footprints.geojson",
            facilities=pair / "facilities.geojson",
            sun_azimuth_deg=az,
            sun_elevation_deg=el,
            overwrite=True,
            config=cfg,
        )
    stop.set()
    th.join()
    wall = time.perf_counter() - c0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    stages: dict[str, dict[str, Any]] = {}
    for t, st, rss, hb, hn, run, cpu, gc in samples:
        s = stages.setdefault(
            st,
            {
                "peak_mb": 0,
                "held_at_peak_mb": 0,
                "held_n_at_peak": 0,
                "running_at_peak": 0,
                "max_held_mb": 0,
                "gdal_at_peak_mb": 0,
                "cpu0": cpu,
                "cpu1": cpu,
                "t0": t,
                "t1": t,
            },
        )
        s["cpu1"], s["t1"] = cpu, t
        if rss / 2**20 > s["peak_mb"]:
            s.update(
                peak_mb=round(rss / 2**20),
                held_at_peak_mb=round(hb / 2**20),
                held_n_at_peak=hn,
                running_at_peak=run,
                gdal_at_peak_mb=round(gc / 2**20),
            )
        s["max_held_mb"] = max(s["max_held_mb"], round(hb / 2**20))
    print(
        f"size {args.size}², chunk_px {cfg.io.chunk_px}: wall {wall:.1f} s, "
        f"CPU {ru.ru_utime + ru.ru_stime:.1f} s, max RSS {ru.ru_maxrss / 1024:.0f} MB"
    )
    print(
        f"{'stage':<12}{'wall s':>8}{'CPU s':>8}{'peak MB':>9}{'held@pk':>9}{'n@pk':>6}"
        f"{'run@pk':>7}{'max held':>9}{'gdal@pk':>8}{'trimmed':>8}"
    )
    for name, s in stages.items():
        print(
            f"{name:<12}{s['t1'] - s['t0']:>8.1f}{s['cpu1'] - s['cpu0']:>8.1f}{s['peak_mb']:>9}"
            f"{s['held_at_peak_mb']:>9}{s['held_n_at_peak']:>6}{s['running_at_peak']:>7}"
            f"{s['max_held_mb']:>9}{s['gdal_at_peak_mb']:>8}"
            f"{stage_log.trimmed.get(name, ''):>8}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "size": args.size,
                    "chunk_px": cfg.io.chunk_px,
                    "wall_s": wall,
                    "cpu_s": ru.ru_utime + ru.ru_stime,
                    "maxrss_mb": ru.ru_maxrss / 1024,
                    "stages": stages,
                    "trimmed_mb": stage_log.trimmed,
                    "samples": [
                        (round(t - c0, 2), st, rss // 2**20, hb // 2**20, hn, run, gc // 2**20)
                        for t, st, rss, hb, hn, run, _, gc in samples[::5]
                    ],
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
