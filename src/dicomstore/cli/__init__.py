"""The `dicomstore` command line: serve, the SCUs (echo send find move get), the archive.

Exit codes (echo, send, find, move, get): 0 success, 1 failure reported by the peer (or
partial failure for send), 2 usage error, 3 connection refused or
unreachable, 4 association rejected, 5 association aborted, 6 timed out,
7 (send) nothing stored, for failure statuses or mixed causes; 130 interrupted
(Ctrl-C: one line, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from dicomstore.aio import loops
from dicomstore.cli import blas  # noqa: F401 - before numpy is imported (see there)
from dicomstore.cli.allocator import keep_freed_memory
from dicomstore.cli.logs import refuse, setup_logging
from dicomstore.cli.options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    run_client,
)

#: Which module adds each subcommand's parser (``add_parser``/``add_parsers``), in the
#: order ``--help`` lists them: a command line naming one builds only that module's
#: parsers, so ``dicomstore send`` does not import the server's options
#: (tests/cli/test_cli_startup.py checks this table against the modules).
PARSERS: dict[str, str] = {
    "serve": "serve_options",
    "echo": "echo",
    "send": "send",
    "find": "find",
    "move": "retrieve",
    "get": "retrieve",
    "ls": "access",
    "show": "access",
    "export": "access",
    "stats": "access",
    "delete": "access",
    "check": "admin",
    "reindex": "admin",
    "requeue": "admin",
    "conformance": "admin",
    "events": "events",
}


class Parser(argparse.ArgumentParser):
    """An option mistaken is one line saying where to look, not the whole usage first
    (review100 W4: ~50 lines for serve; the file and environment forms were one); an
    option is given whole, not by a prefix of its name (review112 L3: ``--storag x``
    was ``--storage x``, ``--tls-r`` ``--tls-require-client-cert``: a typo taken for
    another option), as in the file and the environment; its subcommands' too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", Parser)
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The subcommands and their options (documented in the README): all of them, or
    when ``argv`` begins with a subcommand's name, those of its module only."""
    import importlib

    from dicomstore import __version__

    parser = Parser(prog="dicomstore", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dicomstore {__version__}")
    # (every command in the usage line, also when only one module's are built: an
    # error such as "unrecognized arguments" then shows the same usage as the whole)
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{" + ",".join(PARSERS) + "}",
        parser_class=Parser,
    )
    wanted = PARSERS.get(argv[0]) if argv else None
    for name in dict.fromkeys(PARSERS.values()):
        if wanted is None or name == wanted:
            module = importlib.import_module(f"dicomstore.cli.{name}")
            add = getattr(module, "add_parsers", None) or module.add_parser
            add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dicomstore` console script."""
    from dicomstore.cli import settings

    if argv is None:  # (the process is the console script's: see allocator.py)
        keep_freed_memory()
    try:
        parser = build_parser(sys.argv[1:] if argv is None else argv)  # (imports)
        args = settings.parse(parser, argv)
    except settings.SettingsError as exc:
        print(f"dicomstore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # (review100 W12: a traceback, while the modules load)
        print("dicomstore: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    setup_logging(args.log_level, args.log_format)
    settings.warn_unknown_variables(parser, args.command)
    try:
        return _run(args)
    except loops.LoopUnavailable as exc:
        refuse(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling: no traceback
        refuse("interrupted")
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        try:
            from dicomstore.cli.serve import run as run_serve

            return loops.run(run_serve(args), args.loop)
        except KeyboardInterrupt:
            return EXIT_OK
    if args.command == "echo":
        from dicomstore.cli.echo import run as run_echo

        return run_client(run_echo(args))
    if args.command == "find":
        from dicomstore.cli.find import run as run_find

        return run_client(run_find(args))
    if args.command in ("move", "get"):
        from dicomstore.cli.retrieve import run as run_retrieve

        return run_client(run_retrieve(args))
    if args.command == "send":
        from dicomstore.cli import send

        return send.run(args)
    if args.command == "events":
        from dicomstore.cli import events

        return events.run(args)
    if args.command == "requeue":
        from dicomstore.cli.admin import requeue

        return requeue(args)
    if args.command == "conformance":
        from dicomstore.conformance.document import statement

        print(statement(), end="")
        return EXIT_OK
    from dicomstore.cli import access

    if args.command in access.COMMANDS:
        return access.run(args)
    if args.command in ("check", "reindex"):
        from dicomstore.archive.layout import INDEX_FILE

        # check needs an index to check against; reindex needs the files' folder
        local = args.command == "check" and not args.index  # (else a database's)
        needed = args.storage / INDEX_FILE if local else args.storage
        try:
            there = needed.exists()
        except OSError as exc:  # (review115 F9: a folder it may not read, a traceback)
            print(f"dicomstore: cannot read {needed}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILED
        if not there:
            from dicomstore.archive.startup import lost_index

            missing = f" (no {needed.name})" if needed != args.storage else ""
            said = lost_index(args.storage, f"no archive at {args.storage}{missing}")
            print(f"dicomstore: {said}", file=sys.stderr)
            return EXIT_FAILED
        from dicomstore.cli.admin import check_or_reindex

        return check_or_reindex(args)
    return EXIT_USAGE
