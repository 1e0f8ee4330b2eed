import json
import math

from apis.engine.metrics_log import MetricsLog, read_metrics


def test_records_append_and_resume_drops_later_lines(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        for iteration in (10, 20, 30):
            log.write({"iteration": iteration, "total_loss": 1.0 / iteration, "point_acc": math.nan})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [10, 20, 30]
    assert records[0]["point_acc"] is None  # NaN is not JSON: written as null
    # Resuming from the checkpoint at 20 forgets what the interrupted run logged after it.
    with MetricsLog(tmp_path, resume_iteration=20, tensorboard=False) as log:
        log.write({"iteration": 30, "total_loss": 0.5})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [10, 20, 30]
    assert json.loads(lines[-1])["total_loss"] == 0.5
