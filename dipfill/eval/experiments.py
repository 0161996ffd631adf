"""`dipfill eval`: score fill methods on real gaps with known truth, and write a report.

Two dates of one place on one grid. The donor date's real gap mask (its nodata: SLC-off
stripes, clouds) is transplanted onto the truth date's observed pixels
(:func:`dipfill.eval.cases.transplant_gaps`): the *hidden* pixels are valid on the truth
date and missing on the donor date. Each method fills a few tiles and is scored per band
over the hidden pixels only (RMSE, r², PSNR, SSIM); with ``both_directions`` the dates swap
roles as well. ``shift_mask`` moves the donor's gaps down that many rows first, so a date's
own stripes can land on its observed ground (and that date can then serve as a guide).

Guides (``--guide``, other rasters of the same ground, in rank order) are opened on the
truth raster's grid; for each tile their window is read and given to the methods whose
engine takes guides (:data:`~dipfill.eval.methods.GUIDED`); single-image methods run as
without guides. A guide that is a direction's truth file is left out of that direction (it
would show the hidden truth). The report says per method which guides it used and what
share of the hidden pixels they observe. Outputs (``report.md``, ``report.json``, per-tile quicklooks and DIP
convergence plots) are written atomically into the output directory.

This module owns the run: options, the loop over directions, tiles and methods, and the
report document it fills. Its parts live beside it, one idea each:
:mod:`~dipfill.eval.methods` (``--method`` → engine), :mod:`~dipfill.eval.inputs` (dates
and tiles), :mod:`~dipfill.eval.cases` and :mod:`~dipfill.eval.metrics` (arrays and
scores), :mod:`~dipfill.eval.report` (report.json / report.md) and
:mod:`~dipfill.eval.plots` (the pictures; matplotlib optional).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill import __version__
from dipfill.errors import InputError
from dipfill.eval import plots
from dipfill.eval.cases import (
    SSIM_PERCENTILES,
    TileChoice,
    Transplant,
    pooled_scores,
    score_prediction,
    transplant_gaps,
)
from dipfill.eval.inputs import Date, Direction, choose_tiles, directions_of, read_dates
from dipfill.eval.methods import DEFAULT_METHODS, Method, build_method, parse_method
from dipfill.eval.metrics import mean_fill, rmse
from dipfill.eval.report import FLOOR, jsonable, write_report

if TYPE_CHECKING:
    from dipfill.raster.guides import GuideSource

__all__ = ["EvalOptions", "evaluate_files"]

log = logging.getLogger(__name__)

MIN_TILE = 16


@dataclass
class EvalOptions:
    """How ``dipfill eval`` runs: the CLI's flags, one field each (``rgb`` 0-based here)."""

    methods: Sequence[str] = DEFAULT_METHODS
    tiles: Sequence[tuple[int, int]] | None = None  # None: choose automatically
    tile_size: int = 256
    n_tiles: int = 3
    both_directions: bool = True
    steps: int | None = None  # dip steps for every dip method that does not set its own
    seed: int = 0
    check_every: int = 25
    data_range: float = 10000.0
    rgb: tuple[int, int, int] = (2, 1, 0)  # 0-based
    device: str = "auto"
    guides: Sequence[str] = ()  # guide rasters, rank order
    guide_bands: tuple[int, ...] = ()  # 1-based bands of every guide (default all)
    guide_resampling: str = "bilinear"
    guide_masks: Sequence[str] = ()  # the k-th marks the k-th guide's own gaps (non-zero)
    shift_mask: int = 0  # move the donor's gaps down this many rows


