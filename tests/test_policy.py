"""The admission policy (issue "Hardening", point 2): the TOML file, every
admission branch, JSON Web Tokens, and a real server against our client and
DCMTK storescu/echoscu (PS3.7 D.3.3.7, PS3.8 9.3.4)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

import dicomstore.aio.client as client_module
import dicomstore.policy as policy_module
from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.archive import Archive
from dicomstore.errors import AssociationRejected
from dicomstore.jwt import InvalidToken, JWTVerifier, b64url_decode, b64url_encode
from dicomstore.passcodes import PasscodeHash, hash_passcode
from dicomstore.policy import REJECT_CALLER, REJECT_IDENTITY, Policy, PolicyError
from dicomstore.services.admission import AdmissionRequest
from dicomstore.services.server import Server, ServerConfig
from dicomstore.tls import client_context, server_context
from dicomstore.ul.items import UserIdentityRQ
from tests.conftest import PEER_ENV, ServerThread, dcmtk
from tests.test_hostile import SC, dataset

SECRET = b"0123456789abcdef0123456789abcdef-shared"
#: Cheap scrypt parameters keep the suite fast; the format is the real one.
FAST = {"n": 16, "r": 8, "p": 1}


# --------------------------------------------------------------------------- helpers


def sign(claims: dict, alg: str = "HS256", key=SECRET, header: dict | None = None) -> str:
    """A compact JWS, signed the way an identity provider would."""
    head = b64url_encode(json.dumps(header or {"alg": alg, "typ": "JWT"}).encode())
    body = b64url_encode(json.dumps(claims).encode())
    data = f"{head}.{body}".encode()
    if alg.startswith("HS"):
        digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
        sig = hmac.new(key, data, digest).digest()
    elif alg == "RS256":
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:  # "none"
        sig = b""
    return f"{head}.{body}.{b64url_encode(sig)}"


def claims(**extra) -> dict:
    return {"sub": "carol", "exp": time.time() + 300, **extra}


def pem(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def keys() -> dict:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
    }


def load(tmp_path: Path, text: str, **files: bytes) -> Policy:
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return Policy.load(path)


def rq(
    ae: str = "MODALITY1",
    address: str = "10.1.2.3",
    subject: str | None = None,
    identity: UserIdentityRQ | None = None,
) -> AdmissionRequest:
    return AdmissionRequest(ae, "DICOMSTORE", address, subject, identity)


def user(name: str, passcode: str | None = None, positive: bool = True) -> UserIdentityRQ:
    if passcode is None:
        return UserIdentityRQ(1, positive, name.encode())
    return UserIdentityRQ(2, positive, name.encode(), passcode.encode())


def jwt_identity(token: str) -> UserIdentityRQ:
    return UserIdentityRQ(5, True, token.encode())


@pytest.fixture(scope="module")
def alice_hash() -> str:
    return hash_passcode("correct horse", **FAST)


# --------------------------------------------------------------------------- the file


def test_the_documented_example_loads(tmp_path, keys) -> None:
    doc = policy_module.__doc__
    assert doc is not None
    block = doc.split("every key shown (only ``allow_unknown`` is needed)::\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    text = "\n".join(lines).replace(
        "scrypt$16384$8$1$<salt base64>$<hash base64>", hash_passcode("pw", **FAST)
    )
    policy = load(
        tmp_path, text, **{"jwt-secret.bin": SECRET, "idp-public.pem": pem(keys["ec"].public_key())}
    )
    assert set(policy.peers) == {"MODALITY1", "WORKSTATION", "MONITOR", "READING ROOM"}
    assert policy.peers["WORKSTATION"].move_to == {"WORKSTATION"}
    assert str(policy.destinations["WORKSTATION"]) == "WORKSTATION=10.1.2.40:104"
    assert str(policy.commitment_scus["MODALITY1"]) == "MODALITY1=10.1.2.3:104"
    assert set(policy.users) == {"alice", "viewer"}
    assert policy.jwt is not None and policy.jwt.algorithms == {"HS256", "ES256"}
    assert not policy.allow_unknown


def test_minimal_file_and_defaults(tmp_path) -> None:
    policy = load(tmp_path, "allow_unknown = true\n")
    admission = policy.admit(rq("ANYONE"))
    assert admission.reject is None and admission.may_echo and admission.may_store
    assert admission.user is None and admission.identity_response is None


@pytest.mark.parametrize(
    ("text", "files", "message"),
    [
        ("allow_unknow = true", {}, "unknown key 'allow_unknow'"),
        ("allow_unknown = 'yes'", {}, "allow_unknown must be a bool"),
        ("allow_unknown = [", {}, "not valid TOML"),
        ("[peers.A]\nhots = ['10.0.0.1']", {}, "peers.A: unknown key 'hots'"),
        ("[peers.A]\nhosts = ['10.0.0.300']", {}, "is not an IP address or CIDR"),
        ("[peers.A]\nhosts = ['10.0.0.5/24']", {}, "has host bits set"),
        ("[peers.A]\nhosts = 'pacs.example.org'", {}, "host names are not resolved"),
        ("[peers.A]\ntls_subject = 'modality1'", {}, "not of the form CN="),
        ("[peers.A]\nmay = ['echo', 'teleport']", {}, "unknown action 'teleport'"),
        ("[peers.A]\nmove_to = 'X'\n[destinations.X]\naddress = 'x'", {}, "is not HOST:PORT"),
        ("[destinations.X]\nport = 104", {}, "unknown key 'port'"),
        ("[destinations.'BAD\\\\AE']\naddress = 'h:1'", {}, "not a valid AE title"),
        ("[commitment_scus.X]\naddress = 'h'", {}, "commitment_scus.X: 'h' is not HOST:PORT"),
        ("commitment_scus = 1", {}, "commitment_scus must be a table"),
        ('[peers."WAY TOO LONG AE TITLE"]', {}, "not a valid AE title"),
        ("[users.bob]\npasscode = 'hunter2'", {}, "passcode: bad hash"),
        (
            "[users.bob]\npasscode = 'scrypt$3$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA=='",
            {},
            "power",
        ),
        ("[users.bob]\npasscode = 'scrypt$16$8$1$!!$AAAA'", {}, "base64"),
        ("[jwt]\nsecret_file = 'missing.bin'", {}, "cannot read"),
        ("[jwt]\npublic_key_file = 'k.pem'", {"k.pem": b"junk"}, "not a PEM public key"),
        ("[jwt]\nsecret = 'short'", {}, "at least 32 bytes"),
        ("[jwt]\nsecret_file = 's'\nalgorithms = ['none']", {"s": SECRET}, "'none' is never"),
        ("[jwt]\nsecret_file = 's'\nalgorithms = ['RS256']", {"s": SECRET}, "public_key_file"),
        ("[jwt]\nsecret_file = 's'\nalgorithms = ['XY1']", {"s": SECRET}, "unknown algorithm"),
        ("[jwt]\nissuer = 'x'", {}, "needs secret, secret_file or public_key_file"),
        ("[jwt]\nsecret_file = 's'\nleeway = -1", {"s": SECRET}, "leeway"),
        ("peers = 3", {}, "peers must be a table"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, text, files, message) -> None:
    with pytest.raises(PolicyError) as err:
        load(tmp_path, text, **files)
    text = str(err.value)
    assert message in text
    assert "\n" not in text and text.startswith(str(tmp_path / "policy.toml"))


def test_a_missing_file(tmp_path) -> None:
    with pytest.raises(PolicyError, match="cannot read: No such file"):
        Policy.load(tmp_path / "nope.toml")


def test_key_type_must_match_algorithm(tmp_path, keys) -> None:
    with pytest.raises(PolicyError, match="RS256 needs an RSA key"):
        load(
            tmp_path,
            "[jwt]\npublic_key_file = 'k.pem'\nalgorithms = ['RS256']",
            **{"k.pem": pem(keys["ec"].public_key())},
        )


# --------------------------------------------------------------------------- callers

CALLERS = """
allow_unknown = false
[peers.MODALITY1]
hosts = ["10.1.2.3", "192.168.7.0/24", "2001:db8::/32"]
[peers.SECURE]
tls_subject = ["CN=modality1,O=Test Hospital", "CN=spare,O=Test Hospital"]
[peers.MONITOR]
may = ["echo"]
"""


@pytest.fixture
def callers(tmp_path) -> Policy:
    return load(tmp_path, CALLERS)


def test_unknown_calling_ae_is_rejected_calling_ae_not_recognized(callers) -> None:
    assert callers.admit(rq("STRANGER")).reject == REJECT_CALLER
    assert (REJECT_CALLER.result, REJECT_CALLER.source, REJECT_CALLER.reason) == (1, 1, 3)


def test_unknown_callers_admitted_with_their_rights(tmp_path) -> None:
    policy = load(tmp_path, "allow_unknown = true\nunknown_may = ['echo']")
    admission = policy.admit(rq("STRANGER"))
    assert admission.reject is None and admission.may_echo and not admission.may_store


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("10.1.2.3", True),
        ("192.168.7.200", True),
        ("::ffff:192.168.7.9", True),  # IPv4-mapped on a dual-stack socket
        ("2001:db8::5", True),
        ("10.1.2.4", False),
        ("192.168.8.1", False),
        ("not-an-address", False),
    ],
)
def test_known_ae_from_allowed_hosts_only(callers, address, ok) -> None:
    admission = callers.admit(rq("MODALITY1", address))
    assert (admission.reject is None) is ok
    if not ok:
        assert admission.reject == REJECT_CALLER


@pytest.mark.parametrize(
    ("subject", "ok"),
    [
        ("CN=modality1,O=Test Hospital", True),
        ("O=Test Hospital,CN=modality1", True),  # order does not matter
        ("commonName=spare,organizationName=Test Hospital", True),
        ("CN=modality2,O=Test Hospital", False),
        ("CN=modality1,O=Other Hospital", False),
        ("CN=modality1", False),
        (None, False),  # no certificate at all
    ],
)
def test_known_ae_with_the_right_certificate_only(callers, subject, ok) -> None:
    admission = callers.admit(rq("SECURE", subject=subject))
    assert admission.reject == (None if ok else REJECT_CALLER)


def test_echo_only_peer_may_not_store(callers) -> None:
    admission = callers.admit(rq("MONITOR"))
    assert admission.reject is None and admission.may_echo and not admission.may_store


def test_refusals_log_the_real_cause(callers, caplog) -> None:
    caplog.set_level("WARNING", "dicomstore.policy")
    callers.admit(rq("MODALITY1", "10.9.9.9"))
    assert "address 10.9.9.9 not allowed" in caplog.text
    # (review110 I1: the subject as the certificate line and the audit give it, its
    # escapes once, not doubled by a repr)
    callers.admit(rq("SECURE", subject="CN=mod\\,ality1,O=Test Hospital"))
    assert "certificate subject 'CN=mod\\,ality1,O=Test Hospital' not allowed" in caplog.text


# --------------------------------------------------------------------------- users


@pytest.fixture
def users(tmp_path, alice_hash) -> Policy:
    return load(
        tmp_path,
        f"""
