"""serve's options from a TOML file and DICOMSTORE_* variables (cli/settings.py):
flags win over the environment, which wins over the file, which wins over the
defaults; bad keys and values are one line naming the file or the variable."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from dicomstore import __version__
from dicomstore.cli import build_parser, main
from dicomstore.cli.settings import SettingsError, env_name, parse, warn_unknown_variables

EVERY_COMMAND = [
    ["serve"],
    ["serve", "--port", "0", "--allow-calling-aet", "A", "--require-called-aet"],
    ["echo", "127.0.0.1", "104"],
    ["send", "127.0.0.1", "104", "x.dcm"],
    ["ls"],
    ["show", "1.2.3"],
    ["stats"],
    ["check"],
    ["conformance"],
]


@pytest.mark.parametrize("argv", EVERY_COMMAND, ids=lambda a: " ".join(a))
def test_without_file_or_environment_parsing_is_argparse_s(argv: list[str]) -> None:
    assert parse(build_parser(), argv, {}) == build_parser().parse_args(argv)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


CONFIG = """\
port = 104
max-associations = 20
http-port = 8042
storage = "data"
allow-calling-aet = ["MOD1", "MOD2"]
require-called-aet = true
fsync = "off"
max-instance-size = "2G"
operation-timeout = 90
"""


def test_every_kind_of_option_from_the_file(tmp_path: Path) -> None:
    config = _write(tmp_path, CONFIG)
    args = parse(build_parser(), ["serve", "--server-config", str(config)], {})
    assert (args.port, args.max_associations, args.http_port) == (104, 20, 8042)
    assert args.storage == tmp_path / "data"  # relative to the file's folder
    assert args.allow_calling_aet == ["MOD1", "MOD2"]
    assert args.require_called_aet is True
    assert args.fsync == "off"
    assert args.max_instance_size == 2 << 30  # through the option's own type
    assert args.operation_timeout == 90.0
    assert args.aet == "DICOMSTORE"  # not in the file: the default


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    config = _write(tmp_path, CONFIG)
    env = {
        "DICOMSTORE_SERVER_CONFIG": str(config),
        "DICOMSTORE_MAX_ASSOCIATIONS": "30",
        "DICOMSTORE_PORT": "105",
        "DICOMSTORE_ALLOW_CALLING_AET": "ENV1, ENV2",
        "DICOMSTORE_REQUIRE_CALLED_AET": "no",
    }
    args = parse(build_parser(), ["serve", "--port", "106"], env)
    assert args.port == 106  # flag
    assert args.max_associations == 30  # environment over file
    assert args.http_port == 8042  # file (found through DICOMSTORE_SERVER_CONFIG)
    assert args.allow_calling_aet == ["ENV1", "ENV2"]
    assert args.require_called_aet is False
    flags = ["serve", "--allow-calling-aet", "FLAG", "--server-config", str(config)]
    assert parse(build_parser(), flags, {}).allow_calling_aet == ["FLAG"]  # replaces the file's


def test_environment_for_the_access_commands(tmp_path: Path) -> None:
    env = {"DICOMSTORE_STORAGE": str(tmp_path), "DICOMSTORE_HTTP_PORT": "x"}
    for argv in (["ls"], ["show", "1.2"], ["export", "1.2", "out"], ["stats"], ["check"]):
        assert parse(build_parser(), argv, env).storage == tmp_path, argv
    assert parse(build_parser(), ["ls", "--storage", "flag"], env).storage == Path("flag")
    # serve's variables are serve's: echo and send have --port and --aet of their own
    env = {"DICOMSTORE_AET": "SERVER", "DICOMSTORE_LOG_LEVEL": "debug"}
    args = parse(build_parser(), ["send", "127.0.0.1", "104", "x"], env)
    assert (args.aet, args.log_level) == ("DICOMSTORE", "debug")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_associations = 3\n", "'max_associations' (did you mean max-associations?)"),
        ("colour = 3\n", "unknown key 'colour'"),
        ('max-associations = "x"\n', "max-associations: not a number: 'x'"),
        ("max-associations = 0\n", "max-associations: must be at least 1"),
        ("max-ops = -1\n", "max-ops: must be at least 0"),
        ('server-config = "x.toml"\n', "server-config names this file: it cannot be set in it"),
        ("port = 70000\n", "port: port out of range 0-65535: 70000"),
        ("fsync = true\n", "fsync: expected a string or a number"),
        ('fsync = "maybe"\n', "fsync: must be one of on, off"),
        ('require-called-aet = "yes"\n', "require-called-aet: a flag takes true or false"),
        ("[serve]\nport = 1\n", "[serve]: no sections"),
        ("port = \n", "not TOML"),
    ],
)
def test_file_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    config = _write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        parse(build_parser(), ["serve", "--server-config", str(config)], {})
    assert str(caught.value).startswith(str(config))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DICOMSTORE_MAX_PDU", "12", "DICOMSTORE_MAX_PDU='12': maximum PDU must be 0"),
        ("DICOMSTORE_ON_DUPLICATE", "drop", "must be one of keep, replace, reject"),
        ("DICOMSTORE_FSYNC", "", "must be one of on, off"),
        ("DICOMSTORE_ACCEPT_UNKNOWN_SOP_CLASSES", "2", "not a yes/no value"),
        ("DICOMSTORE_SERVER_CONFIG", "/nonexistent/x.toml", "cannot read /nonexistent/x.toml"),
    ],
)
def test_environment_errors_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse(build_parser(), ["serve"], {name: value})
    assert message in str(caught.value)
    if "CONFIG" not in name:
        assert str(caught.value).startswith(f"{name}={value!r}: ")


def test_main_answers_a_bad_setting_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv(env_name("max-associations"), "many")
    assert main(["serve", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "dicomstore: DICOMSTORE_MAX_ASSOCIATIONS='many': not a number: 'many'\n"


def test_unknown_variable_is_a_warning_not_an_error(caplog) -> None:
    parser = build_parser()
    env = {"DICOMSTORE_MAX_ASOCIATIONS": "3", "DICOMSTORE_CRASH_AT": "x", "DICOMSTORE_PORT": "1"}
    env["DICOMSTORE_ZZZZZZZZ"] = "1"
    with caplog.at_level(logging.WARNING, "dicomstore.settings"):
        warn_unknown_variables(parser, "serve", env)
    assert [r.getMessage() for r in caplog.records] == [  # (review77 F18: a typo's hint)
        "DICOMSTORE_MAX_ASOCIATIONS is set but names no option of dicomstore serve: ignored"
        " (did you mean DICOMSTORE_MAX_ASSOCIATIONS?)",
        "DICOMSTORE_ZZZZZZZZ is set but names no option of dicomstore serve: ignored",
    ]


def test_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dicomstore.cli", "--version"], capture_output=True, text=True
    )
    assert (proc.returncode, proc.stdout) == (0, f"dicomstore {__version__}\n")


def test_access_module_entry_point_reads_dicomstore_storage(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from dicomstore.cli.access import main as access_main

    monkeypatch.setenv("DICOMSTORE_STORAGE", str(tmp_path / "none"))
    assert access_main(["ls"]) == 1  # looked where the variable says: no archive there
    assert f"no archive at {tmp_path / 'none'}" in capsys.readouterr().err


def test_move_destinations_from_flags_environment_and_file(tmp_path: Path) -> None:
    """--move-destination AET=HOST:PORT is repeatable: a list in the file, commas in
    the environment (issue 15, C-MOVE)."""
    config = _write(tmp_path, 'move-destination = ["WS1=10.0.0.5:104", "WS2=[::1]:11112"]\n')
    args = parse(build_parser(), ["serve", "--server-config", str(config)], {})
    assert [str(d) for d in args.move_destination] == ["WS1=10.0.0.5:104", "WS2=[::1]:11112"]
    env = {"DICOMSTORE_MOVE_DESTINATION": "A=host:1,B=h2:2"}
    args = parse(build_parser(), ["serve"], env)
    assert [(d.ae_title, d.host, d.port) for d in args.move_destination] == [
        ("A", "host", 1),
        ("B", "h2", 2),
    ]
    with pytest.raises(SettingsError, match="is not AET=HOST:PORT"):
        parse(build_parser(), ["serve"], {"DICOMSTORE_MOVE_DESTINATION": "nohost"})
    with pytest.raises(SettingsError, match="port must be a number"):
        parse(build_parser(), ["serve"], {"DICOMSTORE_MOVE_DESTINATION": "A=h:0"})
