"""ConvNP (paper 002, amortised) beside DIP, LLHM and fillnodata on real transplanted gaps, on CPU.

Training (``--train-steps``, default 600; the shipped ConvNP config, ~390 k parameters): the
ARG25 Menindee 2010-01-16 and 2010-02-01 scenes, columns 0-1699 only; the tasks are those
scenes' windows with their own real validity masks (SLC-off stripes, collars, cloud blobs)
transplanted onto observed ground (dipfill.engines.convnp_train). Then every method fills
the same 128² cases:

- **in distribution**: ARG25 2010-01-16, tiles from columns >= 1800 (never seen in
  training); hidden pixels are January's own SLC-off stripes shifted 20 rows onto observed
  ground (``thin``) and the same dilated by 3 px (``wide``), as scripts/bench_guided.py;
- **out of distribution, place + resolution**: the wagl Landsat 7 scene of 1999-09-25
  (path 092/row 084, southern NSW, ~600 m, uint8 DN; SLC-on, so the truth is complete)
  with the **official USGS gap mask** of the 2011-08-09 SLC-off scene of the same path/row
  (``GM_B3/B4/B5``) laid over it: bands B3, B4, B5 (red, NIR, SWIR1, as ARG25's);
- **out of distribution, sensor + place**: Landsat 8 OLI SR 2020-10-31 (path 001/row 062,
  Amazonas, ~600 m, uint16) bands SR_B4, SR_B5, SR_B6 (red, NIR, SWIR1) with ARG25's
  thin stripes laid over it (the same shifted mask as above, from the ARG25 tile at the
  same position in the list).

Methods: ``fillnodata``; ``llhm`` with February as guide where it observes some hidden
pixels (ARG25 only: the other cases have no second date of the same ground; February is
nodata over the eastern tiles, cloud masks, so there llhm is left out: it would fall back
to fillnodata); single-image ``dip`` (the shipped default preset,
``--dip-steps`` steps, default 200, on the 2-core CPU: far from its 1500-step
convergence, stated as such); ``convnp`` (one forward pass); ``convnp → dip`` (ConvNP as DIP's
warm start through the hybrid residual path: guided DIP ``mcpn`` variant ``residual`` with
ConvNP's prediction as its guide, so the network fits what ConvNP's fill leaves, same
steps). Columns: mean r² over bands pooled over the tiles' hidden pixels, mean RMSE (data
units), mean SSIM, the worst tile's mean-r² difference to fillnodata, seconds per tile.

Run: ``.venv/bin/python scripts/bench_convnp.py [--tiles N] [--dip-steps N] [--train-steps N]``.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_guided import load, shifted, thin_stripes, tiles  # noqa: E402

from dipfill.engines import make_engine  # noqa: E402
from dipfill.engines.config import preset  # noqa: E402
from dipfill.engines.convnp import ConvNPEngine  # noqa: E402
from dipfill.engines.convnp_config import ConvNPConfig, TrainConfig  # noqa: E402
from dipfill.engines.convnp_train import Ground, train_convnp  # noqa: E402
from dipfill.engines.mcpn import MCPNConfig, MCPNEngine  # noqa: E402
from dipfill.eval.cases import Transplant, pooled_scores, score_prediction  # noqa: E402
from dipfill.eval.metrics import r2  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WAGL = SHARED / "landsat7_slcoff" / "wagl_p092r084_reduced_res"
L8 = SHARED / "landsat8_clouds" / "riotilerpds_LC08_L2SP_001062_20201031_600m_cloudy"
SIZE = 128
TRAIN_COLS = 1700
EVAL_COLS = 1800


def _case(truth: np.ndarray, valid: np.ndarray, hidden_mask: np.ndarray) -> Transplant:
    hidden = valid & hidden_mask[None]
    seen = valid & ~hidden
    return Transplant(truth=truth, values=np.where(seen, truth, 0).astype(np.float32), observed=seen, hidden=hidden)


def _spread(picks: list, n: int) -> list:
    return [picks[i] for i in dict.fromkeys(np.linspace(0, len(picks) - 1, min(n, len(picks))).round().astype(int))]


def arg25_cases(dates, n: int):
    """In distribution: January tiles east of the training columns, thin and wide stripes."""
    (truth, tvalid), (guide, gvalid) = dates
    stripes = shifted(thin_stripes(tvalid), 20, 0)
    masks = {"thin": stripes, "wide": ndimage.binary_dilation(stripes, iterations=3)}
    east = (slice(None), slice(None), slice(EVAL_COLS, None))
    # truth >= 60 % valid (February, 62 % nodata, leaves no tile there >= 60 % valid: llhm takes the guide's gaps)
    picks = tiles(tvalid[east].shape[1:], tvalid[east].all(axis=0))
    picks = [(r + 64, c + 64 + EVAL_COLS) for r, c in _spread(picks, n)]
    out = {}
    for width, mask in masks.items():
        for r, c in picks:
            win = (slice(None), slice(r, r + SIZE), slice(c, c + SIZE))
            g, gv = guide[win], gvalid[win]
            out.setdefault(width, []).append((_case(truth[win], tvalid[win], mask[win[1:]]),
                                              np.where(gv, g, 0).astype(np.float32), gv))
    return out, stripes, picks


def _read_bands(paths: list[str]) -> np.ndarray:
    arrays = []
    for p in paths:
        with rasterio.open(p) as src:
            arrays.append(src.read(1))
    return np.stack(arrays)


def wagl_cases(n: int):
    """Out of distribution: 1999 SLC-on truth with the 2011 USGS gap mask (inside its scene)."""
    d99 = sorted(glob.glob(str(WAGL / "LE07_L1TP_092084_19990925*" / "*_B[345].TIF")))
    gm = sorted(glob.glob(str(WAGL / "LE07_L1TP_092084_20110809*" / "gap_mask" / "*_GM_B[345].TIF")))
    if len(d99) != 3 or len(gm) != 3:
        return []
    truth = _read_bands(d99).astype(np.float32)
    gap_data = _read_bands(gm) == 1
    h, w = min(truth.shape[1], gap_data.shape[1]), min(truth.shape[2], gap_data.shape[2])
    truth, gap_data = truth[:, :h, :w], gap_data[:, :h, :w]
    valid = truth > 0
    scene = ndimage.binary_fill_holes(ndimage.binary_closing(gap_data.all(axis=0), np.ones((9, 9), bool)))
    hidden_mask = scene & ~gap_data.all(axis=0)
    picks = []
    for r in range(0, h - SIZE + 1, 32):
        for c in range(0, w - SIZE + 1, 32):
            hid = hidden_mask[r:r + SIZE, c:c + SIZE].mean()
            if valid[:, r:r + SIZE, c:c + SIZE].all(axis=0).mean() > 0.98 and 0.05 <= hid <= 0.5:
                if all(abs(r - a) >= SIZE or abs(c - b) >= SIZE for a, b in picks):
                    picks.append((r, c))
    return [_case(truth[:, r:r + SIZE, c:c + SIZE], valid[:, r:r + SIZE, c:c + SIZE],
                  hidden_mask[r:r + SIZE, c:c + SIZE]) for r, c in _spread(picks, n)]


def l8_cases(stripes: np.ndarray, arg_picks: list, n: int):
    """Out of distribution: Landsat 8 red/NIR/SWIR1 with ARG25's thin stripes laid over it."""
    files = [next(iter(glob.glob(str(L8 / f"*_SR_B{b}.TIF"))), None) for b in (4, 5, 6)]
    if None in files:
        return []
    truth = _read_bands(files).astype(np.float32)
    valid = truth > 0
    h, w = truth.shape[1:]
    picks = [(r, c) for r in range(0, h - SIZE + 1, SIZE) for c in range(0, w - SIZE + 1, SIZE)
             if valid[:, r:r + SIZE, c:c + SIZE].all()]
    out = []
    for i, (r, c) in enumerate(_spread(picks, n)):
        ar, ac = arg_picks[i % len(arg_picks)]
        out.append(_case(truth[:, r:r + SIZE, c:c + SIZE], valid[:, r:r + SIZE, c:c + SIZE],
                         stripes[ar:ar + SIZE, ac:ac + SIZE]))
    return out


