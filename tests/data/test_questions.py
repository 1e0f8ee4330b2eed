"""The question queue: posting, leases that expire, answers, undo, redundancy, merging into the ledger."""

import sqlite3
from collections import Counter

import pytest

from apis.data.ledger import Answer, PointLedger
from apis.data.questions import (
    AnswersPending,
    PointToAsk,
    QuestionConflict,
    QuestionError,
    QuestionNotFound,
    QuestionQueue,
    format_status,
    merge_labels,
)
from apis.utils.io import WriteFailed

# Instance 1: box (2, 3, 8, 9) in the 20x20 image 10 (candidates x 2..7, y 3..8); 2: box (0, 0, 4, 4) on image 11.
INSTANCES = [(1, 10, (2.0, 3.0, 8.0, 9.0), 20, 20), (2, 11, (0.0, 0.0, 4.0, 4.0), 20, 20)]
STEP0 = [PointToAsk(1, 10, 2, 3, "p0-random"), PointToAsk(2, 11, 1, 1, "p0-random"),
         PointToAsk(1, 10, 7, 8, "p0-random")]
LEASE_S = 60.0


@pytest.fixture
def queue(tmp_path, clock):
    with QuestionQueue(tmp_path / "ledger.sqlite", clock=clock) as queue:
        queue.register_instances(INSTANCES)
        assert queue.post(0, STEP0) == 3
        yield queue


def answer_all(queue, annotator, label="yes", seconds=1.0):
    while (question := queue.lease_next(annotator, LEASE_S)) is not None:
        queue.answer(annotator, question.id, label, seconds)


def test_post_stores_questions_in_order_once_and_checks_points(queue):
    assert [(q.position, q.ann_id, q.x, q.y) for q in queue.questions(0)] == [(0, 1, 2, 3), (1, 2, 1, 1), (2, 1, 7, 8)]
    assert queue.post(0, STEP0[:1]) == 0  # a step's questions are stored once
    with pytest.raises(ValueError, match=r"annotation 1 at point \(8, 3\): the point is not a candidate"):
        queue.post(1, [PointToAsk(2, 11, 0, 0, "entropy"), PointToAsk(1, 10, 8, 3, "entropy")])
    assert queue.questions(1) == []  # nothing of the failed call was kept


def test_two_annotators_never_get_the_same_question(queue):
    alice, bob = queue.lease_next("alice", LEASE_S), queue.lease_next("bob", LEASE_S)
    assert (alice.position, bob.position) == (0, 1)
    assert queue.lease_next("alice", LEASE_S) == alice  # a reloaded page shows the same question
    with pytest.raises(QuestionConflict, match="leased to someone else"):
        queue.answer("bob", alice.id, "no", 1.0)
    queue.answer("alice", alice.id, "yes", 1.5)
    assert queue.lease_next("alice", LEASE_S).position == 2
    assert queue.lease_next("carol", LEASE_S) is None  # everything is answered or leased
    assert queue.leased_to_others("carol") == 2


def test_an_expired_lease_hands_the_question_to_someone_else(queue, clock):
    first = queue.lease_next("alice", LEASE_S)
    clock.now += LEASE_S - 1
    assert queue.lease_next("bob", LEASE_S).id != first.id
    clock.now += 2  # alice's lease has run out
    assert queue.lease_next("carol", LEASE_S).id == first.id
    with pytest.raises(QuestionConflict, match="your lease may have expired"):
        queue.answer("alice", first.id, "yes", 30.0)
    queue.answer("carol", first.id, "no", 2.0)
    assert [(r.annotator, r.label) for r in queue.responses(0)] == [("carol", 0)]


def test_a_late_answer_is_kept_when_nobody_else_took_the_question(queue, clock):
    first = queue.lease_next("alice", LEASE_S)
    clock.now += 10 * LEASE_S
    queue.answer("alice", first.id, "unsure", 12.5)
    assert queue.waiting(0) == 2


