"""Point questions answered by people, over days, by several annotators (``oracle.kind=human``).

With a human oracle the loop does not call :meth:`~apis.loop.oracle.Oracle.answer`. It stores the step's
points as *questions* in the run's ledger (:meth:`QuestionQueue.post`) and stops (:class:`AnswersPending`);
people answer them through ``apis annotate`` (a web page) or a Label Studio round trip, each answer one row
of ``responses`` with its annotator and the seconds it took; once every question of the step has its
answers the loop, run again, merges them into the ledger's ``answers`` (:meth:`QuestionQueue.merge`) and
fine-tunes. Tables and their columns: :mod:`apis.data.ledger` (schema version 2); the workflow:
docs/annotate.md.

Rules kept by every method, inside one SQLite transaction each (so several server processes, the loop and
an import can work on one ledger at once):

* a question is handed to an annotator with a *lease* that expires (``lease_s``); while it runs, nobody
  else gets the question unless it wants more answers than it has answers and leases;
* an annotator answers a question at most once (a unique index; an undone answer keeps its row, marked
  ``undone_at``, and frees the question for that annotator again);
* a question is *complete* when it has ``answers_wanted`` answers (1 unless redundancy was asked for);
  unsure answers count as answers;
* a step is *merged* once its answers are in ``answers``; from then on its questions never change.

Merging several answers of one question (:func:`merge_labels`): the majority of the sure (yes / no)
answers; a tie, or no sure answer at all, gives "unsure", which the point loss ignores. The merged
answer's ``cost_s`` is the sum of the measured seconds of every answer given to the question, undone
ones included: that is the annotation time the point cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from apis.data.ledger import Answer, LedgerError, PointLedger, utc_now
from apis.utils.errors import ApisError

LABELS = {"yes": 1, "no": 0, "unsure": -1}
LABEL_NAMES = {value: name for name, value in LABELS.items()}
SOURCES = ("web", "label-studio")
# Letters, digits, space and . _ @ + - (e-mail addresses fit); no comma: merged answers join names with ", ".
ANNOTATOR_NAME = re.compile(r"[\w .@+-]{1,100}")
PACE_WINDOW = 20  # the annotator's pace is the median of their last PACE_WINDOW answers
MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger question id cannot name a row


class QuestionError(ApisError, ValueError):
    """A request about questions is malformed; the message says what is wrong (HTTP 400)."""


class QuestionNotFound(QuestionError):
    """No question with that id in this ledger (HTTP 404)."""


class QuestionConflict(QuestionError):
    """The request does not fit the questions' state: already answered, merged, leased away (HTTP 409)."""


class AnswersPending(Exception):
    """The loop stopped because step ``step`` has ``waiting`` of its ``total`` questions without their answers."""

    def __init__(self, run_dir: str | Path, step: int, waiting: int, total: int):
        self.run_dir, self.step, self.waiting, self.total = Path(run_dir), step, waiting, total
        super().__init__(f"step {step}: {waiting:,} of {total:,} questions waiting; answer them with "
                         f"`apis annotate {run_dir}`, then run the same `apis run` command again")

    def __reduce__(self):  # pickled whole, so that every rank of a torchrun job raises it (apis.engine.distributed)
        return type(self), (self.run_dir, self.step, self.waiting, self.total)


@dataclass(frozen=True)
class PointToAsk:
    """A point to ask about: pixel ``(x, y)`` (integer indices) of instance ``ann_id``, and how it was chosen."""

    ann_id: int
    image_id: int
    x: int
    y: int
    chosen_by: str


@dataclass(frozen=True)
class Question:
    """Is pixel ``(x, y)`` (integer indices, x = column) on instance ``ann_id``? Asked at ``step``."""

    id: int
    step: int
    position: int  # order within the step (the selection's order)
    ann_id: int
    image_id: int
    x: int
    y: int
    chosen_by: str
    answers_wanted: int


@dataclass(frozen=True)
class Response:
    """One person's answer to one question: ``label`` 1 / 0 / -1 and the measured ``seconds`` it took."""

    id: int
    question_id: int
    annotator: str
    label: int
    seconds: float
    answered_at: str
    source: str
    undone_at: str | None


