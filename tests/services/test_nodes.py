"""Several `dicomstore serve` nodes on one archive (issue 17), at scale: three nodes on
their own ports share one PostgreSQL index and one storage root; three DCMTK storescu
senders, one per node, two of them sending the same instances at the same moment
and the third others; one node killed with SIGKILL midway, restarted on the same
storage, and its sender run again. After: every acknowledged instance is stored once,
byte for byte as sent, and `dicomstore check` is clean."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from tests.services.nodes_testlib import (
    Node,
    acknowledged,
    stored_files,
    storescu,
    write_instances,
)

from dicomstore.archive import digests
from dicomstore.archive.reader import ArchiveReader
from dicomstore.cli import main

SHARED = 120  # instances sent by two senders at once (to two nodes)
OWN = 360  # instances of the third sender (still sending when the killed restarts)


def test_three_nodes_one_index_one_storage_one_killed(
    tmp_path: Path, postgres: object, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres.new_url()  # type: ignore[attr-defined]
    storage = tmp_path / "storage"
    shared = write_instances(tmp_path / "shared", "1.2.826.0.1.3680043.99.1", SHARED)
    own = write_instances(tmp_path / "own", "1.2.826.0.1.3680043.99.2", OWN)
    source = {**shared, **own}
    nodes = [Node(storage, url) for _ in range(3)]
    acked: set[Path] = set()
    try:
        for node in nodes:
            node.start()
        senders = [
            storescu(nodes[0].port, list(shared)),
            storescu(nodes[1].port, list(shared)),
            storescu(nodes[2].port, list(own)),
        ]
        # midway: a third of the instances stored, kill the first node
        deadline = time.monotonic() + 60
        while stored_files(storage) < SHARED // 3 and senders[0].poll() is None:
            assert time.monotonic() < deadline, "the nodes store nothing"
            with contextlib.suppress(subprocess.TimeoutExpired):
                senders[0].wait(0.01)  # (or it ends)
        nodes[0].kill()
        killed_log = senders[0].communicate(timeout=90)[0]
        assert senders[0].returncode != 0, "the node was killed after its sender finished"
        # it restarts on the same storage while the others receive (its start-up must
        # leave their temporaries alone); its sender sends everything again
        nodes[0].start()
        running_meanwhile = senders[2].poll() is None
        again = storescu(nodes[0].port, list(shared))
        logs = [killed_log, *(s.communicate(timeout=90)[0] for s in (*senders[1:], again))]
        for log in logs:
            acked |= acknowledged(log)
        assert len(acknowledged(killed_log)) < SHARED
        for sender, log in zip((*senders[1:], again), logs[1:], strict=True):
            assert sender.returncode == 0, log
        assert acked == set(source)  # (each of them sent to a node that kept running)
        assert running_meanwhile, "the restart came after the third sender finished"
    finally:
        for node in nodes:
            node.stop()
    reader = ArchiveReader(storage, index=url)
    for path in acked:
        uid, digest = source[path]
        row = reader.instance(uid)
        assert row["digest"] == digest, f"{uid}: indexed digest is not the data set sent"
        assert digests.matches(digest, storage / row["path"])
        assert pydicom.dcmread(storage / row["path"]).SOPInstanceUID == uid
    assert len(reader.search("instance", {})) == len({uid for uid, _ in source.values()})
    assert stored_files(storage) == SHARED + OWN  # one file per instance
    assert list((storage / ".tmp").iterdir()) == []  # the killed node's folder settled
    capsys.readouterr()
    assert main(["check", "--storage", str(storage), "--index", url]) == 0
    expected = SHARED + OWN
    assert capsys.readouterr().out == f"checked {expected} instance(s): 0 problem(s)\n"
