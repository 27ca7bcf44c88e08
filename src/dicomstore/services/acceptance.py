"""Whether an A-ASSOCIATE-RQ is accepted, beyond presentation context negotiation
(PS3.8 9.3.2, 9.3.4): the association limits (rejected as transient) and the
gatekeeper's admission (``admission.py``), throttled per address when it presents a
user identity, with the User Identity response (PS3.7 D.3.3.7).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from dicomstore.errors import RemoteProtocolError
from dicomstore.services.admission import Admission, AdmissionRequest
from dicomstore.tls import peer_subject
from dicomstore.ul import pdu as P
from dicomstore.ul.items import UserIdentityAC, UserIdentityRQ

if TYPE_CHECKING:
    from dicomstore.services.acceptor import AcceptorAssociation
    from dicomstore.services.server import Server
    from dicomstore.ul.negotiation import Negotiated

_CONGESTION = P.AssociateRJ(
    P.REJECT_TRANSIENT, P.REJECT_SOURCE_PRESENTATION, P.REJECT_TEMPORARY_CONGESTION
)
_LOCAL_LIMIT = P.AssociateRJ(
    P.REJECT_TRANSIENT, P.REJECT_SOURCE_PRESENTATION, P.REJECT_LOCAL_LIMIT_EXCEEDED
)

log = logging.getLogger("dicomstore.server")

#: An association idle this long (between messages, no operation of it in progress,
#: nothing owed to us) gives its slot up to a new one when every slot is taken: a peer
#: sending a tiny message once per --idle-timeout held its slot for ever (review96 G1).
EVICT_IDLE = 10.0

#: An A-ASSOCIATE-RJ and why (for the log and the audit).
Rejection = tuple[P.AssociateRJ, str]


def over_limits(
    server: Server, association: AcceptorAssociation, rq: P.AssociateRQ
) -> Rejection | None:
    """Why (and how) to reject for the association limits: the associations
    holding a slot count, not connections still sending their request."""
    config = server.config
    address = association.address
    others = [a for a in server.associations if a is not association and a.holds_slot]
    if len(others) >= config.max_associations:
        idlest = _idlest(others)
        if idlest is None:
            return _CONGESTION, f"{config.max_associations} associations already"
        _give_up_slot(idlest, association, config.max_associations)
        others.remove(idlest)
    if config.max_per_calling_ae and (
        sum(a.request.calling_ae == rq.calling_ae for a in others if a.request is not None)
        >= config.max_per_calling_ae
    ):
        why = f"{config.max_per_calling_ae} associations from {rq.calling_ae} already"
        return _LOCAL_LIMIT, why
    if config.max_per_address and (
        sum(a.address == address for a in others) >= config.max_per_address
    ):
        why = f"{config.max_per_address} associations from {address} already"
        return _LOCAL_LIMIT, why
    return None


def _idlest(others: list[AcceptorAssociation]) -> AcceptorAssociation | None:
    """Of the established associations idle for :data:`EVICT_IDLE` seconds or more, the
    one whose peer sent nothing for longest; None if none is."""
    best, since = None, asyncio.get_running_loop().time() - EVICT_IDLE
    for other in others:
        t = other.t
        if not t.conn.is_established or other.busy or not t.assembler.idle:
            continue
        if t.stream.end != t.stream.start:
            continue  # (bytes of it not yet read: a message may have begun)
        if other.invoker is not None and other.invoker.waiting:
            continue  # (it owes us an answer: its silence is work)
        heard = t.stream.last_received
        if heard <= since:
            best, since = other, heard
    return best


def _give_up_slot(idle: AcceptorAssociation, new: AcceptorAssociation, most: int) -> None:
    """A-ABORT ``idle`` (nothing of it in progress) for ``new``'s sake, logged."""
    quiet = asyncio.get_running_loop().time() - idle.t.stream.last_received
    log.warning(
        "%s: idle for %.0fs, aborted: all %d association slots (--max-associations) are"
        " taken and %s asks for one",
        idle.t.peer,
        quiet,
        most,
        new.t.peer,
    )
    idle.holds_slot = False  # (no longer counted: it ends as soon as it reads the abort)
    stop_now(idle, "idle, its slot given to a new association")


