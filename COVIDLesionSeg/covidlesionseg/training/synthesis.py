"""COVID-19 lesions and their look-alikes painted into a normal chest CT (generated or real), with exact labels.

Label-free lesion synthesis on normal scans after Yao et al. ("Label-Free Segmentation of COVID-19 Lesions
in Lung CT", IEEE TMI 2021, NormNet): lesion shapes are thresholded smooth random fields, placed where
COVID-19 pneumonia predominates (peripheral/subpleural, posterior, basal; Shi et al., Lancet Infect Dis
2020; Bernheim et al., Radiology 2020), and their attenuation is painted over the real parenchyma so that
vessels, noise and partial volume stay those of the scan.  The patterns follow the Fleischner Society
glossary (Hansell et al., Radiology 2008) and the COVID-19 reviews (Kwee & Kwee, RadioGraphics 2020):

- ground-glass opacity: hazy increase of attenuation (-750 to -300 HU) through which vessels and bronchial
  walls stay visible (painted as ``max(original, haze)``);
- consolidation: homogeneous increase (-100 to +60 HU) that obscures vessels; air bronchograms (airway
  lumen, < -900 HU in the original) stay dark;
- crazy paving: ground glass with thickened interlobular septa, a polygonal net of 1-2 cm cells;
- reversed halo (atoll sign): central ground glass ringed by consolidation;
- subpleural curvilinear band: a 1-3 mm line parallel to the pleura within 1-2 cm of it;
- perilobular (arcade-like) opacity: curvilinear bands bordering secondary lobules;
- reticulation: fine irregular lines within ground glass.

Look-alikes are painted with the label they truly have, so a network learns to leave them alone:
solid nodules (lung), emphysema (lung, < -950 HU), dependent subpleural atelectasis (lung) and pleural
effusion (background: fluid is not lung, and it takes the place of lung voxels).  Scanner effects a patch
transform cannot make (beam-hardening streaks, breathing motion) are added per case by ``scanner_effects``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from covidlesionseg.io import Volume
from covidlesionseg.masks import bounding_box, distance_to

PATTERNS = ("ground_glass", "consolidation", "crazy_paving", "mixed", "reversed_halo", "subpleural_band",
            "perilobular", "reticulation")
PATTERN_WEIGHTS = (0.30, 0.10, 0.14, 0.16, 0.06, 0.08, 0.08, 0.08)
LOOKALIKES = ("nodule", "emphysema", "atelectasis", "effusion")


@dataclass
class Painted:
    """What ``paint_lesions`` changed: the new HU, the lesion mask, the lungs (effusion takes lung) and a log."""

    hu: np.ndarray
    lesion: np.ndarray
    lungs: np.ndarray
    patterns: list[str]


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: Sequence[float]) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(tuple(shape)).astype(np.float32), sigma_vox, mode="reflect")
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


def _patient_coordinates(ct: Volume, lungs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-voxel 0..1 'posterior' and 'basal' ranks inside the lungs' box, from the direction cosines."""
    out = {}
    box = bounding_box(lungs)
    for name, which, toward in (("posterior", "AP", 1), ("basal", "SI", -1)):
        axis, sign = ct.patient_axis(which)
        n = box[axis].stop - box[axis].start
        ramp = np.linspace(0.0, 1.0, n) if sign * toward > 0 else np.linspace(1.0, 0.0, n)
        shape = [1, 1, 1]
        shape[axis] = n
        out[name] = ramp.reshape(shape)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _lesion_alpha(rng: np.random.Generator, shape: Sequence[int], spacing: np.ndarray, radius_mm: float,
                  irregularity: float) -> np.ndarray:
    """A soft (0..1) irregular blob filling roughly an ellipsoid of ``radius_mm`` in a box of ``shape``."""
    centre = (np.asarray(shape) - 1) / 2.0
    axes = radius_mm * rng.uniform(0.6, 1.4, 3)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - c) * s / a) ** 2 for g, c, s, a in zip(grids, centre, spacing, axes))
    noise = _smooth_noise(rng, shape, np.maximum(0.5, radius_mm * rng.uniform(0.25, 0.45) / spacing))
    edge_vox = rng.uniform(0.6, 1.6)  # partial volume: width of the soft border in voxels
    level = 1.0 - np.sqrt(r2) + irregularity * 0.35 * noise
    return _sigmoid(level * (radius_mm / (edge_vox * float(spacing.min()))) / 2.0).astype(np.float32)


