import json
import logging
import math

import pytest
import torch

from apis.config import ConfigError
from apis.config_loading import config_from_dict
from apis.data.coco import load_coco
from apis.data.points import InstancePoints
from apis.engine import checkpoint
from apis.engine.checkpoint import find_last_checkpoint, load_checkpoint
from apis.engine.metrics_log import MetricsLog, read_metrics
from apis.engine.trainer import train
from apis.modeling.build import build_model
from apis.utils.io import WriteFailed
from apis.utils.lock import FolderLock, FolderLocked

# The model samples proposals (max_proposals) and point subsets (points_per_iter) with torch's RNG,
# so an exact resume also needs the restored random state.
RANDOM_MODEL = ["model.max_proposals=6", "loss.points_per_iter=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_config):
    """One run of 6 iterations, and the same run stopped after 3 and resumed to 6."""
    root = tmp_path_factory.mktemp("runs")
    full = tiny_config(root / "full", "solver.max_iter=6", "solver.checkpoint_period=3", *RANDOM_MODEL)
    train(full)
    split = root / "split"
    train(tiny_config(split, "solver.max_iter=3", *RANDOM_MODEL))
    first_half = load_checkpoint(split / "model_final.pth")
    # A line logged after the last checkpoint by an interrupted run; resuming must drop it.
    with (split / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"iteration": 4, "total_loss": -1.0}) + "\n")
    train(tiny_config(split, "solver.max_iter=6", *RANDOM_MODEL))
    return {"full": root / "full", "split": split, "cfg": full, "first_half": first_half}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_continues_exactly(runs):
    full = read_metrics(runs["full"] / "metrics.jsonl")
    split = read_metrics(runs["split"] / "metrics.jsonl")
    assert [r["iteration"] for r in split] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, split):
        for key in a:
            if key not in ("time", "data_time"):
                assert a[key] == b[key], (a["iteration"], key)
    _assert_same_weights(load_checkpoint(runs["full"] / "model_final.pth")["model"],
                         load_checkpoint(runs["split"] / "model_final.pth")["model"])
    # The periodic checkpoint of the long run is the final one of the short run.
    _assert_same_weights(load_checkpoint(runs["full"] / "model_0000003.pth")["model"],
                         runs["first_half"]["model"])
    # Training changed the weights.
    initial = runs["first_half"]["model"]
    final = load_checkpoint(runs["full"] / "model_final.pth")["model"]
    assert any(not torch.equal(initial[k], final[k]) for k in initial)


def test_only_the_newest_periodic_checkpoints_stay_on_disk(tiny_config, tmp_path):
    train(tiny_config(tmp_path, "solver.max_iter=4", "solver.checkpoint_period=1", "solver.keep_checkpoints=2"))
    assert sorted(path.name for path in tmp_path.glob("*.pth")) == [
        "model_0000002.pth", "model_0000003.pth", "model_final.pth"]
    # Keeping fewer is not a different experiment: a resumed run may change it, and prunes on its next save.
    train(tiny_config(tmp_path, "solver.max_iter=5", "solver.checkpoint_period=1", "solver.keep_checkpoints=1"))
    assert sorted(path.name for path in tmp_path.glob("*.pth")) == ["model_0000003.pth", "model_final.pth"]
    assert load_checkpoint(tmp_path / "model_final.pth")["iteration"] == 5


def test_checkpoint_holds_everything_to_resume(runs):
    out = runs["full"]
    assert find_last_checkpoint(out) == out / "model_final.pth"
    assert (out / "config.yaml").is_file()
    state = load_checkpoint(out / "model_final.pth")
    assert {"model", "optimizer", "scheduler", "grad_scaler", "iteration", "rng", "config"} <= state.keys()
    assert state["iteration"] == 6
    assert config_from_dict(state["config"]) == runs["cfg"]
    assert len(state["rng"]) == 1 and {"python", "numpy", "torch"} <= state["rng"][0].keys()
    momentum = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert momentum and all(m is not None for m in momentum)
    assert state["scheduler"]["last_epoch"] == 6
    assert not any(key.startswith("module.") for key in state["model"])


