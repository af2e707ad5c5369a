"""Draw docs/sample_pair.png from sample_tiles/ (run `python docs/make_sample_figure.py`).

Top: the whole before and after images of a sample site. Bottom: the same full-resolution crop
of both around the largest crater on or next to a building, with the true craters (circles) and
the damaged buildings (outlines, coloured by UNOSAT class) drawn on the after crop.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import rasterio
from matplotlib.patches import Circle, Polygon
from pyproj import Transformer

COLOURS = {
    "destroyed": "#d7191c",
    "severe": "#fd8d3c",
    "moderate": "#fecc5c",
    "possible": "#ffffb2",
}


def main(site: Path, out: Path, half: int = 110) -> None:
    with rasterio.open(site / "before.tif") as src:
        before, transform, crs = src.read([1, 2, 3]).transpose(1, 2, 0), src.transform, src.crs
    with rasterio.open(site / "after.tif") as src:
        after = src.read([1, 2, 3]).transpose(1, 2, 0)
    mis = json.loads((site / "truth/misregistration.json").read_text())
    m = np.array(mis["matrix"])
    craters = [
        f["properties"]
        for f in json.loads((site / "truth/craters.geojson").read_text())["features"]
    ]
    target = max(
        (c for c in craters if c["on"] == "building"),
        key=lambda c: c["diameter_m"],
        default=craters[0],
    )
    col, row = int(target["col_px"]), int(target["row_px"])
    r0 = min(max(0, row - half), before.shape[0] - 2 * half)
    c0 = min(max(0, col - half), before.shape[1] - 2 * half)
    # the after crop is taken where the same ground appears in the after image (true misregistration)
    ac, ar = m @ [c0 + half, r0 + half, 1.0]
    ar0, ac0 = round(float(ar)) - half, round(float(ac)) - half

    fig, axes = plt.subplots(2, 2, figsize=(10, 10.4), dpi=110)
    for ax, img, title in ((axes[0, 0], before, "before"), (axes[0, 1], after, "after")):
        ax.imshow(
            img[::2, ::2], extent=(0, img.shape[1], img.shape[0], 0), interpolation="antialiased"
        )
        ax.add_patch(
            plt.Rectangle(
                (c0 if title == "before" else ac0, r0 if title == "before" else ar0),
                2 * half,
                2 * half,
                fill=False,
                ec="yellow",
                lw=1.2,
            )
        )
        ax.set_title(
            f"{title} (whole scene, {img.shape[1]}x{img.shape[0]} px at 0.5 m)", fontsize=10
        )
    axes[1, 0].imshow(before[r0 : r0 + 2 * half, c0 : c0 + 2 * half], interpolation="nearest")
    axes[1, 0].set_title("before, full resolution", fontsize=10)
    axes[1, 1].imshow(after[ar0 : ar0 + 2 * half, ac0 : ac0 + 2 * half], interpolation="nearest")
    axes[1, 1].set_title("after, same ground; truth: craters, damaged buildings", fontsize=10)
    to_scene = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    inv = ~transform
    for f in json.loads((site / "truth/damage.geojson").read_text())["features"]:
        cls = f["properties"]["damage"]
        if cls not in COLOURS:
            continue
        ring = np.array(f["geometry"]["coordinates"][0])
        x, y = to_scene.transform(ring[:, 0], ring[:, 1])
        pc, pr = inv * (np.asarray(x), np.asarray(y))
        pc, pr = pc - 0.5, pr - 0.5
        qc = m[0, 0] * pc + m[0, 1] * pr + m[0, 2] - ac0
        qr = m[1, 0] * pc + m[1, 1] * pr + m[1, 2] - ar0
        axes[1, 1].add_patch(
            Polygon(np.column_stack([qc, qr]), fill=False, ec=COLOURS[cls], lw=1.3)
        )
    for c in craters:
        qc = m[0, 0] * c["col_px"] + m[0, 1] * c["row_px"] + m[0, 2] - ac0
        qr = m[1, 0] * c["col_px"] + m[1, 1] * c["row_px"] + m[1, 2] - ar0
        axes[1, 1].add_patch(
            Circle(
                (qc, qr), c["diameter_m"] / 0.5 / 2 * 1.6, fill=False, ec="cyan", lw=1.2, ls="--"
            )
        )
    for ax in axes[1]:
        ax.set_xlim(-0.5, 2 * half - 0.5)
        ax.set_ylim(2 * half - 0.5, -0.5)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"changedet synthetic sample {site.name}: shift {mis['shift_px']} px, "
        f"rotation {mis['rotation_deg']}°, other sun, season, gain, haze",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    site = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "sample_tiles" / "site_02"
    main(site, root / "docs" / "sample_pair.png")
