"""bench/tables.py: the committed docs agree with the records; a changed number is caught and rewritten; tables
without records say so; the label-efficiency tables carry the paired verdicts."""

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import tables  # noqa: E402

from apis.evaluation.paired import paired_comparison  # noqa: E402


def _docs_copy(tmp_path: Path) -> Path:
    for doc in tables.DOCS:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / doc, tmp_path / doc)
    return tmp_path


def test_the_committed_docs_agree_with_the_records(capsys):
    assert tables.main(["--check"]) == 0
    assert "checked" in capsys.readouterr().out


def test_a_changed_number_fails_the_check_and_is_rewritten(tmp_path, capsys):
    root = _docs_copy(tmp_path)
    doc = root / "docs" / "benchmarks.md"
    original = doc.read_text()
    row = next(line for line in original.splitlines() if line.startswith("| APIS entropy | P3 | 1.599"))
    assert "| 0.583 ± 0.001 |" in row  # the synthetic P3 exported mIoU, from results/label_quality_synth.json
    doc.write_text(original.replace(row, row.replace("| 0.583 ± 0.001 |", "| 0.593 ± 0.001 |")))
    assert tables.main(["--check"], root=root) == 1
    assert "docs/benchmarks.md: label_quality_synth" in capsys.readouterr().err
    assert "0.593" in doc.read_text()  # --check changes nothing
    assert tables.main([], root=root) == 0
    assert doc.read_text() == original
    assert tables.main(["--check"], root=root) == 0


def test_a_table_edited_by_hand_between_markers_fails_the_check(tmp_path):
    root = _docs_copy(tmp_path)
    doc = root / "docs" / "benchmarks.md"
    text = doc.read_text()
    assert "<!-- /table:label_quality_dsb -->" in text
    doc.write_text(text.replace("<!-- /table:label_quality_dsb -->", "| a row added by hand |\n\n"
                                "<!-- /table:label_quality_dsb -->"))
    assert tables.main(["--check"], root=root) == 1


def test_an_unknown_table_name_is_refused_naming_the_doc(tmp_path):
    root = _docs_copy(tmp_path)
    doc = root / "docs" / "results.md"
    doc.write_text(doc.read_text() + "\n<!-- table:no_such_table -->\n<!-- /table:no_such_table -->\n")
    with pytest.raises(SystemExit, match="docs/results.md: table 'no_such_table'"):
        tables.main(["--check"], root=root)


def test_a_table_without_its_record_says_so_and_gives_the_command():
    table = tables.Table(("results/none_such.json",), tables.rows_table, "python bench/bench_x.py")
    assert table.text() == ("_Not yet measured under records (`results/none_such.json` missing). "
                            "Command: `python bench/bench_x.py`, then `python bench/tables.py`._\n")


def test_a_table_still_made_a_seed_at_a_time_names_the_pieces_so_far(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "REPO", tmp_path)
    table = tables.Table(("results/x.json",), tables.rows_table, "bench/plan.sh x")
    assert "missing). Command" in table.text()  # no piece yet
    (tmp_path / "results" / "pieces" / "x").mkdir(parents=True)
    for seed in (3, 0, 10):
        (tmp_path / "results" / "pieces" / "x" / f"seed{seed}.json").write_text("{}")
    assert table.text() == ("_Not yet measured under records (`results/x.json` missing; pieces so far: seeds 0, 3, 10 "
                            "(`results/pieces/x/`)). Command: `bench/plan.sh x`, then `python bench/tables.py`._\n")


def _le_record():
    rows = [{"group": arm, "seed": seed, "step": step, "mask_AP": ap, "annotation_seconds": 7200.0}
            for arm, seed, step, ap in [("entropy", 0, 3, 12.0), ("entropy", 1, 3, 13.0), ("entropy", 2, 3, 12.5),
                                        ("random", 0, 3, 11.0), ("random", 1, 3, 12.5), ("random", 2, 3, 12.0)]]
    comparison = paired_comparison({0: 12.0, 1: 13.0, 2: 12.5}, {0: 11.0, 1: 12.5, 2: 12.0}, metric="mask_AP",
                                   a_name="entropy", b_name="random", step=3)
    return {"rows": rows, "comparisons": [comparison.as_dict()], "arguments": {"baseline": "random"}}


