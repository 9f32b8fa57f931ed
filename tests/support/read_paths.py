"""What the read-path tests (tests/integration/test_{pg,mysql,sqlite}_read_paths.py) share:
a one-table contract, every page of a source read into one table, and rows made
comparable across paths."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from steadyflow.extract.sql import SqlSource
from steadyflow.model import Column, Contract, Watermark


def contract(*columns: tuple[str, str], key: tuple[str, ...] = ("id",),
             cursor: str = "id") -> Contract:
    return Contract(columns=tuple(Column(n, t) for n, t in columns), primary_key=key,
                    cursor=cursor)


def read_all(source: SqlSource, table: str, c: Contract, size: int,
             after: Watermark | None = None) -> tuple[pa.Table, Watermark | None]:
    """Every page of `table` after `after`, in one table, and the last page's watermark;
    the source is closed afterwards."""
    pages, high = [], after
    try:
        for rows, last in source.pages(table, c, after, None, size):
            pages.append(rows)
            high = last
    finally:
        source.close()
    return (pa.concat_tables(pages, promote_options="permissive") if pages else
            pa.table({n: pa.array([], pa.string()) for n in c.names})), high


def comparable(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as Python values, NaN made comparable."""
    return [{k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
            for r in table.to_pylist()]