def evaluate_files(
    truth_path: str,
    donor_path: str,
    out_dir: str | os.PathLike[str],
    *,
    options: EvalOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the experiment and write the report; returns the report as a JSON-able dict.

    Every check a user can fail (methods, files, grids, tiles, options) runs before the
    first method and before anything is written. Without matplotlib the report is written
    without pictures, and one warning says so.
    """
    options = options or EvalOptions()
    say = progress or (lambda msg: log.info("%s", msg))
    _check_options(options)
    methods = _build_methods(options)
    truth, donor = read_dates(truth_path, donor_path)
    _check_fit(options, truth)
    guides = _open_guides(options, truth)
    directions = directions_of(truth, donor, both=options.both_directions, shift=options.shift_mask)
    choices, selection = choose_tiles(directions, size=options.tile_size, tiles=options.tiles,
                                      n_tiles=options.n_tiles)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    say(f"tiles: {', '.join(f'{t.row},{t.col}' for t in choices)} ({options.tile_size} px, {selection['mode']})")

    report = _report_head(options, truth, donor, directions, choices, selection, methods, guides)
    no_plots = plots.plots_unavailable()
    if no_plots:
        log.warning("dipfill eval: quicklooks and convergence plots skipped: %s", no_plots)
    files: dict[str, str] = {}
    for d in directions:
        run = _DirectionRun(d, methods, options, say, out=None if no_plots else out, files=files,
                            guides=_direction_guides(guides, d))
        report["directions"].append(run.report(choices))
    report["files"] = {"report_md": "report.md", "report_json": "report.json", **files}
    if no_plots:
        report["plots_skipped"] = no_plots
    return write_report(out, report)


# ---------------------------------------------------------------------------------------
# Checks and set-up (before anything runs or is written)


def _check_options(options: EvalOptions) -> None:
    if options.tile_size < MIN_TILE:
        raise InputError(f"--tile-size must be >= {MIN_TILE}, got {options.tile_size}")
    if options.n_tiles < 1:
        raise InputError(f"--n-tiles must be >= 1, got {options.n_tiles}")
    if options.check_every < 1:
        raise InputError(f"--check-every must be >= 1, got {options.check_every}")
    if options.steps is not None and options.steps < 1:
        raise InputError(f"--steps must be >= 1, got {options.steps}")
    if not options.data_range > 0:
        raise InputError(f"--data-range must be > 0, got {options.data_range}")
    if options.shift_mask < 0:
        raise InputError(f"--shift-mask must be >= 0 rows, got {options.shift_mask}")


def _build_methods(options: EvalOptions) -> list[Method]:
    """Parse every ``--method`` (no duplicates), then build every engine."""
    specs = [parse_method(s) for s in (options.methods or DEFAULT_METHODS)]
    labels = [s.spec for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise InputError(f"--method {dupes[0]!r} given twice")
    return [build_method(s, steps=options.steps, check_every=options.check_every, device=options.device)
            for s in specs]


def _check_fit(options: EvalOptions, truth: Date) -> None:
    """The quicklook bands exist and a tile fits the raster."""
    bands = truth.scene.data.shape[0]
    if max(options.rgb) >= bands or min(options.rgb) < 0:
        raise InputError(f"--rgb {','.join(str(i + 1) for i in options.rgb)}: {truth.path} has {bands} bands")
    height, width = truth.scene.grid.shape
    size = options.tile_size
    if size > height or size > width:
        raise InputError(
            f"{truth.path}: a {size}-pixel tile does not fit its {width}x{height} raster; pass a smaller --tile-size"
        )


def _open_guides(options: EvalOptions, truth: Date) -> list["GuideSource"]:
    """Every ``--guide`` opened on the truth raster's grid (checked: readable, placeable,
    overlapping, bands present); the shift fits the raster."""
    from dipfill.raster.guides import open_guide

    height = truth.scene.grid.shape[0]
    if options.shift_mask >= height:
        raise InputError(f"--shift-mask {options.shift_mask}: {truth.path} has only {height} rows")
    guides, masks = list(options.guides), [str(m) for m in options.guide_masks]
    if len(masks) > len(guides):
        raise InputError(f"--guide-mask {masks[len(guides)]}: more --guide-mask ({len(masks)}) than --guide "
                         f"({len(guides)}); the k-th mask belongs to the k-th --guide, so give its --guide too")
    masks += [None] * (len(guides) - len(masks))  # type: ignore[list-item]
    return [open_guide(str(g), truth.scene.grid, bands=options.guide_bands or None,
                       resampling=options.guide_resampling, mask=m) for g, m in zip(guides, masks)]


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _direction_guides(guides: list["GuideSource"], d: Direction) -> list["GuideSource"]:
    """The guides of one direction: all but the direction's truth file itself."""
    return [g for g in guides if not _same_file(g.href, d.truth.path)]


