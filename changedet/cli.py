"""The ``changedet`` command.

Each subcommand is a thin layer over the library: it parses arguments into the same objects a
notebook would use, runs the stage, and prints where the results are. Bad input ends in one line
naming the file, the problem and the fix, and a non-zero exit status (2), never a traceback.

Examples
--------
$ changedet sample --out sites --seed 7 --size 1024 --sites 2
$ changedet demo --tiles sample_tiles --out demo_out
$ changedet config --template
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from changedet import __version__
from changedet.errors import ChangedetError


def _cmd_sample(args: argparse.Namespace) -> int:
    from changedet import synthetic

    sites = synthetic.write_samples(
        args.out, seed=args.seed, size_px=args.size, n_sites=args.sites, preset=args.preset
    )
    for site in sites:
        print(f"wrote {site}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from changedet import demo

    outputs = demo.run_demo(args.tiles, args.out, pipeline=not args.figures_only)
    print(f"changedet demo: {len(outputs)} site(s), results in {Path(args.out).resolve()}")
    for p in outputs:
        report = Path(p) / "report.html"
        print(f"  {report if report.is_file() else p}")
    return 0


def _load_config(args: argparse.Namespace) -> object:
    from changedet.config import Config
    from changedet.errors import ConfigError

    cfg = Config.from_file(args.config) if args.config else Config()
    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(
                None, f"--set {item!r} is not KEY=VALUE", "E.g. --set change.threshold=0.3"
            )
        overrides[key.strip()] = _parse_value(value.strip())
    return cfg.updated_dotted(overrides) if overrides else cfg


def _parse_value(text: str) -> object:
    """A --set value: JSON scalars and lists (numbers, true/false, [a, b]), a comma-separated
    list (``50,100,250`` or ``pdf,svg``), else the string.

    Examples
    --------
    >>> _parse_value("0.3"), _parse_value("pdf"), _parse_value("50, 100"), _parse_value("pdf,svg")
    (0.3, 'pdf', [50, 100], ['pdf', 'svg'])
    """
    import json

    try:
        return json.loads(text)
    except ValueError:
        pass
    if "," in text and not text.lstrip().startswith(("[", "{")):
        return [_parse_value(part.strip()) for part in text.split(",")]
    return text


def _console_log() -> None:
    """changedet's progress on stderr; other libraries' loggers (pyogrio's "Created 0 records",
    distributed's) keep their own levels and handlers, as the root logger is left alone."""
    import logging

    logger = logging.getLogger("changedet")
    logger.setLevel(logging.INFO)
    for old in [h for h in logger.handlers if getattr(h, "_changedet_console", False)]:
        logger.removeHandler(old)  # one console handler, on the current stderr
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("changedet: %(message)s"))
    handler._changedet_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def _cmd_run(args: argparse.Namespace) -> int:

    from changedet.pipeline import run_pair

    _console_log()
    cfg = _load_config(args)
    result = run_pair(
        args.before,
        args.after,
        out=args.out,
        footprints=args.footprints,
        facilities=args.facilities,
        roads=args.roads,
        config=cfg,  # type: ignore[arg-type]
        sun_azimuth_deg=args.sun_azimuth,
        sun_elevation_deg=args.sun_elevation,
        progress=not args.quiet,
        overwrite=args.overwrite,
        scratch_dir=args.scratch_dir,
    )
    coreg = result.coreg
    gate = "passed" if coreg.passed else "FAILED: " + "; ".join(coreg.reasons)
    print(
        f"co-registration: shift ({coreg.shift_px[0]:+.2f}, {coreg.shift_px[1]:+.2f}) px, "
        f"residual {coreg.rmse_px:.3f} px, {coreg.n_kept}/{coreg.n_tie_points} tie points, gate {gate}"
    )
    n_new = int((result.craters["new"] == True).sum()) if len(result.craters) else 0  # noqa: E712
    if result.craters_not_searched:
        print(f"craters: not searched ({result.craters_not_searched})")
    else:
        print(f"craters: {len(result.craters)} detected, {n_new} new")
    if len(result.damage):
        counts = result.damage["damage_class"].value_counts()
        print("damage: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if result.facilities is not None:
        for _, f in result.facilities.iterrows():
            near = (
                "not searched"
                if result.craters_not_searched
                else "none"
                if f["nearest_crater_m"] != f["nearest_crater_m"]
                else f"{f['nearest_crater_m']:.0f} m"
            )
            print(
                f"facility {f['id']} {f['name']} ({f['type']}): nearest new crater {near}, "
                f"damage {f['damage_class']}"
            )
    print(f"results in {Path(args.out).resolve()}")
    print(f"report: {(Path(args.out) / 'report.html').resolve()}")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:

    from changedet.batch import run_batch

    _console_log()
    cfg = _load_config(args)
    record = run_batch(
        args.tiles,
        args.out,
        facilities=args.facilities,
        config=cfg,  # type: ignore[arg-type]
        scheduler=args.scheduler,
        workers=args.workers,
        chunk_parallel_min_chunks=args.chunk_parallel_min_chunks,
        progress=not args.quiet,
    )
    for tile_id, pair in record["pairs"].items():
        if pair["status"] == "failed":
            print(f"failed: {tile_id}: {pair.get('error', '')}")
    counts: dict[str, int] = {}
    for pair in record["pairs"].values():
        counts[pair["status"]] = counts.get(pair["status"], 0) + 1
    print(
        "changedet batch: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + f"; summary in {(Path(args.out) / 'summary').resolve()}"
    )
    return 1 if record["failed"] else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    import math

    from changedet.evaluate import evaluate_run, format_table

    scores = evaluate_run(args.detections, args.truth)
    if args.json:
        clean = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scores.items()
        }
        print(json.dumps(clean, indent=2, sort_keys=True))
    else:
        print(format_table(scores))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from changedet.manifest import verify_manifest

    report = verify_manifest(args.manifest, rerun=not args.no_rerun)
    for part in ("inputs", "outputs", "rerun"):
        for name, status in report.get(part, {}).items():
            if status != "ok" or args.verbose:
                print(f"{part}: {name}: {status}")
    print("verified: every hash matches" if report["ok"] else "NOT verified: see the lines above")
    return 0 if report["ok"] else 1


