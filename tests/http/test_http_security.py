"""HTTP identity and rights from the policy file, HTTPS, CORS, access log, read audit
(http/auth.py, http/security.py, http/access_log.py, http/read_audit.py)."""

from __future__ import annotations

import base64
import json
import logging
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from http_testlib import HttpThread, make_dataset, multipart_body, part10, store, store_file
from pydicom.data import get_testdata_file
from tests.conftest import log_line
from tests.test_policy import FAST, SECRET, sign

from dicomstore.archive import Archive
from dicomstore.audit import AuditLog
from dicomstore.http import HttpServer
from dicomstore.http.security import HttpSecurity
from dicomstore.passcodes import hash_passcode
from dicomstore.policy import Policy, PolicyError
from dicomstore.services.admission import FailedAdmissions
from dicomstore.services.storage import StoreService

STUDY = "1.2.826.0.1.3680043.10.77"
SERIES = STUDY + ".1"
KEPT = STUDY + ".1.1"  # stored before each test, to read
ANONYMOUS_READ = 'http_anonymous_may = ["read"]'


def policy_text(anonymous: str = "", jwt: str = "") -> str:
    reader = hash_passcode("reader-pw", **FAST)
    writer = hash_passcode("writer-pw", **FAST)
    uploader = hash_passcode("uploader-pw", **FAST)
    return f"""
allow_unknown = false
{anonymous}
[peers.MODALITY]
[users.reader]
passcode = "{reader}"
may = ["read"]
[users.writer]
passcode = "{writer}"
may = ["read", "store"]
[users.uploader]
passcode = "{uploader}"
may = ["store"]
[users.nopass]
[jwt]
secret = "{SECRET.decode()}"
{jwt}
"""


