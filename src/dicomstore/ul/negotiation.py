"""Association negotiation, as acceptor and as requestor (PS3.8 7.1, PS3.7 D.3).

Pure functions: an A-ASSOCIATE-RQ and an :class:`AcceptorPolicy` give an
A-ASSOCIATE-AC or -RJ plus the :class:`Negotiated` result; a requestor turns
its RQ and the peer's AC into the same :class:`Negotiated` view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dicomstore import uids
from dicomstore.ul import items as I
from dicomstore.ul import pdu as P
from dicomstore.vr import ae_title_problem

#: Our default maximum P-DATA-TF length (PS3.8 D.1); large PDUs cost less per byte.
DEFAULT_MAX_PDU = 1024 * 1024
#: What a maximum length we receive may be set to (PS3.8 D.1: 0 is unlimited; below
#: 4096 is a peer's floor, not ours; a 32-bit number).
MAX_PDU_RULE = "0 (unlimited) or 4096 .. 4294967295"


def max_pdu_allowed(n: int) -> bool:
    """Whether ``n`` may be our maximum length received (:data:`MAX_PDU_RULE`)."""
    return n == 0 or 4096 <= n <= 2**32 - 1


@dataclass(frozen=True)
class AcceptedContext:
    """A presentation context accepted for use on the association."""

    id: int
    abstract_syntax: str
    transfer_syntax: str
    scu_role: bool = True  # the requestor may act as SCU
    scp_role: bool = False  # the requestor may act as SCP


@dataclass
class Negotiated:
    """What both ends agreed on (the parts a DIMSE user needs)."""

    calling_ae: str
    called_ae: str
    contexts: dict[int, AcceptedContext]
    peer_max_pdu: int  # 0 = unlimited
    peer_implementation_class_uid: str | None = None
    peer_implementation_version_name: str | None = None
    #: Operations the requestor may have outstanding (0 = unlimited), PS3.7 D.3.3.3.
    max_ops_invoked: int = 1
    max_ops_performed: int = 1
    extended: dict[str, bytes] = field(default_factory=dict)
    identity: I.UserIdentityRQ | None = None
    #: the requestor's: contexts the acceptor answered "accepted" with a transfer
    #: syntax not proposed for them, left out (PS3.8 9.3.3.2), each said in words
    ignored: list[str] = field(default_factory=list)
    #: the requestor's: abstract syntaxes no context was accepted for, and the result
    #: the acceptor gave (PS3.8 Table 9-18; "abstract syntax not supported" wins)
    refused: dict[str, int] = field(default_factory=dict)

    def context_for(
        self, abstract_syntax: str, transfer_syntax: str | None = None
    ) -> AcceptedContext | None:
        """The first accepted context for an abstract syntax (and transfer syntax)."""
        for ctx in self.contexts.values():
            if ctx.abstract_syntax == abstract_syntax and (
                transfer_syntax is None or ctx.transfer_syntax == transfer_syntax
            ):
                return ctx
        return None


ExtendedAnswer = Callable[[str, bytes], bytes | None]


@dataclass
class AcceptorPolicy:
    """What an acceptor accepts (PS3.8 7.1.1, PS3.7 D.3.3).

    ``abstract_syntaxes`` maps each supported abstract syntax to its transfer
    syntaxes in order of preference.  ``accept_unknown`` accepts any other
    abstract syntax with ``unknown_transfer_syntaxes`` (private or newer
    storage classes).  ``allowed_calling_aets`` None means anyone.
    """

    ae_title: str = "DICOMSTORE"
    abstract_syntaxes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    require_called_aet: bool = False
    allowed_calling_aets: frozenset[str] | None = None
    accept_unknown: bool = False
    unknown_transfer_syntaxes: tuple[str, ...] = uids.UNCOMPRESSED
    max_pdu: int = DEFAULT_MAX_PDU
    max_ops_invoked: int = 1  # how many operations we let the requestor have outstanding
    extended_negotiation: ExtendedAnswer | None = None
    #: Specialized SOP class -> whether accepted through its related general class.
    common_extended: bool = True
    #: Choose the requestor's first proposed transfer syntax that we accept (an
    #: archive keeping what a modality sends compressed), not our first.
    prefer_proposed: bool = False
    #: Abstract syntaxes (the Q/R GET models) whose acceptance lets us act as SCU
    #: too: the requestor proposing the SCP role for another class (a Storage SOP
    #: Class, whose C-STORE sub-operations go out on the same association, PS3.4
    #: C.4.3) gets it, on that association only (PS3.7 D.3.3.4).
    scu_role_with: frozenset[str] = frozenset()
    #: Abstract syntaxes we never act as SCU of (Verification, the Q/R models).
    scp_role_only: frozenset[str] = frozenset()
    #: Abstract syntaxes whose SCP role the requestor gets whenever it proposes
    #: it, we being their SCU (a Storage Commitment SCU taking the SCP's report on
    #: an association the SCP requests, PS3.4 J.3.3).
    scp_role_for: frozenset[str] = frozenset()


def _min_window(theirs: int, ours: int) -> int:
    """min() where 0 means unlimited (PS3.7 D.3.3.3)."""
    if theirs == 0:
        return ours
    if ours == 0:
        return theirs
    return min(theirs, ours)


def our_user_information(max_pdu: int) -> I.UserInformation:
    """The user information sub-items every association of ours carries."""
    return I.UserInformation(
        max_length=max_pdu,
        implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
        implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
    )


def check_request(rq: P.AssociateRQ, policy: AcceptorPolicy) -> P.AssociateRJ | None:
    """The A-ASSOCIATE-RJ the request deserves, if any (PS3.8 9.3.4)."""
    if rq.application_context != P.APPLICATION_CONTEXT_NAME:
        return P.AssociateRJ(
            P.REJECT_PERMANENT, P.REJECT_SOURCE_USER, P.REJECT_APPLICATION_CONTEXT_NOT_SUPPORTED
        )
    if _title_problem(rq.calling_ae) is not None:  # (none would go back in our AC)
        return P.AssociateRJ(
            P.REJECT_PERMANENT, P.REJECT_SOURCE_USER, P.REJECT_CALLING_AE_NOT_RECOGNIZED
        )
    if _title_problem(rq.called_ae) is not None:
        return P.AssociateRJ(
            P.REJECT_PERMANENT, P.REJECT_SOURCE_USER, P.REJECT_CALLED_AE_NOT_RECOGNIZED
        )
    if policy.require_called_aet and rq.called_ae != policy.ae_title:
        return P.AssociateRJ(
            P.REJECT_PERMANENT, P.REJECT_SOURCE_USER, P.REJECT_CALLED_AE_NOT_RECOGNIZED
        )
    if policy.allowed_calling_aets is not None and rq.calling_ae not in policy.allowed_calling_aets:
        return P.AssociateRJ(
            P.REJECT_PERMANENT, P.REJECT_SOURCE_USER, P.REJECT_CALLING_AE_NOT_RECOGNIZED
        )
    if too_short(rq) or contexts_problem(rq):
        return P.AssociateRJ(P.REJECT_PERMANENT, P.REJECT_SOURCE_ACSE, P.REJECT_NO_REASON)
    return None


def contexts_problem(rq: P.AssociateRQ) -> str | None:
    """Why the presentation context items of ``rq`` cannot be answered, if they cannot:
    one or more (PS3.8 9.3.2), each ID an odd integer 1-255 (9.3.2.2), unique
    (7.1.1.13). An AC could answer no such item without repeating the fault."""
    ids = [pc.id for pc in rq.presentation_contexts]
    if not ids:
        return "it proposes no presentation context (PS3.8 9.3.2: one or more)"
    bad = [i for i in ids if not (1 <= i <= 255 and i & 1)]
    if bad:
        return f"presentation context ID {min(bad)} is not an odd integer 1-255 (PS3.8 9.3.2.2)"
    seen: set[int] = set()
    for i in ids:
        if i in seen:
            return f"presentation context ID {i} is proposed more than once (PS3.8 7.1.1.13)"
        seen.add(i)
    return None


def _title_problem(title: str) -> str | None:
    """Why ``title`` is no AE title: PS3.8 Table 9-11 (not 16 spaces), PS3.5 AE."""
    problem = ae_title_problem(title)
    return None if problem is None else f"{title!r} is no AE title ({problem}; PS3.8 9.3.2)"


def rejection_words(rq: P.AssociateRQ, rj: P.AssociateRJ) -> str:
    """Why ``rj`` answers ``rq``, for the log: what the RJ says (PS3.8 Table 9-21),
    and the detail it cannot carry (an AE title that is none, a Maximum Length)."""
    why = P.describe_reject(rj.result, rj.source, rj.reason)
    detail = None
    if rj.source == P.REJECT_SOURCE_ACSE:
        detail = too_short(rq) or contexts_problem(rq)
    elif rj.reason == P.REJECT_CALLING_AE_NOT_RECOGNIZED:
        detail = _title_problem(rq.calling_ae)
    elif rj.reason == P.REJECT_CALLED_AE_NOT_RECOGNIZED:
        detail = _title_problem(rq.called_ae)
    if detail is None:
        return why
    return detail if rj.source == P.REJECT_SOURCE_ACSE else f"{why}: {detail}"


#: The least Maximum Length Received that carries a PDV with data (PS3.8 D.1, E.1:
#: the PDV item's header, then an even length of at least 2).
LEAST_MAX_LENGTH = P.PDV_OVERHEAD + 2


def too_short(pdu: P.AssociateRQ | P.AssociateAC) -> str | None:
    """Why the peer's Maximum Length Received cannot be honoured, if it cannot."""
    length = pdu.user_info.max_length or 0
    if 0 < length < LEAST_MAX_LENGTH:
        return f"its Maximum Length Received, {length}, leaves no room for a PDV (PS3.8 D.1)"
    return None


