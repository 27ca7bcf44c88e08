"""Where files live under the archive root, and how they get there durably.

Layout (DESIGN.md "Archive layout")::

    <root>/index.sqlite                     the index (index.py)
    <root>/.tmp/                            temporaries, emptied at start-up
    <root>/<study>/<series>/<sop>.dcm       one PS3.10 file per instance
    <root>/<study>/<series>/<sop>.r.dcm     (or there: a replace alternates)

A UID is attacker-controlled input. It becomes a path component only when it
follows the UID grammar of PS3.5 9.1 (digits and dots, ≤ 64 characters); any
other value (``..``, separators, NUL, non-ASCII, too long, empty) is replaced
by ``x-`` and the first 32 hex digits of its SHA-256, which cannot collide
with a conformant UID. A Study or Series Instance UID absent from the data set
gives the folder ``no-study-uid`` / ``no-series-uid``.

Flushing: :func:`fsync_dir` for a folder's entries, :func:`syncfs` for the
whole file system (used for a batch of instances, see ``publish.py``), and
:func:`start_writeback` to let the fsyncs of a batch overlap.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote

from dicomstore.uids import is_valid_uid

TMP_DIR = ".tmp"
INDEX_FILE = "index.sqlite"
SUFFIX = ".dcm"
NO_STUDY = "no-study-uid"
NO_SERIES = "no-series-uid"
NO_SOP = "no-sop-instance-uid"

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
    """A UID as pydicom and DCMTK read it: latin-1 text without its NUL/space padding,
    nor leading spaces (review80 F4: ' 1.2' was another study than '1.2' for the
    index only)."""
    raw = value if isinstance(value, bytes) else uid_bytes(value)
    return raw.rstrip(b"\0 ").lstrip(b" ").decode("latin-1")


def safe_component(uid: str | None, missing: str) -> str:
    """``uid`` itself when it is a conformant UID, else a derived safe name."""
    if not uid:
        return missing
    if is_valid_uid(uid) and _SAFE.fullmatch(uid):
        return uid
    return "x-" + hashlib.sha256(uid_bytes(uid)).hexdigest()[:32]


def instance_relpath(study_uid: str | None, series_uid: str | None, sop_uid: str) -> PurePosixPath:
    """``<study>/<series>/<sop>.dcm`` with every component made safe."""
    return PurePosixPath(instance_relstr(study_uid, series_uid, sop_uid))


_safe_cached = functools.lru_cache(maxsize=1024)(safe_component)


def _folder(uid: str | None, missing: str) -> str:
    """:func:`safe_component` of a study or series, remembered (the same ones come
    instance after instance); long hostile values are not kept."""
    if uid is not None and len(uid) > 64:
        return safe_component(uid, missing)
    return _safe_cached(uid, missing)


def instance_relstr(study_uid: str | None, series_uid: str | None, sop_uid: str) -> str:
    """:func:`instance_relpath` as a string (the index's ``path``)."""
    study = _folder(study_uid, NO_STUDY)
    series = _folder(series_uid, NO_SERIES)
    return f"{study}/{series}/{safe_component(sop_uid, NO_SOP)}{SUFFIX}"


#: What a replace (``--on-duplicate replace``) puts before :data:`SUFFIX`: the new
#: version goes to the other of an instance's two places (:func:`other_place`), so
#: that the file its committed row names is never written over before a COMMIT.
REPLACED = ".r"


def other_place(relpath: str) -> str:
    """The place a replace of the instance at ``relpath`` puts its new version:
    ``<sop>.dcm`` and ``<sop>.r.dcm`` take turns (``publish.py``)."""
    alternate = REPLACED + SUFFIX
    if relpath.endswith(alternate):
        return relpath[: -len(alternate)] + SUFFIX
    return relpath[: -len(SUFFIX)] + alternate


def is_place(relpath: str, study_uid: str | None, series_uid: str | None, sop_uid: str) -> bool:
    """Whether ``relpath`` is where the archive files an instance of these UIDs:
    :func:`instance_relstr` or its :func:`other_place`."""
    place = instance_relstr(study_uid, series_uid, sop_uid)
    return relpath in (place, other_place(place))


#: The name :func:`safe_component` derives from a value that is not a UID.
_DERIVED = re.compile(r"x-[0-9a-f]{32}", re.ASCII)


def named_as_filed(relpath: str) -> bool:
    """Whether ``relpath`` has the shape of a place :func:`is_place` can accept:
    ``<study>/<series>/<sop>.dcm`` or ``<sop>.r.dcm``, each name one
    :func:`safe_component` gives (a UID, ``x-`` and 32 hex digits, or the name of a
    UID missing). Names only, no file read (start-up's look for stored instances,
    review59 M4: an export folder's or ``lost+found``'s file is not one)."""
    parts = relpath.split("/")
    if len(parts) != 3 or not parts[2].endswith(SUFFIX):
        return False
    sop = parts[2][: -len(SUFFIX)]
    sop = sop[: -len(REPLACED)] if sop.endswith(REPLACED) else sop
    return all(
        name == missing or _DERIVED.fullmatch(name) is not None or safe_component(name, "") == name
        for name, missing in ((parts[0], NO_STUDY), (parts[1], NO_SERIES), (sop, NO_SOP))
    )


def copy_name(row: Mapping[str, Any]) -> str:
    """The name of a stored instance's copy out of the archive (``export``, a ZIP):
    :func:`instance_relstr` of its row's UIDs, whichever of its places holds it."""
    return instance_relstr(row.get("study_uid"), row.get("series_uid"), row["sop_instance_uid"])


def resolve(root: Path, relpath: str | PurePosixPath) -> Path:
    """The absolute path of an index path, refusing anything outside ``root``."""
    rel = PurePosixPath(relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"not a path inside the archive: {relpath!r}")
    return root.joinpath(*rel.parts)


def open_folder(path: Path) -> int:
    """A read-only descriptor of the folder at ``path`` (to flock, fsync or syncfs
    through); close it when done."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (creations, renames, removals) durable."""
    fsync_file(path, os.O_DIRECTORY)


def folders_up_to(root: Path, path: Path) -> list[Path]:
    """The folders from ``path``'s own up to ``root`` (a batch committed before its
    flush may have made them all: a study's, a series')."""
    return [folder for folder in path.parents if folder == root or root in folder.parents]


def fsync_file(path: Path, flags: int = 0) -> None:
    """Make the data of the file at ``path`` durable (fsync through a new descriptor)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # the symbols already loaded, libc's among them (``find_library`` would run
        # ldconfig: ~9 ms at every start)
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _kernel() -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return tuple(int(n) for n in match.groups()) if match else (0, 0)


_LIBC = _libc()
_SYNCFS = getattr(_LIBC, "syncfs", None)
_SYNC_FILE_RANGE = getattr(_LIBC, "sync_file_range", None)
if _SYNC_FILE_RANGE is not None:
    _SYNC_FILE_RANGE.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2

#: True when :func:`syncfs` can stand for the fsyncs of many files: Linux reports
#: writeback errors through syncfs(2) only since 5.8 (before, it returned 0 even
#: when data was lost, so a flush could not be trusted).
SYNCFS_AVAILABLE = _SYNCFS is not None and _kernel() >= (5, 8)


def syncfs(fd: int) -> None:
    """Write and flush everything dirty on the file system holding ``fd`` (file data,
    folders, the journal): one cache flush for a whole batch. Raises ``OSError``,
    also for a writeback error since the last call with this ``fd``."""
    if _SYNCFS is None:
        raise OSError(38, "syncfs is not available")
    if _SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def start_writeback(fd: int) -> None:
    """Start writing ``fd``'s dirty pages without waiting (``sync_file_range``), so
    that the fsyncs of several files overlap; nothing is promised (best effort)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


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


def free_bytes(path: Path | str) -> int | None:
    """Bytes free for an unprivileged user on the file system of ``path`` (``statvfs``;
    ``None``: it cannot be told): the one reading of it (``reserve.py``, the store
    service's ``--min-free``, the metrics)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def remove_quietly(path: Path | str) -> None:
    """Unlink a file that may already be gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


#: The file :func:`probe_writable` makes and removes (a start removes a leftover).
PROBE = "writable.probe"


def probe_writable(folder: Path) -> None:
    """Create a file in ``folder``, write a byte, remove it: ``OSError`` (read-only,
    no space, no inode) when a store there would fail as it began (readiness)."""
    path = folder / PROBE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"\0")
    finally:
        os.close(fd)
        remove_quietly(path)


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Best-effort removal of folders we created for a store that failed."""
    for folder in reversed(dirs):
        try:
            os.rmdir(folder)
        except OSError:
            break


#: The suffix of a removal intent's name in ``.tmp`` (``removal.py``).
INTENT = ".rm"
_NAME_MAX = 255


def link_intent(root: Path, tmp: str, owner: str, relpath: str) -> str | None:
    """Give the file at ``relpath`` a removal intent in ``tmp`` (not yet durable:
    the caller flushes ``tmp``); its path, or ``None`` when it could not be made
    (no hard links, a name too long, the file gone): the caller goes on without.

    ``owner`` makes the name unique among the processes writing to ``tmp``.
    """
    name = f"{owner}={quote(relpath, safe='', errors='surrogateescape')}{INTENT}"
    if len(os.fsencode(name)) > _NAME_MAX:
        return None
    link = f"{tmp}/{name}"
    try:
        os.link(resolve(root, relpath), link)
    except (OSError, ValueError):
        return None
    return link


def intent_target(name: str) -> str | None:
    """The archive path a removal intent's name stands for (``None``: not one)."""
    if not name.endswith(INTENT) or "=" not in name:
        return None
    return unquote(name[: -len(INTENT)].partition("=")[2], errors="surrogateescape")


def dicom_files(root: Path) -> Iterator[Path]:
    """Every ``*.dcm`` file under ``root`` except the temporaries (in name order)."""
    for folder, dirs, files in os.walk(root):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if d != TMP_DIR]
        dirs.sort()
        for name in sorted(files):
            if name.endswith(SUFFIX):
                yield Path(folder, name)
