"""Guided super-resolution geometry: how a low-resolution grid sits on a high-resolution one,
the exact linear operators between them, and which low-resolution window a high-resolution
patch owns. Pure numpy (no torch, no rasterio): the pipeline derives the geometry from the
rasters' transforms and hands the operators to the engine as arrays.

Coordinates are continuous high-resolution (HR) pixel units: HR pixel ``j`` covers
``[j, j + 1)``. Low-resolution (LR) pixel ``i`` covers ``[offset + i·scale, offset + (i+1)·scale)``
on each axis, so any (non-integer) factor and any sub-pixel shift between the grids is
exact, not rounded to a whole HR pixel.

Operators are separable ``[n_lr, n_hr]`` matrices per axis (``lr = Ay @ hr @ Ax.T``):

* ``bilinear`` — the antialiased bilinear (triangle) kernel of PIL and
  ``torch.nn.functional.interpolate(..., mode="bilinear", antialias=True)``: for LR pixel
  ``i`` with centre ``c``, HR pixel ``j`` weighs ``max(0, 1 - |j + 0.5 - c| / scale)``,
  normalised over the HR pixels that exist (cut at the grid's edge as torch does). For an
  integer or non-integer factor with aligned grids it equals torch's (tested); paper 003
  §3.2 uses bilinear downsampling.
* ``area`` — the box average of the HR pixels under the LR pixel (fractional at its edges):
  what a sensor integrating over its footprint does, and GDAL's ``average`` resampling.

:func:`upsample_operator` is the other direction, the bicubic baseline: Keys' cubic
convolution (``a = -0.75``, OpenCV's and torch's ``bicubic``) sampled at the HR pixel
centres, edge pixels replicated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
from numpy.typing import NDArray

from dipfill.tiling.grid import PatchWindow

__all__ = ["KERNELS", "SRGeometry", "BandedOperator", "downsample_operator", "upsample_operator", "row_support",
           "lowres_window", "apply_operator", "project_consistent"]

KERNELS = ("bilinear", "area")


@dataclass(frozen=True)
class SRGeometry:
    """The LR grid on the HR grid: per axis (rows, cols) the factor (LR pixel size in HR pixels,
    >= 1) and the offset of the LR grid's origin in HR pixels; both grids' shapes."""

    scale: tuple[float, float]
    offset: tuple[float, float]
    lr_shape: tuple[int, int]
    hr_shape: tuple[int, int]

    def __post_init__(self) -> None:
        if min(self.scale) < 1:
            raise ValueError(f"super-resolution factor must be >= 1 on both axes, got {self.scale}")

    def operators(self, kernel: str = "bilinear") -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The downsampling matrices ``(Ay [h, H], Ax [w, W])`` of this geometry."""
        return tuple(downsample_operator(self.lr_shape[k], self.hr_shape[k], self.scale[k], self.offset[k], kernel)
                     for k in (0, 1))  # type: ignore[return-value]

    def banded_operators(self, kernel: str = "bilinear") -> tuple["BandedOperator", "BandedOperator"]:
        """:meth:`operators` as :class:`BandedOperator` s: blocks on demand, for whole scenes."""
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        return tuple(BandedOperator(partial(_downsample_rows, n_hr=self.hr_shape[k], scale=self.scale[k],
                                            offset=self.offset[k], kernel=kernel),
                                    (self.lr_shape[k], self.hr_shape[k])) for k in (0, 1))  # type: ignore[return-value]

    def banded_upsamplers(self) -> tuple["BandedOperator", "BandedOperator"]:
        """:meth:`upsamplers` as :class:`BandedOperator` s."""
        return tuple(BandedOperator(partial(_upsample_rows, n_lr=self.lr_shape[k], scale=self.scale[k],
                                            offset=self.offset[k]),
                                    (self.hr_shape[k], self.lr_shape[k])) for k in (0, 1))  # type: ignore[return-value]

    def upsamplers(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The bicubic matrices ``(Uy [H, h], Ux [W, w])`` of this geometry."""
        return tuple(upsample_operator(self.lr_shape[k], self.hr_shape[k], self.scale[k], self.offset[k])
                     for k in (0, 1))  # type: ignore[return-value]

    def covered(self) -> PatchWindow:
        """The HR pixels whose centres lie inside the LR grid's extent (and on the HR grid)."""
        spans = []
        for k in (0, 1):
            lo = self.offset[k]
            hi = self.offset[k] + self.lr_shape[k] * self.scale[k]
            first = max(0, math.ceil(lo - 0.5))
            last = min(self.hr_shape[k], math.ceil(hi - 0.5))  # centre j + 0.5 < hi
            spans.append((first, max(first, last)))
        (r0, r1), (c0, c1) = spans
        return PatchWindow(r0, c0, r1 - r0, c1 - c0)


def downsample_operator(n_lr: int, n_hr: int, scale: float, offset: float = 0.0,
                        kernel: str = "bilinear") -> NDArray[np.float64]:
    """``[n_lr, n_hr]`` weights taking an HR axis to the LR axis (see the module doc); every row
    sums to 1. A row whose LR pixel covers no HR pixel at all is zero (the caller's check
    that the HR grid covers the LR footprint should have refused that)."""
    return _downsample_rows(0, n_lr, n_hr, scale, offset, kernel)


def _downsample_rows(i0: int, i1: int, n_hr: int, scale: float, offset: float, kernel: str) -> NDArray[np.float64]:
    """Rows ``i0:i1`` of :func:`downsample_operator` (each row is computed from its own index
    alone: any block of rows equals the same rows of the whole matrix, bit for bit)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    i = np.arange(i0, i1, dtype=np.float64)[:, None]
    j = np.arange(n_hr, dtype=np.float64)[None, :]
    if kernel == "bilinear":
        centre = offset + (i + 0.5) * scale
        w = np.maximum(0.0, 1.0 - np.abs(j + 0.5 - centre) / scale)
    else:
        lo, hi = offset + i * scale, offset + (i + 1) * scale
        w = np.clip(np.minimum(j + 1, hi) - np.maximum(j, lo), 0.0, None)
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def _keys(x: NDArray[np.float64], a: float = -0.75) -> NDArray[np.float64]:
    x = np.abs(x)
    return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


def upsample_operator(n_lr: int, n_hr: int, scale: float, offset: float = 0.0) -> NDArray[np.float64]:
    """``[n_hr, n_lr]`` bicubic interpolation weights: HR pixel ``j``'s centre in LR pixel
    units is ``u = (j + 0.5 - offset) / scale - 0.5``; the four LR pixels around it weigh
    Keys' kernel (a = -0.75), indices clamped to the LR axis (edge replicated)."""
    return _upsample_rows(0, n_hr, n_lr, scale, offset)


def _upsample_rows(j0: int, j1: int, n_lr: int, scale: float, offset: float) -> NDArray[np.float64]:
    """Rows ``j0:j1`` of :func:`upsample_operator` (bit for bit the same rows)."""
    u = (np.arange(j0, j1, dtype=np.float64) + 0.5 - offset) / scale - 0.5
    base = np.floor(u).astype(np.int64)
    out = np.zeros((j1 - j0, n_lr))
    rows = np.arange(j1 - j0)
    for k in range(-1, 3):
        idx = base + k
        np.add.at(out, (rows, np.clip(idx, 0, n_lr - 1)), _keys(u - idx))
    return out


class BandedOperator:
    """An operator of :func:`downsample_operator` or :func:`upsample_operator` whose blocks are
    computed when sliced (``op[r0:r1, c0:c1]``, ``op[r0:r1]``), never held whole: a scene-wide
    operator is ``n_lr × n_hr`` float64 per axis (~0.5 GB for a 10980-pixel axis at factor 2),
    a patch's block a few hundred kB. Blocks equal the dense matrix's, bit for bit.
    :meth:`support` is :func:`row_support` of the whole operator, computed by blocks of rows."""

    def __init__(self, rows: "Callable[[int, int], NDArray[np.float64]]", shape: tuple[int, int]) -> None:
        self._rows, self.shape = rows, shape

    def __getitem__(self, key: "slice | tuple[slice, slice]") -> NDArray[np.float64]:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        r0, r1, step = rows.indices(self.shape[0])
        if step != 1 or not isinstance(cols, slice):
            raise IndexError("a banded operator is sliced by row and column ranges only")
        return self._rows(r0, max(r0, r1))[:, cols]

    def support(self, block: int = 256) -> "Support":
        parts = [row_support(self._rows(r0, min(r0 + block, self.shape[0])))
                 for r0 in range(0, self.shape[0], block)] or [(np.zeros(0, np.int64), np.zeros(0, np.int64))]
        return np.concatenate([f for f, _ in parts]), np.concatenate([last for _, last in parts])


Support = tuple[NDArray[np.int64], NDArray[np.int64]]


def row_support(a: NDArray[np.float64]) -> Support:
    """Per row of an operator, its first and last non-zero column (``n_hr`` and ``-1`` for a
    row without any): what :func:`lowres_window` tests windows against. Computed once per
    operator; a scan of the whole matrix per patch would cost more than the patch."""
    nz = a != 0
    has = nz.any(axis=1)
    first = np.where(has, nz.argmax(axis=1), a.shape[1])
    last = np.where(has, a.shape[1] - 1 - nz[:, ::-1].argmax(axis=1), -1)
    return first, last


def _support_of(a: "NDArray[np.float64] | BandedOperator") -> Support:
    return a.support() if isinstance(a, BandedOperator) else row_support(a)


def lowres_window(ay: "NDArray[np.float64] | BandedOperator", ax: "NDArray[np.float64] | BandedOperator",
                  window: PatchWindow,
                  support: tuple[Support, Support] | None = None
                  ) -> tuple[PatchWindow, NDArray[np.float64], NDArray[np.float64]]:
    """The LR pixels an HR ``window`` owns: those whose every non-zero weight falls inside it,
    so that the window's own pixels reproduce them exactly. Returns the LR window and the
    operators restricted to it (``[h, window.height]``, ``[w, window.width]``); an empty LR
    window (height or width 0) means the window is too small for the factor. ``support``:
    :func:`row_support` of ``ay`` and ``ax``, when the caller asks for many windows."""
    spans, parts = [], []
    support = support or (_support_of(ay), _support_of(ax))
    for a, (first, last), start, size in ((ay, support[0], window.row_off, window.height),
                                          (ax, support[1], window.col_off, window.width)):
        inside = np.flatnonzero((first <= last) & (first >= start) & (last < start + size))
        lo, hi = (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)
        spans.append((lo, hi - lo))
        parts.append(a[lo:hi, start:start + size])
    (r0, h), (c0, w) = spans
    return PatchWindow(r0, c0, h, w), parts[0], parts[1]


def apply_operator(ay: NDArray[np.float64], ax: NDArray[np.float64], image: NDArray) -> NDArray[np.float64]:
    """``ay @ image[c] @ ax.T`` for every band of ``image [C, Y, X]``."""
    return ay @ np.asarray(image, dtype=np.float64) @ ax.T  # two matmuls, not one 4-index einsum


def project_consistent(hr: NDArray, low: NDArray, observed: NDArray[np.bool_], ay: NDArray[np.float64],
                       ax: NDArray[np.float64]) -> NDArray[np.float64]:
    """``hr [C, H, W]`` plus the smallest correction (least norm) that makes its downsample
    ``ay @ hr @ ax.T`` equal ``low [C, h, w]``: the residual ``r`` spread back through the
    operators' pseudo-inverses, ``hr + Py r Pxᵀ`` with ``P = Aᵀ (A Aᵀ)⁻¹`` (``A P = I``).

    Classical back-projection in one exact step: the guide-borne detail of a super-resolved
    image stays, the part of it the low-resolution measurement contradicts goes. An LR pixel
    that is not observed (or a band whose output is NaN) gets no correction."""
    out = np.asarray(hr, dtype=np.float64).copy()
    py = ay.T @ np.linalg.pinv(ay @ ay.T)
    px = ax.T @ np.linalg.pinv(ax @ ax.T)
    for band in range(out.shape[0]):
        if not np.isfinite(out[band]).all():
            continue
        residual = np.where(observed[band], low[band] - ay @ out[band] @ ax.T, 0.0)
        out[band] += py @ residual @ px.T
    return out
