"""Sliding-window inference: geometry round trip, cropping, cancel, progress, device choice, OOM fallback."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from covidlesionseg.inference import (
    StitchPlan,
    count_windows,
    is_out_of_memory,
    lung_bounding_box,
    normalize_hu,
    predict_lesions,
    resolve_device,
    run_with_oom_fallback,
    stitch_plans,
)
from covidlesionseg.io import InputError, Volume
from covidlesionseg.progress import Cancelled, RunControl

HU_WINDOW = (-1000.0, 400.0)
SPACING_IJK = (0.9, 0.8, 2.5)
LESION_CENTRE_MM = np.array([29.0, 21.0, 33.0])  # in index-scaled mm (i, j, k) from the first voxel
LESION_RADIUS_MM = 5.0
DIRECTIONS = {
    "identity": np.eye(3),
    "flipped": np.diag([-1.0, -1.0, 1.0]),
    "permuted_flipped": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
}


class HUThreshold(torch.nn.Module):
    """A 'network' that marks every voxel above a HU threshold as lesion (logits for 2 classes)."""

    def __init__(self, threshold_hu: float, window: tuple[float, float] = HU_WINDOW) -> None:
        super().__init__()
        self.register_buffer("level", torch.tensor((threshold_hu - window[0]) / (window[1] - window[0])))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        foreground = 200.0 * (x - self.level)
        return torch.cat([-foreground, foreground], dim=1)


def phantom(direction: np.ndarray) -> tuple[Volume, np.ndarray, np.ndarray, np.ndarray]:
    """Soft tissue (40 HU), an ellipsoidal lung (-850 HU) and a spherical lesion (-100 HU) in it."""
    shape = (24, 64, 56)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    x, y, z = i * SPACING_IJK[0], j * SPACING_IJK[1], k * SPACING_IJK[2]
    ct = np.full(shape, 40.0, np.float32)
    lungs = ((x - 25) / 20) ** 2 + ((y - 25) / 21) ** 2 + ((z - 30) / 26) ** 2 <= 1
    ct[lungs] = -850.0
    d2 = (x - LESION_CENTRE_MM[0]) ** 2 + (y - LESION_CENTRE_MM[1]) ** 2 + (z - LESION_CENTRE_MM[2]) ** 2
    lesion = d2 <= LESION_RADIUS_MM**2
    ct[lesion] = -100.0
    near_lesion = d2 <= (LESION_RADIUS_MM + 4.0) ** 2
    return Volume(ct, SPACING_IJK, (10.0, -20.0, 5.0), direction), lungs, lesion, near_lesion


def run(net: torch.nn.Module, ct: Volume, lungs: np.ndarray, control: RunControl | None = None,
        spacing: tuple[float, ...] = (1.5, 1.5, 1.5), margin_mm: float = 5.0) -> np.ndarray:
    return predict_lesions(net, ct, lungs, spacing_mm=spacing, hu_window=HU_WINDOW, roi_size=(16, 16, 16),
                           device="cpu", control=control, margin_mm=margin_mm)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_resampled_prediction_lands_where_the_lesion_is(direction: str) -> None:
    ct, lungs, lesion, near_lesion = phantom(DIRECTIONS[direction])
    # Threshold halfway between lung and lesion HU: linear resampling keeps the boundary in place.
    out = run(HUThreshold(-475.0), ct, lungs)
    assert out.dtype == bool and out.shape == ct.shape
    found = out & near_lesion
    dice = 2 * np.count_nonzero(found & lesion) / (np.count_nonzero(found) + np.count_nonzero(lesion))
    assert dice > 0.85
    centre_found = ct.lps_points(np.argwhere(found)).mean(axis=0)
    centre_true = ct.lps_points(np.argwhere(lesion)).mean(axis=0)
    assert np.linalg.norm(centre_found - centre_true) < 0.5  # mm, voxels are 0.8-2.5 mm


def test_voxels_outside_the_lung_box_are_never_lesion() -> None:
    ct, lungs, _lesion, _near = phantom(DIRECTIONS["flipped"])
    margin = 5.0
    out = run(HUThreshold(-300.0), ct, lungs, margin_mm=margin)
    box = lung_bounding_box(lungs, ct.spacing_zyx, margin)
    inside = np.zeros(ct.shape, dtype=bool)
    inside[box] = True
    assert not out[~inside].any()  # soft tissue there is above the threshold, yet never segmented
    assert out[inside & ~lungs].any()  # the network does see the margin around the lungs


def test_same_spacing_needs_no_resampling_and_is_exact() -> None:
    ct, lungs, _lesion, _near = phantom(DIRECTIONS["permuted_flipped"])
    out = run(HUThreshold(-300.0), ct, lungs, spacing=ct.spacing)
    box = lung_bounding_box(lungs, ct.spacing_zyx, 5.0)
    expected = np.zeros(ct.shape, dtype=bool)
    expected[box] = ct.array[box] > -300.0
    np.testing.assert_array_equal(out, expected)


def test_empty_lungs_give_an_empty_mask_and_finish() -> None:
    ct, lungs, _lesion, _near = phantom(np.eye(3))
    seen: list[float] = []
    net = HUThreshold(-300.0)
    out = run(net, ct, np.zeros_like(lungs), RunControl(progress=lambda f, _m: seen.append(f)))
    assert not out.any() and net.calls == 0 and seen[-1] == 1.0


def test_progress_goes_from_zero_to_one_without_going_back() -> None:
    ct, lungs, _lesion, _near = phantom(np.eye(3))
    seen: list[float] = []
    net = HUThreshold(-300.0)
    run(net, ct, lungs, RunControl(progress=lambda f, _m: seen.append(f)))
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert all(b >= a for a, b in itertools.pairwise(seen))
    assert len(set(seen)) >= net.calls  # one step per window at least
    assert net.calls > 4


def test_cancel_stops_between_windows() -> None:
    ct, lungs, _lesion, _near = phantom(np.eye(3))
    net = HUThreshold(-300.0)
    with pytest.raises(Cancelled):
        run(net, ct, lungs, RunControl(cancel=lambda: net.calls >= 2))
    assert net.calls == 2
    full = HUThreshold(-300.0)
    run(full, ct, lungs)
    assert full.calls > 2  # the cancelled run really stopped early


def test_cancel_before_start_runs_nothing() -> None:
    ct, lungs, _lesion, _near = phantom(np.eye(3))
    net = HUThreshold(-300.0)
    with pytest.raises(Cancelled):
        run(net, ct, lungs, RunControl(cancel=lambda: True))
    assert net.calls == 0


def test_window_count_matches_monai() -> None:
    net = HUThreshold(-300.0)
    image = torch.zeros(1, 1, 21, 37, 30)
    sliding_window_inference(image, (16, 16, 16), 1, net, overlap=0.25)
    assert count_windows((21, 37, 30), (16, 16, 16), 0.25) == net.calls
    net.calls = 0
    sliding_window_inference(torch.zeros(1, 1, 9, 40, 16), (16, 16, 16), 1, net, overlap=0.5)
    assert count_windows((9, 40, 16), (16, 16, 16), 0.5) == net.calls


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cuda"):
            resolve_device("cuda")
        with pytest.raises(InputError, match="cpu"):
            resolve_device("cuda:1")


def test_normalize_hu_and_bounding_box() -> None:
    hu = np.array([-3000.0, -1000.0, -300.0, 400.0, 3000.0], np.float32)
    np.testing.assert_allclose(normalize_hu(hu, HU_WINDOW), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    with pytest.raises(InputError):
        normalize_hu(hu, (100.0, 100.0))
    mask = np.zeros((20, 30, 40), dtype=bool)
    mask[10, 15, 20] = True
    box = lung_bounding_box(mask, (2.5, 1.0, 0.5), 2.0)  # 2 mm = 1 slice, 2 rows, 4 columns
    assert box == (slice(9, 12), slice(13, 18), slice(16, 25))
    assert lung_bounding_box(np.zeros_like(mask), (1.0, 1.0, 1.0), 2.0) is None


# --- the out-of-memory fallback, exercised with real exception objects -------------------------------
CPU = torch.device("cpu")


def test_stitch_plans_for_cuda_and_cpu() -> None:
    cuda = torch.device("cuda")
    plans = stitch_plans(cuda)
    assert [(p.sw_device.type, p.device.type) for p in plans] == [("cuda", "cuda"), ("cuda", "cpu"), ("cpu", "cpu")]
    assert [(p.sw_device.type, p.device.type) for p in stitch_plans(CPU)] == [("cpu", "cpu")]


def test_out_of_memory_is_recognised() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("patch size (96, 96, 96) ... Seems to be OOM.") from inner
    except RuntimeError as wrapped:
        assert is_out_of_memory(wrapped)  # MONAI wraps OOM while building its importance map
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(Cancelled("cancelled by the user"))


def test_fallback_retries_with_the_next_plan_after_out_of_memory() -> None:
    plans = [StitchPlan(CPU, CPU, "first"), StitchPlan(CPU, CPU, "second"), StitchPlan(CPU, CPU, "third")]
    net = HUThreshold(0.0)
    image = torch.rand(1, 1, 20, 20, 20)
    tried: list[str] = []
    told: list[str] = []

    def attempt(plan: StitchPlan) -> torch.Tensor:
        tried.append(plan.label)
        if plan.label == "first":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return sliding_window_inference(image, (16, 16, 16), 1, net, sw_device=plan.sw_device, device=plan.device)

    out = run_with_oom_fallback(attempt, plans, on_fallback=lambda plan, msg: told.append(f"{plan.label}: {msg}"))
    assert tried == ["first", "second"]
    assert len(told) == 1 and told[0].startswith("second:") and "out of memory" in told[0]
    torch.testing.assert_close(out, net(image))


def test_fallback_gives_up_after_the_last_plan_and_passes_other_errors_on() -> None:
    plans = [StitchPlan(CPU, CPU, "a"), StitchPlan(CPU, CPU, "b")]
    tried: list[str] = []

    def always_oom(plan: StitchPlan) -> None:
        tried.append(plan.label)
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_with_oom_fallback(always_oom, plans)
    assert tried == ["a", "b"]

    for error in (ValueError("bad input"), Cancelled("cancelled by the user")):
        tried.clear()

        def fails(plan: StitchPlan, error: Exception = error) -> None:
            tried.append(plan.label)
            raise error

        with pytest.raises(type(error)):
            run_with_oom_fallback(fails, plans)
        assert tried == ["a"]


def test_bad_arguments_are_refused() -> None:
    ct, lungs, _lesion, _near = phantom(np.eye(3))
    net = HUThreshold(-300.0)
    with pytest.raises(InputError, match="shape"):
        run(net, ct, lungs[:-1])
    with pytest.raises(InputError, match="spacing"):
        run(net, ct, lungs, spacing=(1.0, 0.0, 1.0))