@dataclass(frozen=True)
class NewResponse:
    """An answer to store with :meth:`QuestionQueue.add_responses`; ``where`` names it in error messages."""

    question_id: int
    annotator: str
    label: int | str  # 1 / 0 / -1 or "yes" / "no" / "unsure"
    seconds: float
    answered_at: str
    source: str
    where: str


@dataclass(frozen=True)
class ImportCounts:
    """What :meth:`QuestionQueue.import_responses` did: the answers stored, those the ledger already had, and
    those withdrawn from the ledger that were left withdrawn."""

    stored: list[Response]
    repeated: int
    withdrawn: int


@dataclass(frozen=True)
class Progress:
    """Questions of ``step`` (the latest step with questions): ``answered`` of ``total`` complete, ``mine``
    answered by the asking annotator; ``merged`` once the loop has taken them."""

    step: int | None
    total: int
    answered: int
    mine: int
    merged: bool


@dataclass(frozen=True)
class Pace:
    """An annotator's pace: answers given (not undone) and the median seconds of their last answers."""

    answers: int
    median_seconds: float | None


@dataclass
class StepSummary:
    """What ``apis status`` prints for one step. Questions and answers are counted apart: with redundancy a
    question takes several answers. A merged step is reported from what was merged, whatever the number of
    answers per question asked for later."""

    step: int
    selected: int  # questions (points selected)
    labels: Counter = field(default_factory=Counter)  # label -> answers (each person's answer counts)
    answered: int = 0  # questions with at least one answer
    waiting: int = 0  # questions still short of answers
    wanted: int = 1  # answers wanted per question (the most any question of the step wants)
    seconds: float = 0.0
    annotators: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (answers, seconds)
    multi_answered: int = 0  # questions with two or more answers
    agreeing: int = 0  # ... whose answers all agree
    merged: bool = True

    @property
    def answers(self) -> int:
        return sum(self.labels.values())


def check_annotator(name: object) -> str:
    """``name`` if it can name an annotator, else QuestionError saying what is allowed."""
    if not isinstance(name, str) or not ANNOTATOR_NAME.fullmatch(name) or not name.strip():
        raise QuestionError(f"annotator name {name!r} is not allowed: use 1-100 letters, digits, spaces or . _ @ + -")
    return name


def token_digest(token: str) -> str:
    """The hex SHA-256 of an annotator's token: what the ledger keeps (the tokens are random 192-bit secrets, so
    a fast hash suffices)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_label(value: object) -> int:
    """``"yes"`` / ``"no"`` / ``"unsure"`` (or 1 / 0 / -1) -> 1 / 0 / -1; anything else is a QuestionError."""
    if isinstance(value, str) and value in LABELS:
        return LABELS[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in LABEL_NAMES:
        return value
    raise QuestionError(f"label {value!r} is not one of yes, no, unsure")


def merge_labels(labels: Sequence[int]) -> int:
    """One label from several people's: the majority of the sure answers; a tie or none sure -> -1 (unsure)."""
    counts = Counter(label for label in labels if label != -1)
    if counts[1] == counts[0]:
        return -1
    return 1 if counts[1] > counts[0] else 0


