"""The public API at the package root: lazy re-exports, ``serve``, and the README's
"Python API" examples, each run as written (only the port is a free one)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom import examples

import dicomstore
from dicomstore.archive.dicomfile import dataset_offset
from tests.conftest import PEER_ENV, dcmtk, free_port, wait_listening

ROOT = Path(__file__).resolve().parent.parent
CT_FILE = Path(examples.get_path("ct"))
MR_FILE = Path(pydicom.data.get_testdata_file("MR_small.dcm"))

#: Modules that only the asyncio shell and the services need.
_SHELL = (
    "m.split('.')[0] in ('asyncio', 'ssl')"
    " or m.startswith(('dicomstore.aio', 'dicomstore.services'))"
)


def _loaded_after(statement: str, keep: str = _SHELL) -> list[str]:
    """The modules matching ``keep`` that a fresh interpreter has after ``statement``."""
    code = f"{statement}\nimport sys\nprint(sorted(m for m in sys.modules if {keep}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return eval(out.stdout)  # a list literal printed by the child


@pytest.mark.parametrize("module", ["dicomstore", "dicomstore.ul.fsm", "dicomstore.dimse"])
def test_the_sans_io_layers_load_no_asyncio_ssl_shell_or_services(module: str) -> None:
    assert _loaded_after(f"import {module}") == []


def test_the_archive_loads_no_asyncio_shell_or_services() -> None:
    # (ssl is pydicom's: its data manager imports urllib3)
    keep = "m == 'asyncio' or m.startswith(('dicomstore.aio', 'dicomstore.services'))"
    assert _loaded_after("import dicomstore.archive, dicomstore.handler", keep) == []


def test_a_public_name_loads_only_its_home() -> None:
    loaded = _loaded_after("import dicomstore; dicomstore.connect")
    assert "dicomstore.aio.client" in loaded
    assert "dicomstore.services.server" not in loaded
    assert not [m for m in loaded if m.startswith("dicomstore.services")]


def test_every_public_name_resolves_to_its_home() -> None:
    import importlib

    for name, home in dicomstore._EXPORTS.items():
        assert getattr(dicomstore, name) is getattr(importlib.import_module(home), name), name
    assert set(dicomstore.__all__) == {*dicomstore._EXPORTS, "__version__"}
    assert set(dicomstore.__all__) <= set(dir(dicomstore))
    for name in ("connect", "associate", "serve", "Server", "ServerConfig", "send", "Timeouts"):
        assert name in dicomstore.__all__
    for name in ("open_archive", "Archive", "StoreHandler", "StoreSink", "StoredEvents"):
        assert name in dicomstore.__all__
    assert dicomstore.__version__
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        dicomstore.nothing_here  # noqa: B018
    from dicomstore import Archive, StoreHandler

    assert issubclass(dicomstore.AssociationRejected, dicomstore.DicomstoreError)
    assert issubclass(Archive, StoreHandler)  # the runtime-checkable protocol


def test_the_package_is_typed() -> None:
    assert (ROOT / "src" / "dicomstore" / "py.typed").exists()
    assert 'dicomstore = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()


# -- serve ----------------------------------------------------------------------------


class GatedArchive:
    """The archive, whose commits wait (in the server's worker thread) for ``go``."""

    def __init__(self, archive: dicomstore.Archive) -> None:
        self.archive = archive
        self.committing = threading.Event()
        self.go = threading.Event()

    def begin(self, **kwargs: str) -> dicomstore.StoreSink:
        sink = self.archive.begin(**kwargs)
        gate = self

        class Sink:
            write = sink.write
            abort = sink.abort

            def commit(self):  # noqa: ANN202
                gate.committing.set()
                gate.go.wait(30)
                return sink.commit()

        return Sink()


async def _serving(storage, **kwargs) -> tuple[asyncio.Task, int]:
    """``dicomstore.serve`` in a task on port 0, once it listens; and its port."""
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        dicomstore.serve(storage, port=0, on_ready=lambda s: ready.set_result(s.port), **kwargs)
    )
    done, _ = await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises what serve raised
    return task, ready.result()


