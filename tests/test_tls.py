"""TLS (PS3.15 B.9, BCP 195) with our own CA, against DCMTK both ways."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomstore.aio.client import associate
from dicomstore.cli import main
from dicomstore.errors import AssociationAborted
from dicomstore.services.server import ServerConfig
from dicomstore.tls import client_context, normalize_subject, peer_subject, server_context
from tests.conftest import PEER_ENV, NullHandler, ServerThread, dcmtk, free_port, peer_process


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server and a client certificate, and a stranger signed by another CA."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "otherca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN=Test {ca}",
            cwd=d,
        )
    for name, ca in (("server", "ca"), ("client", "ca"), ("stranger", "otherca")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}/O=Test Hospital",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            f"{ca}.pem",
            "-CAkey",
            f"{ca}.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            cwd=d,
        )
    return d


def _server(pki: Path, *, require: bool = False) -> ServerThread:
    ctx = server_context(
        pki / "server.pem", pki / "server.key", pki / "ca.pem", require_client_cert=require
    )
    return ServerThread(ServerConfig(port=0, ssl=ctx), NullHandler())


async def _echo(port: int, ctx: ssl.SSLContext) -> int:
    async with await associate("127.0.0.1", port, ssl=ctx) as assoc:
        return (await assoc.echo()).status


def test_our_client_and_server_with_client_certificates(pki) -> None:
    with _server(pki, require=True) as srv:
        ctx = client_context(pki / "ca.pem", pki / "client.pem", pki / "client.key")
        assert asyncio.run(_echo(srv.port, ctx)) == 0


def test_server_refuses_a_client_without_a_trusted_certificate(pki) -> None:
    with _server(pki, require=True) as srv:
        for cert in (None, "stranger"):
            ctx = client_context(
                pki / "ca.pem",
                pki / f"{cert}.pem" if cert else None,
                pki / f"{cert}.key" if cert else None,
            )
            with pytest.raises((ssl.SSLError, ConnectionError, AssociationAborted)):
                asyncio.run(_echo(srv.port, ctx))
        # and keeps serving the good ones
        good = client_context(pki / "ca.pem", pki / "client.pem", pki / "client.key")
        assert asyncio.run(_echo(srv.port, good)) == 0


def test_a_client_refused_after_its_handshake_is_told_why_it_may_be(pki) -> None:
    """review45: a client refused for want of a certificate read only "the connection
    closed unexpectedly" (TLS 1.3: the server refuses after the client's handshake)."""
    with _server(pki, require=True) as srv, pytest.raises(AssociationAborted) as refused:
        asyncio.run(_echo(srv.port, client_context(pki / "ca.pem")))
    assert "requires a client certificate, --tls-cert/--tls-key" in str(refused.value)
    assert str(refused.value).startswith("the connection closed unexpectedly: over TLS")


def test_a_refused_handshake_is_logged_with_its_reason(pki, caplog) -> None:
    """review45 M4: a client without a certificate, or speaking plain DICOM to the TLS
    port, left no line in the server's log (asyncio's server drops it silently)."""
    import logging
    import socket

    with caplog.at_level(logging.INFO), _server(pki, require=True) as srv:
        bare = client_context(pki / "ca.pem")
        with pytest.raises((ssl.SSLError, ConnectionError, AssociationAborted)):
            asyncio.run(_echo(srv.port, bare))
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as plain:
            plain.sendall(b"\x01\x00\x00\x00\x00\xcd" + bytes(205))  # (an A-ASSOCIATE-RQ)
            with contextlib.suppress(ConnectionError):
                while plain.recv(100):  # (until the server closes it)
                    pass
        srv.call(_handshakes_done(srv))
    lines = [r.getMessage() for r in caplog.records if "TLS connection from" in r.getMessage()]
    assert any("no client certificate" in line or "certificate" in line for line in lines), lines
    assert any("not TLS" in line for line in lines), lines
    assert all("from 127.0.0.1:" in line for line in lines), lines  # (review47 #3: 'from ?')


class _Records:
    """An audit sink that keeps what it is given."""

    def __init__(self) -> None:
        self.associations: list[dict] = []

    def association(self, record: dict) -> None:
        self.associations.append(record)

    def instance(self, record: dict) -> None:
        pass


