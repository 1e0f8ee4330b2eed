import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest

from apis.data.ledger import Answer, BoughtMask, LedgerError, PointLedger
from apis.data.points import read_pointsup
from apis.utils.errors import ApisError
from apis.utils.io import WriteFailed

# Instance 1: box xyxy (2, 3, 8, 9) in a 20x20 image 10 -> candidate pixels x in 2..7, y in 3..8
# (pixel centre x + 0.5 must lie in [2, 8]). Instance 2: box (0, 0, 4, 4) on image 11.
INSTANCES = [(1, 10, (2.0, 3.0, 8.0, 9.0), 20, 20), (2, 11, (0.0, 0.0, 4.0, 4.0), 20, 20)]


def answer(ann_id=1, x=2, y=3, label=1, step=0, image_id=None, chosen_by="p0-random", cost_s=0.9):
    image_id = {1: 10, 2: 11}.get(ann_id, 10) if image_id is None else image_id
    return Answer(ann_id=ann_id, image_id=image_id, x=x, y=y, label=label, step=step, chosen_by=chosen_by,
                  annotator="simulated-oracle", cost_s=cost_s)


@pytest.fixture
def ledger(tmp_path):
    with PointLedger(tmp_path / "ledger.sqlite") as ledger:
        ledger.register_instances(INSTANCES)
        yield ledger


def test_register_instances_is_idempotent_and_rejects_conflicts(ledger):
    assert ledger.register_instances(INSTANCES) == 0
    with pytest.raises(ValueError, match="instance 2 is already registered"):
        ledger.register_instances([(3, 12, (0, 0, 1, 1), 5, 5), (2, 11, (0.0, 0.0, 4.0, 5.0), 20, 20)])
    # the call failed as a whole: instance 3 was not kept
    with pytest.raises(ValueError, match="annotation 3 is not registered"):
        ledger.record([answer(ann_id=3, image_id=12, x=0, y=0)])


def test_record_stores_answers_and_skips_points_already_asked(ledger):
    first = [answer(x=2, y=3, label=1), answer(x=7, y=8, label=0), answer(ann_id=2, x=0, y=0, label=-1)]
    assert ledger.record(first) == 3
    again = [answer(x=2, y=3, label=0, step=1), answer(x=4, y=4, label=1, step=1), answer(x=4, y=4, step=1)]
    assert ledger.record(again) == 1
    stored = ledger.answers()
    assert stored == first + [again[1]]  # the first answer for a point wins; field values round-trip
    assert ledger.last_step() == 1
    assert ledger.total_cost_s() == pytest.approx(0.9 * 4)
    assert ledger.total_cost_s(max_step=0) == pytest.approx(0.9 * 3)


@pytest.mark.parametrize(("bad", "message"), [
    (answer(x=8, y=3), r"annotation 1 at point \(8, 3\): the point is not a candidate of box"),
    (answer(x=2, y=9), r"annotation 1 at point \(2, 9\): the point is not a candidate of box"),
    (answer(x=1, y=5), r"annotation 1 at point \(1, 5\): the point is not a candidate of box"),
    (answer(ann_id=5, image_id=10), r"annotation 5 at point \(2, 3\): annotation 5 is not registered"),
    (answer(image_id=11), r"annotation 1 at point \(2, 3\): image id 11, but the annotation is on image 10"),
])
def test_a_bad_answer_rejects_the_whole_batch(ledger, bad, message):
    batch = [answer(x=2, y=3), answer(x=7, y=8), bad, answer(ann_id=2, x=3, y=3)]
    with pytest.raises(ValueError, match=message):
        ledger.record(batch)
    assert ledger.answers() == []
    assert ledger.record([a for a in batch if a is not bad]) == 3


def test_many_instances_and_answers_are_checked_in_bulk_like_one_by_one(tmp_path):
    """5,000 instances (several reads of the instances table per check): each answer is checked against its
    own instance, a bad one near the end still names itself and the batch stores nothing, and registering
    the same rows again, or one instance twice in one call with two boxes, behaves as for one instance."""
    rows = [(ann_id, 100 + ann_id % 7, (ann_id % 13, 1.0, ann_id % 13 + 3.0, 5.0), 40, 30)
            for ann_id in range(1, 5001)]
    with PointLedger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.register_instances(rows) == 5000
        assert ledger.register_instances(reversed(rows)) == 0
        with pytest.raises(ValueError, match="instance 5001 is given twice"):
            ledger.register_instances([(5001, 1, (0, 0, 2, 2), 9, 9), (5001, 1, (0, 0, 2, 3), 9, 9)])
        assert len(ledger.instance_ids()) == 5000
        answers = [Answer(ann_id, image_id, int(box[0]) + 2, 4, 1, 0, "p0-random", "simulated-oracle", 0.9)
                   for ann_id, image_id, box, _, _ in rows]
        bad = Answer(4991, rows[4990][1], int(rows[4990][2][0]) + 3, 4, 1, 0, "p0-random", "simulated-oracle", 0.9)
        with pytest.raises(ValueError, match=r"annotation 4991 at point \(\d+, 4\): the point is not a candidate"):
            ledger.record(answers[:4990] + [bad] + answers[4991:])
        assert ledger.answers() == []
        assert ledger.record(answers) == 5000
        assert ledger.answers() == answers


