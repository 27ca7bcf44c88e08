"""Forwarding rules: where each stored instance, or each stable study, is sent on (issue 16).

A rule is written ``AET=HOST:PORT`` then, optionally, ``;KEY=VALUE`` filters
(``dicomstore serve --forward``, repeatable)::

    PACS=10.0.0.5:104
    PACS=10.0.0.5:104;calling=MODALITY1|MODALITY2;modality=CT|MR
    RESEARCH=10.0.0.9:11112;sop-class=1.2.840.10008.5.1.4.1.1.2;when=stable

``calling`` (the calling AE title it was stored by), ``modality`` (its
series' Modality) and ``sop-class`` (SOP Class UIDs) each take one value or
several separated by ``|`` (any of them matches); a rule with several filters
needs all of them to match. ``when=instance`` (the default) queues each
instance once it is durably stored; ``when=stable`` queues the instances of a
study (those the filters match) once the study is stable (``--stable-age``,
``services/stability.py``). No commas: ``DICOMSTORE_FORWARD`` separates rules
with commas, as every repeatable option in the environment does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dicomstore.services.destinations import Destination, parse_destination
from dicomstore.services.forward_queue import Queued
from dicomstore.uids import is_valid_uid
from dicomstore.vr import ae_title_problem

When = Literal["instance", "stable"]
WHEN: tuple[When, ...] = ("instance", "stable")
#: a filter's key -> the index row's column it matches
FILTERS = {"calling": "calling_ae", "modality": "modality", "sop-class": "sop_class_uid"}


@dataclass(frozen=True, slots=True)
class ForwardRule:
    """Send what matches to ``destination`` (see the module notes); a filter of
    ``None`` matches everything."""

    destination: Destination
    calling: frozenset[str] | None = None
    modality: frozenset[str] | None = None
    sop_class: frozenset[str] | None = None
    when: When = "instance"

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether an instance (its index row: ``calling_ae``, ``modality``,
        ``sop_class_uid``) is one this rule forwards."""
        return all(
            wanted is None or (row.get(column) or "").strip() in wanted
            for wanted, column in (
                (self.calling, "calling_ae"),
                (self.modality, "modality"),
                (self.sop_class, "sop_class_uid"),
            )
        )

    def __str__(self) -> str:
        parts = [str(self.destination)]
        for key, values in (
            ("calling", self.calling),
            ("modality", self.modality),
            ("sop-class", self.sop_class),
        ):
            if values is not None:
                parts.append(f"{key}={'|'.join(sorted(values))}")
        if self.when != "instance":
            parts.append(f"when={self.when}")
        return ";".join(parts)


def parse_rule(text: str) -> ForwardRule:
    """``AET=HOST:PORT[;KEY=VALUE]...`` as a :class:`ForwardRule`; ValueError saying
    what is wrong."""
    head, *filters = text.split(";")
    destination = parse_destination(head)
    found: dict[str, Any] = {}
    for part in filters:
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower().replace("_", "-")
        if not sep or not value.strip():
            raise ValueError(f"{part!r} is not KEY=VALUE")
        if key in found:
            raise ValueError(f"{key} given twice (several values: {key}=A|B)")
        if key == "when":
            if value.strip() not in WHEN:
                raise ValueError(f"when={value.strip()}: instance or stable")
            found["when"] = value.strip()
            continue
        if key not in FILTERS:
            raise ValueError(f"unknown filter {key!r}: calling, modality, sop-class or when")
        values = frozenset(v.strip() for v in value.split("|") if v.strip())
        for v in values:
            _check(key, v)
        found[key.replace("-", "_")] = values
    return ForwardRule(destination, **found)


def _check(key: str, value: str) -> None:
    if key == "calling":
        problem = ae_title_problem(value)
        if problem is not None:
            raise ValueError(f"calling={value}: not an AE title: {problem}")
    elif key == "sop-class" and not is_valid_uid(value):
        raise ValueError(f"sop-class={value}: not a UID")
    elif key == "modality" and (len(value) > 16 or not value.isascii()):
        raise ValueError(f"modality={value}: not a code string")
    elif key == "modality" and value != value.upper():  # (review49 #13: matched nothing)
        upper = value.upper()
        raise ValueError(f"modality={value}: a code string is upper case (modality={upper})")


def destinations_of(rules: Iterable[ForwardRule]) -> dict[str, Destination]:
    """The destinations of ``rules`` by AE title; ValueError when two rules give one
    title two addresses (the queue knows a destination by its title)."""
    found: dict[str, Destination] = {}
    for rule in rules:
        dest = rule.destination
        other = found.setdefault(dest.ae_title, dest)
        if other != dest:
            raise ValueError(f"forward destination {dest.ae_title} given as {other} and {dest}")
    return found


def entries_for(
    rules: Iterable[ForwardRule],
    since: Mapping[tuple[str, str], str],
    row: Mapping[str, Any],
    when: str,
    at: str | None = None,
) -> Iterator[Queued]:
    """The queue entries of an index ``row`` for the rules of trigger ``when``
    configured (``since``: by destination and trigger) by ``at`` (default: its
    arrival) that match it."""
    at = at or row["received_at"]
    for rule in rules:
        ae = rule.destination.ae_title
        if rule.when != when or not rule.matches(row):
            continue
        if at < since.get((ae, when), ""):
            continue
        yield Queued(ae, row["sop_instance_uid"], row["received_at"], row.get("study_uid"))
