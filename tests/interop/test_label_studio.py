"""Label Studio round trip: tasks out, a hand-made Label Studio JSON export back in, checked task by task."""

import copy
import json
import math
import xml.etree.ElementTree as ET

import pytest

from apis.cli import main
from apis.data.questions import QuestionConflict, QuestionError, QuestionQueue
from apis.interop.label_studio import export_tasks, read_answers, store_answers
from apis.loop.human import open_human_run

LABELS = ["yes", "no", "unsure"]


def label_of(question_id):
    """The answer the hand-made export gives to a question."""
    return LABELS[question_id % 3]


@pytest.fixture
def exported(human_run, tmp_path):
    """A run waiting at step 0 and its tasks written by ``apis export-tasks``."""
    _, run_dir = human_run()
    out = tmp_path / "tasks.json"
    main(["export-tasks", str(run_dir), str(out), "--format", "label-studio"])
    return open_human_run(run_dir), json.loads(out.read_text()), out


def label_studio_export(tasks, people=(1,), lead_time=2.5):
    """What Label Studio's JSON export looks like after ``people`` (user ids) answered every task: the task
    with an id, its data, and one annotation per person whose result holds the prediction's regions (Label
    Studio copies them when it pre-labels) and the choice."""
    export = []
    for task_id, task in enumerate(tasks, start=101):
        annotations = [{
            "id": task_id * 10 + user, "completed_by": user, "was_cancelled": False, "lead_time": lead_time,
            "created_at": "2026-11-28T09:30:00.5Z", "task": task_id,
            "result": copy.deepcopy(task["predictions"][0]["result"]) + [{
                "id": f"c{task_id}", "from_name": "answer", "to_name": "image", "type": "choices",
                "value": {"choices": [label_of(task["data"]["apis_question"])]}}],
        } for user in people]
        export.append({"id": task_id, "data": task["data"], "annotations": annotations, "predictions": [task_id]})
    return export


def write(tmp_path, export, name="export.json"):
    path = tmp_path / name
    path.write_text(json.dumps(export))
    return path


def test_tasks_carry_the_ids_the_box_and_the_point(exported):
    run, tasks, out = exported
    with QuestionQueue(run.ledger_path) as queue:
        questions = queue.questions(0)
        run_id = queue.run_id
    assert len(tasks) == len(questions)
    for task, question in zip(tasks, questions):
        data = task["data"]
        image = run.train_set.image(question.image_id)
        assert data["apis_run"] == run_id and data["apis_question"] == question.id
        assert (data["apis_ann_id"], data["apis_x"], data["apis_y"]) == (question.ann_id, question.x, question.y)
        assert data["image"] == f"/data/local-files/?d=images/{image.file_name}"
        box, point = task["predictions"][0]["result"]
        x0, y0, x1, y1 = run.train_set.instance(question.ann_id).bbox_xyxy
        assert box["value"]["x"] == pytest.approx(100 * x0 / image.width)
        assert box["value"]["width"] == pytest.approx(100 * (x1 - x0) / image.width)
        # The point sits at its pixel's centre, so it maps back to the same pixel index.
        assert math.floor(point["value"]["x"] / 100 * image.width) == question.x
        assert point["value"]["y"] == pytest.approx(100 * (question.y + 0.5) / image.height)
    config = ET.fromstring((out.parent / "tasks.label_config.xml").read_text())
    names = {element.get("name") for element in config.iter() if element.get("name")}
    assert names == {"image", "box", "point", "answer"}
    assert [c.get("value") for c in config.iter("Choice")] == ["yes", "no", "unsure"]


def test_the_point_is_large_white_ringed_dark_and_the_choices_sit_beside_the_image(exported):
    _, _, out = exported
    config = ET.fromstring((out.parent / "tasks.label_config.xml").read_text())
    (point,) = config.iter("KeyPoint")
    assert (point.get("fillColor"), point.get("strokeColor"), point.get("opacity")) == ("#ffffff", "#111111", "1")
    assert int(point.get("strokeWidth")) >= 2
    assert "display: flex" in config.get("style")  # a row: the image's column, then the question's
    image_column, question_column = config.findall("View")
    assert image_column.find("Image") is not None and question_column.find("Choices") is not None
    header = question_column.find("Header").get("value")
    assert "$category" in header and "box" not in header  # asks about the object, not about the box


