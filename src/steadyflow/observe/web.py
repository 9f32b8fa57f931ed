"""`steadyflow serve`: /metrics, a server-rendered status page, /api/status and /healthz.

One stdlib ``ThreadingHTTPServer`` and no web framework: the page is a few tables and
inline SVG sparklines rendered from `status.collect()`, so it needs no front-end build and
no script (it reloads itself every 2 s with a meta refresh), and a strict
Content-Security-Policy costs nothing.

Read-only by construction: only GET and HEAD are routed, and nothing here writes pipeline
state except, in follow mode, the pipeline loop itself.

Two ways to watch a pipeline:
- live: the pipeline runs in this process (``follow=True`` runs its loop here, or the caller
  runs it, as `steadyflow run --serve` does).  /metrics is that process's registry.
- read-only view: a config path whose pipeline runs in another process.  The page and
  /api/status are complete (they read the shared state files); on /metrics only the
  state-derived gauges (freshness, last success, breaker) are meaningful, the counters
  live in the other process, so point Prometheus at that one.

Security defaults: binds 127.0.0.1; a non-loopback address is refused unless a bearer
token is configured (or ``insecure`` is set explicitly).  With a token every endpoint,
/healthz included, needs ``Authorization: Bearer <token>`` (compared in constant time).
While bound to loopback without a token, requests whose Host header is not a loopback
name are refused, so a web page in the operator's browser cannot read the status page
through DNS rebinding.  Every value on the page is HTML-escaped and every error text
passes through `logs.scrub` first.

Throughput and freshness history comes from an in-memory ring buffer of `collect()`
snapshots taken every few seconds; it starts empty when the server starts.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from steadyflow.errors import ConfigError
from steadyflow.observe import logs
from steadyflow.observe.metrics import BREAKER_STATES
from steadyflow.observe.status import collect, human_age

log = logs.get("web")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108
SAMPLE_EVERY = 2.0
HISTORY_SAMPLES = 150  # 5 minutes at one sample every 2 s
REFRESH_SECONDS = 2
STALE_AFTER = 900.0  # the SteadyflowTableStale threshold in deploy/prometheus/alerts.yml
# The text format generate_latest() writes; prometheus_client's CONTENT_TYPE_LATEST names a
# newer version that this body is not.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'")


# --- address checks -------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """True if every address `host` names is a loopback address."""
    name = host.strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def _host_header_is_loopback(value: str | None) -> bool:
    if not value:
        return False
    try:
        hostname = urlsplit(f"//{value}").hostname
    except ValueError:
        return False
    if hostname is None:
        return False
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


# --- history --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    rows: dict[str, int]  # table label -> cumulative rows loaded
    freshness: dict[str, float | None]


class History:
    """A bounded ring buffer of snapshots; the page's sparklines are computed from it."""

    def __init__(self, maxlen: int = HISTORY_SAMPLES) -> None:
        self._samples: deque[Sample] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, report: dict[str, Any]) -> None:
        sample = Sample(
            at=float(report["at"]),
            rows={t["table"]: int(t["rows_loaded"] or 0) for t in report["tables"]},
            freshness={t["table"]: t["freshness_seconds"] for t in report["tables"]},
        )
        with self._lock:
            self._samples.append(sample)

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)

    def series(self) -> dict[str, Any]:
        """Per-table and pipeline-wide throughput (rows/s) and freshness (s) series."""
        with self._lock:
            samples = list(self._samples)
        labels = list(dict.fromkeys(k for s in samples for k in s.rows))
        throughput: dict[str, list[float | None]] = {k: [] for k in labels}
        freshness: dict[str, list[float | None]] = {
            k: [s.freshness.get(k) for s in samples] for k in labels}
        total: list[float | None] = []
        for prev, cur in zip(samples, samples[1:], strict=False):
            dt = cur.at - prev.at
            step: list[float] = []
            for k in labels:
                if dt <= 0 or k not in cur.rows or k not in prev.rows:
                    throughput[k].append(None)
                    continue
                rate = max(0, cur.rows[k] - prev.rows[k]) / dt
                throughput[k].append(rate)
                step.append(rate)
            total.append(sum(step) if step else None)
        worst = [max((v for v in s.freshness.values() if v is not None), default=None)
                 for s in samples]
        span = samples[-1].at - samples[0].at if len(samples) > 1 else 0.0
        return {"throughput": throughput, "freshness": freshness,
                "total_throughput": total, "max_freshness": worst, "span_seconds": span}


