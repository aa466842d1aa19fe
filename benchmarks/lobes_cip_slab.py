"""Built-in lobes against the Chest Imaging Platform's lobe map, where its slab allows: per-lobe agreement.

  python benchmarks/lobes_cip_slab.py ../shared/data/real_ct/cip_lobes

The CIP lobe map (``crop_ct_interactiveLobeSegmentation.nrrd``) covers a 48 mm slab, and only two CT slices of
it exist (``crop_ct_2slices.nrrd``, slices 60 and 61 of the map).  The built-in provider runs on those two slices
with the lungs of the map's two slices (both lungs cut at the top and the bottom, so the anatomical prior with a
typical lung height decides); the figure is the share of lung voxels given the map's lobe, overall and per lobe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from covidlesionseg import io, labels
from covidlesionseg.lobe_builtin import builtin_lobes
from covidlesionseg.lobes import convert_lobe_map

FIRST_SLICE = 60  # crop_ct_2slices holds slices 60 and 61 of the lobe map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the cip_lobes folder of the shared data")
    args = parser.parse_args()
    lobe_map = io.read_label(args.folder / "crop_ct_interactiveLobeSegmentation.nrrd")
    ct = io.read_ct(args.folder / "crop_ct_2slices.nrrd")
    truth, _ = convert_lobe_map(lobe_map.array, "cip")
    truth = truth[FIRST_SLICE: FIRST_SLICE + ct.shape[0]]
    if not np.allclose(ct.lps_points([[0, 0, 0]])[0], lobe_map.lps_points([[FIRST_SLICE, 0, 0]])[0], atol=0.01):
        raise SystemExit(f"the two CT slices are not slices {FIRST_SLICE}.. of the lobe map")
    lungs = labels.lungs_from_lobes(truth)
    lobes = builtin_lobes(ct, lungs)
    in_lung = lungs > 0
    per_lobe = {}
    for lobe, name in labels.LOBE_NAMES.items():
        mine = truth == lobe
        per_lobe[name] = {"truth_voxels": int(np.count_nonzero(mine)),
                          "builtin_voxels": int(np.count_nonzero(lobes == lobe)),
                          "agree": round(float(np.mean(lobes[mine] == lobe)), 4) if mine.any() else None}
    print(json.dumps({"slices": [FIRST_SLICE, FIRST_SLICE + ct.shape[0] - 1],
                      "agreement": round(float(np.mean(lobes[in_lung] == truth[in_lung])), 4),
                      "lobes": per_lobe}, indent=1))


if __name__ == "__main__":
    main()
