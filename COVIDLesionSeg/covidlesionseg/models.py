"""The model registry: which lesion engines exist and the user's default.

Two registries are merged: the shipped one (``COVIDLesionSeg/Resources/Models/models.json`` beside the
shipped weights, read-only; ``$COVIDLESIONSEG_SHIPPED_MODELS`` names another folder) and the
user's (``<cache>/models.json`` with weights under ``<cache>/weights/``), where ``<cache>`` is
``$COVIDLESIONSEG_HOME``, else ``$XDG_CACHE_HOME/covidlesionseg``, else ``~/.cache/covidlesionseg``.
The default engine is the one the user chose (``<cache>/config.json``); without a choice (or when it
names a model that no longer exists) the shipped entry marked ``"default": true``, else ``classical``.
Exactly one engine is the default.

An entry: ``{"id", "architecture", "network" (constructor keywords), "spacing" (mm, i j k),
"hu_window", "roi_size" (k j i), "sha256", "source" (http(s)/file URL, "builtin" or a path),
"file", "parent", "metrics", "description", "version"}``.  ``classical`` has architecture
"classical" and sha256 null.

The weights an entry names are fetched, verified and read by ``covidlesionseg.weights`` (its functions
are importable from here too, for callers that hold an entry); engines are built from an entry by
``covidlesionseg.engines.factory.make_engine``.  This module imports neither engines nor torch, so
listing models stays fast.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from covidlesionseg.io import InputError, write_json
from covidlesionseg.weights import (  # noqa: F401  (fetch_weights .. save_weights: re-exported for callers)
    SHIPPED_DIR,
    WEIGHTS_DIR,
    checksum_mismatch,
    fetch_weights,
    load_state_dict,
    save_weights,
    sha256_file,
    user_cache_dir,
    verify_sha256,
)

CLASSICAL_ID = "classical"
REGISTRY_FILE = "models.json"
CONFIG_FILE = "config.json"
SHIPPED_REGISTRY = SHIPPED_DIR / REGISTRY_FILE
LISTED_FIELDS = ("id", "architecture", "sha256", "parent", "metrics")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# --- the registries ------------------------------------------------------------------------------
def _read_registry(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read model registry {path}: {exc}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) and "id" in m for m in models):
        raise InputError(f"model registry {path} is not {{\"models\": [{{\"id\": ...}}, ...]}}")
    return models


def _all_entries() -> list[dict[str, Any]]:
    """Shipped entries first, then the user's; a user entry reusing a shipped id is ignored."""
    entries = [dict(e, registry="shipped") for e in _read_registry(SHIPPED_REGISTRY)]
    if not any(e["id"] == CLASSICAL_ID for e in entries):
        entries.insert(0, {"id": CLASSICAL_ID, "architecture": CLASSICAL_ID, "sha256": None, "source": "builtin",
                           "file": None, "parent": None, "metrics": {}, "registry": "shipped",
                           "description": "Classical HU-threshold and morphology engine (no weights)."})
    seen = {e["id"] for e in entries}
    for entry in _read_registry(user_cache_dir() / REGISTRY_FILE):
        if entry["id"] not in seen:
            seen.add(entry["id"])
            entries.append(dict(entry, registry="user"))
    return entries


def model_ids() -> list[str]:
    return [e["id"] for e in _all_entries()]


def get_model(model_id: str) -> dict[str, Any]:
    """The full registry entry of ``model_id`` (a copy); InputError naming the known ids otherwise."""
    for entry in _all_entries():
        if entry["id"] == model_id:
            return copy.deepcopy(entry)
    raise InputError(f"unknown engine {model_id!r}; known: {', '.join(model_ids())}")


def default_model_id() -> str:
    """The id in the user's config, else the shipped default (``"default": true``), else ``classical``."""
    path = user_cache_dir() / CONFIG_FILE
    chosen = None
    if path.is_file():
        try:
            chosen = json.loads(path.read_text()).get("default")
        except (OSError, json.JSONDecodeError, AttributeError):
            chosen = None
    if chosen in model_ids():
        return chosen
    shipped = [e["id"] for e in _read_registry(SHIPPED_REGISTRY) if e.get("default") is True]
    return shipped[0] if shipped else CLASSICAL_ID


