"""Pipeline config: one YAML file, validated into typed models before any work starts.

Secrets never live in the file: `${VAR}` references are filled from the environment
at load time, and error messages print the reference, never the value. Every filled-in
value (and every DSN password) is registered with steadyflow.secrets, whose `scrub` every
sink (logs, state, status page, landed raw pages) applies.

What is refused here, before anything runs, and why (each names the key and the fix):
  * a `pattern` RE2 cannot compile (validation runs it with Arrow's RE2, not Python's re);
  * the same (source, table) twice, or tables of different shapes feeding one target;
  * tables feeding one target without a `warehouse_filter` on primary-key columns whose
    values tell them apart: merged on the key alone, one's rows would replace another's;
  * `lookback` on a cursor type that cannot step back (string, bool): it would be ignored;
  * `lookback_mode: adaptive` where the source cannot tell its open transactions (SQLite,
    HTTP) or the cursor is not a timestamp;
  * a float64 cursor or primary-key column: NaN has no place in keyset order (PostgreSQL
    sorts it above every number, so a NaN high mark stops a table for good) and equal
    keys must compare exactly; decimal(p,s), an integer or a timestamp can;
  * durations that make a spin or cannot work: a buffer lease under 1 s, a zero
    run.interval, zero connect/statement timeouts, backoff_max below backoff_initial;
  * an unknown key, with the closest known key as "did you mean".

A password written literally into a DSN (not as `${VAR}`) is accepted, with a WARNING at
every load naming the key and the fix (see `_warn_literal_passwords` for why not refused).
"""

from __future__ import annotations

import difflib
import itertools
import logging
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import parse_qs, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from steadyflow import secrets
from steadyflow.errors import ConfigError
from steadyflow.model import Column, Contract, TableRef, column_type, parse_duration

log = logging.getLogger("steadyflow.config")

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# libpq's keyword form: "host=h user=u password=secret dbname=d"
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
# cursor types a lookback window can step back from (model.step_back); the others would
# silently ignore it
STEP_BACK_TYPES = ("int64", "int32", "date", "timestamp", "decimal")
# sources whose open transactions a poll can see (the adaptive lookback)
ADAPTIVE_SOURCES = ("postgres", "mysql")
# cursors the adaptive lookback can place behind an open transaction: a time stamped by
# the source's clock inside the writing transaction, or a number the source hands out in
# order (a sequence, AUTO_INCREMENT) inside it (docs/architecture.md)
ADAPTIVE_CURSOR_TYPES = ("timestamp", "int64", "int32")
# keyset order and key equality need exact, totally ordered values: no NaN
UNORDERED_KEY_TYPES = ("float64",)
MIN_LEASE = 1.0
# the warehouse columns steadyflow adds itself (merge/plan.py SEQ, model.INVALID)
RESERVED_PREFIX = "_steadyflow_"
RESERVED_WHY = (f"names starting with {RESERVED_PREFIX} are steadyflow's own warehouse "
                "columns (its load sequence, invalid-value reasons)")

Duration = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def reserved(column: str) -> bool:
    """Is this a name of steadyflow's own warehouse columns (RESERVED_PREFIX)?"""
    return column.lower().startswith(RESERVED_PREFIX)


def _ident(value: str) -> str:
    if not IDENT.match(value):
        raise ValueError(f"{value!r} is not a plain identifier (letters, digits, _; max 63)")
    return value


class ColumnConfig(_Strict):
    """One contract column: its type and the rules validation applies to every row.

    A row that breaks a rule is quarantined with its reason (`steadyflow quarantine list`),
    never loaded, never dropped in silence; the other rows of its batch load.
    """

    type: str = Field(description=(
        "int64, int32, float64, bool, string, date, timestamp (a UTC instant in "
        "microseconds; naive source values are read as UTC) or decimal(p,s) (exact: a value "
        "needing more scale or precision is quarantined, never rounded)"))
    nullable: bool = Field(default=True, description=(
        "false: a NULL is quarantined; primary-key columns must say false"))
    min: float | None = Field(default=None, description=(
        "smallest allowed value (numbers); NaN and ±inf fail a min or max rule"))
    max: float | None = Field(default=None, description="largest allowed value (numbers)")
    allowed: list[str] | None = Field(default=None, description=(
        "the only values allowed (e.g. [USD, EUR, GBP])"))
    pattern: str | None = Field(default=None, description=(
        "a regular expression every value must match, in RE2 syntax (validation runs it "
        "with Arrow): no lookaround or backreferences; refused at load if RE2 cannot "
        "compile it"))

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        column_type(value)
        return value.strip().lower()

    @field_validator("pattern")
    @classmethod
    def _re2(cls, value: str | None) -> str | None:
        """Compile it with Arrow itself: validation runs RE2, whose syntax is not Python's.
        (Imported here, as in `_owned`: a config without patterns or filters loads no
        pyarrow, see arrow_types.py.)"""
        if value is None:
            return value
        from steadyflow.arrow_types import re2_error

        if (why := re2_error(value)) is not None:
            raise ValueError(
                f"{value!r} is not a regular expression RE2 accepts ({why}); validation "
                "runs patterns with RE2 (Arrow), which has no lookaround, backreferences, "
                r"\Z or repeats over 1000: rewrite it in RE2 syntax") from None
        return value


