"""The seams between stages, as Protocols. Each adapter of a port lives in its own module
with the same method order, so the embedded and scaled implementations read alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from steadyflow.model import BatchRef, Contract, TableRef, TextEncoding, Watermark

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True, slots=True)
class Delivery:
    """One leased message. Until acked it will be delivered again after its lease."""

    ref: BatchRef
    attempt: int


class Buffer(Protocol):
    """A durable queue of batch references between ingestion and processing.

    Implementers guarantee: `put` is idempotent on batch id (a repeat is a no-op) and
    blocks while the buffer holds `capacity` batches (backpressure, never a drop); a
    message that is taken but not acked is delivered again after its lease, counted from
    its delivery or from its holder's last `extend`.
    """

    capacity: int
    lease: float

    def put(self, ref: BatchRef, timeout: float | None = None) -> None: ...
    def get(self, wait: float = 0.0) -> Delivery | None: ...
    # up to `n` more messages ready now, each leased as by `get`; never waits for one (a
    # loader's group: JetStream asks for them in one pull request, not one each)
    def take(self, n: int) -> list[Delivery]: ...
    # once `ack` returns, this instance's `contains`, `depth`, `oldest_age` and `put` see the
    # message gone; the removal itself may still be on its way (JetStream: acked without
    # waiting for the server's reply, awaited by those calls)
    def ack(self, batch_id: str) -> None: ...
    # the holder still works on it (a group load longer than the lease): its lease restarts
    # now; a message this instance does not hold (acked, or never taken) is left as it is
    def extend(self, batch_id: str) -> None: ...
    def nack(self, batch_id: str, delay: float = 0.0) -> None: ...
    def contains(self, batch_id: str) -> bool: ...
    def depth(self) -> int: ...
    def oldest_age(self) -> float | None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LandedFile:
    """One visible file of a landing store: its path relative to the store's root."""

    path: str
    size: int
    mtime: float


class Landing(Protocol):
    """Where landed files live: a local (or shared) directory, or a bucket prefix on an
    object store. Paths are relative, '/'-separated (`source/table/date=D/<id>.parquet`).

    Implementers guarantee:
    - `write` is atomic: a reader in any process on any host sees no file at `path` or all
      of `data`, never a part; a crash mid-write leaves nothing visible; writing the same
      path again with the same bytes is harmless (a batch id names its content).
    - `staged` gives a local file to fill; it is published at `path` as atomically as
      `write` when the block ends, and discarded if the block raises (big files: compaction).
    - `read` returns the whole file, `open` a random-access Arrow file (a Parquet reader then
      fetches only the row groups it reads: bounded memory). A missing path raises
      FatalError whose message names the path (`where` + path).
    - `list` yields visible files only (never a temp file or an unfinished upload);
      `delete` of a missing path is a no-op.
    - Transient trouble (a network error, a full disk) raises RetryableError. No message
      ever carries a credential.
    """

    where: str  # the root, for messages: a directory or s3://bucket/prefix, no credentials

    def write(self, path: str, data: bytes | memoryview) -> None: ...
    def staged(self, path: str) -> AbstractContextManager[Path]: ...
    def read(self, path: str) -> bytes: ...
    def open(self, path: str) -> pa.NativeFile: ...
    def exists(self, path: str) -> bool: ...
    def list(self, prefix: str = "") -> Iterator[LandedFile]: ...
    def delete(self, path: str) -> None: ...
    def sweep_temp(self) -> int: ...
    def close(self) -> None: ...


class Source(Protocol):
    """Reads a table incrementally in keyset order, as Arrow pages.

    `pages` yields (page, high) where high is the (cursor, key) of the page's last row;
    it starts strictly after `after` (or at `since` inclusive, for a lookback re-read).
    """

    def pages(self, table: str, contract: Contract, after: Watermark | None,
              since: object | None) -> Iterator[tuple[pa.Table, Watermark]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Merged:
    """What loading one batch did to the warehouse, counted in its own transaction.

    `changed`: rows inserted, updated to other values, or deleted. A re-read row equal to
    the warehouse's (a lookback window, a redelivered page) is not a change: operators
    compare this number with what the sources really changed.
    """

    changed: int


@dataclass(frozen=True, slots=True)
class LoadPart:
    """One batch of a group load: its validated rows, and the keys a repair deletes."""

    ref: TableRef
    contract: Contract
    batch: BatchRef
    rows: pa.Table
    deletes: pa.Table | None = None
    quarantined: int = 0  # the batch's rows parked by validation, kept in its ledger row


@dataclass(frozen=True, slots=True)
class Ledgered:
    """What the ledger row of a loaded batch says it did, written in the batch's own
    transaction: a loader that dies after that commit and before the state records the
    batch leaves these counts only there. None: a row written before the ledger kept
    them."""

    rows: int
    changed: int | None
    quarantined: int | None


class Warehouse(Protocol):
    """Applies batches in one transaction: stage, merge (later extraction wins), ledger.

    Implementers guarantee: a batch id already in the ledger changes nothing and gives
    None; no reader ever sees part of a batch, nor part of a group; a loaded batch gives
    how many rows it changed (`Merged`), counted inside the transaction, and its ledger
    row keeps that count (`ledgered` reads it back).

    `load_group` merges its parts one after the other in ONE transaction, each with its
    ledger row, and commits once: a part sees the rows of the parts before it, so two
    batches of one key keep the later extraction whatever their order. `parts` may be
    produced lazily (the loader validates each batch as it is needed, so a group holds one
    batch's rows at a time); an error, from a part or from the iterable, rolls the whole
    group back. `load` is a group of one.
    """

    def ensure_table(self, ref: TableRef, contract: Contract) -> None: ...
    # the characters its text holds when not every one (a PostgreSQL database in LATIN1),
    # for validation to quarantine a value it would refuse with its whole batch; None: all
    def text_encoding(self) -> TextEncoding | None: ...
    def load(self, ref: TableRef, contract: Contract, batch: BatchRef, rows: pa.Table,
             deletes: pa.Table | None = None) -> Merged | None: ...
    def load_group(self, parts: Iterable[LoadPart]) -> list[Merged | None]: ...
    def is_loaded(self, batch_id: str) -> bool: ...
    # the highest extraction number above `above` that the ledger rows of `targets` carry,
    # None if none: cheap when none is (run at every start, state/store.py floor_seq)
    def highest_seq(self, targets: Sequence[str], above: int) -> int | None: ...
    def ledgered(self, batch_ids: Sequence[str]) -> dict[str, Ledgered]: ...
    def close(self) -> None: ...
