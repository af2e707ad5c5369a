"""Figures and report outputs.

For now: a before/after figure of a pair, read decimated so memory stays bounded whatever the
scene size. The after image is shown on the before image's grid (warped on the fly with its own
georeferencing) so both panels cover the same ground at the same scale.

Examples
--------
>>> from changedet.report import plot_before_after  # doctest: +SKIP
>>> plot_before_after("site/before.tif", "site/after.tif", "pair.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from changedet._atomic import atomic_path
from changedet.errors import MissingCRSError, NoOverlapError, UnreadableFileError

#: Longest side, in pixels, of the image read for a figure panel.
PREVIEW_PX = 1024


def read_preview(
    path: str | os.PathLike[str],
    *,
    like: str | os.PathLike[str] | None = None,
    max_px: int = PREVIEW_PX,
) -> np.ndarray:
    """Read an RGB preview (rows, cols, 3) in [0, 1], decimated to at most ``max_px`` a side.

    Parameters
    ----------
    path
        A raster readable by rasterio. The first three bands are shown as RGB (one band: grey).
    like
        Another raster: when given, ``path`` is warped onto its grid (CRS, bounds, shape) first.
    max_px
        Longest side of the preview.

    Returns
    -------
    numpy.ndarray
        Float array, 1–99 % stretched (one stretch for all bands); nodata pixels are NaN.

    Raises
    ------
    UnreadableFileError, MissingCRSError
        When a file cannot be opened or has no CRS while warping.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise UnreadableFileError(
            path, f"cannot be read ({exc})", "Check the path and format."
        ) from None
    with src:
        bands = [1, 2, 3] if src.count >= 3 else [1]
        if like is not None:
            with rasterio.open(like) as ref:
                if src.crs is None:
                    raise MissingCRSError(path)
                if ref.crs is None:
                    raise MissingCRSError(like)
                height, width, transform, crs = ref.height, ref.width, ref.transform, ref.crs
            reader = WarpedVRT(
                src,
                crs=crs,
                transform=transform,
                width=width,
                height=height,
                resampling=Resampling.bilinear,
                src_nodata=src.nodata,
                nodata=src.nodata or 0,
            )
        else:
            reader = src
            height, width = src.height, src.width
        scale = max(height, width) / max_px
        out_h, out_w = (
            (height, width) if scale <= 1 else (round(height / scale), round(width / scale))
        )
        try:
            data = reader.read(
                bands,
                out_shape=(len(bands), out_h, out_w),
                resampling=Resampling.average,
                masked=True,
            )
        finally:
            if reader is not src:
                reader.close()
    arr = np.ma.filled(data.astype("float64"), np.nan)
    if np.all(np.isnan(arr)):
        raise NoOverlapError(path, "shows no valid pixel on the grid of the other image", None)
    # One stretch for all bands keeps colours true (a per-band stretch tints the image).
    lo, hi = np.nanpercentile(arr, [1, 99])
    out = np.clip((arr - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.moveaxis(out, 0, -1)
    return rgb if rgb.shape[-1] == 3 else np.repeat(rgb, 3, axis=-1)


def plot_before_after(
    before: str | os.PathLike[str],
    after: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Write a side-by-side before | after figure of a pair (after on the before grid).

    Parameters
    ----------
    before, after
        Raster paths. The after image is warped onto the before image's grid for display.
    out_png
        Output image (PNG, PDF or SVG by suffix), written atomically.
    title
        Figure title; defaults to the folder name.
    dpi
        Resolution of raster outputs (≥ 150 for reports).

    Returns
    -------
    pathlib.Path
        ``out_png``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    before_rgb = read_preview(before)
    after_rgb = read_preview(after, like=before)
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4), constrained_layout=True)
    for ax, img, label in ((axes[0], before_rgb, "before"), (axes[1], after_rgb, "after")):
        ax.imshow(np.nan_to_num(img, nan=1.0), interpolation="lanczos")
        ax.set_title(f"{label}: {Path(before if label == 'before' else after).name}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or Path(before).parent.name)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=dpi, format=out_png.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out_png