allow_unknown = true
[peers.OPEN]
require_user_identity = false
[peers.MODALITY1]
[users.alice]
passcode = "{alice_hash}"
[users.guest]
[users.viewer]
may = ["echo"]
""",
    )


def test_username_only(users) -> None:
    admission = users.admit(rq(identity=user("guest")))
    assert admission.reject is None and admission.user == "guest"
    assert admission.identity_response == b""  # PS3.7 D.3.3.7.2: zero length for type 1


def test_username_and_passcode(users) -> None:
    good = users.admit(rq(identity=user("alice", "correct horse")))
    assert good.reject is None and good.user == "alice" and good.identity_response == b""
    again = users.admit(rq(identity=user("alice", "correct horse")))  # from the cache
    assert again.user == "alice"
    assert users.admit(rq(identity=user("alice", "wrong horse"))).reject == REJECT_IDENTITY
    assert (REJECT_IDENTITY.result, REJECT_IDENTITY.source, REJECT_IDENTITY.reason) == (1, 1, 1)


@pytest.mark.parametrize(
    "identity",
    [
        user("mallory"),  # unknown user
        user("mallory", "x"),
        user("alice"),  # alice has a passcode: the name alone is not enough
        user("alice", ""),
        UserIdentityRQ(1, False, b"\xff\xfe"),  # not UTF-8
        jwt_identity("a.b.c"),  # [jwt] not configured
    ],
)
def test_a_presented_identity_must_be_valid(users, identity) -> None:
    assert users.admit(rq(identity=identity)).reject == REJECT_IDENTITY


def test_user_rights_narrow_the_peer_rights(users) -> None:
    admission = users.admit(rq(identity=user("viewer")))
    assert admission.may_echo and not admission.may_store


def test_required_identity(tmp_path, alice_hash) -> None:
    policy = load(
        tmp_path,
        f"""
