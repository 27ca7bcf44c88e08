"""The archive: the "medium" of PS3.4 B.1.2 — PS3.10 files under a root, plus an index.

``Archive`` satisfies :class:`~dicomstore.archive.handler.StoreHandler`:
``begin`` → ``write`` … → ``commit`` (``ingest.py``). Commits that meet —
several associations, several instances in flight on one — are published
together (group commit, ``commit.py``): one flush of the files, one of the
folder, one index transaction for the batch, and no member is answered
before the batch is durable. ``publish.py`` has the order of the steps and
the flush counts: 3 for one instance (file, series folder, SQLite WAL), 3 for
a whole batch where syncfs can be trusted (Linux 5.8+).

If the COMMIT fails the new names are taken back. A crash between giving a
file its name and the COMMIT leaves the file with a second name in ``.tmp``:
the next start adopts it into the index, or puts back what an uncommitted
replace replaced (``recovery.recover``; :attr:`Archive.recovered` counts the
adopted); a crash before leaves only a temporary, removed at start-up. A crash
after the COMMIT of a replace that moved the instance, or of a ``delete``,
leaves removal intents, settled at start-up too (``removal.py``).
Each open ``Archive`` (a *node*: several processes, on one host or several,
may share a root and a PostgreSQL index) receives into a folder of its own in
``.tmp`` (``nodes.py``); start-up settles and empties ``.tmp`` and the folders
of dead nodes, never a live node's. An open ``Archive`` holds ``.tmp`` shared
(``recovery.hold``, and ``Index.hold`` in PostgreSQL): ``reindex`` refuses to
run beside it, and it cannot be opened during a ``reindex``.

Duplicate SOP Instance UID (``on_duplicate``), checked under the index lock,
so two threads storing the same instance get one file, one row and consistent
answers (two of them never share a batch):

``"keep"`` (default)
    The stored instance stays. Identical data set bytes (same digest,
    ``digests.py``): 0000, the instance is stored exactly as sent (PS3.4
    B.2.2). Different bytes: B000
    Coercion of Data Elements — the stored instance differs from what was sent
    and the SCU is told so; 0000 would claim the new bytes were stored.
``"replace"``
    The new file and row replace the old ones at the COMMIT (the new file at the
    instance's other place, the old one removed after: ``publish.py``); 0000.
``"reject"``
    C111 (Failure, Cannot understand range): see ``outcome.DUPLICATE_REJECTED``
    for why not 0111 or A900.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
from pathlib import Path
from typing import Any, Literal

from dicomstore.archive import layout, reserve, startup
from dicomstore.archive.commit import CommitStats, GroupCommit
from dicomstore.archive.deferred import IdleCheckpoint
from dicomstore.archive.dicomfile import MetaTemplates
from dicomstore.archive.engine import engine_for
from dicomstore.archive.filestorage import FileStorage
from dicomstore.archive.identity import check_storage
from dicomstore.archive.index import Index
from dicomstore.archive.index_health import IndexHealth, reindex_command
from dicomstore.archive.ingest import Ingest
from dicomstore.archive.journal import NAME as JOURNAL
from dicomstore.archive.maintenance import check_archive, reindex_archive
from dicomstore.archive.nodes import Node
from dicomstore.archive.publish import Publisher
from dicomstore.archive.recovery import ArchiveBusyError, hold
from dicomstore.archive.relations import RELATIONAL_POLICIES

DuplicatePolicy = Literal["keep", "replace", "reject"]
POLICIES: tuple[str, ...] = ("keep", "replace", "reject")
#: ``trailing_padding``: keep the data set as received, or cut a top-level Data
#: Set Trailing Padding (FFFC,FFFC) off and answer B006 (``padding.py``).
TRAILING_PADDING_POLICIES: tuple[str, ...] = ("keep", "discard")


class Archive:
    """Files under ``root`` and the index at ``root/index.sqlite``.

    ``fsync=False`` trades durability for speed (tests, scratch archives): no
    fsync of files or folders and SQLite ``synchronous=NORMAL``. ``lock_timeout``
    bounds the wait for the index write lock before answering A700. ``syncfs``:
    flush a batch of several instances with one syncfs(2) of the file system
    (``None``: where the kernel reports writeback errors through it, and then a
    lone new instance too, committed before its one syncfs: ``publish.py``;
    ``False``: never, fsync each file and folder). ``stats`` counts batches, instances and flushes.
    ``on_class_mismatch="tolerate"`` stores a data set whose SOP Class UID differs
    from the command's and answers B007; ``trailing_padding="discard"`` stores a
    data set without its top-level Data Set Trailing Padding (FFFC,FFFC) and
    answers B006 (PS3.4 B.2.3; ``padding.py``), ``"keep"`` stores every byte.
    ``on_relational_mismatch``: a Series UID filed under another study or a Study
    UID under another patient is refused with A900 (``"reject"``) or indexed
    under its own study and patient (``"accept"``), see ``relations.py``.
    An index of an older schema is rebuilt from the files at start-up
    (:attr:`reindexed`; told in the log, ``startup.py``). ``require_index``: refuse
    (``startup.UnindexedStorageError``) a storage holding stored instances whose
    index holds none (lost, or new: a server's start; else a WARNING); a new
    archive is said in the log. ``index``: where the index is, when not the SQLite file
    in ``root``: a ``postgresql://user@host:port/db`` URL (``engine.py``); the
    files stay under ``root``. ``journal``: where new instances are committed
    before their flush, make them durable by one write to this node's journal
    instead of a syncfs each (``journal.py``; ``False``: a syncfs each).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        fsync: bool = True,
        on_duplicate: DuplicatePolicy = "keep",
        on_class_mismatch: str = "reject",
        trailing_padding: str = "keep",
        lock_timeout: float = 5.0,
        syncfs: bool | None = None,
        on_relational_mismatch: str = "reject",
        index: str | None = None,
        journal: bool = True,
        require_index: bool = False,
    ) -> None:
        if on_duplicate not in POLICIES:
            raise ValueError(f"on_duplicate must be one of {POLICIES}, not {on_duplicate!r}")
        self.root = Path(root).resolve()
        #: where the instances' bytes are (``storage.py``): the files under ``root``
        self.storage = FileStorage(self.root, fsync=fsync, syncfs=syncfs)
        self.fsync = fsync
        self.on_duplicate = on_duplicate
        if on_class_mismatch not in ("reject", "tolerate"):
            raise ValueError(f"on_class_mismatch must be reject or tolerate: {on_class_mismatch!r}")
        self.on_class_mismatch = on_class_mismatch
        if trailing_padding not in TRAILING_PADDING_POLICIES:
            raise ValueError(f"trailing_padding must be keep or discard: {trailing_padding!r}")
        self.trailing_padding = trailing_padding
        if on_relational_mismatch not in RELATIONAL_POLICIES:
            raise ValueError(
                f"on_relational_mismatch must be one of {RELATIONAL_POLICIES}, "
                f"not {on_relational_mismatch!r}"
            )
        self.on_relational_mismatch = on_relational_mismatch
        #: the store service of the server serving this archive (``services.server``):
        #: a door built over the archive alone (``http.build_app``) stores through it
        self.store_service: Any = None
        #: the index: ``None`` for the SQLite file in the root, or a ``postgresql://`` URL
        self.index_url = index
        engine = engine_for(self.root, index)
        new = startup.is_new(self.root, engine)
        (self.root / layout.TMP_DIR).mkdir(parents=True, exist_ok=True)
        self._hold = hold(self.root, exclusive=False)  # (refused during a reindex)
        try:
            self.index = Index(engine, durable=fsync, timeout=lock_timeout, migrate=True)
        except BaseException:
            os.close(self._hold)
            raise
        try:
            if not self.index.hold(exclusive=False):  # (the same, for nodes on other hosts)
                raise ArchiveBusyError(errno.EBUSY, "in use by a reindex or a check", index)
            check_storage(self.root, self.index)
            #: this node's own folder for temporaries (``nodes.py``)
            self._node = Node(self.root)
        except BaseException:
            self.index.close()
            os.close(self._hold)
            raise
        self.tmp_dir = self._node.folder
        try:
            #: instances a crash left published but not indexed, adopted at start-up
            self.recovered = self.storage.recover(self.index, fsync=fsync)
            hint = reindex_command(self.root, index)
            startup.opened(self.root, self.index, new=new, refuse=require_index, hint=hint)
            #: instances indexed anew because the index had an older schema
            self.reindexed = (
                startup.rebuild_older(
                    self.root, self.index, on_relational_mismatch=self.on_relational_mismatch
                )
                if self.index.rebuild is not None
                else None
            )
            #: whether the index is lost or damaged while it serves (``index_health.py``)
            self.health = IndexHealth(self.index.engine, hint)
            self._publisher = Publisher(
                self.storage,
                self.index,
                on_duplicate=on_duplicate,
                on_relational_mismatch=on_relational_mismatch,
                submitted=lambda: self._committer.submitted,
                journal=self.tmp_dir / JOURNAL if journal else None,
                owner=self._node.name,
                health=self.health,
            )
        except BaseException as exc:
            self._node.close()
            self.index.close()
            os.close(self._hold)
            if new and isinstance(exc, startup.UnindexedStorageError):
                startup.forget_new_index(engine)  # (review77 F9: ls then showed it empty)
            raise
        flush_time = (lambda: self._publisher.flush_time) if fsync else None
        self._committer = GroupCommit(self._publisher.publish, gather=flush_time)
        #: the journal's checkpoint when no batch comes (``deferred.py``)
        self._idle = IdleCheckpoint(self._committer.when_idle, self._publisher.checkpoint_due)
        self._publisher.on_journaled = self._idle.arm
        reserve.keep(self.root)  # (room for a delete on a full disk: ``reserve.py``)
        self._announce = (self._committer.arriving, self._committer.left)
        self._templates = MetaTemplates()
        self._names = itertools.count()
        self._token = secrets.token_hex(4)
        self._tmp = str(self.tmp_dir)

    @property
    def commits_wait(self) -> bool:
        """Whether a commit waits on something other than this process: fsyncs, or
        a PostgreSQL index (its round trips, and the write lock other nodes take
        turns on)."""
        return self.fsync or self.index_remote

    @property
    def index_remote(self) -> bool:
        """Whether the index is a server's (PostgreSQL): its answers may not come."""
        return self.index.engine.dialect != "sqlite"

    def keep_held(self) -> None:
        """The archive's lock in a PostgreSQL index taken again if a server restart
        ended the writer's session while idle (``Index.keep_held``; a server calls it
        every ``serving.KEEP_HELD_EVERY`` seconds)."""
        self.index.keep_held()

    def cannot_store(self) -> list[str]:
        """Why a store would fail now, one line each, none when it would not (readiness:
        ``services.readiness``): the index lost or damaged (:attr:`health`), and a
        file created, written and removed in this node's temporary folder (a
        read-only or full file system fails it). A few system calls."""
        problems = self.health.problems()
        try:
            layout.probe_writable(self.tmp_dir)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            problems.append(f"the archive's temporary folder cannot be written: {why}")
        return problems

    @property
    def stats(self) -> CommitStats:
        """Group commit counters (batches, instances, the archive's own flushes)."""
        return self._publisher.stats

    def close(self) -> None:
        """Wait for the batch being published, then close the index writer connection."""
        self._idle.close()
        self._committer.close()
        self._publisher.close()
        self.index.close()
        self._node.close()
        if self._hold >= 0:
            os.close(self._hold)
            self._hold = -1

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
        """Start receiving one instance: the temporary file and its meta are written now;
        ``ValueError`` once the archive is closed (review120 F10: a store answered A700
        "No such file or directory while creating the file")."""
        if self._hold < 0:
            raise ValueError(f"the archive {self.root} is closed")
        return Ingest(
            self._tmp,
            self._committer.submit,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_ae=calling_ae,
            called_ae=called_ae,
            fsync=self.fsync,
            name=f"{self._token}-{next(self._names)}.part",
            templates=self._templates,
            announce=self._announce,
            tolerate_class_mismatch=self.on_class_mismatch == "tolerate",
            discard_trailing_padding=self.trailing_padding == "discard",
            storage=self.storage,
        )

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
        return None if row is None else self.storage.local_path(row["path"])

    # -- maintenance ------------------------------------------------------------------

    def check(self) -> list[str]:
        """Problems found: missing, resized or altered files; files not indexed."""
        return check_archive(self.root, self.index)

    def reindex(self, left_out: list[str] | None = None, damaged: list[str] | None = None) -> int:
        """Rebuild the index from the files on disk; the number of instances indexed
        (``left_out``, ``damaged``: a line for each file left out, each file damaged
        since it was stored, see ``reindex_archive``)."""
        policy = self.on_relational_mismatch
        return reindex_archive(
            self.root, self.index, left_out, damaged, on_relational_mismatch=policy
        )
