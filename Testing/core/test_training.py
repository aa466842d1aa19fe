"""The trainer and its data: painted lesions, the training grid, checkpoints, resume, fine-tuning from the CLI.

Everything runs for real on small generated CT with a tiny network (a few steps on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from covidlesionseg import models
from covidlesionseg.io import InputError
from covidlesionseg.networks import build_network
from covidlesionseg.phantom import generate_phantom
from covidlesionseg.training.cases import (
    BACKGROUND,
    LESION,
    LUNG,
    TRAIN_SPACING,
    class_map,
    labelled_case,
    load_case,
    save_case,
    to_training_grid,
)
from covidlesionseg.training.cases import Case as TrainingCase
from covidlesionseg.training.synthesis import paint_lesions
from covidlesionseg.training.trainer import BEST, CHECKPOINT, CURVE, LOG, RUN, TrainConfig, Trainer, evaluate_cases

TINY = {"in_channels": 1, "out_channels": 3, "channels": [4, 8, 16], "num_res_units": 1}


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(network=dict(TINY), max_steps=6, batch_size=1, patch_schedule=((0.0, (16, 32, 32)),),
                       validate_every=3, checkpoint_every=2, threads=1, seed=3)
    return replace(base, **changes)


@pytest.fixture(scope="module")
def small_phantom():
    return generate_phantom(5, "CT0", shape=(40, 96, 96), spacing=(4.0, 4.0, 7.5), noise_hu=10.0)


@pytest.fixture(scope="module")
def case_files(tmp_path_factory, small_phantom) -> list[Path]:
    """Three cached training cases: painted lesions on the small generated chest."""
    folder = tmp_path_factory.mktemp("cases")
    ph = small_phantom
    paths = []
    for n in range(3):
        rng = np.random.default_rng(n)
        out = paint_lesions(ph.ct, ph.lungs > 0, rng, burden=0.2)
        image, classes = to_training_grid(ph.ct.like(out.hu), class_map(out.lesion, out.lungs), spacing=(4, 4, 4))
        paths.append(save_case(folder, TrainingCase(f"gen{n:05d}", image, classes, {"n": n})))
    return paths


# --- data -----------------------------------------------------------------------------------------------
def test_painted_lesions_lie_in_the_lungs_and_are_denser(small_phantom) -> None:
    ph = small_phantom
    lungs = ph.lungs > 0
    out = paint_lesions(ph.ct, lungs, np.random.default_rng(11), burden=0.3, lookalikes=1.0)
    assert out.lesion.any() and out.patterns
    assert not (out.lesion & ~out.lungs).any(), "a lesion voxel outside the lungs"
    share = out.lesion.sum() / out.lungs.sum()
    assert 0.05 < share < 0.6, f"burden 0.3 painted as {share:.2f} of the lungs"
    healthy = out.lungs & ~out.lesion
    assert np.median(out.hu[out.lesion]) > np.median(out.hu[healthy]) + 150
    changed = np.abs(out.hu - ph.ct.array) > 1
    assert (changed & ~out.lesion).any(), "look-alikes change the CT without being labelled lesion"


def test_no_burden_paints_nothing(small_phantom) -> None:
    ph = small_phantom
    out = paint_lesions(ph.ct, ph.lungs > 0, np.random.default_rng(1), burden=0.0, lookalikes=0.0)
    assert not out.lesion.any()
    np.testing.assert_array_equal(out.lungs, ph.lungs > 0)


def test_training_grid_keeps_classes_and_crops_to_the_body(small_phantom) -> None:
    ph = small_phantom
    classes = class_map(ph.lungs > 0, ph.lungs > 0)  # every lung voxel a lesion: class 2 only
    image, cls = to_training_grid(ph.ct, classes, spacing=TRAIN_SPACING)
    assert image.dtype == np.int16 and cls.shape == image.shape
    assert set(np.unique(cls).tolist()) == {BACKGROUND, LESION}
    extent_mm = np.array(ph.ct.shape[::-1]) * np.array(ph.ct.spacing)
    assert all(n <= e / s + 2 for n, e, s in zip(cls.shape[::-1], extent_mm, TRAIN_SPACING))
    ml = cls.astype(bool).sum() * np.prod(TRAIN_SPACING) / 1000
    truth_ml = (ph.lungs > 0).sum() * ph.ct.voxel_ml
    assert abs(ml - truth_ml) / truth_ml < 0.05


def test_lesion_only_labels_get_lungs_from_the_density_mask(tmp_path: Path, small_phantom) -> None:
    ph = small_phantom
    image_path, label_path = tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz"
    sitk.WriteImage(ph.ct.to_sitk(ph.ct.array.astype(np.int16)), str(image_path))
    lesion = np.zeros(ph.ct.shape, np.uint8)
    lesion[ph.lungs > 0] = 0
    lung_voxels = np.argwhere(ph.lungs > 0)
    k, j, i = lung_voxels[len(lung_voxels) // 2]
    lesion[k, j - 2:j + 3, i - 2:i + 3] = 1
    sitk.WriteImage(ph.ct.to_sitk(lesion), str(label_path))
    plain = labelled_case(image_path, label_path, {0: BACKGROUND, 1: LESION}, "a")
    assert set(np.unique(plain.classes).tolist()) <= {BACKGROUND, LESION}
    filled = labelled_case(image_path, label_path, {0: BACKGROUND, 1: LESION}, "b", lung_labelled=False)
    assert (filled.classes == LUNG).sum() > 100 * (filled.classes == LESION).sum() > 0


# --- trainer --------------------------------------------------------------------------------------------
def test_trainer_writes_its_run_folder_and_resumes_exactly(tmp_path: Path, case_files: list[Path]) -> None:
    train, val = case_files[:2], case_files[2:]
    straight = Trainer(tmp_path / "a", train, val, tiny_config(), device="cpu", log=lambda _m: None)
    outcome = straight.run()
    assert outcome["finished"] and outcome["step"] == 6
    for name in (CHECKPOINT, BEST, LOG, CURVE, RUN):
        assert (tmp_path / "a" / name).is_file(), name
    state = torch.load(tmp_path / "a" / CHECKPOINT, map_location="cpu", weights_only=True)
    assert state["step"] == 6
    rows = [json.loads(line) for line in (tmp_path / "a" / LOG).read_text().splitlines()]
    assert [r["step"] for r in rows if "mean_lesion_dice" in r] == [3, 6]

    first = Trainer(tmp_path / "b", train, val, tiny_config(), device="cpu", log=lambda _m: None)
    first.run(max_steps=4)
    del first
    messages: list[str] = []
    resumed = Trainer(tmp_path / "b", train, val, tiny_config(), device="cpu", log=messages.append)
    assert any("resumed at step 4" in m for m in messages)
    resumed.run()
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), f"{name} differs after resuming"


def test_trainer_refuses_other_settings_in_a_run_folder(tmp_path: Path, case_files: list[Path]) -> None:
    Trainer(tmp_path / "r", case_files[:2], case_files[2:], tiny_config(), device="cpu",
            log=lambda _m: None).run(max_steps=2)
    with pytest.raises(InputError, match="other settings"):
        Trainer(tmp_path / "r", case_files[:2], case_files[2:], tiny_config(max_lr=1e-2), device="cpu")


def test_evaluation_scores_a_perfect_network_one(case_files: list[Path]) -> None:
    case = load_case(case_files[0])

    class Oracle(torch.nn.Module):
        def forward(self, x):  # one-hot logits of the truth, whatever the window
            return self.logits[..., : x.shape[2], : x.shape[3], : x.shape[4]]

    oracle = Oracle()
    onehot = torch.nn.functional.one_hot(torch.from_numpy(case.classes.astype(np.int64)), 3).permute(3, 0, 1, 2)
    oracle.logits = (onehot[None].float() * 20.0)
    result = evaluate_cases(oracle, [case], case.classes.shape, torch.device("cpu"))
    assert result["mean_lesion_dice"] == pytest.approx(1.0) and result["mean_lung_dice"] == pytest.approx(1.0)


# --- fine-tuning from the command line ------------------------------------------------------------------
def _dataset(folder: Path, phantom, n: int) -> Path:
    """An nnU-Net v2 raw dataset of ``n`` painted cases (0 background, 1 lung, 2 lesion)."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for c in range(n):
        out = paint_lesions(phantom.ct, phantom.lungs > 0, np.random.default_rng(100 + c), burden=0.25)
        sitk.WriteImage(phantom.ct.to_sitk(out.hu.astype(np.int16)), str(folder / "imagesTr" / f"case{c}_0000.nii.gz"))
        sitk.WriteImage(phantom.ct.to_sitk(class_map(out.lesion, out.lungs)),
                        str(folder / "labelsTr" / f"case{c}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "lung": 1, "lesion": 2},
        "numTraining": n, "file_ending": ".nii.gz"}))
    return folder