def _cmd_config(args: argparse.Namespace) -> int:
    from changedet.config import Config

    if args.template:
        print(Config.template())
        return 0
    cfg = Config.from_file(args.file) if args.file else Config()
    print(cfg.template() if not args.file else _dump(cfg))
    return 0


def _dump(cfg: object) -> str:
    import json

    from changedet.config import Config

    assert isinstance(cfg, Config)
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE`` (read by :func:`_load_config`)."""
    p.add_argument("--config", type=Path, help="a TOML/YAML/JSON config file")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one parameter, e.g. change.threshold=0.3",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``changedet`` command (also used to document it)."""
    parser = argparse.ArgumentParser(
        prog="changedet",
        description="Find new craters and structural damage near facilities in before/after imagery.",
    )
    parser.add_argument("--version", action="version", version=f"changedet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("sample", help="write synthetic sample sites with ground truth")
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder a site)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--size", type=int, default=1024, help="scene size in pixels (256 to 32768)")
    p.add_argument("--sites", type=int, default=1, help="number of sites")
    p.add_argument(
        "--preset",
        choices=["samples"],
        default=None,
        help="'samples' regenerates the shipped sample_tiles/ exactly (ignores --seed/--size/--sites)",
    )
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("demo", help="run the main job on a folder of sample sites")
    p.add_argument("--tiles", type=Path, default=Path("sample_tiles"), help="folder of sites")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument("--figures-only", action="store_true", help="only the before/after figures")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", help="run the pipeline on one before/after pair")
    p.add_argument("before", type=Path, help="the before raster (GeoTIFF/COG/JPEG 2000)")
    p.add_argument("after", type=Path, help="the after raster")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--footprints",
        type=Path,
        help="building footprints (GeoJSON/GeoPackage): damage per building, and the sun "
        "azimuth from their shadows where no tree shows it (one-band imagery)",
    )
    p.add_argument("--facilities", type=Path, help="facility list (GeoJSON/GeoPackage/CSV lon,lat)")
    p.add_argument(
        "--roads",
        type=Path,
        help="roads (GeoJSON/GeoPackage centre lines or polygons, e.g. OpenStreetMap highways): "
        "craters on them are labelled on=road; lines without a width_m/width attribute get "
        "craters.road_width_m",
    )
    _add_config_args(p)
    p.add_argument(
        "--sun-azimuth",
        type=float,
        help="sun azimuth of the after image, degrees from north (default: from its metadata, "
        "else estimated from tree shadows in RGB imagery)",
    )
    p.add_argument(
        "--sun-elevation",
        type=float,
        help="sun elevation of the after image, degrees (default: from its metadata, else "
        "unknown: the crater shading test then assumes a sun up to craters.max_sun_elevation_deg)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--scratch-dir",
        type=Path,
        help="folder for the run's temporary rasters (default: a hidden folder inside --out, "
        "removed at the end; up to 28 bytes a pixel for an RGB pair, before compression)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the results of a different run in --out"
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "batch", help="run every pair of a tile folder on a Dask cluster (resumable), one summary"
    )
    p.add_argument(
        "tiles",
        type=Path,
        help="tile folder (<site>/before.tif + after.tif, or <id>_pre.tif + <id>_post.tif) "
        "or a CSV with id,before,after[,footprints,facilities,roads,sun_azimuth,sun_elevation]",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (re-run to resume)")
    p.add_argument(
        "--facilities", type=Path, help="one facility list for all pairs (replaces per-site lists)"
    )
    p.add_argument(
        "--scheduler", help="address of a running dask.distributed scheduler, tcp://host:port"
    )
    p.add_argument(
        "--workers", type=int, help="local cluster: worker processes (default: one per core)"
    )
    p.add_argument(
        "--chunk-parallel-min-chunks",
        type=int,
        default=64,
        metavar="N",
        help="spread a pair chunk by chunk over the cluster from N Dask chunks (0: never)",
    )
    _add_config_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser("evaluate", help="score a run's detections against ground truth")
    p.add_argument("detections", type=Path, help="output folder of `changedet run`")
    p.add_argument("truth", type=Path, help="truth folder (e.g. sample_tiles/site_01/truth)")
    p.add_argument("--json", action="store_true", help="print one JSON object (NaN as null)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("verify", help="re-run a run from its manifest and compare every hash")
    p.add_argument("manifest", type=Path, help="OUT/manifest.json of a run")
    p.add_argument(
        "--no-rerun", action="store_true", help="only check the files against the hashes"
    )
    p.add_argument("--verbose", action="store_true", help="list every file, not only mismatches")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("config", help="print the configuration (defaults, or a file's)")
    p.add_argument("--template", action="store_true", help="every parameter, default and meaning")
    p.add_argument("file", nargs="?", type=Path, help="a TOML/YAML/JSON config file to check")
    p.set_defaults(func=_cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``changedet`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ChangedetError as exc:
        print(f"changedet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("changedet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
