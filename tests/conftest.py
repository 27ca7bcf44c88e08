"""Shared fixtures: our server in a background thread, real DCMTK and
pynetdicom peers as subprocesses on loopback ports, all waited on by
events (a listening socket, a process exit), never by sleeping."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dicomstore.services.server import Server, ServerConfig

#: DCMTK by absolute path: pynetdicom installs console scripts with the same names.
DCMTK = Path(os.environ.get("DCMTK_BIN", "/usr/bin"))
#: DCMTK leaves Nagle on unless told (44 ms per message otherwise).
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


#: The reserve file of each archive a test opens in this process (archive/reserve.py
#: makes 8 MiB): thousands of archives in one session took over 20 GB of /tmp.
TEST_RESERVE = 64 << 10


@pytest.fixture(autouse=True)
def small_reserve(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Archives keep a :data:`TEST_RESERVE` reserve, but in the reserve's own tests."""
    if not request.module.__name__.endswith("test_archive_reserve"):
        from dicomstore.archive import reserve

        monkeypatch.setattr(reserve, "SIZE", TEST_RESERVE)


def dcmtk(tool: str) -> str:
    """Absolute path of a DCMTK tool; the test suite installs the dcmtk package."""
    path = DCMTK / tool
    if not path.exists():
        pytest.fail(f"DCMTK's {tool} is missing at {path}: install the Debian package dcmtk")
    return str(path)


def serve_command(port: int, storage: Path | str, *extra: str) -> list[str]:
    """The command line of `dicomstore serve` on ``port`` storing into ``storage``
    (with the index of the test's engine: :func:`index_option`)."""
    return [
        sys.executable,
        "-m",
        "dicomstore.cli",
        "serve",
        "--port",
        str(port),
        "--storage",
        str(storage),
        *index_option(storage),
        *extra,
    ]


def index_option(storage: Path | str) -> list[str]:
    """``--index URL`` for a subprocess opening the archive at ``storage`` when the
    test runs on PostgreSQL (the index the test's own archives of ``storage`` use:
    see :func:`index_engine`), else nothing."""
    from dicomstore.archive import engine

    url = engine.default_index(Path(storage))
    return [] if url is None else ["--index", url]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    hexport = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(hexport) and fields[3] == "0A":
                        return True
        except FileNotFoundError:
            continue
    return False


def wait_listening(port: int, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    """Block until something listens on ``port`` (read from /proc, no probe connection)."""
    deadline = time.monotonic() + timeout
    while not _listening(port):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port} after {timeout}s")
        time.sleep(0.01)


def start_up_log(command: list[str], port: int) -> str:
    """What a server ``command`` logs (stderr) from its start to listening on ``port``
    and its stop (SIGTERM, exit 0)."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, proc)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def echoes_held_at_once(port: int, count: int = 4, ssl: object = None) -> list[int]:
    """The C-ECHO statuses of ``count`` associations to ``port`` held open at once (each
    echoes, then waits until all have, before it releases)."""
    from dicomstore.aio.client import associate

    async def run() -> list[int]:
        opened = asyncio.Barrier(count)

        async def one() -> int:
            async with await associate("127.0.0.1", port, ssl=ssl) as assoc:  # type: ignore[arg-type]
                status = (await assoc.echo()).status
                await opened.wait()
                return status

        return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(run())


def served_by_worker(log: Path) -> tuple[int, int]:
    """(associations accepted, of which by worker 1) in a ``serve --workers`` log."""
    accepted = [line for line in log.read_text().splitlines() if "contexts accepted" in line]
    return len(accepted), sum("[worker 1," in line for line in accepted)


@contextmanager
def peer_process(args: list[str], port: int, **kwargs) -> Iterator[subprocess.Popen]:
    """Start a peer SCP subprocess, wait until it listens, stop it afterwards."""
    proc = subprocess.Popen(
        args, env=PEER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs
    )
    try:
        try:
            wait_listening(port, proc)
        except RuntimeError as exc:  # (exited: what it said, e.g. its port taken meanwhile)
            said = proc.stdout.read().decode(errors="replace")[-2000:] if proc.stdout else ""
            raise RuntimeError(f"{exc}; it said: {said.strip()}") from None
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@contextmanager
def dcmtk_storescp(port: int, outdir: Path, *extra: str) -> Iterator[subprocess.Popen]:
    """DCMTK storescp accepting everything into ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    args = [dcmtk("storescp"), "--output-directory", str(outdir), *extra, str(port)]
    with peer_process(args, port) as proc:
        yield proc


