"""What every subcommand shares: exit codes, option value types, TLS client
options, timeouts, logging, and how a client's failure becomes one line and an
exit code (the README's table)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomstore import uids
from dicomstore.aio import loops
from dicomstore.aio.association import Timeouts
from dicomstore.cli.identity import IdentityError, add_identity_options, user_identity
from dicomstore.cli.logs import LEVELS, add_log_format, one_line, refuse
from dicomstore.errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    DimseTimeout,
)
from dicomstore.ul.negotiation import MAX_PDU_RULE, max_pdu_allowed
from dicomstore.vr import ae_title_problem

if TYPE_CHECKING:
    from dicomstore.services.destinations import Destination
    from dicomstore.services.forward_rules import ForwardRule

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REJECTED = 4
EXIT_ABORTED = 5
EXIT_TIMEOUT = 6
#: send: nothing stored (failure statuses, not sendable, corrupt, or mixed causes)
EXIT_ALL_FAILED = 7
#: send --commit: every instance stored, not every one committed (PS3.4 J.3.3)
EXIT_NOT_COMMITTED = 8
#: Ctrl-C (SIGINT): 128 + 2, as shells report it
EXIT_INTERRUPTED = 130

log = logging.getLogger("dicomstore")


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2): the access commands'."""


def _ae_title(value: str) -> str:
    problem = ae_title_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"not a valid AE title ({problem}): {value!r}")
    return value.strip(" ")


def _ae_address(value: str) -> Destination:
    from dicomstore.services.destinations import parse_destination  # (serve, move: lazily)

    try:
        return parse_destination(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _forward_rule(value: str) -> ForwardRule:
    from dicomstore.services.forward_rules import parse_rule  # (serve only: lazily)

    try:
        return parse_rule(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {port}")
    return port


def _pdu(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not max_pdu_allowed(n):
        raise argparse.ArgumentTypeError(f"maximum PDU must be {MAX_PDU_RULE}")
    return n


def _positive(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < n < float("inf"):  # (nor NaN, nor infinite: review77 F7)
        raise argparse.ArgumentTypeError("must be a number greater than 0")
    return n


def _seconds(value: str) -> float:
    """A duration in seconds, 0 or more (0 usually meaning "off")."""
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not n >= 0 or n == float("inf"):
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return n


def _http_url(value: str) -> str:
    """An http:// or https:// URL with a host."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http:// or https:// URL: {value!r}")
    return value


def _int(low: int, high: int | None = None):
    """A parser of whole numbers >= ``low`` (and <= ``high``)."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        if high is not None and n > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}")
        return n

    return parse


def _count(value: str) -> int:
    """A whole number >= 0 (0 usually meaning "no limit")."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


def _size(value: str) -> int:
    """A byte count with an optional K/M/G/T suffix (powers of 1024)."""
    text = value.strip().upper().removesuffix("B")
    scale = 1
    if text and text[-1] in "KMGT":
        scale = 1024 ** ("KMGT".index(text[-1]) + 1)
        text = text[:-1]
    try:
        n = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (e.g. 512M, 4G)") from None
    if n < 0:
        raise argparse.ArgumentTypeError("a size cannot be negative")
    return int(n * scale)


def _transfer_syntax(value: str) -> str:
    aliases = {
        "explicit": uids.EXPLICIT_VR_LE,
        "implicit": uids.IMPLICIT_VR_LE,
        "big": uids.EXPLICIT_VR_BE,
        "deflated": uids.DEFLATED_EXPLICIT_VR_LE,
    }
    uid = aliases.get(value.lower(), value)
    if uid not in uids.transfer_syntaxes():
        raise argparse.ArgumentTypeError(f"unknown transfer syntax: {value!r}")
    return uid


def add_scu_parser(sub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """The parser of an SCU command: HOST, PORT and :func:`add_association_options`."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    p.add_argument("host")
    p.add_argument("port", type=_port)
    add_association_options(p)
    return p


def add_association_options(p: argparse.ArgumentParser) -> None:
    """What every SCU command (echo, send, find ...) asks of its association: the AE
    titles (PS3.8 7.1.1.3, 7.1.1.4), our maximum PDU, the ACSE and DIMSE timeouts."""
    p.add_argument("--aet", type=_ae_title, default="DICOMSTORE", help="our (calling) AE title")
    p.add_argument("--aec", type=_ae_title, default="ANY-SCP", help="the peer's (called) AE title")
    p.add_argument("--max-pdu", type=_pdu, default=1024 * 1024, help="largest PDU we receive")
    p.add_argument(
        "--acse-timeout",
        type=_positive,
        help="seconds for the TCP connection and the association's answer (default 30)",
    )
    p.add_argument(
        "--dimse-timeout",
        type=_positive,
        help="seconds for each response (default unlimited; an association silent for"
        " 600 s ends all the same)",
    )
    add_identity_options(p)


def add_tls_client_options(p: argparse.ArgumentParser) -> None:
    """TLS options of the SCU commands (echo, send): PS3.15 B.9."""
    g = p.add_argument_group("TLS")
    g.add_argument("--tls", action="store_true", help="connect with TLS (1.2 or newer)")
    g.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        help="CA certificate(s) to verify the server (default: system store)",
    )
    g.add_argument("--tls-cert", type=Path, metavar="PEM", help="our client certificate")
    g.add_argument("--tls-key", type=Path, metavar="PEM", help="our client private key")
    g.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the server's certificate must bear (default: the host connected to "
        "when trusting the system store; none, the chain alone, with --tls-ca)",
    )
    g.add_argument(
        "--tls-no-verify",
        action="store_true",
        help="do not verify the server's certificate (testing only)",
    )


async def open_association(args: argparse.Namespace, contexts: Any = None, **more: Any) -> Any:
    """The association an SCU command's options ask for (:func:`add_scu_parser`, TLS),
    proposing ``contexts`` (default: Verification) and ``more`` (``roles`` ...)."""
    from dicomstore.aio.client import associate

    if contexts is not None:
        more["contexts"] = contexts
    return await associate(
        args.host,
        args.port,
        called_ae=args.aec,
        calling_ae=args.aet,
        max_pdu=args.max_pdu,
        timeouts=_timeouts(args),
        ssl=tls_client_context(args),
        identity=user_identity(args),
        **more,
    )


class CancelOnInterrupt:
    """Ctrl-C (SIGINT) during a C-FIND, C-MOVE or C-GET: the first calls ``cancel``
    (a C-CANCEL-RQ, PS3.7 9.3.2.3; the operation then ends with its final response),
    a second one, or ``wait`` seconds without the end, ``abort``.

        async with CancelOnInterrupt(query.cancel, assoc.abort) as ctrl_c: ...
        if ctrl_c.interrupted: ...
    """

    def __init__(
        self,
        cancel: Callable[[], Awaitable[None]],
        abort: Callable[[], Awaitable[None]],
        wait: float = 10.0,
    ) -> None:
        self.cancel, self.abort, self.wait = cancel, abort, wait
        self.interrupted = False
        self._signals: asyncio.Queue[None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        await self._signals.get()
        self.interrupted = True
        await self.cancel()
        try:
            async with asyncio.timeout(self.wait):
                await self._signals.get()
        except TimeoutError:
            pass
        await self.abort()

    async def __aenter__(self) -> CancelOnInterrupt:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._signals.put_nowait, None)
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)


