"""Label values, names and conventions: the one place for each of these facts (docs/contracts.md)."""

from __future__ import annotations

import numpy as np

# lesions.nii.gz
BACKGROUND = 0
LESION_LOW = 1  # lesion voxel with HU < high-opacity threshold ("opacity < -200 HU")
LESION_HIGH = 2  # lesion voxel with HU >= threshold ("high opacity >= -200 HU", Chaganti et al.)
HIGH_OPACITY_HU = -200.0
AIR_HU = -400.0
"""Air and aerated lung lie below this, the body (soft tissue, fluid, bone) above: the lung mask's air threshold
and the body whose centre is the midline (lungs and lobes)."""

# lungs.nii.gz
RIGHT_LUNG = 1
LEFT_LUNG = 2
LUNG_NAMES = {RIGHT_LUNG: "right", LEFT_LUNG: "left"}

# lobes.nii.gz
RUL, RML, RLL, LUL, LLL = 1, 2, 3, 4, 5
LOBE_NAMES = {RUL: "RUL", RML: "RML", RLL: "RLL", LUL: "LUL", LLL: "LLL"}
LOBE_LABELS = {name: value for value, name in LOBE_NAMES.items()}
LOBE_LUNG = {RUL: RIGHT_LUNG, RML: RIGHT_LUNG, RLL: RIGHT_LUNG, LUL: LEFT_LUNG, LLL: LEFT_LUNG}


def lungs_from_lobes(lobes: np.ndarray) -> np.ndarray:
    """The lung label map (1 right, 2 left) of a lobe map on our convention (0 background, 1..5 lobes)."""
    side_of = np.zeros(max(LOBE_NAMES) + 1, np.uint8)
    for lobe, lung in LOBE_LUNG.items():
        side_of[lobe] = lung
    return side_of[np.asarray(lobes)]


LOBE_LONG_NAMES = {
    RUL: "right upper lobe",
    RML: "right middle lobe",
    RLL: "right lower lobe",
    LUL: "left upper lobe",
    LLL: "left lower lobe",
}

# Severity categories
CT_CATEGORIES = ("CT0", "CT1", "CT2", "CT3", "CT4")

# Output file names
CT_FILE = "ct.nii.gz"
LESIONS_FILE = "lesions.nii.gz"
LUNGS_FILE = "lungs.nii.gz"
LOBES_FILE = "lobes.nii.gz"
SEVERITY_FILE = "severity.json"
