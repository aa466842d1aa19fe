"""Label values, names and conventions: the one place for each of these facts (docs/contracts.md)."""

from __future__ import annotations

# lesions.nii.gz
BACKGROUND = 0
LESION_LOW = 1  # lesion voxel with HU < high-opacity threshold ("opacity < -200 HU")
LESION_HIGH = 2  # lesion voxel with HU >= threshold ("high opacity >= -200 HU", Chaganti et al.)
HIGH_OPACITY_HU = -200.0

# lungs.nii.gz
RIGHT_LUNG = 1
LEFT_LUNG = 2
LUNG_NAMES = {RIGHT_LUNG: "right", LEFT_LUNG: "left"}

# lobes.nii.gz
RUL, RML, RLL, LUL, LLL = 1, 2, 3, 4, 5
LOBE_NAMES = {RUL: "RUL", RML: "RML", RLL: "RLL", LUL: "LUL", LLL: "LLL"}
LOBE_LABELS = {name: value for value, name in LOBE_NAMES.items()}
LOBE_LUNG = {RUL: RIGHT_LUNG, RML: RIGHT_LUNG, RLL: RIGHT_LUNG, LUL: LEFT_LUNG, LLL: LEFT_LUNG}
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
