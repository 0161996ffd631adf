"""`dipfill` command line: one module per command; this one only dispatches.

Library code logs; only the CLI configures logging and prints. Errors that users can
cause (``DipfillError``) print one line naming the file and the problem and exit 1;
usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from dipfill import __version__
from dipfill.cli.logs import LOG_FORMATS, JsonFormatter, configure
from dipfill.errors import DipfillError
from dipfill.raster.hrefs import redact_text

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from dipfill.cli import eval as eval_cmd
    from dipfill.cli import fill
    from dipfill.cli import run as run_cmd
    from dipfill.cli import search as search_cmd

    parser = argparse.ArgumentParser(prog="dipfill", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dipfill {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help="text lines, or one JSON object per line for log shippers "
                        "(default: $DIPFILL_LOG_FORMAT or text)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fill.register(sub)
    eval_cmd.register(sub)
    search_cmd.register(sub)
    run_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    args.log_format = configure(level, args.log_format)
    try:
        return int(args.func(args) or 0)
    except DipfillError as exc:
        _tell(args.log_format, logging.ERROR, f"dipfill: error: {redact_text(str(exc))}")
        return 1
    except KeyboardInterrupt:
        _tell(args.log_format, logging.WARNING, "dipfill: interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (``dipfill search | head -1``): no traceback, and stdout
        # pointed at /dev/null so the interpreter's final flush does not raise again
        # (the recipe of Python's signal module docs); 141 = 128 + SIGPIPE, as a shell says.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _tell(fmt: str, level: int, text: str) -> None:
    """The command's last word on stderr: the line as it is, or with ``--log-format json``
    one JSON object like every other line there (log shippers parse each line)."""
    if fmt == "json":
        record = logging.makeLogRecord({"name": "dipfill", "levelno": level, "levelname": logging.getLevelName(level),
                                        "msg": text})
        text = JsonFormatter().format(record)
    print(text, file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
