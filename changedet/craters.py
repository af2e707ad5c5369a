"""Find new craters: round, dark depressions with a bright ejecta blanket, absent before.

How a crater looks in 0.3–1 m imagery, and the measurement that tests each trait:

* **a dark bowl** (shadowed walls, disturbed or moist soil) — a dark blob in the luminance,
  found with a scale-normalised Laplacian of Gaussian pyramid, ``σ = r / √2`` for rim radii
  ``r`` from ``min_diameter_m / 2`` to ``max_diameter_m / 2`` (``contrast``: bright ring minus
  dark interior, as a share of the scene's luminance range; ``weber``: the same as a share of
  the ring's brightness; ``snr``, the same over the background's standard deviation, is
  reported only: in built-up areas that deviation measures streets and roofs, not noise);
  blobs must stand out from the texture around them, within ~2.5 or ~5 radii, whichever is
  calmer (``min_prominence``); bright debris specks (ejecta blocks, fragments in rubble) do
  not count as texture around a bowl of 4 m or more that stays dark without them
  (``debris_width_m``); a blob against a shadow's edge or a wall, which stands out less from
  that step, is kept if it stands out a little (``weak_prominence``) and shows an ejecta apron
  all round but where the step covers it (``weak_ejecta_ramp``);
* **round, enclosed by a bright rim** — the dark-to-bright rim edge is found along 32 rays; a
  least-squares circle through the edges gives the centre, and the steepest dark-to-bright
  rise of the azimuthally averaged profile (corrected for blur) gives the radius
  (``diameter_m``: the edge of the dark bowl, which is what an analyst measures). ``roundness`` is the ratio
  of the Hessian's eigenvalues of the bowl at the crater's scale, with everything beyond 1.3 R
  replaced by the ring's mean so that a building or shadow beside a crater does not count (1 for
  a disc, ≈ 0 for an elongated shadow or a car); ``enclosure`` asks that the ring be brighter
  than the interior in 7 of its 8 sectors (a building shadow is open along its length);
* **a smooth bowl** — ``texture``, the bowl's standard deviation about its best-fitting plane
  (the shadowed-to-lit wall ramp taken out) over the contrast: a crater's bowl is a smooth
  depression, a dark gap in rubble or among roof clutter is strewn with bright pieces;
* **ejecta** — a bright irregular blanket 1–2 radii around the rim: ``ejecta`` compares the ring
  ``1.15–2 R`` with the background ``2.3–3 R``; soft evidence (old, asphalt or rubble-covered
  craters show little), but a ring darker than the background (a tree's or wall's cast
  shadow) counts against, except inside a building footprint whose roof broke all round
  (``surround_change``, with a before image): there ring and background both lie on rubble
  and broken walls, with no ground to show a blanket against. A small dark blob within ``2.5 R`` of a crater at least
  ``blanket_size_ratio`` times its size is a block or gap in that crater's ejecta, not a crater;
* **shaded like a depression** — with the sun azimuth given, the inner wall nearest the sun is
  in shadow and the far wall lit (a mound, tree or bush is the other way round; a flat cast
  shadow has no such dipole): ``shading`` in ``(-1, 1)``, positive for a depression, NaN when
  the sun is unknown (the test is skipped). With the elevation too, the dipole expected at
  that elevation is required, which rejects moved building and tree shadows;
* **bare soil, sunlit** (needs red, green and blue bands) — a tree crown or bush is a dark
  round blob too, but green: ``greenness``, the excess-green index of the bowl, counts against,
  and so does a crown right beside the blob on the sun's side (``sun_side_greenness``, with the
  sun azimuth): the blob is then that tree's shadow, moved with the sun between the dates;
  a cast shadow (of a building, tree or car, moved with the sun) is lit by the blue sky only and
  is bluer than the sunlit ground around it, while a crater's bowl is mostly sunlit soil:
  ``blueness``, the bowl's blue chromaticity minus the ring's, counts against;
* **new** — with a before image, the same rings measured there at the same place: an older
  crater is an enclosed dark bowl there too, not green (vegetation the blast removed is no
  older crater), not bluer than the ground around it (a cast shadow that lay there is no
  older crater) and *resembling the after image* (the correlation of the two within 2 R: a dark
  road crossing or a building's shadow where a crater now lies does not); when that weighted
  contrast is below ``max_persistence`` of the after contrast, the crater is ``new``; when a
  change map is given, the mean change score in the disc must also reach ``min_change_score``;
  and the ground around it (``1.15–2 R``, the ejecta blanket) must have changed clearly more
  than the pair's unchanged ground does (its mean ``|after − before|`` at least
  ``min_surround_change`` times the scene's median): a blast throws ejecta and debris over its surroundings, while a
  bush that dried or a dark object put down leaves them as they were;
* **not inside an intact roof** — with building footprints and a before image, a detection inside
  a footprint needs the roof around it to have changed (``surround_change``, the mean
  ``|after − before|`` in ``1.15–3 R``): a bomb that cratered a building broke it; a dark object
  on, or a hole in, a roof that is otherwise as it was is roof damage or clutter, which the damage
  stage judges. Without footprints (or without a before image) the test is skipped. Inside a
  footprint a crater must also span ``min_roof_diameter_m`` (3 m): a smaller dark round blob
  there is a roof fixture (a water tank and its shadow) or a hole;
* **an isolated fresh disturbance** — with a before image, an enclosed, round blob whose
  blanket (``1.15–2 R``) changed all round amid ground (``3–5 R``, ``far_change``) that did not
  (``isolated_max_far_change``) is the blast and nothing else: a dark gap in rubble lies in a
  wide field of change, a dark object set down leaves its surroundings as they were, a car
  that moved changes them along one axis only (and inside a building footprint such a blob is
  a hole in an intact roof: damage). A bowl under
  5 px across (a 1.5–2.5 m shell crater at 0.5 m) has no measurable wall shading, so the
  shading test cannot tell it from clutter: it is kept only when it is such a disturbance
  (without a before image such bowls are not searched). A larger bowl that is one needs only
  to be shaded like a depression, not the full expected dipole (a shallow bowl or an irregular
  floor weakens it).

The evidence is combined into ``score`` in [0, 1] (the product of the ramps in
:class:`CraterParams`: every trait must hold); detections with ``score >= score_threshold`` are returned.

Large scenes are processed tile by tile (runs of whole Dask chunks at least ``tile_px`` long,
or ``tile_px`` tiles of an in-memory array) with a halo derived from ``max_diameter_m`` and the
ground sample distance; a detection is kept only by the tile whose core holds its centre, and
every measurement is made relative to a scene pixel, so the result does not depend on the tiling
and a crater on a seam is found once.
Within a tile, candidates are refined and measured together, as arrays in batches of bounded
size (:func:`changedet._crater_measure.refine_all`, :func:`changedet._crater_measure.measure_all`),
so a tile's working set does not grow with the number of candidates; each is still measured in
its own window, with interpolation weights taken from offsets to its own pixel, so the numbers are
those of one-at-a-time measurement whichever tile holds it. The newness checks against the before
image live in :mod:`changedet._crater_newness`.

Examples
--------
>>> import numpy as np
>>> from changedet.testing import make_raster
>>> from changedet.craters import detect_craters
>>> yy, xx = np.mgrid[0:96, 0:96]
>>> rho = np.hypot(yy - 48, xx - 48)
>>> img = 100 + 40 * np.exp(-(((rho - 9) / 3) ** 2)) - 50 * (rho < 7)
>>> found = detect_craters(make_raster(img[None].astype("float32")))
>>> len(found), round(float(found.diameter_m[0]), 0), bool(found.newness_verified[0])
(1, 7.0, False)
"""

from __future__ import annotations

import itertools
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
from scipy import ndimage

from changedet._crater_measure import (
    WINDOW_RADII,
    annulus_means,
    bowl_gradient,
    measure_all,
    ramps,
    refine_all,
)
from changedet._crater_newness import persistence
from changedet._crater_scale import (
    LOCAL_TRUNCATE,
    TRUNCATE,
    Scales,
    extend_down,
    make_scales,
    suppress,
)
from changedet._memory import compact_values
from changedet.change import gsd_of
from changedet.errors import BandMismatchError, ChangedetError

__all__ = ["COLUMNS", "CraterParams", "describe_calibration", "detect_craters", "road_areas"]

#: Columns of the result, in order (besides ``geometry``).
COLUMNS = (
    "id",
    "x",
    "y",
    "diameter_m",
    "score",
    "contrast",
    "weber",
    "snr",
    "enclosure",
    "roundness",
    "texture",
    "ring_texture",
    "ejecta",
    "shading",
    "greenness",
    "sun_side_greenness",
    "blueness",
    "persistence",
    "surround_change",
    "far_change",
    "change",
    "new",
    "newness_verified",
    "on",
)
#: Red, green and blue band indices when ``CraterParams.rgb_bands`` is ``None`` and nothing
#: else is known about the bands.
DEFAULT_RGB_BANDS = (0, 1, 2)

#: The smallest crater diameter, in pixels, whose shape and shading can be judged: a bowl of 4 px
#: has 3-4 pixels on each side of its centre, too few for the roundness and shading tests (on
#: the dev split 3 of 4 such detections were dark gaps in rubble or clutter).
_MIN_DIAMETER_PX = 5.0

#: The smallest crater diameter, in pixels, searched at all: with a before image, bowls of
#: 3-5 px are kept only as isolated fresh disturbances (``CraterParams.isolated_max_far_change``).
_MIN_SMALL_DIAMETER_PX = 3.0

#: Least diameter (px) of a bowl that :attr:`CraterParams.shaded_bowl` may vouch for: its
#: dipole measured over fewer pixels can be a chance gradient (at 5 px false craters came).
_SHADED_BOWL_MIN_PX = 8.0

#: A second hypothesis (``CraterParams.nested_radii``) whose refined radius is at least this
#: share of its parent's found the parent's circle again: it is dropped as a duplicate.
_NESTED_MAX_SHARE = 0.8


