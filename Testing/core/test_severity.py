"""Severity scores (covidlesionseg.severity) against the definitions in docs/contracts.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covidlesionseg import labels
from covidlesionseg import severity as sv
from covidlesionseg.io import InputError, Volume

# A two-lung phantom: every lobe is a 10 x 10 x 10 block (1000 voxels), so k lesion voxels in a lobe give
# exactly p = k / 10 %.  Identity direction: numpy axis 0 is inferior -> superior, axis 2 right -> left.
SHAPE = (32, 12, 26)
LOBE_BOXES = {
    labels.RLL: np.s_[1:11, 1:11, 1:11], labels.RML: np.s_[11:21, 1:11, 1:11], labels.RUL: np.s_[21:31, 1:11, 1:11],
    labels.LLL: np.s_[1:11, 1:11, 14:24], labels.LUL: np.s_[11:21, 1:11, 14:24],
}
LUNG_HU, LOW_LESION_HU, HIGH_LESION_HU = -850.0, -500.0, 0.0
SCORE_KEYS = {"lobe_source", "coverage", "config", "lung_ml", "lesion_ml", "high_opacity_ml", "PO", "PHO", "LSS",
              "LHOS", "CTSS", "CTSS_category", "CT_category", "lungs", "lobes"}
WHOLE_LOBE_SCORES = ("LSS", "LHOS", "CTSS", "CTSS_category", "CT_category")


def phantom(spacing=(5.0, 5.0, 5.0), direction=None) -> tuple[Volume, np.ndarray, np.ndarray]:
    lobes = np.zeros(SHAPE, np.uint8)
    for lobe, box in LOBE_BOXES.items():
        lobes[box] = lobe
    lungs = labels.lungs_from_lobes(lobes)
    hu = np.where(lungs > 0, LUNG_HU, 40.0).astype(np.float32)
    return Volume(hu, spacing, direction=np.eye(3) if direction is None else direction), lungs, lobes


def lesion_in(lobe: int, k: int) -> np.ndarray:
    """k lesion voxels in one lobe (the first k of its block in C order)."""
    region = np.zeros(SHAPE, bool)
    region[LOBE_BOXES[lobe]] = True
    mask = np.zeros(SHAPE, bool)
    mask.reshape(-1)[np.flatnonzero(region)[:k]] = True
    return mask


def score(ct, lesions, lungs, lobes, config=sv.DEFAULT_CONFIG):
    return sv.compute_severity(ct, lesions, lungs, lobes, config=config, lobe_source="truth")


def random_lesions(seed: int, lungs: np.ndarray, density: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(SHAPE) < density) & (lungs > 0)


def random_hu(seed: int, lungs: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    return np.where(lungs > 0, rng.uniform(-1000, 100, SHAPE), 40.0).astype(np.float32)


# --- bins of the pure functions, each boundary at, just below and just above -----------------------------
def below(x: float) -> float:
    return float(np.nextafter(x, -np.inf))


def above(x: float) -> float:
    return float(np.nextafter(x, np.inf))


ML = 10.0  # a lesion volume well above the floor
QUARTER_CASES = [(below(25), ML, 1), (25.0, ML, 1), (above(25), ML, 2), (below(50), ML, 2), (50.0, ML, 2),
                 (above(50), ML, 3), (below(75), ML, 3), (75.0, ML, 3), (above(75), ML, 4), (100.0, ML, 4)]
FLOOR_CASES = [(0.0, 0.0, 0), (0.01, below(0.1), 0), (0.01, 0.1, 0), (0.01, above(0.1), 1)]


@pytest.mark.parametrize(("percent", "lesion_ml", "points"), FLOOR_CASES + QUARTER_CASES)
def test_lss_and_lhos_bins(percent, lesion_ml, points):
    assert sv.lss_points(percent, lesion_ml) == points
    assert sv.lhos_points(percent, lesion_ml) == points


@pytest.mark.parametrize(("percent", "lesion_ml", "points"), FLOOR_CASES + [
    (below(5), ML, 1), (5.0, ML, 2), (above(5), ML, 2),  # "0 < p < 5", "5 <= p <= 25"
    (below(25), ML, 2), (25.0, ML, 2), (above(25), ML, 3), (below(50), ML, 3), (50.0, ML, 3), (above(50), ML, 4),
    (below(75), ML, 4), (75.0, ML, 4), (above(75), ML, 5), (100.0, ML, 5)])
def test_ctss_bins(percent, lesion_ml, points):
    assert sv.ctss_points(percent, lesion_ml) == points


@pytest.mark.parametrize(("percent", "lesion_ml", "points"), FLOOR_CASES + QUARTER_CASES)
def test_ct_category_bins(percent, lesion_ml, points):
    assert sv.ct_category(percent, lesion_ml) == f"CT{points}"


@pytest.mark.parametrize(("total", "category"), [(None, None), (0, "none"), (1, "mild"), (5, "mild"), (6, "moderate"),
                                                 (14, "moderate"), (15, "severe"), (25, "severe")])
def test_ctss_category(total, category):
    assert sv.ctss_category(total) == category


@pytest.mark.parametrize("total", [-1, 26])
def test_ctss_category_out_of_range(total):
    with pytest.raises(ValueError):
        sv.ctss_category(total)


def test_floor_zero_reproduces_papers():
    paper = sv.SeverityConfig(floor_ml=0.0)
    assert sv.lss_points(1e-6, 1e-9, paper) == 1 and sv.ctss_points(1e-6, 1e-9, paper) == 1
    assert sv.ct_category(1e-6, 1e-9, paper) == "CT1"
    assert sv.lss_points(0.0, 0.0, paper) == 0 and sv.ct_category(0.0, 0.0, paper) == "CT0"


# --- bins through the whole computation (exact percentages from voxel counts) ---------------------------
@pytest.mark.parametrize(("k", "lss", "ctss"), [
    (0, 0, 0), (1, 1, 1), (49, 1, 1), (50, 1, 2), (51, 1, 2), (249, 1, 2), (250, 1, 2), (251, 2, 3),
    (499, 2, 3), (500, 2, 3), (501, 3, 4), (749, 3, 4), (750, 3, 4), (751, 4, 5), (1000, 4, 5)])
def test_lobe_points_at_voxel_exact_boundaries(k, lss, ctss):
    ct, lungs, lobes = phantom()
    lesions = lesion_in(labels.RUL, k)
    ct.array[lesions] = HIGH_LESION_HU
    result = score(ct, lesions, lungs, lobes)
    rul = result["lobes"]["RUL"]
    assert rul["percent"] == k / 10 and rul["high_opacity_percent"] == k / 10
    assert (rul["lss"], rul["lhos"], rul["ctss"]) == (lss, lss, ctss)
    assert (result["LSS"], result["LHOS"], result["CTSS"]) == (lss, lss, ctss)
    assert result["CTSS_category"] == sv.ctss_category(ctss)


@pytest.mark.parametrize(("k", "category"), [(749, "CT1"), (750, "CT1"), (751, "CT2"), (1500, "CT2"),
                                             (1501, "CT3"), (2250, "CT3"), (2251, "CT4")])
def test_ct_category_from_the_larger_lung(k, category):
    """The right lung holds 3000 voxels: 750 are 25 %; the left lung's smaller share does not decide."""
    ct, lungs, lobes = phantom()
    right = np.zeros(SHAPE, bool)
    right.reshape(-1)[np.flatnonzero(lungs == labels.RIGHT_LUNG)[:k]] = True
    left = lesion_in(labels.LLL, 100)  # 5 % of the left lung
    result = score(ct, right | left, lungs, lobes)
    assert result["lungs"]["right"]["percent"] == pytest.approx(100 * k / 3000)
    assert result["CT_category"] == category


