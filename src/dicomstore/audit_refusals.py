"""How many refused associations the audit trail records one by one (review113 I2).

Every association refused (its A-ASSOCIATE-RQ rejected, its TLS handshake refused:
outcome ``rejected: ...``) is an audit record (PS3.15 A.5.3.11 *Security Alert*).
A client that can reach the port, and nothing more, could grow the audit trail
without bound by asking again and again. So, per peer address and outcome, the
first :data:`PER_WINDOW` refusals of each :data:`WINDOW` seconds are recorded one by
one; those after them in that window are counted, and one record says how many
there were when the window ends (or the log closes)::

    {"time": "...", "event": "suppressed", "of": "association", "peer": "10.1.2.3",
     "outcome": "rejected: calling AE title not recognized", "records": 4711,
     "first": "2026-...Z", "last": "2026-...Z"}

Beyond :data:`MAX_KEYS` addresses and outcomes at once, further refusals share the
peer ``"(other addresses)"`` and the outcome ``"rejected"``: memory is bounded
whatever the peers do. Sans-I/O:
the caller gives the time and writes what it is given (:class:`dicomstore.audit.AuditLog`,
under its lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: refusals recorded one by one per address and outcome in a window
PER_WINDOW = 10
#: seconds of a window
WINDOW = 60.0
#: addresses (with outcome) followed at once
MAX_KEYS = 1024
OTHERS = "(other addresses)"


@dataclass(slots=True)
class _Window:
    began: float
    recorded: int = 0
    suppressed: int = 0
    first: str = ""
    last: str = ""


class RefusalDigest:
    """Which refusal records to write, and the ``suppressed`` records that are due."""

    def __init__(
        self, per_window: int = PER_WINDOW, window: float = WINDOW, max_keys: int = MAX_KEYS
    ) -> None:
        self.per_window, self.window, self.max_keys = per_window, window, max_keys
        self._windows: dict[tuple[str, str], _Window] = {}
        self._next_end = float("inf")  # (the windows are looked over only once one ended)

    def admit(self, record: dict[str, Any], now: float, stamp: str) -> list[dict[str, Any]]:
        """The records to write for ``record`` (an association's): the ``suppressed``
        ones due, then ``record`` itself, unless it is a refusal past the first
        :attr:`per_window` of its window, counted instead (``stamp``: its time)."""
        out = self.due(now)
        outcome = record.get("outcome")
        if not isinstance(outcome, str) or not outcome.startswith("rejected"):
            return [*out, record]
        key = (str(record.get("peer")), outcome)
        if key not in self._windows and len(self._windows) >= self.max_keys:
            key = (OTHERS, "rejected")  # (one more key, whatever the peers send)
        window = self._windows.get(key)
        if window is None or now - window.began >= self.window:
            window = self._windows[key] = _Window(now)
            self._next_end = min(self._next_end, now + self.window)
        if window.recorded < self.per_window:
            window.recorded += 1
            return [*out, record]
        window.suppressed += 1
        window.first = window.first or stamp
        window.last = stamp
        return out

    def next_due(self, now: float) -> float | None:
        """Seconds until the next summary is due (0: now), None if none will be."""
        waiting = [w.began + self.window for w in self._windows.values() if w.suppressed]
        return max(0.0, min(waiting) - now) if waiting else None

    def due(self, now: float, *, every: bool = False) -> list[dict[str, Any]]:
        """The ``suppressed`` records of the windows ended (``every``: of all); the
        windows ended are let go."""
        if now < self._next_end and not every:
            return []
        out = []
        for (peer, outcome), w in list(self._windows.items()):
            ended = now - w.began >= self.window
            if w.suppressed and (every or ended):
                out.append(
                    {
                        "event": "suppressed",
                        "of": "association",
                        "peer": peer,
                        "outcome": outcome,
                        "records": w.suppressed,
                        "first": w.first,
                        "last": w.last,
                    }
                )
                w.suppressed, w.first, w.last = 0, "", ""
            if ended:
                del self._windows[(peer, outcome)]
        ends = [w.began + self.window for w in self._windows.values()]
        self._next_end = min(ends, default=float("inf"))
        return out
