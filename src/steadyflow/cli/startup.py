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

numpy is not imported by a plain `steadyflow run` (`without_numpy`): pyarrow imports it
when it can (its modules try `import numpy` and work without it), and nothing a run does
uses it, while its import was ~45 ms of the command's start-up CPU on the main thread,
before any row moved (bench/NOTES.md, session 14).

The config's pydantic models are built with pydantic's plugins off (`import_config`): its
one plugin scan of the installed distributions' entry points is start-up CPU too.
"""

from __future__ import annotations

import gc
import importlib.abc
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

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


class _NoNumpy(importlib.abc.MetaPathFinder):
    """Finds numpy as missing. Raising here, rather than putting None in sys.modules,
    leaves `"numpy" in sys.modules` false, which is what DuckDB asks before it looks at a
    value as a numpy one."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == "numpy" or fullname.startswith("numpy."):
            raise ModuleNotFoundError(f"No module named {fullname!r} (not loaded by this "
                                      "steadyflow command)", name=fullname)
        return None


def without_numpy() -> None:
    """In the console script (while `pause` holds), keep numpy from being imported for the
    rest of the process: for a command whose whole path is steadyflow's own (a plain
    `run`). steadyflow calls no numpy or pandas conversion of pyarrow or DuckDB (a test
    runs the data path with numpy unimportable); pyarrow without numpy refuses only its
    numpy conversions, loudly. A library user's process is never touched."""
    if _paused and "numpy" not in sys.modules:
        sys.meta_path.insert(0, _NoNumpy())


# pydantic's switch for its plugins (pydantic/plugin/_loader.py get_plugins: '__all__',
# '1' or 'true' turn every plugin off; read at each model's validator build)
PYDANTIC_PLUGINS_OFF = "PYDANTIC_DISABLE_PLUGINS"


def import_config() -> None:
    """In the console script (while `pause` holds), import steadyflow.config with
    pydantic's plugins off, and the environment as it was afterwards.

    Building each model's validator, pydantic looks for plugins once per process: a
    scan of every installed distribution's entry points (importlib.metadata), 3-15 ms of
    a command's start-up CPU by the venv's size, before any row moves (bench/NOTES.md,
    session 15). The config's models are all built at that import, so the switch is on
    for it only, and taken off again: it never reaches a process this one starts, nor a
    later model of the user's own code. A value the user set is left alone (theirs
    decides). A plugin then does not see steadyflow's config validation: no plugin has
    anything to do with it. A library user's process is never touched."""
    if not _paused or "steadyflow.config" in sys.modules or PYDANTIC_PLUGINS_OFF in os.environ:
        return
    os.environ[PYDANTIC_PLUGINS_OFF] = "__all__"
    try:
        import steadyflow.config  # noqa: F401  (its models' validators are built here)
    finally:
        os.environ.pop(PYDANTIC_PLUGINS_OFF, None)
