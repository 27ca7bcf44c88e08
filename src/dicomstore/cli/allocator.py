"""The C allocator's settings for the command line's processes (glibc's ``mallopt(3)``).

A data set sent from a file (``send``; C-MOVE, C-GET and forwarding from ``serve``)
is read in chunks of up to 1 MiB, a new buffer each, freed once sent. glibc serves an
allocation above its mmap threshold (128 KiB at first) with fresh pages from the
kernel and gives them back when it is freed, so every chunk faults its pages in
again: 100 page faults per 0.5 MB instance, a quarter of ``send``'s CPU on a CT
series and 40% of its time on 100 MB instances. With the thresholds below, chunks come
from the heap and a freed one serves the next read: at most :data:`TRIM_THRESHOLD`
bytes are kept free per arena. (glibc's own thresholds rise with use: after a 1 MiB
buffer is freed, up to 32 MiB and 64 MiB in a process that lives long; these fixed
ones are lower, so a long-running ``serve`` keeps no more than before.)

Only the command line does this (:func:`keep_freed_memory`: the console script's
``cli.main``, ``python -m dicomstore.cli.send``, the processes of ``serve --workers``):
the library, ``import dicomstore``, leaves its host's allocator alone. Settings the
environment gives glibc (``GLIBC_TUNABLES`` with ``glibc.malloc``, ``MALLOC_*``) are
left as they are.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: Allocations up to this size come from the heap (a whole 1 MiB read among them).
MMAP_THRESHOLD = 2 << 20
#: Free memory an arena keeps before giving it back to the kernel.
TRIM_THRESHOLD = 4 << 20
_M_TRIM_THRESHOLD = -1  # (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (see the module docstring); whether they were set (not on
    another C library, nor where the environment sets the allocator)."""
    if not sys.platform.startswith("linux") or _set_by_environment():
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # (musl's mallopt does nothing)
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def _set_by_environment() -> bool:
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(name.startswith("MALLOC_") for name in os.environ)