def load_policy(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return Policy.load(path)


def basic(user: str, passcode: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{passcode}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(sub: str, expires_in: float = 300, key: bytes = SECRET) -> dict[str, str]:
    token = sign({"sub": sub, "exp": time.time() + expires_in}, key=key)
    return {"Authorization": f"Bearer {token}"}


def stow(client: httpx.Client, sop: str, headers: dict[str, str] | None = None) -> httpx.Response:
    ds = make_dataset(sop, study=STUDY, series=SERIES)
    body, content_type = multipart_body([part10(ds)])
    return client.post(
        "/studies", content=body, headers={"content-type": content_type, **(headers or {})}
    )


@dataclass
class Site:
    client: httpx.Client
    archive: Archive
    audit: AuditLog
    anonymous_read: bool = False

    def records(self, event: str) -> list[dict]:
        assert self.audit.flush(10)
        lines = self.audit.path.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.fixture
def site(tmp_path: Path, request) -> Iterator[Site]:
    options = dict(getattr(request, "param", {}))
    anonymous = options.pop("anonymous", "")
    policy = load_policy(tmp_path, policy_text(anonymous, options.pop("jwt", "")))
    archive = Archive(tmp_path / "archive", fsync=False)
    store(archive, make_dataset(KEPT, study=STUDY, series=SERIES))
    audit = AuditLog(tmp_path / "audit.jsonl")
    service = StoreService(archive, gatekeeper=policy, audit=audit)
    security = HttpSecurity(policy=policy, audit=audit, **options)
    with (
        HttpThread(archive, store=service, security=security) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        yield Site(client, archive, audit, anonymous == ANONYMOUS_READ)
    audit.close()
    archive.close()


# --------------------------------------------------------------------------- 401, 403


def test_anonymous_is_refused_with_challenges(site: Site) -> None:
    for path in ("/studies", f"/studies/{STUDY}", "/", "/openapi.json"):
        reply = site.client.get(path)
        assert reply.status_code == 401, path
        challenges = reply.headers.get_list("www-authenticate")
        assert 'Basic realm="dicomstore", charset="UTF-8"' in challenges
        assert 'Bearer realm="dicomstore"' in challenges


def test_anonymous_stow_is_refused_and_nothing_is_stored(site: Site) -> None:
    assert stow(site.client, STUDY + ".1.9").status_code == 401
    assert site.archive.path_of(STUDY + ".1.9") is None
    assert site.records("instance") == []


@pytest.mark.parametrize(
    "headers",
    [
        basic("reader", "wrong"),
        basic("nobody", "reader-pw"),
        basic("nopass", "anything"),  # no passcode in the file: Basic cannot vouch for it
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Digest username=reader"},
    ],
)
def test_bad_basic_credentials_get_401(site: Site, headers, caplog) -> None:
    with caplog.at_level(logging.WARNING, "dicomstore.http.auth"):
        reply = site.client.get("/studies", headers=headers)
    assert reply.status_code == 401
    assert reply.headers.get_list("www-authenticate")
    assert "credentials not accepted" in reply.text
    assert "credentials refused" in caplog.text


def test_two_authorization_headers_get_400(site: Site, caplog) -> None:
    """review67 I2: the first of two was used (a proxy in front may have checked the
    other); a singleton field given twice is refused, good credentials or not."""
    good = basic("reader", "reader-pw")["Authorization"]
    for second in (basic("nobody", "x")["Authorization"], good):
        headers = [("Authorization", good), ("Authorization", second)]
        with caplog.at_level(logging.WARNING, "dicomstore.http.auth"):
            reply = site.client.get("/studies", headers=headers)
        assert reply.status_code == 400
        assert "more than one Authorization header" in reply.text
    assert "2 Authorization headers" in caplog.text
    assert site.client.get("/studies", headers={"Authorization": good}).status_code == 200


def test_basic_good_reads(site: Site) -> None:
    reply = site.client.get("/studies", headers=basic("reader", "reader-pw"))
    assert reply.status_code == 200
    assert reply.json()[0]["0020000D"]["Value"] == [STUDY]


def test_bearer_good_reads_and_bad_or_expired_get_401(site: Site) -> None:
    assert site.client.get("/studies", headers=bearer("reader")).status_code == 200
    for headers in (bearer("reader", key=b"x" * 40), bearer("reader", expires_in=-600)):
        reply = site.client.get("/studies", headers=headers)
        assert reply.status_code == 401
        challenges = reply.headers.get_list("www-authenticate")
        assert 'Bearer realm="dicomstore", error="invalid_token"' in challenges


def test_a_token_names_the_user_whose_rights_apply(site: Site) -> None:
    assert stow(site.client, STUDY + ".1.2", bearer("reader")).status_code == 403
    assert stow(site.client, STUDY + ".1.3", bearer("writer")).status_code == 200


def scoped(sub: str, scope: str) -> dict[str, str]:
    token = sign({"sub": sub, "exp": time.time() + 300, "scope": scope})
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("site", [{"jwt": 'rights_claim = "scope"'}], indirect=True)
def test_with_rights_claim_a_token_may_only_what_its_scope_names(site: Site) -> None:
    """An identity provider's accounts need not be listed: with ``[jwt] rights_claim`` a
    token may what its claim names, within its user's ``may`` (review76 F7)."""
    assert site.client.get("/studies", headers=scoped("idp-user", "openid read")).status_code == 200
    reply = stow(site.client, STUDY + ".1.5", scoped("idp-user", "openid read"))
    assert reply.status_code == 403  # (review79 F5: naming the claim, RFC 6750 3.1)
    assert "may not store (the token's 'scope' claim does not grant it)" in reply.text
    assert 'error="insufficient_scope"' in reply.headers["www-authenticate"]
    assert site.archive.path_of(STUDY + ".1.5") is None
    assert stow(site.client, STUDY + ".1.6", scoped("idp-user", "store read")).status_code == 200
    assert site.client.get("/studies", headers=scoped("idp-user", "")).status_code == 403
    assert site.client.get("/studies", headers=bearer("writer")).status_code == 403  # no claim
    # a listed user: no more than its own may, whatever the token names
    reply = stow(site.client, STUDY + ".1.7", scoped("reader", "read store"))
    assert reply.status_code == 403 and "claim" not in reply.text  # (its may withholds it)


def test_read_only_user_gets_403_on_stow_and_200_on_qido(site: Site, caplog) -> None:
    reader = basic("reader", "reader-pw")
    with caplog.at_level(logging.WARNING, "dicomstore.http.auth"):
        reply = stow(site.client, STUDY + ".1.4", reader)
    assert reply.status_code == 403
    assert "user 'reader' may not store" in reply.text
    assert "user 'reader' may not store" in caplog.text
    assert site.archive.path_of(STUDY + ".1.4") is None
    assert site.client.get("/studies", headers=reader).status_code == 200


def test_stow_by_a_store_user_is_stored_logged_and_audited_naming_the_user(
    site: Site, caplog
) -> None:
    with caplog.at_level(logging.DEBUG, "dicomstore.storage"):
        reply = stow(site.client, STUDY + ".1.5", basic("writer", "writer-pw"))
    assert reply.status_code == 200
    assert site.archive.path_of(STUDY + ".1.5") is not None
    (record,) = site.records("instance")
    assert record["service"] == "STOW-RS"
    assert record["user"] == "writer"
    assert record["sop_instance_uid"] == STUDY + ".1.5"
    assert record["status"] == "0000"
    assert "(user writer)" in caplog.text


def test_a_store_only_user_learns_no_retrieve_url(site: Site) -> None:
    """review38web #7: the Retrieve URL of a duplicate kept from before named the study
    and series it is filed under, which a user without ``read`` may not see. (A copy
    filed elsewhere is refused A900 since review88 F2: here another content, B000.)"""
    uploader, writer = basic("uploader", "uploader-pw"), basic("writer", "writer-pw")
    ds = make_dataset(KEPT, study=STUDY, series=SERIES, patient_name="Other^Name")
    body, content_type = multipart_body([part10(ds)])
    headers = {"content-type": content_type}
    for who, sees in ((uploader, False), (writer, True)):
        reply = site.client.post("/studies", content=body, headers=headers | who)
        assert reply.status_code in (200, 202), reply.text
        assert (f"/studies/{STUDY}/series/{SERIES}/" in reply.text) is sees, reply.text
    reply = stow(site.client, STUDY + ".1.6", uploader)
    assert reply.status_code == 200
    (item,) = reply.json()["00081199"]["Value"]
    assert item["00081190"] == {"vr": "UR"} and reply.json()["00081190"] == {"vr": "UR"}
    assert site.archive.path_of(STUDY + ".1.6") is not None


@pytest.mark.parametrize("site", [{"anonymous": ANONYMOUS_READ}], indirect=True)
def test_anonymous_gets_what_the_file_grants_and_no_more(site: Site) -> None:
    assert site.client.get("/studies").status_code == 200
    assert stow(site.client, STUDY + ".1.6").status_code == 401
    # credentials that fail are not downgraded to anonymous
    assert site.client.get("/studies", headers=basic("reader", "wrong")).status_code == 401


@pytest.mark.parametrize(
    "site", [{"max_failed": 3}, {"max_failed": 3, "anonymous": ANONYMOUS_READ}], indirect=True
)
def test_repeated_failures_are_throttled(site: Site) -> None:
    wrong = basic("reader", "wrong")
    assert [site.client.get("/studies", headers=wrong).status_code for _ in range(3)] == [401] * 3
    reply = site.client.get("/studies", headers=basic("reader", "reader-pw"))
    assert reply.status_code == 429
    assert int(reply.headers["retry-after"]) > 0
    # a request without credentials checks none: not held back (review38web #2)
    anonymous = site.client.get("/studies").status_code
    assert anonymous == (200 if site.anonymous_read else 401)


@pytest.mark.parametrize("site", [{"max_failed_per_user": 2}], indirect=True)
def test_a_user_guessed_from_many_addresses_is_locked_out_for_the_window(
    site: Site, caplog
) -> None:
    """--max-failed-logins-per-user: the refusals of one user name count whatever the
    address (a botnet guessing one password); past them the right passcode is 429 too,
    other users are not concerned."""
    wrong = basic("reader", "wrong")
    assert [site.client.get("/studies", headers=wrong).status_code for _ in range(2)] == [401] * 2
    reply = site.client.get("/studies", headers=basic("reader", "reader-pw"))
    assert reply.status_code == 429 and int(reply.headers["retry-after"]) > 0
    assert site.client.get("/studies", headers=basic("writer", "writer-pw")).status_code != 429
    assert "too many failed credentials (2 refused logins of user 'reader'" in caplog.text


def test_one_count_of_failures_for_both_doors(tmp_path: Path) -> None:
    """review38web #2: serve gives HTTP the DICOM door's count (10 + 10 guesses before)."""
    shared = FailedAdmissions(3, 60)
    policy = load_policy(tmp_path, policy_text())
    archive = Archive(tmp_path / "archive", fsync=False)
    security = HttpSecurity(policy=policy, failed=shared)
    with (
        HttpThread(archive, security=security) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        for _ in range(3):
            assert client.get("/studies", headers=basic("reader", "x")).status_code == 401
        assert shared.blocked("127.0.0.1") is not None  # what the DICOM door asks
    archive.close()


def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(tmp_path: Path, caplog) -> None:
    """review38web #2: behind a proxy one guesser's failures were every user's."""
    policy = load_policy(tmp_path, policy_text())
    archive = Archive(tmp_path / "archive", fsync=False)
    security = HttpSecurity(policy=policy, max_failed=3)
    guesser = {"x-forwarded-for": "198.51.100.7, 10.0.0.1"}  # (the first: the client's own)
    user = {"x-forwarded-for": "10.0.0.2"}
    with (
        HttpThread(archive, security=security, trust_forwarded=True) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
        caplog.at_level(logging.INFO),
    ):
        for _ in range(3):
            assert client.get("/studies", headers=basic("x", "y") | guesser).status_code == 401
        good = basic("reader", "reader-pw")
        assert client.get("/studies", headers=good | user).status_code == 200
        assert client.get("/studies", headers=good | guesser).status_code == 429
        bad = {"x-forwarded-for": "not-an-address"}
        assert client.get("/studies", headers=good | bad).status_code == 200
    assert "from 10.0.0.1: credentials refused" in caplog.text
    assert '10.0.0.2 reader "GET /studies" 200' in caplog.text
    assert "ignored the proxy's malformed X-Forwarded-For: 'not-an-address'" in caplog.text
    archive.close()


def test_good_credentials_at_once_all_get_in(site: Site) -> None:
    """review35c: checks running counted as refusals: of 20 at once, 10 were 429."""
    import concurrent.futures

    good = basic("reader", "reader-pw")
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = list(
            pool.map(lambda _: site.client.get("/studies", headers=good).status_code, range(20))
        )
    assert codes == [200] * 20


@pytest.mark.parametrize("site", [{"max_failed": 3}], indirect=True)
def test_a_login_of_ones_own_does_not_reset_the_count(site: Site) -> None:
    """review35a F4: two guesses, a login, again: throttled at the third guess."""
    wrong, mine = basic("writer", "guess"), basic("reader", "reader-pw")
    answers = []
    for _ in range(3):
        answers += [site.client.get("/studies", headers=h).status_code for h in (wrong, mine)]
    assert answers == [401, 200, 401, 200, 401, 429]


# --------------------------------------------------------------------------- audit, log


def test_wado_and_metadata_reads_are_audited(site: Site) -> None:
    reader = basic("reader", "reader-pw")
    # HEAD sends no instance: not a transfer (review35a F8), but it says the study is
    # there: an access (review67 F1); the connection goes on (the next request on it
    # is answered)
    head = site.client.head(f"/studies/{STUDY}", headers=reader)
    assert head.status_code == 200 and head.content == b""
    assert site.client.get(f"/studies/{STUDY}", headers=reader).status_code == 200
    assert site.client.get(f"/studies/{STUDY}/metadata", headers=reader).status_code == 200
    assert site.client.get(f"/studies/{STUDY}.404", headers=reader).status_code == 404
    headed, transferred, accessed = site.records("read")
    assert (headed["method"], headed["audit_event"], headed["bytes"]) == (
        "HEAD",
        "DICOM Instances Accessed",
        0,
    )
    assert headed["study_instance_uid"] == STUDY and headed["user"] == "reader"
    assert transferred["audit_event"] == "DICOM Instances Transferred"
    assert transferred["event_id"] == "110104"
    assert transferred["service"] == "WADO-RS"
    assert transferred["user"] == "reader"
    assert transferred["address"] == "127.0.0.1"
    assert transferred["study_instance_uid"] == STUDY
    assert transferred["status"] == 200 and transferred["complete"] is True
    assert transferred["bytes"] > 0
    assert accessed["audit_event"] == "DICOM Instances Accessed"
    assert accessed["path"] == f"/studies/{STUDY}/metadata"


def test_frames_rendered_and_thumbnails_need_the_read_right_and_are_audited(site: Site) -> None:
    row = store_file(site.archive, get_testdata_file("JPEG2000.dcm")).instance
    base = f"/studies/{row['study_uid']}/series/{row['series_uid']}"
    instance = f"{base}/instances/{row['sop_instance_uid']}"
    paths = [f"{instance}/frames/1", f"{instance}/rendered", f"{base}/thumbnail"]
    for path in paths:
        assert site.client.get(path).status_code == 401, path
        assert site.client.get(path, headers=basic("reader", "reader-pw")).status_code == 200
    frames, rendered, thumbnail = site.records("read")
    assert [r["path"] for r in (frames, rendered, thumbnail)] == paths
    assert frames["audit_event"] == rendered["audit_event"] == "DICOM Instances Transferred"
    assert thumbnail["audit_event"] == "DICOM Instances Accessed"
    assert rendered["sop_instance_uid"] == row["sop_instance_uid"]
    assert thumbnail["user"] == "reader" and thumbnail["series_instance_uid"] == row["series_uid"]


def test_qido_searches_are_audited_with_what_was_searched(site: Site) -> None:
    reader = basic("reader", "reader-pw")
    assert site.client.get("/studies?PatientID=PID1", headers=reader).status_code == 200
    path = f"/studies/{STUDY}/series?Modality=CT"
    assert site.client.get(path, headers=reader).status_code == 200
    assert site.client.get("/studies?offset=-1", headers=reader).status_code == 400
    studies, series = site.records("read")
    assert studies["audit_event"] == "Query" and studies["event_id"] == "110112"
    assert studies["service"] == "QIDO-RS" and studies["user"] == "reader"
    assert studies["query"] == "PatientID=PID1" and studies["study_instance_uid"] is None
    assert series["query"] == "Modality=CT" and series["study_instance_uid"] == STUDY


def test_patient_zip_export_is_audited(site: Site) -> None:
    reply = site.client.get("/browse/patient.zip?id=PID1", headers=basic("reader", "reader-pw"))
    assert reply.status_code == 200
    (record,) = site.records("read")
    assert record["service"] == "browse"
    assert record["patient_id"] == "PID1"
    assert record["audit_event"] == "DICOM Instances Transferred"


def test_the_browse_search_and_a_patient_s_page_are_audited_as_queries(site: Site) -> None:
    """review52 L3: they show names, IDs, birth dates and studies, and left no record."""
    reader = basic("reader", "reader-pw")
    assert site.client.get("/browse/search?name=Doe*", headers=reader).status_code == 200
    assert site.client.get("/browse/patient?id=PID1", headers=reader).status_code == 200
    search, patient = site.records("read")
    assert (search["audit_event"], search["service"], search["user"]) == (
        "Query",
        "browse",
        "reader",
    )
    assert search["query"] == "name=Doe%2A" or search["query"] == "name=Doe*"
    assert (patient["audit_event"], patient["patient_id"]) == ("Query", "PID1")
    assert patient["query"] == "id=PID1"


def test_a_head_search_and_the_patient_list_are_audited_as_queries(site: Site) -> None:
    """review67 F1, F2: a HEAD's status and length say whether a search matched (a
    name spelt out letter by letter), and the browse home page lists every patient:
    neither left a record."""
    reader = basic("reader", "reader-pw")
    head = site.client.head("/studies?PatientName=D*", headers=reader)
    assert head.status_code == 200 and head.content == b""
    assert site.client.get("/?offset=0", headers=reader).status_code == 200
    searched, listed = site.records("read")
    assert (searched["method"], searched["audit_event"], searched["query"]) == (
        "HEAD",
        "Query",
        "PatientName=D%2A" if "%2A" in searched["query"] else "PatientName=D*",
    )
    assert (listed["path"], listed["service"], listed["audit_event"]) == ("/", "browse", "Query")
    assert listed["query"] == "offset=0" and listed["user"] == "reader"


def test_one_access_log_line_per_request(site: Site, caplog) -> None:
    with caplog.at_level(logging.INFO, "dicomstore.http.access"):
        site.client.get("/studies?PatientName=Doe", headers=basic("reader", "reader-pw"))
        site.client.get("/studies")
    lines = [r.getMessage() for r in caplog.records if r.name == "dicomstore.http.access"]
    assert len(lines) == 2
    assert lines[0].startswith('127.0.0.1 reader "GET /studies" 200 ')
    assert "Doe" not in lines[0]  # the query string (patient names) stays out of the log
    assert lines[1].startswith('127.0.0.1 - "GET /studies" 401 ')
    assert lines[1].endswith("ms")


# --------------------------------------------------------------------------- CORS

ORIGIN = "https://viewer.example.org"


@pytest.mark.parametrize("site", [{"cors_origins": (ORIGIN,)}], indirect=True)
def test_cors_only_for_allowed_origins(site: Site) -> None:
    reader = basic("reader", "reader-pw")
    allowed = site.client.get("/studies", headers={"Origin": ORIGIN, **reader})
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    denied = site.client.get("/studies", headers={"Origin": "https://evil.example", **reader})
    assert denied.status_code == 200
    assert "access-control-allow-origin" not in denied.headers
    preflight = {"Access-Control-Request-Method": "POST"}
    ok = site.client.options("/studies", headers={"Origin": ORIGIN, **preflight})
    assert ok.status_code == 200
    assert "POST" in ok.headers["access-control-allow-methods"]
    evil = {"Origin": "https://evil.example", **preflight}
    refused = site.client.options("/studies", headers=evil)
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


def test_no_cors_headers_without_allowed_origins(site: Site) -> None:
    reply = site.client.get("/studies", headers={"Origin": ORIGIN, **basic("reader", "reader-pw")})
    assert reply.status_code == 200
    assert not [h for h in reply.headers if h.startswith("access-control-")]


# --------------------------------------------------------------------------- HTTPS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("https")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],  # fmt: skip
        cwd=d,
        check=True,
        capture_output=True,
    )
    return d / "cert.pem", d / "key.pem"


def test_https_end_to_end(tmp_path: Path, certificate) -> None:
    cert, key = certificate
    policy = load_policy(tmp_path, policy_text())
    security = HttpSecurity(policy=policy, tls_cert=cert, tls_key=key)
    archive = Archive(tmp_path / "archive", fsync=False)
    store(archive, make_dataset(KEPT, study=STUDY, series=SERIES))
    srv = HttpThread(archive, store=StoreService(archive), security=security)
    srv.server = HttpServer(srv.app, "127.0.0.1", 0, ssl_context=security.ssl_context())
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        with srv, httpx.Client(base_url=srv.server.url, verify=trust, timeout=30) as client:
            assert srv.server.url.startswith("https://127.0.0.1:")
            assert client.get("/studies").status_code == 401
            reply = client.get("/studies", headers=basic("reader", "reader-pw"))
            assert reply.status_code == 200
            assert reply.json()[0]["0020000D"]["Value"] == [STUDY]
            refused = "HTTPS connection from 127.0.0.1 refused: not TLS (HTTP_REQUEST)"
            with log_line("dicomstore.http", refused) as logged:
                with pytest.raises(httpx.HTTPError):  # plain HTTP gets no answer
                    httpx.get(srv.server.url.replace("https", "http") + "studies", timeout=10)
                assert logged.wait(30)  # (the operator is told why)
    finally:
        archive.close()


def test_a_tls_handshake_left_half_done_is_closed(tmp_path: Path, certificate) -> None:
    """review35c: a connection that never finished its TLS handshake was held for
    asyncio's 60 s, outside the connection guard; now --http-timeout's."""
    import socket

    from dicomstore.http.limits import HttpLimits

    cert, key = certificate
    security = HttpSecurity(tls_cert=cert, tls_key=key)
    archive = Archive(tmp_path / "archive", fsync=False)
    limits = HttpLimits(request_timeout=0.5)
    srv = HttpThread(archive, security=security, limits=limits)
    srv.server = HttpServer(srv.app, "127.0.0.1", 0, ssl_context=security.ssl_context())
    try:
        late = "refused: handshake not done in time"
        with srv, log_line("dicomstore.http", late) as logged:
            with socket.create_connection(("127.0.0.1", srv.server.port), timeout=30) as s:
                s.sendall(b"\x16\x03\x01")  # (the start of a ClientHello, and no more)
                assert s.recv(1024) == b""  # closed by the server (not our 30 s timeout)
            assert logged.wait(30)
    finally:
        archive.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_connections_in_their_tls_handshake_count_toward_the_most(
    tmp_path: Path, certificate, caplog, loop: str
) -> None:
    """Connections that never finish their TLS handshake were not counted toward
    --http-max-connections (the loop told uvicorn of a connection once its handshake
    was done), each holding a descriptor and 256 KiB of TLS buffers: now one beyond the
    most is closed at once (http/tls_accept.py), on uvloop too; once the others have
    gone, a handshake that finishes is served as before."""
    import socket
    import threading

    from dicomstore.http.limits import HttpLimits

    cert, key = certificate
    security = HttpSecurity(tls_cert=cert, tls_key=key)
    archive = Archive(tmp_path / "archive", fsync=False)
    limits = HttpLimits(max_connections=2, request_timeout=30)
    srv = HttpThread(archive, security=security, limits=limits)
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        srv.loop.close()
        srv.loop = uvloop.new_event_loop()
        srv._thread = threading.Thread(target=srv.loop.run_forever, daemon=True)
    srv.server = HttpServer(srv.app, "127.0.0.1", 0, ssl_context=security.ssl_context())
    client = ssl.create_default_context(cafile=str(cert))
    client.check_hostname = False
    try:
        with srv:
            address = ("127.0.0.1", srv.server.port)
            stalled = [socket.create_connection(address, timeout=30) for _ in range(2)]
            for sock in stalled:
                sock.sendall(b"\x16\x03\x01")  # (a ClientHello begun, and no more)
            with socket.create_connection(address, timeout=30) as third:
                assert third.recv(1024) == b""  # closed at once (not after 30 s)
            assert "refused (closed): 2 connections open, the most" in caplog.text
            for sock in stalled:
                sock.close()
            for _ in range(500):  # (once the server has seen them go, it serves again)
                with socket.create_connection(address, timeout=30) as raw:
                    try:
                        with client.wrap_socket(raw) as tls:
                            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                            answer = tls.recv(1024)
                    except (ssl.SSLError, ConnectionError):
                        continue
                assert answer.startswith(b"HTTP/1.1 200 ")
                break
            else:
                pytest.fail("no HTTPS connection served after the stalled ones closed")
    finally:
        archive.close()


def test_https_files_that_cannot_be_used_are_one_line(tmp_path: Path, certificate) -> None:
    cert, _ = certificate
    missing = HttpSecurity(tls_cert=cert, tls_key=tmp_path / "nope.pem")
    with pytest.raises(ValueError, match=r"^--http-tls-key .*nope\.pem: No such file"):
        missing.ssl_context()
    with pytest.raises(ValueError, match="go together"):
        HttpSecurity(tls_cert=cert).ssl_context()
    with pytest.raises(ValueError, match="^--http-tls-cert .* not usable"):
        HttpSecurity(tls_cert=cert, tls_key=cert).ssl_context()


# --------------------------------------------------------------------------- exposure


def test_exposure_warnings(tmp_path: Path, certificate) -> None:
    policy = load_policy(tmp_path, policy_text())
    assert HttpSecurity().warnings("127.0.0.1") == []
    assert HttpSecurity().warnings("localhost") == []
    (open_,) = HttpSecurity().warnings("0.0.0.0")
    assert "requires no credentials to read, store (no --config)" in open_
    (clear,) = HttpSecurity(policy=policy).warnings("192.0.2.7")
    assert "passcodes and tokens travel in clear" in clear
    cert, key = certificate
    assert HttpSecurity(policy=policy, tls_cert=cert, tls_key=key).warnings("0.0.0.0") == []


# --------------------------------------------------------------------------- the file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[peers.A]\nmay = ['read']", "peers.A: may: 'read' is an HTTP right"),
        ("unknown_may = ['delete']", "unknown_may: 'delete' is an HTTP right"),
        ("http_anonymous_may = ['echo']", "http_anonymous_may: 'echo' is a DIMSE right"),
        ("http_anonymous_may = ['write']", "unknown action 'write' (allowed here: delete, read"),
        (
            "[users.u]\nmay = ['erase']",
            "unknown action 'erase' (allowed here: commit, delete, echo, find, ",
        ),
    ],
)
def test_http_rights_in_the_policy_file_are_checked(tmp_path: Path, text, message) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(")):
        load_policy(tmp_path, text)


def test_http_rights_defaults(tmp_path: Path) -> None:
    policy = load_policy(tmp_path, "[users.u]\n[users.d]\nmay = ['delete']")
    assert policy.http_rights(None) == frozenset()
    assert policy.http_rights("u") == {"read", "store"}
    assert policy.http_rights("d") == {"delete"}
    assert policy.http_rights("token-subject") == {"read", "store"}


# --------------------------------------------------------------------------- serve


def test_the_issues_attack_fails_and_http_binds_to_loopback(tmp_path: Path) -> None:
    """``--config`` refusing unknown AEs, ``--store-aet NOBODY``, DICOM on another
    address: an anonymous STOW-RS gets 401, nothing is stored, and HTTP listens on
    127.0.0.1 only (not on ``--host``)."""
    from tests.conftest import free_port, serve_command, wait_listening

    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text())
    port, http_port = free_port(), free_port()
    storage = tmp_path / "store"
    command = serve_command(port, storage, "--host", "127.0.0.2", "--config", str(policy))
    command += ["--store-aet", "NOBODY", "--http-port", str(http_port), "--max-instance-size", "1M"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(http_port, proc)
        url = f"http://127.0.0.1:{http_port}"
        with httpx.Client(base_url=url, timeout=30) as client:
            assert stow(client, STUDY + ".1.7").status_code == 401
            assert client.get("/studies").status_code == 401
            writer = basic("writer", "writer-pw")
            found = client.get("/studies", headers=writer)
            assert found.status_code in (200, 204) and found.text in ("", "[]")  # none stored
            # a user may store over HTTP, but --store-aet still names who may store
            assert stow(client, STUDY + ".1.8", writer).status_code == 409
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.2:{http_port}/studies", timeout=10)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"DICOMweb and browse page on http://127.0.0.1:{http_port}/ (credentials" in err
    assert "requires no credentials" not in err and "travel in clear" not in err  # loopback
    assert 'dicomstore.http.access: 127.0.0.1 - "POST /studies" 401' in err


def test_open_http_beyond_loopback_is_a_warning(caplog) -> None:
    from dicomstore.cli.http_options import announce

    with caplog.at_level(logging.INFO, "dicomstore"):
        announce(HttpSecurity(), "0.0.0.0", "http://0.0.0.0:8080/")
    (info, warning) = caplog.records
    assert info.levelname == "INFO" and "open: no --config" in info.getMessage()
    assert warning.levelname == "WARNING"
    assert "HTTP on 0.0.0.0 requires no credentials" in warning.getMessage()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--http-cors-origin", "viewer.example.org"], "not an origin"),
        (["--http-cors-origin", "https://a.example/path"], "not an origin"),
        (
            ["--http-tls-cert", "/nonexistent/c.pem", "--http-tls-key", "/nonexistent/k.pem"],
            "dicomstore: cannot set up TLS: --http-tls-cert /nonexistent/c.pem: No such file",
        ),
        (["--http-tls-cert", "/nonexistent/c.pem"], "--http-tls-cert and --http-tls-key go"),
    ],  # fmt: skip
)
def test_bad_http_options_are_one_line(tmp_path: Path, options, message, capsys) -> None:
    from dicomstore.cli import main

    try:
        code = main(["serve", "--storage", str(tmp_path / "s"), "--http-port", "0", *options])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert message in lines[-1]  # (argparse's too: review100 W4, no usage first)
    assert len(lines) == 1
