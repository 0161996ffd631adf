"""`dipfill search --stac URL|catalog.json ...`: list the scenes a region and dates match."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dipfill.errors import InputError
from dipfill.raster.hrefs import redact_text


def register(sub: argparse._SubParsersAction) -> None:
    from dipfill.stac.search import DEFAULT_RETRIES, DEFAULT_TIMEOUT

    p = sub.add_parser(
        "search",
        help="find scenes in a STAC API or static catalog by region, dates and cloud cover",
        description="Search a STAC API (pystac-client, with retries) or walk a static catalog "
        "(catalog.json on disk or over http) with the same semantics, and print the matching "
        "scenes: id, collection, datetime, cloud cover.",
    )
    p.add_argument("--stac", required=True, metavar="URL|CATALOG",
                   help="STAC API root URL, or a static catalog: catalog.json path, directory, file:// or http URL")
    p.add_argument("--collection", action="append", default=[], metavar="ID",
                   help="collection id (repeatable, or comma-separated)")
    p.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"),
                   help="lon/lat box; items whose geometry intersects it match")
    p.add_argument("--datetime", metavar="RANGE",
                   help="2020, 2020-02, 2020-02-19, START/END (RFC 3339 or dates; '..' for open)")
    p.add_argument("--max-cloud", type=float, metavar="P", help="eo:cloud_cover <= P percent")
    p.add_argument("--filter", metavar="CQL2-JSON",
                   help="CQL2-JSON expression, inline or @FILE (sent to the API; evaluated here for static catalogs)")
    p.add_argument("--limit", type=int, metavar="N", help="at most N scenes")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds per HTTP request (default: {DEFAULT_TIMEOUT:g})")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"retries on HTTP 429/502/503/504, connection errors and timeouts (default: {DEFAULT_RETRIES})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _filter_text(value: str | None) -> str | None:
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the filter file ({exc.strerror or exc})") from None


def _cloud(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run(args: argparse.Namespace) -> int:
    from dipfill.stac.search import SceneRecord, SearchQuery, open_source

    query = SearchQuery(
        collections=[c for value in args.collection for c in value.split(",")],
        bbox=args.bbox,
        datetime=args.datetime,
        max_cloud=args.max_cloud,
        filter=_filter_text(args.filter),
        limit=args.limit,
    )
    if args.retries < 0 or args.timeout <= 0:
        raise InputError("--retries must be >= 0 and --timeout > 0")
    source = open_source(args.stac, timeout=args.timeout, retries=args.retries)
    scenes = [SceneRecord.from_item(item) for item in source.search(query)]
    if args.json:
        doc = {
            "source": source.url,
            "kind": source.kind,
            "query": query.to_dict(),
            "count": len(scenes),
            "scenes": [s.to_dict() for s in scenes],
        }
        print(redact_text(json.dumps(doc, indent=2)))  # hrefs without their secrets
        return 0
    rows = [(s.id, s.collection or "-", s.datetime or "-", _cloud(s.cloud_cover)) for s in scenes]
    header = ("id", "collection", "datetime", "cloud %")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    kind = "STAC API" if source.kind == "api" else "static catalog"
    print(f"{len(scenes)} scene{'s' if len(scenes) != 1 else ''} from {kind} {redact_text(source.url)}")
    return 0
