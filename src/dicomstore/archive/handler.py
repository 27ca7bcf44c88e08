"""The storage handler protocol, re-exported beside the archive that satisfies it.

Its one home is :mod:`dicomstore.handler` (a leaf, so that the network layer
can name it without importing the archive).
"""

from dicomstore.handler import StoreHandler, StoreSink

__all__ = ["StoreHandler", "StoreSink"]
