"""Refused admissions per address: FailedAdmissions, and the server refusing at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.test_policy import CONTEXTS, FAST, SC, dataset, user

from dicomstore.aio.client import associate
from dicomstore.archive import Archive
from dicomstore.cli import build_parser
from dicomstore.errors import AssociationRejected
from dicomstore.passcodes import hash_passcode
from dicomstore.policy import Policy
from dicomstore.services.admission import FailedAdmissions, counted_as
from dicomstore.services.server import Server, ServerConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused(throttle: FailedAdmissions, address: str) -> bool:
    """One check of ``address`` that fails; whether it was let begin."""

    async def run() -> bool:
        if await throttle.attempt(address) is not None:
            return False
        throttle.done(address, admitted=False)
        return True

    return asyncio.run(run())


def test_blocked_after_the_limit_until_the_oldest_refusal_expires() -> None:
    clock = Clock()
    throttle = FailedAdmissions(3, 60, clock=clock)
    for _ in range(2):
        assert _refused(throttle, "10.0.0.1")
        clock.now += 10
    assert throttle.blocked("10.0.0.1") is None  # 2 of 3
    assert _refused(throttle, "10.0.0.1")
    assert throttle.blocked("10.0.0.1") == pytest.approx(40)  # the first was 20 s ago
    assert throttle.blocked("10.0.0.2") is None  # other addresses are not concerned
    assert not _refused(throttle, "10.0.0.1")  # blocked: not checked
    clock.now += 40
    assert throttle.blocked("10.0.0.1") is None  # the first refusal left the window
    assert _refused(throttle, "10.0.0.1")
    assert throttle.blocked("10.0.0.1") == pytest.approx(10)


def test_each_ipv6_address_counts_alone_and_a_mapped_one_as_its_ipv4() -> None:
    """review39 #5: counted per /64, one host's refusals locked out its whole LAN."""
    throttle = FailedAdmissions(3, 60, clock=Clock())
    for _ in range(3):
        assert _refused(throttle, "2001:db8:1:2::1")
    assert throttle.blocked("2001:db8:1:2::1") is not None
    assert throttle.blocked("2001:db8:1:2::2") is None  # its neighbour on the LAN
    for n in range(3, 30):  # (rotating through its /64: 10 times the limit, then blocked)
        assert _refused(throttle, f"2001:db8:1:2::{n}"), n
    assert throttle.blocked("2001:db8:1:2::99") is not None  # (review40 #10)
    assert throttle.blocked("2001:db8:1:3::1") is None  # another /64
    for _ in range(3):
        assert _refused(throttle, "::ffff:10.0.0.1")
    assert throttle.blocked("10.0.0.1") is not None
    assert counted_as("::ffff:10.0.0.1") == "10.0.0.1" and counted_as("10.0.0.1") == "10.0.0.1"


def test_an_admission_does_not_clear_the_refusals() -> None:
    """review35a F4: nine guesses, one login of the guesser's own, again: the login
    does not clear the guesses (it cleared them all: guessing was unlimited)."""
    throttle = FailedAdmissions(10, 60, clock=Clock())

    async def run() -> int:
        checked = 0
        for _ in range(6):
            for _ in range(9):
                if await throttle.attempt("a") is None:
                    checked += 1
                    throttle.done("a", admitted=False)  # a wrong passcode
            if await throttle.attempt("a") is None:
                throttle.done("a", admitted=True)  # the caller's own passcode
        return checked

    assert asyncio.run(run()) == 10 and throttle.blocked("a") is not None


async def _burst(throttle: FailedAdmissions, n: int, good: bool) -> list[bool]:
    """``n`` checks at once, each taking a turn of the loop; which were let begin."""

    async def one() -> bool:
        if await throttle.attempt("a") is not None:
            return False
        await asyncio.sleep(0)  # (a turn of the loop, not a timed wait: the check)
        throttle.done("a", admitted=good)
        return True

    return await asyncio.gather(*(one() for _ in range(n)))


