"""The archive tests run on both index engines (issue 17): every test that makes
an archive in a temporary folder runs once with SQLite and once with each archive
opened without ``index`` indexed in a fresh PostgreSQL schema instead
(``engine.default_index``). Tests about SQLite's own file are marked
``sqlite_index`` and run on SQLite only, as do those that open the archive in
another process (that process would look for the SQLite file)."""

from __future__ import annotations

from pathlib import Path

import pytest

ENGINES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_index: about SQLite's index file; SQLite only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    uses_archive = {"tmp_path", "tmp_path_factory"} & set(metafunc.fixturenames)
    if uses_archive and not metafunc.definition.get_closest_marker("sqlite_index"):
        metafunc.parametrize("index_engine", ENGINES, indirect=True)


@pytest.fixture
def index_engine(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture(autouse=True)
def _index_on_engine(
    index_engine: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if index_engine != "postgresql":
        return
    from dicomstore.archive import engine

    server = request.getfixturevalue("postgres")
    urls: dict[Path, str] = {}

    def default_index(root: Path) -> str:
        root = root.resolve()
        if root not in urls:
            urls[root] = server.new_url()
        return urls[root]

    monkeypatch.setattr(engine, "default_index", default_index)
