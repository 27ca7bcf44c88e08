"""Rendered images and thumbnails hold a place while they render or wait for one of
the two turns (http/places.py, review103 F1): at most 16 answers at once, 6 of them
to one client address; beyond, 503 with Retry-After and a WARNING naming the client,
so that one client's renders never hold every worker thread nor every turn."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_testlib import HttpThread, get_or_cut, make_dataset, store

from dicomstore.archive import Archive
from dicomstore.http import places, render
from dicomstore.http.common import HttpError

STUDY, SERIES, SOP = "1.2.826.0.1.3680043.10.41", "1.2.826.0.1.3680043.10.41.1", "1.2.41.1"
THUMBNAIL = f"/studies/{STUDY}/series/{SERIES}/instances/{SOP}/thumbnail"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[HttpThread]:
    archive = Archive(tmp_path / "archive", fsync=False)
    store(archive, make_dataset(SOP, study=STUDY, series=SERIES, frames=1, rows=8, columns=8))
    with HttpThread(archive) as served:
        yield served
    archive.close()


def test_beyond_six_renders_to_one_client_it_is_503(web, caplog, monkeypatch) -> None:
    monkeypatch.setattr(render, "PLACE_WAIT", 0.0)  # (no waiting for a place: at once)
    held = [render.RENDERING.take("127.0.0.1") for _ in range(6)]
    try:
        with caplog.at_level(logging.WARNING):
            status, body = get_or_cut(web.server.port, THUMBNAIL)
        assert status == 503 and body is not None
        assert b"6 answers to 127.0.0.1 are being rendered already: ask again" in body
        assert "from 127.0.0.1 refused (503)" in caplog.text
        held.pop().release()
        status, body = get_or_cut(web.server.port, THUMBNAIL)
        assert status == 200 and body is not None and body[:2] == b"\xff\xd8"  # a JPEG
    finally:
        for slot in held:
            slot.release()
    assert render.RENDERING.taken == {}  # (every place let go, the answers' too)


def test_places_are_shared_by_every_client_up_to_sixteen() -> None:
    held = [render.RENDERING.take(f"192.0.2.{n // 6}") for n in range(16)]
    try:
        with pytest.raises(HttpError, match="16 answers are being rendered"):
            render.RENDERING.take("192.0.2.99")
        with pytest.raises(HttpError, match="6 answers to 192.0.2.0 are"):
            render.RENDERING.take("192.0.2.0")
    finally:
        for slot in held:
            slot.release()
    render.RENDERING.take("192.0.2.99").release()


class _Noted(set):
    """The places' waiters, telling when one comes."""

    def __init__(self) -> None:
        super().__init__()
        self.came = threading.Event()

    def add(self, waiter: object) -> None:
        super().add(waiter)
        self.came.set()


def test_an_answer_waits_for_a_place_let_go(web, monkeypatch) -> None:
    """review104 F4: renders whose client left hold their places until they end; the
    next page's thumbnails got 503 at once (a browser does not ask again for an
    image). An answer now waits for a place (in the event loop) up to PLACE_WAIT s."""
    noted = _Noted()
    monkeypatch.setattr(render.RENDERING, "waiters", noted)
    held = [render.RENDERING.take("127.0.0.1") for _ in range(6)]
    got: list[tuple[int, bytes | None]] = []
    asking = threading.Thread(target=lambda: got.append(get_or_cut(web.server.port, THUMBNAIL)))
    asking.start()
    try:
        assert noted.came.wait(30)  # (it waits: no 503)
        held.pop().release()
        asking.join(30)
        ((status, body),) = got
        assert status == 200 and body is not None and body[:2] == b"\xff\xd8"
    finally:
        for slot in held:
            slot.release()
        asking.join(30)


def test_an_answer_whose_client_left_while_it_waited_is_not_rendered(web, monkeypatch) -> None:
    noted = _Noted()
    monkeypatch.setattr(render.RENDERING, "waiters", noted)
    rendered: list[object] = []
    monkeypatch.setattr(render, "_image", lambda *args: rendered.append(args))
    held = [render.RENDERING.take("127.0.0.1") for _ in range(6)]
    mine = {id(slot) for slot in held}
    let_go, release = threading.Event(), places.Slot.release

    def released(slot: places.Slot) -> None:
        release(slot)
        if id(slot) not in mine:  # (the waiting answer's: it has ended)
            let_go.set()

    monkeypatch.setattr(places.Slot, "release", released)
    client = socket.create_connection(("127.0.0.1", web.server.port))
    try:
        client.sendall(f"GET {THUMBNAIL} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert noted.came.wait(30)
    finally:
        client.close()  # (the user followed a link)
    held.pop().release()
    assert let_go.wait(30)
    assert rendered == []  # (its place taken, its client gone: never rendered)
    for slot in held:
        slot.release()
