"""The report a radiologist reads: ``report.png`` (one page drawn with matplotlib) and a self-contained
``report.html`` (the page embedded, the tables as text), after Topff et al.'s structured report and the PDF
report of 3D Slicer's Lung CT Analyzer.

The page: key slices (two axial, one coronal) at readable size on a patient-aligned grid in radiological
convention (patient right on the image's left), with R/L/A/P/S/I letters, window/level and slice position;
the legend (lesion < -200 / >= -200 HU, lobes by colour and name); the per-lobe involvement chart with the
LSS and CTSS bin edges; the score table; coverage, lobe source, engine and model.  What the page says comes
from ``covidlesionseg.report`` (text views of severity.json); this module draws it.  Needs matplotlib
(``pip install 'covidlesionseg[report]'``), imported only when drawing.
"""

from __future__ import annotations

import base64
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from covidlesionseg import labels
from covidlesionseg.io import InputError, Volume
from covidlesionseg.report import RESEARCH_NOTE, info_lines, region_rows, report_html, score_rows

WINDOW = (-600.0, 1500.0)  # level, width: lung window W1500 / L-600


def _extent(ct: Volume) -> tuple[np.ndarray, np.ndarray]:
    n = np.array(ct.shape[::-1], float) - 1
    corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])])
    pts = np.asarray(ct.origin) + (corners * np.asarray(ct.spacing)) @ ct.direction.T
    return pts.min(0), pts.max(0)



def _plane(image: sitk.Image, origin, size, step: float, interp, default: float) -> np.ndarray:
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing((step, step, step))
    ref.SetOrigin(tuple(float(v) for v in origin))
    pixel = sitk.sitkFloat32 if interp == sitk.sitkLinear else sitk.sitkUInt8
    out = sitk.Resample(image, ref, sitk.Transform(), interp, default, pixel)
    return sitk.GetArrayFromImage(out)



# --- the page ------------------------------------------------------------------------------------------
LESION_LEGEND = {1: ("#ff5a1f", "opacity < -200 HU"), 2: ("#ffe119", "high opacity >= -200 HU")}
LOBE_COLOURS = {1: "#3b82f6", 2: "#22c55e", 3: "#a855f7", 4: "#ec4899", 5: "#06d6e0"}  # RUL RML RLL LUL LLL
LUNG_COLOURS = {1: "#3b82f6", 2: "#ec4899"}
ROI_MARGIN_MM = 15.0


@dataclass
class KeySlice:
    """One resampled display plane: grey HU, label planes, its LPS position and the letters at its edges."""

    title: str
    hu: np.ndarray
    labels: dict[str, np.ndarray]
    extent: tuple[float, float, float, float]  # left, right, bottom, top in mm (matplotlib imshow)
    letters: tuple[str, str, str, str]  # left, right, top, bottom
    position: str


