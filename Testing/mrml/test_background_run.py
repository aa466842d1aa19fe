"""Background runs as real process trees: Cancel ends the whole tree, error lines reach the caller, results land
on the volume that was segmented, temporary folders go away."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")  # a zombie has ended


def _wait_for(runner, predicate):
    while not predicate():
        if runner.poll():
            break


def _tree_runner(*args):
    from COVIDLesionSegLib import process

    runner = process.SubprocessRunner()
    lines: list[str] = []
    runner.start(process.leader_command(sys.executable, "tree_worker", list(args)), {"PYTHONPATH": str(HERE)},
                 on_line=lines.append)
    return runner, lines


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
def test_cancel_ends_the_whole_process_tree():
    runner, lines = _tree_runner()
    _wait_for(runner, lambda: any(line.startswith("PROGRESS") for line in lines))
    child = int(next(line for line in lines if line.startswith("CHILD")).split()[1])
    leader = runner.process.pid
    assert runner.state.pgid == leader and _alive(child)
    runner.cancel()
    runner.wait()
    runner.process.wait()
    assert not _alive(leader)
    while _alive(child):  # the grandchild was killed with its group; only reaping by init may lag
        pass
    assert runner.state.status == "cancelled" and runner.state.exit_code != 0
    assert runner.state.summary == "cancelled; nothing loaded"
    assert any("\ufffd" in line for line in lines)  # an undecodable byte did not stop the reader


def test_error_line_reaches_the_caller():
    runner, _ = _tree_runner("--fail")
    state = runner.wait()
    assert state.status == "failed" and state.exit_code == 2
    assert state.errors[-1] == "covidlesionseg: error: the worker was told to fail"
    assert state.progress == pytest.approx(0.5)
    child = int(next(line for line in state.lines if line.startswith("CHILD")).split()[1])
    os.kill(child, 9)


def test_worker_ends_when_its_parent_goes_away():
    """The leader's watchdog: stdin closing (the parent died) ends the group."""
    runner, lines = _tree_runner()
    _wait_for(runner, lambda: any(line.startswith("PROGRESS") for line in lines))
    child = int(next(line for line in lines if line.startswith("CHILD")).split()[1])
    runner.process.stdin.close()
    runner.process.wait()
    while _alive(child):
        pass


def test_run_loads_onto_the_segmented_volume_and_cleans_up(scene, small_phantom):
    import slicer

    from COVIDLesionSegLib import editor, mrml, process, terminology
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    ct = mrml.node_from_volume(small_phantom.ct, "CT")
    logic = COVIDLesionSegLogic(runner_factory=process.SubprocessRunner)
    run = logic.start_run(ct, engine="classical", lobes="none")
    workdir = Path(run.workdir)
    other = mrml.node_from_volume(small_phantom.ct, "another CT")  # the selector moves on meanwhile
    logic.parameters.set_node("inputVolume", other)
    state = run.runner.wait()
    assert state.status == "succeeded", state.lines[-5:]
    fractions = [float(line.split()[1]) for line in state.lines if line.startswith("PROGRESS ")]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    nodes = logic.finish_run()
    assert not workdir.exists() and logic.run is None
    assert nodes.lesions.GetNodeReferenceID("COVIDLesionSeg.volume") == ct.GetID()
    assert logic.parameters.node_for("inputVolume") is ct
    direct = logic.segment(ct, engine="classical", lobes="none")
    assert direct.lesions is not nodes.lesions  # a script never overwrites: new nodes
    a = mrml.segment_mask(nodes.lesions, editor.segment_id(nodes.lesions, terminology.LESION), ct)
    b = mrml.segment_mask(direct.lesions, editor.segment_id(direct.lesions, terminology.LESION), ct)
    assert np.array_equal(a, b) and a.any()
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 4


def test_cancelled_segmentation_loads_nothing(scene, small_phantom):
    import slicer

    from COVIDLesionSegLib import mrml, process
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    ct = mrml.node_from_volume(small_phantom.ct, "CT")
    logic = COVIDLesionSegLogic(runner_factory=process.SubprocessRunner)
    run = logic.start_run(ct, engine="classical", lobes="none")
    runner, workdir = run.runner, Path(run.workdir)
    _wait_for(runner, lambda: runner.state.progress > 0)
    pgid = runner.state.pgid
    logic.cancel_run()
    runner.process.wait()
    assert runner.state.status == "cancelled"
    assert not workdir.exists() and logic.run is None
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_failed_run_reports_the_worker_error(scene, small_phantom):
    from COVIDLesionSegLib import mrml, process
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    ct = mrml.node_from_volume(small_phantom.ct, "CT")
    logic = COVIDLesionSegLogic(runner_factory=process.SubprocessRunner)
    run = logic.start_run(ct, engine="no-such-engine", lobes="none")
    run.runner.wait()
    with pytest.raises(ValueError, match="covidlesionseg: error: .*no-such-engine"):
        logic.finish_run()
    assert logic.run is None


def test_bad_inputs_are_refused_with_a_message(scene, small_phantom):
    import slicer

    from covidlesionseg.io import Volume
    from COVIDLesionSegLib import mrml
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    logic = COVIDLesionSegLogic()
    with pytest.raises(ValueError, match="select a CT volume first"):
        logic.start_run(None)
    label = mrml.node_from_volume(small_phantom.ct.like(small_phantom.lungs.astype(np.int16)), "lungs",
                                  "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(ValueError, match="is a label map, not a CT"):
        logic.start_run(label)
    photo = mrml.node_from_volume(Volume(np.full((4, 8, 8), 128, np.uint8), (1, 1, 1), (0, 0, 0), np.eye(3)), "MR")
    with pytest.raises(ValueError, match="not a CT in Hounsfield units"):
        logic.start_run(photo)
    ct = mrml.node_from_volume(small_phantom.ct, "CT")
    if "cuda" not in logic.available_devices():
        with pytest.raises(ValueError, match="device 'cuda' is not available"):
            logic.start_run(ct, device="cuda")
    with pytest.raises(ValueError, match="lobe file not found"):
        logic.start_run(ct, lobes="file", lobe_file="/nonexistent/lobes.nii.gz")
    assert logic.run is None
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
