"""Airway, pulmonary-artery and pulmonary-vein trees of the generated chest.

Each lobe gets a space-filling branching tree after Kitaoka et al. (J Appl Physiol 1999, "A
three-dimensional model of the human airway tree"): a branch runs from its parent's end toward the centre
of mass of its territory (a cloud of points filling the lobe) for a fraction of that distance, then the
territory is split by a plane containing the branch and the daughters continue into each half.  Radii
follow Murray's law with flow proportional to territory size (r^3 proportional to the points served).
Pulmonary arteries run beside the bronchi (bronchovascular bundles) and continue beyond the last visible
airway; veins form a separate, interleaved tree draining to the left atrium.  Because territories are
lobes, no branch crosses a fissure.
"""

from __future__ import annotations

import numpy as np

from . import labels
from .phantom_anatomy import ChestAnatomy, polyline_segments
from .phantom_grid import SamplingGrid, tube_occupancy
from .phantom_tubes import airway_wall

TERRITORY_STEP_MM = 6.0
LOBAR_RADIUS_MM = 5.5  # artery radius of a 1.5 L lobe
LUMEN_FRACTION = 0.85  # bronchial lumen radius / companion artery radius
LOBE_SOURCES = {labels.RUL: ("RMB", "RPA", "RS"), labels.RML: ("BI", "IA_R", "RS"), labels.RLL: ("BI", "IA_R", "RI"),
                labels.LUL: ("LMB", "LPA", "LS"), labels.LLL: ("LMB", "IA_L", "LI")}


def territory_points(anat: ChestAnatomy, exclusion: np.ndarray, rng: np.random.Generator,
                     step: float = TERRITORY_STEP_MM) -> tuple[np.ndarray, np.ndarray]:
    """Jittered lattice points filling the lungs (N, 3) and their lobe labels."""
    lo = np.array([-anat.cav_a, -anat.cav_ba, anat.lung_zmin()]) - step
    hi = np.array([anat.cav_a, anat.cav_bp, anat.z_apex]) + step
    shape = tuple(int(v) for v in np.ceil((hi - lo) / step)[::-1] + 1)
    lattice = SamplingGrid(shape, (step, step, step), tuple(lo), np.eye(3), np.zeros(3))
    excluded = np.zeros(shape, bool)
    tube_occupancy(lattice, exclusion, None, inside=excluded)
    x, y, z = (a.ravel() for a in lattice.coords(lattice.full_box()))
    side = anat.lung_side(x, y, z, excluded.ravel())
    keep = np.nonzero(side)[0]
    lobe = anat.lobes_and_fissures(x[keep], y[keep], z[keep], side[keep])[0]
    pts = np.stack([x[keep], y[keep], z[keep]], 1).astype(float)
    pts += rng.uniform(-0.3 * step, 0.3 * step, pts.shape)
    return pts, lobe


def grow_tree(root: np.ndarray, pts: np.ndarray, r_root: float, rng: np.random.Generator, *,
              r_min: float, twist: float = 0.0) -> dict[str, np.ndarray]:
    """Space-filling tree from ``root`` over the territory ``pts``; rows are branches in parent-first order.

    Returns start, end (N, 3), radius (N,), parent (N,) index (-1 for the root branch) and terminal (N,).
    ``twist`` rotates the splitting plane away from the territory's principal axis (radians, random sign),
    which makes a second tree over the same territory interleave with the first.
    """
    start, end, radius, parent, terminal = [], [], [], [], []
    stack = [(np.asarray(root, float), np.arange(len(pts)), float(r_root), -1)]
    while stack:
        p0, idx, r, par = stack.pop()
        sub = pts[idx]
        centre = sub.mean(0)
        me = len(start)
        if len(idx) <= 2 or r < r_min:
            start.append(p0), end.append(centre), radius.append(r), parent.append(par), terminal.append(True)
            continue
        p1 = p0 + rng.uniform(0.35, 0.5) * (centre - p0)
        axis = p1 - p0
        norm = np.linalg.norm(axis)
        axis = axis / norm if norm > 1e-6 else np.array([0.0, 0.0, -1.0])
        q = sub - p1
        q -= np.outer(q @ axis, axis)
        _, vecs = np.linalg.eigh(q.T @ q)
        ang = twist * rng.choice((-1.0, 1.0)) * rng.uniform(0.6, 1.0)
        split = np.cos(ang) * vecs[:, 2] + np.sin(ang) * vecs[:, 1]
        proj = q @ split
        left = proj > 0
        if left.all() or not left.any():
            left = proj > np.median(proj)
            if left.all() or not left.any():
                left = np.arange(len(idx)) < len(idx) // 2
        start.append(p0), end.append(p1), radius.append(r), parent.append(par), terminal.append(False)
        n = float(len(idx))
        for part in (idx[left], idx[~left]):
            stack.append((p1, part, r * (len(part) / n) ** (1.0 / 3.0), me))
    return {"start": np.array(start), "end": np.array(end), "radius": np.array(radius),
            "parent": np.array(parent, int), "terminal": np.array(terminal)}


