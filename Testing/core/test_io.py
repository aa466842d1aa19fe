"""Reading, checking and writing CT and label maps with exact geometry."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from covidlesionseg import filecheck, io

OBLIQUE = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1, 0, 0], [0, np.cos(0.1), -np.sin(0.1)], [0, np.sin(0.1), np.cos(0.1)]]
)


def chest_like(shape=(8, 40, 48), seed=0) -> np.ndarray:
    """Soft tissue body with two air-filled 'lungs' and air outside: passes the CT checks."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape)
    ct = np.full(shape, -1000.0, np.float32)
    body = ((j - shape[1] / 2) / (shape[1] * 0.45)) ** 2 + ((i - shape[2] / 2) / (shape[2] * 0.45)) ** 2 < 1
    ct[body] = 40
    for c in (0.3, 0.7):
        lung = ((j - shape[1] / 2) / (shape[1] * 0.3)) ** 2 + ((i - shape[2] * c) / (shape[2] * 0.15)) ** 2 < 1
        ct[lung] = -850
    return ct + rng.normal(0, 5, shape).astype(np.float32)


def make_volume(shape=(8, 40, 48), direction=np.eye(3)) -> io.Volume:
    return io.Volume(chest_like(shape), (0.8, 0.9, 2.5), (-20.0, 10.0, 300.0), direction)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), OBLIQUE])
def test_ct_round_trip_keeps_values_and_geometry(tmp_path, suffix, direction):
    vol = make_volume(direction=direction)
    path = tmp_path / f"ct{suffix}"
    io.write_volume(path, vol)
    back = io.read_ct(path)
    assert back.same_geometry(vol)
    np.testing.assert_allclose(back.array, vol.array, atol=1e-3)
    assert back.array.dtype == np.float32


def test_label_round_trip_on_reference_grid(tmp_path):
    vol = make_volume(direction=OBLIQUE)
    labels_in = (np.arange(vol.array.size) % 3).reshape(vol.shape).astype(np.uint8)
    io.write_label(tmp_path / "l.nii.gz", vol, labels_in)
    back = io.read_label(tmp_path / "l.nii.gz", vol)
    assert back.same_geometry(vol)
    assert np.array_equal(back.array, labels_in)


def test_label_on_other_grid_refused_or_resampled(tmp_path):
    vol = make_volume()
    other = io.Volume(np.zeros((4, 20, 24), np.uint8), (1.6, 1.8, 5.0), vol.origin, vol.direction)
    other.array[:, 5:15, 6:18] = 3
    io.write_label(tmp_path / "o.nrrd", other, other.array)
    with pytest.raises(io.InputError, match="does not match the CT"):
        io.read_label(tmp_path / "o.nrrd", vol)
    res = io.read_label(tmp_path / "o.nrrd", vol, resample=True)
    assert res.shape == vol.shape and set(np.unique(res.array)) == {0, 3}


def test_patient_axes_come_from_direction_cosines():
    assert make_volume(direction=np.eye(3)).patient_axis("LR") == (2, 1)
    assert make_volume(direction=np.diag([-1.0, -1.0, 1.0])).patient_axis("LR") == (2, -1)
    permuted = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # index k runs toward the left
    assert make_volume(direction=permuted).patient_axis("LR") == (0, 1)
    assert make_volume(direction=permuted).patient_axis("SI") == (1, 1)


def test_lps_points_match_simpleitk():
    vol = make_volume(direction=OBLIQUE)
    image = vol.to_sitk()
    idx = np.array([[0, 0, 0], [3, 7, 11], [7, 39, 47]])
    expected = [image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]) for k, j, i in idx]
    np.testing.assert_allclose(vol.lps_points(idx), expected, atol=1e-9)


def test_one_slice_and_2d_images_are_accepted(tmp_path):
    one = io.Volume(chest_like((1, 40, 48)), (0.7, 0.7, 5.0))
    io.write_volume(tmp_path / "one.nrrd", one)
    assert io.read_ct(tmp_path / "one.nrrd").shape == (1, 40, 48)
    flat = sitk.GetImageFromArray(chest_like((1, 40, 48))[0])
    sitk.WriteImage(flat, str(tmp_path / "flat.nrrd"))
    assert io.read_ct(tmp_path / "flat.nrrd").shape == (1, 40, 48)


def _write(tmp_path, name, image):
    sitk.WriteImage(image, str(tmp_path / name))
    return tmp_path / name


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sitk.GetImageFromArray(np.zeros((4, 8, 8, 3), np.uint8), isVector=True), "components per voxel"),
        (lambda: sitk.GetImageFromArray(np.zeros((2, 4, 8, 8), np.int16), isVector=False), "4D"),
        (lambda: sitk.GetImageFromArray(np.where(np.eye(8)[None] > 0, np.nan, -800.0).repeat(3, 0)), "NaN"),
        (lambda: sitk.GetImageFromArray(np.full((3, 8, 8), 40, np.int16)), "not a CT"),
        (lambda: sitk.GetImageFromArray(chest_like() + 1024.0), "raw stored values"),
        (lambda: sitk.GetImageFromArray(np.clip(chest_like(), -400, None)), "air or lung"),
    ],
)
def test_bad_ct_refused_with_one_line(tmp_path, make, message):
    path = _write(tmp_path, "bad.nrrd", make())
    with pytest.raises(io.InputError, match=message) as err:
        io.read_ct(path)
    assert "\n" not in str(err.value)


