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

from covidlesionseg import labels
from covidlesionseg.phantom.anatomy import ChestAnatomy, polyline_segments
from covidlesionseg.phantom.grid import SamplingGrid, tube_occupancy
from covidlesionseg.phantom.paint import paint_tubes
from covidlesionseg.phantom.tubes import airway_wall

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


def _reduce(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(values, starts, axis=0)


class ExclusionLookup:
    """The mediastinal exclusion tubes rasterised on a 2 mm lattice, for quick point queries while growing."""

    STEP = 2.0

    def __init__(self, segs: np.ndarray) -> None:
        r = np.maximum(segs[:, 6], segs[:, 7]).max()
        self.lo = np.minimum(segs[:, 0:3], segs[:, 3:6]).min(0) - r - self.STEP
        hi = np.maximum(segs[:, 0:3], segs[:, 3:6]).max(0) + r + self.STEP
        shape = tuple(int(v) for v in np.ceil((hi - self.lo) / self.STEP)[::-1] + 1)
        grid = SamplingGrid(shape, (self.STEP,) * 3, tuple(self.lo), np.eye(3), np.zeros(3))
        self.mask = np.zeros(shape, bool)
        tube_occupancy(grid, segs, None, inside=self.mask)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        idx = np.round((points - self.lo) / self.STEP).astype(int)[:, ::-1]
        ok = np.all((idx >= 0) & (idx < np.array(self.mask.shape)), axis=1)
        out = np.zeros(len(points), bool)
        out[ok] = self.mask[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out


def _first_outside(anat: ChestAnatomy, p0: np.ndarray, p1: np.ndarray, exclusion: ExclusionLookup) -> np.ndarray:
    """Largest fraction f in {0, .25, .5, .75, 1} such that p0 + t (p1 - p0) stays in the lungs for t <= f."""
    fr = np.array([0.25, 0.5, 0.75, 1.0])
    pts = p0[:, None, :] + fr[None, :, None] * (p1 - p0)[:, None, :]
    flat = pts.reshape(-1, 3)
    ok = anat.lung_side(*(flat[:, a].astype(np.float32) for a in range(3)), exclusion(flat)).reshape(-1, 4) > 0
    bad = ~ok
    first_bad = np.where(bad.any(1), bad.argmax(1), 4)
    return np.concatenate([[0.0], fr])[first_bad]


def _detour(anat: ChestAnatomy, exclusion: ExclusionLookup, p0: np.ndarray, target: np.ndarray,
            ordered: np.ndarray, starts: np.ndarray, counts: np.ndarray, ok: np.ndarray,
            rng: np.random.Generator, n_cand: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """End points for branches whose straight path leaves the lung: the territory point, reachable in a
    straight line inside the lung, that is nearest to the intended end.  Where none is reachable, the
    territory point nearest to the intended end, with the branch hidden (not drawn): its subtree then grows
    from inside its own territory instead of fanning out from one point."""
    b = len(p0)
    pick = starts[:, None] + (rng.random((b, n_cand)) * counts[:, None]).astype(int)
    cand = ordered[pick]  # (b, n_cand, 3)
    src = np.repeat(p0, n_cand, axis=0)
    free = _first_outside(anat, src, cand.reshape(-1, 3), exclusion).reshape(b, n_cand) >= 1.0
    dist = np.linalg.norm(cand - target[:, None, :], axis=2)
    dist[~free] = np.inf
    best = np.argmin(dist, axis=1)
    found = np.isfinite(dist[np.arange(b), best])
    nearest = np.argmin(np.linalg.norm(cand - target[:, None, :], axis=2), axis=1)
    end = np.where(found[:, None], cand[np.arange(b), best], cand[np.arange(b), nearest])
    return end, ~found


def grow_tree(anat: ChestAnatomy, exclusion: ExclusionLookup, root: np.ndarray, pts: np.ndarray, r_root: float,
              rng: np.random.Generator, *, r_min: float, twist: float = 0.0) -> dict[str, np.ndarray]:
    """Space-filling tree from ``root`` over the territory ``pts``; rows are branches in parent-first order.

    Grown generation by generation, all nodes of a generation at once.  A branch that would leave the
    lung (through the heart, the mediastinum or a great vessel) is shortened to its last point inside.
    ``twist`` rotates the splitting plane away from the territory's principal axis (radians, random
    sign), which makes a second tree over the same territory interleave with the first.
    Returns start, end (N, 3), radius (N,), parent (N,) index (-1 for the root branch) and terminal (N,).
    """
    order = np.arange(len(pts))
    starts, counts = np.array([0]), np.array([len(pts)])
    p0, radius, parent = np.asarray(root, float)[None], np.array([float(r_root)]), np.array([-1])
    out = {"start": [], "end": [], "radius": [], "parent": [], "terminal": [], "level": [], "hidden": []}
    emitted = 0
    while len(starts):
        g = len(starts)
        ordered = pts[order]
        centre = _reduce(ordered, starts) / counts[:, None]
        terminal = (counts <= 2) | (radius < r_min)
        frac = np.where(terminal, 1.0, rng.uniform(0.35, 0.5, g))
        p1 = p0 + frac[:, None] * (centre - p0)
        ok = _first_outside(anat, p0, p1, exclusion)
        blocked = np.nonzero(ok < 1.0)[0]
        hidden = np.zeros(g, bool)
        if blocked.size:
            p1[blocked], hidden[blocked] = _detour(anat, exclusion, p0[blocked], p1[blocked], ordered,
                                                   starts[blocked], counts[blocked], ok[blocked], rng)
        ids = emitted + np.arange(g)
        level = np.full(g, len(out["level"]))
        for key, val in (("start", p0), ("end", p1), ("radius", radius), ("parent", parent), ("terminal", terminal),
                         ("level", level), ("hidden", hidden)):
            out[key].append(val)
        emitted += g
        grow = np.nonzero(~terminal)[0]
        if grow.size == 0:
            break
        node_of = np.repeat(np.arange(g), counts)
        axis = p1 - p0
        norm = np.linalg.norm(axis, axis=1, keepdims=True)
        fallback = centre - p0
        fallback /= np.maximum(np.linalg.norm(fallback, axis=1, keepdims=True), 1e-9)
        axis = np.where(norm > 1e-6, axis / np.maximum(norm, 1e-9), fallback)
        q = ordered - p1[node_of]
        q -= (q * axis[node_of]).sum(1, keepdims=True) * axis[node_of]
        cov = _reduce(q[:, :, None] * q[:, None, :], starts)
        _, vecs = np.linalg.eigh(cov)
        ang = twist * rng.choice((-1.0, 1.0), g) * rng.uniform(0.6, 1.0, g)
        split = np.cos(ang)[:, None] * vecs[:, :, 2] + np.sin(ang)[:, None] * vecs[:, :, 1]
        proj = (q * split[node_of]).sum(1)
        resort = np.lexsort((-proj, node_of))  # within each node: positive side first
        order = order[resort]
        n_pos = _reduce((proj > 0).astype(np.int64), starts)
        k = np.where((n_pos > 0) & (n_pos < counts), n_pos, counts // 2)
        k = np.maximum(k, 1)
        new_starts, new_counts, new_p0, new_r, new_parent = [], [], [], [], []
        for part_start, part_count in ((starts[grow], k[grow]), (starts[grow] + k[grow], counts[grow] - k[grow])):
            keep = part_count > 0
            new_starts.append(part_start[keep])
            new_counts.append(part_count[keep])
            new_p0.append(p1[grow][keep])
            new_r.append(radius[grow][keep] * (part_count[keep] / counts[grow][keep]) ** (1.0 / 3.0))
            new_parent.append(ids[grow][keep])
        starts, counts = np.concatenate(new_starts), np.concatenate(new_counts)
        p0, radius, parent = np.vstack(new_p0), np.concatenate(new_r), np.concatenate(new_parent)
        sort = np.argsort(starts)
        starts, counts, p0, radius, parent = starts[sort], counts[sort], p0[sort], radius[sort], parent[sort]
        # keep only the points of live nodes, contiguous, in node order
        total = int(counts.sum())
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        take = np.repeat(starts - offsets, counts) + np.arange(total)
        order = order[take]
        starts = offsets
    tree = {key: np.concatenate(val) if key != "start" and key != "end" else np.vstack(val) for key, val in out.items()}
    tree["parent"] = tree["parent"].astype(int)
    return tree


def _companion(tree: dict, root_start: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Artery segments running beside the bronchi of ``tree`` (offset perpendicular to each branch)."""
    n = len(tree["radius"])
    offset_dir = np.zeros((n, 3))
    art_end = np.zeros((n, 3))
    art_start = np.zeros((n, 3))
    axis = tree["end"] - tree["start"]
    axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-9)
    for lev in range(int(tree["level"].max()) + 1):
        b = np.nonzero(tree["level"] == lev)[0]
        par = tree["parent"][b]
        o = np.where(par[:, None] >= 0, offset_dir[np.maximum(par, 0)], reference[None, :])
        ax = axis[b]
        o = o - (o * ax).sum(1, keepdims=True) * ax
        weak = np.linalg.norm(o, axis=1) < 0.1
        if weak.any():
            helper = np.where(np.abs(ax[weak, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
            o[weak] = np.cross(ax[weak], helper)
        o /= np.linalg.norm(o, axis=1, keepdims=True)
        offset_dir[b] = o
        art_end[b] = tree["end"][b] + o * (2.0 * tree["radius"][b, None] + 0.6)
        art_start[b] = np.where(par[:, None] >= 0, art_end[np.maximum(par, 0)], root_start[None, :])
    r = np.where(tree["hidden"], 0.0, tree["radius"])
    return np.hstack([art_start, art_end, r[:, None], (r * np.where(tree["terminal"], 0.6, 1.0))[:, None]])


def _airways(tree: dict, lumen_min: float) -> tuple[np.ndarray, np.ndarray]:
    lumen = LUMEN_FRACTION * tree["radius"]
    keep = (lumen >= lumen_min) & ~tree["hidden"]
    segs = np.hstack([tree["start"][keep], tree["end"][keep], lumen[keep, None], lumen[keep, None]])
    outer = segs.copy()
    outer[:, 6:8] += airway_wall(outer[:, 6:8])
    return segs, outer


def build_trees(anat: ChestAnatomy, tubes: dict, rng: np.random.Generator, *, r_min: float = 0.3,
                lumen_min: float = 0.7) -> dict[str, np.ndarray]:
    """Airway lumen / outer-wall segments and vessel segments (arteries + veins) for all five lobes."""
    pts, lobe = territory_points(anat, tubes["exclusion"], rng)
    lookup = ExclusionLookup(tubes["exclusion"])
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
        tree = grow_tree(anat, lookup, root, own, r_root, rng, r_min=r_min)
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
        veins = grow_tree(anat, lookup, v_root, own, r_root, rng, r_min=r_min, twist=0.9)
        r_vein = np.where(veins["hidden"], 0.0, veins["radius"])[:, None]
        taper = np.where(veins["terminal"], 0.6, 1.0)[:, None]
        vessels += [np.hstack([veins["start"], veins["end"], r_vein, taper * r_vein]),
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
    paint_tubes(grid, hu, trees["vessels"], blood_hu, scratch)
    paint_tubes(grid, hu, np.vstack([tubes["central_outer"], trees["airway_outer"]]), wall_hu, scratch)
    paint_tubes(grid, hu, np.vstack([tubes["central_lumen"], trees["airway_lumen"]]), -1000.0, scratch)