allow_unknown = true
require_user_identity = true
[peers.OPEN]
require_user_identity = false
[users.alice]
passcode = "{alice_hash}"
""",
    )
    assert policy.admit(rq("X")).reject == REJECT_IDENTITY
    assert policy.admit(rq("X", identity=user("alice", "correct horse"))).user == "alice"
    assert policy.admit(rq("OPEN")).reject is None
    kerberos = UserIdentityRQ(3, True, b"ticket")
    assert policy.admit(rq("X", identity=kerberos)).reject == REJECT_IDENTITY


def test_unsupported_identity_types_are_ignored_when_not_required(users) -> None:
    admission = users.admit(rq(identity=UserIdentityRQ(4, True, b"<saml/>")))
    assert admission.reject is None and admission.user is None
    assert admission.identity_response is None  # no positive response: not authenticated


def test_passcode_hash_format_roundtrip() -> None:
    encoded = hash_passcode("pässcode", **FAST)
    assert re.fullmatch(r"scrypt\$16\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", encoded)
    parsed = PasscodeHash.parse(encoded)
    assert parsed.encode() == encoded
    assert parsed.verify("pässcode".encode()) and not parsed.verify(b"passcode")
    assert hash_passcode("pässcode", **FAST) != encoded  # a fresh salt each time
    assert "pässcode" not in encoded


def test_hash_passcode_command(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dicomstore.policy", "hash-passcode", "--n", "16"],
        input=b"s3cret\n",
        capture_output=True,
        check=True,
    )
    encoded = done.stdout.decode().strip()
    assert PasscodeHash.parse(encoded).verify(b"s3cret")
    empty = subprocess.run(
        [sys.executable, "-m", "dicomstore.policy", "hash-passcode"],
        input=b"\n",
        capture_output=True,
    )
    assert empty.returncode == 2 and b"empty passcode" in empty.stderr


def test_check_command(tmp_path, capsys) -> None:
    good = tmp_path / "good.toml"
    good.write_text("allow_unknown = true\n[peers.A]\n")
    assert policy_module.main(["check", str(good)]) == 0
    assert "1 peers" in capsys.readouterr().out
    jwt = tmp_path / "jwt.toml"
    jwt.write_text(f'[jwt]\nsecret = "{"s" * 32}"\nrights_claim = "roles"\n')
    assert policy_module.main(["check", str(jwt)]) == 0  # (review79 F9: says the claim)
    out = capsys.readouterr().out
    assert "JWT on: HS256 (rights within claim 'roles', prefix '')" in out
    assert "note: any token" not in out  # (the claim decides)
    jwt.write_text(f'[jwt]\nsecret = "{"s" * 32}"\n')  # (every token may store: said)
    assert policy_module.main(["check", str(jwt)]) == 0
    note = capsys.readouterr().out.splitlines()[-1]
    assert note.startswith("note: any token the [jwt] issuer signs for this audience"), note
    assert "may commit, echo, find, get, move, read, store" in note
    users = tmp_path / "users.toml"  # (review83 F8: a name alone identifies a user without)
    users.write_text('[users.ops]\n[users.web]\nmay = ["read"]\n[users.alice]\npasscode = "x"\n')
    users.write_text(users.read_text().replace('"x"', f'"{hash_passcode("pw", **FAST)}"'))
    assert policy_module.main(["check", str(users)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("note: user(s) ops have no passcode: over DICOM their name alone")
    bad = tmp_path / "bad.toml"
    bad.write_text("allow_unknown = 1\n")
    assert policy_module.main(["check", str(bad)]) == 2
    assert "allow_unknown must be a bool" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('allow_unknown = true\n[peers.MOD1]\nhosts = ["10.1.2.3"]\n', "MOD1 (hosts)"),
        ('allow_unknown = true\n[peers.WS]\nmove_to = ["WS"]\n', "WS (move_to)"),
        ('allow_unknown = true\n[peers.MON]\nmay = ["echo"]\n', "MON (may)"),
        ("allow_unknown = true\n[peers.ID]\nrequire_user_identity = true\n", "ID (require_"),
        (
            'allow_unknown = true\nunknown_may = ["echo"]\n[peers.M]\nhosts = ["10.1.2.3"]\n',
            None,
        ),
        (
            'allow_unknown = true\nunknown_may = ["echo", "store"]\n[peers.WS]\nmove_to = ["WS"]\n',
            None,  # (unknown callers may not C-MOVE: move_to passes nothing)
        ),
        (
            "allow_unknown = true\nrequire_user_identity = true\n"
            "[peers.ID]\nrequire_user_identity = true\n",
            None,  # (unknown callers must identify themselves too)
        ),
        ("allow_unknown = true\n[peers.ANY]\n", None),  # (pins nothing: nothing to pass)
        ('[peers.MOD1]\nhosts = ["10.1.2.3"]\n', None),
    ],
    ids=["hosts", "move_to", "may", "identity", "unknown_may", "no-move", "all-id", "no-pin", "no"],
)
def test_check_says_when_unknown_callers_pass_the_pins(tmp_path, capsys, text, said) -> None:
    """review108 L1: with allow_unknown = true and no unknown_may, a caller refused as
    MOD1 from another address calls as MOD2 and gets every right MOD1 is held back
    from; ``check`` said "unknown callers allowed" only. review109 M3/L1: the pins
    passed are named, require_user_identity among them; a move_to passes nothing
    when unknown callers may not C-MOVE."""
    from dicomstore.policy_tools import pins_unknown_callers_pass

    path = tmp_path / "policy.toml"
    path.write_text(text)
    assert policy_module.main(["check", str(path)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "[peers] may" in line]
    moot = pins_unknown_callers_pass(Policy.load(path))
    if said is None:
        assert notes == [] and moot is None
        return
    (note,) = notes
    assert note == f"note: {moot}"
    assert note.startswith("note: callers not under [peers] may commit, echo, find, get, move")
    assert f"held back as {said}" in note
    assert "to every Move Destination" in note and "narrow unknown_may" in note


@pytest.mark.parametrize(
    ("text", "marker", "said"),
    [
        (
            'allow_unknown = true\n[peers.MOD1]\nhosts = ["10.1.2.3"]\n',
            "callers not under [peers]",
            ["callers not under [peers] may", "held back as MOD1 (hosts)"],
        ),
        (  # review110 L2: a peer pinned by tls_subject on a server without --tls-ca (or
            # without TLS) is refused whatever it presents, and nothing at start said so
            '[peers.MOD1]\ntls_subject = "CN=mod1"\n[peers.MOD2]\n',
            "pinned by tls_subject",
            ["MOD1: pinned by tls_subject, refused", "without --tls-cert, --tls-key and --tls-ca"],
        ),
    ],
    ids=["unknown-callers", "certificates-never-asked"],
)
def test_serve_warns_at_start_of_what_the_policy_lets_pass_or_refuses(
    tmp_path, text, marker, said
) -> None:
    from tests.conftest import free_port, serve_command, start_up_log

    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    port = free_port()
    err = start_up_log(serve_command(port, tmp_path / "store", "--config", str(policy)), port)
    (line,) = [line for line in err.splitlines() if marker in line]
    assert "WARNING" in line and f"{policy}: " in line
    assert all(words in line for words in said), line


def test_certificates_asked_for_leave_no_pin_unmet(tmp_path) -> None:
    from dicomstore.policy_tools import certificates_never_asked

    policy = tmp_path / "policy.toml"
    policy.write_text('[peers.MOD1]\ntls_subject = "CN=mod1"\n')
    assert certificates_never_asked(Policy.load(policy), asks_certificates=True) is None
    assert certificates_never_asked(Policy.load(policy), asks_certificates=False) is not None


def test_check_command_as_a_module_names_the_problem_in_one_line(tmp_path) -> None:
    """review35b F8: run as ``-m``, an unknown key was a traceback (the module's
    __main__ copy caught its own PolicyError, not the one raised)."""
    bad = tmp_path / "bad.toml"
    bad.write_text("bogus_key = 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "dicomstore.policy", "check", str(bad)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"dicomstore.policy: {bad}: unknown key 'bogus_key'")


# --------------------------------------------------------------------------- JWT


@pytest.fixture
def jwt_policy(tmp_path, keys) -> Policy:
    return load(
        tmp_path,
        """
