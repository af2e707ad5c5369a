"""Sub-pixel co-registration of an after image onto a before image on the same grid.

Two stage objects with ``fit`` / ``apply`` / ``fit_and_apply`` (as in xdem):

- :class:`GlobalShift` — one translation, measured on a sample of windows;
- :class:`LocalGrid` — a tie-point grid over the whole scene, with a translation, an affine or a
  smooth shift field fitted robustly (peak-reliability threshold, RANSAC, MAD).

Each window pair is compared by phase correlation of gradient magnitude (robust to gain/offset,
seasonal and contrast changes) for the integer peak and its reliability, then refined to sub-pixel
precision by re-measuring after resampling the after window at the current estimate (which removes
the taper bias). The re-measurements correlate the doubled-angle gradient orientation (every edge
counts the same, whatever its contrast) with both windows weighted by one smooth mask that
excludes the shadows of either date, so shadows that moved with the sun do not bias the fit (see
``_coreg_phase``). Windows are read lazily from the Dask arrays in batches (windows along a row in
one slice, all slices of a batch in one ``dask.compute``: a Dask slice costs milliseconds of graph
work), batches run in threads on all cores (a batch is split when there are fewer batches than
cores, as for the global estimate's 25 windows), so memory is bounded by the batch, not the
scene, and there is no cap on the number of tie points.

Sizes: ``window_m``, ``step_m``, ``max_shift_m`` (metres, converted with the before raster's GSD
and clamped to sensible pixel ranges) when the config has them; explicit ``window_px``,
``step_px``, ``max_shift_px`` win.

Conventions
-----------
- Pixel ``(col, row)`` indices refer to pixel centres of the before grid.
- A displacement ``(dx, dy)`` at ``(c, r)`` means the feature at before pixel ``(c, r)`` lies at
  ``(c + dx, r + dy)`` in the after image (same convention as ``truth/misregistration.json``).
- Bands: windows are compared on the mean of all bands (luminance); ``align`` makes the band counts
  agree first. A pixel that is NaN (nodata) in any band is nodata.

Known limitation
----------------
Content that moves between dates biases every window the same way, and the quality gate cannot
see it. Cast shadows are handled (synthetic generator with the sun change (135°, 58°) →
(160°, 42°): 0.021 px mean error, against 0.157 px with gradient magnitude alone), but
sun-dependent shading the luminance mask does not catch (shadows only ~30 % darker, crown
shading) leaves a bias of ~0.02 px along the shadows' change (``benchmarks/RESULTS.md``).

Examples
--------
>>> from changedet.testing import make_pair
>>> before, after, truth = make_pair((1, 384, 384), shift_px=(2.3, -1.6), seed=0)
>>> coreg = GlobalShift().fit(before, after)
>>> [round(v, 1) for v in coreg.result.shift_px]
[2.3, -1.6]
>>> corrected = coreg.apply(after)
"""

from __future__ import annotations

import logging
import math
import os
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from changedet._coreg_fit import DisplacementModel, ModelKind, fit_model
from changedet._coreg_phase import BLOCK, SUB_MARGIN, fill_nan, measure_windows
from changedet._coreg_warp import warp_array
from changedet.config import CoregisterConfig
from changedet.errors import CoregistrationError, NoOverlapError
from changedet.io import window_reader

__all__ = ["CoregResult", "GlobalShift", "LocalGrid", "coregister"]

log = logging.getLogger(__name__)

MIN_SPAN = 0.25  # quality gate: kept tie points must span this share of rows and columns

_REASONS = {0: "", 1: "ransac", 2: "mad", 3: "low_reliability", 4: "nodata", 5: "out_of_range"}


