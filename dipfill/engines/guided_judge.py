"""``guided``: a guided fill that judges its guide before trusting it.

Issue 11 measured that a guide 16 days away lifts r² well above ``fillnodata`` while one
three months away (season, water extent) made LLHM *worse* than ``fillnodata``. Whether a
guide helps is a property of this guide on this ground, so the engine measures it on each
patch, band and guide instead of assuming it:

1. Hold out observed pixels *shaped like the gaps* (:func:`~dipfill.engines.stopping.
   stripe_holdout`: the gap mask shifted onto observed ground, in 16-px pieces; scattered
   single pixels would flatter interpolation, DESIGN.md).
2. Predict them from the remaining observed pixels twice: with the guided method (local
   regression + interpolated residual by default, or ``llhm``) and with ``fillnodata``.
3. Blend ``w·guided + (1 − w)·spatial``, ``w`` in [0, 1] the least-squares weight on the
   held-out pixels (closed form), lowered by ``weight_z`` standard errors (a jackknife over
   the 16-px pieces: held-out pixels of one piece are not independent evidence). Measured
   on ARG25 (scripts/bench_guided.py, 32 tiles of 256²): with 10 % held out and no
   lowering, a misregistered guide won a weight of ~0.4 on a tile where it then cost
   0.03–0.04 r²; holding out 30 % and lowering by one standard error, the worst such tile
   costs 0.006 and a close guide *gains* (+0.006 r² on wide stripes: a better-measured
   weight; 40 % measured the same). Both predictors lose the same held-out ground, so the
   comparison stays fair though each is a little worse than on the real fill. A guide that
   does not help gets ``w = 0`` and the fill *is* ``fillnodata``; with fewer than ``min_holdout``
   held-out pixels the guide observes there is no evidence and ``w = 0`` too.
4. Several guides: each is judged alone; a gap pixel takes, among the guides that observe
   it with ``w > 0``, the one whose blend had the lowest held-out error relative to
   ``fillnodata`` on the same pixels (evidence re-ranks the given order; ties keep it).
   Where ``fillnodata`` cannot reach (a gap wider than its search distance) a guide with
   ``w > 0`` fills alone: it is the only evidence there.

Weights are per patch and band, not per pixel: a few thousand held-out pixels pin a weight
down, a neighbourhood's few hundred do not (a Gaussian-local weight map measured no better).

The default predictor differs from the plain ``regression`` engine's in one measured way:
all bands of a same-sensor guide predict each target band (``predictors="all"``, a ridge
local multi-linear fit: +0.004–0.005 r² with a close guide, twice the time, and it follows
a local change of sign such as a lake that filled, which a clamped one-band slope cannot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.engines.base import EngineResult, PatchDiagnostics, check_batch
from dipfill.engines.holdout import blend_weight, stripe_holdout
from dipfill.engines.guided import (
    DEFAULT_MIN_COMMON,
    DEFAULT_WINDOWS,
    LLHMEngine,
    RegressionEngine,
    guide_slices,
    llhm_predict,
    regression_predict,
    spatial_fill,
)
from dipfill.errors import InputError

__all__ = ["GuidedEngine", "blend_weight"]

#: side of stripe_holdout's pieces: the jackknife's blocks
_PIECE = 16


@dataclass(frozen=True)
class GuidedEngine:
    """The judged guided hybrid (module docstring): the default guided engine.

    ``method``: the guided predictor (``regression``: local regression + interpolated
    residual; ``llhm``). ``holdout_fraction``: share of each patch's observed pixels held
    out to judge the guides; ``min_holdout``: fewest held-out pixels a guide must observe
    in a band to be judged at all; ``weight_z``: standard errors taken off the blend
    weight. ``windows``, ``min_common``, ``slope_range`` (LLHM's gain range for ``llhm``),
    ``ridge``, ``residual``, ``predictors``: the guided method's options (see
    :class:`~dipfill.engines.guided.RegressionEngine`); ``max_search_distance``: of
    ``fillnodata``. ``seeds`` choose the held-out pieces.
    """

    method: Literal["regression", "llhm"] = "regression"
    holdout_fraction: float = 0.3
    min_holdout: int = 200
    weight_z: float = 1.0
    windows: tuple[int, ...] = DEFAULT_WINDOWS
    min_common: int = DEFAULT_MIN_COMMON
    slope_range: tuple[float, float] = (0.0, 3.0)
    ridge: float = 0.1
    residual: bool = True
    predictors: Literal["band", "all"] = "all"
    max_search_distance: float = 100.0

    name: ClassVar[str] = "guided"

    def __post_init__(self) -> None:
        for f in ("windows", "slope_range"):  # lists from YAML / KEY=VALUE: keep the engine hashable
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if self.method not in ("regression", "llhm"):
            raise InputError(f"method must be 'regression' or 'llhm', got {self.method!r}")
        if not 0 < self.holdout_fraction < 0.5:
            raise InputError(f"holdout_fraction must be in (0, 0.5), got {self.holdout_fraction!r}")
        if self.min_holdout < 1:
            raise InputError(f"min_holdout must be >= 1 pixel, got {self.min_holdout!r}")
        if not self.weight_z >= 0:
            raise InputError(f"weight_z must be >= 0 standard errors, got {self.weight_z!r}")
        self._method_engine()  # validates the guided method's own options

    def _method_engine(self) -> LLHMEngine | RegressionEngine:
        if self.method == "llhm":
            return LLHMEngine(windows=self.windows, min_common=self.min_common, gain_range=self.slope_range,
                              max_search_distance=self.max_search_distance)
        return RegressionEngine(windows=self.windows, min_common=self.min_common, slope_range=self.slope_range,
                                ridge=self.ridge, residual=self.residual, predictors=self.predictors,
                                max_search_distance=self.max_search_distance)

    def _predict(self, values: NDArray, observed: NDArray, guide: NDArray, guide_obs: NDArray) -> NDArray:
        if self.method == "llhm":
            return llhm_predict(values, observed, guide, guide_obs, windows=self.windows,
                                min_common=self.min_common, gain_range=self.slope_range)
        return regression_predict(
            values, observed, guide, guide_obs, windows=self.windows, min_common=self.min_common,
            slope_range=self.slope_range, ridge=self.ridge, residual=self.residual,
            max_search_distance=self.max_search_distance, all_bands=self.predictors == "all",
        )

    def fill(
        self,
        patches: NDArray[np.float32],
        observed: NDArray[np.bool_],
        *,
        seeds: Sequence[int],
        guides: NDArray[np.float32] | None = None,
        guide_observed: NDArray[np.bool_] | None = None,
        guide_bands: Sequence[int] | None = None,
    ) -> EngineResult:
        """Fill each patch with its judged guides blended into ``fillnodata``."""
        check_batch(patches, observed, seeds, guides=guides, guide_observed=guide_observed, guide_bands=guide_bands)
        slices = guide_slices(guides.shape[1], guide_bands) if guides is not None else []
        values = np.asarray(patches, dtype=np.float64)
        usable = np.asarray(observed, dtype=bool) & np.isfinite(values)
        out = np.full(values.shape, np.nan, dtype=np.float32)
        diagnostics = []
        for b in range(values.shape[0]):
            start = time.perf_counter()
            v, obs = np.where(usable[b], values[b], 0.0), usable[b]
            gs = []
            for sl in slices:
                g = np.asarray(guides[b, sl], np.float64)
                gobs = np.asarray(guide_observed[b, sl], bool) & np.isfinite(g)
                gs.append((np.where(gobs, g, 0.0), gobs))
            filled, extra = self._fill_patch(v, obs, gs, int(seeds[b]))
            out[b] = np.where(obs, v, filled)
            extra["unfilled_pixels"] = int(np.isnan(out[b]).sum())
            diagnostics.append(PatchDiagnostics(engine=self.name, seconds=time.perf_counter() - start, extra=extra))
        return EngineResult(values=out, diagnostics=diagnostics)

    def _fill_patch(
        self, v: NDArray, obs: NDArray[np.bool_], gs: list[tuple[NDArray, NDArray]], seed: int
    ) -> tuple[NDArray, dict[str, Any]]:
        """One patch ``[C, H, W]``: judge every guide on held-out pixels, then blend the full fills."""

        gap = ~obs
        spatial = spatial_fill(v, obs, max_search_distance=self.max_search_distance)
        if not gs or not gap.any():
            extra: dict[str, Any] = {"guides": len(gs), "filled_guide": 0,
                                     "filled_fallback": int((gap & np.isfinite(spatial)).sum())}
            if not gs:
                extra["behaved_as"] = "fillnodata (no guide)"
            return spatial, extra
        hold = stripe_holdout(obs.all(axis=0), self.holdout_fraction, np.random.default_rng(seed), piece=_PIECE)
        train = obs & ~hold[None]
        v_train = np.where(train, v, 0.0)
        spatial_cv = spatial_fill(v_train, train, max_search_distance=self.max_search_distance)
        shape = (len(gs), v.shape[0])
        weights, ratio = np.zeros(shape), np.full(shape, np.inf)
        counts, rmse_g, rmse_s = np.zeros(shape, dtype=int), np.full(shape, np.nan), np.full(shape, np.nan)
        fulls: list[NDArray | None] = []
        for k, (g, gobs) in enumerate(gs):
            cv = self._predict(v_train, train, g, gobs)
            for c in range(v.shape[0]):
                sel = obs[c] & hold & np.isfinite(cv[c]) & np.isfinite(spatial_cv[c])
                counts[k, c] = int(sel.sum())
                if counts[k, c] < self.min_holdout:
                    continue  # no evidence: the guide is not used for this band
                t, pg, ps = v[c][sel], cv[c][sel], spatial_cv[c][sel]
                ys, xs = np.nonzero(sel)
                w, se = blend_weight(t, pg, ps, (ys // _PIECE) * (v.shape[2] // _PIECE + 1) + xs // _PIECE)
                weights[k, c] = max(0.0, w - self.weight_z * se)
                mse_s = float(np.mean((t - ps) ** 2))
                mse_b = float(np.mean((t - weights[k, c] * pg - (1 - weights[k, c]) * ps) ** 2))
                ratio[k, c] = mse_b / mse_s if mse_s > 0 else 1.0
                rmse_g[k, c], rmse_s[k, c] = float(np.sqrt(np.mean((t - pg) ** 2))), float(np.sqrt(mse_s))
            fulls.append(self._predict(v, obs, g, gobs) if weights[k].any() else None)
        filled, best = spatial.copy(), np.full(v.shape, np.inf)
        used = np.zeros(v.shape, dtype=bool)
        for k, full in enumerate(fulls):
            if full is None:
                continue
            for c in range(v.shape[0]):
                w = weights[k, c]
                if w <= 0:
                    continue
                blend = np.where(np.isfinite(spatial[c]), w * full[c] + (1 - w) * spatial[c], full[c])
                take = gap[c] & np.isfinite(blend) & (ratio[k, c] < best[c])
                filled[c][take] = blend[take]
                best[c][take] = ratio[k, c]
                used[c] |= take
        extra = {
            "guides": len(gs),
            "filled_guide": int(used.sum()),
            "filled_fallback": int((gap & ~used & np.isfinite(filled)).sum()),
            "guide_weights": np.round(weights, 4).tolist(),  # [guide][band]
            "holdout_pixels": counts.tolist(),
            "holdout_rmse_guided": _listed(rmse_g, 3),
            "holdout_rmse_fillnodata": _listed(rmse_s, 3),
            "holdout_mse_ratio": _listed(ratio, 4),
        }
        return filled, extra


def _listed(a: NDArray, digits: int) -> list[list[float | None]]:
    """A [guide][band] table for JSON: rounded floats, None where not measured."""
    return [[round(float(x), digits) if np.isfinite(x) else None for x in row] for row in a]