def test_checks_at_once_get_no_more_than_the_limit() -> None:
    """200 wrong passcodes at once: 10 checked (were 44-51), the others refused."""
    throttle = FailedAdmissions(10, 60, clock=Clock())
    assert sum(asyncio.run(_burst(throttle, 200, good=False))) == 10


def test_good_credentials_at_once_all_get_in() -> None:
    """review35c: 20 good ones at once, 10 were refused while the others were checked."""
    throttle = FailedAdmissions(10, 60, clock=Clock())
    assert all(asyncio.run(_burst(throttle, 20, good=True)))
    assert throttle.blocked("a") is None


def test_zero_disables_and_memory_is_bounded() -> None:
    off = FailedAdmissions(0, 60)
    for _ in range(100):
        assert _refused(off, "a")
    assert off.blocked("a") is None
    clock = Clock()
    throttle = FailedAdmissions(1, 60, max_addresses=3, clock=clock)
    for n in range(10):
        assert _refused(throttle, f"10.0.0.{n}")
    assert len(throttle._refused) == 3
    assert throttle.blocked("10.0.0.9") is not None
    assert throttle.blocked("10.0.0.0") is None  # forgotten first
    with pytest.raises(ValueError):
        FailedAdmissions(-1, 60)


POLICY = """
allow_unknown = false
[peers.STORER]
require_user_identity = true
[peers.MODALITY]
[users.alice]
passcode = "{alice}"
"""


class Counting:
    """A gatekeeper that counts how often it is asked."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.calls = 0

    def admit(self, request):
        self.calls += 1
        return self.inner.admit(request)


def test_the_server_refuses_a_guessing_address_without_checking(tmp_path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.format(alice=hash_passcode("correct horse", **FAST)))
    gatekeeper = Counting(Policy.load(path))
    clock = Clock()

    async def main():
        archive = Archive(tmp_path / "archive", fsync=False)
        config = ServerConfig(port=0, max_failed_admissions=2, failed_admission_window=30)
        server = Server(config, archive, commit_in_thread=False, gatekeeper=gatekeeper)
        server.failed_admissions._clock = clock
        await server.start()
        port = server.port
        seen = []

        async def attempt(passcode: str):
            try:
                async with await associate(
                    "127.0.0.1",
                    port,
                    calling_ae="STORER",
                    contexts=CONTEXTS,
                    identity=user("alice", passcode),
                ) as assoc:
                    uid = f"1.2.3.40.{len(seen)}"
                    rsp = await assoc.store_stream(assoc.context_for(SC), SC, uid, [dataset(uid)])
                    seen.append(("stored", rsp.status, gatekeeper.calls))
            except AssociationRejected as err:
                seen.append(((err.result, err.source, err.reason), gatekeeper.calls))

        try:
            await attempt("guess 1")
            await attempt("guess 2")
            await attempt("correct horse")  # blocked: the gatekeeper is not asked
            clock.now += 31  # the window passes
            await attempt("correct horse")
            await attempt("guess 3")  # an admission cleared the count
            await attempt("correct horse")
        finally:
            await server.close(grace=2)
            archive.close()
        return seen

    seen = asyncio.run(main())
    permanent, transient = (1, 1, 1), (2, 3, 2)  # PS3.8 9.3.4: local limit exceeded
    assert seen == [
        (permanent, 1),
        (permanent, 2),
        (transient, 2),
        ("stored", 0x0000, 3),
        (permanent, 4),
        ("stored", 0x0000, 5),
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (10, 60.0)),
        (["--max-failed-admissions", "0"], (0, 60.0)),
        (["--max-failed-admissions", "3", "--failed-admission-window", "5"], (3, 5.0)),
    ],
)
def test_serve_options(argv, expected) -> None:
    args = build_parser().parse_args(["serve", *argv])
    assert (args.max_failed_admissions, args.failed_admission_window) == expected


@pytest.mark.parametrize(
    "argv", [["--max-failed-admissions", "-1"], ["--failed-admission-window", "0"]]
)
def test_bad_serve_options(argv, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(["serve", *argv])
    assert err.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in last and "must be" in last


def test_a_user_guessed_from_many_addresses_is_refused_for_the_window() -> None:
    """--max-failed-logins-per-user: refusals of one user name count from every
    address; past the limit that user is refused at once (its right passcode too),
    others are not, and the address's turn is given back."""
    clock = Clock()
    throttle = FailedAdmissions(10, 60, clock=clock, user_limit=3)

    async def run() -> list[float | None]:
        for n in range(3):  # (three addresses: none near its own limit)
            assert await throttle.attempt(f"10.0.0.{n}", "alice") is None
            throttle.done(f"10.0.0.{n}", admitted=False, user="alice")
        waits = [
            await throttle.attempt("10.0.0.9", "alice"),  # blocked: not checked
            await throttle.attempt("10.0.0.9", "bob"),  # another user: checked
        ]
        throttle.done("10.0.0.9", admitted=True, user="bob")
        return waits

    alice, bob = asyncio.run(run())
    assert alice == pytest.approx(60) and bob is None
    assert throttle.why("10.0.0.9", "alice") == "3 refused logins of user 'alice' within 60 s"
    assert throttle.blocked("10.0.0.9") is None and not throttle._checking  # (given back)
    clock.now += 61
    assert asyncio.run(throttle.attempt("10.0.0.9", "alice")) is None  # the window passed


