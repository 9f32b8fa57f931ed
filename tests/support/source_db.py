"""A generated table's source database: DDL, inserts and updates through the real drivers
(tests/support/gen.py describes the tables; nothing here imports steadyflow)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pymysql

from tests.support import gen
from tests.support.gen import Table


class SourceDb:
    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where

    def execute(self, statements: list[tuple[str, list[Any]]]) -> None:
        if self.kind == "postgres":
            with psycopg.connect(self.where) as conn:
                for sql, params in statements:
                    conn.execute(sql.encode(), params or None)
        elif self.kind == "mysql":
            conn = _mysql(self.where)
            with closing(conn), conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")
                for sql, params in statements:
                    cur.execute(sql, params or None)
                conn.commit()
        else:
            with closing(sqlite3.connect(self.where)) as conn:
                for sql, params in statements:
                    conn.execute(sql, params)
                conn.commit()

    def placeholder(self) -> str:
        return "?" if self.kind == "sqlite" else "%s"

    def quote(self, name: str) -> str:
        return f"`{name}`" if self.kind == "mysql" else f'"{name}"'

    def insert(self, table: Table, rows: list[dict[str, Any]], first_index: int = 0) -> None:
        names = [c.name for c in table.cols]
        cols = ", ".join(self.quote(n) for n in names)
        marks = ", ".join(self.placeholder() for _ in names)
        self.execute([(f"INSERT INTO {self.quote(table.name)} ({cols}) VALUES ({marks})",
                       [gen.db_value(c, row[c.name], self.kind, table.spelling,
                                     first_index + i) for c in table.cols])
                      for i, row in enumerate(rows)])

    def update(self, table: Table, key_row: dict[str, Any], values: dict[str, Any],
               index: int) -> None:
        sets = ", ".join(f"{self.quote(n)} = {self.placeholder()}" for n in values)
        where = " AND ".join(f"{self.quote(k)} = {self.placeholder()}" for k in table.key)
        params = [gen.db_value(table.col(n), v, self.kind, table.spelling, index)
                  for n, v in values.items()]
        params += [gen.db_value(table.col(k), key_row[k], self.kind, table.spelling, index)
                   for k in table.key]
        self.execute([(f"UPDATE {self.quote(table.name)} SET {sets} WHERE {where}", params)])

    def drop(self, table: Table) -> None:
        self.execute([(s, []) for s in gen.drop_ddl(table, self.kind)])


def _mysql(dsn: str) -> pymysql.connections.Connection[Any]:
    parts = urlsplit(dsn)
    return pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                           password="", database=parts.path.lstrip("/"), charset="utf8mb4")