def test_floor_in_the_full_computation():
    ct, lungs, lobes = phantom()  # 5 mm voxels: 0.125 mL each
    one_voxel = lesion_in(labels.RML, 1)
    at_floor = score(ct, one_voxel, lungs, lobes, sv.SeverityConfig(floor_ml=0.125))
    assert (at_floor["LSS"], at_floor["CTSS"], at_floor["CT_category"]) == (0, 0, "CT0")
    assert at_floor["lobes"]["RML"]["percent"] == 0.1 and at_floor["PO"] > 0  # percentages never floored
    default = score(ct, one_voxel, lungs, lobes)  # 0.125 mL > 0.1 mL
    assert (default["LSS"], default["CTSS"], default["CT_category"]) == (1, 1, "CT1")
    fine_ct, _, _ = phantom(spacing=(1.0, 1.0, 1.0))  # 0.001 mL per voxel, below the default floor
    assert score(fine_ct, one_voxel, lungs, lobes)["CTSS"] == 0
    assert score(fine_ct, one_voxel, lungs, lobes, sv.SeverityConfig(floor_ml=0.0))["CTSS"] == 1


# --- the dict ---------------------------------------------------------------------------------------------
def test_keys_values_and_config():
    ct, lungs, lobes = phantom()
    lesions = lesion_in(labels.RUL, 300) | lesion_in(labels.LLL, 20)
    ct.array[lesion_in(labels.RUL, 100)] = HIGH_LESION_HU
    config = sv.SeverityConfig(floor_ml=0.5, high_opacity_hu=-300.0)
    result = score(ct, lesions, lungs, lobes, config)
    assert set(result) == SCORE_KEYS
    assert set(result["lungs"]) == {"right", "left"}
    assert all(set(v) == {"volume_ml", "lesion_ml", "percent"} for v in result["lungs"].values())
    assert list(result["lobes"]) == ["RUL", "RML", "RLL", "LUL", "LLL"]
    lobe_keys = {"volume_ml", "lesion_ml", "high_opacity_ml", "percent", "high_opacity_percent", "lss", "lhos", "ctss"}
    assert all(set(v) == lobe_keys for v in result["lobes"].values())
    assert result["config"] == config.to_json() and result["config"]["floor_ml"] == 0.5
    assert result["config"]["high_opacity_hu"] == -300.0
    assert result["config"]["bins"]["CTSS"]["bins"][1:3] == ["0 < p < 5", "5 <= p <= 25"]
    assert result["coverage"] == {"complete": True, "reason": ""}
    assert result["lung_ml"] == 5000 * 0.125 and result["lesion_ml"] == 320 * 0.125
    assert result["high_opacity_ml"] == 100 * 0.125 and result["PHO"] == 100 * 100 / 5000
    assert result["PO"] == 100 * 320 / 5000
    assert (result["LSS"], result["LHOS"], result["CTSS"]) == (2 + 1, 1, 3 + 1)
    assert result["CTSS_category"] == "mild" and result["CT_category"] == "CT1"
    assert json.loads(json.dumps(result)) == result


