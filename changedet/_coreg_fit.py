"""Displacement models and their robust fit from tie points (private to ``coregister``).

A model maps before pixel ``(col, row)`` (pixel centres, on the before grid) to the displacement
``(dx, dy)`` of the after image's content there: a feature at ``(c, r)`` lies in the after image at
``(c + dx, r + dy)``. Three models: ``translation`` (one shift), ``affine`` (``2×3`` matrix from
before ``(col, row)`` to after-content ``(col, row)``, as in the synthetic generator's
``truth/misregistration.json``) and ``field`` (an affine plus a smooth residual grid, bilinearly
interpolated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

ModelKind = Literal["translation", "affine", "field"]

__all__ = ["DisplacementModel", "ModelKind", "fit_model"]


@dataclass(frozen=True)
class DisplacementModel:
    """A fitted displacement model (see the module docstring for the convention).

    Attributes
    ----------
    kind
        ``"translation"``, ``"affine"`` or ``"field"``.
    matrix
        ``2×3`` affine matrix before ``(col, row)`` → after-content ``(col, row)``; for a
        translation ``[[1, 0, dx], [0, 1, dy]]``; for a field, its affine part.
    grid_cols, grid_rows, grid_dx, grid_dy
        For ``field`` only: node coordinates (1-D) and the residual displacement on the nodes
        (2-D, rows × cols), added to the affine part with bilinear interpolation (clamped at the
        outer nodes).

    Examples
    --------
    >>> m = DisplacementModel("translation", np.array([[1.0, 0, 2.5], [0, 1, -1.0]]))
    >>> m.displacement_at(np.array([0.0, 10.0]), np.array([0.0, 5.0]))
    (array([2.5, 2.5]), array([-1., -1.]))
    """

    kind: ModelKind
    matrix: np.ndarray
    grid_cols: np.ndarray | None = None
    grid_rows: np.ndarray | None = None
    grid_dx: np.ndarray | None = field(default=None, repr=False)
    grid_dy: np.ndarray | None = field(default=None, repr=False)

    def displacement_at(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Displacement ``(dx, dy)`` in pixels at before pixel centres ``(cols, rows)``."""
        cols = np.asarray(cols, dtype=np.float64)
        rows = np.asarray(rows, dtype=np.float64)
        m = self.matrix
        dx = (m[0, 0] - 1.0) * cols + m[0, 1] * rows + m[0, 2]
        dy = m[1, 0] * cols + (m[1, 1] - 1.0) * rows + m[1, 2]
        if self.kind == "field" and self.grid_dx is not None:
            rx, ry = self._grid_residual(cols, rows)
            dx = dx + rx
            dy = dy + ry
        return dx, dy

    def _grid_residual(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.grid_cols is not None and self.grid_rows is not None
        assert self.grid_dx is not None and self.grid_dy is not None
        gc, gr = self.grid_cols, self.grid_rows
        fc = np.interp(cols, gc, np.arange(gc.size)) if gc.size > 1 else np.zeros_like(cols)
        fr = np.interp(rows, gr, np.arange(gr.size)) if gr.size > 1 else np.zeros_like(rows)
        c0 = np.clip(np.floor(fc).astype(int), 0, max(gc.size - 2, 0))
        r0 = np.clip(np.floor(fr).astype(int), 0, max(gr.size - 2, 0))
        c1 = np.minimum(c0 + 1, gc.size - 1)
        r1 = np.minimum(r0 + 1, gr.size - 1)
        tc = fc - c0
        tr = fr - r0
        out = []
        for g in (self.grid_dx, self.grid_dy):
            top = g[r0, c0] * (1 - tc) + g[r0, c1] * tc
            bot = g[r1, c0] * (1 - tc) + g[r1, c1] * tc
            out.append(top * (1 - tr) + bot * tr)
        return out[0], out[1]

    def max_abs_displacement(self, shape: tuple[int, int]) -> float:
        """Largest ``|dx|``, ``|dy|`` over a ``(rows, cols)`` grid (corners, and nodes for a field)."""
        ny, nx = shape
        cols = np.array([0, nx - 1, 0, nx - 1], float)
        rows = np.array([0, 0, ny - 1, ny - 1], float)
        if self.grid_cols is not None and self.grid_rows is not None:
            gc, gr = np.meshgrid(self.grid_cols, self.grid_rows)
            cols = np.concatenate([cols, gc.ravel()])
            rows = np.concatenate([rows, gr.ravel()])
        dx, dy = self.displacement_at(cols, rows)
        return float(max(np.abs(dx).max(), np.abs(dy).max()))

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form (for the manifest)."""
        out: dict[str, object] = {"kind": self.kind, "matrix": np.round(self.matrix, 9).tolist()}
        if self.kind == "field" and self.grid_dx is not None:
            assert self.grid_cols is not None and self.grid_rows is not None
            assert self.grid_dy is not None
            out["grid_cols"] = self.grid_cols.tolist()
            out["grid_rows"] = self.grid_rows.tolist()
            out["grid_dx"] = np.round(self.grid_dx, 6).tolist()
            out["grid_dy"] = np.round(self.grid_dy, 6).tolist()
        return out


def _lstsq_affine(c: np.ndarray, r: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Least-squares affine displacement; returns the ``2×3`` before → after-content matrix."""
    a = np.column_stack([c, r, np.ones_like(c)])
    px, *_ = np.linalg.lstsq(a, dx, rcond=None)
    py, *_ = np.linalg.lstsq(a, dy, rcond=None)
    m = np.vstack([px, py])
    m[0, 0] += 1.0
    m[1, 1] += 1.0
    return m


def _translation(dx: np.ndarray, dy: np.ndarray, robust: bool) -> np.ndarray:
    fx = np.median(dx) if robust else np.mean(dx)
    fy = np.median(dy) if robust else np.mean(dy)
    return np.array([[1.0, 0.0, fx], [0.0, 1.0, fy]])


def _fit_once(
    kind: ModelKind, c: np.ndarray, r: np.ndarray, dx: np.ndarray, dy: np.ndarray
) -> np.ndarray:
    if kind == "translation" or c.size < 6:
        return _translation(dx, dy, robust=False)
    return _lstsq_affine(c, r, dx, dy)


def _residuals(
    m: np.ndarray, c: np.ndarray, r: np.ndarray, dx: np.ndarray, dy: np.ndarray
) -> np.ndarray:
    model = DisplacementModel("affine", m)
    mx, my = model.displacement_at(c, r)
    return np.hypot(dx - mx, dy - my)


def _ransac(
    kind: ModelKind,
    c: np.ndarray,
    r: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    threshold: float,
    trials: int,
    seed: int,
) -> np.ndarray:
    """Boolean inlier mask of the consensus model (deterministic for a given seed)."""
    n = c.size
    if kind == "translation" or n < 6:
        m = _translation(dx, dy, robust=True)
        return _residuals(m, c, r, dx, dy) <= threshold
    rng = np.random.default_rng(seed)
    best = np.zeros(n, bool)
    best_err = np.inf
    for _ in range(trials):
        pick = rng.choice(n, 3, replace=False)
        a = np.column_stack([c[pick], r[pick], np.ones(3)])
        if abs(np.linalg.det(a)) < 1e-6:
            continue
        m = _lstsq_affine(c[pick], r[pick], dx[pick], dy[pick])
        res = _residuals(m, c, r, dx, dy)
        inl = res <= threshold
        err = res[inl].sum()
        if inl.sum() > best.sum() or (inl.sum() == best.sum() and err < best_err):
            best, best_err = inl, err
    return best


def fit_model(
    kind: ModelKind,
    cols: np.ndarray,
    rows: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    *,
    ransac_threshold_px: float = 1.0,
    mad_k: float = 3.5,
    min_residual_px: float = 0.1,
    field_step: tuple[np.ndarray, np.ndarray] | None = None,
    field_smoothing_px: float = 1.5,
    seed: int = 0,
) -> tuple[DisplacementModel, np.ndarray, np.ndarray]:
    """Fit ``kind`` to tie points robustly: RANSAC, least squares, then MAD rejection.

    Parameters
    ----------
    kind
        Model to fit.
    cols, rows, dx, dy
        Tie points: before pixel centres and measured displacements.
    ransac_threshold_px
        RANSAC inlier distance.
    mad_k
        After RANSAC, reject points whose residual exceeds ``median + mad_k × 1.4826 × MAD``
        (but never below ``min_residual_px``); refit until stable.
    field_step
        For ``field``: the node coordinates ``(grid_cols, grid_rows)`` of the residual grid.
    field_smoothing_px
        For ``field``: Gaussian smoothing (in grid nodes) of the residuals before gridding.

    Returns
    -------
    model, kept, reason_code
        The model, a boolean mask of kept points, and per point 0 (kept), 1 (RANSAC) or 2 (MAD).

    Examples
    --------
    >>> c, r = np.meshgrid(np.arange(0, 1000, 100.0), np.arange(0, 1000, 100.0))
    >>> c, r = c.ravel(), r.ravel()
    >>> dx, dy = 0.001 * r + 2.0, -0.001 * c - 1.0
    >>> dx[5] += 9
    >>> model, kept, _ = fit_model("affine", c, r, dx, dy)
    >>> np.round(model.matrix, 4).tolist(), int((~kept).sum())
    ([[1.0, 0.001, 2.0], [-0.001, 1.0, -1.0]], 1)
    """
    base: ModelKind = "translation" if kind == "translation" else "affine"
    reason = np.zeros(cols.size, np.int8)
    if cols.size == 0:
        return (
            DisplacementModel(kind, np.array([[1.0, 0, 0], [0, 1.0, 0]])),
            np.zeros(0, bool),
            reason,
        )
    kept = _ransac(base, cols, rows, dx, dy, ransac_threshold_px, 300, seed)
    if kept.sum() < min(3, cols.size):
        kept = np.ones(cols.size, bool)
    reason[~kept] = 1
    m = _fit_once(base, cols[kept], rows[kept], dx[kept], dy[kept])
    for _ in range(10):
        res = _residuals(m, cols, rows, dx, dy)
        rk = res[kept]
        med = np.median(rk)
        mad = np.median(np.abs(rk - med)) * 1.4826
        limit = max(med + mad_k * mad, min_residual_px)
        new = (reason != 1) & (res <= limit)
        if new.sum() < 3 or np.array_equal(new, kept):
            break
        kept = new
        m = _fit_once(base, cols[kept], rows[kept], dx[kept], dy[kept])
    reason[(reason == 0) & ~kept] = 2
    if kind != "field" or field_step is None:
        return DisplacementModel(kind, m), kept, reason
    return _fit_field(m, cols, rows, dx, dy, kept, field_step, field_smoothing_px), kept, reason


def _fit_field(
    m: np.ndarray,
    cols: np.ndarray,
    rows: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    kept: np.ndarray,
    nodes: tuple[np.ndarray, np.ndarray],
    smoothing: float,
) -> DisplacementModel:
    """Affine plus a smooth residual grid: Gaussian-weighted average of kept residuals per node."""
    gc, gr = nodes
    base = DisplacementModel("affine", m)
    mx, my = base.displacement_at(cols, rows)
    rx, ry = (dx - mx)[kept], (dy - my)[kept]
    c, r = cols[kept], rows[kept]
    spacing = max(
        float(np.median(np.diff(gc))) if gc.size > 1 else 1.0,
        float(np.median(np.diff(gr))) if gr.size > 1 else 1.0,
    )
    sigma = smoothing * spacing
    gx = np.zeros((gr.size, gc.size))
    gy = np.zeros((gr.size, gc.size))
    for i, y in enumerate(gr):
        d2 = ((c[None, :] - gc[:, None]) ** 2 + (r[None, :] - y) ** 2) / (2 * sigma**2)
        w = np.exp(-d2)
        ws = w.sum(axis=1)
        ok = ws > 1e-9
        gx[i] = np.where(ok, (w * rx).sum(axis=1) / np.where(ok, ws, 1), 0.0)
        gy[i] = np.where(ok, (w * ry).sum(axis=1) / np.where(ok, ws, 1), 0.0)
    return DisplacementModel("field", m, gc.astype(float), gr.astype(float), gx, gy)
