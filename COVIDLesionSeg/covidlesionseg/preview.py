"""One-picture preview of a CT: axial, coronal and sagittal slices side by side, with label overlays.

Slices are resampled from the CT's physical space onto an isotropic, patient-aligned display grid, so any
direction matrix and anisotropic voxels display correctly, in radiological convention: the patient's right
on the image's left in axial and coronal views, anterior up in axial, superior up in coronal and sagittal,
anterior on the left in sagittal.  Lung window W1500 / L-600.  Written as PNG by SimpleITK.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .io import Volume

WINDOW = (-600.0, 1500.0)  # level, width
MAX_PANEL_PX = 512
GAP_PX = 4
LESION_COLOURS = {1: (255, 40, 40), 2: (255, 220, 0)}
PALETTE = [(80, 160, 255), (80, 220, 120), (255, 160, 60), (200, 120, 255), (255, 100, 180), (60, 220, 220)]


def _extent(ct: Volume) -> tuple[np.ndarray, np.ndarray]:
    n = np.array(ct.shape[::-1], float) - 1
    corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])])
    pts = np.asarray(ct.origin) + (corners * np.asarray(ct.spacing)) @ ct.direction.T
    return pts.min(0), pts.max(0)


def display_spacing(ct: Volume) -> float:
    """Isotropic display pixel (mm): the finest voxel spacing, coarser if a panel would exceed 512 pixels."""
    lo, hi = _extent(ct)
    return float(max(min(ct.spacing), (hi - lo).max() / MAX_PANEL_PX))


def _focus(ct: Volume, overlays: dict[str, np.ndarray], lo: np.ndarray, hi: np.ndarray, step: float) -> np.ndarray:
    """LPS point the three planes go through: the most lesion-laden slice along each axis, else the middle."""
    mask = overlays.get("lesions")
    if mask is None or not np.any(mask):
        return 0.5 * (lo + hi)
    idx = np.argwhere(np.asarray(mask) > 0)
    if len(idx) > 200_000:
        idx = idx[np.linspace(0, len(idx) - 1, 200_000).astype(int)]
    pts = ct.lps_points(idx)
    out = np.empty(3)
    for a in range(3):
        edges = np.arange(lo[a], hi[a] + 2 * step, 2 * step)
        counts, _ = np.histogram(pts[:, a], bins=edges)
        out[a] = edges[np.argmax(counts)] + step
    return out


def _plane(image: sitk.Image, origin, size, step: float, interp, default: float) -> np.ndarray:
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing((step, step, step))
    ref.SetOrigin(tuple(float(v) for v in origin))
    pixel = sitk.sitkFloat32 if interp == sitk.sitkLinear else sitk.sitkUInt8
    out = sitk.Resample(image, ref, sitk.Transform(), interp, default, pixel)
    return sitk.GetArrayFromImage(out)


def _views(ct: Volume, array_img: sitk.Image, focus, lo, hi, step, interp, default) -> list[np.ndarray]:
    n = np.maximum(np.ceil((hi - lo) / step).astype(int) + 1, 1)
    axial = _plane(array_img, [lo[0], lo[1], focus[2]], [n[0], n[1], 1], step, interp, default)[0]
    coronal = _plane(array_img, [lo[0], focus[1], lo[2]], [n[0], 1, n[2]], step, interp, default)[:, 0, :]
    sagittal = _plane(array_img, [focus[0], lo[1], lo[2]], [1, n[1], n[2]], step, interp, default)[:, :, 0]
    # axial rows: y (anterior at top), columns: x (patient right on the left); others: superior at top
    return [axial, coronal[::-1], sagittal[::-1]]


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _overlay(rgb: np.ndarray, labels_2d: np.ndarray, name: str, index: int) -> None:
    for value in np.unique(labels_2d):
        if value == 0:
            continue
        m = labels_2d == value
        if name == "lesions":
            colour, alpha = np.array(LESION_COLOURS.get(int(value), (255, 40, 40)), float), 0.3
        else:
            colour, alpha = np.array(PALETTE[(int(value) + 2 * index) % len(PALETTE)], float), 0.07
        rgb[m] = (1 - alpha) * rgb[m] + alpha * colour
        edge = _outline(m)
        rgb[edge] = 0.3 * rgb[edge] + 0.7 * colour


def render_preview(ct: Volume, overlays: dict[str, np.ndarray] | None = None,
                   path: str | os.PathLike = "preview.png") -> None:
    """Write one PNG with axial, coronal and sagittal slices (lesion-centred when a ``lesions`` overlay exists).

    ``overlays`` maps names to label maps on the CT grid; ``lesions`` is drawn red (label 1) / yellow
    (label 2), any other map (lobes, lungs) as faint coloured regions with outlines.
    """
    overlays = {k: np.asarray(v) for k, v in (overlays or {}).items()}
    for name, arr in overlays.items():
        if arr.shape != ct.shape:
            raise ValueError(f"overlay {name!r} has shape {arr.shape}, CT has {ct.shape}")
    lo, hi = _extent(ct)
    step = display_spacing(ct)
    focus = _focus(ct, overlays, lo, hi, step)
    level, width = WINDOW
    grey = []
    for view in _views(ct, ct.to_sitk(ct.array.astype(np.float32, copy=False)), focus, lo, hi, step,
                       sitk.sitkLinear, -1024.0):
        g = np.clip((view - (level - width / 2)) / width, 0.0, 1.0) * 255.0
        grey.append(np.repeat(g[..., None], 3, axis=2))
    for index, (name, arr) in enumerate(overlays.items()):
        maps = _views(ct, ct.to_sitk(arr.astype(np.uint8)), focus, lo, hi, step, sitk.sitkNearestNeighbor, 0)
        for rgb, lab in zip(grey, maps):
            _overlay(rgb, lab, name, index)
    height = max(p.shape[0] for p in grey)
    canvas = np.zeros((height, sum(p.shape[1] for p in grey) + GAP_PX * (len(grey) - 1), 3), np.uint8)
    col = 0
    for p in grey:
        top = (height - p.shape[0]) // 2
        canvas[top:top + p.shape[0], col:col + p.shape[1]] = np.round(p).astype(np.uint8)
        col += p.shape[1] + GAP_PX
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(canvas, isVector=True), str(out))
