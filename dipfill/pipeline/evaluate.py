"""`dipfill eval`: score fill methods on real gaps with known truth, and write a report.

Two dates of one place on one grid. The donor date's real gap mask (its nodata: SLC-off
stripes, clouds) is transplanted onto the truth date's observed pixels
(:func:`dipfill.evaluation.transplant_gaps`): the *hidden* pixels are valid on the truth
date and missing on the donor date. Each method fills a few tiles and is scored per band
over the hidden pixels only (RMSE, r², PSNR, SSIM); with ``both_directions`` the dates swap
roles as well. Outputs (``report.md``, ``report.json``, per-tile quicklooks and DIP
convergence plots) are written atomically into the output directory.

This module does I/O and orchestration; the array code is in :mod:`dipfill.evaluation` and
:mod:`dipfill.metrics`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill import __version__
from dipfill.errors import GridMismatchError, InputError
from dipfill.evaluation import (
    HIDDEN_RANGE,
    MAX_TRUTH_NODATA,
    SSIM_PERCENTILES,
    TileChoice,
    Transplant,
    composite,
    pick_tiles,
    score_prediction,
    tile_stats,
    transplant_gaps,
)
from dipfill.metrics import mean_fill, psnr, rmse

__all__ = [
    "DEFAULT_METHODS",
    "EvalOptions",
    "MethodSpec",
    "parse_method",
    "parse_tiles",
    "evaluate_files",
]

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("dip:mcpn-core", "dip:ndvi2024", "dip:landsat2020", "fillnodata", "telea", "ns")
CLASSICAL = ("fillnodata", "telea", "ns")
MIN_TILE = 16
QUICKLOOK_PERCENTILES = (2.0, 98.0)
FLOOR = "mean fill (floor)"


# ---------------------------------------------------------------------------------------
# Method specs


@dataclass(frozen=True)
class MethodSpec:
    """A parsed ``--method`` string: ``ENGINE[:PRESET][:KEY=VALUE,KEY=VALUE...]``."""

    spec: str
    engine: str
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets or braces (``a=1,b=[1,2]``)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (p.strip() for p in parts) if p]


def _value(raw: str) -> Any:
    """JSON where it parses (numbers, true/false, lists → tuples), else the bare string."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw

    def tup(v: Any) -> Any:
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    return tup(value)


def parse_method(spec: str) -> MethodSpec:
    """Parse ``dip:mcpn-core:steps=300,stopping=holdout``, ``fillnodata``, ``telea:radius=3``.

    ``dip`` alone means the ``landsat2020`` preset (paper 000). Override values are JSON
    where possible (``steps=300``, ``channels_skip=[4,4,4,4,4,4]``), else strings.
    """
    parts = [p.strip() for p in spec.strip().split(":")]
    engine = parts[0]
    if engine not in ("dip", *CLASSICAL):
        raise InputError(
            f"--method {spec!r}: unknown method {engine!r}; use dip[:PRESET][:KEY=VALUE,...], "
            f"{', '.join(CLASSICAL)} (e.g. dip:mcpn-core:steps=300)"
        )
    preset: str | None = None
    overrides: dict[str, Any] = {}
    for part in parts[1:]:
        if not part:
            raise InputError(f"--method {spec!r}: empty field between ':'")
        if "=" not in part:
            if engine != "dip" or preset is not None or overrides:
                raise InputError(f"--method {spec!r}: expected KEY=VALUE, got {part!r}")
            preset = part
            continue
        for item in _split_top_level(part):
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise InputError(f"--method {spec!r}: expected KEY=VALUE, got {item!r}")
            overrides[key.strip()] = _value(raw.strip())
    if engine == "dip":
        preset = overrides.pop("preset", None) or preset or "landsat2020"
    return MethodSpec(spec=spec.strip(), engine=engine, preset=preset, overrides=overrides)


@dataclass
class Method:
    """A method ready to run: its engine, its full configuration and whether it can be watched."""

    label: str
    spec: MethodSpec
    engine: Any
    config: dict[str, Any]
    monitored: bool

    @property
    def is_dip(self) -> bool:
        return self.spec.engine == "dip"


