"""A-ASSOCIATE-RQs our A-ASSOCIATE-AC could not answer (review53 #6, #7, #9): each
gets an A-ASSOCIATE-RJ with the reason PS3.8 Table 9-21 gives (or an AC that fits),
a WARNING saying why, and no traceback; the server serves on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.services.server import Server, ServerConfig
from dicomstore.ul import items as I
from dicomstore.ul import pdu as P

CALLED, CALLING = slice(10, 26), slice(26, 42)  # (in the PDU: 6-byte header, version)
ANSWER = bytes((2, 0, 3, 0, 0, 0))  # (an extended negotiation answer as storage's)


def request(contexts: list[int] | None = None, extended: int = 0) -> bytearray:
    user = I.UserInformation(max_length=16384, implementation_class_uid="1.2.3")
    user.extended = [I.SOPClassExtended(uids.VERIFICATION, b"")] * extended
    rq = P.AssociateRQ(
        "DICOMSTORE",
        "PEER",
        [
            I.PresentationContextRQ(i, uids.VERIFICATION, [uids.IMPLICIT_VR_LE])
            for i in ([1] if contexts is None else contexts)
        ],
        user,
    )
    return bytearray(P.encode(rq))


def answer_to(data: bytes) -> tuple[int, bytes]:
    async def main() -> tuple[int, bytes]:
        server = Server(ServerConfig(port=0), None)
        server.policy.extended_negotiation = lambda uid, info: ANSWER
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(data)
            header = await reader.readexactly(6)
            body = await reader.readexactly(int.from_bytes(header[2:], "big"))
            writer.close()
            async with await associate("127.0.0.1", server.port) as again:  # serves on
                assert (await again.echo()).status == 0
            return header[0], body
        finally:
            await server.close(grace=2)

    return asyncio.run(main())


def blank(field: slice, raw: bytes) -> bytes:
    data = request()
    data[field] = raw.ljust(16, b" ")
    return bytes(data)


@pytest.mark.parametrize(
    "data,reason,words",
    [
        (blank(CALLING, b" " * 16), 3, "'' is no AE title (empty"),
        (blank(CALLING, b"\0" * 16), 3, "'' is no AE title (empty"),
        (blank(CALLING, b"A\\B"), 3, "'A\\\\B' is no AE title"),
        (blank(CALLING, b"EVIL\x07X"), 3, "is no AE title (only printable"),
        (blank(CALLING, b"EVIL\x1b[31m"), 3, "is no AE title (only printable"),
        (blank(CALLED, b" " * 16), 7, "'' is no AE title (empty"),
    ],
    ids=["spaces", "NULs", "backslash", "BEL", "ESC", "called-blank"],
)
def test_a_title_that_is_no_ae_title_gets_an_rj(data, reason, words, caplog) -> None:
    caplog.set_level(logging.INFO, logger="dicomstore")
    kind, body = answer_to(data)
    assert (kind, body[1:]) == (P.ASSOCIATE_RJ, bytes([P.REJECT_PERMANENT, 1, reason]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("rejected" in w and "AE title not recognized" in w and words in w for w in warnings)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize(
    "contexts,words",
    [([2], "ID 2 is not an odd"), ([1, 1], "ID 1 is proposed more than once"), ([], "no pres")],
    ids=["even", "duplicate", "none"],
)
def test_context_ids_that_break_the_rules_get_an_rj(contexts, words, caplog) -> None:
    caplog.set_level(logging.INFO, logger="dicomstore")
    kind, body = answer_to(bytes(request(contexts)))
    assert (kind, body[1:]) == (P.ASSOCIATE_RJ, bytes([P.REJECT_PERMANENT, 2, 1]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("rejected" in w and words in w for w in warnings)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_repeated_extended_negotiation_items_get_one_answer(caplog) -> None:
    """2500 items of one class (PS3.7 D.3.3.5) fit in the RQ's user information item;
    answering each made ours over 65535 bytes: a traceback and an A-ABORT."""
    caplog.set_level(logging.INFO, logger="dicomstore")
    kind, body = answer_to(bytes(request(extended=2500)))
    assert kind == P.ASSOCIATE_AC
    ac = P.decode_pdu(kind, body)
    assert isinstance(ac, P.AssociateAC)
    assert ac.user_info.extended == [I.SOPClassExtended(uids.VERIFICATION, ANSWER)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
