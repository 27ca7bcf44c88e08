"""One log line per instance a peer asked us to store, by C-STORE or STOW-RS.

Operators see failures: a Failure or Warning status (PS3.7 Annex C, PS3.4
B.2.3) is logged at WARNING with the status in hex, its Error Comment, who
sent it (the calling AE title for C-STORE, the HTTP client address for
STOW-RS) and the SOP Instance UID; a Success is logged at DEBUG only. One
format for both services, on the ``dicomstore.storage`` logger, e.g.::

    C-STORE of 1.2.3.4 from CT1: status C111 (failure): Duplicate SOP Instance refused: ...
    STOW-RS of 1.2.3.5 from 10.0.0.7:51234: status A900 (failure): Study Instance UID missing ...
"""

from __future__ import annotations

import logging
from typing import Any

from dicomstore import status as st

log = logging.getLogger("dicomstore.storage")


def log_store(
    service: str,
    caller: str,
    sop_instance_uid: str | None,
    status: int,
    comment: str | None,
    repeated: Any = None,
) -> None:
    """Log the outcome of storing one instance (WARNING unless ``status`` is 0000).

    ``service`` is ``"C-STORE"`` or ``"STOW-RS"``; ``comment`` is the full Error
    Comment (the one sent may be cut to 64 characters).
    """
    level = logging.DEBUG if status == st.SUCCESS else logging.WARNING
    if not log.isEnabledFor(level):
        return
    line = store_line(service, caller, sop_instance_uid, status, comment)
    if status and repeated is not None:  # (a request's many parts: the first few, review87 F4)
        repeated.say(level, "refused parts", "", line)
    else:
        log.log(level, "%s", line)


def store_line(
    service: str, caller: str, sop_instance_uid: str | None, status: int, comment: str | None
) -> str:
    """:func:`log_store`'s line."""
    uid = sop_instance_uid or "an unidentified instance"
    said = f": {comment}" if comment else ""
    who = caller or "an unknown caller"
    return f"{service} of {uid} from {who}: status {status:04X} ({st.category(status)}){said}"
