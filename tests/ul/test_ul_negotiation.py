"""Association negotiation (PS3.8 7.1, 9.3.4; PS3.7 D.3.3), as acceptor and requestor."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ul_vectors import read_pdus

from dicomstore import uids
from dicomstore.ul import items as I
from dicomstore.ul import pdu as P
from dicomstore.ul.negotiation import (
    DEFAULT_MAX_PDU,
    LEAST_MAX_LENGTH,
    AcceptedContext,
    AcceptorPolicy,
    Negotiated,
    describe_refused,
    negotiate,
    rejection_words,
    requested,
    too_short,
)

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
PRIVATE = "1.2.826.0.1.3680043.9.9999.1"  # a private storage class
SPECIALIZED = "1.2.826.0.1.3680043.9.9999.2"  # a specialization of CT
STORAGE_SERVICE = "1.2.840.10008.4.2"
IMPLICIT = uids.IMPLICIT_VR_LE
EXPLICIT = uids.EXPLICIT_VR_LE
BIG = uids.EXPLICIT_VR_BE
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"


def policy(**changes) -> AcceptorPolicy:
    base = AcceptorPolicy(
        ae_title="STORESCP",
        abstract_syntaxes={
            VERIFICATION: (IMPLICIT,),
            CT: (JPEG_LOSSLESS, EXPLICIT, IMPLICIT),  # our order of preference
            MR: (EXPLICIT, IMPLICIT),
        },
    )
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def rq(*contexts: tuple[int, str, list[str]], **changes) -> P.AssociateRQ:
    request = P.AssociateRQ(
        called_ae="STORESCP",
        calling_ae="MODALITY",
        presentation_contexts=[I.PresentationContextRQ(*c) for c in contexts]
        or [I.PresentationContextRQ(1, VERIFICATION, [IMPLICIT])],
        user_info=I.UserInformation(
            max_length=16384,
            implementation_class_uid="1.2.826.0.1.3680043.9.1",
            implementation_version_name="MODALITY_1",
        ),
    )
    for name, value in changes.items():
        setattr(request, name, value)
    return request


def accept(request: P.AssociateRQ, pol: AcceptorPolicy | None = None):
    answer, negotiated = negotiate(request, pol or policy())
    assert isinstance(answer, P.AssociateAC), answer
    assert negotiated is not None
    return answer, negotiated


def results(ac: P.AssociateAC) -> dict[int, tuple[int, str]]:
    return {pc.id: (pc.result, pc.transfer_syntax) for pc in ac.presentation_contexts}


# -- presentation contexts ---------------------------------------------------


def test_accepted_context_uses_our_preference_not_the_requestors_order():
    request = rq((1, CT, [IMPLICIT, EXPLICIT, JPEG_LOSSLESS]), (3, MR, [IMPLICIT, EXPLICIT]))
    ac, negotiated = accept(request)
    assert results(ac) == {1: (I.ACCEPTANCE, JPEG_LOSSLESS), 3: (I.ACCEPTANCE, EXPLICIT)}
    assert negotiated.contexts == {
        1: AcceptedContext(1, CT, JPEG_LOSSLESS, True, False),
        3: AcceptedContext(3, MR, EXPLICIT, True, False),
    }


def test_only_transfer_syntaxes_the_requestor_proposed_are_chosen():
    ac, negotiated = accept(rq((5, CT, [BIG, IMPLICIT])))
    assert results(ac) == {5: (I.ACCEPTANCE, IMPLICIT)}
    assert negotiated.contexts[5].transfer_syntax == IMPLICIT


def test_abstract_syntax_not_supported_is_result_3():
    ac, negotiated = accept(rq((1, VERIFICATION, [IMPLICIT]), (3, PRIVATE, [EXPLICIT])))
    assert results(ac)[3][0] == I.ABSTRACT_SYNTAX_NOT_SUPPORTED == 3
    assert results(ac)[1] == (I.ACCEPTANCE, IMPLICIT)
    assert set(negotiated.contexts) == {1}


def test_no_common_transfer_syntax_is_result_4():
    ac, negotiated = accept(rq((7, MR, [BIG, JPEG_LOSSLESS])))
    assert results(ac)[7][0] == I.TRANSFER_SYNTAXES_NOT_SUPPORTED == 4
    assert negotiated.contexts == {}


def test_every_proposed_context_gets_one_answer_in_order():
    request = rq(
        (1, VERIFICATION, [IMPLICIT]),
        (3, PRIVATE, [IMPLICIT]),
        (5, MR, [BIG]),
        (7, CT, [EXPLICIT]),
    )
    ac, _ = accept(request)
    assert [pc.id for pc in ac.presentation_contexts] == [1, 3, 5, 7]
    assert [pc.result for pc in ac.presentation_contexts] == [0, 3, 4, 0]


def test_ac_echoes_the_ae_titles_and_carries_our_user_information():
    ac, negotiated = accept(rq(), policy(max_pdu=65536))
    assert (ac.called_ae, ac.calling_ae) == ("STORESCP", "MODALITY")
    assert ac.application_context == P.APPLICATION_CONTEXT_NAME
    assert ac.user_info.max_length == 65536
    assert ac.user_info.implementation_class_uid == uids.IMPLEMENTATION_CLASS_UID
    assert ac.user_info.implementation_version_name == uids.IMPLEMENTATION_VERSION_NAME
    assert ac.user_info.async_ops is None  # not asked, not answered
    assert ac.user_info.roles == []
    assert negotiated.calling_ae == "MODALITY" and negotiated.called_ae == "STORESCP"
    assert negotiated.peer_max_pdu == 16384
    assert negotiated.peer_implementation_class_uid == "1.2.826.0.1.3680043.9.1"
    assert negotiated.peer_implementation_version_name == "MODALITY_1"
    assert (negotiated.max_ops_invoked, negotiated.max_ops_performed) == (1, 1)
    assert AcceptorPolicy().max_pdu == DEFAULT_MAX_PDU


def test_peer_without_maximum_length_is_unlimited():
    request = rq()
    request.user_info.max_length = None
    _, negotiated = accept(request)
    assert negotiated.peer_max_pdu == 0


# -- association rejection (PS3.8 9.3.4) -------------------------------------


def test_wrong_application_context_is_rejected_permanently_by_the_user():
    answer, negotiated = negotiate(rq(application_context="1.2.3.4"), policy())
    assert answer == P.AssociateRJ(1, 1, 2)
    assert negotiated is None


@pytest.mark.parametrize("length", [1, 6, 7])
def test_a_maximum_length_no_pdv_fits_in_is_rejected(length):
    """review34a #3: was accepted, and the first answer failed as an internal error."""
    request = rq()
    request.user_info.max_length = length
    answer, negotiated = negotiate(request, policy())
    assert answer == P.AssociateRJ(P.REJECT_PERMANENT, P.REJECT_SOURCE_ACSE, P.REJECT_NO_REASON)
    assert negotiated is None
    assert f"Maximum Length Received, {length}," in (too_short(request) or "")
    request.user_info.max_length = LEAST_MAX_LENGTH
    assert negotiate(request, policy())[1] is not None


