"""The SCU commands' user identity options (PS3.7 D.3.3.7): ``--user``, ``--password``,
``--password-file``, ``--jwt-file``, and the User Identity sub-item they ask for."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_identity_options(p: argparse.ArgumentParser) -> None:
    """The options of an SCU command (``options.add_association_options``)."""
    who = p.add_argument_group("user identity (PS3.7 D.3.3.7)")
    who.add_argument("--user", metavar="NAME", help="identify as NAME (with a passcode: type 2)")
    secret = who.add_mutually_exclusive_group()
    secret.add_argument(
        "--password", metavar="PASSCODE", help="NAME's passcode (seen by `ps`: see --password-file)"
    )
    secret.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="read NAME's passcode from FILE's first line",
    )
    secret.add_argument(
        "--jwt-file",
        type=Path,
        metavar="FILE",
        help="identify by the JSON Web Token in FILE (type 5)",
    )


class IdentityError(ValueError):
    """User identity options that cannot be used (the message says which)."""


def user_identity(args: argparse.Namespace) -> Any:
    """The User Identity sub-item the options ask for (PS3.7 D.3.3.7.1): type 1 a user
    name, 2 a user name and passcode, 5 a JWT; ``None`` without them."""
    from dicomstore.ul.items import UserIdentityRQ

    name, jwt_file = getattr(args, "user", None), getattr(args, "jwt_file", None)
    passcode = getattr(args, "password", None)
    path = getattr(args, "password_file", None)
    if path is not None:  # (read, not measured: a pipe has no size, <(pass show ...))
        lines = _text(path).splitlines()
        passcode = lines[0] if lines else ""
    token = _text(jwt_file).strip() if jwt_file is not None else None
    if jwt_file is not None:
        if name is not None:
            raise IdentityError("--jwt-file names the user itself: no --user with it")
        if not token:
            raise IdentityError(f"--jwt-file {jwt_file}: empty")
        return UserIdentityRQ(5, False, token.encode("utf-8"))
    if name is None:
        if passcode is not None:
            raise IdentityError("a passcode needs --user NAME")
        return None
    if passcode is None:
        return UserIdentityRQ(1, False, name.encode("utf-8"))
    return UserIdentityRQ(2, False, name.encode("utf-8"), passcode.encode("utf-8"))


def _text(path: Path) -> str:
    """A secret file's text; :class:`IdentityError` when it cannot be read as UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise IdentityError(f"{exc.filename}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise IdentityError(f"{path}: not UTF-8 text") from None
