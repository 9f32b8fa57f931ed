"""A buffer opened for a command that only shows the pipeline (`status`, a read-only
`serve`): a buffer server that does not answer must not keep the rest of the status from
being shown, nor make the pipeline look empty.

The buffer is opened at once when its server answers, as for every other command. When it
does not, a later call tries to open it again (at most every REOPEN_EVERY seconds: an
attempt waits out the connect timeout) and, until that succeeds, raises the error the
open raised: `status` reports "the buffer cannot be read" and fails, and a long-running
viewer shows the queue again once the server is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from steadyflow.errors import RetryableError
from steadyflow.model import BatchRef
from steadyflow.ports import Buffer, Delivery

REOPEN_EVERY = 10.0


class ViewedBuffer:
    """Stands for the buffer `open_` opens, opening it on first use while it fails."""

    def __init__(self, open_: Callable[[], Buffer], capacity: int, lease: float) -> None:
        self._open = open_
        self.capacity = capacity
        self.lease = lease
        self._lock = threading.Lock()
        self._inner: Buffer | None = None
        self._failed: tuple[float, RetryableError] | None = None  # (monotonic time, why)
        try:
            self._buffer()
        except RetryableError:
            pass  # told at each use until its server answers

    def _buffer(self) -> Buffer:
        with self._lock:
            if self._inner is not None:
                return self._inner
            if self._failed is not None and time.monotonic() - self._failed[0] < REOPEN_EVERY:
                raise self._failed[1]
            try:
                self._inner = self._open()
            except RetryableError as exc:
                self._failed = (time.monotonic(), exc)
                raise
            self._failed = None
            return self._inner

    def put(self, ref: BatchRef, timeout: float | None = None) -> None:
        self._buffer().put(ref, timeout)

    def get(self, wait: float = 0.0) -> Delivery | None:
        return self._buffer().get(wait)

    def take(self, n: int) -> list[Delivery]:
        return self._buffer().take(n)

    def ack(self, batch_id: str) -> None:
        self._buffer().ack(batch_id)

    def extend(self, batch_id: str) -> None:
        self._buffer().extend(batch_id)

    def nack(self, batch_id: str, delay: float = 0.0) -> None:
        self._buffer().nack(batch_id, delay)

    def contains(self, batch_id: str) -> bool:
        return self._buffer().contains(batch_id)

    def depth(self) -> int:
        return self._buffer().depth()

    def oldest_age(self) -> float | None:
        return self._buffer().oldest_age()

    def close(self) -> None:
        with self._lock:
            inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()
