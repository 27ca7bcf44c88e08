"""Where files live under the archive root, and how they get there durably.

Layout (DESIGN.md "Archive layout")::

    <root>/index.sqlite                     the index (index.py)
    <root>/.tmp/                            temporaries, emptied at start-up
    <root>/<study>/<series>/<sop>.dcm       one PS3.10 file per instance

A UID is attacker-controlled input. It becomes a path component only when it
follows the UID grammar of PS3.5 9.1 (digits and dots, ≤ 64 characters); any
other value (``..``, separators, NUL, non-ASCII, too long, empty) is replaced
by ``x-`` and the first 32 hex digits of its SHA-256, which cannot collide
with a conformant UID. A Study or Series Instance UID absent from the data set
gives the folder ``no-study-uid`` / ``no-series-uid``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath

from dicomstore.uids import is_valid_uid

TMP_DIR = ".tmp"
INDEX_FILE = "index.sqlite"
SUFFIX = ".dcm"
NO_STUDY = "no-study-uid"
NO_SERIES = "no-series-uid"

# Second guard next to is_valid_uid: a full match on ASCII digits and dots only
# (a ``$`` in a pattern also matches before a trailing newline).
_SAFE = re.compile(r"[0-9.]{1,64}", re.ASCII)


def uid_bytes(value: str) -> bytes:
    """The bytes a UID string stands for (latin-1, pydicom's decoding of UI).

    Strings decoded with ``surrogateescape`` give back their raw bytes; characters
    outside latin-1 are taken as UTF-8.
    """
    try:
        return value.encode("latin-1", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def normalize_uid(value: str | bytes) -> str:
    """A UID as pydicom reads it: latin-1 text without its NUL/space padding."""
    raw = value if isinstance(value, bytes) else uid_bytes(value)
    return raw.rstrip(b"\0 ").decode("latin-1")


def safe_component(uid: str | None, missing: str) -> str:
    """``uid`` itself when it is a conformant UID, else a derived safe name."""
    if not uid:
        return missing
    if is_valid_uid(uid) and _SAFE.fullmatch(uid):
        return uid
    return "x-" + hashlib.sha256(uid_bytes(uid)).hexdigest()[:32]


def instance_relpath(study_uid: str | None, series_uid: str | None, sop_uid: str) -> PurePosixPath:
    """``<study>/<series>/<sop>.dcm`` with every component made safe."""
    return PurePosixPath(
        safe_component(study_uid, NO_STUDY),
        safe_component(series_uid, NO_SERIES),
        safe_component(sop_uid, "no-sop-instance-uid") + SUFFIX,
    )


def resolve(root: Path, relpath: str | PurePosixPath) -> Path:
    """The absolute path of an index path, refusing anything outside ``root``."""
    rel = PurePosixPath(relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"not a path inside the archive: {relpath!r}")
    return root.joinpath(*rel.parts)


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(root: Path, rel_dir: PurePosixPath, *, durable: bool) -> list[Path]:
    """Create the missing folders of ``rel_dir`` under ``root``; return those created.

    With ``durable`` the parent of each new folder is fsynced, so the new entry
    survives a power cut (the folder itself is fsynced by the rename that follows).
    """
    created: list[Path] = []
    current = root
    for part in rel_dir.parts:
        parent, current = current, current / part
        try:
            os.mkdir(current)
        except FileExistsError:
            continue
        created.append(current)
        if durable:
            fsync_dir(parent)
    return created


def remove_quietly(path: Path) -> None:
    """Unlink a file that may already be gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Best-effort removal of folders we created for a store that failed."""
    for folder in reversed(dirs):
        try:
            os.rmdir(folder)
        except OSError:
            break
