"""The written report of ``dipfill eval``: ``report.json`` and ``report.md`` from one document.

The experiment (:mod:`dipfill.eval.experiments`) builds one JSON-able dict; this module
turns values into plain JSON (:func:`jsonable`), writes ``report.json`` and renders
``report.md`` from the *same* document (:func:`render_markdown`), so both files always
carry the same numbers. Text only: the pictures are drawn by :mod:`dipfill.eval.plots`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FLOOR", "jsonable", "render_markdown", "write_report"]

FLOOR = "mean fill (floor)"


def jsonable(x: Any) -> Any:
    """Plain JSON values: arrays and tuples as lists, NaN/inf as null."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


def write_report(out_dir: str | os.PathLike[str], doc: dict[str, Any]) -> dict[str, Any]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``, each atomically; returns the JSON document."""
    from dipfill.storage import staged

    out = Path(out_dir)
    doc = jsonable(doc)
    with staged(out / "report.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    with staged(out / "report.md") as tmp:
        tmp.write_text(render_markdown(doc))
    return doc


def _f(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, fmt)


def render_markdown(doc: dict[str, Any]) -> str:
    """``report.md`` from the JSON report (so both always carry the same numbers)."""
    lines = [
        *_md_inputs(doc),
        *_md_tiles(doc),
        *_md_methods(doc),
        *(line for d in doc["directions"] for line in _md_results(d, doc["inputs"]["truth"]["bands"])),
        *_md_how_to_read(doc["options"]),
    ]
    return "\n".join(lines) + "\n"


def _md_inputs(doc: dict[str, Any]) -> list[str]:
    """Title, the two input files, the directions and the options."""
    opts = doc["options"]
    lines = [
        "# dipfill eval: fill quality on real gaps with known truth\n",
        f"dipfill {doc['dipfill_version']}. The donor date's real gaps (its nodata) are laid over the truth "
        "date's valid pixels; methods see the rest and are scored on the *hidden* pixels only "
        "(valid on the truth date, missing on the donor date).\n",
        "## Inputs\n",
        "| role | file | date | size | bands | dtype | nodata | nodata fraction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for role, i in (("truth date", doc["inputs"]["truth"]), ("donor date", doc["inputs"]["donor"])):
        lines.append(
            f"| {role} | `{i['path']}` | {i['date']} | {i['width']}×{i['height']} | {', '.join(i['bands'])} | "
            f"{i['dtype']} | {i['nodata']} | {i['nodata_fraction']:.1%} |"
        )
    lines += [
        "",
        "Directions: " + "; ".join(f"**{d['key']}**: {d['label']}" for d in doc["directions"]) + ".\n",
        f"Options: tile size {opts['tile_size']}, seed {opts['seed']}, dip steps override "
        f"{opts['steps'] if opts['steps'] is not None else 'none (each preset or spec decides)'}, "
        f"convergence checked every {opts['check_every']} steps, PSNR peak {opts['data_range']:g}, "
        f"SSIM: {opts['ssim']}.\n",
    ]
    guides = doc["inputs"].get("guides") or []
    if guides:
        lines.append("Guides (rank order; read onto the truth grid, resampling "
                     f"{opts.get('guide_resampling', 'bilinear')}; given only to methods that take guides): "
                     + "; ".join(f"`{g['href']}` ({g['datetime'] or 'date unknown'}, bands "
                                 f"{', '.join(map(str, g['bands']))})" for g in guides) + ".\n")
    if opts.get("shift_mask"):
        lines.append(f"The donor's gap mask is shifted down {opts['shift_mask']} rows before it is laid over the "
                     "truth (`--shift-mask`).\n")
    if "plots_skipped" in doc:
        lines.append(f"No quicklooks or convergence plots: {doc['plots_skipped']}.\n")
    return lines


def _md_tiles(doc: dict[str, Any]) -> list[str]:
    """How the tiles were chosen, and each tile's fractions per direction."""
    sel = doc["tile_selection"]
    lines = ["## Tiles\n"]
    if sel["mode"] == "auto":
        lines.append(f"Chosen automatically from {sel['candidates']} candidate windows, {sel['eligible']} eligible. "
                     f"Rule: {sel['rule']}.\n")
    else:
        lines.append("Given with `--tiles`.\n")
    keys = [d["key"] for d in doc["directions"]]
    lines.append("| tile (row, col) | " + " | ".join(f"{k}: hidden / truth nodata / observed" for k in keys)
                 + " | why |")
    lines.append("|---|" + "---|" * len(keys) + "---|")
    for t in doc["tiles"]:
        cells = [f"{st['hidden']:.1%} / {st['truth_nodata']:.1%} / {st['observed']:.1%}"
                 for st in (t["stats"][k] for k in keys)]
        lines.append(f"| {t['row']}, {t['col']} ({t['size']} px) | " + " | ".join(cells) + f" | {t['why']} |")
    lines.append("")
    return lines


