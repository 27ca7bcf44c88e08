"""The index schema (version 7) and the SQL the writer and readers share.

Patient / study / series / instance, linked by surrogate keys (``*_pk``):
a series row is one Series Instance UID *in one study*, a study row one Study
Instance UID *of one patient*, and a patient is (Patient ID, Issuer of
Patient ID) — one without Patient ID is scoped to its study (``scope``), so
such studies are never merged. No instance is ever listed under a study or
patient it does not belong to, whatever UIDs senders reuse (PS3.3 A.1.2,
PS3.4 B.1.1). Plain SQL that PostgreSQL also runs, but for ``INTEGER
PRIMARY KEY`` (an identity column there), ``COLLATE NOCASE`` and the ``?``
placeholders, which ``engine.py`` translates.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 7
#: Older versions with the tables of this one, opened as they are (a writer adds
#: :data:`REWRITES` and the column ``instance.rebuilt`` and stamps them :data:`SCHEMA_VERSION`): 2
#: recorded every digest as SHA-256, 3 also as ``blake3:``, 4 also as ``xxh3:``
#: (``digests.py``), which a dicomstore of an older version would misread (its
#: ``check`` would report every new instance); 5 counts the rewrites
#: (``parentcache.py``), which a dicomstore of an older version would delete and
#: change rows without counting (another writer's cache would then file instances
#: under rows that are gone); 6 kept the mark of the last rebuild from the files as
#: a time (the table ``rebuilt``), 7 flags the instance rows a rebuild made
#: (``instance.rebuilt``, ``rebuild.py``; review59 M2: a node whose clock was behind
#: stored instances under the time), which a dicomstore of an older version would
#: ignore (its ``reindex`` would keep no arrival or leave a time, its forwarding and
#: study-complete events would take the rebuilt instances for new arrivals, or new
#: ones for rebuilt): it refuses a newer schema.
SAME_TABLES = frozenset({2, 3, 4, 5, 6})

# Surrogate keys (``*_pk``) link the levels, so that one Series Instance UID
# can be filed under two studies and one Study Instance UID under two patients
# (``on_relational_mismatch="accept"``) without one instance ever being listed
# under the other's study or patient. A patient is (Patient ID, Issuer of
# Patient ID); a patient without a Patient ID (Type 2, empty) is scoped to its
# study (``scope`` holds the Study Instance UID), so such studies are never
# merged into one patient.
SCHEMA = """
CREATE TABLE IF NOT EXISTS patient (
    patient_pk INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL,
    issuer TEXT NOT NULL,
    scope TEXT NOT NULL,
    patient_name TEXT,
    birth_date TEXT,
    sex TEXT,
    UNIQUE (patient_id, issuer, scope)
);
CREATE TABLE IF NOT EXISTS study (
    study_pk INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    patient_pk INTEGER NOT NULL REFERENCES patient (patient_pk),
    study_date TEXT,
    study_time TEXT,
    study_description TEXT,
    accession_number TEXT,
    referring_physician TEXT,
    study_id TEXT,
    UNIQUE (study_uid, patient_pk)
);
CREATE TABLE IF NOT EXISTS series (
    series_pk INTEGER PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_pk INTEGER NOT NULL REFERENCES study (study_pk),
    modality TEXT,
    body_part TEXT,
    series_number INTEGER,
    series_description TEXT,
    UNIQUE (series_uid, study_pk)
);
CREATE TABLE IF NOT EXISTS instance (
    sop_instance_uid TEXT PRIMARY KEY,
    series_pk INTEGER NOT NULL REFERENCES series (series_pk),
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    file_size BIGINT NOT NULL,
    digest TEXT NOT NULL,
    received_at TEXT NOT NULL,
    calling_ae TEXT,
    called_ae TEXT,
    path TEXT NOT NULL UNIQUE,
    rebuilt INTEGER
);
"""
#: The indexes searches use, made with the tables and again at every open of the
#: index by its writer (``IF NOT EXISTS``): an index added here reaches an existing
#: archive of the same schema version without a reindex, and older dicomstores read
#: it unchanged. None is on ``instance`` beyond the two the schema had: an index
#: there costs every C-STORE. ``patient_name_nocase_idx`` serves PN wildcard
#: matching (``LIKE``, ASCII case-insensitive, so only a NOCASE index can narrow
#: it to a prefix range); ``series_study_modality_idx`` answers "does this study
#: hold a series of modality M" (``ModalitiesInStudy``) from the index alone.
INDEXES = """
CREATE INDEX IF NOT EXISTS patient_name_idx ON patient (patient_name);
CREATE INDEX IF NOT EXISTS patient_name_nocase_idx ON patient (patient_name COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS study_patient_idx ON study (patient_pk);
CREATE INDEX IF NOT EXISTS study_date_idx ON study (study_date);
CREATE INDEX IF NOT EXISTS study_accession_idx ON study (accession_number);
CREATE INDEX IF NOT EXISTS series_study_idx ON series (study_pk);
CREATE INDEX IF NOT EXISTS series_modality_idx ON series (modality);
CREATE INDEX IF NOT EXISTS series_study_modality_idx ON series (study_pk, modality);
CREATE INDEX IF NOT EXISTS instance_series_idx ON instance (series_pk);
CREATE INDEX IF NOT EXISTS instance_class_idx ON instance (sop_class_uid);
"""
#: The index of the instances' arrival times, which the node watching the other
#: nodes' stores reads every 2 s (``services/arrivals.py``): made by that node once
#: another node lives (:func:`arrivals_indexed`), not with the tables, since every
#: C-STORE updates it (within the noise to ~5% of the archive's own CPU per instance
#: at 1,000,000 rows), which one node alone never needs. Without it a look reads the
#: whole instance table (at 1,000,000 instances 0.15 s on SQLite, 0.23 s on
#: PostgreSQL), with it 2 ms and 8 ms (review92's measures, 1,501 rows a look).
ARRIVALS_INDEX = "CREATE INDEX IF NOT EXISTS instance_received_idx ON instance (received_at);"


def arrivals_indexed(engine: Any, timeout: float) -> bool:
    """Make :data:`ARRIVALS_INDEX` unless the index of ``engine`` has it, usable, on a
    writer connection of its own (a node's writer belongs to its stores); True when
    made now (``engine.build_index``: ``IndexNotBuilt`` on a large SQLite index)."""
    db = engine.writer(durable=True, timeout=timeout)
    try:
        return bool(engine.build_index(db, ARRIVALS_INDEX))
    finally:
        db.close()


#: The instances committed before their files were flushed, by batch (``publish.py``:
#: the flush after the COMMIT): a start verifies those still listed against their
#: digests (``recovery.verify_unflushed``). Made at every open of the index by its
#: writer, so that it reaches an archive made by an older dicomstore (which ignores it).
UNFLUSHED = """
CREATE TABLE IF NOT EXISTS unflushed (
    batch TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    PRIMARY KEY (batch, sop_instance_uid)
);
"""
#: The SOP Instance UIDs a data set other than the stored copy was last sent under,
#: answered B000 (or A900: filed elsewhere, review91 D1) with that copy kept
#: (``--on-duplicate keep``: ``publish.py``), and when: Storage Commitment commits
#: none of them (``commitment.py``, review101 H2: the sender would delete the data set
#: the archive never stored) until the UID is stored again (replaced, or deleted and
#: sent again), which strikes it off (``Index.resolved``).
#: Made at every open of the index by its writer (an older dicomstore ignores it).
CONFLICTS = """
CREATE TABLE IF NOT EXISTS conflict (
    sop_instance_uid TEXT NOT NULL PRIMARY KEY,
    sent_at TEXT NOT NULL,
    calling_ae TEXT
);
"""
#: The count of rewrites (``parentcache.py``): one row, incremented by each transaction
#: that deletes or changes a patient/study/series/instance row or files a UID under a
#: second parent, read at each writer transaction's start. Made at every open of the
#: index by its writer when absent (an index of schema 2 to 4), before it is stamped.
REWRITES = """
CREATE TABLE IF NOT EXISTS rewrites (
    one INTEGER NOT NULL PRIMARY KEY CHECK (one = 1),
    n BIGINT NOT NULL
);
INSERT INTO rewrites (one, n) VALUES (1, 0) ON CONFLICT (one) DO NOTHING;
"""
#: The flag of the instance rows a rebuild of the index from the files made, no
#: arrivals (``rebuild.py``; NULL: an arrival, so that every store, a replace too,
#: clears it: ``UPSERT_INSTANCE``). Added by the writer that opens an index of schema
#: 2 to 6, before it is stamped 7; schema 6's mark (a time, the table ``rebuilt``)
#: flags the rows received by it, as that dicomstore took them, and is dropped.
REBUILT = """
ALTER TABLE instance ADD COLUMN rebuilt INTEGER;
UPDATE instance SET rebuilt = 1 WHERE received_at <= (SELECT MAX(received_at) FROM rebuilt);
DROP TABLE rebuilt;
"""
#: (Of an index of an older schema, dropped:) SOP Instance UID -> (path, received_at)
#: as its rows had them, for :func:`create_or_migrate`'s rebuild from the files.
Arrivals = dict[str, tuple[str, str]]
INDEX_NAMES = tuple(line.split()[5] for line in INDEXES.split(";") if "CREATE INDEX" in line)

#: Columns of each table, in insertion order (the first one is the key).
TABLES: dict[str, tuple[str, ...]] = {
    "patient": ("patient_pk", "patient_id", "issuer", "scope", "patient_name", "birth_date", "sex"),
    "study": (
        "study_pk",
        "study_uid",
        "patient_pk",
        "study_date",
        "study_time",
        "study_description",
        "accession_number",
        "referring_physician",
        "study_id",
    ),
    "series": (
        "series_pk",
        "series_uid",
        "study_pk",
        "modality",
        "body_part",
        "series_number",
        "series_description",
    ),
    "instance": (
        "sop_instance_uid",
        "series_pk",
        "sop_class_uid",
        "instance_number",
        "transfer_syntax_uid",
        "file_size",
        "digest",
        "received_at",
        "calling_ae",
        "called_ae",
        "path",
        "rebuilt",
    ),
}
#: The tables above ``instance``, whose rows the writer caches.
PARENTS = ("patient", "study", "series")
#: The surrogate key of each parent table, and the column naming it one level below.
PK = {"patient": "patient_pk", "study": "study_pk", "series": "series_pk"}
#: What identifies a row of each parent table (its UNIQUE constraint).
NATURAL_KEY = {
    "patient": ("patient_id", "issuer", "scope"),
    "study": ("study_uid", "patient_pk"),
    "series": ("series_uid", "study_pk"),
}
#: The values each parent table keeps beside its keys.
ATTRS = {t: tuple(c for c in TABLES[t][1:] if c not in NATURAL_KEY[t]) for t in PARENTS}
#: Internal columns, never part of a row returned to a reader.
HIDDEN = frozenset((*PK.values(), "scope", "rebuilt"))
ALIAS = {"patient": "p", "study": "st", "series": "se", "instance": "i"}
#: Every key of a row as returned by queries -> its qualified column.
ROW_COLUMNS: dict[str, str] = {}
for _table, _columns in TABLES.items():
    for _column in _columns:
        if _column not in HIDDEN:
            ROW_COLUMNS.setdefault(_column, f"{ALIAS[_table]}.{_column}")
#: Keys that may never be NULL in a row (missing ones are stored as '').
KEYS = ("patient_id", "issuer", "study_uid", "series_uid")

FROM_JOIN = (
    " FROM instance i"
    " JOIN series se ON se.series_pk = i.series_pk"
    " JOIN study st ON st.study_pk = se.study_pk"
    " JOIN patient p ON p.patient_pk = st.patient_pk"
)
SELECT_ROWS = "SELECT " + ", ".join(ROW_COLUMNS.values()) + FROM_JOIN
ORDER_ROWS = "st.study_uid, se.series_uid, i.instance_number, i.sop_instance_uid"
SELECT_ONE = f"{SELECT_ROWS} WHERE i.sop_instance_uid = ?"
ROW_KEYS = list(ROW_COLUMNS)


def upsert_parent(table: str, *, returning: bool) -> str:
    """INSERT … ON CONFLICT (natural key) DO UPDATE, keeping known values where the
    new ones are NULL; ``returning``: the surrogate key and the values as stored
    afterwards (``RETURNING``, SQLite ≥ 3.35, PostgreSQL)."""
    natural, attrs = NATURAL_KEY[table], ATTRS[table]
    columns = (*natural, *attrs)
    sets = ", ".join(f"{c} = COALESCE(excluded.{c}, {table}.{c})" for c in attrs)
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        f" ON CONFLICT ({', '.join(natural)}) DO UPDATE SET {sets}"
    )
    return sql + (f" RETURNING {PK[table]}, {', '.join(attrs)}" if returning else "")


INSTANCE_COLUMNS = TABLES["instance"]
UPSERT_INSTANCE = (
    f"INSERT INTO instance ({', '.join(INSTANCE_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in INSTANCE_COLUMNS)})"
    " ON CONFLICT (sop_instance_uid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in INSTANCE_COLUMNS[1:])
)
UPSERTS = {t: upsert_parent(t, returning=False) for t in PARENTS}
UPSERTS_RETURNING = {t: upsert_parent(t, returning=True) for t in PARENTS}
SELECT_PARENT = {
    t: f"SELECT {PK[t]}, {', '.join(ATTRS[t])} FROM {t} WHERE "
    + " AND ".join(f"{c} = ?" for c in NATURAL_KEY[t])
    for t in PARENTS
}
#: Relational checks (see :meth:`Index.conflict`): another study holding the
#: series, another patient holding the study; instances of the same SOP Instance
#: UID (the one a replace replaces) do not count.
SERIES_ELSEWHERE = (
    "SELECT st.study_uid FROM series se JOIN study st ON st.study_pk = se.study_pk"
    " WHERE se.series_uid = ? AND st.study_uid <> ? AND EXISTS (SELECT 1 FROM instance i"
    " WHERE i.series_pk = se.series_pk AND i.sop_instance_uid <> ?) LIMIT 1"
)
STUDY_ELSEWHERE = (
    "SELECT p.patient_id, p.issuer FROM study st JOIN patient p ON p.patient_pk = st.patient_pk"
    " WHERE st.study_uid = ? AND NOT (p.patient_id = ? AND p.issuer = ? AND p.scope = ?)"
    " AND EXISTS (SELECT 1 FROM series se JOIN instance i ON i.series_pk = se.series_pk"
    " WHERE se.study_pk = st.study_pk AND i.sop_instance_uid <> ?) LIMIT 1"
)


def patient_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """(Patient ID, Issuer of Patient ID, scope) of a row: who the patient is.

    An empty Patient ID is scoped to the study, never shared across studies."""
    patient_id = row.get("patient_id") or ""
    return patient_id, row.get("issuer") or "", "" if patient_id else row.get("study_uid") or ""


class SchemaError(RuntimeError):
    """The index was made by another version of dicomstore."""


def create_or_migrate(engine: Any, db: Any, where: str, *, migrate: bool) -> Arrivals | None:
    """Make the tables and indexes of this version in the index ``db`` of ``engine``
    (``engine.Engine``; ``where`` names it in messages). When the tables of an older
    schema were dropped and made anew (``migrate``), to be filled from the files:
    what its instance rows said of their arrival (:func:`_arrivals`), else None.
    Raises :class:`SchemaError` for a newer schema, or an older one without
    ``migrate``."""
    version = engine.version(db)
    if version == SCHEMA_VERSION or version in SAME_TABLES:
        if not set(INDEX_NAMES) <= engine.index_names(db):  # indexes added since
            engine.create(db, engine.ddl(INDEXES), None)
        tables = engine.table_names(db)
        if "unflushed" not in tables:  # (added since, too)
            engine.create(db, engine.ddl(UNFLUSHED), None)
        if "conflict" not in tables:  # (added since, too)
            engine.create(db, engine.ddl(CONFLICTS), None)
        if "rewrites" not in tables:  # (schema 5: made before the stamp says it is)
            engine.create(db, engine.ddl(REWRITES), None)
        if version != SCHEMA_VERSION:  # the same tables: a new stamp, before this
            # writer records a digest an older dicomstore would take for damage (even
            # `check`'s recovery, which opens without ``migrate``, adopts files), or
            # writes what an older one would rewrite without counting, or flags rows
            # an older one would ignore
            _add_rebuilt(engine, db, tables)
        return None
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{where}: index schema {version} is newer than this dicomstore's ({SCHEMA_VERSION})"
        )
    drop, arrivals = "", None
    if version:  # an older schema: the files are the truth, the index is rebuilt
        if not migrate:
            raise SchemaError(
                f"{where}: index schema {version} is older than {SCHEMA_VERSION}:"
                " run `dicomstore reindex` (or start `dicomstore serve` once)"
            )
        arrivals = _arrivals(engine, db)
        # (a node's journal left by a crash is replayed after this, at start-up:
        # its replay tells a lost COMMIT from a delete by the rows and ``unflushed``,
        # both dropped here. The next schema change must replay first, or keep them)
        drop = "".join(f"DROP TABLE IF EXISTS {t};" for t in ("unflushed", *reversed(TABLES)))
    tables = SCHEMA + INDEXES + UNFLUSHED + CONFLICTS + REWRITES
    engine.create(db, drop + engine.ddl(tables), SCHEMA_VERSION)
    return arrivals


def _add_rebuilt(engine: Any, db: Any, tables: set[str]) -> None:
    """The column ``instance.rebuilt`` added to an index of schema 2 to 6 (schema 6's
    mark turned into flags: :data:`REBUILT`), stamped :data:`SCHEMA_VERSION`; one
    transaction (a writer opening it meanwhile: already done, or stamped after)."""
    if "rebuilt" in instance_columns(db):  # (a writer stopped before its stamp)
        engine.create(db, "", SCHEMA_VERSION)
        return
    script = REBUILT if "rebuilt" in tables else REBUILT.split(";")[0] + ";"
    try:
        engine.create(db, engine.ddl(script), SCHEMA_VERSION)
    except Exception:
        if engine.in_transaction(db):  # (SQLite's script stopped at its failed ALTER)
            db.execute("ROLLBACK")
        if "rebuilt" not in instance_columns(db):  # (not another writer's, just before)
            raise
        engine.create(db, "", SCHEMA_VERSION)


def instance_columns(db: Any) -> set[str]:
    """The columns the index's instance table has (an index of an older schema: fewer)."""
    return {d[0] for d in db.execute("SELECT * FROM instance LIMIT 0").description}


def _arrivals(engine: Any, db: Any) -> Arrivals:
    """What the instance rows of an index of an older schema say of each instance's
    arrival (schema 1's have ``path`` and ``received_at``; none if they do not): the
    receive order its rebuild keeps (review58 H2: the file whose study sorted last gave
    each patient's name, a correction undone)."""
    if "instance" not in engine.table_names(db):
        return {}
    if not {"sop_instance_uid", "path", "received_at"} <= instance_columns(db):
        return {}
    sql = "SELECT sop_instance_uid, path, received_at FROM instance"
    return {uid: (path, at) for uid, path, at in db.execute(sql)}
