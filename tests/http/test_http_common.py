"""Retrieve URLs (http/common.py url_of, PS3.18 10.4.1): every UID one path segment."""

from __future__ import annotations

from pathlib import Path

import httpx
from http_testlib import HttpThread, make_dataset, store

from dicomstore.archive import Archive
from dicomstore.http.common import url_of


def test_a_uid_of_dots_alone_is_no_dot_segment_and_its_url_retrieves_it(tmp_path: Path) -> None:
    """review52 L8: a sender's Series UID '..' gave '/series/../instances/...', which a
    client resolving dot-segments (RFC 3986 5.2.4) turns into another resource."""
    assert (
        url_of("http://h/", "1.2", "..", ".") == "http://h/studies/1.2/series/%2E%2E/instances/%2E"
    )
    assert url_of("http://h/", "1.2/3", "4") == "http://h/studies/1.2%2F3/series/4"
    with Archive(tmp_path / "archive", fsync=False) as archive:
        store(archive, make_dataset("1.2.826.0.1.3680043.10.52.1", series=".."))
        with HttpThread(archive) as web:
            (row,) = archive.instances()
            url = url_of(web.url + "/", row["study_uid"], "..", row["sop_instance_uid"])
            assert "/series/%2E%2E/instances/" in url
            reply = httpx.get(url + "/metadata")
    assert reply.status_code == 200, reply.text
    assert reply.json()[0]["0020000E"]["Value"] == [".."]
