"""Classical lung segmentation: right and left lung masks from a chest (or abdomen) CT.

The method follows Hu, Hoffman and Reinhardt, "Automatic lung segmentation for accurate quantitation
of volumetric X-ray CT images", IEEE Trans Med Imaging 20(6):490-498, 2001: threshold air-like voxels
inside the body, remove the trachea and main bronchi (region growing with an adaptive threshold from a
trachea seed), separate the right and left lungs where they touch at the anterior junction, and smooth
the result morphologically.
Dense juxtapleural tissue (here: subpleural COVID-19 consolidation) is recovered with a rolling-ball
closing of the lung surface, as Armato and Sensakovic, "Automated lung segmentation for thoracic CT:
impact on computer-aided diagnosis", Acad Radiol 11(9):1011-1021, 2004, do for juxtapleural nodules.

Lung, as docs/contracts.md defines it: parenchyma with intrapulmonary vessels and airways beyond the
main bronchi, and every lesion voxel; not the trachea, main bronchi, pleural effusion, chest wall or
mediastinum.  Every size is in millimetres (from the voxel spacing); slice-wise steps work in the plane
closest to axial, found from the direction cosines, and patient right/left comes from the LPS x
coordinate, never from array order.

Trade-off of the closing radius (``CLOSING_RADIUS_MM``): a ball of that radius rolling outside the
aerated lung fills dents narrower than about twice the radius (subpleural consolidation bulges) but not
a pleural effusion, which pushes the lung away and leaves its surface convex, nor the heart's
impression, far wider than the ball.  Only dents lying toward the body surface from the lung around
them are kept, so the hilum and mediastinum are not filled.  A consolidation wider than about two radii
along the pleura is only partly recovered: the lesion engine finds it and ``include_lesions`` then
extends the lungs.  Larger radii fill more consolidation and more of the hilum's corners.

Also handled: a lung divided by dense consolidation (aerated fragments near the lungs join them), bowel
and stomach gas (too close to pure air to be lung, even touching it), a diaphragm dome ringed by the lung
base in axial slices (not filled), lungs cut by a narrow field of view (a second pass keeps lung-like air
at the image border), one slice (2D), any direction matrix.  Not handled: aerated lung whose median is
within 50 HU of pure air (extreme emphysema) is taken for gas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from covidlesionseg import labels
from covidlesionseg.io import InputError, Volume
from covidlesionseg.masks import bounding_box, closing, distance_to, downsample, nearest_label, upsample
from covidlesionseg.progress import RunControl

AIR_HU = labels.AIR_HU  # aerated lung and air lie below this, the body above
PADDING_HU = -1500.0  # scanner padding outside the reconstruction circle (-2048, -3024, ...)
LUNG_MEDIAN_ABOVE_AIR_HU = 50.0  # aerated lung's median HU lies this far above pure air; bowel gas does not
PURE_GAS_MARGIN_HU, MAX_GAS_FRACTION = 30.0, 0.15  # lung holds few voxels this close to pure air (gas does)
CLOSING_RADIUS_MM = 25.0  # rolling-ball radius for subpleural consolidation (see the module docstring)
CLOSING_GRID_MM = 2.0  # the closing and the right/left split run on blocks of about this size
SPLIT_GRID_MM = 2.5
DOME_RADIUS_MM, DOME_GRID_MM = 8.0, 4.0  # holes reached by outside thicker than this ball: a dome's top
MIN_LUNG_ML = 0.5  # less aerated lung than this inside the body: look for lung cut by the field of view
MAX_ADDED_HU = 150.0  # the closing adds soft tissue and fluid, never bone or contrast-filled vessels
SECOND_LUNG_MIN_FRACTION = 0.05  # a second component smaller than this share of the first is not a lung
# A darker second lung on the other side of the midline (a few slices, or one dark lung; _lung_components)
PARTNER_MIN_FRACTION, PARTNER_MEDIAN_ABOVE_AIR_HU, PARTNER_MAX_GAS_FRACTION = 0.3, 25.0, 0.35
FRAGMENT_GAP_MM = 20.0  # more aerated lung this close to the lungs (consolidation between) is lung too ...
FRAGMENT_MIN_ML, FRAGMENT_MIN_FRACTION = 1.0, 0.02  # ... when at least this large (mL, share of the first)
# Trachea and main bronchi: a dark, roughly midline, tube-sized cross-section in the upper slices.
AIRWAY_AREA_MM2 = (30.0, 1000.0)
TRACHEA_MIDLINE_MM = 25.0
TRACHEA_SEARCH_MM = 40.0
AIRWAY_START_ABOVE_AIR_HU = 60.0  # the first growing threshold: the lumen's air with its noise
AIRWAY_STEP_HU = 20.0
AIRWAY_MAX_ML = 300.0  # trachea and bronchi never hold more air than this
AIRWAY_LEAK_RATIO = 2.0  # the grown airway more than doubles in one step ...
AIRWAY_LEAK_ML = 20.0  # ... to more than this: it has leaked into the lung
# Right/left separation: erode by these radii until a core appears on each side of the midline.
SPLIT_RADII_MM = (2.0, 4.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0)
SPLIT_SIDE_MIN_FRACTION = 0.1
BILATERAL_MIN_FRACTION = 0.1  # a component with this share on each side of the midline holds both lungs
PLANE_CUT_MIN_FRACTION = 0.25
NEAREST_SEARCH_MM = 20.0  # include_lesions looks this far around the lesions for the nearest lung first
NEAREST_EXACT_VOXELS, NEAREST_GRID_MM = 8_000_000, 2.0  # larger searches run on ~2 mm blocks

_PLANE = np.zeros((3, 3, 3), bool)  # 4-connectivity within a slice of axis 0, none across slices
_PLANE[1] = ndi.generate_binary_structure(2, 1)


@dataclass
class _Frame:
    """The CT viewed with the slice axis (closest to patient S-I) first, and LPS x per voxel."""

    perm: tuple[int, int, int]  # canonical axis c is numpy axis perm[c]
    spacing: np.ndarray  # mm per index step along canonical axes
    x_step: np.ndarray  # LPS x (mm) per index step along canonical axes
    x_origin: float
    superior_last: bool  # growing slice index goes toward the head

    @classmethod
    def of(cls, ct: Volume) -> _Frame:
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


# --- small helpers -----------------------------------------------------------------------------------
def _select(lab: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``np.isin(lab, ids)`` for a label image, by lookup table (fast on large volumes)."""
    table = np.zeros(int(lab.max()) + 1, bool)
    table[np.asarray(ids, int)] = True
    table[0] = False
    return table[lab]