async def admit(
    server: Server,
    rq: P.AssociateRQ,
    answer: P.AssociateAC,
    address: str,
    subject: str | None,
) -> tuple[Admission | None, Rejection | None]:
    """The gatekeeper's :class:`Admission` of the caller (everyone's without one)
    and the rejection when it is refused, or when it presents a user identity and
    ``address`` was refused too often lately (then no admission: the gatekeeper is
    not asked again). An
    admitted identity sets ``answer``'s User Identity response."""
    admission = Admission()
    throttle = server.failed_admissions
    # only a request presenting a user identity is throttled (and counted): one without
    # guesses no secret, and holding it back let wrong HTTP passwords from a shared
    # address stop its modalities (review52 M4); so over HTTP too
    presents = rq.user_info.identity_rq is not None
    if server.gatekeeper is not None:
        user = _user_named(rq.user_info.identity_rq)
        wait = await throttle.attempt(address, user) if presents else None  # (its turn)
        if wait is not None:  # refused without asking the gatekeeper again
            why = f"{throttle.why(address, user)}; next try in {wait:.0f} s"
            return None, (_LOCAL_LIMIT, why)
        # in a thread: verifying a passcode (scrypt) or a token takes milliseconds
        guessed = False  # (a check that raised or was cancelled refused nothing)
        try:
            admission = await asyncio.to_thread(
                server.gatekeeper.admit,
                AdmissionRequest(
                    rq.calling_ae, rq.called_ae, address, subject, rq.user_info.identity_rq
                ),
            )
            guessed = _identity_refused(admission.reject)
        finally:
            # only a refused identity counts (a guess, PS3.7 D.3.3.7): a caller refused
            # for its AE title, address or certificate guessed no secret, and counting it
            # held back every modality behind the same NAT address (review45 M8)
            if presents:
                throttle.done(address, admitted=not guessed, user=user)
    if admission.reject is not None:
        rj = admission.reject
        return admission, (rj, P.describe_reject(rj.result, rj.source, rj.reason))
    identity = rq.user_info.identity_rq
    # PS3.7 D.3.3.7: a positive response only when the identity was checked.
    if (
        identity is not None
        and identity.positive_response_requested
        and admission.identity_response is not None
    ):
        answer.user_info.identity_ac = UserIdentityAC(admission.identity_response)
    return admission, None


def stop_now(assoc: AcceptorAssociation, why: str = "the server stopped") -> None:
    """A-ABORT now (the server stops, or ``why``), an accepted association's outcome
    saying so (not one already released, aborted or rejected)."""
    if assoc.outcome == "accepted":
        assoc.outcome = f"aborted: {why}"
    assoc.t.abort_now()


def association_ended(assoc: AcceptorAssociation) -> None:
    """An association that was accepted ended: one INFO line of how and what it
    stored (review58 L7: only its acceptance was logged), and its audit record; how many
    more lines its peer had repeated than were logged (``repeated.py``)."""
    assoc.repeated.summary(assoc.t.peer)
    early = assoc.t.conn.refused_early
    if assoc.t.negotiated is None and early is not None:  # (review93 F4: no line at all)
        log.info("%s: aborted before an association (A-ABORT sent): %s", assoc.t.peer, early)
        assoc.outcome = f"aborted: {early}"
    if assoc.t.negotiated is not None:
        log.info(
            "%s: association ended (%s): %d stored, %d failed%s",
            assoc.t.peer,
            assoc.outcome,
            assoc.stored,
            assoc.failed,
            f", {assoc.kept} duplicate(s) kept as stored before" if assoc.kept else "",
        )
    audit_association(assoc)


def audit_association(assoc: AcceptorAssociation) -> None:
    """The audit record of an association that ended (with ``--audit-log``): who
    asked, what was accepted, how it ended, what it stored."""
    audit = assoc.server.audit
    if audit is None or assoc.request is None:
        return
    rq, negotiated = assoc.request, assoc.t.negotiated
    contexts = {c.abstract_syntax for c in negotiated.contexts.values()} if negotiated else ()
    record = association_record(assoc.address, assoc.outcome)
    record.update(
        calling_ae=rq.calling_ae,
        called_ae=rq.called_ae,
        tls_subject=peer_subject(assoc.t.writer.get_extra_info("peercert")),
        user=assoc.admission.user if assoc.admission else None,
        contexts_accepted=sorted(contexts),
        stored=assoc.stored,
        failed=assoc.failed,
        kept=assoc.kept,
    )
    audit.association(record)


def association_record(peer: str, outcome: str) -> dict[str, Any]:
    """An association's audit record, its fields in their order, of one that asked for
    nothing and stored nothing: what :func:`audit_association` fills in; a TLS
    handshake refused is one so, ``rejected: TLS handshake: <why>`` (review110 I5)."""
    return {
        "event": "association",
        "peer": peer,
        "calling_ae": None,
        "called_ae": None,
        "tls_subject": None,
        "user": None,
        "contexts_accepted": [],
        "outcome": outcome,
        "stored": 0,
        "failed": 0,
        "kept": 0,
    }


def _identity_refused(reject: P.AssociateRJ | None) -> bool:
    """A rejection for the user identity itself (PS3.7 D.3.3.7.3: permanent or
    transient, service-user, no-reason-given), not for the caller (its AE title,
    address or certificate: *calling AE title not recognized*)."""
    return reject is not None and (reject.source, reject.reason) == (
        P.REJECT_SOURCE_USER,
        P.REJECT_NO_REASON,
    )


def _user_named(identity: UserIdentityRQ | None) -> str | None:
    """The user a username-and-passcode identity names (PS3.7 D.3.3.7.1 type 2), whose
    refusals count toward ``--max-failed-logins-per-user``; else ``None``."""
    if identity is None or identity.identity_type != 2:
        return None
    return identity.primary.decode("utf-8", "replace")


def check_context(negotiated: Negotiated | None, context_id: int) -> None:
    """A PDV may only travel on an accepted presentation context (PS3.8 7.1.1.13,
    9.3.5.1): any other is a protocol error, answered by an A-ABORT (invalid PDU
    parameter value), not by a DIMSE response on a context that does not exist."""
    if negotiated is None or context_id not in negotiated.contexts:
        raise RemoteProtocolError(
            f"a PDV on presentation context {context_id}, which was not accepted",
            P.ABORT_INVALID_PDU_PARAMETER_VALUE,
        )
