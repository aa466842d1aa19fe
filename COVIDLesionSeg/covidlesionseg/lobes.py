"""Lung lobe maps: external conventions (recognised and converted) and completion on the lungs.

The sources of lobes (built-in, TotalSegmentator, lungmask, files) are in ``lobe_providers``.

External conventions (docs/contracts.md, "External lobe maps"):
- TotalSegmentator v2 (Wasserthal J, et al. Radiol Artif Intell 2023;5(5):e230024): 10 LUL, 11 LLL, 12 RUL,
  13 RML, 14 RLL among 117 classes; v1: 13 LUL, 14 LLL, 15 RUL, 16 RML, 17 RLL among 104 classes.
- lungmask LTRCLobes (Hofmanninger J, et al. Eur Radiol Exp 2020;4:50): 1 LUL, 2 LLL, 3 RUL, 4 RML, 5 RLL.
- Chest Imaging Platform (CIP): value = region + 256 x type; regions 4 RUL, 5 RML, 6 RLL, 7 LUL, 8 LLL;
  airway/vessel types stay in their lobe; 512 alone (airway, no region) = trachea, dropped.
- covidlesionseg: 1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL (labels.py).

Values alone can fit several conventions (ours and lungmask both use 1..5).  Detection then asks the
anatomy: under the right convention the right lobes lie on the patient's right (smaller LPS x, from the
direction cosines) of the left lobes, or, when a map holds one side only, on the right of the body's
midline.  It picks a convention only when exactly one passes and every other one is contradicted;
otherwise it refuses, naming the candidates.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from covidlesionseg import labels
from covidlesionseg.io import InputError, Volume
from covidlesionseg.masks import bounding_box, nearest_label, slabs

log = logging.getLogger(__name__)

_OURS = {value: value for value in labels.LOBE_NAMES}
_RUL, _RML, _RLL, _LUL, _LLL = labels.RUL, labels.RML, labels.RLL, labels.LUL, labels.LLL
CONVENTIONS: dict[str, dict[int, int]] = {  # name -> {external value: our lobe label}
    "totalsegmentator_v2": {10: _LUL, 11: _LLL, 12: _RUL, 13: _RML, 14: _RLL},
    "totalsegmentator_v1": {13: _LUL, 14: _LLL, 15: _RUL, 16: _RML, 17: _RLL},
    "lungmask": {1: _LUL, 2: _LLL, 3: _RUL, 4: _RML, 5: _RLL},
    "cip": {4: _RUL, 5: _RML, 6: _RLL, 7: _LUL, 8: _LLL},
    "covidlesionseg": _OURS,
}
# Largest value a map of the convention holds; values that are not lobes (other organs) are ignored.
_MAX_VALUE = {"totalsegmentator_v2": 117, "totalsegmentator_v1": 104, "lungmask": 5, "cip": 0xFFFF,
              "covidlesionseg": max(_OURS)}
_MODULO = {"cip": 256}  # the lobe is value % 256 (CIP chest region); value // 256 is the CIP chest type
_ONLY_LOBE_VALUES = ("lungmask", "covidlesionseg", "cip")  # every nonzero value (% modulo) must be a lobe
LATERALITY_MARGIN_MM = 20.0
_LATERALITY_VOXELS = 1 << 21


def _value_counts(label_array: np.ndarray) -> dict[int, int]:
    """{value: voxel count} of a non-negative integer label map (slab-wise bincount)."""
    arr = np.asarray(label_array)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"lobe map must hold integer labels, not {arr.dtype}")
    if arr.size == 0:
        return {}
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise InputError(f"lobe map has negative value {lo}")
    if hi > 0xFFFF:
        raise InputError(f"lobe map value {hi} fits no known lobe convention")
    counts = np.zeros(hi + 1, np.int64)
    for sl in slabs(arr.shape):
        counts += np.bincount(arr[sl].ravel().astype(np.intp), minlength=hi + 1)
    return {int(v): int(c) for v, c in enumerate(counts) if c and v}


def _lut(convention: str, max_value: int) -> np.ndarray:
    """Lookup table value -> our lobe label (0 for non-lobe values)."""
    mapping, modulo = CONVENTIONS[convention], _MODULO.get(convention)
    values = np.arange(max_value + 1)
    reduced = values % modulo if modulo else values
    lut = np.zeros(max_value + 1, np.uint8)
    for external, lobe in mapping.items():
        lut[reduced == external] = lobe
    return lut


def _fits(convention: str, values: dict[int, int]) -> bool:
    """Values allowed by the convention, and at least one of its lobes present."""
    if not values or max(values) > _MAX_VALUE[convention]:
        return False
    modulo = _MODULO.get(convention)
    reduced = {v % modulo if modulo else v for v in values} - {0}
    lobe_values = set(CONVENTIONS[convention])
    if convention in _ONLY_LOBE_VALUES and not reduced <= lobe_values:
        return False
    return bool(reduced & lobe_values)


def _apply_lut(label_array: np.ndarray, lut: np.ndarray) -> np.ndarray:
    arr = np.asarray(label_array)
    out = np.empty(arr.shape, np.uint8)
    for sl in slabs(arr.shape):
        out[sl] = lut[arr[sl]]
    return out


def _centroids_x(lobe_map: np.ndarray, ct: Volume) -> dict[int, float]:
    """LPS x (toward the patient's left) of each present lobe's centroid."""
    counts = np.zeros(len(labels.LOBE_NAMES) + 1)
    sums = np.zeros((3, counts.size))
    for sl in slabs(lobe_map.shape):
        nz = np.nonzero(lobe_map[sl])
        lab = lobe_map[sl][nz]
        counts += np.bincount(lab, minlength=counts.size)
        for axis in range(3):
            coords = nz[axis] + (sl.start if axis == 0 else 0)
            sums[axis] += np.bincount(lab, weights=coords, minlength=counts.size)
    present = [lobe for lobe in labels.LOBE_NAMES if counts[lobe]]
    if not present:
        return {}
    xyz = ct.lps_points(np.stack([sums[:, lobe] / counts[lobe] for lobe in present]))
    return {lobe: float(x) for lobe, x in zip(present, xyz[:, 0])}


def _body_midline_x(ct: Volume) -> float | None:
    """LPS x of the centroid of the body (voxels above ``labels.AIR_HU``), None when there is none."""
    hu = ct.array
    total, sums = 0, np.zeros(3)
    for sl in slabs(hu.shape):
        nz = np.nonzero(hu[sl] > labels.AIR_HU)
        total += nz[0].size
        sums += [nz[0].sum() + sl.start * nz[0].size, nz[1].sum(), nz[2].sum()]
    return float(ct.lps_points(sums / total)[0, 0]) if total else None


def _laterality(lobe_map: np.ndarray, ct: Volume, midline_x: float | None) -> str:
    """'consistent', 'contradicted' or 'undecided': do right lobes lie on the patient's right?"""
    xs = _centroids_x(lobe_map, ct)
    right = [x for lobe, x in xs.items() if labels.LOBE_LUNG[lobe] == labels.RIGHT_LUNG]
    left = [x for lobe, x in xs.items() if labels.LOBE_LUNG[lobe] == labels.LEFT_LUNG]
    if right and left:
        gap = min(left) - max(right)
        return "consistent" if gap >= LATERALITY_MARGIN_MM else "contradicted" if gap < 0 else "undecided"
    if midline_x is None or not xs:
        return "undecided"
    # One side only: its lobes' offsets from the body midline, signed toward their own side.
    offsets = [(midline_x - x) if right else (x - midline_x) for x in (right or left)]
    if min(offsets) >= LATERALITY_MARGIN_MM:
        return "consistent"
    return "contradicted" if max(offsets) <= -LATERALITY_MARGIN_MM else "undecided"


def check_convention(convention: str) -> None:
    """Refuse an unknown convention name (InputError naming the known ones)."""
    if convention not in CONVENTIONS:
        raise InputError(f"unknown lobe convention {convention!r}; known: {', '.join(CONVENTIONS)}")


def detect_convention(label_array: np.ndarray, ct: Volume | None = None) -> str:
    """Name of the lobe convention of an external map; refuses (InputError) when it cannot tell.

    ``ct`` (the CT the map lies on) lets laterality decide between conventions the values alone cannot.
    """
    return _detect(label_array, _value_counts(label_array), ct)


def _detect(label_array: np.ndarray, values: dict[int, int], ct: Volume | None) -> str:
    shown = ", ".join(str(v) for v in sorted(values)[:12]) + (", ..." if len(values) > 12 else "")
    if not values:
        raise InputError("the lobe map is empty")
    candidates = [name for name in CONVENTIONS if _fits(name, values)]
    if not candidates:
        raise InputError(f"lobe map values {shown} fit no known convention ({', '.join(CONVENTIONS)})")
    if len(candidates) == 1:
        return candidates[0]
    hint = f"lobe map values {shown} fit several conventions: {', '.join(candidates)}"
    if ct is None or ct.shape != np.shape(label_array):
        raise InputError(f"{hint}; give the convention (--lobe-convention NAME)")
    # Centroids need no full resolution: a strided view of about 2M voxels keeps this fast at 512x512x300.
    stride = max(1, int(np.ceil((np.prod(ct.shape) / _LATERALITY_VOXELS) ** (1 / 3))))
    coarse = Volume(ct.array[::stride, ::stride, ::stride], tuple(stride * s for s in ct.spacing), ct.origin,
                    ct.direction)
    coarse_labels = np.asarray(label_array)[::stride, ::stride, ::stride]
    midline = None
    verdicts = {}
    for name in candidates:
        lobe_map = _apply_lut(coarse_labels, _lut(name, max(values)))
        verdicts[name] = _laterality(lobe_map, coarse, midline)
        if verdicts[name] == "undecided" and midline is None:  # one-sided map: ask the body's midline
            midline = _body_midline_x(coarse)
            verdicts[name] = _laterality(lobe_map, coarse, midline)
    consistent = [name for name, verdict in verdicts.items() if verdict == "consistent"]
    if len(consistent) == 1 and all(v == "contradicted" for n, v in verdicts.items() if n != consistent[0]):
        log.info("lobe convention %s chosen by laterality among %s", consistent[0], candidates)
        return consistent[0]
    detail = ", ".join(f"{name} {verdict}" for name, verdict in verdicts.items())
    raise InputError(f"{hint} (laterality: {detail}); give the convention (--lobe-convention NAME)")


def convert_lobe_map(label_array: np.ndarray, convention: str | None = None,
                     ct: Volume | None = None) -> tuple[np.ndarray, str]:
    """(lobes 0..5 uint8 on our convention, convention name); detected when ``convention`` is None."""
    values = _value_counts(label_array)
    if convention is None:
        convention = _detect(label_array, values, ct)
    else:
        check_convention(convention)
        if not _fits(convention, values):
            raise InputError(f"lobe map values do not fit the {convention} convention "
                             f"(it holds {', '.join(str(v) for v in sorted(values)[:12]) or 'nothing'})")
    return _apply_lut(label_array, _lut(convention, max(values))), convention


def complete_lobes(lobes: np.ndarray, lungs: np.ndarray, ct: Volume, *, source: str = "lobe map") -> np.ndarray:
    """Every lung voxel in exactly one lobe of its own side (uint8, our convention).

    Lobe voxels outside the lungs or in the other lung are dropped; lung voxels without a lobe join the
    nearest lobe (in mm, Euclidean distance transform) of the same side where that side has lobes.  Repairs
    of more than a trace (``REPAIR_REPORT_ML``) are reported as a warning naming ``source`` and the mL.
    """
    out, repairs = complete_lobes_with_report(lobes, lungs, ct)
    reported = {k: v for k, v in repairs.items() if v > REPAIR_REPORT_ML}
    if reported:
        log.warning("%s repaired on the lungs: %s", source,
                    ", ".join(f"{v:.1f} mL {_REPAIR_WORDS[k]}" for k, v in reported.items()))
    return out


REPAIR_REPORT_ML = 0.05
_REPAIR_WORDS = {"outside_lungs_ml": "of lobe outside the lungs dropped",
                 "other_side_ml": "of lobe in the other lung reassigned",
                 "unassigned_ml": "of lung without a lobe given the nearest lobe",
                 "side_without_lobes_ml": "of lung whose side has no lobe left without lobe"}


def complete_lobes_with_report(lobes: np.ndarray, lungs: np.ndarray, ct: Volume) -> tuple[np.ndarray, dict]:
    """:func:`complete_lobes` and what it repaired, in mL: lobe voxels outside the lungs, lobe voxels in the
    other lung, lung voxels given the nearest lobe, lung voxels of a side without any lobe (left at 0)."""
    lobes, lungs = np.asarray(lobes), np.asarray(lungs)
    if lobes.shape != ct.shape or lungs.shape != ct.shape:
        raise InputError(f"lobe map {lobes.shape} and lung map {lungs.shape} must lie on the CT grid {ct.shape}")
    if lobes.size and (lobes.min() < 0 or lobes.max() > max(labels.LOBE_NAMES)):
        raise InputError("lobe map values must be 0..5 (convert external maps with convert_lobe_map)")
    if lungs.size and (lungs.min() < 0 or lungs.max() > max(labels.LUNG_NAMES)):
        raise InputError(f"lung map values must be 0, {labels.RIGHT_LUNG} (right) or {labels.LEFT_LUNG} (left)")
    ml = ct.voxel_ml
    repairs = {"outside_lungs_ml": 0.0, "other_side_ml": 0.0, "unassigned_ml": 0.0, "side_without_lobes_ml": 0.0}
    out = np.zeros(ct.shape, np.uint8)
    box_all = bounding_box(lobes > 0)
    if box_all is not None:
        repairs["outside_lungs_ml"] = ml * int(np.count_nonzero((lobes[box_all] > 0) & (lungs[box_all] == 0)))
    boxes = ndimage.find_objects(lungs, max_label=max(labels.LUNG_NAMES))
    for side, box in zip(labels.LUNG_NAMES, boxes):
        if box is None:
            continue
        lung = lungs[box] == side
        lobe_side = labels.lungs_from_lobes(lobes[box])
        repairs["other_side_ml"] += ml * int(np.count_nonzero(lung & (lobe_side > 0) & (lobe_side != side)))
        own = np.where(lung & (lobe_side == side), lobes[box], 0).astype(np.uint8)
        missing = lung & (own == 0)
        if missing.any() and own.any():
            own[missing] = nearest_label(own, missing, ct.spacing_zyx)[0]
        key = "unassigned_ml" if own.any() else "side_without_lobes_ml"
        repairs[key] += ml * int(np.count_nonzero(missing))
        out[box][lung] = own[lung]
    return out, {k: round(v, 3) for k, v in repairs.items()}
