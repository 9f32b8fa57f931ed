"""The server warehouse: PostgreSQL, COPY into a temp stage, one merge, one transaction."""

from __future__ import annotations

import io
import threading
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql as pgsql

from steadyflow.errors import FatalError, SchemaError, WarehouseUnavailable
from steadyflow.extract.dialects import dsn_password, redact
from steadyflow.failpoints import failpoint
from steadyflow.merge.plan import MergePlan, plan
from steadyflow.model import BatchRef, Contract, TableRef

STAGE, DELETES = "steadyflow_stage", "steadyflow_deletes"


def quote(name: str) -> str:
    return pgsql.Identifier(name).as_string(None)


def _csv(table: pa.Table) -> bytes:
    """Arrow → CSV in C; nulls unquoted and empty strings quoted, as COPY expects."""
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False,
                                                    quoting_style="needed"))
    return sink.getvalue()


class PostgresWarehouse:
    """Merges batches into PostgreSQL tables with a ledger row in the same transaction."""

    def __init__(self, dsn: str, schema: str = "public") -> None:
        self.dsn = dsn
        self.schema = schema
        self._secrets = [s for s in [dsn_password(dsn)] if s]
        self._lock = threading.Lock()
        self._plans: dict[str, MergePlan] = {}
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.dsn, connect_timeout=5,
                                             options="-c TimeZone=UTC")
            except psycopg.Error as exc:
                raise WarehouseUnavailable(
                    f"cannot connect to the PostgreSQL warehouse: "
                    f"{redact(str(exc).strip(), self._secrets)}", stage="load") from None
        return self._conn

    def _plan(self, ref: TableRef, contract: Contract) -> MergePlan:
        if ref.target not in self._plans:
            self._plans[ref.target] = plan(contract, self.schema, ref.target, STAGE, DELETES,
                                           quote, "postgres")
        return self._plans[ref.target]

    def _fail(self, exc: psycopg.Error, what: str, batch: BatchRef | None = None) -> Exception:
        msg = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc),
                     self._secrets)
        if isinstance(exc, psycopg.OperationalError):
            if self._conn is not None:
                self._conn.close()
            return WarehouseUnavailable(f"{what}: {msg}", stage="load")
        return FatalError(f"{what}: {msg}", stage="load",
                          batch_id=batch.batch_id if batch else None)

    def ensure_table(self, ref: TableRef, contract: Contract) -> None:
        p = self._plan(ref, contract)
        with self._lock:
            try:
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                      [f"steadyflow:{self.schema}.{ref.target}"])
                    for stmt in (p.create_schema, p.create_table, p.create_ledger):
                        self.conn.execute(stmt.encode())
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError):
                    raise self._fail(exc, "warehouse unavailable") from None
                raise SchemaError(f"cannot create warehouse table {ref.target}: {exc}",
                                  stage="load", table=ref.target) from None

    def load(self, ref: TableRef, contract: Contract, batch: BatchRef, rows: pa.Table,
             deletes: pa.Table | None = None) -> bool:
        p = self._plan(ref, contract)
        target = f"{quote(self.schema)}.{quote(ref.target)}"
        with self._lock:
            conn = self.conn
            try:
                with conn.transaction():
                    inserted = conn.execute(
                        p.ledger_insert.replace("now())", "now()) ON CONFLICT DO NOTHING "
                                                "RETURNING batch_id").encode(),
                        [batch.batch_id, batch.source, batch.table, ref.target, rows.num_rows],
                    ).fetchone()
                    if inserted is None:
                        return False  # leaving the block commits nothing of note
                    if rows.num_rows:
                        self._copy(conn, target, STAGE, rows)
                        conn.execute(p.merge.encode())
                    if deletes is not None and deletes.num_rows:
                        self._copy(conn, target, DELETES, deletes, columns=deletes.column_names)
                        conn.execute(p.delete.encode())
                    failpoint("load.after_merge")
            except psycopg.Error as exc:
                raise self._fail(exc, f"merge into {ref.target} failed", batch) from None
        return True

    def _copy(self, conn: psycopg.Connection[Any], target: str, stage: str, rows: pa.Table,
              columns: list[str] | None = None) -> None:
        cols = columns or rows.column_names
        conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {quote(stage)} AS SELECT "
            f"{', '.join(quote(c) for c in cols)} FROM {target} WITH NO DATA".encode())
        conn.execute(f"TRUNCATE {quote(stage)}".encode())
        with conn.cursor().copy(
            f"COPY {quote(stage)} ({', '.join(quote(c) for c in cols)}) FROM STDIN "
            "(FORMAT csv)".encode()) as copy:
            copy.write(_csv(rows.select(cols)))

    def is_loaded(self, batch_id: str) -> bool:
        with self._lock:
            try:
                with self.conn.transaction():
                    return bool(self.conn.execute(
                        f"SELECT 1 FROM {quote(self.schema)}.{quote('_steadyflow_ledger')} "
                        "WHERE batch_id = %s".encode(), [batch_id]).fetchone())
            except psycopg.errors.UndefinedTable:
                return False
            except psycopg.Error as exc:
                raise self._fail(exc, "ledger lookup failed") from None

    def query(self, sql: str, params: list[object] | None = None) -> pa.Table:
        with self._lock, self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(sql.encode(), params or [])
            names = [d.name for d in cur.description or []]
            data = cur.fetchall()
        return pa.table({n: [r[i] for r in data] for i, n in enumerate(names)})

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