def _companion(tree: dict, root_start: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Artery segments running beside the bronchi of ``tree`` (offset perpendicular to each branch)."""
    n = len(tree["radius"])
    offset_dir = np.zeros((n, 3))
    art_end = np.zeros((n, 3))
    segs = np.zeros((n, 8))
    for b in range(n):
        p0, p1, r, par = tree["start"][b], tree["end"][b], tree["radius"][b], tree["parent"][b]
        axis = p1 - p0
        axis /= max(np.linalg.norm(axis), 1e-9)
        o = offset_dir[par] if par >= 0 else reference
        o = o - (o @ axis) * axis
        if np.linalg.norm(o) < 0.1:
            o = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
        o /= np.linalg.norm(o)
        offset_dir[b] = o
        art_end[b] = p1 + o * (2.0 * r + 0.6)
        a0 = art_end[par] if par >= 0 else root_start
        segs[b] = [*a0, *art_end[b], r, r * (0.6 if tree["terminal"][b] else 1.0)]
    return segs


def _airways(tree: dict, lumen_min: float) -> tuple[np.ndarray, np.ndarray]:
    lumen = LUMEN_FRACTION * tree["radius"]
    keep = lumen >= lumen_min
    segs = np.hstack([tree["start"][keep], tree["end"][keep], lumen[keep, None], lumen[keep, None]])
    outer = segs.copy()
    outer[:, 6:8] += airway_wall(outer[:, 6:8])
    return segs, outer


def build_trees(anat: ChestAnatomy, tubes: dict, rng: np.random.Generator, *, r_min: float = 0.3,
                lumen_min: float = 0.7) -> dict[str, np.ndarray]:
    """Airway lumen / outer-wall segments and vessel segments (arteries + veins) for all five lobes."""
    pts, lobe = territory_points(anat, tubes["exclusion"], rng)
    pt = dict(tubes["points"])
    pt["BI"] = pt["RMB"] + [-3.0, 4.0, -22.0]
    pt["IA_R"] = pt["RPA"] + [-4.0, 6.0, -20.0]
    pt["IA_L"] = pt["LPA"] + [4.0, 8.0, -22.0]
    lumen_c, outer_c, vessels = [], [], []

    def connector(a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
        return polyline_segments(np.array([a, b]), [r, r])

    r_bi = None
    for lb, (bronchus, artery, vein) in LOBE_SOURCES.items():
        own = pts[lobe == lb]
        if len(own) < 3:
            continue
        centre = own.mean(0)
        r_root = LOBAR_RADIUS_MM * (len(own) * TERRITORY_STEP_MM**3 / 1.5e6) ** (1.0 / 3.0)
        src = pt[bronchus]
        aim = src + 15.0 * (centre - src) / np.linalg.norm(centre - src)
        root = own[np.argmin(((own - aim) ** 2).sum(1))]
        tree = grow_tree(root, own, r_root, rng, r_min=r_min)
        lumen, outer = _airways(tree, lumen_min)
        r_lumen = LUMEN_FRACTION * r_root
        lumen_c += [lumen, connector(src, root, r_lumen)]
        outer_c += [outer, connector(src, root, r_lumen + airway_wall(r_lumen))]
        if bronchus == "BI":
            r_bi = max(r_bi or 0.0, r_lumen * 1.15)
        reference = np.array([0.0, -1.0, 0.0]) if lb in (labels.RUL, labels.LUL, labels.RML) else np.array(
            [np.sign(centre[0]), 0.0, 0.0])
        art_root = root + reference * (2.0 * r_root + 0.6)
        vessels += [_companion(tree, art_root, reference), connector(pt[artery], art_root, r_root)]
        v_aim = pt[vein] + 35.0 * (centre - pt[vein]) / np.linalg.norm(centre - pt[vein])
        v_root = own[np.argmin(((own - v_aim) ** 2).sum(1))]
        veins = grow_tree(v_root, own, r_root, rng, r_min=r_min, twist=0.9)
        vessels += [np.hstack([veins["start"], veins["end"], veins["radius"][:, None],
                               np.where(veins["terminal"], 0.6, 1.0)[:, None] * veins["radius"][:, None]]),
                    connector(pt[vein], v_root, r_root)]
    if r_bi is not None:
        lumen_c.append(connector(pt["RMB"], pt["BI"], r_bi))
        outer_c.append(connector(pt["RMB"], pt["BI"], r_bi + airway_wall(r_bi)))
    for a, b in (("RPA", "IA_R"), ("LPA", "IA_L")):
        vessels.append(connector(pt[a], pt[b], 5.0))
    return {"airway_lumen": np.vstack(lumen_c), "airway_outer": np.vstack(outer_c), "vessels": np.vstack(vessels),
            "territory_points": len(pts)}


def paint_trees(grid: SamplingGrid, hu: np.ndarray, trees: dict, tubes: dict, blood_hu: float, wall_hu: float,
                scratch: np.ndarray) -> None:
    """Draw vessels, then airway walls, then airway lumens (air), with partial volume."""
    from .phantom_paint import paint_tubes

    paint_tubes(grid, hu, trees["vessels"], blood_hu, scratch)
    paint_tubes(grid, hu, np.vstack([tubes["central_outer"], trees["airway_outer"]]), wall_hu, scratch)
    paint_tubes(grid, hu, np.vstack([tubes["central_lumen"], trees["airway_lumen"]]), -1000.0, scratch)
