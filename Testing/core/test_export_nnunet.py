"""nnU-Net v2's own dataset integrity check on an export folder.

nnU-Net is not a dependency of this project: the check runs in a separate Python environment that has
nnunetv2 installed, named by ``NNUNET_PYTHON`` (e.g. a venv made with ``pip install nnunetv2``); without
it the test is skipped with that reason.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from covidlesionseg.export import export_case
from covidlesionseg.phantom import generate_phantom

CHECK = """
import sys
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
verify_dataset_integrity(sys.argv[1], num_processes=1)
print("INTEGRITY OK")
"""


def test_export_passes_nnunet_verify_dataset_integrity(tmp_path):
    python = os.environ.get("NNUNET_PYTHON")
    if not python or not Path(python).is_file():
        pytest.skip("NNUNET_PYTHON (a Python with nnunetv2 installed) is not set")
    root = tmp_path / "Dataset501_COVIDLesionSeg"
    for seed in (3, 5):
        p = generate_phantom(seed, "CT2", shape=(24, 48, 48))
        final = (p.lesions > 0).astype(np.uint8)
        final[:, :, :16] = 0
        export_case(root, p.ct, p.lesions, final, lungs=p.lungs, lobes=p.lobes)
        export_case(root, p.ct, p.lesions, p.lesions, lungs=p.lungs, lobes=p.lobes)  # a second version
    run = subprocess.run([python, "-c", CHECK, str(root)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "INTEGRITY OK" in run.stdout
    # The same check refuses a label value dataset.json does not declare (so it can fail).
    label = next((root / "labelsTr").glob("*.nii.gz"))
    image = sitk.ReadImage(str(label))
    broken = sitk.GetArrayFromImage(image)
    broken[0, 0, 0] = 7
    out = sitk.GetImageFromArray(broken)
    out.CopyInformation(image)
    label.unlink()
    sitk.WriteImage(out, str(label))
    run = subprocess.run([python, "-c", CHECK, str(root)], capture_output=True, text=True)
    assert run.returncode != 0 and "INTEGRITY OK" not in run.stdout
