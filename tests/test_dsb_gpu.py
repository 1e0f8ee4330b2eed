"""bench/dsb_gpu.sh on the CPU at a tiny size: every benchmark it runs side by side finishes and lands where the
docs read it, and its deadline stops what is still going without losing what finished."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "dsb_gpu.sh"
# The 4-category synthetic data stands in for DSB (same COCO layout); the shipped schedule shrunk to seconds.
TINY = ["model.num_classes=4", "model.backbone_weights=none", "model.fpn_channels=16",
        "model.mask_branch_channels=16", "model.head_convs=1", "data.min_size_train=[64]", "data.min_size_test=64",
        "data.max_size=96", "solver.max_iter=2", "solver.steps=[1]", "solver.warmup_iters=1",
        "solver.checkpoint_period=1", "loss.pairwise_warmup_iters=1", "loop.finetune_iters=1",
        "loop.finetune_steps=[1]", "selection.scales=[64]", "data.num_workers=0"]


def _run(synth_dir, runs, deadline, *extra, python=sys.executable):
    env = {**os.environ, "PYTHON": str(python), "DSB": str(synth_dir), "RUNS": str(runs), "SEEDS": "0",
           "DEVICE": "cpu", "DEADLINE": str(deadline), "OMP_NUM_THREADS": "1", "RECORDS": str(runs / "results")}
    return subprocess.run(["bash", str(SCRIPT), *TINY, *extra], capture_output=True, text=True, env=env,
                          timeout=600)


def test_every_benchmark_finishes_and_reports(synth_dir, tmp_path):
    completed = _run(synth_dir, tmp_path / "runs", 0)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    table = (tmp_path / "runs" / "supervision.md").read_text()
    for row in ("full masks", "boxes + 1 point + box terms", "boxes only (BoxInst)"):
        assert f"| {row} | 0 |" in table
    quality = (tmp_path / "runs" / "mask_quality.md").read_text()
    for name in ("full_masks", "boxes_plus_1_point_plus_box_terms", "boxes_only_BoxInst", "le"):
        assert f"mask_quality_{name}_seed0" in quality
    for run in ("entropy_seed0", "random_seed0"):
        assert all(f"| {run} | P{step} | all |" in quality for step in range(4))
    loops = tmp_path / "runs" / "label_efficiency"
    for strategy in ("entropy", "random"):
        assert (loops / f"{strategy}_seed0" / "step_003" / "metrics.json").is_file()
    # The benchmark's records, for bench/tables.py: every (strategy, step) of the loops, every supervision row.
    sys.path.insert(0, str(SCRIPT.parent))
    from records import read_record

    loop_record = read_record(tmp_path / "runs" / "results" / "label_efficiency_dsb_gpu.json")
    assert sorted((r["group"], r["step"]) for r in loop_record["rows"]) == sorted(
        (s, step) for s in ("entropy", "random") for step in range(4))
    assert [c["step"] for c in loop_record["comparisons"]] == [0, 1, 2, 3]
    supervision = read_record(tmp_path / "runs" / "results" / "supervision_dsb_gpu.json")
    assert len(supervision["rows"]) == 3


def test_a_bad_key_is_named_before_any_job_starts(synth_dir, tmp_path):
    completed = _run(synth_dir, tmp_path / "runs", 0, "model.depth=19")
    assert completed.returncode == 2
    assert completed.stderr.startswith("dsb_gpu: ") and "config key 'model.depth' is 19" in completed.stderr
    assert not (tmp_path / "runs").exists()


def test_a_failing_job_fails_the_script_and_shows_its_error(synth_dir, tmp_path):
    """Every job fails as it starts (a stand-in interpreter that runs only the script's config check): the script
    counts them, shows each log's error and exits 1."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\n[ "$1" = - ] && exec {sys.executable} "$@"\n'
                      'echo "RuntimeError: no GPU in this job ($1)" >&2\nexit 1\n')
    python.chmod(0o755)
    completed = _run(synth_dir, tmp_path / "runs", 0, python=python)
    assert completed.returncode == 1
    assert "4 of 4 jobs failed" in completed.stderr  # 3 supervision rows and the loops of the one seed
    assert "RuntimeError: no GPU in this job (bench/bench_supervision.py)" in completed.stderr
    assert "RuntimeError: no GPU in this job (bench/bench_label_efficiency.py)" in completed.stderr


def test_the_deadline_stops_the_runs_and_keeps_the_report(synth_dir, tmp_path):
    """Every job hangs (a stand-in interpreter that sleeps, but runs the script's config check and its report for
    real): at the deadline the script stops them all, process group by process group, and still writes the
    report."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\n[ "$1" = - ] && exec {sys.executable} "$@"\n'
                      f'case " $* " in *" --report-only "*) exec {sys.executable} "$@";; esac\nexec sleep 600\n')
    python.chmod(0o755)
    completed = _run(synth_dir, tmp_path / "runs", 1, python=python)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "deadline of 1 s reached" in completed.stdout
    assert "| supervision |" in (tmp_path / "runs" / "supervision.md").read_text()
    assert not _hanging_jobs(), "a job outlived the deadline"


def _hanging_jobs():
    """The processes still running the stand-in's ``sleep 600``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes() == b"sleep\x00600\x00":
                found.append(cmdline.parent.name)
        except OSError:  # the process ended while the folder was read
            pass
    return found