@dataclass(frozen=True)
class CraterParams:
    """Parameters of crater detection. Sizes in metres; intensities as shares of the scene range.

    The scene range is the 2–98 % percentile span of the after image's luminance (band mean),
    taken on a regular sample of the whole scene, so thresholds do not depend on sensor gain.
    Each ``*_ramp`` is ``(lo, hi)``: evidence scores 0 at or below ``lo`` and 1 at or above
    ``hi``.

    Attributes
    ----------
    min_diameter_m, max_diameter_m
        Rim-to-rim diameters searched (1.5–25 m: mortar and artillery to large aerial bombs).
        The bowl tests need 5 pixels across (2.5 m at 0.5 m, 1.5 m at 0.3 m): in fewer, the
        pixel grid and the optics average the lit and shadowed walls together, so shading
        cannot be judged. Smaller craters, down to 3 pixels, are searched only with a
        before image and kept only as *isolated fresh* disturbances (see
        ``isolated_max_far_change``); without one they are skipped.
    scales_per_octave
        Pyramid levels per doubling of the radius.
    min_response
        Least normalised LoG response of a candidate (a share of the scene range); kept low,
        the measurements decide.
    min_prominence
        Least ratio of a candidate's LoG response to the standard deviation of the luminance in
        a Gaussian window of twice its radius or, for radii of at least 3 px, of σ = its radius
        (cut at 2.5 radii: bowl, rim and ejecta apron), whichever is smaller: the dark blob must stand out from the texture
        around it, and a building, edge or shadow that reaches only one of the two windows
        does not make a crater "not prominent".
    weak_prominence, weak_ejecta_ramp
        A blob that fails ``min_prominence`` but reaches ``weak_prominence`` (None: off) is a
        candidate too, on one more condition: an ejecta apron all round. In each of 8 sectors
        the ring (1.15–2 R) is compared with the ground beyond (2.3–3 R); the median of the
        8 brightenings, over the bowl's depth, must reach ``weak_ejecta_ramp`` (the score is
        scaled by that ramp). A crater dug against a shadow's edge, a wall or a kerb stands
        out less from that step than from open ground, but its apron of bright, freshly
        thrown soil and debris still sets it apart on the sides the step does not cover; the
        dark gaps between clutter (a new car's shadow on a road, a gap amid rubble) have none,
        and a bright neighbour on one side (a roof fixture, a lit wall) is not an apron.
    debris_width_m
        Bright specks narrower than this (ejecta blocks and the debris a crater field strews
        over the ground, bright fragments in rubble) are not texture a crater of at least
        ``debris_min_diameter_m`` must stand out from. The luminance is also opened (grey-scale
        opening with the widest odd square of pixels not wider than this; none where that is a
        single pixel), which takes such specks out and keeps dark features. A blob that fails
        the ``min_prominence`` test passes it when it stands out from the opened luminance's
        texture and keeps at least half its LoG response there: a dark bowl stays dark
        without the specks, a gap among them does not. 0 turns it off.
    debris_min_diameter_m
        Least diameter of the blobs judged against the opened luminance. Smaller ones are
        judged against the luminance itself: at their size, bright specks are no longer
        clutter around a blob but parts of one object (a car's bonnet and roof on either side
        of its dark windscreen).
    contrast_ramp
        Ring-minus-interior darkness (share of the scene range). A fresh crater is typically
        0.1–0.4 of the range darker than its ejecta.
    weber_ramp
        The same darkness as a share of the ring's brightness, ``(ring − interior) / ring``
        (Weber contrast, independent of gain and of the scene's range): a shadowed, disturbed
        bowl is 25–60 % darker than its ejecta; ground texture and small stones a few per cent.
    enclosure_ramp
        Second-weakest ring sector's darkness step over the mean step: a crater's ring is
        brighter than its interior all around; a shadow is open along its length.
    roundness_ramp
        Hessian eigenvalue ratio (small/large) of the bowl at the crater's scale, measured with
        everything beyond 1.3 R replaced by the ring's mean (a building or shadow beside a
        crater does not make it elongated): a roughly circular bowl reaches 0.6–1, a car, a
        strip of shadow or a gap between roofs 0–0.4.
    texture_ramp
        Standard deviation of the bowl (``ρ < 0.75 R``) about the plane that best fits it (the
        brightness ramp from the shadowed to the lit wall taken out), over the ring-minus-interior
        contrast: a bowl is a smooth depression (0.05–0.2), while a dark gap in rubble, among
        roof clutter or tree crowns holds bright pieces (0.3–1). The score is scaled by
        ``1 - ramp(texture)``; bowls with fewer than 6 interior pixels (under about 3.7 px
        across) are not tested.
    ejecta_ramp, ejecta_weight
        ``(ring − background) / (ring − interior)``: ejecta brighten the ring above the
        background (fresh craters: 0.1–0.3); a shadow cast by a tree or wall darkens it (< 0).
        Soft evidence: it scales the score by ``1 - ejecta_weight`` (none or negative) to 1.
        Not held against a detection inside a building footprint whose surroundings changed
        (with a before image: the penalty fades out along ``roof_change_ramp``), where the
        ring and the background beyond it both lie on rubble and broken walls.
    shading_ramp
        Depression consistency when the sun azimuth *and elevation* are known, as shares of
        the dipole expected of a bowl, ``0.6 cos(elevation)`` (the horizontal part of the sun
        vector; 0.6 holds for depth/diameter ≈ 0.25). A flat dark patch or a cast shadow (no
        dipole) scores 0, a mound (opposite dipole) 0; a bowl shows at least 40 % of the
        expected dipole (shallower craters, blur), a dark patch with a chance brightness gradient
        rarely. Under a very low sun (< 25°) the bowl fills with shadow and loses its dipole:
        such craters are missed rather than guessed. An isolated fresh disturbance (see
        ``isolated_max_far_change``) needs only a positive dipole, a clear bowl (see
        ``clear_bowl``) a smaller one.
    clear_bowl, clear_bowl_shading_share
        With both sun angles known: a bowl whose shape leaves little doubt, ring brighter than
        the floor all round (``enclosure`` at least ``clear_bowl[0]``), round (``roundness``
        at least ``clear_bowl[1]``) and smooth-floored (``texture`` at most
        ``clear_bowl[2]``), needs only ``clear_bowl_shading_share`` of ``shading_ramp``'s
        dipole. The bowl model's ``0.6 cos(elevation)`` over-predicts the dipole of small
        bowls (the craters found measure 0.79 of it at 4–10 px, 0.87–0.89 above) and under
        high suns (0.54–0.75 above 55°), where the walls' shading shrinks to a few grey
        levels; a dark object or patch that shape would need is rarer than such a crater. A
        dipole of the wrong sign (a mound, a tree) still scores 0. Not applied with the
        elevation unknown: the expected dipole is then already that of the highest plausible
        sun or the scene's own calibration. ``clear_bowl_shading_share = 1`` turns it off.
    nested_radii, nested_bowl
        A crater in the rubble of a collapsed building, or beside a dark shadow, merges with
        it into one larger dark blob: the LoG responds most at the blob's scale and the radius
        fit finds the blob's edge, not the bowl's rim. Every candidate is therefore also
        refined from these shares of its radius (where that start is still a bowl judged by
        shape, 5 px across), started at its centre and, where that lies off the centre (by
        more than 0.2 of its radius), at its darkest point within 0.8 of its radius (a bowl is
        the darkest part of such a blob, its shadowed wall darkest of all; smoothed at the
        smallest bowl's scale, 2 px). A circle so found that is not its parent's again (under
        0.8 of its radius) is measured as a second hypothesis. It must be round and smooth-floored
        beyond doubt, ``roundness`` at least ``nested_bowl[0]`` and ``texture`` at most
        ``nested_bowl[1]``: a patch between fragments of rubble is dark and roundish too, but
        rough. Of overlapping hypotheses the stronger is kept. ``()`` turns it off.
    shaded_bowl
        With both sun angles and a before image: a bowl 8 px or more across whose walls show
        the full dipole the sun predicts (``shading`` at least ``shading_ramp[1]`` of it) and
        whose floor is smooth (``texture`` at most ``shaded_bowl[0]``) is a depression beyond
        doubt: a flat dark patch or a cast shadow has no dipole, a roof or a tree (a mound)
        the opposite one, rubble a rough floor. Its ``enclosure`` and ``ejecta`` are then not
        held against it, and its roundness ramp starts at ``shaded_bowl[1]`` instead of
        ``roundness_ramp[0]``: a bowl beside dark rubble, a collapsed roof or a shadow has no
        bright ring or ejecta on that side, and the dark mass touching its rim skews its
        shape. It must still pass every test that can rule a blob out (roundness above
        ``roundness_ramp[0]``, any enclosure), and be new with its surroundings changed
        (``min_surround_change``): without a before image, a dark car or a shadow straddling
        the edge of a road or a roof shows such a dipole too, and nothing tells it from a
        bowl. ``shaded_bowl[0] = 0`` turns it off.
    max_sun_elevation_deg
        With the azimuth known but not the elevation, ``shading_ramp`` applies to the dipole
        expected under a sun this high: the weakest shading a bowl can show at any plausible
        elevation (70°: higher suns are rare in optical satellite imagery, taken mostly around
        10:30 local time; a bowl under a higher one is nearly unshaded). A flat dark patch or a
        cast shadow still scores 0. :func:`changedet.pipeline.run_pair` lowers it to the
        highest the sun ever stands at the scene's latitude where that is lower (63° at 50° N,
        :func:`changedet.sun.highest_sun_elevation`), and with the acquisition date to the
        highest it stands that day at the azimuth used
        (:func:`changedet.sun.sun_elevation_at_azimuth`). Without the azimuth the test is skipped
        (:func:`changedet.sun.resolve_sun` estimates it from tree shadows when it can).
    calibrate_shading
        With the azimuth known but not the elevation, and a before image: the scene's own
        isolated fresh disturbances of 5 px and more (craters whatever their shading, see
        ``isolated_max_far_change``) show the dipole its craters have under this sun. The
        median of their ``shading`` (at least the one ``max_sun_elevation_deg`` gives, at most
        0.6) then replaces the expected dipole of ``shading_ramp`` for every other detection
        of the scene: all craters of one image share one sun. Without such a crater the
        assumption stays. The value used is in the result's
        ``attrs["shading_calibration"]``.
    azimuth_from_craters
        With a before image but no sun azimuth (one-band imagery without metadata, or no
        trees to read it from): the scene's isolated fresh disturbances of 5 px and more are
        craters whatever their shading, and a bowl's wall nearest the sun is its dark one. The
        mean direction from their lit to their shadowed side is taken for the azimuth, and the
        scene is searched again with it (and the elevation unknown, so ``calibrate_shading``
        applies); the crater stage then runs twice. Without such a crater the azimuth stays
        unknown. What was found is in the result's ``attrs["sun_from_craters"]``.
    score_threshold
        Least ``score`` of a returned detection.
    max_persistence
        With a before image: a crater is ``new`` when the before image's ring-minus-interior
        contrast at the same place, weighted by its enclosure, by ``1 - ramp(greenness)`` and by
        the correlation of the before with the after image within 2 R (an older crater looks
        the same), is below this share of the after image's.
    persistence_search
        The before image is searched for that contrast at the same radius within
        ``max(1 px, persistence_search × R)`` of the centre (a 3 × 3 grid of offsets), so
        residual misregistration or a shadow that moved with the sun does not read as new.
    min_surround_change
        With a before image: for ``new``, the least ratio of the mean ``|after − before|`` in
        ``1.15–2 R`` (the continuous ejecta blanket) to the scene's median ``|after − before|``
        (on a regular sample of the whole pair: the noise, residual misregistration and
        radiometric difference of unchanged ground), the before matched to the after on the
        half of the pair that matches best (see ``_before_match``: so that neither a scene
        whose range the damage widened nor one whose shadows the sun lengthened looks changed
        everywhere). A crater's blast and ejecta change its surroundings several times that
        level (5.5–15 times, 5th to 90th percentile, over the 480 craters of the synthetic dev
        and ``suns`` evaluation scenes); a bush that dried or greened, or a dark object set
        down on unchanged ground, leaves most of them at the level.
    min_change_score
        With a change map: the least mean change ``score`` in the disc (1.5 R) for ``new``. A
        new crater changes its whole disc (0.25–0.5); a shadow that moved with the sun, or a
        roof object's, changes only part of it (about 0.1–0.15).
    vegetation_ramp
        Excess-green index ``(2G − R − B) / (R + G + B)`` of the bowl (``ρ < 0.75 R``): a tree
        crown or bush is a dark round blob too, but green (leaves reflect green more than red
        and blue: 0.15–0.45 for foliage, 0.2–0.3 for grass), while a crater's bowl is bare,
        disturbed soil (about 0; dry soil is reddish). The after blob's score is scaled by
        ``1 - ramp(greenness)``; in the before image a green blob is vegetation, not an older
        crater, so it does not count towards ``persistence`` (craters blasted where a tree stood
        stay ``new``). With the sun azimuth, the same ramp applies to ``sun_side_greenness``, the
        excess-green index of the ring 0.8–1.5 R in the eighth facing the sun or either
        neighbour (the greenest): a dark round blob with a tree crown right beside it on the
        sun's side is that tree's shadow, which moves with the sun between two dates and so
        looks new; a crater's sun side is ejecta. Needs the red, green and blue bands; skipped
        for fewer than 3 bands.
    shadow_ramp
        Blue shift of the bowl, ``b(interior) − b(ring)`` with the blue chromaticity
        ``b = B / (R + G + B)``: a cast shadow is lit only by the blue sky, so it is bluer than
        the sunlit ground around it (0.04–0.1 on soil); a crater's bowl is mostly sunlit,
        disturbed soil with a small shadowed wall (within ±0.02). Moved building, tree and car
        shadows are dark, round enough and new, but blue: the score is scaled by
        ``1 - ramp(blueness)``. In the before image the same test tells a shadow that lay where
        the crater now is from an older crater: it does not count towards ``persistence``.
        Needs the red, green and blue bands.
    rgb_bands
        Indices of the red, green and blue bands (0-based). ``None``: the bands
        :func:`changedet.pipeline.run_pair` finds labelled red, green and blue in the after file
        (:func:`changedet.io.rgb_band_indices`: 2, 1, 0 in a blue-green-red-NIR file), else the
        first three.
    roof_change_ramp
        With footprints and a before image: a detection inside a building footprint needs its
        surroundings (``1.15–3 R``) to have changed, ``surround_change``: the mean
        ``|after − before|`` there as a share of the scene range. A bomb that cratered a
        building broke its roof all around (0.2–0.4); a dark object on, or a hole in, an intact
        roof leaves the roof around as it was (0–0.1, noise and residual misregistration): that
        is roof damage or clutter, not a crater. The score is scaled by ``ramp(surround_change)``.
    isolated_max_far_change, isolated_min_enclosure
        With a before image: an *isolated fresh disturbance*, the blast all that changed
        there. Its ring is brighter than its interior all round (``enclosure`` at least
        ``isolated_min_enclosure``); it is round (at least the top of ``roundness_ramp``); its
        ejecta blanket (1.15–2 R) changed all round, in 7 of its 8 sectors at least
        ``min_surround_change`` times the pair's no-change level (bright or dark ejecta alike);
        and the ground beyond (3–5 R, ``far_change``, in the same units) changed at most
        ``isolated_max_far_change`` times it: all of it (its mean) for a bowl under 5 px, most
        of it (the median of its 8 sectors) for a larger one, whose measured shape and shading
        are further evidence, so that a building's shadow that moved with the sun, or a car,
        on one side does not count. A bowl under 5 px across is
        kept only if it is one (its shading cannot be measured: the pixel grid and the optics
        average the lit and shadowed walls together); a larger one that is one needs only to be
        shaded like a depression (``shading`` > 0), not the dipole of ``shading_ramp`` (a
        shallow bowl or an irregular floor weakens it). A shell crater on a road or open ground
        is such a disturbance; a dark gap in rubble lies in a wider field of change, a dark
        object set down leaves the blanket as it was, and a car that moved or a shadow that
        moved with the sun changes the ground along one side or one axis only.
        Not inside a building footprint (when footprints are given): a blob amid a roof that
        did not change is a hole in it, which is damage (see ``roof_change_ramp``).
    min_roof_diameter_m
        Least diameter of a crater whose centre lies inside a building footprint (when
        footprints are given). Roofs carry dark round fixtures (water tanks of 1–2 m, whose
        shadow on the roof makes a blob of 2–3 m that moves with the sun), vents, stairwell
        shadows, and the holes a small munition punches; a bowl crater inside a footprint is
        one where the building came down, and the damage stage judges roofs. 0 turns the rule
        off.
    blanket_size_ratio
        A detection whose centre lies within ``2.5 R`` (the ejecta blanket: continuous to about
        2 R, blocks and gaps beyond) of one at least this many times its radius is a block or a
        gap in that ejecta, and is dropped (0 turns the rule off).
    min_valid
        Least share of valid (non-NaN) pixels within 3 R of a detection.
    road_width_m
        Width, metres, given to road centre lines that carry neither a ``width_m`` / ``width``
        attribute nor an OpenStreetMap ``highway`` class of known typical width (see
        :func:`road_areas`), when roads are given: a detection whose centre lies on a road has
        ``on="road"``. 7 m is a two-lane street with its kerbs.
    tile_px
        Least tile size, px: in-memory arrays are cut into such tiles, Dask arrays into runs of
        whole chunks at least this long on each axis. Each tile is read with a halo of about
        ``max_diameter_m`` (≈ 210 px at 0.5 m) whose cost does not shrink with the tile, so
        small tiles cost CPU, and large ones memory (one tile per core is in flight; its seven
        input maps and float64 working arrays). The result does not depend on it. Measured on
        an 8192² pair, 2 cores: 1024 gives a run peak of 1.10 GB and a crater stage of 69 s,
        2048 1.45 GB and 47 s (the whole run 221 s against 198 s). 1024 keeps a run under
        1.5 GB; 2048 is faster where memory is plentiful.
    """

    min_diameter_m: float = 1.5
    max_diameter_m: float = 25.0
    scales_per_octave: int = 3
    min_response: float = 0.015
    min_prominence: float = 1.1
    weak_prominence: float | None = 0.95
    weak_ejecta_ramp: tuple[float, float] = (0.25, 0.4)
    debris_width_m: float = 1.5
    debris_min_diameter_m: float = 4.0
    contrast_ramp: tuple[float, float] = (0.03, 0.10)
    weber_ramp: tuple[float, float] = (0.08, 0.25)
    enclosure_ramp: tuple[float, float] = (0.0, 0.4)
    roundness_ramp: tuple[float, float] = (0.5, 0.75)
    texture_ramp: tuple[float, float] = (0.25, 0.45)
    ejecta_ramp: tuple[float, float] = (-0.1, 0.1)
    ejecta_weight: float = 0.5
    shading_ramp: tuple[float, float] = (0.4, 0.7)
    clear_bowl: tuple[float, float, float] = (0.85, 0.85, 0.12)
    clear_bowl_shading_share: float = 0.5
    nested_radii: tuple[float, ...] = (0.5, 0.7)
    nested_bowl: tuple[float, float] = (0.75, 0.12)
    shaded_bowl: tuple[float, float] = (0.2, 0.3)
    max_sun_elevation_deg: float = 70.0
    calibrate_shading: bool = True
    azimuth_from_craters: bool = True
    score_threshold: float = 0.5
    max_persistence: float = 0.5
    persistence_search: float = 0.25
    min_change_score: float = 0.2
    min_surround_change: float = 2.5
    vegetation_ramp: tuple[float, float] = (0.06, 0.14)
    shadow_ramp: tuple[float, float] = (0.025, 0.05)
    rgb_bands: tuple[int, int, int] | None = None
    roof_change_ramp: tuple[float, float] = (0.08, 0.15)
    min_roof_diameter_m: float = 3.0
    isolated_max_far_change: float = 2.5
    isolated_min_enclosure: float = 0.75
    blanket_size_ratio: float = 3.0
    min_valid: float = 0.8
    road_width_m: float = 7.0
    tile_px: int = 1024

    def __post_init__(self) -> None:
        if not 0 < self.min_diameter_m < self.max_diameter_m:
            raise ValueError(
                f"CraterParams: need 0 < min_diameter_m < max_diameter_m, got "
                f"{self.min_diameter_m} and {self.max_diameter_m} (metres); swap or fix them"
            )
        for name in (
            "weak_ejecta",
            "contrast",
            "weber",
            "enclosure",
            "roundness",
            "texture",
            "ejecta",
            "shading",
            "vegetation",
            "shadow",
            "roof_change",
        ):
            lo, hi = getattr(self, name + "_ramp")
            if not lo < hi:
                raise ValueError(f"CraterParams: {name}_ramp must be (lo, hi) with lo < hi")
        if not 0 < self.clear_bowl_shading_share <= 1 or len(self.clear_bowl) != 3:
            raise ValueError(
                "CraterParams: clear_bowl must be (enclosure, roundness, texture) and "
                f"clear_bowl_shading_share lie in (0, 1], not {self.clear_bowl_shading_share}"
            )
        if not all(0 < share < 1 for share in self.nested_radii) or len(self.nested_bowl) != 2:
            raise ValueError(
                "CraterParams: nested_radii must be shares in (0, 1) of a candidate's radius "
                f"(not {self.nested_radii}) and nested_bowl (roundness, texture)"
            )
        tex_s, rnd_s = self.shaded_bowl
        if not (tex_s >= 0 and 0 <= rnd_s < self.roundness_ramp[1]):
            raise ValueError(
                "CraterParams: shaded_bowl must be (texture >= 0, roundness in "
                f"[0, roundness_ramp[1])), not {self.shaded_bowl}"
            )
        if not 0 < self.max_sun_elevation_deg < 90:
            raise ValueError(
                f"CraterParams: max_sun_elevation_deg must lie in (0, 90), "
                f"not {self.max_sun_elevation_deg}"
            )
        if not 0 <= self.score_threshold <= 1 or not 0 <= self.ejecta_weight <= 1:
            raise ValueError("CraterParams: score_threshold and ejecta_weight must lie in [0, 1]")
        if self.debris_width_m < 0 or self.debris_min_diameter_m < 0:
            raise ValueError(
                "CraterParams: debris_width_m and debris_min_diameter_m must be >= 0 (metres)"
            )
        if not self.road_width_m > 0:
            raise ValueError(
                f"CraterParams: road_width_m must be > 0 metres, not {self.road_width_m}"
            )
        if self.weak_prominence is not None and not 0 < self.weak_prominence < self.min_prominence:
            raise ValueError(
                "CraterParams: weak_prominence must be None or lie in (0, min_prominence), "
                f"not {self.weak_prominence}"
            )
        if self.scales_per_octave < 1 or self.tile_px < 64:
            raise ValueError("CraterParams: scales_per_octave >= 1 and tile_px >= 64 required")