class ContractConfig(_Strict):
    """A table contract: its columns, primary key and cursor, shared by name (`contracts:`)
    or written inline in a table (`contract: {...}`)."""

    primary_key: list[str] = Field(min_length=1, description=(
        "the columns that identify a row (composite is fine); the merge matches on them; "
        "each must be a column with nullable: false and not float64"))
    cursor: str = Field(description=(
        "the column that moves forward whenever a row changes (typed timestamp, date, "
        "int32/int64 or decimal(p,s); string works without lookback; float64 is refused); "
        "extraction pages by (cursor, primary key)"))
    columns: dict[str, ColumnConfig] = Field(min_length=1, description=(
        "column name → its type and rules; names are plain identifiers; only these "
        "columns are extracted (see schema_drift)"))

    @model_validator(mode="after")
    def _keys_are_columns(self) -> ContractConfig:
        folded: dict[str, str] = {}
        for name in self.columns:
            _ident(name)
            if reserved(name):
                raise ValueError(f"column {name!r}: {RESERVED_WHY}; rename the column in "
                                 "the source or a view over it")
            if name.lower() in folded:
                raise ValueError(
                    f"columns {folded[name.lower()]!r} and {name!r} differ only in case: "
                    "DuckDB (and the warehouse's identifiers) take them as one column; "
                    "load one of them, or rename it in a view over the source table")
            folded[name.lower()] = name
        for key in [*self.primary_key, self.cursor]:
            if key not in self.columns:
                raise ValueError(f"{key!r} is used as key or cursor but is not in columns")
        for key in self.primary_key:
            if self.columns[key].nullable:
                raise ValueError(f"primary key column {key!r} must be nullable: false")
        for key in dict.fromkeys([self.cursor, *self.primary_key]):
            if self.columns[key].type in UNORDERED_KEY_TYPES:
                role = "cursor" if key == self.cursor else "primary key column"
                raise ValueError(
                    f"{role} {key!r} is typed {self.columns[key].type}: floats cannot order "
                    "or identify rows (NaN sorts above every number on PostgreSQL and "
                    "equals nothing, so a NaN high mark stops the table and a NaN key never "
                    "merges); type it decimal(p,s), or pick an integer, date or timestamp "
                    "column as the cursor")
        return self

    def to_contract(self) -> Contract:
        return Contract(
            columns=tuple(
                Column(
                    name=name,
                    type=c.type,
                    nullable=c.nullable,
                    min=c.min,
                    max=c.max,
                    allowed=tuple(c.allowed) if c.allowed is not None else None,
                    pattern=c.pattern,
                )
                for name, c in self.columns.items()
            ),
            primary_key=tuple(self.primary_key),
            cursor=self.cursor,
        )


class ResilienceConfig(_Strict):
    """One policy per source, used by every source kind.

    Only transient errors are retried (timeouts, refused or reset connections, 5xx, 429); a
    bad password or a missing table fails the table at once. A timeout or a slow page also
    halves the table's page size (down to `min_page_size`); healthy pages grow it back.
    """

    connect_timeout: Duration = Field(default=10.0, description=(
        "how long to wait for a connection (or an HTTP connect); more than 0"))
    statement_timeout: Duration = Field(default=60.0, description=(
        "the longest one query or request may run: PostgreSQL statement_timeout, MariaDB "
        "max_statement_time, httpx read timeout, plus a client-side watchdog so a "
        "black-holed link cannot hang a read; more than 0"))
    retries: int = Field(default=6, ge=0, description=(
        "retries of a transient failure, with exponential backoff and full jitter"))
    backoff_initial: Duration = Field(default=0.5, description="the first retry's backoff")
    backoff_max: Duration = Field(default=30.0, description=(
        "the longest backoff between retries; also caps an HTTP Retry-After; at least "
        "backoff_initial"))
    breaker_failures: int = Field(default=5, ge=1, description=(
        "consecutive failed calls that open the source's circuit breaker (calls then fail "
        "fast instead of waiting on a dead source)"))
    breaker_reset: Duration = Field(default=30.0, description=(
        "how long the breaker stays open before one probe call may close it"))
    max_concurrent_queries: int = Field(default=1, ge=1, description=(
        "queries this source database runs at once, over all its tables"))

    _d = field_validator(
        "connect_timeout", "statement_timeout", "backoff_initial", "backoff_max", "breaker_reset",
        mode="before",
    )(_duration)

    @model_validator(mode="after")
    def _sane(self) -> ResilienceConfig:
        for name in ("connect_timeout", "statement_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be more than 0 s (0 is not 'no limit': every "
                                 "call would time out at once); set e.g. '30s'")
        if self.backoff_max < self.backoff_initial:
            raise ValueError(f"backoff_max ({self.backoff_max:g} s) is below backoff_initial "
                             f"({self.backoff_initial:g} s); raise backoff_max")
        return self


