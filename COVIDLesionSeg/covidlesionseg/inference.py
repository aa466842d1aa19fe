"""Sliding-window inference of a segmentation network on a CT, from the CT's grid and back to it.

``predict_classes`` is the one path: crop the CT (to the body for the lung-and-lesion network, to the lungs
plus a margin for a lesion-only network), resample the crop to the model's fixed voxel spacing (linear),
window and normalise HU (``normalize_hu``, the one place training shares), MONAI sliding-window inference
with Gaussian blending and softmax, then each class probability is resampled linearly back onto the crop of
the input grid and the argmax pasted into a full-size class map.  ``predict_lesions`` is the lesion-only
view of it (lesion = any class but background).

Arrays go to the network in numpy order ``(k, j, i)`` as channel 1 of ``(N, 1, k, j, i)``.
Mixed precision (``torch.autocast``) is used on CUDA only.  When CUDA runs out of memory, the
stitching moves to the CPU (windows still run on the GPU); if that fails too, everything runs on
the CPU (``stitch_plans`` / ``run_with_oom_fallback``).
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import SimpleITK as sitk
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from covidlesionseg.io import InputError, Volume
from covidlesionseg.masks import bounding_box
from covidlesionseg.progress import RunControl

log = logging.getLogger(__name__)

T = TypeVar("T")
AIR_HU = -1024.0
BODY_HU = -500.0
"""The body (and the table beneath it) is denser than this; networks see its box, in training and inference."""
SPACING_TOL_MM = 1e-3
# Progress shares of the stages: preparing the crop, running the windows, putting the result back.
_PREPARE, _WINDOWS = 0.1, 0.8


# --- devices --------------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cpu"``; ``"cuda"``/``"cuda:N"`` only when present."""
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            reason = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise InputError(f"device {name!r} was asked for but {reason}; use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} does not exist; {torch.cuda.device_count()} CUDA device(s) visible")
        return dev
    raise InputError(f"unknown device {device!r}; use auto, cpu or cuda")


@dataclass(frozen=True)
class StitchPlan:
    """Where windows run (``sw_device``) and where the full-size output is stitched (``device``)."""

    sw_device: torch.device
    device: torch.device
    label: str


def stitch_plans(device: torch.device) -> list[StitchPlan]:
    """Attempts in order: all on CUDA, windows on CUDA + stitching on CPU, all on CPU."""
    cpu = torch.device("cpu")
    if device.type != "cuda":
        return [StitchPlan(cpu, cpu, "cpu")]
    return [StitchPlan(device, device, "cuda"),
            StitchPlan(device, cpu, "cuda windows, cpu stitching"),
            StitchPlan(cpu, cpu, "cpu")]


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA/CPU out-of-memory error, also when it is the cause of another error."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, torch.OutOfMemoryError) or (
            isinstance(seen, RuntimeError) and "out of memory" in str(seen).lower()
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_oom_fallback(
    run_plan: Callable[[StitchPlan], T],
    plans: Sequence[StitchPlan],
    on_fallback: Callable[[StitchPlan, str], None] | None = None,
) -> T:
    """Run ``run_plan`` with the first plan; on out-of-memory, free memory and try the next one.

    Any other error (``Cancelled`` included) propagates at once; the last plan's error propagates.
    ``on_fallback(next_plan, message)`` is told before each retry.  The failed attempt's exception
    (and with it its traceback's tensors) is dropped before the CUDA cache is emptied.
    """
    if not plans:
        raise ValueError("no stitch plan given")
    for n, plan in enumerate(plans):
        try:
            return run_plan(plan)
        except Exception as exc:
            if not is_out_of_memory(exc) or n == len(plans) - 1:
                raise
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            message = f"out of memory with {plan.label} ({first_line}); retrying with {plans[n + 1].label}"
        log.warning("%s", message)
        _release_memory()
        if on_fallback is not None:
            on_fallback(plans[n + 1], message)
    raise AssertionError("unreachable")


# --- geometry ---------------------------------------------------------------------------------
def lung_bounding_box(lungs: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float) -> tuple[slice, ...] | None:
    """Numpy slices of the mask's bounding box grown by ``margin_mm`` on each side (None when empty)."""
    return bounding_box(lungs, [math.ceil(margin_mm / s) for s in spacing_zyx[:3]])


def _crop_volume(ct: Volume, box: tuple[slice, ...]) -> Volume:
    start_zyx = [s.start for s in box]
    origin = ct.lps_points(np.array(start_zyx))[0]
    return Volume(np.ascontiguousarray(ct.array[box]), ct.spacing, tuple(origin), ct.direction.copy())


