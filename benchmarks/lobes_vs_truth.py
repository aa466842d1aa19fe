"""Built-in lobes against the exact lobes of generated CT: Dice per lobe and per-lobe LSS / CTSS agreement.

  python benchmarks/lobes_vs_truth.py --seeds 1-12 --slices 0.625,1.25,2.5,5 --inplane 1.2 -o lobes.json

Each case is a generated chest (seed), a slice thickness and a CT category (cycled CT0..CT4 over the cases);
the built-in provider runs on the truth lungs, so the figures measure the lobes alone.  Scores are computed
twice from the truth lesions, once with the truth lobes and once with the built-in lobes (contracts.md bins).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from covidlesionseg import labels
from covidlesionseg.lobe_builtin import builtin_lobes
from covidlesionseg.metrics import dice
from covidlesionseg.phantom import clear_caches, generate_phantom
from covidlesionseg.severity import compute_severity


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def run_case(seed: int, severity: str, slice_mm: float, inplane_mm: float) -> dict:
    phantom = generate_phantom(seed, severity, spacing=(inplane_mm, inplane_mm, slice_mm))
    t0 = time.perf_counter()
    lobes = builtin_lobes(phantom.ct, phantom.lungs)
    seconds = time.perf_counter() - t0
    truth = compute_severity(phantom.ct, phantom.lesions, phantom.lungs, phantom.lobes, lobe_source="truth")
    built = compute_severity(phantom.ct, phantom.lesions, phantom.lungs, lobes, lobe_source="builtin")
    per_lobe = {}
    for lobe, name in labels.LOBE_NAMES.items():
        per_lobe[name] = {
            "dice": round(dice(lobes == lobe, phantom.lobes == lobe), 4),
            "truth_fraction": round(float(np.mean(phantom.lobes[phantom.lungs > 0] == lobe)), 4),
            "lss": [truth["lobes"][name]["lss"], built["lobes"][name]["lss"]],
            "ctss": [truth["lobes"][name]["ctss"], built["lobes"][name]["ctss"]],
        }
    return {"seed": seed, "severity": severity, "slice_mm": slice_mm, "inplane_mm": inplane_mm,
            "shape": list(phantom.ct.shape), "seconds": round(seconds, 2), "lobes": per_lobe,
            "LSS": [truth["LSS"], built["LSS"]], "CTSS": [truth["CTSS"], built["CTSS"]]}


def summary(cases: list[dict]) -> dict:
    names = list(labels.LOBE_NAMES.values())
    dices = np.array([[c["lobes"][n]["dice"] for n in names] for c in cases])
    lss = np.array([[c["lobes"][n]["lss"][0] == c["lobes"][n]["lss"][1] for n in names] for c in cases])
    ctss = np.array([[c["lobes"][n]["ctss"][0] == c["lobes"][n]["ctss"][1] for n in names] for c in cases])
    by_slice = {}
    for s in sorted({c["slice_mm"] for c in cases}):
        rows = [i for i, c in enumerate(cases) if c["slice_mm"] == s]
        by_slice[str(s)] = {"mean_dice": round(float(dices[rows].mean()), 4),
                            "min_dice": round(float(dices[rows].min()), 4)}
    return {
        "cases": len(cases),
        "dice_mean_per_lobe": {n: round(float(dices[:, i].mean()), 4) for i, n in enumerate(names)},
        "dice_min_per_lobe": {n: round(float(dices[:, i].min()), 4) for i, n in enumerate(names)},
        "dice_mean": round(float(dices.mean()), 4), "dice_min": round(float(dices.min()), 4),
        "lss_lobe_agreement": round(float(lss.mean()), 4), "ctss_lobe_agreement": round(float(ctss.mean()), 4),
        "lss_total_agreement": round(float(np.mean([c["LSS"][0] == c["LSS"][1] for c in cases])), 4),
        "ctss_total_agreement": round(float(np.mean([c["CTSS"][0] == c["CTSS"][1] for c in cases])), 4),
        "by_slice_mm": by_slice,
        "seconds_mean": round(float(np.mean([c["seconds"] for c in cases])), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-10")
    parser.add_argument("--slices", default="0.625,1.25,2.5,5.0", help="slice thicknesses (mm)")
    parser.add_argument("--inplane", type=float, default=1.2, help="in-plane spacing (mm)")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    slices = [float(s) for s in args.slices.split(",")]
    cases = []
    n = 0
    for seed in _seeds(args.seeds):
        for slice_mm in slices:
            severity = labels.CT_CATEGORIES[n % len(labels.CT_CATEGORIES)]
            n += 1
            case = run_case(seed, severity, slice_mm, args.inplane)
            cases.append(case)
            print(f"seed {seed:3d} {severity} {slice_mm:5.3g} mm  Dice "
                  + " ".join(f"{k} {v['dice']:.3f}" for k, v in case["lobes"].items())
                  + f"  LSS {case['LSS'][0]}/{case['LSS'][1]} CTSS {case['CTSS'][0]}/{case['CTSS'][1]}"
                  + f"  {case['seconds']:.1f} s", flush=True)
        clear_caches()
    result = {"summary": summary(cases), "cases": cases}
    print(json.dumps(result["summary"], indent=1))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
