"""C-MOVE destinations: the Storage SCPs a C-MOVE may name by AE title (PS3.4 C.4.2.2.1).

A C-MOVE-RQ names its Move Destination (0000,0600) by AE title only; the SCP
must know where that AE listens. ``dicomstore serve --move-destination
AET=HOST:PORT`` (repeatable) and the policy file's ``[destinations.AET]``
sections (``address = "host:port"``) give the table; a title in neither is
answered A801 (Move Destination unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomstore.vr import ae_title_problem


@dataclass(frozen=True, slots=True)
class Destination:
    """A Storage SCP a C-MOVE may send to."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}={host}:{self.port}"


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for an IPv6 address) as ``(host, port)``; ValueError."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def parse_destination(text: str) -> Destination:
    """``AET=HOST:PORT`` as a :class:`Destination`; ValueError saying what is wrong."""
    title, sep, address = text.partition("=")
    title = title.strip()
    if not sep:
        raise ValueError(f"{text!r} is not AET=HOST:PORT")
    return destination(title, address)


def destination(ae_title: str, address: str) -> Destination:
    """A :class:`Destination` from an AE title and ``host:port``; ValueError."""
    problem = ae_title_problem(ae_title)
    if problem is not None:
        raise ValueError(f"{ae_title!r} is not a valid AE title: {problem}")
    host, port = parse_address(address)
    return Destination(ae_title, host, port)
