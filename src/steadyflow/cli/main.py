"""The `steadyflow` command. Thin: parse arguments, call the library, print.

No `from __future__ import annotations` here: typer reads every command's annotations
on each invocation, and string annotations are compiled and evaluated again each time
(~9 ms of every command's start-up, half of typer's dispatch).
"""

import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

from steadyflow.cli import startup
from steadyflow.errors import ConfigError, StateUnavailable, SteadyflowError
from steadyflow.observe import logs

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Move store and API data into the warehouse, exactly once.")
quarantine_app = typer.Typer(no_args_is_help=True, help="Inspect and replay quarantined rows.")
app.add_typer(quarantine_app, name="quarantine")


class _Console:
    """A rich Console made on first use: `run --json` never prints through rich, and
    importing it costs ~40 ms of every run's start-up."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def rich(self) -> "Console":
        if self._console is None:
            from rich.console import Console

            stream = sys.stderr if self._stderr else sys.stdout
            # piped or redirected: no wrapping at rich's default 80 columns (a log file or
            # `| grep` gets whole lines, tables keep whole names)
            self._console = Console(stderr=self._stderr, width=None if stream.isatty()
                                    else PIPED_WIDTH)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rich(), name)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def Table(*columns: str, **options: Any) -> Any:  # noqa: N802 - stands in for rich's class
    from rich.table import Table as RichTable

    return RichTable(*columns, **options)


PIPED_WIDTH = 10_000


def _print_json(data: Any, **dumps: Any) -> None:
    """One JSON value on stdout, as it is: not through rich, whose markup took a key or
    value such as "[abc]" for a style tag and dropped it ("a[/b]" failed the command
    after the work was done), and whose import (~40 ms) an unchanged `reconcile --json`
    paid for this one line."""
    print(json.dumps(data, **dumps), flush=True)
console = _Console(stderr=True)
out = _Console()


class LogLevel(StrEnum):
    """The accepted --log-level values (anything else is a usage error, not a traceback)."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="pipeline YAML file")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]
_T = TypeVar("_T")


def _open(config: Path, view: bool = False, recorded: bool = True) -> Any:
    """The pipeline; `view`: for a command that only shows it (status, a read-only serve),
    which a buffer server that does not answer must not stop from showing the rest;
    `recorded`: its metrics are kept (False: a command that never shows them,
    observe/recording.py). The garbage collector `entry` paused for the imports runs
    again from here on."""
    try:
        startup.import_config()
        from steadyflow.run.pipeline import Pipeline

        return Pipeline.from_yaml(config, view=view, recorded=recorded)
    finally:
        startup.resume()


def _fail(exc: SteadyflowError) -> None:
    # escaped: an error's "[stage=…, source=…, table=…]" context is text, not rich markup
    console.print(f"[red]error:[/red] {escape(logs.scrub(str(exc)))}", highlight=False,
                  soft_wrap=True)
    raise typer.Exit(2)


def _finish(summary: Any, as_json: bool, started: float) -> None:
    """Print a run's summary; exit 2 when a table failed, 1 when something else did."""
    _print_summary(summary, as_json, time.monotonic() - started)
    if not summary.ok:
        raise typer.Exit(2 if summary.failed_tables else 1)


def _print_result(config: Path, as_json: bool, action: Callable[[Any], Any]) -> None:
    """Open the pipeline, run `action` on it and print what it returns (JSON with --json);
    an error is one clear `error:` line."""
    try:
        with _open(config) as pipeline:
            result = action(pipeline)
            if as_json:
                _print_json(result)
            else:
                out.print(result, soft_wrap=True)
    except SteadyflowError as exc:
        _fail(exc)


def _option(parse: Callable[[str], _T], text: str | None) -> _T | None:
    """An option's value parsed, None when not given; a bad value is a ConfigError."""
    if not text:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _version(value: bool) -> None:
    if value:
        import steadyflow

        print(f"steadyflow {steadyflow.__version__}")
        raise typer.Exit(0)


@contextlib.contextmanager
def _hold_loop(pipeline: Any, command: str) -> Iterator[None]:
    """The state directory's loop lock (run/lock.py): one loop per pipeline. The runs a
    killed predecessor left open are closed as 'killed' (they stopped when it died; left
    open, the history said 'running' for ever)."""
    from steadyflow.run.lock import hold_loop

    with hold_loop(pipeline.config.resolve(pipeline.config.state_dir), command) as dead:
        if dead is not None:
            pipeline.state.close_runs("killed", since=float(dead.get("since") or 0),
                                      command="run")
        yield


