"""The loop end to end on tiny data: steps, ledger, shared P0/M0, and resumption after crashes."""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from apis.config import ConfigError
from apis.config_loading import load_config
from apis.config_versions import CONFIG_VERSION
from apis.data.coco import DatasetError, load_coco
from apis.data.coords import box_pixel_range, point_in_box
from apis.data.ledger import Answer, LedgerError, PointLedger
from apis.data.simulated_oracle import SimulatedOracle
from apis.engine.checkpoint import load_checkpoint
from apis.loop.asked_points import draw_initial_points
from apis.loop.run import ActiveLearningRun, run_active_loop
from apis.loop.run_dir import RunDirectoryError, step_dir
from apis.utils.lock import FolderLocked


def _answers(run_dir):
    with PointLedger(run_dir / "ledger.sqlite") as ledger:
        return ledger.answers()


def test_loop_runs_every_step_and_records_one_point_per_instance_per_step(finished_runs):
    cfg, rows = finished_runs["entropy"]
    run_dir = Path(cfg.output_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]
    train = load_coco(cfg.data.train_json)
    instances = {i.ann_id: (i, train.image(i.image_id)) for i in train.instances()}
    answers = _answers(run_dir)
    for step in (0, 1, 2):
        at_step = [a for a in answers if a.step == step]
        assert sorted(a.ann_id for a in at_step) == sorted(instances)  # one point per instance per step
        assert {a.chosen_by for a in at_step} == ({"p0-random"} if step == 0 else {"entropy"})
    for a in answers:
        inst, image = instances[a.ann_id]
        assert point_in_box(a.x, a.y, *inst.bbox_xyxy, image.width, image.height)
    for step in (1, 2):  # a selection never picks a pixel asked before (the ledger would drop it silently)
        chosen = {(p["ann_id"], p["x"], p["y"]) for p in _selection(run_dir, step)["points"]}
        assert len(chosen) == len(instances)
        assert not chosen & {(a.ann_id, a.x, a.y) for a in answers if a.step < step}
    assert rows[2]["points_per_instance"] == pytest.approx(3.0)
    assert rows[1]["annotation_seconds"] == pytest.approx(len(instances) * (2 * 0.9 + 7.0))
    assert rows[1]["selection_seconds"] == _selection(run_dir, 1)["seconds"] > 0
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert (step_dir(run_dir, 2) / "train" / "model_final.pth").exists()


def _selection(run_dir, step):
    return json.loads((step_dir(run_dir, step) / "selection.json").read_text())


def _boundary_distance_by_brute_force(mask, x, y):
    """Distance from pixel (x, y) to the nearest mask pixel that has a 4-neighbour outside the mask."""
    height, width = mask.shape
    best = math.inf
    for row, col in zip(*np.nonzero(mask)):
        neighbours = [(row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)]
        if any(not (0 <= r < height and 0 <= c < width) or not mask[r, c] for r, c in neighbours):
            best = min(best, math.hypot(x - col, y - row))
    return best


def test_selection_statistics_match_a_recomputation_from_the_run_files(finished_runs):
    """``misclassified_share`` and ``boundary_distance_px`` of each step, from selection.json, the ledger's
    answers and the GT masks, computed here without apis.active.point_stats."""
    cfg, rows = finished_runs["entropy"]
    run_dir = Path(cfg.output_dir)
    masks = load_coco(cfg.data.train_json).masks("evaluation")
    answers = _answers(run_dir)
    for step in (1, 2):
        labels = {(a.ann_id, a.x, a.y): a.label for a in answers if a.step == step}
        points = _selection(run_dir, step)["points"]
        judged = [(p["prob_mean"] > 0.5) != bool(labels[(p["ann_id"], p["x"], p["y"])])
                  for p in points if p["prob_mean"] is not None]
        distances = [_boundary_distance_by_brute_force(masks.mask(p["ann_id"]), p["x"], p["y"]) for p in points]
        assert judged and rows[step]["misclassified_share"] == pytest.approx(sum(judged) / len(judged))
        assert rows[step]["boundary_distance_px"] == pytest.approx(np.mean(distances))
        assert rows[step]["empty_prediction_sets"] == sum(1 for p in points if p["k"] == 0)
    assert "misclassified_share" not in rows[0]  # P0 is drawn at random, not selected


