"""The classical lesion engine on real CT (../shared/data): few false positives in normal lung, inserted lesions found.

cip_chest64 is a real normal chest CT at 4.17 x 4.17 x 3.99 mm, so partial volume is heavy: about 12 % of its lung
voxels lie above -750 HU (vessels, pleura, fissures, airway walls, the lung bases against the diaphragm).  The goal
for the engine is a percentage of opacity (PO) below 1 % there.  Lesions are then inserted into the same real lung,
subpleural and posterior-basal as COVID-19 lesions usually are: a ground-glass opacity made by raising the real
parenchyma by 310 HU (its vessels and texture stay visible through it) and a consolidation at +20 HU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from covidlesionseg.engines.classical import ClassicalEngine
from covidlesionseg.io import Volume, read_ct, read_label
from covidlesionseg.labels import LEFT_LUNG, RIGHT_LUNG
from covidlesionseg.lungs import segment_lungs

CIP_LEFT_REGIONS, CIP_RIGHT_REGIONS = (9, 10, 11), (12, 13, 14)  # lung thirds in lm-64 (value % 256)


def percent_opacity(lesion: np.ndarray, lungs: np.ndarray) -> float:
    return 100.0 * float(lesion.sum()) / float((lungs > 0).sum())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def cip(shared_data: Path) -> tuple[Volume, np.ndarray]:
    ct = read_ct(shared_data / "cip_chest64" / "ct-64.nrrd")
    region = read_label(shared_data / "cip_chest64" / "lm-64.nrrd", ct).array % 256
    lungs = np.zeros(ct.shape, np.uint8)
    lungs[np.isin(region, CIP_RIGHT_REGIONS)] = RIGHT_LUNG
    lungs[np.isin(region, CIP_LEFT_REGIONS)] = LEFT_LUNG
    return ct, lungs


@pytest.fixture(scope="module")
def engine() -> ClassicalEngine:
    return ClassicalEngine()


def test_normal_real_chest_with_its_reference_lung_mask(cip, engine: ClassicalEngine) -> None:
    ct, lungs = cip
    lung = lungs > 0
    assert percent_opacity(lung & (ct.array > -750), lungs) > 8.0  # a bare threshold is far off
    assert percent_opacity(engine.segment(ct, lungs), lungs) < 1.0


def test_normal_real_chest_with_the_builtin_lung_mask(cip, engine: ClassicalEngine) -> None:
    ct, reference = cip
    lungs = segment_lungs(ct)
    assert dice(lungs > 0, reference > 0) > 0.9
    assert percent_opacity(engine.segment(ct, lungs), lungs) < 1.0


def test_two_real_thin_slices_at_fine_resolution(shared_data: Path, engine: ClassicalEngine) -> None:
    # Two 0.59 mm real slices; the lobe map of the same crop (slices 60 and 61) is their lung mask.
    folder = shared_data / "cip_lobes"
    ct = read_ct(folder / "crop_ct_2slices.nrrd")
    lobes = read_label(folder / "crop_ct_interactiveLobeSegmentation.nrrd")
    first = int(round((ct.origin[2] - lobes.origin[2]) / lobes.spacing[2]))
    region = lobes.array[first:first + ct.shape[0]] % 256
    lungs = np.isin(region, (4, 5, 6, 7, 8)).astype(np.uint8)
    assert lungs.sum() > 10000
    assert percent_opacity(engine.segment(ct, lungs), lungs) < 1.0


def _sphere(ct: Volume, centre_zyx: np.ndarray, radius_mm: float) -> np.ndarray:
    grid = np.indices(ct.shape, dtype=np.float32)
    offsets = [(grid[a] - centre_zyx[a]) * s for a, s in enumerate(ct.spacing_zyx)]
    return np.sqrt(sum(o * o for o in offsets)) <= radius_mm


def _subpleural_posterior_point(ct: Volume, lung: np.ndarray, slice_index: int, depth_mm: float) -> np.ndarray:
    """A point ``depth_mm`` inside the posterior pleura of one lung on one slice (numpy order)."""
    axis, sign = ct.patient_axis("AP")
    depth = ndimage.distance_transform_edt(lung, sampling=ct.spacing_zyx)[slice_index]
    candidates = np.argwhere(np.abs(depth - depth_mm) < 0.6 * max(ct.spacing))
    rows = candidates[:, axis - 1] * sign  # larger = more posterior
    best = candidates[np.argmax(rows)]
    return np.array([slice_index, *best], dtype=float)


def test_inserted_lesions_in_real_lung_are_found(cip, engine: ClassicalEngine) -> None:
    ct, lungs = cip
    hu = ct.array.copy()
    right, left = lungs == RIGHT_LUNG, lungs == LEFT_LUNG
    axis, sign = ct.patient_axis("SI")
    assert axis == 0
    slices = np.flatnonzero(right.any(axis=(1, 2)))
    lowest, highest = (slices[0], slices[-1]) if sign > 0 else (slices[-1], slices[0])
    base = int(round(lowest + 0.3 * (highest - lowest)))  # lower third: basal
    ggo = _sphere(ct, _subpleural_posterior_point(ct, right, base, 10.0), 18.0) & right
    consolidation = _sphere(ct, _subpleural_posterior_point(ct, left, base, 10.0), 15.0) & left
    assert ggo.sum() * ct.voxel_ml > 8.0 and consolidation.sum() * ct.voxel_ml > 6.0
    hu[ggo] = np.minimum(hu[ggo] + 310.0, 100.0)
    rng = np.random.default_rng(0)
    hu[consolidation] = 20.0 + rng.normal(0.0, 25.0, int(consolidation.sum()))
    lesion = ggo | consolidation
    result = engine.segment(ct.like(hu.astype(np.float32)), lungs)
    assert dice(result, lesion) > 0.7
    for part in (ggo, consolidation):
        assert (result & part).sum() / part.sum() > 0.75
    assert percent_opacity(result & ~lesion, lungs) < 1.0
