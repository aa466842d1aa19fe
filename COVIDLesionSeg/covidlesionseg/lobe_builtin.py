"""Built-in lobe segmentation: five lobes from the right and left lungs, offline, on the CPU, in seconds.

Method, per lung, in the patient frame taken from the direction cosines:

1. Anatomical prior.  In a lung-normalised frame (height h from the base, 0, to the apex, 1; depth a from the
   most anterior, 0, to the most posterior lung, 1) the oblique (major) fissure is a plane h = c + k a that
   meets the posterior chest wall at about 60-70 % of the lung height (T4-T5) and the diaphragm anteriorly
   (k = 0.9); the right minor (horizontal) fissure is the level h = c2 above the oblique fissure, at about the
   4th costal cartilage.  The offsets c and c2 are set so that the lobes take the adult volume fractions of CT
   volumetry (RUL 20 %, RML 9 %, RLL 25 %, LUL 24 %, LLL 22 % of both lungs; e.g. Hu S et al., Chest 2012;
   Yamada Y et al., Radiology 2020 for upright/supine lobar volumes).  Where a lung is cut by the field of view,
   a typical lung height stands in for the missing part and fixed anatomical offsets replace the volume fit.
2. Vessel gaps.  No vessel crosses a fissure, so the small vessels thin out within a few mm on both sides of
   it, formed or not (Kuhnigk J-M et al., Proc SPIE 2005; Lassen B et al., IEEE TMI 2013).  Among offsets and
   tilts of each prior plane, the one whose 7 mm band holds the fewest small vessels (thin bright tubes;
   consolidation, large vessels and their rims left out) is a second start for the fit, taken only where the
   gap is clear (vessel density well below the lung's).  This is what places an incomplete or absent minor
   fissure, and both fissures on thick slices.
3. Plate evidence.  Fissures are thin bright plates (Lassen B et al., IEEE TMI 2013; van Rikxoort E M et al.,
   Med Phys 2008): a Hessian plate measure (largest-magnitude eigenvalue strongly negative, the others small,
   a symmetric ridge, not a step edge) on a ~1.6 mm grid, kept where the plate's normal agrees with the
   prior fissure's normal and where the voxel lies away from the pleura and from vessels (HU > -500).
4. Surface fit.  Each fissure is a smooth height field over its prior plane: a polynomial in the plane
   coordinates (cubic for the oblique fissures, a tilted plane for the minor fissure) started at the mode of
   the plates' offsets and fitted by iteratively reweighted least squares with Tukey's biweight at shrinking
   scales, held to its start by weak pseudo-observations; few plates allow only a shift, then a tilt, and
   beyond the plates' extent a curved fit continues along its tangent plane.  With
   enough plates a local height field (12 mm nodes, thin-plate bending penalty) adds the bends a polynomial
   cannot follow (waves, the turn of the oblique fissure toward the anterior chest wall).  The fit runs from
   the prior and from the vessel gap; the start with clearly more plate evidence wins, the gap otherwise.
   An incomplete fissure (fused parenchyma) or one hidden by dense consolidation is extended smoothly.  The
   minor fissure's prior lies above the fitted oblique fissure, at the level that leaves the middle lobe its
   published share; its plates are fitted where the slices resolve a horizontal plate (voxels under 3 mm),
   its vessel gap up to 6 mm; with voxels of 6 mm or more the prior planes are the answer.
5. Labels at full resolution: each lung voxel is put on its side of the fitted surfaces (every lung voxel in
   exactly one lobe of its own lung).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from covidlesionseg import labels
from covidlesionseg.io import InputError, Volume
from covidlesionseg.masks import bounding_box, distance_to
from covidlesionseg.masks import downsample as block_majority

log = logging.getLogger(__name__)

# Adult lobe volume fractions (% of both lungs) the prior is calibrated on (CT volumetry, see module docstring).
PUBLISHED_FRACTIONS = {labels.RUL: 20.0, labels.RML: 9.0, labels.RLL: 25.0, labels.LUL: 24.0, labels.LLL: 22.0}
OBLIQUE_SLOPE = 0.9  # dh/da of the oblique fissure in the lung-normalised frame
OBLIQUE_POSTERIOR_HEIGHT = 0.65  # where the oblique fissure meets the posterior wall (fraction of lung height)
MINOR_HEIGHT = 0.55  # minor fissure level (fraction of lung height), used only when a lung is cut
TYPICAL_LUNG_HEIGHT_MM = 250.0
WORK_MM = 1.6  # working grid for the image evidence (mm, about)
SIGMA_MM = 1.2  # Hessian scale
BAND_MM = 32.0  # how far from the prior a fissure is looked for
PLEURA_MARGIN_MM = 4.5
PLATE_REF = 30.0  # HU/mm^2: a clearly visible fissure's plate response
PLATE_MIN = 8.0  # HU/mm^2: weaker responses are not evidence
MINOR_BAND_MM = 45.0  # the minor fissure's level varies more between people
POLY_DEGREE = 3
OBLIQUE_DEGREE = 3  # the oblique fissure's polynomial
MINOR_DEGREE = 1  # the minor fissure's polynomial: a tilted plane (its bends come from the local field)
THICK_SLICE_MM = 3.0  # thicker slices blur the horizontal minor fissure into the parenchyma: its prior alone
OBLIQUE_MAX_MM = 6.0  # the oblique fissures, steep in the sagittal plane, stay visible up to this voxel size
PRIOR_WEIGHT = 0.05  # pseudo-observations of the prior plane: this share of the evidence weight
PRIOR_WEIGHT_MIN = 20.0
EVIDENCE_FOR_DEGREE = (60.0, 300.0)  # summed plate weight needed for a tilted / curved fit
EXTENT_QUANTILES = (0.01, 0.99)  # the evidence's extent: weighted quantiles of the plates' plane coordinates
SCALES_MM = (12.0, 8.0, 5.0, 3.0)  # biweight scales of the IRLS fit (after the offset mode)
FIT_START_MARGIN = 1.2  # plate evidence a fit from the prior needs over one from the vessel gap to win
VESSEL_HU = -600.0  # small vessels: brighter than this inside the lung
VALLEY_MARGIN_MM = 5.0  # away from the pleura and the oblique fissure (their own vessel-free margins)
VALLEY_BLOB_MM = 3.0  # bright blobs thicker than about twice this are consolidation or large vessels, not counted
VALLEY_WIDTH_MM = 7  # the vessel-free band around a fissure (mm, odd)
VALLEY_MIN_CELLS = 2000  # cells a band must hold to be judged
VALLEY_MAX_CELLS = 150_000  # cells the valley search looks at (a regular subsample)
VALLEY_MAX_COST = 0.65  # a gap is evidence only where its vessel density is well below the lung's
VALLEY_HOLD = 0.1  # pull toward the prior level and a flat plane
VALLEY_TILTS_U = (-12.0, -6.0, 0.0, 6.0, 12.0)  # mm per half lung depth, lateral tilt
VALLEY_TILTS_V = (-24.0, -16.0, -8.0, 0.0, 8.0, 16.0, 24.0)  # mm per half lung height, anterior-posterior tilt
LOCAL_NODE_MM = 12.0  # node spacing of the local height field fitted on top of the polynomial
LOCAL_SCALES_MM = (12.0, 8.0, 5.0, 3.0)  # biweight scales of the local fit
LOCAL_BEND = 0.5  # bending penalty of the local field, per node, in units of the mean evidence weight per node
LOCAL_PULL = 0.02  # pull of the local field toward the polynomial (same units)


@dataclass
class Surface:
    """A fissure: signed height t = f(U, V) over a prior plane (mm; positive toward ``normal``)."""

    origin: np.ndarray
    normal: np.ndarray
    eu: np.ndarray
    ev: np.ndarray
    scale: tuple[float, float]
    coef: np.ndarray = field(default_factory=lambda: np.zeros(_n_terms(POLY_DEGREE)))
    evidence: float = 0.0  # summed weight of the image evidence the fit used
    local: _HeightGrid | None = None  # local bends on top of the polynomial (a smooth field on a node grid)
    extent: tuple[float, float, float, float] = (-1.5, 1.5, -1.5, 1.5)  # (u, v) range the polynomial holds in

    def frame(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        axes = np.stack([self.normal, self.eu / self.scale[0], self.ev / self.scale[1]], 1)
        shift = self.origin @ axes
        dtype = points.dtype.type
        x, y, z = points[:, 0], points[:, 1], points[:, 2]  # column by column: a (N, 3) @ (3, 3) product is slow
        return tuple(x * dtype(axes[0, c]) + y * dtype(axes[1, c]) + z * dtype(axes[2, c]) - dtype(shift[c])
                     for c in range(3))

    def height(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        n = int(np.max(np.nonzero(self.coef)[0], initial=-1)) + 1  # terms in use
        degree = next(d for d in range(POLY_DEGREE + 1) if _n_terms(d) >= n)
        # Term by term (no (N, terms) basis matrix): this runs on every cell of a lung's box.  Beyond the extent
        # of the evidence the polynomial continues along its tangent plane (no cubic swing where no plate is).
        ulo, uhi, vlo, vhi = self.extent
        uc, vc = np.clip(u, ulo, uhi), np.clip(v, vlo, vhi)
        du, dv = u - uc, v - vc
        up, vp = [np.ones_like(uc), uc], [np.ones_like(vc), vc]
        for _ in range(2, degree + 1):
            up.append(up[-1] * uc)
            vp.append(vp[-1] * vc)
        out = np.full(np.shape(u), self.coef[0], dtype=u.dtype)
        k = 1
        for d in range(1, degree + 1):
            for i in range(d, -1, -1):
                c = u.dtype.type(self.coef[k])
                j = d - i
                if c:
                    out += c * (up[i] * vp[j] if 0 < i < d else up[i] if i else vp[j])
                    if i:
                        out += (c * i) * up[i - 1] * vp[j] * du
                    if j:
                        out += (c * j) * up[i] * vp[j - 1] * dv
                k += 1
        if self.local is not None:
            out = out + self.local(u, v)
        return out

    def side_on_box(self, grid: _Grid, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """:meth:`side` at every cell of the working grid's box [lo, hi) (k, j, i), by broadcasting."""
        first, step = grid.affine()
        axes = np.stack([self.normal, self.eu / self.scale[0], self.ev / self.scale[1]], 1)
        base = (first - self.origin) @ axes
        per_axis = step @ axes  # (3 index axes, 3 frame coordinates)
        shape = tuple(int(b - a) for a, b in zip(lo, hi))
        tuv = []
        for c in range(3):
            field = np.float32(base[c])
            for a in range(3):
                r = (np.arange(lo[a], hi[a], dtype=np.float32) * np.float32(per_axis[a, c]))
                field = field + r.reshape([-1 if b == a else 1 for b in range(3)])
            tuv.append(np.broadcast_to(field, shape))
        t, u, v = tuv
        return (t - self.height(u.ravel(), v.ravel()).reshape(shape)).astype(np.float32)

    def side(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (mm, along the plane normal) of points above the fitted surface."""
        t, u, v = self.frame(points)
        return t - self.height(u, v)


@dataclass
class _HeightGrid:
    """A height field (mm) on a regular node grid over the plane coordinates (u, v), bilinearly interpolated
    (held constant beyond the outer nodes)."""

    values: np.ndarray  # (nu, nv)
    lo: tuple[float, float]
    step: tuple[float, float]

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        coords = np.stack([(u - self.lo[0]) / self.step[0], (v - self.lo[1]) / self.step[1]]).astype(np.float32)
        return ndimage.map_coordinates(self.values.astype(np.float32), coords, order=1, mode="nearest")

    def weights(self, u: np.ndarray, v: np.ndarray):
        """Sparse (len(u), nodes) bilinear interpolation matrix."""
        from scipy import sparse

        nu, nv = self.values.shape
        fu = np.clip((u - self.lo[0]) / self.step[0], 0.0, nu - 1.0)
        fv = np.clip((v - self.lo[1]) / self.step[1], 0.0, nv - 1.0)
        iu = np.minimum(np.floor(fu).astype(int), nu - 2)
        iv = np.minimum(np.floor(fv).astype(int), nv - 2)
        au, av = fu - iu, fv - iv
        rows = np.repeat(np.arange(len(u)), 4)
        cols = np.stack([iu * nv + iv, iu * nv + iv + 1, (iu + 1) * nv + iv, (iu + 1) * nv + iv + 1], 1).ravel()
        vals = np.stack([(1 - au) * (1 - av), (1 - au) * av, au * (1 - av), au * av], 1).ravel()
        return sparse.csr_matrix((vals, (rows, cols)), shape=(len(u), nu * nv))

    def bending(self):
        """Sparse thin-plate bending energy of the node values (second differences along u, v and across)."""
        from scipy import sparse

        nu, nv = self.values.shape
        index = np.arange(nu * nv).reshape(nu, nv)
        rows, cols, vals = [], [], []
        n = 0
        stencils = [((0, 0), (1, 0), (2, 0)), ((0, 0), (0, 1), (0, 2))]
        for (a, b, c) in stencils:
            du, dv = c
            block = index[: nu - du, : nv - dv]
            for (ou, ov), w in zip((a, b, c), (1.0, -2.0, 1.0)):
                rows.append(n + np.arange(block.size))
                cols.append(index[ou: nu - du + ou, ov: nv - dv + ov].ravel())
                vals.append(np.full(block.size, w))
            n += block.size
        block = index[: nu - 1, : nv - 1]
        for (ou, ov), w in zip(((0, 0), (1, 1), (1, 0), (0, 1)), (1.0, 1.0, -1.0, -1.0)):
            rows.append(n + np.arange(block.size))
            cols.append(index[ou: nu - 1 + ou, ov: nv - 1 + ov].ravel())
            vals.append(np.full(block.size, w * np.sqrt(2.0)))
        n += block.size
        d = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                              shape=(n, nu * nv))
        return (d.T @ d).tocsr()


def _n_terms(degree: int) -> int:
    return (degree + 1) * (degree + 2) // 2


def _basis(u: np.ndarray, v: np.ndarray, degree: int = POLY_DEGREE) -> np.ndarray:
    u, v = np.clip(u, -1.5, 1.5), np.clip(v, -1.5, 1.5)  # no wild extrapolation outside the lung
    up, vp = [np.ones_like(u), u], [np.ones_like(v), v]
    for _ in range(2, degree + 1):
        up.append(up[-1] * u)
        vp.append(vp[-1] * v)
    return np.stack([up[i] * vp[d - i] for d in range(degree + 1) for i in range(d, -1, -1)], axis=-1)


# --- grids ------------------------------------------------------------------------------------------------
def _block_mean(array: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    pad = [(0, (-n) % b) for n, b in zip(array.shape, block)]
    out = np.pad(array.astype(np.float32, copy=False), pad, mode="edge")
    for axis, b in enumerate(block):
        if b > 1:
            shape = out.shape
            out = out.reshape(*shape[:axis], shape[axis] // b, b, *shape[axis + 1:]).mean(axis + 1, dtype=np.float32)
    return out


@dataclass
class _Grid:
    """The working grid: a block-averaged crop of the CT around the lungs."""

    ct: Volume
    start: np.ndarray  # crop start (k, j, i) on the CT grid
    block: np.ndarray  # (k, j, i) voxels per cell
    hu: np.ndarray
    lungs: np.ndarray

    @property
    def spacing_zyx(self) -> np.ndarray:
        return np.asarray(self.ct.spacing_zyx) * self.block

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(LPS mm of cell (0, 0, 0), (3, 3) LPS step of one cell along k, j, i)."""
        ct = self.ct
        sp = np.asarray(ct.spacing)
        rows = np.stack([ct.direction[:, 2 - a] * sp[2 - a] for a in range(3)])  # LPS step of one voxel per axis
        return np.asarray(ct.origin) + (self.start + (self.block - 1) / 2.0) @ rows, rows * self.block[:, None]

    def points(self, index: np.ndarray) -> np.ndarray:
        """LPS mm (float32) of cell centres given (N, 3) cell indices (k, j, i)."""
        first, step = self.affine()
        index = np.asarray(index, np.float32)
        out = np.empty((len(index), 3), np.float32)
        for c in range(3):
            out[:, c] = first[c] + index[:, 0] * np.float32(step[0, c]) + index[:, 1] * np.float32(step[1, c]) \
                + index[:, 2] * np.float32(step[2, c])
        return out


def _working_grid(ct: Volume, lungs: np.ndarray) -> _Grid:
    box = bounding_box(lungs > 0, margin=2)
    if box is None:
        raise InputError("no lung voxels: lobes need the right and/or left lung")
    block = np.array([max(1, int(round(WORK_MM / s))) for s in ct.spacing_zyx])
    hu = _block_mean(ct.array[box], tuple(block))
    sub = lungs[box]
    coarse = np.zeros(hu.shape, np.uint8)
    for side in labels.LUNG_NAMES:
        coarse[block_majority(sub == side, tuple(block))] = side
    return _Grid(ct, np.array([s.start for s in box]), block, hu, coarse)


# --- prior --------------------------------------------------------------------------------------------------
@dataclass
class _LungFrame:
    """Lung-normalised coordinates of one lung: height h (base 0, apex 1) and depth a (anterior 0, posterior 1)."""

    z0: float
    height: float
    y0: float
    depth: float
    cut: str  # "" or "top", "bottom", "top and bottom"

    def ha(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (points[:, 2] - self.z0) / self.height, (points[:, 1] - self.y0) / self.depth

    def plane(self, c: float, k: float, centre: np.ndarray, lateral: np.ndarray) -> Surface:
        """The plane h = c + k a as a Surface (normal toward the apex)."""
        g = np.array([0.0, -k / self.depth, 1.0 / self.height])
        norm = float(np.linalg.norm(g))
        normal = g / norm
        # A point of the plane near the lung centre: move the centre along the normal onto h - k a = c.
        h, a = self.ha(centre[None])
        origin = centre - normal * float((h[0] - k * a[0] - c) / norm)
        ev = np.cross(normal, lateral)
        ev /= np.linalg.norm(ev)
        eu = np.cross(ev, normal)
        return Surface(origin, normal, eu, ev, (0.5 * self.depth, 0.5 * self.height))


def _lung_frame(points: np.ndarray, cut_top: bool, cut_bottom: bool) -> _LungFrame:
    zlo, zhi = np.percentile(points[:, 2], [0.2, 99.8])
    ylo, yhi = np.percentile(points[:, 1], [0.5, 99.5])
    if cut_top and not cut_bottom:
        zhi = max(zhi, zlo + TYPICAL_LUNG_HEIGHT_MM)
    elif cut_bottom and not cut_top:
        zlo = min(zlo, zhi - TYPICAL_LUNG_HEIGHT_MM)
    cut = " and ".join(w for w, c in (("top", cut_top), ("bottom", cut_bottom)) if c)
    return _LungFrame(float(zlo), float(max(zhi - zlo, 1.0)), float(ylo), float(max(yhi - ylo, 1.0)), cut)


def _prior(points: np.ndarray, side: int, frame: _LungFrame) -> tuple[Surface, Surface | None]:
    """Prior oblique and (right lung) minor fissure planes, calibrated on published lobe volume fractions."""
    h, a = frame.ha(points)
    centre = points.mean(0)
    lateral = np.array([-1.0 if side == labels.RIGHT_LUNG else 1.0, 0.0, 0.0])
    f = PUBLISHED_FRACTIONS
    if side == labels.RIGHT_LUNG:
        lower = f[labels.RLL] / (f[labels.RUL] + f[labels.RML] + f[labels.RLL])
    else:
        lower = f[labels.LLL] / (f[labels.LUL] + f[labels.LLL])
    if frame.cut:
        c = OBLIQUE_POSTERIOR_HEIGHT - OBLIQUE_SLOPE
    else:
        c = float(np.quantile(h - OBLIQUE_SLOPE * a, lower))
    oblique = frame.plane(c, OBLIQUE_SLOPE, centre, lateral)
    if side != labels.RIGHT_LUNG:
        return oblique, None
    return oblique, _minor_prior(points, frame, oblique)


def _minor_prior(points: np.ndarray, frame: _LungFrame, oblique: Surface) -> Surface:
    """The minor fissure's prior: the level above ``oblique`` that leaves the middle lobe its published share of
    the right upper and middle lobes (a fixed level when the lung is cut by the field of view)."""
    f = PUBLISHED_FRACTIONS
    middle = f[labels.RML] / (f[labels.RUL] + f[labels.RML])
    points = points[:: max(1, len(points) // 200_000)]  # a regular subsample gives the same quantile
    h, _ = frame.ha(points)
    upper = oblique.side(points) >= 0
    if frame.cut or upper.sum() < 10:
        c2 = MINOR_HEIGHT
    else:
        c2 = float(np.quantile(h[upper], middle))
    return frame.plane(c2, 0.0, points.mean(0), np.array([-1.0, 0.0, 0.0]))


# --- evidence -----------------------------------------------------------------------------------------------
@dataclass
class _Plates:
    """Plate (fissure-like) voxels of the working grid: cell indices, plate strength and plate normal (LPS)."""

    index: np.ndarray
    strength: np.ndarray
    normal: np.ndarray


def _plates(grid: _Grid, side: int, candidates: np.ndarray) -> _Plates:
    """Hessian plate measure at the candidate cells (bool mask on the working grid) of one lung."""
    idx = np.argwhere(candidates)
    if len(idx) == 0:
        return _Plates(idx, np.zeros(0, np.float32), np.zeros((0, 3)))
    box = bounding_box(candidates, margin=6)
    hu = grid.hu[box]
    offset = np.array([s.start for s in box])
    sp = grid.spacing_zyx
    s_mm = max(SIGMA_MM, 0.6 * float(sp.max()))
    sigma = np.full(3, s_mm) / sp  # isotropic in mm, sampled well on thick slices
    local = tuple((idx - offset).T)
    hess = np.empty((len(idx), 3, 3), np.float32)
    grad = np.empty((len(idx), 3), np.float32)
    for a in range(3):
        order = [0, 0, 0]
        order[a] = 1
        grad[:, a] = ndimage.gaussian_filter(hu, sigma, order=order, truncate=3.0)[local] / sp[a]
        for b in range(a, 3):
            order = [0, 0, 0]
            order[a] += 1
            order[b] += 1
            d = ndimage.gaussian_filter(hu, sigma, order=order, truncate=3.0)[local] / (sp[a] * sp[b])
            hess[:, a, b] = hess[:, b, a] = d
    vals, vecs = np.linalg.eigh(hess)  # ascending: vals[:, 0] is the most negative
    l1 = vals[:, 0]
    other = np.maximum(np.abs(vals[:, 1]), np.abs(vals[:, 2]))
    # A thin plate's response falls as the cube of the scale: normalise so thresholds hold at every scale.
    strength = (-l1 - 1.5 * other) * (s_mm / SIGMA_MM) ** 3
    e1 = vecs[:, :, 0]  # plate normal in (k, j, i) index axes
    g_along = np.abs((grad * e1).sum(1))
    s_eff = float(np.sqrt((sigma * sp) ** 2 @ np.ones(3) / 3.0))
    symmetric = g_along < 0.8 * s_eff * np.maximum(-l1, 1e-6)
    strength = np.where((l1 < 0) & symmetric, strength, 0.0).astype(np.float32)
    keep = strength > PLATE_MIN
    # Index-axis vectors to LPS: the direction maps (i, j, k) to LPS, and cells scale each axis alike.
    normal = e1[keep][:, ::-1] @ grid.ct.direction.T
    return _Plates(idx[keep], strength[keep], normal)


# --- fit --------------------------------------------------------------------------------------------------
def _fit(surface: Surface, points: np.ndarray, normals: np.ndarray, strength: np.ndarray,
         support: np.ndarray, min_cos: float, band: float = BAND_MM, max_degree: int = POLY_DEGREE) -> Surface:
    """Fit the surface's polynomial to plate points near it (IRLS, Tukey biweight, shrinking scale)."""
    cos = np.abs(normals @ surface.normal)
    surface.local = None
    t, u, v = surface.frame(points)
    t = t - surface.height(u, v)  # offsets from the surface as it stands (a prior plane, the vessel valley)
    keep = (cos > min_cos) & (np.abs(t) < band)
    # Faint plates are mostly noise and vessel walls: their weight rises from 0 at PLATE_MIN to 1 at PLATE_REF.
    clear = np.clip((strength[keep] - PLATE_MIN) / (PLATE_REF - PLATE_MIN), 0.0, 1.0) ** 2
    weight = clear * ((cos[keep] - min_cos) / (1 - min_cos)) ** 2
    t, u, v = t[keep], u[keep], v[keep]
    # Weak pseudo-observations of the prior plane over the lung's extent (support points in the plane frame).
    _, su, sv = surface.frame(support)
    basis_data = _basis(u, v)
    basis_prior = _basis(su, sv)
    w_prior = np.full(len(su), max(PRIOR_WEIGHT_MIN, PRIOR_WEIGHT * float(weight.sum())) / max(len(su), 1))
    # Few plates (an incomplete or faint fissure) bend the surface less: offset only, then a tilt, then curves.
    first = float(np.sum(weight))
    degree = 0 if first < EVIDENCE_FOR_DEGREE[0] else 1 if first < EVIDENCE_FOR_DEGREE[1] else max_degree
    n = _n_terms(degree)
    basis_data, basis_prior = basis_data[:, :n], basis_prior[:, :n]
    coef = np.zeros(n)
    coef[0] = _offset_mode(t, weight, band)
    total = 0.0
    for scale in SCALES_MM:
        r = t - basis_data @ coef
        bi = np.clip(1.0 - (r / scale) ** 2, 0.0, None) ** 2
        w = weight * bi
        total = float(w.sum())
        a = basis_data.T @ (basis_data * w[:, None]) + basis_prior.T @ (basis_prior * w_prior[:, None])
        b = basis_data.T @ (w * t)
        a[np.diag_indices_from(a)] += 1e-6
        coef = np.linalg.solve(a, b)
    start = surface.height(u, v)
    surface.coef = surface.coef + np.concatenate([coef, np.zeros(_n_terms(POLY_DEGREE) - n)])
    t = t + start  # offsets from the plane again, for the local field
    surface.evidence = total
    if degree >= 2:  # curves hold where the plates are; beyond, the tangent plane continues
        uq = _weighted_quantiles(u, w, EXTENT_QUANTILES)
        vq = _weighted_quantiles(v, w, EXTENT_QUANTILES)
        surface.extent = (max(uq[0], -1.5), min(uq[1], 1.5), max(vq[0], -1.5), min(vq[1], 1.5))
    if first >= EVIDENCE_FOR_DEGREE[1]:
        surface.local = _fit_local(surface, t, u, v, weight, su, sv)
    return surface


def _fit_local(surface: Surface, t: np.ndarray, u: np.ndarray, v: np.ndarray, weight: np.ndarray,
               su: np.ndarray, sv: np.ndarray) -> _HeightGrid | None:
    """Local bends the cubic cannot follow (a fissure's waves, its turn toward the anterior chest wall): a
    smooth residual height field on a node grid (thin-plate bending penalty, a weak pull toward the polynomial),
    fitted to the plates by iteratively reweighted least squares with Tukey's biweight."""
    from scipy.sparse import identity
    from scipy.sparse.linalg import spsolve

    step = (LOCAL_NODE_MM / surface.scale[0], LOCAL_NODE_MM / surface.scale[1])
    lo = (float(np.clip(su.min(), -1.5, 1.5)), float(np.clip(sv.min(), -1.5, 1.5)))
    hi = (float(np.clip(su.max(), -1.5, 1.5)), float(np.clip(sv.max(), -1.5, 1.5)))
    shape = tuple(max(3, int(np.ceil((h - lw) / s)) + 1) for lw, h, s in zip(lo, hi, step))
    grid = _HeightGrid(np.zeros(shape), lo, step)
    surface.local = None
    base = t - surface.height(u, v)  # the polynomial's residuals (surface.local is not set yet)
    near = np.abs(base) < 1.5 * LOCAL_SCALES_MM[0]
    if weight[near].sum() < EVIDENCE_FOR_DEGREE[1]:
        return None
    base, w0 = base[near], weight[near]
    interp = grid.weights(u[near], v[near])
    covered = np.asarray(interp.sum(0)).ravel() > 0
    per_node = float(w0.sum()) / max(int(covered.sum()), 1)
    regular = per_node * (LOCAL_BEND * grid.bending() + LOCAL_PULL * identity(grid.values.size))
    g = np.zeros(grid.values.size)
    for scale in LOCAL_SCALES_MM:
        r = base - interp @ g
        w = w0 * np.clip(1.0 - (r / scale) ** 2, 0.0, None) ** 2
        a = (interp.T @ interp.multiply(w[:, None])) + regular
        g = spsolve(a.tocsc(), interp.T @ (w * base))
    grid.values = g.reshape(shape)
    return grid


def _weighted_quantiles(x: np.ndarray, w: np.ndarray, q: tuple[float, float]) -> tuple[float, float]:
    order = np.argsort(x)
    cum = np.cumsum(w[order])
    if cum[-1] <= 0:
        return float(x.min()), float(x.max())
    lo, hi = np.searchsorted(cum, [q[0] * cum[-1], q[1] * cum[-1]])
    return float(x[order][min(lo, len(x) - 1)]), float(x[order][min(hi, len(x) - 1)])


def _offset_mode(t: np.ndarray, weight: np.ndarray, band: float) -> float:
    """Where the plates pile up across the band: the mode of their weighted offsets (3 mm kernel), mildly
    held toward the prior (a Gaussian of 25 mm), so the fit starts on the fissure even far from the prior."""
    if weight.sum() < EVIDENCE_FOR_DEGREE[0]:
        return 0.0
    edges = np.arange(-band, band + 1.0, 1.0)
    hist, _ = np.histogram(t, bins=edges, weights=weight)
    density = ndimage.gaussian_filter1d(hist.astype(float), 3.0, mode="constant")
    centres = 0.5 * (edges[1:] + edges[:-1])
    return float(centres[np.argmax(density * np.exp(-0.5 * (centres / 25.0) ** 2))])


# --- main -------------------------------------------------------------------------------------------------
def _cut_ends(ct: Volume, lungs: np.ndarray, side: int) -> tuple[bool, bool]:
    """(cut at the top, cut at the bottom): the lung touches the first/last slice along the body axis."""
    axis, sign = ct.patient_axis("SI")
    mask_first = np.take(lungs, 0, axis=axis) == side
    mask_last = np.take(lungs, lungs.shape[axis] - 1, axis=axis) == side
    first, last = bool(mask_first.any()), bool(mask_last.any())
    return (last, first) if sign > 0 else (first, last)


def builtin_lobes(ct: Volume, lungs: np.ndarray, *, use_image: bool = True) -> np.ndarray:
    """Five lobes (uint8, our convention) for every lung voxel of ``lungs`` (0 / 1 right / 2 left)."""
    lungs = np.asarray(lungs)
    if lungs.shape != ct.shape:
        raise InputError(f"lung map {lungs.shape} must lie on the CT grid {ct.shape}")
    t0 = time.perf_counter()
    if use_image and max(ct.spacing) >= OBLIQUE_MAX_MM:
        log.info("voxels of %.1f mm: fissures are not resolved, lobes from the anatomical prior", max(ct.spacing))
    elif use_image and max(ct.spacing) >= THICK_SLICE_MM:
        log.info("voxels of %.1f mm: the minor fissure is not resolved, its prior follows the fitted oblique fissure",
                 max(ct.spacing))
    grid = _working_grid(ct, lungs)
    out = np.zeros(ct.shape, np.uint8)
    for side in labels.LUNG_NAMES:
        cells = np.argwhere(grid.lungs == side)
        if len(cells) < 50:
            if np.any(lungs == side):
                log.warning("%s lung too small for lobes (%d voxels): all in its lower lobe",
                            labels.LUNG_NAMES[side], int(np.count_nonzero(lungs == side)))
                out[lungs == side] = labels.RLL if side == labels.RIGHT_LUNG else labels.LLL
            continue
        pts = grid.points(cells)
        frame = _lung_frame(pts, *_cut_ends(ct, lungs, side))
        if frame.cut:
            log.warning("%s lung cut by the field of view at the %s: lobes from the anatomical prior with a "
                        "typical lung height", labels.LUNG_NAMES[side], frame.cut)
        oblique, minor = _prior(pts, side, frame)
        if use_image and max(ct.spacing) < OBLIQUE_MAX_MM:
            oblique, minor = _refine(grid, side, pts, frame, oblique, minor,
                                     fit_minor=max(ct.spacing) < THICK_SLICE_MM)
        _label_side(ct, lungs, side, oblique, minor, out, grid)
    log.info("built-in lobes in %.2f s", time.perf_counter() - t0)
    return out


def _refine(grid: _Grid, side: int, pts: np.ndarray, frame: _LungFrame, oblique: Surface,
            minor: Surface | None, fit_minor: bool) -> tuple[Surface, Surface | None]:
    """Place the oblique fissure by the vessel gap and fit it to the plates near it; then the minor fissure above
    the fitted oblique fissure: prior level, vessel gap and, where the slices resolve it, the plates."""
    lung = grid.lungs == side
    dist = distance_to(lung, tuple(grid.spacing_zyx))
    inner = (dist < -PLEURA_MARGIN_MM) & (grid.hu < -500.0)
    box = bounding_box(inner)
    if box is None:
        return oblique, minor
    lo, hi = np.array([b.start for b in box]), np.array([b.stop for b in box])
    near = np.abs(oblique.side_on_box(grid, lo, hi)) < BAND_MM
    if minor is not None and fit_minor:
        near |= np.abs(minor.side_on_box(grid, lo, hi)) < MINOR_BAND_MM
    cand = np.zeros(lung.shape, bool)
    cand[box] = near & inner[box]
    plates = _plates(grid, side, cand)
    ppts = grid.points(plates.index)
    support = pts[:: max(1, len(pts) // 400)]
    vpts, vessel = _small_vessels(grid, lung, dist)
    oblique = _fit_from(oblique, _vessel_valley(oblique, vpts, vessel, BAND_MM),
                        lambda s: _fit(s, ppts, plates.normal, plates.strength, support, min_cos=0.8,
                                                  max_degree=OBLIQUE_DEGREE))
    if minor is not None:
        above = oblique.side(vpts) > VALLEY_MARGIN_MM
        prior = _minor_prior(pts, frame, oblique)
        gap = _vessel_valley(prior, vpts[above], vessel[above], MINOR_BAND_MM)
        above = oblique.side(ppts) > 3.0
        upper = support[oblique.side(support) > 0]
        if fit_minor and len(upper) >= 10:
            minor = _fit_from(prior, gap, lambda s: _fit(s, ppts[above], plates.normal[above], plates.strength[above],
                                                         upper, min_cos=0.85, band=MINOR_BAND_MM,
                                                         max_degree=MINOR_DEGREE))
        else:
            minor = gap
    return oblique, minor


def _fit_from(prior: Surface, gap: Surface, fit) -> Surface:
    """Fit the plates from the prior and from the vessel gap; the start whose fit gathers clearly more plate
    evidence wins, the vessel gap otherwise (it holds where plates are faint or misleading)."""
    if gap is prior:
        return fit(prior)
    from_gap = fit(gap)
    from_prior = fit(Surface(prior.origin, prior.normal, prior.eu, prior.ev, prior.scale, prior.coef.copy()))
    return from_prior if from_prior.evidence > FIT_START_MARGIN * max(from_gap.evidence, EVIDENCE_FOR_DEGREE[0]) \
        else from_gap


def _small_vessels(grid: _Grid, lung: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells of one lung's interior that can show small vessels (LPS mm, float32) and whether each shows one.
    Thin bright tubes count; consolidation and large vessels (bright blobs) and their rims are left out, since
    they hide the small vessels."""
    inner = lung & (dist < -VALLEY_MARGIN_MM)
    bright = inner & (grid.hu > VESSEL_HU)
    radius = max(1, int(round(VALLEY_BLOB_MM / float(grid.spacing_zyx.min()))))
    cross = ndimage.generate_binary_structure(3, 1)  # iterated: a ball of ``radius`` cells, faster
    blobs = ndimage.binary_dilation(ndimage.binary_erosion(bright, cross, iterations=radius), cross, iterations=radius)
    cells = np.argwhere(inner & ~ndimage.binary_dilation(blobs, cross, iterations=radius))
    return grid.points(cells), (bright & ~blobs)[tuple(cells.T)]


def _vessel_valley(surface: Surface, pts: np.ndarray, vessel: np.ndarray, band: float) -> Surface:
    """The fissure where the small vessels leave a gap: no vessel crosses a fissure, so they thin out within a
    few mm on both sides of it, formed or not (the basis of vessel-based lobe segmentation: Kuhnigk J-M et al.,
    Proc SPIE 2005; Lassen B et al., IEEE TMI 2013).  Among offsets and tilts of ``surface`` (within ``band``),
    the one whose thin band holds the fewest small vessels, mildly held to the surface as given."""
    if len(pts) < 1000 or vessel.sum() < 100:
        return surface
    stride = max(1, len(pts) // VALLEY_MAX_CELLS)  # a regular subsample keeps the profiles, at a fraction of the time
    t, u, v = surface.frame(pts[::stride])
    t = t - surface.height(u, v)
    weight = vessel[::stride].astype(np.float64)
    min_cells = VALLEY_MIN_CELLS / stride
    n_bins = int(2 * band)
    centres = np.arange(n_bins) - band + 0.5
    reference = float(weight.mean())
    best = (np.inf, 0.0, 0.0, 0.0)
    for a in VALLEY_TILTS_U:
        for b in VALLEY_TILTS_V:
            index = np.floor(t - a * u - b * v + band).astype(np.int64)
            inside = (index >= 0) & (index < n_bins)
            count = np.bincount(index[inside], minlength=n_bins).astype(float)
            hits = np.bincount(index[inside], weights=weight[inside], minlength=n_bins)
            count = ndimage.uniform_filter1d(count, VALLEY_WIDTH_MM, mode="constant")
            hits = ndimage.uniform_filter1d(hits, VALLEY_WIDTH_MM, mode="constant")
            density = np.where(count * VALLEY_WIDTH_MM >= min_cells, hits / np.maximum(count, 1e-9), np.inf)
            cost = density / reference + VALLEY_HOLD * ((centres / 20.0) ** 2 + (a / 15.0) ** 2 + (b / 25.0) ** 2)
            i = int(np.argmin(cost))
            if cost[i] < best[0]:
                best = (float(cost[i]), float(centres[i]), float(a), float(b))
    if best[0] > VALLEY_MAX_COST:  # no clear gap among the vessels (dense disease, few vessels): no evidence
        return surface
    log.debug("vessel valley: cost %.2f at offset %.1f mm, tilts %.0f / %.0f mm (%d cells, %.3f vessel)", *best,
              len(pts), reference)
    coef = surface.coef.copy()
    coef[:3] += best[1:]
    return Surface(surface.origin, surface.normal, surface.eu, surface.ev, surface.scale, coef)


def _label_side(ct: Volume, lungs: np.ndarray, side: int, oblique: Surface, minor: Surface | None,
                out: np.ndarray, grid: _Grid) -> None:
    """Full-resolution labels of one lung's voxels: the surfaces' signed distances are smooth, so they are
    evaluated at the working grid's cells and linearly interpolated to the voxels."""
    box = bounding_box(lungs == side)
    if box is None:
        return
    lo = np.array([s.start for s in box])
    hi = np.array([s.stop for s in box])
    c_lo = np.maximum((lo - grid.start) // grid.block - 1, 0)
    c_hi = (hi - grid.start + grid.block - 1) // grid.block + 1
    c_hi = np.minimum(c_hi, grid.hu.shape)
    fields = [oblique.side_on_box(grid, c_lo, c_hi)]
    if minor is not None:
        fields.append(minor.side_on_box(grid, c_lo, c_hi))
    # Voxel index -> fractional cell index: cell c covers voxels start + b c .. start + b c + b - 1.
    mask = lungs[box] == side
    idx = np.nonzero(mask)
    coords = [(idx[a] + lo[a] - grid.start[a] - (grid.block[a] - 1) / 2.0) / grid.block[a] - c_lo[a]
              for a in range(3)]
    values = [ndimage.map_coordinates(f, coords, order=1, mode="nearest") for f in fields]
    upper = values[0] >= 0
    if side == labels.RIGHT_LUNG:
        lab = np.full(len(idx[0]), labels.RLL, np.uint8)
        if minor is not None:
            lab[upper] = np.where(values[1][upper] >= 0, labels.RUL, labels.RML)
        else:
            lab[upper] = labels.RUL
    else:
        lab = np.where(upper, labels.LUL, labels.LLL).astype(np.uint8)
    region = out[box]
    region[mask] = lab