allow_unknown = true
[jwt]
secret_file = "secret.bin"
public_key_file = "rsa.pem"
algorithms = ["HS256", "RS256"]
issuer = "https://idp.example.org"
audience = "dicomstore"
[users.carol]
may = ["store"]
""",
        **{"secret.bin": SECRET + b"\n", "rsa.pem": pem(keys["rsa"].public_key())},
    )


GOOD = {"iss": "https://idp.example.org", "aud": "dicomstore"}


def test_jwt_hs256_and_rs256(jwt_policy, keys) -> None:
    for token in (sign(claims(**GOOD)), sign(claims(**GOOD), "RS256", keys["rsa"])):
        admission = jwt_policy.admit(rq(identity=jwt_identity(token)))
        assert admission.reject is None, token
        assert admission.user == "carol" and admission.identity_response == b""
        assert admission.may_store and not admission.may_echo  # carol's own rights


@pytest.mark.parametrize("unknown_may", [None, '["read"]', '["echo", "find", "read"]'])
def test_a_token_sub_not_under_users_has_jwt_unknown_may(tmp_path, unknown_may) -> None:
    """review76 F7: a token of any ``sub`` the issuer signs got every right but delete,
    ``store`` too, whatever the operator listed: ``[jwt] unknown_may`` says what such a
    sub may (default, as before: a user's default rights), over DIMSE and HTTP."""
    line = "" if unknown_may is None else f"unknown_may = {unknown_may}\n"
    policy = load(
        tmp_path,
        f'allow_unknown = true\n[jwt]\nsecret_file = "s.bin"\n{line}'
        '[users.carol]\nmay = ["store"]\n',
        **{"s.bin": SECRET},
    )
    mallory = sign({"sub": "mallory", "exp": time.time() + 300})
    admission = policy.admit(rq(identity=jwt_identity(mallory)))
    assert admission.reject is None and admission.user == "mallory"
    http = policy.http_rights("mallory")
    if unknown_may is None:
        assert admission.may_store and admission.may_echo and admission.may_get
        assert http == {"read", "store"}
    else:
        assert not admission.may_store and not admission.may_get and http == {"read"}
        assert admission.may_echo == admission.may_find == ("echo" in unknown_may)
    carol = policy.admit(rq(identity=jwt_identity(sign(claims()))))  # (a listed one: hers)
    assert carol.may_store and not carol.may_echo and policy.http_rights("carol") == {"store"}


def rights_policy(tmp_path, jwt: str) -> Policy:
    return load(
        tmp_path,
        f'allow_unknown = true\n[jwt]\nsecret_file = "s.bin"\n{jwt}\n'
        '[users.carol]\nmay = ["store"]\n',
        **{"s.bin": SECRET},
    )


@pytest.mark.parametrize(
    ("jwt", "extra", "may"),
    [
        ('rights_claim = "scope"', {"scope": "openid find echo read"}, {"find", "echo", "read"}),
        ('rights_claim = "roles"', {"roles": ["store", "admin"]}, {"store"}),
        ('rights_claim = "realm_access.roles"', {"realm_access": {"roles": ["get"]}}, {"get"}),
        ('rights_claim = "https://x.org/roles"', {"https://x.org/roles": ["echo"]}, {"echo"}),
        (
            'rights_claim = "scope"\nrights_prefix = "dicomstore:"',
            {"scope": "read dicomstore:echo dicomstore:store"},
            {"echo", "store"},
        ),
        ('rights_claim = "scope"', {}, set()),  # no claim: no rights
        ('rights_claim = "scope"', {"scope": "delete read"}, {"read"}),  # within unknown_may
        ('rights_claim = "scope"', {"scope": "read\u00a0store  echo"}, {"echo"}),  # only SP
    ],
)
def test_rights_claim_bounds_what_a_token_may(tmp_path, jwt, extra, may) -> None:
    """``[jwt] rights_claim``: an identity provider's scopes or roles say what a token of
    a ``sub`` not under ``[users]`` may (within ``unknown_may``), over DIMSE and HTTP."""
    policy = rights_policy(tmp_path, jwt)
    token = sign({"sub": "idp-user", "exp": time.time() + 300, **extra})
    admission = policy.admit(rq(identity=jwt_identity(token)))
    assert admission.reject is None and admission.user == "idp-user"
    got = {
        name
        for name in ("echo", "store", "find", "move", "get", "commit")
        if getattr(admission, f"may_{name}")
    }
    user, token_may = policy.check_token(token)
    assert got == may - {"read"} and token_may == may
    assert policy.http_rights(user, token_may) == may & {"read", "store", "delete"}


def test_rights_claim_never_exceeds_a_listed_users_may(tmp_path) -> None:
    policy = rights_policy(tmp_path, 'rights_claim = "scope"')
    token = sign({"sub": "carol", "exp": time.time() + 300, "scope": "echo store find"})
    admission = policy.admit(rq(identity=jwt_identity(token)))
    assert admission.may_store and not admission.may_echo and not admission.may_find


@pytest.mark.parametrize("value", [42, ["read", 7], {"read": True}, None])
def test_a_rights_claim_of_another_type_refuses_the_token(tmp_path, value) -> None:
    policy = rights_policy(tmp_path, 'rights_claim = "scope"')
    token = sign({"sub": "idp-user", "exp": time.time() + 300, "scope": value})
    admission = policy.admit(rq(identity=jwt_identity(token)))
    assert admission.reject == REJECT_IDENTITY
    with pytest.raises(policy_module.IdentityRefused, match='claim "scope" is neither'):
        policy.check_token(token)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('rights_claim = ""', "rights_claim must name a claim"),
        ("rights_claim = 3", "rights_claim"),
        ('rights_claim = "scope"\nrights_prefix = []', "rights_prefix"),
        ('rights_claim = " scope"', "without spaces"),
        ('rights_prefix = "dicomstore:"', "rights_prefix needs rights_claim"),  # review79 F1
    ],
)
def test_rights_claim_options_are_checked(tmp_path, line, why) -> None:
    with pytest.raises(PolicyError, match=why):
        rights_policy(tmp_path, line)


