"""Logging set-up for the command line: human lines, or one JSON object per line.

Why JSON lines: a run on a cluster is watched through ``ray job logs``, Kubernetes and log
shippers (Loki, CloudWatch, Stackdriver) that index fields, not prose. Every record carries
``ts``, ``level``, ``logger`` and ``msg``; progress events of ``dipfill run`` add their
fields (``event``, ``run_id``, ``scene``, ``patches_done``, ``patches_total``,
``patches_per_s``, ``eta_s``...), passed to the logger as ``extra={"fields": {...}}``.
Both formats redact URL secrets, whichever library logged them (a last line of defence:
dipfill's own messages are redacted where they are made).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys

from dipfill.raster.hrefs import redact_text

__all__ = ["JsonFormatter", "TextFormatter", "configure", "LOG_FORMATS"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


#: Terminal colour codes: Ray colours the tracebacks and messages it logs.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def plain(text: str) -> str:
    """``text`` without terminal colour codes and URL secrets."""
    return redact_text(_ANSI.sub("", text))


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` lines with URL secrets (signatures, ``user:password@``) redacted and
    terminal colour codes stripped."""

    def format(self, record: logging.LogRecord) -> str:
        return plain(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the record's ``fields`` extra is merged in. URL secrets
    (signatures, ``user:password@``) are redacted, in messages, fields and tracebacks, and
    terminal colour codes stripped from messages and tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _ANSI.sub("", record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update({k: v for k, v in fields.items() if k not in doc})
        if record.exc_info:
            doc["exc"] = _ANSI.sub("", self.formatException(record.exc_info))
        return redact_text(json.dumps(doc, default=str))


def configure(level: int, fmt: str | None = None) -> str:
    """Configure the root logger for ``fmt`` (default: ``$DIPFILL_LOG_FORMAT`` or text) and
    return the format used. Like ``logging.basicConfig``, it leaves a root logger that
    already has handlers (an embedding application, pytest) alone."""
    fmt = fmt or os.environ.get("DIPFILL_LOG_FORMAT", "text")
    if fmt not in LOG_FORMATS:
        fmt = "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    if fmt == "json" and handler in logging.getLogger().handlers:
        # Python's warnings (numpy, torch, GDAL bindings) as records too: no plain-text line
        logging.captureWarnings(True)
    return fmt