def test_a_refused_handshake_is_an_audit_record(pki) -> None:
    """review110 I5: handshakes refused (no client certificate, one of another CA)
    were WARNING lines and no audit record (PS3.15 A.5.3.11 Security Alert)."""
    ctx = server_context(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    records = _Records()
    with ServerThread(ServerConfig(port=0, ssl=ctx), NullHandler(), audit=records) as srv:
        stranger = client_context(pki / "ca.pem", pki / "stranger.pem", pki / "stranger.key")
        with pytest.raises((ssl.SSLError, ConnectionError, AssociationAborted)):
            asyncio.run(_echo(srv.port, stranger))
        srv.call(_handshakes_done(srv))
    (record,) = records.associations
    assert record["event"] == "association" and record["peer"] == "127.0.0.1"
    assert record["calling_ae"] is None and record["contexts_accepted"] == []
    assert record["outcome"].startswith("rejected: TLS handshake: its certificate: "), record


def test_handshakes_count_as_connections_that_sent_no_request(pki, caplog) -> None:
    """review107 M2: a TLS connection was counted against --max-pending-connections
    only once its handshake was done: one address held hundreds of handshakes open
    (each up to ARTIM) and the server ran out of descriptors. Counted from accept:
    beyond a quarter of the limit from one address, closed at once; others served."""
    import logging

    from dicomstore.services.server import Server
    from tests.aio.test_aio_slowloris import _rq_bytes, _until

    caplog.set_level(logging.WARNING, "dicomstore")
    tls = server_context(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    client = client_context(pki / "ca.pem")

    async def main() -> tuple[bytes, int, bytes]:
        config = ServerConfig(port=0, ssl=tls, max_pending_connections=8)
        server = Server(config, NullHandler())
        await server.start()
        opened = []
        try:
            for _ in range(2):  # (a quarter of 8, from 127.0.0.1: no ClientHello sent)
                opened.append(await asyncio.open_connection("127.0.0.1", server.port))
                await _until(lambda: sum(server.listener.handshaking.values()) == len(opened))
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            opened.append((reader, writer))
            closed_at_once = await asyncio.wait_for(reader.read(), 10)
            held = sum(server.listener.handshaking.values())
            other = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=client, local_addr=("127.0.0.2", 0)
            )
            opened.append(other)
            other[1].write(_rq_bytes())
            served = await asyncio.wait_for(other[0].read(1), 10)  # (A-ASSOCIATE-AC)
            return closed_at_once, held, served
        finally:
            for _, writer in opened:
                writer.close()
            await server.close(grace=1)

    closed_at_once, held, served = asyncio.run(main())
    assert closed_at_once == b"" and held == 2 and served == b"\x02"
    said = "connection closed at once: 2 connection(s) from 127.0.0.1 have sent no"
    assert said in caplog.text


def test_a_client_closed_at_once_over_tls_is_told_why_it_may_be(pki, tmp_path, capsys) -> None:
    """review109 M1: closed before its handshake by a server with too many connections
    pending from its address, `echo --tls` said "cannot connect:  (over TLS: does that
    port speak TLS?)": no reason, and a guess that leaves out the likelier one; `send`
    said "Connection reset by peer"."""
    import socket

    from pydicom import examples

    from tests.aio.test_aio_slowloris import _until

    examples.ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)

    tls = server_context(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    config = ServerConfig(port=0, ssl=tls, max_pending_connections=4)  # (1 per address)
    with (
        ServerThread(config, NullHandler()) as srv,
        socket.create_connection(("127.0.0.1", srv.port)),
    ):
        srv.call(_until(lambda: sum(srv.server.listener.handshaking.values()) == 1))
        code = main(["echo", "127.0.0.1", str(srv.port), "--tls-ca", str(pki / "ca.pem")])
        err = capsys.readouterr().err
        sent = ["send", "127.0.0.1", str(srv.port), str(tmp_path / "ct.dcm"), "--retries", "0"]
        send_code = main([*sent, "--tls-ca", str(pki / "ca.pem")])
    out, send_err = capsys.readouterr()
    assert code != 0
    assert "too many connections pending from here" in err and ":  (" not in err, err
    assert send_code != 0 and "too many connections pending from here" in out + send_err


def test_a_refused_certificate_is_not_tried_again() -> None:
    """review107 L2: `send` retried (3 times, ~7 s) a handshake whose certificate was
    refused: the server's by us, ours by the server (its alert seen, TLS 1.2, or after
    the handshake). A close without the alert (TLS 1.3) may be the server's pending
    limit too: tried again."""
    from dicomstore.services.storage_scu import classify

    unverified = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert classify(unverified) == ("unreachable", False)
    alert = ssl.SSLError(1, "tlsv13 alert certificate required")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert classify(alert) == ("unreachable", False)
    said = "the connection closed unexpectedly: the server requires a client certificate"
    assert classify(AssociationAborted(said)) == ("aborted", False)
    guessed = "the connection closed unexpectedly: over TLS, before any answer (...)"
    assert classify(AssociationAborted(guessed)) == ("aborted", True)
    assert classify(ConnectionResetError()) == ("unreachable", True)


def test_handshake_failures_in_words() -> None:
    from dicomstore.tls import handshake_failure

    late = ConnectionAbortedError(
        "SSL handshake is taking longer than 0.5 seconds: aborting the connection"
    )  # (asyncio's and uvloop's words for --artim-timeout / --http-timeout passed)
    assert (
        handshake_failure(late)
        == handshake_failure(TimeoutError())
        == ("handshake not done in time")
    )
    assert handshake_failure(ConnectionResetError(104, "reset")) is None  # (left untried)


def test_alerts_after_the_handshake_in_words() -> None:
    from dicomstore.tls import alert_words

    def alert(reason: str) -> ssl.SSLError:
        exc = ssl.SSLError(1, reason)
        exc.reason = reason
        return exc

    assert "requires a client certificate" in str(
        alert_words(alert("TLSV13_ALERT_CERTIFICATE_REQUIRED"))
    )
    assert alert_words(alert("TLSV1_ALERT_UNKNOWN_CA")) == (
        "the server refused our certificate (TLS alert TLSV1_ALERT_UNKNOWN_CA)"
    )
    assert alert_words(None) is None and alert_words(ConnectionResetError()) is None


async def _handshakes_done(srv: ServerThread) -> None:
    """(On the server's loop.) Every connection's handshake has ended (and been logged)."""
    adopting = set(srv.server.listener._adopting)
    if adopting:
        await asyncio.wait(adopting)


def test_client_refuses_a_server_it_cannot_verify(pki) -> None:
    with _server(pki) as srv, pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(_echo(srv.port, client_context(pki / "otherca.pem")))


def _named_server(pki: Path, names: str) -> ServerThread:
    """A server whose certificate (signed by ``ca``) names ``names`` (subjectAltName)."""
    stem = "named-" + names.replace(":", "_").replace(",", "+")
    if not (pki / f"{stem}.pem").exists():
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{stem}.key",
            "-out", f"{stem}.csr", "-subj", "/CN=pacs", "-addext", f"subjectAltName={names}",
            cwd=pki,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-copy_extensions", "copy", "-out", f"{stem}.pem", "-days", "2",
            cwd=pki,
        )  # fmt: skip
    ctx = server_context(pki / f"{stem}.pem", pki / f"{stem}.key")
    return ServerThread(ServerConfig(port=0, ssl=ctx), NullHandler())


