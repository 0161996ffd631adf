"""MODIS NDVI with an earlier composite as guide: is the guide worth its weight? (issue 11, 6c)

Measures, on the two MODIS NDVI time series of ../shared/data (MANIFEST section 6), how
well each engine reconstructs hidden NDVI pixels of a composite when the guide is an
earlier composite of the same ground: the previous one (6b MOD13A1 Lombardy, 65×122 px at
463 m, 23 composites of 2016: 16 days; 6c MOD13Q1 Sinop, 147×255 px at 232 m, 12
composites 2013-09..2014-08 about a month apart: ~32 days), three composites back (48 and
~96 days) and, for 6b, eleven back (176 days, across the season). Why: the guided engines
were judged on Landsat pairs (scripts/bench_guided.py); NDVI composites are what paper 001
fills, and a time series gives close and far guides of the same ground, so it tests the
judged ``guided`` engine's claim of never being much worse than ``fillnodata`` (≤ 0.01 r²)
with real poor guides instead of made-up ones.

Reading: 6b nodata is 32767; its last two files (DOY 337, 353) hold float NDVI (not ×10000)
and are rescaled. 6c has no nodata tag; values below -2000 (the fill -3000 plus JPEG2000
noise) are nodata. Hidden pixels, per target date and the same for every guide:
- ``real``: the nodata mask of another date (the one hiding most of the target's valid
  pixels, never the target or one of its guides), used when it hides >= 1 % of them.
  6b's nodata is the winter surface and shores of Lake Como; 6c's is small cloud specks.
- ``blobs``: cloud-like blobs, a Gaussian-smoothed (σ ≈ 2 km) white-noise field above its
  80th percentile (~20 % of the image), seeded by the series and the target index.
A pixel that is nodata in the target is never hidden or scored (no truth); a guide pixel
that is nodata is passed as unobserved (``guide_observed``), so it is no evidence.

Scores over the hidden pixels only, pooled over the cases of a row
(:func:`dipfill.eval.cases.pooled_scores`: r² about each case's own hidden mean; RMSE in
NDVI units; SSIM of the composite, stretched as ``dipfill eval`` does), RMSE over the
vegetation pixels only (truth NDVI > 0, paper 001's convention), the worst case's r²
difference to ``fillnodata``, the judged engine's mean guide weight and wall seconds per
case. Single-image DIP (mcpn-core, fixed steps) and guided DIP (``mcpn``, guide as input)
cost 0.06–0.4 s per step on this shared 2-core CPU even at 65×122 (padded to 128²), and
more than 1 s at 147×255, so they run on a subset (``--dip-targets`` dates of 6b, blobs,
guides t−1 and t−11), in a second table with every other method on the same cases.

    .venv/bin/python scripts/bench_modis_ndvi.py [--quick] [--dip-targets N] [--steps S]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dipfill.engines import make_engine, set_threads  # noqa: E402
from dipfill.eval.cases import Transplant, pooled_scores, score_prediction, transplant_gaps  # noqa: E402
from dipfill.eval.metrics import r2, rmse  # noqa: E402

MODIS = ROOT.parent / "shared" / "data" / "modis"
# name: (folder, days between consecutive files, blob sigma in px (~2 km), guide lags)
SERIES = {
    "6b MOD13A1 Lombardy": ("modistsp_MOD13A1_NDVI_2016", 16, 4.0, (1, 3, 11)),
    "6c MOD13Q1 Sinop": ("sits_MOD13Q1_NDVI_sinop", 32, 8.0, (1, 3)),
}
SCALE = 10000.0
BLOB_COVER = 0.20
MIN_REAL = 0.01
SEED = 2016
GUIDED = ("llhm", "regression", "guided", "mcpn")


@dataclass
class Series:
    name: str
    ndvi: np.ndarray  # [T, H, W] float32, NDVI ×10000
    valid: np.ndarray  # [T, H, W] bool
    days: int
    sigma: float
    lags: tuple[int, ...]


def load(name: str) -> Series:
    import rasterio

    folder, days, sigma, lags = SERIES[name]
    stack, valid = [], []
    for path in sorted((MODIS / folder).glob("*.tif")):
        with rasterio.open(path) as src:
            a = src.read(1).astype(np.float32)
            ok = a != src.nodata if src.nodata is not None else np.ones(a.shape, bool)
            if src.dtypes[0].startswith("float"):  # MODIStsp wrote DOY 337/353 as unscaled NDVI
                a = np.where(ok, a * SCALE, a)
            ok &= a >= -2000  # MODIS valid range starts at -2000; -3000 (± JP2 noise) is fill
        stack.append(a)
        valid.append(ok)
    return Series(name, np.stack(stack), np.stack(valid), days, sigma, lags)


def hidden_masks(s: Series, t: int) -> dict[str, np.ndarray]:
    """{gap kind: [H, W] pixels to hide} for target date ``t`` (only target-valid pixels)."""
    masks = {}
    banned = {t, *(t - lag for lag in s.lags)}
    counts = [(int((s.valid[t] & ~s.valid[j]).sum()), j) for j in range(len(s.ndvi)) if j not in banned]
    count, donor = max(counts)
    if count >= MIN_REAL * s.valid[t].sum():
        masks["real"] = s.valid[t] & ~s.valid[donor]
    rng = np.random.default_rng([SEED, list(SERIES).index(s.name), t])
    field = ndimage.gaussian_filter(rng.standard_normal(s.ndvi.shape[1:]), s.sigma)
    masks["blobs"] = s.valid[t] & (field > np.quantile(field, 1 - BLOB_COVER))
    return masks


def make_case(s: Series, t: int, hidden: np.ndarray) -> Transplant:
    return transplant_gaps(s.ndvi[t][None], s.valid[t][None], ~hidden[None])


def engines(steps: int, with_dip: bool) -> dict[str, object]:
    out = {"fillnodata": make_engine("fillnodata"), "llhm": make_engine("llhm"),
           "regression": make_engine("regression"), "guided": make_engine("guided")}
    if with_dip:
        out["dip"] = make_engine("dip", preset="mcpn-core", steps=steps, strategy="loop")
        out["mcpn"] = make_engine("mcpn", preset="mcpn-core", steps=steps, strategy="loop", variant="input")
    return out


def run(engine, name: str, cases: list[Transplant], guides: list[tuple[np.ndarray, np.ndarray]],
        seeds: list[int]) -> tuple[list[np.ndarray], float, list[float]]:
    """One engine call over all cases (a batch); predictions, seconds, guide weights."""
    kwargs = {}
    if name in GUIDED:
        kwargs = {"guides": np.stack([g for g, _ in guides])[:, None].astype(np.float32),
                  "guide_observed": np.stack([o for _, o in guides])[:, None]}
    start = time.perf_counter()
    res = engine.fill(np.stack([c.values for c in cases]), np.stack([c.observed for c in cases]),
                      seeds=seeds, **kwargs)
    seconds = time.perf_counter() - start
    weights = [float(w) for d in res.diagnostics for w in np.ravel(d.extra.get("guide_weights", []))]
    return list(res.values), seconds, weights


def score(cases: list[Transplant], preds: list[np.ndarray]) -> dict[str, float | list[float]]:
    ssims = [score_prediction(c, p, data_range=SCALE)["ssim"] for c, p in zip(cases, preds)]
    pooled = pooled_scores(cases, preds, ssims, data_range=SCALE)
    truth = np.stack([c.truth for c in cases]).astype(np.float64)
    veg = np.stack([c.hidden for c in cases]) & (truth > 0)
    return {"r2": float(pooled["r2"][0]), "rmse": float(pooled["rmse"][0]) / SCALE,
            "ssim": float(pooled["ssim"][0]), "veg": float(rmse(truth, np.stack(preds), veg)[0]) / SCALE,
            "per_case": [float(r2(c.truth, p, c.hidden)[0]) for c, p in zip(cases, preds)]}


HEAD = ("| series | guide | gaps | cases | hidden px | guide sees | method | r² | RMSE | RMSE veg | SSIM "
        "| worst case Δr² | weight | s/case |")


def block(s: Series, lag: int, kind: str, targets: list[int], methods: dict[str, object],
          cache: dict) -> None:
    """Every method on the cases (target t, guide t − lag, gaps ``kind``); prints rows.
    Methods without a guide are run once per (series, gaps, target) and reused (``cache``)."""
    cases, guides, ts = [], [], []
    for t in targets:
        mask = hidden_masks(s, t).get(kind)
        if mask is not None and t - lag >= 0:
            cases.append(make_case(s, t, mask))
            guides.append((np.where(s.valid[t - lag], s.ndvi[t - lag], 0), s.valid[t - lag]))
            ts.append(t)
    if not cases:
        return
    hidden = sum(int(c.hidden.sum()) for c in cases)
    seen = sum(int((c.hidden[0] & o).sum()) for c, (_, o) in zip(cases, guides)) / hidden
    results = {}
    for name, engine in methods.items():
        if name in GUIDED:
            preds, secs, weights = run(engine, name, cases, guides, ts)
        else:
            todo = [(c, t) for c, t in zip(cases, ts) if (s.name, kind, t, name) not in cache]
            if todo:
                p, secs, _ = run(engine, name, [c for c, _ in todo], [], [t for _, t in todo])
                for (_, t), v in zip(todo, p):
                    cache[(s.name, kind, t, name)] = (v, secs / len(todo))
            preds = [cache[(s.name, kind, t, name)][0] for t in ts]
            secs, weights = sum(cache[(s.name, kind, t, name)][1] for t in ts), []
        results[name] = (score(cases, preds), secs / len(cases), weights)
    base = np.array(results["fillnodata"][0]["per_case"])
    for name, (sc, secs, weights) in results.items():
        worst = np.nanmin(np.array(sc["per_case"]) - base)
        print(f"| {s.name[:2]} | t−{lag} ({lag * s.days} d) | {kind} | {len(cases)} | {hidden} | {seen:.0%} | {name} "
              f"| **{sc['r2']:.3f}** | {sc['rmse']:.4f} | {sc['veg']:.4f} | {sc['ssim']:.3f} | {worst:+.3f} "
              f"| {f'{np.mean(weights):.2f}' if weights else '–'} | {secs:.2f} |", flush=True)


def spread(candidates: list[int], n: int) -> list[int]:
    """``n`` of ``candidates`` evenly spaced, first and last included."""
    if n >= len(candidates):
        return candidates
    return [candidates[i] for i in np.linspace(0, len(candidates) - 1, n).round().astype(int)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="every other target date, guides t−1 and t−3 only, DIP on 2 dates at 150 steps")
    parser.add_argument("--dip-targets", type=int, default=4,
                        help="6b target dates (>= t11, spread) for the DIP table; 0 skips it")
    parser.add_argument("--steps", type=int, default=300, help="fixed Adam steps of dip and mcpn")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if not MODIS.exists():
        print("bench_modis_ndvi: ../shared/data/modis not found; nothing to measure")
        return
    if args.threads:
        set_threads(args.threads)
    if args.quick:
        args.dip_targets, args.steps = min(args.dip_targets, 2), min(args.steps, 150)
    series = {name: load(name) for name in SERIES}
    for s in series.values():
        nodata = 1 - s.valid.mean(axis=(1, 2))
        print(f"{s.name}: {s.ndvi.shape[0]} composites of {s.ndvi.shape[2]}×{s.ndvi.shape[1]} px, "
              f"nodata {nodata.min():.1%}–{nodata.max():.1%} per date")
    print(f"\nAll cases, classical and guided engines (blobs: {BLOB_COVER:.0%} cover, seed {SEED}):\n")
    print(HEAD + "\n|" + "---|" * (HEAD.count("|") - 1))
    cache: dict = {}
    methods = engines(args.steps, with_dip=False)
    for s in series.values():
        lags = s.lags[:2] if args.quick else s.lags
        targets = list(range(1, len(s.ndvi)))[:: 2 if args.quick else 1]
        for kind in ("real", "blobs"):
            for lag in lags:
                block(s, lag, kind, targets, methods, cache)
    if args.dip_targets <= 0:
        return
    s = next(iter(series.values()))
    lags = (1, 3) if args.quick else (1, s.lags[-1])
    targets = spread(list(range(max(lags), len(s.ndvi))), args.dip_targets)
    print(f"\nDIP subset: {s.name}, targets {targets}, blobs, dip = mcpn-core and mcpn = guide as input, "
          f"{args.steps} fixed steps, CPU:\n")
    print(HEAD + "\n|" + "---|" * (HEAD.count("|") - 1))
    methods = engines(args.steps, with_dip=True)
    for lag in lags:
        block(s, lag, "blobs", targets, methods, cache)


if __name__ == "__main__":
    main()
