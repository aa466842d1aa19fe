"""Voxel grid of a generated CT and rasterisation of anatomy onto it.

The phantom's anatomy lives in a patient frame in millimetres with LPS axes (x toward the patient's
left, y toward posterior, z toward superior); ``lps = anatomy + shift``.  A :class:`SamplingGrid` maps
voxel indices to that frame through any origin, spacing and direction, so every structure is evaluated
at voxel centres whatever the grid's orientation.  Thin tubes (vessels, airways, ribs) are drawn with a
partial-volume occupancy: the tube's cross-section convolved with a Gaussian whose width is the voxel's
extent along the tube's normal (a box of width ``s`` has standard deviation ``s / sqrt(12)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy.special import erf

# Standard deviation of a voxel's box profile, in units of its spacing.
BOX_SIGMA = 1.0 / np.sqrt(12.0)
_BUCKETS = np.array([1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384,
                     512, 640, 768, 1024])
_BATCH_VOXELS = 3_000_000


@dataclass
class SamplingGrid:
    """Voxel grid (numpy order (k, j, i)) placed in the anatomy frame by ``lps = anatomy + shift``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (i, j, k) order, mm
    origin: tuple[float, float, float]  # LPS mm
    direction: np.ndarray  # column n = LPS direction of index axis n
    shift: np.ndarray  # anatomy frame -> LPS translation (mm)

    def __post_init__(self) -> None:
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        self.shift = np.asarray(self.shift, dtype=float).reshape(3)
        # anatomy = base + axis_step[:, n] * index_n  (index order i, j, k)
        self.axis_step = self.direction * np.asarray(self.spacing)[None, :]
        self.base = np.asarray(self.origin) - self.shift
        self.index_from_anatomy = np.linalg.inv(self.axis_step)
        sig = np.asarray(self.spacing) * BOX_SIGMA
        self.sigma_matrix = self.direction @ np.diag(sig**2) @ self.direction.T

    # --- index <-> anatomy -----------------------------------------------------------------
    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices of anatomy-frame points (N, 3)."""
        return (np.asarray(points, float).reshape(-1, 3) - self.base) @ self.index_from_anatomy.T

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Numpy slices (k, j, i) of the voxels whose centres may lie in the anatomy box [lo, hi]."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                            for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        idx = self.to_index(corners)
        start = np.maximum(np.floor(idx.min(0)).astype(int), 0)
        stop = np.minimum(np.ceil(idx.max(0)).astype(int) + 1, np.asarray(self.shape[::-1]))
        if np.any(stop <= start):
            return None
        return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomy coordinates (x, y, z), float32 arrays of the box's shape, of the voxel centres in ``box``."""
        kk = np.arange(box[0].start, box[0].stop, dtype=float)
        jj = np.arange(box[1].start, box[1].stop, dtype=float)
        ii = np.arange(box[2].start, box[2].stop, dtype=float)
        out = []
        for row in range(3):
            a_k = (self.base[row] + self.axis_step[row, 2] * kk).astype(np.float32)
            a_j = (self.axis_step[row, 1] * jj).astype(np.float32)
            a_i = (self.axis_step[row, 0] * ii).astype(np.float32)
            out.append(a_k[:, None, None] + a_j[None, :, None] + a_i[None, None, :])
        return out[0], out[1], out[2]

    def slabs(self, box: tuple[slice, slice, slice], voxels: int = 4_000_000):
        """Split ``box`` into sub-boxes along k of about ``voxels`` voxels each."""
        per_slice = max(1, (box[1].stop - box[1].start) * (box[2].stop - box[2].start))
        step = max(1, voxels // per_slice)
        for k0 in range(box[0].start, box[0].stop, step):
            yield (slice(k0, min(k0 + step, box[0].stop)), box[1], box[2])

    def full_box(self) -> tuple[slice, slice, slice]:
        return (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))

    # --- lattices ------------------------------------------------------------------------------
    def reference(self, box: tuple[slice, slice, slice]) -> sitk.Image:
        """An empty SimpleITK image with the geometry of the sub-box ``box`` (in LPS)."""
        size = [box[2].stop - box[2].start, box[1].stop - box[1].start, box[0].stop - box[0].start]
        start = np.array([box[2].start, box[1].start, box[0].start], float)
        ref = sitk.Image(size, sitk.sitkUInt8)
        ref.SetSpacing(tuple(float(s) for s in self.spacing))
        ref.SetDirection(tuple(self.direction.ravel()))
        ref.SetOrigin(tuple(np.asarray(self.origin) + self.axis_step @ start))
        return ref

    def lattice_image(self, values: np.ndarray, lattice_origin: np.ndarray, step: float) -> sitk.Image:
        """A SimpleITK image of an anatomy-frame lattice (axis-aligned, numpy order (z, y, x))."""
        img = sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float32))
        img.SetSpacing((step, step, step))
        img.SetOrigin(tuple(float(v) for v in np.asarray(lattice_origin) + self.shift))
        return img

    def sample(self, lattice: sitk.Image, box: tuple[slice, slice, slice], default: float) -> np.ndarray:
        """Trilinear interpolation of ``lattice`` at the voxel centres of ``box`` (float32)."""
        out = sitk.Resample(lattice, self.reference(box), sitk.Transform(), sitk.sitkLinear, float(default),
                            sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out)

    def normal_sigma(self, nx: np.ndarray, ny: np.ndarray, nz: np.ndarray) -> np.ndarray:
        """Voxel-box standard deviation (mm) along unit normals given in the anatomy frame."""
        m = self.sigma_matrix
        s2 = (m[0, 0] * nx * nx + m[1, 1] * ny * ny + m[2, 2] * nz * nz
              + 2 * (m[0, 1] * nx * ny + m[0, 2] * nx * nz + m[1, 2] * ny * nz))
        return np.sqrt(np.maximum(s2, 1e-6))