def test_without_a_user_limit_a_user_name_counts_for_nothing() -> None:
    throttle = FailedAdmissions(10, 60, clock=Clock())
    assert throttle.users is None
    for n in range(20):
        assert _refused(throttle, f"10.0.0.{n}")  # (no user: as before)

    async def run() -> float | None:
        for n in range(20):
            assert await throttle.attempt(f"10.1.0.{n}", "alice") is None
            throttle.done(f"10.1.0.{n}", admitted=False, user="alice")
        return await throttle.attempt("10.2.0.1", "alice")

    assert asyncio.run(run()) is None


def test_cancelled_waiting_for_the_users_turn_gives_the_address_its_turn_back() -> None:
    throttle = FailedAdmissions(10, 60, clock=Clock(), user_limit=1)

    async def run() -> None:
        assert await throttle.attempt("10.0.0.1", "alice") is None  # (running: holds the turn)
        waiting = asyncio.ensure_future(throttle.attempt("10.0.0.2", "alice"))
        await asyncio.sleep(0)
        assert throttle._checking == {"10.0.0.1": 1, "10.0.0.2": 1}
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert throttle._checking == {"10.0.0.1": 1}

    asyncio.run(run())


@pytest.mark.parametrize(
    ("argv", "expected"), [([], 0), (["--max-failed-logins-per-user", "5"], 5)]
)
def test_the_per_user_limit_option(argv, expected) -> None:
    args = build_parser().parse_args(["serve", *argv])
    assert args.max_failed_logins_per_user == expected


def _admissions(tmp_path, config: ServerConfig, attempts: list[tuple[str, str | None]]) -> list:
    """Associations of (calling AE title, alice's passcode; None: no user identity) to a
    server on POLICY: each 'admitted', or (its rejection's result, source, reason, the
    gatekeeper's calls)."""
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.format(alice=hash_passcode("correct horse", **FAST)))
    gatekeeper = Counting(Policy.load(path))

    async def main() -> list:
        archive = Archive(tmp_path / "archive", fsync=False)
        server = Server(config, archive, commit_in_thread=False, gatekeeper=gatekeeper)
        await server.start()
        seen: list = []
        try:
            for caller, passcode in attempts:
                try:
                    async with await associate(
                        "127.0.0.1",
                        server.port,
                        calling_ae=caller,
                        contexts=CONTEXTS,
                        identity=user("alice", passcode) if passcode is not None else None,
                    ):
                        seen.append("admitted")
                except AssociationRejected as err:
                    seen.append(((err.result, err.source, err.reason), gatekeeper.calls))
        finally:
            await server.close(grace=2)
            archive.close()
        return seen

    return asyncio.run(main())


UNKNOWN_CALLER, PERMANENT, TRANSIENT = (1, 1, 3), (1, 1, 1), (2, 3, 2)


