"""Lobe conventions, detection and completion on the lungs (covidlesionseg.lobes)."""

from __future__ import annotations

import numpy as np
import pytest

from covidlesionseg import labels
from covidlesionseg import lobes as lb
from covidlesionseg.io import InputError, Volume

# Two lungs in a body; identity direction: numpy axis 2 (index i) runs from the patient's right to left.
SHAPE = (24, 14, 30)
SPACING = (5.0, 5.0, 5.0)
BOXES = {
    labels.RLL: np.s_[2:9, 2:12, 2:12], labels.RML: np.s_[9:15, 2:12, 2:12], labels.RUL: np.s_[15:22, 2:12, 2:12],
    labels.LLL: np.s_[2:11, 2:12, 17:27], labels.LUL: np.s_[11:22, 2:12, 17:27],
}
FLIP_LR = np.diag([-1.0, -1.0, 1.0])  # index i toward the patient's right, as example_ct in ../shared/data


def phantom(direction: np.ndarray | None = None) -> tuple[Volume, np.ndarray, np.ndarray]:
    """(CT with body, lungs, lobes on our convention); with FLIP_LR the arrays are mirrored along i so that
    the anatomy stays the same in patient space."""
    lobes = np.zeros(SHAPE, np.uint8)
    for lobe, box in BOXES.items():
        lobes[box] = lobe
    lungs = labels.lungs_from_lobes(lobes)
    hu = np.where(lungs > 0, -850.0, 40.0).astype(np.float32)
    hu[:, :, :1] = hu[:, :, -1:] = -1000.0  # air beside the body
    if direction is not None:
        lobes, lungs, hu = (np.ascontiguousarray(a[:, :, ::-1]) for a in (lobes, lungs, hu))
    return Volume(hu, SPACING, direction=np.eye(3) if direction is None else direction), lungs, lobes


def encode(lobes: np.ndarray, convention: str) -> np.ndarray:
    """Our lobe map written in an external convention."""
    inverse = {ours: external for external, ours in lb.CONVENTIONS[convention].items()}
    out = np.zeros(lobes.shape, np.int32)
    for ours, external in inverse.items():
        out[lobes == ours] = external
    return out


def test_conventions_are_complete_and_distinct():
    for name, mapping in lb.CONVENTIONS.items():
        assert sorted(mapping.values()) == sorted(labels.LOBE_NAMES), name
    assert lb.CONVENTIONS["covidlesionseg"] == {v: v for v in labels.LOBE_NAMES}


@pytest.mark.parametrize("convention", list(lb.CONVENTIONS))
@pytest.mark.parametrize("direction", [None, FLIP_LR])
def test_each_convention_converts(convention, direction):
    ct, _, truth = phantom(direction)
    external = encode(truth, convention)
    converted, name = lb.convert_lobe_map(external, convention)
    assert name == convention and converted.dtype == np.uint8
    np.testing.assert_array_equal(converted, truth)
    detected, name = lb.convert_lobe_map(external, ct=ct)  # our and lungmask maps need laterality to tell
    assert name == convention
    np.testing.assert_array_equal(detected, truth)


def test_totalsegmentator_other_organs_ignored():
    ct, _, truth = phantom()
    v2 = encode(truth, "totalsegmentator_v2")
    v2[0, :3, :3], v2[0, 5:8, 5:8], v2[23, :2, :2] = 5, 51, 117  # liver, heart, costal cartilages
    assert lb.detect_convention(v2, ct) == "totalsegmentator_v2"  # > 104: never TotalSegmentator v1
    np.testing.assert_array_equal(lb.convert_lobe_map(v2)[0], truth)
    v1 = encode(truth, "totalsegmentator_v1")
    v1[0, :3, :3], v1[23, :2, :2] = 42, 104  # esophagus, the largest v1 class
    # 13/14 are lobes in both versions; laterality decides (v2 would put left lobes in the right lung).
    assert lb.detect_convention(v1, ct) == "totalsegmentator_v1"
    np.testing.assert_array_equal(lb.convert_lobe_map(v1, ct=ct)[0], truth)
    lobes_only = encode(truth, "totalsegmentator_v2")  # a lobe-only v2 map (values 10..14) fits v1 by value
    assert lb.detect_convention(lobes_only, ct) == "totalsegmentator_v2"
    with pytest.raises(InputError, match="totalsegmentator_v2, totalsegmentator_v1"):
        lb.detect_convention(lobes_only)


