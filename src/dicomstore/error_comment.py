"""One home for the text of an Error Comment (0000,0902) (PS3.7 C.4.2.1.2, Annex E).

Error Comment is an LO (PS3.5 6.2): at most 64 characters of the default
character repertoire (the command set has no Specific Character Set), no
backslash (the value delimiter), no control characters. Every place that
answers a status with a comment (C-STORE from the archive or the SCP,
STOW-RS reasons sent as C-STORE statuses) cuts it here, so a modality log
shows whole words, never a word cut in the middle.
"""

from __future__ import annotations

#: Maximum length of an LO value in characters (PS3.5 6.2, Table 6.2-1).
MAX_CHARS = 64
#: Appended to a comment that had to be cut.
ELLIPSIS = "..."


def error_comment(text: str | None) -> str | None:
    """``text`` as a valid LO value for (0000,0902), or ``None`` if nothing is left.

    A character outside printable ASCII (a control character, a newline, a letter
    beyond the default repertoire such as ``é``) or a backslash becomes ``?``;
    leading and trailing spaces go (they are not significant in an LO). A text
    longer than :data:`MAX_CHARS` is cut at the last space that leaves room for
    :data:`ELLIPSIS`, which then ends it: never inside a word. Only a first word too
    long to fit on its own (a long UID, say) is cut hard, inside that word, to
    ``MAX_CHARS - 3`` characters and the ellipsis.
    """
    if text is None:
        return None
    text = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in text).strip(" ")
    if len(text) <= MAX_CHARS:
        return text or None
    room = MAX_CHARS - len(ELLIPSIS)
    # a space at index ``room`` means the word before it ends exactly at the limit
    space = text.rfind(" ", 0, room + 1)
    head = text[:space].rstrip(" ,;:") if space > 0 else ""
    if not head:  # one word longer than the limit: the only hard cut
        head = text[:room]
    return head + ELLIPSIS