class TableConfig(_Strict):
    """One source table (or, for an HTTP source, one endpoint) and how to read it.

    `schema_drift` decides what happens when the source has columns (or record fields) the
    contract does not name. Every policy is loud; none ever loses or truncates a value:

    - `ignore` (default): extract only the contract's columns; log a WARNING naming the new
      columns at every run until the contract is updated.
    - `stop`: fail this table with a SchemaError naming the new columns (other tables go
      on; the checkpoint does not move) until the contract is updated.
    - `add` (SQL sources only): extract the new columns too, with a WARNING naming them at
      every run: the batch's contract is the configured one plus each new column, nullable
      and without rules, typed from the source's declared type where that is unambiguous
      (integers → int64, numeric(p,s) → decimal(p,s), timestamp / timestamptz / datetime →
      timestamp, double / float → float64, boolean → bool) and as string otherwise (see
      model.drift_type). The batch records them in meta["columns"]; the loader adds them to
      the warehouse table (ALTER TABLE ... ADD COLUMN IF NOT EXISTS), rows loaded before
      hold NULL. A new column whose name is not a plain identifier stops the table with a
      SchemaError naming it. Reconcile (compare/repair) checks the configured contract's
      columns only; a repaired row's added columns are filled again when the row next
      changes.

    Type changes need no policy: values that no longer fit the contract type (a widened
    decimal scale, text in a number column) are quarantined with their reason, never cast
    lossily; a dropped or renamed column stops the table with a SchemaError. So does, at
    load, a column the warehouse table holds that the batches no longer bring (removed
    from the contract, or an added column dropped at the source): the merge replaces
    whole rows, so each row changed afterwards would hold NULL there. Drop it from the
    warehouse table (the error gives the ALTER TABLE), or bring it back; columns with a
    DEFAULT are the warehouse's own and not asked about. A warehouse column of a type
    that would convert a batch's values (narrower numbers, a date for a timestamp, a number,
    time or bool type for a string: an added column whose source type became text) stops
    the table at load too, naming the ALTER TABLE that widens it.
    """

    name: str = Field(description=(
        "the source table's name (for an HTTP source, this endpoint's name); a plain "
        "identifier"))
    target: str | None = Field(default=None, description=(
        "the warehouse table it loads; default: `name`. Several tables may feed one target "
        "if they have the same contract. Refused: a name starting with _steadyflow_ "
        "(steadyflow's own tables), and two targets differing only in case (one table to "
        "DuckDB)"))
    contract: str | ContractConfig = Field(description=(
        "a contract's name from `contracts:`, or a contract written inline"))
    lookback: Duration = Field(default=0.0, description=(
        "fixed mode: how far behind the checkpoint each run re-reads (e.g. 2m), so rows "
        "committed late with an older cursor are not skipped; the merge makes the overlap "
        "harmless. Adaptive mode: the floor, the least re-read behind both the checkpoint "
        "and the oldest open transaction, for cursors stamped by a clock the source does "
        "not own (an application server's, an import's). Only for timestamp, date, "
        "integer and decimal cursors"))
    lookback_mode: Literal["auto", "adaptive", "fixed"] = Field(default="auto", description=(
        "`adaptive` (PostgreSQL and MariaDB tables with a timestamp cursor, or an integer "
        "one the source numbers in order: a sequence, AUTO_INCREMENT): each poll "
        "notes when the oldest transaction still open at the source began, and the next "
        "poll re-reads from there (or from its checkpoint, whichever is earlier) minus "
        "`lookback` (0 by default), so a long transaction that commits late is never "
        "skipped, and with none open almost nothing is re-read (an integer cursor: from "
        "the greatest number a poll saw before that transaction began, so the rows of "
        "the poll before are read again once); needs pg_read_all_stats "
        "(PostgreSQL) or PROCESS (MariaDB), and falls back to the fixed window, with a "
        "warning, without it. `fixed`: always re-read the `lookback` window. `auto` "
        "(default): adaptive where it applies, fixed elsewhere (SQLite, HTTP, other cursor "
        "types)"))
    # DuckDB's row group: a page that fills whole row groups is written once at commit,
    # a partial one is rewritten by every later checkpoint (bench/NOTES.md: inserting 2M rows
    # took 2.49 s in 100,000-row pages, 1.24 s in 122,880-row pages)
    page_size: int = Field(default=122_880, ge=1, description=(
        "rows per extracted page, and the most the adaptive page size grows back to; the "
        "default is DuckDB's row group (a page filling whole row groups is written once)"))
    min_page_size: int = Field(default=500, ge=1, description=(
        "the smallest page a timeout or a slow page may halve the page size to"))
    # the first run of a SQL table reads it in primary-key order (the key's index: 28% less
    # source CPU than the cursor index on the bench table, and InnoDB's clustered order)
    initial_load: Literal["key", "cursor"] = Field(default="key", description=(
        "how the first run of a SQL table reads it: `key` in primary-key order (the "
        "cheapest full read), then catching up by cursor from where the cursor stood when "
        "it began; `cursor` by cursor like every later run"))
    mirror_deletes: bool = Field(default=False, description=(
        "let `steadyflow reconcile --repair` delete warehouse rows whose key is gone at "
        "the source (checked again just before). Incremental runs never see deletes; off, "
        "reconcile only reports them as `extra`"))
    warehouse_filter: dict[str, int | str] | None = Field(default=None, description=(
        "the warehouse rows this table owns (e.g. {store_id: 3}): a row whose columns do "
        "not hold these values is quarantined at load, and reconcile compares only these "
        "rows. Required when several tables feed one target: on primary-key columns, with "
        "a value differing between the tables, so no table's row can replace another's"))
    poll_min: Duration | None = Field(default=None, gt=0, description=(
        "run --follow: this table's pause after a poll that found new rows (default: "
        "run.poll_min)"))
    poll_max: Duration | None = Field(default=None, gt=0, description=(
        "run --follow: this table's longest pause while idle (default: run.interval)"))
    behind_after: Duration | None = Field(default=None, gt=0, description=(
        "`status`, the page, /api/status: this table is behind (failing, exit code 2) "
        "once its oldest landed batch has waited this long to load while a loop or a "
        "worker runs (default: run.behind_after); its load SLA"))
    schema_drift: Literal["ignore", "stop", "add"] = Field(default="ignore", description=(
        "what to do when the source has columns the contract does not name (above)"))
    endpoint: str | None = Field(default=None, description=(
        "HTTP sources only (required there): the path after the source's url; pages are "
        "GET {url}{endpoint}?{since_param}=..&{limit_param}=..&{next_param}=.."))
    records_path: str = Field(default="data", description=(
        "HTTP: dotted path to the list of records in a response page"))
    next_path: str = Field(default="next", description=(
        "HTTP: dotted path to the next-page token; null, absent or \"\" = the last page, as is "
        "an empty page handing back the token it was asked with (an empty page with a new "
        "token is followed). An answer without the field whose Link header has "
        "rel=\"next\" (RFC 8288, GitHub-style) is followed to that URL (same origin as the "
        "source's url only); a Link header with rel prev/first/last and no next ends the "
        "walk. A walk that is one page of records (full, or short: APIs cap the page size) "
        "with neither, none seen before in the process, asks one page a record smaller "
        "than answered from the same start to prove it the last (it must carry the field "
        "or a Link header); full without them too, the table fails naming next_path, its "
        "checkpoint unmoved"))
    next_param: str = Field(default="after", description=(
        "HTTP: the query parameter that carries the next-page token; three answers in a "
        "row holding only records the walk had read, each with a new token (an API that "
        "does not read this parameter serves its first page again), fail the table naming "
        "it, its checkpoint unmoved"))
    since_param: str | None = Field(default="updated_since", description=(
        "HTTP: the query parameter of the incremental start (ISO-8601); null = the API "
        "takes none: every run reads the whole chain and keeps the records past the "
        "checkpoint"))
    limit_param: str | None = Field(default="limit", description=(
        "HTTP: the query parameter of the page size; null = none (the API has no pages: "
        "its first answer is taken for the whole list)"))
    pagination: Literal["token", "offset"] = Field(default="token", description=(
        "HTTP: `token`: the API hands out each next page's token (`next_path`), sent back "
        "in `next_param`, or its URL (a Link rel=\"next\" header); it must carry its own "
        "filter (a keyset cursor) for a record deleted during the walk to cost no other "
        "record. `offset`: steadyflow counts the "
        "records itself and sends the position in `offset_param` (with `since_param` on "
        "every page); each page repeats the previous page's last `overlap` records to prove "
        "no record slid past the page boundary (README: HTTP APIs)"))
    offset_param: str = Field(default="offset", description=(
        "HTTP, `pagination: offset`: the query parameter of the position (0 = the first "
        "record)"))
    overlap: int = Field(default=2, ge=0, le=1000, description=(
        "HTTP, `pagination: offset`: records each page re-reads from the previous one. A "
        "walk absorbs fewer than `overlap` deletions before its position between two pages "
        "exactly; more (or an order that is not stable) walks again from the run's start, "
        "and the poll fails, checkpoint unmoved, if every walk shifts. Costs `overlap` "
        "records per page and one request per walk (the last answers only the overlap). 0 "
        "= no check: a record deleted mid-walk then costs its neighbour, silently"))
    cursor_order: Literal["unknown", "ascending", "descending"] = Field(
        default="unknown", description=(
            "HTTP: the order the API serves its records in. `ascending`/`descending`: by "
            "the cursor (a record updated during a walk moves ahead of it, or behind its "
            "high), so a walk of several pages is trusted once (each walk checks that every "
            "page served its records in that order, else it is walked once more). "
            "`unknown` (by id, unordered, or not documented): a walk of several pages is "
            "walked once more from the same start and the checkpoint moves to the first "
            "walk's high, because a record updated in place behind the walk is not met "
            "again and cursors that happen to rise do not prove the order"))
    params: dict[str, str] = Field(default_factory=dict, description=(
        "HTTP: fixed query parameters; secrets as ${VAR} (scrubbed everywhere)"))
    max_page_bytes: int = Field(default=128 * 1024 * 1024, ge=1024, description=(
        "HTTP: the largest answer body read into memory (after content decoding), bytes; "
        "parsed, a JSON page takes about 6 times its size. A larger answer is cut there: "
        "the page size halves (and grows no more past it in this run) and the page is "
        "asked again, as after a timeout; at min_page_size, or from an API ignoring the "
        "limit, the table fails naming this setting, its checkpoint unmoved"))
    bad_page_retries: int = Field(default=3, ge=0, le=100, description=(
        "HTTP: a page whose payload is bad is quarantined raw and requested again (a full "
        "request to the API) at most this often; then the table fails, its checkpoint "
        "unmoved"))

    _n = field_validator("name", "target")(lambda v: v if v is None else _ident(v))
    _f = field_validator("warehouse_filter")(
        lambda v: v if v is None else {_ident(k): x for k, x in v.items()})
    _d = field_validator("lookback", mode="before")(_duration)
    _p = field_validator("poll_min", "poll_max", "behind_after", mode="before")(
        lambda v: v if v is None else _duration(v))