@contextmanager
def pynetdicom_storescp(port: int, outdir: Path, *extra: str) -> Iterator[subprocess.Popen]:
    """pynetdicom's storescp app, run through its module entry point."""
    outdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pynetdicom", "storescp", str(port), "-od", str(outdir), *extra]
    with peer_process(args, port) as proc:
        yield proc


class ServerThread:
    """Our Server running on its own event loop in a thread (for subprocess peers)."""

    def __init__(self, config: ServerConfig, handler, **kwargs) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = Server(config, handler, **kwargs)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, coro, timeout: float = 30):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        self.call(self.server.close(grace=5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextmanager
def log_line(logger: str, text: str) -> Iterator[threading.Event]:
    """An event set once ``logger`` (any thread) logs a message containing ``text``,
    for the messages a server thread logs after its client saw the effect."""
    import logging

    seen = threading.Event()
    messages: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())
            if text in messages[-1]:
                seen.set()

    handler, log = Seen(), logging.getLogger(logger)
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


class NullHandler:
    """A store handler that refuses to store (for Verification-only tests)."""

    def begin(self, **kwargs):
        raise OSError(28, "No space left on device")


@pytest.fixture
def tmp_storage(tmp_path: Path) -> Path:
    return tmp_path / "storage"


#: The index engines (issue 17).
ENGINES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_index: about SQLite's index file; SQLite only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that uses :func:`index_engine` (as an argument, through an autouse
    fixture or ``pytest.mark.usefixtures("index_engine")``) and a temporary folder
    (where its archives are) runs once on each engine, unless marked ``sqlite_index``."""
    names = set(metafunc.fixturenames)
    in_tmp = {"tmp_path", "tmp_path_factory"} & names
    if (
        "index_engine" in names
        and in_tmp
        and not metafunc.definition.get_closest_marker("sqlite_index")
    ):
        metafunc.parametrize("index_engine", ENGINES, indirect=True)


@pytest.fixture(scope="module")
def index_engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's index engine: on ``postgresql``, every archive opened without
    ``index`` (``engine.default_index``) is indexed in a fresh PostgreSQL schema of
    its own, one per archive root, and `dicomstore serve` subprocesses get its URL
    (:func:`serve_command`, :func:`index_option`); on ``sqlite``, nothing changes.
    Tests that open the archive in another process by other means pass
    :func:`index_option` themselves. Module-scoped, so that a module's archive made
    once is on the engine of the tests using it: a module-scoped fixture that
    makes one takes ``index_engine`` (else it is made once, on the first engine)."""
    name: str = getattr(request, "param", "sqlite")
    if name != "postgresql":
        yield name
        return
    from dicomstore.archive import engine, layout

    server = request.getfixturevalue("postgres")
    urls: dict[Path, str] = {}

    def default_index(root: Path) -> str:
        root = root.resolve()
        if root not in urls:
            urls[root] = server.new_url()
        return urls[root]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "default_index", default_index)
        yield name
    on_sqlite = [root for root in urls if (root / layout.INDEX_FILE).exists()]
    assert not on_sqlite, f"indexed in SQLite, not in PostgreSQL: {on_sqlite}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A PostgreSQL server for the whole session (``pg_testlib.PostgresServer``);
    ``postgres.new_url()`` is an empty schema of its own for each archive."""
    from tests.pg_testlib import PostgresServer, pg_bin

    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'dicomstore[postgresql]')")
    server = PostgresServer(bin_dir, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