def test_the_label_efficiency_table_gives_means_differences_and_the_verdict():
    text = tables.label_efficiency_table([_le_record()])
    assert "| entropy | P3 | 3 | 12.50 ± 0.50 | 2.00 ± 0.00 |" in text and "| random | P3 | 3 | 11.83 ± 0.76 |" in text
    # differences 1.0 0.5 0.5: mean 0.667, sd 0.2887, se 0.1667, t(2) = 4.303: [-0.05, +1.38].
    assert "| entropy | random | P3 | 3 | +1.00 +0.50 +0.50 | +0.67 [-0.05, +1.38] | **unresolved** |" in text


def test_the_equal_points_table_pairs_each_arms_last_step():
    record = _le_record()
    record["rows"] += [{"group": "random", "seed": s, "step": 4, "mask_AP": 12.0, "annotation_seconds": 9000.0}
                       for s in range(3)]
    text = tables.equal_points_table([record])
    assert "| entropy P3 | random P4 | - | 3 | +0.00 +1.00 +0.50 |" in text


def test_the_test_time_table_sets_each_run_against_six_minutes():
    slowest = [{"test": "tests/a.py::test_slow", "phase": "call", "seconds": 61.4},
               {"test": "tests/b.py::test_less", "phase": "call", "seconds": 30.0}]
    rows = [{"repeat": 0, "workers": 2, "passed": 870, "failed": 0, "skipped": 4, "wall_s": 359.0, "cpu_s": 630.0,
             "load_1min_before": 0.04, "slowest": slowest},
            {"repeat": 1, "workers": 2, "passed": 869, "failed": 1, "skipped": 4, "wall_s": 361.0,
             "load_1min_before": 1.5, "slowest": slowest[1:]}]
    lines = tables.test_time_table(rows).splitlines()
    assert lines[2] == "| 1 | 2 | 870 | 0 | 4 | 6.0 | met | 10.5 | 0.04 | test_slow 61 s; test_less 30 s |"
    assert lines[3] == "| 2 | 2 | 869 | 1 | 4 | 6.0 | not met | – | 1.50 | test_less 30 s |"


def test_the_demo_time_table_sets_each_run_against_ten_minutes():
    rows = [{"repeat": 0, "demo_args": "", "wall_s": 599.0, "target_met": True, "cpu_s": 960.0, "peak_rss_mib": 1125,
             "load_1min_before": 0.05, "returncode": 0, "masks_miou": 0.734, "box_fill_miou": 0.467,
             "m0_min": 5.2, "steps_min": 8.9, "report_min": 9.61},
            {"repeat": 1, "demo_args": "--steps 1", "wall_s": 677.3, "target_met": False, "cpu_s": 1045.1,
             "peak_rss_mib": 1126, "load_1min_before": 1.2, "returncode": 1, "masks_miou": None,
             "box_fill_miou": None}]
    lines = tables.demo_time_table(rows).splitlines()
    assert lines[2] == "| 1 | (none) | 10.0 | met | 5.2 / 8.9 / 9.6 | 16.0 | 1125 | 0.05 | 0.734 | 0.467 | 0 |"
    assert lines[3] == "| 2 | --steps 1 | 11.3 | not met | – / – / – | 17.4 | 1126 | 1.20 | – | – | 1 |"


def test_a_record_combined_from_pieces_says_where_its_runs_were_made():
    machine = {"cpu": "Xeon", "nproc": 2, "gpu": None}
    pieces = [{"record": f"seed{s}.json", "seeds": [s], "commit": commit, "dirty": dirty, "date": date,
               "machine": machine, "wall_s": 600.0}
              for s, commit, dirty, date in ((0, "aaaaaaa1", False, "2026-12-02T23:00:00+00:00"),
                                             (1, "aaaaaaa1", False, "2026-12-03T01:00:00+00:00"),
                                             (2, "bbbbbbb2", True, "2026-12-03T09:00:00+00:00"))]
    assert tables.combined_from({"arguments": {"piece_records": pieces}}) == (
        "; combined from 3 pieces, one per seed (commits aaaaaaa, bbbbbbb (dirty tree); 2026-12-02 to 2026-12-03; "
        "Xeon (`nproc` 2); 30 min of runs)")
    assert tables.combined_from({"arguments": {"seeds": [0]}}) == ""
