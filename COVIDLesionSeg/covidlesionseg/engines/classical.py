"""The classical lesion engine: a regional density test inside the lungs, with vessels and the pleura discounted.

In the spirit of the thresholding baseline of Goncharov et al. (2021, "CT-based COVID-19 triage: deep multitask
learning improves joint identification and severity quantification", Med. Image Anal. 71:102054): infiltrates are
lung voxels whose density lies in a Hounsfield window, ground glass (from about -750 HU) up to consolidation (about
+100 HU).  A bare threshold marks some 12 % of a normal lung (vessels, partial volume at the pleura, fissures and
airway walls), so this engine decides on a *region* first and on the voxel only at the region's edge:

1. ``dense`` = lung voxels with ``lower_hu < HU <= upper_hu``.
2. Vessels: bright structures narrower than ``2 * vessel_radius_mm`` stand out of a grey-level opening by more than
   ``vessel_contrast_hu`` (white top-hat); their dense voxels leave the regional statistic.  Inside ground glass the
   surrounding parenchyma is itself dense, so the region keeps its verdict and the vessels within it are included.
3. Pleura: the lung's outer layer (one voxel, at least ``pleural_band_mm``) is partial volume with the chest wall;
   it gets the small weight ``pleural_band_weight``, so a boundary voxel is judged by the lung just inside it.  A
   subpleural lesion is dense inside as well and is kept up to the pleura.
4. Region: the Gaussian-weighted (``regional_sigma_mm``) fraction of dense voxels among the weighted lung voxels
   must exceed ``regional_fraction``.  At 0.5 this is a weighted median; 0.65 asks for a clear majority, which
   ground glass (about 95 % dense) has and crowded vessels near the hilum or dense dependent lung rarely reach.
   Within ``grow_mm`` of a region of at least ``grow_seed_ml``, ``grow_fraction`` (0.5) suffices (hysteresis).
   Air bronchograms and vessels are thinner than the neighbourhood, so they lie inside a region and count as lesion,
   as radiologists count them in the opacity's volume.
5. Edge: within ``edge_mm`` of a region's edge each voxel is lesion when its (lightly smoothed) HU is above the
   *half level*, midway between the nearby lesion HU and the nearby normal-lung HU: the voxel is more than half
   filled by lesion.  This edge does not move with blur or with the strictness of step 4.  Outside the region a
   vessel-flagged voxel never joins, so a lesion does not creep along vessels.
6. Dense voxels just outside the lung mask, in concavities of each lung up to ``border_fill_mm`` wide (a subpleural
   consolidation that the lung mask left out), may join a lesion.  The chest wall and mediastinum are never reached:
   the extension stays inside the morphological closing of each lung.
7. Components smaller than ``min_component_ml``, or with less than ``min_core_ml`` beneath the pleural layer (a
   sliver of partial volume), are dropped.

All sizes are in mm or mL, through the CT's spacing, so results do not depend on voxel size or orientation, and
nothing depends on the direction matrix.  Work is done on the lungs' bounding box; on grids finer than
``working_mm`` the regional statistics are computed on blocks of voxels (exact dense counts per block) and only the
edge test runs per voxel, which keeps a 512 x 512 x 400 CT to about ten seconds on two cores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from covidlesionseg.engines.base import LesionEngine
from covidlesionseg.io import InputError, Volume
from covidlesionseg.masks import block_sum, bounding_box, closing, distance_to, downsample, upsample
from covidlesionseg.progress import RunControl

OUTSIDE_HU = -1000.0  # what the vessel opening sees outside the lungs (air: the lung border is "bright")


@dataclass(frozen=True)
class ClassicalParams:
    """Settings of the classical engine; HU, mm and mL throughout (defaults tuned on real normal CT and phantoms)."""

    lower_hu: float = -750.0
    """Lower end of the lesion window: faint ground-glass starts here (normal parenchyma is about -850 HU)."""
    upper_hu: float = 150.0
    """Upper end: consolidation reaches about +100 HU; denser voxels (calcification, contrast) are not infiltrate."""
    regional_sigma_mm: float = 4.0
    """Gaussian sigma of the neighbourhood whose dense fraction decides a lesion region (step 4)."""
    regional_fraction: float = 0.65
    """Fraction of dense (weighted) voxels a lesion region needs (0.5: the weighted median; see step 4)."""
    grow_fraction: float = 0.5
    """Within ``grow_mm`` of a region, a weaker majority suffices (hysteresis): the necks and thin rims of a lesion
    join it, an isolated cluster of vessels does not."""
    grow_mm: float = 5.0
    """How far from a region the weaker ``grow_fraction`` applies."""
    grow_seed_ml: float = 3.0
    """Only regions at least this large grow (small cores in normal lung are mostly crowded vessels)."""
    edge_mm: float = 3.0
    """Half-width of the zone around a region's edge where each voxel is judged on its own (half-level test)."""
    edge_lesion_cap_hu: float = -300.0
    """The lesion HU that sets the half level is capped here, so that ground glass around a consolidation keeps
    its own edge (a consolidation's edge then leans outward by a fraction of a voxel)."""
    edge_smoothing_mm: float = 1.0
    """Gaussian sigma of the HU used for that test (noise); a coarse grid is used as it is."""
    vessel_radius_mm: float = 3.0
    """Radius of the ball of the grey-level opening: bright structures thinner than twice this are vessel-like."""
    vessel_contrast_hu: float = 100.0
    """How far (HU) a voxel must rise above the opening to count as vessel (white top-hat threshold)."""
    pleural_band_mm: float = 2.0
    """Thickness of the lung's outer layer treated as partial volume (at least one voxel)."""
    pleural_band_weight: float = 0.05
    """Weight of that layer in the regional statistic (0 ignores it; 1 treats it as any lung voxel)."""
    border_fill_mm: float = 10.0
    """Radius of the closing of each lung whose filled concavities may hold lesion outside the lung mask (0: none)."""
    min_component_ml: float = 0.2
    """Lesion components smaller than this (mL) are dropped."""
    min_component_block: int = 3
    """Resolution floor: components with fewer voxels than a block of this many voxels per axis (counting the axes
    that have that many voxels: 27 in 3D, 9 on one or two slices) are dropped whatever their mL.  Smaller blobs
    cannot be told from partial volume of a vessel or bronchial wall crossing voxel borders; at 4 mm voxels this
    is 1.9 mL (the hilar vessels of a normal real chest, cip_chest64, gave one 1.04 mL false lesion and CT1), at
    0.8 mm voxels 0.014 mL, where ``min_component_ml`` governs."""
    min_core_ml: float = 0.1
    """A component needs this much volume (mL) inside the lung beneath the pleural layer: a sliver of partial
    volume (lung bases cut by the diaphragm dome) is no lesion, a subpleural lesion reaches deeper."""
    working_mm: float = 1.5
    """Block size for the regional statistics on fine grids (a grid coarser than this is used as it is)."""

    def __post_init__(self) -> None:
        if not self.lower_hu < self.upper_hu:
            raise InputError(f"lower_hu ({self.lower_hu}) must be below upper_hu ({self.upper_hu})")
        if not 0.0 < self.grow_fraction <= self.regional_fraction < 1.0:
            raise InputError(f"need 0 < grow_fraction <= regional_fraction < 1, got {self.grow_fraction} and "
                             f"{self.regional_fraction}")
        if not self.lower_hu <= self.edge_lesion_cap_hu <= self.upper_hu:
            raise InputError(f"edge_lesion_cap_hu ({self.edge_lesion_cap_hu}) must lie in the lesion window")
        if not 0.0 <= self.pleural_band_weight <= 1.0:
            raise InputError(f"pleural_band_weight must lie in [0, 1], got {self.pleural_band_weight}")
        for name in ("regional_sigma_mm", "working_mm"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("grow_mm", "grow_seed_ml", "edge_mm", "edge_smoothing_mm", "vessel_radius_mm", "pleural_band_mm",
                     "border_fill_mm", "min_component_ml", "min_core_ml", "min_component_block"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must not be negative, got {getattr(self, name)}")


# --- small geometry helpers (arrays in numpy order, spacing (z, y, x) in mm) --------------------------------------
def _radius_voxels(radius_mm: float, spacing_zyx: tuple[float, ...], shape: tuple[int, ...]) -> list[int]:
    """Per-axis radius in voxels for a physical radius, in SimpleITK (x, y, z) order; 0 along a 1- or 2-voxel axis."""
    radius = [int(round(radius_mm / s)) if n > 2 else 0 for s, n in zip(spacing_zyx, shape)]
    return radius[::-1]


def _block_factors(spacing_zyx: tuple[float, ...], shape: tuple[int, ...], working_mm: float) -> tuple[int, int, int]:
    """Voxels per block along each axis: about ``working_mm``, and 1 along an axis of one or two voxels."""
    return tuple(max(1, int(round(working_mm / s))) if n > 2 else 1 for s, n in zip(spacing_zyx, shape))  # type: ignore[return-value]


def _boundary_layer(mask: np.ndarray, spacing_zyx: tuple[float, ...], band_mm: float) -> np.ndarray:
    """Voxels of ``mask`` on its outer layer: one voxel deep along every axis with depth, and at least ``band_mm``."""
    structure = ndimage.generate_binary_structure(3, 1)
    for axis, n in enumerate(mask.shape):
        if n <= 2:  # no depth along this axis: the layer is in-plane only
            idx = [1, 1, 1]
            for side in (0, 2):
                idx[axis] = side
                structure[tuple(idx)] = False
    inner = ndimage.binary_erosion(mask, structure, border_value=0)
    layer = mask & ~inner
    if band_mm > min(spacing_zyx):
        depth = ndimage.distance_transform_edt(inner, sampling=spacing_zyx)
        layer |= inner & (depth < band_mm)
    return layer


def _large_parts(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """The connected parts (26-neighbourhood) of ``mask`` with at least ``min_voxels`` voxels."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return mask
    keep = np.bincount(components.ravel(), minlength=count + 1) >= min_voxels
    keep[0] = False
    return keep[components]


def _distance_outside(mask: np.ndarray, spacing_zyx: tuple[float, ...]) -> np.ndarray:
    """Distance (mm) from each voxel outside ``mask`` to the nearest voxel centre of ``mask`` (<= 0 inside).

    An axis without depth (1 or 2 voxels) gets a huge spacing: nothing spreads across it."""
    return distance_to(mask, [s if n > 2 else 1e6 for s, n in zip(spacing_zyx, mask.shape)])


def _gaussian(array: np.ndarray, sigma_mm: float, spacing_zyx: tuple[float, ...]) -> np.ndarray:
    sigma = [sigma_mm / s if n > 1 else 0.0 for s, n in zip(spacing_zyx, array.shape)]
    return ndimage.gaussian_filter(array, sigma, mode="constant", cval=0.0, truncate=3.0)


class ClassicalEngine(LesionEngine):
    """Regional-density lesion engine (no weights, CPU).  See the module docstring for the method."""

    name = "classical"
    version = "1.0"
    weights_sha256 = None
    device = "cpu"

    def __init__(self, params: ClassicalParams | None = None) -> None:
        self.params = params or ClassicalParams()

    def describe(self) -> dict:
        return {**super().describe(), "params": asdict(self.params)}

    def _segment(self, ct: Volume, lungs: np.ndarray, run: RunControl) -> np.ndarray:
        run.report(0.0, "classical: cropping to the lungs")
        run.check()
        result = np.zeros(ct.shape, dtype=bool)
        lung_full = lungs > 0
        if not lung_full.any():
            run.report(1.0, "classical: no lung")
            return result
        p = self.params
        spacing = ct.spacing_zyx
        margin = tuple(int(math.ceil(p.border_fill_mm / s)) + 1 for s in spacing)
        box = bounding_box(lung_full, margin)
        hu = np.asarray(ct.array[box], dtype=np.float32)
        labels = lungs[box]
        lesion = self._segment_crop(hu, labels, spacing, ct.voxel_ml, run)
        result[box] = lesion
        run.report(1.0, "classical: done")
        return result

    # --- the method, on the lungs' bounding box -------------------------------------------------------------------
    def _segment_crop(
        self, hu: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...], voxel_ml: float, run: RunControl
    ) -> np.ndarray:
        p = self.params
        shape = hu.shape
        lung = labels > 0
        factors = _block_factors(spacing, shape, p.working_mm)
        work_spacing = tuple(s * f for s, f in zip(spacing, factors))

        run.report(0.05, "classical: lesion window")
        stats = self._block_statistics(hu, lung, factors)
        run.check()

        run.report(0.15, "classical: vessels")
        vessel = self._vessel_blocks(stats.pop("mean_hu"), work_spacing)
        run.check()

        run.report(0.3, "classical: pleural layer")
        lung_blocks = stats["lung"] >= 0.5 * float(np.prod(factors))
        band = _boundary_layer(lung_blocks, work_spacing, p.pleural_band_mm)
        weight = np.where(band, np.float32(p.pleural_band_weight), np.float32(1.0))
        fill = np.zeros(lung_blocks.shape, dtype=bool)
        if p.border_fill_mm > 0:
            fill = self._border_fill(labels, factors, work_spacing)
        run.check()

        run.report(0.45, "classical: regional density")
        fraction, half_level = self._regional_maps(stats, vessel, weight, work_spacing)
        inside = (stats["lung"] > 0) | fill
        regional = (fraction > p.regional_fraction) & inside
        seeds = _large_parts(regional, p.grow_seed_ml / (voxel_ml * float(np.prod(factors))))
        if p.grow_mm > 0 and seeds.any():
            near = _distance_outside(seeds, work_spacing) <= p.grow_mm
            regional |= near & (fraction > p.grow_fraction) & inside
        del stats, weight, fraction
        run.check()

        run.report(0.6, "classical: lesion edges")
        allowed = lung | upsample(fill, factors, shape)
        lesion = self._edges(regional, vessel, half_level, hu, factors, spacing, work_spacing) & allowed
        deep_lung = lung & ~upsample(band, factors, shape)
        del regional, vessel, half_level, allowed, fill, band
        run.check()

        run.report(0.85, "classical: components")
        components, count = ndimage.label(lesion, structure=np.ones((3, 3, 3), dtype=bool))
        if count == 0:
            return lesion
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        in_lung = np.bincount(components[lung], minlength=count + 1)
        deep = np.bincount(components[deep_lung], minlength=count + 1)
        block_voxels = p.min_component_block ** sum(n >= p.min_component_block for n in shape)
        keep = (in_lung > 0) & (deep * voxel_ml >= p.min_core_ml) & (sizes * voxel_ml >= p.min_component_ml)
        keep &= sizes >= block_voxels
        keep[0] = False
        return keep[components]

    def _block_statistics(self, hu: np.ndarray, lung: np.ndarray, factors: tuple[int, int, int]) -> dict:
        """Per block (a voxel when the grid is coarse): counts and HU sums of lung, dense, raised and clear voxels."""
        p = self.params

        def blocks(values: np.ndarray) -> np.ndarray:
            return block_sum(values, factors, np.float32)

        raised = lung & (hu > p.lower_hu)  # dense or brighter
        dense = raised & (hu <= p.upper_hu)
        stats = {"lung": blocks(lung), "dense": blocks(dense), "raised": blocks(raised)}
        stats["clear"] = stats["lung"] - stats["raised"]  # normal-looking parenchyma
        stats["dense_hu"] = blocks(np.where(dense, np.minimum(hu, np.float32(p.edge_lesion_cap_hu)), np.float32(0)))
        stats["clear_hu"] = blocks(np.where(lung & ~raised, hu, np.float32(0)))
        lung_hu = blocks(np.where(lung, hu, np.float32(0)))
        enough = stats["lung"] >= 0.5 * float(np.prod(factors))
        stats["mean_hu"] = np.where(enough, lung_hu / np.maximum(stats["lung"], 1.0), OUTSIDE_HU).astype(np.float32)
        return stats

    def _regional_maps(
        self, stats: dict, vessel: np.ndarray, weight: np.ndarray, work_spacing: tuple[float, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Weighted dense fraction, and the half level between the nearby lesion and normal-lung HU."""
        p = self.params

        def smooth(values: np.ndarray) -> np.ndarray:
            return _gaussian((weight * values).astype(np.float32), p.regional_sigma_mm, work_spacing)

        def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
            return np.where(denominator > 1e-3, numerator / np.maximum(denominator, 1e-6), np.nan)

        # Vessel-flagged blocks drop their raised voxels from the dense count and from the lung count.
        dense = np.where(vessel, np.float32(0), stats["dense"])
        dense_hu = np.where(vessel, np.float32(0), stats["dense_hu"])
        smooth_dense = smooth(dense)
        fraction = np.nan_to_num(ratio(smooth_dense, smooth(stats["lung"] - np.where(vessel, stats["raised"], 0))))
        lesion_level = ratio(smooth(dense_hu), smooth_dense)
        normal_level = ratio(smooth(stats["clear_hu"]), smooth(stats["clear"]))
        half = np.clip(0.5 * (lesion_level + normal_level), p.lower_hu, p.upper_hu)
        half = np.where(np.isnan(half), np.float32(p.lower_hu), half)
        return fraction.astype(np.float32), half.astype(np.float32)

    def _edges(
        self,
        regional: np.ndarray,
        vessel: np.ndarray,
        half_level: np.ndarray,
        hu: np.ndarray,
        factors: tuple[int, int, int],
        spacing: tuple[float, ...],
        work_spacing: tuple[float, ...],
    ) -> np.ndarray:
        """Lesion voxels: the region's inside, plus the voxels near its edge that are at least half lesion.

        ``regional``, ``vessel`` and ``half_level`` are block maps; the result is on the voxel grid of ``hu``.  The
        half level lies midway between the lesion's local HU and normal lung's: a voxel above it is more than half
        filled by lesion (partial volume), the edge a radiologist draws, and it does not move with blur.
        """
        p = self.params
        shape = hu.shape
        radius = _radius_voxels(p.edge_mm, work_spacing, regional.shape)
        if p.edge_mm <= 0 or not any(radius) or not regional.any():
            return upsample(regional, factors, shape)
        image = sitk.GetImageFromArray(regional.view(np.uint8))
        inner = sitk.GetArrayFromImage(sitk.BinaryErode(image, radius, sitk.sitkBall)).astype(bool)
        zone = sitk.GetArrayFromImage(sitk.BinaryDilate(image, radius, sitk.sitkBall)).astype(bool) & ~inner
        lesion = upsample(inner, factors, shape).copy()
        zone_voxels = upsample(zone, factors, shape)
        box = bounding_box(zone_voxels, (2, 2, 2)) if zone_voxels.any() else None
        if box is None:
            return lesion
        # The per-voxel test, on the zone's bounding box only: HU smoothed against noise, then compared.
        sub = np.asarray(hu[box])
        sigma = [p.edge_smoothing_mm / s if n > 1 else 0.0 for s, n in zip(spacing, sub.shape)]
        if max(sigma) >= 0.3:
            sub = ndimage.gaussian_filter(sub, sigma, truncate=3.0)
        where = np.nonzero(zone_voxels[box])
        level = sub[where]
        block = tuple((w + b.start) // f for w, b, f in zip(where, box, factors))
        # Beyond the region a vessel leaving it does not join it; within it, a thin bright part (a cap or a corner
        # of the lesion, a vessel in ground glass) stays.
        passed = (level > half_level[block]) & (level <= p.upper_hu) & (regional[block] | ~vessel[block])
        lesion[tuple(w + b.start for w, b in zip(where, box))] = passed
        return lesion

    def _vessel_blocks(self, work_hu: np.ndarray, work_spacing: tuple[float, ...]) -> np.ndarray:
        """White top-hat of the (block-mean) HU: bright structures thinner than the opening ball."""
        p = self.params
        radius = _radius_voxels(p.vessel_radius_mm, work_spacing, work_hu.shape)
        if p.vessel_radius_mm <= 0 or not any(radius):
            return np.zeros(work_hu.shape, dtype=bool)
        image = sitk.GetImageFromArray(work_hu)
        opened = sitk.GetArrayFromImage(sitk.GrayscaleMorphologicalOpening(image, radius, sitk.sitkBall, True))
        return (work_hu - opened) > p.vessel_contrast_hu

    def _border_fill(
        self, labels: np.ndarray, factors: tuple[int, int, int], work_spacing: tuple[float, ...]
    ) -> np.ndarray:
        """Blocks in concavities of each lung (right, left apart) that a ``border_fill_mm`` ball's closing fills."""
        radius = self.params.border_fill_mm
        any_lung = downsample(labels > 0, factors)
        fill = np.zeros(any_lung.shape, dtype=bool)
        margin = tuple(int(math.ceil(radius / s)) + 1 for s in work_spacing)
        for value in np.unique(labels[labels > 0]):
            one = downsample(labels == value, factors)
            if not one.any():
                continue
            box = bounding_box(one, margin)
            fill[box] |= closing(one[box], work_spacing, radius)  # the image border is no wall
        return fill & ~any_lung
