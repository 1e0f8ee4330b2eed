"""The diagnostic bench scripts still run against the package's current API (they are not imported by it)."""

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


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
