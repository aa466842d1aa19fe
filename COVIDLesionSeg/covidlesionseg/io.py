"""Reading CT and label maps with their geometry, checking CT, writing outputs atomically.

Geometry follows ITK/DICOM conventions: physical coordinates are LPS (x toward the patient's left,
y toward posterior, z toward superior).  Arrays are in SimpleITK's numpy order ``(k, j, i)``;
``spacing``/``origin`` are in index order ``(i, j, k)``; ``direction[:, n]`` is the LPS direction
of index axis ``n``.  Patient left/right always comes from the direction cosines, never from
array order.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from covidlesionseg import filecheck

GEOMETRY_TOL_MM = 1e-4
DIRECTION_TOL = 1e-6
CT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# Rows of the LPS frame: 0 = toward patient left, 1 = toward posterior, 2 = toward superior.
_PATIENT_ROWS = {"LR": 0, "AP": 1, "SI": 2}


class InputError(ValueError):
    """Bad input: the message is one line, fit to show a user as it is."""


@dataclass
class Volume:
    """A 3D image with its geometry.  ``array`` is numpy order (k, j, i)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if self.array.ndim != 3:
            raise InputError(f"expected a 3D volume, got {self.array.ndim} dimensions")

    # --- conversions ---------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: sitk.Image, meta: dict[str, Any] | None = None) -> Volume:
        if image.GetDimension() == 2:
            image = sitk.JoinSeries(image)
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.array(image.GetDirection()).reshape(3, 3),
            meta=dict(meta or {}),
        )

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """SimpleITK image of ``array`` (default: this volume's) with this volume's geometry."""
        data = self.array if array is None else array
        if data.shape != self.array.shape:
            raise ValueError(f"array shape {data.shape} differs from volume shape {self.array.shape}")
        if data.dtype == bool:
            data = data.astype(np.uint8)
        image = sitk.GetImageFromArray(np.ascontiguousarray(data))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    def like(self, array: np.ndarray) -> Volume:
        """A volume with this geometry and another array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from volume shape {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy(), dict(self.meta))

    # --- geometry --------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in numpy axis order (k, j, i), for scipy.ndimage ``sampling`` arguments."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0

    def patient_axis(self, which: str) -> tuple[int, int]:
        """Numpy axis closest to a patient axis ("LR", "AP", "SI") and its sign.

        The sign is +1 when a growing index moves toward the patient's left, posterior or
        superior respectively, -1 otherwise.
        """
        row = self.direction[_PATIENT_ROWS[which]]
        index_axis = int(np.argmax(np.abs(row)))
        return 2 - index_axis, (1 if row[index_axis] > 0 else -1)

    def lps_points(self, zyx_indices: np.ndarray) -> np.ndarray:
        """Physical LPS coordinates (N, 3) of voxel indices given in numpy order (N, 3)."""
        idx = np.asarray(zyx_indices, dtype=float).reshape(-1, 3)[:, ::-1]
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction.T

    def same_geometry(self, other: Volume) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=GEOMETRY_TOL_MM)
            and np.allclose(self.origin, other.origin, atol=GEOMETRY_TOL_MM)
            and np.allclose(self.direction, other.direction, atol=DIRECTION_TOL)
        )


# --- reading ---------------------------------------------------------------------------
def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


# Slice positions along the stack may deviate from the series' median step by this much (mm, fraction)
# before the series counts as gapped.  A missing slice doubles one step.
SLICE_GAP_TOL_MM = 0.1
SLICE_GAP_TOL_FRACTION = 0.1


def _slice_positions(files: Sequence[str]) -> np.ndarray:
    """Each file's position along the stack normal (ImagePositionPatient . normal), from the headers only."""
    reader = sitk.ImageFileReader()
    positions = []
    normal = None
    for f in files:
        reader.SetFileName(f)
        reader.ReadImageInformation()
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            return np.array([])
        ipp = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        if normal is None:
            iop = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
            normal = np.cross(iop[:3], iop[3:])
        positions.append(float(ipp @ normal))
    return np.array(positions)