def test_document_and_tables_come_from_the_declared_scores():
    """Each score is declared once (severity.SCORES); the document's keys and the tables' columns follow it."""
    ct, lungs, lobes = phantom()
    result = score(ct, lesion_in(labels.RUL, 300), lungs, lobes)
    declared = [s.key for s in sv.SCORES]
    assert [k for k in result if k in sv.SCORE_BY_KEY] == declared  # every score, in the declared order
    region_scores = [s for s in sv.SCORES if s.region_key]
    assert [s.key for s in region_scores] == ["PO", "PHO", "LSS", "LHOS", "CTSS"]
    for lobe in result["lobes"].values():
        assert all(s.region_key in lobe for s in region_scores)
    for s in sv.LOBE_POINTS:  # whole-chest points are the lobes' points summed
        assert result[s.key] == sum(lobe[s.region_key] for lobe in result["lobes"].values())
    assert [c.whole_key for c in sv.TABLE_COLUMNS] == ["lung_ml", "lesion_ml", *(s.key for s in region_scores)]
    assert [c.title for c in sv.TABLE_COLUMNS][2:] == [s.column for s in region_scores]


def test_split_opacity_is_recomputed_from_hu():
    ct, lungs, lobes = phantom()
    lesions = lesion_in(labels.LUL, 40)
    idx = np.flatnonzero(lesions)
    ct.array.reshape(-1)[idx[:10]] = labels.HIGH_OPACITY_HU  # at the threshold: high opacity
    ct.array.reshape(-1)[idx[10:20]] = np.nextafter(np.float32(labels.HIGH_OPACITY_HU), np.float32(-np.inf))
    split = sv.split_opacity(lesions, ct)
    assert split.dtype == np.uint8 and set(np.unique(split)) == {0, 1, 2}
    assert np.count_nonzero(split == 2) == 10 and np.count_nonzero(split == 1) == 30
    wrong_labels = lesions.astype(np.uint8) * 2  # every lesion voxel claims "high opacity"
    assert score(ct, wrong_labels, lungs, lobes) == score(ct, lesions, lungs, lobes) == score(ct, split, lungs, lobes)
    assert score(ct, wrong_labels, lungs, lobes)["lobes"]["LUL"]["high_opacity_ml"] == 10 * 0.125


