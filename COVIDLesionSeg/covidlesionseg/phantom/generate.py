"""The generated chest CT as one case: geometry, anatomy, lesions and image formation (``generate_phantom``).

``generate_phantom(seed, severity)`` draws an adult chest (``anatomy``, ``tubes``), its airway and vessel
trees (``trees``) and COVID-19 lesions whose burden meets the requested CT category (``lesions``),
voxelises everything at the voxel centres of a clinical-looking grid (``grid``, ``paint``) and forms the
image: partial volume, a Gaussian scanner PSF, correlated Gaussian noise, clipping to [-1024, 3071] HU,
rounding to integer HU (as scanners store them; the array stays float32, ct.nii.gz stores int16)
and, for some seeds, -2048 padding outside the circular reconstruction FOV.

Truth is exact by construction: a voxel is lung, lobe or lesion when its centre lies in that region;
lesion label 2 marks lesion voxels whose final HU is >= labels.HIGH_OPACITY_HU (docs/contracts.md).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from covidlesionseg import labels
from covidlesionseg.io import InputError, Volume, write_ct, write_label
from covidlesionseg.masks import bounding_box
from covidlesionseg.phantom.anatomy import ChestAnatomy
from covidlesionseg.phantom.grid import SamplingGrid
from covidlesionseg.phantom.lesions import PATTERN_NAMES, LesionModel, add_lesions
from covidlesionseg.phantom.paint import paint_anatomy
from covidlesionseg.phantom.trees import build_trees, paint_trees
from covidlesionseg.phantom.tubes import central_tubes
from covidlesionseg.severity import SeverityConfig, ct_category

GENERATOR_VERSION = 1
MAX_DEFAULT_SLICES = 400
MAX_VOXELS = 320_000_000  # about 1.3 GB of float32 CT; refuse larger requests
MATRIX = 512
SLICE_CHOICES_MM = (0.625, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
SLICE_WEIGHTS = (1.0, 1.0, 3.0, 3.0, 1.5, 1.5, 1.0, 1.0, 1.5)
FOV_PADDING_HU = -2048.0
HU_RANGE = (-1024.0, 3071.0)
_NO_FLOOR = SeverityConfig(floor_ml=0.0)


@dataclass
class Phantom:
    """A generated CT and its exact truth, all on the CT's grid."""

    ct: Volume
    lesions: np.ndarray
    lungs: np.ndarray
    lobes: np.ndarray
    params: dict
    patterns: np.ndarray | None = field(default=None, repr=False)  # lesions.PATTERN_* per lesion voxel


def _streams(seed: int, severity: str = "CT0") -> dict[str, np.random.Generator]:
    """Independent random streams: anatomy, trees, lesion fields, geometry and noise depend on the seed only;
    the lesion burden and patterns on the seed and the category."""
    names = ("anatomy", "trees", "lesion_fields", "geometry", "noise")
    out = {n: np.random.default_rng(s) for n, s in zip(names, np.random.SeedSequence(seed).spawn(len(names)))}
    key = (100, labels.CT_CATEGORIES.index(severity))
    out["lesion_severity"] = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
    return out


@functools.lru_cache(maxsize=4)
def _anatomy(seed: int) -> tuple[ChestAnatomy, dict]:
    rng = _streams(seed)["anatomy"]
    anat = ChestAnatomy(rng)
    return anat, central_tubes(anat, rng)


@functools.lru_cache(maxsize=4)
def _trees(seed: int, r_min: float, lumen_min: float) -> dict:
    anat, tubes = _anatomy(seed)
    return build_trees(anat, tubes, _streams(seed)["trees"], r_min=r_min, lumen_min=lumen_min)


@functools.lru_cache(maxsize=2)
def _lesion_model(seed: int) -> LesionModel:
    return LesionModel(_anatomy(seed)[0], _streams(seed)["lesion_fields"])


