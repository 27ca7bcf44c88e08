"""Options from a TOML file and from ``DICOMSTORE_*`` environment variables
(README: "Operations").

Every option of ``dicomstore serve`` can also be given

- in the file named by ``--server-config FILE`` (or ``DICOMSTORE_SERVER_CONFIG``):
  TOML, one key per option, named like the long option without its dashes::

      port = 104
      max-associations = 20
      http-port = 8042
      allow-calling-aet = ["MODALITY1", "MODALITY2"]   # a repeatable option: a list
      require-called-aet = true                        # a flag: true or false

  (relative paths are relative to the file's folder);
- in the environment: ``DICOMSTORE_`` and the option's name in capitals with
  ``_`` for ``-`` (``DICOMSTORE_MAX_ASSOCIATIONS=20``); a repeatable option takes
  values separated by commas, a flag ``1``/``true``/``yes``/``on`` or
  ``0``/``false``/``no``/``off``.

A flag on the command line wins over the environment, which wins over the
file, which wins over the built-in default. The other commands read only
:data:`SHARED` from the environment (``DICOMSTORE_STORAGE`` for ``ls``,
``show``, ``export`` ...; ``DICOMSTORE_INDEX`` for those and ``check``,
``reindex``; the archive's policies, limits and audit log for ``get --storage``,
the audit log for ``delete``, and ``reindex``'s ``--on-relational-mismatch``).
Nothing is listed twice: the keys, their types and their checks are the argparse
definitions themselves. A value that does not fit, an unknown key in the file, or
a file that is no TOML is one line naming the file or the variable (:class:`SettingsError`, exit 2).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ENV_PREFIX = "DICOMSTORE_"
#: the command every option of which may come from the file and the environment
CONFIGURED = "serve"
#: what the environment sets for the other commands (those that have the option)
SHARED = (
    "storage",
    "index",
    "log-level",
    "log-format",
    # the archive's policies, limits and audit: ``get --storage``, ``reindex`` (review54 F1)
    "on-duplicate",
    "on-class-mismatch",
    "on-relational-mismatch",
    "trailing-padding",
    "max-instance-size",
    "min-free",
    "audit-log",
    "audit-log-max-size",
    "audit-log-keep",
)
#: ``DICOMSTORE_*`` variables that are not options (the archive's crash test points)
NOT_OPTIONS = frozenset({"DICOMSTORE_CRASH_AT"})
FILE_OPTION = "server-config"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

log = logging.getLogger("dicomstore.settings")


class SettingsError(Exception):
    """A setting that cannot be used: one line naming where it came from."""


class _Unset:
    """The default of every option while parsing: tells "not on the command line"."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def env_name(key: str) -> str:
    """The environment variable of option ``key``: ``max-associations`` ->
    ``DICOMSTORE_MAX_ASSOCIATIONS``."""
    return ENV_PREFIX + key.upper().replace("-", "_")


def options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The settable options of a (sub)command by key: each action's first long
    option without its ``--`` (``--help`` and ``--version`` are not settings)."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                found[option[2:]] = action
                break
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands' parsers of ``parser`` by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _unrecognized(extra: Sequence[str], sub: argparse.ArgumentParser) -> str:
    """argparse's 'unrecognized arguments', with the option a mistyped one may mean
    (review45 L15: 'serve --prot 1' showed the top-level usage)."""
    import difflib

    line = f"unrecognized arguments: {' '.join(extra)}"
    typed = next((a.split("=", 1)[0] for a in extra if a.startswith("--")), None)
    if typed is not None:
        options = list(sub._option_string_actions)
        # (a prefix of one option: that one; else a name close enough, not any
        # (review112 I4: --bogus, "did you mean --user?"))
        close = [o for o in options if o.startswith(typed)]
        if len(close) != 1:
            close = difflib.get_close_matches(typed, options, n=1, cutoff=0.7)
        if close:
            line += f" (did you mean {close[0]}?)"
    return line


def _unknown_option(tokens: Sequence[str], sub: argparse.ArgumentParser) -> str | None:
    """The first ``--name`` of ``tokens`` (before a ``--``) that names no option of
    ``sub``, or None."""
    for token in tokens:
        if token == "--":
            return None
        if token.startswith("--") and token.split("=", 1)[0] not in sub._option_string_actions:
            return token
    return None


