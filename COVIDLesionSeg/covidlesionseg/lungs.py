"""Classical lung segmentation: right and left lung masks from a chest (or abdomen) CT.

The method follows Hu, Hoffman and Reinhardt, "Automatic lung segmentation for accurate quantitation
of volumetric X-ray CT images", IEEE Trans Med Imaging 20(6):490-498, 2001: threshold air-like voxels
inside the body, remove the trachea and main bronchi (region growing with an adaptive threshold from a
trachea seed), separate the right and left lungs where they touch at the anterior junction (``lung_split``,
which also gives lesions outside the lungs their side), and smooth the result morphologically.
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
from covidlesionseg.lung_split import (  # noqa: F401  (include_lesions, split_right_left: public here too)
    Frame,
    body_mid_x,
    include_lesions,
    label_sides,
    split_right_left,
)
from covidlesionseg.masks import block_for_mm, bounding_box, closing, distance_to, downsample, select_labels, upsample
from covidlesionseg.progress import RunControl

AIR_HU = labels.AIR_HU  # aerated lung and air lie below this, the body above
PADDING_HU = -1500.0  # scanner padding outside the reconstruction circle (-2048, -3024, ...)
LUNG_MEDIAN_ABOVE_AIR_HU = 50.0  # aerated lung's median HU lies this far above pure air; bowel gas does not
PURE_GAS_MARGIN_HU, MAX_GAS_FRACTION = 30.0, 0.15  # lung holds few voxels this close to pure air (gas does)
CLOSING_RADIUS_MM = 25.0  # rolling-ball radius for subpleural consolidation (see the module docstring)
CLOSING_GRID_MM = 2.0  # the closing runs on blocks of about this size
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

_PLANE = np.zeros((3, 3, 3), bool)  # 4-connectivity within a slice of axis 0, none across slices
_PLANE[1] = ndi.generate_binary_structure(2, 1)


# --- small helpers -----------------------------------------------------------------------------------
def _border_labels(lab: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    faces = [np.take(lab, idx, axis=a).ravel() for a in axes for idx in (0, -1)]
    found = np.unique(np.concatenate(faces))
    return found[found > 0]


def _fill_holes(mask: np.ndarray, per_slice: bool) -> np.ndarray:
    """Fill background regions not connected to the border (in each slice of axis 0, or in 3D)."""
    background, _ = ndi.label(~mask, _PLANE if per_slice else None)
    outer = _border_labels(background, (1, 2) if per_slice else (0, 1, 2))
    return mask | ((background > 0) & ~select_labels(background, outer))


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
    return select_labels(lab, outside)


def _trachea_seed(cand: np.ndarray, hu: np.ndarray, frame: Frame, offset: np.ndarray, mid_x: float,
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


def _large_airways(cand: np.ndarray, hu: np.ndarray, frame: Frame, offset: np.ndarray, mid_x: float,
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
    kept = select_labels(lab, np.array(keep))
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


@dataclass
class _Depth:
    """Depth below the body surface (mm) on a coarse grid of the whole canonical volume."""

    values: np.ndarray
    block: np.ndarray

    @classmethod
    def of(cls, inside: np.ndarray, spacing: np.ndarray) -> _Depth:
        block = block_for_mm(spacing, inside.shape, CLOSING_GRID_MM)
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

    return select_labels(lab, ids[~(mean_depth(lab) > mean_depth(ring))])


def _fill_in_slices(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Fill the holes of each slice (vessels, airways, enclosed lesions) except those reached, in 3D, by a
    thick part of the outside: the top of a diaphragm dome, ringed by the lung base in axial slices."""
    filled = _fill_holes(mask, per_slice=True)
    holes, count = ndi.label(filled & ~mask, _PLANE)
    if count == 0:
        return filled
    block = block_for_mm(spacing, mask.shape, DOME_GRID_MM)
    coarse = np.pad(downsample(mask, block), 1)  # a border of outside, also above and below
    core = distance_to(coarse, spacing * block) > DOME_RADIUS_MM
    thick, _ = ndi.label(distance_to(core, spacing * block) <= DOME_RADIUS_MM)
    outside = np.pad(~downsample(filled, block), 1, constant_values=True)
    open_thick = select_labels(thick, np.unique(thick[outside]))[1:-1, 1:-1, 1:-1]
    reached = np.unique(holes[upsample(open_thick, block, mask.shape)])
    return filled & ~select_labels(holes, reached)


def _refine(mask: np.ndarray, allowed: np.ndarray, spacing: np.ndarray, depth: _Depth,
            origin: np.ndarray) -> np.ndarray:
    """Fill vessels and airways (holes in each slice), roll a ball over the surface for subpleural
    consolidation (only outward dents, only soft tissue or fluid), then fill cavities closed in 3D.  The
    closing runs on ~``CLOSING_GRID_MM`` blocks and adds only the blocks it fills, never a rim."""
    mask = _fill_in_slices(mask, spacing)
    block = block_for_mm(spacing, mask.shape, CLOSING_GRID_MM)
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
    frame = Frame.of(ct)
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
        mid_x = body_mid_x(frame, inside, np.zeros(3))
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
    sides = label_sides(frame, lung, offset, mid_x)
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
