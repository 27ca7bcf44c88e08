"""Read-only access to an archive: the "access method" of PS3.4 B.1.2 Note 1.

:class:`ArchiveReader` opens the index read-only (every call its own
connection: SQLite ``mode=ro``, WAL lets it read while a server writes; or a
read-only PostgreSQL session, see ``engine.py``) and the stored instances
by the keys the index gives (its ``path`` column), through the archive's
:class:`~dicomstore.archive.storage.Storage` (the local file system unless
another is given): the one way the services, HTTP and the CLI read an
instance. It never writes, never empties ``.tmp`` (unlike
:class:`~dicomstore.archive.Archive`), so any number of readers may run next to
the one server that owns the archive.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Collection, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from dicomstore.archive import layout
from dicomstore.archive import query as q
from dicomstore.archive.checked import CheckedOnce, CheckedStream
from dicomstore.archive.dicomfile import encoding_of
from dicomstore.archive.engine import (
    Connection,
    DatabaseError,
    DatabaseOrOSError,
    Engine,
    engine_for,
    size_sum,
)
from dicomstore.archive.filestorage import FileStorage
from dicomstore.archive.index import FILING, PATHS, every, unflushed_keys
from dicomstore.archive.rebuild import rebuilt_uids
from dicomstore.archive.schema import SAME_TABLES, SCHEMA_VERSION, SchemaError
from dicomstore.archive.storage import Storage
from dicomstore.inflation import DEFAULT_MAX_INFLATED

if TYPE_CHECKING:  # (pydicom, tens of MiB, loads when a data set is read: not to serve)
    from pydicom.dataset import Dataset

_SUM = size_sum("file_size")


class ArchiveNotFoundError(FileNotFoundError):
    """There is no archive (no index) at the given root."""


#: Why an archive's index cannot be read: made by another version, missing, damaged,
#: unreachable (``ArchiveNotFoundError`` is an ``OSError``).
UNREADABLE: tuple[type[Exception], ...] = (SchemaError, *DatabaseOrOSError)


class NotStoredError(LookupError):
    """No study, series or instance with this UID is in the archive."""


class ArchiveReader:
    """Query and read the archive at ``root`` without changing anything.

    Filters are DICOM keywords (or tags) with PS3.4 C.2.2.2 matching, see
    :mod:`dicomstore.archive.query`::

        reader = ArchiveReader("dicomstore-data")
        for study in reader.studies(PatientName="DOE^*", StudyDate="20240101-20241231"):
            print(study["study_uid"], study["modalities"], study["n_instances"])
    """

    def __init__(
        self,
        root: Path | str,
        *,
        index: str | Engine | None = None,
        timeout: float = 5.0,
        storage: Storage | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        #: where the instances' bytes are (``storage.py``): the files under ``root``
        self.storage: Storage = FileStorage(self.root) if storage is None else storage
        #: the index: ``None`` for the SQLite file in the root, or a ``postgresql://`` URL
        self.index = index
        self.engine = engine_for(self.root, index)
        self.timeout = timeout
        self._checked_once = CheckedOnce()
        if not self.engine.exists():
            raise ArchiveNotFoundError(self._not_found(index))
        with self._db() as db:
            version = self.engine.version(db)
        if version > SCHEMA_VERSION:  # (review50 #12: 'run reindex', which refuses it)
            raise SchemaError(
                f"{self.engine.where}: index schema {version} is newer than this"
                f" dicomstore's ({SCHEMA_VERSION}): use the dicomstore that made it"
            )
        if version == 0:  # (an index with no tables, zero bytes: review115 F4)
            from dicomstore.archive.startup import lost_index

            said = f"{self.engine.where}: the index is empty (no tables)"
            raise ArchiveNotFoundError(lost_index(self.root, said, index is not None))
        if version != SCHEMA_VERSION and version not in SAME_TABLES:
            raise SchemaError(
                f"{self.engine.where}: index schema {version}, this dicomstore reads"
                f" {SCHEMA_VERSION}: run `dicomstore reindex` (or start `dicomstore serve` once)"
            )
        if storage is None:  # (its own: see make_durable)
            own = self.storage
            assert isinstance(own, FileStorage)
            try:
                own.watch_errors()
            except OSError:
                pass  # (then make_durable's flush opens its own descriptor)
            self._finalizer: weakref.finalize[Any, Any] | None = weakref.finalize(self, own.close)
        else:
            self._finalizer = None
        self._own_engine = not isinstance(index, Engine)

    def close(self) -> None:
        """Let go of what the reader holds (its storage's descriptor, the index's kept
        readers) now, not when it is collected (review120 F11); it may not be used
        after. Also ``with open_archive(...) as reader:``."""
        if self._finalizer is not None:
            self._finalizer()
        if self._own_engine:  # (one given is its giver's: an Archive's)
            self.engine.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _not_found(self, index: str | Engine | None) -> str:
        """Why there is no archive to read: no index (``startup.lost_index``)."""
        from dicomstore.archive.startup import lost_index

        said = (
            f"no archive at {self.root} (no {layout.INDEX_FILE})"
            if index is None
            else f"no archive index at {self.engine.where}"
        )
        return lost_index(self.root, said, index is not None)

    def connect(self) -> Connection:
        """A new read-only connection to the index (close it when done)."""
        return self.engine.reader(self.timeout)  # type: ignore[no-any-return]

    def rebuilt(self) -> set[str]:
        """The SOP Instance UIDs of the instances a rebuild of the index from the files
        made (``rebuild.py``): no arrivals."""
        with self._db() as db:
            return rebuilt_uids(self.engine, db)

    @contextmanager
    def _db(self) -> Iterator[Connection]:
        with closing(self.connect()) as db:
            yield db

    def paths(self) -> Iterator[tuple[str, str, int, str, str]]:
        """(sop_instance_uid, path, file_size, digest, transfer_syntax_uid) of every
        instance, as
        ``Index.paths`` (``check`` through a reader: ``maintenance.run_check``)."""
        return every(self.connect, PATHS)

    def filing(self) -> Iterator[tuple[str, str, str, str]]:
        """(sop_instance_uid, path, study_uid, series_uid) of every instance, as
        ``Index.filing``."""
        return every(self.connect, FILING)

    # -- queries ----------------------------------------------------------------------

    def search(
        self,
        level: str,
        filters: q.Filters | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        sample: bool = False,
        computed: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of ``level`` (patient, study, series, instance) matching ``filters``
        (``sample``: each with ``sample_path``, one instance's file; ``computed``: the
        counts and lists made, by row key, default all: ``q.iter_search``)."""
        with self._db() as db:
            return q.search(
                db, level, filters, limit=limit, offset=offset, sample=sample, computed=computed
            )

    def count(self, level: str, filters: q.Filters | None = None) -> int:
        """How many entities of ``level`` match."""
        with self._db() as db:
            return q.count(db, level, filters)

    def patients(
        self, *, limit: int | None = None, offset: int = 0, **filters: Any
    ) -> list[dict[str, Any]]:
        """Patients, with ``n_studies``, ``n_series``, ``n_instances`` and ``size``."""
        return self.search("patient", filters, limit=limit, offset=offset)

    def studies(
        self, *, limit: int | None = None, offset: int = 0, **filters: Any
    ) -> list[dict[str, Any]]:
        """Studies, with their patient, counts, ``modalities`` and ``sop_classes``."""
        return self.search("study", filters, limit=limit, offset=offset)

    def series(
        self, *, limit: int | None = None, offset: int = 0, **filters: Any
    ) -> list[dict[str, Any]]:
        """Series, with their study and patient, ``n_instances`` and ``size``."""
        return self.search("series", filters, limit=limit, offset=offset)

    def instances(
        self, *, limit: int | None = None, offset: int = 0, **filters: Any
    ) -> list[dict[str, Any]]:
        """Instances: every index column (file path, size, digest, sender ...)."""
        return self.search("instance", filters, limit=limit, offset=offset)

    def iter_instances(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Instance rows one by one, without holding them all in memory."""
        with self._db() as db:
            yield from q.iter_search(db, "instance", filters)

    def locate(self, uid: str) -> tuple[str, dict[str, Any]]:
        """``(level, row)`` of the study, series or instance with this UID."""
        uid = layout.normalize_uid(uid.strip())
        with self._db() as db:
            for level, keyword in (
                ("study", "StudyInstanceUID"),
                ("series", "SeriesInstanceUID"),
                ("instance", "SOPInstanceUID"),
            ):
                rows = q.search(db, level, {keyword: uid}, limit=1)
                if rows:
                    return level, rows[0]
        raise NotStoredError(f"{uid} is not a study, series or instance in the archive")

    def indexed(self, sop_instance_uid: str, path: str) -> bool:
        """The instance is in the index now, filed at ``path`` (not deleted since, nor
        replaced by a copy filed elsewhere)."""
        row = self._now(sop_instance_uid)
        return row is not None and row["path"] == path

    def follow(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        """The row of ``row``'s instance now, when the index files it at another key:
        replaced since ``row`` was read (a replace puts the new version at another
        key and removes the file at the old one: ``publish.py``), so a reader that
        found no file at ``row``'s key reads the new version (review51 #1); None
        when it is deleted, or still at that key."""
        now = self._now(row["sop_instance_uid"])
        return now if now is not None and now["path"] != row["path"] else None

    def instance(self, sop_instance_uid: str) -> dict[str, Any]:
        """The row of one instance."""
        row = self._now(sop_instance_uid)
        if row is None:
            uid = layout.normalize_uid(sop_instance_uid.strip())
            raise NotStoredError(f"instance {uid} is not in the archive")
        return row

    def _now(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The row of one instance as the index has it now (None: not stored)."""
        uid = layout.normalize_uid(sop_instance_uid.strip())
        rows = self.search("instance", {"SOPInstanceUID": uid}, limit=1)
        return rows[0] if rows else None

    def instance_rows(
        self, sop_instance_uids: list[str], chunk: int = 2000, conflicts: Conflicts | None = None
    ) -> dict[str, Any]:
        """The rows of those of these instances the index holds, by SOP Instance UID:
        one connection, a query per ``chunk`` of them (a connection and a query per
        instance took 20 s for 65,535: review49 #1); into ``conflicts``, read in the
        same connection, those another data set was last sent under (``schema.CONFLICTS``)."""
        uids = list(dict.fromkeys(layout.normalize_uid(u.strip()) for u in sop_instance_uids))
        found: dict[str, Any] = {}
        with self._db() as db:
            for at in range(0, len(uids), chunk):
                some = uids[at : at + chunk]  # (no list separator, nor a lone *: not UIDs)
                wanted = "\\".join(u for u in some if u and "\\" not in u and u != "*")
                if wanted:
                    rows = q.search(db, "instance", {"SOPInstanceUID": wanted})
                    found.update((row["sop_instance_uid"], row) for row in rows)
            if conflicts is not None and found:
                conflicts.update(_conflicts(db, list(found)))
        return found

    def make_durable(self, sop_instance_uids: list[str]) -> None:
        """Before saying these instances are stored: flush the files of any that may
        be committed before their flush (``publish.py``: listed ``unflushed``), and
        the index unless that one flush covered it; ``OSError`` when that failed.
        The syncfs goes through a descriptor opened with the reader
        (``FileStorage.watch_errors``), so it reports a write-back error that the
        writing node saw first (and for which it withdraws that very file)."""
        if not sop_instance_uids:
            return
        with self._db() as db:
            if "unflushed" not in self.engine.table_names(db):
                return  # (an index made by an older dicomstore: flushed before its COMMITs)
            keys = unflushed_keys(db, sop_instance_uids)
        if keys:
            flush_keys = getattr(self.storage, "flush_keys", None)
            if flush_keys is None:  # (a storage that cannot flush: no durability to claim)
                raise OSError(f"{type(self.storage).__name__} cannot flush what it stores")
            if not flush_keys(keys, self.engine.local_file()):
                self.engine.flush(None)

    # -- stored instances -------------------------------------------------------------

    def has_path(self, relpath: str) -> bool:
        """True when an index row points to ``relpath`` (a key, relative to the root)."""
        with self._db() as db:
            sql = "SELECT 1 FROM instance WHERE path = ?"
            return db.execute(sql, (relpath,)).fetchone() is not None

    def key(self, row_or_uid: Mapping[str, Any] | str) -> str:
        """The storage key of an instance (a row or a SOP Instance UID)."""
        row = self.instance(row_or_uid) if isinstance(row_or_uid, str) else row_or_uid
        return str(row["path"])

    def open(self, row_or_uid: Mapping[str, Any] | str) -> BinaryIO:
        """The stored PS3.10 bytes, a readable and seekable stream (close it when done)."""
        return self.storage.open(self.key(row_or_uid))

    def open_checked(self, row: Mapping[str, Any], local: Path | None = None) -> BinaryIO:
        """:meth:`open` of the instance of index row ``row``, read through its indexed
        size, digest and transfer syntax (``checked.py``: a copy damaged since it was
        stored raises ``DamagedCopy``, before its last bytes are read): what is given
        on whole. A version filed at the same key since ``row`` was read (a replace, a
        delete and a store) is read as the index has it now. ``local``: its local
        file, found already."""
        key = self.key(row)
        name = functools.partial(self.where, row)
        again = functools.partial(self._now, str(row["sop_instance_uid"]))
        # (a local file unbuffered: its reads are large; the checked stream closes it)
        raw = self.storage.open(key) if local is None else open(local, "rb", buffering=0)  # noqa: SIM115
        return cast(BinaryIO, CheckedStream(raw, row, name=name, again=again))

    def check_once(self, row: Mapping[str, Any]) -> None:
        """Raise ``DamagedCopy`` when the copy of index row ``row`` is damaged since it
        was stored: read whole through its record (:meth:`open_checked`) once while its
        file is unchanged (``checked.CheckedOnce``), for the doors that read parts of
        it; ``OSError`` when its file cannot be read (gone)."""
        self._checked_once.check(row, self.local_path(row), self.open_checked)

    def local_path(self, row_or_uid: Mapping[str, Any] | str) -> Path | None:
        """The local file of an instance, for zero-copy readers (``sendfile``, ``mmap``),
        or ``None`` when the storage keeps no local file (then :meth:`open` it)."""
        return self.storage.local_path(self.key(row_or_uid))

    def path(self, row_or_uid: Mapping[str, Any] | str) -> Path:
        """The PS3.10 file of an instance (a row or a SOP Instance UID); ``LookupError``
        when the storage keeps no local file (see :meth:`open`)."""
        key = self.key(row_or_uid)
        path = self.storage.local_path(key)
        if path is None:
            raise LookupError(f"{key}: not a local file in {self.storage!r}")
        return path

    def where(self, row_or_uid: Mapping[str, Any] | str) -> str:
        """Where an instance is, for people: its file, else its key in the storage."""
        key = self.key(row_or_uid)
        return str(self.storage.local_path(key) or key)

    def study_folder(self, key: str) -> str:
        """Where the study of the instance at ``key`` is, for people and hooks: its
        folder (the key's first component under the root), else that key prefix."""
        study = key.partition("/")[0] + "/"
        return str(self.storage.local_path(study) or study)

    def dataset(
        self,
        row_or_uid: Mapping[str, Any] | str,
        *,
        stop_before_pixels: bool = False,
        inflated_limit: int = DEFAULT_MAX_INFLATED,
        defer_size: int | None = None,
    ) -> Dataset:
        """The stored instance as a pydicom ``FileDataset``. ``stop_before_pixels``: its
        header, read without the pixels (a deflated data set from a bounded temporary
        copy rather than inflated whole by pydicom, ``stored.read_file_header``:
        ``inflation.TooLarge`` beyond ``inflated_limit`` bytes). ``defer_size``: values
        longer left unread (pydicom's), from a local file or a deflated data set's
        inflated copy (read from them on access)."""
        from pydicom import dcmread

        from dicomstore.archive.stored import read_file_header

        row = self.instance(row_or_uid) if isinstance(row_or_uid, str) else row_or_uid
        key = str(row["path"])
        if stop_before_pixels and encoding_of(str(row.get("transfer_syntax_uid") or ""))[2]:
            return read_file_header(
                self.storage, key, inflated_limit=inflated_limit, defer_size=defer_size
            )
        path = self.storage.local_path(key)
        if path is not None:
            return dcmread(path, stop_before_pixels=stop_before_pixels, defer_size=defer_size)
        with self.storage.open(key) as fp:
            return dcmread(fp, stop_before_pixels=stop_before_pixels)

    # -- statistics -------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """How many patients, studies, series, instances, and their bytes."""
        with self._db() as db:
            totals = {
                table: db.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]
                for table, name in (
                    ("patients", "patient"),
                    ("studies", "study"),
                    ("series", "series"),
                )
            }
            sql = f"SELECT COUNT(*), {_SUM} FROM instance"
            totals["instances"], totals["bytes"] = db.execute(sql).fetchone()
        return totals

    def stats(self) -> dict[str, Any]:
        """Counts and bytes: in total, per sender (calling AE), per day received (UTC),
        per modality."""
        totals = self.totals()
        with self._db() as db:

            def grouped(sql: str) -> list[dict[str, Any]]:
                return [
                    {"key": key, "instances": n, "bytes": size} for key, n, size in db.execute(sql)
                ]

            return {
                "totals": totals,
                "senders": grouped(
                    f"SELECT COALESCE(calling_ae, ''), COUNT(*), {_SUM}"
                    " FROM instance GROUP BY 1 ORDER BY 1"
                ),
                "days": grouped(
                    f"SELECT substr(received_at, 1, 10), COUNT(*), {_SUM}"
                    " FROM instance GROUP BY 1 ORDER BY 1"
                ),
                "modalities": grouped(
                    f"SELECT COALESCE(se.modality, ''), COUNT(*), {_SUM}"
                    " FROM instance i JOIN series se ON se.series_pk = i.series_pk"
                    " GROUP BY 1 ORDER BY 1"
                ),
            }


#: (sent_at, calling_ae) by SOP Instance UID (``schema.CONFLICTS``).
Conflicts = dict[str, tuple[str, str | None]]


def _conflicts(db: Connection, uids: list[str]) -> Conflicts:
    """Those of ``uids`` another data set was last sent under, the stored copy kept
    (``schema.CONFLICTS``); none from an index a writer of this version has not opened
    yet (no such table)."""
    found: Conflicts = {}
    for at in range(0, len(uids), 500):
        some = uids[at : at + 500]
        sql = "SELECT sop_instance_uid, sent_at, calling_ae FROM conflict"
        sql += f" WHERE sop_instance_uid IN ({', '.join('?' for _ in some)})"
        try:
            found.update((uid, (sent, ae)) for uid, sent, ae in db.execute(sql, some))
        except DatabaseError:  # (no such table)
            return found
    return found