def test_train_init_fine_tunes_a_registered_model_into_a_new_version(tmp_path: Path, small_phantom) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "COVIDLESIONSEG_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    torch.manual_seed(0)
    weights = tmp_path / "parent.pt"
    torch.save(build_network("compact_res_unet", **TINY).state_dict(), weights)
    os.environ["COVIDLESIONSEG_HOME"] = str(home)
    try:
        models.register_model({"id": "tiny-joint", "architecture": "compact_res_unet", "network": dict(TINY),
                               "outputs": ["background", "lung", "lesion"], "spacing": [4.0, 4.0, 4.0],
                               "hu_window": [-1024.0, 600.0], "roi_size": [16, 32, 32]}, weights)
    finally:
        del os.environ["COVIDLESIONSEG_HOME"]
    data = _dataset(tmp_path / "Dataset501_Test", small_phantom, 5)
    cmd = [sys.executable, "-m", "covidlesionseg", "train", "-o", str(tmp_path / "run"), "--init", "tiny-joint",
           "--data", str(data), "--max-steps", "3", "--id", "tiny-joint-ft", "--device", "cpu", "--threads", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "before fine-tuning" in done.stdout + done.stderr
    registry = json.loads((home / models.REGISTRY_FILE).read_text())["models"]
    new = next(m for m in registry if m["id"] == "tiny-joint-ft")
    assert new["parent"] == "tiny-joint"
    assert new["metrics"]["validation_before"]["cases"] >= 1
    assert new["metrics"]["validation_after"]["cases"] == new["metrics"]["validation_before"]["cases"]
    assert new["training"]["data"]["cases"] == 5 and new["training"]["steps"] == 3
    assert hashlib.sha256((home / "weights" / "tiny-joint-ft.pt").read_bytes()).hexdigest() == new["sha256"]
    config = home / models.CONFIG_FILE
    assert not config.exists() or json.loads(config.read_text()).get("default") != "tiny-joint-ft"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=None)
    assert again.returncode == 2 and "already registered" in again.stderr
