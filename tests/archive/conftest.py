"""The archive tests run on both index engines (issue 17): every test that makes
an archive in a temporary folder runs once with SQLite and once with each archive
opened without ``index`` indexed in a fresh PostgreSQL schema instead (the
``index_engine`` fixture of ``tests/conftest.py``, the one home of the
mechanism). Tests about SQLite's own file are marked ``sqlite_index`` and run on
SQLite only, as do those that open the archive in another process (that process
would look for the SQLite file)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _on_both_engines(index_engine: str) -> None:
    """Every archive test on both engines."""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A storage root (not made yet), by its resolved path."""
    return (tmp_path / "root").resolve()
