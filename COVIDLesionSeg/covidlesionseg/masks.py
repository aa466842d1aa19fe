"""Small operations on boolean masks in numpy (z, y, x) order, shared by the lung mask, the engines, the
phantom and the metrics: bounding boxes, distance maps in mm, and block down/up-sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk


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


def downsample(mask: np.ndarray, block: Sequence[int], any_voxel: bool = False) -> np.ndarray:
    """One cell per block of voxels (the array padded with False to whole blocks): True where at least half
    (with ``any_voxel``: any) of the block is True."""
    counts = np.pad(mask, [(0, (-n) % b) for n, b in zip(mask.shape, block)]).view(np.uint8)
    for axis, b in enumerate(block):  # one axis at a time: contiguous, cache-friendly sums
        if b > 1:
            shape = counts.shape
            counts = counts.reshape(*shape[:axis], shape[axis] // b, b, *shape[axis + 1:]).sum(axis + 1, np.uint16)
    return counts > 0 if any_voxel else counts.astype(np.int32) * 2 >= int(np.prod(block))


def upsample(coarse: np.ndarray, block: Sequence[int], shape: tuple[int, ...]) -> np.ndarray:
    """Each cell's value on all voxels of its block, cut to ``shape``."""
    out = coarse
    for axis, b in enumerate(block):
        if b > 1:
            out = np.repeat(out, b, axis=axis)
    return out[: shape[0], : shape[1], : shape[2]]
