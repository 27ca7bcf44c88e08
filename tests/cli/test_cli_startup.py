"""What the command line loads before it sends: neither pydicom (and numpy, PIL,
requests behind it) nor the server; ``dicomstore send`` starts in about half the
CPU time it took with them (issue 13). ``send --commit`` loads them when it asks.
A command line naming a subcommand builds that subcommand's parser only
(``cli.PARSERS``), and parses exactly as the whole parser does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tests.conftest import free_port

from dicomstore.cli import PARSERS, build_parser
from dicomstore.cli.settings import subcommands

PROBE = """
import sys
from dicomstore.cli import build_parser
argv = ["send", "127.0.0.1", "104", "x.dcm"]
build_parser(argv).parse_args(argv)
import dicomstore.services.scu_send, dicomstore.services.storage_scu, dicomstore.aio.client
heavy = sorted(m for m in ("pydicom", "numpy", "PIL", "requests") if m in sys.modules)
server = sorted(m for m in sys.modules if m.startswith("dicomstore.archive") or m in (
    "dicomstore.services.server", "dicomstore.services.acceptor", "dicomstore.cli.serve_options",
    "dicomstore.services.forward_rules", "sqlite3", "tomllib"))
families = sorted(m for m in sys.modules if m.endswith(("query_messages", "retrieve_messages",
    "normalized_messages")))
