"""Transient failures are retried, a bounded number of times; permanent ones are not.

A small TCP proxy in front of the real peer counts connections and can drop
the first ones (at once, or after some bytes): the retries are observed,
not assumed.  Delays are tiny; nothing sleeps in the tests themselves.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

from tests.conftest import ServerThread, dcmtk_storescp, free_port
from tests.services.fake_scp import FakeSCP, answer_for, say_nothing, walk_out
from tests.services.test_scu_support import (
    dataset_bytes,
    received_by_uid,
    sendable,
    summary_of,
    uid_of,
)

from dicomstore.cli import send as cli_send
from dicomstore.services.scu_send import send
from dicomstore.services.server import ServerConfig

FAST = ["--retry-delay", "0.001"]


class Proxy:
    """TCP proxy to ``127.0.0.1:target`` on its own loop; counts connections.

    The first ``drop`` connections are closed once ``cut_after`` bytes came
    from the client (0: at once, before the association request).
    """

    def __init__(self, target: int, drop: int = 0, cut_after: int = 0) -> None:
        self.target, self.drop, self.cut_after = target, drop, cut_after
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._on, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        server.close()

    async def _on(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cut = self.cut_after if self.connections <= self.drop else None
        if cut == 0:
            writer.close()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)

        async def pump(src, dst, limit: int | None) -> None:
            sent = 0
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                    sent += len(data)
                    if limit is not None and sent >= limit:
                        break
            except (ConnectionError, OSError):
                pass
            for w in (dst, writer, up_w):
                w.close()

        await asyncio.gather(pump(reader, up_w, cut), pump(up_r, writer, None))

    def __enter__(self) -> Proxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def _send(port: int, paths, **kwargs):
    kwargs.setdefault("retry_delay", 0.001)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return asyncio.run(send("127.0.0.1", port, paths, **kwargs))


def _main(*args: str) -> int:
    return cli_send.main([*args, *FAST, "--log-level", "error"])


def test_connection_refused_is_retried_then_exit_3(tmp_path: Path) -> None:
    files = sendable(compressed=False)[:2]
    results = _send(free_port(), files, retries=2)
    assert {r.error_kind for r in results} == {"unreachable"}
    assert all(r.outcome == "failed" for r in results)
    code = _main("127.0.0.1", str(free_port()), str(files[0]), "--retries", "1")
    assert code == 3


def test_refused_association_is_permanent_exit_4(tmp_path: Path) -> None:
    port = free_port()
    files = sendable(compressed=False)[:2]
    with dcmtk_storescp(port, tmp_path / "out", "--refuse"), Proxy(port) as proxy:
        code = _main("127.0.0.1", str(proxy.port), *map(str, files), "--retries", "3")
        assert proxy.connections == 1  # a permanent rejection is not retried
    assert code == 4


def test_storescp_reject_accepts_us_because_we_send_an_implementation_uid(
    tmp_path: Path,
) -> None:
    port = free_port()
    files = sendable(compressed=False)[:3]
    with dcmtk_storescp(port, tmp_path / "out", "--reject"):
        assert _main("127.0.0.1", str(port), *map(str, files)) == 0
    assert len(received_by_uid(tmp_path / "out")) == 3


def test_transient_rejection_is_retried_a_bounded_number_of_times(tmp_path: Path) -> None:
    files = sendable(compressed=False)[:2]
    handler = SimpleNamespace(begin=None)
    config = ServerConfig(port=0, max_associations=0)
    with ServerThread(config, handler) as server, Proxy(server.port) as proxy:
        results = _send(proxy.port, files, retries=2)
        assert proxy.connections == 3
    assert {(r.outcome, r.error_kind) for r in results} == {("failed", "rejected")}
    assert "transient" in results[0].reason


def test_abort_after_every_store_gives_up_after_retries_exit_5(tmp_path: Path) -> None:
    port = free_port()
    files = sendable(compressed=False)[:4]
    with dcmtk_storescp(port, tmp_path / "out", "--abort-after"), Proxy(port) as proxy:
        code = _main("127.0.0.1", str(proxy.port), *map(str, files), "--retries", "2")
        assert proxy.connections == 3  # retries + 1 associations that stored nothing
    assert code == 5


def test_a_connection_dropped_at_once_is_retried_and_everything_arrives(tmp_path: Path) -> None:
    port = free_port()
    files = sendable(tmp_path / "in", compressed=False)
    with (
        dcmtk_storescp(port, tmp_path / "out", "--bit-preserving"),
        Proxy(port, drop=2) as proxy,
    ):
        results = _send(proxy.port, files, retries=3)
        assert proxy.connections == 3
    assert summary_of(results) == {"stored": len(files)}
    assert all(r.attempts == 1 for r in results)


def test_a_connection_cut_mid_transfer_resends_what_was_in_flight(tmp_path: Path) -> None:
    port = free_port()
    files = sendable(tmp_path / "in", compressed=False)
    assert sum(p.stat().st_size for p in files) > 1_000_000
    with (
        dcmtk_storescp(port, tmp_path / "out", "--bit-preserving"),
        Proxy(port, drop=1, cut_after=300_000) as proxy,
    ):
        results = _send(proxy.port, files, retries=2)
        assert proxy.connections == 2
    assert summary_of(results) == {"stored": len(files)}
    assert any(r.attempts == 2 for r in results)
    got = received_by_uid(tmp_path / "out")
    for path in files:
        assert dataset_bytes(got[uid_of(path)]) == dataset_bytes(path)


def test_a_connection_lost_inside_a_data_set_is_an_abort_exit_5(tmp_path: Path) -> None:
    """review38scu #3: the association was established, so its loss is an abort (PS3.8
    7.4), not an unreachable peer (it was exit 3)."""
    from pydicom import dcmread

    big = tmp_path / "big.dcm"
    ds = dcmread(sendable(compressed=False)[0])
    ds.add_new(0x00091010, "LO", "BIG")
    ds.add_new(0x00091011, "OB", b"\0" * 32_000_000)  # (more than the sockets hold)
    ds.save_as(big)
    with FakeSCP(walk_out) as port:
        results = _send(port, [big], retries=0)
        code = _main("127.0.0.1", str(port), str(big), "--retries", "0")
    assert [(r.outcome, r.error_kind) for r in results] == [("failed", "aborted")]
    assert code == 5


def test_an_answer_to_a_request_never_sent_aborts_at_once(tmp_path: Path, caplog) -> None:
    """review38scu #4: a C-STORE-RSP for message 101 (we sent 1) was ignored, and the
    send waited for the timeouts (600 s by default)."""
    files = sendable(compressed=False)[:2]
    with FakeSCP(answer_for(100)) as port:
        results = _send(port, files, retries=0)
    assert {(r.outcome, r.error_kind) for r in results} == {("failed", "aborted")}
    assert "CStoreRSP for message 101, which no request of ours awaits" in results[0].reason
    with FakeSCP(answer_for(0)) as port:  # (the right one: stored, then the next)
        results = _send(port, files[:1], retries=0)
    assert [r.outcome for r in results] == ["stored"]


def test_an_answer_on_a_context_never_accepted_aborts(tmp_path: Path) -> None:
    """review38scu #10: PS3.8 9.3.5, a PDV on a context that was not accepted."""
    with FakeSCP(answer_for(0, context=201)) as port:
        results = _send(port, sendable(compressed=False)[:1], retries=0)
    assert [(r.outcome, r.error_kind) for r in results] == [("failed", "aborted")]
    assert "a response on presentation context 201, which was not accepted" in results[0].reason


