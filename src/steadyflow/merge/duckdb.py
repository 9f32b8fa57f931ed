"""The embedded warehouse: one DuckDB file, one transaction per batch."""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import pyarrow as pa

from steadyflow.errors import FatalError, SchemaError, WarehouseUnavailable
from steadyflow.failpoints import failpoint
from steadyflow.merge.plan import MergePlan, plan
from steadyflow.model import BatchRef, Contract, TableRef

STAGE, DELETES = "steadyflow_stage", "steadyflow_deletes"


def quote(name: str) -> str:
    """DuckDB's identifier quoting (it exposes no quoting helper): double any quote."""
    return '"' + name.replace('"', '""') + '"'


class DuckdbWarehouse:
    """Merges batches into DuckDB tables and records each batch id in the load ledger."""

    def __init__(self, path: Path, schema: str = "main") -> None:
        self.path = path
        self.schema = schema
        self._lock = threading.Lock()
        self._plans: dict[str, MergePlan] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = duckdb.connect(str(path))
        except duckdb.IOException as exc:
            raise WarehouseUnavailable(f"cannot open DuckDB warehouse {path}: {exc}",
                                       stage="load",
                                       hint="another process may hold the file") from None

    def _plan(self, ref: TableRef, contract: Contract) -> MergePlan:
        if ref.target not in self._plans:
            self._plans[ref.target] = plan(contract, self.schema, ref.target, STAGE, DELETES,
                                           quote, "duckdb")
        return self._plans[ref.target]

    def ensure_table(self, ref: TableRef, contract: Contract) -> None:
        p = self._plan(ref, contract)
        with self._lock:
            try:
                self._conn.execute(p.create_schema)
                self._conn.execute(p.create_table)
                self._conn.execute(p.create_ledger)
            except duckdb.Error as exc:
                raise SchemaError(f"cannot create warehouse table {ref.target}: {exc}",
                                  stage="load", table=ref.target) from None

    def load(self, ref: TableRef, contract: Contract, batch: BatchRef, rows: pa.Table,
             deletes: pa.Table | None = None) -> bool:
        """Stage, merge and ledger in ONE transaction; False if the batch was loaded before."""
        p = self._plan(ref, contract)
        c = self._conn
        with self._lock:
            try:
                c.execute("BEGIN TRANSACTION")
                try:
                    if c.execute(p.ledger_check.replace("%s", "?"),
                                 [batch.batch_id]).fetchone():
                        c.execute("ROLLBACK")
                        return False
                    c.register(STAGE, rows)
                    if rows.num_rows:
                        c.execute(p.merge)
                    if deletes is not None and deletes.num_rows:
                        c.register(DELETES, deletes)
                        c.execute(p.delete)
                    c.execute(p.ledger_insert.replace("%s", "?"),
                              [batch.batch_id, batch.source, batch.table, ref.target,
                               rows.num_rows])
                    failpoint("load.after_merge")
                    c.execute("COMMIT")
                except BaseException:
                    c.execute("ROLLBACK")
                    raise
                finally:
                    c.unregister(STAGE)
                    if deletes is not None:
                        c.unregister(DELETES)
            except duckdb.Error as exc:
                raise FatalError(f"merge into {ref.target} failed: {exc}", stage="load",
                                 source=batch.source, table=batch.table,
                                 batch_id=batch.batch_id) from None
        return True

    def is_loaded(self, batch_id: str) -> bool:
        with self._lock:
            try:
                return bool(self._conn.execute(
                    f"SELECT 1 FROM {quote(self.schema)}.{quote('_steadyflow_ledger')} "
                    "WHERE batch_id = ?", [batch_id]).fetchone())
            except duckdb.CatalogException:
                return False

    def query(self, sql: str, params: list[object] | None = None) -> pa.Table:
        """Read access for reconciliation and the demo's comparison."""
        with self._lock:
            return self._conn.execute(sql, params or []).to_arrow_table()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
