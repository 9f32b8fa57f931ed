"""SQLite → Arrow without Python rows: keyset pages read by adbc-driver-sqlite.

`SqlSource` builds a Python object per value (sqlite3) and Arrow again from those; on the
bench's 1M-row table that was 5.2 CPU-s against 0.8 CPU-s for ADBC reading the same pages
into Arrow in C (bench/NOTES.md). `SqliteArrowSource` reads the same keyset pages (same
query, same bound parameters, same order) through ADBC.

Same values. SQLite types values, not columns: one column can hold integers, reals, text
and blobs side by side. sqlite3 hands each back as it is stored; ADBC gives a column one
Arrow type (from its first rows) and, past them, refuses some mixes and silently converts
others (an integer after text comes back as '5', an integer after reals as 3.0). So every
page also selects one integer that encodes each column's storage class in that row
(`_classes`), computed by SQLite in the same statement; if any column of the page mixes two
classes (NULL aside), the page is read again by sqlite3. A page with one class per column
gives exactly the Python values sqlite3 gives (int, float, str, bytes, None), and each
column is then converted as `column_to_arrow` converts those values: by the same Arrow
casts on the same text where that is what it does (text → timestamp through
`cast_text_time`, text → date/decimal/number), by `column_to_arrow` itself on the Python
values otherwise (a real in a decimal column, an integer in a bool column). A stored spelling
of a time is thus parsed exactly as before, and a value that does not fit costs its row
with the same reason. `tests/integration/test_sqlite_read_paths.py` compares both paths.

Read by sqlite3 instead: reconciliation's `where` pages, a page mixing classes, a page with
text that is not UTF-8 (ADBC copies the bytes; sqlite3's lenient read marks each such
value with a reason), a keyset value that is
not an integer, real or text, a contract of more than 27 columns (the class code), and any
page ADBC fails on (a busy database included: sqlite3 waits for it up to the statement
timeout). A page is bounded like the sqlite3 path's: past statement_timeout + grace the
watchdog cancels it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from steadyflow.arrow_types import cast_exact, cast_text_decimal, cast_text_time
from steadyflow.config import SourceConfig
from steadyflow.extract import key_check
from steadyflow.extract import key_spellings as spellings
from steadyflow.extract.arrow_values import page_table, rows_to_arrow
from steadyflow.extract.dialects import ends_of
from steadyflow.extract.sql import SqlSource
from steadyflow.model import Contract, Watermark
from steadyflow.observe import logs
from steadyflow.resilience import Watchdog, watchdog_grace

log = logs.get("extract")

_CLASSES = ("null", "integer", "real", "text", "blob")
_MAX_COLUMNS = 27  # 5**27 < 2**63: the class code fits an int64
_TEXT_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError)


def class_code(idents: Sequence[str]) -> str:
    """SQL for one integer naming each column's storage class in a row (base 5)."""
    terms = [f"(CASE typeof({ident}) WHEN 'null' THEN 0 WHEN 'integer' THEN 1 WHEN 'real' "
             f"THEN 2 WHEN 'text' THEN 3 ELSE 4 END) * {5 ** i}"
             for i, ident in enumerate(idents)]
    return " + ".join(terms)