def test_an_association_silent_past_the_idle_timeout_is_a_timeout(tmp_path: Path) -> None:
    """review38scu #12: it ended as an abort (exit 5), the CLI's timed out is 6."""
    from dicomstore.aio.association import Timeouts

    with FakeSCP(say_nothing) as port:
        results = _send(
            port, sendable(compressed=False)[:1], retries=0, timeouts=Timeouts(network=0.3)
        )
    assert [(r.outcome, r.error_kind) for r in results] == [("failed", "timeout")]
    assert "sent nothing for 0.3 s (idle timeout)" in results[0].reason


def test_an_answer_for_another_instance_is_a_failure(tmp_path: Path) -> None:
    """review38scu #11: PS3.7 9.3.1.2, the response's Affected SOP Instance UID is the
    request's; one for another counted as stored."""
    with FakeSCP(answer_for(0, uid="1.2.3.999")) as port:
        results = _send(port, sendable(compressed=False)[:1], retries=0)
    assert [(r.outcome, r.status) for r in results] == [("failed", 0)]
    assert "the SCP answered for SOP Instance UID '1.2.3.999'" in results[0].reason


class FlakyHandler:
    """A store handler answering ``statuses[uid]`` (a list, first use first), else 0000."""

    def __init__(self, statuses: dict[str, list[int]] | None = None) -> None:
        self.statuses = statuses or {}
        self.stored: dict[str, bytes] = {}

    def begin(self, *, sop_instance_uid: str, **_kw):
        chunks: list[bytes] = []
        handler = self

        class Sink:
            def write(self, data) -> None:
                chunks.append(bytes(data))

            def commit(self):
                queue = handler.statuses.get(sop_instance_uid)
                status = queue.pop(0) if queue else 0
                if status in (0,) or status >> 12 == 0xB:
                    handler.stored[sop_instance_uid] = b"".join(chunks)
                return SimpleNamespace(status=status, error_comment=f"test {status:04X}")

            def abort(self) -> None:
                chunks.clear()

        return Sink()


