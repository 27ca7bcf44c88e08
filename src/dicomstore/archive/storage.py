"""Where the bytes of the stored instances live: the storage interface of the archive.

The archive (``Archive``, ``ArchiveReader``) names each stored instance by a
*key*: the index's ``path`` column, ``<study>/<series>/<sop>.dcm``
(``layout.instance_relstr``, every component made safe). Everything above
the archive — services, HTTP, CLI — reads an instance through the archive's
API by its key (:meth:`ArchiveReader.open` a binary stream, or
:meth:`Storage.local_path` where the bytes are a local file and a zero-copy
path pays), never by building or opening a path of its own. So a store other
than the local file system can be added here without touching them (issue 17).

:class:`Storage` is what the readers of the archive need of where bytes live
(open, size, version, exists, list by prefix, delete, free space, a scratch
folder);
``filestorage.FileStorage`` is the local file system, the only one so far.
:class:`WritableStorage` is what the writers need, in this order: ``create``
a temporary, ``write`` to it and ``abort`` it (``ingest.py`` streams each
instance so: for files ``<root>/.tmp/node-*/<name>``, one ``os.write`` per
fragment); then, one batch at a time, ``stage(batch)`` (trace and flush: the
bytes durable), ``place(member, key, replacing)`` (``.bak``/removal intent,
rename), ``settle(placed)`` (the folder flushes), and after the COMMIT
``finish(placed)`` (old version, intents, traces go), or ``undo(placed)``;
``discard(member)`` for one that is not placed; ``recover(index)`` at start-up,
before the first batch. Where one flush after the COMMIT makes bytes, keys and
index durable at once (``defers_flush``), new instances skip ``stage`` and
``settle`` and are flushed by ``flush_placed(placed)`` after the COMMIT
(``withdraw(member)`` for one that could not be; ``flush_keys`` for stored
ones an answer rests on). ``publish.py`` keeps the index logic and the order
(duplicate policy, relations, BEGIN/COMMIT, the answers) and calls the storage
for every step on the bytes; ``FileStorage`` does them with the crash-safety
and the flush counts that ``publish.py`` documents, and ``recover`` with
``recovery.recover``.

Still the file system's own, inside the archive and nowhere else (each works
on paths under the root, for a second storage to take over next): what
``recovery.recover`` does inside (traces adopted, ``.bak`` put back, ``.tmp``
emptied, by path), removal intents and deletes (``removal.py``: a delete's
intents, unlinks, folder flushes and folder removals; the intents' names are
made by ``layout.link_intent``), ``check`` and ``reindex``
(``maintenance.py``, reading files by path), the ``.tmp`` holds and node
folders (``recovery.hold``, ``nodes.py``), and the two places where
``ingest.py`` reads or cuts its temporary by name (the header read with
pydicom when the prefix does not settle it, ``padding.py``).

What an object store (S3 and the like) would implement, and how the
guarantees of ``publish.py`` map onto it:

``create`` (write a temporary stream)
    A multipart upload to a temporary key (``.tmp/<node>/<name>``), fragment
    after fragment buffered to the part size (5 MiB minimum): memory stays
    bounded, nothing is visible under a final key. ``abort`` is
    AbortMultipartUpload (and a bucket lifecycle rule for uploads a dead node
    left, as start-up empties ``.tmp`` today).
``stage`` (trace, flush the files: fsync, syncfs)
    CompleteMultipartUpload: S3 acknowledges a PUT only once the object is
    durable, so the "data durable before its name" step is the completion.
``place`` (rename, ``.bak``), the traces
    There is no rename: publishing is a server-side copy to the final key
    (or, better, uploading to the final key directly and writing the index
    row last, since an object is invisible until complete). The crash-safety
    the hard-link trace gives — "a file at its final name without a row is
    adopted or taken back at the next start" — becomes an *intent log*: a
    small object ``.tmp/<node>/<name>.pub`` naming the key and the version it
    published, written (conditional put, ``If-None-Match: *``) before the
    final put and deleted after the COMMIT; recovery lists ``.tmp/`` by
    prefix and settles each intent as ``recovery.recover`` settles traces. A
    replace keeps the old version by the bucket's versioning (the ``.bak``:
    the version id to restore) instead of a second name.
put-if-absent
    Two nodes storing the same instance take turns under the index write
    lock already (``publish.py``), so the final put needs no condition; a
    conditional put (``If-Match`` the ETag read under the lock) would detect a
    node that lost its database session between its put and its COMMIT (the
    race ``publish.py`` leaves).
``settle`` (flush the folders)
    Nothing: an object store has no folders, a completed put is durable.
removal intents (``removal.py``)
    The same intent objects in ``.tmp/`` (``<owner>=<key>.rm``), settled by
    listing the prefix; an unlink is a DeleteObject.
:meth:`Storage.keys` (``check``, ``reindex``, ``delete``'s leftovers)
    ListObjectsV2 by prefix (paginated: the iterator streams).
:meth:`Storage.open`
    A GET with ``Range`` requests on ``seek`` (a readable, seekable stream);
    :meth:`Storage.local_path` returns ``None``, so the readers stream instead
    of ``sendfile``/``mmap`` (the metadata encoder then reads the object).
:meth:`Storage.version`
    The ETag (it changes whenever the bytes do: the metadata cache's key).
:meth:`Storage.free_space`
    ``None`` (no quota to report) or a configured quota less the bucket size.
:meth:`Storage.scratch`
    ``None``: a deflated data set is inflated into the system's temporary folder.

On the C-STORE hot path the interface costs the method calls and nothing more:
``strace -c`` of a server receiving 500 instances counts the same system calls
as when ``ingest.py`` and ``publish.py`` made them themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from dicomstore.archive.commit import CommitStats, Staged
from dicomstore.archive.index import Index


@runtime_checkable
class Storage(Protocol):
    """Where the archive's bytes live, by key (``<study>/<series>/<sop>.dcm``).

    Every method raises ``OSError`` for an I/O failure (``FileNotFoundError``
    for a key with no object) and ``ValueError`` for a key that is not one of
    the archive's (``..``, absolute, empty).
    """

    def open(self, key: str) -> BinaryIO:
        """The bytes at ``key``: a readable, seekable binary stream (close it)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The local file holding ``key``'s bytes (or the folder of a key prefix such as
        ``<study>/``), for zero-copy readers (``sendfile``, ``mmap``) and for people;
        ``None`` when the bytes are not a local file."""
        ...

    def size(self, key: str) -> int:
        """The number of bytes at ``key``."""
        ...

    def version(self, key: str) -> str:
        """A token that changes whenever the bytes at ``key`` change (a cache key)."""
        ...

    def exists(self, key: str) -> bool:
        """True when something is stored at ``key``."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """The keys of stored instances under ``prefix`` (``""``: all; ``"<study>/"``:
        a study's), one by one, temporaries left out; no order promised."""
        ...

    def delete(self, key: str) -> bool:
        """Remove the bytes at ``key``; False when there were none."""
        ...

    def free_space(self) -> int | None:
        """Bytes still available for new instances (``None``: no limit known)."""
        ...

    def scratch(self) -> Path | None:
        """A local folder for a reader's temporaries (a deflated data set inflated to
        be read, ``inflation.inflated_temporary``); ``None``: the system's."""
        ...


@runtime_checkable
class WritableStorage(Storage, Protocol):
    """What the archive's writers need of where bytes live, step by step (see the
    module docstring for the order and what a second storage would do).

    A *temporary* is named by ``temp``, a name in the writing node's folder of
    temporaries (``<root>/.tmp/node-*/<name>`` for files); its *handle* is what
    :meth:`create` returned (a descriptor for files), ``-1`` once closed.
    """

    def create(self, temp: str) -> int:
        """A new, empty temporary (never one that exists); its handle."""
        ...

    def write(
        self, handle: int, data: bytes | bytearray | memoryview, *more: bytes | memoryview
    ) -> None:
        """Append all of ``data`` to the temporary, then all of each of ``more`` (as
        one write where the storage can: no copy joins them)."""
        ...

    def writeback(self, handle: int) -> None:
        """Start storing what was written so far, without waiting (a large instance's
        bytes then go to the disk while the rest arrives): a hint, nothing promised;
        :meth:`stage` is what makes them durable."""
        ...

    def abort(self, handle: int, temp: str) -> None:
        """Drop a temporary: closed (unless ``handle`` is ``-1``), its bytes gone (one
        gone already is no error)."""
        ...

    def recover(self, index: Index, *, fsync: bool) -> int:
        """At start-up, before anything is published: settle what a crash left of
        publications (adopted into ``index``, taken back) and removals; the number
        of instances adopted."""
        ...

    # -- publishing a batch, one batch at a time (``publish.py`` has the order) --------

    def start(self, stats: CommitStats, submitted: Callable[[], int]) -> None:
        """Get ready to publish (once, before the first batch; how durable each step
        is, the storage's own settings say): ``stats.flushes`` counts the flushes;
        ``submitted()`` is the number of instances submitted so far
        (``GroupCommit.submitted``)."""
        ...

    def close(self) -> None:
        """Let go of what :meth:`start` took (when no batch runs)."""
        ...

    def defers_flush(self, index_file: Path | None) -> bool:
        """Whether new instances may be placed and committed first and flushed after
        (:meth:`flush_placed`): when one flush then makes the bytes, their keys and
        the index (the file ``index_file``, or ``None`` for a server's) durable."""
        ...

    def use_journal(self, path: Path) -> None:
        """Make batches committed before their flush durable through a journal at
        ``path`` (``journal.py``) where they fit."""
        ...

    def journal(self, placed: list[Staged], batch: str) -> bool:
        """After an unflushed COMMIT: make the placed members durable through the
        journal (each closed); False, nothing done, when they cannot go there."""
        ...

    def checkpoint(self) -> bool:
        """Flush what the journal stands for, then mark its records obsolete; False
        when that failed (nothing changed)."""
        ...

    def covered(self) -> None:
        """A flush since every journal record was written succeeded: mark them
        obsolete (``OSError`` when that cannot be said)."""
        ...

    @property
    def journaled(self) -> int:
        """Records in the journal since its last checkpoint."""
        ...

    @property
    def journal_sound(self) -> bool:
        """Whether the journal is still written (no write or flush of it failed)."""
        ...

    def stage(self, batch: list[Staged]) -> list[Staged]:
        """Make the bytes of the batch's temporaries durable (each closed); the members
        whose bytes are, ``batch`` itself when all are (the others have ``failed``
        set, and are still to be :meth:`discard`-ed)."""
        ...

    def place(self, member: Staged, key: str, replacing: str | None) -> None:
        """Give a staged temporary its ``key`` (``member.rel``; ``member.final`` is set
        to the local name), keeping what was at ``key`` until :meth:`finish` or
        :meth:`undo`, and marking the key of the version it replaces
        (``replacing``, when it is another key) for removal after the COMMIT.
        Raises ``OSError`` (the member's own steps taken back)."""
        ...

    def settle(self, placed: list[Staged]) -> None:
        """Make the new keys of the placed members durable (before the COMMIT)."""
        ...

    def flush_placed(self, placed: list[Staged]) -> bool:
        """Make placed members' bytes and keys durable after an unflushed COMMIT
        (``unflushed`` members, each closed); True when the COMMIT is durable too,
        False when the index is still to be flushed. A member whose bytes could not
        be made durable gets ``failed``; ``OSError``: none is known durable."""
        ...

    def withdraw(self, member: Staged) -> bool:
        """Drop the bytes of a committed member whose flush failed, if its key still
        holds them (not another writer's since); True if they went."""
        ...

    def flush_keys(self, keys: list[str], index_file: Path | None = None) -> bool:
        """Make the stored bytes at ``keys`` durable (``OSError`` when they cannot
        be); True when that made ``index_file`` (the index's own file, if it has
        one) durable too, or nothing needs flushing: no index flush is then due."""
        ...

    def finish(self, placed: list[Staged], kept: frozenset[str] = frozenset()) -> None:
        """After the COMMIT: the replaced versions and what kept them go; but not a
        version moved from a key in ``kept`` (indexed there again since: another
        node stored the instance back; the caller holds the index's write lock)."""
        ...

    def undo(self, placed: list[Staged], *, in_doubt: bool = False) -> None:
        """Take back the placements of a batch that cannot be committed (best effort);
        ``in_doubt``: its COMMIT may have been done: all stays as a crash there would
        leave it (start-up recovery settles it), the files are only closed."""
        ...

    def settle_doubt(self, index: Index, placed: list[Staged]) -> None:
        """Settle the placements :meth:`undo` left ``in_doubt``, by the index's rows,
        once it answers (raises ``DatabaseError``/``OSError``: not now)."""
        ...

    def discard(self, member: Staged) -> None:
        """Drop a member that will not be placed (its temporary and trace go)."""
        ...
