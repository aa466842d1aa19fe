"""One-click region grow: the connected opacity around a click, inside the allowed mask and the box."""

from __future__ import annotations

import numpy as np
import pytest

from covidlesionseg.io import InputError
from covidlesionseg.regiongrow import WINDOWS, box_around, grow_region


def _lung_with_two_opacities():
    hu = np.full((20, 40, 40), -850.0, np.float32)  # aerated lung
    hu[5:10, 5:15, 5:15] = -500.0  # ground glass
    hu[5:10, 25:35, 25:35] = -500.0  # another one, not connected
    hu[5:10, 15:17, 5:15] = 20.0  # consolidation touching the first
    lungs = np.zeros(hu.shape, bool)
    lungs[2:18, 2:38, 2:38] = True
    return hu, lungs


def test_grow_takes_the_connected_component_in_the_window_only():
    hu, lungs = _lung_with_two_opacities()
    result = grow_region(hu, (7, 8, 8), (1.0, 1.0, 1.0), window="ground glass", allowed=lungs, radius_mm=30)
    grown = np.zeros(hu.shape, bool)
    grown[result.box] = result.mask
    assert grown.sum() == 5 * 10 * 10 and grown[7, 8, 8] and not grown[7, 30, 30]
    both = grow_region(hu, (7, 8, 8), (1.0, 1.0, 1.0), window="any opacity", allowed=lungs, radius_mm=30)
    assert both.voxels == 5 * 12 * 10  # the touching consolidation joins with the wider window


def test_grow_stays_in_the_allowed_mask_and_the_box():
    hu, lungs = _lung_with_two_opacities()
    hu[:] = -500.0  # one opacity everywhere
    result = grow_region(hu, (10, 20, 20), (2.0, 1.0, 1.0), allowed=lungs, radius_mm=6)
    grown = np.zeros(hu.shape, bool)
    grown[result.box] = result.mask
    assert not (grown & ~lungs).any()
    assert [s.stop - s.start for s in result.box] == [7, 13, 13]  # 6 mm: 3 slices of 2 mm, 6 voxels of 1 mm
    assert result.box == box_around((10, 20, 20), hu.shape, (2.0, 1.0, 1.0), 6)
    callable_mask = grow_region(hu, (10, 20, 20), (2.0, 1.0, 1.0), allowed=lambda box: lungs[box], radius_mm=6)
    assert np.array_equal(callable_mask.mask, result.mask)
    assert result.extent_ijk() == (14, 26, 14, 26, 7, 13)


@pytest.mark.parametrize(("seed", "kwargs", "message"), [
    ((7, 8, 8), {"window": (-300.0, -700.0)}, "lower bound"),
    ((0, 0, 0), {}, "outside the lung mask"),
    ((7, 20, 20), {}, "outside the window"),
    ((99, 0, 0), {}, "outside the CT grid"),
    ((7, 8, 8), {"radius_mm": 0.0}, "radius must be positive"),
])
def test_grow_refuses_bad_clicks_with_one_line(seed, kwargs, message):
    hu, lungs = _lung_with_two_opacities()
    with pytest.raises(InputError, match=message):
        grow_region(hu, seed, (1.0, 1.0, 1.0), allowed=lungs, **kwargs)


def test_windows_cover_ground_glass_and_consolidation():
    assert WINDOWS["any opacity"][0] == WINDOWS["ground glass"][0]
    assert WINDOWS["any opacity"][1] == WINDOWS["consolidation"][1]
    assert WINDOWS["ground glass"][1] == WINDOWS["consolidation"][0]
