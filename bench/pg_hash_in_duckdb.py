"""Prototype (not wired into reconcile): PostgreSQL's hash_record_extended of the reconcile
bench's `sales` record, as engines.py's record mode builds it for PG -> PG, computed in DuckDB
SQL, so a PG -> DuckDB reconcile could hash rows with PostgreSQL's cheap native hash instead of
md5 (bench/RECONCILE.md, session 14).

    bench/.venv/bin/python bench/pg_hash_in_duckdb.py POSTGRES_DSN DUCKDB_FILE [ROWS_TO_CHECK]

(the source database and the DuckDB file reconcile_vs.py loads). Checks the first ROWS_TO_CHECK
rows' hashes one by one and the whole table's sum against PostgreSQL, then times DuckDB's query
(the calling thread's CPU, threads 1). Pieces, each PostgreSQL's (hashfn.c, lookup3, little-endian
byte order; checked against the server, not assumed):
  - hash_bytes_uint32_extended: a, b, c = 0x9e3779b9 + 4 + 3923095; a += k; final(a, b, c);
    the hash is b << 32 | c. int4, bool (as char) and int8 (low half XOR high half, the
    high half inverted for a negative value) hash this way; a timestamptz as its int8 µs
    since 2000-01-01.
  - hash_bytes_extended of a text of <= 11 bytes (the bench's): a, b, c = 0x9e3779b9 + len +
    3923095; a += bytes 0-3, b += bytes 4-7, c += bytes 8-10 << 8 (little-endian words);
    final. Longer texts need the 12-byte mix loop: not here.
  - numeric: hash_bytes_extended over its base-10000 digits (int16, leading and trailing
    zero digits dropped) XOR its weight (sign-extended); zero hashes as seed - 1. Here for a
    numeric(12,2) (at most four digits).
  - a record: r = r * 31 + h (mod 2^64), NULL as 0; done in two 32-bit halves (a chain of
    UHUGEINT `%` cost ten times as much).
DuckDB's `|`, `&`, `<<` and `>>` share one precedence (left to right), like PostgreSQL's: every
operand is parenthesized. Literals past int64 are written as casts of strings (a bare one is a
DOUBLE, and the low bits were lost).
"""

from __future__ import annotations

import os
import sys
import time

import duckdb
import psycopg

# ruff: noqa: E501, E731, E702

M = 0xFFFFFFFF
INIT = lambda n: f"(({0x9E3779B9 + 3923095} + {n}) & {M})"
FINAL = [("c", "b", 14), ("a", "c", 11), ("b", "a", 25), ("c", "b", 16), ("a", "c", 4), ("b", "a", 14), ("c", "b", 24)]
def rot(x, k): return f"((({x} << {k}) | ({x} >> {32 - k})) & {M})"
def bswap32(w): return f"(((({w}) & 255) << 24) | (((({w}) >> 8) & 255) << 16) | (((({w}) >> 16) & 255) << 8) | (({w}) >> 24))"
US2000 = 946684800000000
def int8_k(v): return f"xor(({v}) & {M}, CASE WHEN ({v}) >= 0 THEN (({v}) >> 32) & {M} ELSE xor((({v}) >> 32) & {M}, {M}) END)"
def text_fields(s, i):
    """(a, b, c) start of lookup3 for a text of <= 11 bytes (prototype: longer texts not handled)."""
    b = f"encode({s})"
    v = f"CAST(CAST(({b} || repeat('\\x00'::BLOB, 12 - octet_length({b}))) AS BIT) AS UHUGEINT)"
    w = [bswap32(f"CAST(({v} >> {64 - 32 * j}) & CAST({M} AS UHUGEINT) AS BIGINT)") for j in range(3)]
    n = f"octet_length({b})"
    return (f"(({INIT(n)} + {w[0]}) & {M})", f"(({INIT(n)} + {w[1]}) & {M})", f"(({INIT(n)} + (({w[2]}) & 16777215) * 256) & {M})")
def u32_fields(k):
    return (f"(({INIT(4)} + ({k})) & {M})", INIT(4), INIT(4))
def numeric_fields(x):
    v = f"abs(CAST(({x}) * 100 AS BIGINT))"
    g = [f"(({v} // 10000000000) % 10000)", f"(({v} // 1000000) % 10000)", f"(({v} // 100) % 10000)", f"(({v} % 100) * 100)"]
    s = f"(CASE WHEN {g[0]} <> 0 THEN 0 WHEN {g[1]} <> 0 THEN 1 WHEN {g[2]} <> 0 THEN 2 ELSE 3 END)"
    e = f"(CASE WHEN {g[3]} <> 0 THEN 3 WHEN {g[2]} <> 0 THEN 2 WHEN {g[1]} <> 0 THEN 1 ELSE 0 END)"
    # digit at s + j (0 beyond e: padding)
    def d(j): return "(CASE " + " ".join(f"WHEN {s} + {j} = {i} AND {i} <= {e} THEN {g[i]}" for i in range(4)) + " ELSE 0 END)"
    n = f"(2 * ({e} - {s} + 1))"
    w0 = f"({d(0)} | ({d(1)} << 16))"; w1 = f"({d(2)} | ({d(3)} << 16))"
    return (f"(({INIT(n)} + {w0}) & {M})", f"(({INIT(n)} + {w1}) & {M})", INIT(n)), f"(2 - {s})", f"({v} = 0)"
