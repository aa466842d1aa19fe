"""Chest anatomy of the generated CT: randomised parameters and implicit shapes in a patient frame.

Frame: millimetres, LPS axes (x toward the patient's LEFT, y toward posterior, z toward superior), origin
at the carina.  Every function takes flat float arrays ``x, y, z`` of points and is pure, so the same
definition is evaluated on any voxel grid (truth at voxel centres) and on coarse lattices (tree
territories, lesion weights).  Sizes follow adult chest CT anatomy (e.g. lung height 230-300 mm,
inner thoracic width 230-290 mm, right hemidiaphragm 1-2.5 cm higher than the left, oblique fissures
running from about T4-T5 posteriorly to the anterior diaphragm, horizontal fissure at the 4th costal
cartilage).
"""

from __future__ import annotations

import numpy as np

from covidlesionseg import labels


def catmull_rom(points: np.ndarray, per_segment: int = 8) -> np.ndarray:
    """Dense polyline through control points (centripetal-free uniform Catmull-Rom spline)."""
    p = np.asarray(points, float)
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    out.append(p[-1:])
    return np.vstack(out)


def polyline_segments(nodes: np.ndarray, radii: np.ndarray | float) -> np.ndarray:
    """(N-1, 8) tube segments x0, y0, z0, x1, y1, z1, r0, r1 from polyline nodes and node radii."""
    nodes = np.asarray(nodes, float)
    r = np.broadcast_to(np.asarray(radii, float), (len(nodes),))
    return np.hstack([nodes[:-1], nodes[1:], r[:-1, None], r[1:, None]])


