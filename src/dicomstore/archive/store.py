"""The archive: the "medium" of PS3.4 B.1.2 — PS3.10 files under a root, plus an index.

``Archive`` satisfies :class:`~dicomstore.archive.handler.StoreHandler`. Publishing
a checked instance (:meth:`Archive._publish`) is the commit point::

    BEGIN IMMEDIATE            index write lock (fails after ``lock_timeout`` → A700)
    look up the SOP Instance   duplicate policy decides
    upsert the index rows      (not yet committed)
    mkdir, rename into place   fsync of each new folder's parent and of the folder
    COMMIT                     the response may now say Success

Flushes per stored instance: fsync of the file, of the series folder, and of
the parent of each folder created for it, plus SQLite's one WAL fsync at COMMIT
(``synchronous=FULL``): 3 in the steady state, 5 for a new study. No group
commit yet: each instance has its own transaction.

If the COMMIT fails the rename is undone. A crash between rename and COMMIT
leaves a file that :meth:`Archive.check` reports and :meth:`Archive.reindex`
adopts; a crash before the rename leaves only a temporary, removed at start-up.

Duplicate SOP Instance UID (``on_duplicate``), checked under the lock, so two
threads storing the same instance get one file, one row and consistent answers:

``"keep"`` (default)
    The stored instance stays. Identical data set bytes (same SHA-256): 0000, the
    instance is stored exactly as sent (PS3.4 B.2.2). Different bytes: B000
    Coercion of Data Elements — the stored instance differs from what was sent
    and the SCU is told so; 0000 would claim the new bytes were stored.
``"replace"``
    The new file and row replace the old ones atomically (rename over it, old
    file kept as a hard link in .tmp until COMMIT); 0000.
``"reject"``
    C111 (Failure, Cannot understand range): see ``outcome.DUPLICATE_REJECTED``
    for why not 0111 or A900.

One ``Archive`` per root and process: start-up empties ``.tmp``.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from dicomstore.archive import layout
from dicomstore.archive import outcome as st
from dicomstore.archive.index import Index
from dicomstore.archive.ingest import Ingest, Staged, describe_os_error
from dicomstore.archive.maintenance import check_archive, reindex_archive
from dicomstore.archive.outcome import StoreOutcome, failure

DuplicatePolicy = Literal["keep", "replace", "reject"]
POLICIES: tuple[str, ...] = ("keep", "replace", "reject")


class Archive:
    """Files under ``root`` and the index at ``root/index.sqlite``.

    ``fsync=False`` trades durability for speed (tests, scratch archives): no
    fsync of files or folders and SQLite ``synchronous=NORMAL``. ``lock_timeout``
    bounds the wait for the index write lock before answering A700.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        fsync: bool = True,
        on_duplicate: DuplicatePolicy = "keep",
        lock_timeout: float = 5.0,
    ) -> None:
        if on_duplicate not in POLICIES:
            raise ValueError(f"on_duplicate must be one of {POLICIES}, not {on_duplicate!r}")
        self.root = Path(root).resolve()
        self.fsync = fsync
        self.on_duplicate = on_duplicate
        self.tmp_dir = self.root / layout.TMP_DIR
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._clean_tmp()
        self.index = Index(self.root / layout.INDEX_FILE, durable=fsync, timeout=lock_timeout)

    def _clean_tmp(self) -> None:
        """Remove the temporaries a crash left behind (never complete instances)."""
        for entry in os.scandir(self.tmp_dir):
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                layout.remove_quietly(Path(entry.path))

    def close(self) -> None:
        """Close the index writer connection."""
        self.index.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- StoreHandler ---------------------------------------------------------------

    def begin(
        self,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str = "",
        called_ae: str = "",
    ) -> Ingest:
        """Start receiving one instance: the temporary file and its meta are written now."""
        return Ingest(
            self.tmp_dir,
            self._publish,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_ae=calling_ae,
            called_ae=called_ae,
            fsync=self.fsync,
        )

    def _publish(self, staged: Staged) -> StoreOutcome:
        """Apply the duplicate policy, rename into place, commit the index row."""
        row = staged.row
        rel = layout.instance_relpath(row["study_uid"], row["series_uid"], row["sop_instance_uid"])
        final = layout.resolve(self.root, rel)
        with self.index.lock:
            try:
                self.index.begin()
            except sqlite3.Error as exc:
                return failure(st.OUT_OF_RESOURCES, f"out of resources: index unavailable: {exc}")
            try:
                existing = self.index.find(row["sop_instance_uid"])
                if existing is not None and self.on_duplicate != "replace":
                    self.index.rollback()
                    return self._duplicate(existing, row)
                self.index.put({**row, "path": rel.as_posix()})
                if existing is not None and existing["path"] != rel.as_posix():
                    self.index.prune(
                        existing["series_uid"], existing["study_uid"], existing["patient_id"]
                    )
                instance = self.index.find(row["sop_instance_uid"])
                self._place(staged.temp, final, rel)
            except sqlite3.Error as exc:
                self.index.rollback()
                return failure(st.OUT_OF_RESOURCES, f"out of resources: index error: {exc}")
            except OSError as exc:
                self.index.rollback()
                return failure(st.OUT_OF_RESOURCES, describe_os_error(exc, "storing the file"))
        if existing is not None and existing["path"] != rel.as_posix():
            self._remove_file(existing["path"])
        return StoreOutcome(st.SUCCESS, path=final, instance=instance)

    def _place(self, temp: Path, final: Path, rel: PurePosixPath) -> None:
        """Rename ``temp`` to ``final`` and commit the index; undo the rename on failure."""
        created = layout.make_dirs(self.root, rel.parent, durable=self.fsync)
        backup: Path | None = None
        try:
            if final.exists():  # replace, or a file a crash left unindexed
                backup = self.tmp_dir / f"{uuid.uuid4().hex}.bak"
                os.link(final, backup)
            os.rename(temp, final)
        except OSError:
            if backup is not None:
                layout.remove_quietly(backup)
            layout.remove_empty_dirs(created)
            raise
        try:
            if self.fsync:
                layout.fsync_dir(final.parent)
            self.index.commit()
        except (OSError, sqlite3.Error):
            if backup is not None:
                os.replace(backup, final)
            else:
                layout.remove_quietly(final)
                layout.remove_empty_dirs(created)
            if self.fsync:
                layout.fsync_dir(final.parent)
            raise
        if backup is not None:
            layout.remove_quietly(backup)

    def _duplicate(self, existing: dict[str, Any], row: dict[str, Any]) -> StoreOutcome:
        """The outcome for a duplicate under policy keep/reject (nothing changes)."""
        uid = row["sop_instance_uid"]
        path = layout.resolve(self.root, existing["path"])
        if self.on_duplicate == "reject":
            return failure(
                st.DUPLICATE_REJECTED,
                f"duplicate SOP Instance {uid} refused: already stored",
                st.SOP_INSTANCE_UID_TAG,
            )
        if existing["digest"] == row["digest"]:
            return StoreOutcome(st.SUCCESS, path=path, instance=existing)
        return StoreOutcome(
            st.WARNING_COERCION,
            "duplicate SOP Instance: the stored copy was kept, the received one differs",
            None,
            path,
            existing,
        )

    def _remove_file(self, relpath: str) -> None:
        """Remove a file the index no longer points to (after a replace moved it)."""
        try:
            path = layout.resolve(self.root, relpath)
            os.unlink(path)
            if self.fsync:
                layout.fsync_dir(path.parent)
        except (OSError, ValueError):
            pass  # check() reports it as unindexed

    # -- reading ----------------------------------------------------------------------

    def instances(self, **filters: Any) -> list[dict[str, Any]]:
        """Index rows matching ``column=value`` filters (see ``index.ROW_COLUMNS``)."""
        for key, value in filters.items():
            if key.endswith("_uid") and isinstance(value, str):
                filters[key] = layout.normalize_uid(value)
        return self.index.query(filters)

    def get_instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The index row of one instance, or ``None`` if it is not stored."""
        rows = self.index.query({"sop_instance_uid": layout.normalize_uid(sop_instance_uid)})
        return rows[0] if rows else None

    def path_of(self, sop_instance_uid: str) -> Path | None:
        """The file of one instance, or ``None`` if it is not stored."""
        row = self.get_instance(sop_instance_uid)
        return None if row is None else layout.resolve(self.root, row["path"])

    # -- maintenance ------------------------------------------------------------------

    def check(self) -> list[str]:
        """Problems found: missing, resized or altered files; files not indexed."""
        return check_archive(self.root, self.index)

    def reindex(self) -> int:
        """Rebuild the index from the files on disk; the number of instances indexed."""
        return reindex_archive(self.root, self.index)