def test_jwt_unknown_may_is_checked(tmp_path) -> None:
    with pytest.raises(PolicyError, match="jwt: unknown_may"):
        load(tmp_path, '[jwt]\nsecret_file = "s.bin"\nunknown_may = ["fly"]\n', **{"s.bin": SECRET})


def test_jwt_audience_may_be_a_list(jwt_policy) -> None:
    token = sign(claims(iss=GOOD["iss"], aud=["pacs", "dicomstore"]))
    assert jwt_policy.admit(rq(identity=jwt_identity(token))).reject is None


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda k: sign(claims(**GOOD) | {"exp": time.time() - 3600}), "expired"),
        (lambda k: sign(claims(**GOOD) | {"nbf": time.time() + 3600}), "not valid yet"),
        (lambda k: sign({"sub": "carol", **GOOD}), 'no "exp"'),
        # NumericDates that compare as never expired (review38web #4)
        (lambda k: sign(claims(**GOOD) | {"exp": math.nan}), "not JSON"),
        (lambda k: sign(claims(**GOOD) | {"exp": math.inf}), "not JSON"),
        (lambda k: sign(claims(**GOOD) | {"nbf": math.nan}), "not JSON"),
        (lambda k: sign(claims(**GOOD) | {"exp": 10**400}), '"exp" is not a finite number'),
        (lambda k: sign(claims(**GOOD) | {"exp": 1e308 * 10}), "not JSON"),
        (lambda k: sign({"exp": time.time() + 60, **GOOD}), 'no "sub"'),
        (lambda k: sign(claims(**GOOD), key=b"x" * 40), "bad signature"),
        (lambda k: sign(claims(**GOOD), "none", header={"alg": "none"}), "'none' is not allowed"),
        (lambda k: sign(claims(**GOOD), "HS512"), "'HS512' is not allowed"),
        (lambda k: sign(claims(iss=GOOD["iss"], aud="someone-else")), "audience"),
        (lambda k: sign(claims(iss=GOOD["iss"])), "audience"),
        (lambda k: sign(claims(iss="https://evil", aud="dicomstore")), "issuer"),
        # The public key used as an HMAC secret (algorithm confusion).
        (lambda k: sign(claims(**GOOD), "HS256", pem(k["rsa"].public_key())), "bad signature"),
        (lambda k: sign(claims(**GOOD), header={"alg": "HS256", "crit": ["x"]}), "critical"),
        (lambda k: "not.a.token.at.all", "three"),
        (lambda k: "e30.e30.", "algorithm None"),
        (lambda k: "%%%.e30.", "base64url"),
    ],
)
def test_jwt_refusals(jwt_policy, keys, make, why, caplog) -> None:
    caplog.set_level("WARNING", "dicomstore.policy")
    admission = jwt_policy.admit(rq(identity=jwt_identity(make(keys))))
    assert admission.reject == REJECT_IDENTITY
    assert why in caplog.text


