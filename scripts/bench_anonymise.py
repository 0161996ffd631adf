"""Benchmark `dipfill anonymise` against paper 004's figures (issue 13, item 2).

Cases, all through :func:`dipfill.pipeline.anonymise.anonymise_files` (the command's code):

* **BigEarthNet** (../shared/data/sentinel1/bigearthnet_example): each S1 patch's VV and VH
  (σ⁰ in dB, float32, 120×120) as one two-band scene, a 64×64 hole in the centre (the
  paper: ~64² in 256² SEN12MS patches, VV+VH as a two-channel DIP);
* **GRD** (../shared/data/sentinel1/riotilerpds_S1A_IW_GRDH_20180716/iw-vv.tiff, uint16
  amplitude DN, GCPs): a 600×400 px region, ``--patch 128`` (coarse-to-fine).

Methods: ``fillnodata`` (coarse-to-fine mean + ENL-matched speckle) and ``dip`` (preset
sar2023, SSIM loss, blend none) with ``--steps`` Adam steps (the paper runs 3000-6000; a CPU
run here cannot: the step count is printed with every row).

Metrics as the paper: SSIM and MS-SSIM (:func:`~dipfill.eval.metrics.ms_ssim`, the
paper's mean over scales) over the full image (FI) in dB scaled by the original's
min/max per band to [0, 1] (the paper scales dB to about [-1, 1]; SSIM's constants assume
a known range), ENL (:func:`~dipfill.eval.metrics.enl`, 25² tiles, intensity) inside the
region (OIA) for the original and the output, EPI (:func:`~dipfill.eval.metrics.epi`,
amplitude) inside the region. Mean over patches and bands.

Usage: ``nice -n 19 python scripts/bench_anonymise.py [--steps 100] [--grd-steps 25] [--skip-dip-grd]
[--patches N] [--first K] [--skip-grd] [--skip-fillnodata] [--dip KEY=JSON ...]``
(``--dip target_range=[0.1,0.9]`` overrides the preset, to measure a change of it on the
same cases; ``--first``/``--patches`` pick BigEarthNet patches, for a short run).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from dipfill.engines.sar import to_db
from dipfill.eval.metrics import enl, epi, ms_ssim, ssim
from dipfill.pipeline.anonymise import anonymise_files
from dipfill.specs import FillOptions

SHARED = Path(os.environ.get("DIPFILL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BEN = SHARED / "sentinel1" / "bigearthnet_example" / "BigEarthNet-S1-Example"
GRD = SHARED / "sentinel1" / "riotilerpds_S1A_IW_GRDH_20180716" / "iw-vv.tiff"


def scores(orig_db: np.ndarray, out_db: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """The paper's metrics for one scene ``[C, H, W]`` in dB (mean over bands)."""
    lo = np.nanmin(orig_db, axis=(1, 2), keepdims=True)
    hi = np.nanmax(orig_db, axis=(1, 2), keepdims=True)
    a, b = (orig_db - lo) / (hi - lo), (np.clip(out_db, lo, hi) - lo) / (hi - lo)
    full = np.isfinite(a)
    reg = np.broadcast_to(region, orig_db.shape)
    inten_o, inten_f = 10 ** (orig_db / 10), 10 ** (out_db / 10)
    return {
        "ssim_fi": float(np.nanmean(ssim(a, b, full, data_range=1.0))),
        "ms_ssim_fi": float(np.nanmean(ms_ssim(np.where(full, a, 0), np.where(full, b, 0), data_range=1.0))),
        "enl_orig": float(np.nanmean(enl(inten_o, reg))),
        "enl_out": float(np.nanmean(enl(inten_f, reg))),
        "epi": float(np.nanmean(epi(np.sqrt(inten_o), np.sqrt(inten_f), reg))),
    }


