"""`dipfill report`: one static HTML page for a run, readable offline.

What an operator asks after a run: where the scenes lie (an inline SVG map of the items'
lon/lat footprints: no tile server, no script, no stylesheet from elsewhere), what the
fill looks like (each item's before | after quicklook, found by its asset role), how much
was filled and how (gap %, engine and fallback pixels, optimisation steps, guides, stage
timings) and what failed (the one-line messages). The page has no JavaScript at all.

Everything that comes from outside (scene ids, error messages, asset hrefs, guide ids) is
escaped with :func:`html.escape`; hrefs are URL-quoted relative links, so the page works
from the output root and from a copy of it (``--embed-images`` puts the quicklooks into
the page itself, for a page copied alone). Reads go through :mod:`~dipfill.pipeline.status`.
"""

from __future__ import annotations

import base64
import html
import math
import os
import posixpath
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from dipfill.errors import InputError
from dipfill.pipeline.progress import STAGES
from dipfill import storage
from dipfill.pipeline.status import check_root, exists, find_items, read_json, read_runs

__all__ = ["SceneReport", "scene_reports", "render_report", "write_report", "gap_stats"]

#: Asset roles that mark a picture of the scene, in order of preference (STAC best practice).
PICTURE_ROLES = ("overview", "thumbnail", "visual")
PICTURE_TYPES = ("image/png", "image/jpeg", "image/webp")
#: Colours of the states, on the map and in the table.
COLOURS = {"done": "#2e7d32", "current": "#1565c0", "failed": "#c62828", "pending": "#9e9e9e"}
MAP_WIDTH, MAP_HEIGHT = 720, 460  # the map's box, in CSS pixels


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class SceneReport:
    """One scene of the run, as the page shows it."""

    number: int
    id: str
    status: str
    message: str
    item_path: str | None  # relative to the output root
    geometry: Mapping[str, Any] | None  # GeoJSON in lon/lat: the item's, else the source bbox
    counts: Mapping[str, int]
    patches: int
    patches_fitted: int
    patches_resumed: int
    steps: dict[str, float]  # total, mean per fitted patch, by engine
    guides: tuple[str, ...]
    timings: Mapping[str, float]
    picture: Any  # the quicklook's file (Path or ObjectPath), None when the item has none


def gap_stats(counts: Mapping[str, int]) -> dict[str, float]:
    """Gap % of the footprint and how the gaps were filled, from the QA counts."""
    engine, fallback, unfilled = (int(counts.get(k, 0)) for k in ("filled", "filled_fallback", "unfilled"))
    gaps = engine + fallback + unfilled
    footprint = gaps + int(counts.get("observed", 0))
    return {"gap_percent": 100.0 * gaps / footprint if footprint else 0.0, "engine": engine, "fallback": fallback,
            "unfilled": unfilled}


def _bbox_polygon(bbox: Sequence[float] | None) -> dict[str, Any] | None:
    if not bbox or len(bbox) not in (4, 6):
        return None
    w, s, e, n = (bbox[0], bbox[1], bbox[3], bbox[4]) if len(bbox) == 6 else tuple(bbox)
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _asset_target(item_path: Any, href: str) -> Any:
    """Where an asset of the item at ``item_path`` lies: a relative href beside the item, an
    object-storage URL as it is; any other absolute href (``https://`` of a bucket,
    ``file://``, a local path written elsewhere) by its file name beside the item, which is
    where dipfill writes every product."""
    if "://" not in href and not href.startswith("/"):
        return item_path.parent / href
    if storage.is_remote(href):
        return storage.as_path(href)
    return item_path.parent / posixpath.basename(urllib.parse.urlparse(href).path)


def _asset_file(item_path: Any, item: Mapping[str, Any], roles: Iterable[str], types: Iterable[str]) -> Any:
    """The file of the item's first asset with one of ``roles`` (in that order of
    preference) and a media type in ``types``: keys change (per-band assets), roles do not."""
    assets = item.get("assets") or {}
    for role in roles:
        for asset in assets.values():
            if not isinstance(asset, dict) or role not in (asset.get("roles") or []):
                continue
            if str(asset.get("type", "")).split(";")[0].strip() not in types:
                continue
            return _asset_target(item_path, str(asset.get("href", "")))
    return None


