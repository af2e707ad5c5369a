"""Thin wrapper around AROSICS, the co-registration baseline changedet's own co-registration is
compared against.

AROSICS (GFZ Potsdam, https://pypi.org/project/arosics/, Scheffler et al. 2017, Remote Sensing
9(7):676) estimates the misregistration of a target image against a reference image by phase
correlation (cross-power spectrum of two matching windows, integer peak + sub-pixel fit, iterated),
either once for the whole image (``COREG``, "global") or on a grid of tie points (``COREG_LOCAL``,
"local"), whose outliers it filters by reliability, SSIM and RANSAC.

AROSICS is NOT a changedet dependency. It lives in the separate ``.venv-bench`` made by
``benchmarks/setup_arosics_env.sh`` (it needs GDAL's Python bindings). This module imports without
it: then ``available()`` returns ``(False, reason)`` and the ``run_*`` functions raise
``RuntimeError`` with that reason.

Sign convention (ours, used by every number this module returns)
-----------------------------------------------------------------
``dx_px, dy_px`` is the displacement of the AFTER image's content relative to BEFORE, in pixels of
the before grid (x = column to the right, y = row downward): a feature at before pixel ``(c, r)``
appears in the after image at ``(c + dx, r + dy)``.

AROSICS reports ``COREG.x_shift_px / y_shift_px`` as the *correction* it applies to the target
(after) image: the target's map origin is moved by ``(x_shift_px, y_shift_px)`` target pixels
(image axes, y downward). That is the opposite of the content displacement, so

    dx_px = -x_shift_px,    dy_px = -y_shift_px

(verified empirically: RGB.byte.tif shifted with ``scipy.ndimage.shift(band, (dy, dx), order=3)``,
same geotransform, gives ``x_shift_px ~ -dx`` and ``y_shift_px ~ -dy``; see
``_selfcheck_sign()``). Both inputs must share the pixel size (true for every benchmark pair);
AROSICS's pixel units are the target's.

Nothing is written to disk: ``path_out=None`` (no corrected image), no ``projectDir``, no verbose
output directory.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from typing import Any

__all__ = ["arosics_version", "available", "run_global", "run_local"]

try:  # pragma: no cover - depends on the environment
    from arosics import COREG, COREG_LOCAL  # type: ignore[import-not-found]
    from arosics import __version__ as _AROSICS_VERSION  # type: ignore[import-not-found]

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken GDAL/numpy ABI raising something else
    COREG = COREG_LOCAL = None  # type: ignore[assignment,misc]
    _AROSICS_VERSION = None
    _IMPORT_ERROR = (
        f"arosics not importable ({type(exc).__name__}: {exc}); "
        "create the benchmark env with `make bench-env` (bash benchmarks/setup_arosics_env.sh) "
        "and run with .venv-bench/bin/python"
    )


def available() -> tuple[bool, str]:
    """Return ``(True, "arosics X.Y.Z (GDAL A.B.C)")`` or ``(False, reason)``."""
    if _IMPORT_ERROR is not None:
        return False, _IMPORT_ERROR
    try:
        from osgeo import gdal  # type: ignore[import-not-found]

        gdal_v = gdal.__version__
    except Exception:  # pragma: no cover
        gdal_v = "?"
    return True, f"arosics {_AROSICS_VERSION} (GDAL {gdal_v})"


def arosics_version() -> str | None:
    return _AROSICS_VERSION


def _require() -> None:
    ok, why = available()
    if not ok:
        raise RuntimeError(why)


def _cpus(cpus: int | None) -> int:
    return int(cpus) if cpus else (os.cpu_count() or 1)


@contextlib.contextmanager
def _quiet():
    """Silence AROSICS: q=True still prints a line or two (e.g. 'Calculating tie point grid ...')
    and raises UserWarnings (small window, footprint computation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def run_global(
    before_path: str | os.PathLike,
    after_path: str | os.PathLike,
    *,
    window_px: int = 256,
    max_shift_px: int = 20,
    band: int = 1,
    max_iter: int = 5,
    nodata: tuple[float | None, float | None] = (None, None),
    cpus: int | None = None,
) -> dict:
    """One global shift of ``after`` against ``before`` with ``arosics.COREG``.

    AROSICS parameters as set here:

    - ``im_ref=before``, ``im_tgt=after``: reference and target ("image to be shifted").
    - ``ws=(window_px, window_px)``: matching window size in pixels. AROSICS places ONE window, by
      default at the centre of the two images' overlap (``wp``), and correlates only inside it; with
      ``binary_ws=True`` (default) the size is rounded to a power of two, and it shrinks the window
      where it would leave the overlap / valid data.
    - ``max_shift=max_shift_px``: largest plausible shift in reference pixels; a larger estimate
      is rejected as a failure (AROSICS's default is 5; ours 20).
    - ``max_iter``: how many times it re-centres the windows on the integer shift found and
      re-correlates until the integer part is 0/0 ("valid"); otherwise "No match found".
    - ``r_b4match = s_b4match = band``: 1-based band used for matching in each image.
    - ``nodata``: (ref, tgt) no-data values; ``None`` lets AROSICS take the file's value or guess
      one from the image corners.
    - ``CPUs``: cores for the pixel-grid equalization (warping); default all cores.
    - ``q=True, progress=False``: quiet, no progress bars. ``path_out=None``: nothing written.
    - ``resamp_alg_calc='cubic'`` (default): resampling used while equalizing grids.

    Returns a dict:
      ``dx_px, dy_px``: after-content displacement relative to before (module docstring), or
      None on failure; ``x_shift_px_arosics, y_shift_px_arosics``: AROSICS's raw correction;
      ``reliability``: AROSICS's peak-vs-background confidence in percent (0-100; None when it
      found exactly 0/0); ``ssim_before, ssim_after``: SSIM in the matching window before/after
      applying the shift; ``window_px``: window actually used (cols, rows); ``seconds``: wall time
      of the fit (COREG init, which reads the images and computes footprints, plus
      ``calculate_spatial_shifts``); ``seconds_init``, ``seconds_match``: the two parts;
      ``ok``: AROSICS reported success; ``error``: its last error message, if any.
    """
    _require()
    t0 = time.perf_counter()
    with _quiet():
        cr = COREG(
            str(before_path),
            str(after_path),
            path_out=None,
            r_b4match=band,
            s_b4match=band,
            ws=(window_px, window_px),
            max_shift=max_shift_px,
            max_iter=max_iter,
            nodata=nodata,
            CPUs=_cpus(cpus),
            progress=False,
            q=True,
            ignore_errors=True,
        )
        t1 = time.perf_counter()
        cr.calculate_spatial_shifts()
    t2 = time.perf_counter()

    ok = bool(cr.success) and cr.x_shift_px is not None
    xs, ys = _f(cr.x_shift_px), _f(cr.y_shift_px)
    err = getattr(cr, "tracked_errors", None) or []
    win = None
    if getattr(cr, "matchBox", None) is not None:
        rows, cols = cr.matchBox.imDimsYX
        win = (int(cols), int(rows))
    return {
        "dx_px": -xs if ok and xs is not None else None,
        "dy_px": -ys if ok and ys is not None else None,
        "x_shift_px_arosics": xs,
        "y_shift_px_arosics": ys,
        "reliability": _f(cr.shift_reliability),
        "ssim_before": _f(getattr(cr, "ssim_orig", None)),
        "ssim_after": _f(getattr(cr, "ssim_deshifted", None)),
        "window_px": win,
        "seconds": t2 - t0,
        "seconds_init": t1 - t0,
        "seconds_match": t2 - t1,
        "ok": ok,
        "error": str(err[-1]) if err else None,
    }


def run_local(
    before_path: str | os.PathLike,
    after_path: str | os.PathLike,
    *,
    grid_res_px: int = 64,
    window_px: int = 256,
    max_shift_px: int = 20,
    band: int = 1,
    max_iter: int = 5,
    tie_point_filter_level: int = 3,
    min_reliability: float = 60,
    nodata: tuple[float | None, float | None] = (None, None),
    cpus: int | None = None,
    as_dataframe: bool = False,
) -> dict:
    """A field of local shifts of ``after`` against ``before`` with ``arosics.COREG_LOCAL``.

    AROSICS puts tie points on a regular grid every ``grid_res`` TARGET pixels (starting at the
    target's pixel 0, 0), drops those outside the overlap / on no-data, and runs a ``COREG``
    (window ``window_size``, ``max_shift``, ``max_iter`` as in :func:`run_global`) centred on each,
    in parallel over ``CPUs`` processes. Then it filters the tie points
    (``tieP_filter_level``, cumulative): 1 = reliability below ``min_reliability`` percent;
    2 = shift does not raise SSIM in the window; 3 = RANSAC outliers of an affine fit
    (``rs_max_outlier`` 10 %, ``rs_tolerance`` 2.5 %, fixed random state). Points that survive are
    ``kept``. ``q=True, progress=False``; ``path_out=None`` and no ``projectDir``, so it only
    computes the tie-point table (it would otherwise warp the target with the GCPs).

    Returns a dict:
      ``points``: list of dicts (a pandas DataFrame when ``as_dataframe``) with
        ``col, row``: the tie point on the BEFORE grid, in continuous pixel coordinates of the
          pixel's upper-left corner convention (col = (x_map - x0) / xres), so (0, 0) is the
          before image's top-left corner;
        ``dx_px, dy_px``: after-content displacement (our convention; None where no match);
        ``reliability`` (percent; None where no match), ``ssim_before``, ``ssim_after``,
        ``kept`` (matched and not flagged by any filter), ``error`` (AROSICS's message where no
        match);
      ``n_points``: tie points attempted (inside the overlap); ``n_matched``: with a shift;
      ``n_kept``; ``median_dx_px, median_dy_px`` and ``std_dx_px, std_dy_px`` over kept points;
      ``seconds``: wall time of the fit (init + tie-point grid + filtering);
      ``ok``: at least one kept point.
    """
    _require()
    import numpy as np  # only needed here; both venvs have it

    cpus_ = _cpus(cpus)
    t0 = time.perf_counter()
    with _quiet():
        crl = COREG_LOCAL(
            str(before_path),
            str(after_path),
            grid_res=grid_res_px,
            window_size=(window_px, window_px),
            path_out=None,
            projectDir=None,
            r_b4match=band,
            s_b4match=band,
            max_iter=max_iter,
            max_shift=max_shift_px,
            tieP_filter_level=tie_point_filter_level,
            min_reliability=min_reliability,
            nodata=nodata,
            CPUs=cpus_,
            progress=False,
            q=True,
        )
        tbl = crl.CoRegPoints_table  # runs the tie-point grid + filtering
    seconds = time.perf_counter() - t0

    fill = crl.outFillVal
    ref_gt = crl.COREG_obj.ref.gt
    points: list[dict] = []
    for rec in tbl.to_dict("records"):
        xs, ys = rec.get("X_SHIFT_PX"), rec.get("Y_SHIFT_PX")
        matched = xs is not None and xs != fill and ys != fill and rec.get("ABS_SHIFT") != fill
        outlier = rec.get("OUTLIER", False)
        outlier = bool(outlier) and outlier != fill
        rel = rec.get("RELIABILITY")
        err = rec.get("LAST_ERR")
        points.append(
            {
                "col": (float(rec["X_MAP"]) - ref_gt[0]) / ref_gt[1],
                "row": (float(rec["Y_MAP"]) - ref_gt[3]) / ref_gt[5],
                "dx_px": -float(xs) if matched else None,
                "dy_px": -float(ys) if matched else None,
                "reliability": float(rel) if matched and rel is not None and rel != fill else None,
                "ssim_before": _none_if_fill(rec.get("SSIM_BEFORE"), fill),
                "ssim_after": _none_if_fill(rec.get("SSIM_AFTER"), fill),
                "kept": bool(matched and not outlier),
                "error": None if err is None or err == fill else str(err),
            }
        )
    kept = [p for p in points if p["kept"]]
    dx = np.array([p["dx_px"] for p in kept], dtype=float)
    dy = np.array([p["dy_px"] for p in kept], dtype=float)

    def _stat(fn, a):
        return float(fn(a)) if a.size else None

    out_points: Any = points
    if as_dataframe:
        import pandas as pd

        out_points = pd.DataFrame(points)
    return {
        "points": out_points,
        "n_points": len(points),
        "n_matched": sum(p["dx_px"] is not None for p in points),
        "n_kept": len(kept),
        "median_dx_px": _stat(np.median, dx),
        "median_dy_px": _stat(np.median, dy),
        "std_dx_px": _stat(np.std, dx),
        "std_dy_px": _stat(np.std, dy),
        "seconds": seconds,
        "ok": len(kept) > 0,
    }


def _none_if_fill(v: Any, fill: float) -> float | None:
    if v is None or v == fill:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _selfcheck_sign(src: str, dx: float = 3.3, dy: float = -1.7) -> dict:  # pragma: no cover
    """Write ``src`` band 1 and a copy whose content is moved by (+dx, +dy) pixels (same
    geotransform) to a temp dir, run :func:`run_global` and return the result; its ``dx_px,
    dy_px`` should come out near ``(dx, dy)``. Needs rasterio and scipy."""
    import tempfile

    import numpy as np
    import rasterio
    from scipy import ndimage

    with rasterio.open(src) as ds:
        a = ds.read(1).astype(np.float32)
        prof = ds.profile
    prof.update(count=1, dtype="float32", nodata=None, driver="GTiff")
    # ndimage.shift moves content by +shift: out[r + dy, c + dx] = in[r, c]
    b = ndimage.shift(a, (dy, dx), order=3, mode="constant", cval=0.0)
    with tempfile.TemporaryDirectory(prefix="arosics_sign_") as tmp:
        p0, p1 = os.path.join(tmp, "before.tif"), os.path.join(tmp, "after.tif")
        for p, arr in ((p0, a), (p1, b)):
            with rasterio.open(p, "w", **prof) as dst:
                dst.write(arr, 1)
        return run_global(p0, p1)


if __name__ == "__main__":  # pragma: no cover
    import sys

    ok, why = available()
    print(why)
    if ok and len(sys.argv) > 1:
        print(_selfcheck_sign(sys.argv[1]))
