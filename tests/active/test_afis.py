"""AFIS: budget arithmetic, the scorers by hand, and tiny runs at image and instance level."""

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from apis.active.afis import (
    NO_PREDICTION_ENTROPY,
    AfisRun,
    buy,
    cumulative_budget_s,
    detection_loss,
    instance_score,
    mean_box_entropy,
    rank,
)
from apis.active.compare import group_runs
from apis.active.loop import run_active_loop
from apis.config import ConfigError
from apis.data.coco import load_coco
from apis.data.ledger import LedgerError, PointLedger
from apis.structures import PredictionSet


def hand_entropy(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def test_budget_buys_the_masks_of_the_points_seconds_and_carries_the_rest_over():
    """100 instances, 0.9 s a point, 79.2 s a mask (88 points): by step s APIS spent (s + 1) * 90 s, so AFIS owns
    floor((s + 1) * 90 / 79.2) masks: 1, 2, 3, 4, 5, 6, 7, 9, 10; step 7 buys two with the carried seconds."""
    assert 79.2 / 0.9 == pytest.approx(88)
    owned, per_step = 0, []
    for step in range(9):
        budget = cumulative_budget_s(100, 0.9, step) - owned * 79.2
        bought = buy([(f"instance {k}", 1) for k in range(100)], budget, 79.2)
        owned += len(bought)
        per_step.append(len(bought))
    assert cumulative_budget_s(100, 0.9, 8) == pytest.approx(810.0)
    assert per_step == [1, 1, 1, 1, 1, 1, 1, 2, 1] and owned == 10


def test_image_level_buys_whole_images_in_order_and_stops_at_the_first_that_does_not_fit():
    # Images holding 3, 1 and 2 instances, 4 masks' worth of seconds: the first two (4 masks), not the third.
    assert buy([("a", 3), ("b", 1), ("c", 2)], 4 * 79.2, 79.2) == ["a", "b"]
    # 3 then 2 instances: "b" does not fit in what is left (1 mask), and the purchase ends there, although "c"
    # would fit: order is kept and the seconds carry over.
    assert buy([("a", 3), ("b", 2), ("c", 1)], 4 * 79.2, 79.2) == ["a"]
    assert buy([("a", 1)], 79.1, 79.2) == []


def test_mean_box_entropy_by_hand():
    probs = torch.tensor([[[0.2, 0.5]], [[0.4, 0.5]]], dtype=torch.float64)  # mean [[0.3, 0.5]]
    pred = PredictionSet(1, (0, 0), probs)
    assert mean_box_entropy(pred) == pytest.approx((hand_entropy(0.3) + hand_entropy(0.5)) / 2, abs=1e-12)
    assert instance_score("mean-entropy", pred, (0, 0, 2, 1)) == mean_box_entropy(pred)
    assert mean_box_entropy(PredictionSet(1, (0, 0), torch.zeros(0, 1, 2))) == NO_PREDICTION_ENTROPY


def test_detection_loss_is_the_mean_giou_loss_of_the_members_by_hand():
    # GT (0, 0, 10, 10). Member 1: the same box, loss 0. Member 2: (0, 0, 10, 5), IoU 1/2 and the enclosing box
    # is the union: loss 1/2. Member 3: (20, 0, 30, 10), IoU 0, union 200, enclosing 300: GIoU -1/3, loss 4/3.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 0.0, 30.0, 10.0]])
    pred = PredictionSet(1, (0, 0), torch.full((3, 10, 10), 0.5), boxes=boxes, scores=torch.ones(3))
    assert detection_loss(pred, (0.0, 0.0, 10.0, 10.0)) == pytest.approx((0 + 0.5 + 4 / 3) / 3, abs=1e-9)
    assert instance_score("min-det-loss", pred, (0.0, 0.0, 10.0, 10.0)) == pytest.approx(-(0 + 0.5 + 4 / 3) / 3)
    assert detection_loss(PredictionSet(1, (0, 0), torch.zeros(0, 2, 2)), (0, 0, 2, 2)) == 2.0


def test_rank_is_highest_first_with_seeded_ties():
    scores = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.5}
    orders = {tuple(rank(scores, np.random.default_rng(seed))) for seed in range(20)}
    assert orders == {("b", "c", "d", "a"), ("b", "d", "c", "a")}
    assert rank(scores, np.random.default_rng(3)) == rank(scores, np.random.default_rng(3))


