"""What each step trains: the ensemble's members and the config of each model."""

import pytest

from apis.config_loading import load_config
from apis.loop.schedule import member_seeds, train_config


def test_members_are_the_run_seed_then_the_ensemble_seeds():
    assert member_seeds(load_config(None, ["seed=3", "selection.ensemble_seeds=[1,3,2]"])) == [3]
    cfg = load_config(None, ["seed=3", "selection.sets=[anchors,models]", "selection.ensemble_seeds=[1,3,2]"])
    assert member_seeds(cfg) == [3, 1, 2]  # the run's own seed is not trained twice


def test_m0_trains_with_the_solver_and_fine_tuning_with_the_loop_schedule():
    cfg = load_config(None, ["solver.max_iter=900", "solver.base_lr=0.0025", "solver.steps=[600,800]",
                             "solver.warmup_iters=10", "loop.finetune_iters=300", "loop.finetune_lr=0.001",
                             "loop.finetune_steps=[100,200]", "loop.m0.points=0.1",
                             "loop.finetune.points=1.0"])
    m0 = train_config(cfg, 0, seed=5)
    assert (m0.seed, m0.solver, m0.loss.points) == (5, cfg.solver, 0.1)
    fine = train_config(cfg, 2, seed=5, point_weights={"point_positive_weight": 2.0, "point_negative_weight": 0.5})
    assert (fine.solver.max_iter, fine.solver.base_lr, fine.solver.steps) == (300, 0.001, [100, 200])
    assert fine.solver.warmup_iters == 10  # min(warm-up, a tenth of the fine-tuning)
    assert (fine.loss.points, fine.loss.point_positive_weight, fine.loss.point_negative_weight) == (1.0, 2.0, 0.5)
    assert train_config(load_config(None, ["loop.finetune_iters=50"]), 1, 0).solver.warmup_iters == 5
    assert cfg.loss.points == pytest.approx(1.0) and cfg.solver.max_iter == 900  # the run's config is unchanged


def test_fine_tuning_keeps_the_box_terms_without_a_second_pairwise_warm_up():
    """M0 ramps BoxInst's pairwise term up over loss.pairwise_warmup_iters; every fine-tuning step starts
    from that model, so its pairwise term is on from the first iteration, and the box terms stay on."""
    cfg = load_config(None, ["loss.box=1.0", "loss.pairwise_warmup_iters=40"])
    m0, step1 = train_config(cfg, 0, seed=0).loss, train_config(cfg, 1, seed=0).loss
    assert (m0.box, m0.pairwise_warmup_iters) == (1.0, 40)
    assert (step1.box, step1.pairwise_warmup_iters) == (1.0, 0)
    # Fine-tuning's loss keys are loop.finetune's, M0's loop.m0's: each phase is set in one place.
    again = load_config(None, ["loss.box=1.0", "loss.pairwise_warmup_iters=40", "loop.finetune.pairwise_warmup_iters=5",
                               "loop.m0.points=0.3"])
    assert train_config(again, 1, seed=0).loss.pairwise_warmup_iters == 5
    assert (train_config(again, 0, seed=0).loss.points, train_config(again, 0, seed=0).loss.pairwise_warmup_iters) == (
        0.3, 40)