def tls_failed(exc: Exception) -> int:
    """One line for TLS options that cannot be used (a file missing, unusable): 2."""
    refuse(f"cannot set up TLS: {exc}")
    return EXIT_USAGE


def tls_client_context(args: argparse.Namespace):
    """The SSL context the SCU options ask for, or None without any TLS option: each
    of them asks for TLS (review110 M1: --tls-no-verify or --tls-key alone left it off,
    and a plain peer was sent the data in clear, exit 0)."""
    wanted = (args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    if not (args.tls or args.tls_no_verify or any(given is not None for given in wanted)):
        return None
    from dicomstore.tls import TLSFileError, client_context

    if args.tls_key is not None and args.tls_cert is None:
        raise TLSFileError("--tls-key needs --tls-cert (the certificate of that key)")

    return client_context(
        args.tls_ca,
        args.tls_cert,
        args.tls_key,
        verify=not args.tls_no_verify,
        server_name=args.tls_server_name,
    )


def add_index(p: argparse.ArgumentParser) -> None:
    """``--index URL``: the archive's index when not ``index.sqlite`` in ``--storage``
    (issue 17; ``archive/engine.py``); the files stay under ``--storage``."""
    p.add_argument(
        "--index",
        type=_index,
        metavar="URL",
        help="the archive's index: postgresql://user@host:port/db"
        " (default: the SQLite file index.sqlite in --storage)",
    )


def _index(value: str) -> str:
    """An ``--index`` this dicomstore can open (``engine.index_problem``)."""
    from dicomstore.archive.engine import index_problem

    problem = index_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def add_loop(p: argparse.ArgumentParser) -> None:
    """``--loop``: the event loop (``aio/loops.py``)."""
    p.add_argument(
        "--loop",
        choices=loops.CHOICES,
        default="auto",
        help="event loop: uvloop (pip install 'dicomstore[fast]': a few per cent less CPU) "
        "or asyncio's own; auto: uvloop when installed (default auto)",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        default="info",
        choices=list(LEVELS),
        help="log verbosity (default info)",
    )
    add_log_format(p)


def _timeouts(args: argparse.Namespace) -> Timeouts:
    t = Timeouts()
    if getattr(args, "acse_timeout", None):
        t.acse = t.connect = args.acse_timeout  # (the TCP connect's too: review38scu #12)
    if getattr(args, "artim_timeout", None):
        t.artim = args.artim_timeout
    if getattr(args, "dimse_timeout", None):
        t.dimse = args.dimse_timeout
    if getattr(args, "idle_timeout", None):
        t.network = args.idle_timeout
    if getattr(args, "operation_timeout", None):
        t.operation = args.operation_timeout
    if getattr(args, "min_receive_rate", None) is not None:
        t.min_rate = args.min_receive_rate
    return t


#: What SQLite says of an index file it cannot read as a database (damaged, or not one).
_DAMAGED = ("database disk image is malformed", "file is not a database")


def _cannot_open(storage: Path, exc: BaseException) -> None:
    """One line: why the archive at ``storage`` cannot be opened, and, when its index is
    damaged, what mends it (review45 M7: 'dmg: dmg: database disk image is malformed')."""
    why = getattr(exc, "strerror", None) or str(exc)
    where = getattr(exc, "filename", None)
    for folder in (storage, *storage.parents):  # (review77 F16: '<it>/.tmp: Not a ...')
        if folder.exists():
            if not folder.is_dir():  # (review100: '/dev/null/x/.tmp: Not a directory')
                why, where = "not a folder", None if folder == storage else folder
            break
    line = f"cannot open the archive {storage}: " + (
        f"{where}: {why}" if where and str(where) != str(storage) else why
    )
    if any(text in why for text in _DAMAGED):
        line += (
            f" (its index is damaged: `dicomstore reindex --storage {storage}` builds a new"
            " one from the files, the damaged one kept aside)"
        )
    elif "disk I/O error" in why or "disk is full" in why:  # (review115 F8: SQLite's
        line += _room(storage)  # words on a full disk named nothing of it)
    refuse(line)


def _room(storage: Path) -> str:
    """What is free where the archive is, when little: why SQLite could not write."""
    try:
        free = shutil.disk_usage(storage).free
    except OSError:
        return ""
    return f" (the disk is full: {free} bytes free; free some space)" if free < 1 << 20 else ""


def open_archive(storage: Path, **options: Any) -> Any:
    """The archive at ``storage`` (created if missing; ``options`` such as ``index`` go
    to :class:`~dicomstore.archive.Archive`), or ``None`` after one line on stderr
    saying why it cannot be opened: ``serve``'s and ``get --storage``'s, which store
    into it (so refused when its index is lost: ``require_index``, review58 M4)."""
    from dicomstore.archive import Archive
    from dicomstore.archive.engine import DatabaseOrOSError
    from dicomstore.archive.frozen import unwritable
    from dicomstore.archive.schema import SchemaError

    unusable: tuple[type[Exception], ...] = (SchemaError, ValueError, *DatabaseOrOSError)
    try:  # (an index it may not write: each store A700 else; review115 F9)
        cannot = unwritable(storage, options.get("index"))
        if cannot is not None:
            raise OSError(30, f"{cannot}: nothing could be stored (`dicomstore check` reads it)")
        return Archive(storage, require_index=True, **options)
    except unusable as exc:
        _cannot_open(storage, exc)
        return None


def silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush of what is
    still buffered for a closed pipe does not complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run_client(coro) -> int:
    """Run a client coroutine; turn network failures into one line and an exit code."""
    from dicomstore.tls import TLSFileError

    try:
        code = asyncio.run(coro)
        sys.stdout.flush()  # (a closed pipe shows here, not at the interpreter's exit)
        return code
    except TLSFileError as exc:
        return tls_failed(exc)
    except IdentityError as exc:
        print(f"dicomstore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AssociationRejected as exc:
        print(f"dicomstore: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_REJECTED
    except AssociationAborted as exc:
        print(f"dicomstore: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_ABORTED
    except DimseTimeout as exc:
        print(f"dicomstore: timed out: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_TIMEOUT
    except AssociationError as exc:
        text = str(exc)
        print(f"dicomstore: {one_line(text)}", file=sys.stderr)
        return EXIT_TIMEOUT if "timed out" in text or "within" in text else EXIT_FAILED
    except ssl.SSLError as exc:
        from dicomstore.tls import failed_words

        print(f"dicomstore: {one_line(failed_words(exc))}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ConnectionRefusedError:
        print("dicomstore: connection refused (is the server running?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except BrokenPipeError:  # `... | head`: the reader of our output is gone, not the peer
        silence_stdout()
        return EXIT_FAILED
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        print(f"dicomstore: cannot connect: {why}", file=sys.stderr)
        return EXIT_UNREACHABLE
