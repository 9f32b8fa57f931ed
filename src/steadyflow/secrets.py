"""The process-wide set of secret values, and `scrub`, which blanks them out of any text.

Secrets enter a pipeline only through `${VAR}` references in the config (config.py fills
them in at load time and registers every filled-in value here), plus the password of any
DSN. From then on every place an operator can see text, the error columns of the state
store, log lines, the status page, /api/status, /metrics, `status --json` and the
`request` label of landed raw HTTP pages, passes it through `scrub` before it is written
or shown. Scrubbing at the sinks, not where errors are made, is what keeps a driver's own
message (which may quote a DSN or echo a URL) from slipping through.

A value is registered with its URL-encoded spellings too, because a key passed as a query
parameter (`api_key: ${KEY}`) appears percent-encoded in a request line; and with its
decoded spelling, because a password written percent-encoded into a DSN is shown decoded
by drivers. Values shorter than `MIN_LENGTH` are ignored: registering "1" would blank
every digit 1 in every log line, and such a value protects nothing anyway. So are words
and numbers that are settings, not secrets (`true`, `null`, a port like `5432`, any number
under 8 digits): masking them would turn `"ok": true` or a row count in `run --json` into
`***` and break the JSON, and a secret that short can be guessed anyway.

Every value filled in from the environment is treated as a secret, including ones that
are not (`${HOME}`): there is no way to tell them apart, and an over-eager `***` in a
message costs far less than a leaked key.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

__all__ = ["MIN_LENGTH", "MASK", "dsn_password", "register", "scrub", "scrub_tree"]

MIN_LENGTH = 4
MASK = "***"
_SETTINGS = frozenset({"true", "false", "null", "none", "yes", "no", "on", "off"})

_SECRETS: set[str] = set()
_ordered: list[str] = []  # longest first, so a secret containing another is masked whole
_lock = threading.Lock()
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def _spellings(value: str) -> set[str]:
    """The value as given, decoded, and in every encoding a URL or query string uses."""
    forms = {value, unquote(value), unquote(value.replace("+", " "))}
    for form in list(forms):
        # quote_plus is how httpx and urllib encode a query value; quote for paths
        forms |= {quote(form, safe=""), quote(form), quote_plus(form)}
    return {f for f in forms if len(f) >= MIN_LENGTH}


def register(value: str | None) -> None:
    """Remember a secret value so `scrub` blanks it (and its URL spellings) anywhere."""
    if (not value or len(value) < MIN_LENGTH or value.lower() in _SETTINGS
            or (value.isdigit() and len(value) < 8)):
        return
    with _lock:
        _SECRETS.update(_spellings(value))
        _ordered[:] = sorted(_SECRETS, key=len, reverse=True)


def dsn_password(dsn: str | None) -> str | None:
    """The password of a URL-style DSN, decoded, or None (also for non-URL DSNs)."""
    if not dsn or "://" not in dsn:
        return None
    try:
        password = urlsplit(dsn).password
    except ValueError:
        return None
    return unquote(password) if password else None


def scrub(text: str) -> str:
    """`text` with every registered secret, URL password and bearer token replaced by ***."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(r"\1" + MASK + r"\3", text)
    text = _BEARER.sub(r"\1" + MASK, text)
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_tree(value: Any) -> Any:
    """A JSON-like value with every string in it scrubbed (dict keys are names: kept)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_tree(v) for v in value]
    return value