def _supported_transfer_syntaxes(
    abstract: str, rq: P.AssociateRQ, policy: AcceptorPolicy
) -> tuple[str, ...] | None:
    wanted = policy.abstract_syntaxes.get(abstract)
    if wanted is not None:
        return wanted
    if policy.common_extended:
        for com in rq.user_info.common_extended:
            if com.sop_class_uid == abstract:
                for general in com.related_general_sop_classes:
                    if general in policy.abstract_syntaxes:
                        return policy.abstract_syntaxes[general]
    if policy.accept_unknown and abstract != uids.VERIFICATION:
        return policy.unknown_transfer_syntaxes
    return None


def _granted(
    asked: I.RoleSelection | None, policy: AcceptorPolicy, may_be_scu: bool
) -> tuple[bool, bool]:
    """The requestor's roles (SCU, SCP) for one abstract syntax (PS3.7 D.3.3.4).

    No role item: SCU (the default). Else each role proposed (1) is accepted by
    returning 1 or turned down by returning 0, and one not proposed is never
    returned as 1: the SCU role always (we are SCP of what we accept), the SCP
    role only where we act as SCU: on an association with a GET model
    (``may_be_scu``) for a class not in ``policy.scp_role_only``, or for a class
    of ``policy.scp_role_for``.
    """
    if asked is None:
        return True, False
    cls = asked.sop_class_uid
    we_are_scu = (may_be_scu and cls not in policy.scp_role_only) or cls in policy.scp_role_for
    return asked.scu_role, asked.scp_role and we_are_scu


