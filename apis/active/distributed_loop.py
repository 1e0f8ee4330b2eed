"""The APIS loop on N processes under ``torchrun`` (docs/scaling.md).

``torchrun --nproc_per_node N -m apis.cli run CONFIG`` runs :func:`run_loop` on every rank. Each rank
trains (DDP, :mod:`apis.engine.trainer`), selects on its shard of the training images and predicts its
shard of the validation images (:mod:`apis.engine.distributed`); rank 0 alone holds the run dir's lock and
writes the ledger, ``selection.json``, the metrics and the checkpoints, while the others wait for it.

Why a kill of any rank is safe: ``torchrun`` then stops every rank, and everything a resumed run reads was
written by rank 0 in the single-process order (selection before asking, a step's answers in one
transaction, ``metrics.json`` last). Selection is a pure function of the checkpoints, the ledger and the
seed (each instance's random draw is keyed by its annotation id), so a selection cut short is redone to
the same points, on any number of processes.

The other ranks read the ledger through a read-only connection, only after rank 0 has finished writing
(every rank-0-only stage ends in a collective), so they see what rank 0 committed.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

from apis.active.loop import ActiveLearningRun, load_datasets
from apis.active.oracle import Oracle
from apis.config import ConfigError, ExperimentConfig
from apis.data.coco import CocoDataset
from apis.data.ledger import PointLedger
from apis.engine.distributed import (
    DistributedContext,
    barrier,
    broadcast_from_main,
    context_from_env,
    init_process_group,
    run_on_main,
    shutdown_process_group,
)
from apis.utils.device import resolve_device

logger = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)
"""How long the other ranks wait for rank 0's work alone: at COCO scale, asking P0's 860k points and
evaluating 5k validation images take minutes, more than the default timeouts of NCCL."""


class DistributedRun(ActiveLearningRun):
    """:class:`~apis.active.loop.ActiveLearningRun` on one rank of a ``torchrun`` job (process group joined)."""

    def __init__(self, cfg: ExperimentConfig, ctx: DistributedContext, oracle: Oracle | None = None):
        self.ctx = ctx
        super().__init__(cfg, oracle)

    def _load_datasets(self, cfg: ExperimentConfig) -> tuple[CocoDataset, CocoDataset]:
        # Rank 0 first: it decodes the images not checked before (apis.data.image_files), once, and the others then
        # find them in the cache. All at once, each rank would decode every image: minutes per rank at COCO scale.
        datasets = run_on_main(lambda: load_datasets(cfg), self.ctx)
        return datasets if self.ctx.is_main else load_datasets(cfg)

    def _open_run_dir(self) -> None:
        # Rank 0 first (lock, config, ledger, instances); then the others open the ledger it made, read-only.
        run_on_main(super()._open_run_dir, self.ctx)
        if not self.ctx.is_main:
            self.ledger = PointLedger(self.dir.ledger_path, read_only=True)

    def close(self) -> None:
        if self.ctx.is_main:
            super().close()
        else:
            self.ledger.close()

    def _reuse_initial_run(self) -> None:
        run_on_main(super()._reuse_initial_run, self.ctx)

    def _ensure_points(self, step: int) -> None:
        # Rank 0 decides (the others' reads could race its writes); a step > 0 without selection.json is
        # selected by every rank, written by rank 0; then rank 0 asks and records as one process does.
        must_select = broadcast_from_main(
            self.ctx.is_main and step > 0 and step not in self.ledger.steps()
            and self.dir.read_selection(step) is None, self.ctx)
        if must_select:
            payload = self._selection_payload(step)
            run_on_main(lambda: self.dir.write_selection(step, payload), self.ctx)
        run_on_main(lambda: super(DistributedRun, self)._ensure_points(step), self.ctx)

    def _train(self, step: int) -> Path:
        checkpoint = super()._train(step)
        barrier(self.ctx)  # rank 0 writes the final checkpoints after the last collective of training
        return checkpoint

    def _record_step(self, step: int, val_metrics: dict[str, float]) -> None:
        run_on_main(lambda: super(DistributedRun, self)._record_step(step, val_metrics), self.ctx)


def run_loop(cfg: ExperimentConfig, oracle: Oracle | None = None) -> list[dict]:
    """Run or resume the loop of ``cfg`` in this process: on every rank under ``torchrun``, else alone.

    Returns the per-step metrics (on every rank).
    """
    from apis.active.loop import run_active_loop

    ctx = context_from_env()
    if not ctx.enabled:
        return run_active_loop(cfg, oracle)
    if oracle is not None:
        raise ConfigError("under torchrun the loop asks the simulated oracle or people (oracle.kind); "
                          "a Python oracle object cannot be shared by the ranks")
    if cfg.afis.level != "none":
        raise ConfigError(f"afis.level={cfg.afis.level}: the AFIS baseline runs in one process "
                          "(apis run without torchrun)")
    created = init_process_group(ctx, resolve_device(cfg.device, ctx.local_rank), COLLECTIVE_TIMEOUT)
    try:
        run = DistributedRun(cfg, ctx)
        try:
            return run.run()
        finally:
            run.close()
    finally:
        shutdown_process_group(created)
