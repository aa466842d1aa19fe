"""Benchmarks that print figures (``covidlesionseg bench pipeline|live``); tests never time anything."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from covidlesionseg import labels

FULL_SHAPE = (300, 512, 512)


def bench_pipeline(shape: tuple[int, int, int] | None = None, engine_id: str | None = "classical",
                   seed: int = 11) -> dict[str, Any]:
    """``segment`` on a generated CT (default 512x512x300) in a child process: seconds, peak RSS, stages."""
    from covidlesionseg.phantom import generate_phantom, save_phantom

    shape = shape or FULL_SHAPE
    with tempfile.TemporaryDirectory(prefix="covidlesionseg-bench-") as tmp:
        phantom = generate_phantom(seed, "CT2", shape=shape)
        save_phantom(phantom, Path(tmp) / "case")
        del phantom
        timings = Path(tmp) / "timings.json"
        cmd = [sys.executable, "-m", "covidlesionseg", "segment", str(Path(tmp) / "case" / labels.CT_FILE),
               "-o", str(Path(tmp) / "out"), "--quiet", "--timings", str(timings)]
        if engine_id:
            cmd += ["--engine", engine_id]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - start
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        stages = json.loads(timings.read_text())
    return {
        "shape": list(shape),
        "engine": engine_id,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(max(peak_kb, before) / 1024, 1),
        "stages": {k: round(v, 2) for k, v in stages.items()},
        "note": "seconds include reading the CT and writing outputs; peak RSS of the segment process",
    }


def score_mismatches(full: Any, incremental: Any, path: str = "", tol: float = 1e-6) -> list[str]:
    """Every score of two severity documents that differs (numbers beyond ``tol``, anything else unequal),
    as ``key: full vs incremental``; the software/timing fields that may differ between passes are skipped."""
    if isinstance(full, dict) and isinstance(incremental, dict):
        out = []
        for key in sorted(set(full) | set(incremental)):
            if key in ("software", "timings"):
                continue
            if key not in full or key not in incremental:
                out.append(f"{path}{key}: only in {'full' if key in full else 'incremental'}")
                continue
            out += score_mismatches(full[key], incremental[key], f"{path}{key}.", tol)
        return out
    number = (int, float)
    if isinstance(full, number) and isinstance(incremental, number) and not isinstance(full, bool):
        same = abs(float(full) - float(incremental)) <= tol * max(1.0, abs(float(full)))
    else:
        same = full == incremental
    return [] if same else [f"{path.rstrip('.')}: {full!r} vs {incremental!r}"]


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.ceil(radius_vox).astype(int)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    return (zz / radius_vox[0]) ** 2 + (yy / radius_vox[1]) ** 2 + (xx / radius_vox[2]) ** 2 <= 1.0


def bench_live(shape: tuple[int, int, int] | None = None, engine_id: str | None = None, seed: int = 5,
               strokes: int = 60, stroke_radius_mm: float = 5.0, module: bool = True) -> dict[str, Any]:
    """Edit-to-numbers latency of the Slicer module's live path, next to one full pass, and one-click grow.

    With slicer-core installed (and ``module``) the figures come from the module's own path on real MRML
    (``COVIDLesionSegLib.benchlive`` in a child process: editor-logic strokes, segmentation observers, the
    coalescing scheduler, changed slabs, ``SeverityCounter``, table); ``counter_only`` is the bare counter
    update of the same kind of stroke.  Without slicer-core only the counter figures are reported.
    """
    counter_only = _bench_counter(shape, seed, strokes, stroke_radius_mm)
    if not module or importlib.util.find_spec("slicer") is None:
        return {**counter_only, "path": "SeverityCounter only (slicer-core not installed)"}
    shape = shape or FULL_SHAPE
    module_dir = Path(__file__).resolve().parents[1]  # COVIDLesionSeg/, which holds COVIDLesionSegLib
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(module_dir), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "COVIDLesionSegLib.benchlive", "--shape", *map(str, shape), "--seed", str(seed),
           "--strokes", str(strokes), "--clicks", "20", "--radius-mm", str(stroke_radius_mm)]
    run = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    return {**figures, "counter_only": {k: counter_only[k] for k in ("median_ms", "full_pass_ms", "stroke_voxels")}}


def _bench_counter(shape: tuple[int, int, int] | None, seed: int, strokes: int,
                   stroke_radius_mm: float) -> dict[str, Any]:
    """Time from one brush-stroke edit to updated scores (incremental counts) vs one full numpy pass."""
    from covidlesionseg.phantom import generate_phantom
    from covidlesionseg.severity import SeverityCounter, compute_severity

    shape = shape or FULL_SHAPE
    phantom = generate_phantom(seed, "CT2", shape=shape)
    ct, lungs, lobes = phantom.ct, phantom.lungs, phantom.lobes
    lesions = phantom.lesions.copy()
    counter = SeverityCounter(ct, lesions, lungs, lobes, lobe_source="truth")
    ball = _ball(stroke_radius_mm / np.asarray(ct.spacing_zyx))
    rng = np.random.default_rng(seed)
    lung_idx = np.flatnonzero(lungs)
    times = []
    for n in range(strokes):
        centre = np.array(np.unravel_index(rng.choice(lung_idx), shape))
        lo = np.maximum(centre - np.array(ball.shape) // 2, 0)
        hi = np.minimum(lo + np.array(ball.shape), shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        # The brush paints inside the lungs (Slicer's editable area "inside lungs"), so the lung mask stays fixed.
        stamp = ball[tuple(slice(0, b - a) for a, b in zip(lo, hi))] & (lungs[box] > 0)
        t0 = time.perf_counter()
        old = lesions[box] > 0
        new = old | stamp if n % 2 == 0 else old & ~stamp  # paint, then erase
        counter.update(box, old, new)
        result = counter.severity()
        times.append((time.perf_counter() - t0) * 1000)
        lesions[box] = np.where(new, np.where(lesions[box] > 0, lesions[box], labels.LESION_LOW), 0)
    t0 = time.perf_counter()
    full = compute_severity(ct, lesions, lungs, lobes, lobe_source="truth")
    full_ms = (time.perf_counter() - t0) * 1000
    mismatches = score_mismatches(full, result)
    if mismatches:  # a real check (an assert vanishes under python -O), over every score, not PO alone
        raise RuntimeError(f"incremental and full scores disagree: {'; '.join(mismatches[:5])}")
    return {
        "shape": list(shape),
        "lesion_percent": round(full["PO"], 2),
        "stroke_voxels": int(ball.sum()),
        "median_ms": round(statistics.median(times), 3),
        "full_pass_ms": round(full_ms, 1),
        "strokes": strokes,
    }
