"""What the stages record about their work (`Recording`), and a recorder for a process that
never shows it (`Unrecorded`).

The stages call these methods on whatever recorder their pipeline holds; only a process
that can show them needs the Prometheus registry behind them (observe/metrics.py
PipelineMetrics, which implements `Recording`): one that serves /metrics (`run --serve`,
`serve`, a worker's metrics port), one that stays up (`run --follow`, which may be served
later by its own web page) or draws the terminal's progress from the counters. A console
`run` that does none of that (`run --json`, or piped) is the bench's full load and the
incremental command: importing prometheus_client (its exposition pulls http.server,
urllib.request, wsgiref) and building ~30 metric families cost ~10-25 ms of its start-up's
CPU on the main thread, before the extraction starts (bench/NOTES.md, session 15), for
counters nobody reads. Nothing steadyflow decides reads a recorded value back: status and
the loop's liveness come from the state store, so recording nothing changes no outcome.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Literal, Protocol

Stage = Literal["extract", "land", "transform", "load", "quarantine"]
RetryReason = Literal["timeout", "connection", "rate_limited", "server_error", "other"]
BreakerState = Literal["closed", "half-open", "open"]


class Recording(Protocol):
    """The recording half of PipelineMetrics (see there for what each one means)."""

    def declare(self, source: str, table: str, page_size: int | None = None,
                poll_interval: float | None = None) -> None: ...

    def stopped(self) -> None: ...

    def rows(self, source: str, table: str, stage: Stage, n: int, nbytes: int = 0) -> None: ...

    def batch_duration(self, source: str, table: str, stage: Stage, seconds: float) -> None: ...

    def timed(self, source: str, table: str, stage: Stage) -> AbstractContextManager[None]: ...

    def retry(self, source: str, reason: RetryReason) -> None: ...

    def timeout(self, source: str) -> None: ...

    def breaker(self, source: str, state: BreakerState) -> None: ...

    def page_size(self, source: str, table: str, rows: int) -> None: ...

    def queue(self, depth: int, capacity: int, lag_batches: int, lag_seconds: float
              ) -> None: ...

    def pending_age(self, waited: float | None, batches: int | None = None) -> None: ...

    def quarantined(self, source: str, table: str, n: int, nbytes: int = 0) -> None: ...

    def error(self, source: str, table: str, stage: Stage) -> None: ...

    def loaded_cursor(self, source: str, table: str,
                      newest_cursor_epoch_seconds: float) -> None: ...

    def polled(self, source: str, table: str, high_epoch_seconds: float | None,
               at: float | None = None) -> None: ...

    def auth_failing(self, source: str, failing: bool) -> None: ...

    def run_succeeded(self, at: float | None = None) -> None: ...

    def reconcile(self, source: str, table: str, missing: int, extra: int,
                  mismatched: int) -> None: ...


class Unrecorded:
    """Records nothing: the recorder of a process that never shows its metrics (see the
    module's docstring). Every method of `Recording`, each doing nothing."""

    def declare(self, source: str, table: str, page_size: int | None = None,
                poll_interval: float | None = None) -> None:
        pass

    def stopped(self) -> None:
        pass

    def rows(self, source: str, table: str, stage: Stage, n: int, nbytes: int = 0) -> None:
        pass

    def batch_duration(self, source: str, table: str, stage: Stage, seconds: float) -> None:
        pass

    @contextmanager
    def timed(self, source: str, table: str, stage: Stage) -> Iterator[None]:
        yield

    def retry(self, source: str, reason: RetryReason) -> None:
        pass

    def timeout(self, source: str) -> None:
        pass

    def breaker(self, source: str, state: BreakerState) -> None:
        pass

    def page_size(self, source: str, table: str, rows: int) -> None:
        pass

    def queue(self, depth: int, capacity: int, lag_batches: int, lag_seconds: float) -> None:
        pass

    def pending_age(self, waited: float | None, batches: int | None = None) -> None:
        pass

    def quarantined(self, source: str, table: str, n: int, nbytes: int = 0) -> None:
        pass

    def error(self, source: str, table: str, stage: Stage) -> None:
        pass

    def loaded_cursor(self, source: str, table: str,
                      newest_cursor_epoch_seconds: float) -> None:
        pass

    def polled(self, source: str, table: str, high_epoch_seconds: float | None,
               at: float | None = None) -> None:
        pass

    def auth_failing(self, source: str, failing: bool) -> None:
        pass

    def run_succeeded(self, at: float | None = None) -> None:
        pass

    def reconcile(self, source: str, table: str, missing: int, extra: int,
                  mismatched: int) -> None:
        pass