def test_the_server_refuses_a_guessed_user_at_once(tmp_path) -> None:
    """The DICOM door: user identity type 2 counts toward the user's refusals; review47
    #2: a caller refused for its AE title counted as a guess of alice's passcode (and
    locked her out with one); now only the refused passcode counts."""
    config = ServerConfig(port=0, max_failed_logins_per_user=1)
    attempts = [("WRONGAE", "correct horse"), ("STORER", "guess"), ("STORER", "correct horse")]
    seen = _admissions(tmp_path, config, attempts)
    assert seen == [(UNKNOWN_CALLER, 1), (PERMANENT, 2), (TRANSIENT, 2)]  # (not asked again)


def test_callers_refused_for_their_ae_title_do_not_block_their_address(tmp_path) -> None:
    """review45 M8: a misconfigured modality (an AE title the policy does not know)
    retrying behind a NAT address blocked that address for every modality behind it:
    only a refused identity (a guessed secret, PS3.7 D.3.3.7) counts."""
    config = ServerConfig(port=0, max_failed_admissions=2)
    attempts = [("WRONGAE", "correct horse")] * 3 + [("STORER", "correct horse")]
    seen = _admissions(tmp_path, config, attempts)
    assert seen == [(UNKNOWN_CALLER, n) for n in (1, 2, 3)] + ["admitted"]


def test_an_association_without_a_user_identity_is_not_held_back(tmp_path) -> None:
    """review52 M4: wrong passcodes from an address (HTTP Basic, or type 2) held back
    every association from it, those of modalities presenting no identity too: it
    guesses no secret, so it is neither held back nor counted (nor is one refused for
    the identity it did not present)."""
    config = ServerConfig(port=0, max_failed_admissions=2)
    attempts = [("STORER", "guess 1"), ("STORER", "guess 2"), ("MODALITY", None)]
    attempts += [("STORER", None), ("STORER", "correct horse"), ("MODALITY", None)]
    seen = _admissions(tmp_path, config, attempts)
    assert seen == [
        (PERMANENT, 1),
        (PERMANENT, 2),
        "admitted",  # (it was rejected: transient, local limit exceeded)
        (PERMANENT, 4),  # no identity, one required: refused, not held back
        (TRANSIENT, 4),  # the address is held back for what presents credentials
        "admitted",
    ]


def test_the_counts_per_process_are_documented(capsys) -> None:
    """review52 L1: with --workers N each process counts its own refusals (N times the
    guesses); the README and --help did not say so (only of the association limits)."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    helps = " ".join(capsys.readouterr().out.split())
    assert helps.count("each process of --workers counts its own") == 2  # (both limits)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (workers,) = [line for line in readme.splitlines() if line.startswith("| `--workers N` |")]
    assert "so do the counts of refused credentials" in workers
    assert "N times the limit" in workers


def test_a_store_the_user_may_not_make_names_the_user(tmp_path) -> None:
    """review56 F4: a peer and a user get what both may; a store the user may not make
    was refused as 'STORER may not store here', blaming the AE title that may."""
    path = tmp_path / "policy.toml"
    path.write_text(
        POLICY.format(alice=hash_passcode("correct horse", **FAST)) + 'may = ["read"]\n'
    )

    async def main():
        archive = Archive(tmp_path / "archive", fsync=False)
        config = ServerConfig(port=0)
        server = Server(config, archive, commit_in_thread=False, gatekeeper=Policy.load(path))
        await server.start()
        try:
            async with await associate(
                "127.0.0.1",
                server.port,
                calling_ae="STORER",
                contexts=CONTEXTS,
                identity=user("alice", "correct horse"),
            ) as assoc:
                uid = "1.2.3.41.1"
                return await assoc.store_stream(assoc.context_for(SC), SC, uid, [dataset(uid)])
        finally:
            await server.close(grace=2)
            archive.close()

    rsp = asyncio.run(main())
    assert rsp.status == 0x0124
    assert rsp.error_comment == "STORER as user 'alice' may not store here"