def test_jwt_rs256_tampered_payload(jwt_policy, keys) -> None:
    token = sign(claims(**GOOD), "RS256", keys["rsa"])
    head, _body, sig = token.split(".")
    forged = b64url_encode(json.dumps(claims(**GOOD) | {"sub": "root"}).encode())
    admission = jwt_policy.admit(rq(identity=jwt_identity(f"{head}.{forged}.{sig}")))
    assert admission.reject == REJECT_IDENTITY


def test_jwt_es256(keys) -> None:
    verifier = JWTVerifier(algorithms=["ES256"], public_key=keys["ec"].public_key())
    token = sign(claims(), "ES256", keys["ec"])
    assert verifier.verify(token)["sub"] == "carol"
    head, body, sig = token.split(".")
    raw = bytearray(b64url_decode(sig))
    raw[5] ^= 1
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier.verify(f"{head}.{body}.{b64url_encode(bytes(raw))}")
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier.verify(f"{head}.{body}.{b64url_encode(bytes(raw[:40]))}")


def test_jwt_token_without_audience_config_but_with_aud_is_refused() -> None:
    verifier = JWTVerifier(algorithms=["HS256"], secret=SECRET)
    assert verifier.verify(sign(claims()))["sub"] == "carol"
    with pytest.raises(InvalidToken, match="audience"):  # RFC 7519 4.1.3
        verifier.verify(sign(claims(aud="somebody")))


def test_jwt_leeway_uses_the_clock() -> None:
    now = 1_000_000.0
    verifier = JWTVerifier(algorithms=["HS256"], secret=SECRET, leeway=30, clock=lambda: now)
    assert verifier.verify(sign({"sub": "c", "exp": now - 29}))
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(sign({"sub": "c", "exp": now - 31}))


# --------------------------------------------------------------------------- a real server

SERVER_POLICY = """
allow_unknown = false
[peers.STORER]
hosts = ["127.0.0.0/8", "::1"]
require_user_identity = true
[peers.ECHOER]
may = ["echo"]
[users.alice]
passcode = "{alice}"
[jwt]
secret_file = "secret.bin"
audience = "dicomstore"
"""

CONTEXTS = [(SC, [uids.EXPLICIT_VR_LE]), (uids.VERIFICATION, [uids.IMPLICIT_VR_LE])]


@pytest.fixture
def server_policy(tmp_path, alice_hash) -> Path:
    (tmp_path / "secret.bin").write_bytes(SECRET)
    path = tmp_path / "policy.toml"
    path.write_text(SERVER_POLICY.format(alice=alice_hash))
    return path


