"""The APIS loop: P0 -> M0 -> [acquire -> fine-tune -> evaluate] x S (docs/design.md, "The method"), in one
process or on every rank of a ``torchrun`` job (docs/scaling.md).

One class, :class:`ActiveLearningRun`, runs every kind of run; what it acquires at each step is its
*acquisition* (:mod:`apis.loop.acquisition`): points asked of an oracle or of people
(:mod:`apis.loop.asked_points`), points taken from another run (:mod:`apis.loop.transfer`) or full masks
bought by the AFIS baseline (:mod:`apis.loop.bought_masks`).

A run directory (:mod:`apis.loop.run_dir`) holds everything, so that killing the process at any moment
and running the same command again resumes where it stopped: what a step acquires is in the ledger before
its models train, and a step counts as done only once its ``metrics.json`` exists. What each step trains:
:mod:`apis.loop.schedule`; sharing P0 and M0 with another run: :mod:`apis.loop.initial_run`.

Under ``torchrun`` each rank trains (DDP, :mod:`apis.engine.trainer`), acquires on its shard of the training
images and predicts its shard of the validation images (:mod:`apis.engine.distributed`); rank 0 alone holds
the run dir's lock and writes the ledger, the step files, the metrics and the checkpoints, while the others
wait for it. Why a kill of any rank is safe: ``torchrun`` then stops every rank, and everything a resumed run
reads was written by rank 0 in the single-process order. The other ranks read the ledger through a read-only
connection, only after rank 0 has finished writing (every rank-0-only stage ends in a collective).
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

from apis.active.strategies import get_metric
from apis.config import ConfigError, ExperimentConfig
from apis.config_loading import absolute_paths, check_same_config, dump_config
from apis.data.coco import DatasetError, load_datasets
from apis.data.ledger import PointLedger
from apis.data.simulated_oracle import SimulatedOracle
from apis.engine.distributed import (
    DistributedContext,
    barrier,
    context_from_env,
    init_process_group,
    run_on_main,
    shutdown_process_group,
)
from apis.engine.inference import evaluate_checkpoint
from apis.engine.trainer import check_fits_dataset, check_inputs, train
from apis.loop.acquisition import Acquisition
from apis.loop.asked_points import AskedPoints
from apis.loop.bought_masks import BoughtMasks
from apis.loop.initial_run import check_initial_run, reuse_initial_run
from apis.loop.oracle import Oracle
from apis.loop.run_dir import RunDirectory, RunDirectoryError
from apis.loop.schedule import member_seeds
from apis.loop.transfer import TransferredPoints
from apis.utils.device import resolve_device
from apis.utils.io import remove_temporaries
from apis.utils.lock import FolderLock

logger = logging.getLogger(__name__)

__all__ = ["ActiveLearningRun", "run_active_loop"]

COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)
"""How long the other ranks wait for rank 0's work alone: at COCO scale, asking P0's 860k points and
evaluating 5k validation images take minutes, more than the default timeouts of NCCL."""


class ActiveLearningRun:
    """One resumable run in ``cfg.output_dir``. Call :meth:`run`, then :meth:`close`.

    What the run acquires follows from ``cfg`` (:meth:`_acquisition`). ``oracle``: who answers the points
    (default: :class:`~apis.data.simulated_oracle.SimulatedOracle` from the training GT masks); with
    ``oracle.kind=human`` people answer through the ledger's questions and ``oracle`` must be None. ``ctx``: this
    process's rank in a ``torchrun`` job whose process group is joined (default: one process).
    """

    def __init__(self, cfg: ExperimentConfig, oracle: Oracle | None = None, ctx: DistributedContext | None = None):
        cfg = absolute_paths(cfg)  # stored so: the run's config means the same files from any directory
        self.cfg, self.ctx = cfg, ctx or DistributedContext()
        try:
            self.metric = get_metric(cfg.selection.metric)  # unknown names fail before any work
        except ValueError as error:
            raise ConfigError(f"config key 'selection.metric': {error}") from None
        # Rank 0 first: it decodes the images not checked before (apis.data.image_files), once, and the others then
        # find them in the cache. All at once, each rank would decode every image: minutes per rank at COCO scale.
        datasets = run_on_main(lambda: load_datasets(cfg), self.ctx)
        self.train_set, self.val_set = datasets if self.ctx.is_main else load_datasets(cfg)
        # What training would refuse, refused now: a run dir written by a command that cannot run would refuse
        # the corrected command as "a different config".
        check_inputs(cfg, None, self.ctx.world_size)
        check_fits_dataset(cfg, self.train_set)
        resolve_device(cfg.device, self.ctx.local_rank if self.ctx.enabled else None)
        human = cfg.oracle.kind == "human"
        if human and oracle is not None:
            raise ConfigError("oracle.kind=human: people answer through `apis annotate`; do not pass an oracle")
        simulated = oracle is None and not human
        self.train_masks = self.train_set.masks("oracle") if simulated or self.metric.needs_gt else None
        self.val_set.masks("evaluation")  # refuses a validation set without masks, now
        self.acquisition = self._acquisition(oracle)
        self.num_instances = sum(len(im.instances) for im in self.train_set.images)
        if self.num_instances == 0:
            raise ConfigError(f"{cfg.data.train_json}: no non-crowd instance to annotate")
        self.seeds = member_seeds(cfg)
        self.dir = RunDirectory(cfg.output_dir, members=len(self.seeds))
        if cfg.loop.initial_run and not self.dir.is_done(0):  # P0 and M0 still to be copied from there
            check_initial_run(Path(cfg.loop.initial_run), cfg, len(self.seeds))
        # Rank 0 first (lock, config, ledger, instances); then the others open the ledger it made, read-only.
        run_on_main(self._open_run_dir, self.ctx)
        if not self.ctx.is_main:
            self.ledger = PointLedger(self.dir.ledger_path, read_only=True)

    def _acquisition(self, oracle: Oracle | None) -> Acquisition:
        """Points of another run with ``loop.points_from``, masks bought with ``afis.level``, else points answered
        by ``oracle`` (people with ``oracle.kind=human``; by default the simulated oracle)."""
        cfg = self.cfg
        if cfg.loop.points_from:
            return TransferredPoints(cfg)
        if cfg.afis.level != "none":
            return BoughtMasks()
        if cfg.oracle.kind == "human":
            return AskedPoints(None)
        return AskedPoints(oracle or SimulatedOracle(self.train_masks, cfg.oracle.point_cost_s, cfg.oracle.flip_prob,
                                                     cfg.oracle.unsure_rate, seed=cfg.seed))

    def _open_run_dir(self) -> None:
        """Lock the run dir, store (or compare) the config, open the ledger and register the instances."""
        cfg = self.cfg
        # One process per run dir, from before the config is compared until close() (docs/design.md,
        # "The run directory"): two runs would interleave their answers.
        self.lock = FolderLock(self.dir.root).acquire()
        try:
            check_same_config(self.dir.config_path, cfg)
            if self.dir.root.is_dir() and not os.access(self.dir.root, os.W_OK):
                self._open_read_only()
            else:
                for folder in (self.dir.root, *self.dir.root.glob("step_[0-9]*")):
                    remove_temporaries(folder)  # of a killed run; the trainers clean their own folders
                dump_config(cfg, self.dir.config_path)
                self.ledger = PointLedger(self.dir.ledger_path)
                self.acquisition.check_ledger(self)
                self._register_instances()
        except BaseException:
            self.lock.release()
            raise

    def _open_read_only(self) -> None:
        """A run dir that cannot be written: a finished run (an archive) reads its records, nothing more."""
        unfinished = [step for step in range(self.cfg.loop.steps + 1) if not self.dir.is_done(step)]
        if unfinished:
            raise RunDirectoryError(f"{self.dir.root}: cannot be written, but step(s) "
                                    f"{', '.join(map(str, unfinished))} are not finished; make it writable "
                                    "(chmod -R u+w) to go on")
        self.ledger = PointLedger(self.dir.ledger_path, read_only=True)
        self.acquisition.check_ledger(self)

    def _register_instances(self) -> None:
        """Register the training instances in the ledger, refusing a training set that lost instances or moved
        boxes since the run registered them: their answers would fit no instance, and the run could not train."""
        gone = sorted(self.ledger.instance_ids() - {inst.ann_id for inst in self.train_set.instances()})
        how = (f"restore {self.cfg.data.train_json} as it was when the run started (the ledger keeps what was "
               "asked), or start a new run in a new output_dir with the new file")
        if gone:
            shown = ", ".join(map(str, gone[:10])) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "")
            self.ledger.close()
            raise DatasetError(f"{self.cfg.data.train_json}: annotation(s) {shown} were in it when {self.dir.root} "
                               f"started, and are gone; {how}")
        try:
            self.ledger.register_instances(
                (inst.ann_id, im.image_id, inst.bbox_xyxy, im.width, im.height)
                for im in self.train_set.images for inst in im.instances)
        except ValueError as error:
            self.ledger.close()
            raise DatasetError(f"{self.cfg.data.train_json} changed since {self.dir.root} started ({error}); "
                               f"{how}") from None

    def close(self) -> None:
        """Close the ledger and (rank 0) release the run dir's lock."""
        self.ledger.close()
        if self.ctx.is_main:
            self.lock.release()

    @property
    def run_dir(self) -> Path:
        return self.dir.root

    @property
    def labels(self) -> dict:
        """How the run's metrics records name it: ``strategy`` and prediction ``sets``."""
        return self.acquisition.labels(self)

    # ---- steps -------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Run (or resume) every step; returns the per-step metrics."""
        for step in range(self.cfg.loop.steps + 1):
            if self.dir.is_done(step):
                continue
            logger.info("%s: step %d of %d", self.run_dir, step, self.cfg.loop.steps)
            if step == 0 and self.cfg.loop.initial_run:
                run_on_main(lambda: reuse_initial_run(Path(self.cfg.loop.initial_run), self.cfg, self.dir,
                                                      self.ledger, self.labels), self.ctx)
                continue
            self.acquisition.acquire(self, step)
            checkpoint = self._train(step)
            self._finish_step(step, checkpoint)
        return self.metrics()

    def metrics(self) -> list[dict]:
        """The records of the finished steps, in step order."""
        return self.dir.metrics(self.cfg.loop.steps)

    # ---- training and evaluation -------------------------------------------------------------
    def _train_config(self, step: int, seed: int) -> ExperimentConfig:
        """The config of the member with ``seed`` at ``step``."""
        return self.acquisition.train_config(self, step, seed)

    def _train(self, step: int) -> Path:
        """Train every member of the step (resuming each); returns the run's own model's final checkpoint."""
        supervision = self.acquisition.supervision(self, step)
        final = None
        for index, seed in enumerate(self.seeds):
            init = None if step == 0 else self.dir.final_checkpoint(step - 1, index)
            path = train(self._train_config(step, seed), points=supervision.points, init_weights=init,
                         output_dir=self.dir.member(step, index), mask_ids=supervision.mask_ids)
            final = final or path
        barrier(self.ctx)  # rank 0 writes the final checkpoints after the last collective of training
        return final

    def _finish_step(self, step: int, checkpoint: Path) -> None:
        """Evaluate the step's model and write its ``metrics.json`` (marking the step done)."""
        val_metrics = evaluate_checkpoint(checkpoint, self.cfg, dataset=self.val_set,
                                          results_path=self.dir.step(step) / "val_results.json", ctx=self.ctx)
        run_on_main(lambda: self._record_step(step, val_metrics), self.ctx)

    def _record_step(self, step: int, val_metrics: dict[str, float]) -> None:
        record = self._step_record(step, val_metrics)
        self.dir.finish_step(step, record, self.cfg.loop.steps)
        logger.info("step %d done: mask AP %s", step, record["mask_AP"])

    def _step_record(self, step: int, val_metrics: dict) -> dict:
        """The line of ``metrics.jsonl`` for a finished step."""
        return {
            "step": step,
            **self.labels,
            "seed": self.cfg.seed,
            "mask_AP": val_metrics.get("segm/AP"), "mask_AP50": val_metrics.get("segm/AP50"),
            "mask_AP75": val_metrics.get("segm/AP75"), "box_AP": val_metrics.get("bbox/AP"),
            "points_per_instance": self.ledger.answer_count(max_step=step) / self.num_instances,
            "annotation_seconds": self.ledger.total_cost_s(max_step=step)
            + self.num_instances * self.cfg.oracle.box_cost_s,
            **self.acquisition.record(self, step),
            "val": val_metrics,
        }


def run_active_loop(cfg: ExperimentConfig, oracle: Oracle | None = None) -> list[dict]:
    """Run or resume the run described by ``cfg`` in this process: on every rank under ``torchrun`` (the process
    group joined here), else alone. Returns the per-step metrics (on every rank)."""
    ctx = context_from_env()
    if not ctx.enabled:
        return _run(ActiveLearningRun(cfg, oracle))
    if oracle is not None:
        raise ConfigError("under torchrun the loop asks the simulated oracle or people (oracle.kind); "
                          "a Python oracle object cannot be shared by the ranks")
    created = init_process_group(ctx, resolve_device(cfg.device, ctx.local_rank), COLLECTIVE_TIMEOUT)
    try:
        return _run(ActiveLearningRun(cfg, ctx=ctx))
    finally:
        shutdown_process_group(created)


def _run(run: ActiveLearningRun) -> list[dict]:
    try:
        return run.run()
    finally:
        run.close()
