"""``demo``: the embedded default run — a generated chest CT through the whole pipeline, offline."""

from __future__ import annotations

import os
from pathlib import Path

from covidlesionseg import io, labels

DEMO_SHAPE = (120, 224, 224)


def run_demo(
    outdir: str | os.PathLike,
    *,
    seed: int = 7,
    severity: str = "CT2",
    shape: tuple[int, int, int] | None = None,
    engine_id: str | None = "classical",
    quiet: bool = False,
) -> str:
    """Generate a CT with exact truth, segment it (built-in lobes), score it, compare with truth; write everything.

    Layout of ``outdir``: ``truth/`` (ct.nii.gz and exact label maps + severity.json),
    ``segmentation/`` (the pipeline's label maps + severity.json), ``metrics.json``, ``report.md`` (scores
    beside the truth, agreement), and the report a radiologist reads (``report.png`` and ``report.html``, as
    ``segment --report`` writes them; report.html alone, with the tables, when matplotlib is not installed).
    Returns a short text summary.
    """
    from covidlesionseg.engines.factory import make_engine
    from covidlesionseg.metrics import case_metrics, dice
    from covidlesionseg.phantom import generate_phantom, save_phantom, truth_severity
    from covidlesionseg.pipeline import run_segmentation, write_result
    from covidlesionseg.progress import ConsoleProgress
    from covidlesionseg.report import lobe_table, markdown_report
    from covidlesionseg.report_page import write_report

    phantom = generate_phantom(seed, severity, shape=shape or DEMO_SHAPE)
    truth = truth_severity(phantom)
    engine = make_engine(engine_id, device="auto")
    bar = ConsoleProgress("demo", quiet)
    try:
        result = run_segmentation(phantom.ct, engine, lobes="builtin", progress=bar)
    finally:
        bar.close()
    metrics = case_metrics(result.lesions > 0, phantom.lesions > 0, phantom.ct)
    lung_metrics = {
        f"{side} lung Dice": case_metrics(result.lungs == value, phantom.lungs == value, phantom.ct)["dice"]
        for value, side in labels.LUNG_NAMES.items()
    }
    lobe_metrics = {  # the built-in lobes (on the pipeline's lungs) against the exact lobes
        f"{name} Dice": dice(result.lobes == value, phantom.lobes == value) for value, name in labels.LOBE_NAMES.items()
    }
    out = Path(outdir)
    with io.staged_output(out) as stage:
        save_phantom(phantom, stage / "truth")
        io.write_json(stage / "truth" / labels.SEVERITY_FILE, truth)
        write_result(result, stage / "segmentation")
        io.write_json(stage / "metrics.json", {"lesions": metrics, **lung_metrics, "lobes": lobe_metrics})
        title = f"COVIDLesionSeg demo: generated chest CT, seed {seed}, {severity}"
        png, _page = write_report(phantom.ct, result.lesions, result.lungs, result.lobes, result.severity, stage,
                                  title, picture=None)
        text = markdown_report(
            title, result.severity, truth=truth,
            metrics={**{f"lesion {k}": v for k, v in metrics.items()}, **lung_metrics, **lobe_metrics},
            picture=png.name if png else None,
        )
        (stage / "report.md").write_text(text)
    summary = [
        lobe_table(result.severity),
        "",
        f"lesion Dice vs truth {metrics['dice']:.3f}, NSD@2mm {metrics['nsd']:.3f}; "
        + ", ".join(f"{k} {v:.3f}" for k, v in lung_metrics.items()),
        "built-in lobes vs truth: " + ", ".join(f"{k} {v:.3f}" for k, v in lobe_metrics.items()),
        f"truth: PO {truth['PO']:.2f}% LSS {truth['LSS']} CTSS {truth['CTSS']} {truth['CT_category']}",
        f"wrote {out}/ (report.html, {'report.png, ' if png else ''}report.md, metrics.json, truth/, segmentation/)",
    ]
    if png is None:
        summary.append("report.png not drawn: matplotlib is not installed (pip install 'covidlesionseg[report]')")
    return "\n".join(summary)
