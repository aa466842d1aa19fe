"""The neural lesion engine: a registered 3D U-Net (Bressem et al. 2021 or the compact variant).

A model whose registry entry lists ``outputs`` ["background", "lung", "lesion"] segments lungs and lesions
together (``provides_lungs``): it sees the whole body, so dense consolidation that a density-based lung mask
drops is still lung.  Lesion-only models (two outputs) see the lung mask's box and mark lesions.

Weights come from the registry entry (``weights.fetch_weights``) and are checked against their
sha256 before they are read (``weights.load_state_dict``, ``weights_only``).  Inference runs through
``inference.predict_lesions``; the lesion is every non-background class.  Lesions may reach a few
mm past the lung mask (dense consolidation at the pleura that a lung mask missed), but not further,
so the network cannot paint the chest wall or mediastinum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from covidlesionseg import weights
from covidlesionseg.engines.base import LesionEngine
from covidlesionseg.engines.classical import ClassicalEngine
from covidlesionseg.inference import body_bounding_box, predict_classes, predict_lesions, resolve_device
from covidlesionseg.io import InputError, Volume
from covidlesionseg.lungs import segment_lungs
from covidlesionseg.networks import build_network
from covidlesionseg.progress import ProgressCallback, RunControl

LUNG_MARGIN_MM = 3.0
"""How far past the lung mask a lesion may reach."""
JOINT_OUTPUTS = ("background", "lung", "lesion")
"""Class order of a lung-and-lesion model."""
DENSITY_SHARE = 0.25
"""Share of a joint run's progress spent on the density lung mask."""
MIN_CONTEXT_MM = 48.0
"""On a stack thinner than this (S-I) a joint model hands the lesions to the classical engine."""
MIN_LUNG_CONTACT = 0.1
"""Share of a lost lesion component's outer shell that must be aerated lung for the component to be lung."""
MIN_LOST_LUNG_ML = 100.0
"""A lesion component outside the density lungs this large is lung even when it does not touch them."""
MIN_LUNG_COMPONENT_ML = 5.0
"""Lung components smaller than this (and not touching a larger one) are dropped as noise."""


def clean_lungs(lung: np.ndarray, ct: Volume) -> np.ndarray:
    """A network's lung mask without specks: components under ``MIN_LUNG_COMPONENT_ML`` dropped, holes inside
    each slice filled (a vessel or nodule inside the lung is lung)."""
    labelled, n = ndimage.label(lung)
    if n == 0:
        return lung
    sizes = np.bincount(labelled.ravel())[1:] * ct.voxel_ml
    keep = np.zeros(n + 1, bool)
    keep[1:] = sizes >= MIN_LUNG_COMPONENT_ML
    if not keep.any():  # a single slice or a tiny stack: keep the largest component
        keep[1 + int(np.argmax(sizes))] = True
    out = keep[labelled]
    axis, _ = ct.patient_axis("SI")
    for k in range(out.shape[axis]):
        index = [slice(None)] * 3
        index[axis] = k
        out[tuple(index)] = ndimage.binary_fill_holes(out[tuple(index)])
    return out


def keep_near_lungs(lesions: np.ndarray, lungs: np.ndarray, spacing_zyx: Sequence[float],
                    margin_mm: float = LUNG_MARGIN_MM) -> np.ndarray:
    """``lesions`` without the voxels farther than ``margin_mm`` from ``lungs`` (both boolean, same grid).

    The distance transform is computed only around the lesion voxels outside the lungs, which keeps
    it cheap on full-size CT.
    """
    outside = lesions & ~lungs
    if not outside.any():
        return lesions
    result = lesions.copy()
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(outside.any(axis=other))
        grow = math.ceil(margin_mm / spacing_zyx[axis]) + 1
        box.append(slice(max(0, present[0] - grow), min(lesions.shape[axis], present[-1] + 1 + grow)))
    region = tuple(box)
    lung_part = lungs[region]
    if lung_part.any():
        near = ndimage.distance_transform_edt(~lung_part, sampling=spacing_zyx) <= margin_mm
    else:
        near = np.zeros(lung_part.shape, dtype=bool)
    result[region] &= near
    return result


def fuse_lungs(density: np.ndarray, lesions: np.ndarray, ct: Volume) -> np.ndarray:
    """The density lung mask plus the network's lesions that it lost (``fused`` lung source).

    The density mask (``lungs.segment_lungs``: air-filled lung, closed over subpleural consolidation) is
    what a reader would draw on aerated lung, and is kept as it is; the network's own lung outline is
    not used, because it blurs at the pleura on coarse or unusual CT.  Where dense consolidation or
    atelectasis was dropped by the density mask, the network's lesion voxels outside it are added,
    component by component, when at least ``MIN_LUNG_CONTACT`` of the component's outer shell is aerated
    lung (the disease continues into the lung around it) or the component holds at least
    ``MIN_LOST_LUNG_ML`` (a lung consolidated as a whole).  A blob that merely touches the lung at a point
    (the diaphragm dome or the heart border in partial volume) is not lung.
    """
    lost = lesions & ~density
    if not lost.any():
        return density.copy()
    labelled, n = ndimage.label(lost, structure=np.ones((3, 3, 3), bool))
    shell = ndimage.binary_dilation(lost, np.ones((3, 3, 3), bool)) & ~lost
    # Each shell voxel to the component it borders (the nearest one when two are close).
    owner = ndimage.grey_dilation(labelled, footprint=np.ones((3, 3, 3), bool))
    shell_total = np.bincount(owner[shell], minlength=n + 1)
    shell_lung = np.bincount(owner[shell & density], minlength=n + 1)
    contact = shell_lung / np.maximum(shell_total, 1)
    sizes = np.bincount(labelled.ravel(), minlength=n + 1) * ct.voxel_ml
    keep = (contact >= MIN_LUNG_CONTACT) | (sizes >= MIN_LOST_LUNG_ML)
    keep[0] = False
    return density | keep[labelled]