def _tile_seed(seed: int, row: int, col: int) -> int:
    return int(np.random.SeedSequence([seed, row, col]).generate_state(1)[0])


def _report_head(
    options: EvalOptions,
    truth: Date,
    donor: Date,
    directions: list[Direction],
    choices: list[TileChoice],
    selection: dict[str, Any],
    methods: list[Method],
    guides: list["GuideSource"],
) -> dict[str, Any]:
    """The report before any result: inputs, options, tiles and methods; ``directions`` to fill."""
    height, width = truth.scene.grid.shape
    doc = {
        "dipfill_version": __version__,
        "inputs": {
            role: {
                "path": d.path,
                "date": d.date,
                "width": width,
                "height": height,
                "bands": d.scene.band_names,
                "dtype": str(d.scene.dtype),
                "nodata": d.scene.nodata,
                "nodata_fraction": float((~d.valid.all(axis=0)).mean()),
            }
            for role, d in (("truth", truth), ("donor", donor))
        },
        "options": {
            "tile_size": options.tile_size,
            "n_tiles": options.n_tiles,
            "both_directions": options.both_directions,
            "steps": options.steps,
            "seed": options.seed,
            "check_every": options.check_every,
            "data_range": options.data_range,
            "rgb": [i + 1 for i in options.rgb],
            "device": options.device,
            "shift_mask": options.shift_mask,
            "pooling": "summary metrics pool the hidden pixels of all tiles: RMSE and PSNR over all squared "
                       "errors, r2 = 1 - sum SS_res / sum SS_tot with each tile's SS_tot about its own hidden "
                       "mean, SSIM = mean of the maps over all hidden pixels",
            "ssim": "Gaussian 11x11 window, sigma 1.5 (Wang 2004), on the filled tile (observed pixels copied "
                    "back) with each band stretched to [0, 1] by the tile truth's percentiles "
                    f"{SSIM_PERCENTILES[0]:g} and {SSIM_PERCENTILES[1]:g}; pixels without truth left out of "
                    "every window; mean of the SSIM map over the hidden pixels",
        },
        "tile_selection": selection,
        "tiles": [
            {
                "row": t.row,
                "col": t.col,
                "size": t.size,
                "why": t.reason,
                "stats": {d.key: dataclasses.asdict(s) for d, s in zip(directions, t.stats)},
            }
            for t in choices
        ],
        "methods": [
            {"label": m.label, "engine": m.spec.engine, "config": m.config, "convergence_monitored": m.monitored,
             "uses_guides": m.guided}
            for m in methods
        ],
        "directions": [],
        "files": {},
    }
    doc["inputs"]["guides"] = [g.record() for g in guides]
    if guides:
        doc["options"]["guide_resampling"] = options.guide_resampling
    return doc


# ---------------------------------------------------------------------------------------
# Running and scoring


@dataclass
class _Pool:
    """One method's tiles in one direction, kept for the pooled summary."""

    cases: list[Transplant] = field(default_factory=list)
    preds: list[NDArray] = field(default_factory=list)
    ssims: list[NDArray] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, case: Transplant, pred: NDArray, ssim: NDArray, run: dict[str, Any] | None = None) -> None:
        self.cases.append(case)
        self.preds.append(pred)
        self.ssims.append(ssim)
        if run is not None:
            self.runs.append(run)

    def scores(self, data_range: float) -> dict[str, Any]:
        return _metrics_entry(pooled_scores(self.cases, self.preds, self.ssims, data_range=data_range))


def _metrics_entry(scores: dict[str, NDArray]) -> dict[str, Any]:
    return {
        "rmse": scores["rmse"],
        "r2": scores["r2"],
        "psnr": scores["psnr"],
        "ssim": scores["ssim"],
        "mean_r2": float(np.mean(scores["r2"])),
    }


