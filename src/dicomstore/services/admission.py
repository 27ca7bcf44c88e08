"""Who may associate and what they may do: the hooks the server consults.

A :class:`Gatekeeper` decides at A-ASSOCIATE time (PS3.8 7.1.1, user identity
PS3.7 D.3.3.7) and an :class:`AuditSink` hears about every association and
every stored instance.  The server works without either (everyone is
admitted, nothing is audited); :mod:`dicomstore.policy` and
:mod:`dicomstore.audit` provide the configured ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dicomstore.ul.items import UserIdentityRQ
from dicomstore.ul.pdu import AssociateRJ


@dataclass(frozen=True)
class AdmissionRequest:
    """What is known about a caller when its A-ASSOCIATE-RQ arrives."""

    calling_ae: str
    called_ae: str
    address: str  # the peer's IP address
    tls_subject: str | None = None  # the verified client certificate's subject
    identity: UserIdentityRQ | None = None  # user identity negotiation, if any


@dataclass(frozen=True)
class Admission:
    """The gatekeeper's answer.

    ``reject`` set: the association is refused with it.  Otherwise
    ``may_echo``/``may_store``/``may_find``/``may_move``/``may_get``/``may_commit``
    say what the caller may do (a refused C-STORE, C-FIND, C-MOVE, C-GET or
    Storage Commitment N-ACTION gets 0124),
    ``move_to`` the Move Destinations it may name (None: every configured one;
    another gets 0124), ``identity_response`` is the server response of a positive
    user identity answer (PS3.7 D.3.3.7.2) when the requestor asked for one,
    and ``user`` names the authenticated user for the log and audit trail.
    """

    reject: AssociateRJ | None = None
    may_echo: bool = True
    may_store: bool = True
    may_find: bool = True
    may_move: bool = True
    move_to: frozenset[str] | None = None
    may_get: bool = True
    may_commit: bool = True
    identity_response: bytes | None = None
    user: str | None = None


class Gatekeeper(Protocol):
    """Decides admissions (e.g. :class:`dicomstore.policy.Policy`)."""

    def admit(self, request: AdmissionRequest) -> Admission: ...


class AuditSink(Protocol):
    """Receives audit records (e.g. :class:`dicomstore.audit.AuditLog`).

    Called on the event loop: implementations must be quick (a buffered write).
    """

    def association(self, record: dict[str, Any]) -> None: ...

    def instance(self, record: dict[str, Any]) -> None: ...


class FailedAdmissions:
    """Refused admissions per peer address, to slow down guessing passcodes (PS3.7 D.3.3.7).

    A gatekeeper that checks passcodes or tokens can be asked again and again;
    after ``limit`` refusals from one address within ``window`` seconds, that
    address is :meth:`blocked` — refused at once, without asking the gatekeeper
    (no scrypt, no token check) — until its oldest refusal in the window
    expires. A check begins with :meth:`attempt` and ends with :meth:`done`:
    checks of one address at once are at most as many as refusals it has left,
    the others wait their turn (so a burst of guesses gets no more than
    ``limit`` checks, and a burst of good credentials all get in, one batch
    after another); an admission does not clear the address's refusals (a
    caller's own login between guesses must not reset their count: review35a
    F4). An IPv4-mapped IPv6 address counts as its IPv4 one; an IPv6 address counts
    alone (one host's refusals must not lock out its LAN: review39 #5) and in its /64,
    which is blocked at :data:`NETWORK_FACTOR` times the limit (a host may use any
    address of its /64: review40 #10). At most
    ``max_addresses`` addresses are remembered (the one refused longest ago is
    forgotten first), so memory stays bounded whatever the number of callers.
    ``limit`` 0 disables the throttle.

    ``user_limit`` (0: off; ``--max-failed-logins-per-user``) counts refusals per user
    name too, from every address (:attr:`users`, the same rules): past it that
    user's credentials are refused at once, good ones too, until the oldest refusal
    leaves the window — a temporary lockout (Keycloak's), against guessers with
    many addresses, which lets anyone who knows a user name lock that user out for
    the window: hence off unless asked for. On the event loop, in memory: each
    process of ``serve --workers`` counts its own (N processes: up to N times the
    limit checked; README, review52 L1).
    """

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        user_limit: int = 0,
    ) -> None:
        if limit < 0 or window <= 0 or user_limit < 0:
            raise ValueError("limits must be >= 0 and window > 0")
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        #: the refusals of each user name, from any address (``user_limit``; 0: none)
        self.users: FailedAdmissions | None = None
        if user_limit:
            self.users = FailedAdmissions(
                user_limit, window, max_addresses=max_addresses, clock=clock
            )
        self._refused: OrderedDict[str, deque[float]] = OrderedDict()
        #: checks running, and those waiting for their turn, per address
        self._checking: dict[str, int] = {}
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}

    async def attempt(self, address: str, user: str | None = None) -> float | None:
        """A check of ``address``'s credentials (for ``user``, when named) may begin
        (``None``; then call :meth:`done` with the same arguments), perhaps after others
        of it (of the user's) have ended; or the seconds until it may try again: the
        address's, or the user's (:meth:`blocked`)."""
        wait = await self._attempt(address)
        users = self.users
        if wait is not None or user is None or users is None:
            return wait
        try:
            wait = await users._attempt(_user_key(user))
        except BaseException:  # (cancelled waiting its turn: the address's given back)
            self.done(address, admitted=True)
            raise
        if wait is not None:  # (its turn given back: nothing was checked)
            self.done(address, admitted=True)
        return wait

    async def _attempt(self, address: str) -> float | None:
        if not self.limit:
            return None
        address = counted_as(address)
        while True:
            wait = self.blocked(address)
            if wait is not None:
                return wait
            left = self.limit - len(self._recent(address, self._clock()) or ())
            running = self._checking.get(address, 0)
            if running < left:
                self._checking[address] = running + 1
                return None
            turn = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(address, []).append(turn)
            await turn

    def done(self, address: str, *, admitted: bool, user: str | None = None) -> None:
        """A check that :meth:`attempt` let begin has ended: ``admitted``, or refused (a
        refusal counts for the address and, when named, the user)."""
        if user is not None and self.users is not None:
            self.users.done(_user_key(user), admitted=admitted)
        if not self.limit:
            return
        address = counted_as(address)
        running = self._checking.pop(address, 0) - 1
        if running > 0:
            self._checking[address] = running
        if not admitted:
            self._refuse(address)
        for turn in self._waiting.pop(address, ()):
            if not turn.done():
                turn.set_result(None)

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._refused.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._refused[address]
            return None
        return times

    def blocked(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or ``None`` when it may now: its own
        refusals, or its IPv6 /64's, :data:`NETWORK_FACTOR` times as many (a host may
        use any address of its /64: review40 #10; one host must not lock out its LAN)."""
        if not self.limit:
            return None
        now, address = self._clock(), counted_as(address)
        waits = []
        for key, most in ((address, self.limit), (_network(address), self._network_limit)):
            times = self._recent(key, now) if key is not None else None
            if times is not None and len(times) >= most:
                waits.append(times[-most] + self.window - now)
        return max(waits) if waits else None

    def why(self, address: str, user: str | None = None) -> str:
        """What :meth:`attempt` refused for: ``user``'s refusals (any address), or
        ``address``'s."""
        users = self.users
        if user is not None and users is not None and users.blocked(_user_key(user)):
            return f"{users.limit} refused logins of user {user!r} within {self.window:g} s"
        return f"{self.limit} refused admissions from {address} within {self.window:g} s"

    @property
    def _network_limit(self) -> int:
        return self.limit * NETWORK_FACTOR

    def _refuse(self, address: str) -> None:
        now = self._clock()
        self._record(address, now, self.limit)
        network = _network(address)
        if network is not None:
            self._record(network, now, self._network_limit)

    def _record(self, key: str, now: float, most: int) -> None:
        times = self._recent(key, now)
        if times is None:
            times = self._refused[key] = deque(maxlen=most)
            while len(self._refused) > self.max_addresses:
                self._refused.popitem(last=False)
        else:
            self._refused.move_to_end(key)
        times.append(now)


def _user_key(user: str) -> str:
    """A user name's key among the refusals (never an address: ``counted_as``)."""
    return "user:" + user


def counted_as(address: str) -> str:
    """The key refusals of ``address`` count under: itself, an IPv4-mapped IPv6
    address as its IPv4 address (a dual-stack listener sees both forms)."""
    if ":" not in address:
        return address
    try:
        mapped = ipaddress.IPv6Address(address.split("%")[0]).ipv4_mapped
    except ValueError:
        return address
    return str(mapped) if mapped is not None else address


#: An IPv6 /64 may be refused this many times the limit of one address.
NETWORK_FACTOR = 10


def _network(address: str) -> str | None:
    """The /64 of an IPv6 address (None for IPv4 or what is no address)."""
    if ":" not in address:
        return None
    try:
        ip = ipaddress.IPv6Address(address.split("%")[0])
    except ValueError:
        return None
    return str(ipaddress.IPv6Network((ip, 64), strict=False))