def test_p0_depends_only_on_seed():
    class Inst:
        def __init__(self, ann_id):
            self.ann_id, self.bbox_xyxy = ann_id, (2.0, 3.0, 9.0, 7.0)

    class Img:
        image_id, width, height, instances = 1, 12, 10, [Inst(1), Inst(2)]

    class Data:
        images = [Img()]

    first, again, other = (draw_initial_points(Data(), s) for s in (5, 5, 6))
    assert first == again and first != other
    assert [(q.ann_id, q.image_id, q.chosen_by) for q in first] == [(1, 1, "p0-random"), (2, 1, "p0-random")]
    assert all(2 <= q.x < 9 and 3 <= q.y < 7 for q in first)  # the box's pixel centres: x 2..8, y 3..6


def test_strategies_share_p0_and_m0(finished_runs):
    entropy, entropy_rows = finished_runs["entropy"]
    rnd, rows = finished_runs["random"]
    p0 = {(a.ann_id, a.x, a.y, a.label) for a in _answers(Path(entropy.output_dir)) if a.step == 0}
    p0_random = {(a.ann_id, a.x, a.y, a.label) for a in _answers(Path(rnd.output_dir))
                 if a.step == 0}
    assert p0 == p0_random
    # M0 is the entropy run's model, copied rather than trained again (a retraining logs other timings).
    m0, m0_random = (step_dir(run.output_dir, 0) / "train" for run in (entropy, rnd))
    assert (m0_random / "metrics.jsonl").read_bytes() == (m0 / "metrics.jsonl").read_bytes()
    weights = load_checkpoint(m0 / "model_final.pth")["model"]
    weights_random = load_checkpoint(m0_random / "model_final.pth")["model"]
    assert all(torch.equal(weights[key], weights_random[key]) for key in weights)
    assert rows[0] == {**entropy_rows[0], "strategy": "random"}
    assert {a.chosen_by for a in _answers(Path(rnd.output_dir)) if a.step == 1} == {"random"}


def test_a_run_sharing_m0_names_its_own_strategy_and_sets_from_step_0(finished_runs, tiny_config):
    entropy, entropy_rows = finished_runs["entropy"]
    cfg = tiny_config("bald_scales", "selection.metric=bald", "selection.sets=[anchors,scales]",
                      "selection.scales=[48,64]", "loop.steps=0", f"loop.initial_run={entropy.output_dir}")
    (row,) = run_active_loop(cfg)
    assert row == {**entropy_rows[0], "strategy": "bald", "sets": ["anchors", "scales"]}