def _run_method(method: Method, case: Transplant, seed: int,
                guides: tuple[NDArray, NDArray, list[int]] | None = None) -> dict[str, Any]:
    """Fill one tile with one method; values, timing, diagnostics and the convergence curve.

    ``guides``: the tile's ``(values [G, H, W], valid [G, H, W], bands per guide)``, given
    to the engine when it takes guides."""
    curve: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {}
    if method.monitored:

        def monitor(step: int, values: NDArray[np.float32], holdout_rmse: NDArray[np.float64]) -> None:
            hidden = rmse(case.truth, np.asarray(values)[0], case.hidden)
            curve.append({
                "step": int(step),
                "holdout_rmse": float(np.asarray(holdout_rmse, dtype=np.float64).reshape(-1)[0]),
                "hidden_rmse": float(np.mean(hidden)),
            })

        kwargs["monitor"] = monitor
    if guides is not None and method.guided:
        kwargs.update(guides=guides[0][None], guide_observed=guides[1][None], guide_bands=list(guides[2]))
    wall, cpu = time.perf_counter(), time.process_time()
    result = method.engine.fill(case.values[None], case.observed[None], seeds=[seed], **kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    diag = result.diagnostics[0]
    return {
        "pred": result.values[0],
        "steps": int(diag.steps),
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "extra": jsonable(dict(diag.extra)),
        "convergence": curve,
    }


@dataclass
class _DirectionRun:
    """One direction: every tile with every method, pooled into the direction's report part.

    ``out`` is where the pictures go; ``None`` when they are skipped. Picture file names are
    added to ``files``.
    """

    direction: Direction
    methods: list[Method]
    options: EvalOptions
    say: Callable[[str], None]
    out: Path | None
    files: dict[str, str]
    guides: list["GuideSource"] = field(default_factory=list)
    pools: dict[str, _Pool] = field(init=False)
    floor: _Pool = field(default_factory=_Pool)
    seen: list[int] = field(default_factory=lambda: [0, 0])  # hidden pixels the guides observe, of all hidden

    def __post_init__(self) -> None:
        self.pools = {m.label: _Pool() for m in self.methods}

    def report(self, choices: list[TileChoice]) -> dict[str, Any]:
        d = self.direction
        tiles = [self.tile(t) for t in choices]
        scored = [t["hidden_pixels"] for t in tiles if "skipped" not in t]
        doc: dict[str, Any] = {
            "key": d.key,
            "label": d.label,
            "truth": d.truth.path,
            "donor": d.donor.path,
            "hidden_pixels": np.sum(scored, axis=0) if scored else [0] * d.truth.scene.data.shape[0],
        }
        if self.options.guides:
            doc["guides"] = [g.record()["href"] for g in self.guides]
            doc["guide_coverage"] = self.coverage()
        return {**doc, "summary": self.summary(), "tiles": tiles}

    def tile(self, t: TileChoice) -> dict[str, Any]:
        """Transplant the gaps onto one tile, run and score every method and the floor, draw."""
        d, data_range = self.direction, self.options.data_range
        win = (slice(None), slice(t.row, t.row + t.size), slice(t.col, t.col + t.size))
        tv = d.truth.valid[win]
        case = transplant_gaps(d.truth.scene.data[win], tv, d.gap_valid[win])
        n_hidden = case.hidden.reshape(case.hidden.shape[0], -1).sum(axis=1)
        tile_doc: dict[str, Any] = {
            "row": t.row,
            "col": t.col,
            "hidden_pixels": n_hidden,
            "hidden_fraction": float(case.hidden.any(axis=0).mean()),
            "observed_fraction": float(case.observed.all(axis=0).mean()),
            "truth_nodata_fraction": float((~tv).any(axis=0).mean()),
            "seed": _tile_seed(self.options.seed, t.row, t.col),
            "methods": {},
        }
        if not n_hidden.any() or not case.observed.any():
            tile_doc["skipped"] = "no hidden pixels" if not n_hidden.any() else "no observed pixels"
            self.say(f"{d.key} tile {t.row},{t.col}: skipped ({tile_doc['skipped']})")
            return tile_doc
        guides = self.read_guides(t)
        if guides is not None:
            seen = int((case.hidden & guides[1].any(axis=0)[None]).sum())
            self.seen[0] += seen
            self.seen[1] += int(case.hidden.sum())
            tile_doc["guide_coverage"] = seen / max(int(case.hidden.sum()), 1)
        preds: list[tuple[str, NDArray, dict]] = []
        for m in self.methods:
            run = _run_method(m, case, tile_doc["seed"], guides)
            scores = score_prediction(case, run["pred"], data_range=data_range, truth_valid=tv)
            entry = {**_metrics_entry(scores), **{k: v for k, v in run.items() if k != "pred"}}
            tile_doc["methods"][m.label] = entry
            self.pools[m.label].add(case, run["pred"], scores["ssim"], run)
            preds.append((m.label, run["pred"], entry))
            self.say(
                f"{d.key} tile {t.row},{t.col}: {m.label}: mean r2 {entry['mean_r2']:.3f}, "
                f"{run['steps']} steps, {run['cpu_seconds']:.1f} CPU s, {run['wall_seconds']:.1f} s"
            )
        fp = mean_fill(case.values, case.observed)
        fscores = score_prediction(case, fp, data_range=data_range, truth_valid=tv)
        tile_doc["methods"][FLOOR] = _metrics_entry(fscores)
        self.floor.add(case, fp, fscores["ssim"])
        if self.out is not None:
            self.draw(self.out, t, case, tv, preds, tile_doc)
        return tile_doc

    def read_guides(self, t: TileChoice) -> tuple[NDArray, NDArray, list[int]] | None:
        """The guides' values and validity on the tile, and bands per guide; None without guides."""
        from dipfill.raster.guides import guide_band_counts, read_guides

        if not self.guides:
            return None
        values, valid = read_guides(self.guides, ((t.row, t.row + t.size), (t.col, t.col + t.size)))
        return values, valid, list(guide_band_counts(self.guides))

    def coverage(self) -> float | None:
        """Share of the scored hidden pixels (all bands) that at least one guide band observes."""
        return self.seen[0] / self.seen[1] if self.guides and self.seen[1] else None

    def draw(self, out: Path, t: TileChoice, case: Transplant, truth_valid: NDArray[np.bool_],
             preds: list[tuple[str, NDArray, dict]], tile_doc: dict[str, Any]) -> None:
        """The tile's quicklook, and its convergence plot when a dip method ran."""
        d = self.direction
        stem = f"{d.key}_r{t.row}_c{t.col}"
        title = f"{d.label} - tile row {t.row}, col {t.col}"
        ql = out / f"quicklook_{stem}.png"
        plots.write_quicklook(ql, case, truth_valid, preds, rgb=self.options.rgb, title=title)
        self.files[f"quicklook_{stem}"] = ql.name
        tile_doc["quicklook"] = ql.name
        dips = [m for m in self.methods if m.is_dip]
        if dips:
            cv = out / f"convergence_{stem}.png"
            plots.write_convergence(cv, {m.label: tile_doc["methods"][m.label] for m in dips}, title=title)
            self.files[f"convergence_{stem}"] = cv.name
            tile_doc["convergence_plot"] = cv.name

    def summary(self) -> dict[str, Any]:
        """Pooled metrics and mean cost per patch of each method that ran, then the floor."""
        data_range = self.options.data_range
        summary: dict[str, Any] = {}
        for m in self.methods:
            pool = self.pools[m.label]
            if not pool.cases:
                continue
            summary[m.label] = {
                **pool.scores(data_range),
                "steps_per_patch": float(np.mean([r["steps"] for r in pool.runs])),
                "cpu_seconds_per_patch": float(np.mean([r["cpu_seconds"] for r in pool.runs])),
                "wall_seconds_per_patch": float(np.mean([r["wall_seconds"] for r in pool.runs])),
                "patches": len(pool.runs),
            }
            if self.options.guides:  # which guides this method used, and what they observe of the hidden pixels
                summary[m.label]["guides"] = [g.record()["href"] for g in self.guides] if m.guided else []
                summary[m.label]["guide_coverage"] = self.coverage() if m.guided else None
        if self.floor.cases:
            summary[FLOOR] = {**self.floor.scores(data_range), "patches": len(self.floor.cases)}
        return summary
