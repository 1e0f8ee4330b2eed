"""``loop.points_from``: a run trained on the points another run's model chose (the transfer test)."""

import shutil
from pathlib import Path

import pytest

from apis.config import ConfigError
from apis.data.questions import PointToAsk, QuestionQueue
from apis.loop.run import run_active_loop
from apis.loop.run_dir import step_dir


def _answers(run_dir):
    from apis.data.ledger import PointLedger

    with PointLedger(Path(run_dir) / "ledger.sqlite", read_only=True) as ledger:
        return ledger.answers()


def _key(answer):
    return answer.step, answer.ann_id, answer.x, answer.y, answer.label, answer.chosen_by, answer.cost_s


def test_a_run_trains_on_the_source_runs_points_at_every_step(finished_runs, tiny_config):
    source_cfg, source_rows = finished_runs["entropy"]
    cfg = tiny_config("transfer", "seed=5", "model.fpn_channels=24", f"loop.points_from={source_cfg.output_dir}")
    rows = run_active_loop(cfg)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert sorted(map(_key, _answers(cfg.output_dir))) == sorted(map(_key, _answers(source_cfg.output_dir)))
    for own, source in zip(rows, source_rows):  # the same points, so the same annotation time
        assert own["annotation_seconds"] == pytest.approx(source["annotation_seconds"])
        assert own["points_per_instance"] == source["points_per_instance"]
    for step in (1, 2):  # nothing selected: the source's model chose
        assert not (step_dir(cfg.output_dir, step) / "selection.json").exists()
        assert (step_dir(cfg.output_dir, step) / "train" / "model_final.pth").exists()


def test_a_source_without_the_step_is_refused_before_work(finished_runs, tiny_config):
    source = finished_runs["entropy"][0].output_dir
    cfg = tiny_config("too_far", "loop.steps=3", f"loop.points_from={source}")
    with pytest.raises(ConfigError, match=r"no answers for step 3 \(steps answered: 0, 1, 2\).*loop.steps=2"):
        run_active_loop(cfg)
    assert not Path(cfg.output_dir).exists()


def test_a_source_with_unanswered_questions_is_refused(finished_runs, tiny_config, tmp_path):
    source = Path(finished_runs["entropy"][0].output_dir)
    copy = tmp_path / "asking"
    copy.mkdir()
    for name in ("config.yaml", "ledger.sqlite"):
        shutil.copy(source / name, copy / name)
    with QuestionQueue(copy / "ledger.sqlite") as queue:
        answer = queue.answers()[0]
        queue.post(3, [PointToAsk(answer.ann_id, answer.image_id, answer.x + 1, answer.y, "entropy")])
    cfg = tiny_config("from_asking", "loop.steps=3", f"loop.points_from={copy}")
    with pytest.raises(ConfigError, match=r"1 question\(s\) of step 3 are not answered"):
        run_active_loop(cfg)
    with QuestionQueue(copy / "ledger.sqlite") as queue:
        (question,) = queue.questions(3)
        queue.answer("ann", question.id, 1, seconds=1.0)
    with pytest.raises(ConfigError, match="step 3's questions are answered there but not merged yet"):
        run_active_loop(cfg)


def test_the_metric_must_name_the_strategy_that_chose_the_points(finished_runs, tiny_config):
    source = finished_runs["entropy"][0].output_dir
    with pytest.raises(ConfigError, match="chose its points with 'entropy'; set selection.metric=entropy"):
        run_active_loop(tiny_config("renamed", "selection.metric=random", f"loop.points_from={source}"))
    with pytest.raises(ConfigError, match="not a run directory"):
        run_active_loop(tiny_config("nowhere", f"loop.points_from={source}_missing"))
