"""The built-in lobe provider (covidlesionseg.lobe_builtin) on generated CT with exact lobes, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidlesionseg import labels
from covidlesionseg.io import InputError, Volume
from covidlesionseg.lobe_builtin import PUBLISHED_FRACTIONS, Surface, _fit, _vessel_valley, builtin_lobes
from covidlesionseg.metrics import dice
from covidlesionseg.phantom import generate_phantom

FLIP_LR = np.diag([-1.0, -1.0, 1.0])


def lobe_dice(pred: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    return {lobe: dice(pred == lobe, truth == lobe) for lobe in labels.LOBE_NAMES}


def check_partition(lobes: np.ndarray, lungs: np.ndarray) -> None:
    assert lobes.dtype == np.uint8
    assert np.array_equal(labels.lungs_from_lobes(lobes), lungs)  # every lung voxel in one lobe of its side


@pytest.fixture(scope="module")
def coarse():
    return generate_phantom(5, "CT2", shape=(64, 96, 96))


@pytest.fixture(scope="module")
def fine():
    return generate_phantom(5, "CT0", spacing=(2.0, 2.0, 2.0))


def test_prior_alone_on_coarse_ct(coarse):
    """3.4 x 3.4 x 5.3 mm without the image: the prior calibrated on published fractions does the work."""
    lobes = builtin_lobes(coarse.ct, coarse.lungs, use_image=False)
    check_partition(lobes, coarse.lungs)
    scores = lobe_dice(lobes, coarse.lobes)
    assert min(scores.values()) > 0.6 and np.mean(list(scores.values())) > 0.84, scores
    in_lung = lobes[coarse.lungs > 0]
    fractions = {lobe: 100.0 * np.mean(in_lung == lobe) for lobe in labels.LOBE_NAMES}
    for lobe, published in PUBLISHED_FRACTIONS.items():  # the prior's volumes, up to the lungs' own sizes
        assert abs(fractions[lobe] - published) < 6.0, (labels.LOBE_NAMES[lobe], fractions[lobe])


def test_thick_slices_use_the_vessel_gaps():
    """5 mm slices: the fissure plates are blurred, yet the gaps the vessels leave at the fissures and the steep
    oblique fissures still place the lobes better than the prior alone, the middle lobe included."""
    thick = generate_phantom(4, "CT1", spacing=(1.6, 1.6, 5.0))
    prior = lobe_dice(builtin_lobes(thick.ct, thick.lungs, use_image=False), thick.lobes)
    lobes = builtin_lobes(thick.ct, thick.lungs)
    check_partition(lobes, thick.lungs)
    fitted = lobe_dice(lobes, thick.lobes)
    assert np.mean(list(fitted.values())) > np.mean(list(prior.values())) + 0.02, (prior, fitted)
    assert fitted[labels.RML] > prior[labels.RML] and min(fitted.values()) > 0.75, (prior, fitted)


def test_fissure_evidence_improves_on_the_prior(fine):
    """At 2 mm the fissures are visible: the fitted surfaces beat the prior planes in every lobe."""
    prior = lobe_dice(builtin_lobes(fine.ct, fine.lungs, use_image=False), fine.lobes)
    fitted = lobe_dice(builtin_lobes(fine.ct, fine.lungs), fine.lobes)
    assert all(fitted[lobe] >= prior[lobe] - 0.005 for lobe in labels.LOBE_NAMES), (prior, fitted)
    assert np.mean(list(fitted.values())) > np.mean(list(prior.values())) + 0.02
    assert np.mean(list(fitted.values())) > 0.95 and min(fitted.values()) > 0.9, fitted
    assert fitted[labels.RML] > prior[labels.RML] + 0.1, (prior, fitted)  # the minor fissure found, not assumed


def flat_surface() -> Surface:
    """A horizontal plane through the origin (normal toward the head, LPS z), 50 mm per plane unit."""
    return Surface(np.zeros(3), np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]),
                   (50.0, 50.0))


def test_vessel_gap_places_a_fissure_with_no_plate():
    """Small vessels everywhere but within 3 mm of a tilted plane (a fissure, formed or not): the gap search
    moves and tilts the prior plane onto it; with no gap it leaves the prior alone."""
    rng = np.random.default_rng(3)
    pts = rng.uniform([-50.0, -50.0, -40.0], [50.0, 50.0, 40.0], (200_000, 3)).astype(np.float32)
    fissure_z = 10.0 + 0.16 * pts[:, 1]  # 10 mm up, rising 8 mm per 50 mm toward posterior
    in_gap = np.abs(pts[:, 2] - fissure_z) < 3.0
    vessel = rng.random(len(pts)) < np.where(in_gap, 0.005, 0.12)
    found = _vessel_valley(flat_surface(), pts, vessel, band=32.0)
    on_fissure = np.stack([pts[:500, 0], pts[:500, 1], fissure_z[:500]], 1)
    assert np.abs(found.side(on_fissure)).max() < 2.5
    uniform = rng.random(len(pts)) < 0.12
    prior = flat_surface()
    assert _vessel_valley(prior, pts, uniform, band=32.0) is prior


def test_local_field_follows_bends_the_polynomial_cannot():
    """Plates on a fissure with a 90 mm wave of 8 mm: the polynomial plus the local height field follow it within
    2 mm (the cubic alone misses by more than 3 mm)."""
    rng = np.random.default_rng(4)
    xy = rng.uniform(-60.0, 60.0, (6000, 2))
    z = 8.0 * np.sin(2 * np.pi * xy[:, 1] / 90.0)
    plates = np.column_stack([xy, z]).astype(np.float32)
    normals = np.tile([0.0, 0.0, 1.0], (len(plates), 1))
    strength = np.full(len(plates), 40.0, np.float32)
    grid = np.stack(np.meshgrid(np.linspace(-60, 60, 20), np.linspace(-60, 60, 20), [0.0]), -1).reshape(-1, 3)
    fitted = _fit(flat_surface(), plates, normals, strength, grid.astype(np.float32), min_cos=0.8)
    assert fitted.local is not None
    inner = np.all(np.abs(xy) < 50.0, axis=1)
    assert np.abs(fitted.side(plates[inner])).max() < 2.0
    fitted.local = None
    assert np.abs(fitted.side(plates[inner])).max() > 3.0


def test_sides_come_from_the_direction_cosines(coarse):
    """The same chest stored mirrored along i with a mirrored direction gives the mirrored lobes."""
    ct = coarse.ct
    flipped = Volume(np.ascontiguousarray(ct.array[:, ::-1, ::-1]), ct.spacing,
                     tuple(ct.lps_points([[0, ct.shape[1] - 1, ct.shape[2] - 1]])[0]), ct.direction @ FLIP_LR)
    lungs = np.ascontiguousarray(coarse.lungs[:, ::-1, ::-1])
    lobes = builtin_lobes(flipped, lungs)[:, ::-1, ::-1]
    check_partition(lobes, coarse.lungs)
    agreement = lobe_dice(lobes, builtin_lobes(ct, coarse.lungs))  # the working grid's blocks fall differently
    assert min(agreement.values()) > 0.97, agreement


def test_one_lung_only_and_lungs_cut_by_the_field_of_view(coarse, caplog):
    right_only = np.where(coarse.lungs == labels.RIGHT_LUNG, coarse.lungs, 0).astype(np.uint8)
    lobes = builtin_lobes(coarse.ct, right_only)
    check_partition(lobes, right_only)
    assert set(np.unique(lobes)) == {0, labels.RUL, labels.RML, labels.RLL}
    # Keep the lower half of the slices: lungs touch the top slice, so a typical lung height stands in.
    axis, sign = coarse.ct.patient_axis("SI")
    assert axis == 0 and sign > 0
    rows = np.flatnonzero(coarse.lungs.any(axis=(1, 2)))
    cut = int(rows.mean())
    ct = Volume(coarse.ct.array[:cut], coarse.ct.spacing, coarse.ct.origin, coarse.ct.direction)
    lungs = np.ascontiguousarray(coarse.lungs[:cut])
    with caplog.at_level("WARNING"):
        lobes = builtin_lobes(ct, lungs)
    assert "cut by the field of view at the top" in caplog.text
    check_partition(lobes, lungs)
    truth = coarse.lobes[:cut]
    assert np.mean(lobes[lungs > 0] == truth[lungs > 0]) > 0.6  # half a lung: a typical height stands in


def test_bad_input(coarse):
    with pytest.raises(InputError, match="no lung voxels"):
        builtin_lobes(coarse.ct, np.zeros(coarse.ct.shape, np.uint8))
    with pytest.raises(InputError, match="must lie on the CT grid"):
        builtin_lobes(coarse.ct, coarse.lungs[1:])


def test_demo_runs_the_builtin_provider(tmp_path):
    from covidlesionseg.demo import run_demo

    run_demo(tmp_path / "demo", shape=(48, 80, 80), quiet=True)
    severity = json.loads((tmp_path / "demo" / "segmentation" / "severity.json").read_text())
    assert severity["lobe_source"] == "builtin" and severity["LSS"] is not None
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(metrics["lobes"]) == {f"{name} Dice" for name in labels.LOBE_NAMES.values()}
    assert min(metrics["lobes"].values()) > 0.3  # coarse 80x80 grid, lungs from the classical engine


def test_beyond_the_plates_the_fissure_continues_along_its_tangent_plane():
    """Plates only in the middle of the lung (an incomplete fissure, noisy): beyond them the fitted surface goes on
    as its tangent plane, which swings far less from the true plane than the cubic continued freely."""
    rng = np.random.default_rng(5)
    xy = rng.uniform(-30.0, 30.0, (5000, 2))
    plates = np.column_stack([xy, 5.0 + 0.2 * xy[:, 1] + rng.normal(0.0, 1.0, len(xy))]).astype(np.float32)
    normals = np.tile([0.0, 0.0, 1.0], (len(plates), 1))
    strength = np.full(len(plates), 40.0, np.float32)
    grid = np.stack(np.meshgrid(np.linspace(-70, 70, 15), np.linspace(-70, 70, 15), [0.0]), -1).reshape(-1, 3)
    fitted = _fit(flat_surface(), plates, normals, strength, grid.astype(np.float32), min_cos=0.8)
    assert max(abs(e) for e in fitted.extent) < 0.7  # the evidence spans |u|, |v| < 0.6 of the 50 mm unit
    near = plates[np.all(np.abs(xy) < 25.0, axis=1)]
    assert np.abs(fitted.side(near)).mean() < 1.2  # the fit holds where the plates are
    far = np.array([[x, y, 5.0 + 0.2 * y] for x in (-70.0, 0.0, 70.0) for y in (-70.0, 0.0, 70.0)], np.float32)
    tangent = np.abs(fitted.side(far)).max()
    fitted.extent = (-1.5, 1.5, -1.5, 1.5)
    assert tangent < 0.6 * np.abs(fitted.side(far)).max()
