"""Structured logs: one JSON object per line with source, table, stage and batch id.

Every message passes through `scrub` so a secret that slipped into an error text (a DSN
with a password, an Authorization header) never reaches a log file.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_SECRETS: set[str] = set()
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
FIELDS = ("source", "table", "stage", "batch_id", "rows", "attempt", "page_size", "seconds")


def register_secret(value: str | None) -> None:
    """Remember a secret so `scrub` removes it from anything logged or printed."""
    if value and len(value) >= 3:
        _SECRETS.add(value)


def scrub(text: str) -> str:
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    text = _BEARER.sub(r"\1***", text)
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


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


def configure(level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("steadyflow")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"steadyflow.{name}")
