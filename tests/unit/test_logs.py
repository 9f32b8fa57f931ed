"""Structured logs: one JSON object per line, and no secret ever reaches a log line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest

from steadyflow import secrets
from steadyflow.observe import logs

PASSWORD = "Tr0ub4dor&3-unit"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The steadyflow logger writing JSON lines into a buffer; restored afterwards."""
    root = logging.getLogger("steadyflow")
    saved = (root.handlers[:], root.level, root.propagate)
    saved_secrets = set(secrets._SECRETS)
    stream = io.StringIO()
    logs.configure("debug", stream)
    try:
        yield stream
    finally:
        root.handlers[:], root.level, root.propagate = saved
        secrets._SECRETS.clear()
        secrets._SECRETS.update(saved_secrets)
        secrets._ordered[:] = sorted(saved_secrets, key=len, reverse=True)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize("text", [
    f"connect to postgresql://reader:{PASSWORD}@db:5432/pos failed",
    f"mysql://root:{PASSWORD}@127.0.0.1:3306/shop: access denied",
    f"Authorization: Bearer {PASSWORD}",
    f"authorization: bearer {PASSWORD}",
])
def test_scrub_removes_passwords_from_urls_and_bearer_tokens(text: str) -> None:
    scrubbed = logs.scrub(text)
    assert PASSWORD not in scrubbed
    assert "***" in scrubbed


def test_scrub_keeps_the_rest_of_a_dsn_readable() -> None:
    assert (logs.scrub(f"postgresql://reader:{PASSWORD}@db:5432/pos")
            == "postgresql://reader:***@db:5432/pos")
    assert logs.scrub("postgresql://reader@db/pos") == "postgresql://reader@db/pos"


def test_registered_secret_is_scrubbed_anywhere(captured: io.StringIO) -> None:
    logs.register_secret(PASSWORD)
    assert logs.scrub(f"the password {PASSWORD} leaked") == "the password *** leaked"
    assert logs.scrub(f"{PASSWORD}{PASSWORD}") == "******"


def test_register_secret_ignores_empty_and_tiny_values(captured: io.StringIO) -> None:
    # a 1-2 character "secret" would turn every log line into asterisks
    for value in (None, "", "a", "ab"):
        logs.register_secret(value)
    assert logs.scrub("a b ab abc") == "a b ab abc"


def test_json_line_has_level_logger_message_and_context_fields(captured: io.StringIO) -> None:
    logs.get("extract").info("landed %d rows", 42, extra={
        "source": "store_042", "table": "sales", "stage": "land", "batch_id": "b1",
        "rows": 42, "unrelated": "not a log field"})
    [entry] = lines(captured)
    assert entry["level"] == "info"
    assert entry["logger"] == "steadyflow.extract"
    assert entry["msg"] == "landed 42 rows"
    assert {k: entry[k] for k in ("source", "table", "stage", "batch_id", "rows")} == {
        "source": "store_042", "table": "sales", "stage": "land", "batch_id": "b1", "rows": 42}
    assert "unrelated" not in entry
    assert str(entry["ts"]).endswith("Z") and "T" in str(entry["ts"])


def test_secrets_are_scrubbed_from_message_args_and_exceptions(captured: io.StringIO) -> None:
    log = logs.get("extract")
    dsn = f"postgresql://reader:{PASSWORD}@db:5432/pos"
    log.warning("retrying %s", dsn, extra={"source": "s"})
    try:
        raise ConnectionError(f"could not connect to {dsn}")
    except ConnectionError:
        log.exception("extract failed")
    log.debug("header was Authorization: Bearer %s", PASSWORD)
    text = captured.getvalue()
    assert PASSWORD not in text
    entries = lines(captured)
    assert len(entries) == 3
    assert entries[1]["error"] == "could not connect to postgresql://reader:***@db:5432/pos"


def test_log_level_filters(captured: io.StringIO) -> None:
    logs.configure("warning", captured)
    log = logs.get("run")
    log.info("hidden")
    log.debug("hidden too")
    log.warning("shown")
    assert [e["msg"] for e in lines(captured)] == ["shown"]