def test_answer_validates_its_fields():
    with pytest.raises(ValueError, match=r"annotation 1 at point \(2, 3\): label 2 is not one of"):
        answer(label=2)
    with pytest.raises(ValueError, match="step -1 is negative"):
        answer(step=-1)
    with pytest.raises(ValueError, match="cost_s"):
        answer(cost_s=float("nan"))
    with pytest.raises(ValueError, match=r"annotation 1 at point \(2\.5, 3\)"):
        answer(x=2.5)
    with pytest.raises(ValueError, match="not in UTC"):
        Answer(1, 10, 2, 3, 1, 0, "random", "Ada", 0.9, answered_at="2024-05-01T12:00:00")
    numpy_answer = Answer(np.int64(1), np.int64(10), np.int32(2), np.int64(3), np.int8(1), 0, "random", "Ada",
                          np.float32(0.5))
    assert type(numpy_answer.x) is int and numpy_answer.x == 2 and type(numpy_answer.cost_s) is float


def test_points_and_asked_by_step(ledger):
    ledger.record([answer(x=2, y=3, label=1), answer(ann_id=2, x=1, y=1, label=0)])
    ledger.record([answer(x=5, y=5, label=-1, step=1, chosen_by="entropy"),
                   answer(ann_id=2, x=3, y=2, label=-1, step=1, chosen_by="entropy")])
    ledger.record([answer(x=6, y=4, label=0, step=2, chosen_by="entropy")])

    at_0 = ledger.points(max_step=0)
    assert sorted(at_0) == [1, 2]
    np.testing.assert_array_equal(at_0[1].coords, [[2, 3]])
    np.testing.assert_array_equal(at_0[1].labels, [1])

    at_2 = ledger.points(max_step=2)
    np.testing.assert_array_equal(at_2[1].coords, [[2, 3], [6, 4]])
    np.testing.assert_array_equal(at_2[1].labels, [1, 0])
    np.testing.assert_array_equal(at_2[2].coords, [[1, 1]])

    with_unsure = ledger.points(max_step=1, include_unsure=True)
    np.testing.assert_array_equal(with_unsure[1].coords, [[2, 3], [5, 5]])
    np.testing.assert_array_equal(with_unsure[1].labels, [1, -1])
    np.testing.assert_array_equal(ledger.points(include_unsure=True)[1].labels, [1, -1, 0])

    assert [a.step for a in ledger.answers(max_step=1)] == [0, 0, 1, 1]
    assert ledger.step_answers(1) == [a for a in ledger.answers() if a.step == 1] and len(ledger.step_answers(1)) == 2
    assert ledger.step_answers(3) == []
    assert [ledger.answer_count(max_step=s) for s in (0, 1, 2)] == [2, 4, 5] and ledger.answer_count() == 5
    assert ledger.asked() == {1: {(2, 3), (5, 5), (6, 4)}, 2: {(1, 1), (3, 2)}}
    assert ledger.asked(ann_id=2) == {2: {(1, 1), (3, 2)}}


def test_empty_ledger(ledger):
    assert ledger.last_step() is None
    assert ledger.total_cost_s() == 0.0
    assert ledger.points() == {} and ledger.asked() == {} and ledger.answers() == []


