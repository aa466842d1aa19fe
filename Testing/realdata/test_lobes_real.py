"""Real external lobe maps from ../shared/data: TotalSegmentator v2 output and a CIP lobe label map."""

from __future__ import annotations

import numpy as np
import pytest

from covidlesionseg import io, labels
from covidlesionseg import lobe_providers as lp
from covidlesionseg import lobes as lb

# TotalSegmentator v2 lobe ids and their voxel counts in example_seg.nii.gz (../shared/data/README.md).
TS_V2_COUNTS = {10: 259, 11: 1312, 12: 0, 13: 1, 14: 2735}
RIGHT_LOBES = [lobe for lobe, lung in labels.LOBE_LUNG.items() if lung == labels.RIGHT_LUNG]
LEFT_LOBES = [lobe for lobe, lung in labels.LOBE_LUNG.items() if lung == labels.LEFT_LUNG]


def mean_lps_x(volume: io.Volume, mask: np.ndarray) -> float:
    return float(volume.lps_points(np.argwhere(mask))[:, 0].mean())


@pytest.fixture(scope="module")
def totalseg(shared_data):
    folder = shared_data / "abdomen_lung_bases"
    ct = io.read_ct(folder / "example_ct_sm.nii.gz")
    return ct, io.read_label(folder / "example_seg.nii.gz", ct, resample=True)


def test_totalsegmentator_v2_detected_and_converted(totalseg):
    ct, seg = totalseg
    assert {v: int(np.count_nonzero(seg.array == v)) for v in TS_V2_COUNTS} == TS_V2_COUNTS
    assert lb.detect_convention(seg.array, ct) == "totalsegmentator_v2"
    assert lb.detect_convention(seg.array) == "totalsegmentator_v2"  # other organs up to 117: no ambiguity
    lobes, convention = lb.convert_lobe_map(seg.array, ct=ct)
    assert convention == "totalsegmentator_v2"
    expected = {labels.LUL: 259, labels.LLL: 1312, labels.RUL: 0, labels.RML: 1, labels.RLL: 2735}
    assert {lobe: int(np.count_nonzero(lobes == lobe)) for lobe in labels.LOBE_NAMES} == expected
    assert np.count_nonzero(lobes) == sum(expected.values())  # every other organ dropped


def test_totalsegmentator_sides_follow_the_direction_cosines(totalseg):
    ct, seg = totalseg
    assert ct.direction[0, 0] < 0  # index i runs toward the patient's right in this file
    lobes, _ = lb.convert_lobe_map(seg.array, "totalsegmentator_v2")
    right_x = mean_lps_x(ct, np.isin(lobes, RIGHT_LOBES))
    left_x = mean_lps_x(ct, np.isin(lobes, LEFT_LOBES))
    assert right_x < left_x  # LPS x grows toward the patient's left
    axis, sign = ct.patient_axis("LR")
    assert axis == 2 and sign == -1


def test_totalsegmentator_file_as_lobe_source(totalseg, shared_data):
    """The whole --lobes FILE path: read, resample, detect, convert and complete on lungs built from it."""
    ct, seg = totalseg
    lobes, _ = lb.convert_lobe_map(seg.array, "totalsegmentator_v2")
    lungs = labels.lungs_from_lobes(lobes)
    path = shared_data / "abdomen_lung_bases" / "example_seg.nii.gz"
    completed, source = lp.resolve_lobe_source(str(path), ct, lungs)
    assert source == "file:totalsegmentator_v2"
    np.testing.assert_array_equal(completed, lobes)


def test_cip_lobe_map_detected_and_converted(shared_data):
    label = io.read_label(shared_data / "cip_lobes" / "crop_ct_interactiveLobeSegmentation.nrrd")
    raw = label.array
    assert lb.detect_convention(raw) == "cip"
    lobes, convention = lb.convert_lobe_map(raw, ct=label)
    assert convention == "cip"
    region = raw % 256
    for cip_region, lobe in lb.CONVENTIONS["cip"].items():
        assert np.count_nonzero(lobes == lobe) == np.count_nonzero(region == cip_region)  # airways stay in the lobe
    trachea = raw == 512
    assert trachea.any() and not lobes[trachea].any()
    assert np.count_nonzero(lobes) == np.count_nonzero(raw) - np.count_nonzero(trachea)
    sub = lobes[::4, ::4, ::4]  # subsampled for the centroids
    sub_volume = io.Volume(sub, tuple(4 * s for s in label.spacing), label.origin, label.direction)
    right_x = mean_lps_x(sub_volume, np.isin(sub, RIGHT_LOBES))
    left_x = mean_lps_x(sub_volume, np.isin(sub, LEFT_LOBES))
    assert right_x + 50 < left_x


