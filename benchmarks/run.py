"""Run the benchmarks (``make bench``): each script prints its figures and baseline side by side.

The scripts, in order (each skips what it cannot run, with the reason):

* ``bench_coregister.py`` — co-registration accuracy (synthetic, Landsat known shifts, the
  Sentinel-2 pair) and speed at 8192², against AROSICS when ``make bench-env`` was run;
* ``eval_craters.py --split report`` — crater detection on the held-out synthetic seeds;
  then under other suns: ``--split suns`` (each scene its own sun), ``--split dated --sun
  estimate-dated`` (the sun of a date: azimuth from tree shadows, elevation bounded by the
  date), ``--split suns --sun buildings`` (one-band imagery: azimuth from building shadows)
  and ``--split dense`` (crater fields: 300 craters per km², their debris strewn around);
* ``eval_damage.py --split report`` — building damage on the held-out synthetic seeds;
* ``bench_pipeline.py`` — the whole pipeline on 2048² to 16384² pairs (32768² with ``--large``)
  against a naive baseline and AROSICS, time and peak memory per size, in fresh subprocesses.

Results are recorded by hand in ``benchmarks/RESULTS.md`` with the machine and date, except the
generated block of its ``## Whole pipeline`` section, which ``bench_pipeline.py`` rewrites
(not on ``--quick`` runs).

Usage::

    python benchmarks/run.py            # all
    python benchmarks/run.py --quick    # smaller cases, for a smoke run
    python benchmarks/run.py --large    # the whole-pipeline benchmark also at 32768²
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller cases (a smoke run)")
    ap.add_argument("--large", action="store_true", help="whole pipeline also at 32768²")
    args = ap.parse_args()
    runs = [
        ["bench_coregister.py", *(["--quick"] if args.quick else [])],
        ["eval_craters.py", "--split", "report", *(["--n", "3"] if args.quick else [])],
        # under other suns: each scene its own; the sun of a date, its elevation from the
        # date and the tree azimuth; one-band imagery, the azimuth from building shadows
        [
            "eval_craters.py",
            "--split",
            "suns",
            "--paired-only",
            *(["--n", "3"] if args.quick else []),
        ],
        [
            "eval_craters.py",
            *("--split dated --paired-only --sun estimate-dated".split()),
            *(["--n", "3"] if args.quick else []),
        ],
        [
            "eval_craters.py",
            *("--split suns --paired-only --sun buildings".split()),
            *(["--n", "3"] if args.quick else []),
        ],
        # a crater field: bowls amid other craters' debris
        [
            "eval_craters.py",
            "--split",
            "dense",
            "--paired-only",
            *(["--n", "3"] if args.quick else []),
        ],
        ["eval_damage.py", "--split", "report", *(["--n", "3"] if args.quick else [])],
        [
            "bench_pipeline.py",
            *(["--quick"] if args.quick else ["--write-results"]),
            *(["--large"] if args.large else []),
        ],
    ]
    failed = []
    for script, *rest in runs:
        path = HERE / script
        if not path.is_file():
            print(f"== {script}: not present, skipped")
            continue
        print(f"== {script} {' '.join(rest)}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(path), *rest], cwd=HERE.parent)
        print(f"== {script}: exit {code} after {time.perf_counter() - t0:.0f} s", flush=True)
        if code:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