def test_answers_come_back_into_the_ledger(exported, tmp_path, capsys):
    run, tasks, _ = exported
    export = label_studio_export(tasks)
    export[0]["annotations"] = []  # not answered yet
    export[1]["annotations"].append({**export[1]["annotations"][0], "id": 9, "was_cancelled": True})
    main(["import-answers", str(run.run_dir), str(write(tmp_path, export))])
    out = capsys.readouterr().out
    assert f"{len(tasks)} tasks read: {len(tasks) - 1} answers stored" in out and "1 tasks without an answer" in out
    with QuestionQueue(run.ledger_path) as queue:
        responses = queue.responses(0)
        waiting = queue.waiting(0)
    expected = {task["data"]["apis_question"]: label_of(task["data"]["apis_question"]) for task in tasks[1:]}
    assert {r.question_id: {1: "yes", 0: "no", -1: "unsure"}[r.label] for r in responses} == expected
    assert {(r.annotator, r.seconds, r.source) for r in responses} == {("label-studio-user-1", 2.5, "label-studio")}
    assert responses[0].answered_at == "2026-11-28T09:30:00.500000+00:00"
    assert waiting == 1
    # Reading the same export again stores nothing new.
    main(["import-answers", str(run.run_dir), str(write(tmp_path, export))])
    assert f"0 answers stored, {len(tasks) - 1} already in the ledger" in capsys.readouterr().out


def test_two_people_per_question_with_redundancy(exported, tmp_path):
    run, tasks, _ = exported
    path = write(tmp_path, label_studio_export(tasks, people=(1, 2)))
    with QuestionQueue(run.ledger_path) as queue:
        with pytest.raises(QuestionConflict, match=r"task 101 \(question 1\), annotation 1012: question 1 already "
                                                   r"has the 1 answer\(s\) it wants \(from label-studio-user-1\); "
                                                   r"to keep more .* --answers-per-question N"):
            read_answers(queue, path)
        assert queue.responses(0) == []  # all or nothing
        queue.set_answers_wanted(2)
        read_answers(queue, path)
        assert queue.waiting(0) == 0 and len(queue.responses(0)) == 2 * len(tasks)


def edit(export, change):
    export = copy.deepcopy(export)
    change(export)
    return export


def move_point(export):
    point = next(r for r in export[2]["annotations"][0]["result"] if r["type"] == "keypoint")
    point["value"]["x"] += 100 * 3 / point["original_width"]


def second_opinion(export):
    export[3]["annotations"].append({**export[3]["annotations"][0], "id": 77,
                                     "result": [{"type": "choices", "from_name": "answer", "to_name": "image",
                                                 "value": {"choices": ["yes" if label_of(4) != "yes" else "no"]}}]})


@pytest.mark.parametrize(("change", "error", "message"), [
    (lambda e: e[0]["data"].update(apis_run="0123abcd"), QuestionError, r"task 101: comes from another run"),
    (lambda e: e[1]["data"].update(apis_question=9999), QuestionError, r"task 102: question 9999 is not in"),
    (lambda e: e[1]["data"].update(apis_x=e[1]["data"]["apis_x"] + 1), QuestionError,
     r"task 102: its data \(apis_x=.*\) do not match question 2"),
    (move_point, QuestionError, r"task 103 \(question 3\), annotation 1031: the point was moved from"),
    (second_opinion, QuestionError, r"task 104 \(question 4\), annotation 77: label-studio-user-1 answered"),
    (lambda e: e[4]["annotations"][0]["result"].pop(), QuestionError, r"task 105 .*expected one choice"),
    (lambda e: e[4]["annotations"][0]["result"][-1]["value"].update(choices=["maybe"]), QuestionError,
     r"task 105 .*choice 'maybe' is not one of yes, no, unsure"),
    (lambda e: e[4]["annotations"][0].update(lead_time=-1), QuestionError, r"task 105 .*seconds -1"),
    (lambda e: e[4]["annotations"][0].update(completed_by=None), QuestionError, r"task 105 .*names no annotator"),
    (lambda e: e.__setitem__(slice(None), [{"oops": 1}]), QuestionError, r"task #0: not a Label Studio task"),
])
def test_a_bad_export_is_refused_naming_the_task_and_nothing_is_stored(exported, tmp_path, change, error, message):
    run, tasks, _ = exported
    path = write(tmp_path, edit(label_studio_export(tasks), change))
    with QuestionQueue(run.ledger_path) as queue:
        with pytest.raises(error, match=message):
            read_answers(queue, path)
        assert queue.responses(0, include_undone=True) == []


