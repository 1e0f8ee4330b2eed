"""Runs written by an older APIS resume: run directories made by the code before the loop was split from the
method (tests/fixtures/run_dirs: P0's answers, or AFIS's initial purchase, stored; killed before M0 trained)."""

import json
import shutil
from pathlib import Path

import pytest

from apis.config_loading import load_config
from apis.data.ledger import PointLedger
from apis.loop.run import run_active_loop
from apis.loop.run_dir import step_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "run_dirs"


def _old_run(name: str, synth_dir: Path, tmp_path: Path) -> Path:
    """The fixture run ``name`` copied to ``tmp_path``, its config pointing at this session's synthetic data."""
    run_dir = tmp_path / name
    shutil.copytree(FIXTURES / name, run_dir)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("@DATA@", str(synth_dir)).replace("@RUN@", str(run_dir)))
    return run_dir


def _stored(run_dir: Path) -> tuple[list, list]:
    with PointLedger(run_dir / "ledger.sqlite", read_only=True) as ledger:
        return ([(a.ann_id, a.x, a.y, a.label, a.step, a.chosen_by, a.answered_at) for a in ledger.answers()],
                [(m.ann_id, m.step) for m in ledger.masks()])


@pytest.mark.parametrize("name", ["points_run", "afis_run"])
def test_a_run_made_before_resumes_with_what_it_had_acquired(name, synth_dir, tmp_path):
    run_dir = _old_run(name, synth_dir, tmp_path)
    before = _stored(run_dir)
    purchase = (step_dir(run_dir, 0) / "masks.json").read_text() if name == "afis_run" else None
    (record,) = run_active_loop(load_config(run_dir / "config.yaml"))  # the stored config, as `apis run` is given
    assert _stored(run_dir) == before  # P0 (or the purchase) kept, not asked again
    assert record["step"] == 0 and record["mask_AP"] is not None
    if name == "afis_run":
        assert (step_dir(run_dir, 0) / "masks.json").read_text() == purchase
        assert record["strategy"] == "AFIS instance random" and record["masks"] == len(before[1])
    else:
        assert before[0] and record["points_per_instance"] == 1.0
    assert json.loads((step_dir(run_dir, 0) / "metrics.json").read_text())["val"] == record["val"]
