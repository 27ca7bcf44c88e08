"""DIMSE statuses (PS3.7 Annex C): their one home is :mod:`dicomstore.status`, a
leaf module the archive and the HTTP doors share; re-exported here for DIMSE."""

from dicomstore.status import *  # noqa: F403
from dicomstore.status import __all__  # noqa: F401