def resampled_grid(crop: Volume, spacing_mm: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Size (i, j, k) and origin of a grid with ``spacing_mm`` covering the crop's extent, centred on it."""
    size_ijk = np.array(crop.shape[::-1], dtype=float)
    old = np.asarray(crop.spacing)
    new = np.asarray(spacing_mm, dtype=float)
    n_new = np.maximum(1, np.ceil(size_ijk * old / new - 1e-6)).astype(int)
    centre_index = (size_ijk - 1) / 2.0
    centre = np.asarray(crop.origin) + crop.direction @ (centre_index * old)
    origin = centre - crop.direction @ ((n_new - 1) / 2.0 * new)
    return tuple(int(n) for n in n_new), tuple(float(o) for o in origin)


def resample_image(image: sitk.Image, size: Sequence[int], spacing: Sequence[float], origin: Sequence[float],
                   direction: np.ndarray, interpolator: int, default: float,
                   pixel: int = sitk.sitkFloat32) -> sitk.Image:
    """``image`` resampled onto the grid (size, spacing, origin, direction), outside filled with ``default``."""
    return sitk.Resample(image, [int(s) for s in size], sitk.Transform(), interpolator, [float(o) for o in origin],
                         [float(s) for s in spacing], tuple(float(d) for d in np.asarray(direction).ravel()),
                         float(default), pixel)


def normalize_hu(hu: np.ndarray, hu_window: Sequence[float]) -> np.ndarray:
    """Clip HU to ``hu_window`` (lo, hi) and scale linearly to [0, 1] (float32)."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    if not hi > lo:
        raise InputError(f"HU window must have lo < hi, got {tuple(hu_window)}")
    out = np.clip(hu, lo, hi).astype(np.float32, copy=False)
    out -= lo
    out *= 1.0 / (hi - lo)
    return out


def count_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Number of windows MONAI's ``sliding_window_inference`` runs over an image (after its padding)."""
    size = [max(int(s), int(r)) for s, r in zip(image_size, roi_size)]
    interval = [int(r) if r == s else max(1, int(r * (1 - overlap))) for s, r in zip(size, roi_size)]
    return len(dense_patch_slices(size, [int(r) for r in roi_size], interval))


# --- inference ----------------------------------------------------------------------------------
def _sliding_window_softmax(
    net: torch.nn.Module, image: torch.Tensor, roi_size: Sequence[int], overlap: float, plan: StitchPlan,
    amp: bool, control: RunControl, progress_span: tuple[float, float], sw_batch_size: int,
) -> np.ndarray:
    """Class probabilities (softmax) for a (1, 1, D, H, W) CPU tensor, as a float32 (C, D, H, W) array."""
    net.to(plan.sw_device)
    total = count_windows(image.shape[2:], roi_size, overlap)
    done = 0
    start, span = progress_span
    use_amp = amp and plan.sw_device.type == "cuda"

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        nonlocal done
        control.check()
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
            logits = net(windows)
        done += windows.shape[0]
        control.report(start + span * min(1.0, done / total), f"window {min(done, total)}/{total} ({plan.label})")
        return logits.float()

    with torch.inference_mode():
        logits = sliding_window_inference(image, list(roi_size), sw_batch_size, predictor, overlap=overlap,
                                          mode="gaussian", sw_device=plan.sw_device, device=plan.device)
        control.check()
        probability = torch.softmax(logits, dim=1)[0]
        del logits
        return probability.to(device="cpu", dtype=torch.float32).numpy()


class _MonotonicControl(RunControl):
    """A RunControl whose progress never goes back (a fallback retry restarts the windows)."""

    def __init__(self, inner: RunControl) -> None:
        super().__init__(inner.progress, inner.cancel)
        self._best = 0.0

    def report(self, fraction: float, message: str = "") -> None:
        self._best = max(self._best, float(fraction))
        super().report(self._best, message)


def body_bounding_box(ct: Volume, margin_mm: float = 5.0, body_hu: float = BODY_HU) -> tuple[slice, ...] | None:
    """Box of the voxels denser than ``body_hu`` (the body, and the table beneath it) grown by ``margin_mm``."""
    return bounding_box(ct.array > body_hu, [math.ceil(margin_mm / s) for s in ct.spacing_zyx])


def predict_classes(
    net: torch.nn.Module,
    ct: Volume,
    box: tuple[slice, ...] | None,
    *,
    spacing_mm: Sequence[float],
    hu_window: Sequence[float],
    roi_size: Sequence[int],
    device: str | torch.device = "auto",
    control: RunControl | None = None,
    overlap: float = 0.25,
    amp: bool = True,
    sw_batch_size: int = 1,
) -> np.ndarray:
    """Class map (uint8, argmax of the softmax) on ``ct``'s grid from a segmentation network, 0 outside ``box``.

    The crop ``box`` of the CT is resampled to the model's ``spacing_mm`` (index order i, j, k, linear),
    windowed and normalised (``normalize_hu``), run through MONAI's sliding-window inference with Gaussian
    blending (``roi_size`` in numpy order k, j, i), and each class probability is resampled linearly back to
    the crop before the argmax, so borders are as smooth as the CT's own grid allows.  The network is moved
    to the device that ran it (the CPU after a full out-of-memory fallback).  Raises ``Cancelled`` when
    ``control`` asks to stop.
    """
    control = _MonotonicControl(control or RunControl())
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0 or len(roi_size) != 3 or min(roi_size) < 1:
        raise InputError(f"bad model geometry: spacing {tuple(spacing_mm)} mm, window {tuple(roi_size)}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"window overlap must be in [0, 1), got {overlap}")
    torch_device = resolve_device(device)
    result = np.zeros(ct.shape, dtype=np.uint8)
    control.report(0.0, "preparing")
    if box is None:
        control.report(1.0, "nothing to segment")
        return result

    crop = _crop_volume(ct, box)
    same_spacing = np.allclose(crop.spacing, spacing_mm, atol=SPACING_TOL_MM)
    if same_spacing:
        hu = crop.array
    else:
        size, origin = resampled_grid(crop, spacing_mm)
        image = resample_image(crop.to_sitk(crop.array.astype(np.float32, copy=False)), size, spacing_mm, origin,
                          crop.direction, sitk.sitkLinear, AIR_HU)
        hu = sitk.GetArrayViewFromImage(image)
    tensor = torch.from_numpy(normalize_hu(hu, hu_window))[None, None]
    control.check()
    control.report(_PREPARE, f"running the network on {tuple(tensor.shape[2:])} voxels")

    net.eval()

    def run(plan: StitchPlan) -> np.ndarray:
        return _sliding_window_softmax(net, tensor, roi_size, overlap, plan, amp, control,
                                       (_PREPARE, _WINDOWS), sw_batch_size)

    def fallback(plan: StitchPlan, message: str) -> None:
        control.report(_PREPARE, message)

    probability = run_with_oom_fallback(run, stitch_plans(torch_device), fallback)
    control.check()
    control.report(_PREPARE + _WINDOWS, "resampling to the CT grid")

    if same_spacing:
        labels_crop = probability.argmax(0).astype(np.uint8)
    else:
        best = labels_crop = None
        for c in range(probability.shape[0]):
            channel = sitk.GetImageFromArray(probability[c])
            channel.SetSpacing([float(s) for s in spacing_mm])
            channel.SetOrigin(origin)
            channel.SetDirection(tuple(float(d) for d in crop.direction.ravel()))
            back = sitk.GetArrayFromImage(resample_image(channel, crop.shape[::-1], crop.spacing, crop.origin,
                                                    crop.direction, sitk.sitkLinear, 1.0 if c == 0 else 0.0))
            if best is None:
                best, labels_crop = back, np.zeros(back.shape, np.uint8)
            else:
                better = back > best
                labels_crop[better] = c
                np.maximum(best, back, out=best)
            control.check()
    result[box] = labels_crop
    control.report(1.0, "done")
    return result


def predict_lesions(
    net: torch.nn.Module,
    ct: Volume,
    lungs: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    hu_window: Sequence[float],
    roi_size: Sequence[int],
    device: str | torch.device = "auto",
    control: RunControl | None = None,
    overlap: float = 0.25,
    amp: bool = True,
    margin_mm: float = 10.0,
    sw_batch_size: int = 1,
) -> np.ndarray:
    """Boolean lesion mask on ``ct``'s grid from a lesion network (class 0 = background, any other = lesion).

    ``lungs`` is any mask/label map on ``ct``'s grid (nonzero = lung), whose bounding box grown by
    ``margin_mm`` is what the network sees; voxels outside that box are False.
    """
    lungs = np.asarray(lungs)
    if lungs.shape != ct.shape:
        raise InputError(f"lung mask shape {lungs.shape} differs from the CT's {ct.shape}")
    box = lung_bounding_box(lungs != 0, ct.spacing_zyx, margin_mm)
    classes = predict_classes(net, ct, box, spacing_mm=spacing_mm, hu_window=hu_window, roi_size=roi_size,
                              device=device, control=control, overlap=overlap, amp=amp, sw_batch_size=sw_batch_size)
    return classes != 0
