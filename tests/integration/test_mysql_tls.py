"""MariaDB over TLS: the connectorx pages travel as the pymysql session does.

pymysql's PREFERRED mode (a DSN that asks nothing about TLS) encrypts whenever the server
offers TLS; connectorx connected in plain text whatever it offered. The pages (every page
of a first load, and of any busy cursor pass) crossed the network unencrypted beside an
encrypted probe, and an account that must use TLS (REQUIRE SSL) was refused on every
page ("Access denied", reported as a wrong password): the table never loaded.

The shared MariaDB runs without TLS, so this module starts its own, with a throwaway
self-signed certificate, on a free port (a few seconds).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pymysql
import pytest
from tests.conftest import require_tool, unavailable
from tests.support.read_paths import contract, read_all

from steadyflow.config import SourceConfig
from steadyflow.extract.mysql_arrow import MysqlArrowSource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tls_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A MariaDB of its own with TLS offered (not required server-wide), database test,
    an account `sec` that REQUIRE SSL, and table t of 50 rows."""
    server = require_tool("mariadbd", "mariadb-server", "/usr/sbin/mariadbd")
    install = require_tool("mariadb-install-db", "mariadb-server")
    openssl = require_tool("openssl", "openssl")
    base = tmp_path_factory.mktemp("tls-mariadb")
    (base / "data").mkdir()
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(base / "key.pem"), "-out", str(base / "cert.pem"), "-days", "1",
                    "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    subprocess.run([install, "--no-defaults", f"--datadir={base / 'data'}", "--user=root",
                    "--auth-root-authentication-method=normal", "--skip-test-db"],
                   check=True, capture_output=True, timeout=90)
    port = free_port()
    proc = subprocess.Popen(
        [server, "--no-defaults", f"--datadir={base / 'data'}", "--user=root",
         f"--port={port}", "--bind-address=127.0.0.1", f"--socket={base / 'sock'}",
         f"--pid-file={base / 'pid'}", f"--ssl-cert={base / 'cert.pem'}",
         f"--ssl-key={base / 'key.pem'}", "--skip-name-resolve",
         "--innodb-buffer-pool-size=16M", f"--log-error={base / 'err.log'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = pymysql.connect(host="127.0.0.1", port=port, user="root",
                                       connect_timeout=2)
                break
            except pymysql.err.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    unavailable("a MariaDB with TLS did not start: "
                                + (base / "err.log").read_text()[-500:])
                time.sleep(0.2)
        with conn, conn.cursor() as cur:
            for sql in ("CREATE DATABASE test",
                        "CREATE USER 'sec'@'%' IDENTIFIED BY 'pw' REQUIRE SSL",
                        "GRANT ALL ON test.* TO 'sec'@'%'",
                        "CREATE TABLE test.t (id int PRIMARY KEY, v varchar(10))",
                        "INSERT INTO test.t SELECT seq, concat('v', seq) FROM "
                        "test.seq_1_to_50"):
                cur.execute(sql)
            conn.commit()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def tls_accepts(port: int) -> int:
    """TLS handshakes the server has accepted so far."""
    with pymysql.connect(host="127.0.0.1", port=port, user="root") as conn, \
            conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'")
        row = cur.fetchone()
    assert row is not None
    return int(row[1])


@pytest.mark.parametrize("user", ["sec:pw", "root"])
def test_arrow_pages_use_tls_when_the_session_does(tls_port: int, user: str) -> None:
    """Key-order pages go to connectorx: each of its connections must be TLS as the
    pymysql session is. `sec` REQUIRE SSL: a plain connection is refused, so reading
    every row proves it; for root (TLS offered, not required) the server's count of TLS
    handshakes shows connectorx's as well as pymysql's."""
    dsn = f"mysql://{user}@127.0.0.1:{tls_port}/test"
    source = MysqlArrowSource(SourceConfig(  # type: ignore[arg-type]
        name="m", kind="mysql", dsn=dsn, tables=[{"name": "t", "contract": "c"}]))
    before = tls_accepts(tls_port)
    rows, _ = read_all(source, "t", contract(("id", "int64"), ("v", "string")), 20)
    assert rows["id"].to_pylist() == list(range(1, 51))
    # tls_accepts' own, pymysql's, and connectorx's (at least one per page)
    assert tls_accepts(tls_port) - before >= 1 + 1 + 3