def test_crash_while_asking_resumes_with_the_same_points(tiny_config, monkeypatch):
    cfg = tiny_config("crash", "loop.steps=1")
    calls = {"n": 0}
    real_answer_many = SimulatedOracle.answer_many

    def answer_then_die(self, ann_ids, xs, ys):
        calls["n"] += 1
        if calls["n"] > 1:  # P0 is asked in full; the crash hits step 1's questions
            raise KeyboardInterrupt
        return real_answer_many(self, ann_ids, xs, ys)

    monkeypatch.setattr(SimulatedOracle, "answer_many", answer_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_active_loop(cfg)
    run_dir = Path(cfg.output_dir)
    selected = json.loads((step_dir(run_dir, 1) / "selection.json").read_text())["points"]
    assert {a.step for a in _answers(run_dir)} == {0}  # P0 stored, nothing half-written for step 1
    monkeypatch.setattr(SimulatedOracle, "answer_many", real_answer_many)

    def no_reselection(*args, **kwargs):
        raise AssertionError("the persisted selection must be reused, not recomputed")

    monkeypatch.setattr("apis.active.prediction.select_with_models", no_reselection)
    run_active_loop(cfg)
    step1 = {(a.ann_id, a.x, a.y) for a in _answers(run_dir) if a.step == 1}
    assert step1 == {(p["ann_id"], p["x"], p["y"]) for p in selected}


def test_resuming_with_another_config_is_refused(tiny_config):
    cfg = tiny_config("strict")
    ActiveLearningRun(cfg).close()
    changed = tiny_config("strict", "selection.metric=variance")
    with pytest.raises(ConfigError, match="different config.*selection.metric: 'entropy' -> 'variance'"):
        ActiveLearningRun(changed)
    more_steps = tiny_config("strict", "loop.steps=5", "data.num_workers=1")
    ActiveLearningRun(more_steps).close()  # more steps, other workers: the same run


@pytest.mark.parametrize(("key", "old_value", "new_value"), [("dynamic_init", "zeros", "fan_in"),
                                                             ("dynamic_activation", "relu", "leaky_relu")])
def test_a_run_written_before_a_config_key_existed_resumes_with_the_old_value(tiny_config, key, old_value,
                                                                              new_value):
    """Runs written before ``model.<key>`` existed (and before config_version) behaved as ``old_value``: they
    resume with it and refuse another value."""
    cfg = tiny_config("legacy", f"model.{key}={old_value}")
    ActiveLearningRun(cfg).close()
    config_path = Path(cfg.output_dir) / "config.yaml"
    lines = config_path.read_text().splitlines(keepends=True)
    config_path.write_text("".join(line for line in lines if line not in (f"  {key}: {old_value}\n",)
                                   and not line.startswith("config_version:")))
    assert key not in config_path.read_text() and "config_version" not in config_path.read_text()
    ActiveLearningRun(cfg).close()
    assert f"config_version: {CONFIG_VERSION}" in config_path.read_text()  # written again, with its version
    with pytest.raises(ConfigError, match=f"different config.*model.{key}"):
        ActiveLearningRun(tiny_config("legacy", f"model.{key}={new_value}"))


def _record(run, step, labels):
    """One answer per label, on the first instances of the training set, at pixel (step, 0) of the box."""
    answers = []
    for (inst, image), label in zip(((inst, im) for im in run.train_set.images for inst in im.instances), labels):
        xs, ys, _, _ = box_pixel_range(*inst.bbox_xyxy, image.width, image.height)
        answers.append(Answer(inst.ann_id, image.image_id, xs + step, ys, label, step, "test", "test", 0.9))
    run.ledger.record(answers)


def test_point_prior_correction_gives_the_points_the_p0_object_share(tiny_config):
    run = ActiveLearningRun(tiny_config("prior", "loop.point_prior_correction=true"))
    _record(run, 0, [1, 1, 1, 0])  # P0: object share pi = 3/4
    _record(run, 1, [0, 0, 1, -1])  # unsure answers are not trained on: P1 share p = 4/7
    loss = run._train_config(1, seed=0).loss
    pi, p = 3 / 4, 4 / 7
    assert loss.point_positive_weight == pytest.approx(pi / p)
    assert loss.point_negative_weight == pytest.approx((1 - pi) / (1 - p))
    # Weighted, the labelled points have P0's object share and keep a mean weight of 1.
    positives, negatives = 4 * loss.point_positive_weight, 3 * loss.point_negative_weight
    assert positives / (positives + negatives) == pytest.approx(pi)
    assert positives + negatives == pytest.approx(7)
    assert run._train_config(0, seed=0).loss.point_positive_weight == 1.0  # M0 trains on P0 itself
    run.close()

    plain = ActiveLearningRun(tiny_config("plain"))
    _record(plain, 0, [1, 1, 1, 0])
    _record(plain, 1, [0, 0, 1, -1])
    plain_loss = plain._train_config(1, seed=0).loss
    assert (plain_loss.point_positive_weight, plain_loss.point_negative_weight) == (1.0, 1.0)
    plain.close()


def test_bad_metric_and_missing_masks_fail_before_work(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="entropy"):
        ActiveLearningRun(tiny_config("bad", "selection.metric=entropyy"))
    assert not (tmp_path / "bad").exists()
    data = json.loads(open(tiny_config("x").data.train_json).read())
    for ann in data["annotations"]:
        ann.pop("segmentation")
    no_masks = tmp_path / "nomask.json"
    no_masks.write_text(json.dumps(data))
    cfg = tiny_config("nomask", f"data.train_json={no_masks}",
                      f"data.image_root={os.path.dirname(tiny_config('x').data.train_json)}/../images")
    with pytest.raises(DatasetError, match="oracle needs GT masks"):
        ActiveLearningRun(cfg)



def test_a_second_run_on_the_same_directory_is_refused_before_it_touches_it(tiny_config):
    """Issue 13, case 1: two runs on one directory interleaved their answers and overwrote config.yaml."""
    first = ActiveLearningRun(tiny_config("shared"))
    config_yaml = (first.run_dir / "config.yaml").read_text()
    try:
        with pytest.raises(FolderLocked, match=rf"shared: in use by another apis process \(pid {os.getpid()}\)"):
            ActiveLearningRun(tiny_config("shared", "selection.metric=random"))
        assert (first.run_dir / "config.yaml").read_text() == config_yaml
    finally:
        first.close()
    ActiveLearningRun(tiny_config("shared")).close()  # free again once the first one closed


@pytest.mark.parametrize("loss", ["emptied", "deleted"])
def test_a_ledger_that_lost_finished_steps_is_refused(tiny_config, loss):
    """Issue 13, case 2: a 0-byte ledger made the run go on as if no point had been asked."""
    cfg = tiny_config("lost")
    run = ActiveLearningRun(cfg)
    _record(run, 0, [1, 0, 1, 1])
    run.dir.finish_step(0, {"step": 0}, cfg.loop.steps)
    run.close()
    ledger = Path(cfg.output_dir) / "ledger.sqlite"
    if loss == "emptied":
        ledger.write_bytes(b"")
    else:
        ledger.unlink()
    message = (rf"{ledger}: the file is empty \(0 bytes\), not an answer ledger. Nothing was changed"
               if loss == "emptied" else rf"{ledger}: holds no answers for step\(s\) 0, which .*lost finished "
                    "\\(step_NNN/metrics.json\\).*Restore ledger.sqlite from a backup")
    with pytest.raises(LedgerError, match=message):
        ActiveLearningRun(cfg)
    with pytest.raises(LedgerError):
        ActiveLearningRun(cfg)  # and its own, too: refused again, not "in use"
    if loss == "emptied":
        assert ledger.read_bytes() == b""  # reported, never "repaired"


@pytest.mark.parametrize(("split", "key", "value", "message"), [
    ("val", "segmentation", [[1, 1, 5, 1]], "a polygon needs at least 3"),
    ("val", "segmentation", {"size": [64, 64], "counts": [0, 10]}, "RLE counts cover 10 pixels"),
    ("train", "segmentation", {"size": [64, 64], "counts": "\x7f"}, "not a valid compressed RLE string"),
    ("train", "bbox", [1.0, float("nan"), 4.0, 4.0], "bbox must be"),
])
def test_bad_masks_and_boxes_fail_before_the_run_dir_is_touched(tiny_config, tmp_path, split, key, value, message):
    """Issue 13, cases 4 and 6: a bad val mask passed until after M0; a NaN box ended in sqlite3.IntegrityError."""
    cfg = tiny_config("x")
    source = Path(getattr(cfg.data, f"{split}_json"))
    data = json.loads(source.read_text())
    data["annotations"][0][key] = value
    broken = tmp_path / f"{split}.json"
    broken.write_text(json.dumps(data))
    cfg = tiny_config("broken", f"data.{split}_json={broken}", f"data.image_root={source.parent.parent / 'images'}")
    with pytest.raises(DatasetError, match=rf"{broken}: annotation {data['annotations'][0]['id']}: .*{message}"):
        ActiveLearningRun(cfg)
    assert not Path(cfg.output_dir).exists()


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: os.access says ``folder`` cannot be written (chmod does not stop root, who runs CI)."""
    real_access = os.access

    def make(folder):
        def access(path, mode, **kwargs):
            return False if mode & os.W_OK and Path(path) == folder else real_access(path, mode, **kwargs)
        monkeypatch.setattr(os, "access", access)
    return make


def test_a_finished_run_in_a_read_only_directory_reads_back_and_writes_nothing(finished_runs, read_only, tmp_path,
                                                                               capsys):
    """Issue 13, case 11: re-running a finished read-only run or exporting its points hit sqlite3.OperationalError."""
    from apis.cli import main

    cfg, rows = finished_runs["entropy"]
    run_dir = Path(cfg.output_dir)
    read_only(run_dir)
    before = _snapshot(run_dir)
    assert run_active_loop(cfg) == rows
    main(["export-points", str(run_dir), "--out", str(tmp_path / "points.json")])
    assert "points of" in capsys.readouterr().out and (tmp_path / "points.json").is_file()
    assert _snapshot(run_dir) == before  # not even SQLite's -shm / -wal files


def test_an_unfinished_run_in_a_read_only_directory_says_what_to_do(tiny_config, read_only):
    cfg = tiny_config("ro")
    ActiveLearningRun(cfg).close()
    read_only(Path(cfg.output_dir))
    with pytest.raises(RunDirectoryError, match=r"ro: cannot be written, but step\(s\) 0, 1, 2 are not finished; "
                                                r"make it writable"):
        ActiveLearningRun(cfg)


def test_export_points_without_a_ledger_creates_none(tmp_path, capsys):
    """Issue 13, case 11: export-points on a folder with only config.yaml created an empty ledger.sqlite."""
    from apis.cli import main

    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(SystemExit) as info:
        main(["export-points", str(tmp_path)])
    assert info.value.code == 2 and f"{tmp_path / 'ledger.sqlite'}: no ledger" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_relative_paths_are_stored_absolute_and_read_from_any_directory(synth_dir, tmp_path, monkeypatch,
                                                                        tiny_overrides, capsys):
    """Issue 13, case 12: `apis export-points RUN` from another directory failed to find the train json."""
    from apis.cli import main

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "data").symlink_to(synth_dir)
    monkeypatch.chdir(tmp_path / "project")
    cfg = load_config(None, tiny_overrides("data", "runs/rel"))
    assert cfg.data.train_json == "data/annotations/train.json"
    run = ActiveLearningRun(cfg)
    _record(run, 0, [1, 0])
    run.close()
    stored = (tmp_path / "project" / "runs" / "rel" / "config.yaml").read_text()
    assert f"train_json: {tmp_path / 'project' / 'data' / 'annotations' / 'train.json'}" in stored
    ActiveLearningRun(cfg).close()  # the same run, given with the same relative paths
    monkeypatch.chdir(tmp_path)
    main(["export-points", "project/runs/rel", "--out", "points.json"])
    assert "points of 2 annotations known at step 0" in capsys.readouterr().out


def test_temporaries_of_a_killed_run_are_removed_when_it_resumes(tiny_config):
    """Issue 13, case 13: a kill during a checkpoint write left .model_*.pth.*.tmp files for good."""
    cfg = tiny_config("tmp")
    ActiveLearningRun(cfg).close()
    run_dir = Path(cfg.output_dir)
    (run_dir / "step_000").mkdir()
    leftovers = [run_dir / ".metrics.jsonl.a1.tmp", run_dir / "step_000" / ".selection.json.b2.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    ActiveLearningRun(cfg).close()
    assert not any(path.exists() for path in leftovers)


@pytest.mark.parametrize("change", ["deleted", "moved"])
def test_a_training_set_changed_mid_run_is_named_with_how_to_go_on(tiny_config, tmp_path, change):
    """Issue 13, case 14: an annotation deleted from train.json after its answers were stored left the run stuck."""
    source = Path(tiny_config("x").data.train_json)
    train_json = tmp_path / "train.json"
    shutil.copy(source, train_json)
    cfg = tiny_config("changed", f"data.train_json={train_json}", f"data.image_root={source.parent.parent / 'images'}")
    run = ActiveLearningRun(cfg)
    _record(run, 0, [1, 0, 1, 1])
    run.close()
    data = json.loads(train_json.read_text())
    first = data["annotations"][0]
    if change == "deleted":
        data["annotations"] = data["annotations"][1:]
        message = rf": annotation\(s\) {first['id']} were in it when .*changed started, and are gone"
    else:
        first["bbox"] = [first["bbox"][0] + 1, *first["bbox"][1:]]
        message = rf" changed since .*changed started \(.*instance {first['id']} is already registered"
    train_json.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=rf"{train_json}{message}"):
        ActiveLearningRun(cfg)
    with pytest.raises(DatasetError, match="restore .*train.json as it was when the run started"):
        ActiveLearningRun(cfg)  # refused again (the lock was released), and says how to go on


def test_global_allocation_spends_one_point_per_instance_in_all_and_stores_several_per_instance(tiny_config):
    """``selection.allocation=global`` with a random metric: the step's points equal the instances in number, each
    a distinct pixel of its own box, and whatever instance got several has them all in the ledger."""
    cfg = tiny_config("global", "selection.allocation=global", "selection.metric=random", "loop.steps=1",
                      "selection.min_point_distance=0")
    rows = run_active_loop(cfg)
    train = load_coco(cfg.data.train_json)
    step1 = [a for a in _answers(Path(cfg.output_dir)) if a.step == 1]
    assert len(step1) == len(list(train.instances())) == len({(a.ann_id, a.x, a.y) for a in step1})
    per_instance = np.bincount([a.ann_id for a in step1])
    assert per_instance.max() > 1  # random scores tie everywhere: the budget lands unevenly
    selected = _selection(Path(cfg.output_dir), 1)["points"]
    assert sorted((p["ann_id"], p["x"], p["y"]) for p in selected) == sorted((a.ann_id, a.x, a.y) for a in step1)
    assert rows[1]["points_per_instance"] == pytest.approx(2.0)


def test_boxinst_initialised_run_asks_no_p0_and_counts_s_points_per_instance(tiny_config):
    """``loop.init=boxinst`` (P'_s): M0 trains from boxes alone (BoxInst terms, no point loss), step 0 asks and
    charges nothing, step s leaves every instance with s points; resuming the finished run changes nothing."""
    with pytest.raises(ConfigError, match="loop.init.*loss.box"):
        tiny_config("no-box", "loop.init=boxinst")
    cfg = tiny_config("boxinst", "loop.init=boxinst", "loss.box=1.0", "loop.steps=1")
    rows = run_active_loop(cfg)
    run_dir = Path(cfg.output_dir)
    answers = _answers(run_dir)
    train = load_coco(cfg.data.train_json)
    instances = len(list(train.instances()))
    assert not [a for a in answers if a.step == 0]
    assert sorted(a.ann_id for a in answers if a.step == 1) == sorted(i.ann_id for i in train.instances())
    assert [r["points_per_instance"] for r in rows] == [0.0, 1.0]
    assert rows[0]["annotation_seconds"] == pytest.approx(instances * 7.0)  # the boxes only
    assert rows[1]["annotation_seconds"] == pytest.approx(instances * (7.0 + 0.9))
    m0 = load_checkpoint(step_dir(run_dir, 0) / "train" / "model_final.pth")["config"]["loss"]
    assert (m0["points"], m0["box"]) == (0.0, 1.0)
    assert run_active_loop(cfg) == rows  # resumes: a finished step 0 without answers is not a lost ledger
