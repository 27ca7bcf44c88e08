"""The streaming writer of one received instance (DESIGN.md "The path of one C-STORE").

:meth:`Ingest.__init__` (called by ``Archive.begin``) creates a temporary file
in ``<root>/.tmp`` and writes the preamble, ``DICM`` and File Meta Information
at once; :meth:`Ingest.write` appends each data set fragment exactly as
received with one ``os.write`` (no copy, no buffer) and feeds the SHA-256 of
the data set; :meth:`Ingest.commit` reads the header back (up to the Pixel
Data), checks it against the command, fsyncs and hands the file to the archive,
which renames it into place and indexes it; :meth:`Ingest.abort` drops it.

Storage errors never raise from ``begin``/``write``: the first one is kept,
the temporary file removed at once (to give the space back) and ``commit``
answers A700. Misuse (``write`` after ``commit``) raises ``LocalProtocolError``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicomstore.archive import outcome as st
from dicomstore.archive.dicomfile import HeaderError, file_header, read_header
from dicomstore.archive.fields import index_fields
from dicomstore.archive.layout import normalize_uid, remove_quietly
from dicomstore.archive.outcome import StoreOutcome, failure
from dicomstore.errors import LocalProtocolError


@dataclass(frozen=True, slots=True)
class Staged:
    """A complete, checked, fsynced temporary file waiting to be published."""

    temp: Path
    row: dict[str, Any]  # index columns, all but "path"


Publish = Callable[[Staged], StoreOutcome]


def describe_os_error(exc: OSError, doing: str) -> str:
    """An Error Comment for an I/O failure (A700)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"out of resources: {os.strerror(exc.errno)} while {doing}"
    return f"out of resources: {exc.strerror or exc} while {doing}"


class Ingest:
    """One instance being received; created by ``Archive.begin``."""

    def __init__(
        self,
        tmp_dir: Path,
        publish: Publish,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str = "",
        called_ae: str = "",
        fsync: bool = True,
    ) -> None:
        self.sop_class_uid = normalize_uid(sop_class_uid)
        self.sop_instance_uid = normalize_uid(sop_instance_uid)
        self.transfer_syntax_uid = normalize_uid(transfer_syntax_uid)
        self.calling_ae = calling_ae.strip()
        self.called_ae = called_ae.strip()
        self._publish = publish
        self._fsync = fsync
        self._digest = hashlib.sha256()
        self._size = 0  # data set bytes
        self._error: str | None = None
        self._done = False
        self._fd = -1
        self.temp = tmp_dir / f"{uuid.uuid4().hex}.part"
        header = file_header(
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_instance_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            calling_ae=self.calling_ae,
            called_ae=self.called_ae,
        )
        self._header_size = len(header)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            self._fd = os.open(self.temp, flags, 0o644)
            self._write_all(header)
        except OSError as exc:
            self._fail(exc, "creating the file")

    @property
    def size(self) -> int:
        """Data set bytes received so far."""
        return self._size

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        written = os.write(self._fd, view)
        while written < len(view):  # short write: rare for regular files
            view = view[written:]
            written = os.write(self._fd, view)

    def _fail(self, exc: OSError, doing: str) -> None:
        self._error = describe_os_error(exc, doing)
        self._drop()

    def _drop(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1
        remove_quietly(self.temp)

    def write(self, fragment: bytes | bytearray | memoryview) -> None:
        """Append one data set fragment exactly as received."""
        if self._done:
            raise LocalProtocolError("write() after commit() or abort()")
        if self._error is not None:
            return  # already failed: commit() reports it
        view = memoryview(fragment).cast("B")
        try:
            self._write_all(view)
        except OSError as exc:
            self._fail(exc, "writing the data set")
            return
        self._digest.update(view)
        self._size += len(view)

    def abort(self) -> None:
        """Forget the instance: temporary file removed, nothing indexed. Idempotent."""
        if not self._done:
            self._done = True
            self._drop()

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    def commit(self) -> StoreOutcome:
        """Check, fsync and publish; the status to answer (PS3.4 B.2.3)."""
        if self._done:
            raise LocalProtocolError("commit() after commit() or abort()")
        self._done = True
        try:
            if self._error is not None:
                return failure(st.OUT_OF_RESOURCES, self._error)
            return self._commit()
        finally:
            self._drop()  # after a successful rename the temporary name is gone

    def _commit(self) -> StoreOutcome:
        size = self._header_size + self._size
        try:
            with open(self.temp, "rb") as fp:
                ds = read_header(fp, self._header_size, size, self.transfer_syntax_uid)
        except HeaderError as exc:
            tags = (exc.tag,) if exc.tag is not None else ()
            return failure(st.CANNOT_UNDERSTAND, f"cannot understand: {exc}", *tags)
        except OSError as exc:
            return failure(st.OUT_OF_RESOURCES, describe_os_error(exc, "reading the header"))
        row = index_fields(ds)
        mismatch = self._check_identity(row)
        if mismatch is not None:
            return mismatch
        try:
            if self._fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        except OSError as exc:
            return failure(st.OUT_OF_RESOURCES, describe_os_error(exc, "flushing the file"))
        row.update(
            transfer_syntax_uid=self.transfer_syntax_uid,
            file_size=size,
            digest=self._digest.hexdigest(),
            received_at=datetime.now(UTC).isoformat(timespec="microseconds"),
            calling_ae=self.calling_ae or None,
            called_ae=self.called_ae or None,
        )
        return self._publish(Staged(self.temp, row))

    def _check_identity(self, row: dict[str, Any]) -> StoreOutcome | None:
        """A900 when (0008,0016)/(0008,0018) are absent or differ from the command.

        Both are Type 1 in the SOP Common Module (PS3.3 C.12.1): a data set
        without them does not match any SOP Class, hence A900 too.
        """
        problems, tags = [], []
        for name, tag, ours, theirs in (
            ("SOP Class UID", st.SOP_CLASS_UID_TAG, row["sop_class_uid"], self.sop_class_uid),
            (
                "SOP Instance UID",
                st.SOP_INSTANCE_UID_TAG,
                row["sop_instance_uid"],
                self.sop_instance_uid,
            ),
        ):
            if ours is None:
                problems.append(f"{name} missing from the data set")
                tags.append(tag)
            elif ours != theirs:
                problems.append(f"{name} {ours!r} differs from the command's {theirs!r}")
                tags.append(tag)
        if not problems:
            return None
        return failure(st.DATASET_MISMATCH, "; ".join(problems), *tags)