class ChestAnatomy:
    """One randomised adult chest.  All lengths in mm in the patient frame (carina at the origin)."""

    def __init__(self, rng: np.random.Generator) -> None:
        u = rng.uniform
        self.size = u(0.9, 1.1)  # lateral scale
        self.depth = u(0.88, 1.12)  # antero-posterior scale
        self.height = u(0.9, 1.1)  # cranio-caudal scale
        # Thoracic cavity (inner chest wall): superellipse-like section, semi-axes at the widest level.
        self.cav_a = 128.0 * self.size
        self.cav_ba = 78.0 * self.depth  # anterior half-depth
        self.cav_bp = 84.0 * self.depth  # posterior half-depth
        self.boxiness = u(0.15, 0.6)
        # Levels.
        self.z_apex = 88.0 * self.height
        self.z_dome_r = -u(120.0, 145.0) * self.height
        self.z_dome_l = self.z_dome_r - u(10.0, 25.0)
        self.dome_drop = u(26.0, 36.0) * self.height
        self.vert_pitch = u(23.0, 26.0) * self.height
        self.z_t1 = self.z_apex - u(5.0, 15.0)
        # Chest wall layers (mm): rib layer, muscle, subcutaneous fat.
        self.rib_layer = 11.0
        self.muscle_lat = u(5.0, 9.0)
        self.muscle_ant = u(6.0, 16.0)
        self.muscle_post = u(30.0, 45.0)
        self.fat = u(4.0, 14.0)
        self.fat_extra = u(0.0, 22.0)
        self.skin = 1.8
        # Spine: vertebral body centre, radii.
        self.vb_rx = u(17.0, 21.0)
        self.vb_ry = u(14.0, 17.0)
        self.vb_y = self.cav_bp - 0.35 * self.vb_ry
        # Trachea: lumen radius and antero-posterior position (in front of the oesophagus and spine).
        self.trachea_r = u(7.5, 9.5) * self.size
        self.trachea_y = self.vb_y - self.vb_ry - 30.0
        # Heart: centre, semi-axes, long-axis angle toward the patient's left and anterior.
        self.heart_c = np.array([u(22.0, 36.0), -0.22 * self.cav_ba, self.z_dome_l + u(58.0, 70.0)])
        self.heart_ax = np.array([u(58.0, 68.0), u(38.0, 45.0), u(42.0, 50.0)]) * self.size
        ang = np.deg2rad(u(32.0, 48.0))
        long_axis = np.array([np.cos(ang), -np.sin(ang), -u(0.25, 0.45)])
        long_axis /= np.linalg.norm(long_axis)
        second = np.cross(long_axis, [0.0, 0.0, 1.0])
        second /= np.linalg.norm(second)
        self.heart_rot = np.stack([long_axis, second, np.cross(long_axis, second)])  # rows: axes
        self.heart_fat = u(3.0, 8.0)
        # Mediastinal column: half-width (mm) next to the spine and behind the sternum, by level (z, w_post, w_ant).
        self.col_x = u(-2.0, 6.0)
        zs = [self.z_dome_r - 40, -60.0, -25.0, 10.0, 40.0, self.z_apex - 20, self.z_apex + 60]
        w_post = [u(12, 16), u(15, 20), u(20, 26), u(22, 28), u(16, 21), u(13, 17), u(15, 20)]
        w_ant = [u(3, 6), u(3, 6), u(4, 8), u(6, 10), u(5, 9), u(4, 7), u(10, 16)]
        self.col_profile = (np.array(zs), np.array(w_post), np.array(w_ant))
        # Apices: dome centre per side (x offsets), curvature.
        self.apex_x = u(48.0, 60.0) * self.size
        self.apex_y = u(5.0, 20.0)
        self.apex_k = u(0.016, 0.024)
        self._draw_fissures(rng)
        # HU of tissues (unenhanced CT).
        self.hu = {
            "fat": u(-115.0, -85.0), "muscle": u(38.0, 55.0), "skin": u(20.0, 40.0), "blood": u(34.0, 46.0),
            "myocardium": u(42.0, 52.0), "liver": u(52.0, 66.0), "spleen": u(42.0, 50.0), "fluid": u(5.0, 20.0),
            "cortex": u(750.0, 1100.0), "marrow": u(140.0, 300.0), "cartilage": u(90.0, 180.0), "disc": u(70.0, 95.0),
            "csf": u(5.0, 20.0), "lung": u(-885.0, -850.0), "lung_gradient": u(20.0, 60.0), "fissure": u(-150.0, -50.0),
            "airway_wall": u(-80.0, 40.0), "abdomen": u(-40.0, 20.0),
        }
        self.fissure_half = u(0.2, 0.4)
        self.table = bool(rng.random() < 0.75)
        self._draw_fissure_variants(rng)

    # --- fissures -------------------------------------------------------------------------------
    def _draw_fissures(self, rng: np.random.Generator) -> None:
        """Major (oblique) and right minor (horizontal) fissures: where they lie sets the lobe volumes.

        The ranges give adult lobe fractions of about RUL 15-25 %, RML 4-13 %, RLL 22-32 %, LUL 19-28 %,
        LLL 18-28 % of the lungs (CT volumetry reports means of about 20 / 8 / 25 / 24 / 23 %), with the
        oblique fissure meeting the posterior chest wall between about T3 and T6.
        """
        u = rng.uniform

        def waves() -> np.ndarray:  # rows: amplitude, kx, ky, phase
            n = 3
            amp = u(1.0, 6.0, n)
            lam = u(60.0, 160.0, n)
            th = u(0, 2 * np.pi, n)
            return np.stack([amp, 2 * np.pi / lam * np.cos(th), 2 * np.pi / lam * np.sin(th), u(0, 2 * np.pi, n)], 1)

        def oblique(z_post: float, z_ant: float, y_ant: float) -> dict:
            slope = (z_post - z_ant) / (self.cav_bp - y_ant)
            return {"z0": z_ant - slope * y_ant, "sy": slope, "cyy": u(-0.004, 0.004), "sx": u(-0.15, 0.15),
                    "waves": waves()}

        self.fis_r_obl = oblique(u(20.0, 65.0) * self.height, self.z_dome_r + u(-5.0, 15.0),
                                 -u(0.4, 0.8) * self.cav_ba)
        self.fis_l_obl = oblique(u(30.0, 75.0) * self.height, self.z_dome_l + u(-5.0, 15.0),
                                 -u(0.35, 0.75) * self.cav_ba)
        self.fis_r_hor = {"z0": -u(35.0, 75.0) * self.height, "sy": u(-0.2, 0.1), "cyy": 0.0, "sx": u(-0.12, 0.12),
                          "waves": waves()}

    def _draw_fissure_variants(self, rng: np.random.Generator) -> None:
        """How each person's fissures differ: curvature (a propeller twist of the oblique fissures and a bowed
        minor fissure), incomplete fissures (a medial gap where the lobes fuse; CT series report the right
        minor fissure incomplete in most people and the oblique fissures in about half) and accessory fissures
        (inferior accessory, superior accessory and left minor fissures, each in roughly 5-20 % of people),
        which are bright plates inside a lobe that bound no lobe.  Drawn after every other anatomy parameter."""
        u = rng.uniform
        for fis in (self.fis_r_obl, self.fis_l_obl):
            fis["sxy"] = u(-0.0025, 0.0025)
        self.fis_r_hor["cyy"] = u(-0.003, 0.003)
        self.fis_r_hor["sxy"] = u(-0.0015, 0.0015)

        def gap(p_complete: float, lo: float, hi: float) -> dict:
            th = u(0, 2 * np.pi, 2)
            lam = u(40.0, 90.0, 2)
            return {"extent": 0.0 if rng.random() < p_complete else u(lo, hi), "amp": u(0.05, 0.2),
                    "k": np.stack([2 * np.pi / lam * np.cos(th), 2 * np.pi / lam * np.sin(th)], 1),
                    "phase": u(0, 2 * np.pi, 2)}

        self.gap_r_obl, self.gap_l_obl = gap(0.5, 0.25, 0.65), gap(0.5, 0.25, 0.65)
        self.gap_r_hor = gap(0.25, 0.3, 0.9)
        if rng.random() < 0.08:  # minor fissure absent
            self.gap_r_hor["extent"] = 5.0
        self.half_widths = {name: u(0.15, 0.45) for name in ("r_obl", "l_obl", "r_hor", "accessory")}
        self.accessory: list[dict] = []
        for side_sign, lobe in ((-1.0, labels.RLL), (1.0, labels.LLL)):
            if rng.random() < 0.18:  # inferior accessory fissure: medial basal segment
                th = np.deg2rad(u(-25.0, 25.0))
                n = np.array([np.cos(th), np.sin(th), u(-0.25, 0.25)])
                n /= np.linalg.norm(n)
                dome = self.z_dome_r if lobe == labels.RLL else self.z_dome_l
                point = np.array([self.col_x + side_sign * u(35.0, 55.0), u(-10.0, 40.0), dome])
                self.accessory.append({"lobe": lobe, "normal": n, "c": float(n @ point), "zmax": dome + u(30, 70)})
            if rng.random() < 0.07:  # superior accessory fissure: superior segment of the lower lobe
                n = np.array([0.0, u(-0.3, 0.3), 1.0])
                n /= np.linalg.norm(n)
                self.accessory.append({"lobe": lobe, "normal": n, "c": float(n[2] * u(-50.0, -20.0) * self.height),
                                       "ymin": u(10.0, 40.0)})
        if rng.random() < 0.12:  # left minor fissure: lingula
            n = np.array([u(-0.1, 0.1), u(-0.15, 0.15), 1.0])
            n /= np.linalg.norm(n)
            self.accessory.append({"lobe": labels.LUL, "normal": n, "c": float(n[2] * -u(35.0, 70.0) * self.height),
                                   "ymax": u(-20.0, 10.0)})

    @staticmethod
    def _surface(f: dict, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Height of a fissure surface z = h(x, y) and its slopes dh/dx, dh/dy."""
        z0, sy, cyy, sx = (float(f[k]) for k in ("z0", "sy", "cyy", "sx"))
        sxy = float(f.get("sxy", 0.0))
        h = z0 + sy * y + cyy * y * y + sx * x + sxy * x * y
        hx = sx + sxy * y
        hy = sy + 2 * cyy * y + sxy * x
        for amp, kx, ky, ph in f["waves"].tolist():
            arg = kx * x + ky * y + ph
            h = h + amp * np.sin(arg)
            c = amp * np.cos(arg)
            hx = hx + c * kx
            hy = hy + c * ky
        return h, hx, hy

    def _visible(self, gap: dict | None, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Where a fissure is formed: outside its medial gap (lateral position 0 at the mediastinum, 1 at the
        chest wall, with a wavy gap edge)."""
        if gap is None or gap["extent"] <= 0.0:
            return np.ones(x.shape, bool)
        lateral = np.abs(x - self.col_x) / self.cav_a
        for (kx, ky), ph in zip(gap["k"].tolist(), gap["phase"].tolist()):
            lateral = lateral + 0.5 * gap["amp"] * np.sin(kx * x + ky * y + ph)
        return lateral > gap["extent"]

    def _boundaries(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, side: np.ndarray):
        """Lobe labels and, per lobe-bounding fissure, (point indices, distance, normal, visible, name)."""
        out = np.zeros(x.shape, np.uint8)
        right = side == labels.RIGHT_LUNG
        left = ~right
        h_o = np.empty(x.shape, np.float32)
        gx = np.empty(x.shape, np.float32)
        gy = np.empty(x.shape, np.float32)
        vis_o = np.ones(x.shape, bool)
        for fis, gap, where in ((self.fis_r_obl, "gap_r_obl", right), (self.fis_l_obl, "gap_l_obl", left)):
            h, hx, hy = self._surface(fis, x[where], y[where])
            h_o[where], gx[where], gy[where] = h, hx, hy
            vis_o[where] = self._visible(getattr(self, gap, None), x[where], y[where])
        lower = z < h_o
        out[right & lower] = labels.RLL
        out[left & lower] = labels.LLL
        out[left & ~lower] = labels.LUL
        upper_r = np.nonzero(right & ~lower)[0]
        h_h, hx_h, hy_h = self._surface(self.fis_r_hor, x[upper_r], y[upper_r])
        out[upper_r] = np.where(z[upper_r] >= h_h, labels.RUL, labels.RML)
        half = getattr(self, "half_widths", None)
        parts = []
        for idx, h, hx, hy, vis, name in (
                (slice(None), h_o, gx, gy, vis_o, "obl"),
                (upper_r, h_h, hx_h, hy_h, self._visible(getattr(self, "gap_r_hor", None), x[upper_r], y[upper_r]),
                 "r_hor")):
            g = np.sqrt(1.0 + hx * hx + hy * hy)
            if name == "obl":
                w = np.where(right, half["r_obl"], half["l_obl"]) if half else self.fissure_half
            else:
                w = half["r_hor"] if half else self.fissure_half
            parts.append((idx, np.abs(z[idx] - h) / g, (-hx / g, -hy / g, 1.0 / g), vis,
                          np.broadcast_to(np.float32(w), np.shape(h)) if np.ndim(w) == 0 else w))
        return out, parts

    def lobes_and_fissures(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, side: np.ndarray):
        """Lobe label (labels.RUL..LLL) of lung points given their side, the distance (mm) to the nearest
        fissure surface bounding that lobe (the whole surface, formed or not) and its unit normal (nx, ny, nz).

        Right lung: below the oblique fissure is RLL; above it, the horizontal fissure separates RUL (above)
        from RML.  Left lung: below the oblique fissure is LLL, above it LUL.
        """
        out, parts = self._boundaries(x, y, z, side)
        dist, normal, _ = self._nearest(x.shape, [(i, d, n, w) for i, d, n, _, w in parts])
        return out, dist, normal

    def lobes_and_plates(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, side: np.ndarray):
        """Lobe labels and the visible fissure plates to paint: distance (mm) to the nearest formed fissure
        (lobe-bounding where not in its gap, or accessory), its unit normal and its half thickness (mm)."""
        out, parts = self._boundaries(x, y, z, side)
        plates = []
        for idx, d, n, vis, w in parts:
            plates.append((idx, np.where(vis, d, np.inf), n, w))
        half = getattr(self, "half_widths", {}).get("accessory", self.fissure_half)
        for acc in getattr(self, "accessory", []):
            nrm = acc["normal"]
            d = np.abs(nrm[0] * x + nrm[1] * y + nrm[2] * z - acc["c"])
            inside = out == acc["lobe"]
            if "zmax" in acc:
                inside &= z < acc["zmax"]
            if "ymin" in acc:
                inside &= y > acc["ymin"]
            if "ymax" in acc:
                inside &= y < acc["ymax"]
            ones = np.ones(x.shape, np.float32)
            plates.append((slice(None), np.where(inside, d, np.inf), tuple(float(c) * ones for c in nrm),
                           np.full(x.shape, half, np.float32)))
        dist, normal, width = self._nearest(x.shape, plates)
        return out, dist, normal, width

    @staticmethod
    def _nearest(shape: tuple, parts: list) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Per point: the smallest distance over surface parts (indices, distance, normal, half width)."""
        dist = np.full(shape, np.inf, np.float32)
        normal = [np.zeros(shape, np.float32) for _ in range(3)]
        width = np.zeros(shape, np.float32)
        for idx, d, comps, w in parts:
            cur = dist[idx]
            better = d < cur
            cur[better] = d[better]
            dist[idx] = cur
            for arr, comp in zip(normal + [width], tuple(comps) + (w,)):
                sub = arr[idx]
                sub[better] = np.broadcast_to(comp, np.shape(d))[better]
                arr[idx] = sub
        return dist, normal, width

    # --- chest wall and cavity -------------------------------------------------------------------
    _AXES_Z0, _AXES_STEP, _AXES_N = -700.0, 0.25, 5600

    def _axes_table(self) -> np.ndarray:
        """Cavity semi-axes (a, ba, bp) tabulated every 0.25 mm of height: the chest narrows toward the apex."""
        if getattr(self, "_table", None) is None:
            z = self._AXES_Z0 + self._AXES_STEP * np.arange(self._AXES_N)
            base = self.z_dome_l
            top = np.clip((z - base) / (self.z_apex - base), 0.0, 1.15) ** 2.5
            low = np.clip((base - 40.0 - z) / 120.0, 0.0, 1.0)
            a = self.cav_a * (1.0 - 0.55 * top) * (1.0 - 0.06 * low)
            self._table = np.stack([a, self.cav_ba * (1.0 - 0.25 * top), np.full_like(a, self.cav_bp)]).astype(
                np.float32)
        return self._table

    def _cavity_axes(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = ((np.asarray(z, np.float32) - np.float32(self._AXES_Z0)) * np.float32(1.0 / self._AXES_STEP)).astype(
            np.int32)
        np.clip(idx, 0, self._AXES_N - 1, out=idx)
        table = self._axes_table()
        return table[0][idx], table[1][idx], table[2][idx]

    def cavity_height(self, x: np.ndarray, y: np.ndarray, z: np.ndarray):
        """Radial height (mm) of points above the inner chest-wall surface (negative inside) and the direction
        cosines (cx, cy) of the point around the chest centre (cy > 0 posterior)."""
        a, ba, bp = self._cavity_axes(z)
        u = x / a
        u *= u
        v = y / np.where(y < 0, ba, bp)
        v *= v
        s = u + v
        u *= v
        u *= np.float32(-self.boxiness)
        u /= np.maximum(s, np.float32(1e-12))
        u += s
        np.maximum(u, np.float32(1e-12), out=u)
        rho = np.sqrt(u, out=u)
        r = np.sqrt(x * x + y * y)
        h = r / rho
        np.subtract(r, h, out=h)
        inv = 1.0 / np.maximum(r, np.float32(1e-6))
        return h, x * inv, y * inv

    def cavity_radius(self, cx: np.ndarray, cy: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Distance from the chest axis to the inner chest wall along the unit direction (cx, cy) at level z."""
        h_unit = self.cavity_height(np.asarray(cx, float), np.asarray(cy, float), np.asarray(z, float))[0]
        return 1.0 - h_unit  # rho is homogeneous of degree 1, so the surface lies at 1 / rho(unit) = 1 - h

    def wall_thickness(self, cx: np.ndarray, cy: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Muscle and subcutaneous fat thickness (mm) outside the rib layer, by direction and level."""
        ant = np.maximum(-cy, 0.0)
        post = np.maximum(cy, 0.0)
        post2 = post * post
        upper = np.clip((z + 60.0) / 140.0, 0.0, 1.0)
        shoulder = np.clip((z - self.z_apex + 50.0) / 60.0, 0.0, 1.0)
        scap = np.clip((z - self.z_t1 + 170.0) / 60.0, 0.0, 1.0) * np.clip(1.0 - 4.0 * (cy - 0.65) ** 2, 0.0, 1.0)
        muscle = (self.muscle_lat + self.muscle_ant * ant * upper + self.muscle_post * post2 * post2 * post2
                  + 25.0 * shoulder * (cx * cx) + 12.0 * post2 + 14.0 * scap)
        fat = self.fat + self.fat_extra * (0.6 * ant + 0.4 * cx * cx) + 0.3 * self.fat_extra * post
        return muscle, fat

    def body_extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Anatomy-frame box (lo, hi) holding the body over the lungs' levels plus margins."""
        th = np.linspace(0, 2 * np.pi, 181)
        zs = np.linspace(self.lung_zmin() - 60, self.z_apex + 60, 25)
        t, zz = np.meshgrid(th, zs)
        cx, cy, zz = np.sin(t).ravel(), np.cos(t).ravel(), zz.ravel()
        radius = self.cavity_radius(cx, cy, zz)
        muscle, fat = self.wall_thickness(cx, cy, zz)
        rr = radius + self.rib_layer + muscle + fat
        px, py = rr * cx, rr * cy
        return (np.array([px.min(), py.min(), zs.min()]), np.array([px.max(), py.max() + 45.0, zs.max()]))

    def lung_zmin(self) -> float:
        """Lowest level a lung can reach (the posterior costophrenic recesses)."""
        return min(self.z_dome_r, self.z_dome_l) - 2.2 * self.dome_drop - 12.0

    # --- diaphragm, apices, mediastinum ---------------------------------------------------------------
    def diaphragm_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of the upper diaphragm surface (right dome for x < 0, left for x >= 0)."""
        right = x < self.col_x
        f32 = np.float32
        top = np.where(right, f32(self.z_dome_r), f32(self.z_dome_l))
        xd = np.where(right, f32(-0.42 * self.cav_a), f32(0.45 * self.cav_a))
        q2 = ((x - xd) / (0.55 * self.cav_a)) ** 2 + ((y + 5.0) / (0.75 * self.cav_bp)) ** 2
        return top - self.dome_drop * np.minimum(q2, 2.2) - 10.0 * np.clip(y / self.cav_bp, 0.0, 1.0)

    def apex_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xa = np.where(x < self.col_x, np.float32(-self.apex_x), np.float32(self.apex_x))
        return self.z_apex - self.apex_k * ((x - xa) ** 2 + 0.8 * (y - self.apex_y) ** 2)

    def column_half_width(self, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Half-width of the mediastinum between the lungs: wide in front of the spine (oesophagus, aorta,
        azygos), narrow behind the sternum (the anterior junction of the lungs)."""
        zs, w_post, w_ant = self.col_profile
        wp = np.interp(z, zs, w_post).astype(np.float32)
        wa = np.interp(z, zs, w_ant).astype(np.float32)
        front, back = -self.cav_ba, self.vb_y - self.vb_ry
        f = np.clip((y - front) / (back - front), 0.0, 1.0)
        return wa + (wp - wa) * f * np.sqrt(f)

    def heart_q(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Normalised ellipsoid radius of the heart (1 on its surface)."""
        c = self.heart_c.tolist()
        d = [x - c[0], y - c[1], z - c[2]]
        q = 0.0
        for row, ax in zip(self.heart_rot.tolist(), self.heart_ax.tolist()):
            p = row[0] * d[0] + row[1] * d[1] + row[2] * d[2]
            q = q + (p / ax) ** 2
        return np.sqrt(q)

    def spine_exclusion(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Vertebral body and the paravertebral region (rib heads and necks) that the lungs wrap around."""
        body = (x / (self.vb_rx + 6.0)) ** 2 + ((y - self.vb_y) / (self.vb_ry + 6.0)) ** 2 < 1.0
        back = (x / (self.vb_rx + 20.0)) ** 2 + ((y - self.vb_y - 25.0) / (self.vb_ry + 29.0)) ** 2 < 1.0
        return body | back

    def lung_side(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, excluded: np.ndarray,
                  cavity_h: np.ndarray | None = None) -> np.ndarray:
        """Lung label of points: labels.RIGHT_LUNG / LEFT_LUNG / 0 (flat arrays).

        Lung = inside the pleura, above the diaphragm, below the apex, outside the mediastinum (column,
        heart with its fat, spine) and outside every mediastinal tube (great vessels, trachea and main
        bronchi with their walls) plus a margin; ``excluded`` flags the points inside those tubes (drawn
        by :func:`grid.tube_occupancy` from the exclusion segments).
        """
        h = self.cavity_height(x, y, z)[0] if cavity_h is None else cavity_h
        cand = np.nonzero((h < -1.0) & (z < self.z_apex + 1.0) & (z > self.lung_zmin() - 1.0))[0]
        xs, ys, zs = x[cand], y[cand], z[cand]
        ok = (zs > self.diaphragm_z(xs, ys)) & (zs < self.apex_z(xs, ys)) & ~excluded[cand]
        ok &= np.abs(xs - self.col_x) > self.column_half_width(ys, zs)
        idx = np.nonzero(ok)[0]
        xs, ys, zs = xs[idx], ys[idx], zs[idx]
        heart_margin = 1.0 + (self.heart_fat + 2.0) / float(self.heart_ax.min())
        ok2 = (self.heart_q(xs, ys, zs) > heart_margin) & ~self.spine_exclusion(xs, ys)
        out = np.zeros(x.shape, np.uint8)
        keep = cand[idx[ok2]]
        out[keep] = np.where(x[keep] < self.col_x, labels.RIGHT_LUNG, labels.LEFT_LUNG)
        return out

    def summary(self) -> dict:
        """JSON-serialisable summary of the drawn anatomy."""
        return {
            "size_scale": round(self.size, 4), "depth_scale": round(self.depth, 4),
            "height_scale": round(self.height, 4),
            "apex_z_mm": round(self.z_apex, 2), "right_dome_z_mm": round(self.z_dome_r, 2),
            "left_dome_z_mm": round(self.z_dome_l, 2), "heart_centre_mm": [round(float(v), 2) for v in self.heart_c],
            "table": self.table, "hu": {k: round(v, 1) for k, v in self.hu.items()},
        }