def test_an_answer_that_contradicts_the_ledger_is_refused(exported, tmp_path):
    run, tasks, _ = exported
    export = label_studio_export(tasks)
    with QuestionQueue(run.ledger_path) as queue:
        read_answers(queue, write(tmp_path, export))
        other = "yes" if label_of(1) != "yes" else "no"
        flipped = edit(export, lambda e: e[0]["annotations"][0]["result"][-1]["value"].update(choices=[other]))
        with pytest.raises(QuestionConflict, match=rf"task 101 .*label-studio-user-1 already answered question 1 "
                                                   rf"\({label_of(1)}\)"):
            read_answers(queue, write(tmp_path, flipped, "flipped.json"))


def test_a_merged_step_takes_no_more_answers(exported, tmp_path):
    run, tasks, _ = exported
    export = label_studio_export(tasks)
    with QuestionQueue(run.ledger_path) as queue:
        read_answers(queue, write(tmp_path, export))
        queue.merge(0)
        with pytest.raises(QuestionConflict, match="step 0 was merged"):
            read_answers(queue, write(tmp_path, label_studio_export(tasks, people=(2,)), "late.json"))
        with pytest.raises(QuestionError, match="step 0 was merged and trained on already"):
            export_tasks(queue, run.train_set, 0, tmp_path / "again.json")


def test_a_file_that_is_no_export_is_named(exported, tmp_path):
    run, _, _ = exported
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "object.json").write_text("{}")
    with QuestionQueue(run.ledger_path) as queue:
        with pytest.raises(QuestionError, match=r"bad.json: not a readable JSON file"):
            read_answers(queue, tmp_path / "bad.json")
        with pytest.raises(QuestionError, match=r"object.json: a Label Studio JSON export is a list of tasks"):
            read_answers(queue, tmp_path / "object.json")


def test_a_full_export_reads_again_after_the_step_was_trained_and_only_a_real_change_is_refused(exported, tmp_path,
                                                                                                capsys):
    run, tasks, _ = exported
    export = label_studio_export(tasks)
    path = write(tmp_path, export)
    main(["import-answers", str(run.run_dir), str(path)])
    with QuestionQueue(run.ledger_path) as queue:
        queue.merge(0)
    capsys.readouterr()
    main(["import-answers", str(run.run_dir), str(path)])  # the whole project exported again, after training
    assert f"0 answers stored, {len(tasks)} already in the ledger" in capsys.readouterr().out
    other = "yes" if label_of(2) != "yes" else "no"
    changed = edit(export, lambda e: e[1]["annotations"][0]["result"][-1]["value"].update(choices=[other]))
    with QuestionQueue(run.ledger_path) as queue:
        with pytest.raises(QuestionConflict, match=rf"task 102 \(question 2\), annotation 1021: label-studio-user-1's "
                                                   rf"answer {other} is not the ledger's, and step 0 was merged"):
            read_answers(queue, write(tmp_path, changed, "changed.json"))


def test_json_min_and_csv_exports_are_told_to_use_the_json_export(exported, tmp_path):
    run, tasks, _ = exported
    minimal = [{**task["data"], "id": 101 + i, "answer": "yes", "annotator": 1, "lead_time": 2.0}
               for i, task in enumerate(tasks)]  # Label Studio's JSON-MIN: the data and the choice, flat
    csv = "image,category,apis_run,apis_question,answer,annotator\n/data/x.png,circle,abc,1,yes,1\n"
    with QuestionQueue(run.ledger_path) as queue:
        with pytest.raises(QuestionError, match=r"min.json: a JSON-MIN export; use Label Studio's JSON export"):
            read_answers(queue, write(tmp_path, minimal, "min.json"))
        (tmp_path / "export.csv").write_text(csv)
        with pytest.raises(QuestionError, match=r"export.csv: a CSV or TSV export; use Label Studio's JSON export"):
            read_answers(queue, tmp_path / "export.csv")


def test_tasks_not_made_by_apis_are_skipped_and_counted(exported, tmp_path, capsys):
    run, tasks, _ = exported
    export = label_studio_export(tasks)
    image_only = {"id": 500, "data": {"image": "/data/local-files/?d=images/0.png"},
                  "annotations": [{"id": 5001, "completed_by": 1, "result": [
                      {"type": "choices", "from_name": "answer", "to_name": "image", "value": {"choices": ["yes"]}}]}]}
    main(["import-answers", str(run.run_dir), str(write(tmp_path, [*export, image_only, image_only]))])
    out = capsys.readouterr().out
    assert f"{len(tasks) + 2} tasks read: {len(tasks)} answers stored" in out
    assert "2 tasks without apis_question skipped" in out