def run(inputs: list[str], out: str, units: str, opts: FillOptions, **where: str) -> tuple[np.ndarray, np.ndarray, float]:
    t0 = time.perf_counter()
    report = anonymise_files(inputs, out, options=opts, **where)
    seconds = time.perf_counter() - t0
    with rasterio.open(report.outputs["qa"]) as ds:
        region = ds.read(1) == 2
    out_data = np.concatenate([rasterio.open(report.outputs[k]).read() for k in report.outputs
                               if k not in ("filled", "qa", "mosaic", "quicklook", "patches", "item")])
    return out_data, region, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="DIP Adam steps per patch (paper: 3000)")
    ap.add_argument("--grd-steps", type=int, default=25, help="DIP steps per patch on the GRD region (~20 fits)")
    ap.add_argument("--skip-dip-grd", action="store_true", help="no DIP on the GRD region (many patches)")
    ap.add_argument("--patches", type=int, default=0, help="only N BigEarthNet patches (0: all 6)")
    ap.add_argument("--first", type=int, default=0, help="start at this BigEarthNet patch (sorted by name, from 0)")
    ap.add_argument("--skip-grd", action="store_true", help="no GRD rows at all")
    ap.add_argument("--skip-fillnodata", action="store_true", help="DIP rows only")
    ap.add_argument("--dip", action="append", default=[], metavar="KEY=JSON",
                    help="a DIPConfig override on top of sar2023, e.g. target_range=[0.1,0.9]; repeatable")
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    if not BEN.exists() or not GRD.exists():
        print(f"bench_anonymise: {SHARED} has no Sentinel-1 data; nothing to measure")
        return
    dip = {"steps": args.steps, "strategy": "loop", "compile": "off", "precision": "fp32", "device": "cpu"}
    for item in args.dip:
        key, _, value = item.partition("=")
        dip[key] = json.loads(value)
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench_anonymise_")
    patches = sorted(glob.glob(str(BEN / "*")))[args.first:][: args.patches or None]
    for method, eng_opts in (("fillnodata", {}), ("dip", dip)):
        if method == "fillnodata" and args.skip_fillnodata:
            continue
        per = []
        for i, d in enumerate(patches, start=args.first):
            files = [sorted(glob.glob(f"{d}/*_VV.tif"))[0], sorted(glob.glob(f"{d}/*_VH.tif"))[0]]
            with rasterio.open(files[0]) as ds:
                h, w = ds.shape
                mask = np.zeros((h, w), dtype=np.uint8)
                mask[h // 2 - 32:h // 2 + 32, w // 2 - 32:w // 2 + 32] = 1
                profile = ds.profile
            mpath = f"{tmp}/hole{i}.tif"
            with rasterio.open(mpath, "w", **{**profile, "dtype": "uint8", "nodata": None}) as dst:
                dst.write(mask[None])
            orig = np.concatenate([rasterio.open(f).read() for f in files]).astype(np.float64)
            opts = FillOptions(engine=method, engine_options=eng_opts, patch=128, overlap=16)
            out, region, sec = run(files, f"{tmp}/{method}{i}", "db", opts, mask=mpath)
            per.append({**scores(orig, out.astype(np.float64), region), "seconds": sec})
            print(json.dumps({"patch": i, "method": method, **per[-1]}), flush=True)
        rows.append({"case": f"BigEarthNet VV+VH 120², 64² hole ({len(per)} patches)",
                     "method": method + "".join(f" {o}" for o in args.dip if method == "dip"),
                     "steps": args.steps if method == "dip" else None,
                     **{k: float(np.mean([p[k] for p in per])) for k in per[0]}})
        print(json.dumps(rows[-1]), flush=True)
    # GRD: a 600×400 region, several patches wide
    if args.skip_grd:
        table(rows, args.json)
        return
    with rasterio.open(GRD) as ds:
        profile, orig_dn = ds.profile, ds.read()
    mask = np.zeros(orig_dn.shape[1:], dtype=np.uint8)
    mask[200:600, 300:900] = 1
    mpath = f"{tmp}/grd_region.tif"
    with rasterio.open(mpath, "w", **{**profile, "dtype": "uint8", "nodata": None}) as dst:
        dst.write(mask[None])
    orig_db = to_db(orig_dn.astype(np.float64), "linear-amplitude")
    orig_db[orig_dn == 0] = np.nan
    for method, eng_opts in (("fillnodata", {}), ("dip", {**dip, "steps": args.grd_steps})):
        if method == "dip" and args.skip_dip_grd:
            continue
        opts = FillOptions(engine=method, engine_options=eng_opts, patch=128, overlap=16)
        out, region, sec = run([str(GRD)], f"{tmp}/grd_{method}", "linear-amplitude", opts, mask=mpath)
        out_db = to_db(out.astype(np.float64), "linear-amplitude")
        out_db[out == 0] = np.nan
        rows.append({"case": "S1 GRD amplitude DN 1280×837, 600×400 region, patch 128", "method": method,
                     "steps": args.grd_steps if method == "dip" else None,
                     **scores(orig_db, out_db, region), "seconds": sec})
        print(json.dumps(rows[-1]), flush=True)
    table(rows, args.json)


def table(rows: list[dict], json_path: str | None) -> None:
    """The rows as the markdown table of docs/benchmarks (and as JSON to ``json_path``)."""
    print()
    print("| case | method | steps | SSIM (FI) | MS-SSIM (FI) | ENL orig (OIA) | ENL out (OIA) | EPI (OIA) | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['method']} | {r['steps'] or '-'} | {r['ssim_fi']:.3f} | {r['ms_ssim_fi']:.3f} | "
              f"{r['enl_orig']:.2f} | {r['enl_out']:.2f} | {r['epi']:.2f} | {r['seconds']:.1f} |")
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
