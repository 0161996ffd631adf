"""`dipfill status OUT`: what is done, failed and pending under an output root (for cron and operators)."""

from __future__ import annotations

import argparse
import json

__all__ = ["register", "status"]

#: Run lines shown in the text output (all are in --json).
RECENT_RUNS = 5


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="what is done, failed and pending under a run's output root; exit 1 when a scene failed",
        description="Read OUT/runs/<run-id>.json (and the items and patch stores under OUT) and print each "
        "scene's state after the latest run that touched it: done, failed (with its one-line message) or "
        "pending (listed by a run that did not get to it, e.g. one that was killed). Exit status 0 when no "
        "scene's latest state is failed, 1 when one is.",
    )
    p.add_argument("out", metavar="OUT", help="the --out directory of dipfill run")
    p.add_argument("--json", action="store_true", help="print the status as one JSON document")
    p.set_defaults(func=status)


def status(args: argparse.Namespace) -> int:
    from dipfill.pipeline.status import output_status

    st = output_status(args.out)
    if args.json:
        print(json.dumps(st.to_json(), indent=2))
    else:
        for s in st.scenes:
            run = f"run {s.run_id}" if s.run_id else "no run record"
            where = s.item if s.state == "done" and s.item else ""
            detail = "  ".join(x for x in (s.message, where) if x)
            print(f"{s.state:<8} {s.id}  ({run})" + (f"  {detail}" if detail else ""))
        shown = st.runs[-RECENT_RUNS:]
        if len(st.runs) > len(shown):
            print(f"... {len(st.runs) - len(shown)} earlier run(s)")
        for r in shown:
            counts = ", ".join(f"{v} {k}" for k, v in r.counts.items() if v)
            print(f"run {r.run_id}: {r.state}, started {r.started}" + (f", {counts}" if counts else "")
                  + (f": {r.error}" if r.error else ""))
        for name in st.unreadable:
            print(f"unreadable run record: runs/{name}")
        c = st.counts
        print(f"{st.root}: {len(st.scenes)} scene(s): {c['done']} done, {c['failed']} failed, {c['pending']} pending")
    return 1 if st.of("failed") else 0
