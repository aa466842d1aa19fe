"""Model registry, checksummed weights (fetch, cache, weights_only), engines made from the registry (factory)."""

from __future__ import annotations

import hashlib
import itertools
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from covidlesionseg import models, weights
from covidlesionseg.engines.base import LesionEngine
from covidlesionseg.engines.factory import make_engine
from covidlesionseg.engines.unet import LUNG_MARGIN_MM, UNetEngine, keep_near_lungs
from covidlesionseg.io import InputError, Volume
from covidlesionseg.networks import build_network

TINY_NET = {"channels": [4, 8, 16], "num_res_units": 1}


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("COVIDLESIONSEG_HOME", str(folder))
    return folder


def tiny_entry(model_id: str = "tiny-unet", **extra: object) -> dict:
    return {"id": model_id, "architecture": "compact_res_unet", "network": dict(TINY_NET), "spacing": [2.0, 2.0, 2.0],
            "hu_window": [-1000.0, 400.0], "roi_size": [16, 16, 16], "description": "test model", **extra}


def saved_tiny_weights(path: Path, seed: int = 0) -> str:
    torch.manual_seed(seed)
    return weights.save_weights(build_network("compact_res_unet", **TINY_NET).state_dict(), path)


class WritesMarker:
    """Unpickling this would create a file: what a malicious 'weights' file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --- places, listing, default ------------------------------------------------------------------------------
def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVIDLESIONSEG_HOME", str(tmp_path / "a"))
    assert models.user_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("COVIDLESIONSEG_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.user_cache_dir() == tmp_path / "xdg" / "covidlesionseg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert models.user_cache_dir() == tmp_path / "user" / ".cache" / "covidlesionseg"


def test_list_models_has_classical_and_exactly_one_default(home: Path) -> None:
    listed = models.list_models()
    classical = [m for m in listed if m["id"] == "classical"]
    assert len(classical) == 1
    assert classical[0]["architecture"] == "classical" and classical[0]["sha256"] is None
    assert sum(m["default"] for m in listed) == 1 and classical[0]["default"]
    assert all(set(m) == {"id", "architecture", "sha256", "parent", "metrics", "default"} for m in listed)
    shipped = json.loads(models.SHIPPED_REGISTRY.read_text())
    assert "classical" in [m["id"] for m in shipped["models"]]


def test_set_default_persists_and_refuses_unknown_ids(home: Path, tmp_path: Path) -> None:
    saved_tiny_weights(tmp_path / "w.pt")
    models.register_model(tiny_entry(), tmp_path / "w.pt")
    assert models.default_model_id() == "classical"  # registering never changes the default
    models.set_default("tiny-unet")
    assert json.loads((home / models.CONFIG_FILE).read_text())["default"] == "tiny-unet"
    listed = models.list_models()
    assert [m["id"] for m in listed if m["default"]] == ["tiny-unet"]
    with pytest.raises(InputError, match="classical"):
        models.set_default("nope")
    assert models.default_model_id() == "tiny-unet"
    models.set_default("classical")
    assert [m["id"] for m in models.list_models() if m["default"]] == ["classical"]


def test_default_falls_back_to_classical_when_its_model_is_gone(home: Path) -> None:
    home.mkdir(parents=True)
    (home / models.CONFIG_FILE).write_text(json.dumps({"default": "deleted-model"}))
    assert models.default_model_id() == "classical"
    assert [m["id"] for m in models.list_models() if m["default"]] == ["classical"]


def test_register_model_round_trip(home: Path, tmp_path: Path) -> None:
    sha = saved_tiny_weights(tmp_path / "w.pt")
    assert sha == hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()
    stored = models.register_model(tiny_entry(parent="classical", metrics={"dice": 0.5}), tmp_path / "w.pt")
    assert stored["sha256"] == sha
    cached = home / models.WEIGHTS_DIR / stored["file"]
    assert cached.read_bytes() == (tmp_path / "w.pt").read_bytes()
    got = models.get_model("tiny-unet")
    assert got["sha256"] == sha and got["parent"] == "classical" and got["metrics"] == {"dice": 0.5}
    assert got["network"] == TINY_NET and got["roi_size"] == [16, 16, 16]
    listed = {m["id"]: m for m in models.list_models()}
    assert listed["tiny-unet"]["sha256"] == sha and listed["tiny-unet"]["architecture"] == "compact_res_unet"
    on_disk = json.loads((home / models.REGISTRY_FILE).read_text())
    assert [m["id"] for m in on_disk["models"]] == ["tiny-unet"]
    assert not list((home / models.WEIGHTS_DIR).glob("*.part"))


def test_register_model_refuses_bad_entries(home: Path, tmp_path: Path) -> None:
    saved_tiny_weights(tmp_path / "w.pt")
    models.register_model(tiny_entry(), tmp_path / "w.pt")
    with pytest.raises(InputError, match="already registered"):
        models.register_model(tiny_entry(), tmp_path / "w.pt")
    with pytest.raises(InputError, match="already registered"):
        models.register_model(tiny_entry("classical"), tmp_path / "w.pt")
    with pytest.raises(InputError, match="architecture"):
        models.register_model(tiny_entry("x1", architecture="vnet"), tmp_path / "w.pt")
    with pytest.raises(InputError, match="model id"):
        models.register_model(tiny_entry("../evil"), tmp_path / "w.pt")
    with pytest.raises(InputError, match="hu_window"):
        models.register_model(tiny_entry("x2", hu_window=[400, -1000]), tmp_path / "w.pt")
    with pytest.raises(InputError, match="checksum mismatch"):
        models.register_model(tiny_entry("x3", sha256="0" * 64), tmp_path / "w.pt")
    with pytest.raises(InputError, match="not found"):
        models.register_model(tiny_entry("x4"), tmp_path / "missing.pt")
    shipped = [m["id"] for m in json.loads(models.SHIPPED_REGISTRY.read_text())["models"]]
    assert [m["id"] for m in models.list_models()] == [*shipped, "tiny-unet"]  # shipped first, then the user's


# --- checksums, fetching, loading ----------------------------------------------------------------------
def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # spans several read chunks
    (tmp_path / "blob").write_bytes(data)
    assert weights.sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_fetch_from_file_url_then_cache_hit(tmp_path: Path) -> None:
    source = tmp_path / "published" / "model.pt"
    source.parent.mkdir()
    sha = saved_tiny_weights(source)
    entry = {"id": "m", "sha256": sha, "source": source.as_uri(), "file": "m.pt"}
    seen: list[float] = []
    cache = tmp_path / "cache"
    path = weights.fetch_weights(entry, cache_dir=cache, progress=lambda f, _m: seen.append(f))
    assert path == cache / models.WEIGHTS_DIR / "m.pt"
    assert path.read_bytes() == source.read_bytes()
    assert seen and seen[-1] == 1.0 and all(b >= a for a, b in itertools.pairwise(seen))
    source.unlink()  # the second fetch must not need the source
    assert weights.fetch_weights(entry, cache_dir=cache) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pt"]


def test_fetch_replaces_a_corrupt_cached_copy(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    sha = saved_tiny_weights(source)
    entry = {"id": "m", "sha256": sha, "source": str(source), "file": "m.pt"}  # a plain path works too
    cache = tmp_path / "cache"
    path = weights.fetch_weights(entry, cache_dir=cache)
    path.write_bytes(path.read_bytes()[:-10])
    assert weights.fetch_weights(entry, cache_dir=cache) == path
    assert weights.sha256_file(path) == sha


def test_fetch_refuses_a_corrupted_source_and_keeps_nothing(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    sha = saved_tiny_weights(source)
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    source.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="checksum mismatch") as info:
        weights.fetch_weights({"id": "m", "sha256": sha, "source": source.as_uri(), "file": "m.pt"}, cache_dir=cache)
    assert sha[:12] in str(info.value) and actual[:12] in str(info.value)
    assert list((cache / models.WEIGHTS_DIR).iterdir()) == []


def test_fetch_refuses_missing_sources_and_entries_without_weights(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot fetch"):
        weights.fetch_weights({"id": "m", "sha256": "a" * 64, "source": (tmp_path / "none.pt").as_uri()},
                             cache_dir=tmp_path)
    with pytest.raises(InputError, match="no weights"):
        weights.fetch_weights({"id": "classical", "sha256": None, "source": "builtin"}, cache_dir=tmp_path)
    with pytest.raises(InputError, match="not installed"):
        weights.fetch_weights({"id": "m", "sha256": "a" * 64, "source": "builtin", "file": "absent.pt"})
    assert not list((tmp_path / models.WEIGHTS_DIR).glob("*"))


def test_load_state_dict_round_trip_and_checksum_first(tmp_path: Path) -> None:
    sha = saved_tiny_weights(tmp_path / "w.pt")
    state = weights.load_state_dict(tmp_path / "w.pt", sha)
    net = build_network("compact_res_unet", **TINY_NET)
    net.load_state_dict(state)
    torch.manual_seed(0)
    reference = build_network("compact_res_unet", **TINY_NET).state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    with pytest.raises(InputError, match="checksum mismatch"):
        weights.load_state_dict(tmp_path / "w.pt", "f" * 64)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_weights_that_would_run_code_are_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "owned"
    evil = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"layer.weight": torch.zeros(2), "x": WritesMarker(marker)}, evil)
    else:
        with open(evil, "wb") as fh:  # a bare pickle (protocol 2, which torch.load's unpickler reads)
            pickle.dump({"layer.bias": [0.0, 1.0], "x": WritesMarker(marker)}, fh, protocol=2)
    with pytest.raises(InputError, match="checksum mismatch"):
        weights.load_state_dict(evil, "0" * 64)  # the checksum is checked before anything is read
    sha = weights.sha256_file(evil)
    with pytest.raises(InputError, match="refused") as info:
        weights.load_state_dict(evil, sha)  # a matching checksum does not make code acceptable
    assert "open" in str(info.value)  # refused because of the global it would call
    assert not marker.exists()
    # The payload is real: an unrestricted unpickler does run it.
    with open(evil, "rb") as fh:
        torch.load(fh, weights_only=False) if writer == "torch.save" else pickle.load(fh)
    assert marker.exists()


# --- engines from the registry ----------------------------------------------------------------------------
def test_make_engine_knows_classical_default_and_refuses_unknown_ids(home: Path, tmp_path: Path) -> None:
    classical = make_engine("classical")
    assert isinstance(classical, LesionEngine) and classical.name == "classical"
    assert classical.weights_sha256 is None
    assert make_engine(None).name == "classical"
    saved_tiny_weights(tmp_path / "w.pt")
    models.register_model(tiny_entry(), tmp_path / "w.pt")
    with pytest.raises(InputError) as info:
        make_engine("nope")
    assert "classical" in str(info.value) and "tiny-unet" in str(info.value)
    models.set_default("tiny-unet")
    engine = make_engine(None, device="cpu")
    assert isinstance(engine, UNetEngine) and engine.name == "tiny-unet"


def small_chest() -> tuple[Volume, np.ndarray]:
    shape = (20, 40, 36)
    spacing = (1.2, 1.1, 2.5)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    x, y, z = i * spacing[0], j * spacing[1], k * spacing[2]
    lungs = (((x - 21) / 14) ** 2 + ((y - 22) / 15) ** 2 + ((z - 25) / 20) ** 2 <= 1).astype(np.uint8)
    ct = np.where(lungs > 0, -850.0, 40.0).astype(np.float32)
    ct[(x - 24) ** 2 + (y - 20) ** 2 + (z - 25) ** 2 <= 25] = -150.0
    return Volume(ct, spacing, (-30.0, 12.0, -100.0), np.diag([-1.0, 1.0, -1.0])), lungs


def test_unet_engine_end_to_end_on_a_tiny_ct(home: Path, tmp_path: Path) -> None:
    sha = saved_tiny_weights(tmp_path / "w.pt", seed=3)
    models.register_model(tiny_entry(), tmp_path / "w.pt")
    engine = make_engine("tiny-unet", device="cpu")
    assert engine.weights_sha256 == sha and engine.device == "cpu"
    assert engine.describe()["sha256"] == sha and engine.describe()["id"] == "tiny-unet"
    ct, lungs = small_chest()
    seen: list[float] = []
    out = engine.segment(ct, lungs, progress=lambda f, _m: seen.append(f))
    assert out.dtype == bool and out.shape == ct.shape
    assert seen[-1] == 1.0
    distance = ndimage.distance_transform_edt(lungs == 0, sampling=ct.spacing_zyx)
    assert np.all(distance[out] <= LUNG_MARGIN_MM)  # never past the few-mm band around the lungs


def test_unet_engine_refuses_corrupt_or_mismatched_weights(home: Path, tmp_path: Path) -> None:
    saved_tiny_weights(tmp_path / "w.pt")
    stored = models.register_model(tiny_entry(), tmp_path / "w.pt")
    cached = home / models.WEIGHTS_DIR / stored["file"]
    cached.write_bytes(cached.read_bytes() + b"\0")
    with pytest.raises(InputError, match="checksum mismatch"):
        make_engine("tiny-unet", device="cpu")
    # weights of another network shape registered under an architecture they do not fit
    other = dict(tiny_entry("other-shape"), network={"channels": [4, 8, 16, 32], "num_res_units": 1})
    models.register_model(other, tmp_path / "w.pt")
    with pytest.raises(InputError, match="do not fit"):
        UNetEngine(models.get_model("other-shape"), device="cpu")


def test_keep_near_lungs_allows_a_few_mm_only() -> None:
    spacing_zyx = (2.0, 0.5, 0.5)
    lungs = np.zeros((10, 80, 80), dtype=bool)
    lungs[:, :, :40] = True
    lesions = np.zeros_like(lungs)
    lesions[4, 20, 30:70] = True  # from inside the lung to 15 mm past its edge (columns of 0.5 mm)
    kept = keep_near_lungs(lesions, lungs, spacing_zyx, margin_mm=3.0)
    columns = np.flatnonzero(kept[4, 20])
    assert columns[0] == 30 and columns[-1] == 39 + 6  # 6 columns = 3 mm past the last lung column
    assert np.array_equal(keep_near_lungs(lesions & lungs, lungs, spacing_zyx), lesions & lungs)
    assert not keep_near_lungs(lesions, np.zeros_like(lungs), spacing_zyx).any()
