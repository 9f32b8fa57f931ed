"""Bad input gives ONE clear error and changes nothing.

Each case runs the real CLI in a child process and checks: exit code 2, exactly one `error:`
line on stderr (no traceback), the error names what is wrong and where (key, source, table,
column, variable), and no warehouse table, checkpoint or landed batch was left behind.
The last tests check the other side of the coin: names that need quoting work end to end.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pymysql
import pytest
import yaml
from tests.conftest import SALES_CONTRACT, steadyflow, write_pipeline
from tests.support.pg_server import password_postgres

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PASSWORD = "S3cr3t-xyz"
WRONG = "Wr0ng-pw-4711"
SALES_DDL_PG = (
    "CREATE TABLE sales (store_id bigint NOT NULL, sale_id bigint NOT NULL, sku text NOT NULL, "
    "qty bigint, unit_price numeric(12,2), currency text, sold_at timestamptz, "
    "updated_at timestamptz NOT NULL, PRIMARY KEY (store_id, sale_id))")
SALES_DDL_MYSQL = (
    "CREATE TABLE sales (store_id BIGINT NOT NULL, sale_id BIGINT NOT NULL, "
    "sku VARCHAR(32) NOT NULL, qty BIGINT, unit_price DECIMAL(12,2), currency VARCHAR(3), "
    "sold_at DATETIME(6), updated_at DATETIME(6) NOT NULL, PRIMARY KEY (store_id, sale_id))")
SALES_ROWS = ("INSERT INTO sales VALUES (1, 1, 'A', 2, 3.50, 'EUR', NULL, "
              "'2024-05-01 12:00:00.000001'), (1, 2, 'B', 1, 9.99, 'USD', NULL, "
              "'2024-05-01 12:00:00.000002')")


# --- helpers --------------------------------------------------------------------------------
def table(name: str = "sales", **extra: Any) -> dict[str, Any]:
    return {"name": name, "contract": "sales", **extra}


def pg_source(dsn: str, *tables: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "store_pg", "kind": "postgres", "dsn": dsn,
            "tables": list(tables) or [table()], **extra}


def error_lines(stderr: str) -> list[str]:
    """Each error the command reported, once: a plain `error:` line (a command that could
    not start) or, piped, a JSON log record at level error (its message and the source,
    table and hint fields it carries)."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("error:"):
            found.append(line)
        elif line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("level") == "error":
                found.append(" ".join(["error:", str(record.get("msg", "")), *(
                    f"{k}={record[k]}" for k in ("source", "table", "hint") if k in record)]))
    return found


