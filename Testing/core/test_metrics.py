"""Dice, normalized surface Dice and false positive/negative volumes (covidlesionseg.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_surface_dice
from scipy import ndimage

from covidlesionseg import metrics
from covidlesionseg.io import Volume

SHAPE = (40, 40, 40)


def cube(start: int = 10, size: int = 12, shift: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    z, y, x = (start + s for s in shift)
    mask[z:z + size, y:y + size, x:x + size] = True
    return mask


def test_dice_known_shapes():
    a = cube()
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(a, cube(shift=(1, 0, 0))) == pytest.approx(2 * 11 / 24)  # overlap 11/12 of each
    assert metrics.dice(a, cube(start=25)) == 0.0
    labels = a.astype(np.uint8) * 2  # lesion = value > 0
    assert metrics.dice(labels, a) == 1.0


def test_empty_cases():
    empty = np.zeros(SHAPE, bool)
    assert metrics.dice(empty, empty) == 1.0 and metrics.surface_dice(empty, empty, (1, 1, 1)) == 1.0
    assert metrics.dice(cube(), empty) == 0.0 and metrics.surface_dice(cube(), empty, (1, 1, 1)) == 0.0
    assert metrics.surface_dice(empty, cube(), (1, 1, 1)) == 0.0
    assert metrics.fp_fn_ml(empty, empty, 0.5) == (0.0, 0.0)


def test_surface_dice_against_tolerance():
    a = cube()
    assert metrics.surface_dice(a, a, (1, 1, 1), tolerance_mm=0.0) == 1.0
    shifted = cube(shift=(0, 0, 1))
    assert metrics.surface_dice(a, shifted, (1, 1, 1), tolerance_mm=2.0) == 1.0  # every boundary within 1 mm
    assert metrics.surface_dice(a, shifted, (1, 1, 1), tolerance_mm=1.0) == 1.0
    strict = metrics.surface_dice(a, shifted, (1, 1, 1), tolerance_mm=0.5)
    assert 0.0 < strict < 1.0  # the faces across the shift are 1 mm off
    assert metrics.surface_dice(a, cube(shift=(0, 0, 3)), (1, 1, 1), tolerance_mm=2.0) < 1.0


def test_surface_dice_uses_spacing_in_array_order():
    a, along_z, along_x = cube(), cube(shift=(1, 0, 0)), cube(shift=(0, 0, 1))
    spacing_zyx = (3.0, 1.0, 1.0)  # thick slices along numpy axis 0
    assert metrics.surface_dice(a, along_x, spacing_zyx, tolerance_mm=2.0) == 1.0
    assert metrics.surface_dice(a, along_z, spacing_zyx, tolerance_mm=2.0) < 1.0
    assert metrics.surface_dice(a, along_z, spacing_zyx, tolerance_mm=3.0) == 1.0


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cropping_matches_monai_on_the_whole_array(seed):
    """The union-box crop gives MONAI's value on the uncropped arrays, also for blobs at the array border."""
    rng = np.random.default_rng(seed)
    smooth = [ndimage.gaussian_filter(rng.random((24, 20, 28)), 2.0) for _ in range(2)]
    a, b = (m > np.quantile(m, 0.85) for m in smooth)
    a[:3, :4, :5] = True  # touching the border
    spacing = (2.0, 0.8, 1.1)
    full = compute_surface_dice(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], [1.5],
                                include_background=True, spacing=list(spacing), use_subvoxels=True)
    assert metrics.surface_dice(a, b, spacing, 1.5) == pytest.approx(float(full[0, 0]))


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
def test_surface_dice_is_nikolovs_subvoxel_definition():
    """Surface elements weighted by area (Nikolov et al.), not boundary voxels counted equally: on anisotropic
    voxels the two differ, and the value reported is the sub-voxel one."""
    rng = np.random.default_rng(5)
    smooth = [ndimage.gaussian_filter(rng.random((20, 24, 24)), 2.0) for _ in range(2)]
    a, b = (m > np.quantile(m, 0.8) for m in smooth)
    spacing = (3.0, 0.7, 0.7)
    kwargs = {"include_background": True, "spacing": list(spacing)}
    ta, tb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    voxels = float(compute_surface_dice(ta, tb, [2.0], use_subvoxels=False, **kwargs)[0, 0])
    subvoxels = float(compute_surface_dice(ta, tb, [2.0], use_subvoxels=True, **kwargs)[0, 0])
    assert abs(voxels - subvoxels) > 1e-3
    assert metrics.surface_dice(a, b, spacing, 2.0) == pytest.approx(subvoxels)


def test_fp_fn_ml_exact():
    truth = cube()
    pred = cube(shift=(0, 2, 0))  # 2 slabs of 12 x 12 voxels on each side
    assert metrics.fp_fn_ml(pred, truth, voxel_ml=0.25) == (2 * 144 * 0.25, 2 * 144 * 0.25)
    assert metrics.fp_fn_ml(truth | pred, truth, voxel_ml=1.0) == (288.0, 0.0)


def test_case_metrics():
    ct = Volume(np.zeros(SHAPE, np.float32), (0.5, 0.5, 2.0))
    truth, pred = cube(), cube(shift=(0, 0, 1))
    result = metrics.case_metrics(pred, truth, ct, nsd_mm=2.0)
    assert set(result) == {"dice", "nsd", "fp_ml", "fn_ml"}
    assert result["dice"] == pytest.approx(2 * 11 / 24) and result["nsd"] == 1.0
    assert result["fp_ml"] == result["fn_ml"] == pytest.approx(144 * ct.voxel_ml)
    with pytest.raises(ValueError, match="shape"):
        metrics.case_metrics(pred[1:], truth[1:], ct)
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(pred, truth[1:])


def test_surface_dice_on_a_128_cubed_volume():
    """A lesion-sized pair in a 128^3 volume (computed on the union box only)."""
    shape = (128, 128, 128)
    a = np.zeros(shape, bool)
    a[40:80, 40:80, 40:80] = True
    b = np.roll(a, 1, axis=1)
    assert metrics.surface_dice(a, b, (1.0, 1.0, 1.0), 2.0) == 1.0