print(heavy, server, families)
"""


def test_send_loads_neither_pydicom_nor_the_server() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=dict(os.environ), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "[] [] []"  # (nor the Q/R, N- message families)


def test_the_table_of_parsers_names_every_subcommand_where_it_is_made() -> None:
    assert list(subcommands(build_parser())) == list(PARSERS)  # (the order --help shows)
    for command, module in PARSERS.items():
        made = subcommands(build_parser([command]))
        assert command in made
        assert set(made) == {c for c, m in PARSERS.items() if m == module}


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "127.0.0.1", "104", "a.dcm", "b", "--aec", "ARCHIVE", "--parallel", "2"],
        ["serve", "--port", "11113", "--fsync", "off", "--forward", "B=h:104"],
        ["echo", "host", "104", "--repeat", "3"],
        ["move", "host", "104", "--dest", "ME", "-k", "StudyInstanceUID=1.2.3"],
        ["ls", "--storage", "/x", "studies"],
        ["check", "--storage", "/x"],
        ["conformance"],
    ],
)
def test_a_parser_built_for_its_command_parses_as_the_whole_one(argv: list[str]) -> None:
    assert vars(build_parser(argv).parse_args(argv)) == vars(build_parser().parse_args(argv))


def test_a_command_line_without_a_known_subcommand_gets_the_whole_parser() -> None:
    for argv in ([], ["--version"], ["sned"], None):
        assert list(subcommands(build_parser(argv))) == list(PARSERS)


@pytest.mark.parametrize("argv", [["ls", "--nope"], ["send", "h", "104", "a.dcm", "--nope"]])
def test_an_error_after_a_command_shows_the_usage_of_the_whole_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """(Built for ``ls``, the top-level usage listed the access commands only; since
    review100 W4 no usage is printed, one line: the same either way.)"""
    messages = []
    for parser in (build_parser(argv), build_parser()):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        messages.append(capsys.readouterr().err)
    assert messages[0] == messages[1] and "unrecognized arguments: --nope" in messages[0]
    assert messages[0].count("\n") == 1 and messages[0].endswith("(see dicomstore --help)\n")


def test_a_mistyped_option_is_one_line_naming_the_command_and_the_option_meant(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """review45 L15: 'serve --prot 1' got the top-level usage, no word of --port."""
    from dicomstore.cli import main

    with pytest.raises(SystemExit) as ended:
        main(["serve", "--prot", "1"])
    assert ended.value.code == 2
    assert capsys.readouterr().err == (
        "dicomstore serve: error: unrecognized arguments: --prot (did you mean --port?);"
        " see dicomstore serve --help\n"
    )


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["serve", "--storag", "x"], "--storag (did you mean --storage?)"),
        (["serve", "--tls-r"], "--tls-r (did you mean --tls-require-client-cert?)"),
        (["send", "127.0.0.1", "1", "f", "--retr", "0"], "--retr (did you mean --retries?)"),
        (["echo", "127.0.0.1", "1", "--bogus"], "--bogus"),  # (review112 I4: --user?)
        # (review113 I3: its value was taken for the level: "invalid choice: '/tmp/x'")
        (["ls", "--stor", "/tmp/x"], "--stor (did you mean --storage?)"),
        # (review113 I3: its value was taken for the level: "invalid choice: '/tmp/x'")
        (["ls", "--stor", "/tmp/x"], "--stor (did you mean --storage?)"),
    ],
)
def test_a_prefix_of_an_option_is_no_option(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """review112 L3: argparse took a prefix for the option it begins: 'serve --storag x'
    served a new archive ./x on the default port, '--tls-r' was
    --tls-require-client-cert; the file and the environment take no prefix either."""
    from dicomstore.cli import build_parser
    from dicomstore.cli.settings import parse

    with pytest.raises(SystemExit) as ended:  # (parsed only: a prefix taken ran nothing)
        parse(build_parser(argv), argv, {})
    assert ended.value.code == 2
    assert capsys.readouterr().err == (
        f"dicomstore {argv[0]}: error: unrecognized arguments: {said};"
        f" see dicomstore {argv[0]} --help\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--artim-timeout", "nan"],
        ["serve", "--idle-timeout", "inf"],
        ["serve", "--acse-timeout", "-1"],
        ["serve", "--dimse-timeout", "NaN"],
        ["serve", "--forward-retry-delay", "nan"],
        ["serve", "--operation-timeout", "infinity"],
        ["send", "127.0.0.1", "1", "x", "--retry-delay", "nan"],
        ["echo", "127.0.0.1", "1", "--acse-timeout", "inf"],
        ["serve", "--max-ops", "70000"],  # (review77 F17: PS3.7 D.3.3.3.1, 16 bits)
        ["send", "127.0.0.1", "1", "x", "--max-ops", "65536"],
    ],
)
def test_values_out_of_range_are_refused(argv: list[str], capsys) -> None:
    """review77 F7: NaN and infinite durations passed the parser; every association
    then failed (uvloop: cannot convert float NaN to integer). F17: an operations
    window over 65535."""
    from dicomstore.cli import main

    with pytest.raises(SystemExit) as ended:
        main(argv)
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[-2]}" in err and "must be" in err


def test_a_file_of_the_archive_that_cannot_be_opened_is_not_the_port(tmp_path, capsys) -> None:
    """review77 F0: the storage's events lock not openable was told as 'cannot listen
    on 127.0.0.1:PORT' (exit 3): the operator looked at the port."""
    from dicomstore.cli import main

    storage = tmp_path / "s"
    (storage / ".events.lock").mkdir(parents=True)  # (EISDIR even as root)
    assert main(["serve", "--storage", str(storage), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"cannot open the archive {storage}: {storage / '.events.lock'}: Is a directory" in err
    assert "listen" not in err


def test_an_http_address_not_of_this_machine_is_named(tmp_path, capsys) -> None:
    """review77 F18: 'cannot listen for HTTP on port N' named the port, not the host
    that was wrong."""
    from dicomstore.cli import main

    argv = ["serve", "--storage", str(tmp_path / "s"), "--port", "0", "--http-port", "0"]
    assert main([*argv, "--http-host", "192.0.2.1"]) == 3  # (TEST-NET-1: no one's)
    err = capsys.readouterr().err
    assert "cannot listen for HTTP on 192.0.2.1:0: Cannot assign requested address" in err


@pytest.mark.parametrize(
    "extra, why",
    [
        (["--http-port", "0", "--http-host", "192.0.2.1"], "cannot listen for HTTP on 192.0.2.1"),
        (["--tls-ca", "ca.pem"], "--tls-ca and --tls-require-client-cert need --tls-cert"),
        (["--storage", "afile"], "cannot open the archive afile: not a folder"),
        (["--audit-log", "nodir/a.jsonl"], "cannot open the audit log (--audit-log) nodir"),
    ],
    ids=["http-address", "tls-ca-alone", "archive", "audit-log"],
)
def test_under_json_logs_a_start_refusal_is_a_json_line_too(tmp_path, extra, why) -> None:
    """A refused start was a plain line among JSON ones (`--log-format json`): a log
    collector reading each line as an object lost why the server did not start."""
    import json

    argv = ["serve", "--storage", str(tmp_path / "s"), "--port", "0", "--log-format", "json"]
    (tmp_path / "afile").touch()
    done = subprocess.run(
        [sys.executable, "-m", "dicomstore.cli", *argv, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode in (2, 3), done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]
    [error] = [r for r in records if r["level"] == "ERROR"]
    assert error["logger"] == "dicomstore" and error["message"].startswith(why), error


@pytest.mark.parametrize("which", ["--port", "--http-port"])
def test_a_port_in_use_is_told_before_anything_is_created(tmp_path, capsys, which) -> None:
    """review100 W12: a port in use made a new archive folder (and its index), then
    failed: the operator's mistyped port left an archive behind."""
    import socket

    from dicomstore.cli import main

    storage = tmp_path / "new"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        argv = ["serve", "--storage", str(storage), "--host", "127.0.0.1", "--port", "0"]
        argv += ["--http-host", "127.0.0.1", "--audit-log", str(tmp_path / "audit.jsonl")]
        argv += [which, str(busy)] if which == "--port" else ["--http-port", str(busy)]
        assert main(argv) == 3
    for_http = " for HTTP" if which == "--http-port" else ""
    err = capsys.readouterr().err
    assert f"cannot listen{for_http} on 127.0.0.1:{busy}: Address already in use" in err
    assert not storage.exists() and not (tmp_path / "audit.jsonl").exists()


def test_an_http_port_that_is_the_dicom_port_is_told_before_anything(tmp_path, capsys) -> None:
    """review102 L3: each port was tried alone, so --http-port equal to --port passed
    both tries, and the start made the archive before it failed."""
    from dicomstore.cli import main

    storage = tmp_path / "new"
    port = str(free_port())
    argv = ["serve", "--storage", str(storage), "--host", "127.0.0.1", "--port", port]
    assert main([*argv, "--http-host", "127.0.0.1", "--http-port", port]) == 3
    err = capsys.readouterr().err
    assert f"cannot listen for HTTP on 127.0.0.1:{port}: Address already in use" in err
    assert not storage.exists()