# --- coverage and lobe sources ------------------------------------------------------------------------------
def assert_whole_lobe_scores_null(result):
    assert all(result[key] is None for key in WHOLE_LOBE_SCORES)
    assert all(lobe[key] is None for lobe in result["lobes"].values() for key in ("lss", "lhos", "ctss"))
    assert result["coverage"]["complete"] is False and result["PO"] > 0  # percentages still given


@pytest.mark.parametrize(("z", "sign", "edge"), [(0, 1, "inferior"), (-1, 1, "superior"), (0, -1, "superior")])
def test_lung_cut_by_field_of_view(z, sign, edge):
    ct, lungs, lobes = phantom(direction=np.diag([1.0, 1.0, float(sign)]))
    lungs[z, 1:11, 1:11], lobes[z, 1:11, 1:11] = labels.RIGHT_LUNG, labels.RLL if z == 0 else labels.RUL
    result = score(ct, lesion_in(labels.RUL, 100), lungs, lobes)
    assert_whole_lobe_scores_null(result)
    assert "right lung" in result["coverage"]["reason"] and edge in result["coverage"]["reason"]
    assert "left lung" not in result["coverage"]["reason"]
    assert sv.check_coverage(ct, lungs, lobes) == (False, result["coverage"]["reason"])


def test_field_of_view_follows_the_direction_cosines():
    """Lungs touching the array's last x index are cut only when that axis is superior-inferior."""
    ct, lungs, lobes = phantom()
    lungs[:, 1:11, 24:], lobes[:, 1:11, 24:] = 0, 0
    lungs[1:21, 1:11, 24:], lobes[1:11, 1:11, 24:], lobes[11:21, 1:11, 24:] = labels.LEFT_LUNG, labels.LLL, labels.LUL
    lesions = lesion_in(labels.LUL, 100)
    assert score(ct, lesions, lungs, lobes)["coverage"]["complete"] is True
    si_along_i = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # index i -> superior, k -> left
    rotated = Volume(ct.array, ct.spacing, direction=si_along_i)
    assert rotated.patient_axis("SI") == (2, 1)
    result = score(rotated, lesions, lungs, lobes)
    assert_whole_lobe_scores_null(result)
    assert result["coverage"]["reason"].startswith("left lung cut by the field of view (touches the superior edge")


def test_absent_lobe_nulls_whole_lobe_scores():
    ct, lungs, lobes = phantom()
    lobes[lobes == labels.RML] = labels.RUL  # the right lung whole, but no RML
    result = score(ct, lesion_in(labels.RUL, 100), lungs, lobes)
    assert_whole_lobe_scores_null(result)
    assert result["coverage"]["reason"] == "lobe absent: RML"
    assert result["lobes"]["RML"]["volume_ml"] == 0.0 and result["lobes"]["RUL"]["percent"] == 5.0
    assert sv.check_coverage(ct, lungs, lobes) == (False, "lobe absent: RML")
    assert sv.check_coverage(ct, lungs, None) == (True, "")


def test_lobe_source_none():
    ct, lungs, _ = phantom()
    lesions = lesion_in(labels.RUL, 100)
    result = sv.compute_severity(ct, lesions, lungs, None)
    assert set(result) == SCORE_KEYS and result["lobes"] == {} and result["lobe_source"] == "none"
    assert all(result[key] is None for key in ("LSS", "LHOS", "CTSS", "CTSS_category"))
    assert result["CT_category"] == "CT1" and result["PO"] == 2.0 and result["lungs"]["right"]["percent"] == 100 / 30
    assert result["coverage"] == {"complete": True, "reason": ""}
    no_left = np.where(lungs == labels.LEFT_LUNG, 0, lungs)
    absent = sv.compute_severity(ct, lesions, no_left, None)
    assert absent["coverage"] == {"complete": False, "reason": "left lung absent"} and absent["CT_category"] is None


