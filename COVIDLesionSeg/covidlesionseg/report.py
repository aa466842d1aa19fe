"""Human-readable views of severity.json: the per-lobe table and the demo's Markdown report."""

from __future__ import annotations

from typing import Any

from covidlesionseg import labels


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def lobe_table(severity: dict[str, Any]) -> str:
    """Plain-text table: one row per lobe (when lobes exist) and per lung, then the totals."""
    rows = [("region", "volume mL", "lesion mL", "lesion %", "high-op %", "LSS", "LHOS", "CTSS")]
    for name in labels.LOBE_NAMES.values():
        lobe = severity.get("lobes", {}).get(name)
        if lobe:
            rows.append((name, _fmt(lobe["volume_ml"]), _fmt(lobe["lesion_ml"], 2), _fmt(lobe["percent"], 2),
                         _fmt(lobe["high_opacity_percent"], 2), _fmt(lobe["lss"]), _fmt(lobe["lhos"]),
                         _fmt(lobe["ctss"])))
    for side in ("right", "left"):
        lung = severity.get("lungs", {}).get(side)
        if lung:
            rows.append((f"{side} lung", _fmt(lung["volume_ml"]), _fmt(lung["lesion_ml"], 2),
                         _fmt(lung["percent"], 2), "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    cov = severity.get("coverage", {})
    lines.append("")
    lines.append(
        f"PO {_fmt(severity.get('PO'), 2)}%  PHO {_fmt(severity.get('PHO'), 2)}%  LSS {_fmt(severity.get('LSS'))}  "
        f"LHOS {_fmt(severity.get('LHOS'))}  "
        f"CTSS {_fmt(severity.get('CTSS'))} ({_fmt(severity.get('CTSS_category'))})  "
        f"CT category {_fmt(severity.get('CT_category'))}  lobes: {severity.get('lobe_source')}"
    )
    if cov and not cov.get("complete", True):
        lines.append(f"coverage incomplete: {cov.get('reason')}")
    added = severity.get("lesions_outside_lungs_ml") or 0.0
    if added > 0:
        lines.append(f"lungs extended by {added:.2f} mL: lesion voxels outside the lung mask joined the nearest lobe")
    return "\n".join(lines)


def markdown_report(
    title: str,
    severity: dict[str, Any],
    *,
    truth: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    picture: str | None = None,
) -> str:
    """A short structured report: scores, the per-lobe table, agreement with truth when known."""
    out = [f"# {title}", ""]
    out.append(f"Engine: `{severity.get('engine')}` (model sha256: {severity.get('model', {}).get('sha256')}); "
               f"software {severity['software']['name']} {severity['software']['version']}.")
    out.append("")
    if picture:
        out += [f"![axial, coronal and sagittal slices with lesions]({picture})", ""]
    out += ["```", lobe_table(severity), "```", ""]
    if truth is not None:
        keys = ("PO", "PHO", "LSS", "LHOS", "CTSS", "CTSS_category", "CT_category")
        out += ["| score | segmentation | truth |", "|---|---|---|"]
        out += [f"| {k} | {_fmt(severity.get(k), 2)} | {_fmt(truth.get(k), 2)} |" for k in keys]
        out.append("")
    if metrics:
        out += ["| lesion agreement | value |", "|---|---|"]
        out += [f"| {k} | {_fmt(v, 3)} |" for k, v in metrics.items()]
        out.append("")
    out.append("CT category is reported as a research measure, not a triage decision.")
    return "\n".join(out) + "\n"
