"""Lobe-wise severity scores of COVID-19 lung involvement: the one place for their maths.

Definitions (docs/contracts.md, "Severity definitions"); p = 100 x lesion volume / region volume:

- PO and PHO, percentage of (high) opacity of both lungs: Chaganti S, et al. Automated quantification of
  CT patterns associated with COVID-19 from chest CT. Radiol Artif Intell 2020;2(4):e200048.
- LSS and LHOS (0-20), lobe points 0-4 from each lobe's (high-opacity) percentage: Chaganti et al. 2020,
  after Bernheim A, et al. Chest CT findings in coronavirus disease-19. Radiology 2020;295(3):200463.
- CTSS (0-25), lobe points 0-5: Pan F, et al. Time course of lung changes on chest CT during recovery from
  COVID-19 pneumonia. Radiology 2020;295(3):715-721, with the bins and the categories none / mild /
  moderate / severe as written by Topff L, et al. Eur Radiol 2023 (note "0 < p < 5", "5 <= p <= 25").
- CT category CT0-CT4 (Moscow scale): Morozov SP, et al. 2020; volume based, from the larger of the two
  per-lung percentages, as in Goncharov M, et al. CT-based COVID-19 triage. Med Image Anal 2021;71:102054.

All scores are computed from per-region voxel counts (`RegionCounts`), so the full computation
(`compute_severity`) and the incremental one (`SeverityCounter.update`, for live scoring while a user
edits lesions) share `severity_from_counts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from covidlesionseg import labels
from covidlesionseg.io import InputError, Volume
from covidlesionseg.masks import slabs

# Region code of a voxel = lung label * _N_LOBE + lobe label (lung 0 = outside the lungs, lobe 0 = no lobe).
_N_LUNG = 3
_N_LOBE = 6
_N_CODES = _N_LUNG * _N_LOBE
_LUNG_SIDES = (labels.RIGHT_LUNG, labels.LEFT_LUNG)
Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class BinScale:
    """Points 0..len(edges)+1 for a region's percentage p.

    0 when the lesion volume is at or below the floor ("p = 0"); otherwise 1 plus the number of edges that
    p lies above.  ``edge_in_lower_bin[n]`` says where p == edges[n] falls: True gives "(lower, upper]"
    (the contract's default), False gives "[lower, upper)" as in CTSS's "0 < p < 5", "5 <= p <= 25".
    """

    edges: tuple[float, ...]
    edge_in_lower_bin: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.edge_in_lower_bin):
            raise ValueError("one closure flag per bin edge")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])) or (self.edges and self.edges[0] <= 0):
            raise ValueError(f"bin edges must be positive and increasing: {self.edges}")

    def points(self, percent: float, lesion_ml: float, floor_ml: float) -> int:
        if lesion_ml <= floor_ml:
            return 0
        return 1 + sum(
            1 for edge, in_lower in zip(self.edges, self.edge_in_lower_bin)
            if percent > edge or (percent == edge and not in_lower)
        )

    def describe(self) -> list[str]:
        """Readable bins in order of points, e.g. ["p = 0", "0 < p < 5", "5 <= p <= 25", ...]."""
        out = ["p = 0"]
        lower, lower_op = 0.0, "<"
        for edge, in_lower in zip(self.edges, self.edge_in_lower_bin):
            upper_op = "<=" if in_lower else "<"
            out.append(f"{_fmt(lower)} {lower_op} p {upper_op} {_fmt(edge)}")
            lower, lower_op = edge, ("<" if in_lower else "<=")
        out.append(f"p {'>' if lower_op == '<' else '>='} {_fmt(lower)}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "edge_in_lower_bin": list(self.edge_in_lower_bin),
                "bins": self.describe()}


def _fmt(value: float) -> str:
    return f"{value:g}"


_QUARTERS = BinScale((25.0, 50.0, 75.0), (True, True, True))


@dataclass(frozen=True)
class SeverityConfig:
    """Bins, floor and HU threshold of every score; ``to_json()`` is severity.json's ``"config"``."""

    high_opacity_hu: float = labels.HIGH_OPACITY_HU
    floor_ml: float = 0.1  # lesion volume <= floor counts as p = 0; 0 reproduces the papers exactly
    lss_bins: BinScale = _QUARTERS  # LSS and LHOS (Chaganti et al. after Bernheim et al.)
    ctss_bins: BinScale = BinScale((5.0, 25.0, 50.0, 75.0), (False, True, True, True))  # Pan et al. / Topff et al.
    ct_bins: BinScale = _QUARTERS  # CT0..CT4 (Morozov et al.; Goncharov et al.)
    ctss_categories: tuple[tuple[str, int, int], ...] = (
        ("none", 0, 0), ("mild", 1, 5), ("moderate", 6, 14), ("severe", 15, 25))  # Topff et al.

    def __post_init__(self) -> None:
        if not np.isfinite(self.floor_ml) or self.floor_ml < 0:
            raise ValueError(f"floor_ml must be >= 0, got {self.floor_ml}")
        if len(self.ct_bins.edges) + 2 != len(labels.CT_CATEGORIES):
            raise ValueError(f"CT category bins must give {len(labels.CT_CATEGORIES)} categories")

    def scale(self, name: str) -> BinScale:
        """The bins that ``Score.bins`` names: LSS and LHOS share theirs; CTSS and the CT category have their own."""
        return {"LSS": self.lss_bins, "LHOS": self.lss_bins, "CTSS": self.ctss_bins, "CT_category": self.ct_bins}[name]

    def to_json(self) -> dict[str, Any]:
        return {
            "high_opacity_hu": float(self.high_opacity_hu),
            "floor_ml": float(self.floor_ml),
            "bins": {
                "LSS": self.scale("LSS").to_json(),
                "LHOS": self.scale("LHOS").to_json(),
                "CTSS": self.scale("CTSS").to_json(),
                "CT_category": {**self.scale("CT_category").to_json(), "categories": list(labels.CT_CATEGORIES)},
                "CTSS_category": {name: [lo, hi] for name, lo, hi in self.ctss_categories},
            },
        }


DEFAULT_CONFIG = SeverityConfig()


# --- the scores, each declared once -------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    """One whole-chest score of severity.json: its key, what users read, unit, bins and the paper it is from.

    ``bins`` names the ``SeverityConfig`` scale whose edges it uses (None for a plain percentage).  A score with
    a value per region has ``region_key`` (its key in severity.json's ``lobes`` and ``lungs`` objects; for
    points, each lobe's points sum to the score) computed from the ``of`` measure ("lesion" or "high_opacity"),
    and ``column``, its title in the per-region tables.  The severity document, the reports and the Slicer
    module's table read this list (after the measurement declarations of 3D Slicer's SegmentStatistics
    plugins) instead of keeping their own copies of names, keys and references.
    """

    key: str
    name: str
    unit: str
    value_range: str
    bins: str | None
    reference: str
    needs_full_coverage: bool
    region_key: str | None = None
    of: str = "lesion"
    column: str = ""

    @property
    def is_points(self) -> bool:
        """Points per lobe (LSS, LHOS, CTSS), summed over the five lobes."""
        return self.unit == "points"


CHAGANTI = ("Chaganti S, et al. Automated quantification of CT patterns associated with COVID-19 from chest CT. "
            "Radiol Artif Intell 2020;2(4):e200048")
SCORES: tuple[Score, ...] = (
    Score("PO", "percentage of opacity", "%", "0-100", None, CHAGANTI, False, "percent", "lesion", "lesion %"),
    Score("PHO", "percentage of high opacity", "%", "0-100", None, CHAGANTI, False,
          "high_opacity_percent", "high_opacity", "high opacity %"),
    Score("LSS", "lung severity score", "points", "0-20", "LSS",
          CHAGANTI + "; after Bernheim A, et al. Radiology 2020;295(3):200463", True, "lss", "lesion", "LSS"),
    Score("LHOS", "lung high-opacity score", "points", "0-20", "LHOS", CHAGANTI, True,
          "lhos", "high_opacity", "LHOS"),
    Score("CTSS", "CT severity score", "points", "0-25", "CTSS",
          "Pan F, et al. Radiology 2020;295(3):715-721; bins and categories as Topff L, et al. write them", True,
          "ctss", "lesion", "CTSS"),
    Score("CTSS_category", "CTSS category", "", "none-severe", "CTSS_category",
          "Topff L, et al.", True),
    Score("CT_category", "CT category (Moscow)", "", "CT0-CT4", "CT_category",
          "Morozov SP, et al. (MosMedData, Moscow CT0-CT4 grading); volume-based as Goncharov M, et al. "
          "Med Image Anal 2021;71:102054.  CT0: no signs of viral pneumonia", True),
)
SCORE_BY_KEY = {score.key: score for score in SCORES}
LOBE_POINTS = tuple(score for score in SCORES if score.is_points)
CATEGORY_SCORES = tuple(score for score in SCORES if score.region_key is None)


@dataclass(frozen=True)
class Column:
    """One column of the per-region tables (the text table, report.html, the Slicer module's table): its title,
    the key of a region's value (lobe or lung object of severity.json), the key of the whole chest's value (the
    "both lungs" row), integer or not, and the decimals shown."""

    title: str
    region_key: str
    whole_key: str
    integer: bool
    digits: int


TABLE_COLUMNS: tuple[Column, ...] = (
    Column("volume mL", "volume_ml", "lung_ml", False, 1),
    Column("lesion mL", "lesion_ml", "lesion_ml", False, 2),
    *(Column(score.column, score.region_key, score.key, score.is_points, 2) for score in SCORES if score.region_key),
)
"""Region volumes, then every score with a value per region, in the order of ``SCORES``."""


# --- points of one region --------------------------------------------------------------------------
def lss_points(percent: float, lesion_ml: float, config: SeverityConfig = DEFAULT_CONFIG) -> int:
    """Lobe points 0-4 of LSS (Chaganti et al. after Bernheim et al.); LHOS uses the high-opacity values."""
    return config.lss_bins.points(percent, lesion_ml, config.floor_ml)


lhos_points = lss_points


def ctss_points(percent: float, lesion_ml: float, config: SeverityConfig = DEFAULT_CONFIG) -> int:
    """Lobe points 0-5 of CTSS (Pan et al., bins as Topff et al.: 0 < p < 5 is 1, 5 <= p <= 25 is 2)."""
    return config.ctss_bins.points(percent, lesion_ml, config.floor_ml)


def ctss_category(total: int | None, config: SeverityConfig = DEFAULT_CONFIG) -> str | None:
    """CTSS category (Topff et al.): none 0, mild 1-5, moderate 6-14, severe 15-25; None for None."""
    if total is None:
        return None
    for name, lo, hi in config.ctss_categories:
        if lo <= total <= hi:
            return name
    raise ValueError(f"CTSS {total} outside every category range")


def ct_category(percent: float, lesion_ml: float, config: SeverityConfig = DEFAULT_CONFIG) -> str:
    """CT0-CT4 (Moscow scale, Morozov et al.; volume based as in Goncharov et al.) of one lung."""
    return labels.CT_CATEGORIES[config.ct_bins.points(percent, lesion_ml, config.floor_ml)]


def percent_of(part_voxels: int, region_voxels: int) -> float:
    """p = 100 x part / region from voxel counts (exact at the bin edges); 0 for an empty region."""
    return 100.0 * int(part_voxels) / int(region_voxels) if region_voxels else 0.0


# --- label maps --------------------------------------------------------------------------------------
def split_opacity(lesion_mask: np.ndarray, ct_hu: np.ndarray | Volume,
                  config: SeverityConfig = DEFAULT_CONFIG) -> np.ndarray:
    """The derived lesion labels (uint8): 1 where HU < threshold, 2 where HU >= threshold (Chaganti et al.).

    ``lesion_mask`` may be bool or labels (lesion = value > 0); the 1/2 split is always recomputed from HU.
    """
    hu = ct_hu.array if isinstance(ct_hu, Volume) else np.asarray(ct_hu)
    mask = np.asarray(lesion_mask) > 0
    if mask.shape != hu.shape:
        raise ValueError(f"lesion map shape {mask.shape} differs from CT shape {hu.shape}")  # a caller's bug
    out = mask.astype(np.uint8)
    high = hu >= config.high_opacity_hu
    high &= mask
    out += high.view(np.uint8)
    return out


def _check_shape(name: str, array: np.ndarray, ct: Volume) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != ct.shape:
        raise ValueError(f"{name} map shape {array.shape} differs from CT shape {ct.shape}")  # a caller's bug
    return array


def region_codes(lungs: np.ndarray, lobes: np.ndarray | None) -> np.ndarray:
    """uint8 code per voxel = lung label * 6 + lobe label (both 0 where absent)."""
    codes = np.empty(lungs.shape, np.uint8)
    for sl in slabs(lungs.shape):
        lung = lungs[sl]
        if lung.size and (lung.min() < 0 or lung.max() >= _N_LUNG):
            raise InputError(f"lung map values must be 0, {labels.RIGHT_LUNG} (right) or {labels.LEFT_LUNG} (left)")
        codes[sl] = lung.astype(np.uint8) * np.uint8(_N_LOBE)
        if lobes is not None:
            lobe = lobes[sl]
            if lobe.size and (lobe.min() < 0 or lobe.max() >= _N_LOBE):
                raise InputError("lobe map values must be 0..5 (convert external maps with lobes.convert_lobe_map)")
            codes[sl] += lobe.astype(np.uint8)
    return codes


def _fov_reason(ct: Volume, lungs: np.ndarray) -> str:
    """Which lungs touch the first or last slice along the patient's superior-inferior axis."""
    axis, sign = ct.patient_axis("SI")
    first, last = ("inferior", "superior") if sign > 0 else ("superior", "inferior")
    reasons = []
    for side in _LUNG_SIDES:
        edges = [name for index, name in ((0, first), (-1, last)) if np.any(np.take(lungs, index, axis) == side)]
        if edges:
            reasons.append(f"{labels.LUNG_NAMES[side]} lung cut by the field of view "
                           f"(touches the {' and '.join(edges)} edge)")
    return "; ".join(reasons)


# --- counts ------------------------------------------------------------------------------------------
@dataclass
class RegionCounts:
    """Voxel counts per (lung, lobe) region: everything the scores need.  Arrays are (3, 6) int64,
    indexed [lung label, lobe label] with 0 = outside the lungs / no lobe."""

    voxels: np.ndarray
    lesion: np.ndarray
    high_opacity: np.ndarray
    voxel_ml: float
    fov_reason: str = ""  # non-empty when a lung is cut by the field of view
    has_lobes: bool = False

    @classmethod
    def empty(cls, voxel_ml: float, fov_reason: str = "", has_lobes: bool = False) -> RegionCounts:
        shape = (_N_LUNG, _N_LOBE)
        return cls(np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, np.int64),
                   voxel_ml, fov_reason, has_lobes)

    def add(self, codes: np.ndarray, high: np.ndarray, sign: int = 1) -> None:
        """Add (sign +1) or remove (-1) lesion voxels with these region codes and high-opacity flags."""
        if codes.size:
            self.lesion += sign * np.bincount(codes, minlength=_N_CODES).reshape(_N_LUNG, _N_LOBE)
            self.high_opacity += sign * np.bincount(codes[high], minlength=_N_CODES).reshape(_N_LUNG, _N_LOBE)

    @property
    def outside_lesion_voxels(self) -> int:
        return int(self.lesion[0].sum())


def _coverage_reasons(counts: RegionCounts) -> list[str]:
    reasons = [counts.fov_reason] if counts.fov_reason else []
    for side in _LUNG_SIDES:
        if not counts.voxels[side].any():
            reasons.append(f"{labels.LUNG_NAMES[side]} lung absent")
    if counts.has_lobes:
        absent = [name for lobe, name in labels.LOBE_NAMES.items() if not counts.voxels[1:, lobe].any()]
        if absent:
            reasons.append(f"lobe absent: {', '.join(absent)}")
    return reasons


def _check_lobe_consistency(counts: RegionCounts) -> None:
    ml = counts.voxel_ml
    for side in _LUNG_SIDES:
        side_name = labels.LUNG_NAMES[side]
        for lobe, name in labels.LOBE_NAMES.items():
            n = int(counts.voxels[side, lobe])
            if n and labels.LOBE_LUNG[lobe] != side:
                raise InputError(f"{n * ml:.2f} mL of the {side_name} lung are labelled {name}; "
                                 f"lobes must lie in their own lung (lobes.complete_lobes)")
        side_lobes = [lobe for lobe, lung in labels.LOBE_LUNG.items() if lung == side]
        unassigned = int(counts.voxels[side, 0])
        if unassigned and counts.voxels[side, side_lobes].any():
            raise InputError(f"{unassigned * ml:.2f} mL of the {side_name} lung have no lobe; every lung voxel "
                             f"must belong to one lobe (lobes.complete_lobes)")


def severity_from_counts(counts: RegionCounts, config: SeverityConfig = DEFAULT_CONFIG,
                         lobe_source: str = "none") -> dict[str, Any]:
    """The severity.json body from ``"lobe_source"`` on, from region voxel counts alone."""
    ml = counts.voxel_ml
    if counts.outside_lesion_voxels:
        raise InputError(f"{counts.outside_lesion_voxels * ml:.2f} mL of lesion lie outside the lung mask; "
                         f"the lung mask must contain every lesion voxel")
    lung_voxels = int(counts.voxels[1:].sum())
    if not lung_voxels:
        raise InputError("the lung mask is empty")
    if counts.has_lobes:
        _check_lobe_consistency(counts)
    reasons = _coverage_reasons(counts)
    complete = not reasons
    lesion_voxels = int(counts.lesion[1:].sum())
    high_voxels = int(counts.high_opacity[1:].sum())

    lungs: dict[str, dict[str, float]] = {}
    lung_categories = []
    for side in _LUNG_SIDES:
        n, k = int(counts.voxels[side].sum()), int(counts.lesion[side].sum())
        percent = percent_of(k, n)
        lungs[labels.LUNG_NAMES[side]] = {"volume_ml": n * ml, "lesion_ml": k * ml, "percent": percent}
        lung_categories.append(config.ct_bins.points(percent, k * ml, config.floor_ml))

    lobes: dict[str, dict[str, Any]] = {}
    totals = {score.key: 0 for score in LOBE_POINTS}
    for lobe, name in labels.LOBE_NAMES.items() if counts.has_lobes else ():
        n = int(counts.voxels[1:, lobe].sum())
        k, h = int(counts.lesion[1:, lobe].sum()), int(counts.high_opacity[1:, lobe].sum())
        percent, high_percent = percent_of(k, n), percent_of(h, n)
        measured = {"lesion": (percent, k * ml), "high_opacity": (high_percent, h * ml)}
        points = {score: config.scale(score.bins).points(*measured[score.of], config.floor_ml)
                  for score in LOBE_POINTS}
        for score, value in points.items():
            totals[score.key] += value
        lobes[name] = {"volume_ml": n * ml, "lesion_ml": k * ml, "high_opacity_ml": h * ml, "percent": percent,
                       "high_opacity_percent": high_percent,
                       **{score.region_key: (value if complete else None) for score, value in points.items()}}

    whole_lobes = complete and counts.has_lobes
    scores: dict[str, Any] = {
        "PO": percent_of(lesion_voxels, lung_voxels),
        "PHO": percent_of(high_voxels, lung_voxels),
        **{key: (total if whole_lobes else None) for key, total in totals.items()},
    }
    scores["CTSS_category"] = ctss_category(scores["CTSS"], config)
    # The larger per-lung percentage decides; per-lung categories (with the floor) keep a floored lung from
    # hiding a real lesion in the other one.
    scores["CT_category"] = labels.CT_CATEGORIES[max(lung_categories)] if complete else None
    return {
        "lobe_source": lobe_source,
        "coverage": {"complete": complete, "reason": "; ".join(reasons)},
        "config": config.to_json(),
        "lung_ml": lung_voxels * ml,
        "lesion_ml": lesion_voxels * ml,
        "high_opacity_ml": high_voxels * ml,
        **{score.key: scores[score.key] for score in SCORES},  # every declared score, in the declared order
        "lungs": lungs,
        "lobes": lobes,
    }


def check_coverage(ct: Volume, lungs: np.ndarray, lobes: np.ndarray | None) -> tuple[bool, str]:
    """(complete, reason): incomplete when a lung touches the first or last slice along the patient's
    superior-inferior axis, a lung is absent, or (with lobes) a lobe is absent."""
    lungs = _check_shape("lung", lungs, ct)
    counts = RegionCounts.empty(ct.voxel_ml, _fov_reason(ct, lungs), lobes is not None)
    codes = region_codes(lungs, None if lobes is None else _check_shape("lobe", lobes, ct))
    for sl in slabs(codes.shape):
        counts.voxels += np.bincount(codes[sl].ravel(), minlength=_N_CODES).reshape(_N_LUNG, _N_LOBE)
    reasons = _coverage_reasons(counts)
    return not reasons, "; ".join(reasons)


# --- full and incremental computation ----------------------------------------------------------------
class SeverityCounter:
    """Per-region voxel counts that follow lesion edits in time proportional to the edited box.

    Built once (a few bincount passes); ``update`` applies the difference between the old and new lesion
    masks of a box, taking the high-opacity split from the CT's HU there; ``severity()`` gives the same
    dict as `compute_severity` from the counts alone.  Lungs and lobes are fixed for the counter's life.
    """

    def __init__(self, ct: Volume, lesions: np.ndarray, lungs: np.ndarray, lobes: np.ndarray | None = None, *,
                 config: SeverityConfig = DEFAULT_CONFIG, lobe_source: str = "none") -> None:
        if (lobes is None) != (lobe_source == "none"):
            raise ValueError("give a lobe map together with its lobe_source, and lobe_source 'none' without one")
        lesions = _check_shape("lesion", lesions, ct)
        lungs = _check_shape("lung", lungs, ct)
        lobes = None if lobes is None else _check_shape("lobe", lobes, ct)
        self.config = config
        self.lobe_source = lobe_source
        self._hu = ct.array
        self._codes = region_codes(lungs, lobes)
        self.counts = RegionCounts.empty(ct.voxel_ml, _fov_reason(ct, lungs), lobes is not None)
        for sl in slabs(ct.shape):
            codes = self._codes[sl]
            self.counts.voxels += np.bincount(codes.ravel(), minlength=_N_CODES).reshape(_N_LUNG, _N_LOBE)
            lesion = lesions[sl] > 0
            self.counts.add(codes[lesion], self._hu[sl][lesion] >= config.high_opacity_hu)

    def update(self, box: Box, old_lesion_box: np.ndarray, new_lesion_box: np.ndarray) -> None:
        """Apply an edit of the lesion map inside ``box`` (old and new lesion values of that box)."""
        codes = self._codes[box]
        old, new = np.asarray(old_lesion_box) > 0, np.asarray(new_lesion_box) > 0
        if old.shape != codes.shape or new.shape != codes.shape:
            raise ValueError(f"box {codes.shape} and lesion boxes {old.shape}/{new.shape} differ in shape")
        changed = old != new
        if not changed.any():
            return
        high = self._hu[box] >= self.config.high_opacity_hu
        added, removed = changed & new, changed & old
        self.counts.add(codes[added], high[added], +1)
        self.counts.add(codes[removed], high[removed], -1)

    @property
    def outside_lesion_ml(self) -> float:
        """Lesion volume outside the lung mask (the lungs must be extended before scoring)."""
        return self.counts.outside_lesion_voxels * self.counts.voxel_ml

    def severity(self) -> dict[str, Any]:
        return severity_from_counts(self.counts, self.config, self.lobe_source)


def compute_severity(ct: Volume, lesions: np.ndarray, lungs: np.ndarray, lobes: np.ndarray | None = None, *,
                     config: SeverityConfig = DEFAULT_CONFIG,
                     lobe_source: str = "none") -> dict[str, Any]:
    """severity.json from ``"lobe_source"`` on (the caller adds software, engine and model).

    ``lesions`` may be bool or 0/1/2: lesion = value > 0 and the 1/2 split is recomputed from the CT's HU.
    ``lungs`` holds 1 right / 2 left and must contain every lesion voxel; ``lobes`` (1..5 on our convention,
    every lung voxel in one lobe of its side, see lobes.complete_lobes) or None with lobe_source "none".
    Volumes are in mL from the voxel spacing; percentages from voxel counts, never floored.
    """
    return SeverityCounter(ct, lesions, lungs, lobes, config=config, lobe_source=lobe_source).severity()