def test_called_ae_mismatch_is_reason_7_when_required():
    answer, negotiated = negotiate(rq(called_ae="SOMEONE"), policy(require_called_aet=True))
    assert answer == P.AssociateRJ(P.REJECT_PERMANENT, P.REJECT_SOURCE_USER, 7)
    assert negotiated is None
    # not required: any called AE title is fine
    assert isinstance(negotiate(rq(called_ae="SOMEONE"), policy())[0], P.AssociateAC)
    # required and matching
    assert isinstance(negotiate(rq(), policy(require_called_aet=True))[0], P.AssociateAC)


def test_calling_ae_not_allowed_is_reason_3():
    pol = policy(allowed_calling_aets=frozenset({"CT1", "MR1"}))
    answer, negotiated = negotiate(rq(calling_ae="INTRUDER"), pol)
    assert answer == P.AssociateRJ(P.REJECT_PERMANENT, P.REJECT_SOURCE_USER, 3)
    assert negotiated is None
    assert isinstance(negotiate(rq(calling_ae="CT1"), pol)[0], P.AssociateAC)


def test_rejections_are_described():
    text = P.describe_reject(1, 1, 7)
    assert "permanent" in text and "called AE title not recognized" in text


# -- role selection (PS3.7 D.3.3.4) ------------------------------------------


def test_scu_role_requested_is_echoed():
    request = rq((1, CT, [EXPLICIT]))
    request.user_info.roles = [I.RoleSelection(CT, True, False)]
    ac, negotiated = accept(request)
    assert ac.user_info.roles == [I.RoleSelection(CT, True, False)]
    assert results(ac)[1][0] == I.ACCEPTANCE
    assert negotiated.contexts[1].scu_role and not negotiated.contexts[1].scp_role


def test_scu_and_scp_roles_requested_we_grant_only_scu():
    request = rq((1, CT, [EXPLICIT]))
    request.user_info.roles = [I.RoleSelection(CT, True, True)]
    ac, negotiated = accept(request)
    assert ac.user_info.roles == [I.RoleSelection(CT, True, False)]
    assert negotiated.contexts[1] == AcceptedContext(1, CT, EXPLICIT, True, False)