def negotiate(
    rq: P.AssociateRQ, policy: AcceptorPolicy
) -> tuple[P.AssociateAC | P.AssociateRJ, Negotiated | None]:
    """Answer an A-ASSOCIATE-RQ as acceptor: the AC (or RJ) and the agreement."""
    rj = check_request(rq, policy)
    if rj is not None:
        return rj, None
    requested_roles = {r.sop_class_uid: r for r in rq.user_info.roles}
    chosen: dict[int, str] = {}
    refused: dict[int, int] = {}
    for pc in rq.presentation_contexts:
        offered = _supported_transfer_syntaxes(pc.abstract_syntax, rq, policy)
        if offered is None:
            refused[pc.id] = I.ABSTRACT_SYNTAX_NOT_SUPPORTED
            continue
        if policy.prefer_proposed:
            ts = next((ts for ts in pc.transfer_syntaxes if ts in offered), None)
        else:
            ts = next((ts for ts in offered if ts in pc.transfer_syntaxes), None)
        if ts is None:
            refused[pc.id] = I.TRANSFER_SYNTAXES_NOT_SUPPORTED
        else:
            chosen[pc.id] = ts
    may_be_scu = any(
        pc.abstract_syntax in policy.scu_role_with
        and _granted(requested_roles.get(pc.abstract_syntax), policy, False)[0]
        for pc in rq.presentation_contexts
        if pc.id in chosen
    )
    results: list[I.PresentationContextAC] = []
    accepted: dict[int, AcceptedContext] = {}
    roles: dict[str, I.RoleSelection] = {}
    for pc in rq.presentation_contexts:
        if pc.id in refused:
            results.append(I.PresentationContextAC(pc.id, refused[pc.id], pc.transfer_syntaxes[0]))
            continue
        ts = chosen[pc.id]
        asked = requested_roles.get(pc.abstract_syntax)
        scu_role, scp_role = _granted(asked, policy, may_be_scu)
        if asked is not None:
            roles[pc.abstract_syntax] = I.RoleSelection(pc.abstract_syntax, scu_role, scp_role)
        if not (scu_role or scp_role):  # no role left to play on it
            results.append(I.PresentationContextAC(pc.id, I.USER_REJECTION, ts))
            continue
        results.append(I.PresentationContextAC(pc.id, I.ACCEPTANCE, ts))
        accepted[pc.id] = AcceptedContext(pc.id, pc.abstract_syntax, ts, scu_role, scp_role)

    user = our_user_information(policy.max_pdu)
    user.roles = list(roles.values())
    invoked = performed = 1
    if rq.user_info.async_ops is not None:
        invoked = _min_window(rq.user_info.async_ops[0], policy.max_ops_invoked)
        performed = 1
        user.async_ops = (invoked, performed)
    extended = _extended_answers(rq, policy, {c.abstract_syntax for c in accepted.values()})
    user.extended = [I.SOPClassExtended(uid, answer) for uid, answer in extended.items()]
    try:
        I.encode_user_information(user)
    except ValueError:  # over an item's 65535 bytes: answers left out mean "not supported"
        user.extended, extended = [], {}
    ac = P.AssociateAC(
        called_ae=rq.called_ae,
        calling_ae=rq.calling_ae,
        presentation_contexts=results,
        user_info=user,
    )
    negotiated = Negotiated(
        calling_ae=rq.calling_ae,
        called_ae=rq.called_ae,
        contexts=accepted,
        peer_max_pdu=rq.user_info.max_length or 0,
        peer_implementation_class_uid=rq.user_info.implementation_class_uid,
        peer_implementation_version_name=rq.user_info.implementation_version_name,
        max_ops_invoked=invoked,
        max_ops_performed=performed,
        extended=extended,
        identity=rq.user_info.identity_rq,
    )
    return ac, negotiated