def _luminance(raster: xr.DataArray, name: str) -> xr.DataArray:
    if tuple(raster.dims) != ("band", "y", "x"):
        raise ChangedetError(name, f"has dims {tuple(raster.dims)}", "Pass a (band, y, x) raster.")
    return raster.astype("float32").mean("band", skipna=False)


def _greenness(raster: xr.DataArray, bands: tuple[int, int, int]) -> xr.DataArray | None:
    """Excess-green index ``(2G − R − B) / (R + G + B)`` (NaN where the sum is not positive)."""
    if raster.sizes["band"] < 3:
        return None
    if max(bands) >= raster.sizes["band"] or min(bands) < 0:
        raise ValueError(
            f"CraterParams.rgb_bands {bands} do not exist in a {raster.sizes['band']}-band raster"
        )
    r, g, b = (raster.isel(band=i).astype("float32") for i in bands)
    total = r + g + b
    return (2 * g - r - b) / total.where(total > 0)


def _blue_share(raster: xr.DataArray, bands: tuple[int, int, int]) -> xr.DataArray | None:
    """Blue chromaticity ``B / (R + G + B)`` (NaN where the sum is not positive)."""
    if raster.sizes["band"] < 3:
        return None
    r, g, b = (raster.isel(band=i).astype("float32") for i in bands)
    total = r + g + b
    return b / total.where(total > 0)


def _range_stats(lum: xr.DataArray) -> tuple[float, float, float]:
    """``(p2, range, median)`` of a regular sample (the same for any chunking)."""
    ny, nx = lum.shape
    step = max(1, math.ceil(math.sqrt(ny * nx / 250_000)))
    sample = compact_values(lum.data[::step, ::step])  # copied per chunk: no chunk kept
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0, 0.0
    p2, p98, med = np.percentile(sample, [2, 98, 50])
    return float(p2), float(max(p98 - p2, 1e-6 * max(abs(p98), 1.0), 1e-12)), float(med)


#: least-squares refits of the before-to-after luminance match (see :func:`_before_match`)
MATCH_ROUNDS = 5


def _before_match(
    after_l: xr.DataArray,
    before_l: xr.DataArray,
    stats_a: tuple[float, float, float],
    stats_b: tuple[float, float, float],
) -> tuple[float, float, float | None]:
    """``(gain, offset, level)``: the before luminance in the after's units, and their difference.

    On :func:`_range_stats`' sample of both images (each in units of its own range), the
    before is matched to the after by its median and interquartile range, then refitted by
    least squares on the half of the sample that matches best (``MATCH_ROUNDS`` times): the
    two dates' shares of shadow differ with the sun (a lower sun, more and longer shadows),
    which moves the quantiles of one image against the other's, while the sunlit ground that
    did not change lies on one line. ``level`` is the median ``|after − (gain · before +
    offset)|``: the pair's noise, residual misregistration and radiometric difference, what
    "the ground did not change" looks like (None when unknown).
    """
    ny, nx = after_l.shape
    step = max(1, math.ceil(math.sqrt(ny * nx / 250_000)))
    # copied per chunk: a strided view would keep each whole chunk in memory
    a = (compact_values(after_l.data[::step, ::step]).astype(np.float64) - stats_a[0]) / stats_a[1]
    b = (compact_values(before_l.data[::step, ::step]).astype(np.float64) - stats_b[0]) / stats_b[1]
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 100:
        return 1.0, 0.0, None
    a, b = a[ok], b[ok]
    qa, qb = np.percentile(a, [25, 50, 75]), np.percentile(b, [25, 50, 75])
    gain = float((qa[2] - qa[0]) / (qb[2] - qb[0])) if qb[2] > qb[0] else 1.0
    offset = float(qa[1] - gain * qb[1])
    for _ in range(MATCH_ROUNDS):
        res = np.abs(a - (gain * b + offset))
        best = res <= np.median(res)
        if np.ptp(b[best]) <= 0:
            break
        gain, offset = (float(v) for v in np.polyfit(b[best], a[best], 1))
    level = float(np.median(np.abs(a - (gain * b + offset))))
    return gain, offset, level if level > 0 else None


