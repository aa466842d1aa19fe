"""Model weights: fetched (URL, file or shipped), checked against their sha256, read as plain tensors.

Weights are plain state dicts read with ``torch.load(weights_only=True)`` after their sha256 has been
verified; nothing in a weights file is ever executed.  The shipped weights lie in the extension's
``Resources/Models`` (``$COVIDLESIONSEG_SHIPPED_MODELS`` names another folder); downloaded ones in
``<cache>/weights/``, where ``<cache>`` is ``$COVIDLESIONSEG_HOME``, else ``$XDG_CACHE_HOME/covidlesionseg``,
else ``~/.cache/covidlesionseg``.

Which weights a model uses is the registry's business (``covidlesionseg.models``); this module knows
nothing of it, so engines load their weights without importing the registry.  torch is imported only
inside the functions that read or write weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from covidlesionseg.io import InputError
from covidlesionseg.progress import ProgressCallback

WEIGHTS_DIR = "weights"
SHIPPED_DIR = Path(os.environ.get("COVIDLESIONSEG_SHIPPED_MODELS")
                   or Path(__file__).resolve().parent.parent / "Resources" / "Models")
"""The extension's Resources/Models: the shipped registry and its weights (the package's parent folder)."""
BUILTIN_WEIGHTS = SHIPPED_DIR
_CHUNK = 1 << 20
_URL_SCHEMES = ("http", "https", "file")


# --- places ------------------------------------------------------------------------------------------
def user_cache_dir() -> Path:
    """The user's COVIDLesionSeg folder (not created here)."""
    home = os.environ.get("COVIDLESIONSEG_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "covidlesionseg"


# --- checksums and weights -------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_mismatch(what: str, expected: str, actual: str) -> InputError:
    """The one-line error for a file whose sha256 is not the expected one (both prefixes named)."""
    return InputError(f"checksum mismatch for {what}: expected sha256 {expected[:12]}..., got {actual[:12]}...")


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """InputError unless the file's sha256 is ``expected``."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise checksum_mismatch(Path(path).name, expected, actual)


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
            raise checksum_mismatch(f"cached weights of model {model_id!r} ({target})", expected, actual)
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
            raise checksum_mismatch(f"weights of model {model_id!r} from {shown}", expected, actual)
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


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (temporary file in the same folder, then rename): a killed writer leaves the
    previous file intact.  ``obj`` must hold only what ``torch.load(weights_only=True)`` reads back."""
    import torch

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_weights(state_dict: dict[str, Any], path: str | os.PathLike) -> str:
    """Write a state dict (tensors moved to the CPU) atomically; return its sha256."""
    save_torch({k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}, path)
    return sha256_file(path)