def encode(lobes: np.ndarray, convention: str) -> np.ndarray:
    out = np.zeros(lobes.shape, np.uint8)
    for external, ours in lb.CONVENTIONS[convention].items():
        out[lobes == ours] = external
    return out


@pytest.mark.parametrize("convention", ["covidlesionseg", "lungmask"])
def test_laterality_tells_our_convention_from_lungmask_on_real_lobes(totalseg, shared_data, convention):
    """Values 1..5 fit both; the real anatomy (right lobes at smaller LPS x) decides, in both index orders."""
    ct, seg = totalseg
    ts_lobes, _ = lb.convert_lobe_map(seg.array, "totalsegmentator_v2")
    cip = io.read_label(shared_data / "cip_lobes" / "crop_ct_interactiveLobeSegmentation.nrrd")
    cip_lobes, _ = lb.convert_lobe_map(cip.array[::2, ::2, ::2], "cip")
    cip_grid = io.Volume(cip_lobes, tuple(2 * s for s in cip.spacing), cip.origin, cip.direction)
    for grid, lobes in ((ct, ts_lobes), (cip_grid, cip_lobes)):
        encoded = encode(lobes, convention)
        with pytest.raises(io.InputError, match="lungmask, covidlesionseg"):
            lb.detect_convention(encoded)
        converted, detected = lb.convert_lobe_map(encoded, ct=grid)
        assert detected == convention
        np.testing.assert_array_equal(converted, lobes)


def test_builtin_lobes_on_a_real_chest_take_published_fractions(shared_data):
    """cip_chest64 (4 mm voxels, no fissure visible): the prior's lobes, every lung voxel in one lobe, volumes
    near the adult fractions of CT volumetry, right lobes on the patient's right."""
    from covidlesionseg.lobe_builtin import PUBLISHED_FRACTIONS
    from covidlesionseg.lungs import segment_lungs

    ct = io.read_ct(shared_data / "cip_chest64" / "ct-64.nrrd")
    lungs = segment_lungs(ct)
    lobes, source = lp.resolve_lobe_source("builtin", ct, lungs)
    assert source == "builtin"
    assert np.array_equal(labels.lungs_from_lobes(lobes), lungs)
    in_lung = lobes[lungs > 0]
    for lobe, published in PUBLISHED_FRACTIONS.items():
        assert abs(100.0 * np.mean(in_lung == lobe) - published) < 3.0, labels.LOBE_NAMES[lobe]
    assert mean_lps_x(ct, np.isin(lobes, RIGHT_LOBES)) + 50 < mean_lps_x(ct, np.isin(lobes, LEFT_LOBES))
    # The upper lobes lie above the lower lobes (LPS z toward the head).
    z = {lobe: float(ct.lps_points(np.argwhere(lobes == lobe))[:, 2].mean()) for lobe in labels.LOBE_NAMES}
    assert z[labels.RUL] > z[labels.RML] > z[labels.RLL] - 15 and z[labels.LUL] > z[labels.LLL]


def test_builtin_lobes_on_the_lung_bases_of_an_abdominal_ct(shared_data, caplog):
    """Only the lung bases in the field of view: lobes still cover every lung voxel, the cut is reported."""

    ct = io.read_ct(shared_data / "abdomen_lung_bases" / "example_ct_sm.nii.gz")
    seg = io.read_label(shared_data / "abdomen_lung_bases" / "example_seg.nii.gz", ct, resample=True)
    ts_lobes, _ = lb.convert_lobe_map(seg.array, "totalsegmentator_v2")
    lungs = labels.lungs_from_lobes(ts_lobes)
    with caplog.at_level("WARNING"):
        lobes, _ = lp.resolve_lobe_source("builtin", ct, lungs)
    assert "cut by the field of view" in caplog.text
    assert np.array_equal(labels.lungs_from_lobes(lobes), lungs)
