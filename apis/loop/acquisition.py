"""What a run acquires at each step, and what its models train on: the one part of a run that differs between
APIS (points answered by an oracle or people, :mod:`apis.loop.asked_points`), a transfer run (points another
run chose, :mod:`apis.loop.transfer`) and AFIS (full masks bought, :mod:`apis.loop.bought_masks`).

The run (:class:`apis.loop.run.ActiveLearningRun`) calls an acquisition on every rank of a ``torchrun`` job;
an acquisition writes only through :func:`apis.engine.distributed.run_on_main`, so that rank 0 alone writes the
run directory and the ledger while the others wait (with one process, ``run_on_main`` simply calls).
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Protocol

from apis.active.strategies import PointMetric
from apis.config import ExperimentConfig
from apis.data.coco import CocoDataset, GroundTruthMasks
from apis.data.ledger import LedgerError, PointLedger
from apis.data.points import InstancePoints
from apis.engine.distributed import DistributedContext
from apis.loop.run_dir import RunDirectory
from apis.loop.schedule import point_prior_weights, train_config


class RunState(Protocol):
    """What an acquisition reads of its run (the run itself provides it)."""

    cfg: ExperimentConfig
    dir: RunDirectory
    ledger: PointLedger  # read-only on every rank but 0
    train_set: CocoDataset
    train_masks: GroundTruthMasks | None  # the GT masks, when the oracle or the metric reads them
    metric: PointMetric
    ctx: DistributedContext
    num_instances: int


@dataclass(frozen=True)
class Supervision:
    """What the models of a step train on: ``points`` per annotation id, and ``mask_ids``, the annotations whose
    GT masks the full-mask loss may read (None: every mask ``loss.full`` asks for)."""

    points: dict[int, InstancePoints]
    mask_ids: Set[int] | None = None


class Acquisition(Protocol):
    """One way of acquiring labels, step after step."""

    def labels(self, run: RunState) -> dict:
        """How the run's metrics records name it: ``strategy`` and prediction ``sets``."""

    def check_ledger(self, run: RunState) -> None:
        """Refuse (LedgerError) a ledger that lost what a finished step acquired; it is closed first."""

    def acquire(self, run: RunState, step: int) -> None:
        """Make the ledger hold step ``step``'s labels (nothing when it does already), on every rank."""

    def supervision(self, run: RunState, step: int) -> Supervision:
        """What the models of ``step`` train on."""

    def train_config(self, run: RunState, step: int, seed: int) -> ExperimentConfig:
        """The config of the model trained at ``step`` with ``seed``: the schedule's
        (:func:`apis.loop.schedule.train_config`), with what this acquisition changes."""

    def record(self, run: RunState, step: int) -> dict:
        """Fields of a finished step's metrics record that only this acquisition has."""



class LedgerPoints:
    """What the acquisitions of points share: the ledger's answers up to a step are trained on, with the point-loss
    class weights of :func:`~apis.loop.schedule.point_prior_weights` when ``loop.point_prior_correction`` is set."""

    def labels(self, run: RunState) -> dict:
        return {"strategy": run.metric.name, "sets": list(run.cfg.selection.sets)}

    def check_ledger(self, run: RunState) -> None:
        """Refuse a ledger that lost the answers of steps the run finished (emptied, replaced, deleted): going
        on would train on fewer points than the run's records say."""
        asks = set(run.dir.done_steps()) - ({0} if run.cfg.loop.init == "boxinst" else set())  # no P0 to ask
        missing = sorted(asks - run.ledger.steps())
        if missing:
            run.ledger.close()
            raise LedgerError(
                f"{run.dir.ledger_path}: holds no answers for step(s) {', '.join(map(str, missing))}, which "
                f"{run.dir.root} finished (step_NNN/metrics.json): the ledger was emptied, replaced or deleted. "
                "Restore ledger.sqlite from a backup, or start again in a new output_dir")

    def needs_points(self, run: RunState, step: int) -> bool:
        """Whether the ledger still lacks step ``step``'s answers (a BoxInst-initialised run asks none at step 0)."""
        return step not in run.ledger.steps() and not (step == 0 and run.cfg.loop.init == "boxinst")

    def supervision(self, run: RunState, step: int) -> Supervision:
        return Supervision(run.ledger.points(max_step=step))

    def train_config(self, run: RunState, step: int, seed: int) -> ExperimentConfig:
        weights = None
        if step > 0 and run.cfg.loop.point_prior_correction:
            weights = point_prior_weights(run.ledger.answers(max_step=step), step)
        return train_config(run.cfg, step, seed, weights)

    def record(self, run: RunState, step: int) -> dict:
        return {}