def _extended_answers(
    rq: P.AssociateRQ, policy: AcceptorPolicy, accepted: set[str]
) -> dict[str, bytes]:
    """Our SOP Class Extended Negotiation answers (PS3.7 D.3.3.5): one per accepted
    class that has one, to its first sub-item (a repeated one is not answered again)."""
    answers: dict[str, bytes] = {}
    if policy.extended_negotiation is None:
        return answers
    asked: set[str] = set()
    for ext in rq.user_info.extended:
        if ext.sop_class_uid in accepted and ext.sop_class_uid not in asked:
            asked.add(ext.sop_class_uid)
            answer = policy.extended_negotiation(ext.sop_class_uid, ext.info)
            if answer is not None:
                answers[ext.sop_class_uid] = answer
    return answers


def requested(rq: P.AssociateRQ, ac: P.AssociateAC) -> Negotiated:
    """The requestor's view of an accepted association (PS3.8 7.1.1.13)."""
    proposed = {pc.id: pc for pc in rq.presentation_contexts}
    roles = {r.sop_class_uid: r for r in ac.user_info.roles}
    proposed_roles = {r.sop_class_uid: r for r in rq.user_info.roles}
    contexts: dict[int, AcceptedContext] = {}
    ignored = []
    refused: dict[str, int] = {}
    for result in ac.presentation_contexts:
        pc = proposed.get(result.id)
        if pc is None:
            continue
        if result.result != I.ACCEPTANCE:
            if refused.get(pc.abstract_syntax) != I.ABSTRACT_SYNTAX_NOT_SUPPORTED:
                refused[pc.abstract_syntax] = result.result
            continue
        if result.transfer_syntax not in pc.transfer_syntaxes:  # (review38scu #9)
            ignored.append(
                f"context {pc.id} ({pc.abstract_syntax}) accepted with"
                f" {result.transfer_syntax!r}, which we did not propose for it"
            )
            continue
        role, asked = roles.get(pc.abstract_syntax), proposed_roles.get(pc.abstract_syntax)
        scu, scp = True, False
        if role is not None and asked is not None:  # a role not proposed is never granted
            scu, scp = role.scu_role and asked.scu_role, role.scp_role and asked.scp_role
        contexts[pc.id] = AcceptedContext(
            pc.id, pc.abstract_syntax, result.transfer_syntax, scu, scp
        )
    window = ac.user_info.async_ops or (1, 1)
    taken = {c.abstract_syntax for c in contexts.values()}
    return Negotiated(
        calling_ae=rq.calling_ae,
        called_ae=rq.called_ae,
        contexts=contexts,
        peer_max_pdu=ac.user_info.max_length or 0,
        peer_implementation_class_uid=ac.user_info.implementation_class_uid,
        peer_implementation_version_name=ac.user_info.implementation_version_name,
        max_ops_invoked=window[0],
        max_ops_performed=window[1],
        extended={e.sop_class_uid: e.info for e in ac.user_info.extended},
        ignored=ignored,
        refused={a: r for a, r in refused.items() if a not in taken},
    )