def test_serve_stores_what_storescu_sends_and_stops_when_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[Path] = []
    original_close = dicomstore.Archive.close

    def close(self: dicomstore.Archive) -> None:
        closed.append(self.root)
        original_close(self)

    monkeypatch.setattr(dicomstore.Archive, "close", close)
    ct = pydicom.dcmread(CT_FILE)

    async def main() -> list[dicomstore.StoredEvent]:
        events: list[dicomstore.StoredEvent] = []
        arrived = asyncio.Event()

        async def on_stored(event: dicomstore.StoredEvent) -> None:
            events.append(event)
            arrived.set()

        task, port = await _serving(
            tmp_path / "archive", ae_title="RECEIVER", on_stored=on_stored, fsync=False
        )
        proc = await asyncio.create_subprocess_exec(
            dcmtk("storescu"), "-aec", "RECEIVER", "127.0.0.1", str(port), str(CT_FILE),
            env=PEER_ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await proc.communicate()
        assert proc.returncode == 0, output.decode()
        await arrived.wait()
        assert not closed
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        return events

    events = asyncio.run(main())
    assert [(e.sop_instance_uid, e.status, e.calling_ae) for e in events] == [
        (ct.SOPInstanceUID, 0, "STORESCU")
    ]
    assert closed == [(tmp_path / "archive").resolve()]
    archive = dicomstore.open_archive(tmp_path / "archive")
    (row,) = archive.iter_instances()
    assert archive.dataset(row).PatientName == ct.PatientName


@pytest.mark.parametrize(
    "max_ops",
    [
        4,
        None,  # window 1: the commit is awaited in line, and is an operation too
    ],
)
def test_cancelling_serve_lets_the_c_store_in_flight_finish(
    tmp_path: Path, max_ops: int | None
) -> None:
    archive = dicomstore.Archive(tmp_path / "archive", fsync=False)
    gated = GatedArchive(archive)
    ct = pydicom.dcmread(CT_FILE)

    async def main() -> int:
        task, port = await _serving(gated, config=dicomstore.ServerConfig(max_ops=4))
        contexts = [(ct.SOPClassUID, [ct.file_meta.TransferSyntaxUID])]
        async with dicomstore.connect(
            "127.0.0.1", port, contexts=contexts, max_ops=max_ops
        ) as assoc:
            store = asyncio.create_task(assoc.store(CT_FILE))
            await asyncio.to_thread(gated.committing.wait, 30)
            task.cancel()  # while the instance is being committed
            await asyncio.sleep(0)  # the server closes: it stops accepting first
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            gated.go.set()
            rsp = await store
        with pytest.raises(asyncio.CancelledError):
            await task
        return rsp.status

    try:
        assert asyncio.run(main()) == 0
        assert archive.path_of(ct.SOPInstanceUID).exists()
    finally:
        gated.go.set()
        archive.close()  # a handler given to serve is left open


def test_serve_refuses_what_is_neither_a_path_nor_a_handler() -> None:
    with pytest.raises(TypeError, match="archive path or a StoreHandler"):
        asyncio.run(dicomstore.serve(42))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="need an archive path"):
        asyncio.run(dicomstore.serve(GatedArchive(None), fsync=False))  # type: ignore[arg-type]


def test_serve_raises_when_the_port_is_taken(tmp_path: Path) -> None:
    async def main() -> None:
        task, port = await _serving(tmp_path / "a", fsync=False)
        try:
            with pytest.raises(OSError):
                await dicomstore.serve(tmp_path / "b", port=port, fsync=False)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


