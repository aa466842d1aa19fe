"""Human-readable views of severity.json as text: the per-lobe table, the demo's Markdown report, and what the
report a radiologist reads says (its rows, provenance lines and HTML; ``report_page.write_report`` draws the
page and writes report.png and report.html).  Score names, units, ranges and references come from
``severity.SCORES``.
"""

from __future__ import annotations

import html
from typing import Any

from covidlesionseg import labels
from covidlesionseg.severity import SCORES, TABLE_COLUMNS

RESEARCH_NOTE = "Research use only: not a diagnosis and not a triage decision."


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(region: dict[str, Any], column: Any) -> str:
    """A region's value in a column: blank when the region has no such value (a lung has no points)."""
    return _fmt(region[column.region_key], column.digits) if column.region_key in region else ""


def lobe_table(severity: dict[str, Any]) -> str:
    """Plain-text table: one row per lobe (when lobes exist) and per lung (columns: ``severity.TABLE_COLUMNS``),
    then the totals."""
    rows = [("region", *(column.title for column in TABLE_COLUMNS))]
    regions = [(name, severity.get("lobes", {}).get(name)) for name in labels.LOBE_NAMES.values()]
    regions += [(f"{side} lung", severity.get("lungs", {}).get(side)) for side in ("right", "left")]
    for name, region in regions:
        if region:
            rows.append((name, *(_cell(region, column) for column in TABLE_COLUMNS)))
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
    lines += _extension_lines(severity)
    return "\n".join(lines)


def _extension_lines(severity: dict[str, Any]) -> list[str]:
    added = severity.get("lesions_outside_lungs_ml") or 0.0
    if added <= 0:
        return []
    joined = "the nearest lobe" if severity.get("lobes") else "the nearest lung"
    return [f"lungs extended by {added:.2f} mL: lesion voxels outside the lung mask joined {joined}"]


def engine_line(severity: dict[str, Any]) -> str:
    """Engine and model, with the weights' sha256 only when the engine has weights."""
    model = severity.get("model") or {}
    sha = model.get("sha256")
    weights = f"model {model.get('id')} sha256 {sha[:16]}" if sha else "no trained weights"
    return f"engine {severity.get('engine')} ({weights})"