class SourceConfig(_Strict):
    """One store database or HTTP API, and the tables (endpoints) read from it."""

    name: str = Field(description=(
        "unique among sources; a plain identifier; labels metrics, logs and state"))
    kind: Literal["sqlite", "postgres", "mysql", "http"] = Field(description=(
        "mysql covers MariaDB too"))
    path: str | None = Field(default=None, description=(
        "sqlite: the database file, relative to the config file's folder"))
    dsn: str | None = Field(default=None, description=(
        "postgres, mysql: a connection URL, e.g. postgresql://reader:${STORE_PASSWORD}@"
        "store42:5432/pos; write the password as a ${VAR} reference (a literal one is "
        "warned about at load)"))
    url: str | None = Field(default=None, description="http: the API's base URL")
    headers: dict[str, str] = Field(default_factory=dict, description=(
        "http: request headers, e.g. {Authorization: \"Bearer ${API_TOKEN}\"}; values "
        "from ${VAR} are scrubbed everywhere"))
    sqlite_timestamp_format: str = Field(default="%Y-%m-%d %H:%M:%S.%f", description=(
        "sqlite: how a datetime bound is spelled in a query when no stored cursor text is "
        "at hand (a checkpoint from before stored text, reconcile's bounds)"))
    resilience: ResilienceConfig = Field(default=ResilienceConfig(), description=(
        "timeouts, retries, circuit breaker, concurrency (below)"))
    tables: list[TableConfig] = Field(min_length=1, description=(
        "the tables (HTTP: endpoints) to read; each (source, table) once"))

    _n = field_validator("name")(_ident)

    @model_validator(mode="after")
    def _location(self) -> SourceConfig:
        need = {"sqlite": "path", "postgres": "dsn", "mysql": "dsn", "http": "url"}[self.kind]
        if getattr(self, need) is None:
            raise ValueError(f"a {self.kind} source needs '{need}'")
        tls = _tls_params(self.dsn) if self.kind == "mysql" else []
        if tls:
            raise ValueError(
                f"the mysql dsn asks for TLS ({', '.join(tls)}), which steadyflow does not "
                "pass to its MariaDB drivers: pymysql would use TLS only if the server "
                "offers it, certificate unchecked, and connectorx's pages none; remove "
                "them and reach the store over a trusted network or a TLS tunnel")
        for table in self.tables:
            if self.kind == "http" and not table.endpoint:
                raise ValueError(f"table {table.name!r} of an http source needs 'endpoint'")
            if self.kind != "http" and table.endpoint:
                raise ValueError(f"table {table.name!r}: 'endpoint' is for http sources only")
            if self.kind == "http" and table.schema_drift == "add":
                raise ValueError(f"table {table.name!r}: schema_drift: add is for SQL sources "
                                 "only (an http source declares no column types)")
        names = [t.name for t in self.tables]
        for name in sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(
                f"table {name!r} is listed {names.count(name)} times in source {self.name!r}: "
                "both would extract and merge the same rows with one checkpoint between "
                "them; keep one entry")
        return self


class LandingConfig(_Strict):
    """Where extracted pages are written (Parquet, atomically) before they are queued.

    Landed batches and the manifest in state.db are the truth the buffer is rebuilt from;
    quarantined rows are kept here too (`_quarantine/`). A local folder (`path`), or, for
    workers on many hosts, an object store through the S3 API (`url`).
    """

    path: str = Field(default="landing", description=(
        "folder of the landed Parquet files, relative to the config file's folder"))
    url: str | None = Field(default=None, description=(
        "an object store instead of `path`: s3://bucket/prefix (AWS S3 or any S3-compatible "
        "store); each batch file is one atomic PUT"))
    endpoint: str | None = Field(default=None, description=(
        "url: the S3 endpoint of a store other than AWS, e.g. http://minio:9000"))
    region: str | None = Field(default=None, description="url: the bucket's region")
    access_key: str | None = Field(default=None, description=(
        "url: the access key id, as a ${VAR} reference; unset: the AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY environment variables, a profile or an instance role"))
    secret_key: str | None = Field(default=None, description=(
        "url: the secret key, as a ${VAR} reference (scrubbed everywhere)"))
    compression: Literal["zstd", "lz4", "snappy", "gzip", "brotli", "none"] = Field(
        default="zstd", description="Parquet codec of landed files")
    retention: Duration = Field(default=0.0, description=(
        "`steadyflow gc` deletes the files of loaded batches landed longer ago than this "
        "(their manifest rows stay, marked gone), and parked rows whose quarantine was "
        "replayed longer ago (an open one's are kept); 0 keeps every file"))
    compact_target: int = Field(default=128 << 20, ge=1, description=(
        "`steadyflow compact` merges a table's small batch files of one day into files of "
        "about this many bytes (default 128 MiB; 64-256 MiB suits object stores)"))

    _d = field_validator("retention", mode="before")(_duration)

    @field_validator("compact_target", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?",
                                                  value):
            raise ValueError(f"{value!r} is not an s3://bucket/prefix URL (a bucket name is "
                             "3-63 lowercase letters, digits, dots and hyphens)")
        return value

    @model_validator(mode="after")
    def _keys(self) -> LandingConfig:
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("set both access_key and secret_key, or neither (then the AWS "
                             "environment variables, a profile or an instance role are used)")
        if self.url is None and any((self.endpoint, self.region, self.access_key)):
            raise ValueError("endpoint, region and the keys are for an object store: set "
                             "url: s3://bucket/prefix, or remove them")
        return self