def one_clear_error(proc: Any, *names: str) -> str:
    """Exit 2, one error reported once, no traceback; its text names every one of `names`."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    # rich wraps a plain error's long lines (and its hint follows): take all of it
    text = proc.stderr[proc.stderr.index("error:"):] if errors[0] in proc.stderr \
        else errors[0]
    flat = " ".join(text.split())
    for name in names:
        assert name in flat, f"{name!r} not named in: {flat}"
    return flat


def nothing_changed(directory: Path) -> None:
    """No warehouse table, no checkpoint, no landed batch (files may exist, empty)."""
    wh = directory / "warehouse.duckdb"
    if wh.exists():
        with duckdb.connect(str(wh), read_only=True) as con:
            tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables"
                                 ).fetchall()
        assert tables == [], tables
    state = directory / "state" / "state.db"
    if state.exists():
        with closing(sqlite3.connect(state)) as db:
            assert db.execute("SELECT count(*) FROM checkpoints").fetchone() == (0,)
            assert db.execute("SELECT count(*) FROM manifest").fetchone() == (0,)
    assert list(directory.rglob("*.parquet")) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pg_sales(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SALES_DDL_PG)
        conn.execute(SALES_ROWS)
    return pg_dsn


# --- bad config: nothing runs, nothing is created --------------------------------------------
def _config_cases() -> Iterator[Any]:
    def unknown_key(c: dict[str, Any]) -> None:
        c["sources"][0]["tables"][0]["page_sise"] = 100

    def bad_type(c: dict[str, Any]) -> None:
        c["contracts"]["sales"]["columns"]["qty"]["type"] = "integer64"

    def cursor_not_in_columns(c: dict[str, Any]) -> None:
        c["contracts"]["sales"]["cursor"] = "changed_at"

    def missing_env(c: dict[str, Any]) -> None:
        c["sources"][0]["dsn"] = "postgresql://postgres:${SF_TEST_UNSET_PASSWORD}@127.0.0.1/x"

    yield pytest.param(unknown_key, ["page_sise", "sources.0.tables.0", "unknown key",
                                     "did you mean 'page_size'"], id="unknown-key")
    yield pytest.param(bad_type, ["contracts.sales.columns.qty.type", "integer64"],
                       id="bad-type-name")
    yield pytest.param(cursor_not_in_columns, ["contracts.sales", "changed_at", "not in columns"],
                       id="cursor-not-in-columns")
    yield pytest.param(missing_env, ["SF_TEST_UNSET_PASSWORD", "not set"], id="missing-env-var")


@pytest.mark.parametrize(("mutate", "names"), list(_config_cases()))
def test_bad_config(tmp_path: Path, mutate: Any, names: list[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"name": "t", "contracts": {"sales": yaml.safe_load(yaml.safe_dump(SALES_CONTRACT))},
              "sources": [pg_source("postgresql://postgres@127.0.0.1:5432/postgres")]}
    mutate(config)
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.delenv("SF_TEST_UNSET_PASSWORD", raising=False)  # the child inherits this
    proc = steadyflow("run", "-c", str(path))
    one_clear_error(proc, *names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yml"]  # nothing created


# --- unreachable, wrong password, missing table / column -----------------------------------------
@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_unreachable_database_fails_fast(tmp_path: Path, kind: str) -> None:
    port = free_port()  # bound and released: nothing listens there
    scheme = "postgresql" if kind == "postgres" else "mysql"
    # a short but real retry policy: 3 attempts, backoff capped at 0.5 s. (With the default
    # policy, 7 attempts with backoff up to 30 s, this took ~20 s here, and at most ~60 s.)
    config = write_pipeline(tmp_path, [{
        "name": "store_down", "kind": kind, "dsn": f"{scheme}://root@127.0.0.1:{port}/pos",
        "resilience": {"connect_timeout": "2s", "retries": 2, "backoff_initial": "100ms",
                       "backoff_max": "500ms"},
        "tables": [table()]}])
    started = time.monotonic()
    proc = steadyflow("run", "-c", str(config), timeout=60)
    elapsed = time.monotonic() - started
    # PostgreSQL's message names host and port; pymysql's names the host only
    one_clear_error(proc, "store_down", "sales", "127.0.0.1", "refused",
                    *([str(port)] if kind == "postgres" else []))
    assert elapsed < 15, f"took {elapsed:.1f}s to report an unreachable database"
    assert proc.stderr.count("retrying after") == 2  # the policy ran: it was retried, twice
    nothing_changed(tmp_path)


def test_open_breaker_still_names_the_cause(tmp_path: Path) -> None:
    """When the breaker opens during the retries, the last error is "breaker open": it must
    still say what failed, not only that the source is being left alone."""
    port = free_port()
    config = write_pipeline(tmp_path, [{
        "name": "store_down", "kind": "postgres", "dsn": f"postgresql://root@127.0.0.1:{port}/x",
        "resilience": {"retries": 4, "breaker_failures": 2, "backoff_initial": "50ms",
                       "backoff_max": "200ms"},
        "tables": [table()]}])
    proc = steadyflow("run", "-c", str(config), timeout=60)
    one_clear_error(proc, "store_down", "circuit breaker open", "refused", str(port))
    nothing_changed(tmp_path)


@pytest.mark.parametrize(("args", "names"), [
    (["compact", "--target", "12XB"], ["not a size", "12XB"]),
    (["gc", "--retention", "soon"], ["not a duration", "soon"]),
], ids=["compact-target", "gc-retention"])
def test_bad_option_value(tmp_path: Path, args: list[str], names: list[str]) -> None:
    config = write_pipeline(tmp_path, [pg_source("postgresql://postgres@127.0.0.1:1/x")])
    one_clear_error(steadyflow(*args, "-c", str(config)), *names)
    nothing_changed(tmp_path)


def _pg_checks_passwords() -> bool:
    """Whether the shared PostgreSQL refuses a wrong password (its pg_hba may trust
    127.0.0.1, as this machine's does)."""
    try:
        psycopg.connect(f"host=127.0.0.1 port=5432 dbname=postgres user=postgres "
                        f"password={WRONG}", connect_timeout=5).close()
    except psycopg.OperationalError:
        return True
    return False


def _sales_on(admin: str) -> str:
    """A database `sales` with the sales table and its two rows on the server of `admin`
    (a URL to its database postgres); returns its URL."""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE sales")
    dsn = admin.rsplit("/", 1)[0] + "/sales"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SALES_DDL_PG)
        conn.execute(SALES_ROWS)
    return dsn


@pytest.fixture
def password_user(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    """(kind, dsn template with ${SF_TEST_DB_PASSWORD}, user): a user whose password is
    PASSWORD, owning a sales table with two rows, on a server that checks passwords."""
    user = f"sf_pw_{uuid.uuid4().hex[:8]}"
    if request.param == "postgres":
        with ExitStack() as own:
            if _pg_checks_passwords():
                dsn = request.getfixturevalue("pg_sales")
            else:  # the shared server trusts 127.0.0.1: a server of the test's own does not
                dsn = _sales_on(own.enter_context(password_postgres()))
            url = urlsplit(dsn)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{PASSWORD}'")
                conn.execute(f"GRANT SELECT ON sales TO {user}")
            try:
                yield ("postgres", f"postgresql://{user}:${{SF_TEST_DB_PASSWORD}}@127.0.0.1:"
                       f"{url.port}{url.path}", user)
            finally:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"DROP OWNED BY {user}")
                    conn.execute(f"DROP ROLE {user}")
        return
    dsn = request.getfixturevalue("mysql_dsn")
    db = dsn.rsplit("/", 1)[1]
    root = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                           database=db, autocommit=True)
    try:
        with root.cursor() as cur:
            cur.execute(SALES_DDL_MYSQL)
            cur.execute(SALES_ROWS)
            for host in ("%", "localhost"):
                cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{PASSWORD}'")
                cur.execute(f"GRANT SELECT ON `{db}`.* TO '{user}'@'{host}'")
        yield ("mysql", f"mysql://{user}:${{SF_TEST_DB_PASSWORD}}@127.0.0.1:3306/{db}", user)
    finally:
        with root.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        root.close()


