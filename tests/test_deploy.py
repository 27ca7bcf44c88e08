"""The systemd unit, its server.toml and the Containerfile under docs/deploy: each
command line they run is accepted by our parser with the settings they give, and
systemd-analyze finds nothing to say about the unit (where it is installed)."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dicomstore.cli import build_parser
from dicomstore.cli.settings import parse

DEPLOY = Path(__file__).parent.parent / "docs" / "deploy"
UNIT = DEPLOY / "dicomstore.service"


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    return unit


def test_unit_execstart_and_its_config_file_parse(tmp_path: Path) -> None:
    service = _unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "dicomstore"
    env = dict(item.split("=", 1) for item in shlex.split(service.get("Environment", "")))
    config = argv.index("--server-config") + 1
    argv[config] = str(DEPLOY / "server.toml")  # /etc/dicomstore/server.toml, installed
    args = parse(build_parser(), argv[1:], env)
    assert args.command == "serve" and args.log_format == "json"
    assert (args.port, args.http_port) == (104, 8042)
    assert str(args.storage).startswith(service["WorkingDirectory"])  # the StateDirectory
    assert "CAP_NET_BIND_SERVICE" in service["AmbientCapabilities"]  # port 104 without root


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text().replace("/usr/local/bin/dicomstore", sys.executable)
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, "")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_containerfile_command_and_environment_parse() -> None:
    steps = _instructions(DEPLOY / "Containerfile")
    env: dict[str, str] = {}
    for word, rest in steps:
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    entrypoint = json.loads(next(rest for word, rest in steps if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in steps if word == "CMD"))
    assert entrypoint == ["dicomstore"]
    args = parse(build_parser(), cmd, env)
    assert (args.command, args.host, args.http_host) == ("serve", "0.0.0.0", "0.0.0.0")
    assert str(args.storage).startswith(next(rest for word, rest in steps if word == "VOLUME"))
    exposed = {int(p) for p in next(rest for word, rest in steps if word == "EXPOSE").split()}
    assert exposed == {args.port, args.http_port}
    health = json.loads(next(rest for word, rest in steps if word == "HEALTHCHECK")[4:])
    assert f"127.0.0.1:{args.http_port}/healthz" in health[-1]
    # the health check's own command runs (python -c '...'): it compiles
    compile(health[-1], "HEALTHCHECK", "exec")


def test_python_dash_m_dicomstore_is_the_command() -> None:
    """review58 L7: ``python -m dicomstore`` failed (no ``__main__``), as scripts call it."""
    out = subprocess.run(
        [sys.executable, "-m", "dicomstore", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("dicomstore ")


def test_the_unit_keeps_stored_files_from_other_users() -> None:
    """review58 L3: stored files are 0644 less the umask; the unit sets 0027."""
    assert _unit()["Service"]["UMask"] == "0027"