def test_scp_role_only_rejects_the_context_as_user_rejection():
    request = rq((1, CT, [EXPLICIT]), (3, MR, [EXPLICIT]))
    request.user_info.roles = [I.RoleSelection(CT, False, True)]
    ac, negotiated = accept(request)
    assert results(ac)[1][0] == I.USER_REJECTION
    assert results(ac)[3] == (I.ACCEPTANCE, EXPLICIT)  # a context without role item
    assert set(negotiated.contexts) == {3}


def test_role_selection_for_an_unsupported_class_is_not_answered():
    request = rq((1, PRIVATE, [EXPLICIT]))
    request.user_info.roles = [I.RoleSelection(PRIVATE, True, False)]
    ac, _ = accept(request)
    assert ac.user_info.roles == []


# -- asynchronous operations window (PS3.7 D.3.3.3) --------------------------


@pytest.mark.parametrize(
    "theirs,ours,agreed",
    [
        ((5, 5), 3, 3),
        ((2, 1), 3, 2),
        ((0, 0), 4, 4),  # they: unlimited, we: 4
        ((6, 1), 0, 6),  # we: unlimited, they: 6
        ((0, 0), 0, 0),  # both unlimited
        ((1, 1), 1, 1),
    ],
)
def test_async_ops_window_is_the_minimum_with_0_unlimited(theirs, ours, agreed):
    request = rq()
    request.user_info.async_ops = theirs
    ac, negotiated = accept(request, policy(max_ops_invoked=ours))
    assert ac.user_info.async_ops == (agreed, 1)
    assert negotiated.max_ops_invoked == agreed
    assert negotiated.max_ops_performed == 1
    # and the requestor reads the same window from the AC
    view = requested(request, ac)
    assert (view.max_ops_invoked, view.max_ops_performed) == (agreed, 1)


# -- extended negotiation (PS3.7 D.3.3.5, D.3.3.6) ---------------------------


def test_common_extended_accepts_a_specialized_class_through_its_general_class():
    request = rq((1, SPECIALIZED, [JPEG_LOSSLESS, EXPLICIT]))
    request.user_info.common_extended = [
        I.SOPClassCommonExtended(SPECIALIZED, STORAGE_SERVICE, (MR, CT))
    ]
    ac, negotiated = accept(request)
    # MR is not proposed in any context but is a related general class we support:
    # the first related class in the policy gives the transfer syntaxes (MR's here)
    assert results(ac) == {1: (I.ACCEPTANCE, EXPLICIT)}
    assert negotiated.contexts[1].abstract_syntax == SPECIALIZED


def test_common_extended_uses_the_general_class_preferences():
    request = rq((1, SPECIALIZED, [EXPLICIT, JPEG_LOSSLESS]))
    request.user_info.common_extended = [
        I.SOPClassCommonExtended(SPECIALIZED, STORAGE_SERVICE, (PRIVATE, CT))
    ]
    ac, _ = accept(request)
    assert results(ac) == {1: (I.ACCEPTANCE, JPEG_LOSSLESS)}  # CT's first choice


def test_common_extended_can_be_turned_off():
    request = rq((1, SPECIALIZED, [EXPLICIT]))
    request.user_info.common_extended = [
        I.SOPClassCommonExtended(SPECIALIZED, STORAGE_SERVICE, (CT,))
    ]
    ac, _ = accept(request, policy(common_extended=False))
    assert results(ac)[1][0] == I.ABSTRACT_SYNTAX_NOT_SUPPORTED


def test_common_extended_without_a_supported_general_class_is_not_supported():
    request = rq((1, SPECIALIZED, [EXPLICIT]))
    request.user_info.common_extended = [
        I.SOPClassCommonExtended(SPECIALIZED, STORAGE_SERVICE, (PRIVATE,))
    ]
    ac, _ = accept(request)
    assert results(ac)[1][0] == I.ABSTRACT_SYNTAX_NOT_SUPPORTED


def test_extended_negotiation_answer_callback():
    calls = []

    def answer(sop_class: str, info: bytes) -> bytes | None:
        calls.append((sop_class, info))
        return b"\x01" if sop_class == CT else None

    request = rq((1, CT, [EXPLICIT]), (3, MR, [EXPLICIT]))
    request.user_info.extended = [
        I.SOPClassExtended(CT, b"\x01\x01"),
        I.SOPClassExtended(MR, b"\x00"),
        I.SOPClassExtended(PRIVATE, b"\x01"),  # not an accepted class: not asked
    ]
    ac, negotiated = accept(request, policy(extended_negotiation=answer))
    assert calls == [(CT, b"\x01\x01"), (MR, b"\x00")]
    assert ac.user_info.extended == [I.SOPClassExtended(CT, b"\x01")]
    assert negotiated.extended == {CT: b"\x01"}
    assert requested(request, ac).extended == {CT: b"\x01"}


