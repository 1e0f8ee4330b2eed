"""Soak: a tiny `apis run` killed with SIGKILL at random moments, resumed each time by the same command, ends
exactly as a run that was never interrupted (docs/reliability.md): the same answers, the same weights at every
step, every training iteration logged once (a resumed training goes on from its checkpoint, not from the start)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from apis.config_loading import load_config
from apis.data.ledger import PointLedger
from apis.engine.checkpoint import load_checkpoint
from apis.engine.metrics_log import read_metrics
from apis.loop.run import run_active_loop
from apis.loop.run_dir import step_dir

KILLS = int(os.environ.get("APIS_SOAK_KILLS", "4"))  # at most 8: the moments below


def _answers(run_dir):
    with PointLedger(run_dir / "ledger.sqlite", read_only=True) as ledger:
        return [(a.ann_id, a.x, a.y, a.label, a.step, a.chosen_by) for a in ledger.answers()]


@pytest.mark.soak
def test_a_run_killed_at_random_moments_ends_as_one_never_interrupted(synth_dir, tiny_overrides, tmp_path):
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process

    def overrides(run_dir):
        return tiny_overrides(synth_dir, run_dir, "solver.max_iter=6", "solver.checkpoint_period=2", "loop.steps=1")

    def command(run_dir):
        return [sys.executable, "-m", "apis.cli", "run", str(config), *overrides(run_dir)]

    run_active_loop(load_config(config, overrides(tmp_path / "reference")))  # here, also on one thread

    run_dir = tmp_path / "killed"
    # Moments are files the run writes, in the order it writes them (time would depend on the machine's load),
    # each followed by a random pause: while answers are stored, a checkpoint is written, a step finishes...
    m0, m1 = step_dir(run_dir, 0), step_dir(run_dir, 1)
    moments = [run_dir / "ledger.sqlite", m0 / "train" / "config.yaml", m0 / "train" / "model_0000002.pth",
               m0 / "train" / "model_0000004.pth", m0 / "train" / "model_final.pth", m0 / "metrics.json",
               m1 / "selection.json", m1 / "train" / "config.yaml"]
    rng = np.random.default_rng(13)
    chosen = sorted(rng.choice(len(moments), size=min(KILLS, len(moments)), replace=False))
    killed = 0
    for index in chosen:
        proc = subprocess.Popen(command(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.time() + 300
        while proc.poll() is None and not moments[index].exists() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        _, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
    print(f"soak: killed {killed} times")  # shown with pytest -s
    assert killed >= 1
    done = subprocess.run(command(run_dir), capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    answers, expected = _answers(run_dir), _answers(tmp_path / "reference")
    assert len(answers) == len(set(a[:3] for a in answers))  # no pixel asked twice
    assert sorted(answers) == sorted(expected)  # none lost, none different
    for step in (0, 1):
        resumed = load_checkpoint(step_dir(run_dir, step) / "train" / "model_final.pth")["model"]
        original = load_checkpoint(step_dir(tmp_path / "reference", step) / "train" / "model_final.pth")["model"]
        assert all(torch.equal(resumed[key], original[key]) for key in original), f"step {step} weights differ"
    m0_log = read_metrics(step_dir(run_dir, 0) / "train" / "metrics.jsonl")
    assert [r["iteration"] for r in m0_log] == list(range(1, 7))
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert not list(run_dir.rglob(".*.tmp"))