def _steps(item_path: Any, item: Mapping[str, Any]) -> dict[str, float]:
    """Optimisation steps from the item's per-patch diagnostics (the JSON metadata asset)."""
    assets = item.get("assets") or {}
    candidates = [a for k, a in assets.items() if isinstance(a, dict) and "metadata" in (a.get("roles") or [])
                  and str(a.get("type", "")).startswith("application/json")]
    candidates.sort(key=lambda a: "patches" not in str(a.get("href", "")))
    for asset in candidates:
        try:
            records = read_json(_asset_target(item_path, str(asset["href"])))
        except (OSError, ValueError, KeyError):
            continue
        if not isinstance(records, list) or not all(isinstance(r, dict) and "steps" in r for r in records):
            continue
        steps = [int(r.get("steps") or 0) for r in records]
        engines: dict[str, float] = {}
        for r in records:
            engines[str(r.get("engine"))] = engines.get(str(r.get("engine")), 0) + 1
        return {"total": float(sum(steps)), "mean": float(sum(steps)) / max(len(steps), 1),
                **{f"patches:{k}": v for k, v in sorted(engines.items())}}
    return {}


def _guide_ids(item: Mapping[str, Any] | None, scene: Mapping[str, Any]) -> tuple[str, ...]:
    records = ((item or {}).get("properties") or {}).get("dipfill:guides") or (scene.get("guides") or {}).get(
        "guides") or []
    ids = []
    for g in records if isinstance(records, list) else []:
        if isinstance(g, dict):
            ids.append(str(g.get("id") or g.get("href") or g.get("source") or "?"))
        else:
            ids.append(str(g))
    return tuple(ids)


def select_run(out: Any, run_id: str | None) -> dict[str, Any]:
    docs, _ = read_runs(out)
    if not docs:
        raise InputError(f"{out} is not a dipfill output root: no runs/<run-id>.json; give the --out of a dipfill run")
    if run_id is None:
        return docs[-1]
    for doc in docs:
        if doc["run_id"] == run_id:
            return doc
    known = ", ".join(d["run_id"] for d in docs[-5:])
    raise InputError(f"--run {run_id}: no such run under {out}/runs (latest: {known})")


def scene_reports(out: Any, doc: Mapping[str, Any]) -> list[SceneReport]:
    """The run's scenes with what their items (if any) say about them."""
    items = find_items(out)
    rows = []
    for n, scene in enumerate(s for s in doc.get("scenes", []) if isinstance(s, dict)):
        sid = str(scene.get("id"))
        rel, item = items.get(sid, (None, None))
        counts = scene.get("counts") or ((item or {}).get("properties") or {}).get("dipfill:counts") or {}
        item_path = out / rel if rel else None
        rows.append(SceneReport(
            number=n + 1, id=sid, status=str(scene.get("status")), message=str(scene.get("message") or ""),
            item_path=rel, geometry=(item or {}).get("geometry") or _bbox_polygon(scene.get("bbox")),
            counts=counts if isinstance(counts, dict) else {},
            patches=int(scene.get("patches") or 0), patches_fitted=int(scene.get("patches_fitted") or 0),
            patches_resumed=int(scene.get("patches_resumed") or 0),
            steps=_steps(item_path, item) if item_path and item else {},
            guides=_guide_ids(item, scene),
            timings=scene.get("timings") or {},
            picture=_asset_file(item_path, item, PICTURE_ROLES, PICTURE_TYPES) if item_path and item else None,
        ))
    return rows