def test_out_of_resources_is_retried_and_then_stored(tmp_path: Path) -> None:
    files = sendable(compressed=False)[:3]
    uid = uid_of(files[1])
    handler = FlakyHandler({uid: [0xA700, 0xA701]})
    with ServerThread(ServerConfig(port=0), handler) as server:
        results = _send(server.port, files, retries=2)
    assert summary_of(results) == {"stored": 3}
    assert [r.attempts for r in results] == [1, 3, 1]
    assert handler.stored[uid] == dataset_bytes(files[1])


def test_out_of_resources_beyond_the_retries_is_a_failure(tmp_path: Path) -> None:
    files = sendable(compressed=False)[:1]
    handler = FlakyHandler({uid_of(files[0]): [0xA700] * 5})
    with ServerThread(ServerConfig(port=0), handler) as server:
        (r,) = _send(server.port, files, retries=1)
    assert (r.outcome, r.status, r.attempts) == ("failed", 0xA700, 2)
    assert r.error_comment == "test A700"


def test_dimse_timeout_exit_6(tmp_path: Path) -> None:
    port = free_port()
    files = sendable(compressed=False)[:1]
    with dcmtk_storescp(port, tmp_path / "out", "--sleep-during", "5"):
        code = _main(
            "127.0.0.1", str(port), str(files[0]), "--dimse-timeout", "0.3", "--retries", "0"
        )
    assert code == 6


