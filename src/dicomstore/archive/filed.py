"""Which files are stored instances, filed where the archive files them (the
judgement of ``reindex``, the start's look for a lost index and ``delete``'s of
what an interrupted delete left): a file named as the archive names one, readable,
at the place its own Study, Series and SOP Instance UIDs name (``layout.is_place``);
its header read, no digest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dicomstore.archive import layout
from dicomstore.archive.dicomfile import dataset_offset, read_header
from dicomstore.archive.fields import index_fields


def header_row(fp: Any, size: int, transfer_syntax: str) -> tuple[dict[str, Any], int]:
    """The index fields of the data set in ``fp`` (its header) and where it begins."""
    offset = dataset_offset(fp)
    row = index_fields(read_header(fp, offset, size, transfer_syntax))
    if row["sop_instance_uid"] is None or row["sop_class_uid"] is None:
        raise ValueError("no SOP Class/Instance UID in the data set")
    return row, offset


def filed_by_archive(root: Path, path: Path) -> bool:
    """Whether ``reindex`` takes the file at ``path`` as a stored instance: named as
    the archive names one (``layout.named_as_filed``), readable, and where the
    archive files the instance its own UIDs name (``layout.is_place``, the judgement
    of :func:`reindex_archive`); its header only, no digest (start-up, review59 M4)."""
    return _filed_instance(root, path) is not None


def abandoned(root: Path, path: Path, reader: Any) -> bool:
    """Whether the file at ``path`` is what an interrupted delete left of its own
    instance: filed where the archive files the instance its own UIDs name, which the
    index (``reader``) holds neither there nor elsewhere; not a file moved there by
    hand, another patient's instance or a foreign one, which ``delete`` removed unread
    (review115 F1: the only copy of an acknowledged instance filed elsewhere)."""
    if reader.has_path(path.relative_to(root).as_posix()):
        return False
    sop = _filed_instance(root, path)
    return sop is not None and not reader.search("instance", {"SOPInstanceUID": sop}, limit=1)


def _filed_instance(root: Path, path: Path) -> str | None:
    """The SOP Instance UID of the file at ``path`` when :func:`filed_by_archive`."""
    from pydicom.filereader import read_file_meta_info  # (as read_row)

    relpath = path.relative_to(root).as_posix()
    if not layout.named_as_filed(relpath):
        return None
    try:
        meta = read_file_meta_info(path)
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            row, _ = header_row(fp, size, str(meta.get("TransferSyntaxUID", "")))
    except Exception:  # (left out by reindex as "cannot be read")
        return None
    sop = str(row["sop_instance_uid"])
    return sop if layout.is_place(relpath, row["study_uid"], row["series_uid"], sop) else None