@dataclass
class CoregResult:
    """A fitted co-registration and its quality.

    Attributes
    ----------
    method
        ``"global"`` or ``"local"``.
    model
        The displacement model (:class:`~changedet._coreg_fit.DisplacementModel`); use
        :meth:`displacement_at`.
    shift_px
        Displacement ``(dx, dy)`` at the scene centre, pixels.
    shift_m
        The same along the CRS axes (east, north), in CRS units (metres for projected CRSs).
    rmse_px, rmse_m
        Root-mean-square residual of the kept tie points about the model (a precision estimate).
    n_tie_points, n_kept
        Windows measured, and those kept after reliability, nodata and outlier checks.
    tie_points
        One row per window: ``col, row, x, y, dx, dy, peak, reliability, valid_fraction, kept,
        reason, residual_px`` (``x, y`` in the scene CRS; ``reason`` empty when kept).
    passed, reasons
        The quality gate's verdict and, when it failed, why.
    shape, transform, crs
        The before grid.
    seconds
        Time taken by ``fit``.
    """

    method: str
    model: DisplacementModel
    shift_px: tuple[float, float]
    shift_m: tuple[float, float]
    rmse_px: float
    rmse_m: float
    n_tie_points: int
    n_kept: int
    tie_points: pd.DataFrame
    passed: bool
    reasons: list[str]
    shape: tuple[int, int]
    transform: Any = None
    crs: Any = None
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def displacement_at(self, cols: Any, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        """Displacement ``(dx, dy)`` in pixels at before pixel centres ``(cols, rows)``.

        Examples
        --------
        >>> from changedet.testing import make_pair
        >>> b, a, _ = make_pair((1, 300, 300), shift_px=(1.0, 2.0), seed=0)
        >>> res = GlobalShift().fit(b, a).result
        >>> [round(float(v), 1) for v in res.displacement_at(10, 20)]
        [1.0, 2.0]
        """
        return self.model.displacement_at(np.asarray(cols, float), np.asarray(rows, float))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for ``manifest.json``); tie points are summarised, not listed."""
        return {
            "method": self.method,
            "model": self.model.to_dict(),
            "shift_px": [round(v, 6) for v in self.shift_px],
            "shift_m": [round(v, 6) for v in self.shift_m],
            "rmse_px": round(self.rmse_px, 6),
            "rmse_m": round(self.rmse_m, 6),
            "n_tie_points": self.n_tie_points,
            "n_kept": self.n_kept,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "seconds": round(self.seconds, 3),
            "config": self.config,
        }

    def tie_points_gdf(self) -> Any:
        """Tie points as a GeoDataFrame (points at window centres, scene CRS)."""
        import geopandas as gpd

        tp = self.tie_points
        return gpd.GeoDataFrame(tp, geometry=gpd.points_from_xy(tp["x"], tp["y"]), crs=self.crs)

    def plot(
        self, image: xr.DataArray | None = None, *, ax: Any = None, scale: float | None = None
    ) -> Any:
        """Draw tie-point vectors (kept: green, rejected: red) over ``image``; return the Figure.

        ``image`` (e.g. the before raster) is shown decimated to at most ~1000 px (read lazily).
        Arrows are exaggerated by ``scale`` (default: so the median arrow is ~3% of the scene).
        """
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(8, 8 * self.shape[0] / max(self.shape[1], 1)))
        else:
            fig = ax.figure
        ny, nx = self.shape
        if image is not None:
            step = max(1, math.ceil(max(ny, nx) / 1000))
            small = np.asarray(image.data[:, ::step, ::step].mean(axis=0))
            lo, hi = np.nanpercentile(small, [2, 98]) if np.isfinite(small).any() else (0, 1)
            ax.imshow(small, cmap="gray", vmin=lo, vmax=hi, extent=(-0.5, nx - 0.5, ny - 0.5, -0.5))
        tp = self.tie_points
        mags = np.hypot(tp["dx"], tp["dy"]).to_numpy()
        if scale is None:
            med = float(np.median(mags)) if mags.size and np.median(mags) > 0 else 1.0
            scale = 0.03 * max(ny, nx) / med
        kept_sel = tp[tp["kept"]]
        if len(kept_sel):
            ax.quiver(
                kept_sel["col"],
                kept_sel["row"],
                kept_sel["dx"] * scale,
                kept_sel["dy"] * scale,
                color="lime",
                angles="xy",
                scale_units="xy",
                scale=1,
                width=0.003,
                label=f"kept ({len(kept_sel)})",
            )
        rej = tp[~tp["kept"]]
        if len(rej):
            # rejected vectors are often wild: mark the place, draw them at most 2x the median
            cap = 2 * float(np.median(mags)) if mags.size else 1.0
            m = np.maximum(np.hypot(rej["dx"], rej["dy"]).to_numpy(), 1e-9)
            f = np.minimum(1.0, cap / m) * scale
            ax.quiver(
                rej["col"],
                rej["row"],
                rej["dx"] * f,
                rej["dy"] * f,
                color="red",
                angles="xy",
                scale_units="xy",
                scale=1,
                width=0.002,
            )
            ax.plot(
                rej["col"],
                rej["row"],
                "x",
                color="red",
                ms=4,
                label=f"rejected ({len(rej)}; length capped)",
            )
        ax.set_xlim(-0.5, nx - 0.5)
        ax.set_ylim(ny - 0.5, -0.5)
        status = "passed" if self.passed else "FAILED: " + "; ".join(self.reasons)
        ax.set_title(
            f"{self.method} / {self.model.kind}: shift ({self.shift_px[0]:+.3f}, "
            f"{self.shift_px[1]:+.3f}) px, RMSE {self.rmse_px:.3f} px, "
            f"{self.n_kept}/{self.n_tie_points} kept\nvectors x{scale:.0f}; gate {status}",
            fontsize=9,
        )
        ax.legend(loc="lower right", fontsize=8)
        return fig


# ---------------------------------------------------------------------------- windows


# windows read together: a run of windows along one row, gaps up to one window, at most this
# many window widths long (bounds the memory of one read)
_RUN_WINDOWS = 16


def _read_windows(*requests: tuple[Any, np.ndarray, int]) -> list[np.ndarray]:
    """Luminance (mean over bands) of square windows; NaN outside the raster.

    Each request is ``(data, corners, size)``: a ``(band, y, x)`` numpy or Dask array, the
    windows' top-left ``(row, col)`` and their side. Windows that follow each other along a row
    (gaps of at most one window) are read as one region, and all regions of all requests in one
    ``dask.compute``: a Dask slice costs milliseconds of graph work whatever its size, far more
    than cutting the windows out of the computed regions.

    Examples
    --------
    >>> data = np.arange(2 * 4 * 6, dtype="float32").reshape(2, 4, 6)
    >>> (lum,) = _read_windows((data, np.array([[0, 0], [2, 4]]), 3))
    >>> lum.shape, float(lum[0, 0, 0]), bool(np.isnan(lum[1, 2, 2]))
    ((2, 3, 3), 12.0, True)
    """
    regions: list[Any] = []
    plans = []
    for data, corners, size in requests:
        _nb, ny, nx = data.shape
        runs: list[tuple[int, int, int, list[int]]] = []  # (row, first col, end col, members)
        for k, (r0, c0) in enumerate(np.asarray(corners, int).tolist()):
            if r0 + size <= 0 or r0 >= ny or c0 + size <= 0 or c0 >= nx:
                continue  # nothing inside the raster: all NaN
            if runs:
                row, first, end, members = runs[-1]
                if (
                    row == r0
                    and end <= c0 + size
                    and c0 - end <= size
                    and c0 + size - first <= _RUN_WINDOWS * size
                ):
                    runs[-1] = (row, first, c0 + size, [*members, k])
                    continue
            runs.append((r0, c0, c0 + size, [k]))
        # a file opened by open_raster is read window by window from the file: slicing its
        # Dask array would decode every whole chunk a window touches
        read = window_reader(data)
        for row, first, end, _members in runs:
            box = (max(row, 0), min(row + size, ny), max(first, 0), min(end, nx))
            if read is not None:
                regions.append(read(*box))
            else:
                regions.append(data[:, box[0] : box[1], box[2] : box[3]])
        plans.append((len(corners), size, runs))
    if any(not isinstance(r, np.ndarray) for r in regions):
        import dask

        regions = list(dask.compute(*regions))
    outs = []
    it = iter(regions)
    for (data, corners, _), (n, size, runs) in zip(requests, plans, strict=True):
        _nb, ny, nx = data.shape
        out = np.full((n, size, size), np.nan, np.float32)
        for row, first, _end, members in runs:
            region = np.asarray(next(it))
            if region.shape[0] == 1:
                lum = region[0].astype(np.float32, copy=False)
            else:
                lum = region.sum(axis=0, dtype=np.float32)
                lum /= np.float32(region.shape[0])
            r_in = max(row, 0)
            c_in = max(first, 0)
            for k in members:
                r0, c0 = int(corners[k][0]), int(corners[k][1])
                rr0, cc0 = max(r0, 0), max(c0, 0)
                rr1, cc1 = min(r0 + size, ny), min(c0 + size, nx)
                out[k, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = lum[
                    rr0 - r_in : rr1 - r_in, cc0 - c_in : cc1 - c_in
                ]
        outs.append(out)
    return outs


@dataclass(frozen=True)
class _Sizes:
    """Window, step and search sizes in pixels, resolved for one raster."""

    window: int
    step: int
    max_shift: int


# pixel bounds on sizes given in metres (so a metre default stays usable at 10-30 m GSD)
_WINDOW_PX = (64, 1024)
_STEP_PX = (32, 4096)
_SHIFT_PX = (32, 256)


def _gsd(data: xr.DataArray) -> float | None:
    try:
        t = data.rio.transform()
    except Exception:  # pragma: no cover - no georeferencing
        return None
    g = math.sqrt(abs(t.a * t.e - t.b * t.d))
    return g if g > 0 and math.isfinite(g) and data.rio.crs is not None else None


def _resolve_sizes(cfg: Any, data: xr.DataArray) -> _Sizes:
    """Pixel sizes from ``cfg``: explicit ``*_px`` fields win, else ``*_m`` / GSD (clamped).

    Works with both the pixel-only ``CoregisterConfig`` (``window_px``, ``step_px``,
    ``max_shift_px`` always set) and the metre-based one (``window_m``, ``step_m``,
    ``max_shift_m``, with the ``*_px`` fields ``None`` unless given).
    """
    gsd = _gsd(data)
    out = {}
    for name, default_px, default_m, (lo, hi) in (
        ("window", 256, 128.0, _WINDOW_PX),
        ("step", 512, 256.0, _STEP_PX),
        ("max_shift", 32, 16.0, _SHIFT_PX),
    ):
        px = getattr(cfg, f"{name}_px", None)
        metres = getattr(cfg, f"{name}_m", None)
        if px is not None:
            out[name] = int(px)
        elif metres is not None and gsd is not None:
            out[name] = int(min(max(round(float(metres) / gsd), lo), hi))
        elif metres is not None:  # no georeferencing: metres cannot be converted
            out[name] = int(min(max(round(float(metres) / default_m * default_px), lo), hi))
        else:
            out[name] = default_px
    return _Sizes(**out)


def _measure(
    before: xr.DataArray,
    after: xr.DataArray,
    centers: np.ndarray,
    prior: tuple[int, int],
    cfg: CoregisterConfig,
    sizes: _Sizes,
) -> pd.DataFrame:
    """Measure displacement at window ``centers`` (col, row of window centre), in batches."""
    win = sizes.window + 2  # +2: the gradient eats one pixel each side
    margin = sizes.max_shift + 3
    half = (win - 1) / 2.0

    # batches run in threads (numpy, scipy.fft and scipy.ndimage release the GIL); memory:
    # threads x one batch. Few windows (the global estimate) are split so every core gets some.
    # Batches hold whole blocks of the kernel, so results do not depend on the number of cores.
    threads = max(1, min(_cores(), 8))
    per_batch = max(1, min(cfg.batch_windows, math.ceil(len(centers) / threads)))
    per_batch = BLOCK * math.ceil(per_batch / BLOCK)

    def run_batch(start: int) -> list[dict[str, Any]]:
        ctr = centers[start : start + per_batch]
        corners = np.column_stack([np.round(ctr[:, 1] - half), np.round(ctr[:, 0] - half)]).astype(
            int
        )
        bw, aw = _read_windows(
            (before.data, corners, win),
            (after.data, corners + np.array([prior[1], prior[0]]) - margin, win + 2 * margin),
        )
        bw, bfrac = fill_nan(bw)
        crop_valid = np.isfinite(aw[:, margin:-margin, margin:-margin]).mean(axis=(1, 2))
        aw, _ = fill_nan(aw)
        res = measure_windows(bw, aw, margin, iterations=cfg.iterations, workers=1)
        reach = margin - SUB_MARGIN
        return [
            {
                "col": corners[k, 1] + half,
                "row": corners[k, 0] + half,
                "dx": float(res.dx[k] + prior[0]),
                "dy": float(res.dy[k] + prior[1]),
                "peak": float(res.peak[k]),
                "reliability": float(res.reliability[k]),
                "valid_fraction": float(min(bfrac[k], crop_valid[k])),
                "in_range": bool(abs(res.dx[k]) < reach and abs(res.dy[k]) < reach),
            }
            for k in range(len(ctr))
        ]

    starts = list(range(0, len(centers), per_batch))
    threads = min(threads, len(starts))
    if threads <= 1:
        batches = [run_batch(s) for s in starts]
    else:
        with ThreadPoolExecutor(threads) as pool:
            batches = list(pool.map(run_batch, starts))
    rows_out = [row for rows in batches for row in rows]
    return pd.DataFrame(rows_out)


def _cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _grid_centers(shape: tuple[int, int], step: int, edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Window-centre coordinates along one axis pair, ``step`` apart, ``edge`` from the borders."""
    out = []
    for n in shape:
        usable = n - 2 * edge
        if usable < 0:
            out.append(np.array([]))
            continue
        k = int(usable // step) + 1
        span = (k - 1) * step
        out.append(edge + (usable - span) / 2 + step * np.arange(k))
    return out[1], out[0]  # cols, rows


def _check_inputs(before: xr.DataArray, after: xr.DataArray, sizes: _Sizes) -> None:
    if before.shape[-2:] != after.shape[-2:]:
        raise NoOverlapError(
            after.name,
            f"grid {after.shape[-2:]} differs from the before grid {before.shape[-2:]}",
            "Put it on the before grid first with changedet.align.align_to(before, after).",
        )
    need = sizes.window + 2
    if min(before.shape[-2:]) < need:
        raise NoOverlapError(
            before.name,
            f"scene of {before.shape[-2:]} px is smaller than one correlation window ({need} px)",
            "Use a larger area or a smaller coregister window (window_m or window_px).",
        )


# ---------------------------------------------------------------------------- stage objects


class _Coregistration(ABC):
    """Shared ``apply`` / gate logic."""

    method = "base"

    def __init__(self, config: CoregisterConfig | None = None, **overrides: Any) -> None:
        cfg = config or CoregisterConfig()
        if overrides:
            from dataclasses import replace

            cfg = replace(cfg, **overrides)
        self.config = cfg
        self._result: CoregResult | None = None

    @property
    def result(self) -> CoregResult:
        """The fitted result; raises ``CoregistrationError`` before ``fit``."""
        if self._result is None:
            raise CoregistrationError(
                None, f"{type(self).__name__} is not fitted", "Call .fit(before, after) first."
            )
        return self._result

    @abstractmethod
    def fit(self, before: xr.DataArray, after: xr.DataArray) -> _Coregistration:
        """Estimate the displacement of ``after`` relative to ``before`` (each method its own)."""

    def apply(self, after: xr.DataArray) -> xr.DataArray:
        """Resample ``after`` onto the before grid by the fitted model (lazy on Dask input).

        Returns a float32 DataArray with ``after``'s coordinates, CRS and attributes, plus the
        attribute ``coregistration_passed``; pixels without a valid source are NaN.
        """
        res = self.result
        data = warp_array(after.data, res.model)
        out = after.copy(data=data)
        out.attrs = {**after.attrs, "coregistration_passed": int(res.passed)}
        return out

    def fit_and_apply(self, before: xr.DataArray, after: xr.DataArray) -> xr.DataArray:
        """``fit(before, after)`` then ``apply(after)``."""
        return self.fit(before, after).apply(after)

    # -------------------------------------------------------------- shared
    def _finish(
        self,
        before: xr.DataArray,
        after: xr.DataArray,
        tp: pd.DataFrame,
        kind: ModelKind,
        t0: float,
        field_nodes: tuple[np.ndarray, np.ndarray] | None = None,
        sizes: _Sizes | None = None,
    ) -> CoregResult:
        cfg = self.config
        reason = np.zeros(len(tp), np.int8)
        if len(tp):
            reason[~tp["in_range"].to_numpy()] = 5
            reason[(reason == 0) & (tp["valid_fraction"].to_numpy() < cfg.min_valid_fraction)] = 4
            reason[(reason == 0) & (tp["reliability"].to_numpy() < cfg.min_reliability)] = 3
        cand = reason == 0
        c, r = (
            tp["col"].to_numpy(float) if len(tp) else np.zeros(0),
            tp["row"].to_numpy(float) if len(tp) else np.zeros(0),
        )
        dx, dy = (
            (tp["dx"].to_numpy(float), tp["dy"].to_numpy(float))
            if len(tp)
            else (np.zeros(0), np.zeros(0))
        )
        model, _kept_c, why = fit_model(
            kind,
            c[cand],
            r[cand],
            dx[cand],
            dy[cand],
            ransac_threshold_px=cfg.ransac_threshold_px,
            mad_k=cfg.mad_k,
            field_step=field_nodes,
        )
        reason[np.flatnonzero(cand)] = why
        kept = reason == 0
        mx, my = model.displacement_at(c, r)
        resid = np.hypot(dx - mx, dy - my)
        tp = tp.drop(columns=["in_range"]).assign(
            kept=kept, reason=[_REASONS[int(k)] for k in reason], residual_px=resid
        )
        transform = before.rio.transform()
        crs = before.rio.crs
        tp["x"] = transform.c + transform.a * (tp["col"] + 0.5) + transform.b * (tp["row"] + 0.5)
        tp["y"] = transform.f + transform.d * (tp["col"] + 0.5) + transform.e * (tp["row"] + 0.5)
        n_kept = int(kept.sum())
        rmse = float(np.sqrt(np.mean(resid[kept] ** 2))) if n_kept else float("nan")
        gsd = math.sqrt(abs(transform.a * transform.e - transform.b * transform.d))
        ny, nx = before.shape[-2:]
        sx, sy = model.displacement_at(np.array([(nx - 1) / 2]), np.array([(ny - 1) / 2]))
        reasons = self._gate(tp, n_kept, rmse, kind, (int(ny), int(nx)))
        res = CoregResult(
            method=self.method,
            model=model,
            shift_px=(float(sx[0]), float(sy[0])),
            shift_m=(
                float(sx[0] * transform.a + sy[0] * transform.b),
                float(sx[0] * transform.d + sy[0] * transform.e),
            ),
            rmse_px=rmse,
            rmse_m=rmse * gsd,
            n_tie_points=len(tp),
            n_kept=n_kept,
            tie_points=tp,
            passed=not reasons,
            reasons=reasons,
            shape=(int(ny), int(nx)),
            transform=transform,
            crs=crs,
            seconds=time.perf_counter() - t0,
            config={
                **_asdict(cfg),
                **(
                    {}
                    if sizes is None
                    else {
                        "window_px": sizes.window,
                        "step_px": sizes.step,
                        "max_shift_px": sizes.max_shift,
                    }
                ),
            },
        )
        if reasons:
            msg = "co-registration quality gate failed: " + "; ".join(reasons)
            if cfg.on_fail == "raise":
                raise CoregistrationError(
                    after.name,
                    msg,
                    "Check that the images overlap and show the same place; or set "
                    "coregister.on_fail = 'flag' to continue with the pair flagged.",
                )
            log.warning("%s: %s (pair flagged)", after.name or "after", msg)
        return res

    def _gate(
        self, tp: pd.DataFrame, n_kept: int, rmse: float, kind: str, shape: tuple[int, int]
    ) -> list[str]:
        cfg = self.config
        reasons = []
        if n_kept < cfg.min_tie_points:
            reasons.append(f"only {n_kept} tie points kept (need >= {cfg.min_tie_points})")
        n_meas = int((tp["reason"] != "nodata").sum()) if len(tp) else 0
        if n_meas and n_kept / n_meas < cfg.min_kept_fraction:
            reasons.append(
                f"only {n_kept}/{n_meas} windows kept (need >= {cfg.min_kept_fraction:.0%})"
            )
        if n_kept and not rmse <= cfg.max_rmse_px:
            reasons.append(f"residual RMSE {rmse:.3f} px > {cfg.max_rmse_px} px")
        if n_kept:
            rel = float(tp.loc[tp["kept"], "reliability"].median())
            if rel < 2 * cfg.min_reliability:
                reasons.append(f"median peak reliability {rel:.2f} < {2 * cfg.min_reliability:.2f}")
        if n_kept and kind != "translation":
            # an affine (or field) from tie points along a strip extrapolates badly across it
            kept = tp[tp["kept"]]
            span_c = float(kept["col"].max() - kept["col"].min()) / max(shape[1], 1)
            span_r = float(kept["row"].max() - kept["row"].min()) / max(shape[0], 1)
            if min(span_c, span_r) < MIN_SPAN:
                reasons.append(
                    f"kept tie points span only {span_c:.0%} of the columns and {span_r:.0%} of "
                    f"the rows (need >= {MIN_SPAN:.0%}): the {kind} model is poorly constrained; "
                    "use model='translation' or a pair with more valid overlap"
                )
        return reasons


def _asdict(cfg: CoregisterConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)


class GlobalShift(_Coregistration):
    """One translation for the whole scene, from a grid of sample windows.

    Parameters
    ----------
    config
        Parameters (``window_px``, ``global_windows``, ``max_shift_px``, gate thresholds, ...).
    **overrides
        Field overrides of ``config``, e.g. ``GlobalShift(window_px=128)``.

    Examples
    --------
    >>> from changedet.testing import make_pair
    >>> b, a, _ = make_pair((1, 320, 320), shift_px=(-4.4, 0.7), seed=5)
    >>> res = GlobalShift().fit(b, a).result
    >>> [round(v, 1) for v in res.shift_px], res.passed
    ([-4.4, 0.7], True)
    """

    method = "global"

    def fit(self, before: xr.DataArray, after: xr.DataArray) -> GlobalShift:
        """Measure the shift of ``after`` relative to ``before`` (same grid); returns ``self``."""
        t0 = time.perf_counter()
        cfg = self.config
        sizes = _resolve_sizes(cfg, before)
        _check_inputs(before, after, sizes)
        ny, nx = before.shape[-2:]
        k = max(1, round(math.sqrt(cfg.global_windows)))
        edge = (sizes.window + 2) / 2
        cols = (
            np.linspace(edge, nx - edge, k + 2)[1:-1] if nx > 2 * edge + 2 else np.array([nx / 2])
        )
        rows = (
            np.linspace(edge, ny - edge, k + 2)[1:-1] if ny > 2 * edge + 2 else np.array([ny / 2])
        )
        cc, rr = np.meshgrid(cols, rows)
        tp = _measure(before, after, np.column_stack([cc.ravel(), rr.ravel()]), (0, 0), cfg, sizes)
        self._result = self._finish(before, after, tp, "translation", t0, sizes=sizes)
        return self


class LocalGrid(_Coregistration):
    """A tie-point grid over the whole scene and a robust model fit.

    A :class:`GlobalShift` estimate first gives every window a prior (so large shifts are found);
    then windows of ``window_px`` every ``step_px`` are measured (no cap on their number), filtered
    (reliability, nodata), and a ``model`` (translation / affine / field) is fitted with RANSAC and
    MAD rejection.

    Parameters
    ----------
    config
        Parameters; ``config.model`` picks the model.
    **overrides
        Field overrides of ``config``, e.g. ``LocalGrid(model="field", step_px=128)``.

    Examples
    --------
    >>> from changedet.testing import make_pair
    >>> b, a, truth = make_pair((1, 512, 512), shift_px=(3.0, -2.0), rotation_deg=0.2, seed=2)
    >>> res = LocalGrid(step_px=96, window_px=128).fit(b, a).result
    >>> res.model.kind, res.passed, res.n_kept > 10
    ('affine', True, True)
    """

    method = "local"

    def fit(self, before: xr.DataArray, after: xr.DataArray) -> LocalGrid:
        """Fit the model of ``after`` relative to ``before`` (same grid); returns ``self``."""
        t0 = time.perf_counter()
        cfg = self.config
        sizes = _resolve_sizes(cfg, before)
        _check_inputs(before, after, sizes)
        # the prior is only used rounded to whole pixels: no sub-pixel re-measurements
        prior_res = GlobalShift(cfg, on_fail="flag", iterations=0)
        prior_res._finish = _quiet_finish.__get__(prior_res)  # type: ignore[method-assign]
        prior_res.fit(before, after)
        gx, gy = prior_res.result.shift_px
        prior = (round(gx), round(gy)) if np.isfinite([gx, gy]).all() else (0, 0)
        ny, nx = before.shape[-2:]
        win = sizes.window + 2
        step = min(sizes.step, max(sizes.window // 4, min(ny, nx) // 8))
        cols, rows = _grid_centers((ny, nx), step, win / 2)
        cc, rr = np.meshgrid(cols, rows)
        tp = _measure(before, after, np.column_stack([cc.ravel(), rr.ravel()]), prior, cfg, sizes)
        nodes = (cols.astype(float), rows.astype(float)) if cfg.model == "field" else None
        self._result = self._finish(before, after, tp, cfg.model, t0, nodes, sizes=sizes)
        return self


def _quiet_finish(self: _Coregistration, *args: Any, **kwargs: Any) -> CoregResult:
    """``_finish`` without the gate's warning (for the internal global prior)."""
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return _Coregistration._finish(self, *args, **kwargs)
    finally:
        log.setLevel(level)


def coregister(
    before: xr.DataArray, after: xr.DataArray, config: CoregisterConfig | None = None
) -> tuple[xr.DataArray, CoregResult]:
    """Fit and apply the method chosen in ``config`` (``local`` by default).

    Returns
    -------
    corrected, result
        The after image on the before grid, corrected (lazy on Dask input), and the fit.

    Raises
    ------
    CoregistrationError
        When the quality gate fails and ``config.on_fail == "raise"``.

    Examples
    --------
    >>> from changedet.testing import make_pair
    >>> b, a, _ = make_pair((1, 300, 300), shift_px=(1.5, 0.5), seed=4)
    >>> corrected, res = coregister(b, a, CoregisterConfig(method="global"))
    >>> corrected.shape == a.shape
    True
    """
    cfg = config or CoregisterConfig()
    stage: _Coregistration = GlobalShift(cfg) if cfg.method == "global" else LocalGrid(cfg)
    corrected = stage.fit_and_apply(before, after)
    return corrected, stage.result
