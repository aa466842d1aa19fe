"""masks.py, the one place for slabs, block sums, the closing with a ball and nearest-label filling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from covidlesionseg.masks import block_sum, closing, downsample, nearest_label, slabs


@pytest.mark.parametrize("shape", [(1, 5, 5), (7, 100, 100), (300, 64, 64)])
def test_slabs_cover_the_volume_once_in_bounded_pieces(shape):
    pieces = slabs(shape, voxels=20_000)
    covered = np.concatenate([np.arange(shape[0])[sl] for sl in pieces])
    assert np.array_equal(covered, np.arange(shape[0]))
    rows = int(np.prod(shape[1:]))
    assert all((sl.stop - sl.start) * rows <= max(20_000, rows) for sl in pieces)


def test_block_sums_integer_and_float_agree_with_a_plain_loop():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, (7, 10, 9)).astype(np.uint8)
    block = (2, 3, 4)
    expected = np.zeros((4, 4, 3))
    for z, y, x in np.ndindex(values.shape):  # zero padding to whole blocks
        expected[z // 2, y // 3, x // 4] += values[z, y, x]
    assert np.array_equal(block_sum(values, block, np.uint16), expected)
    assert np.array_equal(block_sum(values.astype(np.float32), block, np.float32), expected)
    assert np.array_equal(block_sum(values, (1, 1, 1), np.float32), values)
    half = block_sum(values > 2, block, np.uint16).astype(int) * 2 >= 24
    assert np.array_equal(downsample(values > 2, block), half)


def test_closing_fills_a_gap_narrower_than_the_ball_and_respects_the_border_rules():
    spacing = (1.0, 1.0, 1.0)
    mask = np.zeros((20, 40, 40), bool)
    mask[:, 5:35, 5:18] = True
    mask[:, 5:35, 21:35] = True  # a 3 mm slit between two slabs
    closed = closing(mask, spacing, 4.0, repeat_axes=(0,), empty_axes=(1, 2))
    assert closed[:, 10:30, 18:21].all()  # the slit is closed along its whole length, first and last slices too
    assert not closed[:, :, :3].any()  # nothing grows past the outer surface
    assert (closed | ~mask).all()  # a closing only adds
    empty_z = closing(mask, spacing, 4.0, empty_axes=(0, 1, 2))
    assert not empty_z[0, 10:30, 18:21].any()  # background beyond the first slice: the slit stays open there
    assert empty_z[10, 10:30, 18:21].all()
    one_slice = closing(mask[:1], spacing, 4.0)  # an axis of one voxel has no depth
    assert one_slice[0, 10:30, 18:21].all()


def test_nearest_label_is_the_nearest_labelled_voxel_with_ties_to_the_smaller_value():
    region = np.zeros((1, 9, 9), np.uint8)
    region[0, 4, 0] = 3
    region[0, 4, 8] = 2
    chosen = np.zeros(region.shape, bool)
    chosen[0, 4, 1:8] = True
    values, farthest = nearest_label(region, chosen, (1.0, 1.0, 1.0))
    assert values.tolist() == [3, 3, 3, 2, 2, 2, 2]  # x = 4 is 4 mm from both: the smaller value, 2
    assert farthest == pytest.approx(4.0)
    rng = np.random.default_rng(3)
    region = np.where(rng.random((12, 20, 20)) < 0.01, rng.integers(1, 6, (12, 20, 20)), 0).astype(np.uint8)
    chosen = region == 0
    spacing = (2.5, 0.8, 0.8)
    got, _ = nearest_label(region, chosen, spacing)
    distances = np.stack([ndimage.distance_transform_edt(region != v, sampling=spacing)[chosen] for v in range(1, 6)])
    best = distances.min(axis=0)
    assert np.all(distances[got - 1, np.arange(got.size)] <= best + 1e-4)  # always a nearest one
    coarse, _ = nearest_label(region, chosen, spacing, block=(1, 2, 2))
    assert np.mean(coarse == got) > 0.8  # blocks: an approximation for large regions
    empty, far = nearest_label(np.zeros((2, 2, 2), np.uint8), np.ones((2, 2, 2), bool), spacing)
    assert empty.tolist() == [0] * 8 and far == np.inf