def _check_inputs(seed, severity, shape, spacing, direction, noise_hu):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"phantom seed must be a non-negative integer, got {seed!r}")
    if severity not in labels.CT_CATEGORIES:
        raise InputError(f"unknown severity {severity!r}; use one of {', '.join(labels.CT_CATEGORIES)}")
    if shape is not None:
        if len(tuple(shape)) != 3 or any(int(n) != n or n < 1 for n in shape):
            raise InputError(f"phantom shape must be three positive integers (k, j, i), got {shape!r}")
        shape = tuple(int(n) for n in shape)
    if spacing is not None:
        sp = np.asarray(spacing, float).ravel()
        if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise InputError(f"phantom spacing must be three positive numbers (i, j, k) in mm, got {spacing!r}")
        spacing = tuple(float(v) for v in sp)
    if direction is not None:
        d = np.asarray(direction, float)
        if d.size != 9 or not np.all(np.isfinite(d)):
            raise InputError("phantom direction must be a 3x3 matrix")
        d = d.reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise InputError("phantom direction must be orthonormal (columns are unit, perpendicular axes)")
        direction = d
    if noise_hu is not None and (not math.isfinite(float(noise_hu)) or float(noise_hu) < 0):
        raise InputError(f"noise_hu must be a non-negative number, got {noise_hu!r}")
    return shape, spacing, direction


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(3, p=[0.4, 0.4, 0.2])
    base = np.eye(3) if kind != 1 else np.diag([-1.0, -1.0, 1.0])
    if kind == 2:
        base = np.eye(3) if rng.random() < 0.5 else np.diag([-1.0, -1.0, 1.0])
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        ang = np.deg2rad(rng.uniform(2.0, 6.0))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        base = (np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * k @ k) @ base
    return base


def _body_outline(anat: ChestAnatomy, z_lo: float, z_hi: float) -> np.ndarray:
    """Points (N, 3) on the skin over the imaged levels (anatomy frame)."""
    th = np.linspace(0, 2 * np.pi, 145)
    t, zz = np.meshgrid(th, np.linspace(z_lo, z_hi, 17))
    cx, cy, zz = np.sin(t).ravel(), np.cos(t).ravel(), zz.ravel()
    muscle, fat = anat.wall_thickness(cx, cy, zz)
    rr = anat.cavity_radius(cx, cy, zz) + anat.rib_layer + muscle + fat
    return np.stack([rr * cx, rr * cy, zz], 1)


def choose_grid(anat: ChestAnatomy, rng: np.random.Generator, shape, spacing, direction) -> SamplingGrid:
    """Voxel grid: clinical defaults drawn from the seed, or fitted to a requested shape / spacing."""
    d = _random_direction(rng) if direction is None else direction
    z_lo = anat.lung_zmin() - rng.uniform(15.0, 40.0)
    z_hi = anat.z_apex + rng.uniform(10.0, 30.0)
    shift = np.array([rng.uniform(-10, 10), rng.uniform(-25, 25), rng.uniform(-400, 100)])
    outline = _body_outline(anat, z_lo, z_hi)
    centre = np.array([0.5 * (outline[:, 0].min() + outline[:, 0].max()),
                       0.5 * (outline[:, 1].min() + outline[:, 1].max()), 0.5 * (z_lo + z_hi)])
    rel = outline - centre
    proj = rel @ d  # coordinates along the grid axes i, j, k
    need_k = 2 * np.abs(proj[:, 2]).max() + 2.0
    fov = 2.0 * np.sqrt(proj[:, 0] ** 2 + proj[:, 1] ** 2).max() + 12.0  # circular FOV holds the body
    if shape is None and spacing is None:
        s_min = max(0.6, fov / MATRIX)
        s_xy = s_min + (max(s_min, 0.98) - s_min) * float(rng.random()) ** 2  # clinical FOVs cluster near the body
        ok = [i for i, s in enumerate(SLICE_CHOICES_MM) if math.ceil(need_k / s) + 1 <= MAX_DEFAULT_SLICES]
        w = np.array([SLICE_WEIGHTS[i] for i in ok])
        slice_mm = SLICE_CHOICES_MM[ok[rng.choice(len(ok), p=w / w.sum())]] if ok else need_k / (
            MAX_DEFAULT_SLICES - 1)
        spacing = (s_xy, s_xy, float(slice_mm))
        shape = (math.ceil(need_k / slice_mm) + 1, MATRIX, MATRIX)
    elif shape is not None and spacing is None:
        s_xy = fov / min(shape[1], shape[2])
        spacing = (s_xy, s_xy, need_k / max(shape[0] - 1, 1))
    elif shape is None:
        n_xy = max(math.ceil(fov / spacing[0]), math.ceil(fov / spacing[1]))
        shape = (math.ceil(need_k / spacing[2]) + 1, n_xy, n_xy)
    if math.prod(shape) > MAX_VOXELS:
        raise InputError(f"phantom of {shape[0]}x{shape[1]}x{shape[2]} voxels is too large "
                         f"(limit {MAX_VOXELS // 1_000_000} million); give a smaller shape or coarser spacing")
    size = np.array(shape[::-1], float)
    origin = centre + shift - d @ (np.asarray(spacing) * (size - 1) / 2.0)
    return SamplingGrid(tuple(int(n) for n in shape), tuple(float(s) for s in spacing),
                        tuple(float(o) for o in origin), d, shift)


