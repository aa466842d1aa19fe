"""The shipped lung-and-lesion U-Net: registry entry, verified weights, what it finds on generated CT.

The figures asserted here are loose floors (the benchmark `benchmarks/model_vs_classical.py` measures the
model); they fail when the weights, their loading, the resampling or the lung fusion break.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covidlesionseg import models, weights
from covidlesionseg.engines.factory import make_engine
from covidlesionseg.engines.unet import MIN_CONTEXT_MM, UNetEngine
from covidlesionseg.metrics import dice
from covidlesionseg.networks import build_network
from covidlesionseg.phantom import generate_phantom
from covidlesionseg.pipeline import run_segmentation

SHIPPED_ID = "covid-unet-compact-1"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COVIDLESIONSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def engine() -> UNetEngine:
    return make_engine(SHIPPED_ID, "cpu")


def test_the_registry_ships_the_model_with_everything_a_user_needs(home: Path) -> None:
    entry = models.get_model(SHIPPED_ID)
    for key in ("architecture", "spacing", "hu_window", "roi_size", "outputs", "sha256", "training", "licence",
                "model_card", "description"):
        assert entry.get(key), key
    assert entry["outputs"] == ["background", "lung", "lesion"]
    path = models.SHIPPED_DIR / entry["file"]
    assert path.stat().st_size <= 50 * 2**20
    assert weights.sha256_file(path) == entry["sha256"]
    assert (REPO / entry["model_card"]).is_file()
    state = weights.load_state_dict(path, entry["sha256"])
    build_network(entry["architecture"], **entry["network"]).load_state_dict(state, strict=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_the_default_stays_classical_until_a_shipped_entry_says_otherwise(home: Path) -> None:
    shipped = json.loads(models.SHIPPED_REGISTRY.read_text())["models"]
    marked = [m["id"] for m in shipped if m.get("default") is True]
    assert models.default_model_id() == (marked[0] if marked else "classical")
    models.set_default(SHIPPED_ID)
    assert models.default_model_id() == SHIPPED_ID


def test_the_model_finds_lungs_and_lesions_on_held_out_generated_ct(engine: UNetEngine) -> None:
    ph = generate_phantom(9150, "CT3", shape=(60, 160, 160), spacing=(2.4, 2.4, 5.0))
    result = run_segmentation(ph.ct, engine, lobes="none")
    assert dice(result.lungs > 0, ph.lungs > 0) > 0.9
    assert dice(result.lesions > 0, ph.lesions > 0) > 0.6
    assert not ((result.lesions > 0) & (result.lungs == 0)).any()
    assert set(np.unique(result.lungs).tolist()) == {0, 1, 2}
    assert result.severity["engine"] == SHIPPED_ID
    assert "short_stack" not in engine.describe()


def test_a_single_slice_hands_the_lesions_to_the_classical_engine(engine: UNetEngine) -> None:
    ph = generate_phantom(9151, "CT2", shape=(60, 160, 160), spacing=(2.4, 2.4, 5.0))
    k = int(np.argmax((ph.lesions > 0).sum(axis=(1, 2))))
    one = ph.ct.like(ph.ct.array)  # geometry of the stack, then one slice of it
    from covidlesionseg.io import Volume

    origin = np.asarray(one.origin) + k * one.spacing[2] * one.direction[:, 2]
    sliced = Volume(ph.ct.array[k:k + 1].copy(), one.spacing, tuple(origin), one.direction)
    result = run_segmentation(sliced, engine, lobes="none")
    assert engine.describe()["short_stack"].startswith(f"stack thinner than {MIN_CONTEXT_MM:g} mm")
    assert dice(result.lesions[0] > 0, ph.lesions[k] > 0) > 0.5