def test_export_pointsup_at_a_step(ledger, tmp_path):
    coco = {
        "images": [{"id": 10, "width": 20, "height": 20, "file_name": "a.png"},
                   {"id": 11, "width": 20, "height": 20, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "nucleus"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "bbox": [2.0, 3.0, 6.0, 6.0], "iscrowd": 0,
             "segmentation": [[2.0, 3.0, 8.0, 3.0, 8.0, 9.0]]},
            {"id": 2, "image_id": 11, "category_id": 1, "bbox": [0.0, 0.0, 4.0, 4.0], "iscrowd": 0,
             "segmentation": [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0]]},
        ],
    }
    ledger.record([answer(x=2, y=3, label=1), answer(ann_id=2, x=1, y=1, label=0)])
    ledger.record([answer(x=6, y=4, label=0, step=1), answer(ann_id=2, x=2, y=2, label=-1, step=1)])

    out = tmp_path / "export" / "p0.json"
    assert ledger.export_pointsup(coco, out, step=0) == 2
    anns = {ann["id"]: ann for ann in json.loads(out.read_text())["annotations"]}
    assert anns[1]["point_coords"] == [[2, 3]] and anns[1]["point_labels"] == [1]
    assert anns[2]["point_coords"] == [[1, 1]] and anns[2]["point_labels"] == [0]
    assert all("segmentation" not in ann for ann in anns.values())

    ledger.export_pointsup(coco, out, step=1)
    read = read_pointsup(out)
    np.testing.assert_array_equal(read[1].coords, [[2, 3], [6, 4]])
    np.testing.assert_array_equal(read[1].labels, [1, 0])
    np.testing.assert_array_equal(read[2].coords, [[1, 1]])  # the unsure answer is not exported

    with pytest.raises(LedgerError, match=r"no answers at step 2 \(last step: 1\)"):
        ledger.export_pointsup(coco, out, step=2)


def test_reopen_sees_the_same_answers_and_concurrent_readers_see_commits(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with PointLedger(path) as writer, PointLedger(path) as reader:
        writer.register_instances(INSTANCES)
        writer.record([answer(x=2, y=3), answer(x=3, y=3)])
        assert reader.asked() == {1: {(2, 3), (3, 3)}}
    with PointLedger(path) as reopened:
        assert [(a.x, a.y) for a in reopened.answers()] == [(2, 3), (3, 3)]
        assert reopened.record([answer(x=2, y=3)]) == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(LedgerError, match=r"ledger schema version \[99\], expected 4"):
        PointLedger(path)


# The child records BATCH_SIZE answers per batch, one batch per step, and prints how many batches are
# committed after each commit. In batch HANG_BATCH a temporary trigger (on the child's own connection)
# stops inside the transaction after HANG_AFTER rows were inserted, with a tiny page cache so that
# uncommitted pages spill into the WAL file; the parent then kills the child with SIGKILL.
BATCH_SIZE, HANG_BATCH, HANG_AFTER = 200, 6, 150
CHILD = textwrap.dedent("""
    import sys, time
    from apis.data.ledger import Answer, PointLedger

    path, batch_size, hang_batch, hang_after = sys.argv[1], *map(int, sys.argv[2:])

    def hang(row_in_batch):
        print("hanging", flush=True)
        time.sleep(60)

    with PointLedger(path) as ledger:
        ledger.register_instances([(1, 1, (0.0, 0.0, 1000.0, 1000.0), 1000, 1000)])
        ledger._conn.execute("PRAGMA cache_size = 2")
        ledger._conn.create_function("hang", 1, hang)
        ledger._conn.execute(
            f"CREATE TEMP TRIGGER stop_mid_batch AFTER INSERT ON answers "
            f"WHEN NEW.step = {hang_batch} AND NEW.id = {hang_batch * batch_size + hang_after} "
            f"BEGIN SELECT hang(NEW.id); END")
        for batch in range(hang_batch + 1):
            first = batch * batch_size
            ledger.record([Answer(1, 1, k % 1000, k // 1000, k % 2, batch, "random", "simulated-oracle", 0.9)
                           for k in range(first, first + batch_size)])
            print(f"committed {batch + 1}", flush=True)
""")


def test_sigkill_mid_batch_keeps_committed_batches_whole(tmp_path):
    path = tmp_path / "ledger.sqlite"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(BATCH_SIZE), str(HANG_BATCH),
                              str(HANG_AFTER)], stdout=subprocess.PIPE, text=True)
    committed = 0
    try:
        for line in child.stdout:
            if line.startswith("committed"):
                committed = int(line.split()[1])
            if line.strip() == "hanging":
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert committed == HANG_BATCH

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows_per_batch = Counter(step for (step,) in conn.execute("SELECT step FROM answers"))
    assert rows_per_batch == {batch: BATCH_SIZE for batch in range(committed)}
    with PointLedger(path) as ledger:
        assert len(ledger.answers()) == committed * BATCH_SIZE
        assert ledger.last_step() == committed - 1


