"""Sources of lung lobes behind ``--lobes``: built-in, TotalSegmentator, lungmask, a lobe map file, an array.

Each provider returns completed lobes on the CT grid (every lung voxel in one lobe of its side) and is named
in severity.json as ``lobe_source``.  TotalSegmentator (Wasserthal J, et al. Radiol Artif Intell 2023;5(5):
e230024) and lungmask LTRCLobes (Hofmanninger J, et al. Eur Radiol Exp 2020;4:50) are optional: found at run
time, never imported at module load.  ``--lobes auto`` takes a file when one is given, else TotalSegmentator,
else lungmask, else the built-in provider; it never ends silently without lobes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from covidlesionseg import io
from covidlesionseg.io import InputError, Volume
from covidlesionseg.lobe_builtin import builtin_lobes
from covidlesionseg.lobes import check_convention, complete_lobes, convert_lobe_map

log = logging.getLogger(__name__)

NAMED_SPECS = ("auto", "builtin", "totalsegmentator", "lungmask", "none")
# TotalSegmentator's lung lobe classes (task "total"); its output keeps the task's label ids.
TOTALSEGMENTATOR_LOBES = ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
                          "lung_middle_lobe_right", "lung_lower_lobe_right")
INSTALL_HINT = {"totalsegmentator": "pip install TotalSegmentator", "lungmask": "pip install lungmask"}


class ProviderError(InputError):
    """An optional lobe provider is absent or its run failed (one clear line)."""


class LobeProvider(Protocol):
    """A source of lobes on the CT grid; ``name`` is severity.json's ``lobe_source``."""

    name: str

    def lobes(self, ct: Volume, lungs: np.ndarray) -> np.ndarray: ...


class BuiltinLobes:
    """The built-in provider (lobe_builtin): anatomical prior refined by fissure evidence; offline, CPU."""

    name = "builtin"

    def lobes(self, ct: Volume, lungs: np.ndarray) -> np.ndarray:
        return complete_lobes(builtin_lobes(ct, lungs), lungs, ct, source="built-in lobes")


class ArrayLobes:
    """Lobes already in memory on our convention (e.g. the phantom's truth, source "truth")."""

    def __init__(self, array: np.ndarray, source: str) -> None:
        self.array, self.name = np.asarray(array), source

    def lobes(self, ct: Volume, lungs: np.ndarray) -> np.ndarray:
        return complete_lobes(self.array, lungs, ct, source=f"{self.name} lobes")


class FileLobes:
    """An external lobe map file (resampled onto the CT grid by nearest neighbour); "file:<convention>"."""

    def __init__(self, path: str | os.PathLike, convention: str | None = None) -> None:
        if convention is not None:
            check_convention(convention)
        self.path, self.convention = Path(path), convention

    @property
    def name(self) -> str:
        return f"file:{self.convention or 'auto'}"

    def lobes(self, ct: Volume, lungs: np.ndarray) -> np.ndarray:
        _report_other_grid(self.path, ct)
        label = io.read_label(self.path, ct, resample=True)
        converted, self.convention = convert_lobe_map(label.array, self.convention, ct)
        return complete_lobes(converted, lungs, ct, source=f"lobe map {self.path.name}")


def _report_other_grid(path: Path, ct: Volume) -> None:
    """Warn when a lobe map file lies on another grid than the CT (it is then resampled by nearest neighbour)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # read_label gives the clear error
    size = tuple(reader.GetSize())[::-1]
    same = (size == tuple(ct.shape) and np.allclose(reader.GetSpacing(), ct.spacing, atol=1e-3)
            and np.allclose(reader.GetOrigin(), ct.origin, atol=1e-3))
    if not same:
        log.warning("lobe map %s lies on another grid (%s, spacing %s mm) than the CT (%s, %s mm): resampled onto "
                    "the CT by nearest neighbour", path.name, "x".join(map(str, size)),
                    "x".join(f"{v:.3g}" for v in reader.GetSpacing()), "x".join(map(str, ct.shape)),
                    "x".join(f"{v:.3g}" for v in ct.spacing))


def lobes_from_totalsegmentator(path: str | os.PathLike, ct: Volume, lungs: np.ndarray) -> np.ndarray:
    """Completed lobes from a TotalSegmentator multi-label output file (v1 or v2 ids; detected, resampled)."""
    label = io.read_label(path, ct, resample=True)
    converted, convention = convert_lobe_map(label.array, None, ct)
    if not convention.startswith("totalsegmentator"):
        raise ProviderError(f"TotalSegmentator output {Path(path).name} does not hold its lobe ids ({convention})")
    return complete_lobes(converted, lungs, ct, source="TotalSegmentator lobes")


def lobes_from_lungmask(array: np.ndarray, ct: Volume, lungs: np.ndarray) -> np.ndarray:
    """Completed lobes from lungmask's LTRCLobes output (numpy in the CT's array order, 1 LUL .. 5 RLL)."""
    array = np.asarray(array)
    if array.shape != ct.shape:
        raise ProviderError(f"lungmask returned {array.shape}, not the CT's {ct.shape}")
    converted, _ = convert_lobe_map(array.astype(np.uint8), "lungmask", ct)
    return complete_lobes(converted, lungs, ct, source="lungmask lobes")


def available(name: str) -> bool:
    """Whether an optional provider's package is installed (its weights are fetched by the package itself)."""
    module = {"totalsegmentator": "totalsegmentator", "lungmask": "lungmask"}[name]
    return importlib.util.find_spec(module) is not None