def _install_signals(pipeline: Any) -> None:
    def stop(signum: int, frame: object) -> None:
        pipeline.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


@app.callback()
def main(log_level: Annotated[LogLevel, typer.Option(
             case_sensitive=False, help="what to log (to stderr)")] = LogLevel.warning,
         version: Annotated[bool, typer.Option(
             "--version", callback=_version, is_eager=True,
             help="print the version and exit")] = False) -> None:
    """Logs: on a terminal, readable lines printed with (never over) the progress display;
    piped or redirected, one JSON object per line."""
    logs.scrub_streams()  # whatever a command prints, no registered secret leaves
    logs.configure(log_level.value, console=console.rich() if sys.stderr.isatty() else None)


def _print_summary(summary: Any, as_json: bool, seconds: float) -> None:
    """The run's counts, each meaning one thing: rows changed in the warehouse, rows re-read
    without effect (lookback), rows quarantined; loaded_rows (changed + re-read) is kept in
    the JSON for scripts written against it."""
    data = {"extracted_batches": summary.extracted_batches,
            "extracted_rows": summary.extracted_rows, "loaded_batches": summary.loaded_batches,
            "changed_rows": summary.changed_rows, "reread_rows": summary.reread_rows,
            "quarantined_rows": summary.quarantined_rows,
            "duplicates_skipped": summary.duplicates_skipped, "errors": summary.errors,
            "seconds": round(seconds, 3)}
    if getattr(summary, "cycles", 1) > 1:  # a follow run: the totals of all its cycles
        data = {"cycles": summary.cycles, **data}
    if as_json:
        data["loaded_rows"] = summary.loaded_rows
        print(json.dumps(data), flush=True)
        return
    for key, value in data.items():
        if key != "errors":
            out.print(f"{key:>20}: {value}")
    logged = [error for error in summary.errors if logs.printed_errors.printed(error)]
    for error in summary.errors:
        if error not in logged:  # each error is printed once: in the log, or here
            console.print(f"[red]error:[/red] {escape(logs.scrub(error))}", highlight=False,
                          soft_wrap=True)
    if logged:
        console.print(f"[red]{len(logged)} error(s)[/red], logged above; the tables' last "
                      "errors: steadyflow status", highlight=False, soft_wrap=True)


def _rows_by_stage(pipeline: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for metric in pipeline.metrics.registry.collect():
        if metric.name == "steadyflow_rows":
            for sample in metric.samples:
                if sample.name == "steadyflow_rows_total":
                    stage = sample.labels.get("stage", "")
                    totals[stage] = totals.get(stage, 0) + int(sample.value)
    return totals


def _with_progress(pipeline: Any, follow: bool) -> Any:
    """Run the pipeline in a worker thread and show live counts (terminals only)."""
    import threading

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["summary"] = pipeline.run(follow=follow)
        except BaseException as exc:  # re-raised in the main thread
            result["error"] = exc

    worker = threading.Thread(target=work, name="pipeline", daemon=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console.rich(), transient=True) as progress:
        task = progress.add_task("starting", total=None)
        worker.start()
        while worker.is_alive():
            rows = _rows_by_stage(pipeline)
            progress.update(task, description=(
                f"extracted {rows.get('extract', 0):,} · loaded {rows.get('load', 0):,} · "
                f"quarantined {rows.get('quarantine', 0):,} rows · queue "
                f"{pipeline.buffer.depth()}/{pipeline.buffer.capacity}"))
            worker.join(0.2)
    if "error" in result:
        raise result["error"]
    return result["summary"]


@app.command()
def run(config: ConfigOpt,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="keep running")] = False,
        as_json: JsonOpt = False,
        serve_at: Annotated[str | None, typer.Option(
            "--serve", help="also serve /metrics and the status page on [HOST:]PORT")] = None,
        ) -> None:
    """Extract, land, validate and load every table until caught up (or forever)."""
    if not follow and not serve_at:  # a process that stays up pays its imports once
        startup.without_numpy()
    # the progress display draws from the metrics; a run that neither shows them, nor
    # serves them, nor stays up records none (observe/recording.py)
    progress = not as_json and console.is_terminal
    try:
        with _open(config, recorded=bool(follow or serve_at or progress)) as pipeline, \
                _hold_loop(pipeline, "run --follow" if follow else "run"):
            _install_signals(pipeline)
            if serve_at:  # imported only here: the web server's modules cost every run
                from steadyflow.observe.web import StatusServer, parse_address

                server = StatusServer(pipeline, *parse_address(serve_at), live=True).start()
                console.print(f"status page {server.url}  metrics {server.url}metrics")
            started = time.monotonic()
            try:
                if progress:  # --json makes no rich Console
                    summary = _with_progress(pipeline, follow)
                else:
                    summary = pipeline.run(follow=follow)
            finally:
                if serve_at:
                    server.stop()
            _finish(summary, as_json, started)
    except SteadyflowError as exc:
        _fail(exc)


