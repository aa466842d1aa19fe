"""Tubular structures of the generated chest: great vessels, central airways, oesophagus, ribs, clavicles.

Each structure is a polyline with node radii in the patient frame of :mod:`anatomy` (carina at
the origin, LPS axes).  Their courses follow standard chest anatomy: ascending aorta right of the
pulmonary trunk, arch over the left main bronchus, descending aorta left-anterior of the spine;
superior vena cava right of the aorta; right main bronchus short and steep, left main bronchus long
and more horizontal; ribs leaving the spine at their vertebra and descending 3-4 levels toward the
sternum, the upper seven joined to the sternum by costal cartilage.
"""

from __future__ import annotations

import numpy as np

from covidlesionseg.phantom.anatomy import ChestAnatomy, catmull_rom, polyline_segments


def _tube(points: list, radii: list, per: int = 6) -> np.ndarray:
    nodes = catmull_rom(np.array(points, float), per)
    t_ctrl = np.linspace(0.0, 1.0, len(points))
    t_nodes = np.linspace(0.0, 1.0, len(nodes))
    return polyline_segments(nodes, np.interp(t_nodes, t_ctrl, radii))


def _grow(segs: np.ndarray, extra: float) -> np.ndarray:
    out = segs.copy()
    out[:, 6:8] += extra
    return out


def airway_wall(lumen: np.ndarray | float) -> np.ndarray | float:
    """Airway wall thickness (mm) for a lumen radius (mm); about 15-20 % of the lumen diameter."""
    return 0.2 * np.asarray(lumen) + 0.3


