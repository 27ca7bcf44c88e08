"""What ``dicomstore serve`` can be told (:class:`ServerConfig`, see the README).

Its own module, light to import: the command line reads its fields and defaults to
build its options without loading the server, its services or pydicom.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field

from dicomstore import uids
from dicomstore.aio.association import Timeouts
from dicomstore.aio.handoff import Dispatcher
from dicomstore.services.commitment_info import MAX_PENDING, MAX_REFERENCES
from dicomstore.services.destinations import Destination
from dicomstore.services.forward_rules import ForwardRule
from dicomstore.ul.negotiation import (
    DEFAULT_MAX_PDU,
    MAX_PDU_RULE,
    AcceptorPolicy,
    max_pdu_allowed,
)
from dicomstore.vr import ae_title_problem

#: The server's default DIMSE timeout (seconds; ``serve --dimse-timeout``): a peer
#: silent after our request is given up (review36a #3: a C-MOVE destination that never
#: answered held the operation and its slot until the idle timeout).
DIMSE_TIMEOUT = 300.0
#: Bytes a second a message being received must keep up (``--min-receive-rate``).
MIN_RECEIVE_RATE = 500

__all__ = ["ServerConfig"]


@dataclass
class ServerConfig:
    """Everything `dicomstore serve` can be told (see the README)."""

    ae_title: str = "DICOMSTORE"
    host: str = "127.0.0.1"
    port: int = 11112
    max_associations: int = 50
    max_pdu: int = DEFAULT_MAX_PDU
    require_called_aet: bool = False
    allowed_calling_aets: frozenset[str] | None = None
    #: Calling AE titles allowed to C-STORE (None: everyone who may associate).
    store_aets: frozenset[str] | None = None
    transfer_syntaxes: tuple[str, ...] = field(default_factory=uids.transfer_syntaxes)
    #: Of the transfer syntaxes a context proposes and we accept, take the first
    #: proposed (True) instead of the first of ``transfer_syntaxes`` (PS3.8 9.3.3.2).
    prefer_proposed_transfer_syntax: bool = False
    accept_unknown: bool = False
    #: Asynchronous Operations Window granted (PS3.7 D.3.3.3): operations invoked.
    max_ops: int = 16
    #: ``dimse``: how long a response to what we send may take (a C-MOVE's or C-GET's
    #: C-STORE sub-operation, a commitment report, a forwarded instance; DCMTK's -td)
    timeouts: Timeouts = field(
        default_factory=lambda: Timeouts(dimse=DIMSE_TIMEOUT, min_rate=MIN_RECEIVE_RATE)
    )
    shutdown_grace: float = 10.0
    #: TLS (PS3.15 B.9): a server context from :func:`dicomstore.tls.server_context`.
    ssl: ssl.SSLContext | None = None
    #: Simultaneous associations per calling AE title / per peer address (0: no limit).
    max_per_calling_ae: int = 0
    max_per_address: int = 0
    #: Connections that have not sent a complete A-ASSOCIATE-RQ yet (each for at
    #: most the ARTIM timeout): beyond this many, or a quarter of them from one
    #: address, a new connection is closed at once (0: no limit).
    max_pending_connections: int = 256
    #: Largest data set accepted in one C-STORE, in bytes (0: no limit); larger: A700.
    max_instance_bytes: int = 0
    #: Below this many free bytes in the storage, C-STORE answers A700 before writing.
    min_free_bytes: int = 0
    #: After this many admissions refused by the gatekeeper from one address within
    #: ``failed_admission_window`` seconds, that address is refused at once (0: never).
    max_failed_admissions: int = 10
    failed_admission_window: float = 60.0
    #: after this many refused logins of one user name (a passcode refused, from any
    #: address) within the window, that user is refused at once (0: never)
    max_failed_logins_per_user: int = 0
    #: A study is stable (study-complete event) after this many seconds without a
    #: new instance (0: no events); run this command and POST to this URL then.
    stable_age: float = 60.0
    on_stable_exec: str | None = None
    stable_webhook: str | None = None
    #: C-MOVE destinations by AE title (``--move-destination AET=HOST:PORT``).
    move_destinations: tuple[Destination, ...] = ()
    #: Forwarding rules (``--forward``, ``services/forward_rules.py``); a transient
    #: failure is tried again after ``forward_retry_delay`` seconds, doubled per
    #: attempt up to ``forward_retry_max``.
    forward: tuple[ForwardRule, ...] = ()
    forward_retry_delay: float = 5.0
    forward_retry_max: float = 600.0
    #: attempts after which a transient failure fails an entry for good (0: never)
    forward_max_attempts: int = 0
    #: Where Storage Commitment SCUs take a report on a new association, by AE
    #: title (``--commitment-scu AET=HOST:PORT``).
    commitment_scus: tuple[Destination, ...] = ()
    #: Most references in one Storage Commitment request, and requests not yet
    #: reported; beyond, N-ACTION answers 0213.
    max_commitment_references: int = MAX_REFERENCES
    max_pending_commitments: int = MAX_PENDING
    #: ``--workers`` (``aio/handoff.py``): the first process's Dispatcher (it accepts
    #: every connection and passes some on), or a worker's channel from it.
    share: Dispatcher | socket.socket | None = None

    def __post_init__(self) -> None:
        """What the command line's options refuse is refused here too, naming the field
        (review120 F6: a 21-character AE title served, a port of -1 failed at bind);
        a set of AE titles given as one string is refused (F2: ``"STORESCU"`` let in
        its substrings ``"S"``, ``"SCU"``), one of another iterable made a frozenset."""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"ServerConfig.{name}: {why}: {getattr(self, name)!r}")

        problem = ae_title_problem(self.ae_title) if isinstance(self.ae_title, str) else "no str"
        if problem is not None:
            raise bad("ae_title", f"not a valid AE title ({problem})")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise TypeError(f"ServerConfig.port: not an int: {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise bad("port", "not 0 .. 65535")
        if not max_pdu_allowed(self.max_pdu):
            raise bad("max_pdu", f"not {MAX_PDU_RULE}")
        for name in ("allowed_calling_aets", "store_aets"):
            titles = getattr(self, name)
            if isinstance(titles, str | bytes):
                raise TypeError(f"ServerConfig.{name}: a set of AE titles, not one: {titles!r}")
            if titles is not None:
                setattr(self, name, frozenset(titles))
        if isinstance(self.transfer_syntaxes, str):
            raise TypeError(
                f"ServerConfig.transfer_syntaxes: UIDs, not one: {self.transfer_syntaxes!r}"
            )
        unknown = [ts for ts in self.transfer_syntaxes if ts not in uids.transfer_syntaxes()]
        if unknown or not self.transfer_syntaxes:
            raise bad("transfer_syntaxes", f"unknown {unknown}" if unknown else "none")
        if not 0 <= self.max_ops <= 65535:  # (PS3.7 D.3.3.3.1: 16 bits; 0: any number)
            raise bad("max_ops", "not 0 .. 65535")
        for name in ("max_associations", "shutdown_grace", "stable_age", "max_per_calling_ae",
                     "max_per_address",
                     "max_pending_connections", "max_instance_bytes", "min_free_bytes",
                     "max_failed_admissions", "max_failed_logins_per_user",
                     "forward_max_attempts"):  # fmt: skip
            if not getattr(self, name) >= 0:  # (nor NaN)
                raise bad(name, "negative")
        for name in ("failed_admission_window", "forward_retry_delay", "forward_retry_max",
                     "max_commitment_references", "max_pending_commitments"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise bad(name, "not more than 0")

    def policy(self, find: bool = True) -> AcceptorPolicy:
        """The negotiation policy: Verification, every Storage SOP Class and, with
        ``find`` (an archive to query), the Patient and Study Root FIND, MOVE and GET
        models and the Storage Commitment Push Model (we are its SCP); on an
        association with a GET model the requestor may be Storage SCP (PS3.7
        D.3.3.4), for the C-GET sub-operations come back on it."""
        # (here: the SCPs' modules are the server's, not the configuration's)
        from dicomstore.services.qr_classes import (
            COMMITMENT_SOP_CLASSES,
            FIND_SOP_CLASSES,
            GET_SOP_CLASSES,
            MOVE_SOP_CLASSES,
        )
        from dicomstore.services.storage_scp import storage_extended_negotiation

        syntaxes: dict[str, tuple[str, ...]] = {uids.VERIFICATION: uids.UNCOMPRESSED}
        if find:
            qr = (*FIND_SOP_CLASSES, *MOVE_SOP_CLASSES, *GET_SOP_CLASSES)
            for sop_class in (*qr, *COMMITMENT_SOP_CLASSES):
                syntaxes[sop_class] = uids.UNCOMPRESSED
        not_storage = frozenset(syntaxes)
        for sop_class in uids.storage_sop_classes():
            syntaxes[sop_class] = self.transfer_syntaxes
        return AcceptorPolicy(
            ae_title=self.ae_title,
            abstract_syntaxes=syntaxes,
            require_called_aet=self.require_called_aet,
            allowed_calling_aets=self.allowed_calling_aets,
            accept_unknown=self.accept_unknown,
            unknown_transfer_syntaxes=self.transfer_syntaxes,
            max_pdu=self.max_pdu,
            max_ops_invoked=self.max_ops,
            extended_negotiation=storage_extended_negotiation,
            prefer_proposed=self.prefer_proposed_transfer_syntax,
            scu_role_with=frozenset(GET_SOP_CLASSES) if find else frozenset(),
            scp_role_only=not_storage,
        )
