"""Reconcile's float encoding on the server engines: NaN, infinities, -0.0 and magnitudes
whose micro-units overflow a bigint encode as encoding.py does (DuckDB and SQLite:
tests/unit/test_reconcile_encoding.py). MariaDB cannot store NaN or an infinity, so it is
held to the finite values only."""

from __future__ import annotations

import psycopg
import pymysql
from tests.unit.test_reconcile_encoding import FLOATS

from steadyflow.reconcile.encoding import canonical
from steadyflow.reconcile.engines import engine_for


def test_postgres_encodes_every_float_like_python(pg_dsn: str) -> None:
    sql = f"SELECT {engine_for('postgres').canon('x', 'float64')} FROM f ORDER BY i"
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE f (i int, x double precision)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO f VALUES (%s, %s)", list(enumerate(FLOATS)))
        got = [r[0] for r in conn.execute(sql.encode()).fetchall()]
    assert got == [canonical(v, "float64") for v in FLOATS]


def test_mariadb_encodes_every_finite_float_like_python(mysql_dsn: str) -> None:
    finite = [v for v in FLOATS if abs(v) != float("inf") and v == v]
    name = mysql_dsn.rsplit("/", 1)[1]
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                           database=name, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE f (i INT, x DOUBLE)")
            cur.executemany("INSERT INTO f VALUES (%s, %s)", list(enumerate(finite)))
            cur.execute(f"SELECT {engine_for('mysql').canon('`x`', 'float64')} FROM f "
                        "ORDER BY i")
            got = [r[0] for r in cur.fetchall()]
    finally:
        conn.close()
    assert got == [canonical(v, "float64") for v in finite]
