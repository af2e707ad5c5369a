"""Building damage accuracy and speed on synthetic sites with known damage.

Each site is generated once (``changedet.synthetic.generate_site``, 768², cached under
``benchmarks/_work/damage/``, git-ignored). Half the sites keep the generator's default sun
(after sun close to the before sun); the other half move the after sun far round to the
south-west and lower (as on ``sample_tiles/site_02``), with a different misregistration: moved
shadows and re-lit walls are the nuisance change the damage stage must ignore.

The pipeline's own stages run up to the change maps (read, align, co-register, normalise:
:func:`changedet.pipeline.run_pair` minus the crater detector and the writers); the
co-registered, normalised pair is cached per site (``pair.npz``) so that damage assessment can
be re-run quickly. Then :func:`changedet.change.change_scores`,
:func:`changedet.change.threshold_score` and :func:`changedet.damage.assess_damage` run as in the
pipeline, with the after image's sun angles from ``truth/scene.json`` (``sun_after``).

Scoring follows :func:`changedet.evaluate._building_f1`: a building is *damaged* when its class
is destroyed, severe or moderate; truth ``possible`` buildings and new construction are left
out. Printed per split: building precision / recall / F1 (pooled over sites, and the median of
per-site F1), the confusion of truth class × predicted class, the class agreement (share of
truth destroyed/severe/moderate buildings given exactly their class), and seconds per scene
(change + damage; and the cached preparation stages once). ``--verbose`` lists every yes/no
error and every truth-damaged building given another class, with its shares.

Splits: ``tune`` = seeds 0-9 (look at these while developing), ``report`` = seeds 100-119 (run
at the end only; never tune on them).

Usage::

    .venv/bin/python benchmarks/eval_damage.py --split tune [--workers 2] [--verbose]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

WORK = Path(__file__).resolve().parent / "_work" / "damage"
SPLITS = {"tune": list(range(0, 10)), "report": list(range(100, 120))}
SIZE_PX = 768
CLASSES = ("destroyed", "severe", "moderate", "possible", "no visible damage", "not assessable")
TRUTH_CLASSES = ("destroyed", "severe", "moderate", "possible", "none")


def settings_for(seed: int) -> Any:
    """Default scene for even seeds; odd seeds: after sun far from the before sun."""
    from changedet.synthetic import SceneSettings

    if seed % 2 == 0:
        return SceneSettings(seed=seed, size_px=SIZE_PX)
    rng = np.random.default_rng(10_000 + seed)
    az = float(rng.uniform(200, 250))
    el = float(rng.uniform(30, 45))
    shift = (float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8)))
    rot = float(rng.uniform(-0.3, 0.3))
    return SceneSettings(
        seed=seed,
        size_px=SIZE_PX,
        sun_after=(round(az, 1), round(el, 1)),
        shift_px=(round(shift[0], 2), round(shift[1], 2)),
        rotation_deg=round(rot, 3),
    )


def site_for(seed: int) -> Path:
    from changedet.synthetic import generate_site

    out = WORK / f"site_{seed:04d}_{SIZE_PX}"
    if not (out / "truth" / "scene.json").is_file():
        generate_site(out, settings_for(seed), workers=1)
    return out


def prepare(site: Path) -> tuple[Any, Any, dict[str, Any], float]:
    """Before and the co-registered, normalised after image (cached), the scene, and the
    seconds the preparation took (0 when cached)."""
    import rioxarray

    from changedet import align, coregister, normalize
    from changedet import io as cio
    from changedet.config import Config

    scene = json.loads((site / "truth" / "scene.json").read_text())
    cache = site / "pair.npz"
    before = rioxarray.open_rasterio(site / "before.tif").astype("float32").load()
    if cache.is_file():
        z = np.load(cache)
        return before.copy(data=z["before"]), before.copy(data=z["after"]), scene, 0.0
    t0 = time.perf_counter()
    cfg = Config()
    b = cio.open_raster(site / "before.tif", chunks=cfg.io.chunk_px, name="before")
    a = cio.open_raster(site / "after.tif", chunks=cfg.io.chunk_px, name="after")
    b, a = align.align_pair(b, a, cfg.align)
    a_c, _ = coregister.coregister(b, a, cfg.coregister)
    norm = normalize.RelativeNormalizer.from_params(cfg.normalize).fit(b, a_c)
    a_n = norm.apply(a_c)
    bv = np.asarray(b.astype("float32").values)
    av = np.asarray(a_n.astype("float32").values)
    dt = time.perf_counter() - t0
    np.savez(cache, before=bv, after=av)
    return before.copy(data=bv), before.copy(data=av), scene, dt


BASELINE = False  # --baseline: the score-threshold damage stage (no image evidence)


def assess(before: Any, after: Any, scene: dict[str, Any], footprints: Any) -> Any:
    """Change maps and damage exactly as the pipeline runs them (chunked)."""
    import dataclasses
    import inspect

    from changedet import change, damage
    from changedet.config import Config

    cfg = Config()
    chunk = cfg.io.chunk_px
    b = before.chunk({"band": -1, "y": chunk, "x": chunk})
    a = after.chunk({"band": -1, "y": chunk, "x": chunk})
    scores = change.change_scores(b, a, cfg.change).persist()
    thr = change.threshold_score(scores["score"], cfg.change.threshold)
    na = change.not_assessable(b, a, saturation=cfg.change.saturation)
    kw: dict[str, Any] = {}
    params = cfg.damage
    if BASELINE:  # the stage as it was: share of pixels over the change-score threshold
        if hasattr(params, "edge_fraction"):
            params = dataclasses.replace(params, edge_fraction=0.0)
        return damage.assess_damage(
            scores["score"], footprints, threshold=thr, not_assessable=na, params=params
        )
    sig = inspect.signature(damage.assess_damage).parameters
    az, el = scene["settings"]["sun_after"]
    if "before" in sig:  # evidence from the images (newer damage stage)
        kw.update(before=b, after=a)
    if "sun_azimuth_deg" in sig:
        kw.update(sun_azimuth_deg=az, sun_elevation_deg=el)
    return damage.assess_damage(
        scores["score"], footprints, threshold=thr, not_assessable=na, params=params, **kw
    )


def evaluate_site(seed: int) -> dict[str, Any]:
    import geopandas as gpd

    from changedet.evaluate import DAMAGED, IGNORED

    site = site_for(seed)
    before, after, scene, t_prep = prepare(site)
    foot = gpd.read_file(site / "footprints.geojson")
    t0 = time.perf_counter()
    out = assess(before, after, scene, foot)
    dt = time.perf_counter() - t0
    truth = gpd.read_file(site / "truth" / "damage.geojson")
    tcol = "damage_class" if "damage_class" in truth.columns else "damage"
    if "new_construction" in truth.columns:
        truth = truth[~truth["new_construction"].fillna(False).astype(bool)]
    t = truth.set_index(truth["id"].astype(str))[tcol].astype(str)
    d = out.set_index(out["id"].astype(str))["damage_class"].astype(str)
    d = d.reindex(t.index).fillna("no visible damage")
    conf: dict[str, dict[str, int]] = {tc: dict.fromkeys(CLASSES, 0) for tc in TRUTH_CLASSES}
    for tc, pc in zip(t, d, strict=True):
        conf.setdefault(tc, dict.fromkeys(CLASSES, 0))[pc] += 1
    keep = ~t.isin(IGNORED)
    true_dmg = t[keep].isin(DAMAGED)
    pred_dmg = d[keep].isin(DAMAGED)
    extra = out.set_index(out["id"].astype(str)).reindex(t.index)
    errors = [
        {
            "id": i,
            "truth": t[i],
            "pred": d[i],
            **{
                c: round(float(extra[c][i]), 3)
                for c in extra.columns
                if c not in ("id", "damage_class", "geometry")
                and np.issubdtype(extra[c].dtype, np.number)
            },
        }
        for i in t.index
        if keep[i] and (true_dmg[i] != pred_dmg[i])
    ]
    # class disagreements among truth-damaged buildings (shown by --verbose)
    class_errors = [
        {"id": i, "truth": t[i], "pred": d[i], **{c: e[c] for c in e if c not in ("id",)}}
        for i in t.index
        if t[i] in DAMAGED and d[i] != t[i]
        for e in [
            {
                c: round(float(extra[c][i]), 3)
                for c in extra.columns
                if c not in ("id", "damage_class", "geometry")
                and np.issubdtype(extra[c].dtype, np.number)
            }
        ]
    ]
    return {
        "seed": seed,
        "sun_after": scene["settings"]["sun_after"],
        "tp": int((true_dmg & pred_dmg).sum()),
        "n_pred": int(pred_dmg.sum()),
        "n_true": int(true_dmg.sum()),
        "conf": conf,
        "seconds": dt,
        "prep_seconds": t_prep,
        "errors": errors,
        "class_errors": class_errors,
    }


def _prepare_seed(seed: int) -> None:
    prepare(site_for(seed))


def _set_baseline(flag: bool) -> None:
    global BASELINE
    BASELINE = flag


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    r = tp / n_true if n_true else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=sorted(SPLITS), default="tune")
    ap.add_argument("--seeds", type=int, nargs="*", help="override the split's seeds")
    ap.add_argument("--n", type=int, default=None, help="only the first N seeds of the split")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--verbose", action="store_true", help="list every wrong building")
    ap.add_argument("--json", type=Path, help="write the per-site results here")
    ap.add_argument("--baseline", action="store_true", help="score-threshold damage (before)")
    ap.add_argument("--prepare-only", action="store_true", help="generate and cache, no scores")
    args = ap.parse_args(argv)
    global BASELINE
    BASELINE = args.baseline
    seeds = (args.seeds if args.seeds else SPLITS[args.split])[: args.n]
    import dask

    dask.config.set(scheduler="threads", num_workers=1 if args.workers > 1 else None)
    if args.prepare_only:
        with Pool(max(args.workers, 1)) as pool:
            pool.map(_prepare_seed, seeds)
        return 0
    if args.workers > 1:
        with Pool(args.workers, initializer=_set_baseline, initargs=(BASELINE,)) as pool:
            results = pool.map(evaluate_site, seeds)
    else:
        results = [evaluate_site(s) for s in seeds]
    print(f"split {args.split}: seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} sites, {SIZE_PX}²)")
    print(
        f"{'seed':>5} {'sun_after':>14} {'true':>5} {'pred':>5} {'tp':>4} {'P':>6} {'R':>6} {'F1':>6} {'s':>6}"
    )
    f1s = []
    for r in results:
        p, rc, f = _prf(r["tp"], r["n_pred"], r["n_true"])
        f1s.append(f)
        sun = f"{r['sun_after'][0]:.0f}/{r['sun_after'][1]:.0f}"
        print(
            f"{r['seed']:>5} {sun:>14} {r['n_true']:>5} {r['n_pred']:>5} {r['tp']:>4} "
            f"{p:6.3f} {rc:6.3f} {f:6.3f} {r['seconds']:6.2f}"
        )
        if args.verbose:
            for e in r["errors"]:
                print("        ", e)
            for e in r["class_errors"]:
                print("   class", e)
    tp = sum(r["tp"] for r in results)
    npred = sum(r["n_pred"] for r in results)
    ntrue = sum(r["n_true"] for r in results)
    p, rc, f = _prf(tp, npred, ntrue)
    print(
        f"pooled: precision {p:.3f} recall {rc:.3f} F1 {f:.3f} (tp {tp}, pred {npred}, true {ntrue})"
    )
    print(f"per-site F1: median {np.median(f1s):.3f}, min {np.min(f1s):.3f}")
    for name, sel in (("default sun", 0), ("moved sun", 1)):
        sub = [r for r in results if r["seed"] % 2 == sel]
        if sub:
            q = _prf(
                sum(r["tp"] for r in sub),
                sum(r["n_pred"] for r in sub),
                sum(r["n_true"] for r in sub),
            )
            print(f"  {name:<12} P {q[0]:.3f} R {q[1]:.3f} F1 {q[2]:.3f} ({len(sub)} sites)")
    print("confusion (rows: truth, columns: predicted)")
    short = {"no visible damage": "none", "not assessable": "n/a"}
    print(f"{'':>10}" + "".join(f"{short.get(c, c):>10}" for c in CLASSES))
    for tc in TRUTH_CLASSES:
        row = [sum(r["conf"].get(tc, {}).get(c, 0) for r in results) for c in CLASSES]
        print(f"{tc:>10}" + "".join(f"{v:>10}" for v in row))
    from changedet.evaluate import DAMAGED

    exact = sum(r["conf"].get(tc, {}).get(tc, 0) for r in results for tc in DAMAGED)
    n_dmg = sum(sum(r["conf"].get(tc, {}).values()) for r in results for tc in DAMAGED)
    print(
        f"class agreement over truth-damaged buildings ({'/'.join(DAMAGED)}): "
        f"{exact}/{n_dmg} = {exact / max(n_dmg, 1):.3f} exact"
    )
    secs = [r["seconds"] for r in results]
    prep = [r["prep_seconds"] for r in results if r["prep_seconds"] > 0]
    print(
        f"seconds per scene (change + damage): median {np.median(secs):.2f}, max {np.max(secs):.2f}"
    )
    if prep:
        print(f"seconds per scene (read..normalise, first run): median {np.median(prep):.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