def test_server_with_policy_and_our_client(tmp_path, server_policy, monkeypatch) -> None:
    accepted = []
    real_requested = client_module.requested

    def spy(rq_, ac):
        accepted.append(ac.user_info.identity_ac)
        return real_requested(rq_, ac)

    monkeypatch.setattr(client_module, "requested", spy)
    token = sign({"sub": "dave", "aud": "dicomstore", "exp": time.time() + 60})

    async def main():
        archive = Archive(tmp_path / "archive", fsync=False)
        server = Server(
            ServerConfig(port=0),
            archive,
            commit_in_thread=False,
            gatekeeper=Policy.load(server_policy),
        )
        await server.start()
        port = server.port
        rejected = {}
        try:
            for name, kwargs in {
                "unknown": {"calling_ae": "STRANGER"},
                "no identity": {"calling_ae": "STORER"},
                "wrong passcode": {"calling_ae": "STORER", "identity": user("alice", "nope")},
            }.items():
                with pytest.raises(AssociationRejected) as err:
                    await associate("127.0.0.1", port, contexts=CONTEXTS, **kwargs)
                rejected[name] = (err.value.result, err.value.source, err.value.reason)
            alice = user("alice", "correct horse")
            async with await associate(
                "127.0.0.1", port, calling_ae="STORER", contexts=CONTEXTS, identity=alice
            ) as assoc:
                stored = await assoc.store_stream(
                    assoc.context_for(SC), SC, "1.2.3.10", [dataset("1.2.3.10")]
                )
            async with await associate(
                "127.0.0.1",
                port,
                calling_ae="STORER",
                contexts=CONTEXTS,
                identity=jwt_identity(token),
            ) as assoc:
                by_jwt = await assoc.store_stream(
                    assoc.context_for(SC), SC, "1.2.3.11", [dataset("1.2.3.11")]
                )
            async with await associate(
                "127.0.0.1", port, calling_ae="ECHOER", contexts=CONTEXTS
            ) as assoc:
                echo = await assoc.echo()
                refused = await assoc.store_stream(
                    assoc.context_for(SC), SC, "1.2.3.12", [dataset("1.2.3.12")]
                )
            return rejected, stored, by_jwt, echo, refused, archive.instances()
        finally:
            await server.close(grace=2)
            archive.close()

    rejected, stored, by_jwt, echo, refused, rows = asyncio.run(main())
    assert rejected == {
        "unknown": (1, 1, 3),
        "no identity": (1, 1, 1),
        "wrong passcode": (1, 1, 1),
    }
    assert stored.status == 0 and by_jwt.status == 0
    assert echo.status == 0 and refused.status == 0x0124
    assert sorted(r["sop_instance_uid"] for r in rows) == ["1.2.3.10", "1.2.3.11"]
    # Positive responses were requested: a User Identity sub-item, empty (D.3.3.7.2).
    assert [a.server_response for a in accepted if a is not None] == [b"", b""]


# -- TLS client certificates (PS3.15 B.9): known AE, right/wrong/no certificate


def _cert(name: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False):
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if "," not in name:  # (a CN with a comma: that one attribute alone)
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Hospital"))
    subject = x509.Name(attributes)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


#: review52 M1: one CN, whose text was that of the pinned subject's two attributes.
FORGED = "modality1,O=Test Hospital"


