"""The run directory: where a step's files live, and that a step counts as done only with its metrics.json."""

import json

import pytest

from apis.loop.run_dir import RunDirectory


def test_members_live_in_train_then_train_member_n(tmp_path):
    run = RunDirectory(tmp_path, members=3)
    assert run.member(0, 0) == tmp_path / "step_000" / "train"
    assert run.member(12, 2) == tmp_path / "step_012" / "train_member2"
    for index in range(3):
        run.member(1, index).mkdir(parents=True)
        (run.member(1, index) / "model_final.pth").write_bytes(b"")
    assert run.final_checkpoints(1) == [str(run.member(1, i) / "model_final.pth") for i in range(3)]
    with pytest.raises(FileNotFoundError, match="step_002/train/model_final.pth: step 2 has no final checkpoint"):
        run.final_checkpoints(2)


def test_a_step_is_done_once_its_metrics_are_written(tmp_path):
    run = RunDirectory(tmp_path)
    assert not run.is_done(0) and run.metrics(2) == [] and run.read_selection(1) is None
    run.write_selection(1, {"step": 1, "points": []})
    assert run.read_selection(1) == {"step": 1, "points": []}
    run.finish_step(1, {"step": 1, "mask_AP": 2.0}, steps=2)
    run.finish_step(0, {"step": 0, "mask_AP": 1.0}, steps=2)
    assert run.is_done(0) and run.is_done(1) and not run.is_done(2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == run.metrics(2) == [{"step": 0, "mask_AP": 1.0},
                                                                      {"step": 1, "mask_AP": 2.0}]
