"""``dicomstore serve``'s options (README: "dicomstore serve"): the SCP's own, then
the groups TLS (PS3.15 B.9), study-complete events, forwarding, limits, and
the DICOMweb options of ``http_options.py``; each default shown is
:class:`ServerConfig`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dicomstore.cli.audit_options import add_audit_log
from dicomstore.cli.http_options import add_http_options
from dicomstore.cli.options import (
    _add_common,
    _ae_address,
    _ae_title,
    _count,
    _forward_rule,
    _http_url,
    _int,
    _pdu,
    _port,
    _positive,
    _seconds,
    _size,
    _transfer_syntax,
    add_index,
    add_loop,
)
from dicomstore.services.server_config import DIMSE_TIMEOUT, MIN_RECEIVE_RATE, ServerConfig

#: The server's defaults have one home, :class:`ServerConfig`; the options show them
#: (its plain defaults, read without making one: a transfer syntax list needs pydicom,
#: which a command such as ``echo`` never loads).
_D = SimpleNamespace(
    **{f.name: f.default for f in dataclasses.fields(ServerConfig) if f.default is not MISSING}
)


def add_parser(sub: Any) -> None:
    """The ``serve`` subcommand and its options (README: "dicomstore serve")."""
    s = sub.add_parser(
        "serve",
        help="run the Storage/Verification SCP",
        epilog="Every option can also be set in --server-config FILE (TOML, "
        "max-associations = 20) or as DICOMSTORE_MAX_ASSOCIATIONS=20; "
        "the command line wins over the environment, which wins over the file.",
    )
    s.add_argument(
        "--server-config",
        type=Path,
        metavar="FILE",
        help="TOML file of serve's options, named like the long options (README: Operations)",
    )
    s.add_argument(
        "--host",
        default=_D.host,
        help=f"address to listen on (default {_D.host}; 0.0.0.0 for all)",
    )
    s.add_argument("--port", type=_port, default=_D.port, help=f"TCP port (default {_D.port})")
    s.add_argument(
        "--aet", type=_ae_title, default=_D.ae_title, help=f"our AE title (default {_D.ae_title})"
    )
    s.add_argument(
        "--storage",
        type=Path,
        default=Path("dicomstore-data"),
        help="archive root (default ./dicomstore-data, created if missing)",
    )
    add_index(s)
    s.add_argument(
        "--workers",
        type=_int(1),
        default=1,
        metavar="N",
        help="N processes receive into the archive, e.g. one per core: the first accepts "
        "each connection and passes it to the one serving the fewest; limits hold per "
        "process; DICOMweb and forwarding run in the first (default 1)",
    )
    add_loop(s)
    s.add_argument(
        "--max-associations",
        type=_int(1),
        default=_D.max_associations,
        help="simultaneous associations; beyond, reject as transient "
        f"(default {_D.max_associations})",
    )
    s.add_argument(
        "--max-pdu",
        type=_pdu,
        default=_D.max_pdu,
        help=f"maximum P-DATA-TF length we receive, 0 = unlimited (default {_D.max_pdu})",
    )
    s.add_argument(
        "--require-called-aet",
        action="store_true",
        help="reject associations whose called AE title is not --aet",
    )
    s.add_argument(
        "--allow-calling-aet",
        type=_ae_title,
        action="append",
        metavar="AET",
        help="accept only these calling AE titles (repeatable; default: any)",
    )
    s.add_argument(
        "--store-aet",
        type=_ae_title,
        action="append",
        metavar="AET",
        help="only these calling AE titles may C-STORE, others get 0124 (repeatable)",
    )
    s.add_argument(
        "--move-destination",
        type=_ae_address,
        action="append",
        metavar="AET=HOST:PORT",
        help="a Storage SCP a C-MOVE may name by its AE title (repeatable; also "
        "[destinations] in the --config policy file; any other title gets A801)",
    )
    s.add_argument(
        "--commitment-scu",
        type=_ae_address,
        action="append",
        metavar="AET=HOST:PORT",
        help="where a Storage Commitment SCU takes its report when the association of "
        "its request has ended (repeatable; also [commitment_scus] in the --config "
        "policy file)",
    )
    s.add_argument(
        "--accept-unknown-sop-classes",
        action="store_true",
        help="also accept private or newer SOP classes as storage",
    )
    s.add_argument(
        "--transfer-syntax",
        type=_transfer_syntax,
        action="append",
        metavar="TS",
        help="accepted transfer syntaxes in order of preference (repeatable; UID or "
        "explicit/implicit/big/deflated; default: every known, uncompressed "
        "first)",
    )
    s.add_argument(
        "--transfer-syntax-order",
        choices=["ours", "proposed"],
        default="ours",
        help="of a context's proposed transfer syntaxes that we accept, take the first of "
        "ours (default ours; our order: uncompressed first) or the first the sender "
        "proposed (keeps what a modality sends compressed)",
    )
    s.add_argument(
        "--fsync",
        choices=["on", "off"],
        default="on",
        help="flush every instance to disk before Success (default on)",
    )
    s.add_argument(
        "--syncfs",
        choices=["auto", "off"],
        default="auto",
        help="with --fsync on, flush with one syncfs(2) of the archive's file system where "
        "the kernel reports writeback errors through it (default auto: a lone instance's "
        "data, name and index row in one flush); off: fsync each file and folder (a file "
        "system with heavy unrelated writers, whose data syncfs would flush too)",
    )
    add_archive_policies(s)
    s.add_argument(
        "--max-ops",
        type=_int(0, 65535),  # (PS3.7 D.3.3.3.1: a 16-bit number)
        default=_D.max_ops,
        help="asynchronous operations window granted to senders, at most 65535; 0: any"
        f" number (PS3.7 D.3.3.3) (default {_D.max_ops})",
    )
    t = s.add_argument_group("TLS")
    t.add_argument("--tls-cert", type=Path, metavar="PEM", help="our certificate: enables TLS")
    t.add_argument("--tls-key", type=Path, metavar="PEM", help="our private key")
    t.add_argument(
        "--tls-ca", type=Path, metavar="PEM", help="CA certificate(s) client certificates chain to"
    )
    t.add_argument(
        "--tls-require-client-cert",
        action="store_true",
        help="refuse clients without a certificate signed by --tls-ca",
    )
    s.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="policy file (TOML): known peers, what they may do, users, JWT keys",
    )
    add_audit_log(s)
    ev = s.add_argument_group("study-complete events")
    ev.add_argument(
        "--stable-age",
        type=_seconds,
        default=_D.stable_age,
        metavar="SECONDS",
        help="a study is stable (complete) after this long without a new instance: "
        f"logged to <storage>/.events/study-stable.jsonl (default {_D.stable_age:g}; 0: off)",
    )
    ev.add_argument(
        "--on-stable-exec",
        metavar="COMMAND",
        help="run COMMAND (no shell) when a study is stable: {study}, {folder} and "
        "{patient} replaced, else the study UID and folder appended; not run when the "
        "sender's Study UID is not digits and dots or its Patient ID could be an option or a path",
    )
    ev.add_argument(
        "--stable-webhook",
        type=_http_url,
        metavar="URL",
        help="POST each study-complete event to URL as JSON",
    )
    fw = s.add_argument_group("forwarding (README: Forwarding)")
    fw.add_argument(
        "--forward",
        type=_forward_rule,
        action="append",
        metavar="AET=HOST:PORT[;FILTER]",
        help="send each stored instance on to this Storage SCP, from a durable queue "
        "retried with backoff (repeatable); filters: ;calling=AET|AET ;modality=CT|MR "
        ";sop-class=UID|UID ;when=instance (default) or when=stable (each stable study)",
    )
    fw.add_argument(
        "--forward-retry-delay",
        type=_positive,
        default=_D.forward_retry_delay,
        metavar="SECONDS",
        help="first wait after a transient failure, doubled per attempt "
        f"(default {_D.forward_retry_delay:g})",
    )
    fw.add_argument(
        "--forward-retry-max",
        type=_positive,
        default=_D.forward_retry_max,
        metavar="SECONDS",
        help=f"longest wait between attempts (default {_D.forward_retry_max:g})",
    )
    fw.add_argument(
        "--forward-max-attempts",
        type=_count,
        default=_D.forward_max_attempts,
        metavar="N",
        help="after N attempts that failed for a transient reason, the entry fails for "
        "good (`dicomstore requeue` sends it again; default 0: tried until it is stored)",
    )
    lim = s.add_argument_group("limits")
    lim.add_argument(
        "--max-per-calling-aet",
        type=_count,
        default=_D.max_per_calling_ae,
        metavar="N",
        help="simultaneous associations per calling AE title (default: no limit)",
    )
    lim.add_argument(
        "--max-per-address",
        type=_count,
        default=_D.max_per_address,
        metavar="N",
        help="simultaneous associations per peer address (default: no limit)",
    )
    lim.add_argument(
        "--max-pending-connections",
        type=_count,
        default=_D.max_pending_connections,
        metavar="N",
        help="connections that have not sent their association request yet (each for "
        "at most --artim-timeout); beyond N, or N/4 from one address, a new connection "
        f"is closed at once (default {_D.max_pending_connections}; 0: no limit)",
    )
    lim.add_argument(
        "--max-failed-admissions",
        type=_count,
        default=_D.max_failed_admissions,
        metavar="N",
        help="after N user identities (or HTTP credentials) from one address refused by "
        "--config's policy within --failed-admission-window, refuse that address's "
        "credentials at once; each process of --workers counts its own "
        f"(default {_D.max_failed_admissions}; 0: never)",
    )
    lim.add_argument(
        "--failed-admission-window",
        type=_positive,
        default=_D.failed_admission_window,
        metavar="SECONDS",
        help=f"the window of --max-failed-admissions (default {_D.failed_admission_window:g})",
    )
    lim.add_argument(
        "--max-failed-logins-per-user",
        type=_count,
        default=_D.max_failed_logins_per_user,
        metavar="N",
        help="after N refused passcodes of one user name within --failed-admission-window, "
        "from any address (DICOM user identity, HTTP Basic), refuse that user at once, right "
        "passcodes too, until the oldest refusal leaves the window: a temporary lockout "
        "that anyone knowing the name can trigger; each process of --workers counts "
        f"its own (default {_D.max_failed_logins_per_user}: never)",
    )
    add_store_limits(lim)
    lim.add_argument(
        "--max-commitment-references",
        type=_int(1),
        default=_D.max_commitment_references,
        metavar="N",
        help="most instances one Storage Commitment request may reference; more: 0213 "
        f"(default {_D.max_commitment_references})",
    )
    lim.add_argument(
        "--max-pending-commitments",
        type=_int(1),
        default=_D.max_pending_commitments,
        metavar="N",
        help="most Storage Commitment requests accepted and not yet reported (one calling "
        f"AE title: half); more: 0213 (default {_D.max_pending_commitments})",
    )
    lim.add_argument(
        "--operation-timeout",
        type=_positive,
        metavar="S",
        help="seconds one incoming message may take (default 3600)",
    )
    lim.add_argument(
        "--min-receive-rate",
        type=_count,
        default=MIN_RECEIVE_RATE,
        metavar="BYTES",
        help="bytes a second a message (or PDU) being received must keep up, with 30 s "
        f"of credit; slower: A-ABORT (0: no minimum; default {MIN_RECEIVE_RATE})",
    )
    add_http_options(s)
    s.add_argument("--acse-timeout", type=_positive, help="seconds (default 30)")
    s.add_argument(
        "--artim-timeout",
        type=_positive,
        help="seconds to wait for an association request or a close (default 30)",
    )
    s.add_argument(
        "--dimse-timeout",
        type=_positive,
        default=DIMSE_TIMEOUT,
        help="seconds a response to what the server sends may take (a C-MOVE's or C-GET's"
        " C-STORE, a commitment report, a forwarded instance); later: the association is"
        f" aborted (default {DIMSE_TIMEOUT:g})",
    )
    s.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=_D.shutdown_grace,
        metavar="S",
        help="seconds in-flight operations may take to finish once SIGINT, SIGTERM or SIGHUP"
        f" asked the server to stop; then they are aborted (default {_D.shutdown_grace:g})",
    )
    s.add_argument(
        "--index-answer-timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="seconds a PostgreSQL index may take to answer one statement (a writer's:"
        " plus its lock timeout); later, the session is cut and the statement fails"
        " (a store: A700); 0: no limit (default 60)",
    )
    s.add_argument(
        "--idle-timeout",
        type=_positive,
        help="seconds an association may stay silent (default 600)",
    )
    _add_common(s)


def add_relational_policy(parser: Any) -> None:
    """``--on-relational-mismatch`` (``archive.relations``): ``serve``'s, and
    ``reindex``'s for the files the index did not hold."""
    parser.add_argument(
        "--on-relational-mismatch",
        choices=["reject", "accept"],
        default="reject",
        help="the data set's Series UID is filed under another study, or its Study UID "
        "under another patient: refuse (A900, default) or store it under its own study "
        "and patient",
    )