def test_inconsistent_inputs_refused():
    ct, lungs, lobes = phantom()
    lesions = lesion_in(labels.RUL, 10)
    with pytest.raises(ValueError, match="lobe_source"):
        sv.compute_severity(ct, lesions, lungs, lobes)
    outside = lesions.copy()
    outside[0, 0, 0] = True
    with pytest.raises(InputError, match="outside the lung mask"):
        score(ct, outside, lungs, lobes)
    wrong_side = lobes.copy()
    wrong_side[LOBE_BOXES[labels.LUL]] = labels.RUL
    with pytest.raises(InputError, match="left lung are labelled RUL"):
        score(ct, lesions, lungs, wrong_side)
    holes = lobes.copy()
    holes[25, 5, 5] = 0
    with pytest.raises(InputError, match="no lobe"):
        score(ct, lesions, lungs, holes)
    with pytest.raises(InputError, match="lung mask is empty"):
        score(ct, np.zeros(SHAPE, bool), np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8))
    with pytest.raises(ValueError, match="shape") as err:  # a caller's bug (files are put on the grid when read)
        score(ct, lesions[:-1], lungs, lobes)
    assert not isinstance(err.value, InputError)


# --- properties -----------------------------------------------------------------------------------------------
def percentages(result) -> list[float]:
    values = [result["PO"], result["PHO"]] + [lung["percent"] for lung in result["lungs"].values()]
    return values + [lobe[k] for lobe in result["lobes"].values() for k in ("percent", "high_opacity_percent")]


def points(result) -> list[int]:
    ct_index = labels.CT_CATEGORIES.index(result["CT_category"])
    per_lobe = [lobe[k] for lobe in result["lobes"].values() for k in ("lss", "lhos", "ctss")]
    return [result["LSS"], result["LHOS"], result["CTSS"], ct_index] + per_lobe


seeds = st.integers(0, 2**32 - 1)
densities = st.floats(0.0, 0.9)


@settings(deadline=None, max_examples=25)
@given(seed=seeds, density=densities, spacing=st.tuples(*[st.floats(0.3, 5.0)] * 3), factor=st.floats(0.2, 5.0))
def test_invariant_to_spacing_scale(seed, density, spacing, factor):
    _, lungs, lobes = phantom()
    lesions, hu = random_lesions(seed, lungs, density), random_hu(seed, lungs)
    paper = sv.SeverityConfig(floor_ml=0.0)
    small = score(Volume(hu, spacing), lesions, lungs, lobes, paper)
    large = score(Volume(hu, tuple(factor * s for s in spacing)), lesions, lungs, lobes, paper)
    assert percentages(small) == percentages(large) and points(small) == points(large)
    assert large["lesion_ml"] == pytest.approx(small["lesion_ml"] * factor**3)


@settings(deadline=None, max_examples=25)
@given(seed=seeds, density=densities, axes=st.sets(st.sampled_from([0, 1, 2])), cut=st.booleans(),
       base=st.sampled_from([np.eye(3), np.diag([-1.0, -1.0, 1.0])]))
def test_invariant_to_flips_with_matching_direction(seed, density, axes, cut, base):
    ct, lungs, lobes = phantom(direction=base, spacing=(0.7, 0.9, 2.5))
    if cut:  # the right lung reaches the first slice: the reason must survive the flip too
        lungs[0, 1:11, 1:11], lobes[0, 1:11, 1:11] = labels.RIGHT_LUNG, labels.RLL
    lesions, ct.array[...] = random_lesions(seed, lungs, density), random_hu(seed, lungs)
    direction, origin = ct.direction.copy(), np.array(ct.origin)
    arrays = [ct.array, lesions, lungs, lobes]
    for axis in axes:
        far_corner = np.zeros(3)
        far_corner[axis] = SHAPE[axis] - 1
        origin = origin + (far_corner[::-1] * np.array(ct.spacing)) @ direction.T
        direction[:, 2 - axis] *= -1
        arrays = [np.flip(a, axis) for a in arrays]
    flipped = Volume(np.ascontiguousarray(arrays[0]), ct.spacing, tuple(origin), direction)
    mirrored = [SHAPE[i] - 1 - v if i in axes else v for i, v in enumerate((3, 4, 5))]
    assert np.allclose(flipped.lps_points([[3, 4, 5]]), ct.lps_points([mirrored]))
    assert score(flipped, *arrays[1:]) == score(ct, lesions, lungs, lobes)


