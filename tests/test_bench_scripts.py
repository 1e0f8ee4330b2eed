"""The bench scripts still run against the package's current API (they are not imported by it), each on tiny
inputs, and each writes its record (bench/records.py) with the rows it printed."""

import contextlib
import importlib.util
import io
import json
import os
import runpy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from records import read_record  # noqa: E402

from apis.config import ConfigError  # noqa: E402


def _bench(script: str, *args, record: Path, cwd: Path | None = None):
    """Run ``bench/<script> args --record record`` as ``python bench/<script>`` would, but in this process (a new
    interpreter would import torch again: seconds per script); the completed run and the record read back.
    The script's own ``__main__`` block runs; its changes to the environment, the working directory and torch's
    threads are undone afterwards."""
    argv = [str(BENCH / script), *map(str, args), "--record", str(record)]
    stdout, stderr = io.StringIO(), io.StringIO()
    saved = (sys.argv, dict(os.environ), os.getcwd(), torch.get_num_threads())
    os.environ.update(OMP_NUM_THREADS="1", PYTHONPATH=str(BENCH.parent))  # for the processes the script starts
    sys.argv = argv
    returncode = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(argv[0], run_name="__main__")
            except SystemExit as stop:
                if stop.code not in (None, 0):
                    returncode = stop.code if isinstance(stop.code, int) else 1
                    print(stop.code, file=sys.stderr)
    finally:
        sys.argv, environment, directory, threads = saved
        os.environ.clear()
        os.environ.update(environment)
        os.chdir(directory)
        torch.set_num_threads(threads)
    completed = subprocess.CompletedProcess(argv, returncode, stdout.getvalue(), stderr.getvalue())
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    content = read_record(record)
    assert content["bench"] == script.removeprefix("bench_").removesuffix(".py")
    assert content["command"].startswith(f"python bench/{script}") and content["rows"]
    return completed, content