def test_an_annotator_answers_once_and_undo_frees_the_question_for_them(queue):
    question = queue.lease_next("alice", LEASE_S)
    queue.answer("alice", question.id, "yes", 1.0)
    with pytest.raises(QuestionConflict, match="alice already answered question"):
        queue.answer("alice", question.id, "no", 1.0)
    assert queue.undo("alice", LEASE_S) == question
    assert queue.lease_next("bob", LEASE_S).id != question.id  # the undone question is alice's again
    assert queue.lease_next("alice", LEASE_S) == question
    queue.answer("alice", question.id, "no", 2.0)
    kept = queue.responses(0)
    every = queue.responses(0, include_undone=True)
    assert [(r.label, r.undone_at is None) for r in every] == [(1, False), (0, True)]
    assert [r.label for r in kept] == [0]
    queue.undo("alice", LEASE_S)
    with pytest.raises(QuestionConflict, match="no answer left to undo"):
        queue.undo("alice", LEASE_S)


def test_redundancy_gives_each_question_to_that_many_people(queue):
    assert queue.set_answers_wanted(2) == 3
    first_alice, first_bob = queue.lease_next("alice", LEASE_S), queue.lease_next("bob", LEASE_S)
    assert first_alice.id == first_bob.id and first_alice.answers_wanted == 2
    assert queue.lease_next("carol", LEASE_S).position == 1  # two leases fill question 0
    queue.answer("alice", first_alice.id, "yes", 1.0)
    assert queue.waiting(0) == 3
    queue.answer("bob", first_bob.id, "no", 3.0)
    assert queue.waiting(0) == 2
    answer_all(queue, "alice", "yes")
    answer_all(queue, "bob", "yes")  # question 1 is full (alice's answer and carol's lease): bob gets 2 only
    answer_all(queue, "carol", "yes")
    assert queue.waiting(0) == 0
    assert Counter(r.annotator for r in queue.responses(0)) == {"alice": 3, "bob": 2, "carol": 1}
    (summary,) = queue.summaries()
    assert (summary.multi_answered, summary.agreeing) == (3, 2)
    assert "agreement: 67% of 3 questions" in format_status([summary], trained=set())
    assert queue.merge(0) == 3
    merged = {(a.x, a.y): a for a in queue.answers()}
    assert merged[(2, 3)].label == -1  # yes vs no: a tie is unsure
    assert merged[(2, 3)].annotator == "alice, bob" and merged[(2, 3)].cost_s == pytest.approx(4.0)


@pytest.mark.parametrize(("labels", "merged"), [
    ([1], 1), ([0], 0), ([-1], -1), ([1, 0], -1), ([1, -1], 1), ([0, 0, 1], 0), ([-1, -1], -1), ([1, 1, 0, 0], -1),
])
def test_merge_labels_takes_the_majority_of_sure_answers(labels, merged):
    assert merge_labels(labels) == merged


def test_merge_waits_for_every_question_then_writes_the_ledger_once(queue, tmp_path):
    question = queue.lease_next("alice", LEASE_S)
    queue.answer("alice", question.id, "yes", 1.25)
    queue.undo("alice", LEASE_S)
    queue.answer("alice", question.id, "no", 0.75)
    with pytest.raises(AnswersPending, match="step 0: 2 of 3 questions waiting") as info:
        queue.merge(0)
    assert info.value.run_dir == tmp_path and (info.value.waiting, info.value.total) == (2, 3)
    answer_all(queue, "bob", "unsure", seconds=2.0)
    assert queue.merge(0) == 3
    assert queue.merge(0) == 0
    answers = queue.answers()
    assert [(a.ann_id, a.x, a.y, a.label, a.annotator, a.chosen_by) for a in answers] == [
        (1, 2, 3, 0, "alice", "p0-random"), (2, 1, 1, -1, "bob", "p0-random"), (1, 7, 8, -1, "bob", "p0-random")]
    assert answers[0].cost_s == pytest.approx(2.0)  # the undone answer's time was spent too
    assert queue.total_cost_s() == pytest.approx(6.0)
    with pytest.raises(QuestionConflict, match="step 0 was merged"):
        queue.answer("carol", question.id, "yes", 1.0)
    with pytest.raises(QuestionConflict, match="no answer left to undo"):
        queue.undo("alice", LEASE_S)
    assert queue.set_answers_wanted(2) == 0  # a merged step never changes
    assert queue.lease_next("carol", LEASE_S) is None


