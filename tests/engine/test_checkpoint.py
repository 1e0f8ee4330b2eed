import logging
import random

import numpy as np
import pytest
import torch
from torch import nn

from apis.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    checkpoint_name,
    find_last_checkpoint,
    load_checkpoint,
    load_model_weights,
    load_resumable_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    write_last_checkpoint,
)


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_round_trips_through_a_checkpoint_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()
    save_checkpoint(tmp_path / "c.pth", {"model": {}, "rng": [capture_rng_state()]})
    expected = [_draws() for _ in range(3)]
    restore_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"][0])
    assert [_draws() for _ in range(3)] == expected


def test_last_checkpoint_pointer(tmp_path):
    assert find_last_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path / "model_0000010.pth", {"model": {}})
    write_last_checkpoint(tmp_path, tmp_path / "model_0000010.pth")
    assert find_last_checkpoint(tmp_path) == tmp_path / "model_0000010.pth"
    write_last_checkpoint(tmp_path, tmp_path / "model_final.pth")
    with pytest.raises(CheckpointError, match="model_final.pth"):
        find_last_checkpoint(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files


def test_pruning_keeps_the_newest_periodic_checkpoints_and_every_other_file(tmp_path):
    for name in ("model_0000010.pth", "model_0000002.pth", "model_0000100.pth", "model_final.pth",
                 "model_best.pth", "last_checkpoint", "config.yaml"):
        (tmp_path / name).write_bytes(b"x")
    deleted = prune_checkpoints(tmp_path, keep=2)
    assert deleted == [tmp_path / "model_0000002.pth"]  # by iteration, not by name order or age
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "config.yaml", "last_checkpoint", "model_0000010.pth", "model_0000100.pth", "model_best.pth",
        "model_final.pth"]
    assert prune_checkpoints(tmp_path, keep=2) == []


def test_unreadable_and_mismatching_checkpoints_are_named(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pth")
    source = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    save_checkpoint(tmp_path / "m.pth", {"model": source.state_dict()})
    target = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 1))
    with pytest.raises(CheckpointError, match=r"missing: 3\.bias, 3\.weight; different shape: 0\.bias"):
        load_model_weights(target, tmp_path / "m.pth")
    same = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    load_model_weights(same, tmp_path / "m.pth")
    assert torch.equal(same[0].weight, source[0].weight)


def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path):
    save_checkpoint(tmp_path / "m.pth", {"model": nn.Linear(2, 3).state_dict()})
    data = (tmp_path / "m.pth").read_bytes()
    (tmp_path / "m.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as damaged:
        load_checkpoint(tmp_path / "m.pth")
    message = str(damaged.value)
    assert message.startswith(f"{tmp_path / 'm.pth'}: not a readable APIS checkpoint (damaged or cut short?")
    assert "\n" not in message and "weights_only" not in message


def _periodic(folder, *iterations):
    for iteration in iterations:
        save_checkpoint(folder / checkpoint_name(iteration), {"model": {}, "iteration": iteration})
    write_last_checkpoint(folder, folder / checkpoint_name(iterations[-1]))


def test_resuming_falls_back_to_the_newest_earlier_checkpoint_that_reads_whole(tmp_path, caplog):
    _periodic(tmp_path, 2, 4, 6)
    assert load_resumable_checkpoint(tmp_path)[1]["iteration"] == 6
    (tmp_path / checkpoint_name(6)).write_bytes((tmp_path / checkpoint_name(6)).read_bytes()[:100])
    (tmp_path / checkpoint_name(4)).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        path, state = load_resumable_checkpoint(tmp_path)
    assert path == tmp_path / checkpoint_name(2) and state["iteration"] == 2
    assert f"{tmp_path / checkpoint_name(6)}: not a readable APIS checkpoint" in caplog.text
    assert f"resuming from {checkpoint_name(2)} instead" in caplog.text
    (tmp_path / checkpoint_name(6)).unlink()  # the pointer names a file that is gone
    assert load_resumable_checkpoint(tmp_path)[1]["iteration"] == 2
    (tmp_path / checkpoint_name(2)).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"no earlier checkpoint in .* reads whole") as nothing:
        load_resumable_checkpoint(tmp_path)
    assert "\n" not in str(nothing.value)
    (tmp_path / "fresh").mkdir()
    assert load_resumable_checkpoint(tmp_path / "fresh") is None
