"""Built-in lobes on a real chest CT: per-lobe volume fractions against published adult fractions, and a picture.

  python benchmarks/lobes_real_ct.py ../shared/data/real_ct/cip_chest64/ct-64.nrrd \
      -o Resources/Screenshots/lobes_cip_chest64.png

Lungs come from the product's lung mask (as in ``segment``); the picture shows a coronal and a sagittal
slice of each lung with the five lobes overlaid and named.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from covidlesionseg import io, labels
from covidlesionseg.lobe_builtin import PUBLISHED_FRACTIONS
from covidlesionseg.lobe_providers import BuiltinLobes
from covidlesionseg.lungs import segment_lungs

COLOURS = {labels.RUL: (0.95, 0.75, 0.1), labels.RML: (0.2, 0.8, 0.3), labels.RLL: (0.2, 0.5, 1.0),
           labels.LUL: (1.0, 0.35, 0.35), labels.LLL: (0.7, 0.4, 1.0)}


def _lps_slice(ct: io.Volume, array: np.ndarray, plane: str, where: int) -> tuple[np.ndarray, float]:
    """A coronal or sagittal slice shown with the patient's head up, right on the viewer's left (coronal) or
    anterior on the left (sagittal); returns the image and its aspect ratio."""
    si, si_sign = ct.patient_axis("SI")
    other_name = "AP" if plane == "coronal" else "LR"
    fixed, _ = ct.patient_axis(other_name)
    across_name = "LR" if plane == "coronal" else "AP"
    across, across_sign = ct.patient_axis(across_name)
    img = np.take(array, where, axis=fixed)
    rest = [a for a in range(3) if a != fixed]
    img = np.moveaxis(img, [rest.index(si), rest.index(across)], [0, 1])
    if si_sign > 0:
        img = img[::-1]
    if across_sign < 0:
        img = img[:, ::-1]
    sp = ct.spacing_zyx
    return img, sp[si] / sp[across]


def picture(ct: io.Volume, lobes: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 6), facecolor="black")
    ap, _ = ct.patient_axis("AP")
    lr, _ = ct.patient_axis("LR")
    right = np.argwhere(labels.lungs_from_lobes(lobes) == labels.RIGHT_LUNG)
    left = np.argwhere(labels.lungs_from_lobes(lobes) == labels.LEFT_LUNG)
    views = [("coronal", int(np.median(np.argwhere(lobes > 0)[:, ap])), "coronal"),
             ("sagittal", int(np.median(right[:, lr])), "sagittal, right lung"),
             ("sagittal", int(np.median(left[:, lr])), "sagittal, left lung")]
    for ax, (plane, where, name) in zip(axes, views):
        img, aspect = _lps_slice(ct, ct.array, plane, where)
        lab, _ = _lps_slice(ct, lobes, plane, where)
        ax.imshow(img, cmap="gray", vmin=-1100, vmax=200, aspect=aspect, interpolation="nearest")
        rgba = np.zeros(lab.shape + (4,))
        for lobe, colour in COLOURS.items():
            rgba[lab == lobe] = (*colour, 0.38)
        ax.imshow(rgba, aspect=aspect, interpolation="nearest")
        for lobe, lobe_name in labels.LOBE_NAMES.items():
            pos = np.argwhere(lab == lobe)
            if len(pos) > 15:
                y, x = np.median(pos, 0)
                ax.text(x, y, lobe_name, color="white", fontsize=12, ha="center", va="center", weight="bold")
        ax.set_title(name + (" (patient right on the left)" if plane == "coronal" else " (anterior on the left)"),
                     color="white", fontsize=10)
        ax.axis("off")
    fig.suptitle(title, color="white")
    fig.tight_layout()
    fig.savefig(path, dpi=90, facecolor="black")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    ct = io.read_ct(args.ct)
    lungs = segment_lungs(ct)
    t0 = time.perf_counter()
    lobes = BuiltinLobes().lobes(ct, lungs)
    seconds = time.perf_counter() - t0
    in_lung = lobes[lungs > 0]
    fractions = {labels.LOBE_NAMES[lobe]: round(100.0 * float(np.mean(in_lung == lobe)), 1)
                 for lobe in labels.LOBE_NAMES}
    volumes = {labels.LOBE_NAMES[lobe]: round(float(np.count_nonzero(in_lung == lobe)) * ct.voxel_ml, 1)
               for lobe in labels.LOBE_NAMES}
    published = {labels.LOBE_NAMES[lobe]: value for lobe, value in PUBLISHED_FRACTIONS.items()}
    print(json.dumps({"shape": list(ct.shape), "spacing": [round(s, 3) for s in ct.spacing],
                      "seconds": round(seconds, 2), "volume_ml": volumes, "percent": fractions,
                      "published_percent": published}, indent=1))
    picture(ct, lobes, args.output, f"built-in lobes, {Path(args.ct).name}: "
            + ", ".join(f"{k} {v}%" for k, v in fractions.items()))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
