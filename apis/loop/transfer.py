"""``loop.points_from``: train on the points another run's model chose, the paper's transfer test (Sec. 4.3;
docs/design.md, "The method").

The run takes, at every step, the answers the source run's ledger holds for that step (P0 included) instead
of selecting and asking: no question is asked, and each answer keeps its label, how it was chosen and its
annotation seconds, so the two runs spent the same time (:class:`TransferredPoints`). Only the model trained
on the points differs (another architecture, depth or seed), which is what the test measures.
"""

from __future__ import annotations

from pathlib import Path

from apis.config import ConfigError, ExperimentConfig
from apis.config_loading import load_run_config
from apis.data.ledger import PointLedger
from apis.data.questions import QuestionQueue
from apis.engine.distributed import run_on_main
from apis.loop.acquisition import LedgerPoints, RunState
from apis.loop.run_dir import RunDirectory


def check_points_source(cfg: ExperimentConfig) -> None:
    """Refuse ``loop.points_from`` before any work unless its ledger holds answers for every step ``0..loop.steps``
    with no question of those steps waiting for people, and it chose them with ``selection.metric``.

    Raises:
        ConfigError: naming the source run, the step and what is missing.
    """
    source = RunDirectory(cfg.loop.points_from)
    key = f"loop.points_from={source.root}"
    if source.root.resolve() == Path(cfg.output_dir).resolve():
        raise ConfigError(f"{key}: a run cannot take its points from itself")
    if not source.ledger_path.exists() or not source.config_path.exists():
        raise ConfigError(f"{key}: not a run directory (no ledger.sqlite or config.yaml there)")
    chosen_by = load_run_config(source.config_path).selection.metric
    if chosen_by != cfg.selection.metric:
        raise ConfigError(f"{key}: that run chose its points with {chosen_by!r}; set selection.metric={chosen_by} "
                          "so that this run's records name the strategy that chose them")
    with QuestionQueue(source.ledger_path, read_only=True) as queue:
        answered = queue.steps()
        for step in range(cfg.loop.steps + 1):
            waiting = queue.waiting(step)
            if waiting:
                raise ConfigError(f"{key}: {waiting} question(s) of step {step} are not answered there yet; "
                                  f"answer them (apis annotate) and run that run on before transferring its points")
            if step not in answered and queue.questions(step):
                raise ConfigError(f"{key}: step {step}'s questions are answered there but not merged yet; run "
                                  "`apis run` on that run (it merges them) before transferring its points")
            if step not in answered:
                have = ", ".join(map(str, sorted(answered))) or "none"
                raise ConfigError(f"{key}: its ledger has no answers for step {step} (steps answered: {have}); "
                                  f"run it further or set loop.steps={max(len(answered) - 1, 0)}")


def copy_points(source: str | Path, step: int, ledger: PointLedger) -> int:
    """Record in ``ledger`` the answers ``source``'s ledger holds for ``step`` (one transaction); returns how many.

    Raises:
        ConfigError: an answer fits no instance of this run (the two runs train on different data).
    """
    with PointLedger(RunDirectory(source).ledger_path, read_only=True) as other:
        answers = [a for a in other.answers(max_step=step) if a.step == step]
    try:
        return ledger.record(answers)
    except ValueError as error:
        raise ConfigError(f"loop.points_from={source}: its step-{step} points do not fit this run's training "
                          f"set ({error}); both runs must train on the same data") from None


class TransferredPoints(LedgerPoints):
    """The points ``loop.points_from``'s ledger holds, step by step; the source is checked when this is made."""

    def __init__(self, cfg: ExperimentConfig):
        check_points_source(cfg)
        self.source = cfg.loop.points_from

    def acquire(self, run: RunState, step: int) -> None:
        run_on_main(lambda: self._copy(run, step), run.ctx)  # rank 0 writes the ledger

    def _copy(self, run: RunState, step: int) -> None:
        if self.needs_points(run, step):
            copy_points(self.source, step, run.ledger)
