"""Who may associate and what they may do: the hooks the server consults.

A :class:`Gatekeeper` decides at A-ASSOCIATE time (PS3.8 7.1.1, user identity
PS3.7 D.3.3.7) and an :class:`AuditSink` hears about every association and
every stored instance.  The server works without either (everyone is
admitted, nothing is audited); :mod:`dicomstore.policy` and
:mod:`dicomstore.audit` provide the configured ones.
"""

from __future__ import annotations

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
    ``may_echo``/``may_store`` say what the caller may do (a refused C-STORE
    gets 0124), ``identity_response`` is the server response of a positive
    user identity answer (PS3.7 D.3.3.7.2) when the requestor asked for one,
    and ``user`` names the authenticated user for the log and audit trail.
    """

    reject: AssociateRJ | None = None
    may_echo: bool = True
    may_store: bool = True
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
