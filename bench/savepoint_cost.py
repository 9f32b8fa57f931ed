"""CPU per load part of the ways to send the direct COPY's savepoint (merge/postgres.py):
a ledger-like INSERT, then a one-row COPY (the overhead alone), 16 parts a transaction,
the variants alternating round by round, this process's CPU and its backend's (/proc).

    bench/.venv/bin/python bench/savepoint_cost.py [rounds]

a: INSERT; SAVEPOINT; COPY; RELEASE (psycopg's nested transaction: session 12's code)
b: pipeline(INSERT, SAVEPOINT); COPY      c: one simple query 'INSERT ...; SAVEPOINT'
   (values bound by psycopg.ClientCursor); COPY      d: INSERT; COPY (no savepoint: floor)
"""
import os
import sys
import time
import uuid
from pathlib import Path

import psycopg

PG = "host=127.0.0.1 port=5432 user=postgres"
name = f"sfmicro_{uuid.uuid4().hex[:8]}"
with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as a:
    a.execute(f"CREATE DATABASE {name}")
tick = os.sysconf("SC_CLK_TCK")
def bcpu(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
try:
    conn = psycopg.connect(f"{PG} dbname={name}")
    conn.execute("CREATE TABLE ledger (id text primary key, n int, at timestamptz)")
    conn.execute("CREATE TABLE t (k bigint primary key, v text)")
    conn.commit()
    pid = conn.info.backend_pid
    INS = b"INSERT INTO ledger VALUES (%s, %s, now()) ON CONFLICT DO NOTHING RETURNING id"
    key = [0]
    def copy():
        key[0] += 1
        with conn.cursor().copy(b"COPY t (k, v) FROM STDIN (FORMAT csv)") as cp:
            cp.write(f"{key[0]},x\n".encode())
    def a(i):
        conn.execute(INS, [f"a{i}{key[0]}", 1]).fetchone()
        with conn.transaction():
            copy()
    def b(i):
        with conn.pipeline():
            cur = conn.execute(INS, [f"b{i}{key[0]}", 1])
            conn.execute(b"SAVEPOINT s")
        cur.fetchone()
        copy()
    cc = psycopg.ClientCursor(conn)
    def c(i):
        cc.execute(INS + b"; SAVEPOINT s", [f"c{i}{key[0]}", 1])
        cc.fetchone()
        copy()
    def d(i):
        conn.execute(INS, [f"d{i}{key[0]}", 1]).fetchone()
        copy()
    G, ROUNDS = 16, int(sys.argv[1]) if len(sys.argv) > 1 else 40
    res = {k: [0.0, 0.0] for k in "abcd"}
    for _ in range(ROUNDS):
        for k, fn in (("a", a), ("b", b), ("c", c), ("d", d)):
            c0, b0 = time.process_time(), bcpu(pid)
            with conn.transaction():
                for i in range(G):
                    fn(i)
            res[k][0] += time.process_time() - c0
            res[k][1] += bcpu(pid) - b0
    n = G * ROUNDS
    for k, (cl, be) in res.items():
        print(f"{k}: client {cl / n * 1e6:.0f} us/part, backend {be / n * 1e6:.0f} us/part")
    conn.close()
finally:
    with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as a_:
        a_.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
