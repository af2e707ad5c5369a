"""The naive baseline of the whole-pipeline benchmark: what a competent user would write with the
same libraries, without changedet.

Read both rasters whole with rasterio, average the bands to grey, estimate one translation with
``skimage.registration.phase_cross_correlation`` (upsampled to 1/10 px), move the after image
with ``scipy.ndimage.shift`` (the default cubic spline), take the absolute difference and look for
blobs in it with ``skimage.feature.blob_log`` over the crater sizes changedet searches (1.5-25 m
rim-to-rim at the raster's pixel size). The difference raster and the blob list are written, as a
user would keep them. Every array is in memory at full size: that is the point of comparison.

Deliberate choices (each is what the libraries' documentation leads to, not a straw man):

* grey = mean of the bands, ``float64`` (what ``src.read().mean(axis=0)`` gives);
* ``phase_cross_correlation(before, after, upsample_factor=10)``: its result is the shift that
  registers ``after`` onto ``before``, which is what ``ndimage.shift(after, shift)`` takes;
* ``blob_log(diff / 255, min_sigma, max_sigma, num_sigma=10, threshold=0.2)``: a blob of radius
  ``r`` answers best at ``sigma = r / sqrt(2)``, so the sigma range is the crater radius range in
  pixels divided by sqrt(2); ``threshold`` is the library's default. On the benchmark's first
  2048² tile (42 true craters) it gives 666 blobs, 3 of them on a crater; 0.1 gives 14,895 blobs
  (25 on a crater) and takes twice as long, so the default is also the baseline's faster choice;
* outputs: ``diff.tif`` (float32, the before raster's profile with one band) and ``blobs.csv``
  (map x, y, diameter in metres).

Examples
--------
>>> from benchmarks._naive import run_naive  # doctest: +SKIP
>>> info = run_naive("before.tif", "after.tif", "out/naive")  # doctest: +SKIP
>>> info["stages"][0][0], info["n_blobs"] > 0  # doctest: +SKIP
('read', True)
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["run_naive"]

PathLike = str | os.PathLike[str]


def run_naive(
    before: PathLike,
    after: PathLike,
    out_dir: PathLike,
    *,
    min_diameter_m: float = 1.5,
    max_diameter_m: float = 25.0,
    upsample_factor: int = 10,
    num_sigma: int = 10,
    threshold: float = 0.2,
) -> dict[str, Any]:
    """Run the naive baseline on one pair and write ``diff.tif`` and ``blobs.csv`` to ``out_dir``.

    Parameters
    ----------
    before, after
        Rasters on the same grid (same size, CRS and transform), as the benchmark pairs are.
    out_dir
        Folder for the outputs (created).
    min_diameter_m, max_diameter_m
        Crater diameters searched (metres); changedet's defaults.
    upsample_factor, num_sigma, threshold
        Passed to ``phase_cross_correlation`` and ``blob_log``.

    Returns
    -------
    dict
        ``t0`` (epoch seconds at the start), ``stages`` (``[name, seconds]`` in order),
        ``wall_s``, ``shift_px`` (``(dx, dy)`` of the after content relative to before, the
        changedet convention), ``n_blobs``, ``sigma_range_px``.

    Examples
    --------
    >>> run_naive("b.tif", "a.tif", "out")["shift_px"]  # doctest: +SKIP
    (3.4, -2.6)
    """
    import numpy as np
    import rasterio
    from scipy import ndimage
    from skimage.feature import blob_log
    from skimage.registration import phase_cross_correlation

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages: list[list[Any]] = []
    t0 = time.time()
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages.append([name, round(now - clock, 3)])
        clock = now

    with rasterio.open(before) as src:
        b = src.read().mean(axis=0)
        profile = src.profile
        transform = src.transform
    with rasterio.open(after) as src:
        a = src.read().mean(axis=0)
    lap("read")

    shift, _, _ = phase_cross_correlation(b, a, upsample_factor=upsample_factor)
    lap("register")

    a = ndimage.shift(a, shift)
    lap("shift")

    diff = np.abs(b - a)
    del a, b
    lap("difference")

    gsd = abs(transform.a)
    r_min, r_max = min_diameter_m / 2 / gsd, max_diameter_m / 2 / gsd
    sigmas = (r_min / math.sqrt(2), r_max / math.sqrt(2))
    blobs = blob_log(
        diff / 255.0,
        min_sigma=sigmas[0],
        max_sigma=sigmas[1],
        num_sigma=num_sigma,
        threshold=threshold,
    )
    lap("blobs")

    profile.update(count=1, dtype="float32", nodata=None)
    with rasterio.open(out / "diff.tif", "w", **profile) as dst:
        dst.write(diff.astype("float32"), 1)
    with open(out / "blobs.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x", "y", "diameter_m"])
        for row, col, sigma in blobs[:, :3]:
            x, y = transform * (col + 0.5, row + 0.5)
            w.writerow([f"{x:.3f}", f"{y:.3f}", f"{2 * math.sqrt(2) * sigma * gsd:.3f}"])
    lap("write")

    return {
        "t0": t0,
        "stages": stages,
        "wall_s": round(sum(s for _, s in stages), 3),
        # phase_cross_correlation gives the (row, col) shift that registers `after` onto
        # `before`; the after content sits at minus that.
        "shift_px": (round(-float(shift[1]), 4), round(-float(shift[0]), 4)),
        "n_blobs": len(blobs),
        "sigma_range_px": [round(s, 3) for s in sigmas],
    }
