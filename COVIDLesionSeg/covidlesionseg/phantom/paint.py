"""Voxelisation of the phantom's anatomy: tissue HU, lung and lobe truth at voxel centres.

Soft tissue, organs, lungs, heart, spine and sternum are implicit shapes evaluated slab by slab on the
voxel centres; tubes (great vessels, ribs, processes) are drawn afterwards with partial-volume occupancy.
HU values are typical unenhanced CT values (fat about -100, muscle and blood +35..+55, lung parenchyma
about -870 with a dependent density gradient, cortical bone +750..+1100).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from covidlesionseg.phantom.anatomy import ChestAnatomy
from covidlesionseg.phantom.grid import SamplingGrid, slab_occupancy, tube_occupancy
from covidlesionseg.phantom.tubes import sternum_levels


def mix(hu: np.ndarray, occupancy: np.ndarray, value: float, box) -> None:
    """Blend ``value`` into ``hu`` in ``box`` by the uint8 occupancy (partial volume)."""
    if box is None:
        return
    o = occupancy[box].astype(np.float32) * np.float32(1.0 / 255.0)
    h = hu[box]
    h += o * (np.float32(value) - h)


def segments_box(grid: SamplingGrid, segs: np.ndarray, pad: float = 6.0):
    """Index box of the voxels that tube segments (N, 8) can touch."""
    if len(segs) == 0:
        return None
    r = np.maximum(segs[:, 6], segs[:, 7]).max() + pad
    lo = np.minimum(segs[:, 0:3], segs[:, 3:6]).min(0) - r
    hi = np.maximum(segs[:, 0:3], segs[:, 3:6]).max(0) + r
    return grid.box(lo, hi)


def paint_tubes(grid: SamplingGrid, hu: np.ndarray, segs: np.ndarray, value: float, scratch: np.ndarray) -> None:
    """Draw tubes of one HU value with partial volume (``scratch``: zeroed uint8 buffer of grid shape)."""
    box = segments_box(grid, segs)
    if box is None:
        return
    scratch[box] = 0
    tube_occupancy(grid, segs, scratch)
    mix(hu, scratch, value, box)
    scratch[box] = 0


def paint_bone_tubes(grid: SamplingGrid, hu: np.ndarray, segs: np.ndarray, cortex: float, marrow_hu: float,
                     cortex_hu: float, scratch: np.ndarray) -> None:
    """Draw bone tubes: a cortical shell ``cortex`` mm thick around marrow."""
    paint_tubes(grid, hu, segs, cortex_hu, scratch)
    inner = segs.copy()
    inner[:, 6:8] = np.maximum(inner[:, 6:8] - cortex, 0.0)
    paint_tubes(grid, hu, inner, marrow_hu, scratch)


def _paint_slab(anat: ChestAnatomy, grid: SamplingGrid, box, hu, lungs, lobes, excluded, body_post: float):
    x, y, z = (a.ravel() for a in grid.coords(box))
    H = anat.hu
    v = np.full(x.shape, -1000.0, np.float32)
    h, cx, cy = anat.cavity_height(x, y, z)
    wall = np.nonzero((h >= 0.0) & (h < 200.0))[0]  # the chest wall is thinner than this
    hw, cxw, cyw, zw = h[wall], cx[wall], cy[wall], z[wall]
    muscle, fat = anat.wall_thickness(cxw, cyw, zw)
    t_mus = anat.rib_layer + muscle
    t_body = t_mus + fat
    vw = np.full(wall.shape, -1000.0, np.float32)
    vw[hw < t_body] = H["fat"]
    vw[(hw < t_body) & (hw > t_body - anat.skin)] = H["skin"]
    vw[hw < t_mus] = H["muscle"]
    _paint_scapulae(anat, hw, cyw, zw, vw)
    v[wall] = vw
    if anat.table:
        outside = np.nonzero(h >= 0.0)[0]
        xo, yo = x[outside], y[outside]
        ty = body_post + 2.0 + xo * xo / 1800.0
        inside_t = (np.abs(xo) < 230.0) & (yo > ty) & (yo < ty + 34.0) & (v[outside] == -1000.0)
        vo = v[outside]
        vo[inside_t] = -950.0
        vo[inside_t & ((yo < ty + 2.5) | (yo > ty + 31.5))] = 250.0
        v[outside] = vo
    cav = np.nonzero(h < 0.0)[0]
    xc, yc, zc = x[cav], y[cav], z[cav]
    vc = np.full(cav.shape, H["fat"], np.float32)
    dia = anat.diaphragm_z(xc, yc)
    below = zc <= dia
    vc[below] = H["abdomen"]
    vc[below & (zc > dia - 5.0)] = H["muscle"]
    _paint_abdomen(anat, xc, yc, zc, dia, vc)
    _paint_heart(anat, xc, yc, zc, dia, vc)
    side = anat.lung_side(xc, yc, zc, excluded[box].ravel()[cav], cavity_h=h[cav])
    lung = np.nonzero(side)[0]
    if lung.size:
        xl, yl, zl, sl = xc[lung], yc[lung], zc[lung], side[lung]
        grad = np.clip((yl + anat.cav_ba) / (anat.cav_ba + anat.cav_bp), 0.0, 1.0) ** 2
        vl = H["lung"] + H["lung_gradient"] * grad
        lobe, dist, normal, half = anat.lobes_and_plates(xl, yl, zl, sl)
        near = np.nonzero(dist < 4.0)[0]
        if near.size:
            sig = grid.normal_sigma(normal[0][near], normal[1][near], normal[2][near])
            occ = slab_occupancy(dist[near], half[near], sig)
            vl[near] += occ * (H["fissure"] - vl[near])
        vc[lung] = vl
        lab = np.zeros(x.shape, np.uint8)
        lab[cav[lung]] = sl
        lungs[box] = lab.reshape(lungs[box].shape)
        lab[cav[lung]] = lobe
        lobes[box] = lab.reshape(lobes[box].shape)
    v[cav] = vc
    _paint_spine(anat, x, y, z, v)
    _paint_sternum(anat, x, y, z, v)
    hu[box] = v.reshape(hu[box].shape)


def _paint_scapulae(anat: ChestAnatomy, h, cy, z, v) -> None:
    """Thin triangular blades over the upper posterior ribs, their lower angle near the 7th rib."""
    top = anat.z_t1 + 5.0
    near = np.nonzero((h > anat.rib_layer + 1.0) & (h < anat.rib_layer + 10.0) & (z < top) & (z > top - 170.0)
                      & (cy > 0.2) & (cy < 0.92))[0]
    if near.size == 0:
        return
    phi = np.arccos(cy[near])
    frac = (top - z[near]) / 170.0
    lateral = 1.35 - 0.75 * frac
    medial = 0.42 + 0.25 * frac
    half = 1.8 + 1.5 * (phi > lateral - 0.1)  # thicker lateral border
    blade = (phi > medial) & (phi < lateral) & (np.abs(h[near] - anat.rib_layer - 5.0) < half)
    vals = v[near]
    vals[blade] = 0.6 * anat.hu["cortex"]
    v[near] = vals


def _paint_abdomen(anat: ChestAnatomy, x, y, z, dia, v) -> None:
    H = anat.hu
    sub = z < dia - 5.0
    liver_edge = anat.col_x + 12.0 + 0.5 * anat.cav_a * np.clip(-y / anat.cav_ba, 0.0, 1.0)
    liver = sub & (x < liver_edge) & ~anat.spine_exclusion(x, y) & (z > anat.z_dome_r - 190.0)
    v[liver] = H["liver"]
    c = np.array([0.48 * anat.cav_a, -0.15 * anat.cav_ba, anat.z_dome_l - 48.0])
    q = ((x - c[0]) / 44.0) ** 2 + ((y - c[1]) / 38.0) ** 2 + ((z - c[2]) / 44.0) ** 2
    stomach = sub & (q < 1.0)
    v[stomach] = H["muscle"]
    lumen = sub & (q < 0.86)
    v[lumen] = H["fluid"]
    v[lumen & (z > c[2] + 14.0)] = -1000.0
    cs = np.array([0.7 * anat.cav_a, 0.5 * anat.cav_bp, anat.z_dome_l - 55.0])
    spleen = sub & (((x - cs[0]) / 24.0) ** 2 + ((y - cs[1]) / 42.0) ** 2 + ((z - cs[2]) / 50.0) ** 2 < 1.0)
    v[spleen] = H["spleen"]


def _paint_heart(anat: ChestAnatomy, x, y, z, dia, v) -> None:
    H = anat.hu
    reach = float(anat.heart_ax.max()) + anat.heart_fat + 2.0
    c = anat.heart_c.tolist()
    near = np.nonzero((np.abs(x - c[0]) < reach) & (np.abs(y - c[1]) < reach)
                      & (np.abs(z - c[2]) < reach) & (z > dia - 2.0))[0]
    if near.size == 0:
        return
    q = anat.heart_q(x[near], y[near], z[near])
    fat_q = 1.0 + anat.heart_fat / float(anat.heart_ax.min())
    vals = v[near]
    vals[q < fat_q] = H["fat"]
    vals[q < 1.0] = H["myocardium"]
    vals[q < 0.72] = H["blood"]
    v[near] = vals


def _paint_spine(anat: ChestAnatomy, x, y, z, v) -> None:
    H = anat.hu
    y_canal = anat.vb_y + anat.vb_ry + 9.0
    near = np.nonzero((np.abs(x) < anat.vb_rx + 8.0) & (y > anat.vb_y - anat.vb_ry - 6.0) & (y < y_canal + 18.0))[0]
    if near.size == 0:
        return
    xs, ys, zs = x[near], y[near], z[near]
    vals = v[near]
    grow = 1.0 + 0.0012 * np.clip(anat.z_t1 - zs, 0.0, None)
    rx, ry = anat.vb_rx * grow, anat.vb_ry * grow
    n = np.round((anat.z_t1 - zs) / anat.vert_pitch)
    dz = np.abs(zs - (anat.z_t1 - n * anat.vert_pitch))
    half = 0.5 * anat.vert_pitch - 2.5
    q = (xs / rx) ** 2 + ((ys - anat.vb_y) / ry) ** 2
    body = q < 1.0
    shell = (q > (1.0 - 1.4 / ry) ** 2) | (dz > half - 1.3)
    vals[body] = np.where(shell[body], H["cortex"] * 0.8, H["marrow"])
    vals[body & (dz > half)] = H["disc"]
    rc = np.sqrt(xs**2 + (ys - y_canal) ** 2)
    ring = (rc > 8.0) & (rc < 14.0) & (ys > anat.vb_y + 0.5 * anat.vb_ry) & (dz < 0.36 * anat.vert_pitch)
    vals[ring] = 0.5 * (H["cortex"] + H["marrow"])
    vals[rc <= 8.0] = H["csf"]
    vals[rc <= 5.0] = H["muscle"] - 10.0
    v[near] = vals


def _paint_sternum(anat: ChestAnatomy, x, y, z, v) -> None:
    top, bot = sternum_levels(anat)
    near = np.nonzero((np.abs(x) < 32.0) & (y < -anat.cav_ba * 0.6) & (z < top + 2.0) & (z > bot - 2.0))[0]
    if near.size == 0:
        return
    xs, ys, zs = x[near], y[near], z[near]
    y_st = -(anat._cavity_axes(zs)[1] + 0.5 * anat.rib_layer + 1.0)
    t = np.clip((top - zs) / (top - bot), 0.0, 1.0)
    half_w = np.interp(t, [0.0, 0.1, 0.28, 0.32, 0.82, 1.0], [26.0, 24.0, 16.0, 13.0, 15.0, 5.0]).astype(np.float32)
    half_t = np.interp(t, [0.0, 0.28, 0.32, 1.0], [8.0, 7.0, 5.5, 4.5]).astype(np.float32)
    q = (xs / half_w) ** 2 + ((ys - y_st) / half_t) ** 2
    inside = (q < 1.0) & (zs < top) & (zs > bot)
    shell = q > (1.0 - 1.4 / half_t) ** 2
    vals = v[near]
    vals[inside] = np.where(shell[inside], anat.hu["cortex"] * 0.8, anat.hu["marrow"])
    v[near] = vals


def _paint_implicit(anat: ChestAnatomy, tubes: dict, grid: SamplingGrid, hu, lungs, lobes) -> None:
    lo, hi = anat.body_extent()
    body_post = float(hi[1] - 45.0)
    box = grid.box(lo, hi)
    if box is None:
        return
    excluded = np.zeros(grid.shape, bool)
    tube_occupancy(grid, tubes["exclusion"], None, inside=excluded)
    anat.cavity_height(np.zeros(1, np.float32), np.zeros(1, np.float32), np.zeros(1, np.float32))  # warm tables

    def paint(slab) -> None:
        _paint_slab(anat, grid, slab, hu, lungs, lobes, excluded, body_post)

    # Slabs are disjoint and numpy releases the GIL in its loops: paint them on a few threads.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(paint, grid.slabs(box, voxels=2_000_000)))


def paint_anatomy(anat: ChestAnatomy, tubes: dict, grid: SamplingGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noiseless HU image (float32) with lung (labels.RIGHT_LUNG/LEFT_LUNG) and lobe truth on ``grid``."""
    hu = np.full(grid.shape, -1000.0, np.float32)
    lungs = np.zeros(grid.shape, np.uint8)
    lobes = np.zeros(grid.shape, np.uint8)
    _paint_implicit(anat, tubes, grid, hu, lungs, lobes)
    H = anat.hu
    scratch = np.zeros(grid.shape, np.uint8)
    paint_tubes(grid, hu, tubes["vessels"], H["blood"], scratch)
    paint_tubes(grid, hu, tubes["oesophagus"], H["muscle"], scratch)
    if tubes["oesophagus_air"] > 0:
        air = tubes["oesophagus"].copy()
        air[:, 6:8] = tubes["oesophagus_air"]
        paint_tubes(grid, hu, air, -1000.0, scratch)
    paint_bone_tubes(grid, hu, tubes["ribs"], 1.3, H["marrow"], H["cortex"], scratch)
    paint_tubes(grid, hu, tubes["cartilage"], H["cartilage"], scratch)
    paint_bone_tubes(grid, hu, tubes["clavicles"], 1.6, H["marrow"], H["cortex"], scratch)
    paint_bone_tubes(grid, hu, tubes["processes"], 1.2, H["marrow"], 0.8 * H["cortex"], scratch)
    return hu, lungs, lobes
