"""Guided DIP (paper 003's MCPN variants and the hybrid) beside classical fills, on CPU.

Data and gaps as scripts/bench_guided.py: the ARG25 Menindee dates (full 2700×1000 rasters
from ../shared/data when present, else the committed crops); January is the truth and
February, 16 days later, the guide; hidden pixels are January's own SLC-off stripes shifted
20 rows onto observed ground (``thin``) and the same dilated by 3 px (``wide``). DIP on
2 cores is ~0.1 s per step at 128², so tiles are the centre 128² of ``--tiles`` of
bench_guided's 256² tiles, and every network runs ``--steps`` (default 300) with the
shipped defaults (output EMA, judged blend with fillnodata on gap-shaped held-out pixels).
Two guides: ``close`` (February as it is) and ``other ground`` (February from another
tile: a guide that misleads), the second only for the guided methods that are candidates
for a default.

Methods: fillnodata; the classical guided engines ``llhm``, ``regression``, ``guided`` (the
judged regression, the shipped guided default); single-image DIP (``dip``, preset
mcpn-core); MCPN ``emergent`` (paper stopping: known-region RMSE), ``direct`` and
``stacked`` (fixed steps), ``input`` (guides concatenated to the network input) and
``residual`` (the hybrid: the input network fits the residual of the local regression on
the guide). Columns: per band r² and mean r² pooled over the tiles' hidden pixels, mean
RMSE and SSIM over bands, the worst tile's mean-r² difference to fillnodata, the blend
weight of the network against fillnodata (DIP rows; for ``guided`` its guide weight), the
held-out RMSE of the network alone vs fillnodata (DIP rows: what the weight was judged on),
steps and wall seconds per tile.

Run: ``.venv/bin/python scripts/bench_mcpn.py [--tiles N] [--steps N] [--crops]``.
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
from dipfill.engines.config import preset  # noqa: E402
from dipfill.engines.mcpn import MCPNConfig, MCPNEngine  # noqa: E402
from dipfill.eval.cases import Transplant, pooled_scores, score_prediction  # noqa: E402
from dipfill.eval.metrics import r2  # noqa: E402

SIZE = 128
GUIDED_ONLY = ("fillnodata", "llhm", "guided", "mcpn input", "mcpn residual")


def build(dates, count: int) -> dict[tuple[str, str], list[tuple[Transplant, np.ndarray, np.ndarray]]]:
    """{(guide, gaps): [(case, guide, guide_observed)]}: ``count`` 128² tiles per gap width."""
    (truth, tvalid), (guide, gvalid) = dates
    stripes = shifted(thin_stripes(tvalid), 20, 0)
    masks = {"thin": stripes, "wide": ndimage.binary_dilation(stripes, iterations=3)}
    picks = tiles(tvalid.shape[1:], tvalid.all(axis=0), gvalid.all(axis=0))
    picks = [picks[i] for i in np.linspace(0, len(picks) - 1, min(count, len(picks))).round().astype(int)]
    picks = [(r + (TILE - SIZE) // 2, c + (TILE - SIZE) // 2) for r, c in dict.fromkeys(picks)]
    out: dict = {}
    for width, mask in masks.items():
        for i, (r, c) in enumerate(picks):
            win = (slice(None), slice(r, r + SIZE), slice(c, c + SIZE))
            hidden = tvalid[win] & mask[None, r : r + SIZE, c : c + SIZE]
            seen = tvalid[win] & ~hidden
            case = Transplant(truth=truth[win], values=np.where(seen, truth[win], 0).astype(np.float32),
                              observed=seen, hidden=hidden)
            ro, co = picks[(i + 1) % len(picks)] if len(picks) > 1 else (r, c)
            other = (slice(None), slice(ro, ro + SIZE), slice(co, co + SIZE))
            if len(picks) == 1:  # one tile: other ground = the tile turned upside down
                og, ov = guide[win][:, ::-1, ::-1].copy(), gvalid[win][:, ::-1, ::-1].copy()
            else:
                og, ov = guide[other], gvalid[other]
            for name, g, gv in (("close", guide[win], gvalid[win]), ("other ground", og, ov)):
                out.setdefault((name, width), []).append((case, np.where(gv, g, 0).astype(np.float32), gv))
    return out


def engines(steps: int) -> dict[str, object]:
    cfg = preset("mcpn-core", steps=steps, strategy="loop")
    return {
        "fillnodata": make_engine("fillnodata"),
        "llhm": make_engine("llhm"),
        "regression": make_engine("regression"),
        "guided": make_engine("guided"),
        "dip (single image)": MCPNEngine(cfg),
        "mcpn emergent (known-rmse)": MCPNEngine(cfg, MCPNConfig.paper("emergent")),
        "mcpn direct": MCPNEngine(cfg, MCPNConfig.paper("direct")),
        "mcpn stacked": MCPNEngine(cfg, MCPNConfig.paper("stacked")),
        "mcpn input": MCPNEngine(cfg, MCPNConfig(variant="input", stopping="fixed")),
        "mcpn residual": MCPNEngine(cfg, MCPNConfig(variant="residual", stopping="fixed")),
    }


def mean_of(values) -> str:
    vals = [v for v in np.ravel(np.asarray(values, dtype=object)) if v is not None]
    return f"{np.mean(np.asarray(vals, dtype=float)):.2f}" if vals else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--crops", action="store_true", help="use the committed crops even when ../shared is present")
    args = parser.parse_args()
    dates, source = load(args.crops)
    cases = build(dates, args.tiles)
    methods = engines(args.steps)
    n = len(cases[("close", "thin")])
    print(f"data: {source}; January truth, February (16 d) guide; {n} tiles of {SIZE}², "
          f"mcpn-core, {args.steps} steps, 2-core CPU\n")
    head = ("| guide | gaps | method | " + " | ".join(f"r² {b}" for b in BANDS) + " | mean r² | RMSE | SSIM "
            "| worst tile Δr² | weight | held-out RMSE net / fillnodata | steps | s/tile |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for (guide_name, width), items in cases.items():
        rows: dict[str, dict] = {}
        for name, engine in methods.items():
            if guide_name != "close" and name not in GUIDED_ONLY:
                continue
            r = rows.setdefault(name, {"preds": [], "ssims": [], "tiles": [], "weights": [], "net": [], "interp": [],
                                       "steps": [], "seconds": []})
            for i, (case, g, gv) in enumerate(items):
                kwargs = {} if name in ("fillnodata", "dip (single image)") else {"guides": g[None],
                                                                                 "guide_observed": gv[None]}
                start = time.perf_counter()
                res = engine.fill(case.values[None], case.observed[None], seeds=[100 + i], **kwargs)
                r["seconds"].append(time.perf_counter() - start)
                pred, extra = res.values[0], res.diagnostics[0].extra
                r["preds"].append(pred)
                r["ssims"].append(score_prediction(case, pred)["ssim"])
                r["tiles"].append(float(np.nanmean(r2(case.truth, pred, case.hidden))))
                r["weights"].append(extra.get("blend_weight", extra.get("guide_weights")))
                r["net"].append(extra.get("holdout_rmse_net"))
                r["interp"].append(extra.get("holdout_rmse_fillnodata"))
                r["steps"].append(res.diagnostics[0].steps)
        base = np.array(rows["fillnodata"]["tiles"])
        for name, r in rows.items():
            s = pooled_scores([c for c, _, _ in items], r["preds"], r["ssims"], data_range=10000.0)
            held = f"{mean_of(r['net'])} / {mean_of(r['interp'])}" if mean_of(r["net"]) != "–" else "–"
            print(f"| {guide_name} | {width} | {name} | " + " | ".join(f"{x:.3f}" for x in s["r2"])
                  + f" | **{np.mean(s['r2']):.3f}** | {np.mean(s['rmse']):.0f} | {np.mean(s['ssim']):.3f}"
                  f" | {float(np.min(np.array(r['tiles']) - base)):+.3f} | {mean_of(r['weights'])} | {held}"
                  f" | {np.mean(r['steps']):.0f} | {np.mean(r['seconds']):.1f} |", flush=True)


if __name__ == "__main__":
    main()
