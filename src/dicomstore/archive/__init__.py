"""The archive: DICOM files under a root and their index (PS3.4 B.1.2 "medium").

Knows DICOM files and its index (SQLite or PostgreSQL), nothing about networking.
The names below are imported on first use (PEP 562): importing one module of the
archive (``dicomstore.archive.commitment``, as a sender does) loads neither the
others nor pydicom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomstore.lazy import exports

#: Each name and the module that is its one home.
_EXPORTS: dict[str, str] = {
    "StoreHandler": "dicomstore.archive.handler",
    "StoreSink": "dicomstore.archive.handler",
    "Index": "dicomstore.archive.index",
    "Ingest": "dicomstore.archive.ingest",
    "CANNOT_UNDERSTAND": "dicomstore.archive.outcome",
    "DATASET_MISMATCH": "dicomstore.archive.outcome",
    "DUPLICATE_REJECTED": "dicomstore.archive.outcome",
    "OUT_OF_RESOURCES": "dicomstore.archive.outcome",
    "SUCCESS": "dicomstore.archive.outcome",
    "WARNING_COERCION": "dicomstore.archive.outcome",
    "StoreOutcome": "dicomstore.archive.outcome",
    "POLICIES": "dicomstore.archive.store",
    "Archive": "dicomstore.archive.store",
    "DuplicatePolicy": "dicomstore.archive.store",
}

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_MISMATCH",
    "DUPLICATE_REJECTED",
    "OUT_OF_RESOURCES",
    "POLICIES",
    "SUCCESS",
    "WARNING_COERCION",
    "Archive",
    "DuplicatePolicy",
    "Index",
    "Ingest",
    "StoreHandler",
    "StoreOutcome",
    "StoreSink",
]

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports
    from dicomstore.archive.handler import StoreHandler, StoreSink
    from dicomstore.archive.index import Index
    from dicomstore.archive.ingest import Ingest
    from dicomstore.archive.outcome import (
        CANNOT_UNDERSTAND,
        DATASET_MISMATCH,
        DUPLICATE_REJECTED,
        OUT_OF_RESOURCES,
        SUCCESS,
        WARNING_COERCION,
        StoreOutcome,
    )
    from dicomstore.archive.store import POLICIES, Archive, DuplicatePolicy


__getattr__, __dir__ = exports(__name__, _EXPORTS, globals())