def central_tubes(anat: ChestAnatomy, rng: np.random.Generator) -> dict:
    """All central tubes of one chest, with the named points where the lung trees attach."""
    u = rng.uniform
    s = anat.size
    ba, top = anat.cav_ba, anat.z_apex + 90.0
    vb_front = anat.vb_y - anat.vb_ry
    y_tr = anat.trachea_y
    r_t = anat.trachea_r
    low = anat.lung_zmin() - 90.0

    # Central airways: trachea down to the carina (origin in z), the two main bronchi to the hila.
    carina = np.array([u(-2.0, 2.0), y_tr, 0.0])
    b_r = np.array([-u(20.0, 26.0) * s, y_tr + u(2.0, 8.0), -u(17.0, 24.0)])
    b_l = np.array([u(36.0, 44.0) * s, y_tr + u(8.0, 14.0), -u(30.0, 38.0)])
    trachea = _tube([[0.0, y_tr - 8.0, top], [0.0, y_tr - 4.0, 40.0], carina + [0, 0, 6.0], carina],
                    [r_t, r_t, r_t, r_t * 0.95])
    rmb = _tube([carina, 0.5 * (carina + b_r) + [0, 0, -2.0], b_r], [0.8 * r_t, 0.76 * r_t, 0.72 * r_t], 4)
    lmb = _tube([carina, 0.5 * (carina + b_l) + [0, 0, 4.0], b_l], [0.72 * r_t, 0.68 * r_t, 0.65 * r_t], 4)
    central_lumen = np.vstack([trachea, rmb, lmb])
    central_outer = central_lumen.copy()
    central_outer[:, 6:8] += airway_wall(central_outer[:, 6:8]) + 0.8  # cartilage-bearing wall, thicker

    # Great vessels.
    hc = anat.heart_c
    ra = u(13.5, 17.0) * s
    aorta = _tube([[hc[0] - 26.0, hc[1] + 8.0, hc[2] + 38.0], [-4.0, -0.38 * ba, 6.0],
                   [2.0, -0.12 * ba, 30.0 + u(0, 8)], [16.0, vb_front - 22.0, 26.0],
                   [anat.vb_rx + 11.0, vb_front - 6.0, -5.0], [anat.vb_rx + 10.0, vb_front - 5.0, anat.z_dome_l - 20],
                   [8.0, vb_front - 6.0, low]], [ra, ra, 0.9 * ra, 0.85 * ra, 0.8 * ra, 0.78 * ra, 0.75 * ra])
    arch_top = np.array([2.0, -0.12 * ba, 30.0])
    branches = np.vstack([
        _tube([arch_top + [-4, -2, 0], [-14.0, -0.3 * ba, anat.z_apex + 5], [-24.0, -0.3 * ba, top]], [6.5, 6, 5.5]),
        _tube([arch_top + [8, 2, 0], [12.0, -0.15 * ba, anat.z_apex], [16.0, -0.15 * ba, top]], [4.5, 4.5, 4.5]),
        _tube([arch_top + [16, 14, -2], [24.0, 8.0, anat.z_apex], [50.0, 12.0, top]], [5.0, 5.0, 5.0]),
    ])
    r_pa = u(12.0, 14.5) * s
    bif = np.array([u(10.0, 16.0), -0.02 * ba, u(-2.0, 4.0)])
    rpa_end = np.array([-u(38.0, 44.0) * s, y_tr - u(10.0, 16.0), -u(10.0, 16.0)])
    lpa_end = np.array([u(44.0, 50.0) * s, y_tr + u(2.0, 8.0), -u(4.0, 10.0)])
    trunk = _tube([[hc[0] + 4.0, hc[1] - 22.0, hc[2] + 36.0], [hc[0] - 2.0, -0.32 * ba, -25.0], bif],
                  [r_pa, r_pa, r_pa])
    rpa = _tube([bif, [-8.0, bif[1] + 8.0, bif[2] - 4.0], rpa_end], [0.78 * r_pa, 0.75 * r_pa, 0.7 * r_pa])
    lpa = _tube([bif, [28.0, y_tr - 12.0, 6.0], lpa_end], [0.76 * r_pa, 0.72 * r_pa, 0.68 * r_pa])
    svc_x = -4.0 - ra - u(8.0, 11.0)
    svc = _tube([[svc_x - 6, -0.3 * ba, top], [svc_x, -0.25 * ba, 20.0], [svc_x + 4, -0.2 * ba, hc[2] + 45.0]],
                [9.5, 10.0, 10.5])
    bcv = _tube([[60.0, -0.45 * ba, anat.z_apex + 15], [20.0, -0.42 * ba, 50.0], [svc_x, -0.3 * ba, 40.0]],
                [6.0, 6.0, 6.5])
    # Left atrium and the pulmonary-vein trunks that leave it toward each hilum.
    la = hc + np.array([-6.0, 36.0, 24.0])
    vein_origins = {"RS": la + [-18.0, -6.0, 10.0], "RI": la + [-18.0, 4.0, -8.0],
                    "LS": la + [22.0, -6.0, 10.0], "LI": la + [22.0, 4.0, -8.0]}
    r_oe = u(7.0, 9.0)
    y_oe = y_tr + r_t + airway_wall(r_t) + 1.0 + r_oe
    oesophagus = _tube([[2.0, y_oe, top], [3.0, min(y_oe, vb_front - r_oe - 2.0), -40.0],
                        [12.0, vb_front - r_oe - 14.0, anat.z_dome_l - 20.0],
                        [0.42 * anat.cav_a, -0.12 * ba, anat.z_dome_l - 45.0]], [r_oe, r_oe, r_oe, r_oe])

    vessels = np.vstack([aorta, branches, trunk, rpa, lpa, svc, bcv])
    exclusion = np.vstack([_grow(central_outer, 1.5), _grow(aorta, 3.0), _grow(branches, 2.0),
                           _grow(np.vstack([trunk, rpa, lpa]), 2.5), _grow(np.vstack([svc, bcv]), 2.0),
                           _grow(oesophagus, 2.0)])
    ribs, cartilage = _ribs(anat, rng)
    return {
        "central_lumen": central_lumen, "central_outer": central_outer, "vessels": vessels,
        "oesophagus": oesophagus, "oesophagus_air": u(0.0, 3.0) if rng.random() < 0.5 else 0.0,
        "exclusion": exclusion, "ribs": ribs, "cartilage": cartilage, "clavicles": _clavicles(anat, rng),
        "processes": _vertebral_processes(anat, rng),
        "points": {"carina": carina, "RMB": b_r, "LMB": b_l, "RPA": rpa_end, "LPA": lpa_end, **vein_origins},
    }


