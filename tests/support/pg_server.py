"""A PostgreSQL server of a test's own, for what the machine's shared server cannot show
without changing its configuration for every other test: here, a server that asks each
client for its password (the shared one may trust 127.0.0.1).

It uses the PostgreSQL binaries of the machine (Debian's `postgresql` package: initdb and
postgres); where they are missing the test is `unavailable` (a failure under CI=true).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import require_tool


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def password_postgres() -> Iterator[str]:
    """A fresh server on a free port of 127.0.0.1 that checks passwords (scram-sha-256) on
    every TCP connection; yields its superuser's URL (user postgres, with its password, to
    database postgres). The server and its files are gone afterwards."""
    newest = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = require_tool("initdb", "postgresql", newest[-1] if newest else None)
    server = str(Path(initdb).with_name("postgres"))
    # the server refuses to run as root: as root, it runs as the package's postgres user
    user: dict[str, Any] = ({"user": "postgres", "group": "postgres", "extra_groups": []}
                            if os.geteuid() == 0 else {})
    home = Path(tempfile.mkdtemp(prefix="sf_pg_"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        if user:
            shutil.chown(home, "postgres", "postgres")
        password = secrets.token_hex(12)
        pwfile = home / "pw"
        pwfile.write_text(password)
        if user:
            shutil.chown(pwfile, "postgres", "postgres")
        data = home / "data"
        init = subprocess.run(
            [initdb, "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile),
             "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-N"],
            capture_output=True, text=True, cwd=home, timeout=120, **user)
        assert init.returncode == 0, init.stdout + init.stderr
        port = _free_port()
        log = (home / "server.log").open("w")
        proc = subprocess.Popen(
            [server, "-D", str(data), "-p", str(port), "-k", str(home),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=log, stderr=subprocess.STDOUT, cwd=home, **user)
        log.close()
        url = f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    (home / "server.log").read_text()[-3000:])
                time.sleep(0.1)
        yield url
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # a fast shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(home, ignore_errors=True)
