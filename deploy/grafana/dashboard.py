"""Builds deploy/grafana/steadyflow.json, the Grafana dashboard for steadyflow pipelines.

    python deploy/grafana/dashboard.py > deploy/grafana/steadyflow.json

Why generated with grafanalib (a dev dependency) and kept as JSON: operators import the
JSON as it is (Grafana: Dashboards > Import), while the Python stays the one place to edit
it; tests/unit/test_grafana_dashboard.py rebuilds it, checks the kept JSON is what this
builds, and that every metric it queries exists in observe/metrics.py.

Every panel is per pipeline/source/table (the `pipeline`, `source`, `table` variables,
multi-select), and every legend names the pipeline and instance: two pipelines never
share a line.
"""

from __future__ import annotations

import json
import sys

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    RowPanel,
    Target,
    Template,
    Templating,
    TimeSeries,
)

DS = "${datasource}"
SEL = 'pipeline=~"$pipeline",source=~"$source",table=~"$table"'
SRC = 'pipeline=~"$pipeline",source=~"$source"'
PIPE = 'pipeline=~"$pipeline"'
WHO = "{{pipeline}} {{instance}}"


def _panel(title: str, targets: list[tuple[str, str]], unit: str, x: int, y: int,
           description: str = "") -> TimeSeries:
    return TimeSeries(
        title=title, description=description, dataSource=DS, unit=unit,
        targets=[Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + i))
                 for i, (expr, legend) in enumerate(targets)],
        gridPos=GridPos(h=8, w=12, x=x, y=y))


def _row(title: str, y: int) -> RowPanel:
    return RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=y))


def _variable(name: str, query: str) -> Template:
    return Template(name=name, label=name, dataSource=DS, query=query, includeAll=True,
                    multi=True, default="$__all", refresh=2)


def build() -> Dashboard:
    panels = [
        _row("Liveness and lag", 0),
        _panel("Pipelines up", [(f"steadyflow_up{{{PIPE}}}", WHO),
                                (f"steadyflow_build_info{{{PIPE}}}",
                                 WHO + " v{{version}}")], "none", 0, 1,
               "1 while running; a gap means the process is gone (SteadyflowDown)."),
        _panel("Lag (source high-water mark - loaded)",
               [(f"steadyflow_lag_seconds{{{SEL}}}", WHO + " {{source}}/{{table}}")], "s", 12, 1,
               "0 when caught up or idle; SteadyflowTableStale fires above 15 min."),
        _panel("Freshness (age of newest loaded row; information only)",
               [(f"steadyflow_freshness_seconds{{{SEL}}}", WHO + " {{source}}/{{table}}")],
               "s", 0, 9, "Grows on an idle source: no alert uses it."),
        _panel("Time since last successful poll",
               [(f"time() - steadyflow_last_poll_success_timestamp_seconds{{{SEL}}}",
                 WHO + " {{source}}/{{table}}")], "s", 12, 9,
               "SteadyflowPollFailing fires above 15 min."),
        _row("Throughput", 17),
        _panel("Rows per second by stage",
               [(f"sum by (pipeline, instance, source, table, stage) "
                 f"(rate(steadyflow_rows_total{{{SEL}}}[5m]))",
                 WHO + " {{source}}/{{table}} {{stage}}")], "rowsps", 0, 18),
        _panel("Bytes per second by stage",
               [(f"sum by (pipeline, instance, source, table, stage) "
                 f"(rate(steadyflow_bytes_total{{{SEL}}}[5m]))",
                 WHO + " {{source}}/{{table}} {{stage}}")], "Bps", 12, 18),
        _panel("Batch duration p95 by stage",
               [(f"histogram_quantile(0.95, sum by (le, pipeline, instance, stage) "
                 f"(rate(steadyflow_batch_duration_seconds_bucket{{{SEL}}}[5m])))",
                 WHO + " {{stage}}")], "s", 0, 26),
        _panel("Page size (rows)",
               [(f"steadyflow_page_size_rows{{{SEL}}}", WHO + " {{source}}/{{table}}")],
               "none", 12, 26, "Halves on timeouts and slow pages, grows back when healthy."),
        _row("Queue", 34),
        _panel("Buffer queue depth and capacity",
               [(f"steadyflow_queue_depth_batches{{{PIPE}}}", WHO + " depth"),
                (f"steadyflow_queue_capacity_batches{{{PIPE}}}", WHO + " capacity"),
                (f"steadyflow_consumer_lag_batches{{{PIPE}}}", WHO + " not loaded")],
               "none", 0, 35),
        _panel("Oldest unloaded batch",
               [(f"steadyflow_consumer_lag_seconds{{{PIPE}}}", WHO)], "s", 12, 35),
        _row("Errors, breakers, quarantine", 43),
        _panel("Failed batches (5m) by stage",
               [(f"sum by (pipeline, instance, source, table, stage) "
                 f"(increase(steadyflow_errors_total{{{SEL}}}[5m]))",
                 WHO + " {{source}}/{{table}} {{stage}}")], "none", 0, 44),
        _panel("Retries per second by reason",
               [(f"sum by (pipeline, instance, source, reason) "
                 f"(rate(steadyflow_retries_total{{{SRC}}}[5m]))",
                 WHO + " {{source}} {{reason}}"),
                (f"sum by (pipeline, instance, source) "
                 f"(rate(steadyflow_timeouts_total{{{SRC}}}[5m]))", WHO + " {{source}} timeouts")],
               "ops", 12, 44),
        _panel("Circuit breakers (0 closed, 1 half-open, 2 open) and rejected credentials",
               [(f"steadyflow_breaker_state{{{SRC}}}", WHO + " {{source}} breaker"),
                (f"steadyflow_auth_failing{{{SRC}}}", WHO + " {{source}} auth failing"),
                (f"increase(steadyflow_breaker_opened_total{{{SRC}}}[1h])",
                 WHO + " {{source}} opened (1h)")], "none", 0, 52),
        _panel("Quarantined rows (1h)",
               [(f"increase(steadyflow_quarantined_rows_total{{{SEL}}}[1h])",
                 WHO + " {{source}}/{{table}}")], "none", 12, 52),
        _panel("Reconcile differences",
               [(f"steadyflow_reconcile_missing_rows{{{SEL}}}", WHO + " {{table}} missing"),
                (f"steadyflow_reconcile_extra_rows{{{SEL}}}", WHO + " {{table}} extra"),
                (f"steadyflow_reconcile_mismatched_rows{{{SEL}}}",
                 WHO + " {{table}} mismatched")], "none", 0, 60),
        _panel("Process CPU and memory",
               [(f"rate(process_cpu_seconds_total{{{PIPE}}}[5m])", WHO + " cpu"),
                (f"process_resident_memory_bytes{{{PIPE}}} / 2^30", WHO + " RSS GiB")],
               "none", 12, 60),
    ]
    return Dashboard(
        title="steadyflow", uid="steadyflow", tags=["steadyflow"], timezone="utc",
        refresh="30s", panels=panels, templating=Templating(list=[
            Template(name="datasource", label="data source", query="prometheus",
                     type="datasource", default="Prometheus"),
            _variable("pipeline", "label_values(steadyflow_up, pipeline)"),
            _variable("source", 'label_values(steadyflow_breaker_state{pipeline=~"$pipeline"}, '
                                "source)"),
            _variable("table", 'label_values(steadyflow_lag_seconds{pipeline=~"$pipeline",'
                               'source=~"$source"}, table)'),
        ])).auto_panel_ids()


def to_json() -> str:
    return json.dumps(build().to_json_data(), cls=DashboardEncoder, indent=2,
                      sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(to_json())
