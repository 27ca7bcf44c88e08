"""Access and refusal log lines of the HTTP door stay one line each (CWE-117)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
from http_testlib import HttpThread
from tests.cli.test_logs import capture

from dicomstore.archive import Archive


def test_a_newline_in_a_url_path_forges_no_line(tmp_path: Path) -> None:
    """review35a F7: an anonymous request with %0A in its path."""
    archive = Archive(tmp_path / "archive", fsync=False)
    _, out, handler = capture("dicomstore.http")
    try:
        with HttpThread(archive) as web, httpx.Client(base_url=web.url) as client:
            forged = "/studies/1.2%0A2026-01-01%2000:00:00,000%20INFO%20dicomstore.http.access:%20x"
            assert client.get(forged).status_code == 404
    finally:
        logging.getLogger("dicomstore.http").removeHandler(handler)
        archive.close()
    lines = out.getvalue().splitlines()
    assert lines and all(" dicomstore.http" in line.split(": ", 1)[0] for line in lines)
    assert any("/studies/1.2\\n2026-01-01" in line for line in lines)