def test_cip_types_stay_in_their_lobe_and_trachea_dropped():
    _, _, truth = phantom()
    cip = encode(truth, "cip")
    airway, vessel = 2 * 256, 3 * 256
    cip[4:6, 5:7, 5:7] += airway  # airway inside the RLL
    cip[16:18, 5:7, 20:22] += vessel  # vessel inside the LUL
    cip[0:2, 6:8, 14:16] = airway  # trachea: airway with no region
    assert lb.detect_convention(cip) == "cip"
    converted, _ = lb.convert_lobe_map(cip)
    np.testing.assert_array_equal(converted, truth)
    assert converted[4, 5, 5] == labels.RLL and converted[16, 5, 20] == labels.LUL and converted[0, 6, 14] == 0


def test_ambiguous_values_refused_naming_candidates():
    ct, _, truth = phantom()
    ours = encode(truth, "covidlesionseg")
    with pytest.raises(InputError, match="several conventions: lungmask, covidlesionseg;") as refusal:
        lb.detect_convention(ours)
    assert "--lobe-convention" in str(refusal.value) and "\n" not in str(refusal.value)
    # {4, 5} only, in the right lung: lungmask (RML, RLL) and CIP (RUL, RML) both fit the anatomy.
    right_only = np.where(np.isin(truth, [labels.RUL, labels.RML]), truth + 3, 0)
    with pytest.raises(InputError, match="lungmask, cip"):
        lb.detect_convention(right_only, ct)
    np.testing.assert_array_equal(lb.convert_lobe_map(right_only, "cip")[0], np.where(right_only, truth, 0))


@pytest.mark.parametrize("direction", [None, FLIP_LR])
def test_one_sided_map_decided_by_the_body_midline(direction):
    ct, _, truth = phantom(direction)
    right_only = np.where(np.isin(truth, [labels.RUL, labels.RML]), truth, 0)  # values 1, 2
    assert lb.detect_convention(right_only, ct) == "covidlesionseg"  # lungmask would call them left lobes
    left_only = encode(np.where(truth == labels.LUL, truth, 0), "lungmask")  # value 1 in the left lung
    assert lb.detect_convention(left_only, ct) == "lungmask"
    with pytest.raises(InputError, match="several conventions: lungmask, covidlesionseg;"):
        lb.detect_convention(left_only)


def test_laterality_uses_direction_cosines_not_array_order():
    ct, _, truth = phantom()
    mirrored_ct = Volume(ct.array, ct.spacing, direction=FLIP_LR)  # same arrays, patient sides swapped
    assert lb.detect_convention(truth, ct) == "covidlesionseg"
    with pytest.raises(InputError, match="lungmask undecided, covidlesionseg contradicted"):
        lb.detect_convention(truth, mirrored_ct)  # right lobes now lie on the left: neither fits cleanly


def test_explicit_convention_overrides_and_is_checked():
    _, _, truth = phantom()
    as_lungmask, name = lb.convert_lobe_map(truth, "lungmask")
    assert name == "lungmask" and as_lungmask[BOXES[labels.RUL]].max() == labels.LUL  # told, not detected
    with pytest.raises(InputError, match="unknown lobe convention 'lungmask_r231'; known: totalsegmentator_v2"):
        lb.convert_lobe_map(truth, "lungmask_r231")
    with pytest.raises(InputError, match="do not fit the covidlesionseg convention"):
        lb.convert_lobe_map(encode(truth, "totalsegmentator_v2"), "covidlesionseg")
    with pytest.raises(InputError, match="fit no known convention"):
        lb.detect_convention(np.full(SHAPE, 300, np.int32))
    with pytest.raises(InputError, match="empty"):
        lb.detect_convention(np.zeros(SHAPE, np.uint8))
    with pytest.raises(InputError, match="integer"):
        lb.detect_convention(truth.astype(np.float32))




