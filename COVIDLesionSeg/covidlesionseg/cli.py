"""Command line: ``covidlesionseg <command>`` / ``python -m covidlesionseg <command>`` (contracts.md).

Errors are one line on stderr with a non-zero exit, and nothing half-written is left in an output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from covidlesionseg import __version__, io, labels
from covidlesionseg.progress import Cancelled, ConsoleProgress

EXIT_INPUT = 2
EXIT_INTERNAL = 1


def _warn_device(device: str, engine) -> None:
    """``--device cuda`` that cannot be honoured is said, not silently replaced by the CPU (``auto`` is quiet)."""
    if device != "cuda" or str(getattr(engine, "device", "cpu")).startswith("cuda"):
        return
    import torch

    why = (f"the {engine.name} engine has no GPU code" if torch.cuda.is_available()
           else "no CUDA GPU is available here")
    print(f"covidlesionseg: warning: --device cuda: {why}; running on the CPU", file=sys.stderr)


def _severity_config(args: argparse.Namespace):
    from covidlesionseg.severity import SeverityConfig

    return SeverityConfig(high_opacity_hu=args.high_opacity_hu, floor_ml=args.floor_ml)


# --- commands ------------------------------------------------------------------------------
def cmd_segment(args: argparse.Namespace) -> int:
    from covidlesionseg.engines.factory import make_engine
    from covidlesionseg.lobe_providers import check_lobe_spec
    from covidlesionseg.pipeline import run_segmentation, write_result
    from covidlesionseg.report import lobe_table

    ct = io.read_ct(args.input)
    lobes = args.lobes
    check_lobe_spec(lobes)
    engine = make_engine(args.engine, device=args.device)
    _warn_device(args.device, engine)
    bar = ConsoleProgress("segment", args.quiet, args.progress_lines)
    try:
        result = run_segmentation(ct, engine, lobes=lobes, lobe_convention=args.lobe_convention,
                                  config=_severity_config(args), progress=bar)
    finally:
        bar.close()
    write_result(result, args.output)
    if args.report:
        from covidlesionseg.report_page import write_report

        with io.staged_output(args.output) as stage:
            write_report(ct, result.lesions, result.lungs, result.lobes, result.severity, stage,
                         title=f"COVIDLesionSeg: {os.path.basename(os.path.normpath(args.input))}")
    if args.timings:
        io.write_json(args.timings, result.timings)
    if not args.quiet:
        print(lobe_table(result.severity))
        print(f"wrote {args.output}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from covidlesionseg.pipeline import score_files
    from covidlesionseg.report import lobe_table

    doc = score_files(args.ct, args.lesions, lungs_path=args.lungs, lobes=args.lobes or "auto",
                      lobe_convention=args.lobe_convention, config=_severity_config(args))
    output = args.output
    if os.path.isdir(output) or output.endswith(("/", os.sep)):
        output = os.path.join(output, labels.SEVERITY_FILE)
    io.write_json(output, doc)
    if not args.quiet:
        print(lobe_table(doc))
        print(f"wrote {output}")
    return 0


def _shape(values: Sequence[int] | None) -> tuple[int, int, int] | None:
    return tuple(int(v) for v in values) if values else None  # type: ignore[return-value]


def cmd_phantom(args: argparse.Namespace) -> int:
    from covidlesionseg.phantom import generate_phantom, save_phantom, truth_severity

    phantom = generate_phantom(args.seed, args.severity, shape=_shape(args.shape))
    doc = truth_severity(phantom)
    with io.staged_output(args.output) as stage:
        save_phantom(phantom, stage)
        io.write_json(stage / labels.SEVERITY_FILE, doc)
    if not args.quiet:
        print(f"phantom seed {args.seed} {args.severity}: shape {list(phantom.ct.shape)} spacing "
              f"{[round(s, 3) for s in phantom.ct.spacing]} PO {doc['PO']:.2f}% CT category {doc['CT_category']}")
        print(f"wrote {args.output}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from covidlesionseg.evaluate import evaluate_folders

    label_values = [int(v) for v in args.label_map.split(",")] if args.label_map else None
    bar = ConsoleProgress("evaluate", args.quiet, args.progress_lines)
    try:
        doc = evaluate_folders(args.images, args.labels, engine_id=args.engine, device=args.device,
                               nsd_mm=args.nsd_mm, label_values=label_values, progress=bar)
    finally:
        bar.close()
    io.write_json(args.output, doc)
    if not args.quiet:
        for case in doc["cases"]:
            print(f"{case['id']}: Dice {case['dice']:.3f}  NSD@{args.nsd_mm:g}mm {case['nsd']:.3f}  "
                  f"FP {case['fp_ml']:.1f} mL  FN {case['fn_ml']:.1f} mL")
        if doc["cases"]:
            print(f"mean Dice {doc['mean_dice']:.3f}  mean NSD {doc['mean_nsd']:.3f}  ({len(doc['cases'])} cases)")
        print(f"wrote {args.output}")
    for error in doc["errors"]:  # every case was tried; each failure is one line, and the exit says so
        print(f"covidlesionseg: error: {error}", file=sys.stderr)
    if doc["errors"]:
        print(f"covidlesionseg: error: {len(doc['errors'])} of {len(doc['errors']) + len(doc['cases'])} images "
              "not scored", file=sys.stderr)
        return EXIT_INPUT
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from covidlesionseg import models

    if args.set_default:
        models.set_default(args.set_default)
    entries = models.list_models()
    if args.json:
        print(json.dumps({"models": entries}, indent=2))
    else:
        for e in entries:
            mark = "*" if e["default"] else " "
            sha = (e.get("sha256") or "-")[:12]
            print(f"{mark} {e['id']:<32} {e['architecture']:<24} sha256 {sha}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from covidlesionseg.demo import run_demo

    summary = run_demo(args.output, seed=args.seed, severity=args.severity, shape=_shape(args.shape),
                       engine_id=args.engine, quiet=args.quiet)
    if not args.quiet:
        print(summary)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from covidlesionseg import bench

    runner: Callable[..., dict] = {"pipeline": bench.bench_pipeline, "live": bench.bench_live}[args.what]
    result = runner(shape=_shape(args.shape), engine_id=args.engine)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from covidlesionseg.training.workflow import run_training

    say = (lambda _m: None) if args.quiet else (lambda m: print(m, flush=True))
    network = json.loads(args.network) if args.network else None
    result = run_training(args.output, data=args.data or (), generated=args.generated, real_data=args.real_data,
                          real_variants=args.real_variants, init=args.init, architecture=args.architecture,
                          network=network, max_steps=args.max_steps, device=args.device, seed=args.seed,
                          label_map=args.label_map, model_id=args.id, register=not args.no_register,
                          threads=args.threads, grow_pool=args.grow_pool, say=say)
    if result["model_id"]:
        print(result["model_id"])
    elif not result["finished"]:
        print(f"stopped before max steps; run the same command to resume ({result['run_dir']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from covidlesionseg.export import export_files, export_folder

    options = {"annotator": args.annotator, "include_identifiers": args.include_identifiers,
               "dicom_seg": args.dicom_seg}
    engine = {"id": args.engine} if args.engine else None
    if args.batch:
        if args.ct or args.original or args.final or args.case_id or args.patient_key:
            raise io.InputError("--batch exports a folder of cases; drop --ct/--original/--final/--case-id")
        results, errors = export_folder(args.batch, args.out, engine=engine, **options)
    else:
        if not (args.ct and args.final):
            raise io.InputError("export needs --ct and --final (and usually --original), or --batch FOLDER")
        results = [export_files(args.out, args.ct, args.original, args.final, lungs_path=args.lungs,
                                lobes_path=args.lobes, engine=engine, case_id=args.case_id,
                                patient_key=args.patient_key, **options)]
        errors = []
    if not args.quiet:
        for result in results:
            print(f"{result.case_id} version {result.version}")
        print(f"wrote {args.out}")
    for error in errors:
        print(f"covidlesionseg: error: {error}", file=sys.stderr)
    return EXIT_INPUT if errors else 0


# --- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="covidlesionseg", description="COVID-19 lesion segmentation and severity scores")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, scores: bool = False) -> None:
        sp.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
        if scores:
            sp.add_argument("--high-opacity-hu", type=float, default=labels.HIGH_OPACITY_HU,
                            help="HU threshold of high opacity (default %(default)s)")
            sp.add_argument("--floor-ml", type=float, default=0.1,
                            help="lesion volume at or below which a region scores as p = 0 (default %(default)s)")

    def progress_lines(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--progress-lines", action="store_true",
                        help="print 'PROGRESS <fraction> <message>' lines on stdout for a calling program "
                             "(also COVIDLESIONSEG_PROGRESS=lines); default: a bar on a terminal, stage lines "
                             "otherwise")

    s = sub.add_parser("segment", help="segment lungs, lesions and lobes; write label maps and severity.json")
    s.add_argument("input", help=".nii/.nii.gz/.nrrd/.mha file or DICOM folder")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where a neural engine runs: auto (GPU when present), cpu, or cuda (warns when it "
                        "cannot be used)")
    s.add_argument("--engine", default=None, help="classical or a model id (default: the registry default)")
    s.add_argument("--lobes", default="auto",
                   help="auto | builtin | totalsegmentator | lungmask | none | FILE (default auto: FILE when given, "
                        "else TotalSegmentator or lungmask when installed, else the built-in lobes)")
    s.add_argument("--lobe-convention", default=None, help="convention of --lobes FILE when detection is ambiguous")
    s.add_argument("--timings", default=None, help=argparse.SUPPRESS)
    s.add_argument("--report", action="store_true",
                   help="also write report.png and report.html (key slices, per-lobe chart, scores) in the output")
    progress_lines(s)
    common(s, scores=True)
    s.set_defaults(func=cmd_segment)

    s = sub.add_parser(
        "score", help="recompute severity from (corrected) label maps",
        description="Recompute severity from (corrected) label maps.  Lesion = label > 0; the opacity split "
                    "(label 1 < -200 HU, 2 >= -200 HU) and so PHO and LHOS come from the CT's HU, never from the "
                    "lesion labels: relabelling a region changes nothing (docs/contracts.md).")
    s.add_argument("ct", help="the CT (.nii/.nii.gz/.nrrd/.mha file or DICOM folder)")
    s.add_argument("lesions", help="lesion label map on the CT's grid (lesion = label > 0; label values are ignored)")
    s.add_argument("--lungs", default=None, help="lung label map (1 right, 2 left); computed from the CT when absent")
    s.add_argument("--lobes", default=None, help="lobe file (any convention in contracts.md), or none")
    s.add_argument("--lobe-convention", default=None, help="convention of --lobes when detection is ambiguous")
    s.add_argument("-o", "--output", required=True, help="severity.json to write, or a folder to write it in")
    common(s, scores=True)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("phantom", help="generate a chest CT with exact truth")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--seed", type=int, required=True, help="random seed: the same seed gives the same CT")
    s.add_argument("--severity", choices=labels.CT_CATEGORIES, default="CT2", help="target CT category")
    s.add_argument("--shape", type=int, nargs=3, metavar=("K", "J", "I"), help="matrix (slices rows columns)")
    common(s)
    s.set_defaults(func=cmd_phantom)

    s = sub.add_parser("evaluate", help="segment a folder of images and compare with label maps")
    s.add_argument("--images", required=True, help="folder of CT images (X.nii.gz or X_0000.nii.gz)")
    s.add_argument("--labels", required=True, help="folder of lesion label maps (X.nii.gz or X_label.nii.gz)")
    s.add_argument("-o", "--output", required=True, help="metrics.json to write")
    s.add_argument("--nsd-mm", type=float, default=2.0, help="tolerance of the normalized surface Dice, mm "
                                                             "(default %(default)s)")
    s.add_argument("--label-map", default=None, help="comma-separated label values that count as lesion")
    s.add_argument("--engine", default=None, help="classical or a model id (default: the registry default)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where a neural engine runs")
    progress_lines(s)
    common(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("models", help="list engines and models; choose the default")
    s.add_argument("--json", action="store_true", help="print the list as JSON (contracts.md)")
    s.add_argument("--set-default", default=None, metavar="ID", help="make model ID the one segment uses")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("demo", help="the embedded default: generated CT, whole pipeline, report")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=7, help="seed of the generated CT (default %(default)s)")
    s.add_argument("--severity", choices=labels.CT_CATEGORIES, default="CT2", help="target CT category")
    s.add_argument("--shape", type=int, nargs=3, metavar=("K", "J", "I"), default=None,
                   help="matrix (slices rows columns) of the generated CT")
    s.add_argument("--engine", default="classical", help="classical or a model id (default %(default)s)")
    common(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("train", help="train or fine-tune the lung-and-lesion network; register the new model")
    s.add_argument("-o", "--output", required=True, help="run folder (checkpoints, logs, curve); rerun to resume")
    s.add_argument("--data", action="append", default=None, metavar="SPEC",
                   help="labelled data: an export folder, an nnU-Net v2 raw dataset, a MONAI datalist JSON or "
                        "IMAGES_DIR:LABELS_DIR (repeatable)")
    s.add_argument("--label-map", default=None,
                   help="how --data label values map to classes: medseg, covid19ctseg or '1:lesion,2:lesion,3:ignore'")
    s.add_argument("--generated", type=int, default=0, metavar="N", help="add N generated chest CT cases")
    s.add_argument("--real-data", default=None, metavar="DIR",
                   help="folder holding real_ct/ normal chests to paint lesions into (the shared data folder)")
    s.add_argument("--real-variants", type=int, default=8, help="painted variants per real chest (default %(default)s)")
    s.add_argument("--init", default=None, metavar="MODEL_ID", help="fine-tune this registered model")
    s.add_argument("--architecture", default="compact_res_unet", help="network of a new model (default %(default)s)")
    s.add_argument("--network", default=None, help="JSON constructor settings of a new network")
    s.add_argument("--max-steps", type=int, default=3000, help="optimiser steps (default %(default)s)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train")
    s.add_argument("--seed", type=int, default=0, help="seed of sampling, augmentation and initialisation")
    s.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    s.add_argument("--id", default=None, help="id of the new model (default: derived from parent or architecture)")
    s.add_argument("--no-register", action="store_true", help="train only; do not add the model to the registry")
    s.add_argument("--grow-pool", action="store_true",
                   help="let cases another process adds to the run's case folder join training")
    common(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("export", help="append corrected cases to an export folder (nnU-Net v2 raw, MONAI datalist)")
    s.add_argument("--ct", default=None, help="the CT (file or DICOM folder)")
    s.add_argument("--original", default=None, help="the engine's lesion map (segment's lesions.nii.gz)")
    s.add_argument("--final", default=None, help="the corrected lesion map")
    s.add_argument("--lungs", default=None, help="lung map (computed when not given)")
    s.add_argument("--lobes", default=None, help="lobe map in our convention (lobe-wise severity before/after)")
    s.add_argument("--out", required=True, help="export folder (created; never overwritten, re-exports add versions)")
    s.add_argument("--batch", default=None, metavar="FOLDER",
                   help="export every case folder of FOLDER that holds lesions_final.nii.gz and a CT")
    s.add_argument("--case-id", default=None, help="case id (default: a salted hash of the CT, pseudonymous)")
    s.add_argument("--patient-key", default=None, help="patient key for validation folds (stored only hashed)")
    s.add_argument("--annotator", default=None, help="who corrected the case (free text, optional)")
    s.add_argument("--engine", default=None, help="engine/model id of --original (default: its severity.json)")
    s.add_argument("--include-identifiers", action="store_true",
                   help="record the source's patient name/ID and study/series UIDs in the provenance")
    s.add_argument("--dicom-seg", action="store_true",
                   help="also write a DICOM SEG (carries patient identifiers) under OUT/identifiable/; DICOM CT only")
    common(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bench", help="benchmarks that print figures")
    s.add_argument("what", choices=("pipeline", "live"), help="pipeline: segment time and memory; live: "
                                                               "edit-to-score latency")
    s.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    s.add_argument("--shape", type=int, nargs=3, metavar=("K", "J", "I"), default=None,
                   help="matrix of the generated CT (default 300 512 512)")
    s.add_argument("--engine", default="classical", help="classical or a model id (default %(default)s)")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (io.InputError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"covidlesionseg: error: {msg}", file=sys.stderr)
        return EXIT_INPUT
    except Cancelled:
        print("covidlesionseg: cancelled; nothing written", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("covidlesionseg: interrupted; nothing written", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the command line answers every failure in one line
        if os.environ.get("COVIDLESIONSEG_DEBUG"):
            raise
        msg = (str(exc).strip().splitlines() or [""])[0]
        print(f"covidlesionseg: internal error: {type(exc).__name__}: {msg}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