def add_archive_policies(parser: Any) -> None:
    """What the archive does with what arrives (``archive.Archive``'s policies):
    ``serve``'s, and ``get --storage``'s (a door into the same archive)."""
    parser.add_argument(
        "--on-duplicate",
        choices=["keep", "replace", "reject"],
        default="keep",
        help="an already stored SOP Instance UID arrives again (default keep)",
    )
    parser.add_argument(
        "--on-class-mismatch",
        choices=["reject", "tolerate"],
        default="reject",
        help="the data set's SOP Class UID differs from the command's: refuse (A900, "
        "default) or store as sent and answer B007",
    )
    add_relational_policy(parser)
    parser.add_argument(
        "--trailing-padding",
        choices=["keep", "discard"],
        default="keep",
        help="a data set ending with Data Set Trailing Padding (FFFC,FFFC): store it as "
        "sent (default) or without the padding and answer B006",
    )


def archive_policies(args: Any) -> dict[str, str]:
    """:func:`add_archive_policies`' values as ``Archive``'s keyword arguments."""
    keys = ("on_duplicate", "on_class_mismatch", "on_relational_mismatch", "trailing_padding")
    return {key: getattr(args, key) for key in keys}


def add_store_limits(parser: Any) -> None:
    """The store service's limits (``services.storage.StoreLimits``): ``serve``'s and
    ``get --storage``'s."""
    parser.add_argument(
        "--max-instance-size",
        type=_size,
        default=_D.max_instance_bytes,
        metavar="SIZE",
        help="largest data set accepted, e.g. 4G; larger: A700 (default: no limit)",
    )
    parser.add_argument(
        "--min-free",
        type=_size,
        default=_D.min_free_bytes,
        metavar="SIZE",
        help="answer A700 before writing when less is free, e.g. 1G (default 0)",
    )
