"""``evaluate``: segment every image of a folder and compare with its label map (Dice, NSD, fp/fn mL)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidlesionseg import io
from covidlesionseg.progress import ProgressCallback

_SUFFIX = re.compile(r"\.(nii\.gz|nii|nrrd|nhdr|mha|mhd)$", re.IGNORECASE)


def case_id(name: str, *, image: bool) -> str:
    """Case id of a file name: ``X_0000.nii.gz`` (image) -> X, ``X_label.nii.gz`` (label) -> X, ``X.nii.gz`` -> X."""
    stem = _SUFFIX.sub("", name)
    suffix = "_0000" if image else "_label"
    return stem[: -len(suffix)] if stem.endswith(suffix) else stem


def _volume_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise io.InputError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and _SUFFIX.search(p.name))


def match_cases(
    images: str | os.PathLike, labels: str | os.PathLike
) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(case id, image, label) for every image that has a label, and one line per image that has none.

    Duplicate ids are refused (which file is meant cannot be told); an unmatched image is reported, not fatal.
    """
    image_files = _volume_files(Path(images))
    if not image_files:
        raise io.InputError(f"no images (.nii.gz, .nii, .nrrd, .mha) in {images}")
    label_by_id: dict[str, Path] = {}
    for p in _volume_files(Path(labels)):
        cid = case_id(p.name, image=False)
        if cid in label_by_id:
            raise io.InputError(f"two label files for case {cid}: {label_by_id[cid].name}, {p.name}")
        label_by_id[cid] = p
    pairs, unmatched, seen = [], [], set()
    for p in image_files:
        cid = case_id(p.name, image=True)
        if cid in seen:
            raise io.InputError(f"two images for case {cid}")
        seen.add(cid)
        if cid not in label_by_id:
            unmatched.append(f"{cid}: no label file for {p.name} in {labels}")
            continue
        pairs.append((cid, p, label_by_id[cid]))
    return pairs, unmatched


def pair_cases(images: str | os.PathLike, labels: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(case id, image, label) for every image; refuses an image without a label (training needs all)."""
    pairs, unmatched = match_cases(images, labels)
    if unmatched:
        raise io.InputError(unmatched[0])
    return pairs


def evaluate_folders(
    images: str | os.PathLike,
    labels: str | os.PathLike,
    *,
    engine_id: str | None = None,
    device: str = "auto",
    nsd_mm: float = 2.0,
    label_values: Sequence[int] | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Segment each image, compare lesions with truth; lesion = label > 0 unless ``label_values`` lists them.

    Images without a label and cases whose files are refused (``InputError``) are listed under ``"errors"``
    and the run goes on; the means are over the cases scored (null when none was).
    """
    from covidlesionseg.engines.factory import make_engine
    from covidlesionseg.metrics import case_metrics
    from covidlesionseg.pipeline import run_segmentation

    pairs, errors = match_cases(images, labels)
    engine = make_engine(engine_id, device=device)
    cases = []
    for n, (cid, image_path, label_path) in enumerate(pairs):
        def case_progress(fraction: float, message: str, n: int = n, cid: str = cid) -> None:
            if progress is not None:
                progress((n + fraction) / len(pairs), f"{cid} {message}")

        try:
            ct = io.read_ct(image_path)
            truth_map = io.read_label(label_path, ct).array
            result = run_segmentation(ct, engine, lobes="none", progress=case_progress)
        except io.InputError as exc:
            errors.append(f"{cid}: {exc}")
            continue
        truth = np.isin(truth_map, list(label_values)) if label_values else truth_map > 0
        metrics = case_metrics(result.lesions > 0, truth, ct, nsd_mm=nsd_mm)
        cases.append({"id": cid, **{k: float(metrics[k]) for k in ("dice", "nsd", "fp_ml", "fn_ml")}})
    return {
        "engine": engine.describe(),
        "nsd_mm": nsd_mm,
        "cases": cases,
        "mean_dice": float(np.mean([c["dice"] for c in cases])) if cases else None,
        "mean_nsd": float(np.mean([c["nsd"] for c in cases])) if cases else None,
        "errors": errors,
    }