def region_rows(severity: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per lobe (when lobes exist) else per lung: name, kind and every ``TABLE_COLUMNS`` value (None
    where a lung has none)."""
    lobes = severity.get("lobes") or {}
    if lobes:
        return [{"region": name, "kind": "lobe", **lobes[name]} for name in labels.LOBE_NAMES.values() if name in lobes]
    return [{"region": f"{side} lung", "kind": "lung", **{c.region_key: None for c in TABLE_COLUMNS},
             **lung} for side, lung in (severity.get("lungs") or {}).items() if lung]


def score_rows(severity: dict[str, Any]) -> list[dict[str, str]]:
    """The whole-chest scores as declared in ``severity.SCORES``: name, formatted value, range."""
    rows = []
    for score in SCORES:
        value = severity.get(score.key)
        text = "-" if value is None else (f"{value:.2f}{score.unit}" if isinstance(value, float) else str(value))
        if value is None and score.needs_full_coverage:
            text = "- (needs whole lobes/lungs)" if not (severity.get("coverage") or {}).get("complete", True) else (
                "- (no lobes)" if not severity.get("lobes") and score.key != "CT_category" else "-")
        rows.append({"key": score.key, "name": f"{score.key}: {score.name}", "value": text,
                     "range": score.value_range, "reference": score.reference})
    return rows


def info_lines(severity: dict[str, Any]) -> list[str]:
    """Coverage, lobe source, volumes, engine and software: what a reader needs to trust the numbers."""
    cov = severity.get("coverage") or {}
    lines = [f"coverage: {'complete' if cov.get('complete', True) else 'INCOMPLETE'}"]
    if cov.get("reason"):
        lines += [f"  {part.strip()}" for part in str(cov["reason"]).split(";")]
    lines.append(f"lobe source: {severity.get('lobe_source')}")
    lines.append(f"lungs {_fmt(severity.get('lung_ml'))} mL, lesions {_fmt(severity.get('lesion_ml'), 2)} mL, "
                 f"high opacity {_fmt(severity.get('high_opacity_ml'), 2)} mL")
    config = severity.get("config") or {}
    lines.append(f"high opacity >= {_fmt(config.get('high_opacity_hu'), 0)} HU; region p = 0 at <= "
                 f"{config.get('floor_ml')} mL of lesion")
    lines += _extension_lines(severity)
    lines.append(engine_line(severity))
    software = severity.get("software") or {}
    lines.append(f"software {software.get('name')} {software.get('version')}")
    return lines


def _long_name(region: str) -> str:
    value = labels.LOBE_LABELS.get(region)
    return f"{region} ({labels.LOBE_LONG_NAMES[value]})" if value else region


def report_html(severity: dict[str, Any], title: str, png_base64: str | None = None) -> str:
    """A self-contained HTML page: title, the note, the picture (inline), scores with references, regions."""
    esc = html.escape
    score_table = "".join(
        f"<tr><td>{esc(r['name'])}</td><td>{esc(r['value'])}</td><td>{esc(r['range'])}</td>"
        f"<td class=ref>{esc(r['reference'])}</td></tr>" for r in score_rows(severity))
    region_table = "".join(
        f"<tr><td>{esc(_long_name(r['region']))}</td>"
        + "".join(f"<td>{_fmt(r.get(c.region_key), c.digits)}</td>" for c in TABLE_COLUMNS) + "</tr>"
        for r in region_rows(severity))
    region_head = "".join(f"<th>{esc(c.title)}</th>" for c in TABLE_COLUMNS)
    info = "".join(f"<li>{esc(line)}</li>" for line in info_lines(severity))
    picture = (f'<img alt="key axial and coronal slices, involvement per lobe, scores" '
               f'src="data:image/png;base64,{png_base64}">' if png_base64 else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1650px}} .note{{color:#b00020;font-weight:bold}}
table{{border-collapse:collapse;margin:0.5em 0 1em}} td,th{{border:1px solid #bbb;padding:3px 8px;text-align:left}}
.ref{{font-size:0.85em;color:#444}} img{{max-width:100%}}</style></head>
<body><h1>{esc(title)}</h1><p class=note>{esc(RESEARCH_NOTE)}</p>
{picture}
<h2>Scores</h2><table><tr><th>score</th><th>value</th><th>range</th><th>reference</th></tr>{score_table}</table>
<h2>Regions</h2><table><tr><th>region</th>{region_head}</tr>{region_table}</table>
<p>Lesion = opacity segmented by the engine; the split at -200 HU comes from the CT's HU. A region scores
p = 0 when its lesion volume is at or below the floor. Scores that assume whole lobes or lungs are left out when
coverage is incomplete.</p>
<h2>Coverage and provenance</h2><ul>{info}</ul>
<p class=note>{esc(RESEARCH_NOTE)}</p></body></html>
"""


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
    out.append(f"{engine_line(severity).capitalize()}; "
               f"software {severity['software']['name']} {severity['software']['version']}.")
    out.append("")
    if picture:
        out += [f"![key slices, involvement per lobe, scores]({picture})", ""]
    out += ["```", lobe_table(severity), "```", ""]
    if truth is not None:
        out += ["| score | segmentation | truth |", "|---|---|---|"]
        out += [f"| {s.key} | {_fmt(severity.get(s.key), 2)} | {_fmt(truth.get(s.key), 2)} |" for s in SCORES]
        out.append("")
    if metrics:
        out += ["| lesion agreement | value |", "|---|---|"]
        out += [f"| {k} | {_fmt(v, 3)} |" for k, v in metrics.items()]
        out.append("")
    out.append(RESEARCH_NOTE)
    return "\n".join(out) + "\n"