class QuestionQueue(PointLedger):
    """The questions of a run's ledger, with leases and answers; see the module docstring.

    Args:
        path: the run's ``ledger.sqlite``.
        clock: unix seconds now (leases expire by it); tests pass a fake one.
        read_only: open an existing ledger to read its questions, writing nothing (another run's).
        check_integrity: as for :class:`~apis.data.ledger.PointLedger` (only ``apis status`` goes without).
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time, read_only: bool = False,
                 check_integrity: bool = True) -> None:
        super().__init__(path, read_only=read_only, check_integrity=check_integrity)
        self._clock = clock

    # ---- the loop's side ---------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        """A random id given to this ledger when its first questions are stored (or, in a ledger from before that,
        when first asked): tasks exported from it carry it."""
        row = self._conn.execute("SELECT value FROM ledger_info WHERE key = 'run_id'").fetchone()
        if row is not None:
            return row[0]
        if self.read_only:
            raise LedgerError(f"{self.path}: no run id yet, and the ledger is opened read-only; run `apis annotate "
                              f"{self.path.parent}` once (with write access) to give it one")
        with self._transaction():
            self._give_run_id()
        return self.run_id

    def _give_run_id(self) -> None:
        self._conn.execute("INSERT OR IGNORE INTO ledger_info (key, value) VALUES ('run_id', ?)", (uuid.uuid4().hex,))

    def post(self, step: int, chosen: Sequence[PointToAsk]) -> int:
        """Store step ``step``'s points ``chosen`` as questions, in order; returns how many.

        A step's questions are stored once: posting a step that has questions already stores nothing
        (the loop posts the same persisted selection again when it is run again). Each point must be a
        candidate of a registered instance (ValueError naming it otherwise, and nothing is stored).
        """
        with self._transaction():
            if self._conn.execute("SELECT 1 FROM questions WHERE step = ? LIMIT 1", (step,)).fetchone():
                return 0
            rows = [Question(id=0, step=step, position=position, ann_id=point.ann_id, image_id=point.image_id,
                             x=point.x, y=point.y, chosen_by=point.chosen_by, answers_wanted=1)
                    for position, point in enumerate(chosen)]
            self._check(rows)
            self._give_run_id()
            self._conn.executemany(
                "INSERT INTO questions (step, position, ann_id, image_id, x, y, chosen_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r.step, r.position, int(r.ann_id), int(r.image_id), int(r.x), int(r.y), r.chosen_by) for r in rows])
            return len(rows)

    def merge(self, step: int) -> int:
        """Write step ``step``'s merged answers into ``answers`` (one transaction); returns how many.

        Raises :class:`AnswersPending` while a question of the step lacks answers. A step merged
        already, or without questions, stores nothing.
        """
        with self._transaction():
            if self._merged(step):
                return 0
            total, answered = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(complete), 0) FROM questions WHERE step = ?", (step,)).fetchone()
            if answered < total:
                raise AnswersPending(self.path.parent, step, total - answered, total)
            responses = defaultdict(list)
            for response in self._responses("q.step = ?", (step,), include_undone=True):
                responses[response.question_id].append(response)
            answers = []
            for question in self._questions("step = ? ORDER BY position", (step,)):
                given = [r for r in responses[question.id] if r.undone_at is None]
                answers.append(Answer(
                    ann_id=question.ann_id, image_id=question.image_id, x=question.x, y=question.y,
                    label=merge_labels([r.label for r in given]), step=step, chosen_by=question.chosen_by,
                    annotator=", ".join(sorted({r.annotator for r in given})),
                    cost_s=sum(r.seconds for r in responses[question.id]),
                    answered_at=max(r.answered_at for r in given)))
            self._conn.execute("DELETE FROM leases WHERE question_id IN (SELECT id FROM questions WHERE step = ?)",
                               (step,))
            return self._insert_answers(answers)

    def waiting(self, step: int) -> int:
        """Questions of ``step`` still short of answers."""
        return self._conn.execute("SELECT COUNT(*) FROM questions WHERE step = ? AND complete = 0",
                                  (step,)).fetchone()[0]

    # ---- the annotators' side ----------------------------------------------------------------
    def set_answers_wanted(self, answers: int) -> int:
        """Ask for ``answers`` answers per question (redundancy) in every step not merged yet; returns
        how many questions that changed. Questions that now have enough answers become complete."""
        if not isinstance(answers, int) or answers < 1:
            raise QuestionError(f"answers per question must be a positive integer, got {answers!r}")
        with self._transaction():
            cursor = self._conn.execute(
                "UPDATE questions SET answers_wanted = ? WHERE answers_wanted != ? "
                "AND step NOT IN (SELECT DISTINCT step FROM answers)", (answers, answers))
            self._conn.execute(
                "UPDATE questions SET complete = ((SELECT COUNT(*) FROM responses r WHERE r.question_id = questions.id "
                "AND r.undone_at IS NULL) >= answers_wanted) WHERE step NOT IN (SELECT DISTINCT step FROM answers)")
            return cursor.rowcount

    def lease_next(self, annotator: str, lease_s: float, skip: Sequence[int] = ()) -> Question | None:
        """The question ``annotator`` should answer now, leased to them for ``lease_s`` seconds.

        A question they hold a live lease on comes first (a reloaded page shows the same question);
        otherwise the first open question, in step and selection order, that they have not answered
        and that has room: its answers plus the live leases of others are fewer than it wants.
        Questions in ``skip`` (ones their page could not show) are passed over, and their leases of them
        given back, so that others get them. None when there is no such question.
        """
        check_annotator(annotator)
        skip = [int(question_id) for question_id in skip]
        not_skipped = f"q.id NOT IN ({', '.join('?' * len(skip))})"
        with self._lease_commits(), self._transaction():
            now = self._clock()
            self._conn.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
            self._conn.executemany("DELETE FROM leases WHERE question_id = ? AND annotator = ?",
                                   [(question_id, annotator) for question_id in skip])
            # CROSS JOIN keeps the (few) leases as the outer loop, not the thousands of open questions.
            row = self._conn.execute(
                "SELECT q.id FROM leases l CROSS JOIN questions q ON q.id = l.question_id "
                "WHERE l.annotator = ? AND q.complete = 0 AND NOT EXISTS (SELECT 1 FROM responses r "
                "WHERE r.question_id = q.id AND r.annotator = ? AND r.undone_at IS NULL) "
                f"AND {not_skipped} ORDER BY q.step, q.position LIMIT 1", (annotator, annotator, *skip)).fetchone()
            if row is None:
                row = self._conn.execute(
                    "SELECT q.id FROM questions q WHERE q.complete = 0 AND NOT EXISTS (SELECT 1 FROM responses r "
                    "WHERE r.question_id = q.id AND r.annotator = ? AND r.undone_at IS NULL) "
                    "AND (SELECT COUNT(*) FROM responses r WHERE r.question_id = q.id AND r.undone_at IS NULL) "
                    "+ (SELECT COUNT(*) FROM leases l WHERE l.question_id = q.id AND l.annotator != ?) "
                    f"< q.answers_wanted AND {not_skipped} ORDER BY q.step, q.position LIMIT 1",
                    (annotator, annotator, *skip)).fetchone()
            if row is None:
                return None
            self._lease(row[0], annotator, now, lease_s)
            return self._question(row[0])

    def answer(self, annotator: str, question_id: int, label: int | str, seconds: float, source: str = "web"
               ) -> Response:
        """Store ``annotator``'s answer to a question, at once (its own transaction); returns it.

        QuestionNotFound for an unknown id; QuestionConflict when the step is merged, the annotator
        answered it already, or it has no room left for them (their lease expired and it went to
        someone else); QuestionError for a bad label or seconds value.
        """
        (stored,) = self.add_responses([NewResponse(
            question_id=question_id, annotator=annotator, label=label, seconds=seconds, answered_at=utc_now(),
            source=source, where=f"question {question_id}")])
        return stored

    def add_responses(self, new: Sequence[NewResponse]) -> list[Response]:
        """Store several answers in one transaction, all or none; returns those stored.

        Every answer is checked as :meth:`answer` does, with ``where`` naming it in the message.
        """
        stored, _, _ = self._store(new, imported=False)
        return stored

    def import_responses(self, new: Sequence[NewResponse]) -> ImportCounts:
        """Store answers given elsewhere (a Label Studio export or its API), in one transaction, all or none.

        Reading the same answers again changes nothing, at any stage: an answer its annotator already gave
        with the same label is counted as already there, in a merged step too; one withdrawn from the ledger
        (same annotator, label and time) stays withdrawn. Leases are not counted: they hold questions for the
        web page's annotators, and an answer given elsewhere is no less real. Refused, naming ``where``: a
        new or changed answer in a merged step, an annotator's answer that differs from theirs in the ledger,
        more answers than a question wants.
        """
        stored, repeated, withdrawn = self._store(new, imported=True)
        return ImportCounts(stored=stored, repeated=repeated, withdrawn=withdrawn)

    def _store(self, new: Sequence[NewResponse], imported: bool) -> tuple[list[Response], int, int]:
        stored, repeated, withdrawn = [], 0, 0
        with self._transaction():
            now = self._clock()
            for item in new:
                question = self._existing_question(item.question_id, item.where)
                annotator = check_annotator(item.annotator)
                label = parse_label(item.label)
                seconds = _check_seconds(item.seconds, item.where)
                if item.source not in SOURCES:
                    raise QuestionError(f"{item.where}: source {item.source!r} is not one of {', '.join(SOURCES)}")
                previous = self._conn.execute(
                    "SELECT label FROM responses WHERE question_id = ? AND annotator = ? AND undone_at IS NULL",
                    (question.id, annotator)).fetchone()
                if imported and previous is not None and previous[0] == label:
                    repeated += 1
                    continue
                if imported and self._conn.execute(
                        "SELECT 1 FROM responses WHERE question_id = ? AND annotator = ? AND label = ? AND "
                        "answered_at = ? AND undone_at IS NOT NULL", (question.id, annotator, label,
                                                                     item.answered_at)).fetchone():
                    withdrawn += 1
                    continue
                if self._merged(question.step):
                    change = f"{annotator}'s answer {LABEL_NAMES[label]} is not the ledger's, and " if imported else ""
                    raise QuestionConflict(f"{item.where}: {change}step {question.step} was merged into the "
                                           f"ledger's answers and trained on; its answers can no longer change")
                if previous is not None:
                    how = (f"withdraw it first (`apis answers withdraw {self.path.parent} --question {question.id} "
                           f"--annotator '{annotator}'`)" if imported else "undo that answer to change it")
                    raise QuestionConflict(f"{item.where}: {annotator} already answered question {question.id} "
                                           f"({LABEL_NAMES[previous[0]]}); {how}")
                given, others = self._answers_and_leases(question.id, annotator, now)
                if imported and given >= question.answers_wanted:
                    names = ", ".join(r.annotator for r in self._responses("r.question_id = ?", (question.id,), False))
                    raise QuestionConflict(
                        f"{item.where}: question {question.id} already has the {question.answers_wanted} answer(s) "
                        f"it wants (from {names}); to keep more answers per question pass --answers-per-question N, "
                        f"or withdraw one (`apis answers withdraw`)")
                if not imported and given + others >= question.answers_wanted:
                    raise QuestionConflict(
                        f"{item.where}: question {question.id} already has its {question.answers_wanted} "
                        f"answer(s) or is leased to someone else (your lease may have expired)")
                cursor = self._conn.execute(
                    "INSERT INTO responses (question_id, annotator, label, seconds, answered_at, source) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (question.id, annotator, label, seconds, item.answered_at, item.source))
                self._conn.execute("DELETE FROM leases WHERE question_id = ? AND annotator = ?",
                                   (question.id, annotator))
                if given + 1 >= question.answers_wanted:
                    self._conn.execute("UPDATE questions SET complete = 1 WHERE id = ?", (question.id,))
                stored.append(Response(id=cursor.lastrowid, question_id=question.id, annotator=annotator, label=label,
                                       seconds=seconds, answered_at=item.answered_at, source=item.source,
                                       undone_at=None))
        return stored, repeated, withdrawn

    def withdraw(self, question_id: int, annotator: str | None = None) -> list[Response]:
        """Take back the answer(s) to a question of a step not merged yet, from any source; returns them.

        ``annotator`` names whose answer; without it the question must have exactly one answer. The rows are
        kept, marked ``undone_at`` (their seconds still count as spent); the question wants answers again.
        """
        where = f"question {question_id}"
        if annotator is not None:
            check_annotator(annotator)
        with self._transaction():
            question = self._open_question(question_id, where)
            given = [r for r in self._responses("r.question_id = ?", (question.id,), False)
                     if annotator is None or r.annotator == annotator]
            if not given:
                raise QuestionConflict(f"{where} has no answer{f' by {annotator}' if annotator else ''} to withdraw")
            if annotator is None and len(given) > 1:
                raise QuestionError(f"{where} has answers by {', '.join(r.annotator for r in given)}; say whose "
                                    f"to withdraw with --annotator NAME")
            now = utc_now()
            self._conn.executemany("UPDATE responses SET undone_at = ? WHERE id = ?", [(now, r.id) for r in given])
            self._conn.execute(
                "UPDATE questions SET complete = ((SELECT COUNT(*) FROM responses r WHERE r.question_id = questions.id "
                "AND r.undone_at IS NULL) >= answers_wanted) WHERE id = ?", (question.id,))
        return [Response(**{**r.__dict__, "undone_at": now}) for r in given]

    def undo(self, annotator: str, lease_s: float) -> Question:
        """Take back ``annotator``'s latest answer in a step not merged yet and lease its question to them
        again (it is theirs to answer next); QuestionConflict when there is nothing to undo."""
        check_annotator(annotator)
        with self._transaction():
            row = self._conn.execute(
                "SELECT r.id, r.question_id FROM responses r JOIN questions q ON q.id = r.question_id "
                "WHERE r.annotator = ? AND r.undone_at IS NULL AND r.source = 'web' "
                "AND q.step NOT IN (SELECT DISTINCT step FROM answers) ORDER BY r.id DESC LIMIT 1",
                (annotator,)).fetchone()
            if row is None:
                raise QuestionConflict(f"{annotator} has no answer left to undo in a step that is still open")
            response_id, question_id = row
            self._conn.execute("UPDATE responses SET undone_at = ? WHERE id = ?", (utc_now(), response_id))
            self._conn.execute("UPDATE questions SET complete = 0 WHERE id = ?", (question_id,))
            self._lease(question_id, annotator, self._clock(), lease_s)
            return self._question(question_id)

    # ---- named annotators (apis annotate --add-annotator) ------------------------------------------
    def add_annotator_tokens(self, annotators: Sequence[str]) -> dict[str, str]:
        """A new random token for each of ``annotators`` (all names checked first), ``{name: token}``; only the
        tokens' SHA-256 is stored, so this is the one time they are seen. A name that had a token gets a new one
        and the old one stops working."""
        names = [check_annotator(name) for name in annotators]
        tokens = {name: secrets.token_urlsafe(24) for name in names}
        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO annotator_tokens (annotator, token_sha256, created_at) VALUES (?, ?, ?)",
                [(name, token_digest(token), utc_now()) for name, token in tokens.items()])
        return tokens

    def annotator_of_token(self, token: str) -> str | None:
        """The named annotator whose token this is, None when it is nobody's."""
        if not self.has_table("annotator_tokens"):  # an older ledger opened read-only
            return None
        row = self._conn.execute("SELECT annotator FROM annotator_tokens WHERE token_sha256 = ?",
                                 (token_digest(token),)).fetchone()
        return None if row is None else row[0]

    def named_annotators(self) -> list[str]:
        """The annotators with a token of their own, sorted."""
        if not self.has_table("annotator_tokens"):
            return []
        return [row[0] for row in self._conn.execute("SELECT annotator FROM annotator_tokens ORDER BY annotator")]

    def question(self, question_id: int) -> Question:
        """The question with this id (QuestionNotFound otherwise)."""
        return self._question(question_id)

    def questions(self, step: int, open_only: bool = False) -> list[Question]:
        """Step ``step``'s questions in selection order; only those still short of answers when ``open_only``."""
        return self._questions("step = ? AND (NOT ? OR complete = 0) ORDER BY position", (step, open_only))

    def responses(self, step: int | None = None, include_undone: bool = False) -> list[Response]:
        """Answers given (in the order given), of ``step`` only when given; undone ones on request."""
        if step is None:
            return self._responses("1", (), include_undone)
        return self._responses("q.step = ?", (step,), include_undone)

    def is_merged(self, step: int) -> bool:
        """Whether step ``step``'s answers are in the ledger's ``answers`` (trained on by the loop)."""
        return self._merged(step)

    def progress(self, annotator: str | None = None) -> Progress:
        """Progress of the latest step with questions; ``mine`` counts ``annotator``'s answers there."""
        step = self._conn.execute("SELECT MAX(step) FROM questions").fetchone()[0]
        if step is None:
            return Progress(step=None, total=0, answered=0, mine=0, merged=False)
        total, answered = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(complete), 0) FROM questions WHERE step = ?", (step,)).fetchone()
        mine = self._conn.execute(
            "SELECT COUNT(*) FROM responses r JOIN questions q ON q.id = r.question_id "
            "WHERE r.annotator = ? AND r.undone_at IS NULL AND q.step = ?", (annotator, step)).fetchone()[0]
        return Progress(step=step, total=total, answered=answered, mine=mine, merged=self._merged(step))

    def pace(self, annotator: str) -> Pace:
        """``annotator``'s answers (not undone) and the median seconds of their last :data:`PACE_WINDOW`."""
        answers = self._conn.execute("SELECT COUNT(*) FROM responses WHERE annotator = ? AND undone_at IS NULL",
                                     (annotator,)).fetchone()[0]
        recent = [row[0] for row in self._conn.execute(
            "SELECT seconds FROM responses WHERE annotator = ? AND undone_at IS NULL ORDER BY id DESC LIMIT ?",
            (annotator, PACE_WINDOW))]
        return Pace(answers=answers, median_seconds=statistics.median(recent) if recent else None)

    def leased_to_others(self, annotator: str) -> int:
        """Open questions held by live leases of other annotators (what ``annotator`` may still get later)."""
        return self._conn.execute(
            "SELECT COUNT(DISTINCT l.question_id) FROM leases l JOIN questions q ON q.id = l.question_id "
            "WHERE l.annotator != ? AND l.expires_at > ? AND q.complete = 0", (annotator, self._clock())).fetchone()[0]

    def summaries(self) -> list[StepSummary]:
        """Per step: questions, answers by label, waiting, seconds, annotators, agreement (``apis status``).

        Steps without questions (a simulated oracle's, or P0 shared from another run) are summarised from
        their merged answers.
        """
        summaries: dict[int, StepSummary] = {}
        by_question: dict[int, list[Response]] = defaultdict(list)
        for step, selected, waiting, wanted in self._conn.execute(
                "SELECT step, COUNT(*), SUM(1 - complete), MAX(answers_wanted) FROM questions GROUP BY step"):
            merged = self._merged(step)
            summaries[step] = StepSummary(step=step, selected=selected, waiting=0 if merged else waiting,
                                          wanted=wanted, merged=merged)
        step_of = {qid: step for qid, step in self._conn.execute("SELECT id, step FROM questions")}
        for response in self._responses("1", (), include_undone=True):
            summary = summaries[step_of[response.question_id]]
            summary.seconds += response.seconds
            count, seconds = summary.annotators.get(response.annotator, (0, 0.0))
            if response.undone_at is None:
                summary.labels[response.label] += 1
                by_question[response.question_id].append(response)
                count += 1
            summary.annotators[response.annotator] = (count, seconds + response.seconds)
        for summary in summaries.values():
            summary.answered = summary.selected if summary.merged else 0  # every merged question has its answer
        for question_id, given in by_question.items():
            summary = summaries[step_of[question_id]]
            summary.answered += not summary.merged
            if len(given) > 1:
                summary.multi_answered += 1
                summary.agreeing += len({r.label for r in given}) == 1
        asked_people = set(summaries)
        # Totals in SQL (an index covers them): a COCO run's ledger holds 860k answers per step.
        for step, annotator, label, answers, seconds in self._conn.execute(
                "SELECT step, annotator, label, COUNT(*), SUM(cost_s) FROM answers GROUP BY step, annotator, label"):
            if step in asked_people:
                continue
            summary = summaries.setdefault(step, StepSummary(step=step, selected=0))
            summary.selected += answers
            summary.answered += answers
            summary.labels[label] += answers
            summary.seconds += seconds
            count, spent = summary.annotators.get(annotator, (0, 0.0))
            summary.annotators[annotator] = (count + answers, spent + seconds)
        return [summaries[step] for step in sorted(summaries)]

    # ---- helpers -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lease_commits(self) -> Iterator[None]:
        """Commit without waiting for the disk: a lease is worthless after a power cut, and the next answer's
        ``synchronous=FULL`` commit syncs the write-ahead log, this commit included. (An answer's commit
        is what a person waits for; a lease's is not worth an fsync on every "next question".)"""
        self._conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self._conn.execute("PRAGMA synchronous=FULL")

    def _merged(self, step: int) -> bool:
        return self._conn.execute("SELECT 1 FROM answers WHERE step = ? LIMIT 1", (step,)).fetchone() is not None

    def _lease(self, question_id: int, annotator: str, now: float, lease_s: float) -> None:
        if not lease_s > 0:
            raise QuestionError(f"lease seconds must be positive, got {lease_s!r}")
        self._conn.execute("INSERT OR REPLACE INTO leases (question_id, annotator, granted_at, expires_at) "
                           "VALUES (?, ?, ?, ?)", (question_id, annotator, now, now + lease_s))

    def _answers_and_leases(self, question_id: int, annotator: str, now: float) -> tuple[int, int]:
        """Answers given to the question, and live leases on it held by others than ``annotator``."""
        given = self._conn.execute("SELECT COUNT(*) FROM responses WHERE question_id = ? AND undone_at IS NULL",
                                   (question_id,)).fetchone()[0]
        others = self._conn.execute(
            "SELECT COUNT(*) FROM leases WHERE question_id = ? AND annotator != ? AND expires_at > ?",
            (question_id, annotator, now)).fetchone()[0]
        return given, others

    def _open_question(self, question_id: object, where: str) -> Question:
        """The question, if it exists and its step is not merged yet."""
        question = self._existing_question(question_id, where)
        if self._merged(question.step):
            raise QuestionConflict(f"{where}: step {question.step} was merged into the ledger's answers and "
                                   f"trained on; its answers can no longer change")
        return question

    def _existing_question(self, question_id: object, where: str) -> Question:
        if not isinstance(question_id, int) or isinstance(question_id, bool):
            raise QuestionError(f"{where}: question id {question_id!r} is not an integer")
        return self._question(question_id, where)

    def _question(self, question_id: int, where: str | None = None) -> Question:
        found = self._questions("id = ?", (question_id,)) if 0 < question_id <= MAX_ID else []
        if not found:
            raise QuestionNotFound(f"{where + ': ' if where else ''}no question {question_id} in this run's ledger")
        return found[0]

    def _questions(self, condition: str, params: tuple) -> list[Question]:
        rows = self._conn.execute(
            "SELECT id, step, position, ann_id, image_id, x, y, chosen_by, answers_wanted FROM questions "
            f"WHERE {condition}", params)
        return [Question(*row) for row in rows]

    def _responses(self, condition: str, params: tuple, include_undone: bool) -> list[Response]:
        rows = self._conn.execute(
            "SELECT r.id, r.question_id, r.annotator, r.label, r.seconds, r.answered_at, r.source, r.undone_at "
            f"FROM responses r JOIN questions q ON q.id = r.question_id WHERE ({condition}) "
            "AND (? OR r.undone_at IS NULL) ORDER BY r.id", (*params, include_undone))
        return [Response(*row) for row in rows]