class TotalSegmentatorLobes:
    """TotalSegmentator's five lung lobe classes (task "total", ``fast`` on the CPU)."""

    name = "totalsegmentator"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def lobes(self, ct: Volume, lungs: np.ndarray) -> np.ndarray:
        try:
            from totalsegmentator.python_api import totalsegmentator  # type: ignore[import-not-found]
        except ImportError as exc:
            hint = INSTALL_HINT["totalsegmentator"]
            raise ProviderError(f"TotalSegmentator is not installed ({hint}): {exc}") from None
        with tempfile.TemporaryDirectory(prefix="covidlesionseg_ts_") as tmp:
            source, target = Path(tmp) / "ct.nii.gz", Path(tmp) / "lobes.nii.gz"
            io.write_ct(source, ct)
            try:
                totalsegmentator(source, target, ml=True, task="total", roi_subset=list(TOTALSEGMENTATOR_LOBES),
                                 fast=self.device == "cpu", device="gpu" if self.device == "cuda" else "cpu",
                                 quiet=True)
            except Exception as exc:  # noqa: BLE001 - any failure of the external tool is reported in one line
                raise ProviderError(f"TotalSegmentator failed: {type(exc).__name__}: {exc}") from exc
            if not target.exists():
                raise ProviderError("TotalSegmentator wrote no output")
            return lobes_from_totalsegmentator(target, ct, lungs)


class LungmaskLobes:
    """lungmask's LTRCLobes model, when the package and its weights are present."""

    name = "lungmask"

    def lobes(self, ct: Volume, lungs: np.ndarray) -> np.ndarray:
        try:
            from lungmask import LMInferer  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ProviderError(f"lungmask is not installed ({INSTALL_HINT['lungmask']}): {exc}") from None
        try:
            predicted = LMInferer(modelname="LTRCLobes").apply(ct.to_sitk())
        except Exception as exc:  # noqa: BLE001 - e.g. weights not downloadable offline
            raise ProviderError(f"lungmask failed: {type(exc).__name__}: {exc}") from exc
        return lobes_from_lungmask(predicted, ct, lungs)


def check_lobe_spec(spec: str) -> None:
    """Refuse a ``--lobes`` value that cannot work, before any segmentation time is spent on it."""
    if spec in ("totalsegmentator", "lungmask") and not available(spec):
        raise InputError(f"--lobes {spec}: the {spec} package is not installed ({INSTALL_HINT[spec]}); "
                         "use --lobes builtin or auto")
    if spec not in NAMED_SPECS and not Path(spec).exists():
        raise InputError(f"lobe file not found: {spec} (give {', '.join(NAMED_SPECS)} or a file)")


def auto_providers(device: str = "cpu") -> list[LobeProvider]:
    """The providers ``--lobes auto`` tries in order: TotalSegmentator, lungmask (when installed), built-in."""
    chain: list[LobeProvider] = []
    if available("totalsegmentator"):
        chain.append(TotalSegmentatorLobes(device))
    if available("lungmask"):
        chain.append(LungmaskLobes())
    chain.append(BuiltinLobes())
    return chain


def resolve_lobe_source(spec: str, ct: Volume, lungs: np.ndarray, convention: str | None = None,
                        device: str = "cpu") -> tuple[np.ndarray | None, str]:
    """(lobes or None, lobe_source) for ``--lobes``: auto | builtin | totalsegmentator | lungmask | none | FILE."""
    check_lobe_spec(spec)
    if spec == "none":
        return None, "none"
    if spec == "auto":
        for provider in auto_providers(device):
            try:
                return provider.lobes(ct, lungs), provider.name
            except ProviderError as exc:
                log.warning("%s; trying the next lobe source", exc)
        raise AssertionError("the built-in provider never raises ProviderError")  # pragma: no cover
    named: dict[str, LobeProvider] = {"builtin": BuiltinLobes(), "totalsegmentator": TotalSegmentatorLobes(device),
                                      "lungmask": LungmaskLobes()}
    provider = named.get(spec) or FileLobes(spec, convention)
    return provider.lobes(ct, lungs), provider.name