def test_an_answer_or_a_merge_on_a_full_disk_is_refused_whole_and_the_answers_before_it_are_kept(
        tmp_path, clock, sqlite_disk_full):
    """Simulated: every data change fails as SQLite's do on a full disk (tests/data/test_ledger.py has SQLite's own
    full database and a really full filesystem)."""
    path = tmp_path / "ledger.sqlite"
    with QuestionQueue(path, clock=clock) as queue:
        queue.register_instances(INSTANCES)
        queue.post(0, STEP0)
        first, second = queue.lease_next("alice", LEASE_S), queue.lease_next("bob", LEASE_S)
        queue.answer("alice", first.id, "yes", 1.5)
        sqlite_disk_full.full = True
        kept = (f"{path}: could not be written (database or disk is full); this change was rolled back whole and the "
                "0 answer(s) stored before it are kept, with the 1 response(s) people gave. Free space, then run the "
                "same command again to go on")
        with pytest.raises(WriteFailed) as full:
            queue.answer("bob", second.id, "no", 2.0)
        assert str(full.value) == kept
        assert [(r.annotator, r.label) for r in queue.responses()] == [("alice", 1)]
        sqlite_disk_full.full = False
        queue.answer("bob", second.id, "no", 2.0)  # space freed: bob's lease was kept, his answer goes in
        answer_all(queue, "carol")
        sqlite_disk_full.full = True
        with pytest.raises(WriteFailed, match=r"the 0 answer\(s\) stored before it are kept, with the 3 response"):
            queue.merge(0)
        sqlite_disk_full.full = False
        assert queue.answers() == [] and queue.merge(0) == 3


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda q: q.answer("alice", 99, "yes", 1.0), QuestionNotFound, "no question 99"),
    (lambda q: q.answer("alice", "1", "yes", 1.0), QuestionError, "question id '1' is not an integer"),
    (lambda q: q.answer("alice", 1, "maybe", 1.0), QuestionError, "label 'maybe' is not one of yes, no, unsure"),
    (lambda q: q.answer("alice", 1, True, 1.0), QuestionError, "label True"),
    (lambda q: q.answer("alice", 1, "yes", -1.0), QuestionError, "seconds -1.0 is not a number"),
    (lambda q: q.answer("alice", 1, "yes", float("nan")), QuestionError, "seconds nan"),
    (lambda q: q.answer("alice, bob", 1, "yes", 1.0), QuestionError, "annotator name 'alice, bob' is not allowed"),
    (lambda q: q.lease_next("", LEASE_S), QuestionError, "annotator name '' is not allowed"),
    (lambda q: q.set_answers_wanted(0), QuestionError, "must be a positive integer"),
])
def test_bad_requests_name_what_is_wrong_and_store_nothing(queue, call, error, message):
    with pytest.raises(error, match=message):
        call(queue)
    assert queue.responses(0, include_undone=True) == []


def test_status_of_steps_answered_by_the_simulated_oracle(tmp_path):
    with QuestionQueue(tmp_path / "ledger.sqlite") as queue:
        queue.register_instances(INSTANCES)
        queue.record([Answer(ann_id=1, image_id=10, x=2, y=3, label=1, step=0, chosen_by="p0-random",
                             annotator="simulated-oracle", cost_s=0.9),
                      Answer(ann_id=2, image_id=11, x=0, y=0, label=0, step=0, chosen_by="p0-random",
                             annotator="simulated-oracle", cost_s=0.9)])
        (summary,) = queue.summaries()
    assert (summary.step, summary.selected, summary.waiting, summary.labels[1], summary.labels[0]) == (0, 2, 0, 1, 1)
    text = format_status([summary], trained={0})
    assert "step 0: 2 questions, all answered; 2 answers (yes 1, no 1, unsure 0); 1.8 s" in text and "trained" in text
    assert "simulated-oracle" in text