# ------------------------------------------------------------------ the map
def _rings(geometry: Mapping[str, Any] | None) -> list[list[tuple[float, float]]]:
    """The outer and inner rings of a (Multi)Polygon as (lon, lat) lists."""
    if not isinstance(geometry, Mapping):
        return []
    kind, coords = geometry.get("type"), geometry.get("coordinates") or []
    polygons = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else []
    rings = []
    for polygon in polygons:
        for ring in polygon:
            try:
                pts = [(float(p[0]), float(p[1])) for p in ring]
            except (TypeError, ValueError, IndexError):
                continue
            if all(math.isfinite(x) and math.isfinite(y) for x, y in pts) and len(pts) >= 3:
                rings.append(pts)
    return rings


def _nice_step(span: float) -> float:
    raw = span / 4 if span > 0 else 1.0
    base = 10 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


def render_map(rows: Sequence[SceneReport]) -> str:
    """An SVG map of the footprints: equirectangular, x scaled by cos(mid latitude) so that
    shapes look right, a labelled graticule, each footprint coloured by state and linked
    to its row."""
    shapes = [(r, _rings(r.geometry)) for r in rows]
    points = [p for _, rings in shapes for ring in rings for p in ring]
    if not points:
        return '<p class="muted">No footprints to draw: no scene has an item geometry or a bbox.</p>'
    lons, lats = [p[0] for p in points], [p[1] for p in points]
    w, e, s, n = min(lons), max(lons), min(lats), max(lats)
    pad = max(e - w, n - s, 1e-6) * 0.08
    w, e, s, n = w - pad, e + pad, s - pad, n + pad
    kx = max(math.cos(math.radians((s + n) / 2)), 0.05)
    scale = min(MAP_WIDTH / ((e - w) * kx), MAP_HEIGHT / (n - s))  # fits the box, shapes kept
    width, height = (e - w) * kx * scale, (n - s) * scale

    def xy(lon: float, lat: float) -> tuple[float, float]:
        return (lon - w) * kx * scale, (n - lat) * scale

    parts = [f'<svg id="footprints" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="scene footprints (lon/lat)">',
             f'<rect width="{width:.0f}" height="{height:.0f}" fill="#f7f9fb" stroke="#ccc"/>']
    step = _nice_step(max(e - w, n - s))
    digits = max(0, -math.floor(math.log10(step)))  # steps are 1, 2 or 5 times a power of ten
    for k in range(math.ceil(w / step), math.floor(e / step) + 1):
        x = xy(k * step, n)[0]
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height:.0f}"/>'
                     f'<text class="tick" x="{x + 2:.1f}" y="{height - 4:.0f}">{k * step:.{digits}f}°</text>')
    for k in range(math.ceil(s / step), math.floor(n / step) + 1):
        y = xy(w, k * step)[1]
        parts.append(f'<line class="grid" x1="0" y1="{y:.1f}" x2="{width:.0f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="2" y="{y - 2:.1f}">{k * step:.{digits}f}°</text>')
    labels: dict[tuple[int, int], list[int]] = {}  # scenes of one footprint (other dates) share a label
    for row, rings in shapes:
        if not rings:
            continue
        colour = COLOURS.get(row.status, "#555")
        d = " ".join("M" + " L".join("%.1f,%.1f" % xy(*p) for p in ring) + " Z" for ring in rings)
        dash = ' stroke-dasharray="4 3"' if row.item_path is None else ""
        parts.append(f'<a href="#scene-{row.number}"><path class="footprint" data-scene="{esc(row.id)}" d="{d}" '
                     f'fill="{colour}" fill-opacity="0.2" fill-rule="evenodd" stroke="{colour}" stroke-width="1.5"'
                     f'{dash}><title>#{row.number} {esc(row.id)}: {esc(row.status)}</title></path></a>')
        ring = rings[0]
        cx, cy = xy(sum(p[0] for p in ring) / len(ring), sum(p[1] for p in ring) / len(ring))
        labels.setdefault((round(cx / 12), round(cy / 12)), []).append(row.number)
    for (cx, cy), numbers in labels.items():
        parts.append(f'<text class="label" x="{cx * 12}" y="{cy * 12}">{", ".join(map(str, numbers))}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------ the page
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ddd;padding:4px 6px;vertical-align:top}
th{background:#f2f4f7;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{font-weight:600}.muted{color:#777}.failure{color:#b71c1c;overflow-wrap:anywhere}.small{font-size:12px}
.nowrap{white-space:nowrap}code{font-size:12px;overflow-wrap:anywhere}td.id{min-width:15em}
.grid{stroke:#dde3ea;stroke-width:1}.tick{font-size:10px;fill:#789}.label{font-size:12px;font-weight:700;
fill:#222;text-anchor:middle;dominant-baseline:middle}figure{margin:1em 0}img{max-width:100%;height:auto;
border:1px solid #ccc}figcaption{color:#555}
"""


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _scene_row(r: SceneReport) -> str:
    g = gap_stats(r.counts)
    colour = COLOURS.get(r.status, "#555")
    steps = (f"{_num(r.steps['total'])} ({_num(r.steps['mean'], 1)}/patch)" if r.steps else "")
    engines = ", ".join(f"{esc(k.split(':', 1)[1])} {int(v)}" for k, v in r.steps.items() if k.startswith("patches:"))
    timings = " · ".join(f'<span class="nowrap">{esc(k)} {float(v):.2f}</span>' for k, v in sorted(
        r.timings.items(), key=lambda kv: STAGES.index(kv[0]) if kv[0] in STAGES else len(STAGES)))
    has_counts = bool(r.counts)
    cells = [
        f'<td class="num">{r.number}</td>',
        f'<td class="id"><code>{esc(r.id)}</code></td>',
        f'<td class="state" style="color:{colour}">{esc(r.status)}</td>',
        f'<td class="num">{g["gap_percent"]:.1f}</td>' if has_counts else "<td></td>",
        f'<td class="num">{_num(g["engine"])}</td>' if has_counts else "<td></td>",
        f'<td class="num">{_num(g["fallback"])}</td>' if has_counts else "<td></td>",
        f'<td class="num">{_num(g["unfilled"])}</td>' if has_counts else "<td></td>",
        (f'<td class="num">{r.patches_fitted}/{r.patches}' + (f' ({r.patches_resumed} resumed)' if r.patches_resumed
                                                              else "") + "</td>") if r.patches else "<td></td>",
        f"<td>{steps}" + (f"<br><span class='muted'>{engines}</span>" if engines else "") + "</td>",
        "<td>" + ("<br>".join(f"<code>{esc(x)}</code>" for x in r.guides) or '<span class="muted">none</span>')
        + "</td>",
        f'<td class="muted small">{timings}</td>',
    ]
    row = f'<tr id="scene-{r.number}" class="scene" data-scene="{esc(r.id)}">{"".join(cells)}</tr>'
    if r.message and r.status == "failed":  # its own full-width row: messages are long and hold paths
        row += f'<tr class="message"><td></td><td colspan="{len(cells) - 1}" class="failure">{esc(r.message)}</td></tr>'
    return row


def _link(target: Any, page_dir: Any) -> str | None:
    """A relative URL from the page's directory to ``target``; None when there is none
    (a page on this disk for an output root on object storage)."""
    if isinstance(target, storage.ObjectPath) != isinstance(page_dir, storage.ObjectPath):
        return None
    if isinstance(target, storage.ObjectPath):
        if target.root != page_dir.root:
            return None
        rel = posixpath.relpath(target.key or ".", page_dir.key or ".")
    else:
        rel = Path(os.path.relpath(target, page_dir)).as_posix()
    return urllib.parse.quote(rel)


def _picture(r: SceneReport, page_dir: Any, embed: bool) -> str:
    if r.picture is None:
        return ""
    if not exists(r.picture):
        return (f'<p class="muted">#{r.number} <code>{esc(r.id)}</code>: quicklook '
                f'<code>{esc(r.picture.name)}</code> is missing</p>')
    src = None if embed else _link(r.picture, page_dir)
    if src is None:  # asked for, or no relative link reaches it: the picture goes into the page
        mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}.get(r.picture.suffix.lower(),
                                                                                       "image/png")
        src = f"data:{mime};base64," + base64.b64encode(storage.read_bytes(r.picture)).decode("ascii")
    return (f'<figure id="quicklook-{r.number}"><img class="quicklook" src="{esc(src)}" '
            f'alt="before | after of {esc(r.id)}" loading="lazy">'
            f'<figcaption>#{r.number} <code>{esc(r.id)}</code>: before | after (gaps magenta)</figcaption></figure>')


def render_report(doc: Mapping[str, Any], rows: Sequence[SceneReport], page_dir: Any,
                  *, embed_images: bool = False) -> str:
    """The page's HTML (a string): header, map, scene table, quicklooks, failures."""
    request = doc.get("request") or {}
    options = request.get("options") or {}
    counts = doc.get("counts") or {}
    failed = [r for r in rows if r.status == "failed"]
    summary = ", ".join(f"{int(v)} {esc(k)}" for k, v in counts.items() if v) or "no scenes"
    facts = [("run", doc.get("run_id")), ("state", doc.get("state", "finished")), ("started", doc.get("started", "")),
             ("seconds", doc.get("seconds")), ("scenes", summary), ("source", request.get("stac")),
             ("engine", f"{options.get('engine')} (fallback {options.get('fallback')})"),
             ("patch / overlap", f"{options.get('patch')} / {options.get('overlap')} px"),
             ("config hash", str(doc.get("config_hash", ""))[:16]), ("dipfill", doc.get("dipfill"))]
    if doc.get("error"):
        facts.append(("stopped", doc["error"]))
    header = "".join(f"<tr><th>{esc(k)}</th><td>{v if k == 'scenes' else esc(v)}</td></tr>" for k, v in facts)
    table = "".join(_scene_row(r) for r in rows)
    pictures = "".join(_picture(r, page_dir, embed_images) for r in rows) or '<p class="muted">No quicklooks.</p>'
    failures = ("<ul id='failures'>" + "".join(
        f'<li><a href="#scene-{r.number}"><code>{esc(r.id)}</code></a>: <span class="failure">{esc(r.message)}'
        "</span></li>" for r in failed) + "</ul>") if failed else '<p id="failures" class="muted">None.</p>'
    title = f"dipfill run {doc.get('run_id')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{_CSS}</style></head>
<body><h1>{esc(title)}</h1>
<table id="run">{header}</table>
<h2>Footprints</h2>
<p class="muted">Lon/lat; solid outline: the output item's footprint, dashed: the source item's bbox (no output).
Click a footprint for its row.</p>
{render_map(rows)}
<h2>Scenes</h2>
<table id="scenes"><thead><tr><th>#</th><th>scene</th><th>state</th><th>gap %</th><th>engine px</th>
<th>fallback px</th><th>unfilled px</th><th>patches fitted</th><th>steps</th><th>guides</th>
<th>stage seconds</th></tr></thead><tbody>{table}</tbody></table>
<h2>Failures</h2>
{failures}
<h2>Before | after</h2>
{pictures}
<p class="muted">Written by dipfill report from {esc(doc.get('_record', 'the run record'))}.</p>
</body></html>
"""


def write_report(out: str | os.PathLike[str], *, run_id: str | None = None,
                 html_path: str | os.PathLike[str] | None = None, embed_images: bool = False) -> Any:
    """Write the report of run ``run_id`` (default: the latest) of the output root ``out``
    (a directory or an object-storage URL) to ``html_path`` (default ``OUT/report.html``),
    atomically; returns where. A page on this disk for a root on object storage gets its
    quicklooks embedded (no relative link reaches them)."""
    root = check_root(out)
    doc = select_run(root, run_id)
    target = storage.as_path(html_path) if html_path is not None else root / "report.html"
    if not isinstance(target, storage.ObjectPath):
        if target.is_dir():
            raise InputError(f"--html {target} is a directory; give a file name such as {target / 'report.html'}")
        if not target.parent.is_dir():
            raise InputError(f"--html {target}: {target.parent} does not exist")
        page_dir: Any = target.resolve().parent
    else:
        page_dir = target.parent
    rows = scene_reports(root, doc)
    page = render_report(doc, rows, page_dir, embed_images=embed_images)
    with storage.staged(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
