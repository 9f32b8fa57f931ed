"""reconcile stage: is the warehouse what the sources say it should be?

    runner.py    the command: per source table compare, classify, repair, verify, record
    bisect.py    buckets → (count, checksum) per bucket → bisect differing ones → keys
    sides.py     one side (source table, or its warehouse rows) as SQL aggregate queries
    engines.py   the canonical encoding and checksum in each engine's SQL
    encoding.py  the canonical encoding itself (the reference; SQLite's functions)
    compare.py   row-by-row comparison: the slow, obvious yardstick (demo, tests, bench)

User documentation: docs/reconcile.md. Cost: bench/RECONCILE.md.
"""