@app.command()
def worker(config: ConfigOpt,
           serve_at: Annotated[str | None, typer.Option(
               "--serve", help="also serve this worker's /metrics and the status page on "
               "[HOST:]PORT")] = None,
           heartbeat: Annotated[float, typer.Option(
               help="seconds between two heartbeats in the state store")] = 5.0,
           token_env: Annotated[str | None, typer.Option(
               help="--serve: environment variable holding a bearer token every request "
               "must send")] = None,
           insecure: Annotated[bool, typer.Option(
               "--insecure", help="--serve: allow a non-loopback address without a token "
               "(a pod's probes and scrapes)")] = False,
           ) -> None:
    """Work on the pipeline beside any number of other workers, on any hosts, until stopped.

    Each table is extracted by one worker at a time (its lease), each batch is loaded once
    (the buffer's delivery and the warehouse ledger). SIGTERM finishes the work in hand and
    hands the rest back; the others carry on without it.
    """
    import os

    from steadyflow.errors import ConfigError
    from steadyflow.observe.web import StatusServer, parse_address
    from steadyflow.run.worker import Worker

    try:
        with _open(config) as pipeline:
            unit = Worker(pipeline, heartbeat_every=heartbeat)
            _install_signals(unit)
            token = os.environ.get(token_env) if token_env else None
            if token_env and not token:
                raise ConfigError(f"--token-env {token_env}: variable is not set or empty")
            server = (StatusServer(pipeline, *parse_address(serve_at), live=True, token=token,
                                   insecure=insecure).start() if serve_at else None)
            if server is not None:
                console.print(f"status page {server.url}  metrics {server.url}metrics")
            started = time.monotonic()
            try:
                summary = unit.run()
            finally:
                if server is not None:
                    server.stop()
            _print_summary(summary, True, time.monotonic() - started)
            if unit.error is not None:  # it died: logged, and recorded as 'failed'
                raise typer.Exit(2 if summary.failed_tables else 1)
    except SteadyflowError as exc:
        _fail(exc)


@app.command()
def autoscale(config: ConfigOpt,
              minimum: Annotated[int, typer.Option("--min", help="workers kept at least")] = 1,
              maximum: Annotated[int, typer.Option("--max", help="workers kept at most")] = 4,
              backlog_high: Annotated[int, typer.Option(
                  help="batches waiting in the buffer above which workers are added")] = 8,
              lag_high: Annotated[str, typer.Option(
                  help="extraction lag above which workers are added")] = "30s",
              backlog_low: Annotated[int, typer.Option(
                  help="batches waiting at or below which workers are removed")] = 0,
              lag_low: Annotated[str, typer.Option(
                  help="extraction lag at or below which workers are removed")] = "5s",
              up_after: Annotated[str, typer.Option(
                  help="how long the lag stays above before workers are added")] = "30s",
              down_after: Annotated[str, typer.Option(
                  help="how long the lag stays below before a worker is removed")] = "2m",
              cooldown: Annotated[str, typer.Option(help="between two changes")] = "1m",
              sample_every: Annotated[str, typer.Option(help="between two lag samples")] = "2s",
              drain_grace: Annotated[str, typer.Option(
                  help="a removed worker's time to finish its unit before SIGKILL")] = "2m",
              heartbeat: Annotated[float, typer.Option(
                  help="the workers' --heartbeat")] = 5.0,
              serve_at: Annotated[str | None, typer.Option(
                  "--serve", help="serve the autoscaler's /metrics on [HOST:]PORT")] = None,
              ) -> None:
    """Keep between --min and --max local `steadyflow worker` processes, from the lag.

    Adds workers when the buffer backlog or the extraction lag stays high, removes one
    (SIGTERM: it finishes its unit and hands the rest back) when both stay low, restarts a
    worker that dies; on SIGTERM, stops them all. Every decision is logged with its reason.
    """
    import logging

    from steadyflow.errors import ConfigError
    from steadyflow.model import parse_duration
    from steadyflow.observe.web import parse_address
    from steadyflow.run import autoscale as scaling
    from steadyflow.run.worker import check_shareable

    try:
        policy = scaling.Policy(
            minimum, maximum, backlog_high, parse_duration(lag_high), backlog_low,
            parse_duration(lag_low), parse_duration(up_after), parse_duration(down_after),
            parse_duration(cooldown))
        every, grace = parse_duration(sample_every), parse_duration(drain_grace)
    except ValueError as exc:
        _fail(ConfigError(str(exc)))
        return
    level = logging.getLevelName(logging.getLogger("steadyflow").level).lower()
    logs.get("autoscale").setLevel("INFO")  # its decisions are what it is run for
    try:
        with _open(config) as pipeline:
            check_shareable(pipeline.config)
            workers = scaling.WorkerProcesses(
                scaling.worker_command(config, level, heartbeat), grace)
            probe = scaling.LagProbe(pipeline)
            scaler = scaling.Autoscaler(probe.read, workers, policy, sample_every=every,
                                        registered=probe.registered_pids)
            _install_signals(scaler)
            stop_serving = (scaling.serve_metrics(scaler.metrics, *parse_address(serve_at))
                            if serve_at else None)
            try:
                code = scaler.run()
            finally:
                if stop_serving is not None:
                    stop_serving()
            if code:
                raise typer.Exit(code)  # a worker had to be SIGKILLed or failed to stop
    except SteadyflowError as exc:
        _fail(exc)


