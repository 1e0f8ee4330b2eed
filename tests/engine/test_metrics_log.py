import errno
import json
import math
import textwrap

import pytest

from apis.engine.metrics_log import MetricsLog, read_metrics
from apis.utils.io import WriteFailed


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


class FillsUp:
    """A metrics file handle on a disk that fills up while ``full`` is set: a write takes the first half of its
    bytes, then the next one fails with ENOSPC, as the system's ``write`` does."""

    def __init__(self, handle):
        self.handle, self.full, self.room = handle, False, None

    def write(self, data):
        if not self.full:
            return self.handle.write(data)
        if self.room is None:
            self.room = len(data) // 2
            return self.handle.write(data[:self.room])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_a_full_disk_names_the_file_and_cuts_off_the_half_written_line(tmp_path):
    """Simulated (a really full filesystem: the next test)."""
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(tmp_path, tensorboard=False) as log:
        log.write({"iteration": 1, "total_loss": 1.0})
    with MetricsLog(tmp_path, resume_iteration=1, tensorboard=False) as log:
        log._handle = disk = FillsUp(log._handle)
        log.write({"iteration": 2, "total_loss": 0.5})
        disk.full = True
        with pytest.raises(WriteFailed) as full:
            log.write({"iteration": 3, "total_loss": 0.25})
        assert str(full.value) == (f"{path}: could not be written (No space left on device); the 2 record(s) written "
                                   "before are kept")
        assert disk.room > 0 and [r["iteration"] for r in read_metrics(path)] == [1, 2]  # no half line
        disk.full = False  # space freed
        log.write({"iteration": 3, "total_loss": 0.25})
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2, 3]


FILL_ON_A_SMALL_FILESYSTEM = textwrap.dedent("""
    import json, sys
    from apis.engine.metrics_log import MetricsLog, read_metrics
    from apis.utils.io import WriteFailed

    log = MetricsLog(sys.argv[1], tensorboard=False)
    written = 0
    try:
        while True:
            log.write({"iteration": written + 1, "total_loss": 0.5, "note": "x" * 300})
            written += 1
    except WriteFailed as error:
        message = str(error)
    log.close()
    read = [record["iteration"] for record in read_metrics(f"{sys.argv[1]}/metrics.jsonl")]
    print(json.dumps({"written": written, "read": read, "message": message}))
""")


def test_a_really_full_filesystem_names_the_file_and_leaves_only_whole_lines(small_filesystem):
    out = json.loads(small_filesystem(FILL_ON_A_SMALL_FILESYSTEM, kib=64))
    assert out["written"] > 100 and out["read"] == list(range(1, out["written"] + 1))
    assert out["message"].endswith(f"/metrics.jsonl: could not be written (No space left on device); the "
                                   f"{out['written']} record(s) written before are kept")
