"""The command line: each subcommand reaches the Python API; bad input exits 2 with a named error."""

import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apis.cli import main
from apis.config import to_dict
from apis.config_loading import load_config
from apis.data.ledger import Answer, LedgerError, PointLedger
from apis.engine.checkpoint import save_checkpoint
from apis.evaluation.coco_eval import evaluate
from apis.evaluation.results import load_results
from apis.modeling.condinst import CondInst


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


def _same_metrics(written: dict, computed: dict) -> bool:
    """Equal, where the json file holds null for NaN."""
    return written.keys() == computed.keys() and all(
        math.isnan(computed[k]) if written[k] is None else math.isclose(written[k], computed[k]) for k in written)


def test_eval_of_a_checkpoint_needs_no_config_and_equals_evaluate_on_its_results(synth_dir, tmp_path):
    """The checkpoint stores its config; the metrics printed are evaluate() of the results file it writes."""
    val = synth_dir / "annotations" / "val.json"
    cfg = load_config(None, [f"data.val_json={val}", "device=cpu", "model.num_classes=4", "model.depth=18",
                             "model.norm=bn", "model.fpn_channels=16", "model.mask_branch_channels=16",
                             "model.head_convs=1", "model.score_threshold=0.0", "model.detections_per_image=5",
                             "data.min_size_test=64", "data.max_size=96", "data.num_workers=0"])
    torch.manual_seed(0)
    model = CondInst.from_config(cfg.model, cfg.loss)
    checkpoint = save_checkpoint(tmp_path / "model.pth", {"model": model.state_dict(), "iteration": 0,
                                                          "config": to_dict(cfg)})
    main(["eval", "--checkpoint", str(checkpoint), "--results", str(tmp_path / "r.json"), "--out",
          str(tmp_path / "m.json")])
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert len(load_results(tmp_path / "r.json")) == 5 * len(json.loads(val.read_text())["images"])
    assert _same_metrics(metrics, evaluate(str(val), str(tmp_path / "r.json")))
    assert metrics["segm/AP"] is not None
    # Overrides apply on top of the stored config.
    main(["eval", "--checkpoint", str(checkpoint), "--results", str(tmp_path / "r1.json"), "data.max_val_images=1"])
    first_image = json.loads(val.read_text())["images"][0]["id"]
    assert {r["image_id"] for r in load_results(tmp_path / "r1.json")} == {first_image}


def _error_of(argv, capsys):
    """``(exit status, stderr)`` of ``apis argv`` that fails."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_errors_are_one_line_and_the_traceback_only_with_debug(synth_dir, tmp_path, capsys):
    """Issue 13, case 10: export-points for a missing step and a bad results file printed tracebacks."""
    test_export_points_writes_pointsup(synth_dir, tmp_path, capsys)
    capsys.readouterr()
    run_dir = tmp_path / "run"
    code, err = _error_of(["export-points", str(run_dir), "--step", "5"], capsys)
    assert code == 2 and err == f"error: {run_dir / 'ledger.sqlite'}: no answers at step 5 (last step: 0)\n"
    with pytest.raises(LedgerError, match="no answers at step 5"):
        main(["--debug", "export-points", str(run_dir), "--step", "5"])

    results = tmp_path / "results.json"
    results.write_text('[{"image_id": 1}')
    code, err = _error_of(["eval", "--gt", str(synth_dir / "annotations" / "val.json"), "--results", str(results)],
                          capsys)
    assert code == 2 and err.startswith(f"error: {results}: not valid JSON") and len(err.splitlines()) == 1
    code, err = _error_of(["eval", "--gt", str(tmp_path / "missing.json"), "--results", str(results)], capsys)
    assert code == 2 and err.startswith(f"error: {tmp_path / 'missing.json'}: cannot be read")


def test_an_unexpected_exception_is_one_line_that_says_it_is_a_bug(monkeypatch, capsys):
    import apis.demo

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(apis.demo, "run_demo", broken)
    code, err = _error_of(["demo", "--quick"], capsys)
    assert code == 1 and err == ("error: ZeroDivisionError: division by zero (an APIS bug; run again with --debug "
                                 "and report the traceback)\n")
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "demo", "--quick"])


def refused(argv, capsys, *expected):
    """Run ``apis ARGV``: exit status 2 and one line ``error: ...`` containing each of ``expected``."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "APIS bug" not in err, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize(("override", "key"), [
    ("model.num_classes=2", "model.num_classes"),  # the dataset has 4 categories: read before the run dir is made
    ("data.min_size_train=[]", "data.min_size_train"),
    ("data.min_size_train=[0]", "data.min_size_train[0]"),
    ("solver.checkpoint_period=0", "solver.checkpoint_period"),
    ("selection.metric=bogus", "selection.metric"),
    ("seed=-1", "seed"),
    ("model.mask_out_stride=3", "model.mask_out_stride"),
    ("model.size_ranges=[0,1]", "model.size_ranges"),
    ("data.hflip_prob=2", "data.hflip_prob"),
    ("model.score_threshold=-0.5", "model.score_threshold"),
    ("device=cuda:99", "config key 'device'"),  # no CUDA here, or no 100th GPU
    ("model.backbone_weights=/nonexistent/r18.pth", "model.backbone_weights"),
    ("loop.initial_run=/nonexistent/run", "loop.initial_run"),
])
def test_a_bad_value_is_refused_before_the_run_dir_is_written_so_the_corrected_command_runs(
        synth_dir, tmp_path, capsys, override, key):
    run_dir = tmp_path / "run"
    command = ["run", "condinst_r18_cpu_synth.yaml", f"data.train_json={synth_dir}/annotations/train.json",
               f"data.val_json={synth_dir}/annotations/val.json", f"output_dir={run_dir}", "model.num_classes=4",
               "oracle.kind=human", "device=cpu", "loop.steps=0"]
    refused([*command, override], capsys, key)
    assert not run_dir.exists()
    with pytest.raises(SystemExit) as waiting:  # the corrected command: it stores P0's questions and waits
        main(command)
    assert waiting.value.code == 3 and (run_dir / "ledger.sqlite").is_file()


