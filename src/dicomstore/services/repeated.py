"""Log lines a peer can make the server repeat at will (PS3.7 9.3.2.3: a C-CANCEL-RQ
for an operation not in progress needs no answer; a response to no request of ours;
a message no service takes; a C-ECHO refused): the first :data:`FIRST` of each kind
per association, the rest counted and said in one line when it ends (review68 #4:
200,000 stray C-CANCEL-RQs wrote 24.6 MB of log, one line each)."""

from __future__ import annotations

import logging

#: Lines of one kind logged per association before the rest are only counted.
FIRST = 3


class Repeated:
    """The repeatable lines of one association's peer (or of one request's)."""

    def __init__(self, log: logging.Logger, unit: str = "association") -> None:
        self.log, self.unit = log, unit  # (unit: what ends, e.g. a STOW-RS request)
        self._counts: dict[str, list[int]] = {}  # kind -> [count, level]

    def say(self, level: int, kind: str, peer: str, text: str) -> None:
        """Log ``peer: text`` (a line of ``kind``; ``text`` as is, never a format)
        unless :data:`FIRST` of that kind were logged already; the last one logged
        says the rest will be counted."""
        counted = self._counts.setdefault(kind, [0, level])
        counted[0] += 1
        said = f"{peer}: {text}" if peer else text  # (no peer: the text names it)
        if counted[0] < FIRST:
            self.log.log(level, "%s", said)
        elif counted[0] == FIRST:
            more = f" (more of these: counted, said when the {self.unit} ends)"
            self.log.log(level, "%s%s", said, more)

    def summary(self, peer: str) -> None:
        """One line per kind of which more were counted than logged (at its level)."""
        for kind, (count, level) in self._counts.items():
            if count > FIRST:
                self.log.log(level, "%s: %d more %s, not logged each", peer, count - FIRST, kind)