def test_extended_negotiation_without_callback_is_not_answered():
    request = rq((1, CT, [EXPLICIT]))
    request.user_info.extended = [I.SOPClassExtended(CT, b"\x01")]
    ac, negotiated = accept(request)
    assert ac.user_info.extended == []
    assert negotiated.extended == {}


def test_a_repeated_extended_negotiation_item_is_answered_once():
    """review53 #7: 1770 items for one class made an AC user information item over
    65535 bytes (a traceback, an A-ABORT); one answer per class (PS3.7 D.3.3.5)."""
    calls = []

    def answer(sop_class: str, info: bytes) -> bytes | None:
        calls.append(sop_class)
        return b"\x02\x00\x03\x00\x00\x00"

    request = rq((1, CT, [EXPLICIT]))
    request.user_info.extended = [I.SOPClassExtended(CT, bytes([n % 256])) for n in range(1770)]
    ac, negotiated = accept(request, policy(extended_negotiation=answer))
    assert calls == [CT]
    assert ac.user_info.extended == [I.SOPClassExtended(CT, b"\x02\x00\x03\x00\x00\x00")]
    assert negotiated.extended == {CT: b"\x02\x00\x03\x00\x00\x00"}
    (decoded,) = read_pdus(P.encode(ac))
    assert decoded.user_info.extended == ac.user_info.extended


def test_extended_answers_that_would_not_fit_are_left_out():
    """Answers over the user information item's 65535 bytes: none given, which the
    requestor reads as 'not supported' (PS3.7 D.3.3.5), rather than no AC at all."""
    request = rq((1, CT, [EXPLICIT]), (3, MR, [EXPLICIT]))
    request.user_info.extended = [I.SOPClassExtended(CT, b""), I.SOPClassExtended(MR, b"")]
    ac, negotiated = accept(request, policy(extended_negotiation=lambda c, i: bytes(40_000)))
    assert ac.user_info.extended == [] and negotiated.extended == {}
    assert read_pdus(P.encode(ac))


# -- requests that cannot be answered with an AC (review53 #6, #9) ------------


@pytest.mark.parametrize(
    "field,title",
    [
        ("calling_ae", ""),  # 16 spaces or NULs, as decoded (PS3.8 Table 9-11)
        ("calling_ae", "A\\B"),
        ("calling_ae", "EVIL\x07X"),
        ("calling_ae", "EVIL\x1b[31m"),
        ("calling_ae", "CR\r\nLF"),
        ("called_ae", ""),
        ("called_ae", "X\\Y"),
    ],
)
def test_a_title_that_is_no_ae_title_is_rejected(field, title):
    request = rq(**{field: title})
    answer, negotiated = negotiate(request, policy())
    reason = (
        P.REJECT_CALLING_AE_NOT_RECOGNIZED
        if field == "calling_ae"
        else P.REJECT_CALLED_AE_NOT_RECOGNIZED
    )
    assert answer == P.AssociateRJ(P.REJECT_PERMANENT, P.REJECT_SOURCE_USER, reason)
    assert negotiated is None
    words = rejection_words(request, answer)
    assert "AE title not recognized" in words and f"{title!r} is no AE title" in words


@pytest.mark.parametrize(
    "ids,why",
    [
        ([2], "ID 2 is not an odd integer"),
        ([1, 0], "ID 0 is not an odd integer"),
        ([1, 256], "ID 256 is not an odd integer"),
        ([1, 3, 1], "ID 1 is proposed more than once"),
        ([], "no presentation context"),
    ],
)
def test_presentation_context_ids_that_break_the_rules_reject_the_request(ids, why):
    request = rq()
    request.presentation_contexts = [
        I.PresentationContextRQ(i, VERIFICATION, [IMPLICIT]) for i in ids
    ]
    answer, negotiated = negotiate(request, policy())
    assert answer == P.AssociateRJ(P.REJECT_PERMANENT, P.REJECT_SOURCE_ACSE, P.REJECT_NO_REASON)
    assert negotiated is None
    assert why in rejection_words(request, answer)