def test_trusting_the_system_store_the_server_must_bear_the_hosts_name(pki, monkeypatch) -> None:
    """review45 H1: --tls without --tls-ca trusted every public CA and checked no name:
    any site's certificate would do. The system store (here: our CA through
    SSL_CERT_FILE, which OpenSSL's default paths read) now checks the host's name."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))
    with (
        _named_server(pki, "DNS:pacs.example.org") as srv,
        pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"),
    ):
        asyncio.run(_echo(srv.port, client_context()))
    with _named_server(pki, "IP:127.0.0.1") as srv:
        assert asyncio.run(_echo(srv.port, client_context())) == 0x0000


def test_a_server_name_given_is_checked_whatever_the_host(pki) -> None:
    """--tls-server-name: with our own CA the chain alone is checked (as DCMTK), unless
    a name is given; then the certificate must bear it (and SNI asks for it)."""
    with _named_server(pki, "DNS:pacs.example.org") as srv:
        assert asyncio.run(_echo(srv.port, client_context(pki / "ca.pem"))) == 0x0000
        named = client_context(pki / "ca.pem", server_name="pacs.example.org")
        assert asyncio.run(_echo(srv.port, named)) == 0x0000
        other = client_context(pki / "ca.pem", server_name="other.example.org")
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            asyncio.run(_echo(srv.port, other))


def test_cli_tls_server_name_on_uvloop(pki, capsys) -> None:
    """The CLI's loop (uvloop when installed) asks for and checks the name given."""
    with _named_server(pki, "DNS:pacs.example.org") as srv:
        base = ["echo", "127.0.0.1", str(srv.port), "--tls-ca", str(pki / "ca.pem")]
        assert main([*base, "--tls-server-name", "pacs.example.org"]) == 0
        assert main([*base, "--tls-server-name", "other.example.org"]) != 0
    assert "other.example.org" in capsys.readouterr().err