def _check_seconds(seconds: object, where: str) -> float:
    """Measured seconds: a finite number in [0, one day]."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 86400:
        raise QuestionError(f"{where}: seconds {seconds!r} is not a number of seconds in [0, 86400]")
    return float(seconds)


def format_status(summaries: Sequence[StepSummary], trained: set[int]) -> str:
    """The text of ``apis status``: one block per step, one line per annotator."""
    if not summaries:
        return "no step has questions or answers yet"
    lines = []
    for s in summaries:
        state = "trained" if s.step in trained else ("merged" if s.merged else "waiting for answers"
                                                     if s.waiting else "answered; run `apis run` to train")
        if s.merged:
            questions = f"{s.selected:,} questions, all answered"
        else:
            complete = f" ({s.selected - s.waiting:,} with all {s.wanted} answers wanted)" if s.wanted > 1 else ""
            questions = f"{s.selected:,} questions, {s.answered:,} answered{complete}, {s.waiting:,} waiting"
        lines.append(f"step {s.step}: {questions}; {s.answers:,} answers (yes {s.labels[1]:,}, no {s.labels[0]:,}, "
                     f"unsure {s.labels[-1]:,}); {s.seconds:,.1f} s of annotation measured; {state}")
        if s.multi_answered:
            lines.append(f"  agreement: {s.agreeing / s.multi_answered:.0%} of {s.multi_answered:,} questions "
                         f"answered by two or more people")
        for name, (count, seconds) in sorted(s.annotators.items()):
            per_answer = f"{seconds / count:.2f} s/answer" if count else "no answer kept"
            lines.append(f"  {name:<24} {count:>7,} answers {seconds:>10,.1f} s  {per_answer}")
    return "\n".join(lines)
