"""The classical lesion engine: a regional density test inside the lungs, with vessels and the pleura discounted.

In the spirit of the thresholding baseline of Goncharov et al. (2021, "CT-based COVID-19 triage: deep multitask
learning improves joint identification and severity quantification", Med. Image Anal. 71:102054): infiltrates are
lung voxels whose density lies in a Hounsfield window, ground-glass (from about -750 HU) up to consolidation (about
+100 HU).  A bare threshold marks some 12 % of a normal lung (vessels, partial volume at the pleura, fissures and
airway walls), so this engine decides on a *region* instead of a voxel:

1. ``dense`` = lung voxels with ``lower_hu < HU <= upper_hu``.
2. Vessels: bright structures narrower than ``2 * vessel_radius_mm`` stand out of a grey-level opening by more than
   ``vessel_contrast_hu`` (white top-hat); dense voxels there get weight 0.  Inside a ground-glass region the
   surrounding parenchyma is itself dense, so the region keeps its verdict, and the vessels within it are included.
3. Pleura: the lung's outer layer (one voxel, at least ``pleural_band_mm``) is partial volume with the chest wall;
   it gets the small weight ``pleural_band_weight``, so a boundary voxel is judged by the lung just inside it.  A
   subpleural lesion is dense inside as well and is kept up to the pleura.
4. Regional test: the Gaussian-weighted (``regional_sigma_mm``) fraction of dense voxels among the weighted lung
   voxels.  A fraction above ``regional_fraction`` = 0.5 means the weighted *median* HU of the neighbourhood lies in
   the lesion window, a robust region statistic (a step edge sits exactly at 0.5; noise and thin vessels do not move
   it).  Air bronchograms inside a consolidation are thinner than the neighbourhood, so they are counted as lesion,
   as radiologists count them in the consolidated volume.
5. Dense voxels just outside the lung mask, in concavities of each lung up to ``border_fill_mm`` wide (a subpleural
   consolidation that the lung mask left out), join a lesion they touch.  The chest wall and mediastinum are never
   reached: the extension stays inside the morphological closing of each lung.
6. Components smaller than ``min_component_ml`` are dropped.

All sizes are in mm or mL, through the CT's spacing, so results do not depend on voxel size or orientation.  Work is
done on the lungs' bounding box; on grids finer than ``working_mm`` the regional statistics are computed on blocks of
voxels (exact dense fractions per block) and interpolated back, which keeps a 512x512x300 CT within seconds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from covidlesionseg.engines.base import CancelCheck, LesionEngine, ProgressCallback, RunControl
from covidlesionseg.io import InputError, Volume

OUTSIDE_HU = -1000.0  # what the vessel opening sees outside the lungs (air: the lung border is "bright")


@dataclass(frozen=True)
class ClassicalParams:
    """Settings of the classical engine; HU, mm and mL throughout (defaults tuned on real normal CT and phantoms)."""

    lower_hu: float = -750.0
    """Lower end of the lesion window: faint ground-glass starts here (normal parenchyma is about -850 HU)."""
    upper_hu: float = 150.0
    """Upper end: consolidation reaches about +100 HU; denser voxels (calcification, contrast) are not infiltrate."""
    regional_sigma_mm: float = 4.0
    """Gaussian scale of the neighbourhood whose weighted median HU decides a voxel."""
    regional_fraction: float = 0.5
    """Fraction of dense (weighted) voxels a neighbourhood needs; 0.5 is the weighted median."""
    edge_grow_mm: float = 3.0
    """Dense voxels this close to a lesion region join it (restores the edge that the regional test rounds off)."""
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
    min_core_ml: float = 0.1
    """A component needs this much volume (mL) inside the lung beneath the pleural layer: a sliver of partial
    volume (lung bases cut by the diaphragm dome) is no lesion, a subpleural lesion reaches deeper."""
    working_mm: float = 1.5
    """Block size for the regional statistics on fine grids (a grid coarser than this is used as it is)."""

    def __post_init__(self) -> None:
        if not self.lower_hu < self.upper_hu:
            raise InputError(f"lower_hu ({self.lower_hu}) must be below upper_hu ({self.upper_hu})")
        if not 0.0 < self.regional_fraction < 1.0:
            raise InputError(f"regional_fraction must lie in (0, 1), got {self.regional_fraction}")
        if not 0.0 <= self.pleural_band_weight <= 1.0:
            raise InputError(f"pleural_band_weight must lie in [0, 1], got {self.pleural_band_weight}")
        for name in ("regional_sigma_mm", "working_mm"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("edge_grow_mm", "vessel_radius_mm", "pleural_band_mm", "border_fill_mm", "min_component_ml", "min_core_ml"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must not be negative, got {getattr(self, name)}")


# --- small geometry helpers (arrays in numpy order, spacing (z, y, x) in mm) --------------------------------------
def _radius_voxels(radius_mm: float, spacing_zyx: tuple[float, ...], shape: tuple[int, ...]) -> list[int]:
    """Per-axis radius in voxels for a physical radius, in SimpleITK (x, y, z) order; 0 along a 1- or 2-voxel axis."""
    radius = [int(round(radius_mm / s)) if n > 2 else 0 for s, n in zip(spacing_zyx, shape)]
    return radius[::-1]


def _block_factors(spacing_zyx: tuple[float, ...], working_mm: float) -> tuple[int, int, int]:
    return tuple(max(1, int(round(working_mm / s))) for s in spacing_zyx)  # type: ignore[return-value]


def _block_sum(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Sum over non-overlapping blocks (the array's shape is a multiple of ``factors``) as float32."""
    if factors == (1, 1, 1):
        return array.astype(np.float32)
    (nz, ny, nx), (fz, fy, fx) = array.shape, factors
    blocks = array.reshape(nz // fz, fz, ny // fy, fy, nx // fx, fx)
    return blocks.sum(axis=(1, 3, 5), dtype=np.float32)


def _upsample(array: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation from block centres back to the voxel grid, cut to ``shape``."""
    if factors == (1, 1, 1):
        return array[: shape[0], : shape[1], : shape[2]]
    up = ndimage.zoom(array, factors, order=1, mode="nearest", grid_mode=True, prefilter=False)
    return up[: shape[0], : shape[1], : shape[2]]


def _repeat_blocks(blocks: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Each block's value on all its voxels, cut to ``shape``."""
    for axis, f in enumerate(factors):
        if f > 1:
            blocks = np.repeat(blocks, f, axis=axis)
    return blocks[: shape[0], : shape[1], : shape[2]]


def _lung_bounding_box(lung: np.ndarray, margin: tuple[int, ...]) -> tuple[slice, ...]:
    box = []
    for axis, pad in enumerate(margin):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(lung.any(axis=other))
        box.append(slice(max(0, int(hit[0]) - pad), min(lung.shape[axis], int(hit[-1]) + 1 + pad)))
    return tuple(box)


def _pad_to_multiple(array: np.ndarray, factors: tuple[int, int, int], value: float) -> np.ndarray:
    pad = [(0, (-n) % f) for n, f in zip(array.shape, factors)]
    if not any(p for _, p in pad):
        return array
    return np.pad(array, pad, constant_values=value)


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

    def segment(
        self,
        ct: Volume,
        lungs: np.ndarray,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCheck] = None,
    ) -> np.ndarray:
        """Boolean lesion mask on ``ct``'s grid; ``lungs`` is the lung label map (0 background) on the same grid."""
        run = RunControl(progress, cancel)
        lungs = np.asarray(lungs)
        if lungs.shape != ct.shape:
            raise InputError(f"lung mask shape {lungs.shape} differs from the CT's {ct.shape}")
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
        box = _lung_bounding_box(lung_full, margin)
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
        factors = _block_factors(spacing, p.working_mm)
        work_spacing = tuple(s * f for s, f in zip(spacing, factors))

        run.report(0.05, "classical: lesion window")
        dense = lung & (hu > p.lower_hu) & (hu <= p.upper_hu)
        raised = lung & (hu > p.lower_hu)  # dense or brighter: what a vessel flag can discount
        lung_p = _pad_to_multiple(lung, factors, 0)
        lung_frac = _block_sum(lung_p, factors) / float(np.prod(factors))
        lung_hu = _block_sum(_pad_to_multiple(np.where(lung, hu, 0.0).astype(np.float32), factors, 0), factors)
        lung_w = lung_frac >= 0.5
        work_hu = np.where(lung_w, lung_hu / np.maximum(lung_frac * np.prod(factors), 1.0), OUTSIDE_HU)
        dense_count = _block_sum(_pad_to_multiple(dense, factors, 0), factors)
        raised_count = _block_sum(_pad_to_multiple(raised, factors, 0), factors)
        lung_count = lung_frac * float(np.prod(factors))
        del lung_hu, raised
        run.check()

        run.report(0.15, "classical: vessels")
        vessel = self._vessel_blocks(work_hu.astype(np.float32), work_spacing)
        run.check()

        run.report(0.35, "classical: pleural layer")
        weight = np.ones(lung_w.shape, dtype=np.float32)
        band = _boundary_layer(lung_w, work_spacing, p.pleural_band_mm)
        weight[band] = p.pleural_band_weight
        core = lung & ~_repeat_blocks(band, factors, shape)
        del band
        run.check()

        run.report(0.45, "classical: regional density")
        # Vessel-flagged blocks drop their raised voxels from both the dense count and the lung count.
        numerator = weight * np.where(vessel, 0.0, dense_count)
        denominator = weight * (lung_count - np.where(vessel, raised_count, 0.0))
        del dense_count, raised_count
        numerator = _gaussian(numerator.astype(np.float32), p.regional_sigma_mm, work_spacing)
        denominator = _gaussian(denominator.astype(np.float32), p.regional_sigma_mm, work_spacing)
        fraction = np.where(denominator > 1e-3, numerator / np.maximum(denominator, 1e-6), 0.0).astype(np.float32)
        del numerator, denominator
        run.check()

        run.report(0.6, "classical: lesion regions")
        regional = _upsample(fraction, factors, shape) > p.regional_fraction
        del fraction
        if p.edge_grow_mm > 0 and regional.any():
            # A convex region's weighted median recedes from its edge by about sigma^2 / radius; dense voxels within
            # edge_grow_mm of the region take it back.
            radius = _radius_voxels(p.edge_grow_mm, spacing, shape)
            grown = sitk.BinaryDilate(sitk.GetImageFromArray(regional.view(np.uint8)), radius, sitk.sitkBall)
            regional |= sitk.GetArrayViewFromImage(grown).astype(bool) & (hu > p.lower_hu) & (hu <= p.upper_hu)
        in_lung = regional & lung
        run.check()

        run.report(0.7, "classical: lesion at the lung border")
        extension = np.zeros(shape, dtype=bool)
        if p.border_fill_mm > 0:
            fill = _repeat_blocks(self._border_fill(labels, factors, work_spacing), factors, shape)
            extension = fill & regional & ~lung & (hu > p.lower_hu) & (hu <= p.upper_hu)
        del regional
        run.check()

        run.report(0.85, "classical: components")
        candidate = in_lung | extension
        components, count = ndimage.label(candidate, structure=np.ones((3, 3, 3), dtype=bool))
        if count == 0:
            return candidate
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        core_sizes = np.bincount(components[in_lung & core], minlength=count + 1)
        keep = (core_sizes * voxel_ml >= p.min_core_ml) & (sizes * voxel_ml >= p.min_component_ml)
        keep[0] = False
        return keep[components]

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
        threshold = 0.5 * float(np.prod(factors))
        shape = tuple(-(-n // f) for n, f in zip(labels.shape, factors))
        radius = _radius_voxels(self.params.border_fill_mm, work_spacing, shape)
        fill = np.zeros(shape, dtype=bool)
        if not any(radius):
            return fill
        any_lung = _block_sum(_pad_to_multiple(labels > 0, factors, 0), factors) >= threshold
        for value in np.unique(labels[labels > 0]):
            one = _block_sum(_pad_to_multiple(labels == value, factors, 0), factors) >= threshold
            closed = sitk.BinaryMorphologicalClosing(sitk.GetImageFromArray(one.astype(np.uint8)), radius,
                                                     sitk.sitkBall, 1, True)
            fill |= sitk.GetArrayViewFromImage(closed).astype(bool)
        return fill & ~any_lung
