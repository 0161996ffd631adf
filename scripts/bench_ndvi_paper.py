"""Paper 001's protocol on the real MODIS NDVI of ../shared/data: NDVI mode's fills scored on
vegetation only (issue 13, item 1).

Paper 001 (DIP for cloud-gapped MODIS NDVI) reports RMSE 0.018, PSNR 38.56 dB and SSIM 0.959
on one 256² MOD13Q1 patch with real cloud coverage, pixels with NDVI <= 0 excluded from
the loss and the scores. Its truth under the clouds is not stated; here the truth is known
because real cloud masks are *transplanted* onto observed pixels:

* ``6a MYD13A1 256²`` — the 256² window of the MYD13A1 h30v10 tile (500 m) with the least
  ocean, its "good" pixels (pixel reliability 0) as truth;
* ``6c Sinop t`` — a MOD13Q1 composite of Sinop (250 m, the paper's product; 147×255,
  smaller than the paper's patch), its valid pixels (>= -2000 DN) as truth.

Hidden masks, both real: ``s2-clouds`` = the reference cloud + cloud-shadow mask of a real
Sentinel-2 cumulus scene (ukis-csmask, 512², ~24 % in the crops used), laid pixel for pixel
on the patch (cloud shapes from another sensor: the only real reference cloud mask in
../shared/data big enough for the paper's "significant cloud occlusion"); ``modis-fill`` =
the union of the other Sinop dates' own fill masks (MOD13 -3000 = clouds or no retrieval;
~3 %).

Methods: ``fillnodata`` (GDAL), ``dip`` = what ``--product ndvi`` runs: preset ndvi2024
(64 channels, input-noise injection 0.03, held-out early stopping, judged blend with
fillnodata) with the vegetation-only loss (loss_min_value 0), ``--steps`` Adam steps on this
CPU (the paper: GPU, steps not stated); ``guided`` with the previous composite as guide and
``guided t±1`` with both neighbouring composites (the temporal stack; Sinop only).

Scores, vegetation only (truth NDVI > 0), in NDVI units: over the hidden pixels (``gap``),
and over the whole patch (``patch``: observed vegetation pixels count with error 0, which is
how a whole-image score of a reconstruction reads, and probably the paper's). PSNR uses the
truth patch's vegetation NDVI span (max − min) as the peak: the paper's RMSE and PSNR imply
a peak of 0.018·10^(38.56/20) ≈ 1.5, such a span. SSIM is :func:`dipfill.eval.metrics.ssim`
(Gaussian 11×11) with the same data range, averaged over the scored pixels.

    .venv/bin/python scripts/bench_ndvi_paper.py [--steps 150] [--sinop-dates 2] [--no-dip]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dipfill.engines import make_engine  # noqa: E402
from dipfill.eval.metrics import rmse, ssim  # noqa: E402

DATA = Path(os.environ.get("DIPFILL_SHARED_DATA", ROOT.parent / "shared" / "data"))
MYD = DATA / "modis/riotilerpds_MYD13A1_h30v10_2020153_reduced_res/MYD13A1.A2020153.h30v10.006.2020170024036_"
SINOP = DATA / "modis/sits_MOD13Q1_NDVI_sinop"
UKIS = DATA / "sentinel2/ukis-csmask/sentinel2.npz"
PAPER = {"rmse": 0.018, "psnr": 38.56, "ssim": 0.959}


def read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1)


def s2_clouds(shape: tuple[int, int]) -> np.ndarray:
    """The ukis-csmask Sentinel-2 reference mask's cloud (4) and shadow (0) pixels, top-left crop."""
    msk = np.load(UKIS)["msk"][..., 0]
    return ((msk == 4) | (msk == 0))[: shape[0], : shape[1]]


def myd_case() -> tuple[np.ndarray, np.ndarray]:
    """NDVI and truth validity of the 256² window of the MYD13A1 tile with the least ocean."""
    dn, pr = read(Path(f"{MYD}NDVI_B01.TIF")), read(Path(f"{MYD}PR_B12.TIF"))
    best = min(((int((pr[r:r + 256, c:c + 256] == 255).sum()), r, c)
                for r in range(0, dn.shape[0] - 255, 32) for c in range(0, dn.shape[1] - 255, 32)))
    _, r, c = best
    win = (slice(r, r + 256), slice(c, c + 256))
    ok = pr[win] == 0
    return np.where(ok, dn[win] * 1e-4, np.nan).astype(np.float32), ok


def sinop() -> tuple[list[str], np.ndarray, np.ndarray]:
    files = sorted(glob.glob(str(SINOP / "*.tif")))
    dn = np.stack([read(Path(f)) for f in files])
    ok = dn >= -2000  # MOD13 valid range; -3000 (+ JPEG2000 noise) is fill
    return [Path(f).stem[-10:] for f in files], np.where(ok, dn * 1e-4, np.nan).astype(np.float32), ok


