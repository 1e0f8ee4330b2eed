"""Training metrics: ``metrics.jsonl`` (one JSON object per logged iteration) and TensorBoard.

Each line is a whole record written with a single ``write`` + fsync, so a reader never sees half
a line; a line the system refuses part-way (a full disk) is cut off again, and the error names the file and
the records it keeps. When a run resumes at iteration ``i``, lines after ``i`` (logged by the interrupted run
after its last checkpoint) are dropped first, so the file reads as one uninterrupted run.
TensorBoard event files are written as well when ``torch.utils.tensorboard`` can be imported (it
needs the optional ``tensorboard`` package).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from apis.utils.io import WriteFailed, atomic_write_text

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file, in order."""
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _json_value(value: Any) -> Any:
    # JSON has no NaN/inf; null keeps the line valid for every reader.
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLog:
    """Appends records to ``output_dir/metrics.jsonl`` and mirrors scalars to TensorBoard.

    Args:
        output_dir: the run's folder.
        resume_iteration: iterations already done; later records in an existing file are dropped.
        tensorboard: also write TensorBoard events (when importable).
    """

    def __init__(self, output_dir: str | Path, resume_iteration: int = 0, tensorboard: bool = True):
        self.path = Path(output_dir) / METRICS_FILE
        kept = []
        if self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("iteration", 0) <= resume_iteration]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.records = len(kept)  # in the file, whole
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: a failed write leaves nothing behind in a buffer to be written later, by close().
            self._handle = self.path.open("ab", buffering=0)
        except OSError as error:
            raise self._write_failed(error) from error
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                self._writer = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"),
                                             purge_step=resume_iteration + 1)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; it must hold an integer ``iteration``."""
        line = (json.dumps({key: _json_value(value) for key, value in record.items()}) + "\n").encode()
        size = os.fstat(self._handle.fileno()).st_size
        try:
            written = 0
            while written < len(line):  # a raw write may take part of the line
                written += self._handle.write(line[written:])
            os.fsync(self._handle.fileno())
        except OSError as error:
            os.ftruncate(self._handle.fileno(), size)  # frees what part of the line was written: never half a line
            raise self._write_failed(error) from error
        self.records += 1
        if self._writer is not None:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(key, value, record["iteration"])

    def _write_failed(self, error: OSError) -> WriteFailed:
        return WriteFailed(f"{self.path}: could not be written ({error.strerror or error}); the {self.records} "
                           "record(s) written before are kept")

    def close(self) -> None:
        self._handle.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
