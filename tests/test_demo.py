"""`make demo` on the shipped sample tiles: full output folders whose facility tables match the
ground truth, and whose figures list every true crater near a facility, except one known miss
of the crater detector (listed with its reason below)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import geopandas as gpd
import pytest

from changedet.demo import find_sites, run_demo
from changedet.evaluate import DAMAGED, TRUTH_ON, evaluate_run, match_craters
from changedet.report import facility_craters
from tests.conftest import SAMPLE_TILES

RINGS = (50, 100, 250)

# Known misses of the crater detector on the sample tiles, each with why (benchmarks/RESULTS.md,
# "Crater detection"). The tests below fail on any other mismatch, and also when one of these is
# fixed (then delete it here): the list can only be what the detector really does.
KNOWN_MISSED_CRATERS = {
    # 2.5 m crater on a road, ~5 px across, touching a car: found as a candidate but measured
    # at 1.9 m (too small for the shading test) with roundness 0.62 (the car lengthens the dark
    # blob), which alone puts its score at 0.49, under the 0.5 threshold, so it never reaches the
    # isolation test (craters.CraterParams.isolated_max_far_change) it would need as a bowl
    # under 5 px; looser rules admit 2 m rubble gaps.
    "site_03/F03: true crater C0003 (2.5 m) not detected",
}
# the same crater, as the facility table counts it (100-250 m from F03)
KNOWN_TABLE_MISMATCHES = {"site_03/F03 craters_within_250m: 6 found, 7 true"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_demo(SAMPLE_TILES, out)
    return out, printed.getvalue()


def _truth_facilities(site: Path) -> list[dict]:
    return json.loads((site / "truth" / "scene.json").read_text())["facilities"]


@pytest.mark.slow
def test_run_demo__full_output_folder_and_report_path_per_site(demo: tuple[Path, str]) -> None:
    out, printed = demo
    for site in find_sites(SAMPLE_TILES):
        folder = out / site.name
        for name in ("report.html", "results.gpkg", "manifest.json", "run.log"):
            assert (folder / name).is_file(), name
        assert f"report: {(folder / 'report.html').resolve()}" in printed
        facilities = gpd.read_file(site / "facilities.geojson")
        for fid in facilities["id"]:
            assert (folder / "figures" / f"facility_{fid}.png").is_file()


@pytest.mark.slow
def test_run_demo__facility_table_matches_truth(demo: tuple[Path, str]) -> None:
    out, _ = demo
    mismatches = []
    for site in find_sites(SAMPLE_TILES):
        table = gpd.read_file(out / site.name / "facilities.geojson").set_index("id")
        for truth in _truth_facilities(site):
            row = table.loc[truth["id"]]
            where = f"{site.name}/{truth['id']}"
            assert bool(row["in_scene"]) and bool(row["assessable"]), where
            for r in RINGS:
                key = f"craters_within_{r}m"
                if int(row[key]) != int(truth[key]):
                    mismatches.append(f"{where} {key}: {int(row[key])} found, {truth[key]} true")
            found = row["damage_class"] in DAMAGED
            if found != (truth["damage"] in DAMAGED):
                mismatches.append(
                    f"{where} damage: {row['damage_class']} found, {truth['damage']} true"
                )
    assert set(mismatches) == KNOWN_TABLE_MISMATCHES, "; ".join(mismatches)


@pytest.mark.slow
def test_run_demo__figures_list_every_true_crater_near_a_facility(
    demo: tuple[Path, str],
) -> None:
    out, _ = demo
    missing = []
    for site in find_sites(SAMPLE_TILES):
        folder = out / site.name
        craters = gpd.read_file(folder / "results.gpkg", layer="craters")
        facilities = gpd.read_file(folder / "results.gpkg", layer="facilities")
        new = craters[craters["new"].astype(str).str.lower() == "true"].reset_index(drop=True)
        truth = gpd.read_file(site / "truth" / "craters.geojson").to_crs(craters.crs)
        matched = {t: int(new["id"].iloc[d]) for d, t, _ in match_craters(new, truth)}
        page = (folder / "report.html").read_text()
        for _, fac in facilities.iterrows():
            listed = facility_craters(fac.geometry, craters, RINGS)
            block = re.search(
                rf'<table class="facility-craters" data-facility="{re.escape(fac["id"])}">'
                r"(.*?)</table>",
                page,
                re.S,
            )
            assert block, f"{site.name}/{fac['id']}: no crater table in report.html"
            in_page = {int(v) for v in re.findall(r"<tr><td class=\"num\">(\d+)</td>", block[1])}
            assert in_page == {int(v) for v in listed["id"]}
            near = truth.geometry.distance(fac.geometry) <= max(RINGS)
            for t in truth.index[near]:
                label = f"{site.name}/{fac['id']}: true crater {truth.loc[t, 'id']}"
                if t not in matched:
                    missing.append(f"{label} ({truth.loc[t, 'diameter_m']:.1f} m) not detected")
                elif matched[t] not in in_page:
                    missing.append(f"{label} detected as {matched[t]} but not listed")
    assert set(missing) == KNOWN_MISSED_CRATERS, "; ".join(missing)


@pytest.mark.slow
def test_run_demo__craters_say_what_they_lie_on(demo: tuple[Path, str]) -> None:
    # with the site's footprints and roads, each detected true crater is on what the truth says
    out, _ = demo
    names = {k: TRUTH_ON.get(k, k) for k in ("building", "road", "open")}
    pairs = []
    for site in find_sites(SAMPLE_TILES):
        craters = gpd.read_file(out / site.name / "results.gpkg", layer="craters")
        new = craters[craters["new"].astype(str).str.lower() == "true"].reset_index(drop=True)
        truth = gpd.read_file(site / "truth" / "craters.geojson").to_crs(craters.crs)
        for d, t, _ in match_craters(new, truth):
            pairs.append(
                (f"{site.name}/{truth.loc[t, 'id']}", new.loc[d, "on"], truth.loc[t, "on"])
            )
    assert len(pairs) >= 18 and {p[2] for p in pairs} == set(names)  # all three kinds
    wrong = [f"{w}: {got}, truth {names[true]}" for w, got, true in pairs if got != names[true]]
    assert not wrong, "; ".join(wrong)
    for site in find_sites(SAMPLE_TILES):  # as `changedet evaluate` says it
        assert evaluate_run(out / site.name, site / "truth")["crater_on_agreement"] == 1.0


@pytest.mark.slow
def test_run_demo__small_dark_blobs_on_roofs_are_counted_and_said(demo: tuple[Path, str]) -> None:
    # the sample sites' roofs carry water tanks: the ones the crater search took for small
    # dark bowls are not reported as craters, and run.log, report.html and the manifest say
    # how many were left out, and why
    out, _ = demo
    counts = {}
    for site in find_sites(SAMPLE_TILES):
        folder = out / site.name
        n = json.loads((folder / "manifest.json").read_text())["crater_roof_fixtures_dropped"]
        counts[site.name] = n
        said = f"craters: {n} dark round blob{'' if n == 1 else 's'} under 3 m inside"
        assert (said in (folder / "run.log").read_text()) == (n > 0), site.name
        row = f"{n} under 3 m across: roof fixtures or holes"
        assert (row in (folder / "report.html").read_text()) == (n > 0), site.name
        craters = gpd.read_file(folder / "results.gpkg", layer="craters")
        assert not ((craters["on"] == "building") & (craters["diameter_m"] < 3.0)).any()
    assert sum(counts.values()) > 0, counts