def test_metrics_log_the_schedule_losses_and_point_accuracy(runs):
    records = read_metrics(runs["full"] / "metrics.jsonl")
    # base 0.01, linear warm-up over 2 iterations from factor 0.1, x0.1 from iteration index 4.
    expected_lr = [0.001, 0.01 * (0.1 * 0.5 + 0.5), 0.01, 0.01, 0.001, 0.001]
    assert [r["lr"] for r in records] == pytest.approx(expected_lr)
    for record in records:
        losses = {k: v for k, v in record.items() if k.startswith("loss_")}
        assert {"loss_fcos_cls", "loss_fcos_box", "loss_fcos_ctr", "loss_mask_points"} <= losses.keys()
        assert record["total_loss"] == pytest.approx(sum(losses.values()), rel=1e-6)
        assert 0.0 <= record["point_acc"] <= 1.0
        assert record["time"] > 0 and record["data_time"] >= 0


def test_fine_tuning_starts_from_the_given_weights(runs, tiny_config, tmp_path):
    source = runs["full"] / "model_final.pth"
    # lr 0 keeps the weights where they start: the result shows what was loaded.
    final = train(tiny_config(tmp_path / "ft", "solver.max_iter=2", "solver.base_lr=0.0", *RANDOM_MODEL),
                  init_weights=str(source))
    state = load_checkpoint(final)
    assert state["iteration"] == 2  # a fresh schedule, not a continuation
    start = load_checkpoint(source)["model"]
    for key, value in state["model"].items():
        if "running_" not in key and "num_batches" not in key:  # BN statistics move even at lr 0
            assert torch.equal(value, start[key]), key


def test_the_gradient_norm_is_logged_and_clipping_bounds_the_step(runs, tiny_config, tmp_path):
    source = runs["full"] / "model_final.pth"
    clip = 1.0
    # No momentum history (fresh optimiser) and no weight decay: the first SGD step moves the parameters by
    # exactly lr * (the gradient clipped to norm `clip`).
    final = train(tiny_config(tmp_path, "solver.max_iter=1", f"solver.clip_grad_norm={clip}",
                              "solver.weight_decay=0.0", *RANDOM_MODEL), init_weights=str(source))
    (record,) = read_metrics(tmp_path / "metrics.jsonl")
    assert record["grad_norm"] > 10 * clip  # the unclipped norm is what is logged
    before, after = load_checkpoint(source)["model"], load_checkpoint(final)["model"]
    model = build_model(runs["cfg"].model, runs["cfg"].loss)
    names = [name for name, _ in model.named_parameters()]
    moved = torch.sqrt(sum(((after[n] - before[n]).double() ** 2).sum() for n in names))
    assert float(moved) == pytest.approx(record["lr"] * clip, rel=1e-3)
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
               for r in read_metrics(runs["full"] / "metrics.jsonl"))


def test_training_with_given_points_prints_progress(tiny_config, tmp_path, synth_dir, capsys):
    coco = load_coco(synth_dir / "annotations" / "train.json")
    first = next(coco.instances())
    points = {first.ann_id: InstancePoints([[int(first.bbox_xyxy[0]), int(first.bbox_xyxy[1])]], [0])}
    cfg = tiny_config(tmp_path / "given", "solver.max_iter=2", "data.random_points_per_instance=0",
                      "solver.log_period=2")
    assert train(cfg, points=points).name == "model_final.pth"
    # Without a terminal there is no progress bar: one line per log period instead.
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[experiment]")]
    assert len(lines) == 1 and "iter 2/2" in lines[0] and "s/it" in lines[0] and "eta" in lines[0]


def test_bad_inputs_fail_before_training(tiny_config, tmp_path, monkeypatch, synth_dir):
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match="data.train_json.*missing.json"):
        train(tiny_config(out, "data.train_json=missing.json"))
    with pytest.raises(ConfigError, match="loss.points=1.0 needs labelled points, but none were given"):
        train(tiny_config(out, "data.random_points_per_instance=0"))
    only_unsure = {inst.ann_id: InstancePoints([[1, 1]], [-1]) for inst in load_coco(synth_dir / "annotations" /
                                                                                      "train.json").instances()}
    with pytest.raises(ConfigError, match="no training instance has one in the points given"):
        train(tiny_config(out, "data.random_points_per_instance=0"), points=only_unsure)
    with pytest.raises(ConfigError, match="model.num_classes' is 3"):
        train(tiny_config(out, "model.num_classes=3"))
    with pytest.raises(ConfigError, match=r"not non-crowd instances .*\[999999\]"):
        train(tiny_config(out), points={999999: InstancePoints([[1, 1]], [1])})
    with pytest.raises(ConfigError, match="init_weights"):
        train(tiny_config(out), init_weights=str(tmp_path / "nothing.pth"))
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        train(tiny_config(out))
    assert not out.exists()  # nothing was written


