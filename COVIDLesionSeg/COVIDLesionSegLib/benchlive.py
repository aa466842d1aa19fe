"""``python -m COVIDLesionSegLib.benchlive``: the module's live path measured on real MRML (slicer-core).

Brush strokes go through `vtkSlicerSegmentEditorLogic` (masked inside the Lung mask, as the editor does);
the time reported is from the stroke having landed to updated numbers: the scheduler's flush, i.e. the
observer-marked update, the changed-slab search, `SeverityCounter.update`, the scores and the table.
One full pass (`compute_severity` on the same maps) and one-click grow (the effect's work: region grow in a
box inside the Lung mask, then the editor's undo state and modification) are measured in the same run.
Prints one JSON object; ``covidlesionseg bench live`` runs this in a child process and reports it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.ceil(radius_vox).astype(int)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    return (zz / radius_vox[0]) ** 2 + (yy / radius_vox[1]) ** 2 + (xx / radius_vox[2]) ** 2 <= 1.0


def measure(shape: tuple[int, int, int], seed: int = 5, strokes: int = 40, clicks: int = 20,
            stroke_radius_mm: float = 5.0) -> dict:
    import slicer
    import vtk
    import vtk.util.numpy_support

    from covidlesionseg.phantom import generate_phantom
    from covidlesionseg.severity import compute_severity
    from COVIDLesionSegLib import editor, headless, mrml, terminology
    from COVIDLesionSegLib.live import ManualScheduler
    from COVIDLesionSegLib.logic import COVIDLesionSegLogic

    scene = headless.bootstrap_scene()
    phantom = generate_phantom(seed, "CT2", shape=shape)
    ct = phantom.ct
    volume = mrml.node_from_volume(ct, "CT")
    logic = COVIDLesionSegLogic()
    t0 = time.perf_counter()
    truth = compute_severity(ct, phantom.lesions, phantom.lungs, phantom.lobes, lobe_source="truth")
    full_ms = (time.perf_counter() - t0) * 1000
    nodes = logic.show_results(volume, phantom.lesions, phantom.lungs, phantom.lobes, {"engine": "truth", **truth})
    editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor_logic = slicer.vtkSlicerSegmentEditorLogic()
    editor_logic.SetMRMLScene(scene)
    editor_logic.SetSegmentEditorNode(editor_node)
    editor.configure_lesion_editing(editor_node, nodes.lesions, volume)
    editor_logic.SetSegmentationNode(nodes.lesions)
    editor_logic.SetSourceVolumeNode(volume)
    editor_logic.SetMaximumNumberOfUndoStates(5)
    scheduler = ManualScheduler()
    t0 = time.perf_counter()
    live = logic.start_live(scheduler)
    attach_ms = (time.perf_counter() - t0) * 1000
    if live.severity is None:
        raise RuntimeError(live.message)

    lesion_id = editor.segment_id(nodes.lesions, terminology.LESION)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    ball = _ball(stroke_radius_mm / np.asarray(ct.spacing_zyx))
    rng = np.random.default_rng(seed)
    lung_idx = np.flatnonzero(phantom.lungs)
    stroke_ms, apply_ms = [], []
    for n in range(strokes):
        centre = np.array(np.unravel_index(rng.choice(lung_idx), shape))
        lo = np.maximum(centre - np.array(ball.shape) // 2, 0)
        hi = np.minimum(lo + np.array(ball.shape), shape)
        stamp = ball[tuple(slice(0, b - a) for a, b in zip(lo, hi))]
        image = slicer.vtkOrientedImageData()
        extent = [int(lo[2]), int(hi[2]) - 1, int(lo[1]), int(hi[1]) - 1, int(lo[0]), int(hi[0]) - 1]
        image.SetExtent(*extent)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.SetImageToWorldMatrix(ijk_to_ras)
        vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = stamp.astype(np.uint8).ravel()
        mode = (slicer.vtkSlicerSegmentEditorLogic.ModificationModeAdd if n % 2 == 0
                else slicer.vtkSlicerSegmentEditorLogic.ModificationModeRemove)
        t0 = time.perf_counter()
        editor_logic.ModifySegmentByLabelmap(nodes.lesions, lesion_id, image, mode, extent, False, False)
        t1 = time.perf_counter()
        scheduler.flush()  # the QTimer's timeout in the widget
        t2 = time.perf_counter()
        apply_ms.append((t1 - t0) * 1000)
        stroke_ms.append((t2 - t1) * 1000)
    final = mrml.segment_mask(nodes.lesions, lesion_id, volume)
    check = compute_severity(ct, final, phantom.lungs, phantom.lobes, lobe_source="truth")
    if abs(check["PO"] - live.severity["PO"]) > 1e-9 or check["LSS"] != live.severity["LSS"]:
        raise RuntimeError("live and full scores disagree")

    grow_ms, region_ms, grow_voxels = [], [], []
    candidates = np.argwhere(phantom.lesions > 0)
    picks = candidates[rng.choice(len(candidates), size=clicks, replace=False)]
    for k, j, i in picks:
        t0 = time.perf_counter()
        try:
            result = editor.grow_at(volume, nodes.lesions, (int(i), int(j), int(k)), window="any opacity",
                                    radius_mm=25.0)
        except ValueError:
            continue
        region_ms.append((time.perf_counter() - t0) * 1000)
        editor.apply_grow(editor_logic, nodes.lesions, result, volume)
        grow_ms.append((time.perf_counter() - t0) * 1000)
        grow_voxels.append(result.voxels)
        scheduler.flush()
    logic.stop_live()
    return {
        "path": "MRML: vtkSlicerSegmentEditorLogic strokes -> segmentation observers -> coalescing scheduler -> "
                "changed slabs -> SeverityCounter.update -> scores and table",
        "shape": [int(s) for s in shape],
        "lesion_percent": round(truth["PO"], 2),
        "stroke_voxels": int(ball.sum()),
        "strokes": strokes,
        "median_ms": round(statistics.median(stroke_ms), 3),
        "max_ms": round(max(stroke_ms), 3),
        "median_editor_apply_ms": round(statistics.median(apply_ms), 3),
        "full_pass_ms": round(full_ms, 1),
        "attach_ms": round(attach_ms, 1),
        "grow_clicks": len(grow_ms),
        "grow_median_ms": round(statistics.median(grow_ms), 2) if grow_ms else None,
        "grow_max_ms": round(max(grow_ms), 2) if grow_ms else None,
        "grow_region_median_ms": round(statistics.median(region_ms), 2) if region_ms else None,
        "grow_median_voxels": int(statistics.median(grow_voxels)) if grow_voxels else 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="COVIDLesionSegLib.benchlive")
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512])
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--strokes", type=int, default=40)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--radius-mm", type=float, default=5.0, help="brush radius")
    args = parser.parse_args(argv)
    print(json.dumps(measure(tuple(args.shape), args.seed, args.strokes, args.clicks, args.radius_mm)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
