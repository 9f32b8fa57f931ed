"""The ingestion half of the loop: pages from a source → landing → manifest → buffer →
checkpoint, in that order, for one table.

The order is the guarantee. The checkpoint moves only after its batch is landed and
published, so a crash anywhere re-reads at most the pages after the last checkpoint, and
because a batch id is derived from its content, a re-read page is the same batch.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from steadyflow.config import (
    IDENT,
    RESERVED_WHY,
    SourceConfig,
    TableConfig,
    adaptive_lookback,
    reserved,
)
from steadyflow.errors import (
    FatalError,
    LoadCut,
    QuarantineError,
    SchemaError,
    SourceTimeout,
    TableBusy,
)
from steadyflow.extract.chain import TokenChain
from steadyflow.extract.dialects import OpenSince
from steadyflow.extract.http import (
    RAW_SUFFIX,
    REJECTED_SUFFIX,
    BadPayload,
    HttpPage,
    HttpSource,
    PageTooLarge,
    RawPage,
    Rejected,
    is_raw_page,
    is_rejected_records,
    parse_page,
    parse_records,
    rejected_table,
)
from steadyflow.extract.sql import BUSY_PROBE_EVERY, SqlSource
from steadyflow.failpoints import failpoint
from steadyflow.land.parquet import LandingZone
from steadyflow.model import (
    TEXT_DATE,
    BatchRef,
    Contract,
    TableRef,
    Watermark,
    decode_value,
    drift_type,
    encode_value,
    floor_day,
    parse_text_time,
    past_every_number,
    past_the_type,
    step_back,
)
from steadyflow.observe import logs
from steadyflow.observe.recording import Recording
from steadyflow.ports import Buffer
from steadyflow.resilience import PageSizer, SourceGuard
from steadyflow.run.lease import WAIT_SECONDS as LEASE_WAIT
from steadyflow.run.lease import KeptLease
from steadyflow.run.lease import hold as hold_lease
from steadyflow.state import Lease, LoadLease, StateStore

if TYPE_CHECKING:
    from steadyflow.run.pipeline import Pipeline

log = logs.get("extract")

Source = SqlSource | HttpSource


def cursor_epoch(cursor: object) -> float | None:
    """A time cursor as epoch seconds (naive = UTC, a date at its midnight, a SQLite
    stored text parsed as ISO 8601); None for any other cursor: lag is in seconds."""
    if isinstance(cursor, str):
        try:
            cursor = datetime.fromisoformat(cursor)
        except ValueError:
            return None
    if isinstance(cursor, datetime):
        return (cursor if cursor.tzinfo else cursor.replace(tzinfo=UTC)).timestamp()
    if isinstance(cursor, date):
        return datetime(cursor.year, cursor.month, cursor.day, tzinfo=UTC).timestamp()
    return None


def _refuse_endless(cursor: object, ref: TableRef, contract: Contract) -> None:
    """A checkpoint at NaN or +Infinity, or past every value of the cursor's type
    (`past_the_type`; recorded before such cursors were refused at the probe,
    SqlSource._check_end) sorts after every number a loadable row holds: no row is ever
    read after it, even once the source row is corrected. Refused with the fix instead of
    polling on, every run ok, reading nothing."""
    column = contract.cursor
    if past_every_number(cursor) or past_the_type(
            cursor, contract.column(column).parsed_type):
        raise SchemaError(
            f"the checkpoint of {ref.label} is {cursor} in cursor column {column}: no row "
            "sorts after it, so nothing would ever be read again", stage="extract",
            source=ref.source, table=ref.table,
            hint=f"give the rows a real {column}, then `steadyflow reset --table "
                 f"{ref.label}` (the next run reads the table again; the merge keeps the "
                 "warehouse exact)")


def _refuse_reordered(mark: Watermark, contract: Contract, ref: TableRef) -> None:
    """A checkpoint taken on other (cursor, key) columns than the contract's (the cursor
    switched from created_at to updated_at, a key column added) is no position in the new
    order: compared with the new cursor, a row updated before the switch whose new value
    lies behind the old checkpoint was never read, every run ok (and a longer key failed
    unnamed). Refused with the reset that reads the table again in the new order."""
    now = (contract.cursor, *contract.primary_key)
    if mark.on and [n.lower() for n in mark.on] != [n.lower() for n in now]:
        raise SchemaError(
            f"the checkpoint of {ref.label} was taken on (cursor, key) ({', '.join(mark.on)}) "
            f"and the contract now orders by ({', '.join(now)}): a position in one order "
            "skips rows in another", stage="extract", source=ref.source, table=ref.table,
            hint=f"`steadyflow reset --table {ref.label}` reads the table again in the new "
                 "order (the merge keeps the warehouse exact; drop the warehouse table "
                 "first if the primary key changed), or restore the contract's cursor and key")


def _refuse_renumbered(cursor: int, issued: int | None, contract: Contract,
                       ref: TableRef) -> None:
    """The source's numbering of an integer cursor (sequence, AUTO_INCREMENT) has handed
    out less than the checkpoint: it started again (the table emptied with TRUNCATE ...
    RESTART IDENTITY or MariaDB's TRUNCATE, ALTER SEQUENCE ... RESTART), and every row it
    numbers up to the checkpoint again sorts behind it: never read, every run ok, the
    warehouse keeping the old rows under those keys. Refused with the reset."""
    if issued is None or issued >= cursor:
        return
    raise SchemaError(
        f"the numbering of cursor column {contract.cursor} of {ref.label} started again: "
        f"it has handed out numbers up to {issued}, the checkpoint is at {cursor}, so rows "
        f"numbered up to {cursor} again would never be read", stage="extract",
        source=ref.source, table=ref.table,
        hint=f"`steadyflow reset --table {ref.label}` reads the table again from its start "
             "(the merge replaces rows loaded under a reused key; `reconcile --repair` with "
             "mirror_deletes removes the ones gone)")


def _time_and_unit(cursor: object) -> tuple[datetime, timedelta] | None:
    """A time cursor's value as a UTC instant and the largest unit it may be stored in
    (TableExtractor._ties_open), None for a value that is no time."""
    if isinstance(cursor, str):
        if TEXT_DATE.match(cursor):
            try:
                cursor = floor_day(cursor)
            except ValueError:
                return None
        else:
            parsed = parse_text_time(cursor)
            if parsed is None:
                return None
            cursor = parsed
    if isinstance(cursor, datetime):
        micros = cursor.microsecond
        if micros:
            unit = 1
            while micros % (unit * 10) == 0:
                unit *= 10
            return _aware(cursor), timedelta(microseconds=unit)
        fields = ((cursor.second, 1), (cursor.minute, 60), (cursor.hour, 3600))
        seconds = next((size for value, size in fields if value), 86_400)
        return _aware(cursor), timedelta(seconds=seconds)
    if isinstance(cursor, date):
        return datetime(cursor.year, cursor.month, cursor.day, tzinfo=UTC), timedelta(days=1)
    return None


def _aware(value: datetime) -> datetime:
    """A cursor time as an aware UTC datetime (naive cursors are UTC, model.Watermark)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def open_source(config: SourceConfig) -> Source:
    """The reader for a source kind; every kind runs through the same TableExtractor.

    PostgreSQL pages are read as Arrow through ADBC (extract/pg_arrow.py), MariaDB's
    through connectorx (extract/mysql_arrow.py) and SQLite's through ADBC
    (extract/sqlite_arrow.py): no Python row objects on the hot path.
    """
    if config.kind == "http":
        return HttpSource(config)
    if config.kind == "postgres":
        from steadyflow.extract.pg_arrow import PgArrowSource

        return PgArrowSource(config)
    if config.kind == "mysql":
        from steadyflow.extract.mysql_arrow import MysqlArrowSource

        return MysqlArrowSource(config)
    if config.kind == "sqlite":
        from steadyflow.extract.sqlite_arrow import SqliteArrowSource

        return SqliteArrowSource(config)
    return SqlSource(config)


# How often an idle table's last poll is written to the state store (status and lag seen
# from another process); this process's metrics know every poll at once. A moved
# high-water mark is written within POLL_RECORD_MOVED (lag seen from another process is
# at most that stale; a busy table is polled several times a second).
POLL_RECORD_EVERY = 10.0
POLL_RECORD_MOVED = 1.0
HTTP_WALKS = 3  # page walks from one resume point per run while records move (_unsettled)
# polls kept per table to place a numbered cursor behind a long open transaction (halved,
# oldest kept, when more: a start a little earlier, never a row missed)
MAX_NUMBERED_ENDS = 4096
# A numbered cursor's first load waits at most this long (seconds) for the transactions
# open when it noted its end to finish (TableExtractor._settle); past it the cursor
# passes re-read the table from its start until they have
FIRST_LOAD_SETTLE = 30.0
SETTLE_PAUSE = 0.1
# how far this host's clock may lag the clock that stamps a time cursor while the rows
# tying the checkpoint's time are still read again (TableExtractor._ties_open)
TIE_SKEW = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class PollStart:
    """When a poll began and when it had noted the table's end, on this host's clock.

    A row committed after the poll's snapshot, stamped by a correct clock, carries a
    cursor at or after `began` (within the lookback, which covers clock skew and
    transactions in flight); the poll read every row committed before it, from its start
    up to its checkpoint. A checkpoint after `noted` is a row stamped in the future (a
    correct clock stamps a row it commits before the snapshot no later than that), and
    the next poll steps back from `began` instead of from it (TableExtractor._ahead)."""

    began: datetime
    noted: datetime

    def as_meta(self) -> dict[str, object]:
        return {"began": self.began.timestamp(), "noted": self.noted.timestamp()}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> PollStart | None:
        began, noted = meta.get("began"), meta.get("noted", meta.get("began"))
        if not isinstance(began, int | float) or not isinstance(noted, int | float):
            return None
        return cls(datetime.fromtimestamp(began, UTC), datetime.fromtimestamp(noted, UTC))


@dataclass
class TableMemory:
    """What a table's polls carry from one to the next within a process (kept by the
    pipeline per table; a new process starts empty and restores what it needs)."""

    # adaptive lookback: the earliest cursor a row committed after the last completed
    # poll's observation can carry (a time: OpenSince.bound minus the floor; a number:
    # TableExtractor._numbered_bound); None = unknown
    resume_bound: datetime | int | None = None
    # an integer cursor's adaptive lookback: per completed poll, (a time on the source's
    # clock after that poll's snapshot, the greatest cursor the snapshot held), oldest
    # first; and the last poll's end, whose time the next poll's observation gives
    ends: list[tuple[datetime, int]] = field(default_factory=list)
    last_end: int | None = None
    # the last poll written to the state store: (its high as JSON, monotonic time)
    recorded: tuple[str | None, float] | None = None
    # the adaptive lookback fell back to the fixed window (no privilege): told to status
    hidden_reported: bool = False
    # the last completed poll's start (a checkpoint ahead of it steps back from it:
    # TableExtractor._ahead); None = unknown
    started: PollStart | None = None
    # a checkpoint ahead of this host's clock was logged (TableExtractor._ahead)
    ahead_reported: bool = False
    # an HTTP token walk whose tokens count records or pages was logged (_counting_tokens)
    offsets_reported: bool = False
    # an HTTP answer of this table had the next token's field (next_path): a walk of one
    # full page without it is the last page (TableExtractor._prove_next_field)
    next_field: bool = False
    # `run --follow` (one process): the table's lease kept across busy polls
    kept: KeptLease | None = None


@dataclass
class ExtractResult:
    batches: int = 0
    rows: int = 0
    bad_pages: int = 0
    # records quarantined at extraction (an HTTP record whose key or cursor cannot be
    # placed): they never reach the loader, whose counts hold the other bad rows
    quarantined: int = 0
    # the checkpoint (or an initial load's position) moved: new rows, not only a re-read
    # (run/follow.py polls such a table again soon)
    moved: bool = False


@dataclass
class _Page:
    rows: pa.Table
    high: Watermark | None
    more: bool
    seconds: float
    meta: dict[str, object] = field(default_factory=dict)
    # the extraction sequence number taken BEFORE this page was read (0: a dry run)
    seq: int = 0


@dataclass
class TableExtractor:
    """Extracts one table of one source until it is caught up."""

    source: SourceConfig
    table: TableConfig
    ref: TableRef
    contract: Contract
    landing: LandingZone
    buffer: Buffer
    state: StateStore
    guard: SourceGuard
    metrics: Recording
    should_stop: Callable[[], bool] = lambda: False
    memory: TableMemory = field(default_factory=TableMemory)
    # how long a put waits for buffer space; None: as long as it takes (a loader runs in
    # this process, and `should_stop` ends the wait if it dies)
    put_timeout: float | None = None
    # HTTP: the walk this run follows (extract/chain.py TokenChain)
    _chain: TokenChain | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.sizer = PageSizer(
            current=self.table.page_size, minimum=min(self.table.min_page_size,
                                                      self.table.page_size),
            maximum=self.table.page_size,
            slow_seconds=max(1.0, self.source.resilience.statement_timeout / 4))
        self.result = ExtractResult()
        self._drift_reported = False
        # schema_drift: add — the source columns added to the contract, [[name, type], ...];
        # recorded in every batch's meta["columns"] so the loader uses the same contract
        self._added: list[list[str]] = []
        # the table's extraction lease while `run` holds it (run/lease.py); every durable
        # step (record, checkpoint, initial load position) is fenced by it in state.py
        self.lease: Lease | None = None
        # this run's first load is split into key ranges not all read yet (run/backfill.py)
        self._partitioned = False
        self.adaptive = adaptive_lookback(self.source, self.table, self.contract)
        # the adaptive lookback of a cursor the source numbers (a sequence, AUTO_INCREMENT)
        self._numbered = self.adaptive and self.contract.column(
            self.contract.cursor).type != "timestamp"
        self._configured = self.contract  # before `schema_drift: add` extends it
        self._start_mark: Watermark | None = None  # the checkpoint this run started from
        # the open-transaction bound this poll started from under the adaptive lookback
        # (kept in each landed page's meta: a restarted process resumes from it, see
        # _restored_bound)
        self._bound: datetime | int | None = None
        # a numbered cursor's adaptive lookback (_note): the observation last noted and
        # the next poll's start it gave
        self._noted: OpenSince | None = None
        self._next_number: int | None = None
        # the (end, open transactions) this poll's idle check saw (see _idle)
        self._seen: tuple[Watermark | None, OpenSince | None] | None = None
        # this poll's start, around its noting the table's end (kept in each landed page's
        # meta "began"/"noted" and, once the poll completes, in TableMemory.started)
        self._start: PollStart | None = None

    def _extra(self, **fields: object) -> dict[str, object]:
        return {"source": self.ref.source, "table": self.ref.table, "stage": "extract",
                **fields}

    def start_point(self, observed: OpenSince | None = None, db: Source | None = None
                    ) -> tuple[Watermark | None, object | None]:
        """Where this run starts: after the checkpoint, minus the lookback window; under
        the adaptive lookback, at the earlier of the checkpoint and the bound the last
        poll observed (`_adaptive_bound`), both minus the lookback (the floor: a cursor
        stamped by another clock than the source's), and strictly after the checkpoint
        when there is no floor and no transaction open then began before it."""
        mark = self._start_mark = self.state.checkpoint(self.ref.source, self.ref.table)
        if mark is None:
            return None, None  # first run: full load in keyset pages
        _refuse_reordered(mark, self.contract, self.ref)
        number = mark.cursor
        if isinstance(db, SqlSource) and isinstance(number, int) \
                and not isinstance(number, bool):
            _refuse_renumbered(number, self.guard.call(
                lambda: db.issued(self.ref.table, self.contract, number),
                stop=self.should_stop), self.contract, self.ref)
        mark = self._start_mark = replace(mark, on=())  # pages' marks carry no names
        _refuse_endless(mark.cursor, self.ref, self.contract)
        if self.source.kind == "sqlite" and isinstance(mark.cursor, datetime | date):
            if self._ahead(mark.cursor, datetime.now(UTC)) > 0:
                return self._unplaced(mark.cursor)
            return None, self._respell(mark.cursor)
        bound = self._adaptive_bound(observed) if self._bounded(mark.cursor) else None
        if bound is not None:
            self._bound = bound
            cursor = _aware(mark.cursor) if isinstance(mark.cursor, datetime) else mark.cursor
            if self.table.lookback > 0:  # the floor: never less than the fixed window
                return None, min(bound, step_back(cursor, self.table.lookback))
            # a number is taken by one transaction: none other can share the checkpoint's
            # (a time can: strictly after it would pass a late row stamped the same)
            after = bound >= cursor if self._numbered else bound > cursor  # type: ignore[operator]
            return (mark, None) if after else (None, bound)
        previous = self._previous_start() if self._timed() else None
        if previous is None:
            if self._ahead(mark.cursor, datetime.now(UTC)) > 0:
                return self._unplaced(mark.cursor)
            ahead = 0.0
        else:  # a checkpoint the previous poll's snapshot could hold steps back from itself
            ahead = self._ahead(mark.cursor, previous.began) \
                if self._ahead(mark.cursor, previous.noted) > 0 else 0.0
        repeat = self.guard.call(lambda: db.zone_repeat(self.ref.table, self.contract),
                                 stop=self.should_stop) \
            if isinstance(db, SqlSource) and self._timed() else 0.0
        if self.table.lookback > 0 or ahead > 0 or repeat > 0:
            return None, step_back(mark.cursor, self.table.lookback + ahead + repeat)
        if self.source.kind == "http":
            # an API stamps its cursor with a clock (or counter) nobody here sees: a record
            # written after this checkpoint may share its cursor with a lower key (two
            # writes within one second of an API that stamps to the second), and strictly
            # after (cursor, key) passed it for good. The records tying the checkpoint's
            # cursor are re-read instead (the merge keeps the newest of each key).
            return None, mark.cursor
        if self._ties_open(mark.cursor, previous):
            return None, mark.cursor  # the rows tying the checkpoint's time, read again
        return mark, None

    def _ties_open(self, cursor: object, previous: PollStart | None) -> bool:
        """Can a row committed since the last poll still tie the checkpoint's time cursor
        (no lookback, no adaptive bound)? A time is stored in a unit (a second for
        MariaDB's DATETIME, SQLite's CURRENT_TIMESTAMP, PostgreSQL's timestamp(0); a day
        for a date): a row written after a poll within the checkpoint's unit ties it, and
        with a lower key (an insert with any key, an update of an older row) sorts before
        the checkpoint's (cursor, key), so a poll continuing strictly after it never read
        it: lost, every run ok (MariaDB DATETIME, one writer updating random rows: 11
        rows missing and 254 stale of 301 after 12 s of `run --follow`). So the rows
        tying the checkpoint are read again (as an API's are) until the last poll began
        more than the time's unit after it, plus TIE_SKEW for this host's clock against
        the writers': a row committed after such a poll was stamped after its start. The
        unit is read from the value (its least significant non-zero field: 12:00:05 a
        second, 12:00:00 an hour; a time of a finer column that happens to end in zeros
        re-reads its ties a little longer, harmlessly). A quiet table's poll is idle again
        once that has passed. Unknown (no poll on record, a value that is no time): read
        again."""
        if not self._timed():
            return False
        if previous is None:
            return True
        placed = _time_and_unit(cursor)
        if placed is None:
            return True
        at, unit = placed
        return previous.began < at + unit + TIE_SKEW

    def _ahead(self, cursor: object, than: datetime) -> float:
        """Seconds a time cursor's checkpoint stands ahead of `than` (a time of the last
        completed poll, PollStart), 0 when it does not, or is no time. A fixed window
        steps back from the checkpoint, so a row stamped in the future (a mistyped year, a
        client clock ahead, a scheduled row) moved it past every row written afterwards
        with a correct clock: those rows sorted behind it and were skipped, silently,
        until real time caught up. From a checkpoint after the previous poll noted the
        table's end, the window steps back from when that poll began instead (spelled as
        the checkpoint is). Stepping back from now (as before) skipped, every run ok, each
        row written between two polls more than the lookback before the second (a cron
        run every 5 min with a 2 min lookback lost 3 min of rows per run). The future rows
        are re-read each poll, harmlessly, as the adaptive lookback re-reads from its
        bound."""
        if not self._timed():
            return 0.0
        if isinstance(cursor, str):
            try:  # a date that is none (MariaDB's '2024-05-00'): the real one before it
                cursor = floor_day(cursor) if TEXT_DATE.match(cursor) \
                    else parse_text_time(cursor)
            except ValueError:  # none before it either: no time to compare with the clock
                return 0.0
        if isinstance(cursor, datetime):
            ahead = (_aware(cursor) - than).total_seconds()
        elif isinstance(cursor, date):
            ahead = float((cursor - than.date()).days * 86_400)
        else:
            return 0.0
        if ahead <= 0:
            return 0.0
        if not self.memory.ahead_reported:
            self.memory.ahead_reported = True
            log.warning("the checkpoint's cursor %s is %.0fs ahead of the last poll's start "
                        "on this host's clock (a row stamped in the future, or naive times "
                        "written in a zone east of UTC, which steadyflow reads as UTC): "
                        "each poll re-reads from the previous poll's start minus the "
                        "lookback until real time passes it, which for a zone offset is "
                        "every poll; correct that row's %s if it is wrong, or store the "
                        "column in UTC", cursor, ahead, self.contract.cursor,
                        extra=self._extra())
        return ahead

    def _timed(self) -> bool:
        return self.contract.column(self.contract.cursor).type in ("timestamp", "date")

    def _previous_start(self) -> PollStart | None:
        """The last completed poll's start: this process's (TableMemory.started), else
        the one the newest landed page that has one recorded (meta "began"; a page of an
        unfinished poll is as good: its checkpoint is at or after its own rows, read in
        cursor order from a start placed the same way; an earlier poll's is earlier, so
        re-reads more). None when no page carries one (pages landed by an older
        version)."""
        if self.memory.started is not None:
            return self.memory.started
        # only a page landed before the checkpoint was last written: a poll that died after
        # landing a page and before moving the checkpoint past it (an API walk moves it
        # only at its end; a SQL page, just after landing) left an earlier poll's
        # checkpoint, and stepping back from the dead poll's later start passed the rows
        # it never reached (lost for good, every later run ok)
        written = self.state.checkpoint_written(self.ref.source, self.ref.table)
        for row in self.state.batches(self.ref.source, self.ref.table, limit=50):
            if written is None or row["landed_at"] > written:
                continue
            start = PollStart.from_meta(BatchRef.from_json(row["ref"]).meta)
            if start is not None:
                return start
        return None

    def _noting(self, note: Callable[[], tuple[Watermark | None, OpenSince | None]]
                ) -> tuple[Watermark | None, OpenSince | None]:
        """`note` (the call that notes the table's end), timed as this poll's start."""
        began = datetime.now(UTC)
        noted = note()
        self._start = PollStart(began, datetime.now(UTC))
        return noted

    def _unplaced(self, cursor: object) -> tuple[None, None]:
        """A checkpoint ahead of this host's clock with no record of when the last poll
        began (pages landed by an older version, which stepped back from now and so may
        have skipped rows written between two polls; or a SQLite checkpoint kept as a
        parsed time): no later start can be proven to miss nothing, so this poll reads
        the table again from its start, once (its pages record their start); the merge
        keeps the warehouse exact and brings back what was skipped."""
        log.warning("the checkpoint's cursor %s is ahead of this host's clock and no landed "
                    "page records when the last poll began: re-reading the table from its "
                    "start once, so that no row written between earlier polls is missed",
                    cursor, extra=self._extra())
        return None, None

    def _bounded(self, cursor: object) -> bool:
        """Is this cursor value one the adaptive lookback places (a time, or a number the
        source hands out in order)?"""
        if self._numbered:
            return isinstance(cursor, int) and not isinstance(cursor, bool)
        return isinstance(cursor, datetime)

    def _adaptive_bound(self, observed: OpenSince | None) -> datetime | int | None:
        """The adaptive lookback's start for this poll, None for the fixed window.

        The last completed poll's bound (TableMemory) when this process has one; else the
        bound the last landed page recorded (a restart), else this poll's own
        observation (the first poll ever under adaptive mode: a transaction that was open
        at the previous process's last poll and committed before this one is covered
        only by the floor). A numbered cursor has no first-poll bound: no earlier poll
        ties the open transactions' start to a number (the floor covers that poll).
        None when the role cannot see other sessions."""
        if not self.adaptive:
            return None
        if self.memory.resume_bound is not None:
            return self.memory.resume_bound
        if observed is None or not observed.visible:
            return None
        restored = self._restored_bound()
        if restored is not None or self._numbered:
            return restored
        log.info("no earlier observation of open transactions: re-reading from the "
                 "oldest one open now", extra=self._extra())
        return self._floored(observed)

    def _floored(self, observed: OpenSince) -> datetime:
        return observed.bound - timedelta(seconds=self.table.lookback)

    def _restored_bound(self) -> datetime | int | None:
        """The bound recorded with the newest landed page that has one: safe to resume
        from, because the open-transaction bound only grows from poll to poll."""
        for row in self.state.batches(self.ref.source, self.ref.table, limit=50):
            since = BatchRef.from_json(row["ref"]).meta.get("since")
            value = decode_value(since) if since is not None else None
            if self._bounded(value):
                return _aware(value) if isinstance(value, datetime) else value
        return None

    def _observed(self, observed: OpenSince | None) -> None:
        """A poll read its pass to the end: the next one re-reads from what it saw before
        its snapshot (unknown when it saw nothing: the fixed window then). A role that
        cannot see other sessions' transactions is reported as the table's error once per
        process (status shows it; the source logged why), never silently."""
        if (self.adaptive and observed is not None and not observed.visible
                and not self.memory.hidden_reported):
            self.memory.hidden_reported = True
            self.state.record_error(
                self.ref.source, self.ref.table,
                "adaptive lookback unavailable: the source cannot show other sessions' "
                "transactions (grant pg_read_all_stats on PostgreSQL, PROCESS on MariaDB; "
                "a standby shows none of the primary's); "
                f"using the fixed lookback window ({self.table.lookback:g}s), which misses "
                "a transaction committing later than that (or set lookback_mode: fixed)")
        if self._start is not None and (self._chain is None or not self._chain.unsettled):
            # an API walk that may have skipped a record left the checkpoint where the
            # poll began: its start is no later poll's to step back from
            self.memory.started = self._start
        if not self.adaptive:
            return
        if observed is None or not observed.visible:
            self.memory.resume_bound = None
        elif self._numbered:
            self.memory.resume_bound = self._next_number
        else:
            self.memory.resume_bound = self._floored(observed)

    def _note(self, observed: OpenSince | None, end: Watermark | None) -> None:
        """A numbered cursor's poll saw `observed` and then `end` (its pass's end, None
        for an empty table): note when that end was seen and the next poll's start
        (`_numbered_bound`), once per observation. The start is known before this poll
        reads its pages, so they carry it (a restarted process resumes from it: rows this
        poll has not landed lie after the checkpoint, which it also resumes from)."""
        if not self._numbered or observed is None or observed is self._noted:
            return
        self._noted = observed
        self._next_number = (self._numbered_bound(observed, end) if observed.visible
                             else None)

    def _numbered_bound(self, observed: OpenSince, end: Watermark | None) -> int | None:
        """The next poll's start for a cursor the source numbers in order (a sequence,
        AUTO_INCREMENT: a number is taken inside its transaction, after it began).

        A row not yet committed at this poll's snapshot belongs to a transaction open
        then, which began at or after `observed.bound` (the oldest open at the
        observation, or one begun after it); its number was taken after that, so it is
        greater than every number committed before then. The greatest number a completed
        poll's snapshot held, taken before that time (the snapshot ended before the next
        poll's observation, whose time dates it), is therefore a safe start; never earlier
        than the last such start. While no poll of this process is old enough, the
        earliest end it saw (a transaction open since before its first poll: the floor
        covers it); None before a second poll."""
        memory = self.memory
        if memory.last_end is not None:
            memory.ends.append((observed.now, memory.last_end))
        memory.last_end = self._end_number(end)
        # fewer ends: an earlier start, still safe; also while none is dated early enough
        # (a session idle in a transaction for days added one per poll, for ever)
        if len(memory.ends) > MAX_NUMBERED_ENDS:
            memory.ends[:] = memory.ends[::2]
        older = [i for i, (at, _) in enumerate(memory.ends) if at <= observed.bound]
        if not older:  # a transaction open since before every poll this process dated
            # the start this poll reads from (safe for the next one too): the one before
            # it, else what a restart resumes from (an earlier process's pages, which
            # placed a transaction open then; a later end of this process need not)
            if isinstance(memory.resume_bound, int):
                return memory.resume_bound
            restored = self._restored_bound()
            if isinstance(restored, int):
                return restored
            # no page carries one: the earliest end it knows (one open since before this
            # process's first poll is the floor's, as on that poll)
            return (int(step_back(memory.ends[0][1], self.table.lookback)) if memory.ends
                    else None)
        del memory.ends[:older[-1]]
        start = int(step_back(memory.ends[0][1], self.table.lookback))
        previous = memory.resume_bound
        return max(start, previous) if isinstance(previous, int) else start

    def _end_number(self, end: Watermark | None) -> int | None:
        cursor = None if end is None else end.cursor
        return cursor if self._bounded(cursor) else None  # type: ignore[return-value]

    def _since_meta(self) -> dict[str, object]:
        bound = self._bound if self._next_number is None else self._next_number
        meta: dict[str, object] = {} if bound is None else {"since": encode_value(bound)}
        if self._start is not None:
            meta.update(self._start.as_meta())
        return meta

    def _respell(self, cursor: date) -> str:
        """A SQLite checkpoint written as a parsed time (before watermarks kept the stored
        text, see SqliteDialect.from_db) cannot be compared with the stored text. Restart
        from the day before it, as a date prefix (it sorts before every spelling of that day,
        whatever the zone): at most a day and the lookback are read again, once; the first
        landed page's checkpoint then holds stored text (a checkpoint is overwritten, never
        compared, so nothing is reset here, and a dry run writes nothing)."""
        since = step_back(cursor, self.table.lookback)
        day = (since.astimezone(UTC) if isinstance(since, datetime) else since)
        log.warning("checkpoint %s is a parsed time; re-reading from %s to continue with the "
                    "stored text", cursor, day, extra=self._extra())
        return str((day - timedelta(days=1)).strftime("%Y-%m-%d"))

    def run(self, db: Source, dry_run: bool = False,
            lease_wait: float = LEASE_WAIT) -> ExtractResult:
        """Extract the table until caught up, holding its extraction lease (a dry run reads
        and records nothing, so it needs none). TableBusy if another live extractor holds
        it after `lease_wait` seconds (0 for a worker: another worker has it, go on to the
        next table); ExtractionFenced if this one stalls past it and another takes over."""
        if dry_run:
            return self._run(db, dry_run)
        self._partitioned = False
        self._seen = None
        kept = self.memory.kept
        try:
            if isinstance(db, SqlSource) and self._idle(db):
                if kept is not None:
                    kept.release()  # nothing flows: the table's lease is free
                return self.result
        except BaseException:
            if kept is not None:  # a source that fails keeps no lease through its outage
                kept.release()
            raise
        result = self._leased(db, lease_wait)
        if kept is not None and not result.moved:
            # a poll that moved nothing (a quiet table re-reading its lookback window, an
            # HTTP chain with nothing new): the lease is not kept through the pause to the
            # next poll, which may be run.interval away
            kept.release()
        if not self._partitioned or self.should_stop() or not isinstance(db, SqlSource):
            return result
        # a large first load's key ranges are units of their own, read outside the table's
        # lease (other workers take ranges too); the load ends under the lease again
        from steadyflow.run import backfill as chunked

        chunked.read_chunks(self, db, wait=lease_wait > 0)
        if self.should_stop():
            return result
        try:
            return self._leased(db, lease_wait)
        except TableBusy:
            if lease_wait > 0:
                raise
            return result  # another worker has the table: it ends the load

    def _idle(self, db: SqlSource) -> bool:
        """Did this poll find nothing to read? Asked before the lease is taken: a table
        whose checkpoint is where the source's last row is costs its source one position
        probe and the state nothing (no lease taken and released: two state commits per
        poll of every quiet table). Only reads: the checkpoint read here may be moved by
        a holder meanwhile, and then the poll is simply not idle. A poll with rows to read
        takes the lease and reads the checkpoint again under it (`_cursor_pass`), reusing
        the position noted here (an earlier end is still a correct one). Among workers, a
        table another worker looks after is not polled at all (state: look_after)."""
        if not self.state.look_after(self.ref.source, self.ref.table):
            return True
        if self.state.checkpoint(self.ref.source, self.ref.table) is None:
            return False  # the first load: key order, maybe split (under the lease)
        self.schema_drift(self.guard.call(lambda: db.probe(self.ref.table, self.contract),
                                          stop=self.should_stop) or [], db)
        upto, observed = self._seen = self._noting(lambda: self.guard.call(
            lambda: db.poll_end(self.ref.table, self.contract, self.adaptive),
            stop=self.should_stop))
        self._note(observed, upto)
        if upto is not None:
            after, since = self.start_point(observed, db)
            if since is not None or after != upto:
                return False
        self._observed(observed)
        self._polled()
        return True

    def _leased(self, db: Source, lease_wait: float) -> ExtractResult:
        kept = self.memory.kept
        with (kept.hold("extract", self.should_stop, wait=lease_wait) if kept is not None
              else hold_lease(self.state, self.ref.source, self.ref.table, "extract",
                              self.should_stop, wait=lease_wait)) as lease:
            self.lease = lease
            try:
                return self._run(db, False)
            finally:
                self.lease = None

    def _run(self, db: Source, dry_run: bool) -> ExtractResult:
        result = self.result
        extra = self.guard.call(lambda: db.probe(self.ref.table, self.contract),
                                stop=self.should_stop)
        self.schema_drift(extra or [], db)
        # SQL pages are read one ahead: page N+1's query (server time and Arrow decoding,
        # which release the GIL) runs while page N is landed, fsynced and published. Pages
        # are still published strictly in order, each checkpoint after its own publish, and
        # at most two pages are in memory. HTTP pages land their raw answer: not overlapped.
        ahead = None if isinstance(db, HttpSource) else ThreadPoolExecutor(
            1, thread_name_prefix=f"read-{self.ref.table}")
        try:
            if isinstance(db, SqlSource) and self._loads_by_key(db):
                if not self.backfill(db, dry_run, ahead) or dry_run:
                    return result
            if self._cursor_pass(db, dry_run, ahead) and not dry_run:
                self._polled()
        finally:
            if ahead is not None:
                ahead.shutdown(wait=True, cancel_futures=True)
        return result

    def _cursor_pass(self, db: Source, dry_run: bool, ahead: ThreadPoolExecutor | None
                     ) -> bool:
        """Page in (cursor, key) order from the start point to where the table ended when
        the pass began. A SQL table's last (cursor, key) is noted first (one index probe)
        and every page is bounded by it in the database: without an end fixed at the start,
        a table written faster than pages are read (small or shrunken pages) keeps one run
        chasing its tail for as long as the writes go on. Rows past the noted position are
        the next run's (a `--follow` cycle picks them up at once). An empty table has
        nothing to read. An HTTP chain ends by the API. True if the pass reached its end."""
        upto = observed = None
        if isinstance(db, SqlSource):
            # with the adaptive lookback, the source's open transactions are noted in the
            # same round trip, before the snapshot that reads this position (or by this
            # poll's idle check, `_idle`, just before the lease)
            seen, self._seen = self._seen, None
            upto, observed = seen if seen is not None else self._noting(
                lambda: self.guard.call(
                    lambda: db.poll_end(self.ref.table, self.contract, self.adaptive),
                    stop=self.should_stop))
            if not dry_run:
                self._note(observed, upto)
            if upto is None:
                if not dry_run:
                    self._observed(observed)
                return True
        elif self._chain is None or self._chain.ended:  # an API: before its walk's first page
            now = datetime.now(UTC)  # the walk pages on: a record it serves may be newer
            self._start = PollStart(now, now)
        after, since = self.start_point(observed, db)
        if upto is not None and since is None and after == upto:
            done = True  # the table ends at the checkpoint: nothing to page (an idle poll)
        else:
            if isinstance(db, SqlSource):  # rows to read: columns added with them count
                extra = self.guard.call(lambda: db.probe(self.ref.table, self._configured,
                                                         max_age=BUSY_PROBE_EVERY),
                                        stop=self.should_stop)
                self.schema_drift(extra, db)
            done = self._pages(db, self.contract, after, since, dry_run, ahead, self._checkpoint,
                               meta=self._since_meta(), upto=upto)
        if done and not dry_run:
            self._observed(observed)
        return done

    def _polled(self) -> None:
        """The source was read to its end: its high-water mark is the checkpoint now (the
        last page's high, or the unmoved checkpoint when the poll found nothing new). Lag
        is that minus the loaded cursor, so an idle source stays at 0 (observe/metrics)."""
        mark = self.state.checkpoint(self.ref.source, self.ref.table)
        epoch = cursor_epoch(mark.cursor) if mark is not None else None
        # the state store hears of an idle poll at most every POLL_RECORD_EVERY, of a
        # moved high-water mark at most every POLL_RECORD_MOVED (a table polled four
        # times a second paid a state commit for each); this process's metrics of every
        # poll
        high, now = (mark.to_json() if mark is not None else None), time.monotonic()
        last = self.memory.recorded
        if last is None or now - last[1] >= (
                POLL_RECORD_MOVED if last[0] != high else POLL_RECORD_EVERY):
            self.state.record_poll(self.ref.source, self.ref.table, mark, epoch)
            self.memory.recorded = (high, now)
        self.metrics.polled(self.ref.source, self.ref.table, epoch)

    def _checkpoint(self, high: Watermark) -> None:
        """Move the checkpoint to a published page's high. For HTTP only at the end of
        the token chain: before it, an older record may still be on a later page."""
        if self._chain is not None and (not self._chain.ended or self._chain.unsettled):
            return
        self.result.moved = self.result.moved or high != self._start_mark
        self.state.advance_checkpoint(self.ref.source, self.ref.table, self._named(high),
                                      lease=self.lease)

    def _named(self, mark: Watermark) -> Watermark:
        """A checkpoint-to-be with the columns its position is in (_refuse_reordered)."""
        return replace(mark, on=(self.contract.cursor, *self.contract.primary_key))

    def _loads_by_key(self, db: SqlSource) -> bool:
        """The first run of a table with a primary key reads it in key order (its index is
        the cheapest full read: 1.70 s of source CPU per 2M rows against 2.36 s through the
        cursor index, bench/NOTES.md). `initial_load: cursor`, or no index on the key, keeps
        the cursor order."""
        if (self.table.initial_load != "key" or not self.contract.primary_key
                or self.state.checkpoint(self.ref.source, self.ref.table) is not None):
            return False
        return bool(self.guard.call(
            lambda: db.find_keyset_index(self.ref.table, self.contract.by_key()),
            stop=self.should_stop))

    def backfill(self, db: SqlSource, dry_run: bool, ahead: ThreadPoolExecutor | None
                 ) -> bool:
        """The initial load: every row in primary-key order, then the checkpoint.

        It first notes where the cursor stands (the table's last (cursor, key)); each page
        landed moves the load's own key position, so a crash resumes after the last landed
        page. When the table is read, the checkpoint becomes that noted cursor position and
        the normal incremental pass follows, re-reading (with the lookback) every row
        changed or added while the load ran: such a row's cursor is past the noted one.
        Returns True when the table was read to its end.
        """
        src, tbl = self.ref.source, self.ref.table
        started = self.state.backfill(src, tbl)
        # open transactions noted before the position (and the pages' snapshots): the
        # cursor pass after the load re-reads from them (see start_point)
        high, observed = self._noting(lambda: self.guard.call(
            lambda: db.poll_end(tbl, self.contract, self.adaptive), stop=self.should_stop))
        if started is not None:
            # a resumed load's pages record no start: its rows were read since an earlier
            # process began it (a new load reads every row committed before its first page)
            self._start = None
        if started is None:
            if high is None:
                return True  # an empty table: the cursor pass starts from nothing
            if not dry_run and not self._settle(db, observed, high):
                return False  # stopped while waiting: nothing noted, the next run waits
            after = None
        else:
            high, after = started
            # a load that read nothing yet (its process died after noting its end): its
            # wait may not have ended, and nothing recorded the start it chose; waiting
            # again is what a new load does. Not once a page or range was read
            if not dry_run and after is None and not self.state.backfill_chunks(src, tbl) \
                    and not self._settle(db, observed, high):
                return False
        bound = self._adaptive_bound(observed) if self._bounded(high.cursor) else None
        self._bound = bound
        if not dry_run and self._noted is None:  # _settle noted a new load's end
            # the noted end (perhaps an earlier process's) predates this poll
            self._note(observed, high)
        # split or not is decided before the load is noted as one piece: from then on a
        # stealer may cut it (run/steal.py), and its ranges are no plan
        if not dry_run and after is None and self._partition(db, high):
            return self._end_partitioned(bound)
        if started is None and not dry_run:
            # with the pages' re-read start, which a stealer's range carries
            since = {k: v for k, v in self._since_meta().items() if k == "since"}
            self.state.start_backfill(src, tbl, self._named(high), lease=self.lease,
                                      since=json.dumps(since))
        log.info("initial load in primary-key order%s", " (resumed)" if after else "",
                 extra=self._extra())
        done = self._one_piece(db, after, dry_run, ahead)
        if done and not dry_run:
            if not self.state.finish_backfill(src, tbl, lease=self.lease):
                # its far part was stolen (run/steal.py) and is not all read yet: `run`
                # reads what nobody holds, then ends the load as a split one
                self._partitioned = True
                return False
            self.result.moved = True
            self._loaded(bound)
        return done

    def _one_piece(self, db: SqlSource, after: Watermark | None, dry_run: bool,
                   ahead: ThreadPoolExecutor | None) -> bool:
        """The one-piece load's pages from `after` to its bound (the table's end until a
        stealer cuts it: run/steal.py), each recorded under a LoadLease: a cut made while
        a page was read refuses that page (LoadCut; it may hold keys past the new bound),
        and the load reads on from its last recorded key to the new bound. Reaching its
        bound, it records the bound as its position, so a resumed load reads nothing."""
        src, tbl = self.ref.source, self.ref.table
        base = self.lease
        advance = lambda mark: self.state.advance_backfill(  # noqa: E731
            src, tbl, mark, lease=self.lease)
        upto: Watermark | None = None
        try:
            while True:
                if not dry_run and base is not None:
                    _, upto, cuts = self.state.load_bound(src, tbl)
                    if upto is not None and after == upto:
                        return True
                    self.lease = LoadLease(base.source, base.table, base.holder,
                                           base.generation, base.seconds, cuts, upto)
                try:
                    done = self._pages(db, self.contract.by_key(), after, None, dry_run,
                                       ahead, advance, meta={"order": "key",
                                                             **self._since_meta()},
                                       upto=upto)
                    if done and upto is not None:
                        advance(upto)
                    return done
                except LoadCut:
                    failpoint("extract.cut")
                    after = self.state.load_bound(src, tbl)[0]
                    log.info("initial load's far part taken by another reader: reading on "
                             "after %s", after.to_json() if after else "the start",
                             extra=self._extra())
        finally:
            self.lease = base

    def _settle(self, db: SqlSource, observed: OpenSince | None, high: Watermark) -> bool:
        """Before a numbered cursor's first load reads a page: wait until every
        transaction open when its end `high` was noted has ended.

        A number below `high` may belong to a transaction still open then (it took its
        number before a later one committed). No earlier poll dates a number before that
        transaction began, so the cursor pass after the load could not know to re-read
        it, and the load's pages pass it while it is uncommitted: lost, every run ok.
        Once every open transaction began after a time taken after `high`'s snapshot,
        each number up to `high` is committed or rolled back, the pages (read after)
        see it, and the cursor pass starts after `high`: the observations go through
        `_note` as polls' would, which dates `high` and gives that start. OLTP
        transactions end within moments; one open past FIRST_LOAD_SETTLE (a session
        idle in a transaction) is logged, and the cursor passes re-read from the table's
        start (`_numbered_bound` keeps that start) until a noted end predates every open
        transaction. False when told to stop while waiting (nothing is settled then)."""
        if not self._numbered or observed is None or not observed.visible:
            return True
        self._note(observed, high)
        tbl = self.ref.table
        deadline = time.monotonic() + FIRST_LOAD_SETTLE
        dated: OpenSince | None = None
        seen: OpenSince | None = observed
        while not self.should_stop():
            _, seen = self.guard.call(lambda: db.poll_end(tbl, self.contract, True),
                                      stop=self.should_stop)
            if seen is None or not seen.visible:
                return True
            self._note(seen, high)
            if dated is None:
                dated = seen  # its `now` follows high's snapshot: it dates high
            # nothing open since a time after high's snapshot (the bound's margin is for
            # time stamps taken before a transaction began: no number is taken so)
            if seen.bound >= dated.now or (seen.oldest is None and seen.at >= dated.now):
                return True  # _note gave the start: after high
            if time.monotonic() >= deadline:
                break
            time.sleep(SETTLE_PAUSE)
        if self.should_stop():
            return False
        lowest = -(2 ** 31) if self.contract.column(self.contract.cursor).type == "int32" \
            else -(2 ** 62)
        self._next_number = self.memory.resume_bound = lowest
        log.warning("a transaction open since %s, before the first load noted its end %s, "
                    "is still open after %.0fs: a number below that end may be its, so "
                    "each poll re-reads the table from its start until it ends (end that "
                    "session, or set a lookback floor in units)", observed.bound.isoformat()
                    if seen is None else seen.bound.isoformat(), high.cursor,
                    FIRST_LOAD_SETTLE, extra=self._extra())
        return True

    def _partition(self, db: SqlSource, high: Watermark) -> bool:
        """Whether this load is split into key ranges (run/backfill.py): split now when
        the table holds at least two ranges' rows and the load has landed nothing yet."""
        from steadyflow.run import backfill as chunked

        src, tbl = self.ref.source, self.ref.table
        if self.state.backfill_chunks(src, tbl):
            return self._planned()
        rows = chunked.chunk_rows(self)
        if rows <= 0:
            return False
        bounds = self.guard.call(lambda: chunked.split(db, tbl, self.contract, rows),
                                 stop=self.should_stop)
        if len(bounds) < 2:
            return False
        # the cursor pass's re-read start (adaptive lookback), kept in every range's pages
        # as in a one-piece load's: whichever process ends the load restores it from them
        since = self._since_meta().get("since")
        if self.state.plan_backfill(src, tbl, self._named(high), bounds,
                                    since=None if since is None else json.dumps(since),
                                    lease=self.lease):
            log.info("initial load split into %d key ranges of about %d rows", len(bounds),
                     rows, extra=self._extra())
            return True
        return bool(self.state.backfill_chunks(src, tbl)) and self._planned()

    def _planned(self) -> bool:
        """Are the load's key ranges a plan (split up front), not the far parts stealers
        cut off its one-piece reader (whose part, up to its bound, is still to read)?"""
        return self.state.load_bound(self.ref.source, self.ref.table)[1] is None

    def _end_partitioned(self, bound: datetime | int | None) -> bool:
        """A split load ends once every range is read (state: finish_backfill checks it
        in the transaction that sets the checkpoint to the noted position); until then
        `run` reads ranges outside the table's lease. True: the cursor pass follows."""
        self._partitioned = not self.state.finish_backfill(self.ref.source, self.ref.table,
                                                           lease=self.lease)
        if self._partitioned:
            return False
        self._loaded(bound)
        return True

    def _loaded(self, bound: datetime | int | None) -> None:
        """The first load ended: the cursor pass after it re-reads from `bound` (the
        adaptive lookback's start when the load began), or from the start noted since
        for a numbered cursor."""
        start = self._next_number if self._next_number is not None else bound
        if start is not None:
            self.memory.resume_bound = start

    def _pages(self, db: Source, contract: Contract, after: Watermark | None,
               since: object | None, dry_run: bool, ahead: ThreadPoolExecutor | None,
               advance: Callable[[Watermark], None],
               meta: dict[str, object] | None = None, upto: Watermark | None = None) -> bool:
        """Page from the start point to the end of the table (or to `upto`, that position
        included) in `contract`'s keyset order; `advance` records each landed page's
        position. True if the end was reached."""
        result = self.result
        pending: Future[_Page] | None = None
        try:
            while not self.should_stop():
                if pending is not None:
                    page, pending = pending.result(), None
                else:
                    page = self._read_page(db, contract, after, since, dry_run, upto)
                if page.high is None and not page.more:
                    return True
                if page.more:
                    before = self.sizer.current
                    size = self.sizer.on_page(page.seconds)
                    if size != before:
                        self._page_size_changed(before, size, f"page took {page.seconds:.2f}s")
                    if ahead is not None:
                        pending = ahead.submit(self._read_page, db, contract, page.high, None,
                                               dry_run, upto)
                if page.rows.num_rows and page.high is not None:
                    if dry_run:
                        log.info("would land %d rows up to %s", page.rows.num_rows,
                                 page.high.to_json(), extra=self._extra(rows=page.rows.num_rows))
                    else:
                        self.publish(page.rows, self._low(page.rows, after, since), page.high,
                                     {**page.meta, **(meta or {})}, advance, seq=page.seq)
                    result.batches += 1
                    result.rows += page.rows.num_rows
                    self.metrics.rows(self.ref.source, self.ref.table, "extract",
                                      page.rows.num_rows, page.rows.nbytes)
                self.metrics.batch_duration(self.ref.source, self.ref.table, "extract",
                                            page.seconds)
                if not page.more:
                    return True
                after, since = page.high, None
            return False
        except BaseException:
            # a page read ahead is still reading on `db`: its caller may read again at
            # once (a cut reader: LoadCut), and a connection serves one query at a time
            if pending is not None:
                wait([pending])
            raise

    def schema_drift(self, extra: list[str], db: Source | None = None) -> None:
        """Source columns the contract does not name: the table's `schema_drift` policy."""
        if not extra or self._drift_reported:
            return
        self._drift_reported = True
        names = ", ".join(extra)
        if self.table.schema_drift == "add" and isinstance(db, SqlSource):
            self._add_columns(extra, db)
            return
        if self.table.schema_drift == "stop":
            raise SchemaError(
                f"schema drift: the source has column(s) {names} that the contract does not "
                "name; stopping this table (schema_drift: stop)", stage="extract",
                source=self.ref.source, table=self.ref.table,
                hint="add the column(s) to the contract, or set schema_drift: ignore")
        log.warning("schema drift: source column(s) %s are not in the contract and are NOT "
                    "extracted (schema_drift: ignore); add them to the contract to load them",
                    names, extra=self._extra())

    def _add_columns(self, extra: list[str], db: SqlSource) -> None:
        """`schema_drift: add`: extract the new columns too, typed from the source's declared
        type (model.drift_type); the effective contract is the configured one plus these."""
        for name in extra:
            if not IDENT.match(name):
                raise SchemaError(
                    f"schema drift: the source column {name!r} is not a plain identifier "
                    "(letters, digits, _; max 63) and cannot be added to the warehouse "
                    "(schema_drift: add)", stage="extract", source=self.ref.source,
                    table=self.ref.table,
                    hint="rename the source column, or set schema_drift: ignore")
            if reserved(name):
                raise SchemaError(
                    f"schema drift: the source column {name!r} cannot be added to the "
                    f"warehouse (schema_drift: add): {RESERVED_WHY}", stage="extract",
                    source=self.ref.source, table=self.ref.table,
                    hint="rename the source column, or set schema_drift: ignore")
        spelled = {n.lower(): n for n in self.contract.names}
        for name in extra:
            if (other := spelled.setdefault(name.lower(), name)) != name:
                raise SchemaError(
                    f"schema drift: the source column {name!r} cannot be added to the "
                    f"warehouse (schema_drift: add): it differs from column {other!r} only "
                    "in case, and DuckDB (and the warehouse's identifiers) take them as one "
                    "column", stage="extract", source=self.ref.source,
                    table=self.ref.table,
                    hint="rename the source column (or read it in a view), or set "
                         "schema_drift: ignore")
        declared = self.guard.call(lambda: db.declared_types(self.ref.table),
                                   stop=self.should_stop)
        lowered = {k.lower(): v for k, v in declared.items()}
        self._added = [[name, drift_type(declared.get(name, lowered.get(name.lower())))]
                       for name in extra]
        self.contract = self.contract.with_added(self._added)
        log.warning("schema drift: source column(s) %s are not in the contract and are "
                    "extracted and added to the warehouse table as nullable column(s) "
                    "(schema_drift: add): %s", ", ".join(extra),
                    ", ".join(f"{n} {t}" for n, t in self._added), extra=self._extra())

    def _page_size_changed(self, before: int, size: int, why: str) -> None:
        self.metrics.page_size(self.ref.source, self.ref.table, size)
        self.state.record_source_state(self.ref.source, self.ref.table, page_size=size)
        log.info("page size %d -> %d (%s)", before, size, why,
                 extra=self._extra(page_size=size))

    def _on_error(self, exc: BaseException) -> None:
        """Called by the guard for each failed attempt: a timeout shrinks the next page."""
        if isinstance(exc, SourceTimeout):
            before = self.sizer.current
            size = self.sizer.on_timeout()
            if isinstance(exc, PageTooLarge):  # a fast page must not grow back past it
                self.sizer.maximum = size
            self.metrics.timeout(self.ref.source)
            self.metrics.page_size(self.ref.source, self.ref.table, size)
            self.state.record_source_state(self.ref.source, self.ref.table, page_size=size)
            change = (f"page size {before} -> {size}" if size != before else
                      f"page size stays at its minimum {size}")
            log.warning("timeout; %s: %s", change, exc.message,
                        extra=self._extra(page_size=size))

    def _read_page(self, db: Source, contract: Contract, after: Watermark | None,
                   since: object | None, dry_run: bool, upto: Watermark | None = None
                   ) -> _Page:
        """One page (a SQL page ends at `upto`, see `_cursor_pass`), carrying the sequence
        number taken before it was read: the merge keeps the row of the highest number, and
        only a read that started later can have seen a later commit (a number taken at
        landing would let a slow or stalled read win)."""
        seq = 0 if dry_run else self.state.next_seq()
        if isinstance(db, HttpSource):
            page = self._read_http_page(db, after, since, dry_run, seq)
            page.seq = seq
            return page

        def once() -> _Page:
            started = time.monotonic()
            limit = self.sizer.current  # read per attempt: a retry after a timeout is smaller
            rows, high = db.page(self.ref.table, contract, after, since, limit, upto=upto)
            return _Page(rows, high, db.has_more(rows, limit), time.monotonic() - started,
                         seq=seq)

        return self.guard.call(once, on_error=self._on_error, stop=self.should_stop)

    def _read_http_page(self, db: HttpSource, after: Watermark | None, since: object | None,
                        dry_run: bool, seq: int = 0) -> _Page:
        """Fetch (guarded) → land the raw answer → parse against the run's resume point.

        A bad payload is quarantined raw and the page requested again, at most
        `bad_page_retries` times, then the table fails loudly (its checkpoint unmoved, so
        the next run tries again). Rejected records are quarantined and the page goes on.
        The run follows one TokenChain: the first call starts it from (after, since);
        later calls continue it (their `after` is the chain's own running high). The
        checkpoint moves only at the chain's end: `_checkpoint` waits while it is open,
        and an ending page with no rows to publish moves it here (every earlier page is
        published already: HTTP pages are read one at a time). `seq`, taken before the
        read, is kept in the raw page so that a replay of it loads in read order.
        """
        chain = self._chain
        if chain is None or chain.ended:
            chain = self._chain = db.chain(self.ref.table, after, since)
        reasons: list[str] = []
        for _ in range(self.table.bad_page_retries + 1):
            raw = self.guard.call(
                lambda: db.fetch(self.ref.table, chain, self.sizer.current, seq),
                on_error=self._on_error, stop=self.should_stop)
            raw_ref = None if dry_run else self._land_raw(raw)
            try:
                page: HttpPage = db.parse(self.ref.table, self.contract, raw, chain)
            except BadPayload as exc:
                reasons.append(exc.message)
                self._quarantine_page(raw, raw_ref, exc)
                continue
            self.schema_drift(page.extra_fields)
            if page.rejected and not dry_run:
                self._quarantine_records(raw, page.rejected)
            chain.follow(page)
            self.memory.next_field = self.memory.next_field or chain.next_seen
            if chain.ended and chain.unproven:
                self._prove_next_field(db, chain, seq)
            if chain.ended and (chain.counts_records or chain.counts_pages):
                self._counting_tokens(chain)
            meta: dict[str, object] = {"raw_page": raw_ref.batch_id} if raw_ref else {}
            if chain.ended and (chain.moved is not None or chain.shifted is not None):
                more = self._unsettled(db, chain)
                if more:
                    return _Page(page.rows, chain.high, True, raw.seconds, meta)
            elif chain.ended and chain.needs_settling and chain.high is not None:
                log.info("the API serves records in no cursor order: walking once more from "
                         "the same start; the checkpoint moves to the first walk's high",
                         extra=self._extra())
                self._chain = db.chain(self.ref.table, chain.resume, chain.since,
                                       high=chain.high, settles=chain.high,
                                       walks=chain.walks + 1)
                return _Page(page.rows, chain.high, True, raw.seconds, meta)
            if chain.ended and chain.high is not None and not page.rows.num_rows \
                    and not dry_run:
                self._checkpoint(chain.high)
            return _Page(page.rows, chain.high, not chain.ended, raw.seconds, meta)
        raise QuarantineError(
            f"{len(reasons)} bad payload(s) in a row for the same page ({reasons[-1]}); "
            "the pages before it are landed, this table resumes from its checkpoint on the "
            "next run", stage="extract", source=self.ref.source, table=self.ref.table,
            hint="steadyflow quarantine list shows the raw pages; run.extract.replay_pages")

    def _prove_next_field(self, db: HttpSource, chain: TokenChain, seq: int) -> None:
        """A walk of one page of records whose answer did not say whether more follow
        (TokenChain.unproven: no next field, no Link header): an API leaving `next` out on
        its last page answers exactly that when a poll's records fit one page, and so
        does one whose token sits where next_path does not look, full or capped short of
        the page size (every record after that page lost if the checkpoint moved). An
        earlier walk of this process that saw the field proves next_path; else one page a
        record smaller than answered (two when one was asked), from the same start, is
        asked: the first API answers it with the field (more follow), the second full
        without it (refused, checkpoint unmoved). A smaller answer without the field
        (records gone between the two requests) proves nothing: the checkpoint stays where
        it was for this poll (its records are loaded) and the next one reads from there.
        The probe's records are neither landed nor loaded: the walk's page holds them."""
        if self.memory.next_field:
            chain.unproven = False
            return
        answered = min(chain.asked, chain.counted)
        limit = answered - 1 if answered > 1 else 2
        probe = db.chain(self.ref.table, chain.resume, chain.since)
        raw = self.guard.call(lambda: db.fetch(self.ref.table, probe, limit, seq),
                              on_error=self._on_error, stop=self.should_stop)
        page = db.parse(self.ref.table, self.contract, raw, probe)
        if page.next_field or (chain.asked == 1 and page.records < limit):
            self.memory.next_field = page.next_field
            chain.unproven = False
        elif page.records >= limit:
            raise chain.no_next_field(limit, page.records)
        else:
            log.warning("the API answered a full page of %d records with no next-page field, "
                        "then %d for a page of %d, without it too: the last page is not "
                        "proven; the checkpoint stays where it was and the next poll reads "
                        "from there", chain.asked, page.records, limit, extra=self._extra())

    def _counting_tokens(self, chain: TokenChain) -> None:
        """Say once per process that a token walk's tokens count records or pages: a plain
        offset or page number carries no filter, so a record deleted before it while the
        walk goes on moves its neighbour onto no page, which no token walk can notice."""
        if self.memory.offsets_reported:
            return
        self.memory.offsets_reported = True
        if chain.counts_pages:
            log.warning("the API's next-page tokens count pages (%d pages): a record deleted "
                        "during a walk costs its neighbour, unseen (a page number cannot be "
                        "asked to overlap); use the API's keyset cursor if it has one, or "
                        "pagination: offset if it takes an offset, or a lookback reaching "
                        "back over a walk", chain.pages, extra=self._extra())
            return
        log.warning("the API's next-page tokens count records (%d pages, %d records): if "
                    "it pages by offset, a record deleted during a walk costs its neighbour, "
                    "unseen; set the table's pagination: offset (and offset_param) so each "
                    "page proves nothing slid past its boundary", chain.pages, chain.counted,
                    extra=self._extra())

    def _unsettled(self, db: HttpSource, chain: TokenChain) -> bool:
        """A record moved while the chain walked (TokenChain._track), or an offset walk
        lost its place (OffsetWalk.shifted): an API paging by offset or page number may
        have skipped the record at the shift, below the chain's high, so moving the
        checkpoint there lost it for good (every run ok). Walk again from the same resume
        point (True: a new chain is started). After HTTP_WALKS walks that moved, the
        checkpoint stays where the run started (`_checkpoint`) and the next run re-reads
        from there; after HTTP_WALKS that lost their place the poll fails (FatalError,
        checkpoint unmoved): an API whose order is not stable would shift every walk, and
        a held checkpoint would report ok while some walk's hole is never read. Every
        record read is loaded either way (the merge keeps the newest)."""
        src, tbl = self.ref.source, self.ref.table
        why = (f"the offset walk lost its place: {chain.shifted}" if chain.shifted
               else f"a record (key {chain.moved}) moved while the page walk went on; an "
                    "API that pages by offset or page number skips a record then")
        if chain.walks < HTTP_WALKS:
            log.warning("%s: walking again from the same start (walk %d of at most %d)",
                        why, chain.walks + 1, HTTP_WALKS, extra=self._extra())
            self._chain = db.chain(tbl, chain.resume, chain.since, high=chain.high,
                                   walks=chain.walks + 1, settles=chain.settles)
            return True
        if chain.shifted is not None:
            raise FatalError(
                f"{HTTP_WALKS} page walks from this run's start were unsettled, the last "
                f"one lost its place ({chain.shifted}); the pages read are landed, the "
                "checkpoint stays where this run started",
                stage="extract", source=src, table=tbl,
                hint="records are being deleted faster than the walk pages (raise the "
                     "table's overlap, or its page_size), or the API does not serve one "
                     "stable order (sort it by a unique field, or use a keyset token: "
                     "pagination: token)")
        log.warning("records moved during each of %d page walks (last: key %s): the "
                    "checkpoint stays where this run started and the next run reads from "
                    "there again; if the API pages by keyset tokens this costs only re-reads, "
                    "if by offset or page number, page when it is quieter or with a larger "
                    "page_size", HTTP_WALKS, chain.moved, extra=self._extra())
        return False

    def _land_raw(self, raw: RawPage) -> BatchRef:
        """The raw answer, durable before it is parsed (not in the manifest: not loadable)."""
        return self.landing.write(raw.as_table(), self.ref.source,
                                  f"{self.ref.table}{RAW_SUFFIX}", None, None, kind="raw",
                                  meta={"request": raw.request, "status": raw.status})

    def _quarantine_page(self, raw: RawPage, raw_ref: BatchRef | None, exc: BadPayload) -> None:
        self.result.bad_pages += 1
        log.error("bad payload quarantined: %s", exc.message,
                  extra=self._extra(batch_id=raw_ref.batch_id if raw_ref else None))
        if raw_ref is None:
            return
        self.state.record_quarantine(raw_ref.batch_id, self.ref.source, self.ref.table,
                                     raw_ref.path, 1, {exc.message: 1})
        self.metrics.quarantined(self.ref.source, self.ref.table, 1, len(raw.body))

    def _quarantine_records(self, raw: RawPage, rejected: list[Rejected]) -> None:
        """Records that cannot be placed cost themselves only: landed with their JSON text
        and reason under <table>.rejected/ and quarantined, once each (a chain re-read or a
        lookback brings the same record again: the parked-row index knows it)."""
        src, tbl = self.ref.source, self.ref.table
        hashes = [hashlib.blake2b(b"rejected|" + r.text().encode(), digest_size=16).hexdigest()
                  for r in rejected]
        parked = self.state.parked_by(src, tbl, hashes)
        fresh = [(r, h) for r, h in zip(rejected, hashes, strict=True) if h not in parked]
        log.warning("%d record(s) of a page cannot be placed (%s); %d new quarantined, the "
                    "rest of the page is loaded", len(rejected), rejected[0].reason,
                    len(fresh), extra=self._extra())
        if not fresh:
            return
        table = rejected_table(raw, [r for r, _ in fresh])
        ref = self.landing.write(table, src, f"{tbl}{REJECTED_SUFFIX}", None, None,
                                 kind="rejected", meta={"request": raw.request})
        reasons: dict[str, int] = {}
        for r, _ in fresh:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
        self.state.record_quarantine(ref.batch_id, src, tbl, ref.path, len(fresh), reasons,
                                     [h for _, h in fresh], count=True)
        self.metrics.quarantined(src, tbl, len(fresh), ref.nbytes)
        self.result.quarantined += len(fresh)

    def _low(self, rows: pa.Table, after: Watermark | None, since: object | None
             ) -> Watermark | None:
        return after

    def publish(self, rows: pa.Table, low: Watermark | None, high: Watermark,
                meta: dict[str, object] | None = None,
                advance: Callable[[Watermark], None] | None = None,
                seq: int | None = None) -> BatchRef:
        """Land, record, enqueue, then move the checkpoint. The order is the guarantee.

        `seq` is the number taken before the rows were read (see _read_page). Recording and
        the checkpoint are fenced by the lease: a batch landed by an extractor that lost it
        is never recorded, so never enqueued, swept or loaded (its file is an orphan).
        """
        failpoint("extract.before_land")
        started = time.monotonic()
        if self._added:
            meta = {**(meta or {}), "columns": self._added}
        prepared = self.landing.prepare(rows, self.ref.source, self.ref.table, low, high,
                                        meta=meta,
                                        seq=self.state.next_seq() if seq is None else seq)
        batch_id = prepared.ref.batch_id
        if self.state.batch(batch_id) is not None:
            # a re-read of rows already landed exactly so (a lookback window over a quiet
            # table, a page read again after a crash): the same id means the same rows in
            # the same range, and that batch is in the manifest, loaded or on its way (the
            # sweeper sees to it). Landing, queueing and loading it again would only churn
            # (every idle poll of every table re-loaded its window, so the buffer never
            # emptied); the position moves as usual
            (advance or self._checkpoint)(high)
            return prepared.ref
        batch = self.landing.store_prepared(prepared)
        self.state.record_landed(batch, lease=self.lease)
        failpoint("extract.after_land")
        self.metrics.rows(self.ref.source, self.ref.table, "land", batch.rows, batch.nbytes)
        self.buffer.put(batch, timeout=self.put_timeout)
        failpoint("extract.after_enqueue")
        (advance or self._checkpoint)(high)
        self.metrics.batch_duration(self.ref.source, self.ref.table, "land",
                                    time.monotonic() - started)
        log.debug("landed", extra={"source": self.ref.source, "table": self.ref.table,
                                   "stage": "land", "batch_id": batch.batch_id,
                                   "rows": batch.rows})
        return batch


def replay_pages(pipeline: Pipeline, batch_ids: Sequence[str] = (),
                 records_path: str | None = None) -> dict[str, Any]:
    """Re-parse quarantined raw pages (with the current config, or another `records_path`)
    and rejected records, and load what now parses through the normal path: land →
    manifest → validate → merge + ledger. What still does not parse stays quarantined
    with its reason. Rows load with the sequence number of the read that fetched them (a
    fresh one for pages landed before raw pages kept it): never 0, which would lose to
    every row already loaded, and never newer than a later read of the same row."""
    loaded = changed = pages = still_bad = 0
    reasons: dict[str, str] = {}
    for item in pipeline.state.quarantined("open"):
        if not is_raw_page(item["path"]) or (batch_ids and item["batch_id"] not in batch_ids):
            continue
        pages += 1
        _, table_cfg, _ = pipeline.config.table(item["source"], item["table"])
        contract = pipeline.config.contract_of(table_cfg)
        landed = pipeline.landing.read_file(item["path"])
        raw = RawPage.from_table(landed)
        try:
            if is_rejected_records(item["path"]):
                records = [json.loads(p) for p in landed["payload"].to_pylist() if p]
                page = parse_records(contract, records)
            else:
                page = parse_page(table_cfg, contract, raw, None, records_path)
        except BadPayload as exc:
            still_bad += 1
            reasons[item["batch_id"]] = exc.message
            continue
        if page.rows.num_rows:
            batch = pipeline.landing.write(page.rows, item["source"], item["table"], None,
                                           page.high, kind="replay",
                                           meta={"of": item["batch_id"]},
                                           seq=raw.seq or pipeline.state.next_seq())
            pipeline.state.record_landed(batch)
            outcome = pipeline.loader.load_and_mark(batch)
            loaded += outcome.good_rows if outcome.loaded else 0
            changed += outcome.changed_rows
        still_bad += len(page.rejected)
        if page.rejected:
            reasons[item["batch_id"]] = page.rejected[0].reason
        pipeline.state.mark_quarantine_replayed(item["batch_id"], page.rows.num_rows,
                                                len(page.rejected))
    return {"pages": pages, "loaded_rows": loaded, "changed_rows": changed,
            "still_quarantined": still_bad,
            "reasons": reasons}