def _pki(d: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test CA", ca_key, None, ca_key, ca=True)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name in ("server", "modality1", "modality2", FORGED):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, key, ca.subject, ca_key)
        name = "forged" if name == FORGED else name
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def test_server_checks_the_certificate_subject_of_a_known_ae(tmp_path) -> None:
    _pki(tmp_path)
    policy = load(tmp_path, '[peers.MODALITY1]\ntls_subject = "CN=modality1,O=Test Hospital"\n')

    def ctx(name: str | None) -> ssl.SSLContext:
        if name is None:
            return client_context(tmp_path / "ca.pem")
        return client_context(
            tmp_path / "ca.pem", tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        )

    async def main():
        config = ServerConfig(
            port=0,
            ssl=server_context(
                tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
            ),
        )
        server = Server(config, Archive(tmp_path / "a", fsync=False), gatekeeper=policy)
        await server.start()
        outcome = {}
        try:
            for name in ("modality1", "modality2", "forged", None):
                try:
                    assoc = await associate(
                        "127.0.0.1", server.port, calling_ae="MODALITY1", ssl=ctx(name)
                    )
                except AssociationRejected as exc:
                    outcome[name] = (exc.result, exc.source, exc.reason)
                else:
                    outcome[name] = (await assoc.echo()).status
                    await assoc.release()
        finally:
            await server.close(grace=2)
            server.handler.close()
        return outcome

    assert asyncio.run(main()) == {
        "modality1": 0,
        "modality2": (1, 1, 3),
        "forged": (1, 1, 3),  # (review52 M1: it was admitted as MODALITY1)
        None: (1, 1, 3),
    }


# -- DCMTK storescu (user, password, JWT) and echoscu (AE titles)


@pytest.fixture
def dcm_file(tmp_path) -> Path:
    path = tmp_path / "ct.dcm"
    src = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    path.write_bytes(src.read_bytes())
    return path


def _dcmtk(tool: str, port: int, *args: str, send: Path | None = None):
    files = [str(send)] if send else []
    return subprocess.run(
        [dcmtk(tool), "-ll", "info", *args, "127.0.0.1", str(port), *files],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dcmtk_peers_against_the_policy(tmp_path, server_policy, dcm_file) -> None:
    token_file = tmp_path / "token.jwt"
    expired_file = tmp_path / "expired.jwt"
    token_file.write_text(sign({"sub": "erin", "aud": "dicomstore", "exp": time.time() + 60}))
    expired_file.write_text(sign({"sub": "erin", "aud": "dicomstore", "exp": time.time() - 600}))
    archive = Archive(tmp_path / "archive", fsync=False)
    storescu = ["-aet", "STORER", "-aec", "DICOMSTORE"]
    with ServerThread(ServerConfig(port=0), archive, gatekeeper=Policy.load(server_policy)) as srv:
        port = srv.port
        good = _dcmtk(
            "storescu",
            port,
            *storescu,
            "--user",
            "alice",
            "--password",
            "correct horse",
            "--pos-response",
            send=dcm_file,
        )
        wrong = _dcmtk(
            "storescu", port, *storescu, "--user", "alice", "--password", "nope", send=dcm_file
        )
        missing = _dcmtk("storescu", port, *storescu, send=dcm_file)
        jwt = _dcmtk(
            "storescu", port, *storescu, "--jwt", str(token_file), "--pos-response", send=dcm_file
        )
        expired = _dcmtk("storescu", port, *storescu, "--jwt", str(expired_file), send=dcm_file)
        echo_known = _dcmtk("echoscu", port, "-aet", "ECHOER")
        echo_unknown = _dcmtk("echoscu", port, "-aet", "STRANGER")
    rows = archive.instances()
    archive.close()

    def out(p: subprocess.CompletedProcess) -> str:
        return p.stdout + p.stderr

    assert good.returncode == 0, out(good)
    assert jwt.returncode == 0, out(jwt)
    assert echo_known.returncode == 0, out(echo_known)
    for refused in (wrong, missing, expired):
        assert refused.returncode != 0
        assert "Association Rejected" in out(refused), out(refused)
        assert "Rejected Permanent, Source: Service User" in out(refused)
        assert "Reason: No Reason" in out(refused)
    assert echo_unknown.returncode != 0
    assert "Rejected Permanent, Source: Service User" in out(echo_unknown)
    assert "Calling AE Title Not Recognized" in out(echo_unknown), out(echo_unknown)
    assert [r["sop_instance_uid"] for r in rows] == [str(pydicom.dcmread(dcm_file).SOPInstanceUID)]


def test_refusing_an_unknown_user_costs_a_scrypt_as_a_wrong_passcode_does(
    tmp_path: Path, monkeypatch
) -> None:
    """Timing does not tell which user names exist: an unknown user's passcode, and
    one given to a user without a passcode, are checked against a decoy hash."""
    policy = load(
        tmp_path,
        f'[users.alice]\npasscode = "{hash_passcode("right", n=2)}"\n[users.bob]\n',
    )
    checked: list[bytes] = []
    real = PasscodeHash.verify

    def counting(self: PasscodeHash, passcode: bytes) -> bool:
        checked.append(passcode)
        return real(self, passcode)

    monkeypatch.setattr(PasscodeHash, "verify", counting)
    for name, passcode in (("mallory", b"guess"), ("alice", b"wrong"), ("bob", b"guess")):
        with pytest.raises(policy_module.IdentityRefused):
            policy.check_passcode(name, passcode, passcode_required=True)
    assert checked == [b"guess", b"wrong", b"guess"]
    assert policy.check_passcode("alice", b"right") == "alice"


def test_find_right_defaults_and_exact_lists(tmp_path) -> None:
    """`find` (C-FIND, issue 15): granted to entries without `may` (and by the default
    unknown_may), not where a `may` list leaves it out; an HTTP right it is not."""
    policy = load(
        tmp_path,
        """
allow_unknown = true
[peers.WORKSTATION]
[peers.MODALITY1]
may = ["echo", "store"]
[peers.VIEWER]
may = ["find"]
""",
    )
    assert policy.admit(rq("WORKSTATION")).may_find
    assert policy.admit(rq("STRANGER")).may_find  # unknown_may: its default
    modality = policy.admit(rq("MODALITY1"))
    assert not modality.may_find and modality.may_store
    viewer = policy.admit(rq("VIEWER"))
    assert viewer.may_find and not viewer.may_store and not viewer.may_echo
    with pytest.raises(PolicyError, match="'find' is a DIMSE right"):
        load(tmp_path, 'http_anonymous_may = ["find"]\n')


def test_get_right_defaults_and_exact_lists(tmp_path) -> None:
    """`get` (C-GET, issue 15): granted to entries without `may`, by the default
    unknown_may and to users without `may`; not where a `may` list leaves it out."""
    policy = load(
        tmp_path,
        """
allow_unknown = true
[peers.WORKSTATION]
[peers.FINDER]
may = ["echo", "find"]
[peers.GETTER]
may = ["get"]
[users.carol]
[users.dave]
may = ["find"]
""",
    )
    assert policy.admit(rq("WORKSTATION")).may_get
    assert policy.admit(rq("STRANGER")).may_get  # unknown_may: its default
    finder = policy.admit(rq("FINDER"))
    assert finder.may_find and not finder.may_get
    getter = policy.admit(rq("GETTER"))
    assert getter.may_get and not getter.may_find and not getter.may_store
    assert policy.users["carol"].may >= {"get", "find", "read"}
    assert "get" not in policy.users["dave"].may
    with pytest.raises(PolicyError, match="'get' is a DIMSE right"):
        load(tmp_path, 'http_anonymous_may = ["get"]\n')


def test_commit_right_defaults_and_exact_lists(tmp_path) -> None:
    """`commit` (Storage Commitment N-ACTION, issue 16): granted where no `may` list
    leaves it out, as `get` is."""
    policy = load(
        tmp_path,
        """
allow_unknown = true
unknown_may = ["echo", "store"]
[peers.MODALITY]
[peers.SENDER]
may = ["store"]
[peers.COMMITTER]
may = ["store", "commit"]
""",
    )
    assert policy.admit(rq("MODALITY")).may_commit
    assert not policy.admit(rq("SENDER")).may_commit
    assert policy.admit(rq("COMMITTER")).may_commit
    assert not policy.admit(rq("STRANGER")).may_commit
    with pytest.raises(PolicyError, match="'commit' is a DIMSE right"):
        load(tmp_path, 'http_anonymous_may = ["commit"]\n')