def test_odd_unique_ids_up_to_255_are_accepted():
    request = rq(*[(i, VERIFICATION, [IMPLICIT]) for i in range(1, 256, 2)])
    ac, negotiated = accept(request)
    assert [pc.id for pc in ac.presentation_contexts] == list(range(1, 256, 2))
    assert len(negotiated.contexts) == 128


def test_user_identity_is_passed_to_the_acceptor_user():
    request = rq()
    identity = I.UserIdentityRQ(2, False, b"user", b"secret")
    request.user_info.identity_rq = identity
    _, negotiated = accept(request)
    assert negotiated.identity == identity


# -- unknown (private) SOP classes -------------------------------------------


def test_accept_unknown_accepts_private_sop_classes():
    pol = policy(accept_unknown=True, unknown_transfer_syntaxes=(EXPLICIT, IMPLICIT))
    ac, negotiated = accept(rq((1, PRIVATE, [IMPLICIT, EXPLICIT])), pol)
    assert results(ac) == {1: (I.ACCEPTANCE, EXPLICIT)}
    assert negotiated.contexts[1] == AcceptedContext(1, PRIVATE, EXPLICIT)


def test_accept_unknown_still_needs_a_common_transfer_syntax():
    pol = policy(accept_unknown=True, unknown_transfer_syntaxes=(EXPLICIT,))
    ac, _ = accept(rq((1, PRIVATE, [BIG])), pol)
    assert results(ac)[1][0] == I.TRANSFER_SYNTAXES_NOT_SUPPORTED


def test_accept_unknown_does_not_invent_verification():
    pol = policy(abstract_syntaxes={CT: (EXPLICIT,)}, accept_unknown=True)
    ac, _ = accept(rq((1, VERIFICATION, [IMPLICIT])), pol)
    assert results(ac)[1][0] == I.ABSTRACT_SYNTAX_NOT_SUPPORTED


def test_private_class_refused_by_default():
    ac, _ = accept(rq((1, PRIVATE, [EXPLICIT])))
    assert results(ac)[1][0] == I.ABSTRACT_SYNTAX_NOT_SUPPORTED


# -- the requestor's view ----------------------------------------------------


def test_a_context_accepted_with_a_syntax_not_proposed_is_left_out():
    """review38scu #9: PS3.8 9.3.3.2, the transfer syntax is one of those proposed
    (send re-encoded into Big Endian; get wrote a File Meta naming 1.2.3.4.5.6)."""
    request = rq((1, CT, [EXPLICIT, IMPLICIT]), (3, MR, [IMPLICIT]))
    ac, _ = accept(request)
    ac.presentation_contexts = [
        dataclasses.replace(r, transfer_syntax="1.2.840.10008.1.2.2") if r.id == 1 else r
        for r in ac.presentation_contexts
    ]
    view = requested(request, ac)
    assert set(view.contexts) == {3}
    assert view.ignored == [
        f"context 1 ({CT}) accepted with '1.2.840.10008.1.2.2', which we did not propose for it"
    ]


def test_requested_builds_the_requestor_view():
    request = rq((1, CT, [EXPLICIT, IMPLICIT]), (3, PRIVATE, [EXPLICIT]), (5, MR, [IMPLICIT]))
    request.user_info.roles = [I.RoleSelection(CT, True, False)]
    ac, acceptor_view = accept(request, policy(max_pdu=32768))
    view = requested(request, ac)
    assert isinstance(view, Negotiated)
    assert view.calling_ae == "MODALITY" and view.called_ae == "STORESCP"
    assert view.contexts == {
        1: AcceptedContext(1, CT, EXPLICIT, True, False),
        5: AcceptedContext(5, MR, IMPLICIT, True, False),
    }
    assert view.contexts == acceptor_view.contexts
    assert view.peer_max_pdu == 32768
    assert view.peer_implementation_class_uid == uids.IMPLEMENTATION_CLASS_UID
    assert view.peer_implementation_version_name == uids.IMPLEMENTATION_VERSION_NAME
    assert (view.max_ops_invoked, view.max_ops_performed) == (1, 1)
    assert view.context_for(CT) == view.contexts[1]
    assert view.context_for(CT, IMPLICIT) is None
    assert view.context_for(PRIVATE) is None


def test_requested_ignores_results_for_contexts_never_proposed():
    request = rq((1, CT, [EXPLICIT]))
    ac = P.AssociateAC(
        called_ae="STORESCP",
        calling_ae="MODALITY",
        presentation_contexts=[
            I.PresentationContextAC(1, I.ACCEPTANCE, EXPLICIT),
            I.PresentationContextAC(9, I.ACCEPTANCE, EXPLICIT),
        ],
        user_info=I.UserInformation(max_length=0),
    )
    view = requested(request, ac)
    assert set(view.contexts) == {1}
    assert view.peer_max_pdu == 0


