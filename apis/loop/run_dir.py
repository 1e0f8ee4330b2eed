"""Where each file of an active-learning run lives, and the small files a step writes (docs/design.md,
"The run directory")::

    run_dir/
      config.yaml              resolved config with its config_version (a resumed run must use the same one)
      ledger.sqlite            every answer ever given (apis.data.ledger)
      metrics.jsonl            one line per finished step, rewritten atomically
      step_000/train/          M0's trainer output (checkpoints; the trainer resumes itself)
      step_000/train_member1/  the same for each further member of a "models" ensemble
      step_000/metrics.json    written last: its presence means the step is complete
      step_001/selection.json  the points chosen by M0 (written before anyone is asked)
      step_001/train/ ...
"""

from __future__ import annotations

import json
from pathlib import Path

from apis.utils.errors import ApisError
from apis.utils.io import atomic_write_json, atomic_write_text


class RunDirectoryError(ApisError):
    """A run directory is in a state a command cannot go on from; the message says what to do."""


def step_dir(run_dir: str | Path, step: int) -> Path:
    """``run_dir/step_NNN``."""
    return Path(run_dir) / f"step_{step:03d}"


def member_dir(run_dir: str | Path, step: int, index: int) -> Path:
    """The trainer output of ensemble member ``index`` (0: the run's own model) at ``step``."""
    return step_dir(run_dir, step) / ("train" if index == 0 else f"train_member{index}")


class RunDirectory:
    """The files of one run in ``root`` whose steps train ``members`` models each."""

    def __init__(self, root: str | Path, members: int = 1):
        self.root = Path(root)
        self.members = members

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.sqlite"

    def step(self, step: int) -> Path:
        return step_dir(self.root, step)

    def member(self, step: int, index: int) -> Path:
        return member_dir(self.root, step, index)

    def final_checkpoint(self, step: int, index: int) -> str:
        """``model_final.pth`` of member ``index`` at ``step``.

        Raises:
            FileNotFoundError: the step has no such checkpoint (naming the file).
        """
        path = self.member(step, index) / "model_final.pth"
        if not path.exists():
            raise FileNotFoundError(f"{path}: step {step} has no final checkpoint; was the run dir edited?")
        return str(path)

    def final_checkpoints(self, step: int) -> list[str]:
        """The final checkpoint of every member at ``step``, the run's own model first."""
        return [self.final_checkpoint(step, index) for index in range(self.members)]

    # ---- selection.json ---------------------------------------------------------------------------------
    def selection_path(self, step: int) -> Path:
        return self.step(step) / "selection.json"

    def read_selection(self, step: int) -> dict | None:
        """The step's ``selection.json`` (``step``, ``metric``, ``seconds``, ``points``), or ``None``."""
        path = self.selection_path(step)
        return json.loads(path.read_text()) if path.exists() else None

    def write_selection(self, step: int, payload: dict) -> None:
        atomic_write_json(self.selection_path(step), payload)

    # ---- metrics.json and metrics.jsonl ---------------------------------------------------------------------
    def is_done(self, step: int) -> bool:
        """Whether the step finished (its ``metrics.json`` exists)."""
        return (self.step(step) / "metrics.json").exists()

    def done_steps(self) -> list[int]:
        """Every finished step found in the folder, in order (whatever ``loop.steps`` now says)."""
        return sorted(int(path.parent.name[len("step_"):]) for path in self.root.glob("step_[0-9]*/metrics.json"))

    def step_metrics(self, step: int) -> dict:
        return json.loads((self.step(step) / "metrics.json").read_text())

    def metrics(self, steps: int) -> list[dict]:
        """The records of the finished steps among ``0..steps``, in step order."""
        return [self.step_metrics(step) for step in range(steps + 1) if self.is_done(step)]

    def finish_step(self, step: int, record: dict, steps: int) -> None:
        """Write the step's ``metrics.json`` (which marks it done), then ``metrics.jsonl`` over ``0..steps``."""
        atomic_write_json(self.step(step) / "metrics.json", record, indent=2)
        lines = [json.dumps(m) for m in self.metrics(steps)]
        atomic_write_text(self.root / "metrics.jsonl", "\n".join(lines) + "\n")
