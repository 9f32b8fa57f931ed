"""The error tree. Each class says what the caller must do, not what broke.

    SteadyflowError                  root; carries stage, source, table, batch id, hint
    ├── ConfigError                  the config file is wrong; nothing ran (fatal)
    ├── FatalError                   retrying cannot help: fix something, then rerun
    │   ├── AuthError                wrong credentials (never echoed)
    │   ├── SchemaError              missing table/column/key, incompatible type change
    │   ├── ContractError            the table contract itself is inconsistent
    │   ├── LandedFileMissing        a landed file is not where its manifest entry says
    │   └── LoopBusy                 another process runs this pipeline's loop (host, pid)
    ├── RetryableError               transient: back off and try again
    │   ├── SourceTimeout            a query or request exceeded its timeout
    │   ├── SourceUnavailable        connection refused/reset, 5xx, breaker open
    │   ├── RateLimited              429 with an optional Retry-After
    │   ├── WarehouseUnavailable     the warehouse is down; batches wait in the buffer
    │   ├── StateUnavailable         the shared state database is unreachable; retry
    │   ├── TableBusy                another extractor holds the table's lease; skipped
    │   └── ExtractionFenced         this extractor lost its lease; it records nothing more
    ├── QuarantineError              this input is bad; park it with a reason, go on
    └── RunFailed                    Pipeline.run_once() ended with a table's error; the
                                     other tables ran; `.summary` holds the whole RunSummary

Driver errors are translated once, at the adapter boundary, with `raise ... from exc`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class SteadyflowError(Exception):
    """Root of every error steadyflow raises on purpose."""

    message: str
    stage: str | None = None
    source: str | None = None
    table: str | None = None
    batch_id: str | None = None
    hint: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        where = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("stage", self.stage),
                ("source", self.source),
                ("table", self.table),
                ("batch", self.batch_id),
            )
            if v
        )
        text = f"{self.message} [{where}]" if where else self.message
        return f"{text}\n  hint: {self.hint}" if self.hint else text

    @property
    def retryable(self) -> bool:
        return isinstance(self, RetryableError)


class ConfigError(SteadyflowError):
    """The pipeline config is invalid; raised before any work starts."""


class FatalError(SteadyflowError):
    """Retrying will not help; an operator must act."""


class AuthError(FatalError):
    """Credentials were rejected. The message never contains the secret."""


class SchemaError(FatalError):
    """A table, column or key is missing, or a type changed incompatibly."""


class ContractError(FatalError):
    """The table contract contradicts itself or the source."""


class LandedFileMissing(FatalError):
    """A landed file is not at its path (deleted by `steadyflow gc`, moved by `compact`
    since the reference was taken, or lost); the message names the path."""


class LoopBusy(FatalError):
    """Another process holds the state directory's loop lock (run/lock.py): a second loop
    would only fail on the warehouse or race the first, so it is refused up front."""


class RetryableError(SteadyflowError):
    """A transient failure: back off with jitter and try again."""


class SourceTimeout(RetryableError):
    """A statement or request timed out; the next page should be smaller."""


class SourceUnavailable(RetryableError):
    """The source could not be reached or answered with a server error."""


@dataclass(eq=False)
class RateLimited(RetryableError):
    """The source asked us to slow down; wait at least `retry_after` seconds."""

    retry_after: float | None = None


class WarehouseUnavailable(RetryableError):
    """The warehouse could not be reached; batches stay queued until it returns."""


class StateUnavailable(RetryableError):
    """The PostgreSQL state store cannot be reached (scaled mode). Nothing half-done is
    recorded: every state change is one transaction, so the step is retried whole."""


class TableBusy(RetryableError):
    """Another live extractor holds this table's extraction lease (an overlapping run,
    `extract` beside `run --follow`, a repair); this one skipped the table. The holder
    extracts it, or the next run does."""


class ExtractionFenced(RetryableError):
    """This extractor's lease on the table was taken over by another after it stalled past
    the lease (a stopped process, a long pause). Whatever it read since is older than what
    the new holder reads, so it records, enqueues and advances nothing; the next run
    resumes from the checkpoint the new holder left."""


class LoadCut(ExtractionFenced):
    """A first load's bound was cut while its reader paged: another reader took the far
    part of the reader's key range (run/steal.py) after it last recorded. The page in hand
    may hold rows past the new bound, so it is not recorded; the reader reads on from its
    last recorded key up to the new bound. A subclass of ExtractionFenced, so any path
    that does not expect it records nothing, as a fenced reader does."""


class QuarantineError(SteadyflowError):
    """This input cannot be processed as is; park it and keep going."""


@dataclass(eq=False)
class RunFailed(SteadyflowError):
    """`Pipeline.run_once()` ended with errors (a table failed, a batch failed for good).

    A library caller would otherwise have to remember to check `summary.ok`; an unchecked
    summary is a silent failure. The run itself went as far as it could: the other tables
    were extracted and loaded, and their checkpoints moved. `summary` is that run's
    RunSummary (typed Any: errors.py must not import the runner); `failed_tables` and
    `errors` name what to fix. Not retryable as a whole: some of its errors may be
    transient (a source down), others not (a bad password); run_once again after fixing
    them, or call `run_once(raise_on_error=False)` to get the summary as a value.
    """

    summary: Any = None

    @property
    def failed_tables(self) -> list[str]:
        return list(getattr(self.summary, "failed_tables", []))

    @property
    def errors(self) -> list[str]:
        return list(getattr(self.summary, "errors", []))
