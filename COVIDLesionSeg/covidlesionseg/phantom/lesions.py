"""COVID-19 lesions of the generated chest, with their burden set to a requested CT category.

Lesions follow the typical CT pattern of COVID-19 pneumonia (Shi et al., Lancet Infect Dis 2020;
Bernheim et al., Radiology 2020): multifocal, bilateral ground-glass opacities (GGO) with peripheral
(subpleural), posterior and basal predominance, consolidation in more advanced disease (air bronchograms
stay visible because the airways are drawn afterwards), and crazy paving (GGO with thickened interlobular
septa).  Shapes come from thresholding a smooth random score field, so lesions are irregular blobs of all
sizes.  The threshold is solved so that the larger per-lung lesion percentage of the TRUTH lies inside
the requested Moscow CT category (Morozov et al.; bins as in docs/contracts.md), away from the bin edges.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from covidlesionseg import labels
from covidlesionseg.masks import bounding_box
from covidlesionseg.phantom.anatomy import ChestAnatomy
from covidlesionseg.phantom.grid import SamplingGrid

PATTERN_GROUND_GLASS, PATTERN_CONSOLIDATION, PATTERN_CRAZY_PAVING = 1, 2, 3
PATTERN_NAMES = {PATTERN_GROUND_GLASS: "ground_glass", PATTERN_CONSOLIDATION: "consolidation",
                 PATTERN_CRAZY_PAVING: "crazy_paving"}
# Larger per-lung lesion percentage aimed at, per category: inside the bin, >= 3 points from its edges.
TARGET_PERCENT = {"CT1": (3.0, 22.0), "CT2": (28.0, 47.0), "CT3": (53.0, 72.0), "CT4": (78.0, 92.0)}
CONSOLIDATION_FRACTION = {"CT1": (0.0, 0.12), "CT2": (0.05, 0.25), "CT3": (0.15, 0.4), "CT4": (0.25, 0.5)}
LATTICE_MM = 2.0


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_mm / LATTICE_MM, mode="wrap")
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


class LesionModel:
    """Score, selector and texture fields of one chest's lesions on an anatomy-frame lattice."""

    def __init__(self, anat: ChestAnatomy, rng: np.random.Generator) -> None:
        step = LATTICE_MM
        self.lo = np.array([-anat.cav_a, -anat.cav_ba, anat.lung_zmin()]) - 4 * step
        hi = np.array([anat.cav_a, anat.cav_bp, anat.z_apex]) + 4 * step
        shape = tuple(int(v) for v in np.ceil((hi - self.lo) / step)[::-1] + 1)
        u = rng.uniform
        # Fields that do not depend on the severity are drawn first, so that one seed's lesions grow
        # monotonically from CT1 to CT4 (a higher category only lowers the threshold).
        coarse = _noise(rng, shape, u(8.0, 13.0))
        fine = _noise(rng, shape, u(2.5, 4.0))
        self.selector = _noise(rng, shape, u(12.0, 20.0))
        self.reticulation = _noise(rng, shape, u(3.0, 4.5))
        lattice = SamplingGrid(shape, (step, step, step), tuple(self.lo), np.eye(3), np.zeros(3))
        x, y, z = lattice.coords(lattice.full_box())
        h = anat.cavity_height(x.ravel(), y.ravel(), z.ravel())[0].reshape(shape)
        subpleural = np.exp(np.minimum(h, 0.0) / u(12.0, 25.0))
        dome = np.where(x < anat.col_x, anat.z_dome_r, anat.z_dome_l)
        basal = np.clip((anat.z_apex - z) / (anat.z_apex - dome), 0.0, 1.2)
        posterior = np.clip((y + anat.cav_ba) / (anat.cav_ba + anat.cav_bp), 0.0, 1.0)
        side_bias = rng.normal(0.0, 0.25)
        self.weights = {"subpleural": u(1.0, 2.0), "basal": u(0.5, 1.3), "posterior": u(0.3, 0.9),
                        "fine": u(0.25, 0.45), "left_minus_right": side_bias}
        w = self.weights
        self.score = (coarse + w["fine"] * fine + w["subpleural"] * subpleural + w["basal"] * basal
                      + w["posterior"] * posterior + np.where(x < anat.col_x, -0.5, 0.5) * side_bias).astype(np.float32)
        del coarse, fine, subpleural, basal, posterior, x, y, z, h

    def images(self, grid: SamplingGrid) -> dict:
        return {name: grid.lattice_image(getattr(self, name), self.lo, LATTICE_MM)
                for name in ("score", "selector", "reticulation")}