@settings(deadline=None, max_examples=25)
@given(seed=seeds, density=densities)
def test_volumes_add_up_over_lobes_and_lungs(seed, density):
    ct, lungs, lobes = phantom(spacing=(0.8, 0.8, 1.25))
    ct.array[...] = random_hu(seed, lungs)
    result = score(ct, random_lesions(seed, lungs, density), lungs, lobes)
    for key in ("lesion_ml", "volume_ml", "high_opacity_ml"):
        total = result["lung_ml" if key == "volume_ml" else key]
        assert sum(lobe[key] for lobe in result["lobes"].values()) == pytest.approx(total)
        if key != "high_opacity_ml":
            assert sum(lung[key] for lung in result["lungs"].values()) == pytest.approx(total)


@settings(deadline=None, max_examples=25)
@given(seed=seeds, density=densities, growth=st.floats(0.0, 0.9), floor=st.sampled_from([0.0, 0.1, 2.0]))
def test_monotone_in_lesion_size(seed, density, growth, floor):
    ct, lungs, lobes = phantom(spacing=(2.0, 2.0, 2.0))
    ct.array[...] = random_hu(seed, lungs)
    config = sv.SeverityConfig(floor_ml=floor)
    smaller = random_lesions(seed, lungs, density)
    larger = smaller | random_lesions(seed + 7, lungs, growth)
    before, after = score(ct, smaller, lungs, lobes, config), score(ct, larger, lungs, lobes, config)
    assert all(b <= a for b, a in zip(points(before), points(after)))
    assert all(b <= a for b, a in zip(percentages(before), percentages(after)))


@settings(deadline=None, max_examples=15)
@given(seed=seeds, with_lobes=st.booleans())
def test_counter_equals_full_computation_after_random_edits(seed, with_lobes):
    rng = np.random.default_rng(seed)
    ct, lungs, lobes = phantom(spacing=(0.6, 0.6, 1.5))
    ct.array[...] = random_hu(seed, lungs)
    lesions = random_lesions(seed, lungs, rng.uniform(0, 0.3)).astype(np.uint8)
    lobe_map, source = (lobes, "truth") if with_lobes else (None, "none")
    counter = sv.SeverityCounter(ct, lesions, lungs, lobe_map, lobe_source=source)
    for _ in range(12):
        start = [int(rng.integers(0, n - 1)) for n in SHAPE]
        box = tuple(slice(s, int(rng.integers(s + 1, min(n, s + 8) + 1))) for s, n in zip(start, SHAPE))
        old = lesions[box].copy()
        new = np.where(rng.random(old.shape) < 0.5, rng.integers(0, 3, old.shape), old).astype(np.uint8)
        if rng.random() < 0.8:  # mostly inside the lungs, sometimes outside
            new[lungs[box] == 0] = old[lungs[box] == 0]
        lesions[box] = new
        counter.update(box, old, new)
        outside = int(np.count_nonzero((lesions > 0) & (lungs == 0)))
        assert counter.outside_lesion_ml == pytest.approx(outside * ct.voxel_ml)
    before = lesions.copy()
    lesions[lungs == 0] = 0  # clear any lesion outside the lungs, through the counter as well
    counter.update(np.s_[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]], before, lesions)
    expected = sv.compute_severity(ct, lesions, lungs, lobe_map, lobe_source=source)
    assert counter.severity() == expected


def test_counter_refuses_scores_with_lesion_outside_lungs():
    ct, lungs, lobes = phantom()
    counter = sv.SeverityCounter(ct, lesion_in(labels.RUL, 5), lungs, lobes, lobe_source="truth")
    box = np.s_[0:1, 0:2, 0:2]  # below the lungs
    counter.update(box, np.zeros((1, 2, 2), bool), np.ones((1, 2, 2), bool))
    assert counter.outside_lesion_ml == 4 * ct.voxel_ml
    with pytest.raises(InputError, match="outside the lung mask"):
        counter.severity()
    counter.update(box, np.ones((1, 2, 2), bool), np.zeros((1, 2, 2), bool))
    assert counter.outside_lesion_ml == 0 and counter.severity()["lobes"]["RUL"]["percent"] == 0.5
    with pytest.raises(ValueError, match="shape"):
        counter.update(box, np.zeros((1, 2, 1), bool), np.zeros((1, 2, 2), bool))
