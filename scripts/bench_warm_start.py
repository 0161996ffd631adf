"""Warm-started DIP: does starting a patch from already fitted weights save steps? (issue 14 item 3)

Goal of the issue: >= 3x fewer steps than a cold fit at <= 0.01 r² loss on the real cases.
Measured here on transplanted real SLC-off stripes (the ARG25 January date, its own stripes
shifted 20 rows onto observed ground, dilated 3 px: ``wide``, as scripts/bench_dip_defaults.py),
mcpn-core at ``--size``² tiles, the network alone (output EMA, no blend), r² on the hidden
pixels at every ``--every`` steps, for three starts of the same tile with the same seed
(input noise and perturbations identical, only the initial weights differ):

- ``cold``: the seed's initialisation (what dipfill does today);
- ``coarse``: the weights of a network first fitted for ``--prefit`` steps on the tile's
  surroundings at reduced resolution (the ``4 --size``² window around it, block-averaged
  by 4 to one ``--size``² patch, its gaps as gaps): one fit per scene region, shareable by
  every patch in it without ordering them;
- ``neighbour``: the weights of the tile's right-hand neighbour (stride ``--size`` − 32, the
  pipeline's overlap) fitted for ``--prefit`` steps with the same gaps: what a patch gets
  if patches are fitted in sequence and each hands its weights on.

The prefit's own steps are not counted: a coarse prefit is paid once per region, a
neighbour's fit is the neighbour's own work. Run on 2 idle cores: ~0.05 s per step at 128².

    .venv/bin/python scripts/bench_warm_start.py [--tiles 2] [--size 128] [--steps 600]
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

from bench_guided import load, shifted, thin_stripes, tiles  # noqa: E402

from dipfill.engines import make_engine  # noqa: E402
from dipfill.eval.metrics import r2  # noqa: E402


def window(truth, tvalid, mask, r: int, c: int, size: int):
    """Values, observed and hidden pixels of the ``size``² window at (r, c)."""
    win = (slice(None), slice(r, r + size), slice(c, c + size))
    hidden = tvalid[win] & mask[None, r : r + size, c : c + size]
    seen = tvalid[win] & ~hidden
    return np.where(seen, truth[win], 0).astype(np.float32), seen, hidden, truth[win]


def coarse(truth, tvalid, mask, r: int, c: int, size: int, factor: int = 4):
    """The ``factor * size``² window centred on the tile, block-averaged over its observed
    pixels to one ``size``² patch (a block with no observed pixel is a gap)."""
    h, w = tvalid.shape[1:]
    big = size * factor
    r0 = int(np.clip(r + size // 2 - big // 2, 0, h - big))
    c0 = int(np.clip(c + size // 2 - big // 2, 0, w - big))
    win = (slice(None), slice(r0, r0 + big), slice(c0, c0 + big))
    seen = tvalid[win] & ~mask[None, r0 : r0 + big, c0 : c0 + big]
    vals = np.where(seen, truth[win], 0.0)
    shape = (truth.shape[0], size, factor, size, factor)
    sums, counts = vals.reshape(shape).sum(axis=(2, 4)), seen.reshape(shape).sum(axis=(2, 4))
    return (sums / np.maximum(counts, 1)).astype(np.float32), counts > 0


def curve(engine, values, seen, hidden, truth, seed: int) -> tuple[dict[int, float], float]:
    """Mean r² over bands on the hidden pixels at every monitored step; wall seconds."""
    scores: dict[int, float] = {}

    def monitor(step: int, pred: np.ndarray, _rmse: np.ndarray) -> None:
        scores[step] = float(np.nanmean(r2(truth, pred[0], hidden)))

    start = time.perf_counter()
    engine.fill(values[None], seen[None], seeds=[seed], monitor=monitor)
    return scores, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--prefit", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--crops", action="store_true")
    args = parser.parse_args()
    dates, source = load(args.crops)
    (truth, tvalid), _ = dates
    mask = ndimage.binary_dilation(shifted(thin_stripes(tvalid), 20, 0), iterations=3)
    size, stride = args.size, args.size - 32
    ok = tvalid.all(axis=0)
    picks = [(r, c) for r, c in tiles(tvalid.shape[1:], ok) if c + stride + size <= tvalid.shape[2]]
    picks = [picks[i] for i in np.linspace(0, len(picks) - 1, min(args.tiles, len(picks))).round().astype(int)]
    opts = dict(preset="mcpn-core", strategy="loop", blend="none", check_every=args.every)
    cold = make_engine("dip", steps=args.steps, **opts)
    donor = make_engine("dip", steps=args.prefit, **opts)
    fill = make_engine("fillnodata")
    print(f"data: {source}; {len(picks)} tiles of {size}², wide stripes, mcpn-core, network alone (EMA), "
          f"prefit {args.prefit} steps\n")
    curves: dict[str, list[dict[int, float]]] = {}
    base = []
    for i, (r, c) in enumerate(picks):
        seed = 100 + i
        values, seen, hidden, t = window(truth, tvalid, mask, r, c, size)
        base.append(float(np.nanmean(r2(t, fill.fill(values[None], seen[None], seeds=[seed]).values[0], hidden))))
        starts = {"cold": None}
        cvals, cseen = coarse(truth, tvalid, mask, r, c, size)
        starts["coarse"] = donor.fit_state(cvals, cseen, seed=seed + 1000)
        nvals, nseen, _, _ = window(truth, tvalid, mask, r, c + stride, size)
        starts["neighbour"] = donor.fit_state(nvals, nseen, seed=seed + 2000)
        for name, state in starts.items():
            engine = cold if state is None else make_engine("dip", steps=args.steps, init_state=state, **opts)
            scores, seconds = curve(engine, values, seen, hidden, t, seed)
            curves.setdefault(name, []).append(scores)
            print(f"tile {i} ({r},{c}) {name}: {seconds:.0f} s, r² at "
                  + ", ".join(f"{s}: {v:.3f}" for s, v in scores.items()), flush=True)
    steps = sorted(curves["cold"][0])
    mean = {name: {s: float(np.mean([cv[s] for cv in cs])) for s in steps} for name, cs in curves.items()}
    target = mean["cold"][steps[-1]]
    print(f"\nfillnodata mean r² {np.mean(base):.3f}; cold at {steps[-1]} steps {target:.3f}\n")
    print("| start | " + " | ".join(f"r² @{s}" for s in steps) + " | steps to cold's final r² − 0.01 |")
    print("|---|" + "---:|" * (len(steps) + 1))
    for name, row in mean.items():
        reach = next((s for s in steps if row[s] >= target - 0.01), None)
        print(f"| {name} | " + " | ".join(f"{row[s]:.3f}" for s in steps)
              + f" | {reach if reach is not None else '> ' + str(steps[-1])} |", flush=True)


if __name__ == "__main__":
    main()