def test_label_quality_scores_every_step_and_writes_a_record(finished_runs, tmp_path):
    cfg, _ = finished_runs["entropy"]
    completed, content = _bench("bench_label_quality.py", "--runs", cfg.output_dir, "--images", "3",
                                record=tmp_path / "record.json")
    lines = [line.split("|")[1:-1] for line in completed.stdout.splitlines() if line.startswith("| APIS entropy")]
    assert [line[1].strip() for line in lines] == ["P0", "P1", "P2"]
    assert content["schema"] == 2 and content["arguments"]["images"] == 3
    assert set(content["machine"]) == {"cpu", "nproc", "gpu"} and isinstance(content["dirty"], bool)
    # One seed: local - none per step, without an interval.
    assert [(c["step"], c["seeds"], c["verdict"]) for c in content["comparisons"]] == [
        (step, [0], "unresolved") for step in range(3)]
    rows = content["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["group"] == "APIS entropy" for r in rows)
    for line, row in zip(lines, rows):
        assert float(line[4]) == pytest.approx(row["mIoU"]["local"], abs=6e-4)
        assert float(line[7]) == pytest.approx(row["box_fill_mIoU"], abs=6e-4)
        assert 0 <= row["mask_AP"]["local"] <= 100 and 0 <= row["box_fill_mask_AP"] <= 100


def test_mask_quality_reports_every_step_of_a_loop_run(finished_runs, tmp_path):
    cfg, _ = finished_runs["entropy"]
    completed, content = _bench("bench_mask_quality.py", cfg.output_dir, "--images", "2", "--device", "cpu",
                                record=tmp_path / "record.json")
    rows = [line.split("|")[1:-1] for line in completed.stdout.splitlines() if "| all |" in line]
    assert [row[1].strip() for row in rows] == ["P0", "P1", "P2"]
    recorded = [r for r in content["rows"] if r["size"] == "all"]
    assert [r["step"] for r in recorded] == ["P0", "P1", "P2"]
    assert [f"{r['mIoU']:.3f}" for r in recorded] == [row[4].strip() for row in rows]
    for row in rows:
        miou, box_fill = float(row[4]), float(row[5])
        assert 0.0 <= miou <= 1.0 and 0.0 < box_fill <= 1.0
        assert abs(float(row[6]) - (miou - box_fill)) < 2e-3
    # Filling the true box does not depend on the model: the same at every step.
    assert len({row[5] for row in rows}) == 1


def test_mask_quality_applies_set_overrides_to_every_run(finished_runs, monkeypatch):
    cfg, _ = finished_runs["entropy"]
    monkeypatch.setattr(sys, "argv", ["bench_mask_quality.py", str(cfg.output_dir), "--device", "cpu",
                                      "--set", "model.depth=19"])
    with pytest.raises(ConfigError, match="config key 'model.depth' is 19"):
        _mask_quality_module().main()


def _mask_quality_module():
    """``bench/bench_mask_quality.py`` imported as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_mask_quality", BENCH / "bench_mask_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shifted_ious_find_a_mask_moved_by_one_pixel():
    """A mask drawn one column right of and one row above its GT scores IoU 1 at the shift (-1, +1) that
    moves it back, and less at no shift (a 3x3 square against the same square moved diagonally: 4 / 14)."""
    module = _mask_quality_module()
    gt = np.zeros((10, 10), dtype=bool)
    gt[4:7, 2:5] = True  # rows 4-6, columns 2-4
    grid = (1, 2, 8, 9)  # x0, y0, x1, y1: columns 1-7, rows 2-8
    mask = np.zeros((7, 7), dtype=bool)
    mask[4 - 1 - 2:7 - 1 - 2, 2 + 1 - 1:5 + 1 - 1] = True  # the GT square at rows 3-5, columns 3-5 of the image
    ious = module.shifted_ious(mask, grid, gt)
    assert module.SHIFTS[int(ious.argmax())] == (-1, 1) and ious.max() == 1.0
    assert ious[module.SHIFTS.index((0, 0))] == pytest.approx(4 / 14)


def test_top_location_is_the_highest_scoring_member_not_the_mean():
    """Of three locations, the one scored highest draws the GT exactly; the two others draw nothing, so the
    mean of the set (1/3 on the object) thresholds to an empty mask while the top location's mask is the GT."""
    module = _mask_quality_module()
    gt = torch.zeros(6, 6)
    gt[1:4, 2:5] = 1.0
    probs = torch.stack([torch.zeros(6, 6), gt, torch.zeros(6, 6)])
    top = module.top_location_probs(probs, torch.tensor([0.3, 0.8, 0.5]))
    assert torch.equal(top, gt)
    assert module.iou(top.numpy() > 0.5, gt.numpy() > 0.5) == 1.0
    assert module.iou(probs.mean(dim=0).numpy() > 0.5, gt.numpy() > 0.5) == 0.0


def test_coco_scale_bench_measures_every_stage_at_a_thousand_instances(tmp_path):
    """The bench at 1,000 instances: its JSON line has every stage, the counts fit the generated file (read
    back with pycocotools: COCO's 80 categories, polygons, compressed and uncompressed RLE), and the ledger
    holds ten steps of one answer per training instance."""
    from pycocotools.coco import COCO

    completed, content = _bench("bench_coco_scale.py", "--instances", "1000", "--workdir", tmp_path, "--json",
                                record=tmp_path / "record.json")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert content["rows"] == [result]
    for key in ("instances", "load_s", "pycocotools_load_s", "load_peak_rss_mib", "pycocotools_peak_rss_mib",
                "ask_record_s_per_step", "status_s_10_steps", "report_s_10_steps", "resume_open_s",
                "image_check_s"):
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    assert len(result["ask_record_s_every_step"]) == 10
    coco = COCO(str(tmp_path / "coco_1000_seed0" / "annotations" / "train.json"))
    anns = list(coco.anns.values())
    assert result["instances"] == len(anns) == 1000 and len(coco.cats) == 80
    assert result["images"] == len(coco.imgs) == round(1000 * 118_000 / 860_000)
    kinds = Counter("polygon" if isinstance(a["segmentation"], list) else type(a["segmentation"]["counts"]).__name__
                    for a in anns)
    assert kinds["polygon"] > 750 and kinds["str"] > 0 and kinds["list"] > 0
    questions = sum(not a["iscrowd"] for a in anns)
    assert result["questions_per_step"] == questions
    # Steps 1-9 draw their points afresh, so a few fall on a pixel asked before and are stored once.
    assert 9 * questions < result["ledger_answers"] <= 10 * questions


def test_image_check_times_a_json_s_images_and_a_coco_stand_in_and_writes_a_record(synth_dir, tmp_path):
    _, content = _bench("bench_image_check.py", "--json", synth_dir / "annotations" / "train.json", "--stand-in", "3",
                        "--workdir", tmp_path, "--threads", "1", "2", record=tmp_path / "image_check.json")
    rows = content["rows"]
    train = json.loads((synth_dir / "annotations" / "train.json").read_text())["images"]
    assert [(row["images"], row["threads"]) for row in rows] == [(len(train), 1), (len(train), 2), (3, 1), (3, 2)]
    assert all(row["first_s"] > 0 and row["cached_s"] >= 0 for row in rows)
    stand_in = sorted((tmp_path / "stand_in").iterdir())
    assert len(stand_in) == 3 and all(Image.open(path).size == (640, 480) for path in stand_in)
    coco = rows[2]["coco_extrapolated"]
    assert coco["images"] == 123_287
    assert coco["first_s"] == pytest.approx(rows[2]["first_ms_per_image"] / 1e3 * 123_287, rel=0.01, abs=1)
    assert "coco_extrapolated" not in rows[0]


def test_label_efficiency_pairs_each_arm_with_random_and_records_the_runs(finished_runs, tmp_path):
    """``--collect`` reads finished runs named ``<arm>_seed<N>`` (here the session's two runs, linked)."""
    out = tmp_path / "le"
    out.mkdir()
    for arm in ("entropy", "random"):
        (out / f"{arm}_seed0").symlink_to(finished_runs[arm][0].output_dir)
    completed, content = _bench("bench_label_efficiency.py", "--config", Path(finished_runs["entropy"][0].output_dir) /
                                "config.yaml", "--seeds", "0", "--steps", "2", "--out", out, "--collect",
                                record=tmp_path / "record.json")
    assert sorted((r["group"], r["step"]) for r in content["rows"]) == [(a, s) for a in ("entropy", "random")
                                                                         for s in range(3)]
    entropy = {r["step"]: r["mask_AP"] for r in content["rows"] if r["group"] == "entropy"}
    random = {r["step"]: r["mask_AP"] for r in content["rows"] if r["group"] == "random"}
    assert entropy[0] == random[0]  # the random run reuses entropy's M0
    comparisons = content["comparisons"]
    assert [(c["a"], c["b"], c["step"]) for c in comparisons] == [("entropy", "random", s) for s in range(3)]
    assert [c["differences"] for c in comparisons] == [[pytest.approx(entropy[s] - random[s])] for s in range(3)]
    assert content["config"]["model"]["depth"] == 18 and content["arguments"]["arms"]["random"] == [
        "selection.metric=random"]
    assert "| entropy | random | P2 | 1 |" in completed.stdout and (out / "curves.png").is_file()


def test_point_learning_records_every_step(finished_runs, tmp_path):
    cfg, _ = finished_runs["entropy"]
    _, content = _bench("bench_point_learning.py", cfg.output_dir, record=tmp_path / "record.json")
    assert [r["step"] for r in content["rows"]] == [0, 1, 2]
    assert all(0 <= r["train_point_acc"] <= 1 for r in content["rows"])


def test_inference_and_selection_benches_record_their_timings(finished_runs, tmp_path):
    cfg, _ = finished_runs["entropy"]
    run = Path(cfg.output_dir)
    config, checkpoint = run / "config.yaml", run / "step_000" / "train" / "model_final.pth"
    _, inference = _bench("bench_inference.py", "--config", config, "--checkpoint", checkpoint,
                          record=tmp_path / "inference.json")
    assert inference["rows"][0]["images"] == 2 and inference["config"]["model"]["depth"] == 18
    _, selection = _bench("bench_selection.py", "--config", config, "--checkpoint", checkpoint, "--images", "1",
                          "--small", "1", record=tmp_path / "selection.json")  # one size is measured once
    assert [(r["kind"], r["images"]) for r in selection["rows"]] == [("inference", 1), ("selection", 1)]


def test_sharding_bench_records_one_process(finished_runs, tmp_path):
    cfg, _ = finished_runs["entropy"]
    _, content = _bench("bench_sharding.py", "--config", Path(cfg.output_dir) / "config.yaml", "--images", "2",
                        "--procs", "1", record=tmp_path / "record.json")
    assert {(r["kind"], r["procs"]) for r in content["rows"]} >= {("selection", 1), ("inference", 1)}


def test_supervision_bench_records_its_rows(finished_runs, tmp_path):
    cfg, _ = finished_runs["entropy"]
    _, content = _bench("bench_supervision.py", "--config", Path(cfg.output_dir) / "config.yaml", "--rows",
                        "full masks", "boxes + 1 point", "--point-weight", "0.25", "--seeds", "0", "--out",
                        tmp_path / "sup", record=tmp_path / "record.json")
    assert [(r["row"], r["seed"]) for r in content["rows"]] == [("full masks", 0), ("boxes + 1 point", 0)]
    assert content["config"]["solver"]["max_iter"] == cfg.solver.max_iter
    # --point-weight is the point loss of the rows with points only; full masks train without points.
    trained = {row: yaml.safe_load((tmp_path / "sup" / row / "seed0" / "config.yaml").read_text())["loss"]["points"]
               for row in ("full_masks", "boxes_plus_1_point")}
    assert trained == {"full_masks": 0.0, "boxes_plus_1_point": 0.25}


def test_eval_bench_records_its_timings(synth_dir, tmp_path):
    _, content = _bench("bench_eval.py", "--gt", synth_dir / "annotations" / "val.json", "--repeats", "1",
                        record=tmp_path / "eval.json")
    assert sorted((r["backend"], r["iou_type"]) for r in content["rows"]) == [
        ("faster", "bbox"), ("faster", "segm"), ("pycocotools", "bbox"), ("pycocotools", "segm")]


def test_train_speed_bench_records_both_models(tmp_path):
    _, content = _bench("bench_train_speed.py", "--size", "64", "--batch", "1", "--iters", "1",
                        record=tmp_path / "record.json", cwd=tmp_path)
    assert [r["model"] for r in content["rows"]] == ["condinst", "maskrcnn"]


def test_annotate_bench_records_its_load_test(tmp_path):
    _, content = _bench("bench_annotate.py", "--questions", "20", "--clients", "2", "--work", tmp_path / "work",
                        record=tmp_path / "record.json")
    assert content["rows"][0]["answers_stored"] == 20 and content["rows"][0]["lost"] == 0


def test_label_efficiency_combines_pieces_one_seed_each_and_refuses_another_experiments(finished_runs, tmp_path,
                                                                                       monkeypatch):
    """``--pieces``: records written a seed at a time (here seed 0 collected, and a copy of it as seed 1 with other
    numbers) give the record of both seeds, paired per seed, with each piece's provenance; a piece of another
    config is refused, naming it."""
    out = tmp_path / "le"
    out.mkdir()
    for arm in ("entropy", "random"):
        (out / f"{arm}_seed0").symlink_to(finished_runs[arm][0].output_dir)
    config = Path(finished_runs["entropy"][0].output_dir) / "config.yaml"
    common = ["--config", config, "--steps", "2", "--out", out]
    _, seed0 = _bench("bench_label_efficiency.py", *common, "--seeds", "0", "--collect", record=tmp_path / "p0.json")
    seed1 = json.loads(json.dumps(seed0))
    seed1["arguments"]["seeds"] = [1]
    for row in seed1["rows"]:
        row["seed"] = 1
        row["mask_AP"] = row["step"] * (2.0 if row["group"] == "entropy" else 1.0)
    (tmp_path / "p1.json").write_text(json.dumps(seed1))
    _, content = _bench("bench_label_efficiency.py", *common, "--pieces", tmp_path / "p0.json", tmp_path / "p1.json",
                        record=tmp_path / "record.json")
    assert content["arguments"]["seeds"] == [0, 1]
    assert [(p["record"], p["seeds"]) for p in content["arguments"]["piece_records"]] == [
        (str(tmp_path / "p0.json"), [0]), (str(tmp_path / "p1.json"), [1])]
    ap = {(r["group"], r["seed"], r["step"]): r["mask_AP"] for r in seed0["rows"]}
    p2 = next(c for c in content["comparisons"] if c["step"] == 2)
    assert p2["seeds"] == [0, 1] and p2["differences"] == [
        pytest.approx(ap["entropy", 0, 2] - ap["random", 0, 2]), pytest.approx(4.0 - 2.0)]

    other = json.loads(json.dumps(seed1))
    other["arguments"]["seeds"], other["config"]["solver"]["max_iter"] = [2], 5
    (tmp_path / "p2.json").write_text(json.dumps(other))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as refused:
        monkeypatch.setattr(sys, "argv", [str(BENCH / "bench_label_efficiency.py"), *map(str, common), "--pieces",
                                          str(tmp_path / "p0.json"), str(tmp_path / "p2.json"), "--record",
                                          str(tmp_path / "refused.json")])
        runpy.run_path(sys.argv[0], run_name="__main__")
    assert str(refused.value) == f"{tmp_path / 'p2.json'}: a piece of another experiment (the resolved config differs)"
    assert not (tmp_path / "refused.json").exists()


def test_label_efficiency_arms_name_their_runs_and_choose_the_baseline(finished_runs, tmp_path):
    out = tmp_path / "arms"
    out.mkdir()
    (out / "mine_seed0").symlink_to(finished_runs["entropy"][0].output_dir)
    (out / "chance_seed0").symlink_to(finished_runs["random"][0].output_dir)
    _, content = _bench("bench_label_efficiency.py", "--config", Path(finished_runs["entropy"][0].output_dir) /
                        "config.yaml", "--seeds", "0", "--out", out, "--collect", "--baseline", "chance",
                        "--arm", "mine", "selection.metric=entropy", "loop.points_from=runs/x_seed{seed}",
                        "--arm", "chance", "selection.metric=random", record=tmp_path / "record.json")
    assert content["arguments"]["arms"] == {"mine": ["selection.metric=entropy", "loop.points_from=runs/x_seed{seed}"],
                                            "chance": ["selection.metric=random"]}
    assert {(c["a"], c["b"]) for c in content["comparisons"]} == {("mine", "chance")}


def test_the_plan_names_its_experiments_when_given_none():
    completed = subprocess.run(["bash", str(BENCH / "plan.sh")], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2 and "power_recipe" in completed.stderr and "departures" in completed.stderr


def test_sharp_masks_bench_pairs_each_lever_with_box_fill_and_the_baseline(finished_runs, tmp_path):
    cfg, _ = finished_runs["entropy"]
    row = "boxes + 1 point + box terms"
    completed, content = _bench("bench_sharp_masks.py", "--config", Path(cfg.output_dir) / "config.yaml", "--levers",
                                "baseline", "c2_stride4", "--rows", row, "--seeds", "0", "1", "--images", "2",
                                "--out", tmp_path / "sharp", record=tmp_path / "record.json")
    rows = content["rows"]
    assert sorted((r["lever"], r["seed"]) for r in rows) == [("baseline", 0), ("baseline", 1), ("c2_stride4", 0),
                                                             ("c2_stride4", 1)]
    for r in rows:
        assert r["miou_minus_box_fill"] == pytest.approx(r["mIoU"] - r["box_fill_mIoU"])
        assert {"mask_AP75", "box_AP75", "s_per_iter"} <= set(r) and r["s_per_iter"] > 0
    mine = {r["seed"]: r for r in rows if r["lever"] == "c2_stride4"}
    base = {r["seed"]: r for r in rows if r["lever"] == "baseline"}
    found = {(c["metric"], c["a"], c["b"]): c for c in content["comparisons"]}
    versus_base = found[(f"mIoU, {row}", "c2_stride4", "baseline")]
    assert versus_base["differences"] == [pytest.approx(mine[s]["mIoU"] - base[s]["mIoU"]) for s in (0, 1)]
    assert found[(f"mIoU - box fill, {row}", "baseline", "box fill")]["seeds"] == [0, 1]
    # The stride-4 lever trained a stride-4 model.
    stored = yaml.safe_load((tmp_path / "sharp" / "c2_stride4" / "boxes_plus_1_point_plus_box_terms" / "seed0"
                             / "config.yaml").read_text())
    assert stored["model"]["mask_feature_stride"] == 4 and stored["model"]["mask_head_window"] is True
    assert "| boxes + 1 point + box terms | c2_stride4 | 2 |" in completed.stdout
    # --collect trains nothing: seed 2 was never run, so it is named and left out. With --refinement each finished
    # model is scored refined too, as the lever '<lever> + refined' compared with its unrefined self.
    completed, collected = _bench("bench_sharp_masks.py", "--config", Path(cfg.output_dir) / "config.yaml",
                                  "--levers", "baseline", "c2_stride4", "--rows", row, "--seeds", "0", "1", "2",
                                  "--images", "2", "--out", tmp_path / "sharp", "--collect", "--refinement",
                                  record=tmp_path / "collected.json")
    assert f"not run: baseline / {row} / seed 2" in completed.stdout and not (tmp_path / "sharp" / "baseline" /
                                                                              "boxes_plus_1_point_plus_box_terms" /
                                                                              "seed2").exists()
    assert [r for r in collected["rows"] if "refined" not in r["lever"]] == rows
    refined = {(r["lever"], r["seed"]): r for r in collected["rows"] if "refined" in r["lever"]}
    assert sorted(refined) == [("baseline + refined", 0), ("baseline + refined", 1), ("c2_stride4 + refined", 0),
                               ("c2_stride4 + refined", 1)]
    assert {r["reference"] for r in refined.values()} == {"baseline", "c2_stride4"}
    assert all(r["overrides"][-1] == "model.refinement.method=colour_crf" for r in refined.values())
    found = {(c["metric"], c["a"], c["b"]): c for c in collected["comparisons"]}
    versus_unrefined = found[(f"mIoU, {row}", "c2_stride4 + refined", "c2_stride4")]
    assert versus_unrefined["differences"] == [pytest.approx(refined[("c2_stride4 + refined", s)]["mIoU"]
                                                             - mine[s]["mIoU"]) for s in (0, 1)]
    # The same model: its box AP is the unrefined one's (refinement changes masks only).
    assert refined[("c2_stride4 + refined", 0)]["box_AP"] == pytest.approx(mine[0]["box_AP"])


def test_refinement_choice_scores_every_setting_on_training_images(finished_runs, tmp_path):
    """The unrefined row is the true-box mIoU bench_mask_quality gives the same model on the same images."""
    import shutil

    from bench_mask_quality import step_quality

    from apis.config_loading import dump_config, load_run_config
    from apis.data.coco import load_datasets
    from apis.loop.run_dir import step_dir

    cfg, _ = finished_runs["entropy"]
    folder = tmp_path / "m0"
    folder.mkdir()
    shutil.copy(step_dir(cfg.output_dir, 0) / "train" / "model_final.pth", folder / "model_final.pth")
    dump_config(cfg, folder / "config.yaml")
    completed, content = _bench("bench_refinement_choice.py", folder, "--images", "2", record=tmp_path / "rec.json")
    sys.path.insert(0, str(BENCH))
    from bench_refinement_choice import grid, setting_name

    settings = [r["setting"] for r in content["rows"]]
    assert settings == ["box fill", "unrefined", *(setting_name(crf) for crf in grid())]
    assert len(set(settings)) == len(settings) and all(0 <= r["mIoU"] <= 1 for r in content["rows"])
    train_cfg = load_run_config(folder / "config.yaml", ["data.max_train_images=2", "data.num_workers=0"])
    train, _ = load_datasets(train_cfg)
    overall = step_quality(folder / "model_final.pth", train_cfg, train, torch.device("cpu"))[0]
    rows = {r["setting"]: r for r in content["rows"]}
    assert rows["unrefined"]["mIoU"] == pytest.approx(overall["mIoU"])
    assert rows["box fill"]["mIoU"] == pytest.approx(overall["box_fill_mIoU"])
    assert rows["unrefined"]["instances"] == overall["instances"]
    assert "| unrefined |" in completed.stdout


def test_mask_resolution_bench_by_hand(tmp_path):
    """Two squares in a 64 x 64 image tested at 64 px. The oracle's logits are +-c (coverage 1 or 0) and the paste
    is bilinear, so a pixel near a corner is on when the product of its two interpolation weights towards the
    inside cells exceeds 1/2: at stride s the weight of the k-th pixel from an edge is 1/2 + (k + 1/2) / s.
    A 16 x 16 square on the stride-8 grid loses 6 pixels per corner at stride 8 (IoU 232/256) and 1 at stride 4
    (252/256). An 8 x 8 square at (20, 36) covers four stride-8 cells a quarter each, all under one half: nothing
    at stride 8 (IoU 0), and it lies on the stride-4 grid (60/64). Box fill is 1 for both."""
    from pycocotools import mask as mask_utils

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    annotations = []
    for index, (x, y, side) in enumerate([(16, 16, 16), (20, 36, 8)]):
        mask = np.zeros((64, 64), dtype=np.uint8, order="F")
        mask[y:y + side, x:x + side] = 1
        rle = mask_utils.encode(mask)
        annotations.append({"id": index + 1, "image_id": 1, "category_id": 1, "bbox": [x, y, side, side],
                            "area": side * side, "iscrowd": 0,
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    (tmp_path / "val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}], "annotations": annotations,
        "categories": [{"id": 1, "name": "square"}]}))
    _, content = _bench("bench_mask_resolution.py", "--json", tmp_path / "val.json", "--image-root", tmp_path,
                        "--sizes", "64:64", "--strides", "8", "4", record=tmp_path / "record.json")
    miou = {r["mask"]: r["mIoU"]["all"] for r in content["rows"]}
    assert miou == {"coverage oracle, stride 8": pytest.approx((232 / 256 + 0) / 2),
                    "coverage oracle, stride 4": pytest.approx((252 / 256 + 60 / 64) / 2),
                    "box fill": pytest.approx(1.0)}


def test_test_time_bench_times_a_fresh_clone_and_records_pytests_counts(tmp_path):
    completed, content = _bench("bench_test_time.py", "--workers", "0", "--tests", "tests/test_structures.py",
                                record=tmp_path / "record.json")  # -n 0: the tests in pytest's own process
    (row,) = content["rows"]
    assert row["returncode"] == 0 and row["failed"] == 0 and row["passed"] > 0 and row["ruff_clean"]
    assert row["failures"] == [] and row["cpu_s"] > 0
    assert row["wall_s"] >= row["pytest_s"] > 0 and row["tests"] == "tests/test_structures.py"
    assert "| 1 | 0 |" in completed.stdout


def test_test_time_bench_reads_pytests_summary_and_slowest_tests():
    module = importlib.import_module("bench_test_time")
    assert module.parse_summary("....\n870 passed, 4 skipped in 512.30s (0:08:32)\n") == {
        "passed": 870, "failed": 0, "skipped": 4, "errors": 0, "pytest_s": 512.3}
    assert module.parse_summary("===== 1 failed, 2 passed, 1 error in 3.10s =====") == {
        "passed": 2, "failed": 1, "skipped": 0, "errors": 1, "pytest_s": 3.1}
    with pytest.raises(ValueError, match="no summary"):
        module.parse_summary("Traceback (most recent call last):")
    assert module.parse_slowest("12.50s call     tests/a.py::test_b[x]\n0.01s setup    tests/c.py::test_d\n") == [
        {"test": "tests/a.py::test_b[x]", "phase": "call", "seconds": 12.5},
        {"test": "tests/c.py::test_d", "phase": "setup", "seconds": 0.01}]
    short_summary = ("=== short test summary info ===\nFAILED tests/a.py::test_b[x] - AssertionError: 1\n"
                     "ERROR tests/c.py::test_d - RuntimeError\n=== 1 failed, 1 error in 2.00s ===\n")
    assert module.parse_failures(short_summary) == ["tests/a.py::test_b[x]", "tests/c.py::test_d"]
    assert module.parse_failures("870 passed in 512.30s\n") == []


def test_demo_time_bench_times_the_demo_in_a_fresh_clone(tmp_path):
    """A stand-in interpreter in place of the clone's: it prints the demo's closing line from the clone (its
    working directory), so the bench's clone, run, parse and record are checked without minutes of demo."""
    stand_in = tmp_path / "python"
    stand_in.write_text("#!/bin/sh\n[ -f README.md ] && [ -d apis ] || exit 3\necho \"args: $*\"\n"
                        "echo 'Masks to take home: runs/demo/entropy_masks.json (P3, 5 training instances): mean IoU "
                        "with the true masks 0.700, filling each box 0.400 (+0.300)'\n")
    stand_in.chmod(0o755)
    _, content = _bench("bench_demo_time.py", "--python", stand_in, "--demo-args", "--quick --steps 1",
                        record=tmp_path / "record.json")
    (row,) = content["rows"]
    assert row["returncode"] == 0 and row["demo_args"] == "--quick --steps 1" and row["target_met"]
    assert (row["masks_miou"], row["box_fill_miou"]) == (0.7, 0.4) and row["wall_s"] >= 0


def test_demo_time_bench_reads_the_demos_closing_line():
    module = importlib.import_module("bench_demo_time")
    line = ("Masks to take home: runs/demo/entropy_masks.json (P3, 543 training instances): mean IoU with the true "
            "masks 0.734, filling each box 0.467 (+0.266)")
    assert module.parse_closing(f"| table |\n{line}\n") == {"masks_miou": 0.734, "box_fill_miou": 0.467}
    assert module.parse_closing("Traceback (most recent call last):") == {"masks_miou": None, "box_fill_miou": None}
    printed = ("M0 done, 5.2 min into the demo\n| table |\nboth strategies' steps done, 8.9 min into the demo\n"
               "Report: runs/demo/report.html\nreport written, 9.6 min into the demo\nDemo done in 10.1 min\n")
    assert module.parse_phases(printed) == {"m0_min": 5.2, "steps_min": 8.9, "report_min": 9.6}
    assert module.parse_phases("M0 done, 5.2 min into the demo\nTraceback") == {"m0_min": 5.2, "steps_min": None,
                                                                                  "report_min": None}
