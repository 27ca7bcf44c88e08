"""Attribute matching (PS3.4 C.2.2.2, PS3.18 8.3.4): a filter's value on one
attribute as SQL and its parameters, in SQLite's or PostgreSQL's words. The
kinds of matching are listed in ``query.py``'s docstring; ``query.py`` puts the
conditions of a search together."""

from __future__ import annotations

import json
import re
from typing import Any

from dicomstore.archive.attributes import Attribute
from dicomstore.archive.layout import normalize_uid


class QueryError(ValueError):
    """A filter names no known attribute or has a value that cannot be matched."""


class Exact(str):
    """A filter value matched literally, the empty value included: ``Exact("")``
    matches only an empty attribute, never everything (universal matching is for
    queries, not for naming one entity, e.g. the patient of a browse page link)."""


class OrUnknown(str):
    """A filter value that also matches an entity whose attribute is empty: a C-FIND
    Required Key, whose zero-length value "is considered unknown and all matching
    against [it] a successful match" (PS3.4 C.2.2.1.1; review36a #6: studies without
    a Study Date left out of every date range). QIDO-RS keeps plain matching."""


#: A list of more values than this is one parameter (a JSON or PostgreSQL array).
MANY_VALUES = 500

#: PS3.5 6.2 DA and TM: a month 01-12 and a day 01-31; hours 00-23, minutes 00-59,
#: seconds 00-60 (a leap second)
_DATE_RE = re.compile(r"[0-9]{4}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])")
_TIME_RE = re.compile(r"([01][0-9]|2[0-3])([0-5][0-9](([0-5][0-9]|60)(\.[0-9]{1,6})?)?)?")


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]


def glob_pattern(value: str) -> str:
    """DICOM wildcards (``*``, ``?``) as a SQLite GLOB pattern (``[`` made literal)."""
    return value.replace("[", "[[]")


