"""A server that stores does not load pydicom (and numpy behind it): ``dicomstore
serve`` starts, negotiates and stores Explicit and Implicit VR Little Endian data
sets (sequences of undefined length too) with our own readers and writers
(archive/scan.py, fields.py, dicomfile.file_header, uids.uid_dictionary); pydicom
loads when a request needs it (a C-FIND here), and the constants taken from its
tables are the same as its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from tests.conftest import PEER_ENV, dcmtk
from tests.services.nodes_testlib import CT, write_instances

from dicomstore import uids
from dicomstore.archive import fields, scan
from dicomstore.archive.attributes import ATTRIBUTES

PROBE = textwrap.dedent(
    """
    import asyncio, subprocess, sys
    from pathlib import Path
    from dicomstore.archive import Archive
    from dicomstore.services.server import ServerConfig
    from dicomstore.services.serving import running

    HEAVY = ("pydicom", "numpy")

    def loaded():
        return sorted(m for m in HEAVY if m in sys.modules)

    async def main(root, storescu, findscu, sequences, files):
        archive = Archive(Path(root), fsync=False)
        try:
            async with running(archive, ServerConfig(port=0)) as server:
                port = str(server.port)
                print("listening", loaded())
                p = await asyncio.create_subprocess_exec(
                    storescu, "-aec", "DICOMSTORE", "127.0.0.1", port, *files)
                print("stored", await p.wait(), loaded())
                # (sent as they are: storescu would give their sequences lengths)
                p = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "dicomstore.cli", "send", "127.0.0.1", port,
                    "--aec", "DICOMSTORE", *sequences, stdout=subprocess.DEVNULL)
                print("stored", await p.wait(), loaded())
                p = await asyncio.create_subprocess_exec(
                    findscu, "-S", "-aec", "DICOMSTORE", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", "StudyInstanceUID", "127.0.0.1", port,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                out, _ = await p.communicate()
                print("found", await p.wait(), out.count(b"(0020,000d)"), loaded())
        finally:
            archive.close()

    asyncio.run(main(*sys.argv[1:4], sys.argv[4:6], sys.argv[6:]))
    """
)


def _with_sequences(path: Path, uid: str, implicit: bool) -> Path:
    """A CT instance whose sequences and items have undefined lengths (as many
    modalities write them), Implicit or Explicit VR Little Endian."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, f"{uid}.1.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, f"{uid}.1"
    ds.PatientID, ds.Modality = "SEQ", "CT"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CT, f"{uid}.9"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "1", "DCM", "x"
    ref.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.ReferencedImageSequence = Sequence([ref, Dataset()])
    for element in (ds["ReferencedImageSequence"], ref["PurposeOfReferenceCodeSequence"]):
        element.is_undefined_length = True
        for item in element.value:
            item.is_undefined_length_sequence_item = True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    assert b"\xff\xff\xff\xff" in path.read_bytes()
    return path


def test_storing_loads_no_pydicom_and_a_query_loads_it(tmp_path: Path) -> None:
    made = write_instances(tmp_path / "in", "1.2.15.1", 4, pixels=1024)
    sequences = [
        _with_sequences(tmp_path / "explicit.dcm", "1.2.15.2", implicit=False),
        _with_sequences(tmp_path / "implicit.dcm", "1.2.15.3", implicit=True),
    ]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(tmp_path / "archive"),
            dcmtk("storescu"),
            dcmtk("findscu"),
            *map(str, sequences),
            *map(str, made),
        ],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "listening []"
    # four instances stored, then two with sequences of undefined length (Explicit
    # and Implicit VR): pydicom never loaded (archive/scan.py walks them)
    assert lines[1:3] == ["stored 0 []", "stored 0 []"]
    stored = [p.read_bytes() for p in (tmp_path / "archive").rglob("1.2.15.[23].1.1.dcm")]
    assert len(stored) == 2 and all(b"\xff\xff\xff\xff" in data for data in stored)
    assert lines[3] == "found 0 6 ['numpy', 'pydicom']"  # 6 studies found: it loaded then


def test_the_tables_taken_from_pydicom_are_its_own() -> None:
    from pydicom.charset import python_encoding
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.uid import UID_dictionary

    # (in a fresh interpreter: pynetdicom, which some tests import, adds UIDs to pydicom's)
    code = (
        "from pydicom.uid import UID_dictionary; from dicomstore import uids; "
        "print(uids.uid_dictionary() == UID_dictionary, len(UID_dictionary))"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert fresh.stdout.split()[0] == "True" and int(fresh.stdout.split()[1]) > 400, fresh
    assert uids.uid_dictionary().items() <= UID_dictionary.items()
    assert {term.encode() for term in python_encoding} == scan.CHARSETS
    for keyword in (*fields.TEXT_FIELDS.values(), *fields.NUMBER_FIELDS.values()):
        attribute = ATTRIBUTES[keyword]
        assert (attribute.tag, attribute.vr) == (tag_for_keyword(keyword), dictionary_VR(keyword))


SLOW_IMPORT = textwrap.dedent(
    """
    import asyncio, builtins, subprocess, sys, threading
    from pathlib import Path
    from dicomstore.aio.client import associate
    from dicomstore.archive import Archive
    from dicomstore.services import server as server_module
    from dicomstore.services.server import ServerConfig
    from dicomstore.services.serving import running

    builtins.importing, builtins.gate = threading.Event(), threading.Event()
    sys.path.insert(0, sys.argv[3])  # slowimport.py: waits for the gate
    server_module.QR_MODULES += ("slowimport",)

    async def main(root, findscu):
        archive = Archive(Path(root), fsync=False)
        try:
            async with running(archive, ServerConfig(port=0)) as server:
                port = str(server.port)
                find = await asyncio.create_subprocess_exec(
                    findscu, "-S", "-aec", "DICOMSTORE", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", "StudyInstanceUID", "127.0.0.1", port,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                assert await asyncio.to_thread(builtins.importing.wait, 30)
                assoc = await associate("127.0.0.1", server.port)
                echo = await asyncio.wait_for(assoc.echo(), 10)  # served meanwhile
                await assoc.release()
                importing = not getattr(builtins, "imported", False)
                print("echo", echo.status, "while importing", importing)
                builtins.gate.set()
                print("find", await find.wait())
        finally:
            archive.close()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_the_first_query_loads_its_modules_off_the_loop(tmp_path: Path) -> None:
    """The first C-FIND imports the Q/R SCPs (and pydicom) in a worker thread: an
    echo on another association is answered meanwhile."""
    (tmp_path / "slowimport.py").write_text(
        "import builtins\nbuiltins.importing.set()\n"
        "opened = builtins.gate.wait(30)\nbuiltins.imported = True\nassert opened\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            SLOW_IMPORT,
            str(tmp_path / "archive"),
            dcmtk("findscu"),
            str(tmp_path),
        ],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["echo 0 while importing True", "find 0"]
