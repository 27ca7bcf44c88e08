"""The storage handler protocol: what the Storage SCP asks of whoever stores instances.

For every C-STORE the service calls ``begin`` with what the command and the
presentation context name, ``write`` for each data set fragment in order,
then ``commit`` (possibly from a worker thread) whose outcome carries the
PS3.4 B.2.3 status to answer (or is that status, a plain int), or ``abort``
when the association ends first.
:class:`~dicomstore.archive.store.Archive` satisfies it; so can user code.
The archive's ``commit`` may be called from many threads at once (several
associations, several instances in flight on one): it blocks until its
instance is durable, and commits that meet share their flushes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # the archive is not imported by those who only need the protocol
    from dicomstore.archive.outcome import StoreOutcome


@runtime_checkable
class StoreSink(Protocol):
    """Receives one instance."""

    def write(self, fragment: bytes | bytearray | memoryview) -> None:
        """Take the next data set fragment (the caller may reuse its buffer afterwards)."""

    def commit(self) -> StoreOutcome | int:
        """All fragments were given: store durably and say how it went: a
        :class:`~dicomstore.archive.outcome.StoreOutcome`, or just the status (an int)."""

    def abort(self) -> None:
        """The instance will not complete: keep nothing of it."""


@runtime_checkable
class StoreHandler(Protocol):
    """Hands out one :class:`StoreSink` per C-STORE request."""

    def begin(
        self,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str = "",
        called_ae: str = "",
    ) -> StoreSink:
        """Start an instance: Affected SOP Class/Instance UIDs of the C-STORE-RQ, the
        transfer syntax of its presentation context, the association's AE titles."""
