"""The model registry: which lesion engines exist, their weights (sha256-checked), the user's default.

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
"classical" and sha256 null.  Weights are plain state dicts read with ``torch.load(weights_only=True)``
after their sha256 has been verified; nothing in a weights file is ever executed.

This module imports torch only inside the functions that read or write weights, so listing models
stays fast.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidlesionseg.io import InputError, write_json
from covidlesionseg.progress import ProgressCallback

if TYPE_CHECKING:
    from covidlesionseg.engines.base import LesionEngine

CLASSICAL_ID = "classical"
REGISTRY_FILE = "models.json"
CONFIG_FILE = "config.json"
WEIGHTS_DIR = "weights"
SHIPPED_DIR = Path(os.environ.get("COVIDLESIONSEG_SHIPPED_MODELS")
                   or Path(__file__).resolve().parent.parent / "Resources" / "Models")
"""The extension's Resources/Models: the shipped registry and its weights (the package's parent folder)."""
SHIPPED_REGISTRY = SHIPPED_DIR / REGISTRY_FILE
BUILTIN_WEIGHTS = SHIPPED_DIR
LISTED_FIELDS = ("id", "architecture", "sha256", "parent", "metrics")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CHUNK = 1 << 20
_URL_SCHEMES = ("http", "https", "file")


# --- places --------------------------------------------------------------------------------------
def user_cache_dir() -> Path:
    """The user's COVIDLesionSeg folder (not created here)."""
    home = os.environ.get("COVIDLESIONSEG_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "covidlesionseg"


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


# --- checksums and weights -------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(what: str, expected: str, actual: str) -> InputError:
    return InputError(f"checksum mismatch for {what}: expected sha256 {expected[:12]}..., got {actual[:12]}...")


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected.lower():
        raise _mismatch(Path(path).name, expected, actual)


def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme.lower() in _URL_SCHEMES


def _open_source(source: str, base: Path) -> tuple[Any, int | None, str]:
    """An open binary stream for a URL (http, https, file) or a local path, its size when known, its name."""
    if _is_url(source):
        response = urllib.request.urlopen(source, timeout=60)  # schemes checked by _is_url
        length = response.headers.get("Content-Length")
        return response, int(length) if length and length.isdigit() else None, source
    scheme = urllib.parse.urlparse(source).scheme
    if len(scheme) > 1:  # one letter is a Windows drive
        raise InputError(f"unsupported weights source {source!r} (use http, https, file or a path)")
    path = Path(source).expanduser()
    path = path if path.is_absolute() else base / path
    return open(path, "rb"), path.stat().st_size, str(path)


def fetch_weights(entry: dict[str, Any], cache_dir: str | os.PathLike | None = None,
                  progress: ProgressCallback | None = None) -> Path:
    """Path of the entry's verified weights, downloading them into the cache when needed.

    A cached file with the right sha256 is used as it is.  Otherwise the source is streamed into a
    temporary file in the cache's weights folder while hashing; on a match it is renamed into place
    atomically, on a mismatch it is deleted and InputError names the expected and actual prefixes.
    A bad file is never kept (a corrupt cached copy is removed before downloading again), except
    when the source is the cached file itself, which is then reported as corrupt.
    """
    model_id = entry.get("id", "?")
    expected = entry.get("sha256")
    source = entry.get("source")
    if not expected:
        raise InputError(f"model {model_id!r} has no weights (sha256 is null)")
    if not source:
        raise InputError(f"model {model_id!r} has no weights source")
    expected = str(expected).lower()
    file_name = Path(entry.get("file") or f"{model_id}-{expected[:12]}.pt").name
    if source == "builtin":
        path = BUILTIN_WEIGHTS / file_name
        if not path.is_file():
            raise InputError(f"built-in weights {file_name} of model {model_id!r} are not installed")
        verify_sha256(path, expected)
        return path

    folder = Path(cache_dir if cache_dir is not None else user_cache_dir()) / WEIGHTS_DIR
    target = folder / file_name
    if target.is_file():
        actual = sha256_file(target)
        if actual == expected:
            return target
        if not _is_url(source) and Path(source).expanduser().resolve() == target.resolve():
            raise _mismatch(f"cached weights of model {model_id!r} ({target})", expected, actual)
        target.unlink()

    folder.mkdir(parents=True, exist_ok=True)
    try:
        stream, total, shown = _open_source(str(source), folder.parent)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise InputError(f"cannot fetch weights of model {model_id!r} from {source}: {exc}") from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        done = 0
        with stream, os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None and total:
                    progress(min(1.0, done / total), f"downloading {file_name}")
        actual = digest.hexdigest()
        if actual != expected:
            raise _mismatch(f"weights of model {model_id!r} from {shown}", expected, actual)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if progress is not None:
        progress(1.0, f"{file_name} verified")
    return target


def _unpickling_reason(exc: BaseException) -> str:
    """The useful line of torch's (long, multi-line) weights_only error."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", text, re.DOTALL)
    if found:
        return found.group(1).strip()
    return (text.strip().splitlines() or [type(exc).__name__])[0][:200]


def load_state_dict(path: str | os.PathLike, sha256: str) -> dict[str, Any]:
    """Verify the sha256 of ``path`` first, then read it with ``torch.load(weights_only=True)``.

    Only tensors and plain containers are unpickled; a file that would run code is refused with an
    InputError.  A checkpoint ``{"state_dict": {...}}`` is unwrapped.
    """
    import pickle

    import torch

    if not sha256:
        raise InputError(f"no sha256 given for {Path(path).name}; refusing to load unverified weights")
    verify_sha256(path, sha256)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError, ValueError) as exc:
        raise InputError(f"{Path(path).name} is not a plain weights file (refused to unpickle it): "
                         f"{_unpickling_reason(exc)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{Path(path).name} does not hold a state dict of tensors")
    return state


def save_weights(state_dict: dict[str, Any], path: str | os.PathLike) -> str:
    """Write a state dict (tensors moved to the CPU) atomically; return its sha256."""
    import torch

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(plain, fh)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return sha256_file(p)


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
        raise _mismatch(f"weights of model {model_id!r}", str(entry["sha256"]), actual)
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


# --- engines ------------------------------------------------------------------------------------------------
def make_engine(engine_id: str | None = None, device: str = "auto") -> LesionEngine:
    """The lesion engine for ``engine_id``: ``classical``, a registered model id, or None for the default.

    Engines are imported here lazily: this module sits below them and stays importable without torch.
    An unknown id raises InputError listing the known ones.
    """
    chosen = default_model_id() if engine_id is None else engine_id
    entry = get_model(chosen)
    if entry.get("architecture") == CLASSICAL_ID:
        from covidlesionseg.engines.classical import ClassicalEngine

        return ClassicalEngine()  # CPU only: ``device`` does not apply
    from covidlesionseg.engines.unet import UNetEngine

    return UNetEngine(entry, device=device)
