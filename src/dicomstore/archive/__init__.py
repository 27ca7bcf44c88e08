"""The archive: DICOM files under a root and their index (PS3.4 B.1.2 "medium").

Knows DICOM files and its index (SQLite or PostgreSQL), nothing about networking.
"""

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