def test_resuming_with_another_config_is_refused(tiny_config, tmp_path):
    """As ``apis run``: the stored config.yaml decides, except where the run lives and training longer."""
    out = tmp_path / "strict"
    train(tiny_config(out, "solver.max_iter=1"))
    with pytest.raises(ConfigError, match=r"strict/config.yaml was written by a run with a different config "
                                          r"\(solver.base_lr: 0.01 -> 0.02\)"):
        train(tiny_config(out, "solver.max_iter=1", "solver.base_lr=0.02"))
    final = train(tiny_config(out, "solver.max_iter=2"))
    assert load_checkpoint(final)["iteration"] == 2


def test_training_removes_the_temporaries_of_a_killed_run_and_holds_its_folder(tiny_config, tmp_path):
    """Issue 13, cases 1 and 13: `apis train` output folders are locked; half-written checkpoints are removed."""
    out = tmp_path / "killed"
    out.mkdir()
    leftover = out / ".model_0000002.pth.x1y2.tmp"
    leftover.write_bytes(b"half a checkpoint")
    with FolderLock(out), pytest.raises(FolderLocked, match="killed: in use by another apis process"):
        train(tiny_config(out, "solver.max_iter=1", *RANDOM_MODEL))
    assert leftover.exists()  # refused before touching the folder
    train(tiny_config(out, "solver.max_iter=1", *RANDOM_MODEL))
    assert not leftover.exists() and (out / "model_final.pth").is_file()


def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(tiny_config, tmp_path, caplog):
    cfg = tiny_config(tmp_path, "solver.max_iter=4", "solver.checkpoint_period=2", "solver.keep_checkpoints=null")
    train(cfg)
    final = tmp_path / "model_final.pth"
    final.write_bytes(final.read_bytes()[:1000])  # a copy cut short
    with caplog.at_level(logging.WARNING):
        train(cfg)
    assert f"{final}: not a readable APIS checkpoint" in caplog.text
    assert "resuming from model_0000002.pth instead" in caplog.text
    assert load_checkpoint(final)["iteration"] == 4  # trained again from iteration 2


def test_a_full_disk_while_logging_says_what_the_training_resumes_from(tiny_config, tmp_path, monkeypatch):
    real = MetricsLog.write

    def full_at_iteration_3(self, record):
        if record["iteration"] == 3:
            raise WriteFailed(f"{self.path}: could not be written (No space left on device); the 2 record(s) "
                              "written before are kept")
        real(self, record)

    monkeypatch.setattr(MetricsLog, "write", full_at_iteration_3)
    cfg = tiny_config(tmp_path, "solver.max_iter=4", "solver.checkpoint_period=2", "solver.log_period=1")
    with pytest.raises(WriteFailed, match=rf"^{tmp_path / 'metrics.jsonl'}: could not be written .*; the 2 record\(s\) "
                                          rf"written before are kept; the training resumes from "
                                          rf"{tmp_path / 'model_0000002.pth'} when run again with space freed$"):
        train(cfg)


def test_a_full_disk_while_saving_says_what_the_training_resumes_from(tiny_config, tmp_path, monkeypatch, capsys):
    real = checkpoint.atomic_write_bytes

    def full_after_the_first(path, data):
        if path.name != "model_0000002.pth":
            raise WriteFailed(f"{path}: could not be written (No space left on device); nothing was written there")
        real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full_after_the_first)
    cfg = tiny_config(tmp_path, "solver.max_iter=4", "solver.checkpoint_period=2")
    with pytest.raises(WriteFailed, match=rf"{tmp_path / 'model_final.pth'}: could not be written .*; the training "
                                          rf"resumes from {tmp_path / 'model_0000002.pth'} when run again"):
        train(cfg)
