"""The whole job on one CT: lungs -> lesions -> lobes -> severity, and writing it atomically.

Used by the command line, the demo, ``evaluate`` and (through a subprocess) the Slicer module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidlesionseg import SOFTWARE_NAME, __version__, io, labels
from covidlesionseg.engines.base import LesionEngine
from covidlesionseg.lobe_providers import resolve_lobe_source
from covidlesionseg.lobes import complete_lobes
from covidlesionseg.lung_split import include_lesions, split_right_left
from covidlesionseg.lungs import segment_lungs
from covidlesionseg.progress import CancelCheck, ProgressCallback, RunControl
from covidlesionseg.severity import SeverityConfig, compute_severity, split_opacity


@dataclass
class SegmentationResult:
    """Everything one run produced, on the CT's grid."""

    ct: io.Volume
    lesions: np.ndarray  # uint8 0/1/2 (split derived from HU)
    lungs: np.ndarray  # uint8 0/1/2
    lobes: np.ndarray | None  # uint8 0..5 or None without a lobe source
    severity: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def severity_document(
    core: dict[str, Any], engine: dict[str, Any] | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Full severity.json: software and engine/model first, then the scores (contracts.md order)."""
    engine = engine or {"id": "none", "sha256": None}
    doc: dict[str, Any] = {
        "software": {"name": SOFTWARE_NAME, "version": __version__},
        "engine": engine.get("id"),
        "model": {"id": engine.get("id"), "sha256": engine.get("sha256")},
    }
    doc.update(core)
    if extra:
        doc.update(extra)
    return doc


def _stage(control: RunControl, start: float, end: float, name: str) -> RunControl:
    """Announce a stage and give it its slice [start, end] of the overall progress."""
    control.report(start, name)
    return control.part(start, end, name)


def finish_labels(
    ct: io.Volume,
    lesion_mask: np.ndarray,
    lungs: np.ndarray,
    lobes_spec: str | os.PathLike | np.ndarray = "auto",
    *,
    lobe_source: str | None = None,
    lobe_convention: str | None = None,
    config: SeverityConfig = SeverityConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """From a lesion mask and lungs: extend lungs, resolve and complete lobes, split opacity, score.

    ``lobes_spec`` is "auto" | "builtin" | "totalsegmentator" | "lungmask" | "none" | a file path, or a lobe
    array already in our convention (then ``lobe_source`` names where it came from, e.g. "truth").
    Returns (lesion labels 0/1/2, lungs, lobes or None, severity core dict).
    """
    lesion_mask = np.asarray(lesion_mask) > 0
    lungs, added_ml = include_lesions(lungs, lesion_mask, ct)
    if isinstance(lobes_spec, np.ndarray):  # already in our convention; the lungs may have grown
        source = lobe_source or "truth"
        lobes = complete_lobes(lobes_spec.astype(np.uint8), lungs, ct, source=f"{source} lobes")
    else:  # providers return completed lobes
        lobes, source = resolve_lobe_source(str(lobes_spec), ct, lungs, convention=lobe_convention)
    lesion_labels = split_opacity(lesion_mask, ct.array, config)
    core = compute_severity(ct, lesion_labels, lungs, lobes, config=config, lobe_source=source)
    core["lesions_outside_lungs_ml"] = round(float(added_ml), 3)
    return lesion_labels, lungs, lobes, core


def run_segmentation(
    ct: io.Volume,
    engine: LesionEngine,
    *,
    lobes: str | os.PathLike | np.ndarray = "auto",
    lobe_source: str | None = None,
    lobe_convention: str | None = None,
    lungs: np.ndarray | None = None,
    config: SeverityConfig = SeverityConfig(),
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> SegmentationResult:
    """Segment lungs (unless given) and lesions, resolve lobes and compute every score."""
    import time

    control = RunControl(progress, cancel)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if lungs is None and engine.provides_lungs:  # one pass: lungs and lesions from the same network
        joint = _stage(control, 0.0, 0.9, "lungs and lesions")
        lung_mask, lesion_mask = engine.segment_with_lungs(ct, *joint.callbacks())
        lungs = split_right_left(lung_mask, ct)
        timings["lungs_s"] = 0.0
        timings["lesions_s"] = time.perf_counter() - t0
    else:
        if lungs is None:
            lungs = segment_lungs(ct, _stage(control, 0.0, 0.2, "lungs"))
        timings["lungs_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        lesion_mask = engine.segment(ct, lungs, *_stage(control, 0.2, 0.9, "lesions").callbacks())
        timings["lesions_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    _stage(control, 0.9, 1.0, "lobes and scores").check()
    lesion_labels, lungs, lobe_map, core = finish_labels(
        ct, lesion_mask, lungs, lobes, lobe_source=lobe_source, lobe_convention=lobe_convention, config=config
    )
    timings["scores_s"] = time.perf_counter() - t2
    control.report(1.0, "done")
    doc = severity_document(core, engine.describe())
    return SegmentationResult(ct, lesion_labels, lungs, lobe_map, doc, timings)


def write_result(result: SegmentationResult, outdir: str | os.PathLike) -> Path:
    """Write lesions, lungs, lobes (when present) and severity.json into ``outdir`` atomically."""
    out = Path(outdir)
    with io.staged_output(out) as stage:
        io.write_label(stage / labels.LESIONS_FILE, result.ct, result.lesions)
        io.write_label(stage / labels.LUNGS_FILE, result.ct, result.lungs)
        if result.lobes is not None:
            io.write_label(stage / labels.LOBES_FILE, result.ct, result.lobes)
        io.write_json(stage / labels.SEVERITY_FILE, result.severity)
    if result.lobes is None:
        stale = out / labels.LOBES_FILE  # a lobe map from an earlier run would contradict severity.json
        if stale.exists():
            stale.unlink()
    return out


def score_files(
    ct_path: str | os.PathLike,
    lesions_path: str | os.PathLike,
    *,
    lungs_path: str | os.PathLike | None = None,
    lobes: str | os.PathLike = "auto",
    lobe_convention: str | None = None,
    config: SeverityConfig = SeverityConfig(),
) -> dict[str, Any]:
    """Recompute severity from (corrected) label maps; lungs computed when not given."""
    ct = io.read_ct(ct_path)
    lesion_map = io.read_label(lesions_path, ct).array
    if lesion_map.min() < 0:
        raise io.InputError(f"{Path(lesions_path).name}: negative label values")
    lungs = io.read_label(lungs_path, ct).array.astype(np.uint8) if lungs_path else segment_lungs(ct)
    if lungs_path and not set(np.unique(lungs).tolist()) <= {0, labels.RIGHT_LUNG, labels.LEFT_LUNG}:
        raise io.InputError(f"{Path(lungs_path).name}: lung map must hold 0, 1 (right) and 2 (left) only")
    _, _, _, core = finish_labels(ct, lesion_map > 0, lungs, lobes, lobe_convention=lobe_convention, config=config)
    return severity_document(core, {"id": "labels", "sha256": None})
