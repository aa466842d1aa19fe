"""Compare a ``segment`` output folder with truth: lesion Dice/NSD, right/left lung Dice, scores side by side.

Run after ``covidlesionseg segment CT -o PRED``:
  python benchmarks/segment_vs_truth.py PRED --truth DIR          # DIR from ``covidlesionseg phantom``
  python benchmarks/segment_vs_truth.py PRED --ct CT --lungs FILE --sides cip|totalsegmentator
The second form compares lungs only (real CT without lesion truth), e.g. CIP's lm-64 lung thirds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from covidlesionseg import io, labels
from covidlesionseg.metrics import case_metrics, dice

# Right/left lung values of external lung maps: CIP lung thirds (value % 256) and TotalSegmentator v2 lobes.
SIDES = {
    "cip": {"modulo": 256, labels.RIGHT_LUNG: (12, 13, 14), labels.LEFT_LUNG: (9, 10, 11)},
    "totalsegmentator": {"modulo": None, labels.RIGHT_LUNG: (12, 13, 14), labels.LEFT_LUNG: (10, 11)},
}
SCORES = ("PO", "PHO", "LSS", "LHOS", "CTSS", "CTSS_category", "CT_category")


def sides_from(values: np.ndarray, convention: str) -> np.ndarray:
    spec = SIDES[convention]
    if spec["modulo"]:
        values = values % spec["modulo"]
    out = np.zeros(values.shape, np.uint8)
    for side in (labels.RIGHT_LUNG, labels.LEFT_LUNG):
        out[np.isin(values, spec[side])] = side
    return out


def lung_dice(pred: np.ndarray, truth: np.ndarray) -> str:
    return ", ".join(
        f"{name} lung Dice {dice(pred == value, truth == value):.4f}" for value, name in labels.LUNG_NAMES.items()
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred", type=Path, help="output folder of covidlesionseg segment")
    parser.add_argument("--truth", type=Path, help="folder written by covidlesionseg phantom")
    parser.add_argument("--ct", type=Path, help="CT (with --lungs)")
    parser.add_argument("--lungs", type=Path, help="external lung map (with --ct and --sides)")
    parser.add_argument("--sides", choices=sorted(SIDES), default="cip")
    args = parser.parse_args()
    pred_sev = json.loads((args.pred / labels.SEVERITY_FILE).read_text())
    if args.truth:
        ct = io.read_ct(args.truth / labels.CT_FILE)
        pred_lungs = io.read_label(args.pred / labels.LUNGS_FILE, ct).array
        truth_lungs = io.read_label(args.truth / labels.LUNGS_FILE, ct).array
        pred_lesions = io.read_label(args.pred / labels.LESIONS_FILE, ct).array > 0
        truth_lesions = io.read_label(args.truth / labels.LESIONS_FILE, ct).array > 0
        m = case_metrics(pred_lesions, truth_lesions, ct)
        print(f"lesions: Dice {m['dice']:.4f}, NSD@2mm {m['nsd']:.4f}, FP {m['fp_ml']:.1f} mL, FN {m['fn_ml']:.1f} mL")
        print(lung_dice(pred_lungs, truth_lungs))
        truth_sev = json.loads((args.truth / labels.SEVERITY_FILE).read_text())
        print(f"{'score':<14}{'prediction':>12}{'truth':>12}")
        for key in SCORES:
            p, t = pred_sev.get(key), truth_sev.get(key)
            fmt = (lambda v: f"{v:.2f}") if isinstance(p, float) else str
            print(f"{key:<14}{fmt(p):>12}{fmt(t) if t is not None else 'null':>12}")
    elif args.ct and args.lungs:
        ct = io.read_ct(args.ct)
        pred_lungs = io.read_label(args.pred / labels.LUNGS_FILE, ct).array
        truth_lungs = sides_from(io.read_label(args.lungs, ct).array, args.sides)
        print(lung_dice(pred_lungs, truth_lungs) + f", both lungs Dice {dice(pred_lungs > 0, truth_lungs > 0):.4f}")
        print(f"PO {pred_sev['PO']:.3f}%  lesion {pred_sev['lesion_ml']:.1f} mL of {pred_sev['lung_ml']:.1f} mL lung  "
              f"CT category {pred_sev['CT_category']}  engine {pred_sev['engine']}")
    else:
        parser.error("give --truth DIR, or --ct CT --lungs FILE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