# -- ClientAssociation.store ------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Expected implicit VR")  # pydicom reading notes.txt
def test_store_takes_a_dataset_and_a_path_and_answers_typed(tmp_path: Path) -> None:
    ct = pydicom.dcmread(CT_FILE)
    copy = pydicom.dcmread(CT_FILE)
    copy.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not DICOM")

    async def main() -> list[dicomstore.CStoreRSP]:
        task, port = await _serving(tmp_path / "archive", fsync=False)
        contexts = [(ct.SOPClassUID, [ct.file_meta.TransferSyntaxUID])]
        try:
            async with dicomstore.connect("127.0.0.1", port, contexts=contexts) as assoc:
                by_dataset = await assoc.store(copy)
                by_path = await assoc.store(CT_FILE)
                by_str = await assoc.store(str(CT_FILE))  # already stored: kept, 0000
                with pytest.raises(
                    dicomstore.NotSendable, match="of MR Image Storage was proposed"
                ):
                    await assoc.store(MR_FILE)  # no MR context was proposed
                with pytest.raises(dicomstore.NotDicom):
                    await assoc.store(not_dicom)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return [by_dataset, by_path, by_str]

    responses = asyncio.run(main())
    assert all(isinstance(r, dicomstore.CStoreRSP) for r in responses)
    assert [r.status for r in responses] == [0, 0, 0]
    assert [r.affected_sop_instance_uid for r in responses] == [
        copy.SOPInstanceUID,
        ct.SOPInstanceUID,
        ct.SOPInstanceUID,
    ]
    archive = dicomstore.open_archive(tmp_path / "archive")
    stored = archive.dataset(archive.instance(ct.SOPInstanceUID))
    assert stored.PixelData == ct.PixelData
    assert archive.dataset(archive.instance(copy.SOPInstanceUID)).SOPInstanceUID == (
        copy.SOPInstanceUID
    )


def test_send_takes_one_path_or_dataset_alone_and_options_or_keywords(tmp_path: Path) -> None:
    """review120 F1: ``send(host, port, "study/")`` took each character of the string
    for a path: "/" first, which scanned the whole file system. F3: ``options`` with
    keyword arguments dropped the keywords unsaid."""
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(CT_FILE.read_bytes())
    mr = pydicom.dcmread(MR_FILE)

    async def main() -> tuple[list[dicomstore.Result], list[dicomstore.Result]]:
        task, port = await _serving(tmp_path / "archive", fsync=False)
        try:
            by_folder = await dicomstore.send("127.0.0.1", port, str(folder), retries=0)
            by_dataset = await dicomstore.send("127.0.0.1", port, mr, retries=0)
            with pytest.raises(TypeError, match="options or called_ae=, not both"):
                options = dicomstore.SendOptions()
                await dicomstore.send("127.0.0.1", port, folder, options=options, called_ae="X")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return by_folder, by_dataset

    by_folder, by_dataset = asyncio.run(main())
    assert [(r.path, r.outcome) for r in by_folder] == [(str(folder / "ct.dcm"), "stored")]
    assert [r.outcome for r in by_dataset] == ["stored"]


