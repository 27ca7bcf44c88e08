"""The headers every answer carries (http/headers.py; review38web #3)."""

from __future__ import annotations

from pathlib import Path

import httpx
from http_testlib import HttpThread, make_dataset, store

from dicomstore.archive import Archive
from dicomstore.http.headers import PAGE_POLICY
from dicomstore.http.security import HttpSecurity

STUDY = "1.2.826.0.1.3680043.10.79"


def answers(tmp_path: Path, security: HttpSecurity | None = None) -> dict[str, httpx.Response]:
    archive = Archive(tmp_path / "a", fsync=False)
    store(archive, make_dataset(STUDY + ".1.1", study=STUDY, series=STUDY + ".1"))
    paths = {
        "page": "/",
        "json": "/studies",
        "zip": f"/studies/{STUDY}?accept=application/zip",
        "404": "/nothing-here",
    }
    with (
        HttpThread(archive, security=security) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        got = {name: client.get(path) for name, path in paths.items()}
    archive.close()
    return got


def test_every_answer_is_kept_from_caches_sniffing_and_other_sites(tmp_path: Path) -> None:
    got = answers(tmp_path)
    assert [r.status_code for r in got.values()] == [200, 200, 200, 404]
    for name, r in got.items():
        assert r.headers["cache-control"] == "no-store", name
        assert r.headers["x-content-type-options"] == "nosniff", name
        assert r.headers["referrer-policy"] == "no-referrer", name
        assert r.headers["cross-origin-resource-policy"] == "same-origin", name
    page = got["page"].headers
    assert page["content-security-policy"] == PAGE_POLICY
    assert page["x-frame-options"] == "DENY"
    for name in ("json", "zip", "404"):
        assert "content-security-policy" not in got[name].headers, name


def test_viewers_elsewhere_may_embed_images(tmp_path: Path) -> None:
    got = answers(tmp_path, HttpSecurity(cors_origins=("https://viewer.example.org",)))
    assert "cross-origin-resource-policy" not in got["json"].headers
    assert got["json"].headers["cache-control"] == "no-store"
