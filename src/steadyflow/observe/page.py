"""The server-rendered status page: tables and inline SVG sparklines as one HTML string.

No front-end build and no script: the page reloads itself with a meta refresh every
`REFRESH_SECONDS`, its CSS is inline and its charts are inline SVG elements, so the strict
Content-Security-Policy the server sends (web.py) costs nothing.

Rendering takes only a `status.collect()` report and a `History.series()`, so
it needs no server or pipeline to test.  Every interpolated value goes through `e()`
(HTML-escaped, quotes included, because values also land in attributes); error texts
arrive already scrubbed of secrets (service.py).
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable
from typing import Any

from steadyflow.observe.status import (
    failed_run,
    human_age,
    killed_loop,
    suspended_loop,
    unreconciled,
)
from steadyflow.observe.status import overall as health_of

REFRESH_SECONDS = 2
STALE_AFTER = 900.0  # the SteadyflowTableStale threshold in deploy/prometheus/alerts.yml


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
                "stalled": "bad", "behind": "bad", "waiting": "idle",
                "unknown": "bad"}
_BREAKER_CLASS = {"closed": "ok", "half-open": "warn", "open": "bad"}

_CSS = """
:root{--bg:#f4f5f7;--card:#fff;--ink:#1f2933;--muted:#6b7280;--line:#e5e7eb;
--ok:#166534;--okbg:#dcfce7;--warn:#92400e;--warnbg:#fef3c7;--bad:#991b1b;--badbg:#fee2e2;
--idle:#374151;--idlebg:#e5e7eb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
background:var(--bg);color:var(--ink)}
header{display:flex;flex-wrap:wrap;align-items:center;gap:6px 14px;padding:12px 24px;
background:#111827;color:#f9fafb}
header h1{font-size:17px;margin:0;font-weight:600;letter-spacing:.01em;min-width:0;
overflow-wrap:anywhere}
header .name{color:#9ca3af;font-weight:400}
header nav{margin-left:auto;display:flex;flex-wrap:wrap;gap:4px 14px;align-items:center;
font-size:12px;color:#9ca3af}
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
@media (max-width:600px){header{padding:10px 12px}main{padding:12px 12px 20px}
header nav{margin-left:0}}
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
    # the same verdict (and words) as `steadyflow status` and its exit code
    verdict, _ = health_of(report, loop_error)
    if loop_error:
        overall, overall_cls = "pipeline stopped", "bad"
    elif verdict != "healthy":
        overall, overall_cls = verdict, "bad" if verdict == "failing" else "warn"
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
    q_now = sum(int(t.get("rows_in_quarantine") or 0) for t in tables)
    reread = sum(int(t.get("rows_reread") or 0) for t in tables)

    parts: list[str] = []
    if loop_error:
        parts.append(f'<div class="banner">The pipeline loop stopped: {e(loop_error)}</div>')
    dead = report.get("loop") or {}
    if dead.get("status") == "killed":
        parts.append(f'<div class="banner">{e(killed_loop(dead))}</div>')
    if dead.get("status") == "suspended":
        parts.append(f'<div class="banner">{e(suspended_loop(dead))}</div>')
    for problem in ("state_error", "disk_error", "buffer_error", "clock_error"):
        if report.get(problem):
            parts.append(f'<div class="banner">{e(report[problem])}</div>')
    # why a pipeline whose tables all look ok is degraded, as `steadyflow status` says it
    for line in [*filter(None, [failed_run(report)]), *unreconciled(report)]:
        parts.append(f'<div class="banner">{e(line)}</div>')

    parts.append('<div class="cards">' + "".join([
        _card("tables healthy", f"{healthy} / {len(tables)}", ", ".join(
            part for part in (f"{bad} down or in error" if bad else "",
                              f"{warn} failing" if warn else "") if part)),
        _card("rows changed", _num(sum(int(t.get("rows_changed") or 0) for t in tables)),
              f"inserted or updated in the warehouse; {_num(reread)} re-read unchanged"),
        _card("throughput", _rate(now_tp), "rows changed, last sample"),
        _card("worst freshness", human_age(worst_now) if worst_now is not None else "–",
              "age of the newest loaded row; an idle table's grows"),
        _card("queue", f"{_num(report.get('queue_depth'))} / "
              f"{report.get('queue_capacity', 0)}", "batches queued / capacity"),
        _card("pending", _num(report.get("pending_batches")),
              f"batches, {_num(report.get('pending_rows'))} rows"),
        _card("quarantined", _num(q_now),
              f"rows in {open_q} open batches; {_num(q_rows)} quarantined in all"),
    ]) + "</div>")

    tp_sub = f"now {_rate(now_tp)} · peak {_rate(peak_tp)} · {window}"
    fresh_sub = (f"now {human_age(worst_now) if worst_now is not None else '–'} · "
                 f"worst table · {window}")
    parts.append(
        '<div class="charts">'
        f'<div class="card chart"><div class="k">Throughput, rows changed per second</div>'
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
        # stale means behind the source (lag), not old data: an idle table is not stale
        lag = t.get("lag_seconds")
        lag_cls = ' class="stale"' if lag is not None and lag > STALE_AFTER else ""
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
            f'<td class="num"><span{lag_cls}>{e(t.get("lag_human") or "–")}</span></td>'
            f'<td class="num">{e(t["freshness_human"])}</td>'
            f"<td>{fresh_spark}</td><td>{tp_spark}</td>"
            f'<td class="num">{e(_num(t.get("rows_changed")))}</td>'
            f'<td class="num">{e(_num(t.get("rows_quarantined")))}</td>'
            f'<td title="{e(_utc(t.get("last_success")))}">'
            f'{e(_ago(t.get("last_success"), now))}</td>'
            f"<td>{_pill(breaker, _BREAKER_CLASS.get(breaker, 'idle'))}</td>"
            f"{err_cell}</tr>")
    parts.append(_section("Tables", _table(
        [("table", ""), ("state", ""), ("lag", "num"), ("freshness", "num"),
         ("freshness trend", ""),
         ("rows/s", ""), ("rows changed", "num"), ("quarantined", "num"),
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
                   f'<td class="num">{e(_num(t.get("rows_in_quarantine")))}</td>'
                   f'<td class="num">{e(_num(t.get("open_quarantine_batches")))}</td>'
                   f'<td class="num">{e(_num(t.get("rows_quarantined")))}</td></tr>'
                   for t in tables if t.get("rows_quarantined") or
                   t.get("open_quarantine_batches")]
    parts.append('<div class="grid2 row2">' + _section(
        "Open circuit breakers",
        _table([("source", ""), ("breaker", "")], breaker_rows,
               "All circuit breakers are closed.")) + _section(
        "Quarantine",
        _table([("table", ""), ("rows held", "num"), ("open batches", "num"),
                ("quarantined in all", "num")], q_rows_html,
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

    workers = report.get("workers") or []
    if workers:
        pill = {"running": "ok", "lost": "bad", "failed": "bad", "stopped": "idle"}
        worker_rows = [
            f'<tr><td>{e(w["worker_id"])}</td><td>{e(w["host"])}</td>'
            f'<td class="num">{e(w["pid"])}</td>'
            f'<td>{_pill(w["status"], pill.get(w["status"], "idle"))}</td>'
            f'<td class="num">{e(_num(w["heartbeat_age"], 1))} s ago</td>'
            f'<td>{e(", ".join(w["units"]) or "–")}</td></tr>' for w in workers]
        running = sum(1 for w in workers if w["status"] == "running")
        parts.append(_section("Workers", _table(
            [("worker", ""), ("host", ""), ("pid", "num"), ("status", ""),
             ("heartbeat", "num"), ("holds", "")], worker_rows, ""),
            note=f"{running} running"))

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
