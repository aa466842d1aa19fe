"""The generated chest's fissures vary as real ones do: lobe volumes, incomplete and accessory fissures."""

from __future__ import annotations

import numpy as np

from covidlesionseg import labels
from covidlesionseg.phantom.generate import _anatomy
from covidlesionseg.phantom.trees import territory_points


def lattice(seed: int, step: float = 6.0):
    anat, tubes = _anatomy(seed)
    pts, lobe = territory_points(anat, tubes["exclusion"], np.random.default_rng(0), step=step)
    side = labels.lungs_from_lobes(lobe)
    return anat, pts.astype(np.float32), lobe, side


def test_lobe_fractions_vary_between_people_around_published_means():
    fractions = []
    for seed in range(12):
        _, _, lobe, _ = lattice(seed)
        fractions.append(np.bincount(lobe, minlength=6)[1:] / len(lobe))
    fractions = 100 * np.array(fractions)
    mean = fractions.mean(0)
    for value, published in zip(mean, (20, 9, 25, 24, 22)):  # CT volumetry means, % of both lungs
        assert abs(value - published) < 5
    assert np.all(fractions.max(0) - fractions.min(0) > 3)  # people differ in every lobe
    assert fractions[:, 1].min() > 2  # the middle lobe never vanishes


def test_incomplete_fissures_leave_gaps_but_keep_the_lobes():
    gaps = []
    for seed in range(12):
        anat, pts, lobe, side = lattice(seed, step=4.0)
        x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
        lobes_b, boundary, _ = anat.lobes_and_fissures(x, y, z, side)
        lobes_p, plate, _, half = anat.lobes_and_plates(x, y, z, side)
        assert np.array_equal(lobes_b, lobes_p)  # plates never change the lobes
        near = boundary < 2.0  # points next to a lobe boundary
        formed = plate[near] < 2.0
        gaps.append(1.0 - formed.mean())
        assert np.all(half[np.isfinite(plate)] > 0)
    gaps = np.array(gaps)
    assert gaps.min() < 0.1 and gaps.max() > 0.3  # nearly complete fissures in some people, wide gaps in others


def test_accessory_fissures_are_plates_inside_a_lobe():
    seeds = [s for s in range(60) if _anatomy(s)[0].accessory]
    assert 5 <= len(seeds) <= 40  # some people have one
    anat, pts, lobe, side = lattice(seeds[0], step=3.0)
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    _, boundary, _ = anat.lobes_and_fissures(x, y, z, side)
    _, plate, _, _ = anat.lobes_and_plates(x, y, z, side)
    accessory_only = (plate < 1.0) & (boundary > 6.0)  # bright plate far from any lobe boundary
    assert accessory_only.any()
    owner = {acc["lobe"] for acc in anat.accessory}
    lobe_here = anat.lobes_and_fissures(x, y, z, side)[0]
    assert set(np.unique(lobe_here[accessory_only])) <= owner
