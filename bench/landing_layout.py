"""Landing stores and compaction, measured: what one batch file costs to land and read on
a local folder and on an S3 API endpoint, and what `compact` does to file count and reads.

    .venv/bin/python bench/landing_layout.py [--pages 200] [--rows 5000]

Runs in the project venv (moto is a dev extra): the S3 endpoint is moto's server on
loopback, an in-memory stand-in that speaks the protocol, so its numbers show the client's
per-request cost on this machine, not a real object store's latency (add the network's
round trips for that). Prints one JSON object per store, plus the load average: compare
figures only from the same machine at a similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from steadyflow.land.local import LocalLanding
from steadyflow.land.object_store import ObjectStoreLanding
from steadyflow.land.parquet import LandingZone
from steadyflow.model import BatchRef
from steadyflow.ports import Landing
from steadyflow.run.compact import compact
from steadyflow.state import SqliteStateStore

KEY, SECRET = "benchkey", f"bench-secret-{uuid.uuid4().hex}"


def page(rows: int, start: int) -> pa.Table:
    ids = pa.array(range(start, start + rows), pa.int64())
    return pa.table({"id": ids, "sku": pc.cast(ids, pa.string()),
                     "qty": pc.multiply(ids, 3), "price": pc.divide(pc.cast(ids, pa.float64()), 7)})


def moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def measure(name: str, store: Landing, workdir: Path, pages: int, rows: int) -> dict[str, object]:
    zone = LandingZone(store)
    state = SqliteStateStore(workdir / f"{name}-state.db")
    refs: list[BatchRef] = []
    tables = [page(rows, i * rows) for i in range(pages)]
    started = time.perf_counter()
    for table in tables:
        ref = zone.write(table, "s", "t", None, None)
        state.record_landed(ref)
        refs.append(ref)
    land_s = time.perf_counter() - started
    for ref in refs:
        state.mark_loaded(ref.batch_id, ref.rows, 0)
    started = time.perf_counter()
    for ref in refs:
        zone.read(ref)
    read_s = time.perf_counter() - started
    files_before = len(list(store.list("s/t/")))
    started = time.perf_counter()
    result = compact(zone, state, [("s", "t")], 64 << 20, include_today=True)
    compact_s = time.perf_counter() - started
    moved = [r for r, _ in state.landed_batches("s", "t")]
    started = time.perf_counter()
    for ref in moved:
        zone.read(ref)
    read_after_s = time.perf_counter() - started
    state.close()
    nbytes = sum(r.nbytes for r in refs)
    return {"store": name, "pages": pages, "rows_per_page": rows,
            "landed_mb": round(nbytes / 1e6, 1),
            "land_ms_per_page": round(1000 * land_s / pages, 2),
            "read_ms_per_batch": round(1000 * read_s / pages, 2),
            "files_before": files_before, "files_after": len(list(store.list("s/t/"))),
            "compact_s": round(compact_s, 2), "compacted_mb": round(result.bytes_written / 1e6, 1),
            "read_ms_per_batch_compacted": round(1000 * read_after_s / pages, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--rows", type=int, default=5_000)
    args = parser.parse_args()
    proc, endpoint = moto()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            client = pafs.S3FileSystem(access_key=KEY, secret_key=SECRET, region="us-east-1",
                                       endpoint_override=endpoint, allow_bucket_creation=True)
            client.create_dir("bench")
            stores: list[tuple[str, Landing]] = [
                ("local", LocalLanding(work / "landing")),
                ("s3-moto", ObjectStoreLanding("s3://bench/lz", endpoint=endpoint,
                                               region="us-east-1", access_key=KEY,
                                               secret_key=SECRET))]
            for name, store in stores:
                print(json.dumps(measure(name, store, work, args.pages, args.rows)), flush=True)
    finally:
        proc.terminate()
        proc.wait()
    print(json.dumps({"loadavg": os.getloadavg()}))


if __name__ == "__main__":
    main()
