"""bench/gpu_check.sh: its CPU smoke path runs end to end; without a GPU the real check refuses clearly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"


def _run(tmp_path, *args):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "check"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_cpu_smoke_times_training_selection_and_evaluation(tmp_path):
    completed = _run(tmp_path, "--cpu-smoke")
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    record = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert record["bench"] == "gpu_check" and record["config"]["model"]["depth"] == 18
    rows = record["rows"]
    assert [row["stage"] for row in rows] == ["train", "selection", "evaluation (inference + COCO eval)"]
    assert [row["images"] for row in rows] == [3 * 2, 6, 2]  # 3 timed iterations of 2; 6 train and 2 val images
    assert all(row["images_per_s"] > 0 for row in rows)
    assert "| selection | 6 |" in completed.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_the_check_says_so_and_does_nothing(tmp_path):
    completed = _run(tmp_path)
    assert completed.returncode == 2
    assert "PyTorch sees no CUDA GPU" in completed.stderr and "--cpu-smoke" in completed.stderr
    assert not (tmp_path / "check").exists()
