"""An S3 API endpoint on loopback for tests: moto's server (`moto[server]`, a dev extra),
started once per test session on a free port, with a fresh bucket per test.

moto is the practical S3-compatible endpoint on this machine's registries; it speaks the
wire protocol pyarrow's S3 client signs and sends, so the object-store landing adapter is
tested through the same code path it takes against AWS or MinIO. Its objects live in the
server process's memory: a pipeline process killed with SIGKILL does not take them along.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs
import pytest

ACCESS_KEY = "sftestaccesskey"
# a recognisable secret: tests assert it appears in no message
SECRET_KEY = f"sf-test-secret-{uuid.uuid4().hex}"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Endpoint:
    url: str  # http://127.0.0.1:PORT

    def client(self) -> pafs.S3FileSystem:
        """A client of the test's own, independent of the adapter under test."""
        return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION,
                                 endpoint_override=self.url, allow_bucket_creation=True,
                                 allow_bucket_deletion=True)

    def new_bucket(self) -> str:
        name = f"sf-{uuid.uuid4().hex[:16]}"
        self.client().create_dir(name)
        return name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """moto's S3 server on 127.0.0.1 and a random free port, for the whole session."""
    port = free_port()
    # its request log goes to a file: a pipe nobody reads fills and stalls the server
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    err = log.read().decode(errors="replace")[-2000:]
                    pytest.fail(f"moto's S3 server did not start on port {port}: {err}")
                time.sleep(0.1)
        yield S3Endpoint(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
