"""Segmentation quality against a reference: Dice, normalized surface Dice, false positive/negative volume.

Normalized surface Dice (NSD): Nikolov S, et al. Clinically applicable segmentation of head and neck
anatomy for radiotherapy. J Med Internet Res 2021;23(7):e26151 (arXiv:1809.04430), computed by MONAI's
``compute_surface_dice`` with the voxel spacing (tolerance in mm) and ``use_subvoxels=True``: boundaries as
surface elements of the sub-voxel grid with their areas, as Nikolov et al. define it (MONAI's default,
boundary voxels counted equally, differs from that definition).  Both empty scores 1.

Shapes that differ are a caller's bug (the readers put every label map on the CT's grid and say so to the
user), so they raise ``ValueError``, not ``InputError``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_surface_dice

from covidlesionseg.io import Volume
from covidlesionseg.masks import bounding_box


def _masks(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {truth.shape}")
    return pred, truth


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|P∩T| / (|P| + |T|) of the masks (value > 0); 1.0 when both are empty."""
    pred, truth = _masks(pred, truth)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & truth)) / total


def surface_dice(pred: np.ndarray, truth: np.ndarray, spacing_zyx: tuple[float, float, float],
                 tolerance_mm: float = 2.0) -> float:
    """Normalized surface Dice at ``tolerance_mm`` (Nikolov et al.): the fraction of both boundaries that lies
    within the tolerance of the other.  ``spacing_zyx`` is in array axis order.  Both empty: 1.0; one empty: 0.0.
    """
    pred, truth = _masks(pred, truth)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 1.0
    if not has_pred or not has_truth:
        return 0.0
    box = bounding_box(pred | truth, 2)  # a margin keeps every boundary voxel a boundary after cropping

    def as_tensor(mask: np.ndarray) -> torch.Tensor:  # [batch 1, channel 1, z, y, x]
        return torch.from_numpy(np.ascontiguousarray(mask[box]))[None, None]

    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal use of a deprecated argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        nsd = compute_surface_dice(as_tensor(pred), as_tensor(truth), class_thresholds=[float(tolerance_mm)],
                                   include_background=True, spacing=[float(s) for s in spacing_zyx],
                                   use_subvoxels=True)
    return float(nsd[0, 0])


def fp_fn_ml(pred: np.ndarray, truth: np.ndarray, voxel_ml: float) -> tuple[float, float]:
    """(false positive mL, false negative mL): predicted outside the reference, reference missed."""
    pred, truth = _masks(pred, truth)
    return int(np.count_nonzero(pred & ~truth)) * voxel_ml, int(np.count_nonzero(truth & ~pred)) * voxel_ml


def case_metrics(pred: np.ndarray, truth: np.ndarray, ct: Volume, nsd_mm: float = 2.0) -> dict[str, float]:
    """{"dice", "nsd", "fp_ml", "fn_ml"} of one case on the CT's grid (evaluate's per-case entry)."""
    pred, truth = _masks(pred, truth)
    if pred.shape != ct.shape:
        raise ValueError(f"label shape {pred.shape} differs from CT shape {ct.shape}")
    fp_ml, fn_ml = fp_fn_ml(pred, truth, ct.voxel_ml)
    return {"dice": dice(pred, truth), "nsd": surface_dice(pred, truth, ct.spacing_zyx, nsd_mm),
            "fp_ml": fp_ml, "fn_ml": fn_ml}
