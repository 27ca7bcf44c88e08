"""pydicom's data tables read as files, without importing pydicom.

pydicom's UID dictionary and data dictionary are modules holding one dict
literal each (``_uid_dict.py``, ``_dicom_dict.py``); importing them through
pydicom loads the package, numpy and every dictionary (a quarter of a second
and tens of MiB that a server that only stores never needs). Read this way they
stay pydicom's own tables, never typed by hand.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any


def read_table(filename: str, *names: str) -> tuple[dict[Any, Any], ...] | None:
    """The dicts ``names`` of pydicom's module file ``filename``; ``None`` when that
    file is not where it was (another pydicom layout: import pydicom instead)."""
    spec = importlib.util.find_spec("pydicom")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, filename)
        module_name = "dicomstore._pydicom_" + filename.removesuffix(".py").strip("_")
        table_spec = importlib.util.spec_from_file_location(module_name, path)
        if not os.path.isfile(path) or table_spec is None or table_spec.loader is None:
            continue
        module = importlib.util.module_from_spec(table_spec)
        table_spec.loader.exec_module(module)  # (dict literals: it imports nothing)
        tables = tuple(getattr(module, name, None) for name in names)
        if all(isinstance(table, dict) for table in tables):
            return tables  # type: ignore[return-value]
    return None