def _septal_net(rng: np.random.Generator, shape: Sequence[int], spacing: np.ndarray, cell_mm: float,
                width_vox: float) -> np.ndarray:
    """0..1 polygonal line net (thickened septa): near-zero crossings of a band-pass random field."""
    field = _smooth_noise(rng, shape, np.maximum(0.4, cell_mm / 4.0 / spacing))
    grad = np.sqrt(sum(g * g for g in np.gradient(field))) + 1e-3
    dist_vox = np.abs(field) / grad
    return np.clip(1.0 - dist_vox / width_vox, 0.0, 1.0).astype(np.float32)


def _paint_one(pattern: str, hu: np.ndarray, lungs: np.ndarray, depth_mm: np.ndarray, spacing: np.ndarray,
               rng: np.random.Generator, radius_mm: float) -> np.ndarray:
    """Paint one lesion of ``pattern`` into the box arrays in place; return its boolean label."""
    u = rng.uniform
    alpha = _lesion_alpha(rng, hu.shape, spacing, radius_mm, u(0.5, 1.4)) * lungs
    texture = _smooth_noise(rng, hu.shape, np.maximum(0.5, 1.5 / spacing))
    original = hu.copy()
    airway = original < -920.0

    def haze(level: float, alpha_map: np.ndarray, spread: float = 50.0) -> None:
        target = np.maximum(original, level + spread * texture)
        hu[:] = original + alpha_map * (target - original)

    def consolidate(alpha_map: np.ndarray, level: float) -> None:
        target = level + 18.0 * texture
        solid = original + alpha_map * (target - original)
        keep_air = airway & (alpha_map > 0.3) & (u() < 0.85)  # air bronchograms
        hu[:] = np.where(keep_air, np.minimum(original, -850.0), np.maximum(hu, solid))

    label = alpha > 0.5
    if pattern in ("ground_glass", "crazy_paving", "reticulation", "mixed"):
        haze(u(-720.0, -380.0), alpha)
    if pattern == "crazy_paving":
        net = _septal_net(rng, hu.shape, spacing, u(8.0, 18.0), u(0.5, 1.0)) * alpha
        hu[:] = hu + net * u(120.0, 320.0)
    elif pattern == "reticulation":
        net = _septal_net(rng, hu.shape, spacing, u(4.0, 8.0), u(0.35, 0.7)) * alpha
        hu[:] = hu + net * u(80.0, 220.0)
    elif pattern == "mixed":  # consolidation in the core of a ground-glass patch
        core = np.clip((alpha - u(0.75, 0.92)) * 12.0, 0.0, 1.0)
        consolidate(core, u(-80.0, 50.0))
    elif pattern == "consolidation":
        consolidate(alpha, u(-100.0, 55.0))
    elif pattern == "reversed_halo":
        haze(u(-700.0, -450.0), alpha)
        ring = np.clip(1.0 - np.abs(alpha - 0.6) / u(0.12, 0.22), 0.0, 1.0) * (alpha > 0.35)
        consolidate(ring.astype(np.float32), u(-120.0, 30.0))
    elif pattern in ("subpleural_band", "perilobular"):
        if pattern == "subpleural_band":
            d0, width = u(4.0, 14.0), u(1.2, 3.0)
            band = np.clip(1.0 - np.abs(depth_mm - d0) / width, 0.0, 1.0)
        else:
            net = _septal_net(rng, hu.shape, spacing, u(12.0, 22.0), u(1.0, 2.0))
            band = net * (depth_mm < u(12.0, 30.0))
        envelope = _lesion_alpha(rng, hu.shape, spacing, radius_mm * 1.3, 0.6)
        band = (band * envelope * lungs).astype(np.float32)
        target = u(-420.0, -120.0) + 40.0 * texture
        hu[:] = original + band * (np.maximum(original, target) - original)
        label = band > 0.5
    return label & lungs


