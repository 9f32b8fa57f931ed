"""Structured logs: one JSON object per line with source, table, stage and batch id.

Every record passes through `ScrubFilter` on the handler, whatever its formatter, so a
secret that slipped into an error text (a DSN with a password, an Authorization header, a
`${VAR}` value in a query string) never reaches a log file. The registry and `scrub` live
in steadyflow.secrets; `register_secret` and `scrub` stay here as the names callers use.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from steadyflow.secrets import register, scrub

__all__ = ["FIELDS", "JsonFormatter", "PrintedErrors", "ScrubFilter", "ScrubbedStream",
           "configure", "get", "printed_errors", "register_secret", "scrub", "scrub_streams"]

FIELDS = ("source", "table", "stage", "batch_id", "rows", "attempt", "page_size", "seconds")


def register_secret(value: str | None) -> None:
    """Remember a secret so `scrub` removes it from anything logged or printed."""
    register(value)


class ScrubFilter(logging.Filter):
    """Scrubs a record in place before any formatter sees it (JSON or text).

    The message is rendered with its args and scrubbed once; the traceback text is
    rendered and scrubbed too, because a formatter prints `exc_text` when it is set.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = scrub(str(record.exc_info[1]))
        return json.dumps(entry, default=str)


class PrintedErrors(logging.Filter):
    """Remembers the text of every exception an ERROR record printed, so the CLI's closing
    summary does not print the same error a second time (it names how many it skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            args = record.args if isinstance(record.args, tuple) else ()
            self.texts += [str(a) for a in args if isinstance(a, BaseException) and str(a)]
        return True

    def printed(self, error: str) -> bool:
        return any(text in error for text in self.texts)


#: what the handler `configure` installed has printed (see PrintedErrors)
printed_errors = PrintedErrors()


class _ContextFormatter(logging.Formatter):
    """The message, then the record's context fields (`source=… table=…`) for humans."""

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{field}={getattr(record, field)}" for field in FIELDS
                           if getattr(record, field, None) is not None)
        text = scrub(record.getMessage())
        return f"{text}  [{context}]" if context else text


class ScrubbedStream:
    """A text stream that scrubs every write: the CLI's stdout and stderr.

    The last line of defence for what a command prints: a table, a JSON report, a rich
    error line or an unexpected traceback all leave through here. A write is scrubbed
    whole; print() and rich write a line or a whole render at once, so a secret is not
    split across two writes.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(scrub(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def scrub_streams() -> None:
    """Route sys.stdout and sys.stderr through `ScrubbedStream` (once; idempotent)."""
    if not isinstance(sys.stdout, ScrubbedStream):
        sys.stdout = ScrubbedStream(sys.stdout)
    if not isinstance(sys.stderr, ScrubbedStream):
        sys.stderr = ScrubbedStream(sys.stderr)


def configure(level: str = "INFO", stream: Any = None, console: Any = None) -> None:
    """Log at `level` to `stream` (stderr) as JSON lines, or, given a rich `console` (the
    CLI on a terminal), as readable lines through rich's handler on that console.

    Through the console, a log line is printed above a live progress display instead of
    over it (rich redraws the display below each line); JSON stays for pipes and files,
    where a program reads the logs.
    """
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, markup=False,
                              rich_tracebacks=False, log_time_format="%H:%M:%S")
        handler.setFormatter(_ContextFormatter())
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter())
    handler.addFilter(printed_errors)  # before ScrubFilter, which renders away the args
    handler.addFilter(ScrubFilter())
    root = logging.getLogger("steadyflow")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"steadyflow.{name}")