def check_slice_spacing(files: Sequence[str], positions: np.ndarray, folder: Path) -> None:
    """Refuse a series whose slices are not evenly spaced (a missing or duplicated slice), naming the gap.

    ITK reads such a series at one uniform spacing with only a warning
    (``ITK_non_uniform_sampling_deviation``): volumes would be silently wrong.
    """
    if len(positions) < 3:
        return
    order = np.argsort(positions)
    steps = np.diff(positions[order])
    step = float(np.median(steps))
    tol = max(SLICE_GAP_TOL_MM, SLICE_GAP_TOL_FRACTION * abs(step))
    bad = np.flatnonzero(np.abs(steps - step) > tol)
    if bad.size == 0:
        return
    n = int(bad[0])
    a, b = Path(files[order[n]]).name, Path(files[order[n + 1]]).name
    what = "two slices at the same position" if abs(steps[n]) <= tol else f"{steps[n]:.2f} mm apart"
    more = f" (and {bad.size - 1} more irregular steps)" if bad.size > 1 else ""
    raise InputError(
        f"DICOM series in {folder.name}: slices not evenly spaced: {a} and {b} are {what}, "
        f"{step:.2f} mm elsewhere{more}; a slice is missing or repeated"
    )


def _read_dicom_folder(folder: Path, bytes_per_voxel: int) -> tuple[sitk.Image, dict[str, Any]]:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"no DICOM series found in {folder}")
    # The largest series wins; GDCM sorts each series' files by image position along the normal.
    files = max((reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series), key=len)
    try:
        first = filecheck.declared_by_itk(Path(files[0]))
        size = (*first.size[:2], len(files))
        filecheck.check_memory(folder.name, filecheck.Declared(size, first.data_bytes * len(files)), bytes_per_voxel)
        check_slice_spacing(files, _slice_positions(files), folder)
    except filecheck.FileCheckError as exc:
        raise InputError(str(exc)) from None
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series in {folder}: {str(exc).strip().splitlines()[-1]}") from None
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()  # applies rescale slope/intercept
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series in {folder}: {str(exc).strip().splitlines()[-1]}") from None

    def tag(key: str) -> str:
        return reader.GetMetaData(0, key).strip() if reader.HasMetaDataKey(0, key) else ""

    meta = {
        "format": "dicom",
        "modality": tag("0008|0060"),
        "series_count": len(series),
        "files": len(files),
        "patient_name": tag("0010|0010"),
        "patient_id": tag("0010|0020"),
        "study_uid": tag("0020|000d"),
        "series_uid": tag("0020|000e"),
    }
    return image, meta


def _reader_error(name: str, exc: RuntimeError) -> InputError:
    """One line from an ITK reader's multi-line exception; data-size failures named as such."""
    text = str(exc)
    if "not read completely" in text or re.search(r"expected \d+ bytes but received", text):
        return InputError(f"cannot read {name}: truncated or corrupt voxel data (fewer bytes than the header declares)")
    return InputError(f"cannot read {name}: {text.strip().splitlines()[-1]}")