def _grid(spacing: np.ndarray, shape: tuple[int, ...], target_mm: float) -> np.ndarray:
    """Block size (voxels per axis) of a coarse grid with cells of about ``target_mm``."""
    return np.minimum(np.maximum(1, np.floor(target_mm / spacing)).astype(int), shape)


def _border_labels(lab: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    faces = [np.take(lab, idx, axis=a).ravel() for a in axes for idx in (0, -1)]
    found = np.unique(np.concatenate(faces))
    return found[found > 0]


def _fill_holes(mask: np.ndarray, per_slice: bool) -> np.ndarray:
    """Fill background regions not connected to the border (in each slice of axis 0, or in 3D)."""
    background, _ = ndi.label(~mask, _PLANE if per_slice else None)
    outer = _border_labels(background, (1, 2) if per_slice else (0, 1, 2))
    return mask | ((background > 0) & ~_select(background, outer))


# --- stages ------------------------------------------------------------------------------------------
def _air_reference(hu: np.ndarray, air: np.ndarray, padding: np.ndarray) -> float:
    """HU of pure air in this scan (about -1000; clipped to a plausible calibration range)."""
    sample = hu[air & ~padding][:: max(1, int(air.size // 2_000_000))]
    return float(np.clip(np.percentile(sample, 5), -1030.0, -990.0)) if sample.size else -1000.0


def _outside_air(hu: np.ndarray, air: np.ndarray, padding: np.ndarray, air_ref: float,
                 keep_lung_like: bool = False) -> np.ndarray:
    """Air connected, within its slice, to the image border: outside the body (with the gaps around
    the table and the mattress).  With ``keep_lung_like`` (a field of view cut through the lungs), a
    border-touching region whose median HU is that of aerated lung stays inside."""
    lab, _ = ndi.label(air, _PLANE)
    outside = _border_labels(lab, (1, 2))
    if keep_lung_like and outside.size:
        medians = np.asarray(ndi.median(np.where(padding, -3000.0, hu), lab, outside))
        outside = outside[medians <= air_ref + LUNG_MEDIAN_ABOVE_AIR_HU]
    return _select(lab, outside)


def _trachea_seed(cand: np.ndarray, hu: np.ndarray, frame: _Frame, offset: np.ndarray, mid_x: float,
                  air_ref: float) -> tuple[np.ndarray, ...] | None:
    """The darkest voxel of the trachea: a dark, tube-sized air cross-section within
    ``TRACHEA_MIDLINE_MM`` of the midline in the upper ``TRACHEA_SEARCH_MM`` of the air."""
    pixel_mm2 = float(frame.spacing[1] * frame.spacing[2])
    order = range(cand.shape[0] - 1, -1, -1) if frame.superior_last else range(cand.shape[0])
    occupied = [s for s in order if cand[s].any()]
    for rank, s in enumerate(occupied):
        if rank * frame.spacing[0] > TRACHEA_SEARCH_MM:
            break
        lab, n = ndi.label(cand[s])
        if n == 0:
            continue
        ids = np.arange(1, n + 1)
        area = np.bincount(lab.ravel(), minlength=n + 1)[1:] * pixel_mm2
        xs = frame.x_of(np.atleast_2d(ndi.center_of_mass(lab > 0, lab, ids)) @ np.eye(2, 3, 1) + offset + [s, 0, 0])
        darkest = np.asarray(ndi.minimum(hu[s], lab, ids))
        ok = ((area >= AIRWAY_AREA_MM2[0]) & (area <= AIRWAY_AREA_MM2[1]) & (np.abs(xs - mid_x) <= TRACHEA_MIDLINE_MM)
              & (darkest <= air_ref + LUNG_MEDIAN_ABOVE_AIR_HU))
        if ok.any():
            best = ids[ok][int(np.argmax(area[ok]))]
            j, i = ndi.minimum_position(hu[s], lab, best)
            return s, j, i
    return None


def _large_airways(cand: np.ndarray, hu: np.ndarray, frame: _Frame, offset: np.ndarray, mid_x: float,
                   air_ref: float, voxel_ml: float) -> np.ndarray:
    """Trachea and main bronchi by region growing with an adaptive threshold (Hu et al. 2001): grow the
    dark lumen from the trachea seed, raise the threshold step by step until the region explodes into
    the lung, and keep the region grown one step below the last safe threshold.  Intrapulmonary airways
    it reaches come back later with the lung's hole filling."""
    seed = _trachea_seed(cand, hu, frame, offset, mid_x, air_ref)
    if seed is None:
        return np.zeros_like(cand)
    image = sitk.GetImageFromArray(np.where(cand, hu, np.float32(0.0)).astype(np.float32, copy=False))
    seed_xyz = [tuple(int(v) for v in seed[::-1])]
    grown: list[np.ndarray] = []
    start = max(air_ref, float(hu[seed])) + AIRWAY_START_ABOVE_AIR_HU  # above the noise of the lumen's air
    for threshold in np.arange(start, AIR_HU, AIRWAY_STEP_HU):
        region = sitk.GetArrayFromImage(sitk.ConnectedThreshold(image, seed_xyz, -1e9, float(threshold))) > 0
        now = np.count_nonzero(region)
        if not grown and now * voxel_ml > AIRWAY_MAX_ML:
            return np.zeros_like(cand)  # in the lung from the start (emphysema): no safe airway region
        if grown and now > AIRWAY_LEAK_RATIO * np.count_nonzero(grown[-1]) and now * voxel_ml > AIRWAY_LEAK_ML:
            break  # leaked into the lung
        grown = [*grown[-1:], region]
    else:
        return grown[-1] if grown else np.zeros_like(cand)  # never leaked: an airway apart from the lungs
    airway = grown[0]  # one step below the last threshold that did not leak
    return ndi.binary_dilation(airway, _PLANE) & cand  # with the wall's partial-volume rim


def _lung_components(mask: np.ndarray, hu: np.ndarray, air_ref: float, spacing: np.ndarray,
                     voxel_ml: float, is_left: Callable[[np.ndarray], np.ndarray] | None = None
                     ) -> tuple[np.ndarray, float]:
    """The largest lung-like component, the second one if it is a plausible second lung, and fragments of
    a lung divided by dense consolidation (near them and within their cranio-caudal extent); with the
    volume (mL) found.  Lung-like: median HU clearly above pure air (aerated parenchyma, not bowel or
    stomach gas); the second lung and fragments must moreover hold little pure gas (a gas bubble's
    partial-volume rim can lift its median).

    Given ``is_left`` (for (N, 3) indices of ``mask``: beyond the body midline toward the patient's left),
    a second lung may be darker than those limits, as one lung often is over a few slices (a single slice, a
    short stack, a thick-slab export): when no second lung passed them, a component on the other side of the
    midline from the first, at least ``PARTNER_MIN_FRACTION`` of its size, with a median
    ``PARTNER_MEDIAN_ABOVE_AIR_HU`` above air and at most ``PARTNER_MAX_GAS_FRACTION`` pure gas is its partner
    (cip_chest64 slices 39-47, alone or in stacks, lost the left lung).
    """
    lab, n = ndi.label(mask)
    volume = np.bincount(lab.ravel(), minlength=n + 1)
    volume[0] = 0
    boxes = ndi.find_objects(lab)
    lung_like, gas, median = [], {}, {}
    for i in np.argsort(volume)[::-1][: min(n, 24)]:
        values = hu[boxes[i - 1]][lab[boxes[i - 1]] == i]
        median[int(i)] = float(np.median(values))
        gas[int(i)] = float(np.mean(values < air_ref + PURE_GAS_MARGIN_HU))
        if median[int(i)] > air_ref + LUNG_MEDIAN_ABOVE_AIR_HU:
            lung_like.append(int(i))
    if not lung_like:  # only gas (bowel, stomach): no lung here
        return np.zeros_like(mask), 0.0
    first = lung_like[0]
    gas_limit = max(MAX_GAS_FRACTION, 1.5 * gas[first])
    keep = [first] + [i for i in lung_like[1:2]
                      if volume[i] >= SECOND_LUNG_MIN_FRACTION * volume[first] and gas[i] <= gas_limit]
    if len(keep) == 1 and is_left is not None:
        def left_share(i: int) -> float:
            box = boxes[i - 1]
            step = max(1, int(np.ceil((volume[i] / 200_000) ** (1 / 3))))  # a sample of at most ~200k voxels
            idx = np.argwhere(lab[box][::step, ::step, ::step] == i) * step + [b.start for b in box]
            return float(np.mean(is_left(idx)))

        first_left = left_share(first) > 0.5
        for i in (int(j) for j in np.argsort(volume)[::-1][:4] if j != first and volume[j] > 0):
            other_side = 1.0 - left_share(i) if first_left else left_share(i)
            if (other_side >= 0.9 and volume[i] >= PARTNER_MIN_FRACTION * volume[first]
                    and median[i] > air_ref + PARTNER_MEDIAN_ABOVE_AIR_HU and gas[i] <= PARTNER_MAX_GAS_FRACTION):
                keep.append(i)
                break
    kept = _select(lab, np.array(keep))
    extent = np.flatnonzero(kept.any(axis=(1, 2)))[[0, -1]]
    gap = np.ceil(FRAGMENT_GAP_MM / spacing).astype(int)
    for i in lung_like[1:]:
        box = boxes[i - 1]
        if i in keep or gas[i] > gas_limit or volume[i] * voxel_ml < max(
                FRAGMENT_MIN_ML, FRAGMENT_MIN_FRACTION * volume[first] * voxel_ml) or not (
                extent[0] <= (box[0].start + box[0].stop - 1) / 2 <= extent[1]):
            continue
        near = tuple(slice(max(0, b.start - g), b.stop + g) for b, g in zip(box, gap))
        if kept[near].any() and distance_to(kept[near], spacing)[lab[near] == i].min() <= FRAGMENT_GAP_MM:
            kept[lab == i] = True
            keep.append(i)
    return kept, float(volume[keep].sum() * voxel_ml)


def _x_map(frame: _Frame, shape: tuple[int, ...], origin: np.ndarray, step: np.ndarray | None = None) -> np.ndarray:
    """LPS x (mm, float32) of every voxel of a box at ``origin``, optionally sampled every ``step`` voxels."""
    step = np.ones(3, int) if step is None else step
    axes = [(np.arange(n, dtype=np.float32) * k + o) * np.float32(w)
            for n, k, o, w in zip(shape, step, origin, frame.x_step)]
    return np.float32(frame.x_origin) + axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]


def _sides(frame: _Frame, mask: np.ndarray, offset: np.ndarray, mid_x: float) -> np.ndarray:
    """Split a boolean lung mask (canonical, cropped) into RIGHT_LUNG / LEFT_LUNG labels."""
    out = np.zeros(mask.shape, np.uint8)
    lab, _ = ndi.label(mask)
    for i, box in enumerate(ndi.find_objects(lab), start=1):
        comp = lab[box] == i
        origin = offset + [b.start for b in box]
        step = _grid(frame.spacing, comp.shape, SPLIT_GRID_MM)
        sample = comp[:: step[0], :: step[1], :: step[2]]
        sample = sample if sample.any() else comp
        step = step if sample is not comp else np.ones(3, int)
        left_share = float(np.mean(_x_map(frame, sample.shape, origin, step)[sample] > mid_x))
        side = np.full(comp.shape, labels.LEFT_LUNG if left_share > 0.5 else labels.RIGHT_LUNG, np.uint8)
        if min(left_share, 1.0 - left_share) >= BILATERAL_MIN_FRACTION:
            split = _split_component(frame, comp, origin, mid_x)
            if split is not None:
                side = split
            elif min(left_share, 1.0 - left_share) >= PLANE_CUT_MIN_FRACTION:  # fused: cut at the midline
                side = np.where(_x_map(frame, comp.shape, origin) > mid_x, labels.LEFT_LUNG, labels.RIGHT_LUNG)
        out[box][comp] = side[comp]
    return out


def _split_component(frame: _Frame, comp: np.ndarray, origin: np.ndarray, mid_x: float) -> np.ndarray | None:
    """Erode (by distance, on a coarse grid) until cores lie on both sides of the midline; give each voxel
    the side of the nearest core.  None when no radius separates the component."""
    block = _grid(frame.spacing, comp.shape, SPLIT_GRID_MM)
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
        left_core = _select(cores, ids[is_left])
        right_core = (cores > 0) & ~left_core
        nearer_left = distance_to(left_core, spacing) < distance_to(right_core, spacing)
        side = np.where(nearer_left, labels.LEFT_LUNG, labels.RIGHT_LUNG).astype(np.uint8)
        return upsample(side, block, comp.shape)
    return None


def _body_mid_x(frame: _Frame, body: np.ndarray, offset: np.ndarray) -> float:
    """LPS x of the body's centre (the midline), from a body mask in canonical order."""
    step = np.array([max(1, body.shape[0] // 64), 2, 2])
    sample = body[:: step[0], :: step[1], :: step[2]]
    if not sample.any():
        return float(frame.x_of(np.array(body.shape) / 2.0 + offset))
    return float(_x_map(frame, sample.shape, offset, step)[sample].mean())


@dataclass
class _Depth:
    """Depth below the body surface (mm) on a coarse grid of the whole canonical volume."""

    values: np.ndarray
    block: np.ndarray

    @classmethod
    def of(cls, inside: np.ndarray, spacing: np.ndarray) -> _Depth:
        block = _grid(spacing, inside.shape, CLOSING_GRID_MM)
        return cls(distance_to(~downsample(inside, block), spacing * block), block)

    def sample(self, origin: np.ndarray, block: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Depth at the centres of the blocks of another coarse grid starting at full index ``origin``."""
        index = [np.minimum((o + np.arange(n) * b + b // 2) // own, m - 1)
                 for o, n, b, own, m in zip(origin, shape, block, self.block, self.values.shape)]
        return self.values[np.ix_(*index)]


def _outward(dents: np.ndarray, lung: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """The dents lying toward the body surface from the lung around them (subpleural consolidation),
    not those deeper than it (the hilum, the mediastinum)."""
    lab, n = ndi.label(dents, _PLANE)  # decided slice by slice, so one far-reaching dent cannot outvote another
    if n == 0:
        return dents
    ids = np.arange(1, n + 1)
    ring = ndi.grey_dilation(lab, size=(1, 3, 3)) * lung

    def mean_depth(where: np.ndarray) -> np.ndarray:  # NaN where a dent has no lung beside it in its slice
        total = np.bincount(where.ravel(), weights=depth.ravel().astype(float), minlength=n + 1)[1:]
        count = np.bincount(where.ravel(), minlength=n + 1)[1:]
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    return _select(lab, ids[~(mean_depth(lab) > mean_depth(ring))])


def _fill_in_slices(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Fill the holes of each slice (vessels, airways, enclosed lesions) except those reached, in 3D, by a
    thick part of the outside: the top of a diaphragm dome, ringed by the lung base in axial slices."""
    filled = _fill_holes(mask, per_slice=True)
    holes, count = ndi.label(filled & ~mask, _PLANE)
    if count == 0:
        return filled
    block = _grid(spacing, mask.shape, DOME_GRID_MM)
    coarse = np.pad(downsample(mask, block), 1)  # a border of outside, also above and below
    core = distance_to(coarse, spacing * block) > DOME_RADIUS_MM
    thick, _ = ndi.label(distance_to(core, spacing * block) <= DOME_RADIUS_MM)
    outside = np.pad(~downsample(filled, block), 1, constant_values=True)
    open_thick = _select(thick, np.unique(thick[outside]))[1:-1, 1:-1, 1:-1]
    reached = np.unique(holes[upsample(open_thick, block, mask.shape)])
    return filled & ~_select(holes, reached)


def _refine(mask: np.ndarray, allowed: np.ndarray, spacing: np.ndarray, depth: _Depth,
            origin: np.ndarray) -> np.ndarray:
    """Fill vessels and airways (holes in each slice), roll a ball over the surface for subpleural
    consolidation (only outward dents, only soft tissue or fluid), then fill cavities closed in 3D.  The
    closing runs on ~``CLOSING_GRID_MM`` blocks and adds only the blocks it fills, never a rim."""
    mask = _fill_in_slices(mask, spacing)
    block = _grid(spacing, mask.shape, CLOSING_GRID_MM)
    coarse = downsample(mask, block)
    # the volume's first and last slices repeat outward (a lung cut by the field of view is not eroded there)
    dents = closing(coarse, spacing * block, CLOSING_RADIUS_MM, repeat_axes=(0,), empty_axes=(1, 2)) & ~coarse
    dents = _outward(dents, coarse, depth.sample(origin, block, coarse.shape))
    mask |= upsample(dents, block, mask.shape) & allowed
    mask |= _fill_in_slices(mask, spacing) & allowed
    return _fill_holes(mask, per_slice=False)


# --- public API --------------------------------------------------------------------------------------
def segment_lungs(ct: Volume, control: RunControl | None = None) -> np.ndarray:
    """Right and left lung label map (uint8 on the CT grid: 0, ``labels.RIGHT_LUNG``, ``labels.LEFT_LUNG``).

    Hu et al. 2001 (threshold, airway removal, right/left separation, smoothing) with a rolling-ball
    closing after Armato and Sensakovic 2004 for subpleural consolidation.  Raises ``InputError`` when
    the CT holds no aerated lung inside the body.
    """
    control = control or RunControl()
    frame = _Frame.of(ct)
    hu_full = frame.to_canonical(ct.array)
    control.report(0.0, "body and air")
    air_ref = _air_reference(hu_full, hu_full < AIR_HU, hu_full < PADDING_HU)
    margin = np.ceil(CLOSING_RADIUS_MM / frame.spacing).astype(int) + 1
    lung = None
    for keep_lung_like in (False, True):  # second pass: lungs cut by a narrow field of view
        inside = ~_outside_air(hu_full, hu_full < AIR_HU, hu_full < PADDING_HU, air_ref, keep_lung_like)
        inside &= hu_full >= PADDING_HU
        cand = inside & (hu_full < AIR_HU)
        if not cand.any():
            continue
        mid_x = _body_mid_x(frame, inside, np.zeros(3))
        depth = _Depth.of(inside, frame.spacing)
        box = bounding_box(cand, margin)
        offset = np.array([b.start for b in box])
        hu, cand, inside = hu_full[box], cand[box], inside[box]
        control.check()
        control.report(0.15, "trachea and main bronchi")
        airway = _large_airways(cand, hu, frame, offset, mid_x, air_ref, ct.voxel_ml)
        def is_left(idx: np.ndarray, offset: np.ndarray = offset, mid_x: float = mid_x) -> np.ndarray:
            return frame.x_of(idx + offset) > mid_x

        lung, found_ml = _lung_components(cand & ~airway, hu, air_ref, frame.spacing, ct.voxel_ml, is_left)
        if found_ml >= MIN_LUNG_ML:
            break
    if lung is None or not lung.any():
        raise InputError("no aerated lung found inside the body: not a chest CT?")
    control.check()
    control.report(0.35, "right and left")
    sides = _sides(frame, lung, offset, mid_x)
    del lung, cand
    control.check()
    allowed = inside & (hu <= MAX_ADDED_HU) & ~airway
    refined = {}
    for n, (side, other) in enumerate(((labels.RIGHT_LUNG, labels.LEFT_LUNG), (labels.LEFT_LUNG, labels.RIGHT_LUNG))):
        control.report(0.5 + 0.25 * n, f"filling and smoothing the {labels.LUNG_NAMES[side]} lung")
        own = sides == side
        if own.any():
            sub = bounding_box(own, margin)
            grown = np.zeros_like(own)
            grown[sub] = _refine(own[sub], allowed[sub] & (sides[sub] != other), frame.spacing, depth,
                                 offset + [b.start for b in sub])
            refined[side] = grown & ~airway
        control.check()
    result = np.zeros(hu.shape, np.uint8)
    for side, grown in refined.items():
        result[grown] = side
    if len(refined) == 2:  # grown into each other (the anterior junction): neither lung's
        result[refined[labels.RIGHT_LUNG] & refined[labels.LEFT_LUNG] & (sides == 0)] = labels.BACKGROUND
    full = np.zeros(hu_full.shape, np.uint8)
    full[box] = result
    control.report(1.0, "lungs done")
    return frame.from_canonical(full)


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
    frame = _Frame.of(ct)
    m = frame.to_canonical(mask)
    out = np.zeros(m.shape, np.uint8)
    if not m.any():
        return frame.from_canonical(out)
    hu = frame.to_canonical(ct.array)
    slab = bounding_box(m)[0]
    body = (hu[slab] > AIR_HU) | m[slab]
    mid_x = _body_mid_x(frame, body, np.array([slab.start, 0, 0]))
    box = bounding_box(m)
    out[box] = _sides(frame, m[box], np.array([b.start for b in box]), mid_x)
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
    block = _grid(spacing, region.shape, NEAREST_GRID_MM) if region.size > NEAREST_EXACT_VOXELS else None
    return nearest_label(region, chosen, spacing, block)