def test_afis_needs_the_full_mask_loss_and_a_simulated_oracle(tiny_config):
    """And the initial masks and M0 of an AFIS run of the same level only."""
    with pytest.raises(ConfigError, match="loss.full"):
        tiny_config("afis", "afis.level=instance")
    with pytest.raises(ConfigError, match="oracle.kind=simulated"):
        tiny_config("afis", "afis.level=instance", "loss.full=1", "loop.init=boxinst", "loss.box=1")
    with pytest.raises(ConfigError, match="oracle.kind=simulated"):
        tiny_config("afis", "afis.level=instance", "loss.full=1", "oracle.kind=human")
    with pytest.raises(ConfigError, match="afis.scorer"):
        tiny_config("afis", "afis.level=image", "loss.full=1", "afis.scorer=entropy")


@pytest.mark.parametrize(("level", "scorer"), [("instance", "min-det-loss"), ("image", "mean-entropy")])
def test_a_tiny_afis_run_spends_the_points_seconds_on_masks_and_resumes(tiny_config, level, scorer):
    # A mask at 3 points' price, so that the tiny set's budget buys some.
    cfg = tiny_config(f"afis_{level}", f"afis.level={level}", f"afis.scorer={scorer}", "loss.full=1",
                      "oracle.mask_cost_s=2.7", "loop.steps=1")
    rows = run_active_loop(cfg)
    run_dir = Path(cfg.output_dir)
    train = load_coco(cfg.data.train_json)
    instances = len(list(train.instances()))
    with PointLedger(run_dir / "ledger.sqlite") as ledger:
        masks, answers = ledger.masks(), ledger.answers()
    assert answers == []  # no point is ever asked
    for step, row in enumerate(rows):
        owned = [m for m in masks if m.step <= step]
        budget = (step + 1) * instances * 0.9
        assert row["masks"] == len(owned) > 0 and row["budget_seconds"] == pytest.approx(budget)
        assert len(owned) * 2.7 <= budget + 1e-9
        if level == "instance":  # one mask more would not have fitted
            assert (len(owned) + 1) * 2.7 > budget
        assert row["annotation_seconds"] == pytest.approx(len(owned) * 2.7 + instances * 7.0)
        assert row["strategy"] == f"AFIS {level} {scorer}" and row["points_per_instance"] == 0.0
    assert {m.chosen_by for m in masks if m.step == 0} == {"afis-random"}
    assert {m.chosen_by for m in masks if m.step == 1} <= {f"afis-{scorer}"}
    chosen = json.loads((run_dir / "step_001" / "masks.json").read_text())
    assert chosen["scorer"] == scorer and sorted(e["ann_id"] for e in chosen["bought"]) == [
        m.ann_id for m in masks if m.step == 1]
    scores = [e["score"] for e in chosen["bought"]]
    assert scores == sorted(scores, reverse=True)  # best first
    if level == "image":  # whole images only
        by_image = {}
        for inst in train.instances():
            by_image.setdefault(inst.image_id, set()).add(inst.ann_id)
        owned_ids = {m.ann_id for m in masks}
        assert all(ids <= owned_ids or not ids & owned_ids for ids in by_image.values())
    assert run_active_loop(cfg) == rows  # resumes: nothing bought twice, nothing retrained
    assert list(group_runs([run_dir])) == [f"AFIS {level} {scorer}"]

    # Another scorer of the same level starts from this run's initial masks and M0.
    shared = tiny_config(f"afis_{level}_random", f"afis.level={level}", "afis.scorer=random", "loss.full=1",
                         "oracle.mask_cost_s=2.7", "loop.steps=1", f"loop.initial_run={run_dir}")
    shared_rows = run_active_loop(shared)
    with PointLedger(Path(shared.output_dir) / "ledger.sqlite") as ledger:
        assert ledger.masks(max_step=0) == [m for m in masks if m.step == 0]
        assert {m.chosen_by for m in ledger.masks() if m.step == 1} <= {"afis-random"}
    assert shared_rows[0]["mask_AP"] == rows[0]["mask_AP"] and shared_rows[0]["strategy"] == f"AFIS {level} random"
    assert (Path(shared.output_dir) / "step_000" / "masks.json").exists()
    with sqlite3.connect(run_dir / "ledger.sqlite") as conn:  # a ledger that lost a finished step's masks
        conn.execute("DELETE FROM masks WHERE step = 1")
    with pytest.raises(LedgerError, match="lost the masks step 1 bought"):
        AfisRun(cfg)
    other = "image" if level == "instance" else "instance"
    with pytest.raises(ConfigError, match="afis.level"):
        run_active_loop(tiny_config(f"afis_{other}", f"afis.level={other}", "loss.full=1", "loop.steps=1",
                                    "oracle.mask_cost_s=2.7", f"loop.initial_run={run_dir}"))