def _gaussian_noise_slabs(hu: np.ndarray, sigma_hu: float, corr_vox: float, rng: np.random.Generator) -> None:
    """Add Gaussian noise with in-plane correlation (std ``sigma_hu`` after filtering), slab by slab."""
    radius = int(3.0 * corr_vox + 0.5)
    xs = np.arange(-radius, radius + 1)
    kern = np.exp(-0.5 * (xs / max(corr_vox, 1e-3)) ** 2)
    kern /= kern.sum()
    gain = float(np.sum(kern**2))  # variance gain per axis of the separable filter
    scale = np.float32(sigma_hu / math.sqrt(gain * gain))
    step = max(1, 8_000_000 // (hu.shape[1] * hu.shape[2]))
    for k0 in range(0, hu.shape[0], step):
        n = rng.standard_normal((min(step, hu.shape[0] - k0),) + hu.shape[1:], dtype=np.float32)
        if corr_vox > 0:
            ndi.gaussian_filter(n, (0.0, corr_vox, corr_vox), output=n, truncate=3.0)
        n *= scale
        hu[k0:k0 + n.shape[0]] += n


def _form_image(hu: np.ndarray, grid: SamplingGrid, rng: np.random.Generator, noise_hu: float | None) -> dict:
    psf_fwhm = float(rng.uniform(0.6, 1.1))
    sig_xy = [max(psf_fwhm / 2.3548 / s, 0.45) for s in grid.spacing[:2]]
    ndi.gaussian_filter(hu, (0.45, sig_xy[1], sig_xy[0]), output=hu, truncate=3.0)
    drawn = float(rng.uniform(10.0, 30.0))
    sigma = drawn if noise_hu is None else float(noise_hu)
    corr = float(rng.uniform(0.4, 0.9))
    pad = bool(rng.random() < 0.4)
    if sigma > 0:
        _gaussian_noise_slabs(hu, sigma, corr, rng)
    np.clip(hu, HU_RANGE[0], HU_RANGE[1], out=hu)
    np.rint(hu, out=hu)  # scanners store integer HU
    axial = abs(grid.direction[2, 2]) > 0.9
    if pad and axial:
        nj, ni = hu.shape[1:]
        jj, ii = np.meshgrid((np.arange(nj) - (nj - 1) / 2) * grid.spacing[1],
                             (np.arange(ni) - (ni - 1) / 2) * grid.spacing[0], indexing="ij")
        radius = 0.5 * min(ni * grid.spacing[0], nj * grid.spacing[1])
        hu[:, jj**2 + ii**2 > radius**2] = FOV_PADDING_HU
    return {"psf_fwhm_mm": round(psf_fwhm, 4), "noise_hu": round(sigma, 4), "noise_correlation_vox": round(corr, 4),
            "fov_padding": bool(pad and axial)}


def _lesion_summary(lesion: np.ndarray, lungs: np.ndarray, lobes: np.ndarray, patterns: np.ndarray) -> dict:
    box = bounding_box(lungs)
    if box is None:
        box = (slice(0, 0),) * 3
    lesion, lungs, lobes, patterns = lesion[box], lungs[box], lobes[box], patterns[box]

    def percent(region: np.ndarray) -> float:
        return round(100.0 * int(np.count_nonzero(lesion & region)) / max(int(np.count_nonzero(region)), 1), 4)

    pct = {name: percent(lungs == side) for side, name in labels.LUNG_NAMES.items()}
    top = max(pct.values())
    # The category the generator aimed at: the scores' own bins without a volume floor (p = 0 only when no
    # lesion voxel), so the percentage also stands in for the lesion volume.
    cat = ct_category(top, top, _NO_FLOOR)
    total = max(int(np.count_nonzero(lesion)), 1)
    return {"lung_percent": pct, "category": cat,
            "lobe_percent": {name: percent(lobes == lobe) for lobe, name in labels.LOBE_NAMES.items()},
            "pattern_share": {name: round(int(np.count_nonzero(lesion & (patterns == p))) / total, 4)
                              for p, name in PATTERN_NAMES.items()}}


def generate_phantom(seed: int, severity: str = "CT2", *, shape: tuple[int, int, int] | None = None,
                     spacing: tuple[float, float, float] | None = None, direction: np.ndarray | None = None,
                     noise_hu: float | None = None) -> Phantom:
    """Generate a chest CT (float32 HU) with exact lesion, lung and lobe truth.

    ``shape`` is numpy order (k, j, i) and ``spacing`` index order (i, j, k), as in :class:`io.Volume`.
    Without them the grid is clinical: 512 x 512, in-plane spacing 0.6-1.0 mm, slice thickness
    0.625-5 mm over the whole lungs (at most 400 slices).  The same seed gives the same anatomy whatever
    the grid, direction or severity; the lesions of one seed grow with the category.
    """
    shape, spacing, direction = _check_inputs(seed, severity, shape, spacing, direction, noise_hu)
    seed = int(seed)
    rngs = _streams(seed, severity)
    anat, tubes = _anatomy(seed)
    grid = choose_grid(anat, rngs["geometry"], shape, spacing, direction)
    hu, lungs, lobes = paint_anatomy(anat, tubes, grid)
    model = _lesion_model(seed) if severity != "CT0" else None
    if model is not None:
        lesion, patterns, lesion_info = add_lesions(model, anat, grid, hu, lungs, severity, rngs["lesion_severity"])
    else:
        lesion, patterns = np.zeros(grid.shape, bool), np.zeros(grid.shape, np.uint8)
        lesion_info = {"target_percent": 0.0}
    fine = min(grid.spacing)
    trees = _trees(seed, round(max(0.3, 0.15 * fine), 3), round(max(0.7, 0.3 * fine), 3))
    paint_trees(grid, hu, trees, tubes, anat.hu["blood"], anat.hu["airway_wall"], np.zeros(grid.shape, np.uint8))
    imaging = _form_image(hu, grid, rngs["noise"], noise_hu)
    lesion_labels = np.zeros(grid.shape, np.uint8)
    lesion_labels[lesion] = labels.LESION_LOW
    lesion_labels[lesion & (hu >= labels.HIGH_OPACITY_HU)] = labels.LESION_HIGH
    ct = Volume(hu, grid.spacing, grid.origin, grid.direction.copy(),
                {"source": f"phantom seed {seed} {severity}", "modality": "CT"})
    params = {
        "generator": "covidlesionseg.phantom", "version": GENERATOR_VERSION, "seed": seed, "severity": severity,
        "shape": [int(n) for n in grid.shape], "spacing": [round(float(v), 6) for v in grid.spacing],
        "origin": [round(float(v), 4) for v in grid.origin], "direction": np.round(grid.direction, 8).tolist(),
        "anatomy_to_lps_mm": np.round(grid.shift, 4).tolist(), "imaging": imaging,
        "anatomy": anat.summary(), "trees": {"territory_points": int(trees["territory_points"]),
                                            "vessel_segments": len(trees["vessels"]),
                                            "airway_segments": len(trees["airway_lumen"])},
        "lesions": {**lesion_info, **_lesion_summary(lesion, lungs, lobes, patterns)},
    }
    return Phantom(ct=ct, lesions=lesion_labels, lungs=lungs, lobes=lobes, params=params, patterns=patterns)


def default_grid(seed: int, *, shape: tuple[int, int, int] | None = None,
                 spacing: tuple[float, float, float] | None = None, direction: np.ndarray | None = None) -> dict:
    """The grid ``generate_phantom`` would use (shape, spacing, origin, direction), without generating the CT."""
    shape, spacing, direction = _check_inputs(seed, "CT0", shape, spacing, direction, None)
    grid = choose_grid(_anatomy(int(seed))[0], _streams(int(seed))["geometry"], shape, spacing, direction)
    return {"shape": grid.shape, "spacing": grid.spacing, "origin": grid.origin, "direction": grid.direction.copy(),
            "anatomy_to_lps_mm": grid.shift.copy()}


def landmarks(seed: int) -> dict[str, np.ndarray]:
    """Anatomical landmarks of a seed's chest in the anatomy frame (mm; add params["anatomy_to_lps_mm"] for LPS).

    ``trachea`` (points on the tracheal axis above the carina), ``carina``, ``right_main_bronchus`` and
    ``left_main_bronchus`` (mid points), ``heart`` (centre).
    """
    anat, tubes = _anatomy(int(seed))
    pts = tubes["points"]
    carina = np.asarray(pts["carina"], float)
    trachea = tubes["central_lumen"]
    on_axis = trachea[(trachea[:, 2] > 10.0) & (trachea[:, 2] < anat.z_apex)][:, 0:3]
    return {"trachea": on_axis, "carina": carina, "right_main_bronchus": 0.5 * (carina + pts["RMB"]),
            "left_main_bronchus": 0.5 * (carina + pts["LMB"]), "heart": anat.heart_c.copy()}


def clear_caches() -> None:
    """Forget the cached anatomy, trees and lesion fields of recent seeds (they are pure functions of the seed)."""
    for cached in (_anatomy, _trees, _lesion_model):
        cached.cache_clear()


def truth_severity(phantom: Phantom, config: SeverityConfig | None = None) -> dict:
    """severity.json of a phantom's exact truth (engine "truth", lobe_source "truth")."""
    from covidlesionseg.pipeline import finish_labels, severity_document

    _, _, _, core = finish_labels(phantom.ct, phantom.lesions > 0, phantom.lungs, phantom.lobes,
                                  lobe_source="truth", config=config or SeverityConfig())
    return severity_document(core, {"id": "truth", "sha256": None}, {"phantom": phantom.params})


def save_phantom(phantom: Phantom, outdir: str | os.PathLike) -> None:
    """Write ct.nii.gz, lesions.nii.gz, lungs.nii.gz and lobes.nii.gz (names from labels.py) into ``outdir``."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    write_ct(out / labels.CT_FILE, phantom.ct)
    write_label(out / labels.LESIONS_FILE, phantom.ct, phantom.lesions)
    write_label(out / labels.LUNGS_FILE, phantom.ct, phantom.lungs)
    write_label(out / labels.LOBES_FILE, phantom.ct, phantom.lobes)