def _threshold_for(values: np.ndarray, percent: float) -> float:
    """Threshold t such that exactly round(percent % of values) values are > t."""
    n = len(values)
    k = int(round(percent / 100.0 * n))
    if k <= 0:
        return float(values.max()) + 1.0
    if k >= n:
        return float(values.min()) - 1.0
    part = np.partition(values, (n - k - 1, n - k))
    return 0.5 * (float(part[n - k - 1]) + float(part[n - k]))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def add_lesions(model: LesionModel, anat: ChestAnatomy, grid: SamplingGrid, hu: np.ndarray, lungs: np.ndarray,
                severity: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw lesions into ``hu`` (in place); returns the lesion mask (bool), the pattern map (uint8) and a summary."""
    lesion = np.zeros(grid.shape, bool)
    pattern = np.zeros(grid.shape, np.uint8)
    info: dict = {"target_percent": 0.0, "weights": {k: round(v, 4) for k, v in model.weights.items()}}
    box = bounding_box(lungs)
    if severity == "CT0" or box is None:
        return lesion, pattern, info
    lo_t, hi_t = TARGET_PERCENT[severity]
    target = float(rng.uniform(lo_t, hi_t))
    images = model.images(grid)
    score = grid.sample(images["score"], box, default=-1e3)
    lung = lungs[box]
    thresholds = [_threshold_for(score[lung == side], target) for side in (labels.RIGHT_LUNG, labels.LEFT_LUNG)
                  if np.any(lung == side)]
    t = max(thresholds)
    inside = (score > t) & (lung > 0)
    lesion[box] = inside
    idx = np.nonzero(inside.ravel())[0]
    excess = score.ravel()[idx] - np.float32(t)
    del score
    scale = float(np.std(excess)) + 1e-6 if excess.size > 1 else 1.0
    excess /= np.float32(scale)
    selector = grid.sample(images["selector"], box, default=0.0).ravel()[idx]
    retic = grid.sample(images["reticulation"], box, default=0.0).ravel()[idx]
    u = rng.uniform
    f_cons = u(*CONSOLIDATION_FRACTION[severity])
    f_crazy = u(0.05, 0.3) if rng.random() < 0.6 else 0.0
    c_score = 0.8 * excess + selector
    pat = np.full(idx.shape, PATTERN_GROUND_GLASS, np.uint8)
    c_thr = _threshold_for(c_score, 100.0 * f_cons) if f_cons > 0 else np.inf
    cons = c_score > c_thr
    pat[cons] = PATTERN_CONSOLIDATION
    if f_crazy > 0:
        k_thr = _threshold_for(-selector[~cons], 100.0 * f_crazy)
        crazy = np.zeros(idx.shape, bool)
        crazy[~cons] = -selector[~cons] > k_thr
        pat[crazy] = PATTERN_CRAZY_PAVING
    hu_levels = {"ground_glass": u(-680.0, -450.0), "consolidation": u(-50.0, 30.0), "septa": u(-180.0, -60.0)}
    sub = hu[box]
    vals = sub.ravel()[idx]
    ggo = hu_levels["ground_glass"] + 45.0 * selector + 40.0 * retic
    vals += (ggo - vals) * (0.5 + 0.5 * _smoothstep(excess / 0.5))
    if cons.any():
        level = hu_levels["consolidation"] + 30.0 * retic[cons]
        ramp = 0.3 + 0.7 * _smoothstep((c_score[cons] - c_thr) / 0.6)
        vals[cons] += (level - vals[cons]) * ramp
    if (pat == PATTERN_CRAZY_PAVING).any():
        cz = pat == PATTERN_CRAZY_PAVING
        line = np.clip(1.0 - np.abs(retic[cz]) / 0.22, 0.0, 1.0)
        vals[cz] += (hu_levels["septa"] - vals[cz]) * 0.85 * line
    flat = sub.reshape(-1)
    flat[idx] = vals
    hu[box] = flat.reshape(sub.shape)
    pview = pattern[box].reshape(-1)
    pview[idx] = pat
    pattern[box] = pview.reshape(lung.shape)
    info.update({"target_percent": round(target, 3), "threshold": round(float(t), 6),
                 "consolidation_fraction": round(f_cons, 4), "crazy_paving_fraction": round(f_crazy, 4),
                 "hu": {k: round(v, 1) for k, v in hu_levels.items()}})
    return lesion, pattern, info