def build(table, where=""):
    F = []  # (name, a, b, c, kind)
    sel = []
    def add(name, abc, extra=None):
        sel.extend([f"{abc[0]} AS {name}_a", f"{abc[1]} AS {name}_b", f"{abc[2]} AS {name}_c"])
        F.append(name)
    add("f1", u32_fields(int8_k("sale_id")))
    add("f2", u32_fields(int8_k("sale_id >> 32")))
    add("f3", u32_fields("(store_id & 4294967295)"))
    add("f4", text_fields("sku", 4))
    add("f5", u32_fields("(qty & 4294967295)"))
    abc, weight, zero = numeric_fields("unit_price")
    add("f6", abc); sel += [f"{weight} AS f6_w", f"{zero} AS f6_z"]
    add("f7", u32_fields("CAST(unit_price < 0 AS INTEGER)"))
    add("f8", text_fields("currency", 8))
    for i, col in ((9, "sold_at"), (11, "updated_at")):
        us = f"(epoch_us({col}) - {US2000})"
        add(f"f{i}", u32_fields(int8_k(us)))
        add(f"f{i + 1}", u32_fields(int8_k(f"(({us}) // 4294967296) * 4294967296")))
    nulls = ["sale_id", "sale_id", "store_id", "sku", "qty", "unit_price", "unit_price", "currency", "sold_at", "sold_at", "updated_at", "updated_at"]
    keep = ", ".join(f"({c} IS NULL) AS n{i + 1}" for i, c in enumerate(nulls))
    q = f"SELECT sale_id AS k, {', '.join(sel)}, {keep} FROM {table}{where}"
    rest = ["k", "f6_w", "f6_z"] + [f"n{i + 1}" for i in range(12)]
    for lvl, (x, y, r) in enumerate(FINAL):
        cols = []
        for f in F:
            for v in "abc":
                if v == x:
                    cols.append(f"((xor({f}_{x}, {f}_{y}) - {rot(f'{f}_{y}', r)} + 4294967296) & {M}) AS {f}_{x}")
                else:
                    cols.append(f"{f}_{v}")
        q = f"SELECT {', '.join(rest + cols)} FROM ({q}) s{lvl}"
    # the record's combine r = r * 31 + h (mod 2^64) in two 32-bit halves (h's are b, c)
    halves = {f: (f"{f}_b", f"{f}_c") for f in F}
    wh = f"(CASE WHEN f6_w < 0 THEN {M} ELSE 0 END)"
    wl = f"((f6_w + 4294967296) & {M})"
    halves["f6"] = (f"(CASE WHEN f6_z THEN {M} ELSE xor(f6_b, {wh}) END)",
                    f"(CASE WHEN f6_z THEN {M} ELSE xor(f6_c, {wl}) END)")
    q = f"SELECT k, f6_w, f6_z, {', '.join(f'n{i + 1}' for i in range(12))}, " + ", ".join(
        f"{f}_b, {f}_c" for f in F) + f" FROM ({q}) fin"
    rh, rl = "CAST(0 AS BIGINT)", "CAST(0 AS BIGINT)"
    for i, f in enumerate(F):
        hb, hc = halves[f]
        hb = f"(CASE WHEN n{i + 1} THEN 0 ELSE {hb} END)"
        hc = f"(CASE WHEN n{i + 1} THEN 0 ELSE {hc} END)"
        q = (f"SELECT *, (rl{i} * 31 + {hc}) AS lo{i + 1} FROM (SELECT *, {rh} AS rh{i}, {rl} AS rl{i} FROM ({q}) p{i}) c{i}")
        rh = f"((rh{i} * 31 + {hb} + (lo{i + 1} >> 32)) & {M})"
        rl = f"(lo{i + 1} & {M})"
    return (f"SELECT k, CASE WHEN rh >= 2147483648 THEN (rh - 4294967296) * 4294967296 + rl "
            f"ELSE rh * 4294967296 + rl END AS h FROM (SELECT k, {rh} AS rh, {rl} AS rl FROM ({q}) z0) z")
PGREC = ("hash_record_extended(ROW(sale_id, sale_id >> 32, store_id, sku COLLATE \"C\", qty, unit_price, unit_price < 0, currency COLLATE \"C\", "
         "sold_at, CASE WHEN sold_at >= TIMESTAMPTZ '4714-11-24 00:53:22.37568+00 BC' THEN date_bin(INTERVAL '4294967296 microseconds', sold_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') END, "
         "updated_at, CASE WHEN updated_at >= TIMESTAMPTZ '4714-11-24 00:53:22.37568+00 BC' THEN date_bin(INTERVAL '4294967296 microseconds', updated_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') END), 0)")


def main(argv: list[str]) -> None:
    dsn, path = argv[0], argv[1]
    n = int(argv[2]) if len(argv) > 2 else 200_000
    con = duckdb.connect(path, read_only=True, config={"threads": 1})
    with psycopg.connect(dsn) as pg:
        want = dict(pg.execute(f"SELECT sale_id, {PGREC} FROM sales WHERE sale_id <= %s",
                               [n]).fetchall())
        total = pg.execute(f"SELECT sum({PGREC}) FROM sales").fetchone()[0]  # type: ignore[index]
    got = dict(con.execute(build("main.sales", f" WHERE sale_id <= {n}")).fetchall())
    bad = [k for k in want if want[k] != got.get(k)]
    print(f"{len(want)} rows checked one by one, {len(bad)} differ", bad[:3])
    for _ in range(3):
        started = time.thread_time()
        s = con.execute(f"SELECT sum(h) FROM ({build('main.sales')})").fetchone()[0]  # type: ignore[index]
        print(f"DuckDB: {time.thread_time() - started:.2f} CPU-s for the whole table (threads 1), "
              f"sum equal to PostgreSQL's: {int(s) == int(total)}, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