REFUSAL = {
    I.USER_REJECTION: "user rejection",
    I.NO_REASON: "no reason",
    I.ABSTRACT_SYNTAX_NOT_SUPPORTED: "abstract syntax not supported",
    I.TRANSFER_SYNTAXES_NOT_SUPPORTED: "none of its transfer syntaxes supported",
}


def describe_refused(rq: P.AssociateRQ, ac: P.AssociateAC, limit: int = 8) -> str | None:
    """The presentation contexts ``ac`` refuses, by name and reason (PS3.8 Table 9-18),
    for the log; ``None`` when all were accepted. At most ``limit`` are named."""
    proposed = {pc.id: pc for pc in rq.presentation_contexts}
    refused = []
    for pc in ac.presentation_contexts:
        if pc.result == I.ACCEPTANCE or pc.id not in proposed:
            continue
        asked = proposed[pc.id]
        why = REFUSAL.get(pc.result, f"result {pc.result}")
        if pc.result == I.TRANSFER_SYNTAXES_NOT_SUPPORTED:
            why += ": " + ", ".join(uids.uid_name(ts) for ts in asked.transfer_syntaxes)
        refused.append(f"{uids.uid_name(asked.abstract_syntax)} ({why})")
    if not refused:
        return None
    more = f"; and {len(refused) - limit} more" if len(refused) > limit else ""
    return "; ".join(refused[:limit]) + more
