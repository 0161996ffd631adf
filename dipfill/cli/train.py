"""`dipfill train FILES... | --stac CATALOG --out MODEL_DIR`: train a ConvNP gap filler (paper 002)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dipfill.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    from dipfill.engines.convnp_config import ConvNPConfig, TrainConfig

    t = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a ConvNP gap filler (paper 002) on the observed pixels of scenes; fill with --engine convnp",
        description="Train an on-the-grid convolutional neural process on the observed pixels of the given scenes, "
        "with real gap masks of those scenes (other windows, other dates) transplanted onto observed ground as "
        "the training task, and write MODEL_DIR/model.pt (weights) and MODEL_DIR/model.json (its STAC item: "
        "training scenes, config, metrics), the item last. Then: dipfill fill --engine convnp --model MODEL_DIR.",
    )
    p.add_argument("inputs", nargs="*", metavar="FILE", help="multi-band rasters, one scene each (same bands)")
    p.add_argument("--stac", metavar="CATALOG", help="train on the scenes a STAC API or static catalog search finds")
    p.add_argument("--collection", action="append", help="collection id of the search (repeatable)")
    p.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"), help="lon/lat bounding box")
    p.add_argument("--datetime", help="date range, e.g. 2010-01-01/2010-03-31")
    p.add_argument("--bands", help="comma-separated band names (default: every band of the collection profile)")
    p.add_argument("--max-scenes", type=int, metavar="N", help="train on at most N scenes")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="directory for model.pt and model.json")
    p.add_argument("--id", dest="model_id", help="model id (default: convnp-<first 12 hex of the weights' sha256>)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=t.steps, help=f"Adam steps (default: {t.steps})")
    g.add_argument("--seed", type=int, default=t.seed, help=f"seed of the tasks and the initial weights "
                   f"(same seed, data and machine: same weights) (default: {t.seed})")
    g.add_argument("--batch", type=int, default=t.batch, help=f"tasks per step (default: {t.batch})")
    g.add_argument("--size", type=int, default=t.size, help=f"task window in pixels (default: {t.size})")
    g.add_argument("--lr", type=float, default=t.lr, help=f"Adam learning rate (default: {t.lr})")
    g.add_argument("--channels", default=",".join(map(str, ConvNPConfig().channels)),
                   help="U-Net widths, one per level (default: %(default)s)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: torch's, all cores); on a machine shared with other jobs 1 is "
                        "often several times faster (threads spin-wait for each other); the weights' bytes are "
                        "reproducible for one thread count")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _channels(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(c) for c in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise InputError(f"--channels must be positive widths like 16,32,64, got {text!r}")
    return widths


def run(args: argparse.Namespace) -> int:
    from dipfill.engines.convnp_config import TrainConfig
    from dipfill.pipeline.train import TrainRequest, train

    if args.threads:
        from dipfill.engines import set_threads

        set_threads(args.threads)
    config = TrainConfig(steps=args.steps, seed=args.seed, batch=args.batch, size=args.size, lr=args.lr)
    request = TrainRequest(
        out=args.out, files=tuple(args.inputs), stac=args.stac, collections=tuple(args.collection or ()),
        bbox=tuple(args.bbox) if args.bbox else None, datetime=args.datetime,
        bands=tuple(b.strip() for b in args.bands.split(",") if b.strip()) if args.bands else None,
        max_scenes=args.max_scenes, model_id=args.model_id, train=config, channels=_channels(args.channels),
    )
    tty = sys.stderr.isatty() and not args.json

    def progress(step: int, steps: int, loss: float) -> None:
        if tty:
            print(f"\rstep {step}/{steps}  loss {loss:.3f}", end="\n" if step == steps else "", file=sys.stderr,
                  flush=True)

    report = train(request, progress=progress)
    if args.json:
        print(json.dumps(report.__dict__, indent=2, default=str))
        return 0
    m: dict[str, Any] = report.metrics
    print(f"model     {report.model_id}")
    print(f"weights   {report.weights}  sha256 {report.sha256[:16]}")
    print(f"item      {report.item}")
    print(f"scenes    {len(report.scenes)}: {', '.join(report.scenes)}")
    print(f"loss      NLL {m['train_nll_first']:.3f} -> {m['train_nll_last']:.3f} over {config.steps} steps")
    print(f"held-out  {m['validation_tasks']} tasks: NLL {m['validation_nll']:.3f}, r² {m['validation_r2']:.3f} "
          f"(fillnodata {m['validation_r2_fillnodata']:.3f})")
    print(f"wall time {report.seconds:.1f} s")
    return 0
