"""oracle.kind=human: the loop stores each step's questions, stops (exit status 3) and resumes once answered."""

import json
import shutil
from pathlib import Path

import pytest

from apis.cli import EXIT_WAITING_FOR_ANSWERS, main
from apis.config import ConfigError
from apis.data.coco import DatasetError, load_coco
from apis.data.questions import AnswersPending, QuestionQueue
from apis.data.simulated_oracle import SimulatedOracle
from apis.loop.run import ActiveLearningRun, run_active_loop
from apis.loop.run_dir import step_dir

BOX_COST_S = 7.0


def run_cli(config, overrides, capsys):
    """``apis run``; returns (exit status, stdout)."""
    try:
        main(["run", str(config), *overrides])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().out


def answer_step(run_dir, step, seconds_of):
    """Alice answers even positions yes, bob the others no; ``seconds_of(position)`` is the time each takes."""
    with QuestionQueue(run_dir / "ledger.sqlite") as queue:
        for question in queue.questions(step):
            name, label = ("alice", "yes") if question.position % 2 == 0 else ("bob", "no")
            assert queue.lease_next(name, 60.0) == question
            queue.answer(name, question.id, label, seconds_of(question.position))
        return queue.questions(step)


def test_the_loop_waits_for_people_and_trains_on_their_answers(synth_dir, tmp_path, tiny_overrides, capsys):
    run_dir = tmp_path / "human"
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    overrides = tiny_overrides(synth_dir, run_dir, "oracle.kind=human", "loop.steps=1")
    instances = list(load_coco(synth_dir / "annotations" / "train.json").instances())

    status, out = run_cli(config, overrides, capsys)
    assert status == EXIT_WAITING_FOR_ANSWERS == 3
    count = len(instances)
    assert f"step 0: {count} of {count} questions waiting; answer them with `apis annotate {run_dir}`" in out
    assert not (step_dir(run_dir, 0) / "train").exists()  # nothing trained before the answers are in

    main(["status", str(run_dir)])
    assert f"{len(instances)} waiting" in capsys.readouterr().out

    p0 = answer_step(run_dir, 0, lambda position: 0.5 + position / 10)
    assert sorted(q.ann_id for q in p0) == sorted(i.ann_id for i in instances)
    status, out = run_cli(config, overrides, capsys)
    assert status == 3 and f"step 1: {len(instances)} of {len(instances)} questions waiting" in out
    m0 = json.loads((step_dir(run_dir, 0) / "metrics.json").read_text())
    spent = sum(0.5 + p / 10 for p in range(len(p0)))
    assert m0["annotation_seconds"] == pytest.approx(spent + len(instances) * BOX_COST_S)

    with QuestionQueue(run_dir / "ledger.sqlite") as queue:
        merged = {(a.ann_id, a.x, a.y): a for a in queue.answers()}
        step1 = queue.questions(1)
    assert {(k, a.label, a.annotator) for k, a in merged.items()} == {
        ((q.ann_id, q.x, q.y), 1 if q.position % 2 == 0 else 0, "alice" if q.position % 2 == 0 else "bob") for q in p0}
    assert not {(q.ann_id, q.x, q.y) for q in step1} & set(merged)  # never asked twice
    selection = json.loads((step_dir(run_dir, 1) / "selection.json").read_text())
    assert [(p["ann_id"], p["x"], p["y"]) for p in selection["points"]] == [(q.ann_id, q.x, q.y) for q in step1]
    assert {q.chosen_by for q in step1} == {"entropy"}

    answer_step(run_dir, 1, lambda position: 2.0)
    status, out = run_cli(config, overrides, capsys)
    assert status == 0 and "P1: mask AP" in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["annotation_seconds"] == pytest.approx(spent + 2.0 * len(step1) + len(instances) * BOX_COST_S)
    assert rows[1]["points_per_instance"] == pytest.approx(2.0)

    main(["status", str(run_dir)])
    out = capsys.readouterr().out
    assert f"step 1: {len(step1)} questions, all answered; {len(step1)} answers" in out and "trained" in out
    assert "alice" in out and "bob" in out


def test_people_answer_data_without_masks(synth_dir, tmp_path, tiny_config):
    """Their own training images have boxes only: the run never reads training masks."""
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    (data / "images").symlink_to(synth_dir / "images")
    train = json.loads((synth_dir / "annotations" / "train.json").read_text())
    for annotation in train["annotations"]:
        del annotation["segmentation"]
    (data / "annotations" / "train.json").write_text(json.dumps(train))
    shutil.copy(synth_dir / "annotations" / "val.json", data / "annotations" / "val.json")
    extra = [f"data.train_json={data}/annotations/train.json", "loop.steps=0", "selection.metric=random"]

    with pytest.raises(DatasetError, match="no 'segmentation'"):
        ActiveLearningRun(tiny_config("simulated", *extra))
    cfg = tiny_config("human", "oracle.kind=human", *extra)
    with pytest.raises(AnswersPending):
        run_active_loop(cfg)
    answer_step(Path(cfg.output_dir), 0, lambda position: 1.0)
    assert [row["step"] for row in run_active_loop(cfg)] == [0]


def test_a_human_run_takes_no_oracle_object(tiny_config, synth_dir):
    with pytest.raises(ConfigError, match="do not pass an oracle"):
        ActiveLearningRun(tiny_config("human", "oracle.kind=human"), oracle=SimulatedOracle(lambda ann_id: None))