def _jsonable(x: Any) -> Any:
    """Plain JSON values: arrays and tuples as lists, NaN/inf as null."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


def build_method(spec: MethodSpec, *, steps: int | None, check_every: int, device: str) -> Method:
    """The engine for ``spec``; ``steps``/``check_every``/``device`` apply to dip unless the spec sets them."""
    from dipfill.engines import make_engine

    try:
        if spec.engine == "dip":
            from dipfill.engines.dip import DIPConfig

            known = {f.name for f in dataclasses.fields(DIPConfig)}
            opts: dict[str, Any] = {"preset": spec.preset, "device": device}
            if steps is not None:
                opts["steps"] = steps
            if "check_every" in known:  # the engine can report progress every N steps
                opts["check_every"] = check_every
            opts.update(spec.overrides)
            engine = make_engine("dip", **opts)
            config = {"preset": spec.preset, **engine.config.to_dict()}
        else:
            engine = make_engine(spec.engine, **spec.overrides)
            config = _jsonable(dataclasses.asdict(engine)) if dataclasses.is_dataclass(engine) else {}
    except InputError as exc:
        raise InputError(f"--method {spec.spec!r}: {exc}") from None
    monitored = "monitor" in inspect.signature(engine.fill).parameters
    return Method(label=spec.spec, spec=spec, engine=engine, config=config, monitored=monitored)


def parse_tiles(text: str) -> list[tuple[int, int]]:
    """``"R,C[,R,C...]"`` → ``[(R, C), ...]`` (top-left corners)."""
    try:
        nums = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise InputError(f"--tiles takes row,col pairs of integers like 0,0,256,512; got {text!r}") from None
    if not nums or len(nums) % 2:
        raise InputError(f"--tiles takes row,col pairs (an even count of integers); got {text!r}")
    if min(nums) < 0:
        raise InputError(f"--tiles: rows and columns must be >= 0; got {text!r}")
    return list(zip(nums[0::2], nums[1::2]))


# ---------------------------------------------------------------------------------------
# Options and inputs


@dataclass
class EvalOptions:
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


@dataclass
class _Date:
    path: str
    scene: Any
    valid: NDArray[np.bool_]
    date: str


@dataclass
class _Direction:
    key: str  # forward / reverse, used in file names
    truth: _Date
    donor: _Date

    @property
    def label(self) -> str:
        return f"truth {self.truth.date}, gaps from {self.donor.date}"


def _read_dates(truth_path: str, donor_path: str) -> tuple[_Date, _Date]:
    from dipfill.pipeline.read import describe_grid_difference, acquisition_date, data_validity, read_scene

    dates = []
    for path in (truth_path, donor_path):
        scene = read_scene([str(path)])
        valid = data_validity(scene.data, scene.nodata)
        if not valid.any():
            raise InputError(f"{path}: every pixel is nodata ({scene.nodata}); nothing to evaluate")
        date = acquisition_date(scene) or Path(path).stem
        dates.append(_Date(str(path), scene, valid, date))
    truth, donor = dates
    diff = describe_grid_difference(truth.scene.grid, donor.scene.grid)
    if diff is not None:
        raise GridMismatchError(f"{donor_path}: {diff} in {truth_path}; the two dates must share one grid")
    if truth.scene.data.shape[0] != donor.scene.data.shape[0]:
        raise InputError(
            f"{donor_path}: {donor.scene.data.shape[0]} bands vs {truth.scene.data.shape[0]} in {truth_path}; "
            "the two dates must have the same bands"
        )
    if truth.date == donor.date:
        donor.date = f"{donor.date} ({Path(donor_path).name})"
    return truth, donor


def _tile_seed(seed: int, row: int, col: int) -> int:
    return int(np.random.SeedSequence([seed, row, col]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------
# Running


def _run_method(method: Method, case: Transplant, seed: int) -> dict[str, Any]:
    """Fill one tile with one method; values, timing, diagnostics and the convergence curve."""
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
    wall, cpu = time.perf_counter(), time.process_time()
    result = method.engine.fill(case.values[None], case.observed[None], seeds=[seed], **kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    diag = result.diagnostics[0]
    return {
        "pred": result.values[0],
        "steps": int(diag.steps),
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "extra": _jsonable(dict(diag.extra)),
        "convergence": curve,
    }


def _metrics_entry(scores: dict[str, NDArray]) -> dict[str, Any]:
    return {
        "rmse": scores["rmse"],
        "r2": scores["r2"],
        "psnr": scores["psnr"],
        "ssim": scores["ssim"],
        "mean_r2": float(np.mean(scores["r2"])),
    }


def _pooled(
    cases: list[Transplant], preds: list[NDArray], ssims: list[NDArray], data_range: float
) -> dict[str, Any]:
    """Metrics over the hidden pixels of all tiles together.

    RMSE and PSNR pool the squared errors of every hidden pixel. r² is
    ``1 - Σ_tiles SS_res / Σ_tiles SS_tot`` with each tile's SS_tot taken about that tile's
    own hidden-truth mean, so differences *between* tiles (which any per-tile constant gets
    right) do not inflate it; with one tile it is the plain r². SSIM is the mean of the
    SSIM maps over all hidden pixels.
    """
    truth = np.stack([np.asarray(c.truth, dtype=np.float64) for c in cases])
    hidden = np.stack([c.hidden for c in cases])
    pred = np.stack([np.asarray(p, dtype=np.float64) for p in preds])
    counts = hidden.sum(axis=(0, 2, 3)).astype(np.float64)
    per_tile_counts = hidden.sum(axis=(2, 3)).astype(np.float64)  # [T, C]
    with np.errstate(invalid="ignore", divide="ignore"):
        ssim = np.nansum(np.stack(ssims) * per_tile_counts, axis=0) / counts
        tile_mean = np.where(hidden, truth, 0.0).sum(axis=(2, 3)) / per_tile_counts
        dev = np.where(hidden, truth - tile_mean[:, :, None, None], 0.0)
        err = np.where(hidden, truth - pred, 0.0)
        sst = (dev * dev).sum(axis=(0, 2, 3))
        r2_pooled = 1.0 - (err * err).sum(axis=(0, 2, 3)) / sst
    r2_pooled[~(sst > 0)] = np.nan
    ssim[np.isnan(np.stack(ssims)).any(axis=0) | (counts == 0)] = np.nan
    scores = {
        "rmse": rmse(truth, pred, hidden),
        "r2": r2_pooled,
        "psnr": psnr(truth, pred, hidden, data_range=data_range),
        "ssim": ssim,
    }
    return _metrics_entry(scores)


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
    first method and before anything is written.
    """
    options = options or EvalOptions()
    say = progress or (lambda msg: log.info("%s", msg))
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
    specs = [parse_method(s) for s in (options.methods or DEFAULT_METHODS)]
    labels = [s.spec for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise InputError(f"--method {dupes[0]!r} given twice")
    methods = [build_method(s, steps=options.steps, check_every=options.check_every, device=options.device)
               for s in specs]

    truth, donor = _read_dates(truth_path, donor_path)
    bands = truth.scene.data.shape[0]
    if max(options.rgb) >= bands or min(options.rgb) < 0:
        raise InputError(f"--rgb {','.join(str(i + 1) for i in options.rgb)}: {truth_path} has {bands} bands")
    height, width = truth.scene.grid.shape
    size = options.tile_size
    if size > height or size > width:
        raise InputError(
            f"{truth_path}: a {size}-pixel tile does not fit its {width}x{height} raster; pass a smaller --tile-size"
        )
    directions = [_Direction("forward", truth, donor)]
    if options.both_directions:
        directions.append(_Direction("reverse", donor, truth))
    pairs = [(d.truth.valid, d.donor.valid) for d in directions]

    selection: dict[str, Any]
    if options.tiles:
        choices = []
        for r, c in options.tiles:
            if r + size > height or c + size > width:
                raise InputError(
                    f"--tiles {r},{c}: a {size}-pixel tile there leaves {truth_path}'s {width}x{height} raster "
                    f"(rows 0-{height - size} and columns 0-{width - size} fit)"
                )
            stats = tuple(tile_stats(tv, dv, r, c, size) for tv, dv in pairs)
            choices.append(TileChoice(r, c, size, stats, "given with --tiles"))
        selection = {"mode": "given"}
    else:
        choices, n_eligible, n_cand = pick_tiles(pairs, size, options.n_tiles)
        if not choices:
            raise InputError(
                f"{truth_path} / {donor_path}: no {size}-pixel tile has {HIDDEN_RANGE[0]:.0%}-{HIDDEN_RANGE[1]:.0%} "
                f"hidden pixels and at most {MAX_TRUTH_NODATA:.0%} truth nodata in every direction; "
                "pass --tiles R,C or another --tile-size"
            )
        selection = {
            "mode": "auto",
            "candidates": n_cand,
            "eligible": n_eligible,
            "rule": (
                f"candidates: {size}-px windows at {max(1, size // 2)}-px steps; eligible: hidden fraction "
                f"{HIDDEN_RANGE[0]:.0%}-{HIDDEN_RANGE[1]:.0%} and truth nodata <= {MAX_TRUTH_NODATA:.0%} in "
                f"every direction; eligible windows ordered along the longer axis and cut into "
                f"{options.n_tiles} groups, the best of each group taken (least truth nodata, then "
                "hidden fraction nearest 20 %), no two picks overlapping"
            ),
        }

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    say(f"tiles: {', '.join(f'{t.row},{t.col}' for t in choices)} ({size} px, {selection['mode']})")

    report: dict[str, Any] = {
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
            "tile_size": size,
            "n_tiles": options.n_tiles,
            "both_directions": options.both_directions,
            "steps": options.steps,
            "seed": options.seed,
            "check_every": options.check_every,
            "data_range": options.data_range,
            "rgb": [i + 1 for i in options.rgb],
            "device": options.device,
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
            {"label": m.label, "engine": m.spec.engine, "config": m.config, "convergence_monitored": m.monitored}
            for m in methods
        ],
        "directions": [],
        "files": {},
    }

    files: dict[str, str] = {}
    for d in directions:
        tiles_out = []
        per_method: dict[str, dict[str, list]] = {m.label: {"cases": [], "preds": [], "ssim": [], "runs": []}
                                                  for m in [*methods]}
        floor: dict[str, list] = {"cases": [], "preds": [], "ssim": []}
        for t in choices:
            win = (slice(None), slice(t.row, t.row + size), slice(t.col, t.col + size))
            tv = d.truth.valid[win]
            case = transplant_gaps(d.truth.scene.data[win], tv, d.donor.valid[win])
            n_hidden = case.hidden.reshape(bands, -1).sum(axis=1)
            tile_doc: dict[str, Any] = {
                "row": t.row,
                "col": t.col,
                "hidden_pixels": n_hidden,
                "hidden_fraction": float(case.hidden.any(axis=0).mean()),
                "observed_fraction": float(case.observed.all(axis=0).mean()),
                "truth_nodata_fraction": float((~tv).any(axis=0).mean()),
                "seed": _tile_seed(options.seed, t.row, t.col),
                "methods": {},
            }
            if not n_hidden.any() or not case.observed.any():
                tile_doc["skipped"] = "no hidden pixels" if not n_hidden.any() else "no observed pixels"
                say(f"{d.key} tile {t.row},{t.col}: skipped ({tile_doc['skipped']})")
                tiles_out.append(tile_doc)
                continue
            preds: list[tuple[str, NDArray, dict]] = []
            for m in methods:
                run = _run_method(m, case, tile_doc["seed"])
                scores = score_prediction(case, run["pred"], data_range=options.data_range, truth_valid=tv)
                entry = {**_metrics_entry(scores), **{k: v for k, v in run.items() if k != "pred"}}
                tile_doc["methods"][m.label] = entry
                bucket = per_method[m.label]
                bucket["cases"].append(case)
                bucket["preds"].append(run["pred"])
                bucket["ssim"].append(scores["ssim"])
                bucket["runs"].append(run)
                preds.append((m.label, run["pred"], entry))
                say(
                    f"{d.key} tile {t.row},{t.col}: {m.label}: mean r2 {entry['mean_r2']:.3f}, "
                    f"{run['steps']} steps, {run['cpu_seconds']:.1f} CPU s, {run['wall_seconds']:.1f} s"
                )
            fp = mean_fill(case.values, case.observed)
            fscores = score_prediction(case, fp, data_range=options.data_range, truth_valid=tv)
            tile_doc["methods"][FLOOR] = _metrics_entry(fscores)
            floor["cases"].append(case)
            floor["preds"].append(fp)
            floor["ssim"].append(fscores["ssim"])

            stem = f"{d.key}_r{t.row}_c{t.col}"
            ql = out / f"quicklook_{stem}.png"
            _write_quicklook(ql, case, tv, preds, rgb=options.rgb, title=f"{d.label} - tile row {t.row}, col {t.col}")
            files[f"quicklook_{stem}"] = ql.name
            tile_doc["quicklook"] = ql.name
            dips = [m for m in methods if m.is_dip]
            if dips:
                cv = out / f"convergence_{stem}.png"
                _write_convergence(cv, {m.label: tile_doc["methods"][m.label] for m in dips},
                                   title=f"{d.label} - tile row {t.row}, col {t.col}")
                files[f"convergence_{stem}"] = cv.name
                tile_doc["convergence_plot"] = cv.name
            tiles_out.append(tile_doc)

        summary: dict[str, Any] = {}
        for m in methods:
            b = per_method[m.label]
            if not b["cases"]:
                continue
            runs = b["runs"]
            summary[m.label] = {
                **_pooled(b["cases"], b["preds"], b["ssim"], options.data_range),
                "steps_per_patch": float(np.mean([r["steps"] for r in runs])),
                "cpu_seconds_per_patch": float(np.mean([r["cpu_seconds"] for r in runs])),
                "wall_seconds_per_patch": float(np.mean([r["wall_seconds"] for r in runs])),
                "patches": len(runs),
            }
        if floor["cases"]:
            summary[FLOOR] = {**_pooled(floor["cases"], floor["preds"], floor["ssim"], options.data_range),
                              "patches": len(floor["cases"])}
        report["directions"].append({
            "key": d.key,
            "label": d.label,
            "truth": d.truth.path,
            "donor": d.donor.path,
            "hidden_pixels": np.sum([t_["hidden_pixels"] for t_ in tiles_out if "skipped" not in t_], axis=0)
            if any("skipped" not in t_ for t_ in tiles_out) else [0] * bands,
            "summary": summary,
            "tiles": tiles_out,
        })

    report["files"] = {"report_md": "report.md", "report_json": "report.json", **files}
    doc = _jsonable(report)
    from dipfill.pipeline.write import staged

    with staged(out / "report.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    with staged(out / "report.md") as tmp:
        tmp.write_text(render_markdown(doc))
    return doc


# ---------------------------------------------------------------------------------------
# Pictures


def _rgb_panel(
    values: NDArray, show: NDArray[np.bool_], lohi: list[tuple[float, float]], rgb: Sequence[int]
) -> NDArray[np.float64]:
    """``[H, W, 3]`` in [0, 1]: bands ``rgb`` stretched by ``lohi``; grey where not ``show``."""
    img = np.empty(values.shape[1:] + (3,), dtype=np.float64)
    for k, (band, (lo, hi)) in enumerate(zip(rgb, lohi)):
        scale = 1.0 / (hi - lo) if hi > lo else 0.0
        img[..., k] = np.clip((np.asarray(values[band], dtype=np.float64) - lo) * scale, 0, 1)
    img[~show] = (0.25, 0.25, 0.25)
    return img


def _write_quicklook(
    path: Path,
    case: Transplant,
    truth_valid: NDArray[np.bool_],
    preds: list[tuple[str, NDArray, dict]],
    *,
    rgb: Sequence[int],
    title: str,
) -> None:
    """Truth | masked | each method, one stretch (2-98 % of the truth's valid pixels) for all."""
    from matplotlib.figure import Figure

    from dipfill.pipeline.write import staged

    lohi = []
    for b in rgb:
        sel = np.asarray(case.truth[b], dtype=np.float64)[truth_valid[b]]
        lohi.append(tuple(np.percentile(sel, QUICKLOOK_PERCENTILES)) if sel.size else (0.0, 1.0))
    known = truth_valid[list(rgb)].all(axis=0)
    hidden = case.hidden[list(rgb)].any(axis=0)
    panels = [("truth", _rgb_panel(case.truth, known, lohi, rgb))]
    masked = _rgb_panel(case.truth, known, lohi, rgb)
    masked[hidden] = (1.0, 0.0, 1.0)
    panels.append((f"masked: {hidden.mean():.1%} hidden (magenta)", masked))
    for label, pred, entry in preds:
        full = composite(case, pred)
        img = _rgb_panel(full, known, lohi, rgb)
        img[known & ~np.isfinite(full[list(rgb)]).all(axis=0)] = (1.0, 0.0, 1.0)  # left unfilled
        mr2 = entry.get("mean_r2")
        panels.append((f"{label}\nmean r² {mr2:.3f}" if mr2 is not None and np.isfinite(mr2) else label, img))

    h, w = case.truth.shape[1:]
    px = max(256, h)  # displayed panel size in pixels
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    head, title_px, gap = 46, 30, 6
    fig_w = cols * px + (cols + 1) * gap
    fig_h = head + rows * (px * h / max(h, w) + title_px + gap)
    dpi = 100
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    fig.text(0.5, 1 - 6 / fig_h, title, ha="center", va="top", fontsize=10)
    fig.text(
        0.5, 1 - 24 / fig_h,
        f"RGB = bands {','.join(str(b + 1) for b in rgb)}, one stretch (2-98 % of the truth's valid pixels); "
        "magenta = hidden (masked panel) or left unfilled; grey = no truth (not scored)",
        ha="center", va="top", fontsize=7,
    )
    ph = px * h / max(h, w)
    for i, (label, img) in enumerate(panels):
        r, c = divmod(i, cols)
        left = gap + c * (px + gap)
        top = head + r * (ph + title_px + gap) + title_px
        ax = fig.add_axes((left / fig_w, 1 - (top + ph) / fig_h, px / fig_w, ph / fig_h))
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    with staged(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def _write_convergence(path: Path, entries: dict[str, dict[str, Any]], *, title: str) -> None:
    """Held-out RMSE and true hidden-pixel RMSE against step, one line per dip method."""
    from matplotlib.figure import Figure

    from dipfill.pipeline.write import staged

    fig = Figure(figsize=(11, 4.2), dpi=100)
    ax_h, ax_t = fig.subplots(1, 2)
    any_holdout = False
    for i, (label, e) in enumerate(entries.items()):
        color = f"C{i}"
        curve = e.get("convergence") or []
        steps = [p["step"] for p in curve]
        hold = np.array([np.nan if p["holdout_rmse"] is None else p["holdout_rmse"] for p in curve], dtype=float)
        true = np.array([np.nan if p["hidden_rmse"] is None else p["hidden_rmse"] for p in curve], dtype=float)
        if np.isfinite(hold).any():
            any_holdout = True
            ax_h.plot(steps, hold, color=color, marker=".", label=label)
        if curve:
            ax_t.plot(steps, true, color=color, marker=".", label=label)
        final_step = (e.get("extra") or {}).get("best_step") or e.get("steps")
        final_rmse = np.nanmean(np.asarray([np.nan if v is None else v for v in e["rmse"]], dtype=float))
        ax_t.plot([final_step], [final_rmse], marker="o", color=color, linestyle="none",
                  label=None if curve else f"{label} (final only)")
    ax_h.set_title("held-out RMSE (engine's held-out observed pixels, normalised units)", fontsize=9)
    ax_t.set_title("true RMSE on the hidden pixels (mean over bands, data units)", fontsize=9)
    if not any_holdout:
        ax_h.text(0.5, 0.5, "no held-out score reported\n(stopping without held-out pixels,\n"
                  "or an engine without monitor support)", ha="center", va="center", transform=ax_h.transAxes,
                  fontsize=9, color="0.4")
    for ax in (ax_h, ax_t):
        ax.set_xlabel("Adam step")
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=8, title="dot = returned result", title_fontsize=8)
    if any_holdout:
        ax_h.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with staged(path) as tmp:
        fig.savefig(tmp, format="png")


# ---------------------------------------------------------------------------------------
# Markdown


def _f(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, fmt)


def render_markdown(doc: dict[str, Any]) -> str:
    """``report.md`` from the JSON report (so both always carry the same numbers)."""
    lines: list[str] = []
    add = lines.append
    opts = doc["options"]
    truth, donor = doc["inputs"]["truth"], doc["inputs"]["donor"]
    add("# dipfill eval: fill quality on real gaps with known truth\n")
    add(f"dipfill {doc['dipfill_version']}. The donor date's real gaps (its nodata) are laid over the truth "
        "date's valid pixels; methods see the rest and are scored on the *hidden* pixels only "
        "(valid on the truth date, missing on the donor date).\n")
    add("## Inputs\n")
    add("| role | file | date | size | bands | dtype | nodata | nodata fraction |")
    add("|---|---|---|---|---|---|---|---|")
    for role, i in (("truth date", truth), ("donor date", donor)):
        add(f"| {role} | `{i['path']}` | {i['date']} | {i['width']}×{i['height']} | {', '.join(i['bands'])} | "
            f"{i['dtype']} | {i['nodata']} | {i['nodata_fraction']:.1%} |")
    add("")
    add("Directions: " + "; ".join(f"**{d['key']}**: {d['label']}" for d in doc["directions"]) + ".\n")
    add(f"Options: tile size {opts['tile_size']}, seed {opts['seed']}, dip steps override "
        f"{opts['steps'] if opts['steps'] is not None else 'none (each preset or spec decides)'}, "
        f"convergence checked every {opts['check_every']} steps, PSNR peak {opts['data_range']:g}, "
        f"SSIM: {opts['ssim']}.\n")

    add("## Tiles\n")
    sel = doc["tile_selection"]
    if sel["mode"] == "auto":
        add(f"Chosen automatically from {sel['candidates']} candidate windows, {sel['eligible']} eligible. "
            f"Rule: {sel['rule']}.\n")
    else:
        add("Given with `--tiles`.\n")
    keys = [d["key"] for d in doc["directions"]]
    add("| tile (row, col) | " + " | ".join(f"{k}: hidden / truth nodata / observed" for k in keys) + " | why |")
    add("|---|" + "---|" * len(keys) + "---|")
    for t in doc["tiles"]:
        cells = [f"{t['stats'][k]['hidden']:.1%} / {t['stats'][k]['truth_nodata']:.1%} / {t['stats'][k]['observed']:.1%}"
                 for k in keys]
        add(f"| {t['row']}, {t['col']} ({t['size']} px) | " + " | ".join(cells) + f" | {t['why']} |")
    add("")

    add("## Methods\n")
    for m in doc["methods"]:
        watched = " (convergence monitored)" if m["convergence_monitored"] else ""
        add(f"- **`{m['label']}`** — engine `{m['engine']}`{watched}: `{json.dumps(m['config'], separators=(',', ':'))}`")
    add(f"- **{FLOOR}** — each hidden pixel gets its band's observed mean in the tile: the score any "
        "filler must beat.\n")

    for d in doc["directions"]:
        add(f"## Results: {d['key']} ({d['label']})\n")
        hp = d["hidden_pixels"]
        add(f"Truth `{d['truth']}`, gaps from `{d['donor']}`. Pooled over the hidden pixels of "
            f"{sum(1 for t in d['tiles'] if 'skipped' not in t)} tile(s): {', '.join(str(n) for n in hp)} "
            "hidden pixels per band. Steps, CPU and wall seconds are means per patch (one tile = one patch).\n")
        add("| method | band | RMSE | r² | PSNR (dB) | SSIM | mean r² | steps / patch | CPU s / patch | wall s / patch |")
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        bands = truth["bands"]
        for label, s in d["summary"].items():
            for b, name in enumerate(bands):
                first = b == 0
                add(
                    f"| {f'`{label}`' if first and label != FLOOR else (label if first else '')} | {name} | "
                    f"{_f(s['rmse'][b], '.1f')} | {_f(s['r2'][b], '.3f')} | {_f(s['psnr'][b], '.2f')} | "
                    f"{_f(s['ssim'][b], '.3f')} | "
                    + (f"{_f(s['mean_r2'], '.3f')} | {_f(s.get('steps_per_patch') or None, '.0f')} | "
                       f"{_f(s.get('cpu_seconds_per_patch'), '.2f')} | {_f(s.get('wall_seconds_per_patch'), '.2f')} |"
                       if first else " | | | |")
                )
        add("")
        tiles = [t for t in d["tiles"] if "skipped" not in t]
        if len(tiles) > 1:
            add("Mean r² per tile:\n")
            add("| method | " + " | ".join(f"{t['row']}, {t['col']}" for t in tiles) + " |")
            add("|---|" + "---:|" * len(tiles))
            for label in d["summary"]:
                add(f"| {label} | " + " | ".join(_f(t["methods"][label]["mean_r2"], ".3f") for t in tiles) + " |")
            add("")
        for t in d["tiles"]:
            if "skipped" in t:
                add(f"Tile {t['row']}, {t['col']}: skipped ({t['skipped']}).\n")
                continue
            add(f"Tile {t['row']}, {t['col']}: {t['hidden_fraction']:.1%} hidden, seed {t['seed']}.\n")
            add(f"![quicklook {d['key']} {t['row']},{t['col']}]({t['quicklook']})\n")
            if "convergence_plot" in t:
                add(f"![convergence {d['key']} {t['row']},{t['col']}]({t['convergence_plot']})\n")

    add("## How to read this\n")
    add(
        "Every number is computed over the hidden pixels only: pixels the truth date observed and the donor "
        "date lacks, so the gap shapes are real and the answer is known; pixels a method was shown are never "
        "scored. **RMSE** is in the data's units (for reflectance ×10⁴, 100 = 0.01 reflectance); lower is "
        "better. **r²** is 1 − SS_res/SS_tot against the hidden truth's own mean: 1 is perfect, 0 is no "
        f"better than that mean, below 0 is worse ({FLOOR} shows what a constant per band reaches); pooled over "
        "tiles, each tile's SS_tot is taken about its own mean, so contrasts between tiles do not inflate it. "
        "**PSNR** "
        f"is 10·log10(peak²/MSE) with peak {opts['data_range']:g}. **SSIM** compares local structure in "
        "11×11 Gaussian windows around each hidden pixel, on the filled image (observed pixels copied back, "
        "as `dipfill fill` writes it) with each band stretched to [0, 1] by the truth's 1st/99th percentiles "
        "in the tile; 1 is perfect. Results pool a few tiles, so differences of a few hundredths in r² are "
        "within the spread between tiles (see the per-tile table). **CPU s** is process CPU time "
        "(all threads: with 2 torch threads it can be up to twice the wall time); DIP's cost scales with "
        "its steps, and `--steps` or a spec's `steps=` shortens every DIP run, usually at some cost in "
        "quality. The convergence plots show, per DIP method, the engine's held-out RMSE (observed pixels "
        "it withheld from its own loss: what early stopping can see) next to the true RMSE on the hidden "
        "pixels (what it cannot see): where the two curves bottom out together, held-out stopping works."
    )
    return "\n".join(lines) + "\n"
