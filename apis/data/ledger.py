"""The answer ledger: every point ever asked, kept in an SQLite database.

Each annotator answer (annotation id, pixel ``(x, y)``, label 1 / 0 / -1 "unsure", step, how the
point was chosen, who answered, when, and its cost in seconds) is one row of ``answers``. The
candidate boxes of the instances live in ``instances`` so that an answer can be checked before it
is stored. ``P(s)``, the point set of step ``s``, is every answer with ``step <= s``.

Schema version 2 adds the tables of questions waiting for people (``ledger_info``, ``questions``,
``responses``, ``leases``; used by :mod:`apis.data.questions`). Schema version 3 adds ``masks``: the full
masks an AFIS run bought (:mod:`apis.loop.bought_masks`), one row per instance with its step and cost. Schema version 4
adds ``annotator_tokens``: the SHA-256 of each named annotator's random token for ``apis annotate``, never the
token itself. An older ledger is upgraded in place when opened for writing: the new tables are created empty
and nothing stored before changes; opened read-only it reads as having no masks and no named tokens. A ledger
of any other version is refused (:class:`LedgerError`), never changed.

Durability: the database runs in WAL mode with ``synchronous=FULL`` and each :meth:`PointLedger.record`
call is one transaction, so a crash (even SIGKILL) loses at most the batch being written, never part
of one. A transaction SQLite cannot write (a full disk: "database or disk is full") is rolled back whole and
raised as :class:`apis.utils.io.WriteFailed` naming the file and the answers it keeps. Each :class:`PointLedger`
owns its connection; open one per thread or process.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from apis.data.coords import point_in_box
from apis.data.points import POINT_LABELS, InstancePoints, group_points, write_pointsup
from apis.utils.errors import ApisError
from apis.utils.io import WriteFailed

SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    ann_id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL,
    x0 REAL NOT NULL,
    y0 REAL NOT NULL,
    x1 REAL NOT NULL,
    y1 REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ann_id INTEGER NOT NULL REFERENCES instances (ann_id),
    image_id INTEGER NOT NULL,
    x INTEGER NOT NULL,
    y INTEGER NOT NULL,
    label INTEGER NOT NULL CHECK (label IN (1, 0, -1)),
    step INTEGER NOT NULL CHECK (step >= 0),
    chosen_by TEXT NOT NULL,
    annotator TEXT NOT NULL,
    answered_at TEXT NOT NULL,
    cost_s REAL NOT NULL CHECK (cost_s >= 0),
    UNIQUE (ann_id, x, y)
);
CREATE INDEX IF NOT EXISTS answers_by_step_and_label ON answers (step, annotator, label, cost_s);
"""
# ``answers_by_step_and_label`` covers the per-step totals of ``apis status``: they are summed from the index
# alone, without reading the table (ten COCO steps, 8.3 M answers: about a second, docs/scaling.md). Ledgers
# made before it have an index on ``step`` alone and get this one the first time they are opened for writing.

# Version 2: questions put to people (apis.data.questions). A question is one (instance, point) of a step;
# each person's answer to it is a row of ``responses`` (an undone one keeps its row, with ``undone_at`` set);
# a lease hands a question to one annotator until ``expires_at`` (unix seconds). When every question of a
# step has its answers, they are merged into one ``answers`` row each, the table training reads.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS ledger_info (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS questions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    step INTEGER NOT NULL CHECK (step >= 0),
    position INTEGER NOT NULL,
    ann_id INTEGER NOT NULL REFERENCES instances (ann_id),
    image_id INTEGER NOT NULL,
    x INTEGER NOT NULL,
    y INTEGER NOT NULL,
    chosen_by TEXT NOT NULL,
    answers_wanted INTEGER NOT NULL DEFAULT 1 CHECK (answers_wanted >= 1),
    complete INTEGER NOT NULL DEFAULT 0,
    UNIQUE (ann_id, x, y),
    UNIQUE (step, position)
);
CREATE INDEX IF NOT EXISTS questions_open ON questions (complete, step, position);
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    question_id INTEGER NOT NULL REFERENCES questions (id),
    annotator TEXT NOT NULL,
    label INTEGER NOT NULL CHECK (label IN (1, 0, -1)),
    seconds REAL NOT NULL CHECK (seconds >= 0),
    answered_at TEXT NOT NULL,
    source TEXT NOT NULL,
    undone_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_response_per_annotator ON responses (question_id, annotator)
    WHERE undone_at IS NULL;