def test_configure_replaces_handlers_and_does_not_propagate(captured: io.StringIO) -> None:
    other = io.StringIO()
    logs.configure("info", other)
    logs.get("x").info("only once")
    assert captured.getvalue() == ""
    assert len(other.getvalue().splitlines()) == 1
    assert logging.getLogger("steadyflow").propagate is False


def test_a_registered_secret_is_scrubbed_in_every_url_spelling(captured: io.StringIO) -> None:
    key = "k/ey+v@l ue&x=1"
    secrets.register(key)
    for text in (f"?api_key={quote_plus(key)}&limit=5", f"/{quote(key)}/", quote(key, safe=""),
                 f"echo {key}!"):
        assert "k/ey" not in secrets.scrub(text) and "ey%2B" not in secrets.scrub(text)
        assert secrets.MASK in secrets.scrub(text)


def test_a_percent_encoded_secret_is_scrubbed_decoded_too(captured: io.StringIO) -> None:
    # a DSN password is written percent-encoded in ${VAR}; a driver shows it decoded
    secrets.register(quote("p@ss/w:rd-unit", safe=""))
    assert secrets.scrub("password p@ss/w:rd-unit rejected") == "password *** rejected"


def test_dsn_password_is_decoded_and_absent_when_there_is_none() -> None:
    assert secrets.dsn_password("postgresql://u:p%40ss@h/db") == "p@ss"
    assert secrets.dsn_password("postgresql://u@h/db") is None
    assert secrets.dsn_password("host=h password=x") is None
    assert secrets.dsn_password(None) is None


def test_scrub_tree_scrubs_every_string_and_keeps_the_shape(captured: io.StringIO) -> None:
    secrets.register(PASSWORD)
    tree = {"tables": [{"last_error": f"bad {PASSWORD}", "rows": 3}], "at": 1.5,
            "runs": ({"error": None},)}
    assert secrets.scrub_tree(tree) == {"tables": [{"last_error": "bad ***", "rows": 3}],
                                        "at": 1.5, "runs": [{"error": None}]}


def test_text_handlers_and_tracebacks_are_scrubbed_by_the_filter(captured: io.StringIO) -> None:
    # the filter sits on the handler, so a plain-text formatter gets scrubbed records too
    secrets.register(PASSWORD)
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(logs.ScrubFilter())
    logging.getLogger("steadyflow").addHandler(handler)
    try:
        raise ValueError(f"rejected {PASSWORD}")
    except ValueError:
        logs.get("run").exception("failed with %s", PASSWORD)
    finally:
        logging.getLogger("steadyflow").removeHandler(handler)
    assert PASSWORD not in text.getvalue() + captured.getvalue()
    assert "ValueError: rejected ***" in text.getvalue()
    assert "failed with ***" in text.getvalue()


def test_scrubbed_stream_masks_every_write(captured: io.StringIO) -> None:
    secrets.register(PASSWORD)
    sink = io.StringIO()
    stream = logs.ScrubbedStream(sink)
    assert stream.write(f"{{\"error\": \"{PASSWORD}\"}}\n") == len(PASSWORD) + 14
    stream.flush()
    assert sink.getvalue() == '{"error": "***"}\n'


@pytest.mark.parametrize("value", ["true", "False", "null", "5432", "1000000"])
def test_settings_that_are_not_secrets_are_not_registered(captured: io.StringIO,
                                                          value: str) -> None:
    # `"ok": true` and row counts in `run --json` must stay JSON
    secrets.register(value)
    assert secrets.scrub(f'{{"ok": true, "rows": 5432, "n": 1000000, "v": {value}}}') == (
        f'{{"ok": true, "rows": 5432, "n": 1000000, "v": {value}}}')
    secrets.register("12345678")  # a long number can be a secret (a PIN, an account)
    assert secrets.scrub("pin 12345678") == "pin ***"