def test_requested_reads_the_acceptors_role_answer():
    request = rq((1, CT, [EXPLICIT]))
    request.user_info.roles = [I.RoleSelection(CT, True, True)]
    ac = P.AssociateAC(
        called_ae="STORESCP",
        calling_ae="MODALITY",
        presentation_contexts=[I.PresentationContextAC(1, I.ACCEPTANCE, EXPLICIT)],
        user_info=I.UserInformation(max_length=0, roles=[I.RoleSelection(CT, False, True)]),
    )
    assert requested(request, ac).contexts[1] == AcceptedContext(1, CT, EXPLICIT, False, True)


def test_negotiation_survives_the_wire():
    """The AC encodes and decodes to the same view on the requestor's side."""
    request = rq((1, CT, [EXPLICIT]), (3, MR, [BIG]))
    request.user_info.async_ops = (4, 4)
    request.user_info.roles = [I.RoleSelection(CT, True, False)]
    ac, acceptor_view = accept(request, policy(max_ops_invoked=2))
    (decoded,) = read_pdus(P.encode(ac))
    view = requested(request, decoded)
    assert view.contexts == acceptor_view.contexts
    assert view.max_ops_invoked == acceptor_view.max_ops_invoked == 2


# -- hypothesis: negotiate() never crashes on a valid A-ASSOCIATE-RQ ----------

