"""Time of the built-in lobes on a clinical-size CT: a generated 512 x 512 x 300 chest (0.68 x 0.68 x 1.25 mm).

  python benchmarks/lobes_time.py --repeats 2

Prints wall-clock and CPU seconds of each run (the provider as ``segment`` calls it: built-in lobes, then the
completion of the map) and the Dice of each lobe against the generated truth.
"""

from __future__ import annotations

import argparse
import json
import time

from covidlesionseg import labels
from covidlesionseg.lobe_providers import BuiltinLobes
from covidlesionseg.metrics import dice
from covidlesionseg.phantom import generate_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    phantom = generate_phantom(args.seed, "CT2", shape=(300, 512, 512))
    runs = []
    for _ in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        lobes = BuiltinLobes().lobes(phantom.ct, phantom.lungs)
        runs.append({"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)})
    print(json.dumps({"shape": list(phantom.ct.shape), "spacing": [round(s, 3) for s in phantom.ct.spacing],
                      "runs": runs, "dice": {name: round(dice(lobes == lobe, phantom.lobes == lobe), 3)
                                             for lobe, name in labels.LOBE_NAMES.items()}}, indent=1))


if __name__ == "__main__":
    main()
