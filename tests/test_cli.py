"""The command line: each subcommand reaches the Python API; bad input exits 2 with a named error."""

import json

import pytest

from apis.cli import main
from apis.data.ledger import Answer, PointLedger


def test_data_synth_prints_summary(tmp_path, capsys):
    main(["data", "synth", str(tmp_path / "s"), "--images", "4", "--size", "48", "--seed", "1"])
    out = capsys.readouterr().out
    assert "mean IoU of each mask with its filled box" in out
    assert (tmp_path / "s" / "annotations" / "train.json").exists()


def test_eval_of_results_file_against_itself_is_perfect(synth_dir, tmp_path, capsys):
    gt = json.loads((synth_dir / "annotations" / "val.json").read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                "segmentation": a["segmentation"], "bbox": a["bbox"]} for a in gt["annotations"]]
    (tmp_path / "res.json").write_text(json.dumps(results))
    main(["eval", "--gt", str(synth_dir / "annotations" / "val.json"), "--results", str(tmp_path / "res.json"),
          "--out", str(tmp_path / "m.json")])
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["segm/AP"] == pytest.approx(100.0) and metrics["bbox/AP"] == pytest.approx(100.0)


def test_bad_override_exits_2_naming_the_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", str(tmp_path / "missing.yaml")])
    assert info.value.code == 2
    assert "config file not found" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("{}\n")
    with pytest.raises(SystemExit):
        main(["train", str(tmp_path / "c.yaml"), "solver.max_itr=3"])
    assert "unknown config key 'solver.max_itr'" in capsys.readouterr().err


def test_export_points_writes_pointsup(synth_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train_json = synth_dir / "annotations" / "train.json"
    (run_dir / "config.yaml").write_text(f"data:\n  train_json: {train_json}\n")
    data = json.loads(train_json.read_text())
    ann = data["annotations"][0]
    image = next(im for im in data["images"] if im["id"] == ann["image_id"])
    x, y, w, h = ann["bbox"]
    with PointLedger(run_dir / "ledger.sqlite") as ledger:
        ledger.register_instances([(ann["id"], image["id"], (x, y, x + w, y + h), image["width"], image["height"])])
        ledger.record([Answer(ann_id=ann["id"], image_id=image["id"], x=int(x), y=int(y), label=1, step=0,
                              chosen_by="p0-random", annotator="simulated-oracle", cost_s=0.9)])
    main(["export-points", str(run_dir)])
    exported = json.loads((run_dir / "points_step000.json").read_text())
    first = next(a for a in exported["annotations"] if a["id"] == ann["id"])
    assert first["point_coords"] == [[int(x), int(y)]] and first["point_labels"] == [1]
