"""Sentinel-1 → Sentinel-2 guidance on the BigEarthNet pairs in ../shared/data (issue 11, 6b).

Each of the 6 BigEarthNet patches (1.2 km, 120×120 at 10 m) has a cloud-free Sentinel-2 L2A
patch and a Sentinel-1 VV/VH patch (dB) of the same ground. Truth: S2 B04, B03, B08. Hidden:
(a) real SLC-off stripes (the ARG25 2010-01-16 crop's own nodata, its top-left 120×120),
(b) a 48×48 square "cloud" in the middle. Guide: S1 VV, VH on the same grid. Prints mean
r² over the hidden pixels, pooled over the patches, per band and method. A different sensor:
``regression``/``guided`` use both SAR bands as predictors; ``llhm`` pairs bands by rank.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dipfill.engines import make_engine  # noqa: E402
from dipfill.eval.metrics import r2  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "sentinel1" / "bigearthnet_example"
BANDS = ("B04", "B03", "B08")


def pairs():
    s2 = {p.name.split("_", 3)[-1]: p for p in (DATA / "BigEarthNet-S2-Example").iterdir()}
    for s1 in sorted((DATA / "BigEarthNet-S1-Example").iterdir()):
        key = "_".join(s1.name.split("_")[-2:])
        yield s1, s2[key]


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1).astype(np.float32)


def main() -> None:
    if not DATA.exists():
        print("bench_guided_s1: ../shared/data not found; nothing to measure")
        return
    with rasterio.open(ROOT / "data" / "arg25_menindee" / "LS7_ETM_095_082_20100116_B3B4B5_crop512.tif") as ds:
        stripes = ds.read(1)[:120, :120] == ds.nodata
    cloud = np.zeros((120, 120), bool)
    cloud[36:84, 36:84] = True
    methods = {"fillnodata": make_engine("fillnodata"), "llhm": make_engine("llhm"),
               "regression": make_engine("regression", predictors="all"), "guided": make_engine("guided")}
    print("| gaps | method | r² B04 | r² B03 | r² B08 | mean r² | s |\n|---|---|---|---|---|---|---|")
    for name, hidden in (("SLC-off stripes", stripes), ("48×48 cloud", cloud)):
        truth = np.stack([np.stack([read(next(s2.glob(f"*_{b}.tif"))) for b in BANDS]) for _, s2 in pairs()])
        sar = np.stack([np.stack([read(next(s1.glob(f"*_{p}.tif"))) for p in ("VV", "VH")]) for s1, _ in pairs()])
        observed = np.broadcast_to(~hidden, truth.shape).copy()
        patches = np.where(observed, truth, 0).astype(np.float32)
        mask = np.broadcast_to(hidden, truth.shape)
        for label, engine in methods.items():
            t0 = time.perf_counter()
            out = engine.fill(patches, observed, seeds=list(range(len(truth))), guides=sar,
                              guide_observed=np.isfinite(sar), guide_bands=[2]).values
            seconds = time.perf_counter() - t0
            # pooled over patches: bands as the metric's channel axis
            scores = r2(truth.transpose(1, 0, 2, 3).reshape(3, -1, 120), out.transpose(1, 0, 2, 3).reshape(3, -1, 120),
                        mask.transpose(1, 0, 2, 3).reshape(3, -1, 120))
            print(f"| {name} | {label} | " + " | ".join(f"{v:.3f}" for v in scores) +
                  f" | **{np.mean(scores):.3f}** | {seconds:.1f} |")


if __name__ == "__main__":
    main()