def _paint_lookalike(kind: str, hu: np.ndarray, lungs: np.ndarray, depth_mm: np.ndarray, spacing: np.ndarray,
                     rng: np.random.Generator, dependent: np.ndarray) -> np.ndarray:
    """Paint a non-COVID finding into the box arrays in place; return voxels that stop being lung (effusion)."""
    u = rng.uniform
    texture = _smooth_noise(rng, hu.shape, np.maximum(0.5, 1.5 / spacing))
    none = np.zeros(hu.shape, bool)
    if kind == "nodule":
        alpha = _lesion_alpha(rng, hu.shape, spacing, u(2.0, 6.0), 0.15) * lungs
        hu[:] = hu + alpha * (u(-10.0, 60.0) + 15.0 * texture - hu)
    elif kind == "emphysema":
        alpha = _lesion_alpha(rng, hu.shape, spacing, u(4.0, 15.0), 1.2) * lungs
        holes = alpha * (texture > u(-0.2, 0.6))
        hu[:] = hu + holes * (u(-1000.0, -960.0) + 8.0 * texture - hu) * (hu < -500.0)
    elif kind == "atelectasis":  # thin dependent subpleural density, not a lesion
        band = (depth_mm < u(2.0, 6.0)) & lungs & (dependent > u(0.6, 0.8))
        band = ndi.gaussian_filter(band.astype(np.float32), 0.6)
        hu[:] = hu + band * (u(-250.0, 20.0) + 20.0 * texture - hu) * (hu < -200.0)
    elif kind == "effusion":  # handled by _effusion over the whole lung
        pass
    return none


def _effusion(ct: Volume, hu: np.ndarray, lungs: np.ndarray, coords: dict, box: tuple, rng: np.random.Generator
              ) -> np.ndarray:
    """A dependent pleural effusion on one side: the most posterior layer of the lower lung becomes fluid
    (0-25 HU) with a meniscus-like anterior margin; returns the voxels that stop being lung."""
    sub = lungs[box]
    lr_axis, lr_sign = ct.patient_axis("LR")
    n = sub.shape[lr_axis]
    side = np.arange(n) >= n // 2 if rng.uniform() < 0.5 else np.arange(n) < n // 2
    shape = [1, 1, 1]
    shape[lr_axis] = n
    wobble = 0.04 * _smooth_noise(rng, sub.shape, np.maximum(1.0, 12.0 / np.asarray(ct.spacing_zyx)))
    level = rng.uniform(0.72, 0.92)
    lower = coords["basal"] > rng.uniform(0.3, 0.6)
    fluid = sub & side.reshape(shape) & (coords["posterior"] + wobble > level) & lower
    out = np.zeros(lungs.shape, bool)
    out[box] = fluid
    texture = _smooth_noise(rng, hu.shape, 1.0)
    hu[out] = rng.uniform(0.0, 25.0) + 8.0 * texture[out]
    return out


