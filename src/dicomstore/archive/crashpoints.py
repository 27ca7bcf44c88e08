"""Named crash points: fault injection for the crash-consistency tests.

``DICOMSTORE_CRASH_AT=publish.after-commit`` (read once, at import) makes the
process SIGKILL itself the first time it reaches that point; ``NAME:N`` at
the N-th time (e.g. ``delete.after-unlink:2``); several, comma-separated. A
forked child that imported this module already calls :func:`enable` instead.

Disabled (the default), a point costs the test of :data:`ENABLED` at the call
site (``if crashpoints.ENABLED: crashpoints.reached(...)``), nothing more.
The points, in the order each path reaches them, are :data:`POINTS`; the
step order itself is documented in ``publish.py`` and ``removal.py``.
"""

from __future__ import annotations

import os
import signal

ENV = "DICOMSTORE_CRASH_AT"

#: Every crash point, in the order a replace or a delete reaches them.
POINTS: tuple[str, ...] = (
    # publish.py (one batch): the traces, the file flush, the second name of the
    # version a replace supersedes (``.bak`` or a removal intent), each rename, the
    # folder flush, the rows, the COMMIT, the old version's last name, the traces
    "publish.after-trace",
    "publish.after-file-flush",
    "publish.after-old-link",
    "publish.after-rename",
    "publish.after-folder-flush",
    "publish.before-commit",
    "publish.after-commit",
    "publish.after-journal",  # (new instances made durable by the journal)
    "publish.after-old-gone",
    "publish.after-traces-dropped",
    "publish.after-flush",  # (new instances committed before their flush: the flush)
    # removal.py: the intents (flushed), the row COMMIT, each unlink, the intents dropped
    "delete.after-intent",
    "delete.after-commit",
    "delete.after-unlink",
    "delete.after-intents-dropped",
)

#: True when some point is armed; call sites test it before calling :func:`reached`.
ENABLED = False
_armed: dict[str, int] = {}  # point -> the hit that kills
_hits: dict[str, int] = {}


def enable(spec: str) -> None:
    """Arm the points of ``spec`` (``NAME[:N],...``; empty disarms all)."""
    global ENABLED
    armed = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown crash point {name!r}; one of {', '.join(POINTS)}")
        if nth and not (nth.isdigit() and int(nth) >= 1):
            raise ValueError(f"{ENV}: {item!r}: the count after ':' must be 1 or more")
        armed[name] = int(nth or 1)
    _armed.clear()
    _armed.update(armed)
    _hits.clear()
    ENABLED = bool(armed)


def reached(point: str) -> None:
    """Die here (SIGKILL, no clean-up of any kind) if ``point`` is armed for this hit."""
    nth = _armed.get(point)
    if nth is None:
        return
    _hits[point] = hits = _hits.get(point, 0) + 1
    if hits >= nth:
        os.kill(os.getpid(), signal.SIGKILL)


enable(os.environ.get(ENV, ""))
