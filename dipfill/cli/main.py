"""`dipfill` command line: one module per command; this one only dispatches.

Library code logs; only the CLI configures logging and prints. Errors that users can
cause (``DipfillError``) print one line naming the file and the problem and exit 1;
usage errors print one line too and exit 2 (as argparse does).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn, Sequence

from dipfill import __version__
from dipfill.cli.logs import LOG_FORMATS, JsonFormatter, configure
from dipfill.errors import DipfillError
from dipfill.raster.hrefs import redact_text

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (the message and where to read the usage),
    in the log format the command line asked for: cron's log shipper gets JSON for these
    too. Subcommand parsers inherit the class (``add_subparsers`` uses the parent's)."""

    log_format: str = "text"

    def error(self, message: str) -> NoReturn:  # argparse's hook; exit status 2 as argparse
        _tell(_Parser.log_format, logging.ERROR,
              f"{self.prog}: error: {redact_text(message)} (see `{self.prog} --help`)")
        sys.exit(2)


def _requested_format(argv: Sequence[str]) -> str:
    """``--log-format`` as given on the command line (or its environment default), read
    before parsing so that parse errors already come out in that format."""
    for i, arg in enumerate(argv):
        if arg.startswith("--log-format="):
            return arg.split("=", 1)[1]
        if arg == "--log-format" and i + 1 < len(argv):
            return argv[i + 1]
    return os.environ.get("DIPFILL_LOG_FORMAT", "text")


def build_parser() -> argparse.ArgumentParser:
    from dipfill.cli import anonymise
    from dipfill.cli import eval as eval_cmd
    from dipfill.cli import fill
    from dipfill.cli import report as report_cmd
    from dipfill.cli import run as run_cmd
    from dipfill.cli import search as search_cmd
    from dipfill.cli import sr as sr_cmd
    from dipfill.cli import status as status_cmd
    from dipfill.cli import train as train_cmd

    parser = _Parser(prog="dipfill", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dipfill {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help="text lines, or one JSON object per line for log shippers "
                        "(default: $DIPFILL_LOG_FORMAT or text)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fill.register(sub)
    anonymise.register(sub)
    sr_cmd.register(sub)
    eval_cmd.register(sub)
    search_cmd.register(sub)
    run_cmd.register(sub)
    train_cmd.register(sub)
    status_cmd.register(sub)
    report_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    _Parser.log_format = _requested_format(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2): a status, as every other path
        return int(exc.code or 0)
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
