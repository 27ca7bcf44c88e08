"""How every command logs (README: "Log format"): text or JSON lines on stderr,
and library warnings kept out of the output.

``--log-format json`` writes one JSON object per line, for a log collector::

    {"time": "2025-01-02T03:04:05.678Z", "level": "INFO", "logger": "dicomstore.server",
     "message": "listening on 127.0.0.1:11112 as DICOMSTORE"}

with the extra fields a call passed (``log.info(..., extra={"peer": ...})``) and,
after a failure, ``"exception"`` (the traceback as one string).

A text record is one line: control characters in its message (a CR or LF that a
client put in a percent-encoded URL path, an AE title, a file name) are written as
``\\n``, ``\\x1b`` ..., so nobody can forge a line (CWE-117); a traceback follows on
lines of its own.

Warnings from libraries (pydicom's ``UserWarning`` about a value it reads, for
example) are not printed: they go to the ``py.warnings`` logger at DEBUG, and
pydicom's and psycopg's own records are dropped (but CRITICAL ones), unless ``--log-level debug``:
what matters to the user is said by our own lines (a result line, a summary; a
decoder that fails logs an ERROR with its traceback, where ours says "cannot
convert ...: why" in one line).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from datetime import UTC, datetime
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: attributes every LogRecord has: what is left in ``record.__dict__`` are extras
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def add_log_format(p: argparse.ArgumentParser) -> None:
    """The ``--log-format`` option (every command has it)."""
    p.add_argument(
        "--log-format",
        choices=list(FORMATS),
        default="text",
        help="text lines (default) or one JSON object per line (time, level, logger, message)",
    )


#: C0 and C1 control characters, DEL and the Unicode line and paragraph separators,
#: as escapes (a tab stays).
_ESCAPES = {
    c: ascii(chr(c))[1:-1]
    for c in (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)
    if c != 0x09
}


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b`` ...)."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, the message on one line (:func:`one_line`)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's)
        record.message = one_line(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message,
    the extra fields of the call, and the exception text if any."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _warning_to_debug(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    logging.getLogger("py.warnings").debug(
        "%s: %s (%s:%d)", category.__name__, message, filename, lineno
    )


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger for a command: ``level``, ``fmt`` (``text`` or
    ``json``) on ``stream`` (stderr); library warnings to DEBUG (module docstring).
    Like :func:`logging.basicConfig`, it leaves a root logger that already has
    handlers alone (an application embedding the CLI, or pytest)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    warnings.showwarning = _warning_to_debug
    if level != "debug":  # pydicom logs each warning it issues too
        handler.addFilter(_quiet_pydicom)
    handler.addFilter(_quiet_plugins)


def refuse(message: str) -> None:
    """A command's one-line refusal on stderr (why it cannot start or go on):
    ``dicomstore: message``; under ``--log-format json`` a JSON object of level
    ERROR like every other line then, for a log collector that reads each line as
    one (logger ``dicomstore``): when :func:`setup_logging` set JSON lines."""
    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logging.getLogger("dicomstore").error("%s", message)
    else:
        print(f"dicomstore: {message}", file=sys.stderr)


#: Libraries whose DEBUG records say nothing about a store, a query or a peer
#: (pylibjpeg: a line per plugin found; review56: twenty at every start).
_CHATTY = ("pylibjpeg", "PIL")


def _quiet_plugins(record: logging.LogRecord) -> bool:
    """Drop the DEBUG records of :data:`_CHATTY` libraries (``--log-level debug``)."""
    return record.levelno > logging.DEBUG or record.name.split(".")[0] not in _CHATTY


#: Libraries whose own records below CRITICAL are dropped but under ``--log-level
#: debug``: pydicom (a warning per value it reads), psycopg (``error ignored
#: terminating <Pipeline [BAD]>``, beside our own line on the index lost: review107 L3).
_QUIET = frozenset({"pydicom", "psycopg"})


def _quiet_pydicom(record: logging.LogRecord) -> bool:
    """Drop the records below CRITICAL of the :data:`_QUIET` libraries. A filter on the
    handler, not the logger's level: pydicom sets that level when it is first
    imported, which may be after the CLI has configured logging (lazily)."""
    return record.levelno >= logging.CRITICAL or record.name.split(".")[0] not in _QUIET
