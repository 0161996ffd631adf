"""`dipfill report OUT`: one static HTML page for a run (map, quicklooks, fill statistics, failures)."""

from __future__ import annotations

import argparse

__all__ = ["register", "report"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write one static HTML page for a run: footprints, before/after, fill statistics, failures",
        description="Write an HTML page (no script, nothing fetched from elsewhere: readable offline) for a "
        "run of OUT: the scenes' footprints on a lon/lat map, each item's before | after quicklook, per-scene "
        "gap %%, engine and fallback pixels, steps, guides and stage timings, and the failures with their "
        "messages.",
    )
    p.add_argument("out", metavar="OUT", help="the --out directory of dipfill run")
    p.add_argument("--run", metavar="ID", help="the run to report (default: the latest)")
    p.add_argument("--html", metavar="FILE", help="where to write the page (default: OUT/report.html)")
    p.add_argument("--embed-images", action="store_true",
                   help="put the quicklooks into the page (data URIs) so it can be copied alone; "
                   "default: relative links into OUT")
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    from dipfill.pipeline.report import write_report

    path = write_report(args.out, run_id=args.run, html_path=args.html, embed_images=args.embed_images)
    print(path)
    return 0
