"""What the hand-written byte vectors of the UL tests share (PS3.8 9.3, PS3.7 D.3.3).

The text fields are ASCII literals, their lengths in the comments; the UL
tests check those lengths once (``test_ul_items``) before any vector uses them.
"""

from __future__ import annotations


def h(text: str) -> bytes:
    """Bytes from hex digits; whitespace is ignored."""
    return bytes.fromhex(text)


def s(raw: bytes) -> str:
    return raw.decode("ascii")


APP_CTX = b"1.2.840.10008.3.1.1.1"  # 21 = 0x15, DICOM application context
VERIFICATION = b"1.2.840.10008.1.1"  # 17 = 0x11
CT_STORAGE = b"1.2.840.10008.5.1.4.1.1.2"  # 25 = 0x19
IMPLICIT_LE = b"1.2.840.10008.1.2"  # 17 = 0x11
EXPLICIT_LE = b"1.2.840.10008.1.2.1"  # 19 = 0x13
IMPL_UID = b"1.2.826.0.1.3680043.8.498.1"  # 27 = 0x1B
PROC_LOG = b"1.2.840.10008.5.1.4.1.1.88.40"  # 29 = 0x1D, Procedure Log Storage
ENHANCED_SR = b"1.2.840.10008.5.1.4.1.1.88.22"  # 29 = 0x1D
COMPREHENSIVE_SR = b"1.2.840.10008.5.1.4.1.1.88.33"  # 29 = 0x1D
STORAGE_SERVICE = b"1.2.840.10008.4.2"  # 17 = 0x11, Storage Service Class
PATIENT_ROOT_FIND = b"1.2.840.10008.5.1.4.1.2.1.1"  # 27 = 0x1B
VERSION = b"DICOMSTORE_010"  # 14 = 0x0E
CALLED = b"STORESCP        "  # 16, AE title padded with spaces (20H)
CALLING = b"STORESCU        "  # 16

#: Each text field and the length its comment gives.
LENGTHS = {
    APP_CTX: 0x15,
    VERIFICATION: 0x11,
    CT_STORAGE: 0x19,
    IMPLICIT_LE: 0x11,
    EXPLICIT_LE: 0x13,
    IMPL_UID: 0x1B,
    PROC_LOG: 0x1D,
    ENHANCED_SR: 0x1D,
    COMPREHENSIVE_SR: 0x1D,
    STORAGE_SERVICE: 0x11,
    PATIENT_ROOT_FIND: 0x1B,
    VERSION: 0x0E,
    CALLED: 16,
    CALLING: 16,
}
