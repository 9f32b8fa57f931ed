"""deploy/grafana: the kept dashboard JSON is what dashboard.py builds (grafanalib), every
metric it queries exists in PipelineMetrics, and every panel keeps pipelines apart."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from steadyflow.observe.metrics import PipelineMetrics

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",), "unknown": ("",)}


@pytest.fixture(scope="module")
def built() -> str:
    # run as a script (it is one): grafanalib has no type stubs for mypy to follow. It is a
    # dev dependency: without it this fails (ModuleNotFoundError), it does not skip
    return str(runpy.run_path(str(GRAFANA / "dashboard.py"))["to_json"]())


def exposed() -> set[str]:
    m = PipelineMetrics()
    m.declare("s", "t")
    m.loaded_cursor("s", "t", 0.0)
    m.polled("s", "t", 0.0)
    return {fam.name + suffix
            for fam in text_string_to_metric_families(m.exposition().decode())
            for suffix in SUFFIXES[fam.type]}


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_the_kept_json_is_what_the_builder_builds(built: str) -> None:
    assert (GRAFANA / "steadyflow.json").read_text() == built, (
        "run: python deploy/grafana/dashboard.py > deploy/grafana/steadyflow.json")


def test_every_queried_metric_exists() -> None:
    dashboard = json.loads((GRAFANA / "steadyflow.json").read_text())
    used = {n for e in exprs(dashboard) for n in re.findall(r"\b(?:steadyflow|process)_\w+", e)}
    assert {"steadyflow_lag_seconds", "steadyflow_freshness_seconds", "steadyflow_rows_total",
            "steadyflow_queue_depth_batches", "steadyflow_errors_total",
            "steadyflow_breaker_state", "steadyflow_quarantined_rows_total"} <= used
    missing = used - exposed()
    assert not missing, f"the dashboard queries metrics PipelineMetrics does not define: {missing}"


def test_every_panel_is_per_pipeline() -> None:
    dashboard = json.loads((GRAFANA / "steadyflow.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert '$pipeline' in target["expr"], target
            assert "{{pipeline}}" in target["legendFormat"], target
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"pipeline", "source", "table"} <= names
