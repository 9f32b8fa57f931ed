"""What the views say when the disk under the state fills up beneath `run --follow`.

Nothing can record that it failed for want of space (the table's error would be written
to the full state file), so `status`, /api/status and the page said healthy, exit 0, the
table 'ok' with its lag 0, while new source rows neither landed nor loaded; only the last
poll's age grew, towards 'stalled' after 15 min. Now every view fails at once and names
the full folder.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from tests.support.disk import tmpfs
from tests.support.status_pipeline import api, config, follow, free_port, get, status, store, wait

pytestmark = pytest.mark.integration


def test_a_full_disk_under_the_state_fails_every_view(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state", 3) as state_dir:
        path = store(tmp_path, datetime.now(UTC) - timedelta(minutes=5), n=20)
        conf = config(tmp_path, path)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"

        def answers() -> bool:
            try:
                return api(url)["tables"][0]["rows_changed"] == 20
            except (OSError, AssertionError):
                return False

        with follow(conf, "--serve", f"127.0.0.1:{port}"):
            wait("the first load", answers)
            with open(state_dir / "filler", "wb") as filler:  # someone fills the disk
                with pytest.raises(OSError):
                    while True:
                        filler.write(b"\0" * 65536)
                        filler.flush()
            store(tmp_path, datetime.now(UTC), n=5, first=21)  # 5 new rows at the source

            def loaded() -> int:
                with closing(duckdb.connect(str(tmp_path / "warehouse.duckdb"),
                                            read_only=True)) as wh:
                    return int(wh.execute("SELECT count(*) FROM sales").fetchone()[0])
            with closing(sqlite3.connect(path)) as db:
                assert db.execute("SELECT count(*) FROM sales").fetchone()[0] == 25
            code, report = status(conf)
            assert (code, report["health"]) == (2, "failing"), report
            assert str(state_dir) in report["disk_error"], report
            served = api(url)
            assert (served["health"], served["exit_code"]) == ("failing", 2), served
            assert "the disk is full" in get(url)[1].decode()
            (state_dir / "filler").unlink()  # room again: the rows land and load
            wait("status healthy again", lambda: status(conf)[0] == 0)
        assert loaded() == 25