def test_complete_lobes_every_lung_voxel_one_lobe_of_its_side():
    ct, lungs, truth = phantom()
    damaged = truth.copy()
    damaged[17:20, 5:9, 5:9] = 0  # hole inside the RUL
    damaged[13:18, 4:9, 19:25] = labels.RUL  # wrong side: RUL label inside the LUL
    damaged[0:2, :, :] = labels.LLL  # lobe label outside the lungs
    damaged[10:14, 2:12, 2:3] = 0  # an unlabelled rim of the RML
    completed = lb.complete_lobes(damaged, lungs, ct)
    assert completed.dtype == np.uint8
    np.testing.assert_array_equal(completed > 0, lungs > 0)
    np.testing.assert_array_equal(labels.lungs_from_lobes(completed), lungs)
    np.testing.assert_array_equal(completed, truth)


def test_complete_lobes_nearest_in_millimetres_and_sides_without_lobes():
    lungs = np.ones((3, 1, 5), np.uint8)
    lobes = np.zeros_like(lungs)
    lobes[0, 0, :] = labels.RUL
    lobes[:, 0, 4] = labels.RML
    # voxel (1, 0, 2): one slice (10 mm) from the RUL, two columns (2 mm) from the RML
    anisotropic = Volume(np.zeros(lungs.shape, np.float32), (1.0, 1.0, 10.0))
    assert lb.complete_lobes(lobes, lungs, anisotropic)[1, 0, 2] == labels.RML
    isotropic = Volume(np.zeros(lungs.shape, np.float32), (1.0, 1.0, 1.0))
    assert lb.complete_lobes(lobes, lungs, isotropic)[1, 0, 2] == labels.RUL
    ct, lungs, truth = phantom()
    right_only = np.where(labels.lungs_from_lobes(truth) == labels.RIGHT_LUNG, truth, 0)
    completed = lb.complete_lobes(right_only, lungs, ct)
    assert not completed[lungs == labels.LEFT_LUNG].any()  # no lobes on that side: left without one
    np.testing.assert_array_equal(completed, right_only)
    with pytest.raises(InputError, match="0..5"):
        lb.complete_lobes(encode(truth, "totalsegmentator_v2"), lungs, ct)


def test_complete_lobes_reports_its_repairs(caplog):
    """A map that misses lung voxels and spills outside the lungs is repaired and the mL are reported."""
    ct, lungs, truth = phantom()
    damaged = truth.copy()
    damaged[BOXES[labels.RUL]] = 0  # a whole lobe missing: its voxels join the nearest lobe
    damaged[0, 0, 0] = labels.RLL  # a lobe voxel outside the lungs
    with caplog.at_level("WARNING"):
        completed, repairs = lb.complete_lobes_with_report(damaged, lungs, ct)
        lb.complete_lobes(damaged, lungs, ct, source="test map")
    ml = ct.voxel_ml
    assert repairs["unassigned_ml"] == pytest.approx(ml * np.count_nonzero(truth == labels.RUL), abs=1e-3)
    assert repairs["outside_lungs_ml"] == pytest.approx(ml, abs=1e-3)
    assert np.array_equal(completed > 0, lungs > 0)
    assert "test map repaired on the lungs" in caplog.text and "without a lobe given the nearest lobe" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        lb.complete_lobes(truth, lungs, ct)
    assert caplog.text == ""  # a clean map is not reported