def train(dates, steps: int, seed: int) -> tuple[bytes, dict, float]:
    grounds = [Ground(values=d[:, :, :TRAIN_COLS], valid=v[:, :, :TRAIN_COLS], name=f"arg25-{i}")
               for i, (d, v) in enumerate(dates)]
    masks = [g.valid.all(axis=0) for g in grounds]
    result = train_convnp(grounds, masks, ConvNPConfig(bands=3), TrainConfig(steps=steps, seed=seed))
    return result.model_bytes, result.metrics, result.seconds


def run_methods(items, methods, data_range: float, guided: bool):
    rows = {}
    for name, fill in methods.items():
        if name == "llhm" and (not guided or not any((c.hidden & gv).any() for c, _, gv in items)):
            continue  # no second date, or one that observes none of the hidden pixels: llhm would be fillnodata
        r = {"preds": [], "ssims": [], "tiles": [], "seconds": []}
        for i, (case, g, gv) in enumerate(items):
            start = time.perf_counter()
            pred = fill(case, g, gv, 100 + i)
            r["seconds"].append(time.perf_counter() - start)
            r["preds"].append(pred)
            r["ssims"].append(score_prediction(case, pred, data_range=data_range)["ssim"])
            r["tiles"].append(float(np.nanmean(r2(case.truth, pred, case.hidden))))
        r["scores"] = pooled_scores([c for c, _, _ in items], r["preds"], r["ssims"], data_range=data_range)
        rows[name] = r
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=3, help="128² tiles per case")
    parser.add_argument("--dip-steps", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", metavar="PATH", help="weights file: load it if it exists (no training), else "
                        "train and write it there")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on the shared 2-core machine two threads spin-wait for each "
                             "other; a training step took several times longer)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"machine load at start (uptime): {os.popen('uptime').read().strip()}; torch threads {args.threads}")
    dates, source = load(False)
    if args.reuse and Path(args.reuse).exists():
        from dipfill.engines.convnp import model_from_bytes

        model_bytes = Path(args.reuse).read_bytes()
        print(f"ConvNP weights reused from {args.reuse} (meta: {model_from_bytes(model_bytes)[1].get('train')})")
        metrics = None
    else:
        model_bytes, metrics, seconds = train(dates, args.train_steps, args.seed)
        if args.reuse:
            Path(args.reuse).write_bytes(model_bytes)
    if metrics:
            print(f"ConvNP trained on ARG25 columns 0-{TRAIN_COLS - 1} of both dates ({source}): {args.train_steps} "
              f"steps, {metrics['parameters']} parameters, {seconds:.0f} s; held-out tasks r² "
              f"{metrics['validation_r2']:.3f} (fillnodata {metrics['validation_r2_fillnodata']:.3f}), NLL "
              f"{metrics['train_nll_first']:.2f} -> {metrics['validation_nll']:.2f}")
    convnp = ConvNPEngine(model_bytes=model_bytes)
    fillnodata, llhm = make_engine("fillnodata"), make_engine("llhm")
    dip = make_engine("dip", steps=args.dip_steps, strategy="loop")
    hybrid = MCPNEngine(preset("mcpn-core", steps=args.dip_steps, strategy="loop"),
                        MCPNConfig(variant="residual", stopping="fixed"))
    cache: dict = {}

    def convnp_fill(case, g, gv, seed):
        key = id(case)
        if key not in cache:
            cache[key] = convnp.fill(case.values[None], case.observed[None], seeds=[seed]).values[0]
        return cache[key]

    def warm(case, g, gv, seed):
        prior = convnp_fill(case, g, gv, seed)
        guide = np.where(np.isfinite(prior), prior, 0).astype(np.float32)
        return hybrid.fill(case.values[None], case.observed[None], seeds=[seed], guides=guide[None],
                           guide_observed=np.isfinite(prior)[None]).values[0]

    methods = {
        "fillnodata": lambda case, g, gv, s: fillnodata.fill(case.values[None], case.observed[None],
                                                              seeds=[s]).values[0],
        "llhm": lambda case, g, gv, s: llhm.fill(case.values[None], case.observed[None], seeds=[s], guides=g[None],
                                                 guide_observed=gv[None]).values[0],
        f"dip ({args.dip_steps} steps)": lambda case, g, gv, s: dip.fill(case.values[None], case.observed[None],
                                                                        seeds=[s]).values[0],
        "convnp": convnp_fill,
        f"convnp → dip ({args.dip_steps} steps)": warm,
    }
    arg, stripes, picks = arg25_cases(dates, args.tiles)
    suites = [(f"in distribution: ARG25 2010-01-16, columns >= {EVAL_COLS}", w, items, 10000.0, True)
              for w, items in arg.items()]
    wagl = wagl_cases(args.tiles)
    if wagl:
        suites.append(("OOD place: wagl L7 1999 (600 m DN) + USGS 2011 gap mask", "USGS", [(c, None, None)
                                                                                          for c in wagl], 255.0, False))
    l8 = l8_cases(stripes, picks, args.tiles)
    if l8:
        suites.append(("OOD sensor: Landsat 8 SR 2020 Amazonas + ARG25 stripes", "thin",
                       [(c, None, None) for c in l8], 65535.0, False))
    head = ("| case | gaps | tiles | hidden | method | mean r² | RMSE | SSIM | worst tile Δr² vs fillnodata "
            "| s/tile |")
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))
    for title, gaps, items, data_range, guided in suites:
        rows = run_methods(items, methods, data_range, guided)
        base = np.array(rows["fillnodata"]["tiles"])
        hidden = np.mean([c.hidden.any(axis=0).mean() for c, _, _ in items])
        for name, r in rows.items():
            s = r["scores"]
            print(f"| {title} | {gaps} | {len(items)} | {hidden:.0%} | {name} | **{np.nanmean(s['r2']):.3f}** | "
                  f"{np.nanmean(s['rmse']):.1f} | {np.nanmean(s['ssim']):.3f} | "
                  f"{float(np.min(np.array(r['tiles']) - base)):+.3f} | {np.mean(r['seconds']):.2f} |", flush=True)
    print(f"\nmachine load at end (uptime): {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
