"""The supervision table from bench_supervision.py's eval.json files (hand-computed means, std and shares)."""

import json

import pytest

from apis.report.supervision import read_supervision, supervision_table


def _result(out, folder, row, seed, ap):
    path = out / folder / f"seed{seed}" / "eval.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"row": row, "seed": seed, "train_s": 90.0, "segm/AP": ap, "segm/AP50": ap + 20,
                                "bbox/AP": 50.0}))


def test_rows_mean_std_and_share_of_full_masks(tmp_path):
    _result(tmp_path, "boxes_plus_1_point", "boxes + 1 point", 0, 30.0)
    _result(tmp_path, "boxes_plus_1_point", "boxes + 1 point", 1, 33.0)
    _result(tmp_path, "full_masks", "full masks", 0, 40.0)
    _result(tmp_path, "full_masks", "full masks", 1, 44.0)
    results = read_supervision(tmp_path)
    assert [r["row"] for r in results] == ["full masks", "full masks", "boxes + 1 point", "boxes + 1 point"]
    header, rows = supervision_table(results)
    assert header[:4] == ["supervision", "seeds", "mask AP", "% of full masks (same seeds)"]
    # 31.5 / 42 = 75 %; sample std of (30, 33) = 2.12, of (40, 44) = 2.83
    assert rows == [["full masks", "0, 1", "42.00 ± 2.83", "100 %", "62.00 ± 2.83", "50.00 ± 0.00", "1.5"],
                    ["boxes + 1 point", "0, 1", "31.50 ± 2.12", "75 %", "51.50 ± 2.12", "50.00 ± 0.00", "1.5"]]


def test_no_share_without_full_masks_or_when_they_learnt_nothing(tmp_path):
    _result(tmp_path, "boxes_plus_1_point", "boxes + 1 point", 0, 3.0)
    _result(tmp_path, "boxes_plus_1_point", "boxes + 1 point", 1, 2.0)
    _result(tmp_path, "full_masks", "full masks", 0, 0.0)
    _, rows = supervision_table(read_supervision(tmp_path))
    assert [(row[0], row[3]) for row in rows] == [("full masks", "-"), ("boxes + 1 point", "-")]


def test_a_folder_without_results_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no <row>/seed<K>/eval.json"):
        read_supervision(tmp_path)