def test_an_import_takes_answers_to_questions_leased_on_the_page_and_speaks_of_no_lease(exported, tmp_path):
    run, tasks, _ = exported
    with QuestionQueue(run.ledger_path) as queue:
        leased = queue.lease_next("alice", lease_s=300)
        read_answers(queue, write(tmp_path, label_studio_export(tasks)))
        assert leased.id in {r.question_id for r in queue.responses(0)}
        with pytest.raises(QuestionConflict) as refused:  # a second person's answer, one wanted
            read_answers(queue, write(tmp_path, label_studio_export(tasks, people=(2,)), "second.json"))
    assert "lease" not in str(refused.value)


@pytest.mark.parametrize(("completed_by", "users", "name"), [
    (7, {}, "label-studio-user-7"),
    (7, {7: "ann@example.org"}, "ann@example.org"),
    ({"id": 7, "email": "ann@example.org", "username": "ann"}, {}, "ann@example.org"),
    ({"id": 7, "email": "", "username": "ann"}, {}, "ann"),
    ({"id": 7, "first_name": "Ann", "last_name": "Lee"}, {}, "Ann Lee"),
    ({"id": 7}, {7: "ann@example.org"}, "ann@example.org"),
])
def test_annotators_are_named_by_email_where_label_studio_gives_one(exported, completed_by, users, name):
    run, tasks, _ = exported
    export = label_studio_export(tasks[:1])
    export[0]["annotations"][0]["completed_by"] = completed_by
    with QuestionQueue(run.ledger_path) as queue:
        store_answers(queue, export, "api", users=users)
        assert [r.annotator for r in queue.responses(0)] == [name]


def test_a_withdrawn_answer_stays_withdrawn_until_it_is_changed_in_label_studio(exported, tmp_path, capsys):
    run, tasks, _ = exported
    export = label_studio_export(tasks)
    main(["import-answers", str(run.run_dir), str(write(tmp_path, export))])
    capsys.readouterr()
    main(["answers", "withdraw", str(run.run_dir), "--question", "2"])
    assert f"withdrew label-studio-user-1's answer {label_of(2)} to question 2 (label-studio" in capsys.readouterr().out
    with QuestionQueue(run.ledger_path) as queue:
        assert queue.waiting(0) == 1 and 2 not in {r.question_id for r in queue.responses(0)}
    main(["import-answers", str(run.run_dir), str(write(tmp_path, export))])
    assert "1 answers withdrawn from the ledger left out" in capsys.readouterr().out
    other = "yes" if label_of(2) != "yes" else "no"
    changed = edit(export, lambda e: e[1]["annotations"][0]["result"][-1]["value"].update(choices=[other]))
    main(["import-answers", str(run.run_dir), str(write(tmp_path, changed))])
    assert "1 answers stored" in capsys.readouterr().out
    with QuestionQueue(run.ledger_path) as queue:
        assert [r.label for r in queue.responses(0) if r.question_id == 2] == [{"yes": 1, "no": 0}[other]]


def test_withdraw_needs_the_annotator_of_several_answers_and_refuses_a_merged_step(exported, tmp_path, capsys):
    run, tasks, _ = exported
    main(["import-answers", str(run.run_dir), str(write(tmp_path, label_studio_export(tasks, people=(1, 2)))),
          "--answers-per-question", "2"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["answers", "withdraw", str(run.run_dir), "--question", "1"])
    assert "question 1 has answers by label-studio-user-1, label-studio-user-2; say whose" in capsys.readouterr().err
    main(["answers", "withdraw", str(run.run_dir), "--question", "1", "--annotator", "label-studio-user-2"])
    with QuestionQueue(run.ledger_path) as queue:
        assert [r.annotator for r in queue.responses(0) if r.question_id == 1] == ["label-studio-user-1"]
        queue.withdraw(1)
        read_answers(queue, write(tmp_path, label_studio_export(tasks[:1], people=(3, 4)), "q1.json"))
        queue.merge(0)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["answers", "withdraw", str(run.run_dir), "--question", "3", "--annotator", "label-studio-user-1"])
    assert "question 3: step 0 was merged" in capsys.readouterr().err
