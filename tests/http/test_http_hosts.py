"""The Host guard against DNS rebinding (http/hosts.py; review38web #1)."""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

import httpx
import pytest
from http_testlib import HttpThread, make_dataset, multipart_body, part10
from test_http_security import load_policy, policy_text

from dicomstore.archive import Archive
from dicomstore.archive.reader import ArchiveReader
from dicomstore.cli.http_options import add_http_options, allowed_hosts
from dicomstore.http.hosts import AllowedHosts, hostname
from dicomstore.http.security import HttpSecurity

STUDY = "1.2.826.0.1.3680043.10.78"


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("127.0.0.1:8042", "127.0.0.1"),
        ("[::1]:80", "::1"),
        ("[::1]", "::1"),
        ("localhost:", "localhost"),
        ("[::1]:", "::1"),
        ("PACS.Example.org.:8042", "pacs.example.org"),
        ("[::1]x", None),
        ("a:b", None),
        ("[::1", None),
        (":80", None),
    ],
)
def test_the_name_in_a_host_value(host: str, name: str | None) -> None:
    assert hostname(host) == name


def test_what_is_allowed_by_default_and_by_configuration() -> None:
    default = AllowedHosts.of(())
    for host in ("127.0.0.1", "10.1.2.3:8042", "[::1]:8042", "localhost:8042", "a.localhost"):
        assert default.allows(host), host
    assert default.allows(socket.gethostname())
    for host in ("evil.example", "evil.example:8042", "127.0.0.1.evil.example", "localhost.evil"):
        assert not default.allows(host), host
    configured = AllowedHosts.of(("pacs.example.org", ".hospital.lan"))
    assert configured.allows("PACS.example.org:443")
    assert configured.allows("ws1.hospital.lan")
    assert not configured.allows("hospital.lan") and not configured.allows("evil.example")
    assert AllowedHosts.of(("*",)).allows("anything.example")


def rebound_stow(client: httpx.Client, sop: str, host: str) -> httpx.Response:
    body, content_type = multipart_body([part10(make_dataset(sop, study=STUDY))])
    headers = {"content-type": content_type, "host": host, "origin": f"http://{host}"}
    return client.post("/studies", content=body, headers=headers)


def test_an_open_server_answers_no_page_whose_name_was_rebound(tmp_path: Path, caplog) -> None:
    archive = Archive(tmp_path / "a", fsync=False)
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        port = srv.server.port
        with caplog.at_level(logging.WARNING, logger="dicomstore.http.hosts"):
            for _ in range(2):
                r = client.get("/studies", headers={"host": f"rebind.evil.example:{port}"})
                assert r.status_code == 400
                assert "not a name of this server" in r.text
                assert "--http-allowed-host" in r.text
            r = rebound_stow(client, STUDY + ".1", f"rebind.evil.example:{port}")
            assert r.status_code == 400
        assert not list(ArchiveReader(archive.root).search("instance", {}))
        logged = [r.getMessage() for r in caplog.records if r.name == "dicomstore.http.hosts"]
        assert len(logged) == 1 and "'rebind.evil.example:" in logged[0]  # once per name
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1"):
            assert client.get("/studies", headers={"host": host}).status_code == 200, host
        assert rebound_stow(client, STUDY + ".2", f"localhost:{port}").status_code == 200
        assert client.get("/healthz", headers={"host": "evil.example"}).status_code == 400
    archive.close()


def test_behind_a_trusted_proxy_the_forwarded_host_is_guarded(tmp_path: Path) -> None:
    """review67 F3: a proxy passes its upstream's address as Host and the browser's
    name as X-Forwarded-Host (nginx's usual way): the rebound name got through, and
    the answer's URLs were built on it."""
    archive = Archive(tmp_path / "a", fsync=False)
    with (
        HttpThread(archive, trust_forwarded=True) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        proxied = {"host": f"127.0.0.1:{srv.server.port}", "x-forwarded-for": "10.0.0.7"}
        r = client.get("/studies", headers={**proxied, "x-forwarded-host": "evil.example"})
        assert r.status_code == 400 and "X-Forwarded-Host 'evil.example'" in r.text
        r = client.get("/studies", headers={**proxied, "x-forwarded-host": "localhost:8042"})
        assert r.status_code == 200
        # every name counts (review69 M2: a page sends the header itself, a proxy that
        # appends puts its own last; only the first was looked at)
        listed = {**proxied, "x-forwarded-host": "localhost, evil.example"}
        assert client.get("/studies", headers=listed).status_code == 400
        twice = [
            *proxied.items(),
            ("x-forwarded-host", "localhost"),
            ("x-forwarded-host", "evil.example"),
        ]
        assert client.get("/studies", headers=twice).status_code == 400
        both = {**proxied, "x-forwarded-host": "localhost, 127.0.0.1:8042"}
        assert client.get("/studies", headers=both).status_code == 200
        assert client.get("/studies", headers=proxied).status_code == 200
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        forged = {"x-forwarded-host": "evil.example"}  # (not trusted: not a name used)
        assert client.get("/studies", headers=forged).status_code == 200
    archive.close()


def test_names_the_operator_allows_are_served(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "a", fsync=False)
    security = HttpSecurity(allowed_hosts=("pacs.example.org",))
    with (
        HttpThread(archive, security=security) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        assert client.get("/studies", headers={"host": "pacs.example.org"}).status_code == 200
        assert client.get("/studies", headers={"host": "other.example"}).status_code == 400
    archive.close()


@pytest.mark.parametrize("anonymous", ["", 'http_anonymous_may = ["read"]'])
def test_the_guard_is_on_while_requests_without_credentials_have_rights(
    tmp_path: Path, anonymous: str
) -> None:
    archive = Archive(tmp_path / "a", fsync=False)
    security = HttpSecurity(policy=load_policy(tmp_path, policy_text(anonymous)))
    with (
        HttpThread(archive, security=security) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        r = client.get("/studies", headers={"host": "evil.example"})
        # a rebound page sends no credentials: with no anonymous rights it gets 401 anyway
        assert r.status_code == (400 if anonymous else 401)
    archive.close()


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_http_options(parser)
    return parser.parse_args(argv)


def test_the_options_that_allow_names(capsys) -> None:
    args = parse(
        "--http-allowed-host",
        "pacs.example.org",
        "--http-allowed-host",
        ".lan",
        "--http-base-url",
        "https://proxy.example.org/dicomweb",
    )
    assert allowed_hosts(args) == ("pacs.example.org", ".lan", "proxy.example.org")
    assert allowed_hosts(parse()) == ()
    for bad in ("http://pacs.example.org", "pacs.example.org:8042", "a b", ""):
        with pytest.raises(SystemExit):
            parse("--http-allowed-host", bad)
        assert "not a host name" in capsys.readouterr().err
