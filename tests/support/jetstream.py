"""Streams of a test's own on the machine's NATS JetStream server, deleted afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import nats
from nats.js.errors import NotFoundError

from tests.conftest import require_service

NATS_HOST, NATS_PORT = "127.0.0.1", 4222
NATS_URL = f"nats://{NATS_HOST}:{NATS_PORT}"


def delete_stream(name: str) -> None:
    """Delete the stream `name` (there may be none: the test failed before it made one)."""
    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jsm().delete_stream(name)
        except NotFoundError:
            pass
        finally:
            await nc.close()

    asyncio.run(delete())


@contextmanager
def fresh_stream(prefix: str) -> Iterator[str]:
    """A stream name no other test uses (`prefix` and a random suffix), the stream deleted
    afterwards; a NATS server that is not there is `unavailable`."""
    require_service("NATS", NATS_HOST, NATS_PORT)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        delete_stream(name)