def slab_occupancy(distance: np.ndarray, half_width: np.ndarray | float, sigma: np.ndarray | float) -> np.ndarray:
    """Fraction of a Gaussian-blurred slab of half width ``half_width`` seen at ``distance`` from its centre."""
    k = np.float32(1.0 / np.sqrt(2.0))
    return 0.5 * (erf((half_width - distance) * k / sigma) + erf((half_width + distance) * k / sigma))


def tube_occupancy(grid: SamplingGrid, segments: np.ndarray, out: np.ndarray | None, *,
                   inside: np.ndarray | None = None) -> None:
    """Draw tapered tubes into ``out`` (uint8, grid shape) as partial-volume occupancy 0..255 (max-combined).

    ``segments`` is (N, 8): x0, y0, z0, x1, y1, z1, r0, r1 in the anatomy frame (mm), each a capsule whose
    radius varies linearly along it.  Where ``inside`` (bool, grid shape) is given, it is set True at every
    voxel whose centre lies inside a tube (distance < radius): the exact truth of the tube.
    Segments are batched by box size so that tens of thousands of small segments cost little Python time.
    """
    segs = np.asarray(segments, float).reshape(-1, 8)
    segs = segs[np.maximum(segs[:, 6], segs[:, 7]) > 0]
    if len(segs) == 0:
        return
    nk, nj, ni = grid.shape
    sig_max = float(np.sqrt(np.linalg.eigvalsh(grid.sigma_matrix).max()))
    rmax = np.maximum(segs[:, 6], segs[:, 7])[:, None] + 3.0 * sig_max
    lo = np.minimum(segs[:, 0:3], segs[:, 3:6]) - rmax
    hi = np.maximum(segs[:, 0:3], segs[:, 3:6]) + rmax
    corners = np.stack([np.where(np.array([a, b, c], bool), hi, lo)
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)], axis=1)  # (N, 8, 3)
    idx = (corners - grid.base) @ grid.index_from_anatomy.T  # (N, 8, 3) in (i, j, k)
    start = np.maximum(np.floor(idx.min(1)).astype(np.int64), 0)
    stop = np.minimum(np.ceil(idx.max(1)).astype(np.int64) + 1, np.array([ni, nj, nk]))
    keep = np.all(stop > start, axis=1)
    segs, start, stop = segs[keep], start[keep], stop[keep]
    if len(segs) == 0:
        return
    dims = stop - start
    bucket = _BUCKETS[np.minimum(np.searchsorted(_BUCKETS, dims), len(_BUCKETS) - 1)]
    bucket = np.maximum(bucket, dims)
    keys = bucket[:, 0] * 1_000_000_000 + bucket[:, 1] * 1_000_000 + bucket[:, 2] * 1000
    out_flat = out.reshape(-1) if out is not None else None
    inside_flat = inside.reshape(-1) if inside is not None else None
    for key in np.unique(keys):
        members = np.nonzero(keys == key)[0]
        bi, bj, bk = bucket[members[0]]
        per = max(1, _BATCH_VOXELS // int(bi * bj * bk))
        for b0 in range(0, len(members), per):
            sel = members[b0:b0 + per]
            _draw_batch(grid, segs[sel], start[sel], stop[sel], (bk, bj, bi), out_flat, inside_flat)


def _draw_batch(grid: SamplingGrid, segs: np.ndarray, start: np.ndarray, stop: np.ndarray,
                dims: tuple[int, int, int], out_flat: np.ndarray | None, inside_flat: np.ndarray | None) -> None:
    nk, nj, ni = grid.shape
    bk, bj, bi = (int(d) for d in dims)
    kk = start[:, 2, None] + np.arange(bk)[None, :]
    jj = start[:, 1, None] + np.arange(bj)[None, :]
    ii = start[:, 0, None] + np.arange(bi)[None, :]
    valid = ((kk < stop[:, 2, None])[:, :, None, None] & (jj < stop[:, 1, None])[:, None, :, None]
             & (ii < stop[:, 0, None])[:, None, None, :])
    p0 = segs[:, 0:3]
    v = segs[:, 3:6] - p0
    vv = np.maximum((v * v).sum(1), 1e-12)
    w = []
    for row in range(3):
        a_k = (grid.base[row] - p0[:, row, None] + grid.axis_step[row, 2] * kk).astype(np.float32)
        a_j = (grid.axis_step[row, 1] * jj).astype(np.float32)
        a_i = (grid.axis_step[row, 0] * ii).astype(np.float32)
        w.append(a_k[:, :, None, None] + a_j[:, None, :, None] + a_i[:, None, None, :])
    vb = [v[:, row].astype(np.float32)[:, None, None, None] for row in range(3)]
    t = (w[0] * vb[0] + w[1] * vb[1] + w[2] * vb[2]) / vv.astype(np.float32)[:, None, None, None]
    np.clip(t, 0.0, 1.0, out=t)
    e = [w[row] - t * vb[row] for row in range(3)]
    del w
    sig_max = float(np.sqrt(np.linalg.eigvalsh(grid.sigma_matrix).max()))
    d = np.sqrt(e[0] * e[0] + e[1] * e[1] + e[2] * e[2])
    r0 = segs[:, 6].astype(np.float32)[:, None, None, None]
    r1 = segs[:, 7].astype(np.float32)[:, None, None, None]
    r = r0 + t * (r1 - r0)
    flat = ((kk[:, :, None, None] * nj + jj[:, None, :, None]) * ni + ii[:, None, None, :])
    if inside_flat is not None:
        inside_flat[flat[valid & (d < r)]] = True
    if out_flat is None:
        return
    near = valid & (d < r + np.float32(4.0 * sig_max))
    d, r, flat = d[near], r[near], flat[near]
    inv = 1.0 / np.maximum(d, 1e-4)
    sigma = grid.normal_sigma(e[0][near] * inv, e[1][near] * inv, e[2][near] * inv)
    occ = slab_occupancy(d, r, sigma)
    write = occ > 0.5 / 255
    flat, occ = flat[write], occ[write]
    np.maximum.at(out_flat, flat, np.round(occ * 255).astype(np.uint8))
