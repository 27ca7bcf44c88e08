"""Outgoing fragmentation of a DIMSE message into PDVs (PS3.8 9.3.5, Annex D.1, Annex E).

The peer's Maximum Length Received (PS3.8 D.1) bounds the *variable field* of
a P-DATA-TF PDU, i.e. the sum of its PDV items; each PDV item costs 6 bytes
(4-byte item length, context ID, message control header) plus its data.  So a
PDV carries at most ``max_pdu - 6`` bytes of data, rounded down to even since
every fragment has an even length (PS3.8 E.1).  ``max_pdu == 0`` means
"no limit" (PS3.8 D.1); we then cut at :data:`DEFAULT_FRAGMENT` so that no
single PDU holds a whole multi-gigabyte instance.

Slices are memoryviews over the caller's buffer: no data is copied here.
"""

from __future__ import annotations

from dicomstore.errors import LocalProtocolError
from dicomstore.ul.pdu import PDV, PDV_OVERHEAD

#: PDV data size used when the peer sets no limit (max PDU length 0).
DEFAULT_FRAGMENT = 1 << 20

Buffer = bytes | bytearray | memoryview


def max_pdv_data(max_pdu: int) -> int:
    """Largest (even) PDV data length for a peer's maximum PDU length (0 = unlimited)."""
    if max_pdu == 0:
        return DEFAULT_FRAGMENT
    size = (max_pdu - PDV_OVERHEAD) & ~1  # fragments have an even length (PS3.8 E.1)
    if size < 2:
        raise LocalProtocolError(f"maximum PDU length {max_pdu} leaves no room for data")
    return size


def _split(context_id: int, is_command: bool, data: Buffer, max_pdu: int, last: bool) -> list[PDV]:
    size = max_pdv_data(max_pdu)
    if isinstance(data, memoryview) and (data.ndim != 1 or data.itemsize != 1):
        data = data.cast("B")  # len() must count bytes
    n = len(data)
    if n <= size:
        return [PDV(context_id, is_command, last, data)]
    view = memoryview(data)
    pdvs = [PDV(context_id, is_command, False, view[i : i + size]) for i in range(0, n, size)]
    pdvs[-1].is_last = last
    return pdvs


def command_pdvs(context_id: int, command_bytes: Buffer, max_pdu: int) -> list[PDV]:
    """The command PDVs of one message; the last has the "last fragment" bit (PS3.8 E.2)."""
    return _split(context_id, True, command_bytes, max_pdu, True)


def dataset_pdvs(context_id: int, data: Buffer, max_pdu: int, last: bool) -> list[PDV]:
    """Data set PDVs for ``data``, one chunk of a data set that may be streamed.

    Only the final PDV of the chunk carries ``last`` (PS3.8 E.2). An empty chunk
    yields one empty last PDV when ``last`` is set (to close a stream), else nothing.
    """
    if not len(data) and not last:
        return []
    return _split(context_id, False, data, max_pdu, last)
