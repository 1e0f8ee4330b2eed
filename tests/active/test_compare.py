"""Run comparison: mean ± std over seeds per strategy and step, and the curves image."""

import json

import pytest

from apis.active.compare import compare_runs, comparisons_markdown, group_runs, markdown_table, paired_comparisons
from apis.config_loading import dump_config, load_config


def _run(tmp_path, name, strategy, aps, seed=0):
    run_dir = tmp_path / name
    run_dir.mkdir()
    rows = [{"step": s, "strategy": strategy, "sets": ["anchors"], "seed": seed, "mask_AP": ap, "mask_AP50": ap + 10,
             "misclassified_share": None if s == 0 else 0.25, "boundary_distance_px": None if s == 0 else 2.0,
             "annotation_seconds": 3600.0 * (s + 1)} for s, ap in enumerate(aps)]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run_dir


def test_table_aggregates_seeds(tmp_path):
    runs = [_run(tmp_path, "e0", "entropy", [10.0, 14.0]), _run(tmp_path, "e1", "entropy", [10.0, 16.0], seed=1),
            _run(tmp_path, "r0", "random", [10.0, 12.0])]
    groups = group_runs(runs)
    assert list(groups) == ["entropy (anchors)", "random"]
    table = markdown_table(groups)
    assert "| entropy (anchors) | P1 | 15.00 ± 1.41 (2) |" in table  # mean and sample std (n - 1) of 14, 16
    assert "| random | P1 | 12.00 |" in table
    assert "| entropy (anchors) | P0 | 10.00 ± 0.00 (2) | 20.00 ± 0.00 (2) | – | – | 1.00 ± 0.00 (2) |" in table


def test_prior_corrected_runs_form_their_own_group(tmp_path):
    plain = _run(tmp_path, "e0", "entropy", [10.0, 14.0])
    corrected = _run(tmp_path, "e0_prior", "entropy", [10.0, 11.0])
    (corrected / "config.yaml").write_text("seed: 0\nloop:\n  steps: 1\n  point_prior_correction: true\n")
    (plain / "config.yaml").write_text("seed: 0\nloop:\n  steps: 1\n")  # written before the key existed
    groups = group_runs([plain, corrected])
    assert list(groups) == ["entropy (anchors)", "entropy (anchors), prior-corrected"]
    assert "| entropy (anchors), prior-corrected | P1 | 11.00 |" in markdown_table(groups)


def test_runs_on_another_runs_points_and_mask_rcnn_runs_form_their_own_groups(tmp_path):
    own = _run(tmp_path, "e0", "entropy", [10.0, 14.0])
    transferred = _run(tmp_path, "e0_r101", "entropy", [10.0, 12.0])
    (transferred / "config.yaml").write_text(f"seed: 0\nloop:\n  steps: 1\n  points_from: {own}\n")
    mask_rcnn = _run(tmp_path, "m0", "entropy", [3.0, 4.0])
    (mask_rcnn / "config.yaml").write_text("seed: 0\nmodel:\n  arch: mask_rcnn\nloss:\n  box: 0.0\n")
    groups = group_runs([own, transferred, mask_rcnn])
    assert list(groups) == ["entropy (anchors)", "entropy (anchors), points of another run",
                            "Mask R-CNN, entropy (anchors)"]


def test_boxinst_init_and_global_budget_runs_form_their_own_groups(tmp_path):
    runs = [_run(tmp_path, name, "entropy", [10.0, 11.0]) for name in ("plain", "boxinst", "global", "both")]
    for run_dir, overrides in zip(runs, ([], ["loop.init=boxinst", "loss.box=1"], ["selection.allocation=global"],
                                         ["loop.init=boxinst", "loss.box=1", "selection.allocation=global"])):
        dump_config(load_config(None, overrides), run_dir / "config.yaml")
    assert list(group_runs(runs)) == ["entropy (anchors)", "entropy (anchors), BoxInst init",
                                      "entropy (anchors), global budget",
                                      "entropy (anchors), BoxInst init, global budget"]


def test_compare_writes_png_and_markdown(tmp_path):
    runs = [_run(tmp_path, "e0", "entropy", [10.0, 14.0]), _run(tmp_path, "r0", "random", [10.0, 12.0])]
    table = compare_runs(runs, tmp_path / "out")
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table in (tmp_path / "out" / "comparison.md").read_text()


def test_missing_metrics_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty/metrics.jsonl"):
        compare_runs([tmp_path / "empty"], tmp_path)


def test_the_notes_state_the_costs_the_runs_were_configured_with(tmp_path):
    runs = [_run(tmp_path, "e0", "entropy", [10.0, 14.0]), _run(tmp_path, "r0", "random", [10.0, 12.0])]

    def notes(*overrides_per_run):
        for run_dir, overrides in zip(runs, overrides_per_run):
            dump_config(load_config(None, overrides), run_dir / "config.yaml")
        compare_runs(runs, tmp_path / "out")
        return (tmp_path / "out" / "comparison.md").read_text()

    assert "boxes (7 s each) plus points (0.9 s each)" in notes([], [])
    costly = ["oracle.box_cost_s=5", "oracle.point_cost_s=2.5"]
    assert "boxes (5 s each) plus points (2.5 s each)" in notes(costly, costly)
    assert "at the costs of each run's config (oracle.box_cost_s, oracle.point_cost_s)" in notes(costly, [])


def test_every_strategy_is_paired_with_random_seed_by_seed(tmp_path):
    """entropy - random per seed at P1: 14 - 12 = 2, 16 - 13 = 3 (seed 2 has no random run and is left out):
    mean 2.5, sd sqrt(0.5), se 0.5, t(0.975, 1) = 12.706: [2.5 - 6.353, 2.5 + 6.353]."""
    runs = [_run(tmp_path, "e0", "entropy", [10.0, 14.0]), _run(tmp_path, "e1", "entropy", [11.0, 16.0], seed=1),
            _run(tmp_path, "e2", "entropy", [11.0, 19.0], seed=2), _run(tmp_path, "r0", "random", [10.0, 12.0]),
            _run(tmp_path, "r1", "random", [11.0, 13.0], seed=1)]
    comparisons = paired_comparisons(group_runs(runs))
    assert [(c.a, c.b, c.step) for c in comparisons] == [("entropy (anchors)", "random", 0),
                                                         ("entropy (anchors)", "random", 1)]
    at_p1 = comparisons[1]
    assert at_p1.seeds == [0, 1] and at_p1.differences == [2.0, 3.0]
    assert (at_p1.low, at_p1.high) == (pytest.approx(2.5 - 6.353), pytest.approx(2.5 + 6.353))
    assert at_p1.verdict == "unresolved"
    assert "| entropy (anchors) | random | P1 | 2 | +2.00 +3.00 | +2.50 [-3.85, +8.85] | unresolved |" in \
        comparisons_markdown(comparisons)
    compare_runs(runs, tmp_path / "out")
    assert "+2.50 [-3.85, +8.85]" in (tmp_path / "out" / "comparison.md").read_text()
    assert paired_comparisons(group_runs(runs[:3])) == []  # no random runs: nothing to compare with