def sternum_levels(anat: ChestAnatomy) -> tuple[float, float]:
    """Top (suprasternal notch, about T2) and bottom (xiphoid tip) of the sternum."""
    top = anat.z_t1 - 1.0 * anat.vert_pitch
    return top, top - 175.0 * anat.height


def _ribs(anat: ChestAnatomy, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Twelve pairs of ribs (tube segments, radius = outer cortex) and their costal cartilages."""
    u = rng.uniform
    st_top, st_bot = sternum_levels(anat)
    ribs, cart = [], []
    r_rib = u(3.8, 4.6)
    for n in range(1, 13):
        z_head = anat.z_t1 - (n - 1) * anat.vert_pitch
        drop = [22, 45, 68, 80, 88, 92, 95, 95, 90, 80, 45, 30][n - 1] * anat.height * u(0.9, 1.1)
        phi_end = [2.55, 2.62, 2.68, 2.72, 2.72, 2.7, 2.62, 2.45, 2.3, 2.15, 1.85, 1.55][n - 1]
        phi = np.linspace(0.42, phi_end, 22)
        frac = (phi - phi[0]) / (phi[-1] - phi[0])
        z = z_head + 4.0 - drop * frac**1.35
        for side in (-1.0, 1.0):
            cx, cy = side * np.sin(phi), np.cos(phi)
            rad = anat.cavity_radius(cx, cy, z) + 0.5 * anat.rib_layer
            path = np.stack([rad * cx, rad * cy, z], 1)
            head = np.array([side * (anat.vb_rx + 4.0), anat.vb_y + 2.0, z_head])
            nodes = np.vstack([head, 0.5 * (head + path[0]) + [side * 4.0, 4.0, 2.0], path])
            radii = np.full(len(nodes), r_rib * (0.85 if n in (1, 11, 12) else 1.0))
            radii[0] = radii[-1] = 0.8 * radii[1]
            ribs.append(polyline_segments(nodes, radii))
            if n <= 10:
                z_att = st_top - 8.0 - (min(n, 7) - 1) * (st_top - st_bot - 30.0) / 6.5 - 12.0 * max(n - 7, 0)
                y_att = -(anat._cavity_axes(np.array([z_att]))[1][0] + 0.5 * anat.rib_layer)
                att = np.array([side * (14.0 + 10.0 * max(n - 7, 0)), y_att, z_att])
                mid = 0.5 * (path[-1] + att) + [0.0, -3.0, 4.0 if n > 5 else 0.0]
                mid[:2] *= 1.0 + 0.08 * (n > 5)
                cart.append(polyline_segments(catmull_rom(np.vstack([path[-1], mid, att]), 5), 0.85 * r_rib))
    return np.vstack(ribs), np.vstack(cart)


def _clavicles(anat: ChestAnatomy, rng: np.random.Generator) -> np.ndarray:
    st_top, _ = sternum_levels(anat)
    y_st = -(anat._cavity_axes(np.array([st_top]))[1][0] + 0.5 * anat.rib_layer)
    r = rng.uniform(6.0, 7.5)
    out = []
    for side in (-1.0, 1.0):
        pts = [[side * 20.0, y_st - 6.0, st_top + 8.0], [side * 0.55 * anat.cav_a, y_st - 4.0, st_top + 16.0],
               [side * 0.85 * anat.cav_a, -0.2 * anat.cav_ba, st_top + 30.0]]
        out.append(_tube(pts, [r, 0.85 * r, r]))
    return np.vstack(out)


def _vertebral_processes(anat: ChestAnatomy, rng: np.random.Generator) -> np.ndarray:
    """Spinous and transverse processes of each vertebra over the imaged levels."""
    out = []
    y_back = anat.vb_y + anat.vb_ry
    for n in range(-4, 18):
        z_n = anat.z_t1 - (n - 1) * anat.vert_pitch
        out.append([[0.0, y_back + 14.0, z_n], [0.0, y_back + 42.0, z_n - 16.0], [4.0, 4.0]])
        for side in (-1.0, 1.0):
            out.append([[side * 9.0, y_back + 9.0, z_n + 1.0], [side * (anat.vb_rx + 20.0), y_back + 7.0, z_n + 3.0],
                        [4.5, 4.0]])
    return np.array([[*a, *b, *r] for a, b, r in out], float)
