"""Real-CT figures for the classical lung mask (covidlesionseg.lungs): Dice, sides, volumes, runtimes.

Run: /work/venv/bin/python benchmarks/lung_mask_real.py [--big]
Reads ../shared/data/real_ct (or $COVIDLESIONSEG_SHARED_DATA/real_ct); never copies it.  ``--big`` also
times a 512 x 512 x 300 volume made by resampling the CIP chest CT to 0.7 mm in-plane.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from covidlesionseg import labels
from covidlesionseg.io import Volume, read_ct, read_label
from covidlesionseg.lungs import segment_lungs
from covidlesionseg.metrics import dice

# TotalSegmentator v2 lobe labels (docs/contracts.md): 10 LUL, 11 LLL, 12 RUL, 13 RML, 14 RLL.
TS_RIGHT, TS_LEFT = (12, 13, 14), (10, 11)
CIP_RIGHT, CIP_LEFT = (12, 13, 14), (9, 10, 11)  # CIP lung thirds (value % 256)


def data_root() -> Path:
    env = os.environ.get("COVIDLESIONSEG_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return root / "real_ct"


def truth_sides(values: np.ndarray, right: tuple[int, ...], left: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(values.shape, np.uint8)
    out[np.isin(values, right)] = labels.RIGHT_LUNG
    out[np.isin(values, left)] = labels.LEFT_LUNG
    return out


def timed(ct: Volume) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    lungs = segment_lungs(ct)
    return lungs, time.perf_counter() - start


def volumes(lungs: np.ndarray, ct: Volume) -> str:
    right = np.count_nonzero(lungs == labels.RIGHT_LUNG) * ct.voxel_ml
    left = np.count_nonzero(lungs == labels.LEFT_LUNG) * ct.voxel_ml
    return f"right {right:.1f} mL, left {left:.1f} mL"


def side_centres(lungs: np.ndarray, ct: Volume) -> str:
    """Mean LPS x (mm) of each side: the left lung must lie at larger x."""
    parts = []
    for value in (labels.RIGHT_LUNG, labels.LEFT_LUNG):
        idx = np.argwhere(lungs == value)
        parts.append(f"{labels.LUNG_NAMES[value]} x={ct.lps_points(idx)[:, 0].mean():.1f}" if idx.size else
                     f"{labels.LUNG_NAMES[value]} absent")
    return ", ".join(parts)


def compare(name: str, lungs: np.ndarray, truth: np.ndarray) -> None:
    print(f"  {name}: Dice lungs {dice(lungs > 0, truth > 0):.4f}, "
          f"right {dice(lungs == labels.RIGHT_LUNG, truth == labels.RIGHT_LUNG):.4f}, "
          f"left {dice(lungs == labels.LEFT_LUNG, truth == labels.LEFT_LUNG):.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="also time a 512x512x300 resampled CT")
    args = parser.parse_args()
    root = data_root()
    if not root.is_dir():
        print(f"real CT data not found at {root}")
        return 1

    print("cip_chest64 (identity direction, index i toward the patient's left)")
    ct = read_ct(root / "cip_chest64" / "ct-64.nrrd")
    lungs, seconds = timed(ct)
    truth = truth_sides(read_label(root / "cip_chest64" / "lm-64.nrrd", ct).array % 256, CIP_RIGHT, CIP_LEFT)
    compare("vs CIP lung thirds", lungs, truth)
    print(f"  ours {volumes(lungs, ct)}; truth {volumes(truth, ct)}; {side_centres(lungs, ct)}; {seconds:.2f} s")
    trachea = read_label(root / "cip_chest64" / "lm-64.nrrd", ct).array == 512
    print(f"  CIP trachea/main-bronchus voxels (512) inside our lungs: {np.count_nonzero(trachea & (lungs > 0))}"
          f" of {np.count_nonzero(trachea)}")
    dicom_ct = read_ct(root / "cip_chest64" / "dicom")
    dicom_lungs, seconds = timed(dicom_ct)
    print(f"  DICOM folder: identical mask {np.array_equal(dicom_lungs, lungs)}, "
          f"Dice vs NRRD mask {dice(dicom_lungs > 0, lungs > 0):.4f}; {seconds:.2f} s")

    print("abdomen_lung_bases (direction diag(-1,-1,1), index i toward the patient's right)")
    ct = read_ct(root / "abdomen_lung_bases" / "example_ct.nii.gz")
    lungs, seconds = timed(ct)
    print(f"  example_ct {ct.shape}: {volumes(lungs, ct)}; {side_centres(lungs, ct)}; {seconds:.2f} s")
    small = read_ct(root / "abdomen_lung_bases" / "example_ct_sm.nii.gz")
    small_lungs, seconds = timed(small)
    seg = read_label(root / "abdomen_lung_bases" / "example_seg.nii.gz", small).array
    truth = truth_sides(seg, TS_RIGHT, TS_LEFT)
    print(f"  example_ct_sm {small.shape}: {volumes(small_lungs, small)}; TotalSegmentator {volumes(truth, small)}; "
          f"{seconds:.2f} s")
    compare("vs TotalSegmentator lobes", small_lungs, truth)

    for rel in ("slices/lungmask/0.dcm", "slices/lungmask/1.dcm", "cip_lobes/crop_ct_2slices.nrrd"):
        ct = read_ct(root / rel)
        try:
            lungs, seconds = timed(ct)
        except Exception as exc:  # report, do not stop the other figures
            print(f"{rel} {ct.shape}: {type(exc).__name__}: {exc}")
            continue
        print(f"{rel} {ct.shape}: {volumes(lungs, ct)}; {side_centres(lungs, ct)}; {seconds:.2f} s")
        if rel.startswith("cip_lobes"):
            lobes = read_label(root / "cip_lobes" / "crop_ct_interactiveLobeSegmentation.nrrd")
            window = lobes.array[60:62] % 256
            compare("vs CIP lobe map slices 60-61", lungs, truth_sides(window, (4, 5, 6), (7, 8)))

    if args.big:
        big_benchmark(root)
    return 0


def big_benchmark(root: Path) -> None:
    image = sitk.ReadImage(str(root / "cip_chest64" / "ct-64.nrrd"), sitk.sitkFloat32)
    size, spacing = np.array(image.GetSize()), np.array(image.GetSpacing())
    new_size = [512, 512, 300]
    new_spacing = [float(size[n] * spacing[n] / new_size[n]) for n in range(3)]
    big = sitk.Resample(image, new_size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), new_spacing,
                        image.GetDirection(), -1000.0, sitk.sitkFloat32)
    ct = Volume.from_sitk(big)
    del big, image
    lungs, seconds = timed(ct)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"resampled CIP chest {ct.shape} at {np.round(ct.spacing, 3).tolist()} mm: {volumes(lungs, ct)}; "
          f"{seconds:.1f} s on {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f}); "
          f"peak RSS of this process {peak_mb:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