def test_a_file_unreadable_mid_send_aborts_and_the_rest_still_goes(
    tmp_path: Path, monkeypatch
) -> None:
    """Half a message cannot be followed by another (PS3.8 E.1): abort, reconnect."""
    from dicomstore.services import sources

    every = sendable(compressed=False)
    big = next(p for p in every if p.stat().st_size > sources.HEAD_SIZE)  # (read to send)
    rest = [p for p in every if p != big]
    files = [rest[0], big, rest[1], rest[2]]
    bad = uid_of(files[1])
    original = sources.file_chunks

    def failing(f, size, check=None, first=None):
        chunks = original(f, size, check, first)
        chunk = next(chunks)
        if f.name == str(files[1]):  # half the data set read, then the disk fails
            yield chunk[: len(chunk) // 4 * 2]
            raise sources.SourceReadError("read failed: Input/output error")
        yield chunk
        yield from chunks

    monkeypatch.setattr(sources, "file_chunks", failing)
    handler = FlakyHandler()
    with ServerThread(ServerConfig(port=0, max_ops=4), handler) as server:
        results = _send(server.port, files, retries=1, max_ops=4)
    assert [r.outcome for r in results] == ["stored", "failed", "stored", "stored"]
    assert results[1].reason == "read failed: Input/output error"
    assert bad not in handler.stored and len(handler.stored) == 3


def test_the_association_opens_before_every_file_is_checked_whole(monkeypatch) -> None:
    """The scan identifies every file (for the contexts to propose); each data set is
    walked whole just before it is sent, while the peer answers the one before: the
    first byte goes out without waiting for the walk of every file."""
    from dicomstore.aio import client
    from dicomstore.services import scu_send, sources

    files = sendable(compressed=False, limit=6)
    checked: list[str] = []
    at_association: list[int] = []
    check_file, associate = sources.check_file, client.associate

    def counting_check(instance):
        checked.append(instance.sop_instance_uid)
        return check_file(instance)

    async def counting_associate(*args, **kwargs):
        at_association.append(len(checked))
        return await associate(*args, **kwargs)

    monkeypatch.setattr(sources, "check_file", counting_check)
    monkeypatch.setattr(scu_send, "associate", counting_associate)
    handler = FlakyHandler()
    with ServerThread(ServerConfig(port=0), handler) as server:
        results = _send(server.port, files)
    assert [r.outcome for r in results] == ["stored"] * len(files)
    assert at_association == [1]  # (the first: an association only for something to send)
    assert sorted(checked) == sorted(uid_of(f) for f in files)  # each once


def test_a_file_found_corrupt_ahead_keeps_its_result_when_the_sends_give_up(
    tmp_path: Path,
) -> None:
    """The second file is checked while the peer handles the first; the peer aborts,
    no retry is left: the second is reported corrupt (what it is), the third failed."""
    port = free_port()
    good = sendable(tmp_path / "in", compressed=False)[:2]
    data = good[1].read_bytes()
    cut = tmp_path / "in" / "cut.dcm"
    cut.write_bytes(data[: len(data) - 100])  # (its data set cut short)
    files = [good[0], cut, good[1]]
    with dcmtk_storescp(port, tmp_path / "out", "--abort-after"):
        results = _send(port, files, retries=0)
    assert [r.outcome for r in results] == ["failed", "corrupt", "failed"]
    assert results[1].attempts == 0 and "missing" in (results[1].reason or "")


def test_a_large_file_is_checked_in_a_worker_thread(monkeypatch) -> None:
    """A file above CHECK_IN_LOOP_MAX is walked outside the event loop (its walk could
    hold the loop up); smaller ones in it, ahead of their turn."""
    from dicomstore.services import scu_send, sources

    files = sendable(compressed=False, limit=3)
    threads: list[bool] = []
    check_file = sources.check_file

    def where(instance):
        threads.append(threading.current_thread() is threading.main_thread())
        return check_file(instance)

    monkeypatch.setattr(sources, "check_file", where)
    handler = FlakyHandler()
    with ServerThread(ServerConfig(port=0), handler) as server:
        assert [r.outcome for r in _send(server.port, files)] == ["stored"] * 3
        assert threads == [True] * 3  # (asyncio.run's loop: the main thread)
        threads.clear()
        monkeypatch.setattr(scu_send, "CHECK_IN_LOOP_MAX", 0)
        assert [r.outcome for r in _send(server.port, files)] == ["stored"] * 3
        assert threads == [False] * 3


def test_a_small_file_goes_from_the_bytes_its_check_read(monkeypatch) -> None:
    """A data set within the first HEAD_SIZE bytes is sent from what its check read,
    the file not opened again; a larger one is read to be sent."""
    from dicomstore.services import sources

    every = sendable(compressed=False)
    small = [p for p in every if p.stat().st_size <= sources.HEAD_SIZE][:2]
    large = [p for p in every if p.stat().st_size > sources.HEAD_SIZE][:1]
    opened: list[str] = []
    open_dataset = sources.open_dataset

    def counting(instance, opener=None):
        opened.append(instance.path.name)
        return open_dataset(instance, opener)

    monkeypatch.setattr(sources, "open_dataset", counting)
    handler = FlakyHandler()
    with ServerThread(ServerConfig(port=0), handler) as server:
        results = _send(server.port, [*small, *large])
    assert [r.outcome for r in results] == ["stored"] * 3
    assert opened == [large[0].name]
    for path in [*small, *large]:
        assert handler.stored[uid_of(path)] == dataset_bytes(path)


def test_a_data_set_over_the_scp_s_size_limit_is_not_sent_again(tmp_path: Path) -> None:
    """Our SCP's A700 for a data set over its limit says so in its comment: sending it
    again gets the same answer (it was sent 1 + retries times, whole each time)."""
    from dicomstore.archive import Archive

    files = sendable(compressed=False)[:1]
    with Archive(tmp_path / "archive", fsync=False) as archive:
        config = ServerConfig(port=0, max_instance_bytes=64)
        with ServerThread(config, archive) as server:
            (r,) = _send(server.port, files, retries=3)
    assert (r.outcome, r.status, r.attempts) == ("failed", 0xA700, 1)
    assert r.error_comment == "data set larger than the limit of 64 bytes"