def read_image(
    path: str | os.PathLike, *, bytes_per_voxel: int = filecheck.CT_WORKING_BYTES_PER_VOXEL
) -> tuple[sitk.Image, dict[str, Any]]:
    """Read any supported image (NIfTI, NRRD, MHA, a DICOM file or series folder) as SimpleITK.

    Before reading, the file is checked against its header (``filecheck``): data cut short, corrupt
    compressed streams, NaN in NIfTI float data, and a declared size that would need more than
    ``bytes_per_voxel`` x voxels of available memory are refused with one line.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_dir():
        return _read_dicom_folder(p, bytes_per_voxel)
    name = p.name.lower()
    if _is_dicom_file(p) or name.endswith(".dcm"):
        return _read_single_dicom(p)
    if not name.endswith(CT_SUFFIXES):
        raise InputError(f"unsupported file type: {p.name} (use .nii, .nii.gz, .nrrd, .mha or a DICOM folder)")
    try:
        filecheck.check_file(p, bytes_per_voxel)
    except filecheck.FileCheckError as exc:
        raise InputError(str(exc)) from None
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise _reader_error(p.name, exc) from None
    meta: dict[str, Any] = {"format": name.split(".", 1)[1] if "." in name else "", "modality": ""}
    for key in ("modality", "Modality"):
        if image.HasMetaDataKey(key):  # MetaImage writes MET_MOD_CT / MET_MOD_MR / MET_MOD_UNKNOWN
            value = image.GetMetaData(key).strip().upper().removeprefix("MET_MOD_")
            meta["modality"] = "" if value in ("UNKNOWN", "OT") else value
    return image, meta


def _read_single_dicom(path: Path) -> tuple[sitk.Image, dict[str, Any]]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read {path.name}: {str(exc).strip().splitlines()[-1]}") from None

    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""

    return image, {"format": "dicom", "modality": tag("0008|0060"), "files": 1,
                   "patient_name": tag("0010|0010"), "patient_id": tag("0010|0020")}


def check_ct(image: sitk.Image, meta: dict[str, Any], name: str = "input") -> sitk.Image:
    """Refuse what is not a CT in HU; return a 3D float32 image."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        ncomp = image.GetNumberOfComponentsPerPixel()
        raise InputError(f"{name}: has {ncomp} components per voxel (RGB or vector image), not a CT")
    dim = image.GetDimension()
    if dim == 4:
        raise InputError(f"{name}: is a 4D image; give one 3D CT")
    if dim not in (2, 3):
        raise InputError(f"{name}: has {dim} dimensions; expected a 3D CT")
    if image.GetNumberOfPixels() == 0:
        raise InputError(f"{name}: is empty")
    modality = str(meta.get("modality", "")).upper()
    if modality and modality not in ("CT",):
        raise InputError(f"{name}: modality is {modality}, not CT")
    image = sitk.Cast(image, sitk.sitkFloat32)
    if dim == 2:
        image = sitk.JoinSeries(image)
    arr = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo < 100:
        raise InputError(f"{name}: values span only {lo:.0f}..{hi:.0f}; not a CT in HU")
    if lo >= -100 and hi > 1000:
        raise InputError(
            f"{name}: values {lo:.0f}..{hi:.0f} look like raw stored values (no HU rescale intercept applied)"
        )
    if hi < -200 or lo > 0 or hi > 40000 or lo < -33000:
        raise InputError(f"{name}: values {lo:.0f}..{hi:.0f} are not Hounsfield units")
    # Lung-like air: some voxels between -1024 and -500 HU (padding below -1024 does not count).
    air = float(np.count_nonzero((arr >= -1100) & (arr <= -500))) / arr.size
    if air < 0.005:
        raise InputError(
            f"{name}: only {100 * air:.2f}% of voxels are air or lung (-1024..-500 HU); not a chest CT in HU"
        )
    return image


def read_ct(path: str | os.PathLike) -> Volume:
    """Read and check a CT (file or DICOM folder); the array is float32 HU in numpy order."""
    image, meta = read_image(path)
    image = check_ct(image, meta, Path(path).name)
    meta["source"] = str(path)
    return Volume.from_sitk(image, meta)


