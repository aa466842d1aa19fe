"""Lobe sources behind --lobes (covidlesionseg.lobe_providers): built-in, files, TotalSegmentator and lungmask
outputs (their conversion, on label maps made here), auto's order and the messages when a source is absent."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from test_lobes import BOXES, encode, phantom

from covidlesionseg import io, labels
from covidlesionseg import lobe_providers as lp
from covidlesionseg.io import InputError, Volume

HAS = {name: importlib.util.find_spec(name) is not None for name in ("totalsegmentator", "lungmask")}


def test_none_builtin_and_auto():
    ct, lungs, _ = phantom()
    assert lp.resolve_lobe_source("none", ct, lungs) == (None, "none")
    lobes, source = lp.resolve_lobe_source("builtin", ct, lungs)
    assert source == "builtin"
    assert np.array_equal(labels.lungs_from_lobes(lobes), lungs)  # every lung voxel in one lobe of its side
    assert set(np.unique(lobes)) == {0, *labels.LOBE_NAMES}
    assert isinstance(lp.auto_providers()[-1], lp.BuiltinLobes)
    if not HAS["totalsegmentator"] and not HAS["lungmask"]:
        auto, source = lp.resolve_lobe_source("auto", ct, lungs)
        assert source == "builtin"  # never "none" silently
        np.testing.assert_array_equal(auto, lobes)


@pytest.mark.parametrize("name", ["totalsegmentator", "lungmask"])
def test_absent_optional_provider_is_named_with_its_install_command(name):
    if HAS[name]:
        pytest.skip(f"{name} is installed here")
    ct, lungs, _ = phantom()
    with pytest.raises(InputError, match=f"the {name} package is not installed .pip install"):
        lp.check_lobe_spec(name)
    with pytest.raises(InputError, match="not installed"):
        lp.resolve_lobe_source(name, ct, lungs)
    assert not any(p.name == name for p in lp.auto_providers())


def test_files_and_arrays(tmp_path):
    ct, lungs, truth = phantom()
    with pytest.raises(InputError, match="lobe file not found"):
        lp.resolve_lobe_source(str(tmp_path / "missing.nii.gz"), ct, lungs)
    with pytest.raises(InputError, match="unknown lobe convention"):
        lp.FileLobes(tmp_path / "x.nii.gz", "lungmask_r231")
    path = tmp_path / "lobes_lungmask.nii.gz"
    io.write_label(path, ct, encode(truth, "lungmask"))
    array, source = lp.resolve_lobe_source(str(path), ct, lungs)  # detected by laterality
    assert source == "file:lungmask"
    np.testing.assert_array_equal(array, truth)
    array, source = lp.resolve_lobe_source(str(path), ct, lungs, convention="lungmask")
    assert source == "file:lungmask"
    provider = lp.ArrayLobes(truth, "truth")
    assert provider.name == "truth"
    np.testing.assert_array_equal(provider.lobes(ct, lungs), truth)


def test_file_lobes_on_another_grid_are_resampled(tmp_path, caplog):
    """A lobe map at twice the resolution over the same extent comes back onto the CT grid, reported."""
    ct, lungs, truth = phantom()
    fine = truth.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    half = tuple(s / 2 for s in ct.spacing)
    fine_volume = Volume(fine, half, origin=tuple(o - s / 4 for o, s in zip(ct.origin, ct.spacing)))
    path = tmp_path / "fine.nrrd"
    io.write_label(path, fine_volume, encode(fine, "totalsegmentator_v2"))
    provider = lp.FileLobes(path)
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(provider.lobes(ct, lungs), truth)
    assert provider.name == "file:totalsegmentator_v2"
    assert "lies on another grid" in caplog.text and "nearest neighbour" in caplog.text


@pytest.mark.parametrize("version", ["totalsegmentator_v2", "totalsegmentator_v1"])
def test_totalsegmentator_output_converted(tmp_path, version):
    """TotalSegmentator's multi-label output (other organs too, another grid) gives our five lobes."""
    ct, lungs, truth = phantom()
    ts = encode(truth, version)
    ts[0, :3, :3] = 5 if version.endswith("v2") else 42  # liver / esophagus: ignored
    ts[23, :2, :2] = 104
    fine_volume = Volume(ts.repeat(2, 0), (ct.spacing[0], ct.spacing[1], ct.spacing[2] / 2),
                         origin=(ct.origin[0], ct.origin[1], ct.origin[2] - ct.spacing[2] / 4))
    path = tmp_path / "ts.nii.gz"
    io.write_label(path, fine_volume, ts.repeat(2, 0))
    np.testing.assert_array_equal(lp.lobes_from_totalsegmentator(path, ct, lungs), truth)
    io.write_label(path, ct, encode(truth, "cip"))
    with pytest.raises(InputError, match="does not hold its lobe ids"):
        lp.lobes_from_totalsegmentator(path, ct, lungs)


def test_lungmask_output_converted_and_repaired(caplog):
    ct, lungs, truth = phantom()
    predicted = encode(truth, "lungmask").astype(np.uint8)
    np.testing.assert_array_equal(lp.lobes_from_lungmask(predicted, ct, lungs), truth)
    predicted[BOXES[labels.RML]] = 0  # lungmask missed a lobe: repaired by the nearest lobe, reported
    with caplog.at_level("WARNING"):
        repaired = lp.lobes_from_lungmask(predicted, ct, lungs)
    assert np.array_equal(labels.lungs_from_lobes(repaired), lungs)
    assert "lungmask lobes repaired" in caplog.text
    with pytest.raises(InputError, match="lungmask returned"):
        lp.lobes_from_lungmask(predicted[1:], ct, lungs)