_uid = st.sampled_from(
    [VERIFICATION, CT, MR, PRIVATE, SPECIALIZED, IMPLICIT, EXPLICIT, BIG, JPEG_LOSSLESS]
) | st.lists(st.integers(0, 99999), min_size=1, max_size=6).map(
    lambda parts: "1.2." + ".".join(map(str, parts))
)
_ae = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=16)
_contexts = st.lists(
    st.builds(
        I.PresentationContextRQ,
        st.integers(0, 127).map(lambda n: 2 * n + 1),
        _uid,
        st.lists(_uid, min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda pc: pc.id,  # presentation context IDs are unique (PS3.8 9.3.2.2)
)
_user_info = st.builds(
    I.UserInformation,
    max_length=st.none() | st.integers(0, 2**32 - 1),
    implementation_class_uid=st.none() | _uid,
    async_ops=st.none() | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    roles=st.lists(st.builds(I.RoleSelection, _uid, st.booleans(), st.booleans()), max_size=3),
    extended=st.lists(st.builds(I.SOPClassExtended, _uid, st.binary(max_size=8)), max_size=3),
    common_extended=st.lists(
        st.builds(I.SOPClassCommonExtended, _uid, _uid, st.lists(_uid, max_size=3).map(tuple)),
        max_size=3,
    ),
)
_requests = st.builds(
    P.AssociateRQ,
    called_ae=_ae,
    calling_ae=_ae,
    presentation_contexts=_contexts,
    user_info=_user_info,
    application_context=st.sampled_from([P.APPLICATION_CONTEXT_NAME, "1.2.3"]),
)
_policies = st.builds(
    AcceptorPolicy,
    ae_title=_ae,
    abstract_syntaxes=st.dictionaries(
        _uid, st.lists(_uid, min_size=1, max_size=3).map(tuple), max_size=4
    ),
    require_called_aet=st.booleans(),
    allowed_calling_aets=st.none() | st.frozensets(_ae, max_size=3),
    accept_unknown=st.booleans(),
    max_ops_invoked=st.integers(0, 10),
    extended_negotiation=st.none() | st.just(lambda uid, info: info or None),
    common_extended=st.booleans(),
    scu_role_with=st.frozensets(_uid, max_size=2),
    scp_role_only=st.frozensets(_uid, max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests, _policies)
def test_random_valid_requests_never_crash_negotiate(request, pol):
    answer, negotiated = negotiate(request, pol)
    if isinstance(answer, P.AssociateRJ):
        assert negotiated is None
        assert answer.result == P.REJECT_PERMANENT
        assert answer.source == P.REJECT_SOURCE_USER or (
            answer.source == P.REJECT_SOURCE_ACSE and too_short(request)
        )
        return
    assert negotiated is not None
    # one answer per proposed context, in order; accepted ones carry a proposed syntax
    assert [pc.id for pc in answer.presentation_contexts] == [
        pc.id for pc in request.presentation_contexts
    ]
    proposed = {pc.id: pc for pc in request.presentation_contexts}
    for pc in answer.presentation_contexts:
        if pc.result == I.ACCEPTANCE:
            assert pc.transfer_syntax in proposed[pc.id].transfer_syntaxes
    for ctx in negotiated.contexts.values():
        assert ctx.transfer_syntax in proposed[ctx.id].transfer_syntaxes
    # the AC is encodable, and the requestor's view agrees with ours
    (decoded,) = read_pdus(P.encode(answer))
    view = requested(request, decoded)
    assert set(view.contexts) == set(negotiated.contexts)
    # PS3.7 D.3.3.4: a role item answers one proposed, never grants a role not proposed,
    # and the context left without a role is not accepted
    asked = {r.sop_class_uid: r for r in request.user_info.roles}
    for role in answer.user_info.roles:
        assert role.sop_class_uid in asked
        assert role.scu_role <= asked[role.sop_class_uid].scu_role
        assert role.scp_role <= asked[role.sop_class_uid].scp_role
    for ctx in negotiated.contexts.values():
        assert ctx.scu_role or ctx.scp_role
        assert view.contexts[ctx.id] == ctx


def test_describe_refused_names_each_refused_context_and_why() -> None:
    request = rq(
        (1, CT, [EXPLICIT]),
        (3, PRIVATE, [EXPLICIT]),
        (5, MR, ["1.2.840.10008.1.2.4.50"]),  # JPEG Baseline: not in MR's list
    )
    ac, _ = negotiate(request, policy())
    assert describe_refused(request, ac) == (
        "1.2.826.0.1.3680043.9.9999.1 (abstract syntax not supported); "
        "MR Image Storage (none of its transfer syntaxes supported: JPEG Baseline (Process 1))"
    )
    everything = rq((1, CT, [EXPLICIT]))
    assert describe_refused(everything, negotiate(everything, policy())[0]) is None


def test_requested_keeps_why_each_class_without_a_context_was_refused() -> None:
    request = rq(
        (1, CT, [EXPLICIT]),
        (3, CT, [BIG]),  # refused, but CT has a context
        (5, PRIVATE, [EXPLICIT]),
        (7, MR, ["1.2.840.10008.1.2.4.50"]),
        (9, MR, [BIG]),
    )
    ac, _ = negotiate(request, policy())
    assert requested(request, ac).refused == {
        PRIVATE: I.ABSTRACT_SYNTAX_NOT_SUPPORTED,
        MR: I.TRANSFER_SYNTAXES_NOT_SUPPORTED,
    }


def test_describe_refused_names_at_most_limit() -> None:
    request = rq(*((2 * n + 1, f"1.2.826.0.1.3680043.9.9999.{n}", [EXPLICIT]) for n in range(12)))
    ac, _ = negotiate(request, policy())
    text = describe_refused(request, ac, limit=3)
    assert text is not None and text.count("abstract syntax not supported") == 3
    assert text.endswith("; and 9 more")


def test_prefer_proposed_takes_the_requesters_first_that_we_accept() -> None:
    request = rq((1, CT, [BIG, EXPLICIT, JPEG_LOSSLESS]), (3, MR, [BIG, IMPLICIT, EXPLICIT]))
    _, ours = negotiate(request, policy())
    assert [c.transfer_syntax for c in ours.contexts.values()] == [JPEG_LOSSLESS, EXPLICIT]
    _, theirs = negotiate(request, policy(prefer_proposed=True))
    # BIG is proposed first but is not ours: the next proposed one we accept
    assert [c.transfer_syntax for c in theirs.contexts.values()] == [EXPLICIT, IMPLICIT]


# -- the SCP role for C-GET sub-operations (PS3.7 D.3.3.4, PS3.4 C.4.3) ------

GET = uids.STUDY_ROOT_QR_GET


def get_policy(**changes) -> AcceptorPolicy:
    pol = policy(scu_role_with=frozenset({GET}), scp_role_only=frozenset({VERIFICATION, GET}))
    pol.abstract_syntaxes = {**pol.abstract_syntaxes, GET: (IMPLICIT,)}
    for name, value in changes.items():
        setattr(pol, name, value)
    return pol


def test_scp_role_granted_on_an_association_with_a_get_model():
    # the GET context comes last: the answer does not depend on the order
    request = rq((1, CT, [EXPLICIT]), (3, MR, [EXPLICIT]), (5, GET, [IMPLICIT]))
    request.user_info.roles = [I.RoleSelection(CT, False, True), I.RoleSelection(MR, True, True)]
    ac, negotiated = accept(request, get_policy())
    assert ac.user_info.roles == [
        I.RoleSelection(CT, False, True),
        I.RoleSelection(MR, True, True),
    ]
    assert results(ac) == {
        1: (I.ACCEPTANCE, EXPLICIT),
        3: (I.ACCEPTANCE, EXPLICIT),
        5: (I.ACCEPTANCE, IMPLICIT),
    }
    assert negotiated.contexts[1] == AcceptedContext(1, CT, EXPLICIT, False, True)
    assert negotiated.contexts[3] == AcceptedContext(3, MR, EXPLICIT, True, True)
    assert negotiated.contexts[5] == AcceptedContext(5, GET, IMPLICIT, True, False)
    # and the requestor reads the same agreement
    assert requested(request, ac).contexts == negotiated.contexts


def test_scp_role_turned_down_without_a_get_model_context():
    request = rq((1, CT, [EXPLICIT]), (3, MR, [EXPLICIT]))
    request.user_info.roles = [I.RoleSelection(CT, False, True), I.RoleSelection(MR, True, True)]
    ac, negotiated = accept(request, get_policy())
    assert ac.user_info.roles == [
        I.RoleSelection(CT, False, False),
        I.RoleSelection(MR, True, False),
    ]
    assert results(ac)[1][0] == I.USER_REJECTION  # no role left for the requestor
    assert negotiated.contexts == {3: AcceptedContext(3, MR, EXPLICIT, True, False)}


def test_scp_role_turned_down_when_the_get_model_context_is_refused():
    request = rq((1, CT, [EXPLICIT]), (3, GET, [BIG]))  # no transfer syntax we take
    request.user_info.roles = [I.RoleSelection(CT, True, True)]
    ac, negotiated = accept(request, get_policy())
    assert results(ac)[3][0] == I.TRANSFER_SYNTAXES_NOT_SUPPORTED
    assert ac.user_info.roles == [I.RoleSelection(CT, True, False)]
    assert negotiated.contexts[1].scp_role is False


def test_scp_role_never_granted_for_verification_or_the_get_model_itself():
    request = rq((1, VERIFICATION, [IMPLICIT]), (3, GET, [IMPLICIT]), (5, CT, [EXPLICIT]))
    request.user_info.roles = [
        I.RoleSelection(VERIFICATION, True, True),
        I.RoleSelection(GET, True, True),
        I.RoleSelection(CT, False, True),
    ]
    ac, negotiated = accept(request, get_policy())
    assert ac.user_info.roles == [
        I.RoleSelection(VERIFICATION, True, False),
        I.RoleSelection(GET, True, False),
        I.RoleSelection(CT, False, True),
    ]
    assert [(c.scu_role, c.scp_role) for c in negotiated.contexts.values()] == [
        (True, False),
        (True, False),
        (False, True),
    ]


def test_scp_role_not_granted_when_the_get_model_context_is_scp_only():
    # a GET model the requestor does not want to be SCU of cannot carry a C-GET
    request = rq((1, CT, [EXPLICIT]), (3, GET, [IMPLICIT]))
    request.user_info.roles = [I.RoleSelection(CT, True, True), I.RoleSelection(GET, False, True)]
    ac, negotiated = accept(request, get_policy())
    assert results(ac)[3][0] == I.USER_REJECTION
    assert negotiated.contexts == {1: AcceptedContext(1, CT, EXPLICIT, True, False)}


def test_no_role_item_for_a_class_the_requestor_gave_none():
    request = rq((1, CT, [EXPLICIT]), (3, GET, [IMPLICIT]))
    ac, negotiated = accept(request, get_policy())
    assert ac.user_info.roles == []  # PS3.7 D.3.3.4: omitted when not in the request
    assert negotiated.contexts[1] == AcceptedContext(1, CT, EXPLICIT, True, False)


def test_requested_ignores_a_role_it_did_not_propose():
    request = rq((1, CT, [EXPLICIT]), (3, MR, [EXPLICIT]))
    request.user_info.roles = [I.RoleSelection(CT, True, False)]
    ac = P.AssociateAC(
        called_ae="STORESCP",
        calling_ae="MODALITY",
        presentation_contexts=[
            I.PresentationContextAC(1, I.ACCEPTANCE, EXPLICIT),
            I.PresentationContextAC(3, I.ACCEPTANCE, EXPLICIT),
        ],
        # a faulty acceptor: SCP granted for CT, a role item for MR never asked
        user_info=I.UserInformation(
            max_length=0,
            roles=[I.RoleSelection(CT, True, True), I.RoleSelection(MR, False, True)],
        ),
    )
    view = requested(request, ac)
    assert view.contexts[1] == AcceptedContext(1, CT, EXPLICIT, True, False)
    assert view.contexts[3] == AcceptedContext(3, MR, EXPLICIT, True, False)
