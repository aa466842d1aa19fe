"""Small operations on masks and label maps in numpy (z, y, x) order, shared by the lung mask, the lobes, the
engines, the severity passes, the phantom and the metrics: slabs of a large volume, bounding boxes, distance
maps in mm, the closing with a ball, nearest-label filling, and block sums and down/up-sampling.  Each is
written once here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

SLAB_VOXELS = 1 << 22
"""Voxels per slab when a whole volume is passed over in slabs (bounds the temporaries at 512x512x300)."""


def slabs(shape: Sequence[int], voxels: int = SLAB_VOXELS) -> list[slice]:
    """Slices along axis 0 covering ``shape[0]``, each of about ``voxels`` voxels (at least one row)."""
    step = max(1, voxels // max(1, int(np.prod(shape[1:]))))
    return [slice(start, min(start + step, shape[0])) for start in range(0, shape[0], step)]


def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of the True voxels, grown by ``margin`` voxels (per axis or one for all) and
    clipped to the array; None when the mask is empty."""
    mask = np.asarray(mask)
    grow = np.broadcast_to(np.asarray(margin, int), (mask.ndim,))
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(max(0, int(present[0]) - int(grow[axis])),
                         min(mask.shape[axis], int(present[-1]) + 1 + int(grow[axis]))))
    return tuple(box)


def distance_to(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Distance in mm from every voxel to the nearest True voxel centre (<= 0 inside); float32, multithreaded."""
    image = sitk.GetImageFromArray(np.asarray(mask).astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    dist = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.GetArrayFromImage(dist)


def block_sum(array: np.ndarray, block: Sequence[int], dtype: type = np.float32) -> np.ndarray:
    """Sums over non-overlapping blocks of ``block`` voxels (the array padded with zeros to whole blocks), in ``dtype``.

    Integer sums are exact in any order and run one axis at a time (contiguous, cache-friendly); float sums run
    over all block axes in one reduction, so their rounding does not depend on an axis order.
    """
    values = np.asarray(array)
    pad = [(0, (-n) % int(b)) for n, b in zip(values.shape, block)]
    if any(p for _, p in pad):
        values = np.pad(values, pad)
    if all(int(b) == 1 for b in block):
        return values.astype(dtype)
    if np.issubdtype(np.dtype(dtype), np.integer):
        for axis, b in enumerate(block):
            if b > 1:
                shape = values.shape
                values = values.reshape(*shape[:axis], shape[axis] // b, b, *shape[axis + 1:]).sum(axis + 1, dtype)
        return values
    split = [n for size, b in zip(values.shape, block) for n in (size // int(b), int(b))]
    return values.reshape(split).sum(axis=tuple(range(1, 2 * values.ndim, 2)), dtype=dtype)


def downsample(mask: np.ndarray, block: Sequence[int], any_voxel: bool = False) -> np.ndarray:
    """One cell per block of voxels (the array padded with False to whole blocks): True where at least half
    (with ``any_voxel``: any) of the block is True."""
    counts = block_sum(np.asarray(mask, bool).view(np.uint8), block, np.uint16)
    return counts > 0 if any_voxel else counts.astype(np.int32) * 2 >= int(np.prod(block))


def upsample(coarse: np.ndarray, block: Sequence[int], shape: tuple[int, ...]) -> np.ndarray:
    """Each cell's value on all voxels of its block, cut to ``shape``."""
    out = coarse
    for axis, b in enumerate(block):
        if b > 1:
            out = np.repeat(out, b, axis=axis)
    return out[: shape[0], : shape[1], : shape[2]]


def closing(mask: np.ndarray, spacing_zyx: Sequence[float], radius_mm: float, *,
            repeat_axes: Sequence[int] = (), empty_axes: Sequence[int] = ()) -> np.ndarray:
    """Morphological closing with a ball of ``radius_mm`` (exact Euclidean distances in mm): the voxels farther
    than ``radius_mm`` from everything the ball's dilation leaves out.  Beyond the array: along ``repeat_axes``
    the first and last slices repeat outward (a lung cut by the field of view is not eroded there); along
    ``empty_axes`` there is background; along any other axis the border is no wall (only the array's voxels
    count).  An axis of one or two voxels has no depth: nothing spreads across it."""
    mask = np.asarray(mask, bool)
    pad = np.ceil(radius_mm / np.asarray(spacing_zyx, float)).astype(int) + 1
    padded = mask
    if repeat_axes:
        padded = np.pad(padded, [(p, p) if a in repeat_axes else (0, 0) for a, p in enumerate(pad)], mode="edge")
    if empty_axes:
        padded = np.pad(padded, [(p, p) if a in empty_axes else (0, 0) for a, p in enumerate(pad)])
    spacing = [float(s) if n > 2 else 1e6 for s, n in zip(spacing_zyx, padded.shape)]
    dilated = distance_to(padded, spacing) <= radius_mm
    closed = distance_to(~dilated, spacing) > radius_mm
    crop = tuple(slice(p, n - p) if a in repeat_axes or a in empty_axes else slice(None)
                 for a, (p, n) in enumerate(zip(pad, padded.shape)))
    return closed[crop] | mask


def nearest_label(region: np.ndarray, chosen: np.ndarray, spacing_zyx: Sequence[float],
                  block: Sequence[int] | None = None) -> tuple[np.ndarray, float]:
    """For each ``chosen`` voxel, the value of the nearest labelled (nonzero) voxel of ``region`` in mm, and the
    largest such distance (inf when ``region`` holds no label; ties go to the smaller value).

    One distance map per label value (SimpleITK's Maurer transform).  With ``block`` the maps run on blocks of
    that many voxels, each block holding any voxel of a label counting as that label at the block's centre:
    coarser and lighter, for large regions.
    """
    values = [int(v) for v in np.flatnonzero(np.bincount(np.asarray(region).ravel())) if v]
    if not values:
        return np.zeros(np.count_nonzero(chosen), region.dtype), np.inf
    block = np.ones(region.ndim, int) if block is None else np.asarray(block, int)
    where = tuple(index // b for index, b in zip(np.nonzero(chosen), block))
    spacing = np.asarray(spacing_zyx, float) * block
    distances = np.stack([distance_to(downsample(region == v, block, any_voxel=True), spacing)[where]
                          for v in values])
    return np.asarray(values, region.dtype)[np.argmin(distances, axis=0)], float(distances.min(axis=0).max())


def select_labels(lab: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``np.isin(lab, ids)`` for a label image, by lookup table (fast on large volumes)."""
    table = np.zeros(int(lab.max()) + 1, bool)
    table[np.asarray(ids, int)] = True
    table[0] = False
    return table[lab]


def block_for_mm(spacing: np.ndarray, shape: tuple[int, ...], target_mm: float) -> np.ndarray:
    """Block size (voxels per axis) of a coarse grid with cells of about ``target_mm``."""
    return np.minimum(np.maximum(1, np.floor(target_mm / spacing)).astype(int), shape)
