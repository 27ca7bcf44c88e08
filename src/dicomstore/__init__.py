"""dicomstore: a DICOM Storage SCP and SCU (PS3.4 Annex B) with a durable archive."""

__version__ = "0.1.0"

from dicomstore.aio.association import Timeouts  # noqa: E402
from dicomstore.aio.client import ClientAssociation, associate, connect  # noqa: E402
from dicomstore.aio.server import Server, ServerConfig  # noqa: E402
from dicomstore.errors import (  # noqa: E402
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    DicomstoreError,
    DimseTimeout,
    LocalProtocolError,
    RemoteProtocolError,
)

__all__ = [
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "ClientAssociation",
    "DicomstoreError",
    "DimseTimeout",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Server",
    "ServerConfig",
    "Timeouts",
    "__version__",
    "associate",
    "connect",
]
