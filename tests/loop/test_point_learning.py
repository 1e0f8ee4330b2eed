"""Point accuracy during training, laid end to end over a run's steps (hand-written training logs)."""

import json
import math

import pytest

from apis.loop.point_learning import final_point_accuracy, point_accuracy_curve


def _log(run_dir, step, rows):
    folder = run_dir / f"step_{step:03d}" / "train"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_steps_are_laid_end_to_end_and_windows_without_points_are_left_out(tmp_path):
    _log(tmp_path, 0, [{"iteration": 2, "point_acc": 0.5}, {"iteration": 4, "point_acc": None},
                       {"iteration": 6, "point_acc": 0.75}])
    _log(tmp_path, 1, [{"iteration": 1, "point_acc": 0.25}, {"iteration": 3, "total_loss": 1.0},
                       {"iteration": 4, "point_acc": 0.5}])
    _log(tmp_path, 3, [{"iteration": 1, "point_acc": 1.0}])  # after a missing step 2: not part of the curve
    assert point_accuracy_curve(tmp_path) == [
        {"iteration": 2, "step": 0, "point_acc": 0.5}, {"iteration": 6, "step": 0, "point_acc": 0.75},
        {"iteration": 7, "step": 1, "point_acc": 0.25}, {"iteration": 10, "step": 1, "point_acc": 0.5}]


def test_final_accuracy_averages_the_last_windows(tmp_path):
    _log(tmp_path, 0, [{"iteration": 1, "point_acc": 0.2}, {"iteration": 2, "point_acc": 0.4},
                       {"iteration": 3, "point_acc": float("nan")}, {"iteration": 4, "point_acc": 0.8}])
    train_dir = tmp_path / "step_000" / "train"
    assert final_point_accuracy(train_dir, windows=2) == pytest.approx(0.6)
    assert final_point_accuracy(train_dir, windows=10) == pytest.approx((0.2 + 0.4 + 0.8) / 3)
    _log(tmp_path, 1, [{"iteration": 1, "total_loss": 1.0}])
    assert math.isnan(final_point_accuracy(tmp_path / "step_001" / "train", windows=2))


def test_the_curve_of_a_finished_run_follows_its_training_logs(finished_runs):
    cfg, _ = finished_runs["entropy"]
    curve = point_accuracy_curve(cfg.output_dir)
    # M0: solver.max_iter=4, then two fine-tunings of loop.finetune_iters=2, logged every iteration.
    assert [c["iteration"] for c in curve] == list(range(1, 9))
    assert [c["step"] for c in curve] == [0, 0, 0, 0, 1, 1, 2, 2]
    assert all(0.0 <= c["point_acc"] <= 1.0 for c in curve)
