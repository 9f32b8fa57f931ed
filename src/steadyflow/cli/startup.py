"""The cyclic garbage collector paused while a `steadyflow` command starts up.

Importing what a command runs (pydantic and the config's models, pyarrow, the stages)
allocates a few hundred thousand objects that live as long as the process, and none of
them is garbage; the collector still looks at the young ones every 700 allocations and at
everything imported so far every hundredth time. Measured on `steadyflow run` of the bench's
MariaDB config (bench/NOTES.md, session 13): 131 young, 12 middle and 1 full collection
before the first query, ~65 ms of CPU on the main thread, a tenth of the start-up's.

So the console script (cli/main.py `entry`) pauses the collector, and the command resumes
it once its pipeline is built (cli/main.py `_open`): a long run (`run --follow`, `worker`,
`serve`) collects as before. Resuming freezes what start-up allocated (`gc.freeze`): the
collector never walks those objects again, so resuming does not make the next young
collection walk all of them (it would: they are all young after a pause), and a follow
run's full collections skip them too. Only the console script pauses: a process that
imports steadyflow as a library owns its collector (`resume` does nothing there).
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Stop automatic collection until `resume` (a collector already off stays off)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Freeze what start-up allocated and collect again, if `pause` stopped it."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
