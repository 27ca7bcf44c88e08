"""The DICOM Conformance Statement of this dicomstore (PS3.2), made from the code.

``dicomstore conformance`` prints it (Markdown, ``document.statement``). The SOP
Class and transfer syntax tables, the identifying UIDs and the defaults come
from the same sources the server negotiates with (:mod:`dicomstore.uids`, the
CLI's defaults), so the statement cannot drift from the behaviour; the prose
follows the structure of PS3.2 Annex A (networking, media, character sets,
security) for the parts that apply. ``document.py`` holds the whole and the
Storage and Verification parts, ``qr.py`` the Query/Retrieve sections,
``commitment.py`` Storage Commitment's, ``tables.py`` the Markdown tables.
"""