@pytest.mark.parametrize("password_user", ["postgres", "mysql"], indirect=True)
def test_wrong_password(tmp_path: Path, password_user: tuple[str, str, str]) -> None:
    kind, dsn, user = password_user
    source = {"name": "store_auth", "kind": kind, "dsn": dsn, "tables": [table()]}
    bad_dir, good_dir = tmp_path / "bad", tmp_path / "good"
    bad_dir.mkdir()
    good_dir.mkdir()

    proc = steadyflow("run", "-c", str(write_pipeline(bad_dir, [source])),
                      env={"SF_TEST_DB_PASSWORD": WRONG})
    one_clear_error(proc, "store_auth", "authentication failed", user)
    for secret in (WRONG, PASSWORD):
        assert secret not in proc.stdout + proc.stderr
    nothing_changed(bad_dir)

    # control: the same config with the right password works, so the failure above was the
    # password and nothing else (and the right password is not printed either)
    proc = steadyflow("run", "-c", str(write_pipeline(good_dir, [source])),
                      env={"SF_TEST_DB_PASSWORD": PASSWORD})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr


def test_missing_table(tmp_path: Path, pg_sales: str) -> None:
    config = write_pipeline(tmp_path, [pg_source(pg_sales, table("salez"))])
    proc = steadyflow("run", "-c", str(config))
    one_clear_error(proc, "store_pg", "table not found", "salez", "table=salez")
    nothing_changed(tmp_path)


def test_missing_key_column_at_source(tmp_path: Path, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # sales without sale_id
        conn.execute("CREATE TABLE sales (store_id bigint NOT NULL, sku text NOT NULL, "
                     "qty bigint, unit_price numeric(12,2), currency text, sold_at timestamptz,"
                     " updated_at timestamptz NOT NULL)")
        conn.execute("INSERT INTO sales VALUES (1, 'A', 1, 1.00, 'EUR', NULL, now())")
    config = write_pipeline(tmp_path, [pg_source(pg_dsn)])
    proc = steadyflow("run", "-c", str(config))
    one_clear_error(proc, "store_pg", "sales", "sale_id", "column not found")
    nothing_changed(tmp_path)


# --- names that need quoting work end to end ---------------------------------------------------
QUOTED_CONTRACT = {
    "primary_key": ["order"],
    "cursor": "when",
    "columns": {
        "order": {"type": "int64", "nullable": False},
        "select": {"type": "string"},
        "Qty": {"type": "int64"},
        "when": {"type": "timestamp", "nullable": False},
    },
}


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_identifiers_needing_quotes(tmp_path: Path, kind: str,
                                    request: pytest.FixtureRequest) -> None:
    rows = [(i, f"v{i}", i * 3, datetime(2024, 5, 1, 12, 0, 0, i, tzinfo=UTC))
            for i in range(1, 6)]
    if kind == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute('CREATE TABLE "group" ("order" bigint PRIMARY KEY, "select" text, '
                         '"Qty" bigint, "when" timestamptz NOT NULL)')
            with conn.cursor() as cur:
                cur.executemany('INSERT INTO "group" VALUES (%s, %s, %s, %s)', rows)
    else:
        dsn = request.getfixturevalue("mysql_dsn")
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                               database=dsn.rsplit("/", 1)[1], autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE `group` (`order` BIGINT PRIMARY KEY, `select` TEXT, "
                            "`Qty` BIGINT, `when` DATETIME(6) NOT NULL)")
                cur.executemany("INSERT INTO `group` VALUES (%s, %s, %s, %s)",
                                [(*r[:3], r[3].replace(tzinfo=None)) for r in rows])
        finally:
            conn.close()
    config = write_pipeline(tmp_path, [{
        "name": "store", "kind": kind, "dsn": dsn,
        "tables": [{"name": "group", "contract": "odd", "page_size": 2}]}],
        contracts={"odd": QUOTED_CONTRACT})

    proc = steadyflow("run", "-c", str(config), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        got = con.execute('SELECT "order", "select", "Qty", epoch_us("when") '
                          'FROM main."group" ORDER BY "order"').fetchall()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert got == [(*r[:3], (r[3] - epoch) // timedelta(microseconds=1)) for r in rows]