def parse(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """Parse ``argv`` as ``parser.parse_args`` does, then fill what the command
    line left out from the environment and the file (module docstring).

    Raises :class:`SettingsError`; argparse's own errors exit as usual."""
    environ = os.environ if environ is None else environ
    commands = subcommands(parser)
    saved: list[tuple[argparse.Action, Any]] = []
    for sub in commands.values():
        for action in options_of(sub).values():
            if not _accumulates(action):  # (an append starts from None: None is "not given")
                saved.append((action, action.default))
                action.default = _UNSET
    tokens = list(sys.argv[1:] if argv is None else argv)
    if tokens and tokens[0] in commands:  # (an option unknown, said before argparse takes
        # its value for a positional: review113 I3, 'ls --stor /tmp/x': invalid level)
        sub = commands[tokens[0]]
        unknown = _unknown_option(tokens[1:], sub)
        if unknown is not None:
            sub.exit(
                2, f"{sub.prog}: error: {_unrecognized([unknown], sub)}; see {sub.prog} --help\n"
            )
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # (said by the command, with the option meant: not the whole usage)
            sub = commands[args.command]
            sub.exit(2, f"{sub.prog}: error: {_unrecognized(extra, sub)}; see {sub.prog} --help\n")
    finally:
        for action, default in saved:
            action.default = default
    sub = commands[args.command]
    options = options_of(sub)
    if args.command == CONFIGURED:
        keys: Sequence[str] = list(options)
    else:
        keys = [key for key in SHARED if key in options]
    unset = {key for key in keys if _is_unset(getattr(args, options[key].dest), options[key])}
    for key in sorted(unset):
        name = env_name(key)
        if name in environ:
            setattr(args, options[key].dest, _from_text(options[key], environ[name], name))
            unset.discard(key)
    if FILE_OPTION in options:
        path = getattr(args, options[FILE_OPTION].dest)
        if isinstance(path, Path):
            for key, value in _read_file(path, options).items():
                if key in unset:
                    setattr(args, options[key].dest, _from_file(options[key], value, path, key))
                    unset.discard(key)
    defaults = dict(saved)
    for action in options.values():  # what nobody set: the option's own default
        if getattr(args, action.dest, None) is _UNSET:
            default = defaults[action]
            if isinstance(default, str) and action.type is not None:
                default = _typed(action, default, f"the default of --{action.dest}")
            setattr(args, action.dest, default)
    return args


def _repeatable(action: argparse.Action) -> bool:
    return isinstance(action, argparse._AppendAction)


def _accumulates(action: argparse.Action) -> bool:
    """Options that build on their default (append, count): never given a sentinel."""
    return isinstance(action, argparse._AppendAction | argparse._CountAction)


def _is_unset(value: Any, action: argparse.Action) -> bool:
    if isinstance(action, argparse._CountAction):
        return False  # (-v: the command line only)
    return value is None if _repeatable(action) else value is _UNSET


def warn_unknown_variables(
    parser: argparse.ArgumentParser, command: str, environ: Mapping[str, str] | None = None
) -> None:
    """One warning per ``DICOMSTORE_*`` variable that names no option of ``serve``
    (a typo is not silently ignored; the environment is shared, so not an error)."""
    if command != CONFIGURED:
        return
    environ = os.environ if environ is None else environ
    known = {env_name(key) for key in options_of(subcommands(parser)[command])} | NOT_OPTIONS
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            import difflib  # (a typo only: lazily)

            size = len(ENV_PREFIX)  # (compared without it: every name shares it)
            names = sorted(k[size:] for k in known if k.startswith(ENV_PREFIX))
            close = difflib.get_close_matches(name[size:], names, n=1)
            hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
            log.warning("%s is set but names no option of dicomstore serve: ignored%s", name, hint)


def _read_file(path: Path, options: Mapping[str, argparse.Action]) -> dict[str, Any]:
    import tomllib  # (a file given only: lazily)

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not TOML: {exc}") from None
    for key, value in data.items():
        if isinstance(value, dict):
            raise SettingsError(f"{path}: [{key}]: no sections; write each option as key = value")
        if key == FILE_OPTION:
            raise SettingsError(f"{path}: {key} names this file: it cannot be set in it")
        if key not in options:
            hint = ""
            if key.replace("_", "-") in options:
                hint = f" (did you mean {key.replace('_', '-')}?)"
            raise SettingsError(f"{path}: unknown key {key!r}{hint}: see dicomstore serve --help")
    return data


def _from_text(action: argparse.Action, raw: str, where: str) -> Any:
    """An environment variable's value for ``action``."""
    where = f"{where}={raw!r}"
    if action.nargs == 0:
        text = raw.strip().lower()
        if text not in _TRUE | _FALSE:
            raise SettingsError(f"{where}: not a yes/no value (1/true/yes/on, 0/false/no/off)")
        return _flag(action, text in _TRUE)
    if _repeatable(action):
        return [_typed(action, part.strip(), where) for part in raw.split(",") if part.strip()]
    return _typed(action, raw, where)


def _from_file(action: argparse.Action, value: Any, path: Path, key: str) -> Any:
    """A TOML value for ``action``; paths relative to the file's folder."""
    where = f"{path}: {key}"
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise SettingsError(f"{where}: a flag takes true or false, not {value!r}")
        return _flag(action, value)
    if _repeatable(action):
        values = value if isinstance(value, list) else [value]
        typed = [_typed(action, _scalar(v, where), where) for v in values]
    else:
        typed = _typed(action, _scalar(value, where), where)
    if action.type is Path:
        if isinstance(typed, list):
            return [p if p.is_absolute() else path.parent / p for p in typed]
        return typed if typed.is_absolute() else path.parent / typed
    return typed


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SettingsError(f"{where}: expected a string or a number, not {value!r}")
    return str(value)


def _flag(action: argparse.Action, on: bool) -> Any:
    if isinstance(action, argparse.BooleanOptionalAction):
        return on
    return action.const if on else not action.const


def _typed(action: argparse.Action, text: str, where: str) -> Any:
    """``text`` through the option's own type and choices (its one definition)."""
    convert = action.type if callable(action.type) else str
    try:
        value = convert(text)
    except argparse.ArgumentTypeError as exc:
        raise SettingsError(f"{where}: {exc}") from None
    except (TypeError, ValueError):
        name = getattr(convert, "__name__", "")
        raise SettingsError(f"{where}: invalid {name} value: {text!r}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise SettingsError(f"{where}: must be one of {choices}")
    return value
