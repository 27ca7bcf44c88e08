"""DCMTK dcmqrscp as the Q/R SCP our SCUs talk to (issue 15): a configuration in a
folder, the query_testlib LAYOUT stored into it with DCMTK storescu.

dcmqrscp runs in its default fork mode: 3.6.7 in single-process mode (``-s``)
crashes after the first association it releases.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import PEER_ENV, dcmtk, free_port, peer_process
from tests.services.query_testlib import fill

AET = "QRSCP"


def layout_files(folder: Path) -> list[Path]:
    """The instances of query_testlib.LAYOUT as PS3.10 files (an archive of ours)."""
    root = folder / "layout"
    if not root.exists():
        fill(root)
    return sorted(root.rglob("*.dcm"))


@contextmanager
def dcmqrscp(
    folder: Path, files: list[Path], hosts: Mapping[str, tuple[str, int]] | None = None
) -> Iterator[int]:
    """dcmqrscp (AE title ``QRSCP``) holding ``files``, knowing ``hosts`` (AE title ->
    address and port: where C-MOVE may send); its port."""
    port = free_port()
    db = folder / "db"
    db.mkdir(parents=True)
    table = "\n".join(
        f"{aet.lower()} = ({aet}, {host}, {peer_port})"
        for aet, (host, peer_port) in (hosts or {}).items()
    )
    config = folder / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\n"
        f"HostTable BEGIN\n{table}\nHostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
        f"AETable BEGIN\n{AET} {db} RW (100, 1024mb) ANY\nAETable END\n"
    )
    with peer_process([dcmtk("dcmqrscp"), "-c", str(config), str(port)], port):
        stored = subprocess.run(
            [dcmtk("storescu"), "-aec", AET, "127.0.0.1", str(port), *map(str, files)],
            env=PEER_ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stored.returncode == 0, stored.stdout + stored.stderr
        yield port
