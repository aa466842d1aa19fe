"""One-click lesion grow: the connected region of an HU window around a clicked voxel, inside a mask, in a box.

The maths behind the Segment Editor effect "COVID lesion grow" (and ``covidlesionseg bench live``): crop a box
around the click, keep voxels whose HU lies in the window (ground-glass opacity or consolidation, after the
attenuation ranges of Chaganti et al. 2020 and the thresholding baseline of Goncharov et al. 2021), restricted
to the allowed mask (the lung mask), and return the face-connected component that holds the click.
Only the box is touched, so a click costs milliseconds on a 512x512x300 CT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidlesionseg.io import InputError

# HU windows (lower, upper), inclusive.  Ground glass: hazy lung attenuation above aerated lung and below
# -300 HU; consolidation: soft-tissue attenuation that hides vessels.
WINDOWS: dict[str, tuple[float, float]] = {
    "ground glass": (-750.0, -300.0),
    "consolidation": (-300.0, 100.0),
    "any opacity": (-750.0, 100.0),
}
DEFAULT_WINDOW = "any opacity"
DEFAULT_RADIUS_MM = 25.0

Box = tuple[slice, slice, slice]


@dataclass
class GrowResult:
    """The grown region: ``box`` (slices on the CT grid) and ``mask`` (bool, the box's shape)."""

    box: Box
    mask: np.ndarray

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())

    def extent_ijk(self) -> tuple[int, int, int, int, int, int]:
        """The box as a VTK extent (i0, i1, j0, j1, k0, k1), inclusive, for numpy (k, j, i) arrays."""
        k, j, i = self.box
        return i.start, i.stop - 1, j.start, j.stop - 1, k.start, k.stop - 1


def box_around(seed_kji: tuple[int, int, int], shape: tuple[int, ...], spacing_zyx: tuple[float, float, float],
               radius_mm: float) -> Box:
    """Slices of the box of half-size ``radius_mm`` (at least one voxel) around ``seed_kji``, clipped to ``shape``."""
    half = np.maximum(np.round(radius_mm / np.asarray(spacing_zyx, float)).astype(int), 1)
    lo = np.maximum(np.asarray(seed_kji) - half, 0)
    hi = np.minimum(np.asarray(seed_kji) + half + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def grow_region(hu: np.ndarray, seed_kji: tuple[int, int, int], spacing_zyx: tuple[float, float, float], *,
                window: tuple[float, float] | str = DEFAULT_WINDOW,
                allowed: np.ndarray | Callable[[Box], np.ndarray] | None = None,
                radius_mm: float = DEFAULT_RADIUS_MM) -> GrowResult:
    """The face-connected region of voxels with HU in ``window`` that holds ``seed_kji``, inside ``allowed``
    and within ``radius_mm`` of the seed along each axis.

    ``allowed`` (e.g. the lung mask) is an array shaped like ``hu`` or a function giving its values in a box
    (so a caller need not build the whole mask for one click).

    Raises InputError with a one-line reason when the seed is off the grid, outside the allowed mask, or its
    HU lies outside the window.
    """
    lo_hu, hi_hu = WINDOWS[window] if isinstance(window, str) else window
    if lo_hu > hi_hu:
        raise InputError(f"HU window lower bound {lo_hu} exceeds its upper bound {hi_hu}")
    if radius_mm <= 0:
        raise InputError(f"grow radius must be positive, got {radius_mm} mm")
    seed = tuple(int(v) for v in seed_kji)
    if len(seed) != 3 or any(not 0 <= s < n for s, n in zip(seed, hu.shape)):
        raise InputError(f"click {seed} lies outside the CT grid {hu.shape}")
    if isinstance(allowed, np.ndarray) and allowed.shape != hu.shape:
        raise InputError(f"mask shape {allowed.shape} differs from CT shape {hu.shape}")
    box = box_around(seed, hu.shape, spacing_zyx, radius_mm)
    local = tuple(s - b.start for s, b in zip(seed, box))
    allowed_box = None if allowed is None else (allowed[box] if isinstance(allowed, np.ndarray) else allowed(box))
    if allowed_box is not None and not allowed_box[local]:
        raise InputError("the click lies outside the lung mask (extend the Lung mask segment first if it missed a "
                         "lesion)")
    value = float(hu[seed])
    if not lo_hu <= value <= hi_hu:
        raise InputError(f"the clicked voxel is {value:.0f} HU, outside the window [{lo_hu:.0f}, {hi_hu:.0f}] HU")
    crop = hu[box]
    inside = (crop >= lo_hu) & (crop <= hi_hu)
    if allowed_box is not None:
        inside &= allowed_box > 0
    components, _ = ndimage.label(inside)
    return GrowResult(box, components == components[local])
