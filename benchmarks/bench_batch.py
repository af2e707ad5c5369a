"""Batch throughput: pairs per minute with 1 and 2 worker processes, and chunk-parallel speed-up.

Inputs are synthetic and generated once into ``benchmarks/_work/`` (git-ignored):

* ``--pairs`` small pairs (``--size`` px, default 4 × 512²) for pair-parallel throughput;
* one big pair (``--big-size`` px, default 4096²) run with ``io.chunk_px = --big-chunk``
  (default 1024, so 16 chunks) and ``chunk_parallel_min_chunks = 1``, with 1 and 2 workers.

Every run goes into a fresh output folder (no pair is skipped as already done); times are wall
clock including the local cluster's start. The script prints the load average before and after:
the development machine is shared, so compare numbers from one run only.

Usage::

    .venv/bin/python benchmarks/bench_batch.py                # all
    .venv/bin/python benchmarks/bench_batch.py --quick        # 2 × 384² pairs, 2048² big pair
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "batch"


def _make_tiles(n: int, size: int) -> Path:
    from changedet.synthetic import SceneSettings, generate_site

    root = WORK / f"tiles_{n}x{size}"
    for i in range(n):
        site = root / f"site_{i:02d}"
        if not (site / "truth" / "scene.json").is_file():
            generate_site(site, SceneSettings(size_px=size, seed=700 + i))
    return root


def _make_big(size: int) -> Path:
    from changedet.synthetic import SceneSettings, generate_site

    root = WORK / f"big_{size}"
    if not (root / "scene" / "truth" / "scene.json").is_file():
        t0 = time.perf_counter()
        generate_site(root / "scene", SceneSettings(size_px=size, seed=777))
        print(f"generated the {size}² pair in {time.perf_counter() - t0:.0f} s", flush=True)
    return root


def _timed_batch(tiles: Path, workers: int, **kwargs: object) -> tuple[float, dict]:
    from changedet.batch import run_batch

    with tempfile.TemporaryDirectory(prefix="bench-batch-", dir=WORK) as tmp:
        t0 = time.perf_counter()
        record = run_batch(tiles, Path(tmp) / "out", workers=workers, progress=False, **kwargs)
        return time.perf_counter() - t0, record


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--big-size", type=int, default=4096)
    ap.add_argument("--big-chunk", type=int, default=1024)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--quick", action="store_true", help="2 × 384² pairs, a 2048² big pair")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.size, args.big_size = 2, 384, 2048
    from changedet.config import Config

    WORK.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}, cores: {len(os.sched_getaffinity(0))}")
    tiles = _make_tiles(args.pairs, args.size)
    results = {}
    for workers in (1, 2):
        secs, record = _timed_batch(tiles, workers)
        failed = record["failed"]
        rate = args.pairs / (secs / 60)
        results[f"pairs_{workers}"] = rate
        print(
            f"pair-parallel, {workers} worker(s): {args.pairs} × {args.size}² in {secs:.1f} s "
            f"= {rate:.2f} pairs/min ({failed} failed)",
            flush=True,
        )
    if not args.skip_big:
        big = _make_big(args.big_size)
        cfg = Config().updated_dotted({"io.chunk_px": args.big_chunk})
        times = {}
        for workers in (1, 2):
            secs, record = _timed_batch(big, workers, config=cfg, chunk_parallel_min_chunks=1)
            pair = record["pairs"]["scene"]
            mode = "chunks" if pair.get("mode") == "chunks" else "one task (fallback)"
            times[workers] = secs
            print(
                f"big pair {args.big_size}², {args.big_chunk}² chunks, {workers} worker(s): "
                f"{secs:.1f} s, status {pair['status']}, ran as {mode}"
                + (f" (error: {pair.get('error')})" if pair["status"] == "failed" else "")
                + (
                    f"; chunk-parallel error: {pair['chunk_parallel_error']}"
                    if pair.get("chunk_parallel_error")
                    else ""
                ),
                flush=True,
            )
        print(f"chunk-parallel speed-up 1 → 2 workers: {times[1] / times[2]:.2f}×")
    print(f"load average after: {os.getloadavg()}")
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    shutil.rmtree(WORK / "tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
