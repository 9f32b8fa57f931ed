"""A PostgreSQL server of a test's own that the test may stop, kill and start again (the
shared server on 5432 serves every other test): trust authentication on 127.0.0.1, its
data directory kept across restarts. Uses the machine's PostgreSQL binaries (Debian's
`postgresql` package); where they are missing the test is `unavailable`.
"""

from __future__ import annotations

import glob
import os
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


class OwnPostgres:
    """initdb once; `start`, `stop` (fast shutdown), `stop(SIGQUIT)` (a crash) at will."""

    def __init__(self) -> None:
        newest = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = require_tool("initdb", "postgresql", newest[-1] if newest else None)
        self.binary = str(Path(initdb).with_name("postgres"))
        # the server refuses to run as root: as root, it runs as the package's postgres user
        self.user: dict[str, Any] = ({"user": "postgres", "group": "postgres",
                                      "extra_groups": []} if os.geteuid() == 0 else {})
        self.home = Path(tempfile.mkdtemp(prefix="sf_ownpg_"))
        if self.user:
            shutil.chown(self.home, "postgres", "postgres")
        self.data = self.home / "data"
        init = subprocess.run([initdb, "-D", str(self.data), "-U", "postgres",
                               "--auth=trust", "-N"], capture_output=True, text=True,
                              cwd=self.home, timeout=120, **self.user)
        assert init.returncode == 0, init.stdout + init.stderr
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        log = (self.home / "server.log").open("a")
        self.proc = subprocess.Popen(
            [self.binary, "-D", str(self.data), "-p", str(self.port), "-k", str(self.home),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.home, **self.user)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                assert self.proc.poll() is None and time.monotonic() < deadline, (
                    (self.home / "server.log").read_text()[-3000:])
                time.sleep(0.1)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> None:
        """SIGINT: a fast shutdown (sessions ended, a checkpoint); SIGQUIT: an immediate
        one, as after a crash (no checkpoint: the next start recovers from the WAL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    """A started server, gone with its files afterwards."""
    server = OwnPostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()