def test_non_ct_modality_refused():
    image = sitk.GetImageFromArray(chest_like())
    with pytest.raises(io.InputError, match="modality is MR"):
        io.check_ct(image, {"modality": "MR"})


def test_missing_and_unknown_inputs(tmp_path):
    with pytest.raises(io.InputError, match="not found"):
        io.read_ct(tmp_path / "absent.nii.gz")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(io.InputError, match="unsupported file type"):
        io.read_ct(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(io.InputError, match="no DICOM series"):
        io.read_ct(tmp_path / "empty")


def _write_series(folder, vol: io.Volume, order, skip=()) -> np.ndarray:
    """Write ``vol`` as a CT DICOM series, slices in file-name ``order``, leaving out the slices in ``skip``."""
    stored = np.round(vol.array).astype(np.int16)
    image = vol.to_sitk(stored)
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.8.498.1"
    for rank, k in enumerate(order):
        if k in skip:
            continue
        sl = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0008|0060": "CT", "0020|000e": series_uid, "0020|000d": "1.2.826.0.1.3680043.8.498.2",
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin), "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{vol.spacing[2]:.4f}", "0028|1052": "0", "0028|1053": "1", "0020|0013": str(rank + 1),
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IMG{rank:04d}.dcm"))
        writer.Execute(sl)
    return stored


def test_dicom_series_sorted_by_position_and_rescaled(tmp_path):
    """A series written with shuffled file names and a rescale intercept loads in position order, in HU."""
    vol = make_volume(shape=(6, 32, 40))
    folder = tmp_path / "series"
    stored = _write_series(folder, vol, [3, 0, 5, 1, 4, 2])
    back = io.read_ct(folder)
    assert back.meta["modality"] == "CT"
    np.testing.assert_allclose(back.array, stored, atol=0.5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-3)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-3)


def test_dicom_series_with_a_missing_slice_refused_naming_the_gap(tmp_path):
    """10 slices at 2.5 mm with slice 5 removed: ITK would read 9 slices at one uniform spacing."""
    vol = make_volume(shape=(10, 16, 20))
    _write_series(tmp_path / "gap", vol, list(range(10)), skip={5})
    with pytest.raises(io.InputError) as err:
        io.read_ct(tmp_path / "gap")
    msg = str(err.value)
    assert "IMG0004.dcm and IMG0006.dcm are 5.00 mm apart, 2.50 mm elsewhere" in msg and "\n" not in msg


def test_staged_output_writes_all_or_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with io.staged_output(out) as stage:
            (stage / "a.txt").write_text("partial")
            raise RuntimeError("boom")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    with io.staged_output(out) as stage:
        (stage / "a.txt").write_text("whole")
        (stage / "sub").mkdir()
        (stage / "sub" / "b.txt").write_text("b")
    assert (out / "a.txt").read_text() == "whole" and (out / "sub" / "b.txt").read_text() == "b"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_write_json_is_atomic(tmp_path):
    io.write_json(tmp_path / "s.json", {"a": 1})
    with pytest.raises(TypeError):
        io.write_json(tmp_path / "s.json", {"a": object()})
    assert (tmp_path / "s.json").read_text().strip() == '{\n  "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_write_ct_stores_whole_hu_as_int16_and_keeps_fractions(tmp_path):
    vol = make_volume()
    whole = io.Volume(np.round(vol.array), vol.spacing, vol.origin, vol.direction)
    io.write_ct(tmp_path / "whole.nii.gz", whole)
    io.write_ct(tmp_path / "frac.nii.gz", vol)
    assert sitk.ReadImage(str(tmp_path / "whole.nii.gz")).GetPixelID() == sitk.sitkInt16
    assert sitk.ReadImage(str(tmp_path / "frac.nii.gz")).GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(io.read_ct(tmp_path / "whole.nii.gz").array, whole.array)
    assert np.array_equal(io.read_ct(tmp_path / "frac.nii.gz").array, vol.array)