def test_tls_1_1_is_refused(pki) -> None:
    with _server(pki) as srv:
        ctx = client_context(pki / "ca.pem")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            asyncio.run(_echo(srv.port, ctx))


def test_dcmtk_echoscu_over_tls_to_our_server(pki) -> None:
    with _server(pki, require=True) as srv:
        result = subprocess.run(
            [
                dcmtk("echoscu"),
                "-v",
                "+tls",
                str(pki / "client.key"),
                str(pki / "client.pem"),
                "+cf",
                str(pki / "ca.pem"),
                "127.0.0.1",
                str(srv.port),
            ],
            env=PEER_ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_cli_echo_over_tls_to_dcmtk_storescp(pki, tmp_path) -> None:
    port = free_port()
    args = [
        dcmtk("storescp"),
        "+tls",
        str(pki / "server.key"),
        str(pki / "server.pem"),
        "+cf",
        str(pki / "ca.pem"),
        "-od",
        str(tmp_path),
        str(port),
    ]
    with peer_process(args, port):
        code = main(
            [
                "echo",
                "127.0.0.1",
                str(port),
                "--tls-ca",
                str(pki / "ca.pem"),
                "--tls-cert",
                str(pki / "client.pem"),
                "--tls-key",
                str(pki / "client.key"),
            ]
        )
    assert code == 0


def test_cli_echo_over_tls_to_a_plain_dcmtk_storescp_says_so(pki, tmp_path, capsys) -> None:
    """review107 L1: `echo --tls` to a port without TLS (DCMTK storescp resets the
    connection at the ClientHello) said only "Connection reset by peer"."""
    port = free_port()
    with peer_process([dcmtk("storescp"), "-od", str(tmp_path), str(port)], port):
        code = main(["echo", "127.0.0.1", str(port), "--tls-ca", str(pki / "ca.pem")])
    err = capsys.readouterr().err
    assert code != 0 and "a port without TLS" in err, err


def test_serve_workers_do_the_handshake_of_the_connections_passed_to_them(pki, tmp_path) -> None:
    """``serve --workers 2`` with TLS: the first process passes connections on before
    any TLS byte; the worker does the handshake (client certificate required), and
    four echoes held at once are served two and two."""
    import signal

    from tests.conftest import (
        echoes_held_at_once,
        serve_command,
        served_by_worker,
        wait_listening,
    )

    port, log = free_port(), tmp_path / "serve.log"
    tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    tls += ["--tls-ca", str(pki / "ca.pem"), "--tls-require-client-cert"]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            serve_command(port, tmp_path / "s", "--workers", "2", "--log-level", "info", *tls),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    ctx = client_context(pki / "ca.pem", pki / "client.pem", pki / "client.key")
    try:
        wait_listening(port, proc)  # (a connection passed before the worker runs waits)
        assert echoes_held_at_once(port, ssl=ctx) == [0, 0, 0, 0]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert served_by_worker(log) == (4, 2)


@pytest.mark.parametrize("given", [["--tls-require-client-cert"], ["--tls-ca", "ca.pem"]])
def test_client_certificate_options_without_ours_are_refused(
    given: list[str], tmp_path, capsys
) -> None:
    """review77 F10: without --tls-cert the server listened in plain TCP, clients
    unauthenticated, though client certificates were asked for: refused (2), before
    anything is made."""
    from dicomstore.cli import main

    storage = tmp_path / "s"
    assert main(["serve", "--storage", str(storage), "--port", "0", *given]) == 2
    err = capsys.readouterr().err
    assert "need --tls-cert and --tls-key: TLS is off without them" in err
    assert not storage.exists()


# -- the subject of a peer certificate (RFC 4514), as the policy's tls_subject compares it


def _cert(*rdns: tuple[tuple[str, str], ...]) -> dict:
    """``getpeercert()``'s shape: a subject of RDNs, each of (type, value) pairs."""
    return {"subject": rdns}


def test_a_comma_in_a_value_is_no_second_attribute() -> None:
    """review52 M1: one CN ``modality1,O=Test Hospital`` was rendered and read back
    as the two attributes of the peer pinned to ``CN=modality1,O=Test Hospital``."""
    forged = _cert((("commonName", "modality1,O=Test Hospital"),))
    real = _cert((("commonName", "modality1"),), (("organizationName", "Test Hospital"),))
    assert peer_subject(forged) == "CN=modality1\\,O\\=Test Hospital"  # (log, audit)
    assert peer_subject(real) == "CN=modality1,O=Test Hospital"
    pinned = normalize_subject("CN=modality1,O=Test Hospital")
    assert normalize_subject(peer_subject(real) or "") == pinned
    assert normalize_subject(peer_subject(forged) or "") == (("CN", "modality1,O=Test Hospital"),)


@pytest.mark.parametrize(
    ("written", "pairs"),
    [  # what policy files say today reads as it did
        ("CN=modality1,O=Test Hospital", (("CN", "modality1"), ("O", "Test Hospital"))),
        ("O=Test Hospital, cn = modality1", (("CN", "modality1"), ("O", "Test Hospital"))),
        ("commonName=a,organizationName=b", (("CN", "a"), ("O", "b"))),
        ("CN=a,O=Smith, Jones and Co", (("CN", "a"), ("O", "Smith, Jones and Co"))),
        ("CN=a+b,OU=x", (("CN", "a+b"), ("OU", "x"))),
        # RFC 4514 escapes: a comma, an equals sign, spaces kept, UTF-8 in hex
        ("CN=modality1\\,O=Test Hospital", (("CN", "modality1,O=Test Hospital"),)),
        ("CN=\\ a\\ ,O=\\#1", (("CN", " a "), ("O", "#1"))),
        ("CN=Caf\\C3\\A9", (("CN", "Café"),)),
        ("CN=a+OU=b", (("CN", "a"), ("OU", "b"))),  # a multi-valued RDN
    ],
)
def test_policy_subjects(written: str, pairs: tuple) -> None:
    assert normalize_subject(written) == pairs


@pytest.mark.parametrize("bad", ["modality1", "=a"])
def test_bad_policy_subjects(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_subject(bad)


@pytest.mark.parametrize(
    ("written", "value"),
    [("CN=CORP\\modality", "CORP\\modality"), ("CN=CORP\\AD01", "CORP\\AD01"), ("CN=a\\", "a\\")],
)
def test_a_backslash_escaping_nothing_is_a_backslash_as_written_before(
    written: str, value: str
) -> None:
    """review55 L1: a policy written before RFC 4514 escaping, ``CN=CORP\\host``, no
    longer matched, and ``CN=CORP\\AD01`` (not UTF-8 in hex) stopped the start; the
    certificate's side, escaped, reads back as the same value."""
    assert normalize_subject(written) == (("CN", value),)
    cert = {"subject": ((("commonName", value),),)}
    assert normalize_subject(peer_subject(cert) or "") == (("CN", value),)


@settings(deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["commonName", "organizationName", "OU", "1.2.3.4", "DC"]),
                st.text(st.characters(codec="utf-8"), max_size=12),
            ),
            min_size=1,
            max_size=2,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_every_subject_reads_back_as_itself(rdns: list) -> None:
    """Whatever the values: the rendered text is one line, and reads back as exactly the
    certificate's attributes (so no value can stand for another subject's)."""
    text = peer_subject(_cert(*(tuple(rdn) for rdn in rdns)))
    assert text is not None and text.isprintable()
    short = {"commonName": "CN", "organizationName": "O"}
    expected = sorted((short.get(k, k.upper()), v) for rdn in rdns for k, v in rdn)
    assert normalize_subject(text) == tuple(expected)


def test_tls_no_verify_alone_asks_for_tls(pki, capsys) -> None:
    """review110 M1: --tls-no-verify alone (unlike --tls-ca, --tls-cert,
    --tls-server-name) left TLS off: a plain server was sent the data in clear, exit 0."""
    with ServerThread(ServerConfig(port=0), NullHandler()) as plain:
        code = main(["echo", "127.0.0.1", str(plain.port), "--tls-no-verify"])
    err = capsys.readouterr().err
    assert code == 3 and err.strip() == (
        "dicomstore: TLS failed: the server answered without TLS (WRONG_VERSION_NUMBER):"
        " a port without TLS?"
    )
    with _server(pki) as srv:
        assert main(["echo", "127.0.0.1", str(srv.port), "--tls-no-verify"]) == 0


def test_a_tls_key_without_its_certificate_is_a_usage_error(pki, capsys) -> None:
    """review110 M1: --tls-key alone was ignored (plain TCP)."""
    with ServerThread(ServerConfig(port=0), NullHandler()) as plain:
        code = main(["echo", "127.0.0.1", str(plain.port), "--tls-key", str(pki / "client.key")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "dicomstore: cannot set up TLS: --tls-key needs --tls-cert (the certificate of that key)"
    )


def test_send_says_tls_failed_in_the_verifier_s_words(pki, tmp_path, capsys) -> None:
    """review110 L1: send gave OpenSSL's text with its C source place ('(_ssl.c:1006)'),
    three times, where echo and find say 'TLS failed: <why>'."""
    from tests.services.nodes_testlib import write_instances

    (path,) = write_instances(tmp_path / "in", "1.2.110.1", 1)
    with _server(pki) as srv:
        code = main(
            ["send", "127.0.0.1", str(srv.port), str(path), "--tls-ca", str(pki / "otherca.pem")]
        )
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 3, text
    assert (
        "TLS failed: " in text and "_ssl.c" not in text and "CERTIFICATE_VERIFY_FAILED" not in text
    )


def _dated_certificate(folder: Path, days_from: int, days_to: int) -> tuple[Path, Path]:
    """A self-signed certificate valid from ``days_from`` to ``days_to`` days from now."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacs")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days_from))
        .not_valid_after(now + datetime.timedelta(days=days_to))
        .sign(key, hashes.SHA256())
    )
    pem, key_pem = folder / f"dated{days_from}_{days_to}.pem", folder / f"dated{days_from}.key"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem, key_pem


@pytest.mark.parametrize(
    ("days_from", "days_to", "said"),
    [
        (-30, -1, "our certificate expired on "),
        (2, 30, "our certificate is not valid before "),
        (-30, 3, "our certificate expires on "),
        (-30, 300, None),
    ],
)
def test_our_certificate_out_of_date_is_said_at_start(tmp_path, days_from, days_to, said) -> None:
    """review110 I4: serve started on an expired certificate without a word; every
    client that verifies it refused it."""
    from tests.conftest import serve_command, start_up_log

    cert, key = _dated_certificate(tmp_path, days_from, days_to)
    port = free_port()
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    err = start_up_log(serve_command(port, tmp_path / "store", *tls), port)
    lines = [line for line in err.splitlines() if "our certificate" in line]
    if said is None:
        assert lines == [], err
        return
    (line,) = lines
    assert "WARNING" in line and f"--tls-cert {cert}: {said}" in line, line