def read_label(path: str | os.PathLike, reference: Volume | None = None, *, resample: bool = False) -> Volume:
    """Read an integer label map; with a reference, check (or, with ``resample``, put it on) its grid."""
    image, _meta = read_image(path, bytes_per_voxel=filecheck.LABEL_WORKING_BYTES_PER_VOXEL)
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (2, 3):
        raise InputError(f"{Path(path).name}: not a 3D label map")
    arr_view = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(arr_view.dtype, np.integer):
        if not np.isfinite(arr_view).all() or not np.all(np.mod(arr_view, 1) == 0):
            raise InputError(f"{Path(path).name}: label map has non-integer values")
        image = sitk.Cast(image, sitk.sitkInt32)
    vol = Volume.from_sitk(image, {"source": str(path)})
    if reference is None:
        return vol
    if vol.same_geometry(reference):
        return reference.like(vol.array)
    if not resample:
        raise InputError(
            f"{Path(path).name}: grid {vol.shape} / spacing {np.round(vol.spacing, 4).tolist()} does not match the CT "
            f"{reference.shape} / {np.round(reference.spacing, 4).tolist()}"
        )
    out = sitk.Resample(vol.to_sitk(), reference.to_sitk(np.zeros(reference.shape, np.uint8)),
                        sitk.Transform(), sitk.sitkNearestNeighbor, 0, vol.to_sitk().GetPixelID())
    return reference.like(sitk.GetArrayFromImage(out))


# --- writing -----------------------------------------------------------------------------
def write_volume(path: str | os.PathLike, volume: Volume, array: np.ndarray | None = None) -> None:
    """Write ``array`` (default the volume's) on ``volume``'s grid; compressed by file name."""
    data = volume.array if array is None else array
    sitk.WriteImage(volume.to_sitk(data), str(path), useCompression=True)


def write_ct(path: str | os.PathLike, volume: Volume) -> None:
    """Write a CT: as int16 when every value is a whole HU within int16 (as scanners store it), else float32."""
    data = volume.array
    info = np.iinfo(np.int16)
    if data.size and info.min <= float(data.min()) and float(data.max()) <= info.max and np.array_equal(
        data, np.round(data)
    ):
        data = data.astype(np.int16)
    write_volume(path, volume, data)


def write_label(path: str | os.PathLike, reference: Volume, labels: np.ndarray) -> None:
    """Write a label map (uint8) on the reference grid."""
    write_volume(path, reference, np.asarray(labels).astype(np.uint8))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep its files
    return True


def _stale_prefix(name: str, kind: str) -> str:
    return f".{name}.{kind}-"


def _new_temp_name(name: str, kind: str) -> str:
    """``.NAME.KIND-<pid>-<random>``: the pid tells a later run whether the writer is still alive."""
    return f"{_stale_prefix(name, kind)}{os.getpid()}-{secrets.token_hex(4)}"


def remove_stale(parent: Path, name: str) -> list[Path]:
    """Remove what killed writers of ``parent/name`` left: staging folders and temporary files of dead pids.

    A writer killed (even by kill -9) before it moved its files leaves ``.NAME.staging-<pid>-*`` or
    ``.NAME.tmp-<pid>-*`` beside the output; the next run of any writer of that output removes them.
    Folders from writers that are still running are kept.  Returns what was removed.
    """
    removed = []
    for kind in ("staging", "tmp"):
        for item in parent.glob(f"{_stale_prefix(name, kind)}*"):
            pid = item.name[len(_stale_prefix(name, kind)) :].split("-", 1)[0]
            if pid.isdigit() and (int(pid) == os.getpid() or _pid_alive(int(pid))):
                continue
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    item.unlink()
            removed.append(item)
    return removed


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (temporary file + rename); temporary files of killed writers are removed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(p.parent, p.name)
    tmp = str(p.parent / _new_temp_name(p.name, "tmp"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staged_output(outdir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into ``outdir``, on error leave ``outdir`` untouched.

    Files are written first to a hidden sibling folder (``.OUT.staging-<pid>-<random>``), so a failure
    half-way writes nothing into ``outdir``.  Each file then replaces its namesake atomically.  Staging
    folders that killed runs left behind are removed first.
    """
    out = Path(outdir)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    remove_stale(parent, out.name)
    stage = parent / _new_temp_name(out.name, "staging")
    stage.mkdir()
    try:
        yield stage
        out.mkdir(parents=True, exist_ok=True)
        for item in sorted(stage.rglob("*")):
            if item.is_file():
                target = out / item.relative_to(stage)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