class UNetEngine(LesionEngine):
    """A registered network as a lesion engine; weights are verified and loaded when it is built."""

    def __init__(self, entry: dict[str, Any], device: str = "auto", *,
                 lung_margin_mm: float = LUNG_MARGIN_MM, progress: ProgressCallback | None = None) -> None:
        self.entry = dict(entry)
        self.name = str(entry["id"])
        self.version = str(entry.get("version") or "1")
        sha = entry.get("sha256")
        if not sha:
            raise InputError(f"model {self.name!r} has no weights (sha256 is null)")
        self.weights_sha256 = str(sha).lower()
        for key in ("spacing", "hu_window", "roi_size"):
            if entry.get(key) is None:
                raise InputError(f"model {self.name!r} does not give {key}")
        self.spacing_mm = tuple(float(s) for s in entry["spacing"])
        self.hu_window = tuple(float(h) for h in entry["hu_window"])
        self.roi_size = tuple(int(r) for r in entry["roi_size"])
        self.lung_margin_mm = float(lung_margin_mm)
        self._torch_device = resolve_device(device)
        self.device = self._torch_device.type
        path = weights.fetch_weights(entry, progress=progress)
        state = weights.load_state_dict(path, self.weights_sha256)
        self.net = build_network(str(entry["architecture"]), **(entry.get("network") or {}))
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise InputError(f"weights of model {self.name!r} do not fit {entry['architecture']}: {first}") from None
        self.net.eval()
        outputs = [str(o) for o in (entry.get("outputs") or [])]
        self.provides_lungs = outputs == list(JOINT_OUTPUTS)
        self.short_stack = False

    def _classes(self, ct: Volume, box: tuple[slice, ...] | None, control: RunControl) -> np.ndarray:
        classes = predict_classes(self.net, ct, box, spacing_mm=self.spacing_mm, hu_window=self.hu_window,
                                  roi_size=self.roi_size, device=self._torch_device, control=control)
        self.device = next(self.net.parameters()).device.type  # after an out-of-memory fallback: the CPU
        return classes

    def segment_with_lungs(self, ct: Volume, progress: ProgressCallback | None = None,
                           cancel=None) -> tuple[np.ndarray, np.ndarray]:
        if not self.provides_lungs:
            return super().segment_with_lungs(ct, progress, cancel)
        control = RunControl(progress, cancel)
        density = segment_lungs(ct, control.part(0.0, DENSITY_SHARE, "lungs")) != 0
        axis, _ = ct.patient_axis("SI")
        self.short_stack = ct.shape[axis] * ct.spacing_zyx[axis] < MIN_CONTEXT_MM
        if self.short_stack:
            # A 3D network needs through-plane context: on a single slice or a short stack (key images,
            # thick-slab exports) it finds a fraction of the lesions (Dice 0.25 against the classical engine's
            # 0.90 on one generated CT2 slice, even with the slices mirrored into a 48 mm stack).  The
            # classical engine marks the lesions there, and severity.json says so.
            return density, ClassicalEngine().segment(ct, density.astype(np.uint8),
                                                      *control.part(DENSITY_SHARE, 1.0, "lesions").callbacks())
        classes = self._classes(ct, body_bounding_box(ct), control.part(DENSITY_SHARE, 1.0, "network"))
        net_lungs = clean_lungs(classes >= JOINT_OUTPUTS.index("lung"), ct)
        lesions = (classes == JOINT_OUTPUTS.index("lesion")) & net_lungs
        lungs = fuse_lungs(density, lesions, ct)
        return lungs, lesions & lungs

    def describe(self) -> dict:
        described = {**super().describe(), "architecture": self.entry.get("architecture")}
        if self.short_stack:
            described["short_stack"] = (f"stack thinner than {MIN_CONTEXT_MM:g} mm: lesions by the classical engine, "
                                        "lungs by the density mask")
        return described

    def _segment(self, ct: Volume, lungs: np.ndarray, control: RunControl) -> np.ndarray:
        lung_mask = lungs != 0
        if self.provides_lungs:  # a joint model given someone else's lungs: its lesions near those lungs
            box = body_bounding_box(ct)
            raw = self._classes(ct, box, control) == JOINT_OUTPUTS.index("lesion")
            return keep_near_lungs(raw, lung_mask, ct.spacing_zyx, self.lung_margin_mm)
        raw = predict_lesions(self.net, ct, lung_mask, spacing_mm=self.spacing_mm, hu_window=self.hu_window,
                              roi_size=self.roi_size, device=self._torch_device, control=control,
                              margin_mm=max(10.0, 2 * self.lung_margin_mm))
        # After an out-of-memory fallback the network runs on the CPU: say where it really ran.
        self.device = next(self.net.parameters()).device.type
        return keep_near_lungs(raw, lung_mask, ct.spacing_zyx, self.lung_margin_mm)
