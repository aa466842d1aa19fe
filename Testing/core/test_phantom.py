"""Generated chest CT: determinism, truth consistency, orientation, HU, severity categories."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidlesionseg import labels
from covidlesionseg.io import InputError, Volume, read_ct, read_label
from covidlesionseg.phantom import Phantom, clear_caches, default_grid, generate_phantom, landmarks, save_phantom
from covidlesionseg.phantom.lesions import PATTERN_CONSOLIDATION, PATTERN_GROUND_GLASS

SMALL = (64, 96, 96)
BIN_EDGES = (0.0, 25.0, 50.0, 75.0, 100.0)


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(degrees)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


DIRECTIONS = {
    "lps": np.eye(3),
    "nifti_ras_like": np.diag([-1.0, -1.0, 1.0]),
    "oblique": _rotation([1.0, 0.3, 0.2], 5.0) @ np.diag([-1.0, -1.0, 1.0]),
    "slices_along_y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
}


def _lung_percentages(ph: Phantom) -> dict[int, float]:
    les = ph.lesions > 0
    return {side: 100.0 * np.count_nonzero(les & (ph.lungs == side)) / np.count_nonzero(ph.lungs == side)
            for side in (labels.RIGHT_LUNG, labels.LEFT_LUNG)}


def _category(percent: float) -> str:
    if percent == 0:
        return "CT0"
    for cat, upper in zip(labels.CT_CATEGORIES[1:], BIN_EDGES[1:]):
        if percent <= upper:
            return cat
    return "CT4"


def _centroid_lps(vol: Volume, mask: np.ndarray) -> np.ndarray:
    return vol.lps_points(np.argwhere(mask)).mean(0)


@pytest.fixture(scope="module")
def ct2() -> Phantom:
    return generate_phantom(11, "CT2", shape=(96, 128, 128))


@pytest.fixture(scope="module")
def ct3_noiseless() -> Phantom:
    return generate_phantom(12, "CT3", shape=(96, 128, 128), noise_hu=0.0)


def test_same_seed_gives_identical_arrays_and_params() -> None:
    clear_caches()
    a = generate_phantom(5, "CT2", shape=(40, 64, 64))
    clear_caches()
    b = generate_phantom(5, "CT2", shape=(40, 64, 64))
    for name in ("lesions", "lungs", "lobes", "patterns"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.ct.array, b.ct.array)
    assert a.ct.same_geometry(b.ct)
    assert a.params == b.params


def test_different_seeds_give_different_geometry() -> None:
    a = generate_phantom(1, "CT1", shape=(40, 64, 64))
    b = generate_phantom(2, "CT1", shape=(40, 64, 64))
    assert a.params["anatomy"] != b.params["anatomy"]
    assert a.params["spacing"] != b.params["spacing"] or a.params["origin"] != b.params["origin"]
    assert not np.array_equal(a.lungs, b.lungs)


def test_label_maps_lie_on_the_ct_grid(ct2: Phantom) -> None:
    assert ct2.ct.array.dtype == np.float32
    assert ct2.ct.shape == (96, 128, 128)
    for name, allowed in (("lesions", {0, labels.LESION_LOW, labels.LESION_HIGH}),
                          ("lungs", {0, labels.RIGHT_LUNG, labels.LEFT_LUNG}), ("lobes", {0, *labels.LOBE_NAMES})):
        arr = getattr(ct2, name)
        assert arr.shape == ct2.ct.shape and arr.dtype == np.uint8, name
        assert set(np.unique(arr).tolist()) <= allowed, name
    assert np.isfinite(ct2.ct.array).all()
    assert ct2.ct.array.min() >= -2048 and ct2.ct.array.max() <= 3071


def test_lesions_inside_lungs_and_lobes_partition_the_lungs(ct2: Phantom) -> None:
    assert np.all(ct2.lungs[ct2.lesions > 0] > 0)
    assert np.array_equal(ct2.lobes > 0, ct2.lungs > 0)
    for lobe, lung in labels.LOBE_LUNG.items():
        in_lobe = ct2.lobes == lobe
        assert in_lobe.sum() > 500, labels.LOBE_NAMES[lobe]
        assert np.all(ct2.lungs[in_lobe] == lung), labels.LOBE_NAMES[lobe]


def test_lesion_label_two_exactly_where_hu_is_high(ct2: Phantom) -> None:
    lesion = ct2.lesions > 0
    high = ct2.ct.array >= labels.HIGH_OPACITY_HU
    assert np.array_equal(ct2.lesions == labels.LESION_HIGH, lesion & high)
    assert np.array_equal(ct2.lesions == labels.LESION_LOW, lesion & ~high)
    assert np.count_nonzero(ct2.lesions == labels.LESION_LOW) > 0
    assert np.count_nonzero(ct2.lesions == labels.LESION_HIGH) > 0


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_right_lung_and_heart_follow_the_direction_cosines(name: str) -> None:
    ph = generate_phantom(3, "CT1", shape=(48, 80, 80), direction=DIRECTIONS[name], noise_hu=0.0)
    assert np.allclose(ph.ct.direction, DIRECTIONS[name])
    right = _centroid_lps(ph.ct, ph.lungs == labels.RIGHT_LUNG)
    left = _centroid_lps(ph.ct, ph.lungs == labels.LEFT_LUNG)
    assert right[0] < left[0] - 100.0  # LPS x grows toward the patient's left
    # Soft tissue between the lungs, anterior to the spine, at the lower lungs' levels: mostly the heart.
    pts = ph.ct.lps_points(np.argwhere(np.ones(ph.ct.shape, bool))).reshape(ph.ct.shape + (3,))
    lung_pts = ph.ct.lps_points(np.argwhere(ph.lungs > 0))
    z_lo, z_hi = np.percentile(lung_pts[:, 2], 25), np.percentile(lung_pts[:, 2], 55)  # above the domes
    y_lo, y_hi = lung_pts[:, 1].min(), np.percentile(lung_pts[:, 1], 60)  # anterior to the spine
    hu = ph.ct.array
    box = ((pts[..., 0] > right[0]) & (pts[..., 0] < left[0]) & (pts[..., 2] > z_lo) & (pts[..., 2] < z_hi)
           & (pts[..., 1] > y_lo) & (pts[..., 1] < y_hi) & (hu > 0) & (hu < 100) & (ph.lungs == 0))
    assert box.sum() > 200
    soft_x = pts[..., 0][box].mean()
    midline = 0.5 * (lung_pts[:, 0].min() + lung_pts[:, 0].max())
    assert soft_x > midline + 10.0


def test_anatomy_does_not_depend_on_the_grid_orientation() -> None:
    a = generate_phantom(4, "CT2", shape=(48, 80, 80), direction=DIRECTIONS["lps"])
    b = generate_phantom(4, "CT2", shape=(48, 80, 80), direction=DIRECTIONS["nifti_ras_like"])
    vol_a = {s: np.count_nonzero(a.lungs == s) * a.ct.voxel_ml for s in labels.LUNG_NAMES}
    vol_b = {s: np.count_nonzero(b.lungs == s) * b.ct.voxel_ml for s in labels.LUNG_NAMES}
    for s in labels.LUNG_NAMES:
        assert vol_a[s] == pytest.approx(vol_b[s], rel=0.03)
    # the grid is mirrored in x and y: the two label maps are flips of each other up to voxel rounding
    overlap = np.count_nonzero((a.lungs > 0) & (b.lungs[:, ::-1, ::-1] > 0)) / np.count_nonzero(a.lungs > 0)
    assert overlap > 0.95
    assert a.params["anatomy"] == b.params["anatomy"]


def test_hu_of_tissues_and_lesion_patterns(ct3_noiseless: Phantom) -> None:
    ph = ct3_noiseless
    hu = ph.ct.array
    lesion = ph.lesions > 0
    ggo = hu[lesion & (ph.patterns == PATTERN_GROUND_GLASS)]
    cons = hu[lesion & (ph.patterns == PATTERN_CONSOLIDATION)]
    normal = hu[(ph.lungs > 0) & ~lesion]
    assert ggo.size > 1000 and cons.size > 1000
    assert -750.0 <= np.median(ggo) <= -300.0
    assert -100.0 <= np.median(cons) <= 60.0
    assert -950.0 <= np.median(normal) <= -780.0
    assert np.median(normal) < np.median(ggo) < np.median(cons)
    # vessels stay visible inside ground glass: a bright tail well above the ground-glass level
    assert np.percentile(ggo, 99) > np.median(ggo) + 150.0
    # air outside the body (first and last columns of the middle slice inside the FOV)
    mid = hu[hu.shape[0] // 2]
    outside = mid[(mid > -1100) & (mid < -900)]
    assert outside.size > 100 and abs(np.median(outside) + 1000.0) < 15.0


def test_noise_level_follows_noise_hu(ct3_noiseless: Phantom) -> None:
    noisy = generate_phantom(12, "CT3", shape=(96, 128, 128), noise_hu=20.0)
    assert np.array_equal(noisy.lungs, ct3_noiseless.lungs)
    clean = ct3_noiseless.ct.array
    soft = (clean > -150) & (clean < 150)  # away from the clipping limits
    diff = noisy.ct.array[soft] - clean[soft]
    assert abs(float(diff.mean())) < 1.0
    assert float(diff.std()) == pytest.approx(20.0, rel=0.1)


def test_trachea_and_main_bronchi_are_air_and_not_lung(ct2: Phantom) -> None:
    marks = landmarks(11)
    shift = np.asarray(ct2.params["anatomy_to_lps_mm"])
    inv = np.linalg.inv(ct2.ct.direction * np.asarray(ct2.ct.spacing))
    points = np.vstack([marks["trachea"], marks["right_main_bronchus"], marks["left_main_bronchus"]])
    idx = np.round((points + shift - np.asarray(ct2.ct.origin)) @ inv.T).astype(int)[:, ::-1]
    inside = np.all((idx >= 0) & (idx < np.array(ct2.ct.shape)), axis=1)
    idx = idx[inside]
    assert len(idx) >= 5
    assert np.all(ct2.lungs[idx[:, 0], idx[:, 1], idx[:, 2]] == 0)
    assert np.median(ct2.ct.array[idx[:, 0], idx[:, 1], idx[:, 2]]) < -800.0


@pytest.mark.parametrize("seed", [21, 22])
def test_requested_ct_category_is_reached_with_margin(seed: int) -> None:
    for severity in labels.CT_CATEGORIES:
        ph = generate_phantom(seed, severity, shape=SMALL)
        # whole lungs imaged: the lung mask touches neither the first nor the last slice (complete coverage)
        assert not ph.lungs[0].any() and not ph.lungs[-1].any()
        pct = _lung_percentages(ph)
        top = max(pct.values())
        assert _category(top) == severity, (severity, pct)
        if severity == "CT0":
            assert not np.any(ph.lesions)
        else:
            assert min(abs(top - edge) for edge in BIN_EDGES) >= 2.0, (severity, pct)
            assert min(pct.values()) > 0.0  # bilateral
        assert ph.params["lesions"]["category"] == severity


def test_lesions_are_peripheral_and_multifocal(ct2: Phantom) -> None:
    import scipy.ndimage as ndi

    lung = ct2.lungs > 0
    depth = ndi.distance_transform_edt(lung, sampling=ct2.ct.spacing_zyx)
    lesion = ct2.lesions > 0
    assert np.median(depth[lesion]) < np.median(depth[lung & ~lesion])
    _, n = ndi.label(lesion)
    assert n >= 3


def test_params_are_json_and_files_round_trip(ct2: Phantom, tmp_path) -> None:
    text = json.dumps(ct2.params)
    assert json.loads(text)["severity"] == "CT2"
    save_phantom(ct2, tmp_path)
    ct = read_ct(tmp_path / labels.CT_FILE)
    assert ct.same_geometry(ct2.ct)
    assert np.allclose(ct.array, ct2.ct.array)
    for name, fname in (("lesions", labels.LESIONS_FILE), ("lungs", labels.LUNGS_FILE), ("lobes", labels.LOBES_FILE)):
        lab = read_label(tmp_path / fname, ct)
        assert np.array_equal(lab.array, getattr(ct2, name)), name


def test_default_grid_is_clinical_and_holds_the_lungs() -> None:
    for seed in range(1, 7):
        g = default_grid(seed)
        nk, nj, ni = g["shape"]
        assert (nj, ni) == (512, 512) and nk <= 400
        assert 0.6 <= g["spacing"][0] == g["spacing"][1] <= 1.0
        assert 0.6 <= g["spacing"][2] <= 5.0
        assert np.allclose(g["direction"].T @ g["direction"], np.eye(3))
    small = default_grid(1, shape=(96, 128, 128))
    assert small["shape"] == (96, 128, 128)
    assert 2.3 <= small["spacing"][0] <= 3.4


@pytest.mark.parametrize("kwargs", [{"severity": "CT5"}, {"shape": (0, 10, 10)}, {"shape": (10, 10)},
                                    {"spacing": (1.0, -1.0, 1.0)}, {"direction": np.ones((3, 3))},
                                    {"noise_hu": -1.0}, {"spacing": (0.05, 0.05, 0.05)}])
def test_bad_arguments_raise_input_error(kwargs: dict) -> None:
    with pytest.raises(InputError):
        generate_phantom(1, **kwargs)


def test_negative_seed_is_refused() -> None:
    with pytest.raises(InputError):
        generate_phantom(-1)