def _roi(ct: Volume, lungs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """LPS box of the lungs plus a margin (the whole image without lungs), clipped to the image."""
    lo, hi = _extent(ct)
    if lungs is None or not np.any(lungs):
        return lo, hi
    idx = np.argwhere(np.asarray(lungs) > 0)
    if len(idx) > 200_000:
        idx = idx[np.linspace(0, len(idx) - 1, 200_000).astype(int)]
    pts = ct.lps_points(idx)
    return np.maximum(pts.min(0) - ROI_MARGIN_MM, lo), np.minimum(pts.max(0) + ROI_MARGIN_MM, hi)


def _densest(points: np.ndarray, axis: int, lo: float, hi: float, step: float) -> float | None:
    """Coordinate along ``axis`` (within lo..hi) with the most points, or None without points there."""
    sel = points[(points[:, axis] >= lo) & (points[:, axis] <= hi), axis]
    if sel.size == 0:
        return None
    edges = np.arange(lo, hi + 2 * step, 2 * step)
    counts, _ = np.histogram(sel, bins=edges)
    return float(edges[np.argmax(counts)] + step)


def _slice_index(ct: Volume, point: np.ndarray) -> str:
    """'slice k of N' along the stored axis closest to the plane's normal, for finding it in a viewer."""
    ijk = np.linalg.solve(ct.direction * np.asarray(ct.spacing), np.asarray(point) - np.asarray(ct.origin))
    return ijk


def key_slices(ct: Volume, lesions: np.ndarray, lungs: np.ndarray | None, lobes: np.ndarray | None,
               max_px: int = 420) -> list[KeySlice]:
    """Two axial planes (the most lesion-laden level in the upper and in the lower half of the lungs, else at a
    third and two thirds of their height) and one coronal plane (most lesion, else the lungs' middle), on a
    patient-aligned grid in radiological convention (patient right on the image's left)."""
    lo, hi = _roi(ct, lungs)
    step = float(max(min(ct.spacing), (hi - lo)[:2].max() / max_px, (hi - lo)[2] / max_px))
    idx = np.argwhere(np.asarray(lesions) > 0)
    if len(idx) > 200_000:
        idx = idx[np.linspace(0, len(idx) - 1, 200_000).astype(int)]
    pts = ct.lps_points(idx) if len(idx) else np.zeros((0, 3))
    mid_z = 0.5 * (lo[2] + hi[2])
    z_upper = _densest(pts, 2, mid_z, hi[2], step) or (lo[2] + 2 * (hi[2] - lo[2]) / 3)
    z_lower = _densest(pts, 2, lo[2], mid_z, step) or (lo[2] + (hi[2] - lo[2]) / 3)
    if ct.shape[ct.patient_axis("SI")[0]] == 1:  # one axial slice: show it once
        z_upper = z_lower = float(ct.lps_points(np.zeros((1, 3)))[0, 2])
    y_cor = _densest(pts, 1, lo[1], hi[1], step) or 0.5 * (lo[1] + hi[1])
    grey_img = ct.to_sitk(ct.array.astype(np.float32, copy=False))
    label_imgs = {"lesions": ct.to_sitk(np.asarray(lesions).astype(np.uint8))}
    if lobes is not None and np.any(lobes):
        label_imgs["lobes"] = ct.to_sitk(np.asarray(lobes).astype(np.uint8))
    elif lungs is not None:
        label_imgs["lungs"] = ct.to_sitk(np.asarray(lungs).astype(np.uint8))
    n = np.maximum(np.ceil((hi - lo) / step).astype(int) + 1, 1)
    out = []
    planes = [("axial, upper", z_upper), ("axial, lower", z_lower)] if z_upper != z_lower else [("axial", z_upper)]
    for title, z in planes:
        def axial(img: sitk.Image, interp: int, default: float, z: float = z) -> np.ndarray:
            return _plane(img, [lo[0], lo[1], z], [n[0], n[1], 1], step, interp, default)[0]

        k = _slice_index(ct, np.array([lo[0], lo[1], z]))
        si_axis = 2 - ct.patient_axis("SI")[0]
        out.append(KeySlice(
            title, axial(grey_img, sitk.sitkLinear, -1024.0),
            {name: axial(img, sitk.sitkNearestNeighbor, 0) for name, img in label_imgs.items()},
            (lo[0], lo[0] + n[0] * step, lo[1] + n[1] * step, lo[1]), ("R", "L", "A", "P"),
            f"z = {z:.1f} mm, slice {int(round(k[si_axis])) + 1} of {ct.array.shape[2 - si_axis]}"))
    if ct.shape[ct.patient_axis("SI")[0]] > 1:
        def coronal(img: sitk.Image, interp: int, default: float) -> np.ndarray:
            return _plane(img, [lo[0], y_cor, lo[2]], [n[0], 1, n[2]], step, interp, default)[:, 0, :][::-1]

        out.append(KeySlice(
            "coronal", coronal(grey_img, sitk.sitkLinear, -1024.0),
            {name: coronal(img, sitk.sitkNearestNeighbor, 0) for name, img in label_imgs.items()},
            (lo[0], lo[0] + n[0] * step, lo[2], lo[2] + n[2] * step), ("R", "L", "S", "I"),
            f"y = {y_cor:.1f} mm (LPS, posterior +)"))
    return out


def _draw_slice(ax, sl: KeySlice) -> None:
    from matplotlib.colors import to_rgba

    level, width = WINDOW
    ax.imshow(sl.hu, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, extent=sl.extent,
              interpolation="nearest")
    lesion = sl.labels["lesions"]
    rgba = np.zeros((*lesion.shape, 4))
    for value, (colour, _name) in LESION_LEGEND.items():
        rgba[lesion == value] = to_rgba(colour, 0.6)
    ax.imshow(rgba, extent=sl.extent, interpolation="nearest")
    for name in ("lobes", "lungs"):
        regions = sl.labels.get(name)
        if regions is None:
            continue
        colours = LOBE_COLOURS if name == "lobes" else LUNG_COLOURS
        left, right, bottom, top = sl.extent  # imshow puts row 0 at ``top``: the same pixel centres here
        xs = left + (np.arange(regions.shape[1]) + 0.5) * (right - left) / regions.shape[1]
        ys = top + (np.arange(regions.shape[0]) + 0.5) * (bottom - top) / regions.shape[0]
        for value, colour in colours.items():
            if np.any(regions == value):
                ax.contour(xs, ys, (regions == value).astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
    ax.set_xlim(sl.extent[0], sl.extent[1])
    ax.set_ylim(sl.extent[2], sl.extent[3])
    ax.set_xticks([])
    ax.set_yticks([])
    box = {"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 1.5}
    style = {"color": "white", "fontsize": 13, "fontweight": "bold", "transform": ax.transAxes, "bbox": box}
    left, right, top, bottom = sl.letters
    ax.text(0.012, 0.5, left, ha="left", va="center", **style)
    ax.text(0.985, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.985, top, ha="center", va="top", **style)
    ax.text(0.5, 0.015, bottom, ha="center", va="bottom", **style)
    ax.text(0.015, 0.015, f"W {WINDOW[1]:g} / L {WINDOW[0]:g}", color="white", fontsize=8, transform=ax.transAxes,
            bbox=box)
    ax.set_title(f"{sl.title}: {sl.position}", fontsize=10)


def render_report_figure(ct: Volume, lesions: np.ndarray, lungs: np.ndarray | None, lobes: np.ndarray | None,
                         severity: dict, path: str | os.PathLike, title: str) -> None:
    """The one-page report picture: key slices with letters, window and position, the legend, the per-lobe
    involvement chart with the LSS and CTSS bin edges, the score table and the provenance lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    slices = key_slices(ct, lesions, lungs, lobes)
    fig = plt.figure(figsize=(16, 10.5), dpi=100)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.3, 1.0], hspace=0.22, wspace=0.16, left=0.05, right=0.98,
                            top=0.84, bottom=0.06)
    fig.suptitle(title, fontsize=15, fontweight="bold", x=0.03, ha="left")
    fig.text(0.03, 0.925, RESEARCH_NOTE, color="#b00020",
             fontsize=11, ha="left")
    for n, sl in enumerate(slices[:3]):
        _draw_slice(fig.add_subplot(grid[0, n]), sl)
    handles = [Patch(facecolor=c, edgecolor="none", label=name) for c, name in LESION_LEGEND.values()]
    if lobes is not None and np.any(lobes):
        handles += [Patch(facecolor="none", edgecolor=LOBE_COLOURS[v], linewidth=2,
                          label=f"{labels.LOBE_NAMES[v]} {labels.LOBE_LONG_NAMES[v]}") for v in LOBE_COLOURS]
    else:
        handles += [Patch(facecolor="none", edgecolor=c, linewidth=2, label=f"{labels.LUNG_NAMES[v]} lung")
                    for v, c in LUNG_COLOURS.items()]
    fig.legend(handles=handles, loc="upper left", ncol=4, fontsize=10, frameon=False, bbox_to_anchor=(0.03, 0.915))

    # per-region involvement with the bins drawn
    ax = fig.add_subplot(grid[1, 0])
    rows = region_rows(severity)
    names = [r["region"] for r in rows]
    low = [max(0.0, (r["percent"] or 0.0) - (r["high_opacity_percent"] or 0.0)) for r in rows]
    high = [r["high_opacity_percent"] or 0.0 for r in rows]
    x = np.arange(len(rows))
    ax.bar(x, low, color=LESION_LEGEND[1][0], label=LESION_LEGEND[1][1])
    ax.bar(x, high, bottom=low, color=LESION_LEGEND[2][0], label=LESION_LEGEND[2][1])
    edges = severity.get("config", {}).get("bins", {})
    for edge in edges.get("LSS", {}).get("edges", [25, 50, 75]):
        ax.axhline(edge, color="#555555", linestyle="--", linewidth=0.8)
    ctss_first = edges.get("CTSS", {}).get("edges", [5])[0]
    ax.axhline(ctss_first, color="#555555", linestyle=":", linewidth=0.8)
    ax.text(len(rows) - 0.4, ctss_first, f"CTSS {ctss_first:g}%", fontsize=7, va="center", ha="left")
    lss_edges = [0, *edges.get("LSS", {}).get("edges", [25, 50, 75]), 100]
    for n in range(len(lss_edges) - 1):
        ax.text(len(rows) - 0.4, 0.5 * (lss_edges[n] + lss_edges[n + 1]), f"LSS {n + 1}", fontsize=8,
                color="#555555", va="center", ha="left")
    for n, r in enumerate(rows):
        points = f"\nLSS {r['lss']}\nCTSS {r['ctss']}" if r.get("lss") is not None else ""
        ax.text(n, (r["percent"] or 0.0) + 2, f"{r['percent']:.1f}%{points}", ha="center", va="bottom", fontsize=8)
    if not (severity.get("lesion_ml") or 0.0) > 0:
        ax.text(0.5, 0.6, "no lesion found", ha="center", fontsize=12, color="#555555", transform=ax.transAxes)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 105)
    ax.set_ylabel("lesion volume, % of region")
    ax.set_title("involvement per " + ("lobe" if rows and rows[0]["kind"] == "lobe" else "lung"), fontsize=10)

    # score table
    ax = fig.add_subplot(grid[1, 1])
    ax.axis("off")
    cells = [[r["name"], r["value"], r["range"]] for r in score_rows(severity)]
    table = ax.table(cellText=cells, colLabels=["score", "value", "range"], loc="upper center",
                     colWidths=[0.64, 0.16, 0.2], cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.35)
    ax.set_title("scores", fontsize=10)

    ax = fig.add_subplot(grid[1, 2])
    ax.axis("off")
    wrapped = [part for line in info_lines(severity) for part in textwrap.wrap(line, 62, subsequent_indent="  ")]
    ax.text(0.0, 1.0, "\n".join(wrapped), va="top", ha="left", fontsize=9, family="monospace",
            transform=ax.transAxes)
    ax.set_title("coverage and provenance", fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def picture_available() -> bool:
    """True when matplotlib, which draws report.png, is installed."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def write_report(ct: Volume, lesions: np.ndarray, lungs: np.ndarray | None, lobes: np.ndarray | None,
                 severity: dict[str, Any], folder: str | os.PathLike, title: str,
                 picture: bool | None = True) -> tuple[Path | None, Path]:
    """Write ``report.png`` (the page as a picture) and ``report.html`` (the picture embedded, the tables as
    text: one file to hand on) into ``folder``; returns both paths.

    ``picture=True`` needs matplotlib (InputError naming the extra to install without it); ``None`` draws the
    picture when matplotlib is installed and otherwise writes report.html with the tables only (returning
    None for the picture); ``False`` never draws it.
    """
    if picture is None:
        picture = picture_available()
    elif picture and not picture_available():
        raise InputError("the report needs matplotlib: pip install 'covidlesionseg[report]'")
    out = Path(folder)
    png, page = out / "report.png", out / "report.html"
    encoded = None
    if picture:
        render_report_figure(ct, lesions, lungs, lobes, severity, png, title)
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
    page.write_text(report_html(severity, title, encoded), encoding="utf-8")
    return (png if picture else None), page
