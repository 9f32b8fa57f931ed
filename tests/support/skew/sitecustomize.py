"""A host whose wall clock is off: put this directory first on PYTHONPATH and set SF_SKEW
(seconds, may be negative), and the process's time.time, time.time_ns and datetime's
now/utcnow/today read that much ahead; monotonic clocks (timeouts, sleeps) are untouched.

libfaketime is no substitute here: with its monotonic clock faked, Python's
threading.Event.wait(timeout) never returns; with it real, time.sleep fails (EINVAL).
`datetime.datetime` is replaced by a subclass whose isinstance/issubclass accept the
drivers' plain datetimes, so code that checks `isinstance(x, datetime)` is unchanged.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from typing import Any

_off = float(os.environ.get("SF_SKEW", "0"))
if _off:
    _t, _tn, _base = time.time, time.time_ns, _dt.datetime
    time.time = lambda: _t() + _off  # type: ignore[assignment]
    time.time_ns = lambda: _tn() + int(_off * 1e9)  # type: ignore[assignment]

    class _Meta(type):
        def __instancecheck__(cls, obj: Any) -> bool:
            return isinstance(obj, _base)

        def __subclasscheck__(cls, sub: Any) -> bool:
            return issubclass(sub, _base)

    class _Skewed(_base, metaclass=_Meta):
        __slots__ = ()

        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return _base.now(tz) + _dt.timedelta(seconds=_off)

        @classmethod
        def utcnow(cls) -> Any:
            return _base.utcnow() + _dt.timedelta(seconds=_off)

        @classmethod
        def today(cls) -> Any:
            return _base.today() + _dt.timedelta(seconds=_off)

    _dt.datetime = _Skewed  # type: ignore[misc]
