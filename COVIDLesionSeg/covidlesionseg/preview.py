"""One-picture preview of a CT: axial, coronal and sagittal slices side by side, with label overlays.

Slices are resampled from the CT's physical space onto an isotropic, patient-aligned display grid, so any
direction matrix and anisotropic voxels display correctly, in radiological convention: the patient's right
on the image's left in axial and coronal views, anterior up in axial, superior up in coronal and sagittal,
anterior on the left in sagittal.  Lung window W1500 / L-600.  ``render_preview`` writes one PNG by
SimpleITK; ``render_report_figure`` draws the report's page with matplotlib (key slices with orientation
letters, window and position, legend, per-lobe chart, score table), after the structured report of Topff et
al. and the PDF report of 3D Slicer's Lung CT Analyzer.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from covidlesionseg import labels
from covidlesionseg.io import Volume

WINDOW = (-600.0, 1500.0)  # level, width
MAX_PANEL_PX = 512
GAP_PX = 4
LESION_COLOURS = {1: (255, 40, 40), 2: (255, 220, 0)}
PALETTE = [(80, 160, 255), (80, 220, 120), (255, 160, 60), (200, 120, 255), (255, 100, 180), (60, 220, 220)]


def _extent(ct: Volume) -> tuple[np.ndarray, np.ndarray]:
    n = np.array(ct.shape[::-1], float) - 1
    corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])])
    pts = np.asarray(ct.origin) + (corners * np.asarray(ct.spacing)) @ ct.direction.T
    return pts.min(0), pts.max(0)


def display_spacing(ct: Volume) -> float:
    """Isotropic display pixel (mm): the finest voxel spacing, coarser if a panel would exceed 512 pixels."""
    lo, hi = _extent(ct)
    return float(max(min(ct.spacing), (hi - lo).max() / MAX_PANEL_PX))


def _focus(ct: Volume, overlays: dict[str, np.ndarray], lo: np.ndarray, hi: np.ndarray, step: float) -> np.ndarray:
    """LPS point the three planes go through: the most lesion-laden slice along each axis, else the middle."""
    mask = overlays.get("lesions")
    if mask is None or not np.any(mask):
        return 0.5 * (lo + hi)
    idx = np.argwhere(np.asarray(mask) > 0)
    if len(idx) > 200_000:
        idx = idx[np.linspace(0, len(idx) - 1, 200_000).astype(int)]
    pts = ct.lps_points(idx)
    out = np.empty(3)
    for a in range(3):
        edges = np.arange(lo[a], hi[a] + 2 * step, 2 * step)
        counts, _ = np.histogram(pts[:, a], bins=edges)
        out[a] = edges[np.argmax(counts)] + step
    return out


def _plane(image: sitk.Image, origin, size, step: float, interp, default: float) -> np.ndarray:
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing((step, step, step))
    ref.SetOrigin(tuple(float(v) for v in origin))
    pixel = sitk.sitkFloat32 if interp == sitk.sitkLinear else sitk.sitkUInt8
    out = sitk.Resample(image, ref, sitk.Transform(), interp, default, pixel)
    return sitk.GetArrayFromImage(out)


def _views(ct: Volume, array_img: sitk.Image, focus, lo, hi, step, interp, default) -> list[np.ndarray]:
    n = np.maximum(np.ceil((hi - lo) / step).astype(int) + 1, 1)
    axial = _plane(array_img, [lo[0], lo[1], focus[2]], [n[0], n[1], 1], step, interp, default)[0]
    coronal = _plane(array_img, [lo[0], focus[1], lo[2]], [n[0], 1, n[2]], step, interp, default)[:, 0, :]
    sagittal = _plane(array_img, [focus[0], lo[1], lo[2]], [1, n[1], n[2]], step, interp, default)[:, :, 0]
    # axial rows: y (anterior at top), columns: x (patient right on the left); others: superior at top
    return [axial, coronal[::-1], sagittal[::-1]]


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _overlay(rgb: np.ndarray, labels_2d: np.ndarray, name: str, index: int) -> None:
    for value in np.unique(labels_2d):
        if value == 0:
            continue
        m = labels_2d == value
        if name == "lesions":
            colour, alpha = np.array(LESION_COLOURS.get(int(value), (255, 40, 40)), float), 0.3
        else:
            colour, alpha = np.array(PALETTE[(int(value) + 2 * index) % len(PALETTE)], float), 0.07
        rgb[m] = (1 - alpha) * rgb[m] + alpha * colour
        edge = _outline(m)
        rgb[edge] = 0.3 * rgb[edge] + 0.7 * colour


def render_preview(ct: Volume, overlays: dict[str, np.ndarray] | None = None,
                   path: str | os.PathLike = "preview.png") -> None:
    """Write one PNG with axial, coronal and sagittal slices (lesion-centred when a ``lesions`` overlay exists).

    ``overlays`` maps names to label maps on the CT grid; ``lesions`` is drawn red (label 1) / yellow
    (label 2), any other map (lobes, lungs) as faint coloured regions with outlines.
    """
    overlays = {k: np.asarray(v) for k, v in (overlays or {}).items()}
    for name, arr in overlays.items():
        if arr.shape != ct.shape:
            raise ValueError(f"overlay {name!r} has shape {arr.shape}, CT has {ct.shape}")
    lo, hi = _extent(ct)
    step = display_spacing(ct)
    focus = _focus(ct, overlays, lo, hi, step)
    level, width = WINDOW
    grey = []
    for view in _views(ct, ct.to_sitk(ct.array.astype(np.float32, copy=False)), focus, lo, hi, step,
                       sitk.sitkLinear, -1024.0):
        g = np.clip((view - (level - width / 2)) / width, 0.0, 1.0) * 255.0
        grey.append(np.repeat(g[..., None], 3, axis=2))
    for index, (name, arr) in enumerate(overlays.items()):
        maps = _views(ct, ct.to_sitk(arr.astype(np.uint8)), focus, lo, hi, step, sitk.sitkNearestNeighbor, 0)
        for rgb, lab in zip(grey, maps):
            _overlay(rgb, lab, name, index)
    height = max(p.shape[0] for p in grey)
    canvas = np.zeros((height, sum(p.shape[1] for p in grey) + GAP_PX * (len(grey) - 1), 3), np.uint8)
    col = 0
    for p in grey:
        top = (height - p.shape[0]) // 2
        canvas[top:top + p.shape[0], col:col + p.shape[1]] = np.round(p).astype(np.uint8)
        col += p.shape[1] + GAP_PX
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(canvas, isVector=True), str(out))


# --- the radiologist's report figure (matplotlib) ------------------------------------------------------------
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

    from covidlesionseg.report import info_lines, region_rows, score_rows

    slices = key_slices(ct, lesions, lungs, lobes)
    fig = plt.figure(figsize=(16, 10.5), dpi=100)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.3, 1.0], hspace=0.22, wspace=0.16, left=0.05, right=0.98,
                            top=0.84, bottom=0.06)
    fig.suptitle(title, fontsize=15, fontweight="bold", x=0.03, ha="left")
    fig.text(0.03, 0.925, "Research use only: not a diagnosis and not a triage decision.", color="#b00020",
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
