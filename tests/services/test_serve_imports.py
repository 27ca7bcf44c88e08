"""A server that stores does not load pydicom (and numpy behind it): ``dicomstore
serve`` starts, negotiates and stores an Explicit VR Little Endian data set with
our own readers and writers (archive/scan.py, fields.py, dicomfile.file_header,
uids.uid_dictionary); pydicom loads when a request needs it (a C-FIND here), and
the constants taken from its tables are the same as its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import PEER_ENV, dcmtk
from tests.services.nodes_testlib import write_instances

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

    async def main(root, storescu, findscu, files):
        archive = Archive(Path(root), fsync=False)
        try:
            async with running(archive, ServerConfig(port=0)) as server:
                port = str(server.port)
                print("listening", loaded())
                p = await asyncio.create_subprocess_exec(
                    storescu, "-aec", "DICOMSTORE", "127.0.0.1", port, *files)
                print("stored", await p.wait(), loaded())
                p = await asyncio.create_subprocess_exec(
                    findscu, "-S", "-aec", "DICOMSTORE", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", "StudyInstanceUID", "127.0.0.1", port,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                out, _ = await p.communicate()
                print("found", await p.wait(), out.count(b"(0020,000d)"), loaded())
        finally:
            archive.close()

    asyncio.run(main(*sys.argv[1:4], sys.argv[4:]))
    """
)


def test_storing_loads_no_pydicom_and_a_query_loads_it(tmp_path: Path) -> None:
    made = write_instances(tmp_path / "in", "1.2.15.1", 4, pixels=1024)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(tmp_path / "archive"),
            dcmtk("storescu"),
            dcmtk("findscu"),
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
    assert lines[1] == "stored 0 []"  # four instances stored, pydicom never loaded
    assert lines[2] == "found 0 4 ['numpy', 'pydicom']"  # 4 studies found: it loaded then


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