def test_on_stored_and_on_ready_may_be_plain_or_async(tmp_path: Path, caplog) -> None:
    """review120 F4: a plain on_stored ran, then an ERROR with a traceback was logged
    for every instance (its None awaited); F5: an async on_ready was never awaited."""
    stored: list[str] = []
    ready_ports: list[int] = []

    async def main() -> None:
        up = asyncio.Event()

        async def on_ready(server) -> None:
            ready_ports.append(server.port)
            up.set()

        task = asyncio.create_task(
            dicomstore.serve(
                tmp_path / "archive",
                port=0,
                fsync=False,
                on_ready=on_ready,
                on_stored=lambda event: stored.append(event.sop_instance_uid),
            )
        )
        try:
            await asyncio.wait_for(up.wait(), 30)
            (result,) = await dicomstore.send("127.0.0.1", ready_ports[0], CT_FILE, retries=0)
            assert result.outcome == "stored"
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert stored == [pydicom.dcmread(CT_FILE).SOPInstanceUID]
    assert "on_stored callback failed" not in caplog.text


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"ae_title": "A" * 17}, ValueError, "ServerConfig.ae_title: not a valid AE title"),
        ({"ae_title": "A\\B"}, ValueError, "ServerConfig.ae_title"),
        ({"port": -1}, ValueError, "ServerConfig.port: not 0 .. 65535"),
        ({"port": "104"}, TypeError, "ServerConfig.port: not an int"),
        ({"max_pdu": 10}, ValueError, "ServerConfig.max_pdu"),
        ({"allowed_calling_aets": "STORESCU"}, TypeError, "a set of AE titles, not one"),
        ({"store_aets": "STORESCU"}, TypeError, "a set of AE titles, not one"),
        ({"transfer_syntaxes": ("1.2.3",)}, ValueError, "unknown ['1.2.3']"),
        ({"transfer_syntaxes": "1.2.840.10008.1.2"}, TypeError, "UIDs, not one"),
        ({"shutdown_grace": -5}, ValueError, "ServerConfig.shutdown_grace: negative"),
        ({"stable_age": float("nan")}, ValueError, "ServerConfig.stable_age: negative"),
        ({"max_associations": -1}, ValueError, "ServerConfig.max_associations: negative"),
        ({"max_ops": 65536}, ValueError, "ServerConfig.max_ops: not 0 .. 65535"),
    ],
)
def test_server_config_refuses_what_the_command_line_refuses(options, error, says) -> None:
    """review120 F2/F6: a 21-character AE title served, a port of -1 failed at bind
    (OverflowError), a string of AE titles let in each of its substrings."""
    with pytest.raises(error) as raised:
        dicomstore.ServerConfig(**options)
    assert says in str(raised.value)


def test_server_config_takes_any_iterable_of_ae_titles() -> None:
    config = dicomstore.ServerConfig(allowed_calling_aets=["STORESCU"], store_aets={"A"})
    assert config.allowed_calling_aets == frozenset({"STORESCU"})
    assert config.store_aets == frozenset({"A"})


def test_a_response_of_the_wrong_type_aborts_instead_of_being_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """echo() returns a CEchoRSP or raises: a C-STORE-RSP to a C-ECHO-RQ is a protocol error."""
    import dicomstore.services.acceptor as server_module

    def wrong(rq):  # noqa: ANN001, ANN202
        return dicomstore.CStoreRSP(rq.message_id, 0, None, None)

    monkeypatch.setattr(server_module, "echo_response", wrong)

    async def main() -> None:
        task, port = await _serving(tmp_path / "archive", fsync=False)
        try:
            assoc = await dicomstore.associate("127.0.0.1", port)
            with pytest.raises(dicomstore.AssociationAborted, match="CStoreRSP, not a CEchoRSP"):
                await assoc.echo()
            with pytest.raises(dicomstore.AssociationAborted):  # it is gone
                await assoc.echo()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


# -- the README's examples, as written ------------------------------------------------------