def parse_size(text: str) -> int:
    """Bytes from '64MB', '512KiB', '1GB' or a bare number (powers of 1024 either way)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B?)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 64MB, 512KB)")
    unit = (match.group(2) or "B")[0].upper()
    return int(match.group(1)) << {"B": 0, "K": 10, "M": 20, "G": 30}[unit]


class StateConfig(_Strict):
    """Where checkpoints, the landing manifest, leases, run history and the extraction
    sequence live.

    sqlite (the default) is one file in state_dir, for processes on one host; postgres is a
    schema in a control database (it may be the warehouse's), shared by `steadyflow worker`
    processes on any number of hosts.
    """

    kind: Literal["sqlite", "postgres"] = Field(default="sqlite", description=(
        "sqlite: state_dir/state.db (one host); postgres: a schema shared by many hosts"))
    dsn: str | None = Field(default=None, description=(
        "postgres (required there): a connection URL; the password as a ${VAR} reference"))
    schema_: str = Field(default="steadyflow_state", alias="schema", description=(
        "postgres: the schema of the state tables (one per pipeline)"))

    _n = field_validator("schema_")(_ident)

    @model_validator(mode="after")
    def _location(self) -> StateConfig:
        if self.kind == "postgres" and not self.dsn:
            raise ValueError("a postgres state store needs 'dsn'")
        return self


class BufferConfig(_Strict):
    """The bounded queue of landed batches between extraction and loading.

    A full buffer blocks extraction (backpressure); it never drops a batch. A lost buffer
    costs time, not data: each run's sweep queues again every landed batch that is neither
    loaded nor queued.
    """

    kind: Literal["sqlite", "jetstream"] = Field(default="sqlite", description=(
        "sqlite: a file in state_dir (embedded, one host); jetstream: a NATS JetStream "
        "stream"))
    capacity: int = Field(default=64, ge=1, description=(
        "batches queued at most; extraction waits while the buffer is full"))
    extract_wait: Duration = Field(default=60.0, description=(
        "how long `steadyflow extract`, run alone, waits for space in a full buffer before "
        "the table stops with an error (exit 1): no loader runs in its process, so without a "
        "`steadyflow load` beside it it would wait forever. The page is landed and the "
        "checkpoint stays before it; the next run queues it and goes on from there. `run`, "
        "`run --follow` and workers wait as long as their own loader runs"))
    lease: Duration = Field(default=120.0, description=(
        "how long a loader holds a batch before it is redelivered to another; at least "
        "1s, and longer than the slowest validate + merge of one batch"))
    url: str = Field(default="nats://127.0.0.1:4222", description="jetstream: the NATS server")
    stream: str = Field(default="steadyflow", description=(
        "jetstream: the stream's name (one per pipeline)"))

    _d = field_validator("lease", "extract_wait", mode="before")(_duration)

    @field_validator("lease")
    @classmethod
    def _lease(cls, value: float) -> float:
        if value < MIN_LEASE:
            raise ValueError(
                f"{value:g} s is too short: a batch must stay leased while it is validated "
                "and merged, or another loader takes it while the first still works on it "
                f"(a 0 lease redelivers at once, in a loop); use at least {MIN_LEASE:g}s")
        return value


class WarehouseConfig(_Strict):
    """Where rows are merged, each batch with its ledger row in one transaction."""

    kind: Literal["duckdb", "postgres"] = Field(default="duckdb", description=(
        "duckdb: an embedded file (one writing process at a time); postgres: a server"))
    path: str | None = Field(default="warehouse.duckdb", description=(
        "duckdb: the database file, relative to the config file's folder"))
    dsn: str | None = Field(default=None, description=(
        "postgres (required there): a connection URL; the password as a ${VAR} reference"))
    schema_: str = Field(default="main", alias="schema", description=(
        "the schema the tables are created in"))
    memory_limit: str = Field(default="32MB", description=(
        "duckdb: the loader connection's buffer pool cap (DuckDB evicts and spills past it)"))
    threads: int = Field(default=1, ge=1, description=(
        "duckdb: its worker threads (beside extraction on the same cores, more only "
        "contend)"))
    group_batches: int = Field(default=32, ge=1, description=(
        "batches of one target the loader merges in one transaction at most, when that "
        "many are ready (group commit: a spike of small batches costs fewer commits); 1 "
        "commits every batch alone"))
    group_rows: int = Field(default=250_000, ge=1, description=(
        "rows of one group at most (a batch with more is loaded alone): bounds how long a "
        "group's transaction runs"))
    lock_timeout: Duration = Field(default=60.0, description=(
        "postgres: how long a load waits for a lock another session holds (a LOCK "
        "TABLE, a long transaction's row locks, an ALTER queued behind a query) before it "
        "gives up, records the error on the table naming the sessions holding locks on "
        "the target, and retries the batch with back-off; more than 0 (PostgreSQL's "
        "default waits for ever, a loader blocked without a word)"))
    load_lanes: int = Field(default=4, ge=1, description=(
        "postgres: connections the loader merges on at once; the ready batches are split "
        "by target between them, so one slow target's transaction never holds the others' "
        "rows back (each target in one lane, its batches in order); duckdb loads on one"))

    _n = field_validator("schema_")(_ident)
    _d = field_validator("lock_timeout", mode="before")(_duration)

    @field_validator("lock_timeout")
    @classmethod
    def _lock_timeout(cls, value: float) -> float:
        if value < 0.001:
            raise ValueError("must be at least 1 ms: 0 would let a load wait for ever on "
                             "a lock another session holds; use e.g. '60s'")
        return value

    @model_validator(mode="after")
    def _location(self) -> WarehouseConfig:
        if self.kind == "postgres" and not self.dsn:
            raise ValueError("a postgres warehouse needs 'dsn'")
        return self


class RunConfig(_Strict):
    """How `run` schedules its work."""

    interval: Duration = Field(default=5.0, description=(
        "run --follow: the longest pause between two polls of a table that finds nothing "
        "new (each idle poll doubles its pause, from poll_min up to this); more than 0. "
        "Each table polls on its own cadence: a slow source never holds up another"))
    poll_min: Duration = Field(default=0.25, description=(
        "run --follow: the pause before a table's next poll while its polls find new rows; "
        "more than 0 (an `interval` below it lowers it to `interval`)"))
    max_parallel_sources: int = Field(default=4, ge=1, description=(
        "extraction threads: tables extracted at once over all sources (each source's own "
        "cap is resilience.max_concurrent_queries)"))
    reconcile_every: Duration = Field(default=0.0, description=(
        "run --follow: reconcile every SQL table this often, report only (0 = never); the "
        "schedule is kept in state.db"))
    behind_after: Duration = Field(default=900.0, description=(
        "`status`, the page, /api/status: a table is behind (failing, exit code 2) once "
        "its oldest landed batch has waited this long to load while a loop or a worker "
        "runs (its loader blocked or not keeping up; a table's own behind_after wins); "
        "more than 0"))
    reconcile_reverify: Duration = Field(default=7 * 86400.0, description=(
        "incremental reconcile (the scheduled one, `reconcile --incremental`): after a clean "
        "reconcile it compares only rows whose cursor moved since, plus a rolling share of "
        "the others, so that every row is compared again within this period (more than 0)"))

    _d = field_validator("interval", "poll_min", "reconcile_every", "reconcile_reverify",
                         "behind_after", mode="before")(_duration)

    @field_validator("reconcile_reverify")
    @classmethod
    def _reverify(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0 s: it is the period within which an "
                             "incremental reconcile compares every row again; use e.g. '7d'")
        return value

    @field_validator("behind_after")
    @classmethod
    def _behind(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0 s: every landed batch waits a moment to "
                             "load; use e.g. '15m'")
        return value

    @field_validator("interval", "poll_min")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0 s: follow mode waits this long between "
                             "polls, and 0 polls every source in a busy loop; use e.g. '5s'")
        return value


def adaptive_lookback(source: SourceConfig, table: TableConfig, contract: Contract) -> bool:
    """Does this table re-read from the source's oldest open transaction (lookback_mode:
    adaptive, or auto where it applies) rather than a fixed window?"""
    if table.lookback_mode == "fixed":
        return False
    return (source.kind in ADAPTIVE_SOURCES
            and contract.column(contract.cursor).type in ADAPTIVE_CURSOR_TYPES)


class PipelineConfig(_Strict):
    """A pipeline file's top level. Relative paths are relative to the file's folder."""

    name: str = Field(default="steadyflow", description=(
        "the pipeline's name; the `pipeline` label of its metrics"))
    state_dir: str = Field(default="state", description=(
        "folder of state.db (landing manifest, checkpoints, leases, run history, "
        "quarantine index) and of the sqlite buffer; one pipeline per state_dir"))
    state: StateConfig = Field(default=StateConfig(), description="see below")
    landing: LandingConfig = Field(default=LandingConfig(), description="see below")
    buffer: BufferConfig = Field(default=BufferConfig(), description="see below")
    warehouse: WarehouseConfig = Field(default=WarehouseConfig(), description="see below")
    run: RunConfig = Field(default=RunConfig(), description="see below")
    contracts: dict[str, ContractConfig] = Field(default_factory=dict, description=(
        "named contracts that tables refer to by name"))
    sources: list[SourceConfig] = Field(min_length=1, description="at least one")
    base_dir: str = Field(default=".", description=(
        "what relative paths are relative to; set by the loader to the config file's "
        "folder (rarely written by hand)"))

    @model_validator(mode="after")
    def _references(self) -> PipelineConfig:
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"source name {source.name!r} is used twice")
            seen.add(source.name)
            for table in source.tables:
                if isinstance(table.contract, str) and table.contract not in self.contracts:
                    raise ValueError(
                        f"sources.{source.name}.tables.{table.name}: unknown contract "
                        f"{table.contract!r} (known: {', '.join(self.contracts) or 'none'})"
                    )
                self._check_lookback(source, table)
        self._check_targets()
        self._check_state_beside()
        return self

    def _check_state_beside(self) -> None:
        """The state may live in the warehouse's database (StateConfig); in its schema too,
        a target named like a state table (checkpoints, quarantine, sequence...) was that
        table: every load failed with a hint to ALTER the state table."""
        if not (self.state.kind == self.warehouse.kind == "postgres"
                and self.state.schema_ == self.warehouse.schema_):
            return
        from steadyflow.state.store import SCHEMA  # only here: config loads no state code

        owned = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))
        for source, table, ref in self.tables():
            if ref.target in owned:
                raise ValueError(
                    f"sources.{source.name}.tables.{table.name}: target {ref.target!r} is a "
                    f"state table of schema {self.state.schema_!r}, which the warehouse "
                    "shares; set 'target' to another name, or give the state or the "
                    "warehouse a schema of its own")

    def _check_lookback(self, source: SourceConfig, table: TableConfig) -> None:
        """A lookback on a cursor that cannot step back would be silently ignored, and so
        would `lookback_mode: adaptive` where the source cannot tell its open transactions
        or the cursor is not a time they could be compared with."""
        contract = self.contract_of(table)
        kind = contract.column(contract.cursor).type
        if table.lookback_mode == "adaptive" and (
                source.kind not in ADAPTIVE_SOURCES or kind not in ADAPTIVE_CURSOR_TYPES):
            raise ValueError(
                f"sources.{source.name}.tables.{table.name}.lookback_mode: adaptive needs a "
                f"PostgreSQL or MySQL/MariaDB source and a timestamp or integer cursor (this "
                f"is a {source.kind} source, cursor {contract.cursor!r} typed {kind}): it "
                "compares cursors with the start of the source's open transactions; use "
                "lookback_mode: fixed (or auto) with a lookback window")
        if table.lookback <= 0:
            return
        if kind.startswith("decimal") or kind in STEP_BACK_TYPES:
            return
        raise ValueError(
            f"sources.{source.name}.tables.{table.name}.lookback: the cursor "
            f"{contract.cursor!r} is typed {kind}, which has no earlier value to step back "
            "to, so the lookback would be ignored; remove lookback, or use a timestamp, "
            "date, integer or decimal cursor")

    def _check_targets(self) -> None:
        """One warehouse table has one shape: every table feeding it needs the same one; and
        when several feed it, their rows must never share a key (`_check_owners`)."""
        shapes: dict[str, tuple[str, tuple[Any, ...]]] = {}
        feeders: dict[str, list[tuple[str, TableConfig]]] = {}
        spelled: dict[str, tuple[str, str]] = {}
        for source, table, ref in self.tables():
            self._check_target_name(f"sources.{source.name}.tables.{table.name}", ref.target,
                                    spelled)
            c = self.contract_of(table)
            shape = (tuple((col.name, col.type, col.nullable) for col in c.columns),
                     c.primary_key, c.cursor)
            label = f"sources.{source.name}.tables.{table.name}"
            self._check_filter(label, table)
            feeders.setdefault(ref.target, []).append((label, table))
            first = shapes.setdefault(ref.target, (label, shape))
            if first[1] != shape:
                raise ValueError(
                    f"{label} and {first[0]} both load target {ref.target!r} with different "
                    "contracts (columns, types, nullability, primary key or cursor): a "
                    "warehouse table has one shape; give them one contract, or set "
                    "'target' so each loads its own table")
        for target, tables in feeders.items():
            if len(tables) > 1:
                self._check_owners(target, tables)

    @staticmethod
    def _check_target_name(label: str, target: str,
                           spelled: dict[str, tuple[str, str]]) -> None:
        """A target is a warehouse table steadyflow does not own, and one spelling of it.

        DuckDB's identifiers are case-insensitive: targets 'orders' and 'Orders' were one
        table there, merged on the key alone, so one source's rows replaced the other's
        and every run was ok. And a target named like steadyflow's own tables
        (`_steadyflow_ledger`, `_steadyflow_tomb_<target>`) shared them: a source table
        `_steadyflow_tomb_orders` loaded rows that held back every `orders` row of the same
        key as tombstones."""
        if reserved(target):
            raise ValueError(
                f"{label}: target {target!r}: names starting with {RESERVED_PREFIX} are "
                "steadyflow's own warehouse tables (its ledger, the tombstones of each "
                "target); set 'target' to another name")
        first = spelled.setdefault(target.lower(), (label, target))
        if first[1] != target:
            raise ValueError(
                f"{label} loads target {target!r} and {first[0]} loads {first[1]!r}: they "
                "differ only in case, and DuckDB takes them as one table (merged on the "
                "primary key alone, so one's rows would replace the other's); spell them "
                "alike (with a warehouse_filter on each) to share one table, or give each "
                "a name of its own")

    def _check_filter(self, label: str, table: TableConfig) -> None:
        """Each warehouse_filter value must be one its column can hold: load compares the
        column's values with it (a row outside the filter is quarantined)."""
        contract = self.contract_of(table)
        for name, value in (table.warehouse_filter or {}).items():
            if name not in contract.names:
                raise ValueError(
                    f"{label}.warehouse_filter names {name!r}, which is not a column of its "
                    f"contract (columns: {', '.join(contract.names)})")
            if _owned(value, contract.column(name)) is None:
                raise ValueError(
                    f"{label}.warehouse_filter: {name}: {value!r} is not a valid "
                    f"{contract.column(name).type}; write a value of the column's type")

    def _check_owners(self, target: str, tables: list[tuple[str, TableConfig]]) -> None:
        """Tables feeding one target are merged on the primary key alone: two source rows
        with one key (shards whose ids both start at 1) would silently replace each other.
        So each table owns the keys its warehouse_filter names, on primary-key columns, and
        no two filters may match one row (load quarantines a row outside its table's)."""
        labels = ", ".join(label for label, _ in tables)
        contract = self.contract_of(tables[0][1])
        example = ("add warehouse_filter: {store_id: 42} (a primary-key column holding a "
                   "value of its own in each table) to each table, or set 'target' so each "
                   "loads its own table")
        owned: list[tuple[str, dict[str, Any]]] = []
        for label, table in tables:
            flt = table.warehouse_filter or {}
            off_key = [name for name in flt if name not in contract.primary_key]
            if not flt or off_key:
                problem = ("has no warehouse_filter" if not flt else
                           f"has warehouse_filter on {', '.join(off_key)}, not primary-key "
                           f"columns (key: {', '.join(contract.primary_key)})")
                raise ValueError(
                    f"{label} {problem}, but target {target!r} is fed by {len(tables)} "
                    f"tables ({labels}) and merged on its primary key alone, so a row of one "
                    f"would silently replace another's row of the same key; {example}")
            owned.append((label, {name: _owned(value, contract.column(name))
                                  for name, value in flt.items()}))
        for (label, mine), (other, theirs) in itertools.combinations(owned, 2):
            if not any(mine[n] != theirs[n] for n in mine.keys() & theirs.keys()):
                raise ValueError(
                    f"{label} and {other} both load target {target!r} and their "
                    "warehouse_filters can match the same row (no column they both name "
                    "holds different values), so one's rows could replace the other's; "
                    "give each table a value of its own, e.g. {store_id: 1} and "
                    "{store_id: 2}")

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def contract_of(self, table: TableConfig) -> Contract:
        c = table.contract
        return (self.contracts[c] if isinstance(c, str) else c).to_contract()

    def tables(self) -> list[tuple[SourceConfig, TableConfig, TableRef]]:
        return [
            (s, t, TableRef(source=s.name, table=t.name, target=t.target or t.name))
            for s in self.sources
            for t in s.tables
        ]

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise ConfigError(f"no source named {name!r}")

    def table(self, source: str, table: str) -> tuple[SourceConfig, TableConfig, TableRef]:
        for s, t, ref in self.tables():
            if s.name == source and t.name == table:
                return s, t, ref
        raise ConfigError(f"no table {source}.{table} in the config")