def mixed_columns(codes: pa.ChunkedArray, width: int) -> list[int]:
    """The columns (by position) holding more than one non-null storage class."""
    seen: list[set[int]] = [set() for _ in range(width)]
    for code in pc.unique(codes).to_pylist():
        for i in range(width):
            if code is not None and code // 5 ** i % 5:
                seen[i].add(code // 5 ** i % 5)
    return [i for i, classes in enumerate(seen) if len(classes) > 1]


_PROFILE_BATCH = 65_536  # rows per batch of the cursor check's read


class SqliteArrowSource(SqlSource):
    """A SQLite source whose keyset pages are read as Arrow by adbc-driver-sqlite; the
    probe, the catalog and every page ADBC cannot read faithfully use sqlite3."""

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self._adbc: Any = None
        self.read_by = ""  # which driver read the last page: "adbc" or "sqlite3"

    @property
    def adbc(self) -> Any:
        if self._adbc is None:
            from adbc_driver_sqlite import dbapi

            # autocommit: ADBC's DB-API default keeps one read transaction open from the
            # first query on, so a kept connection (run --follow) would read the same
            # snapshot forever and never see a later write
            self._adbc = dbapi.connect(f"file:{self.config.path or ''}?mode=ro",
                                       autocommit=True)
        return self._adbc

    def close(self) -> None:
        if self._adbc is not None:
            try:
                self._adbc.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._adbc = None
        super().close()

    def page(
        self,
        table: str,
        contract: Contract,
        after: Watermark | None,
        since: Any | None,
        limit: int,
        where: tuple[str, Sequence[Any]] | None = None,
        upto: Watermark | None = None,
    ) -> tuple[pa.Table, Watermark | None]:
        """One keyset page as Arrow, with the (cursor, key) of its last row: the same
        rows, values and watermark as `SqlSource.page`, which reads what this cannot."""
        self.read_by = "sqlite3"
        width = len(contract.columns)
        if where is not None or width > _MAX_COLUMNS:
            return super().page(table, contract, after, since, limit, where, upto)
        query, params = self.page_query(table, contract, after, since, limit, upto=upto)
        if not all(isinstance(p, int | float | str) for p in params):
            return super().page(table, contract, after, since, limit, where, upto)
        raw = self._fetch(self._with_classes(table, contract, query), params)
        if raw is None or mixed_columns(raw.column(width), width) or not _utf8(raw):
            return super().page(table, contract, after, since, limit, where, upto)
        raw = raw.drop_columns([raw.column_names[width]])
        self.read_by = "adbc"
        if raw.num_rows == 0:
            return rows_to_arrow([], contract), None
        key_check.refuse_key_spellings(self, table, contract, raw.column)
        last = list(raw.slice(raw.num_rows - 1, 1).to_pylist()[0].values())
        high = self._high(table, contract, last)
        return conform(raw, contract), high

    def _with_classes(self, table: str, contract: Contract, query: str) -> str:
        """The page query with the class code as one more output column."""
        plain = self._select(table, contract)
        if not query.startswith(plain):
            raise AssertionError("page_query no longer starts with the select list")
        d = self.dialect
        idents = [f"{d.ident(table)}.{d.ident(c.name)}" for c in contract.columns]
        head = plain[: -len(f" FROM {d.ident(table)}")]
        return (f"{head}, {class_code(idents)} AS _sf_classes FROM {d.ident(table)}"
                + query[len(plain):])

    def _read_cursor_profile(self, table: str, column: str, ctype: str, where: str,
                             params: Sequence[Any]) -> tuple[Any, ...]:
        """A time cursor's profile (SqliteDialect.read_profile) computed by Arrow on the
        column read through ADBC in batches: the same answer as the SQL profile at about
        a sixth of its CPU (the GLOB and substr per row in SQLite's VM were 5.2 CPU-s per
        1M rows, bench/NOTES.md). A column holding numbers or blobs, text that is not
        UTF-8, or anything ADBC fails on, is profiled by the SQL query instead."""
        if ctype not in ("timestamp", "date"):
            return super()._read_cursor_profile(table, column, ctype, where, params)
        d = self.dialect
        col = d.ident(column)
        sql = (f"SELECT CASE WHEN typeof({col}) = 'text' THEN {col} END, typeof({col}) "
               f"IN ('integer', 'real', 'blob') FROM {d.ident(table)}"
               + (f" WHERE {where}" if where else ""))
        profile = self._stream(sql, params, lambda batches: text_time_profile(batches, ctype))
        if profile is None:
            return super()._read_cursor_profile(table, column, ctype, where, params)
        return profile

    def _text_spellings(self, table: str, key: str, ctype: str) -> spellings.Spellings:
        """The key column's text spellings (extract/key_spellings.py) from its text read
        through ADBC in batches, by Arrow: no Python object per value. Text that is not
        UTF-8, or anything ADBC fails on, is read by sqlite3 instead."""
        sql = self.dialect.key_texts_sql(table, key)
        assert sql is not None

        def fold(batches: Any) -> spellings.Spellings | None:
            out = spellings.Spellings(frozenset({"text"}))
            for batch in batches:
                text = batch.column(0)
                if len(text) == 0:
                    continue
                if not pa.types.is_string(text.type) and not pa.types.is_large_string(
                        text.type):
                    return None
                try:
                    text.validate(full=True)
                except pa.ArrowInvalid:
                    return None
                out = out.merge(spellings.of_text(text.cast(pa.string()), ctype))
            return out

        found: spellings.Spellings | None = self._stream(sql, [], fold)
        return super()._text_spellings(table, key, ctype) if found is None else found

    def _stream(self, sql: str, params: Sequence[Any], consume: Any,
                batch_rows: int | None = _PROFILE_BATCH) -> Any:
        """`consume(record batch reader)` of a query through ADBC, bounded like a page; None
        if ADBC fails (the caller then asks sqlite3). `batch_rows` None: the driver's own."""
        policy = self.config.resilience
        try:
            cur = self.adbc.cursor()
        except Exception:  # noqa: BLE001 - the sqlite3 path reports what is wrong
            self.close()
            return None
        dog = Watchdog(policy.statement_timeout + watchdog_grace(policy), cur.adbc_cancel)
        try:
            with dog:
                if batch_rows is not None:
                    try:
                        cur.adbc_statement.set_options(
                            **{"adbc.sqlite.query.batch_rows": str(batch_rows)})
                    except Exception:  # noqa: BLE001 - an older driver: its default batches
                        pass
                cur.execute(sql, parameters=tuple(params) if params else None)
                return consume(cur.fetch_record_batch())
        except Exception:  # noqa: BLE001 - not UTF-8, busy, cancelled, a type mix...:
            return None  # sqlite3 reads it
        finally:
            try:
                cur.close()
            except Exception:  # noqa: BLE001
                pass

    def _fetch(self, sql: str, params: Sequence[Any]) -> pa.Table | None:
        """The page through ADBC, or None: read it by sqlite3 (see the module docstring)."""
        table: pa.Table | None = self._stream(sql, params, lambda reader: reader.read_all(),
                                              batch_rows=None)
        return table


# SqliteDialect.cursor_profile_sql's shape test as one expression (GLOB's [0-9] is ASCII,
# as RE2's \d is): date and time, then an optional fraction of at least one digit, then
# no zone, 'Z', or ±HH:MM
_SHAPES = {
    "date": r"^\d{4}-\d{2}-\d{2}$",
    "timestamp": r"(?s)^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$",
}


def text_time_profile(batches: Any, ctype: str) -> tuple[Any, ...] | None:
    """SqliteDialect.read_profile's time-cursor profile from batches of (the value when
    stored as text, else null; whether it is stored as a number or blob). None when a
    row is a number or blob (the SQL profile names those) or text is not UTF-8."""
    bad, example = 0, None
    seps: set[str] = set()
    zones: set[str] = set()
    widths: set[int] = set()
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if pc.max(batch.column(1)).as_py():
            return None
        text = pc.drop_null(batch.column(0))
        if not pa.types.is_string(text.type) and not pa.types.is_large_string(text.type):
            if len(text) == 0:
                continue
            return None
        try:
            text.validate(full=True)
        except pa.ArrowInvalid:
            return None
        wrong = pc.invert(pc.match_substring_regex(text, _SHAPES[ctype]))
        count = pc.sum(wrong).as_py() or 0
        if count:
            bad += count
            least = pc.min(pc.filter(text, wrong)).as_py()
            example = least if example is None or least < example else example
        seps.update(pc.unique(pc.utf8_slice_codeunits(text, 10, 11)).to_pylist())
        # SQLite's zone: after a '.' in place 20 the text past its digits, else from 20 on
        dotted = pc.match_substring_regex(text, r"(?s)^.{19}\.")
        zone = pc.if_else(dotted, pc.replace_substring_regex(text, r"(?s)^.{19}\.[0-9]*", ""),
                          pc.replace_substring_regex(text, r"(?s)^.{0,19}", ""))
        zones.update(pc.unique(zone).to_pylist())
        zulu: Any = pc.equal(zone, pa.scalar("Z"))
        if pc.any(zulu).as_py():
            widths.update(pc.unique(pc.utf8_length(pc.filter(text, zulu))).to_pylist())
    # only the least and greatest of each set, as the SQL profile keeps them
    return (0, None, 0, bad, example,
            *(ends_of(frozenset(v)) for v in (seps, zones, widths)))


def _utf8(raw: pa.Table) -> bool:
    """Is all text valid UTF-8? ADBC copies SQLite's text bytes as they are; sqlite3's
    lenient read marks a value that is not (a reason per row), so such a page is its."""
    for col in raw.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            try:
                col.validate(full=True)
            except pa.ArrowInvalid:
                return False
    return True


def _text_to(text: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """`column_to_arrow`'s conversion of a text column to a non-text type, on the same text."""
    try:
        if pa.types.is_timestamp(target):
            return pa.chunked_array([cast_text_time(text.combine_chunks(), target)])
        if pa.types.is_decimal(target):
            return pa.chunked_array([cast_text_decimal(text.combine_chunks(), target)])
        return cast_exact(text, target)
    except _TEXT_ERRORS:
        return text


def _fast(col: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray | None:
    """`col` (one storage class) as `column_to_arrow` makes sqlite3's values of it, by Arrow
    alone; None where that takes `column_to_arrow` itself."""
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        if pa.types.is_string(target):
            return col if t == target else pc.cast(col, target)
        if pa.types.is_binary(target) or pa.types.is_large_binary(target):
            return None
        return _text_to(col.cast(pa.string()), target)
    if pa.types.is_integer(t) and pa.types.is_integer(target):
        try:
            return pc.cast(col, target)  # safe: an overflow raises, as pa.array does
        except _TEXT_ERRORS:
            return None
    if pa.types.is_float64(t) and pa.types.is_float64(target):
        return col
    return None


def conform(raw: pa.Table, contract: Contract) -> pa.Table:
    """The page in contract types, with model.INVALID as `rows_to_arrow` makes it."""
    columns: list[pa.ChunkedArray | list[Any]] = []
    for i, c in enumerate(contract.columns):
        fast = _fast(raw.column(i), c.arrow_type)
        columns.append(raw.column(i).to_pylist() if fast is None else fast)
    return page_table(contract, raw.num_rows, columns)


__all__ = ["SqliteArrowSource", "class_code", "conform", "mixed_columns",
           "text_time_profile"]