CREATE INDEX IF NOT EXISTS responses_by_annotator ON responses (annotator, id);
CREATE TABLE IF NOT EXISTS leases (
    question_id INTEGER NOT NULL REFERENCES questions (id),
    annotator TEXT NOT NULL,
    granted_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (question_id, annotator)
);
"""
# Version 3: full masks bought by an AFIS run (apis.loop.bought_masks); the mask itself is the dataset's GT mask.
_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS masks (
    ann_id INTEGER PRIMARY KEY REFERENCES instances (ann_id),
    image_id INTEGER NOT NULL,
    step INTEGER NOT NULL CHECK (step >= 0),
    chosen_by TEXT NOT NULL,
    annotator TEXT NOT NULL,
    answered_at TEXT NOT NULL,
    cost_s REAL NOT NULL CHECK (cost_s >= 0)
);
"""
# Version 4: the named annotators of `apis annotate` (apis.data.questions): each one's token is a random secret
# shown once; only its SHA-256 is kept, so the ledger (or a backup of it) cannot be used to log in.
_SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS annotator_tokens (
    annotator TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
"""
# Versions this code opens; older ones are upgraded by creating the tables they lack.
_READABLE_VERSIONS = ([1], [2], [3], [SCHEMA_VERSION])
# The tables a ledger of each version has (a missing one means a damaged file, which is never recreated).
_TABLES = {1: ("schema_version", "instances", "answers")}
_TABLES[2] = (*_TABLES[1], "ledger_info", "questions", "responses", "leases")
_TABLES[3] = (*_TABLES[2], "masks")
_TABLES[4] = (*_TABLES[3], "annotator_tokens")


class LedgerError(ApisError):
    """The ledger file is unreadable, corrupt or does not fit its run; the message names the file and what to do."""


def _disk_full(error: BaseException) -> bool:
    """Whether SQLite could not write for want of space: SQLITE_FULL, which it reports for the system's ENOSPC and
    EDQUOT (and for ``max_page_count``). Matched on its message: Python 3.10 has no ``sqlite_errorcode``."""
    return isinstance(error, sqlite3.Error) and "database or disk is full" in str(error)


def utc_now() -> str:
    """The current time as ISO-8601 UTC, e.g. ``2024-05-01T12:00:00.123456+00:00``."""
    return datetime.now(timezone.utc).isoformat()


def _check_record(record, where: Callable[[], str], integer_fields: tuple[str, ...]) -> None:
    """Normalise and check the fields an :class:`Answer` and a :class:`BoughtMask` share (frozen dataclasses:
    the integers and ``cost_s`` are coerced in place); ``where()`` names the record in the error. Fields of the
    right type already are left alone: this runs for every answer of a step, 860k at COCO scale."""
    try:
        for name in integer_fields:
            value = getattr(record, name)
            if type(value) is not int:
                object.__setattr__(record, name, operator.index(value))
        if type(record.cost_s) is not float:
            object.__setattr__(record, "cost_s", float(record.cost_s))
    except TypeError as error:
        raise ValueError(f"{where()}: {error}") from None
    if record.step < 0:
        raise ValueError(f"{where()}: step {record.step} is negative")
    if not (math.isfinite(record.cost_s) and record.cost_s >= 0):
        raise ValueError(f"{where()}: cost_s {record.cost_s} is not a non-negative number")
    for name in ("chosen_by", "annotator"):
        if not isinstance(getattr(record, name), str) or not getattr(record, name):
            raise ValueError(f"{where()}: {name} must be a non-empty string")
    text = record.answered_at
    problem = _utc_time_problem(text) if isinstance(text, str) else "is not an ISO-8601 time"
    if problem:
        raise ValueError(f"{where()}: answered_at {record.answered_at!r} {problem}")


@functools.lru_cache(maxsize=1024)  # a batch of answers mostly shares its time
def _utc_time_problem(text: str) -> str | None:
    """What is wrong with ``text`` as an ISO-8601 UTC time, or None."""
    try:
        offset = datetime.fromisoformat(text).utcoffset()
    except ValueError:
        return "is not an ISO-8601 time"
    return None if offset is not None and offset.total_seconds() == 0 else "is not in UTC"


@dataclass(frozen=True)
class Answer:
    """One annotator answer: is pixel ``(x, y)`` (integer indices) on instance ``ann_id``?

    ``label``: 1 on the object, 0 background, -1 unsure. ``chosen_by``: how the point was picked
    ("p0-random", "random", "entropy", ...); ``annotator``: "simulated-oracle" or a person's name.
    Integer-like numpy scalars are accepted and stored as Python ints.
    """

    ann_id: int
    image_id: int
    x: int
    y: int
    label: int
    step: int
    chosen_by: str
    annotator: str
    cost_s: float
    answered_at: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _check_record(self, self._where, ("ann_id", "image_id", "x", "y", "label", "step"))
        if self.label not in POINT_LABELS:
            raise ValueError(f"{self._where()}: label {self.label} is not one of {POINT_LABELS}")

    def _where(self) -> str:
        return f"answer for annotation {self.ann_id} at point ({self.x}, {self.y})"

    @classmethod
    def _stored(cls, row: tuple) -> Answer:
        """An answer read back from the ledger, a row in field order. It was checked when it was recorded, so it
        is not checked again: checking is most of the cost of reading a step's 860k answers back at COCO scale."""
        answer = object.__new__(cls)
        answer.__dict__.update(zip(_ANSWER_FIELDS, row))
        return answer


@dataclass(frozen=True)
class BoughtMask:
    """The full mask of instance ``ann_id``, bought at ``step`` (AFIS): how it was chosen (``"afis-random"``,
    ``"afis-min-det-loss"``, ...), who drew it, when, and its cost in seconds."""

    ann_id: int
    image_id: int
    step: int
    chosen_by: str
    annotator: str
    cost_s: float
    answered_at: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _check_record(self, lambda: f"mask of annotation {self.ann_id}", ("ann_id", "image_id", "step"))


_MASK_FIELDS = tuple(f.name for f in fields(BoughtMask))
_MASK_COLUMNS = ", ".join(_MASK_FIELDS)
# The answers table has one column per Answer field, so rows map to Answers in field order.
_ANSWER_FIELDS = tuple(f.name for f in fields(Answer))
_ANSWER_COLUMNS = ", ".join(_ANSWER_FIELDS)
# A record's row, field by field (dataclasses.astuple deep-copies every field: it was the slowest part of
# recording a COCO step).
_answer_row = operator.attrgetter(*_ANSWER_FIELDS)
_mask_row = operator.attrgetter(*_MASK_FIELDS)
# Ids per "WHERE ann_id IN (...)" query: under SQLite's smallest limit on parameters (999).
_IDS_PER_QUERY = 900


class PointLedger:
    """An SQLite file holding the instances' boxes and every answer; see the module docstring."""

    def __init__(self, path: str | Path, read_only: bool = False, check_integrity: bool = True) -> None:
        """Open (or create) the ledger at ``path``; with ``read_only``, open an existing one without writing
        anything, even in a folder that cannot be written (a finished run kept read-only).

        An existing file is checked before anything is written to it: a file SQLite cannot read whole, an empty
        one, one of an unknown schema version or one missing a table of its version is a :class:`LedgerError`
        naming it, and is left as it was (never recreated or "repaired").

        ``check_integrity``: read the whole file first (SQLite's ``quick_check``, seconds for a COCO run's ledger),
        so that a damaged file is refused before any work. Only a command that reads a few totals and writes
        nothing (``apis status``) goes without; SQLite still refuses a file that is not a database."""
        self.path = Path(path)
        self.read_only = read_only
        existed = self.path.is_file()
        if existed and self.path.stat().st_size == 0:
            raise LedgerError(f"{self.path}: the file is empty (0 bytes), not an answer ledger. Nothing was changed; "
                              "restore it from a backup, or move it aside and run again")
        # isolation_level=None: no implicit transactions; record() and register_instances() open
        # their own with BEGIN IMMEDIATE so validation and writing see the same database state.
        if read_only:
            self._conn = self._connect_read_only()
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise WriteFailed(f"{self.path.parent}: could not be created ({error.strerror or error}); "
                                  "nothing was written") from error
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            if check_integrity:
                self._check_integrity()
            if existed:
                self._check_tables(self._check_version())
            if not read_only:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._create_schema()
        except BaseException as error:
            failure = self._open_failure(error, existed)
            self._conn.close()
            if isinstance(failure, WriteFailed) and not existed:
                # A new ledger holds nothing yet: removed, so that the same command starts it again once there
                # is space, rather than refusing an empty or half-made file.
                for suffix in ("", "-wal", "-shm"):
                    self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            if failure is error:
                raise
            raise failure from error

    def _open_failure(self, error: BaseException, existed: bool) -> BaseException:
        """What opening the ledger raises for ``error``: a file SQLite cannot read is a :class:`LedgerError`, one
        it cannot write for want of space a :class:`WriteFailed`; anything else as it is."""
        if isinstance(error, sqlite3.DatabaseError) and not (_disk_full(error) and not self.read_only):
            return LedgerError(f"{self.path}: not a readable answer ledger ({error}). Nothing was changed; restore "
                               "the file from a backup, or move it aside and start the run again in a new "
                               "output_dir")
        if isinstance(error, (sqlite3.DatabaseError, WriteFailed)) and not existed:
            cause = error.__cause__ if isinstance(error, WriteFailed) else error
            return WriteFailed(f"{self.path}: could not be created ({cause}); nothing was stored, and the new file "
                               "was removed. Free space, then run the same command again")
        if isinstance(error, sqlite3.DatabaseError):
            return self._write_failed(error)
        return error

    def _write_failed(self, error: sqlite3.Error) -> WriteFailed:
        """The error for a transaction SQLite could not write (rolled back whole): what the ledger still holds."""
        try:
            answers = self.answer_count()
            kept = f"the {answers} answer(s) stored before it are kept"
            if self.has_table("responses"):
                responses = self._conn.execute("SELECT COUNT(*) FROM responses WHERE undone_at IS NULL").fetchone()[0]
                kept += f", with the {responses} response(s) people gave" if responses else ""
        except sqlite3.Error:  # closed, or unreadable too: say only what SQLite promises
            kept = "everything stored before it is kept"
        return WriteFailed(f"{self.path}: could not be written ({error}); this change was rolled back whole and "
                           f"{kept}. Free space, then run the same command again to go on")

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that never writes, and creates nothing beside the file. A ledger that no process has open
        for writing has no WAL files (a writer makes them, and removes them when it closes): it is opened as
        immutable, so SQLite makes no WAL or shared-memory file for the reader either, and a read-only folder
        needs none. One being written (its WAL files exist) is read through them, seeing every commit."""
        if not self.path.is_file():
            raise LedgerError(f"{self.path}: no ledger (is {self.path.parent} a run directory?)")
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        wal, shm = (self.path.with_name(f"{self.path.name}-{suffix}") for suffix in ("wal", "shm"))
        if not (wal.exists() or shm.exists()):
            uri += "&immutable=1"
        elif not os.access(self.path.parent, os.W_OK):
            if wal.is_file() and wal.stat().st_size > 0:
                raise LedgerError(f"{self.path}: answers of an interrupted run are still in {wal}; make "
                                  f"{self.path.parent} writable and run the same command again to merge them")
            uri += "&immutable=1"
        return sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)

    def _check_version(self) -> int:
        """The schema version the file records; LedgerError unless it is one this code reads."""
        if not self.has_table("schema_version"):
            raise LedgerError(f"{self.path}: no schema_version table, so not an answer ledger (or a damaged one). "
                              "Nothing was changed; restore it from a backup, or move it aside and run again")
        versions = [row[0] for row in self._conn.execute("SELECT version FROM schema_version")]
        if versions not in _READABLE_VERSIONS:
            raise LedgerError(f"{self.path}: ledger schema version {versions}, expected {SCHEMA_VERSION} (or "
                              "an older one); was it written by a newer APIS? Nothing was changed")
        return versions[0]

    def _check_tables(self, version: int) -> None:
        missing = [name for name in _TABLES[version] if not self.has_table(name)]
        if missing:
            raise LedgerError(f"{self.path}: a version-{version} ledger without its table(s) {', '.join(missing)}: "
                              "it is damaged. Nothing was changed; restore it from a backup, or move it aside "
                              "and start the run again in a new output_dir")

    def has_table(self, name: str) -> bool:
        """Whether the ledger has table ``name`` (one opened read-only may predate it)."""
        return self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                  (name,)).fetchone() is not None

    def _check_integrity(self) -> None:
        """Raise on a file SQLite cannot read whole (truncated, overwritten): checked at open, not mid-run."""
        problems = [row[0] for row in self._conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems[:3]))

    def instance_ids(self) -> set[int]:
        """The annotation ids of every registered instance."""
        return {row[0] for row in self._conn.execute("SELECT ann_id FROM instances")}

    def steps(self) -> set[int]:
        """The steps that have at least one stored answer."""
        return {row[0] for row in self._conn.execute("SELECT DISTINCT step FROM answers")}

    def _create_schema(self) -> None:
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            versions = [row[0] for row in self._conn.execute("SELECT version FROM schema_version")]
            for statement in (_SCHEMA_V2 + _SCHEMA_V3 + _SCHEMA_V4).split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            if versions != [SCHEMA_VERSION]:  # a new ledger, or an older one now upgraded
                self._conn.execute("DELETE FROM schema_version")
                self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` when the block (or the commit) raises.

        Raises:
            WriteFailed: SQLite could not write the transaction (a full disk): it is rolled back whole, and the
                message names the file and what it keeps.
        """
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException as error:
            if self._conn.in_transaction:  # SQLite has rolled back already after some failures (a full disk)
                self._conn.execute("ROLLBACK")
            if _disk_full(error):
                raise self._write_failed(error) from error
            raise

    def register_instances(self, rows: Iterable[tuple[int, int, Sequence[float], int, int]]) -> int:
        """Store ``(ann_id, image_id, bbox_xyxy, width, height)`` rows; returns how many were new.

        Registering an instance again with the same values is a no-op; with different values it is
        a ValueError naming the annotation id (nothing from the call is stored).
        """
        checked: dict[int, tuple] = {}
        for ann_id, image_id, bbox_xyxy, width, height in rows:
            row = (operator.index(ann_id), operator.index(image_id), *(float(v) for v in bbox_xyxy),
                   operator.index(width), operator.index(height))
            if len(row) != 8:
                raise ValueError(f"{self.path}: instance {ann_id}: bbox_xyxy must have 4 numbers, "
                                 f"got {bbox_xyxy}")
            if row[6] <= 0 or row[7] <= 0:
                raise ValueError(f"{self.path}: instance {ann_id}: image size {width}x{height} is not positive")
            if checked.setdefault(row[0], row) != row:
                raise ValueError(f"{self.path}: instance {ann_id} is given twice, as {checked[row[0]]} and {row}")
        with self._transaction():
            stored = self._instance_rows(checked)
            for ann_id, row in checked.items():
                if ann_id in stored and stored[ann_id] != row:
                    raise ValueError(f"{self.path}: instance {ann_id} is already registered as {stored[ann_id]}, "
                                     f"not {row}")
            new = [row for ann_id, row in checked.items() if ann_id not in stored]
            self._conn.executemany("INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?)", new)
        return len(new)

    def _instance_rows(self, ann_ids: Iterable[int]) -> dict[int, tuple]:
        """``ann_id -> (ann_id, image_id, x0, y0, x1, y1, width, height)`` of those of ``ann_ids`` registered."""
        ids = list(ann_ids)
        rows: dict[int, tuple] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start:start + _IDS_PER_QUERY]
            rows.update((row[0], row) for row in self._conn.execute(
                "SELECT ann_id, image_id, x0, y0, x1, y1, width, height FROM instances "
                f"WHERE ann_id IN ({', '.join('?' * len(chunk))})", chunk))
        return rows

    def record(self, answers: Sequence[Answer]) -> int:
        """Store a batch of answers in one transaction; returns how many were new.

        Every answer is checked first: its annotation must be registered, with the same image id,
        and its point must be a candidate of the instance's box. Any failure raises ValueError naming
        the annotation and the point, and nothing of the batch is stored. An ``(ann_id, x, y)``
        already stored (or repeated within the batch) is skipped: the first answer is kept.
        """
        with self._transaction():
            return self._insert_answers(answers)

    def _insert_answers(self, answers: Sequence[Answer]) -> int:
        """:meth:`record` inside a transaction the caller holds."""
        self._check(answers)
        cursor = self._conn.executemany(
            f"INSERT INTO answers ({_ANSWER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (ann_id, x, y) DO NOTHING",
            map(_answer_row, answers))
        return max(cursor.rowcount, 0)

    def _check(self, points: Sequence) -> None:
        """Raise ValueError at the first of ``points`` (answers, or anything with ``ann_id``, ``image_id``, ``x``,
        ``y``, such as the questions of :mod:`apis.data.questions`) that is not a candidate point of a
        registered instance, naming it. The instances are read in one pass, not one query per point."""
        instances = self._instance_rows({point.ann_id for point in points})
        for point in points:
            where = f"{self.path}: annotation {point.ann_id} at point ({point.x}, {point.y})"
            instance = instances.get(point.ann_id)
            if instance is None:
                raise ValueError(f"{where}: annotation {point.ann_id} is not registered")
            _, image_id, x0, y0, x1, y1, width, height = instance
            if point.image_id != image_id:
                raise ValueError(f"{where}: image id {point.image_id}, but the annotation is on image {image_id}")
            if not point_in_box(point.x, point.y, x0, y0, x1, y1, width, height):
                raise ValueError(f"{where}: the point is not a candidate of box ({x0}, {y0}, {x1}, {y1}) "
                                 f"in the {width}x{height} image")

    def answers(self, max_step: int | None = None) -> list[Answer]:
        """Stored answers with ``step <= max_step`` (all when None), in the order they were stored."""
        rows = self._conn.execute(
            f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE ? IS NULL OR step <= ? ORDER BY id",
            (max_step, max_step))
        return list(map(Answer._stored, rows))

    def step_answers(self, step: int) -> list[Answer]:
        """The answers of step ``step`` alone, in the order they were stored."""
        rows = self._conn.execute(f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE step = ? ORDER BY id", (step,))
        return list(map(Answer._stored, rows))

    def answer_count(self, max_step: int | None = None) -> int:
        """How many answers have ``step <= max_step`` (all when None)."""
        return self._conn.execute("SELECT COUNT(*) FROM answers WHERE ? IS NULL OR step <= ?",
                                  (max_step, max_step)).fetchone()[0]

    def points(self, max_step: int | None = None, include_unsure: bool = False) -> dict[int, InstancePoints]:
        """``P(max_step)`` keyed by annotation id, points in the order they were stored.

        Unsure (-1) answers are left out unless ``include_unsure``; instances left with no point are absent.
        """
        rows = self._conn.execute(
            "SELECT ann_id, x, y, label FROM answers WHERE (? IS NULL OR step <= ?) AND (? OR label != -1) "
            "ORDER BY id", (max_step, max_step, include_unsure))
        table = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64).reshape(-1, 4)
        return group_points(table[:, 0], table[:, 1:3], table[:, 3])

    def asked(self, ann_id: int | None = None) -> dict[int, set[tuple[int, int]]]:
        """Pixels ``(x, y)`` already asked per annotation id (unsure answers included), to exclude them
        from the candidates; only ``ann_id``'s entry when given. Instances never asked are absent."""
        rows = self._conn.execute("SELECT ann_id, x, y FROM answers WHERE ? IS NULL OR ann_id = ?",
                                  (ann_id, ann_id))
        asked: dict[int, set[tuple[int, int]]] = {}
        for row_ann_id, x, y in rows:
            asked.setdefault(row_ann_id, set()).add((x, y))
        return asked

    def last_step(self) -> int | None:
        """The highest step with a stored answer, None when the ledger has no answers."""
        return self._conn.execute("SELECT MAX(step) FROM answers").fetchone()[0]

    def total_cost_s(self, max_step: int | None = None) -> float:
        """Annotation seconds spent on answers and masks with ``step <= max_step`` (all when None)."""
        points = float(self._conn.execute(
            "SELECT COALESCE(SUM(cost_s), 0.0) FROM answers WHERE ? IS NULL OR step <= ?",
            (max_step, max_step)).fetchone()[0])
        return points + sum(mask.cost_s for mask in self.masks(max_step))

    def record_masks(self, masks: Sequence[BoughtMask]) -> int:
        """Store bought masks in one transaction; returns how many were new (an instance's mask is bought once:
        a repeated one is skipped). ValueError naming the annotation, and nothing stored, when one is not a
        registered instance of its image."""
        with self._transaction():
            instances = self._instance_rows({mask.ann_id for mask in masks})
            for mask in masks:
                instance = instances.get(mask.ann_id)
                if instance is None or instance[1] != mask.image_id:
                    raise ValueError(f"{self.path}: mask of annotation {mask.ann_id} on image {mask.image_id}: no "
                                     "such registered instance")
            cursor = self._conn.executemany(
                f"INSERT INTO masks ({_MASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (ann_id) DO NOTHING",
                map(_mask_row, masks))
            return max(cursor.rowcount, 0)

    def masks(self, max_step: int | None = None) -> list[BoughtMask]:
        """Masks bought at ``step <= max_step`` (all when None), by step then annotation id; none in a ledger
        older than schema version 3 opened read-only."""
        if not self.has_table("masks"):
            return []
        rows = self._conn.execute(f"SELECT {_MASK_COLUMNS} FROM masks WHERE ? IS NULL OR step <= ? "
                                  "ORDER BY step, ann_id", (max_step, max_step))
        return [BoughtMask(*row) for row in rows]

    def export_pointsup(self, coco_json: str | Path | dict, out_path: str | Path, step: int) -> int:
        """Write ``P(step)`` as a points-only PointSup json (masks dropped); returns the annotations written.

        ValueError when no answer was recorded at ``step``, which is most likely a wrong step number.
        """
        has_step = self._conn.execute("SELECT 1 FROM answers WHERE step = ? LIMIT 1", (step,)).fetchone()
        if has_step is None:
            raise LedgerError(f"{self.path}: no answers at step {step} (last step: {self.last_step()})")
        return write_pointsup(coco_json, self.points(max_step=step), out_path, drop_masks=True)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PointLedger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

