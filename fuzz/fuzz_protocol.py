"""Coverage-guided fuzzing of the sans-I/O decoders with atheris (issue: hardening).

    pip install atheris
    python fuzz/fuzz_protocol.py -atheris_runs=2000000          # or -max_total_time=600
    python fuzz/fuzz_protocol.py fuzz/corpus -max_total_time=600  # keep a corpus

Each input is fed to an acceptor connection in Sta2 and in Sta6 (the upper
layer, PS3.8) in several chunk splits, and to the DIMSE assembler and the
command set decoder (PS3.7).  Only our own RemoteProtocolError may come out;
anything else is a crash that atheris reports with the input that caused it.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from dicomstore.dimse import DimseAssembler, decode_message
    from dicomstore.errors import RemoteProtocolError
    from dicomstore.ul import pdu as P
    from dicomstore.ul.connection import Connection, Role
    from dicomstore.ul.items import PresentationContextAC, PresentationContextRQ, UserInformation

_RQ = P.encode(
    P.AssociateRQ(
        "SCP",
        "SCU",
        [PresentationContextRQ(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])],
        UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
    )
)
_AC = P.AssociateAC(
    "SCP",
    "SCU",
    [PresentationContextAC(1, 0, "1.2.840.10008.1.2")],
    UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
)


def _established() -> Connection:
    conn = Connection(Role.ACCEPTOR, max_pdata=16384)
    conn.transport_connected()
    conn.receive_data(_RQ)
    conn.accept(_AC)
    conn.data_to_send()
    return conn


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    split = fdp.ConsumeIntInRange(1, 64)
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    for conn in (_new_sta2(), _established()):
        for start in range(0, len(payload), split):
            events = conn.receive_data(payload[start : start + split])  # never raises
            for event in events:
                pdvs = getattr(event, "pdvs", None)
                if pdvs:
                    assembler = DimseAssembler()
                    for pdv in pdvs:
                        try:
                            assembler.receive(pdv)
                        except RemoteProtocolError:
                            break
        conn.data_to_send()
    try:
        decode_message(payload)
    except RemoteProtocolError:
        pass


def _new_sta2() -> Connection:
    conn = Connection(Role.ACCEPTOR, max_pdata=16384)
    conn.transport_connected()
    return conn


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
