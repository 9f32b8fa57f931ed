"""A MariaDB server of a test's own, for what the machine's shared server cannot show without
changing it for every other test: a default time zone west of UTC (`--default-time-zone`),
or a system zone with daylight saving (the `TZ` of its process, which `SYSTEM` follows
without the server's time zone tables).

It uses the MariaDB binaries of the machine (Debian's `mariadb-server`: mariadb-install-db
and mariadbd); where they are missing the test is `unavailable` (a failure under CI=true).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path

import pymysql

from tests.conftest import require_tool


@contextmanager
def own_mariadb(where: Path, *options: str, env: Mapping[str, str] | None = None
                ) -> Iterator[str]:
    """A fresh server with its files under `where`, started with `options` and `env` added
    to this process's environment, on a free port of 127.0.0.1; yields the URL of its
    database `shapes` (user root, no password). The server stops afterwards."""
    install = require_tool("mariadb-install-db", "mariadb-server")
    server = require_tool("mariadbd", "mariadb-server")
    data = where / "mariadb"
    subprocess.run([install, "--no-defaults", f"--datadir={data}", "--skip-test-db",
                    "--auth-root-authentication-method=normal"], check=True,
                   capture_output=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [server, "--no-defaults", "--user=root", f"--datadir={data}", f"--port={port}",
         "--bind-address=127.0.0.1", f"--socket={where / 'mariadb.sock'}", "--skip-log-bin",
         *options], env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                with closing(pymysql.connect(host="127.0.0.1", port=port, user="root",
                                             password="", autocommit=True)) as conn, \
                        conn.cursor() as cur:
                    cur.execute("CREATE DATABASE shapes")
                break
            except pymysql.err.OperationalError:
                time.sleep(0.2)
        yield f"mysql://root@127.0.0.1:{port}/shapes"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