# --- the service behind the HTTP handler ----------------------------------------------------

def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return logs.scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    return value


class StatusService:
    """Owns the snapshot history, the optional pipeline loop and the state→metrics sync."""

    def __init__(self, pipeline: Any, follow: bool = False, live: bool | None = None,
                 sample_every: float = SAMPLE_EVERY,
                 history: int = HISTORY_SAMPLES) -> None:
        self.pipeline = pipeline
        self.follow = follow
        #: the pipeline runs in this process, so its metrics and breakers are the truth
        self.live = follow if live is None else (live or follow)
        self.sample_every = sample_every
        self.history = History(history)
        self.loop_error: str | None = None
        self._stop = threading.Event()
        self._synced: dict[tuple[str, str], float] = {}
        self._threads: list[threading.Thread] = []
        self._runner: threading.Thread | None = None

    # -- state -> metrics ---------------------------------------------------------------
    def sync_metrics(self) -> None:
        """Bring state-derived gauges up to date with the durable state.

        Freshness and last success: a restarted process (or a read-only viewer next to a
        pipeline running elsewhere) must report how stale the warehouse really is, not
        "no data" or "fresh since I started".  Only moves forward, like the loader does.
        In read-only mode the breaker gauge mirrors what the running pipeline recorded.
        """
        metrics = self.pipeline.metrics
        for h in self.pipeline.state.health():
            key = (h.source, h.table)
            epoch = h.newest_cursor_epoch
            if epoch is not None and epoch > self._synced.get(key, -math.inf):
                self._synced[key] = epoch
                metrics.loaded_cursor(h.source, h.table, epoch)
                if h.last_success is not None:
                    _set_last_success(metrics, h.source, h.table, h.last_success)
            if not self.live and h.breaker in BREAKER_STATES:
                metrics.breaker(h.source, h.breaker)

    def _reset_recorded_breakers(self) -> None:
        # table_health.breaker is written on breaker transitions only, so an "open" left by a
        # previous process would stay on the page forever once this process's (closed)
        # breaker never transitions.  When this process is the pipeline, record
        # what its breakers really are.
        for source, _, ref in self.pipeline.config.tables():
            guard = self.pipeline.guards.get(source.name)
            if guard is not None:
                self.pipeline.state.record_source_state(source.name, ref.table,
                                                        breaker=guard.breaker.state)

    # -- snapshots ------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = _scrubbed(collect(self.pipeline))
        return report

    def sample(self) -> None:
        if not self.live:
            self.sync_metrics()
        self.history.add(self.report())

    def _sampler(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # a locked/busy state file must not kill the sampler
                log.warning("status snapshot failed: %s", exc, extra={"stage": "observe"})
            self._stop.wait(self.sample_every)

    def _run_loop(self) -> None:
        try:
            self.pipeline.run(follow=True)
        except Exception as exc:
            self.loop_error = logs.scrub(f"{type(exc).__name__}: {exc}")
            log.error("pipeline loop stopped: %s", exc, extra={"stage": "run"})

    @property
    def mode(self) -> str:
        if self.follow:
            return "running the pipeline"
        return "live" if self.live else "read-only view of state"

    @property
    def loop_alive(self) -> bool:
        return self._runner is None or self._runner.is_alive()

    def start(self) -> None:
        self.sync_metrics()
        if self.live:
            self._reset_recorded_breakers()
        if self.follow:
            self._runner = threading.Thread(target=self._run_loop, name="pipeline",
                                            daemon=True)
            self._threads.append(self._runner)
            self._runner.start()
        sampler = threading.Thread(target=self._sampler, name="status-sampler", daemon=True)
        self._threads.append(sampler)
        sampler.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the loop and the sampler; False if a thread did not finish in time."""
        self._stop.set()
        if self.follow:
            self.pipeline.stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


def _set_last_success(metrics: Any, source: str, table: str, at: float) -> None:
    """Put the recorded time of the last load on the last-success gauge.

    `PipelineMetrics.loaded_cursor` stamps "now" (it is called by the loader right after a
    load); when the load happened before this process started, the true time is in state.
    """
    gauge = getattr(metrics, "_last_success", None)
    if gauge is not None:
        gauge.labels(source, table).set(at)


# --- HTML ------------------------------------------------------------------------------------

def e(value: Any) -> str:
    """HTML-escape anything (quotes too: values also land in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    if digits:
        return f"{value:,.{digits}f}"
    return f"{int(value):,}"


def _rate(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}/s" if value >= 10 else f"{value:,.1f}/s"


def _ago(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "never"
    return f"{human_age(max(0.0, now - epoch))} ago"


def _utc(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def sparkline(values: Iterable[float | None], *, width: int = 120, height: int = 28,
              color: str = "#2563eb", label: str = "", unit: str = "") -> str:
    """An inline SVG line chart from 0 to the series maximum; None values leave gaps."""
    points = list(values)
    known = [v for v in points if v is not None and math.isfinite(v)]
    title = f"<title>{e(label)}</title>" if label else ""
    aria = f' role="img" aria-label="{e(label)}"'
    if len(points) < 2 or not known:
        return (f'<svg class="spark empty" width="{width}" height="{height}" '
                f'viewBox="0 0 {width} {height}"{aria}>{title}'
                f'<line x1="0" y1="{height - 1.5}" x2="{width}" y2="{height - 1.5}" '
                f'stroke="#d1d5db" stroke-dasharray="3 3"/></svg>')
    top = max(known) or 1.0
    step = width / (len(points) - 1)
    pad = 2.0

    def y(v: float) -> float:
        return height - pad - (v / top) * (height - 2 * pad)

    runs: list[list[tuple[float, float]]] = [[]]
    for i, v in enumerate(points):
        if v is None or not math.isfinite(v):
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((i * step, y(v)))
    shapes = []
    for run in runs:
        if not run:
            continue
        if len(run) == 1:
            x0, y0 = run[0]
            shapes.append(f'<circle cx="{x0:.1f}" cy="{y0:.1f}" r="1.5" fill="{color}"/>')
            continue
        line = " ".join(f"{x:.1f},{yy:.1f}" for x, yy in run)
        area = (f"{run[0][0]:.1f},{height} {line} {run[-1][0]:.1f},{height}")
        shapes.append(f'<polygon points="{area}" fill="{color}" fill-opacity="0.12"/>')
        shapes.append(f'<polyline points="{line}" fill="none" stroke="{color}" '
                      f'stroke-width="1.5" stroke-linejoin="round" stroke-linecap="round"/>')
    last = next((v for v in reversed(points) if v is not None), None)
    if last is not None and runs[-1]:
        lx, ly = runs[-1][-1]
        shapes.append(f'<circle cx="{lx:.1f}" cy="{ly:.1f}" r="2" fill="{color}"/>')
    return (f'<svg class="spark" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"{aria}>{title}{"".join(shapes)}</svg>')


_STATE_CLASS = {"ok": "ok", "failing": "warn", "source down": "bad", "error": "bad",
                "waiting": "idle"}
_BREAKER_CLASS = {"closed": "ok", "half-open": "warn", "open": "bad"}

_CSS = """
:root{--bg:#f4f5f7;--card:#fff;--ink:#1f2933;--muted:#6b7280;--line:#e5e7eb;
--ok:#166534;--okbg:#dcfce7;--warn:#92400e;--warnbg:#fef3c7;--bad:#991b1b;--badbg:#fee2e2;
--idle:#374151;--idlebg:#e5e7eb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
background:var(--bg);color:var(--ink)}
header{display:flex;align-items:center;gap:14px;padding:12px 24px;background:#111827;color:#f9fafb}
header h1{font-size:17px;margin:0;font-weight:600;letter-spacing:.01em}
header .name{color:#9ca3af;font-weight:400}
header nav{margin-left:auto;display:flex;gap:14px;align-items:center;font-size:12px;
color:#9ca3af}
header a{color:#93c5fd;text-decoration:none}
main{padding:18px 24px 28px;max-width:1440px;margin:0 auto}
.banner{padding:10px 14px;border-radius:8px;margin-bottom:14px;background:var(--badbg);
color:var(--bad);border:1px solid #fecaca}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;
margin-bottom:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.k{color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.05em}
.v{font-size:21px;font-weight:600;margin-top:2px;font-variant-numeric:tabular-nums}
.card .sub{color:var(--muted);font-size:12px}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin-bottom:14px}
.chart svg{display:block;width:100%;height:64px;margin-top:6px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;
margin-bottom:14px;overflow:hidden}
section h2{font-size:13px;margin:0;padding:9px 14px;border-bottom:1px solid var(--line);
font-weight:600}
section h2 span{color:var(--muted);font-weight:400}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.grid2 section{margin-bottom:0}
.row2{margin-bottom:14px}
.scroll{overflow-x:auto}
table{width:100%;border-collapse:collapse}
th,td{text-align:left;padding:6px 12px;border-bottom:1px solid var(--line);
vertical-align:middle;white-space:nowrap}
tr:last-child td{border-bottom:none}
th{font-size:11px;color:var(--muted);font-weight:600;background:#f9fafb;
text-transform:uppercase;letter-spacing:.04em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.msg{white-space:normal;min-width:160px;font-size:12px;color:var(--bad);
overflow-wrap:anywhere}
td.msg.short{max-width:280px}
td.muted,.muted{color:var(--muted)}
td .sub{display:block;color:var(--muted);font-size:11px}
.tname{font-weight:600}
.pill{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;
white-space:nowrap}
.pill.ok{color:var(--ok);background:var(--okbg)}
.pill.warn{color:var(--warn);background:var(--warnbg)}
.pill.bad{color:var(--bad);background:var(--badbg)}
.pill.idle{color:var(--idle);background:var(--idlebg)}
.stale{color:var(--bad);font-weight:600}
.empty{padding:10px 14px;color:var(--muted)}
svg.spark{display:block}
code{font-size:12px;background:#f3f4f6;padding:1px 5px;border-radius:4px}
@media (max-width:900px){.charts,.grid2{grid-template-columns:1fr}}
"""


def _pill(text: str, cls: str) -> str:
    return f'<span class="pill {e(cls)}">{e(text)}</span>'


def _card(key: str, value: str, extra: str = "") -> str:
    sub = f'<div class="sub">{e(extra)}</div>' if extra else ""
    return (f'<div class="card"><div class="k">{e(key)}</div><div class="v">{e(value)}</div>'
            f"{sub}</div>")


def _section(title: str, body: str, note: str = "") -> str:
    note_html = f" <span>{e(note)}</span>" if note else ""
    return f"<section><h2>{e(title)}{note_html}</h2>{body}</section>"


def _table(headers: list[tuple[str, str]], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<div class="empty">{e(empty)}</div>'
    head = "".join(f'<th class="{e(cls)}">{e(h)}</th>' for h, cls in headers)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead>' \
           f'<tbody>{"".join(rows)}</tbody></table></div>'


def render_page(report: dict[str, Any], history: dict[str, Any], *, mode: str = "",
                loop_error: str | None = None, refresh: int = REFRESH_SECONDS) -> str:
    """The whole status page as one HTML string; every interpolated value is escaped."""
    now = float(report.get("at") or time.time())
    tables: list[dict[str, Any]] = report.get("tables", [])
    states = [t["state"] for t in tables]
    healthy = sum(1 for s in states if s == "ok")
    bad = sum(1 for s in states if _STATE_CLASS.get(s) == "bad")
    warn = sum(1 for s in states if _STATE_CLASS.get(s) == "warn")
    if loop_error:
        overall, overall_cls = "pipeline stopped", "bad"
    elif bad:
        overall, overall_cls = "degraded", "bad"
    elif warn:
        overall, overall_cls = "failing", "warn"
    elif tables and healthy == len(tables):
        overall, overall_cls = "healthy", "ok"
    else:
        overall, overall_cls = "waiting", "idle"

    throughput = history.get("throughput", {})
    freshness_hist = history.get("freshness", {})
    total_tp = history.get("total_throughput", [])
    worst_fresh = history.get("max_freshness", [])
    now_tp = next((v for v in reversed(total_tp) if v is not None), None)
    peak_tp = max((v for v in total_tp if v is not None), default=None)
    known_fresh = [t["freshness_seconds"] for t in tables if t["freshness_seconds"] is not None]
    worst_now = max(known_fresh, default=None)
    span = history.get("span_seconds") or 0.0
    window = f"last {human_age(span)}" if span else "collecting…"
    open_q = sum(int(t.get("open_quarantine_batches") or 0) for t in tables)
    q_rows = sum(int(t.get("rows_quarantined") or 0) for t in tables)

    parts: list[str] = []
    if loop_error:
        parts.append(f'<div class="banner">The pipeline loop stopped: {e(loop_error)}</div>')

    parts.append('<div class="cards">' + "".join([
        _card("tables healthy", f"{healthy} / {len(tables)}", ", ".join(
            part for part in (f"{bad} down or in error" if bad else "",
                              f"{warn} failing" if warn else "") if part)),
        _card("rows loaded", _num(sum(int(t.get("rows_loaded") or 0) for t in tables)),
              "into the warehouse"),
        _card("throughput", _rate(now_tp), "rows loaded, last sample"),
        _card("worst freshness", human_age(worst_now) if worst_now is not None else "–",
              "SLO 15 min"),
        _card("queue", f"{report.get('queue_depth', 0)} / {report.get('queue_capacity', 0)}",
              "batches queued / capacity"),
        _card("pending", _num(report.get("pending_batches")),
              f"batches, {_num(report.get('pending_rows'))} rows"),
        _card("quarantined", _num(q_rows), f"rows, in {open_q} open batches"),
    ]) + "</div>")

    tp_sub = f"now {_rate(now_tp)} · peak {_rate(peak_tp)} · {window}"
    fresh_sub = (f"now {human_age(worst_now) if worst_now is not None else '–'} · "
                 f"worst table · {window}")
    parts.append(
        '<div class="charts">'
        f'<div class="card chart"><div class="k">Throughput, rows loaded per second</div>'
        f'<div class="sub">{e(tp_sub)}</div>'
        f'{sparkline(total_tp, width=600, height=64, color="#2563eb", label="throughput")}'
        "</div>"
        f'<div class="card chart"><div class="k">Freshness, now minus newest loaded change'
        f'</div><div class="sub">{e(fresh_sub)}</div>'
        f'{sparkline(worst_fresh, width=600, height=64, color="#d97706", label="freshness")}'
        "</div></div>")

    rows = []
    for t in tables:
        label = t["table"]
        state = t["state"]
        fresh = t["freshness_seconds"]
        fresh_cls = ' class="stale"' if fresh is not None and fresh > STALE_AFTER else ""
        breaker = t.get("breaker") or "closed"
        err = t.get("last_error") or ""
        err_cell = (f'<td class="msg short" title="{e(err)}">{e(_clip(err, 90))}'
                    f'<span class="sub">{e(_ago(t.get("last_error_at"), now))}</span></td>'
                    if err else '<td class="muted">–</td>')
        fresh_spark = sparkline(freshness_hist.get(label, []), width=96, color="#d97706",
                                label=f"freshness of {label}")
        tp_spark = sparkline(throughput.get(label, []), width=96, color="#2563eb",
                             label=f"throughput of {label}")
        target = t.get("target")
        target_note = (f'<span class="sub">→ {e(target)}</span>'
                       if target and target != t.get("name") else "")
        rows.append(
            f'<tr data-table="{e(label)}" data-state="{e(state)}">'
            f'<td><span class="tname">{e(label)}</span>{target_note}</td>'
            f"<td>{_pill(state, _STATE_CLASS.get(state, 'idle'))}</td>"
            f'<td class="num"><span{fresh_cls}>{e(t["freshness_human"])}</span></td>'
            f"<td>{fresh_spark}</td><td>{tp_spark}</td>"
            f'<td class="num">{e(_num(t.get("rows_loaded")))}</td>'
            f'<td class="num">{e(_num(t.get("rows_quarantined")))}</td>'
            f'<td title="{e(_utc(t.get("last_success")))}">'
            f'{e(_ago(t.get("last_success"), now))}</td>'
            f"<td>{_pill(breaker, _BREAKER_CLASS.get(breaker, 'idle'))}</td>"
            f"{err_cell}</tr>")
    parts.append(_section("Tables", _table(
        [("table", ""), ("state", ""), ("freshness", "num"), ("freshness trend", ""),
         ("rows/s", ""), ("rows loaded", "num"), ("quarantined", "num"),
         ("last success", ""), ("breaker", ""), ("last error", "")],
        rows, "No tables configured."), note=f"{len(tables)} configured"))

    # open breakers and quarantine side by side
    breakers: dict[str, str] = {}
    for t in tables:
        if (t.get("breaker") or "closed") != "closed":
            breakers.setdefault(t["source"], t["breaker"])
    breaker_rows = [f"<tr><td>{e(src)}</td>"
                    f"<td>{_pill(st, _BREAKER_CLASS.get(st, 'idle'))}</td></tr>"
                    for src, st in sorted(breakers.items())]
    q_rows_html = [f'<tr><td>{e(t["table"])}</td>'
                   f'<td class="num">{e(_num(t.get("rows_quarantined")))}</td>'
                   f'<td class="num">{e(_num(t.get("open_quarantine_batches")))}</td></tr>'
                   for t in tables if t.get("rows_quarantined") or
                   t.get("open_quarantine_batches")]
    parts.append('<div class="grid2 row2">' + _section(
        "Open circuit breakers",
        _table([("source", ""), ("breaker", "")], breaker_rows,
               "All circuit breakers are closed.")) + _section(
        "Quarantine",
        _table([("table", ""), ("rows", "num"), ("open batches", "num")], q_rows_html,
               "No rows quarantined."),
        note="inspect with: steadyflow quarantine list") + "</div>")

    errors = sorted((t for t in tables if t.get("last_error")),
                    key=lambda t: t.get("last_error_at") or 0, reverse=True)
    error_rows = [f'<tr><td>{e(t["table"])}</td>'
                  f'<td title="{e(_utc(t.get("last_error_at")))}">'
                  f'{e(_ago(t.get("last_error_at"), now))}</td>'
                  f'<td class="msg">{e(_clip(t["last_error"], 400))}</td></tr>'
                  for t in errors]
    parts.append(_section("Recent errors", _table(
        [("table", ""), ("when", ""), ("error", "")], error_rows, "No errors recorded.")))

    run_rows = []
    for r in report.get("runs", []):
        outcome = r.get("outcome") or "running"
        cls = {"ok": "ok", "error": "bad"}.get(outcome, "idle")
        took = (r["ended_at"] - r["started_at"]) if r.get("ended_at") else None
        err = r.get("error") or ""
        run_rows.append(
            f'<tr><td class="num">{e(r.get("run_id"))}</td><td>{e(r.get("command"))}</td>'
            f'<td title="{e(_utc(r.get("started_at")))}">{e(_ago(r.get("started_at"), now))}'
            f'</td><td class="num">{e(_num(took, 2) if took is not None else "–")}'
            f"{' s' if took is not None else ''}</td>"
            f"<td>{_pill(outcome, cls)}</td>"
            f'<td class="num">{e(_num(r.get("batches")))}</td>'
            f'<td class="num">{e(_num(r.get("rows")))}</td>'
            + (f'<td class="msg">{e(_clip(err, 200))}</td>' if err else
               '<td class="muted">–</td>') + "</tr>")
    parts.append(_section("Recent runs", _table(
        [("run", "num"), ("command", ""), ("started", ""), ("took", "num"), ("outcome", ""),
         ("batches", "num"), ("rows", "num"), ("error", "")],
        run_rows, "No runs recorded yet.")))

    recon = report.get("reconcile") or []
    if recon:
        recon_rows = [f'<tr><td>{e(r["source"])}.{e(r["table"])}</td>'
                      f'<td>{e(_ago(r.get("at"), now))}</td>'
                      f'<td class="num">{e(_num(r.get("rows_compared")))}</td>'
                      f'<td class="num">{e(_num(r.get("missing")))}</td>'
                      f'<td class="num">{e(_num(r.get("extra")))}</td>'
                      f'<td class="num">{e(_num(r.get("mismatched")))}</td>'
                      f'<td class="num">{e(_num(r.get("repaired")))}</td></tr>' for r in recon]
        parts.append(_section("Last reconcile", _table(
            [("table", ""), ("when", ""), ("compared", "num"), ("missing", "num"),
             ("extra", "num"), ("mismatched", "num"), ("repaired", "num")],
            recon_rows, "")))

    name = report.get("pipeline", "")
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{int(refresh)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>steadyflow · {e(name)} · {e(overall)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f'<header><h1>steadyflow <span class="name">· {e(name)}</span></h1>'
        f"{_pill(overall, overall_cls)}"
        f'<nav><span>{e(mode + " · " if mode else "")}updated {e(_utc(now))}</span>'
        '<a href="/metrics">/metrics</a><a href="/api/status">/api/status</a></nav></header>'
        f'<main data-pipeline="{e(name)}">{"".join(parts)}</main></body></html>\n')


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- HTTP ------------------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    app: StatusServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return "steadyflow"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", logs.scrub(format % args), extra={"stage": "observe"})

    def _send(self, code: int, body: bytes, content_type: str,
              extra: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", _CSP)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if code >= 400:  # an unread request body must not be parsed as the next request
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _text(self, code: int, text: str, extra: dict[str, str] | None = None,
              head: bool = False) -> None:
        self._send(code, text.encode(), "text/plain; charset=utf-8", extra, head)

    def _refused(self) -> bool:
        """Answer 401/421 and return True if this request must not be served."""
        app = self.server.app
        if app.token is not None:
            header = self.headers.get("Authorization") or ""
            scheme, _, provided = header.partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                provided.strip().encode(), app.token.encode())
            if not ok:
                self._text(401, "unauthorized\n",
                           {"WWW-Authenticate": 'Bearer realm="steadyflow"'})
                return True
        elif app.loopback_only and not _host_header_is_loopback(self.headers.get("Host")):
            self._text(421, "misdirected request: use a loopback host name\n")
            return True
        return False

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _not_allowed(self) -> None:
        self._text(405, "read-only: GET and HEAD only\n", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _dispatch(self, head: bool) -> None:
        try:
            if self._refused():
                return
            path = urlsplit(self.path).path
            app = self.server.app
            if path == "/metrics":
                if not app.service.live:
                    app.service.sync_metrics()
                self._send(200, app.pipeline.metrics.exposition(), METRICS_CONTENT_TYPE,
                           head=head)
            elif path in ("/", "/index.html"):
                page = render_page(app.service.report(), app.service.history.series(),
                                   mode=app.service.mode,
                                   loop_error=app.service.loop_error)
                self._send(200, page.encode(), "text/html; charset=utf-8", head=head)
            elif path == "/api/status":
                body = json.dumps(app.service.report(), default=str).encode()
                self._send(200, body, "application/json", head=head)
            elif path == "/healthz":
                if app.service.loop_alive:
                    self._text(200, "ok\n", head=head)
                else:
                    self._text(503, f"pipeline loop stopped: {app.service.loop_error}\n",
                               head=head)
            else:
                self._text(404, "not found\n", head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:
            log.error("request %s failed: %s", urlsplit(self.path).path, exc,
                      extra={"stage": "observe"})
            try:
                self._text(500, "internal error\n", head=head)
            except OSError:
                pass


class StatusServer:
    """The HTTP server plus its `StatusService`; `start()` serves in a background thread."""

    def __init__(self, pipeline: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 token: str | None = None, insecure: bool = False, follow: bool = False,
                 live: bool | None = None, owns_pipeline: bool = False,
                 sample_every: float = SAMPLE_EVERY) -> None:
        loopback = is_loopback(host)
        if not loopback and not token and not insecure:
            raise ConfigError(
                f"refusing to serve on non-loopback address {host!r} without a token",
                hint="set a bearer token (--token-env VAR) or pass --insecure deliberately")
        self.pipeline = pipeline
        self.token = token or None
        logs.register_secret(self.token)
        self.loopback_only = loopback
        self.owns_pipeline = owns_pipeline
        self.service = StatusService(pipeline, follow=follow, live=live,
                                     sample_every=sample_every)
        server_cls = _Server6 if ":" in host.strip("[]") else _Server
        try:
            self.httpd = server_cls((host.strip("[]"), port), _Handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.httpd.app = self
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.httpd.server_address[0])
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> StatusServer:
        self.service.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="status-http",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        log.info("serving %s", self.url, extra={"stage": "observe"})
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving, stop the pipeline loop (follow mode), close what we opened."""
        if self._stopped:
            return
        self._stopped = True
        finished = self.service.stop(timeout)
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()
        if self.owns_pipeline:
            if finished:
                self.pipeline.close()
            else:  # closing state under a live loop thread would only add errors
                log.warning("pipeline loop did not stop in %.0fs; not closing it", timeout,
                            extra={"stage": "observe"})
                self.pipeline.metrics.stopped()

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(pipeline_or_config_path: Any, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, *, follow: bool = False, token: str | None = None,
                 insecure: bool = False,
                 sample_every: float = SAMPLE_EVERY) -> tuple[str, Callable[[], None]]:
    """Serve the status page and /metrics in background threads; returns (url, stop).

    Pass a `Pipeline` this process runs (live: /metrics is its registry), or a config path
    for a read-only view of a pipeline that runs in another process (see the module
    docstring for what /metrics means then).
    ``port=0`` picks a free port; the returned url names it.  ``follow=True`` also runs
    ``pipeline.run(follow=True)`` in a background thread.  ``stop()`` is idempotent.
    """
    owns = isinstance(pipeline_or_config_path, str | Path)
    if owns:
        from steadyflow.run.pipeline import Pipeline

        pipeline = Pipeline.from_yaml(pipeline_or_config_path)
    else:
        pipeline = pipeline_or_config_path
    try:
        server = StatusServer(pipeline, host, port, token=token, insecure=insecure,
                              follow=follow, live=follow or not owns, owns_pipeline=owns,
                              sample_every=sample_every)
    except BaseException:
        if owns:
            pipeline.close()
        raise
    server.start()
    return server.url, server.stop


def parse_address(value: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` → (host, port); the host defaults to loopback."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, text
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"not an address: {value!r} (expected PORT or HOST:PORT)")
    return host.strip("[]") or DEFAULT_HOST, int(port)


def serve(pipeline: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          token: str | None = None, insecure: bool = False, follow: bool = True,
          announce: Callable[[str], None] = print) -> None:
    """Serve until SIGINT/SIGTERM (main thread only); what `steadyflow serve` runs."""
    import signal

    server = StatusServer(pipeline, host, port, token=token, insecure=insecure, follow=follow)
    done = threading.Event()

    def stop(signum: int, frame: object) -> None:
        pipeline.stop()
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    announce(server.url)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
