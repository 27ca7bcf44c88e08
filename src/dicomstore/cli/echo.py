"""``dicomstore echo``: C-ECHO a peer (Verification SCU)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicomstore.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    _add_common,
    _ae_title,
    _pdu,
    _port,
    _positive,
    _timeouts,
    add_tls_client_options,
    tls_client_context,
)


def add_parser(sub: Any) -> None:
    """The ``echo`` subcommand."""
    e = sub.add_parser("echo", help="C-ECHO a DICOM peer (Verification SCU)")
    e.add_argument("host")
    e.add_argument("port", type=_port)
    e.add_argument("--aet", type=_ae_title, default="DICOMSTORE", help="our (calling) AE title")
    e.add_argument("--aec", type=_ae_title, default="ANY-SCP", help="the peer's (called) AE title")
    e.add_argument("--max-pdu", type=_pdu, default=1024 * 1024)
    e.add_argument("--repeat", type=int, default=1, help="number of C-ECHOs (default 1)")
    e.add_argument("--acse-timeout", type=_positive, help="seconds (default 30)")
    e.add_argument("--dimse-timeout", type=_positive, help="seconds (default unlimited)")
    add_tls_client_options(e)
    _add_common(e)


async def run(args: argparse.Namespace) -> int:
    from dicomstore.aio.client import associate
    from dicomstore.dimse import status as st

    assoc = await associate(
        args.host,
        args.port,
        called_ae=args.aec,
        calling_ae=args.aet,
        max_pdu=args.max_pdu,
        timeouts=_timeouts(args),
        ssl=tls_client_context(args),
    )
    try:
        for _ in range(args.repeat):
            rsp = await assoc.echo()
            if rsp.status != 0:
                print(
                    f"dicomstore: C-ECHO answered {rsp.status:#06x} ({st.describe(rsp.status)})",
                    file=sys.stderr,
                )
                return EXIT_FAILED
    finally:
        await assoc.release()
    print(f"C-ECHO to {args.aec}@{args.host}:{args.port}: success")
    return EXIT_OK
