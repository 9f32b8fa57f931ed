"""Plain statements against a test's source database through its own driver (the oracle's
side: nothing here imports steadyflow). One copy for the tests that set a table up by hand
in SQLite, MariaDB or PostgreSQL and read it back."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pymysql


def execute(kind: str, at: str, *statements: str) -> list[tuple[Any, ...]]:
    """Run the statements in order, each committed; the last one's rows (if it has any).
    `at` is a DSN, or a file path for SQLite."""
    rows: list[tuple[Any, ...]] = []
    if kind == "postgres":
        with psycopg.connect(at, autocommit=True) as conn:
            for statement in statements:
                cur = conn.execute(statement.encode())
                rows = cur.fetchall() if cur.description else []
    elif kind == "mysql":
        parts = urlsplit(at)
        conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                               database=parts.path.lstrip("/"), autocommit=True)
        with closing(conn), conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                rows = list(cur.fetchall())
    else:
        with closing(sqlite3.connect(at)) as lite:
            for statement in statements:
                rows = lite.execute(statement).fetchall()
            lite.commit()
    return rows
