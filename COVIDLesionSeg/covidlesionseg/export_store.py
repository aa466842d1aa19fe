"""The export folder on disk: immutable case versions, the latest-version views, locking and recovery.

Layout of an export folder (an nnU-Net v2 raw dataset and a MONAI datalist at the same time)::

    dataset.json  datalist.json  splits_final.json      derived from versions/, rewritten atomically
    imagesTr/CASE_0000.nii.gz   labelsTr/CASE.nii.gz    latest version of each case (hard links)
    labelsOriginal/CASE.nii.gz  segmentations/CASE.seg.nrrd  provenance/CASE.json
    versions/CASE/v0001/ ...    every version ever exported, never changed or deleted
    identifiable/CASE/v0001/segmentation.dcm           DICOM SEG (patient identifiers inside), on request
    .export.lock  .salt  .staging/

Writing a version: its files are written into ``.staging/<pid>-<random>/`` without the lock, then
under an exclusive lock on ``.export.lock`` (``fcntl.flock``; ``msvcrt.locking`` on Windows; the
kernel releases it when the process dies) the next version number is taken and the
staged folder is renamed to ``versions/CASE/vNNNN`` (one atomic rename: the commit).  The views and
JSON files are then rebuilt from ``versions/`` (each file replaced atomically).  A process killed at
any point leaves every committed version intact; the views it may have left stale are rebuilt by
:func:`recover`, which every export and every reader of the folder runs under the lock first.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidlesionseg import SOFTWARE_NAME, __version__
from covidlesionseg.io import InputError, write_json
from covidlesionseg.weights import sha256_file

LOCK_FILE = ".export.lock"
SALT_FILE = ".salt"
STAGING_DIR = ".staging"
VERSIONS_DIR = "versions"
IDENTIFIABLE_DIR = "identifiable"
DATASET_JSON = "dataset.json"
DATALIST_JSON = "datalist.json"
SPLITS_JSON = "splits_final.json"
N_FOLDS = 5
FILE_ENDING = ".nii.gz"
TRAINING_LABELS = {"background": 0, "lung": 1, "lesion": 2}
CHANNEL_NAMES = {"0": "CT"}

# Files of one version folder, and where the latest version of each appears (folder, name pattern).
IMAGE = "image.nii.gz"
LABEL = "label.nii.gz"
ORIGINAL = "original.nii.gz"
LOBES = "lobes.nii.gz"
SEGMENTATION = "segmentation.seg.nrrd"
PROVENANCE = "provenance.json"
DICOM_SEG = "segmentation.dcm"
VIEWS = {
    IMAGE: ("imagesTr", "{case}_0000" + FILE_ENDING),
    LABEL: ("labelsTr", "{case}" + FILE_ENDING),
    ORIGINAL: ("labelsOriginal", "{case}" + FILE_ENDING),
    SEGMENTATION: ("segmentations", "{case}.seg.nrrd"),
    PROVENANCE: ("provenance", "{case}.json"),
}
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
PAUSE_ENV = "COVIDLESIONSEG_EXPORT_PAUSE"


@dataclass(frozen=True)
class CaseVersion:
    """One committed version of a case."""

    case_id: str
    version: int
    folder: Path
    provenance: dict[str, Any]


def version_name(version: int) -> str:
    return f"v{version:04d}"


def view_path(root: Path, case_id: str, file: str) -> Path:
    folder, pattern = VIEWS[file]
    return root / folder / pattern.format(case=case_id)


def check_case_id(case_id: str) -> str:
    if not CASE_ID_PATTERN.match(case_id):
        raise InputError(f"case id {case_id!r}: use 1-64 letters, digits, '_' or '-' (no spaces, no dots)")
    return case_id


def checkpoint(name: str) -> None:
    """Fault-injection point of the crash tests: with ``COVIDLESIONSEG_EXPORT_PAUSE=name`` the process
    prints ``PAUSED name`` and waits there to be killed (kill -9)."""
    if os.environ.get(PAUSE_ENV) == name:
        import time

        print(f"PAUSED {name}", flush=True)
        while True:
            time.sleep(60)


# --- locking, salt, staging ------------------------------------------------------------------
if os.name == "nt":  # pragma: no cover - Slicer on Windows
    import msvcrt

    def _lock(fh, blocking: bool = True) -> bool:
        fh.seek(0)
        while True:
            try:
                msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not blocking:
                    return False

    def _unlock(fh) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fh, blocking: bool = True) -> bool:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False

    def _unlock(fh) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the folder's exclusive lock (released by the kernel when the process dies, even by kill -9)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+") as fh:
        _lock(fh)
        try:
            yield
        finally:
            _unlock(fh)


def salt(root: Path) -> str:
    """The folder's random salt for pseudonymous ids (created under the lock by :func:`recover`)."""
    path = root / SALT_FILE
    if not path.is_file():
        raise InputError(f"{root} is not an export folder (no {SALT_FILE}); export a case into it first")
    return path.read_text().strip()


