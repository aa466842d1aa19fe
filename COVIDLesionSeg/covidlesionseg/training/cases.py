"""Training cases on the model's grid: generated CT, real normal CT with painted lesions, and users' datasets.

A case is a CT resampled to the training spacing (linear, in the CT's own direction, as ``inference`` does
at run time) and a class map on the same grid: 0 background, 1 lung, 2 lesion (255 = ignore).  The
network learns lungs and lesions together, so diseased lung that a density-based lung mask drops is still
lung.  Right and left are never learnt: they come from the direction cosines (``lungs.split_right_left``),
so flips are safe augmentations.  Cases are cached as compressed ``.npz`` files (int16 HU, uint8 classes),
written atomically, so an interrupted preparation resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from covidlesionseg.inference import AIR_HU, BODY_HU, resample_image, resampled_grid
from covidlesionseg.io import InputError, Volume, read_ct, read_label
from covidlesionseg.masks import bounding_box
from covidlesionseg.training.synthesis import paint_lesions, scanner_effects

BACKGROUND, LUNG, LESION, IGNORE = 0, 1, 2, 255
CLASS_NAMES = ("background", "lung", "lesion")
TRAIN_SPACING = (1.5, 1.5, 2.0)  # mm, index order (i, j, k)
HU_WINDOW = (-1024.0, 600.0)
BODY_MARGIN_VOXELS = 6
SEVERITIES = ("CT0", "CT1", "CT2", "CT3", "CT4")
SEVERITY_WEIGHTS = (0.12, 0.28, 0.28, 0.2, 0.12)
SCANNER_SLICES_MM = (0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
# Real normal chests in ../shared/data used for painted lesions.  cip_chest64 is held out for evaluation.
NEGATIVE_EVERY = 4
"""Every this-many-th real variant (0, 4, 8, ...) gets no painted lesions."""
REAL_NORMAL = ("real_ct/pyradiomics_lung1/lung1_image.nrrd", "real_ct/abdomen_lung_bases/example_ct.nii.gz")


@dataclass
class Case:
    """One training case on the training grid (numpy order k, j, i)."""

    case_id: str
    image: np.ndarray  # int16 HU
    classes: np.ndarray  # uint8 0/1/2/255
    meta: dict = field(default_factory=dict)


def class_map(lesion: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """0 background, 1 lung, 2 lesion (a lesion is lung too; the lesion class wins)."""
    out = np.where(np.asarray(lungs) > 0, LUNG, BACKGROUND).astype(np.uint8)
    out[np.asarray(lesion) > 0] = LESION
    return out


def to_training_grid(ct: Volume, classes: np.ndarray,
                     spacing: Sequence[float] = TRAIN_SPACING) -> tuple[np.ndarray, np.ndarray]:
    """Resample a CT (linear) and its class map (nearest) to ``spacing`` over the same extent, cropped to the
    body's box (the air around a patient teaches nothing)."""
    size, origin = resampled_grid(ct, spacing)

    def resample(image: sitk.Image, interpolator: int, default: float, pixel: int) -> np.ndarray:
        return sitk.GetArrayFromImage(resample_image(image, size, spacing, origin, ct.direction, interpolator,
                                                     default, pixel))

    hu = resample(ct.to_sitk(ct.array.astype(np.float32, copy=False)), sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    cls = resample(ct.to_sitk(np.asarray(classes, np.uint8)), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    box = bounding_box((hu > BODY_HU) | (cls > 0), BODY_MARGIN_VOXELS) or tuple(slice(0, n) for n in hu.shape)
    return np.clip(np.rint(hu[box]), -1024, 3071).astype(np.int16), cls[box].astype(np.uint8)


def generated_case(seed: int, rng: np.random.Generator) -> Case:
    """A generated chest at a random scanner grid; half of the time its lesions are replaced by painted ones."""
    from covidlesionseg.phantom import generate_phantom

    severity = str(rng.choice(SEVERITIES, p=SEVERITY_WEIGHTS))
    inplane = float(rng.uniform(0.9, 1.4))
    slice_mm = float(rng.choice(SCANNER_SLICES_MM))
    noise = float(rng.choice([rng.uniform(8, 20), rng.uniform(20, 45), rng.uniform(45, 90)], p=[0.4, 0.4, 0.2]))
    painted = severity != "CT0" and rng.uniform() < 0.5
    phantom = generate_phantom(seed, "CT0" if painted else severity, spacing=(inplane, inplane, slice_mm),
                               noise_hu=noise)
    ct, lungs, lesion = phantom.ct, phantom.lungs > 0, phantom.lesions > 0
    patterns: list[str] = []
    if painted:
        burden = {"CT1": 0.08, "CT2": 0.3, "CT3": 0.55, "CT4": 0.75}[severity] * float(rng.uniform(0.6, 1.2))
        out = paint_lesions(ct, lungs, rng, burden=burden)
        ct, lungs, lesion, patterns = ct.like(out.hu), out.lungs, out.lesion, out.patterns
    hu = scanner_effects(ct, ct.array, rng)
    image, classes = to_training_grid(ct.like(hu), class_map(lesion, lungs))
    meta = {"source": "generated", "seed": int(seed), "severity": severity, "painted": bool(painted),
            "scanner_spacing": [inplane, inplane, slice_mm], "noise_hu": round(noise, 1), "patterns": patterns}
    return Case(f"gen{seed:05d}", image, classes, meta)


def real_painted_case(path: Path, lungs: np.ndarray, ct: Volume, index: int, rng: np.random.Generator) -> Case:
    """A real normal chest with painted lesions (every fourth variant is left normal: a pure negative example
    that teaches what real normal lungs look like: dependent density, hilar vessels, bronchial walls)."""
    negative = index % NEGATIVE_EVERY == 0
    burden = 0.0 if negative else float(rng.choice([rng.uniform(0.01, 0.1), rng.uniform(0.1, 0.4),
                                                       rng.uniform(0.4, 0.8)], p=[0.4, 0.4, 0.2]))
    out = paint_lesions(ct, lungs > 0, rng, burden=burden, lookalikes=0.0 if negative else 0.6)
    hu = out.hu if index == 0 else scanner_effects(ct, out.hu, rng)
    image, classes = to_training_grid(ct.like(hu), class_map(out.lesion, out.lungs))
    meta = {"source": "real", "file": path.name, "variant": index, "burden": round(burden, 3),
            "patterns": out.patterns}
    return Case(f"real_{path.name.split('.')[0]}_{index:02d}", image, classes, meta)


def labelled_case(image_path: Path, label_path: Path, lut: dict[int, int], case_id: str, *,
                  lung_labelled: bool = True) -> Case:
    """A user's labelled case: the label values mapped to classes by ``lut`` (value -> 0/1/2/255).

    A source that marks lesions only (``lung_labelled`` False: its 0 is lung and background in one) gets its
    lung class from the density lung mask (``lungs.segment_lungs``) joined with its lesions, so that the
    network is not taught that unlabelled lung is background."""
    ct = read_ct(image_path)
    raw = read_label(label_path, ct, resample=True).array
    table = np.full(int(max(int(raw.max()), max(lut))) + 1, IGNORE, np.uint8)
    for value, cls in lut.items():
        table[int(value)] = cls
    if raw.min() < 0:
        raise InputError(f"{label_path.name}: negative label values")
    unknown = sorted(set(np.unique(raw).tolist()) - set(lut))
    if unknown:
        raise InputError(f"{label_path.name}: label values {unknown} are not in the label map {sorted(lut)}")
    classes = table[raw]
    if not lung_labelled:
        from covidlesionseg.lungs import segment_lungs

        lungs = segment_lungs(ct) > 0
        classes = np.where((classes == BACKGROUND) & lungs, LUNG, classes).astype(np.uint8)
    image, classes = to_training_grid(ct, classes)
    return Case(case_id, image, classes, {"source": "dataset", "image": str(image_path), "label": str(label_path),
                                          "lung_labelled": bool(lung_labelled)})


# --- cache -------------------------------------------------------------------------------------------------
def save_case(folder: Path, case: Case) -> Path:
    """Write ``folder/<id>.npz`` atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{case.case_id}.npz"
    fd, tmp = tempfile.mkstemp(prefix=f".{case.case_id}.", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, image=case.image, classes=case.classes, meta=json.dumps(case.meta))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def load_case(path: Path) -> Case:
    with np.load(path, allow_pickle=False) as data:
        return Case(path.stem, data["image"], data["classes"], json.loads(str(data["meta"])))


def prepare_synthetic(folder: Path, n_generated: int, real_root: Path | None, n_real_variants: int, seed: int,
                      first_seed: int = 1000, progress: Callable[[str], None] | None = None) -> list[Path]:
    """Make (or find already made) the generated and real-painted cases; returns their cache paths."""
    say = progress or (lambda _m: None)
    paths: list[Path] = []
    for n in range(n_generated):
        s = first_seed + n
        target = folder / f"gen{s:05d}.npz"
        if not target.exists():
            say(f"preparing generated case {n + 1}/{n_generated} (seed {s})")
            save_case(folder, generated_case(s, np.random.default_rng([seed, s])))
        paths.append(target)
    if real_root is not None:
        from covidlesionseg.lungs import segment_lungs

        for rel in REAL_NORMAL:
            path = real_root / rel
            if not path.is_file():
                continue
            stem = path.name.split(".")[0]
            todo = [i for i in range(n_real_variants) if not (folder / f"real_{stem}_{i:02d}.npz").exists()]
            if todo:
                ct = read_ct(path)
                lungs = segment_lungs(ct)
                for i in todo:
                    say(f"preparing real case {stem} variant {i}")
                    save_case(folder, real_painted_case(path, lungs, ct, i, np.random.default_rng([seed, 77, i])))
            paths.extend(folder / f"real_{stem}_{i:02d}.npz" for i in range(n_real_variants))
    return paths


def lesion_ct_labels(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lesion mask, lung mask) of a class map, for metrics; lungs include lesions."""
    return classes == LESION, (classes == LUNG) | (classes == LESION)