def paint_lesions(ct: Volume, lungs: np.ndarray, rng: np.random.Generator, *, burden: float,
                  lookalikes: float = 0.5) -> Painted:
    """Paint lesions covering about ``burden`` (0..1) of the lungs, and some look-alikes, into a copy of ``ct``.

    ``lungs`` is a boolean lung mask on ``ct``'s grid.  Returns the new HU, the exact lesion mask, the lung
    mask (minus effusion) and the list of patterns used.
    """
    hu = ct.array.astype(np.float32, copy=True)
    lungs = np.asarray(lungs) > 0
    lesion = np.zeros(lungs.shape, bool)
    patterns: list[str] = []
    if not lungs.any():
        return Painted(hu, lesion, lungs.copy(), patterns)
    spacing = np.asarray(ct.spacing_zyx, float)
    depth = -distance_to(~lungs, spacing)  # mm from the pleura inside the lungs (>0 inside)
    depth = np.maximum(depth, 0.0)
    coords = _patient_coordinates(ct, lungs)
    box = bounding_box(lungs)
    sub_lungs = lungs[box]
    prior = (np.exp(-depth[box] / rng.uniform(10.0, 30.0)) * rng.uniform(0.6, 1.6)
             + coords["posterior"] * rng.uniform(0.2, 1.0) + coords["basal"] * rng.uniform(0.2, 1.0))
    prior = np.where(sub_lungs, prior + 0.15, 0.0).ravel()
    prior /= prior.sum()
    lung_voxels = int(sub_lungs.sum())
    target = burden * lung_voxels
    box_origin = np.array([b.start for b in box])
    dependent_full = np.zeros(lungs.shape, np.float32)
    dependent_full[box] = np.broadcast_to(coords["posterior"], sub_lungs.shape)
    attempts = 0
    while lesion.sum() < target and attempts < 400:
        attempts += 1
        centre = np.array(np.unravel_index(rng.choice(prior.size, p=prior), sub_lungs.shape)) + box_origin
        radius = float(np.clip(rng.lognormal(np.log(14.0 + 30.0 * burden), 0.5), 4.0, 70.0))
        half = np.ceil(1.6 * radius / spacing).astype(int) + 2
        region = tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(centre, half, lungs.shape))
        pattern = str(rng.choice(PATTERNS, p=PATTERN_WEIGHTS))
        block = hu[region]
        label = _paint_one(pattern, block, lungs[region], depth[region], spacing, rng, radius)
        hu[region] = block
        lesion[region] |= label
        patterns.append(pattern)
    lung_out = lungs.copy()
    n_look = rng.poisson(3.0 * lookalikes)
    for _ in range(int(n_look)):
        kind = str(rng.choice(LOOKALIKES, p=(0.4, 0.25, 0.2, 0.15)))
        if kind == "effusion":
            fluid = _effusion(ct, hu, lung_out, coords, box, rng) & ~lesion
            lung_out &= ~fluid
            patterns.append(kind)
            continue
        flat = np.flatnonzero(sub_lungs.ravel())
        centre = np.array(np.unravel_index(flat[rng.integers(flat.size)], sub_lungs.shape)) + box_origin
        size = 30.0 if kind in ("nodule", "emphysema") else 90.0
        half = np.ceil(size / spacing).astype(int)
        region = tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(centre, half, lungs.shape))
        block = hu[region]
        keep = ~lesion[region]  # a look-alike never overwrites a lesion
        before = block.copy()
        gone = _paint_lookalike(kind, block, lungs[region] & keep, depth[region], spacing, rng,
                                dependent_full[region])
        block[~keep] = before[~keep]
        hu[region] = block
        lung_out[region] &= ~gone
        patterns.append(kind)
    return Painted(hu, lesion & lung_out, lung_out, patterns)


def scanner_effects(ct: Volume, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-case scanner effects: beam-hardening streaks between dense structures and breathing motion blur."""
    out = hu
    if rng.uniform() < 0.25:  # dark/bright streaks through the body along random in-plane lines
        k_axis = 0
        n_slices = out.shape[k_axis]
        for _ in range(int(rng.integers(1, 4))):
            angle = rng.uniform(0, np.pi)
            jj, ii = np.mgrid[0:out.shape[1], 0:out.shape[2]]
            c = np.array(out.shape[1:]) * rng.uniform(0.3, 0.7, 2)
            dist = np.abs((jj - c[0]) * np.cos(angle) - (ii - c[1]) * np.sin(angle))
            streak = np.exp(-(dist / rng.uniform(1.0, 3.0)) ** 2) * rng.uniform(-90.0, 60.0)
            lo = int(rng.integers(0, n_slices))
            hi = min(n_slices, lo + int(rng.integers(1, max(2, n_slices // 4))))
            out[lo:hi] += streak[None].astype(np.float32) * (out[lo:hi] > -990.0)
    if rng.uniform() < 0.25 and out.shape[0] > 4:  # breathing motion: blur some slices along AP
        axis, _ = ct.patient_axis("AP")
        if axis != 0:
            lo = int(rng.integers(0, out.shape[0] - 2))
            hi = min(out.shape[0], lo + int(rng.integers(2, max(3, out.shape[0] // 5))))
            sigma = [0.0, 0.0, 0.0]
            sigma[axis] = rng.uniform(1.0, 3.0)
            out[lo:hi] = ndi.gaussian_filter(out[lo:hi], sigma)
    return out
