"""The pictures of ``dipfill eval``: per-tile quicklooks and DIP convergence plots (PNG).

Why a module of its own: matplotlib is optional (``pip install dipfill[plots]``). It is
imported here only, inside the functions that draw; :func:`plots_unavailable` tells the
experiment beforehand whether drawing is possible, so without matplotlib ``dipfill eval``
still writes its numbers and says once that the pictures were skipped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.eval.cases import Transplant, composite
from dipfill.stretch import display_stretch, percentile_limits

__all__ = ["PLOTS_EXTRA", "QUICKLOOK_PERCENTILES", "plots_unavailable", "write_quicklook", "write_convergence"]

PLOTS_EXTRA = "plots"  # the pip extra that installs matplotlib
QUICKLOOK_PERCENTILES = (2.0, 98.0)
MAGENTA = (1.0, 0.0, 1.0)
GREY = (0.25, 0.25, 0.25)


def plots_unavailable() -> str | None:
    """``None`` when matplotlib can be imported, else why not (one line, with the fix)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"matplotlib is not installed (pip install dipfill[{PLOTS_EXTRA}])"
    return None


def _rgb_panel(
    values: NDArray, show: NDArray[np.bool_], limits: Sequence[tuple[float, float]], rgb: Sequence[int]
) -> NDArray[np.float64]:
    """``[H, W, 3]`` in [0, 1]: bands ``rgb`` stretched by ``limits``; grey where not ``show``."""
    img = np.moveaxis(display_stretch(np.asarray(values)[list(rgb)], limits), 0, -1).copy()
    img[~show] = GREY
    return img


def _quicklook_panels(
    case: Transplant, truth_valid: NDArray[np.bool_], preds: list[tuple[str, NDArray, dict]], rgb: Sequence[int]
) -> list[tuple[str, NDArray[np.float64]]]:
    """Truth, masked truth and each method's filled tile, all with the truth's one stretch."""
    band = list(rgb)
    limits = percentile_limits(case.truth[band], truth_valid[band], QUICKLOOK_PERCENTILES)
    known = truth_valid[band].all(axis=0)
    hidden = case.hidden[band].any(axis=0)
    panels = [("truth", _rgb_panel(case.truth, known, limits, rgb))]
    masked = _rgb_panel(case.truth, known, limits, rgb)
    masked[hidden] = MAGENTA
    panels.append((f"masked: {hidden.mean():.1%} hidden (magenta)", masked))
    for label, pred, entry in preds:
        full = composite(case, pred)
        img = _rgb_panel(full, known, limits, rgb)
        img[known & ~np.isfinite(full[band]).all(axis=0)] = MAGENTA  # left unfilled
        mr2 = entry.get("mean_r2")
        panels.append((f"{label}\nmean r² {mr2:.3f}" if mr2 is not None and np.isfinite(mr2) else label, img))
    return panels


def write_quicklook(
    path: Path,
    case: Transplant,
    truth_valid: NDArray[np.bool_],
    preds: list[tuple[str, NDArray, dict]],
    *,
    rgb: Sequence[int],
    title: str,
) -> None:
    """Truth | masked | each method, one stretch (2-98 % of the truth's valid pixels) for all."""
    from matplotlib.figure import Figure

    from dipfill.storage import staged

    panels = _quicklook_panels(case, truth_valid, preds, rgb)
    h, w = case.truth.shape[1:]
    px = max(256, h)  # displayed panel size in pixels
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    head, title_px, gap = 46, 30, 6
    fig_w = cols * px + (cols + 1) * gap
    fig_h = head + rows * (px * h / max(h, w) + title_px + gap)
    dpi = 100
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    fig.text(0.5, 1 - 6 / fig_h, title, ha="center", va="top", fontsize=10)
    fig.text(
        0.5, 1 - 24 / fig_h,
        f"RGB = bands {','.join(str(b + 1) for b in rgb)}, one stretch (2-98 % of the truth's valid pixels); "
        "magenta = hidden (masked panel) or left unfilled; grey = no truth (not scored)",
        ha="center", va="top", fontsize=7,
    )
    ph = px * h / max(h, w)
    for i, (label, img) in enumerate(panels):
        r, c = divmod(i, cols)
        left = gap + c * (px + gap)
        top = head + r * (ph + title_px + gap) + title_px
        ax = fig.add_axes((left / fig_w, 1 - (top + ph) / fig_h, px / fig_w, ph / fig_h))
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    with staged(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def _nan_for_none(values: Sequence[Any]) -> NDArray[np.float64]:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def write_convergence(path: Path, entries: dict[str, dict[str, Any]], *, title: str) -> None:
    """Held-out RMSE and true hidden-pixel RMSE against step, one line per dip method.

    ``entries`` are the tile's method entries of the report (``convergence``, ``rmse``,
    ``steps``, ``extra``), keyed by label.
    """
    from matplotlib.figure import Figure

    from dipfill.storage import staged

    fig = Figure(figsize=(11, 4.2), dpi=100)
    ax_h, ax_t = fig.subplots(1, 2)
    any_holdout = False
    for i, (label, e) in enumerate(entries.items()):
        color = f"C{i}"
        curve = e.get("convergence") or []
        steps = [p["step"] for p in curve]
        hold = _nan_for_none([p["holdout_rmse"] for p in curve])
        true = _nan_for_none([p["hidden_rmse"] for p in curve])
        if np.isfinite(hold).any():
            any_holdout = True
            ax_h.plot(steps, hold, color=color, marker=".", label=label)
        if curve:
            ax_t.plot(steps, true, color=color, marker=".", label=label)
        final_step = (e.get("extra") or {}).get("best_step") or e.get("steps")
        final_rmse = np.nanmean(_nan_for_none(e["rmse"]))
        ax_t.plot([final_step], [final_rmse], marker="o", color=color, linestyle="none",
                  label=None if curve else f"{label} (final only)")
    ax_h.set_title("held-out RMSE (engine's held-out observed pixels, normalised units)", fontsize=9)
    ax_t.set_title("true RMSE on the hidden pixels (mean over bands, data units)", fontsize=9)
    if not any_holdout:
        ax_h.text(0.5, 0.5, "no held-out score reported\n(stopping without held-out pixels,\n"
                  "or an engine without monitor support)", ha="center", va="center", transform=ax_h.transAxes,
                  fontsize=9, color="0.4")
    for ax in (ax_h, ax_t):
        ax.set_xlabel("Adam step")
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=8, title="dot = returned result", title_fontsize=8)
    if any_holdout:
        ax_h.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with staged(path) as tmp:
        fig.savefig(tmp, format="png")
