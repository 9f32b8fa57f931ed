"""merge/duckdb.py DuckdbWarehouse.rows: reconcile's warehouse side reads DuckDB's own fetch,
without pyarrow (#15), and every value is of the type and value Arrow gave before (the
canonical comparison and the report must not change with how the rows are read)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb

# one column of each type rows() fetches itself (merge/duckdb.py _PLAIN), in rows of
# typical values, the extremes Python holds, and NULLs
CREATE = """
CREATE TABLE t (b BOOLEAN, i1 TINYINT, i2 SMALLINT, i4 INTEGER, i8 BIGINT, u1 UTINYINT,
  u2 USMALLINT, u4 UINTEGER, u8 UBIGINT, h HUGEINT, f FLOAT, d DOUBLE, n4 DECIMAL(4,1),
  n18 DECIMAL(18,3), n38 DECIMAL(38,10), v VARCHAR, bl BLOB, dt DATE, ts TIMESTAMP);
INSERT INTO t VALUES
  (true, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1.5, 0.1, 1.5, 1.500, 2.0000000001, 'a ~|é', '\\x00a'::BLOB,
   DATE '2024-06-01', TIMESTAMP '2024-06-01 08:00:00.000001'),
  (false, -128, -32768, -2147483648, -9223372036854775808, 255, 65535, 4294967295,
   18446744073709551615, -99999999999999999999999999999999999999, 'nan', '-0.0', -999.9,
   -999999999999999.999, -9999999999999999999999999999.9999999999, '', ''::BLOB,
   DATE '0001-01-01', TIMESTAMP '9999-12-31 23:59:59.999999'),
  (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL);
"""
QUERIES = [
    "SELECT *, NULL AS nothing FROM t ORDER BY i4 NULLS LAST",
    # a bucket's count and checksum as reconcile reads them: a HUGEINT sum
    "SELECT count(*), sum(i8), sum(h), sum(u8), sum(n18), min(v) FROM t",
    "SELECT i4, sum(i8) FROM t WHERE i4 > ? GROUP BY i4",  # with a parameter
]
TIMESTAMPTZ = "SELECT TIMESTAMPTZ '2024-06-01 08:00:00.5+02' AS at, 1 AS n"

CHILD = """
import sys
from pathlib import Path
from steadyflow.merge.duckdb import DuckdbWarehouse

wh = DuckdbWarehouse(Path(sys.argv[1]))
params = {2: [0]}
for i, sql in enumerate(sys.argv[3:]):
    print(repr(wh.rows(sql, params.get(i))))
print(sorted({"pyarrow", "numpy"} & set(sys.modules)))
print(repr(wh.rows(sys.argv[2])))  # a TIMESTAMPTZ: read through Arrow
wh.close()
"""


def _through_arrow(path: Path, sql: str, params: list[Any] | None) -> list[tuple[Any, ...]]:
    """The oracle: the rows as Arrow gives them (how rows() read every result before)."""
    with duckdb.connect(str(path), read_only=True) as conn:
        columns = [c.to_pylist() for c in conn.sql(sql, params=params).to_arrow_table().columns]
    return list(zip(*columns, strict=True))


def test_rows_reads_without_pyarrow_and_gives_what_arrow_gave(tmp_path: Path) -> None:
    """A clean reconcile into DuckDB reads only results of these types: fetched by DuckDB
    itself they must equal Arrow's values type for type (repr: 3 is not Decimal('3')),
    with no pyarrow or numpy imported. A TIMESTAMPTZ (DuckDB's own fetch needs pytz) is
    still read, as the UTC instant Arrow gives."""
    path = tmp_path / "wh.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute(CREATE)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), TIMESTAMPTZ, *QUERIES],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *plain, imported, zoned = proc.stdout.splitlines()
    params: dict[int, list[Any]] = {2: [0]}
    for i, (sql, got) in enumerate(zip(QUERIES, plain, strict=True)):
        assert got == repr(_through_arrow(path, sql, params.get(i))), sql
    assert "Decimal('-99999999999999999999999999999999999990')" in plain[1]  # the sum(h)
    assert imported == "[]"
    assert zoned == repr(_through_arrow(path, TIMESTAMPTZ, None))
    assert "datetime(2024, 6, 1, 6, 0, 0, 500000, tzinfo=" in zoned, zoned
