"""Names a package re-exports, imported on first use (PEP 562): the one home of the
lazy ``__getattr__``/``__dir__`` of ``dicomstore`` and ``dicomstore.archive``, so that
importing one module of a package loads no other (nor pydicom, nor the services)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(
    package: str, homes: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(``__getattr__``, ``__dir__``) for ``package`` whose public names live in
    ``homes`` (name -> the module that is its one home); a name is imported on first
    access and kept in ``namespace`` (the package's globals: later accesses do not
    come back here)."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *homes})

    return __getattr__, __dir__