def list_models() -> list[dict[str, Any]]:
    """Every engine as ``{"id", "architecture", "sha256", "parent", "metrics", "default"}``; one default."""
    default = default_model_id()
    return [{**{k: e.get(k) for k in LISTED_FIELDS}, "default": e["id"] == default} for e in _all_entries()]


def set_default(model_id: str) -> None:
    """Make ``model_id`` the default engine (persisted in the user's config); refuses unknown ids."""
    get_model(model_id)
    path = user_cache_dir() / CONFIG_FILE
    config: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            loaded = json.loads(path.read_text())
            config = loaded if isinstance(loaded, dict) else {}
    config["default"] = model_id
    write_json(path, config)


# --- registering ---------------------------------------------------------------------------------------
def _validate_entry(entry: dict[str, Any]) -> None:
    from covidlesionseg.networks import ARCHITECTURES

    model_id = entry.get("id")
    if not isinstance(model_id, str) or not _ID_PATTERN.match(model_id):
        raise InputError(f"model id {model_id!r} must be 1-100 characters of letters, digits, '.', '_' or '-'")
    if entry.get("architecture") not in ARCHITECTURES:
        raise InputError(f"model {model_id!r}: unknown architecture {entry.get('architecture')!r}; "
                         f"known: {', '.join(sorted(ARCHITECTURES))}")
    spacing, window, roi = entry.get("spacing"), entry.get("hu_window"), entry.get("roi_size")
    if not (isinstance(spacing, (list, tuple)) and len(spacing) == 3 and all(float(s) > 0 for s in spacing)):
        raise InputError(f"model {model_id!r}: spacing must be three positive mm values, got {spacing!r}")
    if not (isinstance(window, (list, tuple)) and len(window) == 2 and float(window[0]) < float(window[1])):
        raise InputError(f"model {model_id!r}: hu_window must be [lo, hi] with lo < hi, got {window!r}")
    if not (isinstance(roi, (list, tuple)) and len(roi) == 3 and all(int(r) == r and r >= 1 for r in roi)):
        raise InputError(f"model {model_id!r}: roi_size must be three positive integers, got {roi!r}")
    if not isinstance(entry.get("network", {}), dict):
        raise InputError(f"model {model_id!r}: network must be an object of constructor settings")


def register_model(entry: dict[str, Any], weights_path: str | os.PathLike) -> dict[str, Any]:
    """Add a model to the user registry: copy its weights into the cache, record their sha256.

    Refuses duplicate ids (shipped or user) and an entry whose given sha256 does not match the file.
    The user registry is rewritten atomically.  Returns the stored entry.  Never changes the default.
    """
    _validate_entry(entry)
    model_id = entry["id"]
    if model_id in model_ids():
        raise InputError(f"a model with id {model_id!r} is already registered")
    src = Path(weights_path)
    if not src.is_file():
        raise InputError(f"weights file not found: {src}")
    actual = sha256_file(src)
    if entry.get("sha256") and str(entry["sha256"]).lower() != actual:
        raise checksum_mismatch(f"weights of model {model_id!r}", str(entry["sha256"]), actual)
    folder = user_cache_dir() / WEIGHTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{model_id}.pt"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        if sha256_file(tmp) != actual:
            raise InputError(f"weights of model {model_id!r} changed while being copied")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    stored = {"parent": None, "metrics": {}, "description": "", "network": {}, "version": "1", **entry,
              "sha256": actual, "file": target.name, "source": str(target)}
    stored.pop("registry", None)
    registry_path = user_cache_dir() / REGISTRY_FILE
    models = _read_registry(registry_path)
    models.append(stored)
    write_json(registry_path, {"models": models})
    return dict(stored)