def readme_python_api() -> list[str]:
    """The code blocks of the README's "Python API" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", section, re.S)]


def test_the_readme_python_api_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_block, client_block, query_block, handler_block, _ = readme_python_api()
    for block in (serve_block, client_block, query_block):
        assert "import dicomstore\n" in block and "from dicomstore" not in block
    port = free_port()

    def as_written(block: str) -> str:
        assert "11112" in block
        return block.replace("11112", str(port))

    study = tmp_path / "study"
    study.mkdir()
    (study / "mr.dcm").write_bytes(MR_FILE.read_bytes())
    (study / "ct.dcm").write_bytes(CT_FILE.read_bytes())
    mr = pydicom.dcmread(MR_FILE)
    ct = pydicom.dcmread(CT_FILE)
    monkeypatch.chdir(tmp_path)

    server = subprocess.Popen(
        [sys.executable, "-c", as_written(serve_block)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, server)
        exec(compile(as_written(client_block), "README client", "exec"), {})
        client_out = capsys.readouterr().out
        exec(compile(query_block, "README query", "exec"), {})
        query_out = capsys.readouterr().out
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: a graceful close, then exit
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "C-ECHO 0x0" in client_out
    assert "C-STORE 0x0" in client_out
    assert f"C-FIND {ct.StudyInstanceUID} CT" in client_out  # stored by store() just before
    # the CT arrived twice: by store(), then by send() (the kept identical duplicate: 0000)
    assert f"stored {study / 'ct.dcm'} 0 committed" in client_out.replace("study/", f"{study}/")
    assert re.search(r"^stored \S*mr\.dcm 0 committed$", client_out, re.M), client_out
    assert "True {}" in client_out  # dicomstore.commit: all committed, none failed
    assert sorted(out.split("\n")[:-1]) == sorted(
        f"stored {uid} {modality} 0x0"
        for uid, modality in (
            (ct.SOPInstanceUID, "CT"),
            (ct.SOPInstanceUID, "CT"),
            (mr.SOPInstanceUID, "MR"),
        )
    )
    assert f"{ct.StudyInstanceUID} ['CT'] 1" in query_out
    assert f"{mr.StudyInstanceUID} ['MR'] 1" in query_out

    namespace: dict = {}
    exec(compile(as_written(handler_block), "README handler", "exec"), namespace)
    assert isinstance(namespace["server"], dicomstore.Server)
    assert namespace["server"].config.port == port
    namespace["server"].handler.close()


def test_the_readme_own_storage_handler_receives_and_answers(tmp_path: Path) -> None:
    """The README's "receive into your own storage" example, as written: each data set
    lands in its own file, and the plain status it returns is what the sender gets."""
    block = readme_python_api()[-1]
    assert "class Folder" in block and "11112" in block
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", block.replace("11112", str(port))],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    escaping = pydicom.dcmread(CT_FILE)  # review52 M3: it wrote one folder up
    escaping.SOPInstanceUID = "../ESCAPED"
    try:
        wait_listening(port, server)
        results = asyncio.run(dicomstore.send("127.0.0.1", port, [CT_FILE], called_ae="ANY"))
        results += asyncio.run(dicomstore.send("127.0.0.1", port, [escaping], called_ae="ANY"))
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "C-FIND not offered" not in err  # (review56 F6: it is no archive)
    assert [r.status for r in results] == [0x0000, 0x0000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["received"]
    ct = pydicom.dcmread(CT_FILE)
    stored, other = sorted((tmp_path / "received").iterdir(), key=lambda p: p.name[0] == "x")
    assert other.name.startswith("x-") and other.name.endswith(ct.file_meta.TransferSyntaxUID)
    assert stored.name == f"{ct.SOPInstanceUID}.{ct.file_meta.TransferSyntaxUID}"
    with open(CT_FILE, "rb") as fp:
        fp.seek(dataset_offset(fp))
        assert stored.read_bytes() == fp.read()


def test_a_handler_may_answer_with_a_plain_status(tmp_path: Path) -> None:
    """commit() returning an int is that status (it was taken for Success)."""

    class Refusing:
        def begin(self, **command):
            return self

        def write(self, fragment):
            pass

        def commit(self):
            return 0xA700

        def abort(self):
            pass

    async def main() -> list:
        ready = asyncio.Event()
        holder: list = []

        def on_ready(server) -> None:
            holder.append(server.port)
            ready.set()

        task = asyncio.create_task(dicomstore.serve(Refusing(), port=0, on_ready=on_ready))
        await ready.wait()
        try:
            return await dicomstore.send("127.0.0.1", holder[0], [CT_FILE], called_ae="ANY")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    (result,) = asyncio.run(main())
    assert result.status == 0xA700
