"""The diagnostic bench scripts still run against the package's current API (they are not imported by it)."""

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_label_quality_scores_every_step_and_writes_a_record(finished_runs, tmp_path):
    import json

    cfg, _ = finished_runs["entropy"]
    record = tmp_path / "record.json"
    completed = subprocess.run(
        [sys.executable, str(BENCH / "bench_label_quality.py"), "--runs", str(cfg.output_dir), "--images", "3",
         "--record", str(record)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = [line.split("|")[1:-1] for line in completed.stdout.splitlines() if line.startswith("| APIS entropy")]
    assert [line[1].strip() for line in lines] == ["P0", "P1", "P2"]
    content = json.loads(record.read_text())
    assert content["bench"] == "label_quality" and content["schema"] == 1
    assert content["command"].startswith("python bench/bench_label_quality.py --runs ")
    assert set(content["machine"]) == {"cpu", "nproc", "gpu"} and isinstance(content["dirty"], bool)
    rows = content["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["group"] == "APIS entropy" for r in rows)
    for line, row in zip(lines, rows):
        assert float(line[4]) == pytest.approx(row["mIoU"]["local"], abs=6e-4)
        assert float(line[7]) == pytest.approx(row["box_fill_mIoU"], abs=6e-4)
        assert 0 <= row["mask_AP"]["local"] <= 100 and 0 <= row["box_fill_mask_AP"] <= 100


def test_mask_quality_reports_every_step_of_a_loop_run(finished_runs):
    cfg, _ = finished_runs["entropy"]
    completed = subprocess.run(
        [sys.executable, str(BENCH / "bench_mask_quality.py"), str(cfg.output_dir), "--images", "2", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in completed.stdout.splitlines() if "| all |" in line]
    assert [row[1].strip() for row in rows] == ["P0", "P1", "P2"]
    for row in rows:
        miou, box_fill = float(row[4]), float(row[5])
        assert 0.0 <= miou <= 1.0 and 0.0 < box_fill <= 1.0
        assert abs(float(row[6]) - (miou - box_fill)) < 2e-3
    # Filling the true box does not depend on the model: the same at every step.
    assert len({row[5] for row in rows}) == 1


def test_mask_quality_applies_set_overrides_to_every_run(finished_runs):
    cfg, _ = finished_runs["entropy"]
    completed = subprocess.run(
        [sys.executable, str(BENCH / "bench_mask_quality.py"), str(cfg.output_dir), "--device", "cpu",
         "--set", "model.depth=19"], capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0 and "config key 'model.depth' is 19" in completed.stderr


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

    completed = subprocess.run(
        [sys.executable, str(BENCH / "bench_coco_scale.py"), "--instances", "1000", "--workdir", str(tmp_path),
         "--json"], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
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