# --- files that contradict their header, and sizes that cannot fit ---------------------------------------
def _header_only_nifti(path, dims, gz: bool) -> None:
    """A NIfTI-1 header declaring int16 ``dims`` with no voxel data after it."""
    small = path.parent / "one.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 1, 1), np.int16)), str(small))
    raw = bytearray(small.read_bytes())
    vox_offset = int(struct.unpack("<f", raw[108:112])[0])
    raw[40:56] = struct.pack("<8h", len(dims), *dims, *([1] * (7 - len(dims))))
    data = bytes(raw[:vox_offset])
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_files_refused(tmp_path, suffix):
    """Half of each file cut off: NIfTI would otherwise read the missing slices as 0 HU."""
    path = tmp_path / f"ct{suffix}"
    io.write_ct(path, make_volume(shape=(12, 40, 48)))
    raw = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(io.InputError, match="truncated") as err:
        io.read_ct(cut)
    assert "\n" not in str(err.value)


def test_corrupt_gzip_refused(tmp_path):
    path = tmp_path / "ct.nii.gz"
    io.write_ct(path, make_volume(shape=(12, 40, 48)))
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # the gzip CRC32
    path.write_bytes(bytes(raw))
    with pytest.raises(io.InputError, match="corrupt compressed file"):
        io.read_ct(path)


def test_nan_in_nifti_refused_on_the_raw_data(tmp_path):
    """SimpleITK reads NaN in NIfTI as 0: the raw float data is checked."""
    arr = chest_like()
    arr[3, 10, 10] = np.nan
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # what the reader hides
    with pytest.raises(io.InputError, match="NaN"):
        io.read_ct(path)


def test_header_only_file_named_and_huge_declared_size_refused_before_reading(tmp_path):
    _header_only_nifti(tmp_path / "empty.nii", (2000, 2000, 2000), gz=False)
    with pytest.raises(io.InputError, match=r"2000x2000x2000 voxels \(16.0 GB\), the file holds no voxel data"):
        io.read_ct(tmp_path / "empty.nii")
    _header_only_nifti(tmp_path / "huge.nii.gz", (30000, 30000, 30000), gz=True)  # 54 TB: no machine has it
    with pytest.raises(io.InputError, match=r"processing needs about [\d.]+ GB of memory, [\d.]+ GB available"):
        io.read_ct(tmp_path / "huge.nii.gz")


def test_memory_guard_figures():
    declared = filecheck.Declared((512, 512, 300), 512 * 512 * 300 * 2)
    filecheck.check_memory("ct.nii", declared, 24, available=2_000_000_000)
    with pytest.raises(filecheck.FileCheckError, match=r"about 1.9 GB of memory, 1.5 GB available"):
        filecheck.check_memory("ct.nii", declared, 24, available=1_500_000_000)


# --- killed writers leave nothing that the next run keeps ---------------------------------------------------
_WRITER = r"""
import sys
import numpy as np
from covidlesionseg import io

point, out = sys.argv[1], sys.argv[2]
vol = io.Volume(np.full((4, 16, 16), -800.0, np.float32), (1.0, 1.0, 2.0))

def pause(name):
    if name == point:
        print(name, flush=True)
        sys.stdin.readline()  # the test kills this process here

with io.staged_output(out) as stage:
    pause("stage-created")
    io.write_ct(stage / "ct.nii.gz", vol)
    with open(stage / "lesions.nii.gz", "wb") as fh:
        fh.write(b"\x1f\x8b")  # a file half-way through being written
        fh.flush()
        pause("file-half-written")
    io.write_label(stage / "lesions.nii.gz", vol, np.zeros(vol.shape, np.uint8))
    io.write_json(stage / "severity.json", {"PO": 0.0})
    pause("stage-complete")
if point == "json-half-written":
    import json, os
    tmp = os.path.join(os.path.dirname(out) or ".", io._new_temp_name("severity.json", "tmp"))
    with open(tmp, "w") as fh:
        fh.write("{")
    pause("json-half-written")
"""


@pytest.mark.parametrize("point", ["stage-created", "file-half-written", "stage-complete", "json-half-written"])
def test_writer_killed_at_each_point_leaves_nothing_the_next_run_keeps(tmp_path, point):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    if point == "json-half-written":
        out = tmp_path / "first"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, point, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == point
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers, "the kill should leave a temporary behind for the next run to clean"
    if point != "json-half-written":
        assert not out.exists()  # nothing half-written in the output itself
    # The next run of a writer (a real subprocess of the command line) cleans up and writes whole files.
    run = subprocess.run([sys.executable, "-m", "covidlesionseg", "phantom", "-o", str(tmp_path / "out"),
                          "--seed", "1", "--shape", "8", "48", "48", "-q"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    if point == "json-half-written":
        io.write_json(tmp_path / "severity.json", {"PO": 1.0})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ct.nii.gz", "lesions.nii.gz", "lobes.nii.gz", "lungs.nii.gz", "severity.json"]


def test_live_writers_staging_is_kept(tmp_path):
    """A staging folder of a process that is still running is another writer's: not removed."""
    live = tmp_path / f".out.staging-{os.getppid()}-abcd"
    live.mkdir()
    dead = tmp_path / ".out.staging-oldformat"
    dead.mkdir()
    assert io.remove_stale(tmp_path, "out") == [dead]
    assert live.exists() and not dead.exists()
