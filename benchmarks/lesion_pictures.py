"""Pictures of the training data and the model on real CT: each painted pattern labelled, and a model's output
on the real normal chest in ../shared/data with lesions inserted (a draw never used in training).

  python benchmarks/lesion_pictures.py --out docs/images [--engine MODEL_ID] [--data ../shared/data]

Writes lesion_patterns.png (the eight COVID-19 patterns and four look-alikes, each painted alone into the real
chest, lung window, the label's outline in yellow; look-alikes carry no lesion label) and, with --engine,
model_on_real_inserted.png (three axial slices: truth outline yellow, the model's lesions red).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from covidlesionseg.engines.factory import make_engine  # noqa: E402
from covidlesionseg.io import read_ct  # noqa: E402
from covidlesionseg.lungs import segment_lungs  # noqa: E402
from covidlesionseg.masks import distance_to  # noqa: E402
from covidlesionseg.pipeline import run_segmentation  # noqa: E402
from covidlesionseg.training import synthesis  # noqa: E402

REAL = "real_ct/pyradiomics_lung1/lung1_image.nrrd"
WINDOW = (-1350, 150)  # lung window: level -600, width 1500


def _default_data() -> Path:
    return Path(os.environ.get("COVIDLESIONSEG_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def _axial(ax, hu2d: np.ndarray, outlines: list[tuple[np.ndarray, str]], title: str, aspect: float) -> None:
    ax.imshow(hu2d, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect)
    for mask, colour in outlines:
        if mask.any():
            ax.contour(mask, levels=[0.5], colors=colour, linewidths=0.9)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def pattern_gallery(ct, lungs: np.ndarray, out: Path) -> None:
    spacing = np.asarray(ct.spacing_zyx, float)
    depth = np.maximum(-distance_to(~lungs, spacing), 0.0)
    k = int(np.argmax(lungs.sum(axis=(1, 2))))  # the slice with the most lung
    jj, ii = np.nonzero(lungs[k])
    kinds = [*synthesis.PATTERNS, *synthesis.LOOKALIKES]
    fig, axes = plt.subplots(3, 4, figsize=(16, 12.5))
    for n, (kind, ax) in enumerate(zip(kinds, axes.ravel())):
        rng = np.random.default_rng(500 + n)
        hu = ct.array.astype(np.float32, copy=True)
        right = ii < np.median(ii)  # alternate the side of the chest
        sel = right if n % 2 == 0 else ~right
        posterior = jj[sel] > np.percentile(jj[sel], 55)
        pick = int(rng.integers(posterior.sum()))
        centre = np.array([k, jj[sel][posterior][pick], ii[sel][posterior][pick]])
        radius = 22.0
        half = np.ceil(1.6 * radius / spacing).astype(int) + 2
        region = tuple(slice(max(0, c - h), min(s, c + h + 1)) for c, h, s in zip(centre, half, lungs.shape))
        block = hu[region]
        if kind in synthesis.PATTERNS:
            label = synthesis._paint_one(kind, block, lungs[region], depth[region], spacing, rng, radius)
        else:
            dependent = np.broadcast_to(np.linspace(0, 1, block.shape[1])[None, :, None], block.shape).copy()
            label = np.zeros(block.shape, bool)
            if kind == "effusion":
                coords = synthesis._patient_coordinates(ct, lungs)
                from covidlesionseg.masks import bounding_box

                synthesis._effusion(ct, hu, lungs.copy(), coords, bounding_box(lungs), rng)
                block = hu[region]
            else:
                synthesis._paint_lookalike(kind, block, lungs[region], depth[region], spacing, rng, dependent)
        hu[region] = block
        full = np.zeros(lungs.shape, bool)
        full[region] = label
        zoom = tuple(slice(max(0, c - 3 * h // 2), c + 3 * h // 2) for c, h in zip(centre[1:], half[1:]))
        shown = hu[k][zoom]
        kind_title = kind.replace("_", " ") + ("" if kind in synthesis.PATTERNS else " (look-alike, not lesion)")
        _axial(ax, shown, [(full[k][zoom], "yellow")], kind_title, spacing[1] / spacing[2])
    fig.suptitle(f"Painted patterns in a real normal chest CT (pyradiomics lung1, slice {k}, lung window "
                 f"L -600 / W 1500); yellow: lesion label", fontsize=12)
    fig.tight_layout()
    fig.savefig(out / "lesion_patterns.png", dpi=80)
    plt.close(fig)


def model_on_inserted(ct, lungs: np.ndarray, engine_id: str, out: Path) -> dict:
    rng = np.random.default_rng(424242)  # not a training draw (those use seeds [0, 77, i])
    painted = synthesis.paint_lesions(ct, lungs, rng, burden=0.15, lookalikes=0.6)
    case = ct.like(painted.hu)
    engine = make_engine(engine_id, "cpu")
    result = run_segmentation(case, engine, lobes="none")
    pred = result.lesions > 0
    truth = painted.lesion
    inter = int((pred & truth).sum())
    dice = 2 * inter / max(1, int(pred.sum() + truth.sum()))
    ks = np.argsort(truth.sum(axis=(1, 2)))[::-1]
    chosen = sorted({int(ks[0]), int(ks[len(ks) // 8]), int(ks[len(ks) // 4])})
    fig, axes = plt.subplots(1, len(chosen), figsize=(6 * len(chosen), 6.3))
    spacing = ct.spacing_zyx
    for ax, k in zip(np.atleast_1d(axes), chosen):
        _axial(ax, case.array[k], [(truth[k], "yellow"), (pred[k], "red")], f"slice {k}", spacing[1] / spacing[2])
    kinds = ", ".join(sorted(set(painted.patterns)))
    fig.suptitle(f"{engine_id} on a real normal chest with inserted lesions ({kinds})"
                 f"\nyellow: inserted lesion (truth), red: model; lesion Dice {dice:.3f}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "model_on_real_inserted.png", dpi=70)
    plt.close(fig)
    return {"dice": dice, "truth_ml": float(truth.sum() * ct.voxel_ml), "pred_ml": float(pred.sum() * ct.voxel_ml)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--data", type=Path, default=_default_data())
    parser.add_argument("--engine", help="model id for model_on_real_inserted.png")
    args = parser.parse_args()
    path = args.data / REAL
    if not path.is_file():
        parser.error(f"real CT not found: {path}")
    ct = read_ct(path)
    lungs = segment_lungs(ct) > 0
    args.out.mkdir(parents=True, exist_ok=True)
    pattern_gallery(ct, lungs, args.out)
    print(f"wrote {args.out / 'lesion_patterns.png'}")
    if args.engine:
        figures = model_on_inserted(ct, lungs, args.engine, args.out)
        print(f"wrote {args.out / 'model_on_real_inserted.png'}: lesion Dice {figures['dice']:.3f}, "
              f"inserted {figures['truth_ml']:.1f} mL, found {figures['pred_ml']:.1f} mL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
