"""dicomstore: a DICOM Storage SCP and SCU (PS3.4 Annex B) with a durable archive.

The public API is re-exported here and imported on first use (PEP 562), so
that ``import dicomstore.ul.fsm`` (or ``dimse``, ``archive``) loads neither
asyncio, ssl, the asyncio shell nor the services::

    import dicomstore

    async with dicomstore.connect("127.0.0.1", 11112, called_ae="DICOMSTORE") as assoc:
        rsp = await assoc.echo()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomstore.lazy import exports

__version__ = "0.1.0"

#: Each public name and the module that is its one home.
_EXPORTS: dict[str, str] = {
    # client (PS3.8 7.1, PS3.7 9.3)
    "ClientAssociation": "dicomstore.aio.client",
    "associate": "dicomstore.aio.client",
    "connect": "dicomstore.aio.client",
    "Timeouts": "dicomstore.aio.association",
    "CEchoRSP": "dicomstore.dimse.messages",
    "CStoreRSP": "dicomstore.dimse.messages",
    # sending many instances (PS3.4 B.2.1)
    "send": "dicomstore.services.scu_send",
    "SendOptions": "dicomstore.services.scu_send",
    "Result": "dicomstore.services.storage_scu",
    # querying (PS3.4 C.4.1)
    "find": "dicomstore.services.query_scu",
    "find_contexts": "dicomstore.services.query_scu",
    "Find": "dicomstore.services.query_scu",
    "FindFailed": "dicomstore.services.query_scu",
    # retrieving (PS3.4 C.4.2, C.4.3)
    "move": "dicomstore.services.retrieve_scu",
    "get": "dicomstore.services.retrieve_scu",
    "move_contexts": "dicomstore.services.retrieve_scu",
    "get_contexts": "dicomstore.services.retrieve_scu",
    "receive_into": "dicomstore.services.retrieve_scu",
    "RetrieveResult": "dicomstore.services.retrieve_scu",
    "FolderStore": "dicomstore.services.folder_store",
    # Storage Commitment (PS3.4 J.3)
    "commit": "dicomstore.services.commitment_scu",
    "Commitment": "dicomstore.services.commitment_scu",
    "Reference": "dicomstore.archive.commitment",
    # server (PS3.4 A, B.2)
    "serve": "dicomstore.services.serving",
    "Server": "dicomstore.services.server",
    "ServerConfig": "dicomstore.services.server",
    "StoreHandler": "dicomstore.handler",
    "StoreSink": "dicomstore.handler",
    "StoreOutcome": "dicomstore.archive.outcome",
    "Archive": "dicomstore.archive.store",
    # what was stored: query, read, events
    "open_archive": "dicomstore.query",
    "ArchiveReader": "dicomstore.archive.reader",
    "StoredEvents": "dicomstore.query",
    "Subscription": "dicomstore.query",
    "StoredEvent": "dicomstore.services.storage",
    "StableStudy": "dicomstore.services.stable_log",
    # errors
    "DicomstoreError": "dicomstore.errors",
    "LocalProtocolError": "dicomstore.errors",
    "RemoteProtocolError": "dicomstore.errors",
    "AssociationError": "dicomstore.errors",
    "AssociationRejected": "dicomstore.errors",
    "AssociationAborted": "dicomstore.errors",
    "DimseTimeout": "dicomstore.errors",
    "NotDicom": "dicomstore.services.sources",
    "CorruptFile": "dicomstore.services.sources",
    "NotSendable": "dicomstore.services.storage_scu",
    "ArchiveNotFoundError": "dicomstore.archive.reader",
    "NotStoredError": "dicomstore.archive.reader",
    "QueryError": "dicomstore.archive.query",
}

__all__ = [
    "Archive",
    "ArchiveNotFoundError",
    "ArchiveReader",
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "CEchoRSP",
    "CStoreRSP",
    "ClientAssociation",
    "Commitment",
    "CorruptFile",
    "DicomstoreError",
    "DimseTimeout",
    "Find",
    "FindFailed",
    "FolderStore",
    "LocalProtocolError",
    "NotDicom",
    "NotSendable",
    "NotStoredError",
    "QueryError",
    "Reference",
    "RemoteProtocolError",
    "Result",
    "RetrieveResult",
    "SendOptions",
    "Server",
    "ServerConfig",
    "StableStudy",
    "StoreHandler",
    "StoreOutcome",
    "StoreSink",
    "StoredEvent",
    "StoredEvents",
    "Subscription",
    "Timeouts",
    "__version__",
    "associate",
    "commit",
    "connect",
    "find",
    "find_contexts",
    "get",
    "get_contexts",
    "move",
    "move_contexts",
    "open_archive",
    "receive_into",
    "send",
    "serve",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports
    from dicomstore.aio.association import Timeouts
    from dicomstore.aio.client import ClientAssociation, associate, connect
    from dicomstore.archive.commitment import Reference
    from dicomstore.archive.outcome import StoreOutcome
    from dicomstore.archive.query import QueryError
    from dicomstore.archive.reader import ArchiveNotFoundError, ArchiveReader, NotStoredError
    from dicomstore.archive.store import Archive
    from dicomstore.dimse.messages import CEchoRSP, CStoreRSP
    from dicomstore.errors import (
        AssociationAborted,
        AssociationError,
        AssociationRejected,
        DicomstoreError,
        DimseTimeout,
        LocalProtocolError,
        RemoteProtocolError,
    )
    from dicomstore.handler import StoreHandler, StoreSink
    from dicomstore.query import StoredEvents, Subscription, open_archive
    from dicomstore.services.commitment_scu import Commitment, commit
    from dicomstore.services.folder_store import FolderStore
    from dicomstore.services.query_scu import Find, FindFailed, find, find_contexts
    from dicomstore.services.retrieve_scu import (
        RetrieveResult,
        get,
        get_contexts,
        move,
        move_contexts,
        receive_into,
    )
    from dicomstore.services.scu_send import SendOptions, send
    from dicomstore.services.server import Server, ServerConfig
    from dicomstore.services.serving import serve
    from dicomstore.services.sources import CorruptFile, NotDicom
    from dicomstore.services.stable_log import StableStudy
    from dicomstore.services.storage import StoredEvent
    from dicomstore.services.storage_scu import NotSendable, Result


__getattr__, __dir__ = exports(__name__, _EXPORTS, globals())
