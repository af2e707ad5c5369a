"""Batch throughput: pairs per minute with 1 and 2 worker processes, and chunk-parallel speed-up.

Inputs are synthetic and generated once into ``benchmarks/_work/`` (git-ignored):

* ``--pairs`` small pairs (``--size`` px, default 4 × 512²) for pair-parallel throughput;
* one big pair (``--big-size`` px, default 2048²) run with ``io.chunk_px = --big-chunk``
  (default 512, so 16 chunks) and ``chunk_parallel_min_chunks = 1``, with 1 and 2 workers:
  the chunk-parallel speed-up. The script checks that the pair ran in chunk mode and that both
  runs wrote the same bytes.

Every run goes into a fresh output folder (no pair is skipped as already done); times are wall
clock including the local cluster's start, plus the CPU time (user + sys) of the driver and its
cluster's processes. The script prints the load average before and after: the development
machine is shared, so compare numbers from one run only.

Usage::

    .venv/bin/python benchmarks/bench_batch.py                # all
    .venv/bin/python benchmarks/bench_batch.py --quick        # 2 × 384² pairs, 1024² big pair
    .venv/bin/python benchmarks/bench_batch.py --big-size 8192 --big-chunk 2048  # issue 6 size
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
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


def _cpu_seconds() -> float:
    """User + sys CPU time of this process and of its finished children (the cluster's)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a pair's folder but the ones that record wall-clock times."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "run.log")
    }


def _timed_batch(tiles: Path, workers: int, **kwargs: object) -> tuple[float, float, dict, dict]:
    """Wall seconds, CPU seconds, the batch record and the digests of every pair's files."""
    from changedet.batch import run_batch

    with tempfile.TemporaryDirectory(prefix="bench-batch-", dir=WORK) as tmp:
        out = Path(tmp) / "out"
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        record = run_batch(tiles, out, workers=workers, progress=False, **kwargs)
        secs, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        digests = {k: _digests(out / k) for k in record["pairs"] if (out / k).is_dir()}
        return secs, cpu, record, digests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--big-size", type=int, default=2048)
    ap.add_argument("--big-chunk", type=int, default=512)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-pairs", action="store_true")
    ap.add_argument("--quick", action="store_true", help="2 × 384² pairs, a 1024² big pair")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.size, args.big_size, args.big_chunk = 2, 384, 1024, 256
    from changedet.config import Config

    WORK.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}, cores: {len(os.sched_getaffinity(0))}")
    results: dict[str, float] = {}
    if not args.skip_pairs:
        tiles = _make_tiles(args.pairs, args.size)
        for workers in (1, 2):
            secs, cpu, record, _ = _timed_batch(tiles, workers)
            failed = record["failed"]
            rate = args.pairs / (secs / 60)
            results[f"pairs_per_min_{workers}"] = rate
            print(
                f"pair-parallel, {workers} worker(s): {args.pairs} × {args.size}² in {secs:.1f} s "
                f"= {rate:.2f} pairs/min, CPU {cpu:.0f} s ({failed} failed); "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    if not args.skip_big:
        big = _make_big(args.big_size)
        cfg = Config().updated_dotted({"io.chunk_px": args.big_chunk})
        n_chunks = math.ceil(args.big_size / args.big_chunk) ** 2
        times, files = {}, {}
        for workers in (1, 2):
            secs, cpu, record, digests = _timed_batch(
                big, workers, config=cfg, chunk_parallel_min_chunks=1
            )
            pair = record["pairs"]["scene"]
            mode = "chunks" if pair.get("mode") == "chunks" else "one task (fallback)"
            times[workers], files[workers] = secs, digests.get("scene")
            results[f"big_seconds_{workers}"] = secs
            print(
                f"big pair {args.big_size}², {n_chunks} chunks of {args.big_chunk}², "
                f"{workers} worker(s): {secs:.1f} s, CPU {cpu:.0f} s, status {pair['status']}, "
                f"ran as {mode}; load {os.getloadavg()[0]:.1f}"
                + (f" (error: {pair.get('error')})" if pair["status"] == "failed" else "")
                + (
                    f"; chunk-parallel error: {pair['chunk_parallel_error']}"
                    if pair.get("chunk_parallel_error")
                    else ""
                ),
                flush=True,
            )
        results["chunk_speedup"] = times[1] / times[2]
        same = files[1] is not None and files[1] == files[2]
        print(
            f"chunk-parallel speed-up 1 → 2 workers: {times[1] / times[2]:.2f}×; "
            f"outputs of the two runs byte-identical: {same}"
        )
    print(f"load average after: {os.getloadavg()}")
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    shutil.rmtree(WORK / "tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
