"""Single-image DIP defaults against GDAL's fillnodata on transplanted real SLC-off stripes.

Issue 11 item 5: the shipped single-image DIP (mcpn-core, fixed 1500 steps, last output)
scored r² 0.468 against fillnodata's 0.577 on an unseen 6-band TM case. This measures, on
the ARG25 Menindee dates (full rasters from ../shared when present, else the committed
crops), the pieces that were changed:

- ``paper``: fixed steps, the last output (``exp_weight=0``), nothing judged — as shipped before;
- ``+ema``: the same fit with the output EMA (``exp_weight=0.99``), the network alone;
- ``+ema+blend``: the same, then judged-blended with fillnodata (``blend=fillnodata``): the
  shipped default (it measured best here);
- ``holdout+ema``: gap-shaped early stopping (``stopping=holdout``), the network alone;
- ``holdout+ema+blend``: early stopping, EMA, judged blend (the cheaper alternative).

The network alone is read through the engine's monitor (the kept iterate, before the
blend), so the ``+ema`` and ``+ema+blend`` rows come from one fit, as do the two holdout
rows. Gaps: a date's own stripes shifted 20 rows onto observed ground (``thin``), and the
same dilated by 3 px (``wide``), as scripts/bench_guided.py. Scores pooled over the tiles'
hidden pixels; wall seconds per tile. CPU figures; the network is mcpn-core (paper 003's
light core, ~0.1 s per step at 128² on 2 cores) because landsat2020's 128-channel net is
~10× slower; tiles are the centre 128² of bench_guided's 256² tiles by default (``--size``).
Run: ``.venv/bin/python scripts/bench_dip_defaults.py [--tiles N] [--skip-tiles K] [--size PX] [--steps N]
[--crops]``.

``--grid`` (issue 11 item 5, normalisation headroom and input noise) measures instead the
default fit (fixed steps, EMA, judged blend) under each ``target_range`` × ``reg_noise_std``
of :data:`GRID`, the network alone and blended from one fit each, beside fillnodata.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_guided import BANDS, TILE, load, shifted, thin_stripes, tiles  # noqa: E402

from dipfill.engines import make_engine  # noqa: E402
from dipfill.eval.cases import Transplant, pooled_scores, score_prediction  # noqa: E402


#: --grid: (target_range, reg_noise_std) pairs; the first is the shipped default.
GRID = [((0.1, 0.9), 0.1), ((0.1, 0.9), 0.03), ((0.1, 0.9), 0.0),
        ((0.05, 0.95), 0.1), ((0.05, 0.95), 0.03), ((0.0, 1.0), 0.1), ((0.0, 1.0), 0.03)]


def build(dates, count: int, size: int = TILE) -> dict[str, list[Transplant]]:
    """``count`` tiles of the January date per width, its own stripes shifted as the hidden
    pixels; ``size`` < 256 takes the centre ``size``² of each of bench_guided's tiles."""
    (truth, tvalid), _ = dates
    stripes = shifted(thin_stripes(tvalid), 20, 0)
    masks = {"thin": stripes, "wide": ndimage.binary_dilation(stripes, iterations=3)}
    picks = tiles(tvalid.shape[1:], tvalid.all(axis=0))
    picks = [picks[i] for i in np.linspace(0, len(picks) - 1, min(count, len(picks))).round().astype(int)]
    picks = [(r + (TILE - size) // 2, c + (TILE - size) // 2) for r, c in dict.fromkeys(picks)]
    out: dict[str, list[Transplant]] = {}
    for width, mask in masks.items():
        for r, c in picks:
            win = (slice(None), slice(r, r + size), slice(c, c + size))
            hidden = tvalid[win] & mask[None, r : r + size, c : c + size]
            seen = tvalid[win] & ~hidden
            values = np.where(seen, truth[win], 0).astype(np.float32)
            out.setdefault(width, []).append(Transplant(truth=truth[win], values=values, observed=seen, hidden=hidden))
    return out


def fit(case: Transplant, seed: int, **options) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """One DIP fit: (blended or final output, the network's kept iterate alone, seconds, extra)."""
    engine = make_engine("dip", preset="mcpn-core", strategy="loop", **options)
    snapshots: dict[int, np.ndarray] = {}

    def monitor(step: int, values: np.ndarray, rmse: np.ndarray) -> None:
        snapshots[step] = values[0].copy()

    start = time.perf_counter()
    res = engine.fill(case.values[None], case.observed[None], seeds=[seed], monitor=monitor)
    seconds = time.perf_counter() - start
    extra = res.diagnostics[0].extra
    alone = snapshots[extra["best_step"]]
    return res.values[0], alone, seconds, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--size", type=int, default=128, help="tile side (px, <= 256): 256² costs ~4× per step")
    parser.add_argument("--crops", action="store_true", help="use the committed crops even when ../shared is present")
    parser.add_argument("--gaps", choices=("thin", "wide", "both"), default="both",
                        help="which stripe widths to run (each is ~10 min per tile on 2 idle cores)")
    parser.add_argument("--skip-tiles", type=int, default=0,
                        help="leave out the first N of the --tiles tiles (to add a tile to an earlier run)")
    parser.add_argument("--pick", default="", help="--grid: only these GRID entries (comma-separated indices)")
    parser.add_argument("--grid", action="store_true",
                        help="the default fit under each target_range x reg_noise_std of GRID instead")
    args = parser.parse_args()
    dates, source = load(args.crops)
    cases = build(dates, args.tiles, args.size)
    fill = make_engine("fillnodata")
    print(f"data: {source}; {len(cases['thin'])} tiles of {args.size}², mcpn-core, {args.steps} steps max\n")
    head = ("| gaps | method | " + " | ".join(f"r² {b}" for b in BANDS) + " | mean r² | RMSE | SSIM "
            "| worst tile Δr² vs fillnodata | blend weight | steps | s/tile |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for width, items in cases.items():
        if args.gaps not in ("both", width):
            continue
        rows: dict[str, dict] = {}
        for i, case in enumerate(items):
            if i < args.skip_tiles:
                continue
            seed = 100 + i
            start = time.perf_counter()
            base = fill.fill(case.values[None], case.observed[None], seeds=[seed]).values[0]
            add(rows, "fillnodata", case, base, time.perf_counter() - start, None, 0)
            if args.grid:
                picked = [GRID[int(k)] for k in args.pick.split(",")] if args.pick else GRID
                for target, noise in picked:
                    name = f"range {target[0]:g}-{target[1]:g}, noise {noise:g}"
                    blended, alone, sec, ex = fit(case, seed, steps=args.steps, check_every=args.steps,
                                                  target_range=target, reg_noise_std=noise)
                    add(rows, name + ": network alone (+ema)", case, alone, sec, None, ex["best_step"])
                    add(rows, name + ": +blend", case, blended, sec, ex.get("blend_weight"), ex["best_step"])
                    print(f"  {width} tile {i} {name}: {rows[name + ': +blend']['tiles'][-1]:.3f} blended, "
                          f"{rows[name + ': network alone (+ema)']['tiles'][-1]:.3f} alone, {sec:.0f} s",
                          file=sys.stderr, flush=True)
                continue
            plain, _, sec, ex = fit(case, seed, steps=args.steps, exp_weight=0.0, blend="none",
                                    check_every=args.steps)
            add(rows, "paper (fixed, last output)", case, plain, sec, None, ex["best_step"])
            blended, alone, sec, ex = fit(case, seed, steps=args.steps, check_every=args.steps)
            add(rows, "fixed +ema", case, alone, sec, None, ex["best_step"])
            add(rows, "fixed +ema +blend (default)", case, blended, sec, ex.get("blend_weight"), ex["best_step"])
            blended, alone, sec, ex = fit(case, seed, steps=args.steps, stopping="holdout")
            add(rows, "holdout +ema", case, alone, sec, None, ex["best_step"])
            add(rows, "holdout +ema +blend", case, blended, sec, ex.get("blend_weight"), ex["best_step"])
        base_tiles = np.array(rows["fillnodata"]["tiles"])
        items = items[args.skip_tiles:]
        for name, r in rows.items():
            scores = pooled_scores(items, r["preds"], r["ssims"], data_range=10000.0)
            worst = float(np.min(np.array(r["tiles"]) - base_tiles))
            weight = f"{np.mean(r['weights']):.2f}" if r["weights"] else "–"
            print(f"| {width} | {name} | " + " | ".join(f"{x:.3f}" for x in scores["r2"])
                  + f" | **{np.mean(scores['r2']):.3f}** | {np.mean(scores['rmse']):.0f} | {np.mean(scores['ssim']):.3f}"
                  f" | {worst:+.3f} | {weight} | {np.mean(r['steps']):.0f} | {np.mean(r['seconds']):.1f} |", flush=True)


def add(rows: dict, name: str, case: Transplant, pred: np.ndarray, seconds: float, weights, steps: int) -> None:
    """Collect one tile's prediction and figures under ``name``."""
    from dipfill.eval.metrics import r2

    r = rows.setdefault(name, {"preds": [], "ssims": [], "tiles": [], "weights": [], "steps": [], "seconds": []})
    r["preds"].append(pred)
    r["ssims"].append(score_prediction(case, pred)["ssim"])
    r["tiles"].append(float(np.nanmean(r2(case.truth, pred, case.hidden))))
    r["weights"].extend(w for w in (weights or []) if w is not None)
    r["steps"].append(steps)
    r["seconds"].append(seconds)


if __name__ == "__main__":
    main()