def _axis_step(coord: np.ndarray, fallback: float) -> float:
    return float(coord[1] - coord[0]) if len(coord) > 1 else fallback


def _tiles(n: int, chunks: tuple[int, ...] | None, tile: int) -> list[tuple[int, int]]:
    """Tile edges along one axis: ``tile`` px, or runs of Dask chunks of at least ``tile`` px.

    Chunks are merged (not cut) so a tile reads whole chunks; a tile's halo costs the same
    whatever its size, so small chunks would multiply it.

    Examples
    --------
    >>> _tiles(5000, (1024,) * 4 + (904,), 2048)
    [(0, 2048), (2048, 4096), (4096, 5000)]
    """
    if chunks is None:
        sizes = [tile] * math.ceil(n / tile)
    else:
        sizes, run = [], 0
        for c in chunks:
            run += c
            if run >= tile:
                sizes.append(run)
                run = 0
        if run:
            sizes.append(run)
    edges = np.concatenate([[0], np.cumsum(sizes)])
    return [(int(a), int(min(b, n))) for a, b in itertools.pairwise(edges) if a < n]


def _file_readers(
    after: xr.DataArray, before: xr.DataArray | None, change_map: xr.DataArray | None
) -> list[Any] | None:
    """Windowed readers of the lazy ``(band, y, x)`` after and before images and the ``(y, x)``
    change map, each returning ``(band, rows, cols)`` float32: from its file, or from its chunks
    when it is held in memory (persisted); ``None`` when any input is neither."""
    from changedet.io import window_reader

    arrays = [after, before, change_map]
    expected = [("band", "y", "x"), ("band", "y", "x"), ("y", "x")]
    readers = []
    for arr, dims in zip(arrays, expected, strict=True):
        if arr is None:
            readers.append(None)
            continue
        if tuple(arr.dims) != dims or not hasattr(arr.data, "dask"):
            return None
        read = window_reader(arr.data) or _persisted_reader(arr.data)
        if read is None:
            return None
        readers.append(read)
    return readers