def test_status_sums_each_step_by_annotator_and_label_and_counts_people_steps_once(tmp_path, clock):
    """Steps 1 and 2 from answers recorded directly (two annotators, every label); step 0 asked of people and
    merged is summarised from its responses only, not again from its merged answers."""
    def recorded(step, x, label, annotator, cost_s):
        return Answer(ann_id=1, image_id=10, x=x, y=5, label=label, step=step, chosen_by="random",
                      annotator=annotator, cost_s=cost_s)

    with QuestionQueue(tmp_path / "ledger.sqlite", clock=clock) as queue:
        queue.register_instances(INSTANCES)
        queue.post(0, STEP0)
        answer_all(queue, "alice", "no", seconds=2.0)
        assert queue.merge(0) == 3
        queue.record([recorded(1, 2, 1, "simulated-oracle", 0.9), recorded(1, 3, 1, "simulated-oracle", 0.9),
                      recorded(1, 4, -1, "simulated-oracle", 0.9), recorded(1, 5, 0, "bob", 4.0),
                      recorded(2, 6, 0, "simulated-oracle", 0.5)])
        people, first, second = queue.summaries()
    assert (people.step, people.selected, people.labels, people.annotators) == (0, 3, Counter({0: 3}),
                                                                                {"alice": (3, 6.0)})
    assert (first.selected, first.labels, first.waiting) == (4, Counter({1: 2, -1: 1, 0: 1}), 0)
    assert first.annotators == {"simulated-oracle": (3, pytest.approx(2.7)), "bob": (1, 4.0)}
    assert first.seconds == pytest.approx(6.7)
    assert (second.step, second.selected, second.labels, second.annotators) == (
        2, 1, Counter({0: 1}), {"simulated-oracle": (1, 0.5)})


def test_a_version_1_ledger_opens_with_its_answers_and_gains_the_question_tables(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with PointLedger(path) as ledger:
        ledger.register_instances(INSTANCES)
        ledger.record([Answer(ann_id=1, image_id=10, x=2, y=3, label=1, step=0, chosen_by="p0-random",
                              annotator="simulated-oracle", cost_s=0.9)])
    with sqlite3.connect(path) as conn:  # turn it back into the version-1 file that earlier APIS wrote
        for table in ("leases", "responses", "questions", "ledger_info", "masks", "annotator_tokens"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("UPDATE schema_version SET version = 1")
    with QuestionQueue(path) as queue:
        assert [(a.ann_id, a.x, a.y, a.label) for a in queue.answers()] == [(1, 2, 3, 1)]
        assert queue.post(1, [PointToAsk(2, 11, 1, 1, "entropy")]) == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(4,)]


def test_a_version_3_ledger_reads_without_named_annotators_and_gains_their_table(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with PointLedger(path) as ledger:
        ledger.register_instances(INSTANCES)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE annotator_tokens")
        conn.execute("UPDATE schema_version SET version = 3")
    with QuestionQueue(path, read_only=True) as old:
        assert old.named_annotators() == [] and old.annotator_of_token("anything") is None
    with QuestionQueue(path) as upgraded:
        token = upgraded.add_annotator_tokens(["alice"])["alice"]
        assert upgraded.annotator_of_token(token) == "alice" and upgraded.annotator_of_token(token[:-1]) is None


def test_status_counts_questions_and_answers_apart_and_reports_a_merged_step_from_its_answers(queue, tmp_path):
    first = queue.lease_next("alice", LEASE_S)
    queue.answer("alice", first.id, "yes", 1.0)
    second = queue.lease_next("alice", LEASE_S)
    queue.answer("alice", second.id, "no", 1.0)
    queue.set_answers_wanted(2)  # two of three questions have an answer; none has two
    queue.answer("bob", first.id, "yes", 1.0)
    (summary,) = queue.summaries()
    assert (summary.selected, summary.answered, summary.waiting, summary.answers) == (3, 2, 2, 3)
    assert format_status([summary], trained=set()).startswith(
        "step 0: 3 questions, 2 answered (1 with all 2 answers wanted), 2 waiting; 3 answers (yes 2, no 1, unsure 0)")
    answer_all(queue, "carol", "unsure")
    answer_all(queue, "bob", "yes")
    queue.merge(0)
    before = format_status(queue.summaries(), trained={0})
    # However many answers per question are asked for afterwards, a merged step reads the same: even when its
    # questions' rows say otherwise (as an older apis left them), the merged answers are what counts.
    queue.set_answers_wanted(5)
    with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:
        conn.execute("UPDATE questions SET answers_wanted = 5, complete = 0")
    assert format_status(queue.summaries(), trained={0}) == before
    assert before.startswith("step 0: 3 questions, all answered; 6 answers (yes 3, no 1, unsure 2)")
