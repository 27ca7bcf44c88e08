"""An integrity error at COMMIT (PostgreSQL checks the instance rows' keys there, sent
with it) makes the writer forget its cache of parent rows: a cache gone stale without
a counted rewrite fails one batch, not every later one (review59 L4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from archive_testlib import dataset, store

from dicomstore.archive import SUCCESS, Archive


def test_an_integrity_error_at_commit_forgets_the_cache(root: Path, monkeypatch) -> None:
    with Archive(root, fsync=False) as archive:
        assert store(archive, dataset("1.2.3.4.1"), sop_uid="1.2.3.4.1").status == SUCCESS
        index = archive.index
        forgot: list[int] = []
        real_forget, real_commit = index.forget, index.commit
        monkeypatch.setattr(index, "forget", lambda: forgot.append(1) or real_forget())

        def failing(**kwargs: object) -> None:
            monkeypatch.setattr(index, "commit", real_commit)  # (once)
            raise sqlite3.IntegrityError("FOREIGN KEY constraint failed")

        monkeypatch.setattr(index, "commit", failing)
        assert store(archive, dataset("1.2.3.4.2"), sop_uid="1.2.3.4.2").status != SUCCESS
        assert forgot == [1]
        assert store(archive, dataset("1.2.3.4.3"), sop_uid="1.2.3.4.3").status == SUCCESS
        assert archive.check() == []
