"""Held-out generated CT: a model and the classical engine side by side (lesion Dice, NSD, FP/FN mL, lung Dice).

  python benchmarks/model_vs_classical.py --engines classical,MODEL_ID [--seeds 9100-9104] [--json OUT]

Seeds from 9100 on are never used in training (training draws 1000-8999, its validation 9000-9099).
Each seed is scanned at every CT category, alternately with thin (1.25 mm) and thick (5 mm) slices (the next
seed starts with the other), and one single axial slice through the most lesion is cut out of every thin
scan; the table prints means per severity stratum and per scan kind.  Lung Dice counts both lungs
(right + left, lesions inside).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from covidlesionseg.engines.factory import make_engine
from covidlesionseg.io import Volume
from covidlesionseg.metrics import case_metrics, dice
from covidlesionseg.phantom import generate_phantom
from covidlesionseg.pipeline import run_segmentation

SEVERITIES = ("CT0", "CT1", "CT2", "CT3", "CT4")
KINDS = {"thin": 1.25, "thick": 5.0}
"""Slice thickness (mm) of the scan kinds."""
FOV_MM = 410.0
"""In-plane field of view of every scan."""


def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def _single_slice(ct: Volume, lesion: np.ndarray, lungs: np.ndarray) -> tuple[Volume, np.ndarray, np.ndarray]:
    """The axial slice with the most lesion (the most lung when there is none), as a 1-slice CT."""
    axis, _ = ct.patient_axis("SI")
    other = tuple(a for a in range(3) if a != axis)
    score = lesion.sum(axis=other) if lesion.any() else lungs.sum(axis=other)
    k = int(np.argmax(score))
    index = [slice(None)] * 3
    index[axis] = slice(k, k + 1)
    index = tuple(index)
    origin = np.asarray(ct.origin, float) + ct.direction @ (np.array([s.start or 0 for s in index][::-1]) *
                                                            np.asarray(ct.spacing, float))
    sub = Volume(np.ascontiguousarray(ct.array[index]), tuple(ct.spacing), tuple(origin), ct.direction)
    return sub, lesion[index], lungs[index]


def _cases(seeds: list[int], shape: tuple[int, int]):
    kinds = list(KINDS)
    for n, seed in enumerate(seeds):
        for m, severity in enumerate(SEVERITIES):
            kind = kinds[(n + m) % 2]
            thickness = KINDS[kind]
            k = int(round(300.0 / thickness))
            ph = generate_phantom(seed, severity, shape=(k, shape[0], shape[1]),
                                  spacing=(FOV_MM / shape[1], FOV_MM / shape[0], thickness))
            lesion, lungs = ph.lesions > 0, ph.lungs > 0
            yield f"{seed}-{severity}-{kind}", severity, kind, ph.ct, lesion, lungs
            if kind == "thin":
                yield (f"{seed}-{severity}-slice", severity, "slice", *_single_slice(ph.ct, lesion, lungs))


def summarize(rows: list[dict], engines: list[str]) -> None:
    """Means per stratum; Dice and NSD over the cases that have lesions (on CT0, Dice is 0 for any false
    positive voxel and says nothing more: its row gives the false-positive mL)."""
    print(f"\n{'stratum':<10}{'cases':>6}" + "".join(f"{n:>46}" for n in engines))
    print(f"{'':<16}" + "".join(f"{'Dice':>8}{'NSD':>7}{'FP mL':>9}{'FN mL':>9}{'lung Dice':>13}" for _ in engines))
    strata = defaultdict(list)
    for row in rows:
        for key in (row["severity"], row["kind"], "all"):
            strata[key].append(row)
    for stratum in (*SEVERITIES, *KINDS, "slice", "all"):
        line = ""
        for name in engines:
            sel = [r for r in strata[stratum] if r["engine"] == name]
            if not sel:
                continue
            with_lesions = [r for r in sel if r["truth_lesion_ml"] > 0]
            scored = [f"{np.mean([r[k] for r in with_lesions]):{w}.3f}" if with_lesions else f"{'-':>{w}}"
                      for k, w in (("lesion_dice", 8), ("nsd", 7))]
            line += "".join(scored) + "".join(f"{np.mean([r[k] for r in sel]):{w}.{p}f}" for k, w, p in
                                             (("fp_ml", 9, 1), ("fn_ml", 9, 1), ("lung_dice", 13, 3)))
            count = len(sel)
        print(f"{stratum:<10}{count:>6}" + line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="classical", help="comma-separated engine ids")
    parser.add_argument("--seeds", default="9100-9102", help="held-out seeds, e.g. 9100-9104")
    parser.add_argument("--matrix", type=int, nargs=2, default=(256, 256), metavar=("J", "I"),
                        help="in-plane matrix (rows columns) over a 410 mm field of view; 300 mm of chest in z")
    parser.add_argument("--json", type=Path, help="write every case's figures here")
    parser.add_argument("--summarize", type=Path, help="print the table of a --json file written before; run nothing")
    args = parser.parse_args()
    if args.summarize:
        rows = json.loads(args.summarize.read_text())
        summarize(rows, list(dict.fromkeys(r["engine"] for r in rows)))
        return 0
    engines = {name: make_engine(name, "cpu") for name in args.engines.split(",")}
    rows = []
    for case, severity, kind, ct, lesion, lungs in _cases(_seeds(args.seeds), tuple(args.matrix)):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            result = run_segmentation(ct, engine, lobes="none")
            seconds = time.perf_counter() - t0
            pred = result.lesions > 0
            m = case_metrics(pred, lesion, ct)
            row = {"case": case, "severity": severity, "kind": kind, "engine": name, "seconds": round(seconds, 2),
                   "lesion_dice": m["dice"], "nsd": m["nsd"], "fp_ml": m["fp_ml"], "fn_ml": m["fn_ml"],
                   "lung_dice": dice(result.lungs > 0, lungs), "PO": result.severity.get("PO"),
                   "truth_lesion_ml": float(lesion.sum() * ct.voxel_ml)}
            rows.append(row)
            print(f"{case:<18} {name:<14} Dice {row['lesion_dice']:.3f} NSD {row['nsd']:.3f} FP {row['fp_ml']:7.1f} "
                  f"FN {row['fn_ml']:7.1f} mL lung Dice {row['lung_dice']:.3f} {seconds:5.1f} s", file=sys.stderr)
    summarize(rows, list(engines))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