def _owned(value: int | str, column: Column) -> Any:
    """arrow_types.owned_value: the warehouse_filter value as load compares rows with it."""
    from steadyflow.arrow_types import owned_value

    return owned_value(value, column.arrow_type)


def expand_env(text: str, env: dict[str, str] | None = None) -> str:
    """Fill `${VAR}` from the environment; a missing variable is a config error."""
    env = dict(os.environ) if env is None else env

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(
                f"environment variable {name} is referenced as ${{{name}}} but not set",
                hint=f"export {name}=... before running",
            )
        secrets.register(env[name])  # whatever it is, it must never be shown again
        return env[name]

    return _ENV_REF.sub(sub, text)


def _expand_tree(node: Any, env: dict[str, str] | None) -> Any:
    if isinstance(node, str):
        return expand_env(node, env)
    if isinstance(node, list):
        return [_expand_tree(n, env) for n in node]
    if isinstance(node, dict):
        return {k: _expand_tree(v, env) for k, v in node.items()}
    return node


def load_config(path: str | Path, env: dict[str, str] | None = None) -> PipelineConfig:
    """Read, expand and validate a pipeline file. Raises ConfigError naming key and problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.setdefault("base_dir", str(path.parent.resolve()))
    for source in raw.get("sources") or []:
        # SQLite paths are relative to the config file, not to wherever the command runs
        if isinstance(source, dict) and source.get("kind") == "sqlite" and isinstance(
                source.get("path"), str) and not Path(source["path"]).is_absolute():
            source["path"] = str(Path(raw["base_dir"]) / source["path"])
    _warn_literal_passwords(raw, str(path))
    config = parse_config(_expand_tree(raw, env), origin=str(path))
    # a password written into a DSN literally (not as ${VAR}) is just as secret
    for dsn in [*(s.dsn for s in config.sources), config.warehouse.dsn, config.state.dsn]:
        secrets.register(secrets.dsn_password(dsn))
    secrets.register(config.landing.secret_key)  # a literal one too: never shown again
    return config


def _warn_literal_passwords(raw: dict[str, Any], origin: str) -> None:
    """Warn, naming the key and the fix, about every DSN whose password is written in the
    file rather than as a `${VAR}` reference (checked before references are filled in).

    Warned, not refused: a literal password has always been accepted, and refusing it now
    would stop every existing pipeline that has one at its next start, an outage for a
    hygiene problem. It is still registered as a secret and scrubbed from every output; the
    risk is the file itself (in version control, backups, every host it is copied to), which
    the operator fixes by moving the password to the environment.
    """
    places: list[tuple[str, Any]] = [
        (f"sources.{s.get('name', i)}.dsn", s.get("dsn"))
        for i, s in enumerate(raw.get("sources") or []) if isinstance(s, dict)]
    for section in ("warehouse", "state"):
        if isinstance(raw.get(section), dict):
            places.append((f"{section}.dsn", raw[section].get("dsn")))
    for key, dsn in places:
        if not isinstance(dsn, str) or not _literal_password(dsn):
            continue
        name = key.removeprefix("sources.").removesuffix(".dsn")
        var = re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") + "_PASSWORD"
        log.warning(
            "%s: %s holds a literal password; anyone who can read the file has it. Write "
            "${%s} in its place and export %s=... in the environment that runs steadyflow",
            origin, key, var, var, extra={"stage": "config"})


def _tls_params(dsn: str | None) -> list[str]:
    """The TLS parameters of a URL DSN's query (ssl_ca, ssl-mode, tls, ...), by name only
    (a value may be a key's path or password). A MariaDB DSN's query is read by neither
    driver (MysqlDialect.connect, mysql_arrow.url_for), so such a parameter was ignored:
    a DSN asking to verify the server connected without TLS to a server offering none."""
    if not dsn or "://" not in dsn:
        return []
    try:
        query = urlsplit(dsn).query
    except ValueError:
        return []
    return sorted({k for k in parse_qs(query, keep_blank_values=True)
                   if re.match(r"(ssl|tls)", k, re.IGNORECASE)})


def _literal_password(dsn: str) -> bool:
    """The DSN has a password (URL or libpq keyword form) that is not a ${VAR} reference."""
    if "://" in dsn:  # in the userinfo, or as a ?password= parameter
        query = parse_qs(urlsplit(dsn).query).get("password", [])
        password = secrets.dsn_password(dsn) or (query[0] if query else None)
    else:
        keyword = _KEYWORD_PASSWORD.search(dsn)
        password = keyword.group(1) if keyword else None
    return bool(password) and not _ENV_REF.search(password or "")


def parse_config(raw: dict[str, Any], origin: str = "<config>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if err["type"] == "string_type" and isinstance(err["input"], dict):
                continue  # `contract: {...}` is the inline form of `str | ContractConfig`
            where = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
            # never echo input values: they may be secrets expanded from the environment
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key" + _did_you_mean(err)
            problems.append(f"{where or '(top level)'}: {msg}")
        raise ConfigError(f"{origin}: invalid config\n  " + "\n  ".join(problems)) from None


def _is_union_tag(step: Any) -> bool:
    """pydantic names the union member it tried in the path: 'str', 'function-after[...]'."""
    return isinstance(step, str) and (step == "str" or "[" in step)


def _did_you_mean(err: Any) -> str:
    """For an unknown key, the closest key the model at that place knows."""
    if err["type"] != "extra_forbidden" or not err["loc"]:
        return ""
    model: Any = PipelineConfig
    for step in err["loc"][:-1]:
        model = _descend(model, step)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    known = [f.alias or name for name, f in model.model_fields.items() if name != "base_dir"]
    close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f" ({hint}known here: {', '.join(sorted(known))})"


def _descend(node: Any, step: Any) -> Any:
    """The type found one step down a validation error's path from `node`."""
    while get_origin(node) is Annotated:
        node = get_args(node)[0]
    if isinstance(node, type) and issubclass(node, BaseModel):
        for name, field in node.model_fields.items():
            if step in (name, field.alias):
                return field.annotation
        return None
    origin, args = get_origin(node), get_args(node)
    if origin is list and isinstance(step, int):
        return args[0]
    if origin is dict and isinstance(step, str):
        return args[1]
    if origin in (Union, types.UnionType) and isinstance(step, str):
        for arg in args:  # the member is named as-is or last in 'function-after[..., X]'
            name = getattr(arg, "__name__", "")
            if step == name or step.endswith(f", {name}]"):
                return arg
    return None
