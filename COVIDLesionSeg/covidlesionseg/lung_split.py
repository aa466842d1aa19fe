"""Right and left lungs: a lung mask split by the patient's midline, and lesions outside the lungs given the
side of the nearest lung.

Sides come from the LPS x coordinate (x grows toward the patient's left, from the direction cosines), never
from array order, relative to the body's midline (the mean x of the body, above ``labels.AIR_HU``).  Lungs
touching at the anterior junction are eroded until a core lies on each side of the midline and every voxel
joins its nearest core, in the spirit of Hu, Hoffman and Reinhardt, "Automatic lung segmentation for
accurate quantitation of volumetric X-ray CT images", IEEE Trans Med Imaging 20(6):490-498, 2001, who
separate the lungs along the junction line; failing that the component is cut at the midline plane.  The
lung mask itself is ``lungs.segment_lungs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from covidlesionseg import labels
from covidlesionseg.io import Volume
from covidlesionseg.masks import (
    block_for_mm,
    bounding_box,
    distance_to,
    downsample,
    nearest_label,
    select_labels,
    upsample,
)

SPLIT_GRID_MM = 2.5  # the split runs on blocks of about this size
# Right/left separation: erode by these radii until a core appears on each side of the midline.
SPLIT_RADII_MM = (2.0, 4.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0)
SPLIT_SIDE_MIN_FRACTION = 0.1
BILATERAL_MIN_FRACTION = 0.1  # a component with this share on each side of the midline holds both lungs
PLANE_CUT_MIN_FRACTION = 0.25
NEAREST_SEARCH_MM = 20.0  # include_lesions looks this far around the lesions for the nearest lung first
NEAREST_EXACT_VOXELS, NEAREST_GRID_MM = 8_000_000, 2.0  # larger searches run on ~2 mm blocks


@dataclass
class Frame:
    """The CT viewed with the slice axis (closest to patient S-I) first, and LPS x per voxel."""

    perm: tuple[int, int, int]  # canonical axis c is numpy axis perm[c]
    spacing: np.ndarray  # mm per index step along canonical axes
    x_step: np.ndarray  # LPS x (mm) per index step along canonical axes
    x_origin: float
    superior_last: bool  # growing slice index goes toward the head

    @classmethod
    def of(cls, ct: Volume) -> Frame:
        si_axis, si_sign = ct.patient_axis("SI")
        perm = (si_axis, *[a for a in range(3) if a != si_axis])
        spacing_zyx = np.asarray(ct.spacing_zyx)
        x_step_zyx = np.array([ct.direction[0, 2 - a] * ct.spacing[2 - a] for a in range(3)])
        return cls(perm, spacing_zyx[list(perm)], x_step_zyx[list(perm)], float(ct.origin[0]), si_sign > 0)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        return np.transpose(array, self.perm)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(array, np.argsort(self.perm)))

    def x_of(self, indices: np.ndarray) -> np.ndarray:
        """LPS x (mm) of canonical indices, shape (..., 3)."""
        return self.x_origin + np.asarray(indices, float) @ self.x_step



def x_map(frame: Frame, shape: tuple[int, ...], origin: np.ndarray, step: np.ndarray | None = None) -> np.ndarray:
    """LPS x (mm, float32) of every voxel of a box at ``origin``, optionally sampled every ``step`` voxels."""
    step = np.ones(3, int) if step is None else step
    axes = [(np.arange(n, dtype=np.float32) * k + o) * np.float32(w)
            for n, k, o, w in zip(shape, step, origin, frame.x_step)]
    return np.float32(frame.x_origin) + axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]


def label_sides(frame: Frame, mask: np.ndarray, offset: np.ndarray, mid_x: float) -> np.ndarray:
    """Split a boolean lung mask (canonical, cropped) into RIGHT_LUNG / LEFT_LUNG labels."""
    out = np.zeros(mask.shape, np.uint8)
    lab, _ = ndi.label(mask)
    for i, box in enumerate(ndi.find_objects(lab), start=1):
        comp = lab[box] == i
        origin = offset + [b.start for b in box]
        step = block_for_mm(frame.spacing, comp.shape, SPLIT_GRID_MM)
        sample = comp[:: step[0], :: step[1], :: step[2]]
        sample = sample if sample.any() else comp
        step = step if sample is not comp else np.ones(3, int)
        left_share = float(np.mean(x_map(frame, sample.shape, origin, step)[sample] > mid_x))
        side = np.full(comp.shape, labels.LEFT_LUNG if left_share > 0.5 else labels.RIGHT_LUNG, np.uint8)
        if min(left_share, 1.0 - left_share) >= BILATERAL_MIN_FRACTION:
            split = _split_component(frame, comp, origin, mid_x)
            if split is not None:
                side = split
            elif min(left_share, 1.0 - left_share) >= PLANE_CUT_MIN_FRACTION:  # fused: cut at the midline
                side = np.where(x_map(frame, comp.shape, origin) > mid_x, labels.LEFT_LUNG, labels.RIGHT_LUNG)
        out[box][comp] = side[comp]
    return out


def _split_component(frame: Frame, comp: np.ndarray, origin: np.ndarray, mid_x: float) -> np.ndarray | None:
    """Erode (by distance, on a coarse grid) until cores lie on both sides of the midline; give each voxel
    the side of the nearest core.  None when no radius separates the component."""
    block = block_for_mm(frame.spacing, comp.shape, SPLIT_GRID_MM)
    coarse = downsample(comp, block)
    spacing = frame.spacing * block
    depth = distance_to(~np.pad(coarse, 1), spacing)[1:-1, 1:-1, 1:-1]
    for radius in SPLIT_RADII_MM:
        cores, n = ndi.label(depth > radius)
        if n < 2:
            if n == 0:
                break
            continue
        ids = np.arange(1, n + 1)
        size = np.bincount(cores.ravel(), minlength=n + 1)[1:]
        centres = np.atleast_2d(np.array(ndi.center_of_mass(cores > 0, cores, ids), float))
        is_left = frame.x_of(centres * block + (block - 1) / 2.0 + origin) > mid_x
        left_share = size[is_left].sum() / size.sum()
        if min(left_share, 1.0 - left_share) < SPLIT_SIDE_MIN_FRACTION:
            continue
        left_core = select_labels(cores, ids[is_left])
        right_core = (cores > 0) & ~left_core
        nearer_left = distance_to(left_core, spacing) < distance_to(right_core, spacing)
        side = np.where(nearer_left, labels.LEFT_LUNG, labels.RIGHT_LUNG).astype(np.uint8)
        return upsample(side, block, comp.shape)
    return None


def body_mid_x(frame: Frame, body: np.ndarray, offset: np.ndarray) -> float:
    """LPS x of the body's centre (the midline), from a body mask in canonical order."""
    step = np.array([max(1, body.shape[0] // 64), 2, 2])
    sample = body[:: step[0], :: step[1], :: step[2]]
    if not sample.any():
        return float(frame.x_of(np.array(body.shape) / 2.0 + offset))
    return float(x_map(frame, sample.shape, offset, step)[sample].mean())


def split_right_left(mask: np.ndarray, ct: Volume) -> np.ndarray:
    """Label a boolean lung mask 0 / ``labels.RIGHT_LUNG`` / ``labels.LEFT_LUNG`` on ``ct``'s grid.

    Sides come from the LPS x coordinate (x grows toward the patient's left) relative to the body's
    midline.  A component reaching well across the midline (lungs touching at the anterior junction) is
    eroded until a core lies on each side and every voxel joins its nearest core (Hu et al. 2001
    separate the lungs along the junction line in the same spirit); failing that it is cut at the
    midline plane.  A lone lung is labelled by the side it lies on.
    """
    mask = np.asarray(mask) > 0
    if mask.shape != ct.shape:
        raise ValueError(f"lung mask shape {mask.shape} differs from the CT's {ct.shape}")  # a caller's bug
    frame = Frame.of(ct)
    m = frame.to_canonical(mask)
    out = np.zeros(m.shape, np.uint8)
    if not m.any():
        return frame.from_canonical(out)
    hu = frame.to_canonical(ct.array)
    slab = bounding_box(m)[0]
    body = (hu[slab] > labels.AIR_HU) | m[slab]
    mid_x = body_mid_x(frame, body, np.array([slab.start, 0, 0]))
    box = bounding_box(m)
    out[box] = label_sides(frame, m[box], np.array([b.start for b in box]), mid_x)
    return frame.from_canonical(out)


def include_lesions(lungs: np.ndarray, lesions: np.ndarray, ct: Volume) -> tuple[np.ndarray, float]:
    """Extend the lungs by every lesion voxel (``lesions > 0``) outside them; each joins the side of the
    nearest lung voxel (in mm).  Returns (new lung labels, added volume in mL).  Lesions are never clipped
    (docs/contracts.md: the lung mask always contains the lesion mask)."""
    lungs = np.asarray(lungs)
    lesion = np.asarray(lesions) > 0
    if lungs.shape != ct.shape or lesion.shape != ct.shape:
        raise ValueError(f"lungs {lungs.shape} and lesions {lesion.shape} must lie on the CT grid {ct.shape}")
    lungs = lungs.astype(np.uint8, copy=False)
    out = lungs.copy()
    outside = lesion & (out == 0)
    count = int(np.count_nonzero(outside))
    if count == 0:
        return out, 0.0
    if not out.any():
        out[outside] = split_right_left(outside, ct)[outside]
        return out, count * ct.voxel_ml
    spacing = np.asarray(ct.spacing_zyx)
    margin = np.ceil(NEAREST_SEARCH_MM / spacing).astype(int) + 1
    parts, _ = ndi.label(outside, np.ones((3, 3, 3), bool))

    def around(box: tuple[slice, ...]) -> tuple[slice, ...]:
        return tuple(slice(max(0, b.start - m), min(size, b.stop + m)) for b, m, size in zip(box, margin, out.shape))

    # each group of lesion voxels outside the lungs looks around itself, unless one look at all costs less
    boxes = ndi.find_objects(parts)
    cost = sum(int(np.prod([b.stop - b.start for b in around(box)])) for box in boxes)
    whole = around(bounding_box(outside))
    groups = enumerate(boxes, start=1) if cost < np.prod([b.stop - b.start for b in whole]) else [(None, whole)]
    for i, box in groups:
        near = around(box)
        chosen = outside[near] if i is None else parts[near] == i
        side, distance = _nearest_side(lungs[near], chosen, spacing)
        if distance > NEAREST_SEARCH_MM:  # no lung near enough in that box: search around every lung voxel
            near = bounding_box((parts == i if i is not None else outside) | (lungs > 0))
            chosen = outside[near] if i is None else parts[near] == i
            side, _ = _nearest_side(lungs[near], chosen, spacing)
        out[near][chosen] = side
    return out, count * ct.voxel_ml


def _nearest_side(region: np.ndarray, chosen: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, float]:
    """The side of the nearest lung voxel (mm) for each ``chosen`` voxel, and the largest such distance.
    Large regions are measured on ~``NEAREST_GRID_MM`` blocks (``masks.nearest_label``)."""
    block = block_for_mm(spacing, region.shape, NEAREST_GRID_MM) if region.size > NEAREST_EXACT_VOXELS else None
    return nearest_label(region, chosen, spacing, block)
