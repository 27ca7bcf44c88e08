"""The streaming writer of one received instance (DESIGN.md "The path of one C-STORE").

:meth:`Ingest.__init__` (called by ``Archive.begin``) has the archive's storage
create a temporary (``storage.WritableStorage.create``: a file in
``<root>/.tmp/node-*``) and makes the preamble, ``DICM`` and File Meta
Information (from a template: ``dicomfile.MetaTemplates``), written with the
first fragment (one ``os.writev``, no copy; an instance without a data set is
refused as empty, its header never written);
:meth:`Ingest.write` appends each data set fragment exactly as received with
one ``storage.write`` (for files one ``os.write``, no buffer), feeds the
digest of the data set (``digests``) and keeps a copy of its first ``scan.PREFIX_SIZE``
bytes; :meth:`Ingest.commit` reads the header (up to the
Pixel Data) from those bytes — or, when they do not settle it, from the file
with pydicom — and that its sequences nest no deeper than the one limit
(``nesting.py``), checks it against the command and hands the still open file to
the archive, which flushes it, renames it into place and indexes it, together
with whatever other commits are under way (``commit.GroupCommit``);
:meth:`Ingest.abort` drops it.

Storage errors never raise from ``begin``/``write``: the first one is kept,
the temporary file removed at once (to give the space back) and ``commit``
answers A700. Misuse (``write`` after ``commit``) raises ``LocalProtocolError``.
``commit`` may be called from any thread, by many threads at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomstore.archive import digests
from dicomstore.archive import outcome as st
from dicomstore.archive.commit import ArchiveClosedError, Staged
from dicomstore.archive.dicomfile import (
    DEFER_SIZE,
    HeaderError,
    MetaTemplates,
    encoding_of,
    read_header,
)
from dicomstore.archive.encoding import encoding_mismatch
from dicomstore.archive.fields import UNREAD, fields_of_elements, index_fields, received_now
from dicomstore.archive.filestorage import FileStorage
from dicomstore.archive.layout import normalize_uid
from dicomstore.archive.nesting import judged, scanned
from dicomstore.archive.outcome import StoreOutcome, describe_os_error, failure
from dicomstore.archive.padding import discard_trailing_padding, merge_warning
from dicomstore.archive.scan import PREFIX_SIZE
from dicomstore.archive.storage import WritableStorage
from dicomstore.errors import LocalProtocolError
from dicomstore.uids import uid_unaddressable

__all__ = ["Ingest", "Publish", "Staged", "describe_os_error"]

Publish = Callable[[Staged], StoreOutcome]
#: With ``fsync``, a large instance's bytes are handed to the disk every this many.
WRITEBACK_EVERY = 8 << 20
_TEMPLATES = MetaTemplates()  # for an Ingest made without an archive's templates


class Ingest:
    """One instance being received; created by ``Archive.begin``."""

    def __init__(
        self,
        tmp_dir: Path | str,
        publish: Publish,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str = "",
        called_ae: str = "",
        fsync: bool = True,
        name: str | None = None,
        templates: MetaTemplates | None = None,
        announce: tuple[Callable[[], None], Callable[[], None]] | None = None,
        tolerate_class_mismatch: bool = False,
        discard_trailing_padding: bool = False,
        storage: WritableStorage | None = None,
    ) -> None:
        self.tolerate_class_mismatch = tolerate_class_mismatch
        #: cut a top-level Data Set Trailing Padding off, answer B006 (``padding.py``)
        self.discard_trailing_padding = discard_trailing_padding
        self._warning: tuple[int, str, tuple[int, ...]] | None = None
        self.sop_class_uid = normalize_uid(sop_class_uid)
        self.sop_instance_uid = normalize_uid(sop_instance_uid)
        self.transfer_syntax_uid = normalize_uid(transfer_syntax_uid)
        self.calling_ae = calling_ae.strip()
        self.called_ae = called_ae.strip()
        self._publish = publish
        # (arriving, left): tell the group commit that a commit is on its way
        self._arriving: Callable[[], None] | None = None
        self._left: Callable[[], None] | None = None
        if announce is not None:
            self._arriving, self._left = announce
        self._digest = digests.new()
        self._size = 0  # data set bytes
        #: the size at which the bytes written so far are handed to the disk: every
        #: WRITEBACK_EVERY bytes when durable, so that the one flush at the end waits
        #: for the last few MiB only (``storage.writeback``)
        self._writeback_at = WRITEBACK_EVERY if fsync else 1 << 62
        self._prefix = bytearray()  # the first PREFIX_SIZE of them
        self._error: str | None = None
        self._done = False
        self._fd = -1
        #: where the temporary is created and written (``storage.py``)
        self._storage = storage if storage is not None else FileStorage(tmp_dir)
        self._temp = f"{tmp_dir}/{name or uuid.uuid4().hex + '.part'}"
        header = (templates or _TEMPLATES).header(
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_instance_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            calling_ae=self.calling_ae,
            called_ae=self.called_ae,
        )
        self._header_size = len(header)
        #: the preamble and File Meta Information, written with the first fragment
        #: (one system call for a small instance)
        self._header: bytes | None = header
        try:
            self._fd = self._storage.create(self._temp)
        except OSError as exc:
            self._fail(exc, "creating the file")

    @property
    def temp(self) -> Path:
        """The temporary file (complete up to the last fragment written)."""
        return Path(self._temp)

    @property
    def size(self) -> int:
        """Data set bytes received so far."""
        return self._size

    def _fail(self, exc: OSError, doing: str) -> None:
        self._error = describe_os_error(exc, doing)
        self._drop()

    def _drop(self) -> None:
        fd, self._fd = self._fd, -1
        self._storage.abort(fd, self._temp)

    def write(self, fragment: bytes | bytearray | memoryview) -> None:
        """Append one data set fragment exactly as received."""
        if self._done:
            raise LocalProtocolError("write() after commit() or abort()")
        if self._error is not None:
            return  # already failed: commit() reports it
        view = memoryview(fragment).cast("B")
        header = self._header
        try:
            if header is not None:  # (the first fragment: one writev with the header)
                self._header = None
                self._storage.write(self._fd, header, view)
            else:
                self._storage.write(self._fd, view)
        except OSError as exc:
            self._fail(exc, "writing the data set")
            return
        self._digest.update(view)
        self._size += len(view)
        if self._size >= self._writeback_at:  # (only when flushing: see __init__)
            self._writeback_at = self._size + WRITEBACK_EVERY
            self._storage.writeback(self._fd)
        room = PREFIX_SIZE - len(self._prefix)
        if room > 0:
            self._prefix += view[:room]

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
        """Check, then publish durably; the status to answer (PS3.4 B.2.3)."""
        if self._done:
            raise LocalProtocolError("commit() after commit() or abort()")
        self._done = True
        if self._error is not None:
            self._drop()
            return failure(st.OUT_OF_RESOURCES, self._error)
        if self._arriving is not None:
            self._arriving()  # a batch being formed may wait for this one
        try:
            staged = self._check()
        except BaseException:
            self._drop()
            if self._left is not None:
                self._left()
            raise
        if isinstance(staged, StoreOutcome):
            self._drop()
            if self._left is not None:
                self._left()
            return staged
        self._fd = -1  # the publisher owns the file now
        self._prefix = bytearray()
        try:
            return self._publish(staged)
        except ArchiveClosedError as exc:
            self._storage.abort(staged.fd, self._temp)
            return failure(st.OUT_OF_RESOURCES, str(exc))

    def _check(self) -> Staged | StoreOutcome:
        """The index row of a data set that passes the checks, or the failure.

        The encoding check (``encoding.py``) is skipped only where it could not
        refuse: an Explicit VR Little Endian data set whose header the scan read
        whole (every element header a known VR, each value ending where the next
        header starts, up to the Pixel Data or the end) is encoded as its context
        says; the check would read the same first headers the same way."""
        encoding = implicit, _, _ = encoding_of(self.transfer_syntax_uid)
        scan = elements, _ = scanned(self._prefix, self._size, encoding)
        if elements is None or implicit:
            wrong = encoding_mismatch(
                self._prefix, self._size, self.transfer_syntax_uid, self.sop_instance_uid
            )
            if wrong is not None:  # the stored meta would lie about it (encoding.py)
                return failure(st.CANNOT_UNDERSTAND, wrong)
        try:  # (nesting.py: big or undefined-length elements only, where the scan read)
            head = self._prefix
            refused = judged(self._temp, self._header_size, self._size, encoding, head, scan)
        except OSError as exc:
            return failure(st.OUT_OF_RESOURCES, describe_os_error(exc, "reading the data set"))
        if refused is not None:  # too deep, readers disagree, or after the Pixel Data
            tags = (refused.tag,) if refused.tag is not None else ()
            return failure(st.CANNOT_UNDERSTAND, str(refused), *tags)
        if elements is not None:
            row = fields_of_elements(elements, implicit)
        else:
            size = self._header_size + self._size
            try:
                with open(self._temp, "rb") as fp:
                    ds = read_header(fp, self._header_size, size, self.transfer_syntax_uid)
            except HeaderError as exc:
                tags = (exc.tag,) if exc.tag is not None else ()
                return failure(st.CANNOT_UNDERSTAND, str(exc), *tags)
            except OSError as exc:
                return failure(st.OUT_OF_RESOURCES, describe_os_error(exc, "reading the header"))
            row = index_fields(ds)
        mismatch = self._check_identity(row)
        if mismatch is not None:
            return mismatch
        row["transfer_syntax_uid"] = self.transfer_syntax_uid
        row["file_size"] = self._header_size + self._size
        row["digest"] = digests.text(self._digest)
        row["received_at"] = received_now()
        row["calling_ae"] = self.calling_ae or None
        row["called_ae"] = self.called_ae or None
        if self.discard_trailing_padding:  # policy "discard" (padding.py): B006
            try:
                cut = discard_trailing_padding(
                    self._fd,
                    self._temp,
                    self._header_size,
                    self._header_size + self._size,
                    self.transfer_syntax_uid,
                )
            except OSError as exc:
                return failure(st.OUT_OF_RESOURCES, describe_os_error(exc, "discarding padding"))
            if cut is not None:  # the row describes the stored bytes
                row["file_size"], row["digest"] = cut.file_size, cut.digest
                self._warning = merge_warning(self._warning, cut)
        staged = Staged(self._temp, self._fd, row)
        staged.warning = self._warning
        return staged

    def _check_identity(self, row: dict[str, Any]) -> StoreOutcome | None:
        """A900 when the data set lacks its identity or contradicts the command.

        (0008,0016)/(0008,0018) are Type 1 in the SOP Common Module (PS3.3 C.12.1)
        and must equal those it was sent as (the command's; a file's meta);
        (0020,000D) and (0020,000E) are Type 1 in the General Study and General
        Series Modules: an instance carries at least the Patient, Study and Series
        IEs (PS3.4 B.1.1), and one without them cannot be filed under a study
        (PS3.4 B.2.3: Data Set does not match SOP Class). Missing and empty are the
        same here.
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
            ("Study Instance UID", st.STUDY_INSTANCE_UID_TAG, row["study_uid"], None),
            ("Series Instance UID", st.SERIES_INSTANCE_UID_TAG, row["series_uid"], None),
        ):
            if ours is None:
                problems.append(f"{name} missing from the data set")
                tags.append(tag)
            elif ours is UNREAD:
                problems.append(f"{name} longer than {DEFER_SIZE} bytes: not a UID (PS3.5 9.1)")
                tags.append(tag)
            elif theirs is not None and ours != theirs:
                # (the command's, or over STOW-RS and imports the file meta's: review80 F8)
                problems.append(f"{name} {ours!r} differs from the {theirs!r} it was sent as")
                tags.append(tag)
            elif tag != st.SOP_CLASS_UID_TAG and (held := uid_unaddressable(ours)):
                problems.append(f"{name} {ours!r} holds {held!r}: not a UID (PS3.5 9.1)")
                tags.append(tag)
        for name, tag, key in (
            ("Patient ID", st.PATIENT_ID_TAG, "patient_id"),
            ("Issuer of Patient ID", st.ISSUER_OF_PATIENT_ID_TAG, "issuer"),
        ):
            if row.get(key) is UNREAD:  # (two such would be one patient: review98 R4)
                problems.append(f"{name} longer than {DEFER_SIZE} bytes (LO: 64 characters)")
                tags.append(tag)
        if not problems:
            return None
        if self.tolerate_class_mismatch and tags == [st.SOP_CLASS_UID_TAG] and row["sop_class_uid"]:
            # policy "tolerate": stored as sent, answered B007 (PS3.4 B.2.3)
            self._warning = (
                st.WARNING_DATASET_MISMATCH,
                f"stored as sent, but {problems[0]}",
                (st.SOP_CLASS_UID_TAG,),
            )
            return None
        return failure(st.DATASET_MISMATCH, "; ".join(problems), *tags)
