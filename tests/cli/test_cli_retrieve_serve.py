"""`dicomstore move` and `dicomstore get` against `dicomstore serve`, our own C-MOVE and
C-GET SCP (issue 15, PS3.4 C.4.2, C.4.3): each level of both models, a UID list, the
counts, C-GET into a folder and into an archive; every data set that arrives is
byte-identical to the one stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import dcmtk_storescp, free_port
from tests.services.query_testlib import fill, serving_cli, sop_uids, stored_datasets

from dicomstore.cli import main

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

STUDY_1 = sop_uids("1.2.9.1.1") + sop_uids("1.2.9.1.2")  # CT x3, MR x2

#: (arguments, the instances they retrieve)
CASES = [
    (["-k", "StudyInstanceUID=1.2.9.1"], STUDY_1),
    (["-P", "-L", "PATIENT", "-k", "PatientID=PID2"], sop_uids("1.2.9.3.1")),
    (["-L", "SERIES", "-k", "StudyInstanceUID=1.2.9.1", "-k", "SeriesInstanceUID=1.2.9.1.2"],
     sop_uids("1.2.9.1.2")),
    (["-P", "-L", "IMAGE", "-k", "PatientID=PID1", "-k", "StudyInstanceUID=1.2.9.1",
      "-k", "SeriesInstanceUID=1.2.9.1.1", "-k", "SOPInstanceUID=1.2.9.1.1.1\\1.2.9.1.1.3"],
     ["1.2.9.1.1.1", "1.2.9.1.1.3"]),
    (["-k", "StudyInstanceUID=1.2.9.2\\1.2.9.4"], ["1.2.9.2.1.1", "1.2.9.4.1.1"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory, index_engine: str) -> Iterator[tuple[int, Path, dict[str, bytes]]]:
    """`dicomstore serve` on an archive holding query_testlib.LAYOUT, DCMTK storescp
    --bit-preserving as its Move Destination DEST: (serve's port, DEST's folder, the
    stored data set bytes by SOP Instance UID)."""
    folder = tmp_path_factory.mktemp("retrieve")
    root = folder / "archive"
    fill(root)
    dest_port = free_port()
    with (
        dcmtk_storescp(dest_port, folder / "dest", "--bit-preserving"),
        serving_cli(root, "--move-destination", f"DEST=127.0.0.1:{dest_port}") as port,
    ):
        yield port, folder / "dest", stored_datasets(root)


def command(name: str, port: int, *args: str) -> list[str]:
    return [name, "127.0.0.1", str(port), "--aec", "DICOMSTORE", "--log-level", "error", *args]


def result_of(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0, capsys.readouterr()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("args", "expected"), CASES)
def test_move_from_serve_to_a_destination(served, capsys, args, expected) -> None:
    port, dest, stored = served
    for path in dest.iterdir():  # (each case counts what it alone moved)
        path.unlink()
    result = result_of(capsys, command("move", port, "--dest", "DEST", "--json", *args))
    assert (result["status"], result["completed"], result["failed"]) == ("0000", len(expected), 0)
    assert result["warning"] == 0 and not result["failed_sop_instance_uids"]
    assert stored_datasets(dest) == {uid: stored[uid] for uid in expected}


@pytest.mark.parametrize(("args", "expected"), CASES)
def test_get_from_serve_into_a_folder(served, capsys, tmp_path, args, expected) -> None:
    port, _, stored = served
    out = tmp_path / "got"
    result = result_of(capsys, command("get", port, "-od", str(out), "--json", *args))
    assert (result["status"], result["completed"], result["failed"]) == ("0000", len(expected), 0)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{uid}.dcm" for uid in expected)
    assert stored_datasets(out) == {uid: stored[uid] for uid in expected}


def test_get_from_serve_into_an_archive(served, capsys, tmp_path) -> None:
    port, _, stored = served
    root = tmp_path / "archive"
    argv = command("get", port, "--storage", str(root), "--json", "-k", "StudyInstanceUID=1.2.9.1")
    result = result_of(capsys, argv)
    assert (result["status"], result["completed"], result["failed"]) == ("0000", 5, 0)
    assert stored_datasets(root) == {uid: stored[uid] for uid in STUDY_1}


@pytest.mark.parametrize(("store_aets", "completed"), [({"DICOMSTORE"}, 5), ({"ELSEWHERE"}, 0)])
def test_get_stores_through_the_store_service_policy(
    served, tmp_path, store_aets, completed
) -> None:
    """receive_into stores a C-GET's sub-operations as the peer's AE title (the SCP's,
    DICOMSTORE), through the service's store_aets as every door does."""
    import asyncio

    import dicomstore
    from dicomstore.archive import Archive
    from dicomstore.services.storage import StoreService

    port = served[0]

    async def run() -> tuple[int, int, int, int, bool]:
        archive = Archive(tmp_path / "archive", fsync=False)
        try:
            contexts, roles = dicomstore.get_contexts("study")
            async with dicomstore.connect(
                "127.0.0.1", port, called_ae="DICOMSTORE", contexts=contexts, roles=roles
            ) as assoc:
                received = dicomstore.receive_into(
                    assoc, StoreService(archive, store_aets=frozenset(store_aets))
                )
                result = await dicomstore.get(
                    assoc, {"StudyInstanceUID": "1.2.9.1"}, level="STUDY", received=received
                ).run()
            assert result.received is received
            return result.completed, result.failed, received.completed, received.failed, result.ok
        finally:
            archive.close()

    # the SCP's counts and ours (review38scu #1) agree
    ok = completed == 5
    assert asyncio.run(run()) == (completed, 5 - completed, completed, 5 - completed, ok)
