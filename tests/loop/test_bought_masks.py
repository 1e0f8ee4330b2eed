"""AFIS runs: what it refuses, tiny runs at image and instance level that resume, share M0 and refuse a ledger that
lost masks."""

import json
import sqlite3
from pathlib import Path

import pytest

from apis.active.compare import group_runs
from apis.config import ConfigError
from apis.data.coco import load_coco
from apis.data.ledger import LedgerError, PointLedger
from apis.loop.run import ActiveLearningRun, run_active_loop


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
        ActiveLearningRun(cfg)
    other = "image" if level == "instance" else "instance"
    with pytest.raises(ConfigError, match="afis.level"):
        run_active_loop(tiny_config(f"afis_{other}", f"afis.level={other}", "loss.full=1", "loop.steps=1",
                                    "oracle.mask_cost_s=2.7", f"loop.initial_run={run_dir}"))