def like_pattern(value: str) -> str:
    """DICOM wildcards as a LIKE pattern with ``\\`` as escape."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def date_time_bounds(vr: str, value: str) -> tuple[str, str] | None:
    """A DA or TM (its colons removed) query value (PS3.4 C.2.2.2.1, C.2.2.2.5): None
    for one value, else the range's (low, high), either of them empty; QueryError for
    what is neither (the one check: the index's matching, and the SCUs' keys)."""
    check, what, form = (
        (_DATE_RE, "date", "YYYYMMDD") if vr == "DA" else (_TIME_RE, "time", "HHMMSS")
    )
    if "-" in value:
        low, high = _range(value, check, what)
        if vr == "DA" and low and high and low > high:  # (review111 F6: matched nothing)
            raise QueryError(f"a date range ends before it begins: {value!r}")
        return low, high
    if not check.fullmatch(value):
        raise QueryError(f"not a {what} ({form}): {value!r}")
    return None


def _range(value: str, check: re.Pattern[str], what: str) -> tuple[str, str]:
    low, _, high = value.partition("-")
    for part in (low, high):
        if part and not check.fullmatch(part):
            raise QueryError(f"not a {what} or {what} range: {value!r}")
    if not low and not high:
        raise QueryError(f"empty {what} range: {value!r}")
    return low, high


#: ASCII letters to lower case (SQLite's LIKE folds no other case).
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _wildcards(col: str, value: str, dialect: str) -> tuple[str, list[Any]]:
    """Case-sensitive matching of DICOM wildcards: SQLite's GLOB, PostgreSQL's LIKE."""
    if dialect == "sqlite":
        return f"{col} GLOB ?", [glob_pattern(value)]
    return f"{col} LIKE ? ESCAPE '\\'", [like_pattern(value)]


#: The longest value matched as a pattern (wildcards; every Person Name): a PN
#: component group is at most 64 characters (PS3.5 6.2).
MAX_PATTERN = 1024


def condition(attr: Attribute, value: str, dialect: str = "sqlite") -> tuple[str, list[Any]] | None:
    """SQL and parameters matching ``value`` on ``attr``; ``None`` for universal matching."""
    value = value.strip()
    if value in ("", "*"):
        return None
    if attr.sql is None:
        raise QueryError(f"{attr.keyword} can be returned but not matched")
    if len(value) > MAX_PATTERN and (attr.vr == "PN" or "*" in value or "?" in value):
        # (SQLite refuses a LIKE pattern over 50,000 bytes as an error of the index,
        # a 503: review38mem N1)
        raise QueryError(
            f"a value matched by pattern is at most {MAX_PATTERN} characters:"
            f" {attr.keyword} has {len(value)}"
        )
    col = attr.sql
    if "\\" in value and attr.vr in ("DA", "TM", "DT", "IS"):  # (PS3.4 C.2.2.2: no list)
        raise QueryError(f"{attr.keyword} holds several values: one value or a range only")
    if attr.vr == "UI" and any(c in value for c in "*?"):  # (PS3.4 C.2.2.2.4: not a UID's)
        raise QueryError(f"{attr.keyword}: a UID is matched whole, without wildcards: {value!r}")
    if attr.vr == "UI" or attr.keyword == "ModalitiesInStudy":
        values = [normalize_uid(v) if attr.vr == "UI" else v for v in _split_list(value)]
        if len(values) == 1 and any(c in values[0] for c in "*?") and attr.vr != "UI":
            return _wildcards(col, values[0], dialect)
        if len(values) > MANY_VALUES:  # one parameter: SQLite takes at most 32,766
            if dialect == "sqlite":
                return f"{col} IN (SELECT value FROM json_each(?))", [json.dumps(values)]
            return f"{col} IN (SELECT unnest(CAST(? AS text[])))", [values]
        return f"{col} IN ({', '.join('?' for _ in values)})", values
    if attr.vr == "DA":
        bounds = date_time_bounds("DA", value)
        if bounds is None:
            return f"{col} = ?", [value]
        low, high = bounds
        parts = ([f"{col} >= ?"] if low else []) + ([f"{col} <= ?"] if high else [])
        return " AND ".join(parts), [v for v in (low, high) if v]
    if attr.vr == "TM":
        value = value.replace(":", "")
        # (one time is the span it names, as a stored one is: 0800 finds 080000.123,
        # as 0800-0800 does; review111 F3: it was compared as a string)
        low, high = date_time_bounds("TM", value) or (value, value)
        parts, params = [], []
        if low:  # (a stored time of less precision is the span it names: HHMM is HHMM00
            # to HHMM59.999999, and is in a range from HHMMSS on; review81 F7: 1010 was
            # not; HHMMSS is to HHMMSS.999999: review113 L1, 101030 was not in 101030.5)
            spanned = f"{col} || substr('595959.999999', length({col}) + 1)"
            parts.append(f"{spanned} >= ?")
            params.append(low)
        if high:
            parts.append(f"substr({col}, 1, {len(high)}) <= ?")
            params.append(high)
        return " AND ".join(parts), params
    if attr.vr == "IS":
        try:
            return f"{col} = ?", [int(value)]
        except ValueError:
            raise QueryError(f"not an integer for {attr.keyword}: {value!r}") from None
    if attr.vr == "PN":
        return _person_name(col, value, dialect)
    if "*" in value or "?" in value:
        return _wildcards(col, value, dialect)
    return f"{col} = ?", [value]


#: From here on (Hangul Jamo, CJK, Hiragana, Katakana, Hangul syllables ...) a name's
#: letters are those of an ideographic or phonetic group (PS3.5 6.2.1.2, H, I, J).
_IDEOGRAPHIC = 0x1100


def _person_name(col: str, value: str, dialect: str) -> tuple[str, list[Any]]:
    """A Person Name matched insensitive to ASCII case: the whole name; and a value of
    one component group (no ``=``) whose only wildcard, if any, is a last ``*``, also
    the alphabetic group of a name with several, or its ideographic or phonetic one
    when the value has such letters (PS3.5 6.2.1.2: ``Yamada^Tarou`` or ``山田^太郎``
    find ``Yamada^Tarou=山田^太郎=やまだ^たろう``; review111 F4, review98: only the
    whole string did, or a value with ``*``). A wildcard elsewhere matches the whole
    name alone: SQL's ``%`` and ``_`` would match across a group's ``=`` (review113
    M1: ``Y*u`` found ``Young^Ann=Smith^Lou=Zed``)."""
    name = person_name(value)
    pattern = like_pattern(name)
    low = col if dialect == "sqlite" else f"lower({col})"
    trimmed = f"rtrim({col}, '^= ')" if dialect == "sqlite" else f"lower(rtrim({col}, '^= '))"
    if dialect != "sqlite":
        pattern = pattern.translate(_ASCII_LOWER)
    like = "LIKE ? ESCAPE '\\'"
    wild = name.endswith("*")
    if wild:
        parts, params = [f"{low} {like}"], [pattern]
    else:
        # (a name indexed before person_name kept its trailing "^"s: a prefix the
        # index serves, then the name without them: review82 F7)
        parts, params = [f"({low} {like} AND {trimmed} {like})"], [pattern + "%", pattern]
    core = name[:-1] if wild else name
    if any(c in core for c in "=\\*?"):  # (groups or values named, or wildcards inside)
        return parts[0], params
    core_pattern = pattern[:-1] if wild else pattern
    if not wild:  # the first group, alphabetic (a prefix, as the whole name's)
        parts.append(f"{low} {like}")
        params.append(core_pattern + "=%")
    if any(ord(c) >= _IDEOGRAPHIC for c in core):  # an ideographic or phonetic group
        # (a scan of the names: Müller, Ζωή or Иван stay the index's prefix search)
        parts.append(f"{low} {like}")
        params.append("%=" + core_pattern + ("%" if wild else "=%"))
        if not wild:
            parts.append(f"{trimmed} {like}")
            params.append("%=" + core_pattern)
    return f"({' OR '.join(parts)})", params


def person_name(value: str) -> str:
    """A Person Name without the trailing empty components and groups PS3.5 6.2.1.1 lets
    a writer leave out (``ROE^JANE^^^`` is ``ROE^JANE``; review81 F8: one did not find
    the other), each value of a multi-valued one; as the index keeps it and a query
    matches it."""
    values = []
    for one in value.split("\\"):
        groups = [group.rstrip("^ ") for group in one.split("=")]
        while len(groups) > 1 and not groups[-1]:
            groups.pop()
        values.append("=".join(groups))
    return "\\".join(values)


def match(attr: Attribute, raw: Any, dialect: str) -> tuple[str, list[Any]] | None:
    """:func:`condition` of a filter's value, or of an :class:`Exact` or an
    :class:`OrUnknown` one."""
    if isinstance(raw, OrUnknown):
        cond = condition(attr, str(raw), dialect)
        if cond is None:
            return None
        col = attr.sql
        empty = f" OR {col} = ''" if attr.vr not in ("IS", "US", "UL", "SL", "FD") else ""
        return f"({cond[0]} OR {col} IS NULL{empty})", cond[1]
    if not isinstance(raw, Exact):
        return condition(attr, str(raw), dialect)
    if attr.sql is None:
        raise QueryError(f"{attr.keyword} can be returned but not matched")
    return f"{attr.sql} = ?", [str(raw)]