def _md_methods(doc: dict[str, Any]) -> list[str]:
    """Each method's full configuration, and the floor."""
    lines = ["## Methods\n"]
    for m in doc["methods"]:
        watched = " (convergence monitored)" if m["convergence_monitored"] else ""
        watched += " (takes guides)" if m.get("uses_guides") else ""
        config = json.dumps(m["config"], separators=(",", ":"))
        lines.append(f"- **`{m['label']}`** — engine `{m['engine']}`{watched}: `{config}`")
    lines.append(f"- **{FLOOR}** — each hidden pixel gets its band's observed mean in the tile: the score any "
                 "filler must beat.\n")
    return lines


def _md_results(d: dict[str, Any], bands: list[str]) -> list[str]:
    """One direction: the pooled table per band, mean r² per tile, and each tile's pictures."""
    tiles = [t for t in d["tiles"] if "skipped" not in t]
    lines = [
        f"## Results: {d['key']} ({d['label']})\n",
        f"Truth `{d['truth']}`, gaps from `{d['donor']}`. Pooled over the hidden pixels of "
        f"{len(tiles)} tile(s): {', '.join(str(n) for n in d['hidden_pixels'])} "
        "hidden pixels per band. Steps, CPU and wall seconds are means per patch (one tile = one patch).\n",
        "| method | band | RMSE | r² | PSNR (dB) | SSIM | mean r² | steps / patch | CPU s / patch | wall s / patch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in d["summary"].items():
        for b, name in enumerate(bands):
            first = b == 0
            shown = (f"`{label}`" if label != FLOOR else label) if first else ""
            per_method = (
                f"{_f(s['mean_r2'], '.3f')} | {_f(s.get('steps_per_patch') or None, '.0f')} | "
                f"{_f(s.get('cpu_seconds_per_patch'), '.2f')} | {_f(s.get('wall_seconds_per_patch'), '.2f')} |"
                if first else " | | | |"
            )
            lines.append(
                f"| {shown} | {name} | {_f(s['rmse'][b], '.1f')} | {_f(s['r2'][b], '.3f')} | "
                f"{_f(s['psnr'][b], '.2f')} | {_f(s['ssim'][b], '.3f')} | " + per_method
            )
    lines.append("")
    if "guides" in d:
        lines.append(_md_guides(d))
    if len(tiles) > 1:
        lines += [
            "Mean r² per tile:\n",
            "| method | " + " | ".join(f"{t['row']}, {t['col']}" for t in tiles) + " |",
            "|---|" + "---:|" * len(tiles),
        ]
        for label in d["summary"]:
            lines.append(f"| {label} | " + " | ".join(_f(t["methods"][label]["mean_r2"], ".3f") for t in tiles) + " |")
        lines.append("")
    for t in d["tiles"]:
        if "skipped" in t:
            lines.append(f"Tile {t['row']}, {t['col']}: skipped ({t['skipped']}).\n")
            continue
        lines.append(f"Tile {t['row']}, {t['col']}: {t['hidden_fraction']:.1%} hidden, seed {t['seed']}.\n")
        if "quicklook" in t:
            lines.append(f"![quicklook {d['key']} {t['row']},{t['col']}]({t['quicklook']})\n")
        if "convergence_plot" in t:
            lines.append(f"![convergence {d['key']} {t['row']},{t['col']}]({t['convergence_plot']})\n")
    return lines


def _md_guides(d: dict[str, Any]) -> str:
    """Which guides each method used in this direction, and the share of hidden pixels they observe."""
    if not d["guides"]:
        return ("Guides: none in this direction (a guide that is the truth file is left out); the guided "
                "methods ran without one.\n")
    used = [label for label, s in d["summary"].items() if s.get("guides")]
    alone = [label for label, s in d["summary"].items() if label != FLOOR and not s.get("guides")]
    cov = d["guide_coverage"]
    text = (f"Guides: {', '.join(f'`{g}`' for g in d['guides'])} observe {_f(cov, '.1%')} of the hidden pixels "
            "(any guide band). ")
    text += f"Used by {', '.join(f'`{u}`' for u in used)}" if used else "Used by no method"
    text += f"; single-image: {', '.join(f'`{a}`' for a in alone)}.\n" if alone else ".\n"
    return text


def _md_how_to_read(opts: dict[str, Any]) -> list[str]:
    return [
        "## How to read this\n",
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
        "pixels (what it cannot see): where the two curves bottom out together, held-out stopping works.",
    ]