def _filled_ledger(path, count=400):
    """A ledger with ``count`` answers on one 100x100 box (several database pages)."""
    with PointLedger(path) as ledger:
        ledger.register_instances([(1, 10, (0.0, 0.0, 100.0, 100.0), 100, 100)])
        ledger.record([answer(x=i % 100, y=i // 100) for i in range(count)])


@pytest.mark.parametrize("damage", ["random-bytes", "half-truncated"])
def test_a_damaged_ledger_file_is_refused_naming_it_and_left_as_it_was(tmp_path, damage):
    """Issue 13, case 2: a bare sqlite3.DatabaseError without the path; now LedgerError with a way on."""
    path = tmp_path / "ledger.sqlite"
    _filled_ledger(path)
    data = path.read_bytes()
    damaged = os.urandom(len(data)) if damage == "random-bytes" else data[: len(data) // 2]
    path.write_bytes(damaged)
    with pytest.raises(LedgerError, match=rf"{path}: not a readable answer ledger .*restore the file from a backup"):
        PointLedger(path)
    assert path.read_bytes() == damaged


def test_steps_lists_the_steps_with_answers(ledger):
    assert ledger.steps() == set()
    ledger.record([answer(step=0), answer(x=3, step=2)])
    assert ledger.steps() == {0, 2}


def test_bought_masks_are_stored_once_counted_in_the_cost_and_read_by_step(ledger):
    ledger.record([answer(x=2, y=3, step=0)])
    bought = [BoughtMask(1, 10, step=0, chosen_by="afis-random", annotator="simulated-oracle", cost_s=79.2),
              BoughtMask(2, 11, step=1, chosen_by="afis-min-det-loss", annotator="simulated-oracle", cost_s=79.2)]
    assert ledger.record_masks(bought) == 2
    assert ledger.record_masks(bought[:1]) == 0  # an instance's mask is bought once
    assert [m.ann_id for m in ledger.masks(max_step=0)] == [1] and ledger.masks() == bought
    assert ledger.total_cost_s(max_step=0) == pytest.approx(0.9 + 79.2)
    assert ledger.total_cost_s() == pytest.approx(0.9 + 2 * 79.2)
    with pytest.raises(ValueError, match="mask of annotation 2 on image 10: no such registered instance"):
        ledger.record_masks([BoughtMask(2, 10, 2, "afis-random", "simulated-oracle", 79.2)])


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize(("damage", "message"), [
    ("empty", "the file is empty"),
    ("DROP TABLE answers", r"without its table\(s\) answers: it is damaged"),
    ("DROP TABLE questions", r"without its table\(s\) questions: it is damaged"),
    ("DROP TABLE schema_version", "no schema_version table"),
    ("UPDATE schema_version SET version = 99", r"schema version \[99\], expected 4"),
])
def test_a_damaged_ledger_is_reported_and_never_repaired(tmp_path, damage, message, read_only):
    path = tmp_path / "ledger.sqlite"
    with PointLedger(path) as ledger:
        ledger.register_instances(INSTANCES)
    if damage == "empty":
        path.write_bytes(b"")
    else:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(damage)
        conn.close()  # the last connection checkpoints the WAL into the file and removes it
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(LedgerError, match=message) as refused:
        PointLedger(path, read_only=read_only)
    assert str(path) in str(refused.value) and "Nothing was changed" in str(refused.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_version_2_ledger_read_only_has_no_masks(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with PointLedger(path) as ledger:
        ledger.register_instances(INSTANCES)
        ledger.record([answer()])
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE masks")
        conn.execute("UPDATE schema_version SET version = 2")
    with PointLedger(path, read_only=True) as old:
        assert old.masks() == [] and old.total_cost_s() == pytest.approx(0.9)
    with PointLedger(path) as upgraded:
        assert upgraded.masks() == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(4,)]


@pytest.mark.parametrize("fields, message", [
    ({"step": -1}, "step -1 is negative"),
    ({"cost_s": float("nan")}, "cost_s nan is not a non-negative number"),
    ({"annotator": ""}, "annotator must be a non-empty string"),
    ({"answered_at": "2026-11-30T10:00:00+01:00"}, "is not in UTC"),
    ({"ann_id": 1.5}, "mask of annotation 1.5"),
])
def test_a_bought_mask_is_checked_like_an_answer(fields, message):
    record = {"ann_id": 1, "image_id": 10, "step": 0, "chosen_by": "afis-random", "annotator": "simulated-oracle",
              "cost_s": 79.2} | fields
    with pytest.raises(ValueError, match=message):
        BoughtMask(**record)


def _batch(first, size=50, step=0):
    """``size`` answers on the points ``first, first + 1, ...`` of a 1000x1000 box (instance 1 of image 1)."""
    return [Answer(1, 1, k % 1000, k // 1000, 1, step, "random", "simulated-oracle", 0.9)
            for k in range(first, first + size)]


def test_a_full_database_rolls_the_batch_back_names_the_file_and_keeps_every_earlier_answer(tmp_path):
    """SQLite's own full database (``max_page_count``: SQLITE_FULL, the transaction rolled back by SQLite, as on a
    full disk): batches are recorded until one does not fit."""
    path = tmp_path / "ledger.sqlite"
    with PointLedger(path) as ledger:
        ledger.register_instances([(1, 1, (0.0, 0.0, 1000.0, 1000.0), 1000, 1000)])
        pages = ledger._conn.execute("PRAGMA page_count").fetchone()[0]
        ledger._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        acknowledged = []
        with pytest.raises(WriteFailed) as full:
            for first in range(0, 100_000, 50):
                batch = _batch(first)
                ledger.record(batch)
                acknowledged += batch
        assert 0 < len(acknowledged) < 100_000
        assert isinstance(full.value, ApisError)  # the CLI's one line, exit 2
        assert str(full.value) == (
            f"{path}: could not be written (database or disk is full); this change was rolled back whole and the "
            f"{len(acknowledged)} answer(s) stored before it are kept. Free space, then run the same command "
            "again to go on")
        with PointLedger(path, read_only=True) as other:  # what another process reads
            assert other.answers() == acknowledged
        ledger._conn.execute("PRAGMA max_page_count = 1073741823")  # space freed: the failed batch goes in
        assert ledger.record(batch) == 50
    with PointLedger(path) as reopened:
        assert reopened.answers() == acknowledged + batch


def test_a_new_ledger_on_a_full_disk_is_removed_so_that_the_same_command_starts_it_again(tmp_path, monkeypatch):
    path = tmp_path / "run" / "ledger.sqlite"
    connect = sqlite3.connect

    def one_page(*args, **kwargs):  # SQLite's own SQLITE_FULL: not even the tables fit
        conn = connect(*args, **kwargs)
        conn.execute("PRAGMA max_page_count = 1")
        return conn

    monkeypatch.setattr(sqlite3, "connect", one_page)
    with pytest.raises(WriteFailed, match=rf"^{path}: could not be created \(database or disk is full\); nothing "
                                          "was stored, and the new file was removed"):
        PointLedger(path)
    assert list(path.parent.iterdir()) == []
    monkeypatch.setattr(sqlite3, "connect", connect)
    with PointLedger(path) as ledger:
        assert ledger.answer_count() == 0


FILL_ON_A_SMALL_FILESYSTEM = textwrap.dedent("""
    import json, os, sys
    from apis.data.ledger import Answer, PointLedger
    from apis.utils.io import WriteFailed

    folder = sys.argv[1]
    ledger = PointLedger(f"{folder}/ledger.sqlite")
    ledger.register_instances([(1, 1, (0.0, 0.0, 1000.0, 1000.0), 1000, 1000)])
    acknowledged = 0
    try:
        while True:
            ledger.record([Answer(1, 1, k % 1000, k // 1000, 1, 0, "random", "simulated-oracle", 0.9)
                           for k in range(acknowledged, acknowledged + 50)])
            acknowledged += 50
    except WriteFailed as error:
        message = str(error)
    with PointLedger(f"{folder}/ledger.sqlite", read_only=True) as other:
        stored = [(a.x, a.y) for a in other.answers()]
    try:
        PointLedger(f"{folder}/new.sqlite")
    except WriteFailed as error:
        created = str(error)
    print(json.dumps({"acknowledged": acknowledged, "stored": stored, "message": message, "created": created,
                      "files": sorted(os.listdir(folder))}))
""")


def test_a_really_full_filesystem_rolls_back_the_batch_and_keeps_every_earlier_answer(small_filesystem):
    """The kernel's ENOSPC on a 512 KiB tmpfs, through SQLite: the same messages as the simulated cases."""
    out = json.loads(small_filesystem(FILL_ON_A_SMALL_FILESYSTEM, kib=512))
    assert out["acknowledged"] > 0
    assert out["stored"] == [[k % 1000, k // 1000] for k in range(out["acknowledged"])]
    assert out["message"].endswith(
        "/ledger.sqlite: could not be written (database or disk is full); this change was rolled back whole and "
        f"the {out['acknowledged']} answer(s) stored before it are kept. Free space, then run the same command again "
        "to go on")
    assert out["created"].endswith("/new.sqlite: could not be created (database or disk is full); nothing was "
                                   "stored, and the new file was removed. Free space, then run the same command "
                                   "again")
    assert out["files"] == ["ledger.sqlite", "ledger.sqlite-shm", "ledger.sqlite-wal"]
