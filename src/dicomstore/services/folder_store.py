"""A folder of PS3.10 files as a store handler (``dicomstore get -od DIR``).

Each instance becomes ``DIR/<SOP Instance UID>.dcm`` (a UID of other characters
than digits and dots as the archive names it: ``x-`` and a digest, so two never
share a file and none climbs out or hides: review38scu #14): the File Meta Information the archive
writes (PS3.10 7.1: the command's SOP Class and Instance, the context's transfer
syntax, the AE titles), then the data set as received, fragment by fragment (never
held whole); written into a new file of a random ``.part`` name (created, never
opened through a link someone else left there: review38scu #2), flushed, then
renamed, so a file of that name is always complete. An instance received again
replaces the file. No index, no checks: an archive (``--storage``) has those.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO

from dicomstore import status as st
from dicomstore.archive.dicomfile import file_header
from dicomstore.archive.layout import normalize_uid, safe_component

_DIGITS = re.compile(r"[0-9][0-9.]{0,63}", re.ASCII)


class FolderSink:
    """One instance on its way into its file."""

    def __init__(self, path: Path, header: bytes, fsync: bool) -> None:
        self.path = path
        self.part = path.with_name(f".{path.name}.{secrets.token_hex(8)}.part")
        self.fsync = fsync
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.file: BinaryIO = os.fdopen(os.open(self.part, flags, 0o666), "wb")
        self.file.write(header)

    def write(self, fragment: bytes | bytearray | memoryview) -> None:
        self.file.write(fragment)

    def commit(self) -> int:
        self.file.flush()
        if self.fsync:
            os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.part, self.path)
        return st.SUCCESS

    def abort(self) -> None:
        self.file.close()
        self.part.unlink(missing_ok=True)


class FolderStore:
    """A :class:`~dicomstore.handler.StoreHandler` writing into ``root`` (created)."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def begin(
        self,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str = "",
        called_ae: str = "",
    ) -> FolderSink:
        uid = normalize_uid(sop_instance_uid)
        # digits and dots keep their name, leading zeros too (common, if not conformant:
        # review39 #14); anything else is named as the archive names it
        name = uid if _DIGITS.fullmatch(uid) else safe_component(uid, "unnamed")
        header = file_header(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_ae=calling_ae,
            called_ae=called_ae,
        )
        return FolderSink(self.root / f"{name}.dcm", header, self.fsync)
