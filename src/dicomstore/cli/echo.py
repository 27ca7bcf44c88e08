"""``dicomstore echo``: C-ECHO a peer (Verification SCU)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicomstore.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    _add_common,
    _int,
    add_scu_parser,
    add_tls_client_options,
    open_association,
)


def add_parser(sub: Any) -> None:
    """The ``echo`` subcommand."""
    e = add_scu_parser(sub, "echo", "C-ECHO a DICOM peer (Verification SCU)", __doc__.strip())
    e.add_argument("--repeat", type=_int(1), default=1, help="number of C-ECHOs (default 1)")
    add_tls_client_options(e)
    _add_common(e)


async def run(args: argparse.Namespace) -> int:
    from dicomstore.dimse import status as st

    assoc = await open_association(args)
    try:
        for done in range(args.repeat):
            rsp = await assoc.echo()
            if rsp.status != 0:
                before = f" (after {done} of {args.repeat} answered Success)" if done else ""
                print(
                    f"dicomstore: C-ECHO answered {rsp.status:#06x} ({st.describe(rsp.status)})"
                    + before,
                    file=sys.stderr,
                )
                return EXIT_FAILED
    finally:
        await assoc.release()
    times = f" ({args.repeat} C-ECHOs)" if args.repeat > 1 else ""
    print(f"C-ECHO to {args.aec}@{args.host}:{args.port}: success{times}")
    return EXIT_OK
