"""Guided filling on transplanted real SLC-off gaps: fillnodata, llhm, regression, guided.

Data: the two ARG25 Menindee dates (2010-01-16 and 2010-02-01, 16 days apart): the full
2700×1000 rasters from ../shared/data when present, else the committed 512² crops. Both
directions are run (January as truth with February as guide, and the reverse) on 256²
tiles (a grid of non-overlapping tiles where truth and guide are each >= 60 % valid),
scored over all tiles' hidden pixels together (:func:`dipfill.eval.cases.pooled_scores`).

Gap geometry (the guide must observe what it is meant to fill, so the hidden pixels cannot
be the guide date's own gaps):
- ``thin``: the truth date's own SLC-off stripes (gap runs narrower than 15 px; the collar
  and the big blobs removed) shifted down by 20 rows, about half the stripe period, onto
  the truth's observed ground. The truth's own stripes stay gaps too.
- ``wide``: the same mask dilated by 3 px (stripes ~2× as wide, ~6 px observed between).

Guides:
- ``close``: the other date as it is (16 days).
- ``misregistered``: the other date shifted by 10 rows and 20 columns (values and mask).
- ``other ground``: the other date from another tile of the list (the guide of other ground).
- ``changed``: the other date with each band's contrast inverted (2·median − value) in a disc
  covering ~45 % of the tile (a lake that filled or dried between the dates).

Columns: per band r² / RMSE / SSIM over the hidden pixels (pooled over tiles), mean r²,
the worst tile's mean-r² difference to fillnodata, the judged engine's mean blend weight
(over tiles and bands) and wall seconds of the engine calls (summed over tiles). Then each
engine once on a whole raster (its real gaps; no truth), for the wall time.
Run: ``.venv/bin/python scripts/bench_guided.py [--max-tiles N] [--crops]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dipfill.engines.classical import FillnodataEngine  # noqa: E402
from dipfill.engines.guided import LLHMEngine, RegressionEngine  # noqa: E402
from dipfill.engines.guided_judge import GuidedEngine  # noqa: E402
from dipfill.eval.cases import Transplant, pooled_scores, score_prediction  # noqa: E402
from dipfill.eval.metrics import r2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CROPS = REPO / "data" / "arg25_menindee"
FULL = REPO.parent / "shared" / "data" / "landsat7_slcoff" / "arg25_p095r082_menindee_2010"
DATES = ("20100116", "20100201")
BANDS = ("B3", "B4", "B5")
TILE = 256


def load(crops: bool) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    import rasterio

    full = not crops and FULL.exists()
    out = []
    for d in DATES:
        path = FULL / f"LS7_ETM_095_082_{d}_B3B4B5.tif" if full else CROPS / f"LS7_ETM_095_082_{d}_B3B4B5_crop512.tif"
        with rasterio.open(path) as src:
            a = src.read()
            out.append((a.astype(np.float32), a != src.nodata))
    return out, ("full 2700×1000 rasters (../shared)" if full else "committed 512² crops")


def thin_stripes(valid: np.ndarray) -> np.ndarray:
    """The date's SLC-off stripes alone: gap runs narrower than 15 px (no collar, no blobs)."""
    gap = ~valid.all(axis=0)
    wide = ndimage.binary_opening(gap, structure=np.ones((15, 15), bool))
    wide = ndimage.binary_dilation(wide, iterations=2) & gap
    return gap & ~wide


def shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` ([..., H, W]) moved by (dy, dx), zero/False-filled."""
    out = np.zeros_like(a)
    h, w = a.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def tiles(shape: tuple[int, int], *valid: np.ndarray) -> list[tuple[int, int]]:
    """Non-overlapping 256² tiles (last snapped inside) where each ``valid`` [H, W] is >= 60 % true."""
    h, w = shape
    rows = sorted({*range(0, h - TILE + 1, TILE), h - TILE})
    cols = sorted({*range(0, w - TILE + 1, TILE), w - TILE})
    out = []
    for r in rows:
        for c in cols:
            if all(v[r : r + TILE, c : c + TILE].mean() >= 0.6 for v in valid):
                out.append((r, c))
    # drop the snapped tile where it overlaps an earlier one by more than half
    keep: list[tuple[int, int]] = []
    for r, c in out:
        if all(abs(r - r2_) >= TILE // 2 or abs(c - c2) >= TILE // 2 for r2_, c2 in keep):
            keep.append((r, c))
    return keep


def invert_disc(g: np.ndarray, gobs: np.ndarray) -> np.ndarray:
    """Each band's contrast inverted (2·median − value) inside a disc of ~45 % of the tile."""
    h, w = g.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 0.35 * h) ** 2 + (xx - 0.4 * w) ** 2 <= (0.38 * h) ** 2
    out = g.copy()
    for c in range(g.shape[0]):
        med = float(np.median(g[c][gobs[c]]))
        out[c] = np.where(disc & gobs[c], 2 * med - g[c], g[c])
    return out


def build_cases(dates, max_tiles: int):
    """{(case, width): [(Transplant, guide, guide_obs), ...]} over both directions."""
    cases: dict[tuple[str, str], list] = {}
    coverage: dict[str, list[float]] = {}
    for ti, gi in ((0, 1), (1, 0)):
        (truth, tvalid), (guide, gvalid) = dates[ti], dates[gi]
        stripes = shifted(thin_stripes(tvalid), 20, 0)
        masks = {"thin": stripes, "wide": ndimage.binary_dilation(stripes, iterations=3)}
        mis_g, mis_v = shifted(guide, 10, 20), shifted(gvalid, 10, 20)
        picks = tiles(tvalid.shape[1:], tvalid.all(axis=0), gvalid.all(axis=0))
        picks = [picks[i] for i in np.linspace(0, len(picks) - 1, min(max_tiles, len(picks))).round().astype(int)]
        picks = list(dict.fromkeys(picks))
        for width, mask in masks.items():
            for i, (r, c) in enumerate(picks):
                win = (slice(None), slice(r, r + TILE), slice(c, c + TILE))
                hidden = tvalid[win] & mask[None, r : r + TILE, c : c + TILE]
                seen = tvalid[win] & ~hidden
                values = np.where(seen, truth[win], 0).astype(np.float32)
                case = Transplant(truth=truth[win], values=values, observed=seen, hidden=hidden)
                g, gv = guide[win], gvalid[win]
                coverage.setdefault(width, []).append(float((hidden & gv).sum() / max(hidden.sum(), 1)))
                ro, co = picks[(i + len(picks) // 2) % len(picks)] if len(picks) > 1 else (r, c)
                other = (slice(None), slice(ro, ro + TILE), slice(co, co + TILE))
                if len(picks) == 1:  # one tile only: other ground = the tile turned upside down
                    og, ov = g[:, ::-1, ::-1].copy(), gv[:, ::-1, ::-1].copy()
                else:
                    og, ov = guide[other], gvalid[other]
                for name, gg, gov in (
                    ("close", g, gv),
                    ("misregistered", mis_g[win], mis_v[win]),
                    ("other ground", og, ov),
                    ("changed", invert_disc(g, gv), gv),
                ):
                    cases.setdefault((name, width), []).append((case, np.where(gov, gg, 0).astype(np.float32), gov))
    return cases, {k: float(np.mean(v)) for k, v in coverage.items()}


def methods() -> dict[str, object]:
    return {
        "fillnodata": FillnodataEngine(),
        "llhm": LLHMEngine(),
        "regression": RegressionEngine(),
        "guided": GuidedEngine(),
    }


def run_case(items, engines, fill_cache: dict) -> dict[str, dict]:
    results = {}
    for name, engine in engines.items():
        preds, ssims, secs, per_tile, weights = [], [], 0.0, [], []
        for i, (case, g, gobs) in enumerate(items):
            key = (id(case), name)
            if name == "fillnodata" and key in fill_cache:
                pred, sec = fill_cache[key]
            else:
                start = time.perf_counter()
                kwargs = {} if name == "fillnodata" else {"guides": g[None], "guide_observed": gobs[None]}
                res = engine.fill(case.values[None], case.observed[None], seeds=[i], **kwargs)
                pred, sec = res.values[0], time.perf_counter() - start
                weights.extend(np.ravel(res.diagnostics[0].extra.get("guide_weights", [])))
                if name == "fillnodata":
                    fill_cache[key] = (pred, sec)
            secs += sec
            preds.append(pred)
            ssims.append(score_prediction(case, pred)["ssim"])
            per_tile.append(float(np.nanmean(r2(case.truth, pred, case.hidden))))
        scores = pooled_scores([c for c, _, _ in items], preds, ssims, data_range=10000.0)
        results[name] = {**scores, "seconds": secs, "tiles": per_tile,
                         "weight": f"{np.mean(weights):.2f}" if weights else "–"}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-tiles", type=int, default=16, help="tiles per direction (spread over the eligible ones)")
    parser.add_argument("--crops", action="store_true", help="use the committed crops even when ../shared is present")
    args = parser.parse_args()
    dates, source = load(args.crops)
    cases, coverage = build_cases(dates, args.max_tiles)
    engines = methods()
    n_tiles = len(cases[("close", "thin")])
    print(f"data: {source}; {n_tiles} tiles of {TILE}² (both directions); guide observes "
          + ", ".join(f"{v:.0%} of the {k} hidden pixels" for k, v in coverage.items()) + "\n")
    columns = [f"{m} {b}" for m in ("r²", "RMSE", "SSIM") for b in BANDS]
    columns += ["mean r²", "worst tile Δr² vs fillnodata", "guide weight", "s"]
    head = "| case | gaps | method | " + " | ".join(columns) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    fill_cache: dict = {}
    poor = ("misregistered", "other ground", "changed")
    order = [("close", "thin"), ("close", "wide")] + [(n, w) for n in poor for w in ("thin", "wide")]
    for key in order:
        res = run_case(cases[key], engines, fill_cache)
        base = np.array(res["fillnodata"]["tiles"])
        for name, s in res.items():
            worst = float(np.min(np.array(s["tiles"]) - base))
            print(f"| {key[0]} | {key[1]} | {name} | " + " | ".join(f"{x:.3f}" for x in s["r2"]) + " | "
                  + " | ".join(f"{x:.0f}" for x in s["rmse"]) + " | " + " | ".join(f"{x:.3f}" for x in s["ssim"])
                  + f" | **{np.mean(s['r2']):.3f}** | {worst:+.3f} | {s['weight']} | {s['seconds']:.1f} |", flush=True)
    (truth, tvalid), (guide, gvalid) = dates
    print(f"\nWhole {source}, January's own gaps, February as guide, one call per engine:")
    for name in ("fillnodata", "llhm", "regression"):
        kwargs = {} if name == "fillnodata" else {"guides": guide[None], "guide_observed": gvalid[None]}
        start = time.perf_counter()
        res = engines[name].fill(np.where(tvalid, truth, 0)[None], tvalid[None], seeds=[0], **kwargs)
        extra = {k: v for k, v in res.diagnostics[0].extra.items() if k.startswith(("filled", "unfilled"))}
        print(f"- {name}: {time.perf_counter() - start:.1f} s wall, {extra}")


if __name__ == "__main__":
    main()