@app.command()
def extract(config: ConfigOpt,
            table: Annotated[list[str] | None, typer.Option(help="source.table")] = None,
            dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
            as_json: JsonOpt = False) -> None:
    """Run only extraction: pages → landing → buffer → checkpoint."""
    try:
        with _open(config) as pipeline:
            _install_signals(pipeline)
            if dry_run:  # the plan is the point of a dry run: show each batch it would land
                logs.get("extract").setLevel("INFO")
            started = time.monotonic()
            summary = pipeline.extract(table, dry_run=True, alone=True) if dry_run else \
                pipeline.staged("extract", lambda: pipeline.extract(table, alone=True))
            _finish(summary, as_json, started)
    except SteadyflowError as exc:
        _fail(exc)


@app.command()
def transform(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Validate landed, unloaded batches and show what would load and what is quarantined.

    Changes nothing: validation is a pure function of the batch and the contract, and
    `load` applies it again when it merges.
    """
    try:
        with _open(config) as pipeline:
            report = []
            for batch in pipeline.state.pending_batches():
                verdict = pipeline.transform(batch)
                report.append({"batch_id": batch.batch_id, "source": batch.source,
                               "table": batch.table, "rows": batch.rows,
                               "good": verdict.good.num_rows, "bad": verdict.bad.num_rows,
                               "reasons": verdict.reasons})
            if as_json:
                _print_json(report)
                return
            t = Table("batch", "table", "rows", "good", "quarantine", "reasons")
            for r in report:
                t.add_row(r["batch_id"], f"{r['source']}.{r['table']}", str(r["rows"]),
                          str(r["good"]), str(r["bad"]), json.dumps(r["reasons"]))
            out.print(t)
    except SteadyflowError as exc:
        _fail(exc)


@app.command()
def load(config: ConfigOpt, as_json: JsonOpt = False,
         dry_run: Annotated[bool, typer.Option("--dry-run")] = False) -> None:
    """Run only loading: buffer → validate → merge + ledger → ack, until the buffer is empty."""
    try:
        with _open(config) as pipeline:
            _install_signals(pipeline)
            if dry_run:
                pending = pipeline.state.pending_batches()
                data = [{"batch_id": b.batch_id, "table": f"{b.source}.{b.table}",
                         "rows": b.rows, "queued": pipeline.buffer.contains(b.batch_id),
                         "order": b.meta.get("order", "cursor"),
                         "low": json.loads(b.low.to_json()) if b.low else None,
                         "high": json.loads(b.high.to_json()) if b.high else None}
                        for b in pending]
                if not as_json:
                    for b in pending:
                        order = "key" if b.meta.get("order") == "key" else "cursor"
                        out.print(f"{b.batch_id}  {b.source}.{b.table}  {b.rows} rows  {order} "
                                  f"({_mark(b.low)} .. {_mark(b.high)}]", soft_wrap=True,
                                  highlight=False)
                if as_json:
                    _print_json(data)
                else:
                    out.print(f"{len(data)} batches, {sum(d['rows'] for d in data)} rows "
                              "would load", soft_wrap=True)
                return
            started = time.monotonic()

            def sweep_and_load() -> Any:  # the sweep opens the warehouse too
                pipeline.sweep()
                pipeline.ask_floor()
                return pipeline.load()

            _finish(pipeline.staged("load", sweep_and_load), as_json, started)
    except SteadyflowError as exc:
        _fail(exc)


def _mark(mark: Any) -> str:
    """A watermark as `cursor/key…` for humans; `start` for the beginning of a table."""
    if mark is None:
        return "start"
    cursor = mark.cursor.isoformat() if hasattr(mark.cursor, "isoformat") else mark.cursor
    return "/".join(str(v) for v in (cursor, *mark.key))


@app.command()
def status(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Per-table health: freshness, rows changed, last success, last error, breaker.

    Exit code: 0 healthy, 1 degraded (a table failing since its last success, a half-open
    breaker, rows its last reconcile found missing or mismatched), 2 failing (a table in
    error, a source down, an open breaker, a batch failed for good, a buffer that cannot be
    read, a table not read to its end for 15 min or whose oldest landed batch has waited
    behind_after (15 min) to load while a loop or a worker runs), or the status (the
    state) could not be read.
    """
    import sqlite3

    from steadyflow.observe.status import snapshot

    try:
        with _open(config, view=True) as pipeline:
            report = snapshot(pipeline)
    except (sqlite3.Error, StateUnavailable) as exc:  # the state cannot even be opened
        report = _unopened(config, exc)  # (its file corrupt, unreadable)
        if not as_json:
            _fail(StateUnavailable(report["state_error"], stage="state"))
            return
    except SteadyflowError as exc:
        _fail(exc)
        return
    if as_json:  # plain print: no rich markup or highlighting can reach the JSON
        print(json.dumps(report, default=str), flush=True)
        raise typer.Exit(report["exit_code"])
    _print_status(report)
    raise typer.Exit(report["exit_code"])


def _unopened(config: Path, exc: BaseException) -> dict[str, Any]:
    """The failing report of a pipeline whose state could not be opened, naming the file
    (`status --json` printed a plain error line, nothing a script could parse)."""
    from steadyflow.config import load_config
    from steadyflow.observe.status import unopened

    return unopened(load_config(config), exc)  # it loaded a moment ago: the state failed


def _count(n: int | None) -> str:
    """A count for the status table; "–" where it is not known (the state unreadable)."""
    return "–" if n is None else f"{n:,}"


def _print_status(report: dict[str, Any]) -> None:
    """The status table: names whole (never cut), errors whole (wrapped in their column)."""
    from rich.text import Text

    tables = report["tables"]
    widest = max((len(row["table"]) for row in tables), default=5)
    t = Table(title=f"steadyflow — {report['pipeline']}: {report['health']}",
              show_lines=any(row["last_error"] for row in tables))
    t.add_column("table", no_wrap=True, min_width=widest)
    t.add_column("state", no_wrap=True)
    t.add_column("lag", justify="right", no_wrap=True)
    t.add_column("freshness", justify="right", no_wrap=True)
    t.add_column("rows changed", justify="right", no_wrap=True)
    t.add_column("re-read", justify="right", no_wrap=True)
    t.add_column("quarantined", justify="right", no_wrap=True)
    t.add_column("last success", no_wrap=True)
    t.add_column("last poll", no_wrap=True)
    t.add_column("breaker", no_wrap=True)
    t.add_column("last error", overflow="fold", min_width=20)
    for row in tables:
        t.add_row(Text(row["table"]), row["state"], row["lag_human"], row["freshness_human"],
                  _count(row["rows_changed"]), _count(row["rows_reread"]),
                  _count(row["rows_quarantined"]), row["last_success_human"],
                  row.get("last_poll_human", "never"), row["breaker"] or "closed",
                  Text(row["last_error"] or ""))
    out.print(t)
    if (report.get("loop") or {}).get("status") == "killed":
        from steadyflow.observe.status import killed_loop

        out.print(killed_loop(report["loop"]), highlight=False, soft_wrap=True)
    if (report.get("loop") or {}).get("status") == "suspended":
        from steadyflow.observe.status import suspended_loop

        out.print(suspended_loop(report["loop"]), highlight=False, soft_wrap=True,
                  markup=False)
    from steadyflow.observe.status import failed_run, unreconciled

    for line in [*filter(None, [failed_run(report)]), *unreconciled(report)]:
        out.print(line, highlight=False, soft_wrap=True, markup=False)
    for problem in ("state_error", "disk_error", "clock_error"):
        if report.get(problem):
            out.print(f"error: {report[problem]}", highlight=False, soft_wrap=True,
                      markup=False)
    if report.get("buffer_error"):
        out.print(f"error: {report['buffer_error']}", highlight=False, soft_wrap=True,
                  markup=False)
        out.print(f"queue depth unknown / {report['queue_capacity']}, "
                  f"pending batches {_count(report['pending_batches'])}", highlight=False)
    else:
        out.print(f"queue depth {report['queue_depth']} / {report['queue_capacity']}, "
                  f"oldest {report['queue_oldest_seconds'] or 0:.1f}s, "
                  f"pending batches {_count(report['pending_batches'])}", highlight=False)
    if report.get("workers"):
        w = Table(title="workers")
        for name in ("worker", "host", "pid", "status", "heartbeat", "holds"):
            w.add_column(name, no_wrap=name != "holds", overflow="fold")
        for row in report["workers"]:
            w.add_row(row["worker_id"], row["host"], str(row["pid"]), row["status"],
                      f"{row['heartbeat_age']:.1f}s ago", ", ".join(row["units"]) or "-")
        out.print(w)


@app.command()
def serve(config: ConfigOpt,
          host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port; 0 picks a free one")] = 9108,
          run_loop: Annotated[bool, typer.Option(
              "--run", help="also run the pipeline loop here (default: a read-only view of "
              "a pipeline that runs elsewhere)")] = False,
          token_env: Annotated[str | None, typer.Option(
              help="environment variable holding a bearer token every request must send")
          ] = None,
          insecure: Annotated[bool, typer.Option(
              "--insecure", help="allow a non-loopback address without a token")] = False,
          ) -> None:
    """Serve the status page (/), /api/status, /metrics and /healthz until stopped.

    A read-only view by default: it never runs a second loop beside `run --follow`. With
    --run it also runs the loop, and is refused while another process runs this pipeline.
    """
    import os

    from steadyflow.observe.web import serve as serve_forever

    token = os.environ.get(token_env) if token_env else None
    if token_env and not token:
        console.print(f"[red]error:[/red] --token-env {token_env}: variable is not set or empty",
                      highlight=False)
        raise typer.Exit(2)
    try:
        with _open(config, view=not run_loop) as pipeline, (
                _hold_loop(pipeline, "serve --run") if run_loop
                else contextlib.nullcontext()):
            mode = "running the pipeline" if run_loop else "read-only view"
            serve_forever(pipeline, host, port, token=token, insecure=insecure,
                          follow=run_loop,
                          announce=lambda url: print(f"serving {url} ({mode}; metrics: "
                                                     f"{url}metrics, JSON: {url}api/status)",
                                                     flush=True))
    except SteadyflowError as exc:
        _fail(exc)


@app.command()
def reset(config: ConfigOpt,
          table: Annotated[str, typer.Option(help="SOURCE.TABLE to extract again from the "
                                                   "start")],
          dry_run: Annotated[bool, typer.Option(
              "--dry-run", help="show what would be reset, change nothing")] = False,
          as_json: JsonOpt = False) -> None:
    """Forget a table's checkpoint and initial-load position: the next run reads it whole.

    The warehouse keeps its rows (the merge makes the re-read idempotent); landed batches
    still pending load as before. Refused while a loop runs this pipeline: it would write
    its checkpoint back.
    """
    try:
        with _open(config) as pipeline:
            labels = {ref.label: ref for _, _, ref in pipeline.config.tables()}
            ref = labels.get(table)
            if ref is None:
                console.print(f"[red]error:[/red] no table {escape(table)} in {config}; "
                              f"tables: {escape(', '.join(sorted(labels)))}",
                              highlight=False, soft_wrap=True)
                raise typer.Exit(2)
            checkpoint = pipeline.state.checkpoint(ref.source, ref.table)
            backfill = pipeline.state.backfill(ref.source, ref.table)
            plan = {"table": ref.label, "dry_run": dry_run,
                    "checkpoint": _mark(checkpoint) if checkpoint else None,
                    "initial_load": ({"ends_at": _mark(backfill[0]),
                                      "after": _mark(backfill[1]) if backfill[1] else None}
                                     if backfill else None)}
            if not dry_run:
                with _hold_loop(pipeline, "reset"):
                    pipeline.state.reset_checkpoint(ref.source, ref.table)
    except SteadyflowError as exc:
        _fail(exc)
        return
    if as_json:
        print(json.dumps(plan), flush=True)
        return
    verb = "would reset" if dry_run else "reset"
    initial = plan["initial_load"]
    out.print(f"{verb} {ref.label}: checkpoint {plan['checkpoint'] or 'none'}; initial load "
              + (f"at {initial['after'] or 'start'} of ..{initial['ends_at']}" if initial
                 else "none") + ("" if dry_run else "; the next run reads the table whole"),
              soft_wrap=True, highlight=False, markup=False)


@app.command()
def replay(config: ConfigOpt,
           batch: Annotated[list[str] | None, typer.Option(help="batch id (repeatable)")] = None,
           table: Annotated[str | None, typer.Option(help="source.table: all its batches")] = None,
           as_json: JsonOpt = False) -> None:
    """Re-process landed batches through validate → merge (idempotent by the ledger)."""
    from steadyflow.run.replay import replay_batches

    _print_result(config, as_json, lambda pipeline: replay_batches(pipeline, batch or [], table))


@app.command()
def compact(config: ConfigOpt,
            target: Annotated[str | None, typer.Option(
                help="file size to aim for, e.g. 64MB (default: landing.compact_target)")] = None,
            include_today: Annotated[bool, typer.Option(
                "--include-today", help="also today's files (by default closed days only)")
            ] = False,
            as_json: JsonOpt = False) -> None:
    """Merge the small landed files of loaded batches, per table and day, into big ones."""
    from steadyflow.config import parse_size
    from steadyflow.run.compact import compact_pipeline

    _print_result(config, as_json, lambda pipeline: compact_pipeline(
        pipeline, _option(parse_size, target), include_today).as_dict())


@app.command()
def gc(config: ConfigOpt,
       retention: Annotated[str | None, typer.Option(
           help="delete files of loaded batches older than this, e.g. 7d (default: "
                "landing.retention)")] = None,
       as_json: JsonOpt = False) -> None:
    """Delete landed files of loaded batches older than the retention (rows kept, 'gone')."""
    from steadyflow.model import parse_duration
    from steadyflow.run.retention import gc_pipeline

    _print_result(config, as_json, lambda pipeline: gc_pipeline(
        pipeline, _option(parse_duration, retention)).as_dict())


@quarantine_app.command("list")
def quarantine_list(config: ConfigOpt, as_json: JsonOpt = False,
                    all_: Annotated[bool, typer.Option("--all")] = False) -> None:
    """Quarantined batches with their row counts and reasons."""
    with _open(config) as pipeline:
        items = pipeline.state.quarantined(None if all_ else "open")
    if as_json:
        _print_json(items, default=str)
        return
    t = Table("batch", "table", "rows", "status", "reasons")
    for q in items:
        t.add_row(q["batch_id"], f"{q['source']}.{q['table']}", str(q["rows"]), q["status"],
                  "; ".join(f"{k} ×{v}" for k, v in q["reasons"].items()))
    out.print(t)


@quarantine_app.command("show")
def quarantine_show(config: ConfigOpt, batch: Annotated[str, typer.Argument()],
                    limit: int = 20) -> None:
    """The parked rows of one batch, with the rule each broke."""
    with _open(config) as pipeline:
        items = [q for q in pipeline.state.quarantined(None) if q["batch_id"] == batch]
        if not items:
            console.print(f"[red]error:[/red] no quarantined batch {batch}")
            raise typer.Exit(2)
        rows = pipeline.quarantine.rows(items[0]["path"]).slice(0, limit).to_pylist()
    for row in rows:
        _print_json(row, default=str)


@quarantine_app.command("resolve")
def quarantine_resolve(config: ConfigOpt,
                       batch: Annotated[list[str], typer.Option(
                           help="an open quarantined batch id (repeat for more)")],
                       as_json: JsonOpt = False) -> None:
    """Close quarantined batches without loading their rows (fixed at the source and loaded
    since, or not wanted): `gc` deletes their parked rows after landing.retention."""
    def resolve(pipeline: Any) -> dict[str, int]:
        open_ids = {q["batch_id"] for q in pipeline.state.quarantined("open")}
        unknown = [b for b in batch if b not in open_ids]
        if unknown:
            raise ConfigError(f"no open quarantined batch {', '.join(unknown)}",
                              hint="`steadyflow quarantine list` shows the open ones")
        return {"resolved": len(pipeline.state.resolve_quarantine(batch))}

    _print_result(config, as_json, resolve)


@quarantine_app.command("replay")
def quarantine_replay(config: ConfigOpt,
                      batch: Annotated[list[str] | None, typer.Option()] = None,
                      records_path: Annotated[str | None, typer.Option(
                          help="HTTP pages: where the records are in the JSON, if changed")
                      ] = None,
                      as_json: JsonOpt = False) -> None:
    """Re-validate parked rows against the current contract and load those that pass."""
    from steadyflow.run.replay import replay_quarantine

    _print_result(config, as_json,
                  lambda pipeline: replay_quarantine(pipeline, batch or [], records_path))


@app.command()
def reconcile(config: ConfigOpt,
              table: Annotated[list[str] | None, typer.Option(
                  help="source.table (repeatable); default: every SQL source table")] = None,
              since: Annotated[str | None, typer.Option(
                  help="only rows with cursor >= this: ISO-8601, or a duration back (2h, 7d)")
              ] = None,
              repair: Annotated[bool, typer.Option(
                  "--repair", help="re-extract differing rows as repair batches, delete "
                  "extras where mirror_deletes, then compare again")] = False,
              by: Annotated[str | None, typer.Option(
                  help="buckets: key (primary-key ranges) or cursor (days); default key")] = None,
              incremental: Annotated[bool, typer.Option(
                  "--incremental", help="after a clean reconcile, compare only rows changed "
                  "since plus a rolling share of the rest (run.reconcile_reverify)")] = False,
              examples: Annotated[int, typer.Option(
                  help="differing keys listed per kind and table")] = 5,
              as_json: JsonOpt = False) -> None:
    """Compare sources with the warehouse by bucket checksums, bisect to the differing rows."""
    from steadyflow.reconcile.runner import Options, parse_since, text_report
    from steadyflow.reconcile.runner import reconcile as reconcile_tables

    try:
        with _open(config) as pipeline:
            _install_signals(pipeline)
            options = Options(since=parse_since(since) if since else None, repair=repair, by=by,
                              incremental=incremental, examples=examples)
            reports = reconcile_tables(pipeline, table, options)
    except SteadyflowError as exc:
        _fail(exc)
        return
    clean = all(r.clean for r in reports)
    if as_json:
        _print_json({"clean": clean, "tables": [r.to_dict() for r in reports]}, default=str)
    else:
        out.print(text_report(reports), soft_wrap=True, highlight=False, markup=False)
    # 2: a table could not be compared (its differences are unknown, not zero); 1: the
    # comparison ran and differences remain; 0: every table is equal
    if any(r.error is not None or r.final.error is not None for r in reports):
        raise typer.Exit(2)
    if not clean:
        raise typer.Exit(1)


@app.command()
def demo(directory: Annotated[Path, typer.Option("--dir")] = Path("steadyflow-demo"),
         as_json: JsonOpt = False,
         stores: Annotated[int, typer.Option(help="store databases")] = 4,
         rows: Annotated[int, typer.Option(help="sales rows per store")] = 50_000) -> None:
    """Generate store databases, run the pipeline through a SIGKILL, verify, summarise."""
    startup.resume()  # builds its pipelines itself, not through _open
    from steadyflow.demo.scenario import run_demo

    code = run_demo(directory, stores=stores, rows_per_store=rows, as_json=as_json)
    raise typer.Exit(code)


def entry() -> None:
    """The `steadyflow` console script: the command, then an exit without interpreter
    teardown.

    Tearing down pyarrow, DuckDB and the drivers after a run took ~0.25 s (bench/NOTES.md),
    a fifth of an incremental run. Nothing is left to do by then: the pipeline is closed
    (state, buffer and warehouse committed and closed), so only the output streams and
    logging are flushed. An unexpected exception still takes the normal path (traceback).
    The garbage collector is paused while the command imports what it runs (cli/startup.py).
    """
    import logging
    import os

    startup.pause()
    try:
        app(prog_name="steadyflow")
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
