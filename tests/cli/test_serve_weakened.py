"""``dicomstore serve`` says at start what the options given give up (cli/serve.py)."""

from __future__ import annotations

from dicomstore.cli import build_parser
from dicomstore.cli.serve import weakened


def _said(*argv: str, fsync: bool = True) -> list[str]:
    return weakened(build_parser().parse_args(["serve", *argv]), fsync)


def test_the_defaults_give_up_nothing() -> None:
    assert _said() == []


def test_fsync_off_and_an_unlimited_pdu_are_said() -> None:
    fsync, pdu = _said("--max-pdu", "0", fsync=False)
    assert fsync.startswith("--fsync off:")
    assert pdu.startswith("--max-pdu 0:") and "trusted peers only" in pdu
    assert _said("--max-pdu", "65536") == []


def test_what_goes_in_clear_is_said() -> None:
    """review52 L4, L5: passcodes to a DICOM port without TLS on a host others reach,
    and a TLS server's C-MOVE, forwarding and commitment reports (always plain TCP),
    went unsaid."""
    import ssl

    from dicomstore.cli.serve import cleartext
    from dicomstore.policy import Policy, User
    from dicomstore.services.destinations import parse_destination
    from dicomstore.services.forward_rules import parse_rule
    from dicomstore.services.server import ServerConfig

    users = Policy(users=[User("alice")])
    (said,) = cleartext(ServerConfig(host="0.0.0.0"), users)
    assert said.startswith("DICOM on 0.0.0.0 without --tls-cert: user identity passcodes")
    assert cleartext(ServerConfig(host="127.0.0.1"), users) == []
    assert cleartext(ServerConfig(host="0.0.0.0"), Policy()) == []
    tls = ServerConfig(host="0.0.0.0", ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    assert cleartext(tls, users) == []
    tls.move_destinations = (parse_destination("WS=10.0.0.6:104"),)
    tls.forward = (parse_rule("PACS=10.0.0.5:104"),)
    (said,) = cleartext(tls, None)
    assert said == (
        "--tls-cert is for what comes in: C-MOVE sub-operations, --forward go out without TLS"
    )