def scores(truth: np.ndarray, pred: np.ndarray, hidden: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    veg = valid & (truth > 0)
    peak = float(np.nanmax(truth[veg]) - np.nanmin(truth[veg]))
    out = {}
    for name, sel in (("gap", hidden & veg), ("patch", veg)):
        e = float(rmse(truth[None], pred[None], sel[None])[0])
        t = np.where(valid, truth, np.nan)
        out[f"{name}_rmse"] = e
        out[f"{name}_psnr"] = 20 * np.log10(peak / e) if e > 0 else float("inf")
        out[f"{name}_ssim"] = float(ssim(t[None], pred[None], sel[None], data_range=peak)[0])
    out["veg_hidden"] = int((hidden & veg).sum())
    out["water_hidden"] = int((hidden & valid & (truth <= 0)).sum())
    return out


def fill(engine, truth: np.ndarray, observed: np.ndarray, guides: list[tuple[np.ndarray, np.ndarray]] = (),
         seed: int = 0) -> tuple[np.ndarray, float]:
    """One image through ``engine``; observed pixels are the truth (as the fill pipeline copies them)."""
    values = np.where(observed, truth, 0).astype(np.float32)[None, None]
    kwargs = {}
    if guides:
        kwargs = {"guides": np.stack([np.where(o, g, 0) for g, o in guides])[None].astype(np.float32),
                  "guide_observed": np.stack([o for _, o in guides])[None]}
    t0 = time.perf_counter()
    res = engine.fill(values, observed[None, None], seeds=[seed], **kwargs)
    secs = time.perf_counter() - t0
    pred = np.where(observed, truth, res.values[0, 0])
    return pred, secs


def row(case: str, gaps: str, cover: float, method: str, s: dict[str, float], secs: float) -> None:
    print(f"| {case} | {gaps} ({cover:.0%}) | {method} | {s['veg_hidden']} | {s['gap_rmse']:.4f} | "
          f"{s['gap_psnr']:.2f} | {s['gap_ssim']:.3f} | {s['patch_rmse']:.4f} | {s['patch_psnr']:.2f} | "
          f"{s['patch_ssim']:.3f} | {secs:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="Adam steps of the ndvi2024 DIP fits (CPU)")
    parser.add_argument("--sinop-dates", type=int, default=2, help="Sinop target dates for DIP (spread)")
    parser.add_argument("--no-dip", action="store_true", help="classical and guided methods only")
    args = parser.parse_args()
    if not MYD.parent.exists():
        print("bench_ndvi_paper: ../shared/data/modis not found; nothing to measure")
        return
    fnd, guided = make_engine("fillnodata"), make_engine("guided")
    dip = None if args.no_dip else make_engine("dip", preset="ndvi2024", loss_min_value=0.0, steps=args.steps,
                                                 strategy="loop")
    print(f"load: {os.getloadavg()[0]:.1f} (1-min), {os.cpu_count()} CPUs; dip steps {args.steps}\n")
    head = ("| case | hidden (cover) | method | veg px hidden | gap RMSE | gap PSNR | gap SSIM | patch RMSE "
            "| patch PSNR | patch SSIM | s |")
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    # 6a: one 256² patch, real S2 cloud shapes
    truth, valid = myd_case()
    clouds = s2_clouds(truth.shape)
    observed, hidden = valid & ~clouds, valid & clouds
    for name, eng in (("fillnodata", fnd), ("dip ndvi2024", dip)):
        if eng is not None:
            pred, secs = fill(eng, truth, observed, seed=1)
            row("6a MYD13A1 256²", "s2-clouds", hidden.sum() / valid.sum(), name, scores(truth, pred, hidden, valid),
                secs)
    # 6c: Sinop, every interior date with both masks for the cheap methods, DIP on a few
    dates, ndvi, ok = sinop()
    clouds = s2_clouds(ndvi.shape[1:])
    interior = list(range(1, len(dates) - 1))
    dip_dates = set(np.array(interior)[np.linspace(0, len(interior) - 1, args.sinop_dates).round().astype(int)]) \
        if args.sinop_dates else set()
    pooled: dict[tuple[str, str], list] = {}
    for t in interior:
        fills = {"s2-clouds": ok[t] & ~clouds,
                 "modis-fill": ok[t] & ~(~ok[[j for j in range(len(dates)) if j != t]]).any(axis=0)}
        for gaps, observed in fills.items():
            hidden = ok[t] & ~observed
            methods = [("fillnodata", fnd, []), ("guided t-1", guided, [(ndvi[t - 1], ok[t - 1])]),
                       ("guided t±1", guided, [(ndvi[t - 1], ok[t - 1]), (ndvi[t + 1], ok[t + 1])])]
            if dip is not None and t in dip_dates:
                methods.append(("dip ndvi2024", dip, []))
            for name, eng, guides in methods:
                pred, secs = fill(eng, ndvi[t], observed, guides, seed=t)
                s = scores(ndvi[t], pred, hidden, ok[t])
                pooled.setdefault((gaps, name), []).append((s, secs, hidden.sum() / ok[t].sum()))
                if t in dip_dates:
                    row(f"6c Sinop {dates[t]}", gaps, hidden.sum() / ok[t].sum(), name, s, secs)
    print("\nSinop, every interior date (mean over dates):\n")
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    for (gaps, name), runs in pooled.items():
        mean = {k: float(np.mean([s[k] for s, _, _ in runs])) for k in runs[0][0]}
        row(f"6c Sinop, {len(runs)} dates", gaps, float(np.mean([c for _, _, c in runs])), name, mean,
            float(np.mean([x for _, x, _ in runs])))
    print(f"\npaper 001 (one 256² MOD13Q1 patch, real clouds, GPU): RMSE {PAPER['rmse']}, PSNR {PAPER['psnr']} dB, "
          f"SSIM {PAPER['ssim']}")


if __name__ == "__main__":
    main()