def test_bad_annotate_flags_are_refused_before_anything_is_served_or_written(human_run, capsys):
    _, run_dir = human_run()
    ledger = (run_dir / "ledger.sqlite").read_bytes()
    refused(["annotate", str(run_dir), "--port", "99999"], capsys, "--port 99999")
    refused(["annotate", str(run_dir), "--answers-per-question", "0"], capsys, "--answers-per-question")
    refused(["annotate", str(run_dir), "--lease-seconds", "0"], capsys, "--lease-seconds")
    refused(["annotate", str(run_dir), "--lease-seconds", "nan"], capsys, "--lease-seconds")
    refused(["annotate", str(run_dir), "--named-only"], capsys, "no named annotators")
    refused(["import-answers", str(run_dir), str(run_dir / "none.json"), "--answers-per-question", "0"], capsys,
            "answers per question")
    assert (run_dir / "ledger.sqlite").read_bytes() == ledger


def test_the_commands_for_people_start_without_importing_torch(human_run):
    """`apis annotate` (and the Label Studio round trip) only read the ledger, the config and the images: the
    page is served within a second, not after PyTorch's seconds of imports."""
    _, run_dir = human_run()
    script = ("import sys\n"
              "from apis.cli import main\n"
              f"main(['annotate', {str(run_dir)!r}, '--add-annotator', 'ann'])\n"
              "import apis.interop.label_studio\n"
              "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('apis'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ann: http://" in done.stdout


def test_a_ledger_of_an_unknown_schema_version_is_named_not_a_bug(human_run, capsys):
    _, run_dir = human_run()
    conn = sqlite3.connect(run_dir / "ledger.sqlite", isolation_level=None)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.close()
    for command in (["status"], ["annotate"], ["export-points"]):
        refused([*command, str(run_dir)], capsys, str(run_dir / "ledger.sqlite"), "schema version [99]")


def test_a_full_disk_is_one_line_naming_the_ledger_and_what_it_keeps(human_run, capsys, sqlite_disk_full):
    _, run_dir = human_run()
    sqlite_disk_full.full = True  # simulated: SQLite's "database or disk is full" on every change
    refused(["annotate", str(run_dir), "--add-annotator", "alice"], capsys,
            f"error: {run_dir / 'ledger.sqlite'}: could not be written (database or disk is full); this change was "
            "rolled back whole and the 0 answer(s) stored before it are kept. Free space, then run the same command "
            "again to go on")


@pytest.mark.parametrize(("argv", "flag"), [
    (["data", "synth", "OUT", "--images", "0"], "--images"),
    (["data", "synth", "OUT", "--size", "0"], "--size"),
    (["data", "synth", "OUT", "--val-fraction", "1"], "--val-fraction"),
    (["demo", "--steps", "-1", "--out", "OUT"], "loop.steps"),
])
def test_bad_flags_of_other_commands_are_named_and_write_nothing(tmp_path, monkeypatch, capsys, argv, flag):
    monkeypatch.chdir(tmp_path)
    refused([str(tmp_path / "out") if arg == "OUT" else arg for arg in argv], capsys, flag)
    assert list(tmp_path.iterdir()) == []


def snapshot(folder):
    """Every file under ``folder``: its bytes and modification time."""
    return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("media", ["writable", "read-only"])
def test_read_only_commands_write_nothing_to_the_run_directory(human_run, tmp_path, monkeypatch, capsys, media):
    from apis.data.questions import QuestionQueue

    _, run_dir = human_run()
    with QuestionQueue(run_dir / "ledger.sqlite") as queue:
        queue.answer("alice", queue.lease_next("alice", 60).id, "yes", 1.5)
    before = snapshot(run_dir)
    assert set(before) >= {run_dir / "ledger.sqlite", run_dir / "config.yaml"}
    if media == "read-only":  # as on read-only media (CI runs as root, whom chmod does not stop)
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: False if mode == os.W_OK and Path(path).resolve()
                            .is_relative_to(run_dir) else real_access(path, mode))
    main(["status", str(run_dir)])
    status = capsys.readouterr().out
    assert "step 0:" in status and "alice" in status
    main(["export-tasks", str(run_dir), str(tmp_path / "tasks.json")])
    assert len(json.loads((tmp_path / "tasks.json").read_text())) > 0
    refused(["export-points", str(run_dir), "--out", str(tmp_path / "points.json")], capsys, "no answers yet")
    if media == "read-only":
        refused(["annotate", str(run_dir)], capsys, "read-only", "make the folder and the file writable")
        refused(["import-answers", str(run_dir), str(tmp_path / "tasks.json")], capsys, "read-only",
                "make the folder and the file writable")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("damage", ["empty", "DROP TABLE answers", "DROP TABLE responses"])
def test_status_reports_a_damaged_ledger_and_leaves_it_as_it_was(human_run, capsys, damage):
    _, run_dir = human_run()
    ledger = run_dir / "ledger.sqlite"
    if damage == "empty":
        ledger.write_bytes(b"")
    else:
        conn = sqlite3.connect(ledger, isolation_level=None)
        conn.execute(damage)
        conn.close()
    before = snapshot(run_dir)
    for command in ("status", "annotate", "export-tasks"):
        refused([command, str(run_dir), *(["OUT.json"] if command == "export-tasks" else [])], capsys, str(ledger))
    assert snapshot(run_dir) == before