def pseudonym(root: Path, prefix: str, *parts: str) -> str:
    """``prefix`` + 12 hex digits of a salted SHA-256: stable within this folder, unlinkable across folders."""
    digest = hashlib.sha256("\x1f".join((salt(root), *parts)).encode()).hexdigest()
    return f"{prefix}{digest[:12]}"


class Staging:
    """A private folder under ``.staging/``, owned while its sibling ``NAME.lock`` is locked by this process.

    A process killed while owning one releases the lock with its death; :func:`recover` then removes
    the folder.  No process ids are involved (they are reused, and cannot be probed safely on Windows).
    """

    def __init__(self, root: Path):
        base = root / STAGING_DIR
        base.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        with locked(root):  # so that a sweep never sees the lock file before it is locked
            self._lock_path = base / f"{name}.lock"
            self._fh = open(self._lock_path, "a+")  # held open for the folder's lifetime
            _lock(self._fh)
            self.path = base / name
            self.path.mkdir()

    def close(self) -> None:
        """Remove what is left of the folder (nothing after a commit) and give up ownership."""
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            _unlock(self._fh)
        self._fh.close()
        with contextlib.suppress(OSError):
            self._lock_path.unlink()


def _sweep_staging(root: Path) -> None:
    """Remove staging folders whose owner died (a killed export); those of live exports stay (call under the lock)."""
    base = root / STAGING_DIR
    for lock_path in sorted(base.glob("*.lock")):
        with open(lock_path, "a+") as fh:
            if not _lock(fh, blocking=False):
                continue  # a live export owns it
            shutil.rmtree(base / lock_path.name[: -len(".lock")], ignore_errors=True)
            _unlock(fh)
        with contextlib.suppress(OSError):
            lock_path.unlink()
    for folder in base.glob("*"):
        if folder.is_dir() and not (base / f"{folder.name}.lock").exists():
            shutil.rmtree(folder, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """Flush every file and the folder itself to disk (so a commit survives a power cut, not only a kill)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk (POSIX; Windows cannot open folders as files)."""
    if os.name == "nt":  # pragma: no cover
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- versions ----------------------------------------------------------------------------------
def case_versions(root: Path, case_id: str) -> list[CaseVersion]:
    """Committed versions of a case, oldest first."""
    found = []
    for folder in (root / VERSIONS_DIR / case_id).glob("v*"):
        match = _VERSION_PATTERN.match(folder.name)
        prov = folder / PROVENANCE
        if match and prov.is_file():
            found.append(CaseVersion(case_id, int(match.group(1)), folder, json.loads(prov.read_text())))
    return sorted(found, key=lambda v: v.version)


def latest_versions(root: Path) -> list[CaseVersion]:
    """The latest committed version of every case, sorted by case id."""
    latest = []
    for case_dir in sorted((root / VERSIONS_DIR).glob("*")):
        versions = case_versions(root, case_dir.name)
        if versions:
            latest.append(versions[-1])
    return latest


def next_version(root: Path, case_id: str) -> int:
    """Next free version number (folders without provenance, from a killed export, are skipped too)."""
    numbers = [int(m.group(1)) for f in (root / VERSIONS_DIR / case_id).glob("v*")
               if (m := _VERSION_PATTERN.match(f.name))]
    return max(numbers, default=0) + 1


def fold_for(root: Path, patient_key: str) -> int:
    """The patient's fold: the one given to this patient before, else the fold with the fewest patients."""
    patients_per_fold = [set() for _ in range(N_FOLDS)]
    for v in latest_versions(root):
        key, fold = v.provenance.get("patient_key"), v.provenance.get("fold")
        if key == patient_key and isinstance(fold, int):
            return fold
        if isinstance(fold, int) and 0 <= fold < N_FOLDS:
            patients_per_fold[fold].add(key)
    counts = [len(p) for p in patients_per_fold]
    return counts.index(min(counts))


def commit(root: Path, staging: Path, case_id: str, version: int) -> Path:
    """Atomically publish a staged version folder as ``versions/CASE/vNNNN`` (call under the lock)."""
    target = root / VERSIONS_DIR / case_id / version_name(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.name != "nt":  # Windows refuses to replace a read-only file, and the views are links to these
        for path in staging.rglob("*"):
            if path.is_file():
                path.chmod(0o444)  # versions are never changed; the views are hard links to them
    fsync_tree(staging)
    os.rename(staging, target)
    fsync_dir(target.parent)
    return target


# --- views and the dataset files -------------------------------------------------------------------
def _link_or_copy(source: Path, target: Path) -> bool:
    """Make ``target`` the same file as ``source``, replacing it atomically; False when it already was."""
    if target.exists() and os.path.samefile(source, target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(3)}")
    try:
        os.link(source, tmp)
    except OSError:  # a file system without hard links
        shutil.copy2(source, tmp)
    os.replace(tmp, target)
    return True


def _write_json_if_changed(path: Path, data: Any) -> None:
    if path.is_file():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(path.read_text()) == data:
                return
    write_json(path, data)


def dataset_documents(latest: list[CaseVersion]) -> tuple[dict, dict, list]:
    """dataset.json (nnU-Net v2), datalist.json (MONAI) and splits_final.json (nnU-Net) of the latest versions."""
    dataset = {
        "name": SOFTWARE_NAME,
        "description": "Reader-corrected COVID-19 lung lesion segmentations exported by COVIDLesionSeg",
        "channel_names": CHANNEL_NAMES,
        "labels": TRAINING_LABELS,
        "numTraining": len(latest),
        "file_ending": FILE_ENDING,
        "covidlesionseg": {"software_version": __version__, "format": 1, "folds": N_FOLDS},
    }
    training = []
    for v in latest:
        entry = {"image": f"{VIEWS[IMAGE][0]}/{v.case_id}_0000{FILE_ENDING}",
                 "label": f"{VIEWS[LABEL][0]}/{v.case_id}{FILE_ENDING}",
                 "fold": v.provenance["fold"], "case_id": v.case_id, "patient_key": v.provenance["patient_key"],
                 "version": v.version}
        if v.provenance.get("files", {}).get(ORIGINAL):
            entry["label_original"] = f"{VIEWS[ORIGINAL][0]}/{v.case_id}{FILE_ENDING}"
        training.append(entry)
    datalist = {"name": SOFTWARE_NAME, "labels": {str(value): name for name, value in TRAINING_LABELS.items()},
                "training": training, "testing": []}
    splits = [{"train": [v.case_id for v in latest if v.provenance["fold"] != fold],
               "val": [v.case_id for v in latest if v.provenance["fold"] == fold]} for fold in range(N_FOLDS)]
    return dataset, datalist, splits


def rebuild_views(root: Path) -> list[CaseVersion]:
    """Point every view at the latest version of its case and rewrite the JSON files (call under the lock)."""
    latest = latest_versions(root)
    for v in latest:
        for file in VIEWS:
            source = v.folder / file
            if source.is_file() and _link_or_copy(source, view_path(root, v.case_id, file)):
                checkpoint("view")  # some views of this case are new, others not yet
    dataset, datalist, splits = dataset_documents(latest)
    _write_json_if_changed(root / DATALIST_JSON, datalist)
    _write_json_if_changed(root / SPLITS_JSON, splits)
    _write_json_if_changed(root / DATASET_JSON, dataset)
    return latest


def recover(root: Path) -> list[CaseVersion]:
    """Under the lock: create the folder's salt if new, drop dead staging folders, rebuild the views."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(f"export folder {root} exists and is not a folder")
    with locked(root):
        if not (root / SALT_FILE).is_file():
            tmp = root / f"{SALT_FILE}.{os.getpid()}"
            tmp.write_text(secrets.token_hex(16) + "\n")
            os.replace(tmp, root / SALT_FILE)
        _sweep_staging(root)
        _sweep_view_temporaries(root)
        return rebuild_views(root)


def _sweep_view_temporaries(root: Path) -> None:
    """Remove hidden temporaries a killed export left in the view folders (they are written only under the lock)."""
    for folder, _pattern in VIEWS.values():
        for path in (root / folder).glob(".*"):
            if path.is_file():
                path.unlink()


# --- checking ---------------------------------------------------------------------------------------
def _same_content(view: Path, source: Path) -> bool:
    """The view is the version's file: a hard link to it, or (file systems without links) an equal copy."""
    return os.path.samefile(view, source) or filecmp.cmp(view, source, shallow=False)


def check_export(root: str | os.PathLike, *, verify_hashes: bool = True) -> list[str]:
    """Problems of an export folder as it is on disk (no lock, nothing changed); empty when valid.

    Valid: dataset.json, datalist.json and splits_final.json parse and agree with imagesTr/labelsTr;
    every view is the latest committed version of its case; every version folder is complete and, with
    ``verify_hashes``, every file still has the SHA-256 its provenance recorded.
    """
    root = Path(root)
    problems: list[str] = []
    try:
        dataset = json.loads((root / DATASET_JSON).read_text())
        datalist = json.loads((root / DATALIST_JSON).read_text())
        json.loads((root / SPLITS_JSON).read_text())
    except (OSError, ValueError) as exc:
        return [f"dataset files unreadable: {exc}"]
    labels = sorted(p.name for p in (root / VIEWS[LABEL][0]).glob("*" + FILE_ENDING))
    images = sorted(p.name for p in (root / VIEWS[IMAGE][0]).glob("*" + FILE_ENDING))
    if dataset.get("numTraining") != len(labels):
        problems.append(f"numTraining {dataset.get('numTraining')} but {len(labels)} files in labelsTr")
    if len(images) != len(labels):
        problems.append(f"{len(images)} images but {len(labels)} labels")
    for name in labels:
        if name.replace(FILE_ENDING, "_0000" + FILE_ENDING) not in images:
            problems.append(f"label {name} has no image")
    entries = datalist.get("training", [])
    if len(entries) != len(labels):
        problems.append(f"datalist has {len(entries)} entries, labelsTr {len(labels)}")
    for entry in entries:
        for key in ("image", "label"):
            if not (root / entry[key]).is_file():
                problems.append(f"datalist {key} {entry[key]} missing")
    for case_dir in sorted((root / VERSIONS_DIR).glob("*")):
        versions = case_versions(root, case_dir.name)
        for v in versions:
            for file, digest in v.provenance.get("files", {}).items():
                path = v.folder / file
                if not path.is_file():
                    problems.append(f"{case_dir.name}/{v.folder.name}: {file} missing")
                elif verify_hashes and sha256_file(path) != digest:
                    problems.append(f"{case_dir.name}/{v.folder.name}: {file} changed since export")
        if versions:
            latest = versions[-1]
            for file in VIEWS:
                view, source = view_path(root, latest.case_id, file), latest.folder / file
                if source.is_file() and not (view.is_file() and _same_content(view, source)):
                    problems.append(f"view {view.relative_to(root)} is not version {latest.version}")
    return problems