def _persisted_reader(data: Any) -> Any:
    """A window reader of a Dask array whose chunks are all in memory (``persist()``), else
    ``None``: slicing it copies from those chunks and computes nothing again."""
    graph = dict(data.__dask_graph__())
    if not graph or not all(isinstance(v, np.ndarray) for v in graph.values()):
        return None

    def read(row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        window = np.asarray(data[..., row0:row1, col0:col1].compute(), np.float32)
        return window if window.ndim == 3 else window[None]

    return read


def _detect_tile_from_files(
    readers: list[Any],
    window: tuple[int, int, int, int],
    rgb_bands: tuple[int, int, int],
    **tile_kw: Any,
) -> list[dict[str, Any]]:
    """:func:`_detect_tile` on one tile whose inputs it reads itself from their files: the same
    values as the Dask slices (luminance, greenness and blue share computed by the same
    functions), but no tile waits for chunks that its neighbours share. With Dask slices, the
    chunks under a tile's halo stay in memory until the next row of tiles has read them: a
    row of chunks of seven maps, which grew with the scene's width (2.8 GB at 32768²)."""
    y0, y1, x0, x1 = window
    read_a, read_b, read_c = readers
    after = xr.DataArray(read_a(y0, y1, x0, x1), dims=("band", "y", "x"))
    before = None if read_b is None else xr.DataArray(read_b(y0, y1, x0, x1), dims=after.dims)
    maps: list[Any] = [_luminance(after, "after").values]
    maps.append(None if before is None else _luminance(before, "before").values)
    maps.append(None if read_c is None else read_c(y0, y1, x0, x1)[0])
    for image in (after, before):
        g = None if image is None else _greenness(image, rgb_bands)
        maps.append(None if g is None else g.values)
    for image in (after, before):
        b = None if image is None else _blue_share(image, rgb_bands)
        maps.append(None if b is None else b.values)
    # the order of _detect_tile: after, before, change, green a/b, blue a/b
    after_l, before_l, change, green_a, green_b, blue_a, blue_b = maps
    return _detect_tile(after_l, before_l, change, green_a, green_b, blue_a, blue_b, **tile_kw)


def _detect_tile(
    after_l: np.ndarray,
    before_l: np.ndarray | None,
    change: np.ndarray | None,
    green_a: np.ndarray | None,
    green_b: np.ndarray | None,
    blue_a: np.ndarray | None,
    blue_b: np.ndarray | None,
    *,
    origin: tuple[int, int],
    core: tuple[int, int, int, int],
    reach_px: float,
    stats_a: tuple[float, float, float],
    stats_b: tuple[float, float, float] | None,
    scales: Scales,
    params: CraterParams,
    sun_px: tuple[float, float] | None,
    expected_dipole: float,
    d_px: tuple[float, float],
    match_b: tuple[float, float, float | None] = (1.0, 0.0, None),
    roofs: np.ndarray | None = None,
    geo: tuple[float, float, float, float] = (0.0, 1.0, 0.0, -1.0),
    calibrate: bool = False,
    find_sun: bool = False,
    opening_px: int = 0,
    debris_min_radius_px: float = 0.0,
    clear_bowls: bool = False,
) -> list[dict[str, Any]]:
    """Detections of one tile whose centre lies in its core; global integer pixel + offsets.

    With ``calibrate``, every bowl of 5 px and more is tested for isolation (the scene-level
    shading calibration of :func:`detect_craters` reads it), and each record carries
    ``_isolated`` and ``_shading_part`` (the shading factor in its score, NaN where none was
    applied). With ``find_sun`` (no sun), the same isolation test, and the records of isolated
    bowls of 5 px and more carry ``_grad_x`` and ``_grad_y`` (:func:`bowl_gradient`). With
    ``opening_px`` over 1, blobs of ``debris_min_radius_px`` and more may also stand out from
    the luminance opened with that square (``CraterParams.debris_width_m``). With
    ``clear_bowls`` (the sun's elevation known), ``CraterParams.clear_bowl`` applies.
    """
    from changedet._crater_scale import find_candidates

    r0g, c0g = origin
    lo, rng_, med = stats_a
    lum = (np.asarray(after_l, np.float64) - lo) / rng_
    filled = np.where(np.isfinite(lum), lum, (med - lo) / rng_)
    opened = None
    if opening_px > 1 and debris_min_radius_px <= max(scales.radii_px):  # else nothing reads it
        opened = ndimage.grey_opening(filled, size=(opening_px, opening_px), mode="reflect")
    cand = find_candidates(
        filled,
        scales,
        params.min_response,
        params.min_prominence,
        opened,
        debris_min_radius_px,
        params.weak_prominence,
    )
    del opened
    # candidates that can end (after refinement) in the core or next to it
    y0, y1, x0, x1 = core
    gy, gx = cand[:, 0] + r0g, cand[:, 1] + c0g
    near = (
        (gy >= y0 - reach_px) & (gy < y1 + reach_px) & (gx >= x0 - reach_px) & (gx < x1 + reach_px)
    )
    cand = cand[near]
    lum_b = None
    if before_l is not None and stats_b is not None:
        lum_b = (np.asarray(before_l, np.float64) - stats_b[0]) / stats_b[1]
    p = params
    found = []
    offset = lo / rng_  # data value 0 in units of the range
    # cheap screen: a normalised LoG peak is ~0.8 x the interior's darkness; measure only
    # blobs that can reach the Weber contrast ramp
    cand = cand[cand[:, 3] / 0.8 >= 0.5 * p.weber_ramp[0] * np.maximum(cand[:, 4] + offset, 1e-9)]
    # block centres are integers or .5: floor is stable
    irow, icol = np.floor(cand[:, 0]).astype(int), np.floor(cand[:, 1]).astype(int)
    if lum_b is not None and match_b[2]:
        # cheap screen of the small blobs (the most numerous): refine and measure only those
        # that can pass the isolation test below, with a margin (1.5 x) for the refinement
        sm = np.nonzero(2 * cand[:, 2] < _MIN_DIAMETER_PX / 1.15)[0]
        far0, blanket0 = _isolation(
            lum, lum_b, irow[sm], icol[sm], None, None, cand[sm, 2], match_b, all_round=False
        )
        drop = sm[
            (far0 > 1.5 * p.isolated_max_far_change) | (blanket0 < p.min_surround_change / 1.5)
        ]
        keep = np.ones(len(cand), bool)
        keep[drop] = False
        cand, irow, icol = cand[keep], irow[keep], icol[keep]
    # second hypotheses: each blob also refined from smaller radii (CraterParams.nested_radii),
    # started at its centre and at its darkest point where that lies off the centre
    n_blobs = len(cand)
    parent = np.arange(n_blobs)
    if p.nested_radii:
        dark_r, dark_c = _darkest_within(filled, irow, icol, 0.8 * cand[:, 2])
        off = np.hypot(dark_r - irow, dark_c - icol) > 0.2 * cand[:, 2]
    for share in p.nested_radii:
        at = np.nonzero(2 * share * cand[:n_blobs, 2] >= _MIN_DIAMETER_PX)[0]
        at_off = at[off[at]]
        sub = np.concatenate([cand[at], cand[at_off]])
        sub[len(at) :, 0], sub[len(at) :, 1] = dark_r[at_off], dark_c[at_off]
        sub[:, 2] *= share
        cand = np.concatenate([cand, sub])
        irow = np.concatenate([irow, irow[at], dark_r[at_off]])
        icol = np.concatenate([icol, icol[at], dark_c[at_off]])
        parent = np.concatenate([parent, at, at_off])
    ref_dy, ref_dx, ref_r = refine_all(filled, irow, icol, cand[:, 2])
    del filled  # the tile's working set: keep only what the measurements read
    # re-centre on the refined integer pixel so the measurement is position independent
    row2, col2 = irow + np.round(ref_dy).astype(int), icol + np.round(ref_dx).astype(int)
    dy2, dx2 = ref_dy - np.round(ref_dy), ref_dx - np.round(ref_dx)
    r0 = cand[:, 2]
    diam_px = 2 * ref_r
    keep = (
        (np.hypot(row2 + dy2 - cand[:, 0], col2 + dx2 - cand[:, 1]) <= r0)  # no drift
        & (ref_r >= 0.5 * r0)
        & (ref_r <= 2.0 * r0)
        & (diam_px >= d_px[0] / 1.15)
        & (diam_px <= d_px[1] * 1.15)
    )
    nested = parent != np.arange(len(parent))
    keep &= ~nested | (ref_r < _NESTED_MAX_SHARE * ref_r[parent])
    sel = np.nonzero(keep)[0]
    nested = nested[sel]
    row2, col2, dy2, dx2, rad = row2[sel], col2[sel], dy2[sel], dx2[sel], ref_r[sel]
    m = measure_all(lum, row2, col2, dy2, dx2, rad, sun_px)

    def annulus(
        arr: np.ndarray,
        idx: np.ndarray,
        r_in: float,
        r_out: float,
        minus: Any = None,
        scale: tuple[float, float] = (1.0, 0.0),
    ) -> np.ndarray:
        """Mean of ``arr`` (or of ``|arr − (g · minus + o)|``) in ``r_in–r_out`` radii of ``idx``."""
        return annulus_means(
            arr,
            row2[idx],
            col2[idx],
            dy2[idx],
            dx2[idx],
            r_in * rad[idx],
            r_out * rad[idx],
            minus,
            scale,
        )

    depth = m["depth"]
    with np.errstate(invalid="ignore", divide="ignore"):
        weber = depth / np.maximum(m["m_ring"] + offset, 1e-9)  # back in data units
        ejecta = np.where(depth > 0, (m["m_ring"] - m["m_out"]) / depth, 0.0)
        snr = np.where(np.isfinite(m["sd_out"]), depth / np.maximum(m["sd_out"], 0.005), 0.0)
        # NaN (a bowl of under 3 px) tells nothing: no penalty
        texture = np.where(depth > 0, m["sd_in"] / np.where(depth > 0, depth, 1.0), np.nan)
        ring_texture = np.where(depth > 0, m["sd_ring"] / np.where(depth > 0, depth, 1.0), np.nan)
    # texture for the shape rules below: a floor too small to measure proves no smoothness
    floor_texture = np.where(np.isfinite(texture), texture, np.inf)
    ok = np.isfinite(depth) & (m["valid"] >= p.min_valid) & (depth > 0)
    # the bowl's own evidence (darkness, smooth floor), then its ring's and its shape's
    bowl = (
        ramps(depth, *p.contrast_ramp)
        * ramps(weber, *p.weber_ramp)
        * (1 - ramps(texture, *p.texture_ramp))
    )
    score = (
        bowl * ramps(m["enclosure"], *p.enclosure_ramp) * ramps(m["roundness"], *p.roundness_ramp)
    )
    if nested.any():
        # a second hypothesis inside a larger blob: round and smooth beyond doubt, or nothing
        rnd_n, tex_n = p.nested_bowl
        sure = (m["roundness"] >= rnd_n) & (floor_texture <= tex_n)
        score = np.where(nested & ~sure, 0.0, score)
    ejecta_part = 1 - p.ejecta_weight + p.ejecta_weight * ramps(ejecta, *p.ejecta_ramp)
    surround = np.full(len(sel), np.nan)
    inside = np.zeros(len(sel), bool)
    if lum_b is not None and roofs is not None and len(roofs):
        # inside a building whose roof broke all round, the ring and the "background" beyond
        # it both lie on rubble and broken walls: no ground to show an ejecta blanket against,
        # so the (soft) ejecta evidence is not held against the crater there
        cx = geo[0] + (col2 + c0g + dx2) * geo[1]
        cy = geo[2] + (row2 + r0g + dy2) * geo[3]
        hit = shapely.STRtree(roofs).query(shapely.points(cx, cy), predicate="within")[0]
        inside[hit] = True
        at = np.nonzero(inside & (ejecta_part < 1) & (score >= p.score_threshold))[0]
        if len(at):
            surround[at] = annulus(lum, at, 1.15, 3.0, lum_b)
            broken = ramps(surround[at], *p.roof_change_ramp)
            ejecta_part[at] += (1 - ejecta_part[at]) * broken
    score = score * ejecta_part
    # bowls under 5 px (searched with a before image only): their shading is noise, no test
    small = 2 * rad < _MIN_DIAMETER_PX / 1.15
    part = np.ones(len(sel))
    if sun_px is not None:
        sh = m["shading"]
        lo_s, hi_s = p.shading_ramp
        part = ramps(sh, lo_s * expected_dipole, hi_s * expected_dipole)
        if clear_bowls:
            # a bowl whose shape leaves little doubt: a weaker dipole suffices (CraterParams)
            enc_c, rnd_c, tex_c = p.clear_bowl
            clear = (m["enclosure"] >= enc_c) & (m["roundness"] >= rnd_c) & (floor_texture <= tex_c)
            share = p.clear_bowl_shading_share * expected_dipole
            part = np.where(clear, np.maximum(part, ramps(sh, lo_s * share, hi_s * share)), part)
        part = np.where(np.isfinite(sh) & ~small, part, 1.0)
        if clear_bowls and lum_b is not None:
            # a wide, smooth-floored bowl shaded as fully as the sun predicts: a depression
            # beyond doubt, whatever lies against its rim; the before image shows whether it
            # is new and its surroundings changed (CraterParams.shaded_bowl)
            tex_s, rnd_s = p.shaded_bowl
            shaded = (
                (2 * rad >= _SHADED_BOWL_MIN_PX)
                & (sh >= hi_s * expected_dipole)
                & (floor_texture <= tex_s)
                & (score > 0)  # passed every test that can rule a blob out
            )
            spared = bowl * ramps(m["roundness"], rnd_s, p.roundness_ramp[1])
            score = np.where(shaded, np.maximum(score, spared), score)
    # an isolated fresh disturbance, the blast all that changed there (see CraterParams)
    far = np.full(len(sel), np.nan)
    isolated = np.zeros(len(sel), bool)
    at = np.nonzero(
        (small | (part < 1) | calibrate | find_sun) & ok & (score >= p.score_threshold)
    )[0]
    if lum_b is not None and match_b[2] and len(at):
        # a bowl of 5 px or more (its shape and shading measured) needs most of the ground
        # beyond unchanged; a smaller one, kept on isolation alone, all of it: a gap at the
        # edge of a debris field has unchanged ground on one side
        far[at], blanket = _isolation(
            lum, lum_b, row2[at], col2[at], dy2[at], dx2[at], rad[at], match_b, mostly=~small[at]
        )
        isolated[at] = (
            (far[at] <= p.isolated_max_far_change)
            & (blanket >= p.min_surround_change)
            & (m["enclosure"][at] >= p.isolated_min_enclosure)
            & (m["roundness"][at] >= p.roundness_ramp[1])
            # on a roof, a blob amid an unchanged roof is a hole in it: damage, not a crater
            & ~inside[at]
        )
    # small: kept only if isolated; larger and isolated: shaded as a depression is enough
    dip = np.where(np.isfinite(m["shading"]), m["shading"] > 0, True)
    score = score * np.where(small, isolated, np.where(isolated & dip, 1.0, part))
    grad = np.full((2, len(sel)), np.nan)
    if find_sun and isolated.any():
        iso = np.nonzero(isolated & ~small)[0]
        grad[:, iso] = bowl_gradient(lum, row2[iso], col2[iso], dy2[iso], dx2[iso], rad[iso])
    # the factor the expected dipole set (what a scene-level calibration may replace)
    shading_part = np.where(~small & ~(isolated & dip) & np.isfinite(m["shading"]), part, np.nan)
    # a blob that stood out from its surroundings only weakly: its ejecta apron must show,
    # all round but where something (the shadow or wall it lies against) hides it: the
    # median of 8 sectors, so a bright neighbour on one side (a roof fixture, a lit wall)
    # is no apron
    weak = cand[sel, 5] > 0
    apron = np.full(len(sel), np.nan)
    at = np.nonzero(weak & ok & (score >= p.score_threshold))[0]
    if len(at):
        apron[at] = _apron(lum, row2[at], col2[at], dy2[at], dx2[at], rad[at], depth[at])
    weak_part = ramps(np.where(np.isfinite(apron), apron, 0.0), *p.weak_ejecta_ramp)
    score = np.where(weak, score * weak_part, score)
    # colour evidence only scales the score down: measure it where the score can still pass
    ok &= score >= p.score_threshold
    greenness = np.full(len(sel), np.nan)
    blueness = np.full(len(sel), np.nan)
    at = np.nonzero(ok)[0]
    if green_a is not None and len(at):
        greenness[at] = annulus(green_a, at, 0.0, 0.75)
        score[at] *= np.where(
            np.isfinite(greenness[at]), 1 - ramps(greenness[at], *p.vegetation_ramp), 1.0
        )
    sun_side = np.full(len(sel), np.nan)
    if green_a is not None and sun_px is not None and len(at):
        # a tree's shadow: a crown right outside the blob on the sun's side (the eighth of the
        # ring 0.8-1.5 R facing the sun or either neighbour, the greenest of the three)
        eighths = annulus_means(
            green_a, row2[at], col2[at], dy2[at], dx2[at], 0.8 * rad[at], 1.5 * rad[at], sectors=8
        )
        k0 = math.floor((math.atan2(sun_px[1], sun_px[0]) + math.pi) / (2 * math.pi) * 8)
        facing = eighths[:, [(k0 + j) % 8 for j in (-1, 0, 1)]]
        with np.errstate(all="ignore"):
            sun_side[at] = np.where(
                np.isfinite(facing).any(axis=1),
                np.nanmax(np.where(np.isfinite(facing), facing, -np.inf), axis=1),
                np.nan,
            )
        score[at] *= np.where(
            np.isfinite(sun_side[at]), 1 - ramps(sun_side[at], *p.vegetation_ramp), 1.0
        )
    if blue_a is not None and len(at):
        blueness[at] = annulus(blue_a, at, 0.0, 0.75) - annulus(blue_a, at, 1.15, 2.0)
        score[at] *= np.where(
            np.isfinite(blueness[at]), 1 - ramps(blueness[at], *p.shadow_ramp), 1.0
        )
    ok &= score >= p.score_threshold
    at = np.nonzero(ok)[0]
    todo = at[~np.isfinite(surround[at])]  # not yet measured above
    if lum_b is not None and len(todo):
        # how much the surroundings changed (ejecta, a broken roof): |after - before| around
        surround[todo] = annulus(lum, todo, 1.15, 3.0, lum_b)
    # |after − before| over the continuous ejecta blanket (to 2 R; beyond it only scattered
    # blocks: mostly unchanged ground, whose share would decide), the before matched to the
    # after's units, against the pair's no-change level (``match_b``): for ``new``
    excess = np.full(len(sel), np.nan)
    if lum_b is not None and match_b[2] and len(at):
        excess[at] = annulus(lum, at, 1.15, 2.0, lum_b, match_b[:2]) / match_b[2]
    change_mean = np.full(len(sel), np.nan)
    if change is not None and len(at):
        change_mean[at] = annulus(np.asarray(change), at, 0.0, 1.5)
    found = []
    for k in at:
        rec: dict[str, Any] = {
            "row": int(row2[k]) + r0g,
            "col": int(col2[k]) + c0g,
            "dy": float(dy2[k]),
            "dx": float(dx2[k]),
            "radius_px": float(rad[k]),
            "score": float(score[k]),
            "contrast": float(depth[k]),
            "weber": float(weber[k]),
            "snr": float(snr[k]),
            "enclosure": float(m["enclosure"][k]),
            "roundness": float(m["roundness"][k]),
            "texture": float(texture[k]),
            "ring_texture": float(ring_texture[k]),
            "ejecta": float(ejecta[k]),
            "shading": float(m["shading"][k]),
            "greenness": float(greenness[k]),
            "sun_side_greenness": float(sun_side[k]),
            "blueness": float(blueness[k]),
            "persistence": math.nan,
            "surround_change": float(surround[k]),
            "far_change": float(far[k]),
            "_isolated": bool(isolated[k]),
            "_shading_part": float(shading_part[k]),
            "_grad_x": float(grad[0, k]),
            "_grad_y": float(grad[1, k]),
            "change": float(change_mean[k]),
            "new": None,
            "newness_verified": False,
        }
        if lum_b is not None:
            rec.update(
                persistence(
                    lum,
                    lum_b,
                    green_b,
                    blue_b,
                    int(row2[k]),
                    int(col2[k]),
                    float(dy2[k]),
                    float(dx2[k]),
                    float(rad[k]),
                    float(depth[k]),
                    rec["change"],
                    change is not None,
                    p,
                    surround_ratio=float(excess[k]),
                )
            )
        found.append(rec)
    if not found:
        return []
    # non-maximum suppression: a weaker detection whose centre lies within a stronger one's rim
    arr = np.array(
        [[f["row"] + f["dy"], f["col"] + f["dx"], f["radius_px"], f["score"]] for f in found]
    )
    idx = np.arange(len(found), dtype=np.float64)
    kept = suppress(arr[:, :2], arr[:, 2], arr[:, 3], factor=1.0, rows=idx[:, None])
    kept = kept[~_in_blanket(arr[:, :3], kept[:, 0].astype(int), p.blanket_size_ratio)]
    out = []
    for k in kept[:, 0].astype(int):
        f = found[k]
        if y0 <= f["row"] < y1 and x0 <= f["col"] < x1:
            out.append(f)
    return out


def _darkest_within(
    img: np.ndarray, rows: np.ndarray, cols: np.ndarray, radius: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The darkest pixel of ``img`` smoothed at the smallest bowl's scale within each disc.

    ``img`` is smoothed with a Gaussian of σ = ``_MIN_DIAMETER_PX`` / 2.5 (2 px), so that a
    single dark pixel or a gap between rubble fragments does not decide; then, for each centre
    ``(rows, cols)``, the pixel of least value within ``radius`` (ties: the first in row-major
    order). Discs are grouped by radius (candidates come at a few pyramid radii). Returns the
    integer rows and columns.

    Examples
    --------
    >>> img = np.ones((40, 40))
    >>> img[24:29, 14:19] = 0.0
    >>> _darkest_within(img, np.array([20]), np.array([20]), np.array([9.0]))
    (array([26]), array([16]))
    """
    smooth = ndimage.gaussian_filter(img, _MIN_DIAMETER_PX / 2.5, mode="reflect")
    ny, nx = smooth.shape
    out_r, out_c = rows.astype(np.int64).copy(), cols.astype(np.int64).copy()
    for r in np.unique(radius):
        at = np.nonzero(radius == r)[0]
        h = math.floor(float(r))
        dy, dx = np.mgrid[-h : h + 1, -h : h + 1]
        disc = np.hypot(dy, dx) <= r
        dy, dx = dy[disc], dx[disc]
        yy = np.clip(rows[at, None] + dy[None], 0, ny - 1)
        xx = np.clip(cols[at, None] + dx[None], 0, nx - 1)
        k = np.argmin(smooth[yy, xx], axis=1)
        out_r[at] = yy[np.arange(len(at)), k]
        out_c[at] = xx[np.arange(len(at)), k]
    return out_r, out_c


def _apron(
    lum: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    radius: np.ndarray,
    depth: np.ndarray,
) -> np.ndarray:
    """How much an ejecta apron brightens the ground all round, over the bowl's depth.

    In each of 8 sectors, the mean of ``lum`` in the ring (``1.15–2 R``) less its mean beyond
    (``2.3–3 R``); the median of the 8, over ``depth``. NaN where no sector or no positive
    depth can be measured. A shadow or wall against one side leaves the median to the other
    sides; a bright neighbour on one side does not make it.
    """
    ring = annulus_means(lum, rows, cols, dy, dx, 1.15 * radius, 2.0 * radius, sectors=8)
    beyond = annulus_means(lum, rows, cols, dy, dx, 2.3 * radius, 3.0 * radius, sectors=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no finite sector: NaN
        rise = np.nanmedian(ring - beyond, axis=1)
    return rise / np.where(depth > 0, depth, np.nan)


def _isolation(
    lum: np.ndarray,
    lum_b: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    dy: np.ndarray | None,
    dx: np.ndarray | None,
    radius: np.ndarray,
    match_b: tuple[float, float, float | None],
    all_round: bool = True,
    mostly: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``far_change`` and the blanket's all-round change of blobs, over the no-change level.

    ``|after − before|`` (the before matched to the after by ``match_b[:2]``) over the pair's
    no-change level ``match_b[2]``: its mean in ``3–5 R``, and the second-weakest of its means
    in 8 sectors of ``1.15–2 R`` (the blanket changed all round: a car that moved or a shadow
    that moved with the sun changes the ground along one side or one axis only), or with
    ``all_round=False`` (cheaper, never smaller) the mean of the whole blanket. Where
    ``mostly`` is True, ``far_change`` is the median of the means in 8 sectors of ``3–5 R``
    instead: most of the ground beyond, so that a shadow that moved with the sun or a car on
    one side does not count.
    """
    zero = np.zeros(len(rows))
    dy = zero if dy is None else dy
    dx = zero if dx is None else dx
    noise = float(match_b[2] or 1.0)
    far = annulus_means(lum, rows, cols, dy, dx, 3.0 * radius, 5.0 * radius, lum_b, match_b[:2])
    mostly = np.zeros(len(rows), bool) if mostly is None else np.asarray(mostly, bool)
    if mostly.any():
        i = np.nonzero(mostly)[0]
        far_sectors = annulus_means(
            lum,
            rows[i],
            cols[i],
            dy[i],
            dx[i],
            3.0 * radius[i],
            5.0 * radius[i],
            lum_b,
            match_b[:2],
            sectors=8,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no finite sector: NaN
            far[i] = np.nanmedian(far_sectors, axis=1)
    if not all_round:
        blanket = annulus_means(
            lum, rows, cols, dy, dx, 1.15 * radius, 2.0 * radius, lum_b, match_b[:2]
        )
        return far / noise, blanket / noise
    sectors = annulus_means(
        lum, rows, cols, dy, dx, 1.15 * radius, 2.0 * radius, lum_b, match_b[:2], sectors=8
    )
    if len(rows) == 0:
        return far / noise, np.empty(0)
    blanket = np.sort(np.where(np.isfinite(sectors), sectors, -np.inf), axis=1)[:, 1]
    return far / noise, blanket / noise


def _in_blanket(circles: np.ndarray, kept: np.ndarray, ratio: float) -> np.ndarray:
    """Which of the ``kept`` rows of ``circles`` (row, col, radius) lie in a bigger one's ejecta.

    A dark blob whose centre lies within ``2.5 R`` of a detection at least ``ratio`` times its
    radius is a block or a gap in that crater's ejecta, not a crater of its own.
    """
    out = np.zeros(len(kept), bool)
    if ratio <= 0 or len(kept) < 2:
        return out
    c = circles[kept]
    d = np.hypot(c[:, None, 0] - c[None, :, 0], c[:, None, 1] - c[None, :, 1])
    big = c[None, :, 2] >= ratio * c[:, None, 2]  # [j, i]: i is big enough to hold j
    return np.any(big & (d < 2.5 * c[None, :, 2]), axis=1)


def _footprints(footprints: Any, crs: Any) -> gpd.GeoSeries | None:
    """The footprint polygons in ``crs`` (a GeoDataFrame, GeoSeries or a path), or None."""
    if footprints is None:
        return None
    fp = (
        footprints
        if isinstance(footprints, gpd.GeoDataFrame | gpd.GeoSeries)
        else gpd.read_file(footprints)
    )
    if fp.crs is not None and crs is not None and fp.crs != crs:
        fp = fp.to_crs(crs)
    return gpd.GeoSeries(fp.geometry.values, crs=crs)


#: Typical carriageway width, metres, of an OpenStreetMap ``highway`` class (both directions,
#: lanes of about 3-3.5 m), for its ways that carry no width tag; other classes get
#: ``CraterParams.road_width_m``.
OSM_HIGHWAY_WIDTH_M = {
    "motorway": 15.0,
    "trunk": 12.0,
    "primary": 10.0,
    "secondary": 8.0,
    "tertiary": 7.0,
    "unclassified": 6.0,
    "residential": 6.0,
    "living_street": 5.0,
    "service": 4.0,
    "track": 3.0,
    **{f"{k}_link": 6.0 for k in ("motorway", "trunk", "primary", "secondary", "tertiary")},
}

#: OpenStreetMap ``highway`` classes that are not roads (ways for walking, riding or cycling,
#: stairs, ways not built yet): left out of the road areas.
OSM_NOT_ROADS = frozenset(
    {"footway", "path", "cycleway", "bridleway", "steps", "corridor", "proposed", "construction"}
)


def _width_m(value: Any) -> float:
    """A road width in metres from a ``width_m`` / ``width`` value ("7", "7.5 m", 7); NaN if none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    if isinstance(value, int | float | np.integer | np.floating):
        w = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:m|metres|meters)?\s*", str(value))
        w = float(m.group(1)) if m else math.nan
    return w if w > 0 else math.nan


def road_areas(
    roads: gpd.GeoDataFrame | gpd.GeoSeries | str | os.PathLike[str],
    crs: Any,
    default_width_m: float = 7.0,
) -> gpd.GeoSeries:
    """The ground roads cover, as polygons in ``crs`` (projected, metres).

    Road polygons are kept as they are; centre lines (as OpenStreetMap has them) are widened to
    their ``width_m`` or ``width`` attribute (metres; OpenStreetMap's ``width`` tag), else to
    the typical width of their OpenStreetMap ``highway`` class (:data:`OSM_HIGHWAY_WIDTH_M`),
    else to ``default_width_m``, with round ends (so that ways meeting at an angle leave no
    gap). Footways, paths, cycleways, bridleways and steps (:data:`OSM_NOT_ROADS`) are no roads
    and are left out.

    Parameters
    ----------
    roads
        GeoDataFrame, GeoSeries or a GeoJSON / GeoPackage path of (multi)line strings and/or
        (multi)polygons.
    crs
        The scene's projected CRS.
    default_width_m
        Width of centre lines without a usable width attribute.

    Raises
    ------
    ChangedetError
        When there is no road line or polygon, or a geometry is neither a line, a polygon nor
        a point (points, such as the tagged nodes of an OpenStreetMap export, are left out with
        a warning).

    Examples
    --------
    >>> from shapely.geometry import LineString
    >>> lines = gpd.GeoDataFrame({"width_m": [10.0, None]},
    ...                          geometry=[LineString([(0, 0), (100, 0)]),
    ...                                    LineString([(0, 50), (100, 50)])], crs=32637)
    >>> [round(a) for a in road_areas(lines, "EPSG:32637", default_width_m=6).area]
    [1078, 628]
    """
    from changedet.io import read_vector

    name = str(roads) if isinstance(roads, str | os.PathLike) else "roads"
    gdf = read_vector(roads) if isinstance(roads, str | os.PathLike) else roads
    geoms = gdf.geometry if isinstance(gdf, gpd.GeoDataFrame) else gdf
    if geoms.crs is None:
        raise ChangedetError(
            name, "roads have no CRS", "Set one (e.g. EPSG:4326 for OpenStreetMap)."
        )
    keep = (geoms.notna() & ~geoms.is_empty).to_numpy()
    highway = (
        gdf["highway"].astype(str).str.strip().str.lower().to_numpy()
        if isinstance(gdf, gpd.GeoDataFrame) and "highway" in gdf.columns
        else np.full(len(geoms), "")
    )
    not_road = keep & np.isin(highway, list(OSM_NOT_ROADS))
    keep = keep & ~not_road
    kind = geoms.geom_type.to_numpy()
    # an OpenStreetMap highway export also holds tagged nodes (traffic signals, crossings):
    # points say nothing about the ground a road covers, so they are left out, and said to be
    points = keep & np.isin(kind, ["Point", "MultiPoint"])
    keep = keep & ~points
    bad = sorted(set(kind[keep]) - {"LineString", "MultiLineString", "Polygon", "MultiPolygon"})
    if bad:
        raise ChangedetError(
            name,
            f"has {', '.join(bad)} geometries; roads must be lines or polygons",
            "Give road centre lines (e.g. OpenStreetMap highway ways) or road polygons.",
        )
    if not keep.any():
        raise ChangedetError(
            name,
            "holds no road line or polygon"
            + (" (only points)" if points.any() else "")
            + (" (only footways, paths and the like)" if not_road.any() else ""),
            "Give road centre lines (e.g. OpenStreetMap highway ways) or road polygons.",
        )
    if points.any():
        warnings.warn(
            f"{name}: {int(points.sum())} point feature(s) left out (e.g. traffic signals in an "
            "OpenStreetMap export); roads are its lines and polygons",
            UserWarning,
            stacklevel=2,
        )
    geoms = geoms[keep].to_crs(crs)
    widths = np.full(len(geoms), math.nan)
    if isinstance(gdf, gpd.GeoDataFrame):
        for col in ("width_m", "width"):
            if col in gdf.columns:
                got = np.array([_width_m(v) for v in gdf.loc[keep, col]])
                widths = np.where(np.isfinite(widths), widths, got)
    by_class = np.array([OSM_HIGHWAY_WIDTH_M.get(h, math.nan) for h in highway[keep]])
    widths = np.where(np.isfinite(widths), widths, by_class)
    widths = np.where(np.isfinite(widths), widths, float(default_width_m))
    lines = geoms.geom_type.isin(["LineString", "MultiLineString"]).to_numpy()
    out = geoms.copy()
    out[lines] = geoms[lines].buffer(widths[lines] / 2)  # round ends: ways join up
    return gpd.GeoSeries(out.values, crs=crs)


def _on_what(
    points: gpd.GeoSeries, buildings: gpd.GeoSeries | None, roads: gpd.GeoSeries | None
) -> list[str]:
    """What each point lies on, as far as the layers given tell (see :func:`detect_craters`)."""

    def within(geoms: gpd.GeoSeries | None) -> np.ndarray:
        if geoms is None or len(points) == 0:
            return np.zeros(len(points), bool)
        hit = shapely.STRtree(geoms.values).query(points.values, predicate="within")[0]
        out = np.zeros(len(points), bool)
        out[hit] = True
        return out

    on_b, on_r = within(buildings), within(roads)
    if buildings is not None and roads is not None:
        rest = "open ground"
    elif buildings is not None:
        rest = "road or open ground"
    elif roads is not None:
        rest = "building or open ground"
    else:
        rest = "unknown"
    return ["building" if b else "road" if r else rest for b, r in zip(on_b, on_r, strict=True)]


def _empty(crs: Any) -> gpd.GeoDataFrame:
    cols: dict[str, Any] = {c: pd.Series(dtype="float64") for c in COLUMNS}
    cols["id"] = pd.Series(dtype="int64")
    cols["new"] = pd.Series(dtype="object")
    cols["newness_verified"] = pd.Series(dtype="bool")
    cols["on"] = pd.Series(dtype="object")
    return gpd.GeoDataFrame(cols, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def not_searched(params: CraterParams, gsd_m: float) -> str | None:
    """Why no crater can be searched at this pixel size, or ``None`` when they can.

    A run that searched nothing must not read as "no craters": the pipeline reports this
    reason in its summary, ``report.html`` and ``manifest.json``.

    Examples
    --------
    >>> not_searched(CraterParams(), 0.5) is None
    True
    >>> not_searched(CraterParams(), 10.0)
    'craters of 1.5-25 m are under 5 px at 10 m per pixel and cannot be resolved'
    """
    d_min_px = max(params.min_diameter_m / gsd_m, _MIN_DIAMETER_PX)
    if d_min_px < params.max_diameter_m / gsd_m:
        return None
    return (
        f"craters of {params.min_diameter_m:g}-{params.max_diameter_m:g} m are under "
        f"{_MIN_DIAMETER_PX:g} px at {gsd_m:g} m per pixel and cannot be resolved"
    )


def detect_craters(
    after: xr.DataArray,
    before: xr.DataArray | None = None,
    *,
    change: xr.Dataset | xr.DataArray | None = None,
    params: CraterParams | None = None,
    sun_azimuth_deg: float | None = None,
    sun_elevation_deg: float | None = None,
    footprints: gpd.GeoDataFrame | gpd.GeoSeries | str | None = None,
    gsd_m: float | None = None,
    roads: gpd.GeoDataFrame | gpd.GeoSeries | str | None = None,
) -> gpd.GeoDataFrame:
    """Detect craters in the after image and tell which are new.

    Parameters
    ----------
    after
        ``(band, y, x)`` raster, NaN for nodata, with a projected CRS (metres) via ``.rio``.
        Dask-backed rasters are processed chunk by chunk (memory bounded by a chunk and its halo).
    before
        The before image on the same grid (co-registered and radiometrically normalised), or
        ``None`` for single-image mode: every detection then has ``new=None`` and
        ``newness_verified=False``.
    change
        The output of :func:`changedet.change.change_scores` (its ``score`` is used) or a
        ``(y, x)`` score map; optional extra evidence for ``new``.
    params
        :class:`CraterParams`; defaults when omitted.
    sun_azimuth_deg
        Sun azimuth of the after image, degrees clockwise from north (``scene.json`` or the
        image metadata, or :func:`changedet.sun.resolve_sun`). ``None`` skips the shading test
        (``shading`` is NaN).
    sun_elevation_deg
        Sun elevation of the after image, degrees. With it the shading test asks for the
        dipole a bowl shows at that elevation (rejecting flat cast shadows); without it, for the
        dipole under a sun at ``params.max_sun_elevation_deg``, or, with a before image, the
        one the scene's isolated craters show (``params.calibrate_shading``).
    footprints
        Building footprint polygons (GeoDataFrame, GeoSeries or a path); a detection whose
        centre lies inside one has ``on="building"``; with a before image, one inside a roof
        that did not change around it is dropped (``roof_change_ramp``).
    gsd_m
        Ground sample distance in metres; read from the raster's transform when omitted.
    roads
        Roads (GeoDataFrame, GeoSeries or a path): centre lines, widened as
        :func:`road_areas` says, or polygons; a detection whose centre lies on one (and in no
        footprint) has ``on="road"``.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per crater in the scene CRS, sorted by ``y`` then ``x`` (``id`` follows that
        order): ``geometry`` (centre point), ``x``, ``y``, ``diameter_m``, ``score``,
        ``contrast``, ``weber``, ``snr``, ``enclosure``, ``roundness``, ``texture`` (the bowl's)
        and ``ring_texture`` (the ring's standard deviation over the contrast, reported only),
        ``ejecta``, ``shading``, ``greenness``, ``sun_side_greenness`` (NaN without the sun
        azimuth) and ``blueness`` (NaN with fewer than 3 bands),
        ``persistence`` (before contrast, weighted by enclosure, non-greenness and similarity,
        / after contrast), ``surround_change`` (mean ``|after − before|`` in 1.15–3 R, a share
        of the scene range; NaN without a before image), ``far_change`` (mean ``|after − before|``
        in 3–5 R over the pair's no-change level, for bowls under 5 px; for larger ones tested
        for isolation (weakly shaded ones, or all under ``calibrate_shading``), the median of
        its means in 8 sectors; else NaN), ``change`` (mean change score in 1.5 R), ``new``,
        ``newness_verified``, ``on`` (what the centre lies on, as far as the layers given
        tell: ``"building"``, ``"road"``, ``"open ground"`` with footprints and roads; without
        roads the last two read ``"road or open ground"``, without footprints
        ``"building or open ground"``, with neither everything is ``"unknown"``). Empty (same
        columns and CRS) when none. Its
        ``attrs["shading_calibration"]`` (None where none was tried: the elevation given, no
        azimuth or no before image; see ``CraterParams.calibrate_shading``) holds
        ``isolated_craters``, ``expected_dipole`` (the one used) and
        ``assumed_expected_dipole``; ``attrs["sun_from_craters"]`` (None unless
        ``CraterParams.azimuth_from_craters`` found one) the azimuth read from the isolated
        craters, their number and ``resultant_length``, ``attrs["sun_azimuth_deg"]`` the
        azimuth used, and ``attrs["roof_fixtures"]`` how many detections inside building
        footprints were dropped as under ``CraterParams.min_roof_diameter_m`` (0 where none;
        absent when no crater was searched).

    Raises
    ------
    BandMismatchError
        When ``before`` has a different band count.
    ChangedetError
        When the rasters are not ``(band, y, x)`` or not on the same grid.
    ValueError
        When the ground sample distance cannot be told (pass ``gsd_m``) or parameters are invalid.

    Examples
    --------
    >>> import numpy as np
    >>> from changedet.testing import make_raster
    >>> yy, xx = np.mgrid[0:96, 0:96]
    >>> rho = np.hypot(yy - 40, xx - 50)
    >>> after = 100 + 40 * np.exp(-(((rho - 9) / 3) ** 2)) - 50 * (rho < 7)
    >>> before = np.full_like(after, 100.0)
    >>> found = detect_craters(make_raster(after[None]), make_raster(before[None]))
    >>> found.new[0], bool(found.newness_verified[0]), found.on[0]
    (True, True, 'unknown')
    """
    params = params or CraterParams()
    after_l = _luminance(after, str(after.name or "after"))
    before_l = None
    if before is not None:
        if before.sizes.get("band") != after.sizes.get("band"):
            raise BandMismatchError(
                before.name or "before",
                f"has {before.sizes.get('band')} bands, after has {after.sizes.get('band')}",
                "Select the same bands in both images.",
            )
        before_l = _luminance(before, str(before.name or "before"))
        if before_l.shape != after_l.shape:
            raise ChangedetError(
                before.name or "before",
                f"is {before_l.shape[0]}×{before_l.shape[1]} px, after is "
                f"{after_l.shape[0]}×{after_l.shape[1]} px",
                "Put both on one grid first (changedet.align, then changedet.coregister).",
            )
    rgb = params.rgb_bands or DEFAULT_RGB_BANDS
    green_a = _greenness(after, rgb)
    green_b = None if before is None else _greenness(before, rgb)
    blue_a = _blue_share(after, rgb)
    blue_b = None if before is None else _blue_share(before, rgb)
    change_map = change["score"] if isinstance(change, xr.Dataset) else change
    if change_map is not None and tuple(change_map.shape) != tuple(after_l.shape):
        raise ChangedetError(
            "change", "is not on the after image's grid", "Compute it from this pair."
        )
    crs = after.rio.crs if hasattr(after, "rio") else None
    if gsd_m is None:
        if crs is not None and crs.is_geographic:
            raise ValueError(
                "after: CRS is geographic (degrees); reproject to a metric CRS or pass gsd_m"
            )
        gsd_m = gsd_of(after)
    gsd = float(gsd_m)

    d_min_px = max(params.min_diameter_m / gsd, _MIN_DIAMETER_PX)
    d_max_px = params.max_diameter_m / gsd
    # with a before image, smaller bowls too (kept only when isolated, see _detect_tile)
    d_small_px = max(params.min_diameter_m / gsd, _MIN_SMALL_DIAMETER_PX)
    d_small_px = d_min_px if before_l is None else min(d_small_px, d_min_px)
    why = not_searched(params, gsd)
    if why is not None:
        warnings.warn(f"{why}; none searched", UserWarning, stacklevel=2)
        return _empty(crs)
    scales = make_scales(d_min_px / 2, d_max_px / 2, params.scales_per_octave)
    scales = extend_down(scales, d_small_px / 2, params.scales_per_octave)
    r_max = d_max_px / 2 * 1.15
    # a candidate this far from the core can still matter to it (NMS; a small blob in the
    # ejecta blanket of a big crater, up to 2.5 of its radii away)
    reach = 2.6 * r_max + 2
    need = max(
        WINDOW_RADII * 1.6 * d_max_px / 2 + 3,
        TRUNCATE * scales.max_sigma_px + 2 * scales.max_factor,
        LOCAL_TRUNCATE * d_max_px + 2 * scales.max_factor,
    )
    # the debris opening's square (odd, at most debris_width_m): its half-width widens the halo
    opening_px = 2 * max(0, math.floor((params.debris_width_m / gsd - 1) / 2)) + 1
    halo = math.ceil(reach + need) + opening_px // 2

    stats_a = _range_stats(after_l)
    stats_b = _range_stats(before_l) if before_l is not None else None
    match_b: tuple[float, float, float | None] = (1.0, 0.0, None)
    if before_l is not None and stats_b is not None:
        match_b = _before_match(after_l, before_l, stats_a, stats_b)
    sun_px = None
    # a bowl's dipole under the sun's elevation, or under the highest plausible sun
    elevation = params.max_sun_elevation_deg
    if sun_elevation_deg is not None:
        if not 0 < float(sun_elevation_deg) <= 90:
            raise ValueError(f"sun_elevation_deg must lie in (0, 90], not {sun_elevation_deg}")
        elevation = float(sun_elevation_deg)
    expected_dipole = 0.6 * math.cos(math.radians(elevation))
    # image columns and rows against east and north
    sx = math.copysign(1.0, _axis_step(np.asarray(after_l.x), 1.0))
    sy = math.copysign(1.0, _axis_step(np.asarray(after_l.y), -1.0))
    if sun_azimuth_deg is not None:
        az = math.radians(float(sun_azimuth_deg))
        sun_px = (math.sin(az) * sx, math.cos(az) * sy)

    xs, ys = np.asarray(after_l.x, np.float64), np.asarray(after_l.y, np.float64)
    dx = _axis_step(xs, gsd)
    dy = _axis_step(ys, -gsd)
    roofs = _footprints(footprints, crs)
    road_geoms = None if roads is None else road_areas(roads, crs, params.road_width_m)
    if road_geoms is not None:
        extent = shapely.box(
            xs.min() - abs(dx), ys.min() - abs(dy), xs.max() + abs(dx), ys.max() + abs(dy)
        )
        if not road_geoms.intersects(extent).any():
            warnings.warn(
                f"roads: none of the {len(road_geoms)} roads reaches the scene, so no crater "
                "can be on one; check that the file covers this area and that its CRS is right "
                "(OpenStreetMap data: EPSG:4326, longitude first)",
                UserWarning,
                stacklevel=2,
            )
    ny, nx = after_l.shape
    lazy = not isinstance(after_l.data, np.ndarray)
    chunks = after_l.data.chunks if lazy else (None, None)
    fmax = scales.max_factor
    kw = {
        "reach_px": reach,
        "stats_a": stats_a,
        "stats_b": stats_b,
        "scales": scales,
        "params": params,
        "sun_px": sun_px,
        "expected_dipole": expected_dipole,
        "d_px": (d_small_px, d_max_px),
        "match_b": match_b,
        "calibrate": bool(
            params.calibrate_shading
            and sun_px is not None
            and sun_elevation_deg is None
            and before_l is not None
        ),
        "find_sun": bool(params.azimuth_from_craters and sun_px is None and before_l is not None),
        "opening_px": opening_px,
        "debris_min_radius_px": params.debris_min_diameter_m / 2 / gsd,
        "clear_bowls": sun_px is not None and sun_elevation_deg is not None,
    }
    tasks = []
    readers = _file_readers(after, before, change_map) if lazy else None
    for ya, yb in _tiles(ny, chunks[0], params.tile_px):
        for xa, xb in _tiles(nx, chunks[1], params.tile_px):
            sy0 = max(0, (ya - halo) // fmax * fmax)
            sx0 = max(0, (xa - halo) // fmax * fmax)
            sl = (slice(sy0, min(ny, yb + halo)), slice(sx0, min(nx, xb + halo)))
            tile_kw = {"origin": (sy0, sx0), "core": (ya, yb, xa, xb), **kw}
            if roofs is not None and before_l is not None:
                # the footprints that can hold a candidate of this tile
                xb0, xb1 = xs[0] + (sl[1].start - 0.5) * dx, xs[0] + (sl[1].stop - 0.5) * dx
                yb0, yb1 = ys[0] + (sl[0].start - 0.5) * dy, ys[0] + (sl[0].stop - 0.5) * dy
                box = shapely.box(min(xb0, xb1), min(yb0, yb1), max(xb0, xb1), max(yb0, yb1))
                tile_kw["roofs"] = roofs.values[roofs.sindex.query(box, predicate="intersects")]
                tile_kw["geo"] = (float(xs[0]), dx, float(ys[0]), dy)
            if readers is not None:  # the tile reads its own windows
                window = (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)
                tasks.append(((readers, window, rgb), tile_kw))
                continue
            maps = (after_l, before_l, change_map, green_a, green_b, blue_a, blue_b)
            tasks.append(([None if m is None else m.data[sl] for m in maps], tile_kw))
    lazy = lazy or any(
        x is not None and not isinstance(x.data, np.ndarray)
        for x in (before_l, change_map, green_a, green_b, blue_a, blue_b)
    )

    def run_tiles() -> list[dict[str, Any]]:
        if readers is not None:
            import dask

            # each tile reads its own windows: no task depends on another (bounded memory)
            results = dask.compute(
                *[dask.delayed(_detect_tile_from_files, pure=False)(*a, **k) for a, k in tasks]
            )
        elif lazy:
            import dask

            results = dask.compute(*[dask.delayed(_detect_tile)(*a, **k) for a, k in tasks])
        else:
            results = [
                _detect_tile(*(None if x is None else np.asarray(x) for x in a), **k)
                for a, k in tasks
            ]
        return [r for res in results for r in res]

    rows = run_tiles()
    sun_found = None
    if kw["find_sun"]:
        sun_found = _azimuth_from_isolated(rows, sx, sy)
        if sun_found is not None:
            # search again, the azimuth known and the elevation not
            sun_azimuth_deg = sun_found["azimuth_deg"]
            az = math.radians(sun_azimuth_deg)
            sun_px = (math.sin(az) * sx, math.cos(az) * sy)
            again = {
                "sun_px": sun_px,
                "find_sun": False,
                "calibrate": params.calibrate_shading and sun_elevation_deg is None,
            }
            kw.update(again)
            for _, k in tasks:
                k.update(again)
            rows = run_tiles()
    if not rows:
        out = _empty(crs)
        if kw["calibrate"]:
            out.attrs["shading_calibration"] = _calibrate_shading(None, params, expected_dipole)[1]
        out.attrs["sun_from_craters"] = sun_found
        out.attrs["roof_fixtures"] = 0
        return out

    recs = pd.DataFrame(rows)
    recs["x"] = xs[0] + (recs["col"] + recs["dx"]) * dx
    recs["y"] = ys[0] + (recs["row"] + recs["dy"]) * dy
    recs["diameter_m"] = 2 * recs["radius_px"] * gsd
    recs = recs.sort_values(["y", "x"], kind="mergesort").reset_index(drop=True)
    points = gpd.GeoSeries(gpd.points_from_xy(recs["x"], recs["y"]), crs=crs)
    recs["on"] = _on_what(points, roofs, road_geoms)
    # a dark blob inside a roof whose surroundings did not change is no crater (a hole in or an
    # object on an intact roof: the damage stage judges roofs); unknown without a before image
    roof = (recs["on"] == "building") & np.isfinite(recs["surround_change"])
    recs.loc[roof, "score"] = recs.loc[roof, "score"] * ramps(
        recs.loc[roof, "surround_change"].to_numpy(), *params.roof_change_ramp
    )
    # a small dark blob on a roof is a fixture or a hole, not a bowl (see CraterParams)
    fixture = (recs["on"] == "building") & (recs["diameter_m"] < params.min_roof_diameter_m)
    roof_fixtures = int((fixture & (recs["score"] >= params.score_threshold)).sum())
    recs.loc[fixture, "score"] = 0.0
    recs = recs[recs["score"] >= params.score_threshold].reset_index(drop=True)
    calibration = None
    if kw["calibrate"]:
        recs, calibration = _calibrate_shading(recs, params, expected_dipole)
    if recs.empty:
        out = _empty(crs)
        out.attrs["shading_calibration"] = calibration
        out.attrs["sun_from_craters"] = sun_found
        out.attrs["roof_fixtures"] = roof_fixtures
        return out
    recs["id"] = np.arange(len(recs), dtype=np.int64)
    points = gpd.GeoSeries(gpd.points_from_xy(recs["x"], recs["y"]), crs=crs)
    recs["new"] = recs["new"].astype("object")
    recs["newness_verified"] = recs["newness_verified"].astype(bool)
    out = gpd.GeoDataFrame(recs[list(COLUMNS)], geometry=points, crs=crs)
    out.attrs["crater_params"] = asdict(params)
    out.attrs["gsd_m"] = gsd
    out.attrs["sun_azimuth_deg"] = sun_azimuth_deg
    out.attrs["sun_elevation_deg"] = sun_elevation_deg
    out.attrs["shading_calibration"] = calibration
    out.attrs["sun_from_craters"] = sun_found
    out.attrs["roof_fixtures"] = roof_fixtures
    return out


def _azimuth_from_isolated(
    rows: list[dict[str, Any]], sx: float, sy: float
) -> dict[str, Any] | None:
    """The sun's azimuth from the shading of a scene's isolated bowls, or None without one.

    Each bowl is brighter on its side away from the sun (``_grad_x``, ``_grad_y`` in tile
    columns and rows); ``sx``, ``sy`` are the signs of the columns against east and the rows
    against north. The azimuth is the mean of the unit directions toward the sun;
    ``resultant_length`` (1: all agree) says how well they agree.
    """
    g = np.array([[r["_grad_x"], r["_grad_y"]] for r in rows if r["_isolated"]], np.float64)
    if len(g):
        g = g[np.isfinite(g).all(axis=1) & (np.hypot(g[:, 0], g[:, 1]) > 0)]
    if len(g) == 0:
        return None
    toward = -g / np.hypot(g[:, 0], g[:, 1])[:, None]  # the sun, in columns and rows
    east, north = toward[:, 0] * sx, toward[:, 1] * sy
    e, n = float(east.mean()), float(north.mean())
    return {
        "azimuth_deg": round(math.degrees(math.atan2(e, n)) % 360.0, 2),
        "isolated_craters": len(g),
        "resultant_length": round(math.hypot(e, n), 3),
    }


def describe_calibration(info: dict[str, Any]) -> str:
    """One line on the shading calibration of :func:`detect_craters` (its ``attrs``).

    Examples
    --------
    >>> describe_calibration(
    ...     {"isolated_craters": 3, "expected_dipole": 0.41, "assumed_expected_dipole": 0.2052}
    ... )
    'expected bowl dipole 0.410, the median of the 3 isolated craters of the scene (0.205 under the highest plausible sun)'
    """
    n, assumed = info["isolated_craters"], info["assumed_expected_dipole"]
    if not n:
        return (
            f"expected bowl dipole {assumed:.3f}, under the highest plausible sun "
            "(no isolated crater in the scene to calibrate on)"
        )
    whose = "the shading of the one" if n == 1 else f"the median of the {n}"
    return (
        f"expected bowl dipole {info['expected_dipole']:.3f}, {whose} isolated "
        f"crater{'s' if n > 1 else ''} of the scene ({assumed:.3f} under the highest plausible sun)"
    )


def _calibrate_shading(
    recs: pd.DataFrame | None, params: CraterParams, assumed: float
) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """Rescore a scene's detections with the dipole its isolated craters show.

    ``recs`` are the scene's detections (score at least the threshold) with ``_isolated`` and
    ``_shading_part`` from :func:`_detect_tile`; ``assumed`` is the expected dipole under the
    highest plausible sun. Returns the detections still at the threshold and what was used.
    """
    info: dict[str, Any] = {
        "isolated_craters": 0,
        "assumed_expected_dipole": round(float(assumed), 4),
        "expected_dipole": round(float(assumed), 4),
    }
    if recs is None or recs.empty:
        return recs, info
    small = 2 * recs["radius_px"].to_numpy() < _MIN_DIAMETER_PX / 1.15
    sh = recs["shading"].to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        ref = recs["_isolated"].to_numpy(bool) & ~small & (sh > 0)
    info["isolated_craters"] = int(ref.sum())
    if not ref.any():
        return recs, info
    expected = float(np.clip(np.median(sh[ref]), assumed, 0.6))
    info["expected_dipole"] = round(expected, 4)
    old = recs["_shading_part"].to_numpy(np.float64)
    at = np.isfinite(old) & (old > 0)
    lo, hi = params.shading_ramp
    new = ramps(sh[at], lo * expected, hi * expected)
    recs = recs.copy()
    recs.loc[at, "score"] = recs.loc[at, "score"].to_numpy() * new / old[at]
    recs = recs[recs["score"] >= params.score_threshold].reset_index(drop=True)
    return recs, info


def new_craters(craters: gpd.GeoDataFrame | None) -> gpd.GeoDataFrame | None:
    """The detections claimed as new craters: ``new`` true, or unknown (single-image mode).

    Detections with ``new`` false were already in the before image: they are not evidence of
    the event and are left out of evaluation and facility scores. Reads ``new`` as written to
    files too (booleans, or the strings ``"true"``/``"false"``).

    Examples
    --------
    >>> import geopandas as gpd
    >>> from shapely.geometry import Point
    >>> g = gpd.GeoDataFrame({"new": [True, False, None]}, geometry=[Point(0, 0)] * 3)
    >>> len(new_craters(g))
    2
    """
    if craters is None or craters.empty or "new" not in craters.columns:
        return craters
    flag = craters["new"]
    keep = flag.isna() | (flag.astype(str).str.lower() == "true")
    return craters[keep.to_numpy()].reset_index(drop=True)
