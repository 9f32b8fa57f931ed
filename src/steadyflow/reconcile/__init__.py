"""reconcile stage: is the warehouse what the sources say it should be?

    runner.py    the command: every table in turn, results into run history and metrics;
                 Scheduler (run.reconcile_every in follow mode)
    table.py     one source table: compare, classify, repair, verify
    current.py   the current source rows of differing keys, validated (Arrow: only then)
    repair.py    differing rows back through the normal path as `kind=repair` batches
    report.py    what one table's reconciliation found, and its text form
    options.py   the command's options (--since, --by, --repair)
    bisect.py    buckets → (count, checksum) per bucket → bisect differing ones → keys
    sides.py     one side (source table, or its warehouse rows) as SQL aggregate queries
    engines.py   the canonical encoding and checksum in each engine's SQL
    encoding.py  the canonical encoding itself (the reference; SQLite's functions)
    compare.py   row-by-row comparison: the slow, obvious yardstick (demo, tests, bench)

User documentation: docs/reconcile.md. Cost: bench/RECONCILE.md.
"""
