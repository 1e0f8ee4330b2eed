"""The APIS loop: P0 -> M0 -> [select -> ask -> record -> fine-tune -> evaluate] x S (docs/design.md,
"The method").

A run directory (:mod:`apis.active.run_dir`) holds everything, so that killing the process at any moment
and running the same command again resumes where it stopped. Why this order is safe: a step's selected
points are written before the oracle is asked, so a crash during asking re-asks the *same* points (never
new ones); the answers of a step are stored in one ledger transaction (all or none), and the ledger never
stores a point twice; a step counts as done only once its ``metrics.json`` exists.

The pieces: what each step trains (:mod:`apis.active.schedule`), sharing P0 and M0 with another run
(:mod:`apis.active.initial_run`), training on another run's points (:mod:`apis.active.transfer`), the
statistics of a selection (:mod:`apis.active.point_stats`), prediction sets and point selection
(:mod:`apis.active.prediction`).

With ``oracle.kind=human`` people answer instead of the simulated oracle: a step's points are stored as
questions in the ledger (:mod:`apis.active.questions`) and the run stops
(:class:`~apis.active.questions.AnswersPending`) until they are answered; run again, it merges the answers
and goes on (docs/annotate.md).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apis.active.initial_run import check_initial_run, reuse_initial_run
from apis.active.oracle import Oracle
from apis.active.point_stats import selection_statistics
from apis.active.questions import QuestionQueue
from apis.active.run_dir import RunDirectory, RunDirectoryError, step_dir
from apis.active.schedule import member_seeds, point_prior_weights, train_config
from apis.active.strategies import get_metric
from apis.active.transfer import check_points_source, copy_points
from apis.config import ConfigError, ExperimentConfig, absolute_paths, check_same_config, dump_config
from apis.data.coco import CocoDataset, DatasetError, load_coco
from apis.data.coords import box_pixel_range
from apis.data.ledger import Answer, LedgerError, PointLedger, utc_now
from apis.data.simulated_oracle import SimulatedOracle
from apis.engine.distributed import DistributedContext
from apis.utils.io import remove_temporaries
from apis.utils.lock import FolderLock

logger = logging.getLogger(__name__)

P0_CHOSEN_BY = "p0-random"

__all__ = ["ActiveLearningRun", "PointToAsk", "draw_initial_points", "load_datasets", "run_active_loop", "step_dir"]


@dataclass(frozen=True)
class PointToAsk:
    """A point to ask about: pixel ``(x, y)`` (integer indices) of instance ``ann_id``, and how it was chosen."""

    ann_id: int
    image_id: int
    x: int
    y: int
    chosen_by: str


def load_datasets(cfg: ExperimentConfig) -> tuple[CocoDataset, CocoDataset]:
    """Training and validation datasets, validated, cut to ``data.max_*_images``."""
    for key in ("train_json", "val_json"):
        if not getattr(cfg.data, key):
            raise ConfigError(f"config key 'data.{key}' is empty; the loop needs a COCO json there")
    train = load_coco(cfg.data.train_json, cfg.data.image_root or None,
                      used_images=cfg.data.max_train_images).subset(cfg.data.max_train_images)
    val_root = cfg.data.val_image_root or cfg.data.image_root or None
    val = load_coco(cfg.data.val_json, val_root, used_images=cfg.data.max_val_images).subset(cfg.data.max_val_images)
    return train, val


def draw_initial_points(dataset: CocoDataset, seed: int) -> list[PointToAsk]:
    """P0: one pixel per instance, uniform over its box's candidate pixels.

    Depends only on the seed and the dataset (not on the strategy), so every strategy of an
    experiment starts from the same P0 and hence the same M0.
    """
    rng = np.random.default_rng([seed, 0])
    points = []
    for image in dataset.images:
        for inst in image.instances:
            xs, ys, xe, ye = box_pixel_range(*inst.bbox_xyxy, image.width, image.height)
            points.append(PointToAsk(inst.ann_id, image.image_id, int(rng.integers(xs, xe)),
                                     int(rng.integers(ys, ye)), P0_CHOSEN_BY))
    return points


class ActiveLearningRun:
    """One resumable APIS run in ``cfg.output_dir``. Call :meth:`run`.

    ``oracle``: who answers (default: :class:`~apis.data.simulated_oracle.SimulatedOracle` from the training
    GT masks); with ``oracle.kind=human`` people answer through the ledger's questions and ``oracle`` must
    be None.

    Under ``torchrun`` every rank runs :class:`apis.active.distributed_loop.DistributedRun` instead.
    """

    ctx = DistributedContext()  # one process; DistributedRun sets its rank's

    def __init__(self, cfg: ExperimentConfig, oracle: Oracle | None = None):
        cfg = absolute_paths(cfg)  # stored so: the run's config means the same files from any directory
        self.cfg = cfg
        try:
            self.metric = get_metric(cfg.selection.metric)  # unknown names fail before any work
        except ValueError as error:
            raise ConfigError(f"config key 'selection.metric': {error}") from None
        if cfg.loop.points_from:
            check_points_source(cfg)
        self.train_set, self.val_set = self._load_datasets(cfg)
        # What training would refuse, refused now: a run dir written by a command that cannot run would refuse
        # the corrected command as "a different config".
        from apis.engine.trainer import check_fits_dataset, check_inputs
        from apis.utils.device import resolve_device

        check_inputs(cfg, None, self.ctx.world_size)
        check_fits_dataset(cfg, self.train_set)
        resolve_device(cfg.device, self.ctx.local_rank if self.ctx.enabled else None)
        self.human = cfg.oracle.kind == "human"
        if self.human and oracle is not None:
            raise ConfigError("oracle.kind=human: people answer through `apis annotate`; do not pass an oracle")
        simulated = oracle is None and not self.human
        self.train_masks = self.train_set.masks("oracle") if simulated or self.metric.needs_gt else None
        self.val_set.masks("evaluation")  # refuses a validation set without masks, now
        self.oracle = None if self.human else oracle or SimulatedOracle(
            self.train_masks, cfg.oracle.point_cost_s, cfg.oracle.flip_prob, cfg.oracle.unsure_rate,
            seed=cfg.seed)
        self.num_instances = sum(len(im.instances) for im in self.train_set.images)
        if self.num_instances == 0:
            raise ConfigError(f"{cfg.data.train_json}: no non-crowd instance to annotate")
        self.seeds = member_seeds(cfg)
        self.dir = RunDirectory(cfg.output_dir, members=len(self.seeds))
        if cfg.loop.initial_run and not self.dir.is_done(0):  # P0 and M0 still to be copied from there
            check_initial_run(Path(cfg.loop.initial_run), cfg, len(self.seeds))
        self._open_run_dir()

    def _load_datasets(self, cfg: ExperimentConfig) -> tuple[CocoDataset, CocoDataset]:
        return load_datasets(cfg)

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
                self._check_ledger_holds_finished_steps()
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
        self._check_ledger_holds_finished_steps()

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

    def _check_ledger_holds_finished_steps(self) -> None:
        """Refuse a ledger that lost the answers of steps the run finished (emptied, replaced, deleted): going
        on would train on fewer points than the run's records say."""
        asks = set(self.dir.done_steps()) - ({0} if self.cfg.loop.init == "boxinst" else set())  # no P0 to ask
        missing = sorted(asks - self.ledger.steps())
        if missing:
            self.ledger.close()
            raise LedgerError(
                f"{self.dir.ledger_path}: holds no answers for step(s) {', '.join(map(str, missing))}, which "
                f"{self.dir.root} finished (step_NNN/metrics.json): the ledger was emptied, replaced or deleted. "
                "Restore ledger.sqlite from a backup, or start again in a new output_dir")

    def close(self) -> None:
        """Close the ledger and release the run dir's lock."""
        self.ledger.close()
        self.lock.release()

    @property
    def run_dir(self) -> Path:
        return self.dir.root

    @property
    def labels(self) -> dict:
        """How the run's metrics records name its strategy: ``strategy`` and prediction ``sets``."""
        return {"strategy": self.metric.name, "sets": list(self.cfg.selection.sets)}

    # ---- steps -------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Run (or resume) every step; returns the per-step metrics."""
        for step in range(self.cfg.loop.steps + 1):
            if self.dir.is_done(step):
                continue
            logger.info("%s: step %d of %d", self.run_dir, step, self.cfg.loop.steps)
            if step == 0 and self.cfg.loop.initial_run:
                self._reuse_initial_run()
                continue
            self._ensure_points(step)
            checkpoint = self._train(step)
            self._finish_step(step, checkpoint)
        return self.metrics()

    def _reuse_initial_run(self) -> None:
        reuse_initial_run(Path(self.cfg.loop.initial_run), self.cfg, self.dir, self.ledger, self.labels)

    def metrics(self) -> list[dict]:
        """The records of the finished steps, in step order."""
        return self.dir.metrics(self.cfg.loop.steps)

    def _ensure_points(self, step: int) -> None:
        """Make sure the ledger holds step ``step``'s answers (none at step 0 of a BoxInst-initialised run)."""
        if step in self.ledger.steps() or (step == 0 and self.cfg.loop.init == "boxinst"):
            return
        if self.cfg.loop.points_from:
            copy_points(self.cfg.loop.points_from, step, self.ledger)
            return
        questions = draw_initial_points(self.train_set, self.cfg.seed) if step == 0 else self._select(step)
        if self.human:
            self._answers_from_people(step, questions)
        else:
            self._ask_and_record(step, questions)

    def _select(self, step: int) -> list[PointToAsk]:
        """Choose one point per instance with M(step-1), persisted before anyone is asked."""
        if self.dir.read_selection(step) is None:
            self.dir.write_selection(step, self._selection_payload(step))
        selection = self.dir.read_selection(step)
        return [PointToAsk(p["ann_id"], p["image_id"], p["x"], p["y"], selection["metric"])
                for p in selection["points"]]

    def _selection_payload(self, step: int) -> dict:
        """The content of the step's ``selection.json``: M(step-1) chooses (every rank its shard of the images)."""
        from apis.active.prediction import select_with_models

        start = time.perf_counter()
        selected = select_with_models(
            checkpoints=self.dir.final_checkpoints(step - 1), cfg=self.cfg, dataset=self.train_set,
            metric=self.metric, asked=self.ledger.asked(), seed=(self.cfg.seed, step),
            gt_masks=self.train_masks if self.metric.needs_gt else None, ctx=self.ctx,
        )
        return {"step": step, "metric": self.metric.name, "seconds": time.perf_counter() - start,
                "points": [dataclasses.asdict(p) | {"image_id": self.train_set.instance(p.ann_id).image_id}
                           for p in selected]}

    def _ask_and_record(self, step: int, questions: list[PointToAsk]) -> None:
        if isinstance(self.oracle, SimulatedOracle):  # looks every point up in one pass over the masks' codes
            labels = self.oracle.answer_many([q.ann_id for q in questions], [q.x for q in questions],
                                             [q.y for q in questions]).tolist()
        else:
            labels = [self.oracle.answer(q.ann_id, q.x, q.y) for q in questions]
        answered_at = utc_now()  # the moment the step's answers were given, one for the whole batch
        answers = [Answer(ann_id=q.ann_id, image_id=q.image_id, x=q.x, y=q.y, label=label, step=step,
                          chosen_by=q.chosen_by, annotator=self.oracle.name, cost_s=self.cfg.oracle.point_cost_s,
                          answered_at=answered_at)
                   for q, label in zip(questions, labels)]
        stored = self.ledger.record(answers)  # one transaction: all of this step or nothing
        logger.info("step %d: %d answers stored (%d asked)", step, stored, len(answers))

    def _answers_from_people(self, step: int, questions: list[PointToAsk]) -> None:
        """Store the step's questions (once) and merge their answers; AnswersPending while some are missing."""
        with QuestionQueue(self.ledger.path) as queue:
            posted = queue.post(step, questions)
            if posted:
                logger.info("step %d: %d questions stored for people to answer", step, posted)
            stored = queue.merge(step)
        logger.info("step %d: %d answers from people merged into the ledger", step, stored)

    def _selection_stats(self, step: int) -> dict:
        """Misclassified share and boundary distance of the step's new points (docs/design.md, "Reading a run")."""
        selection = self.dir.read_selection(step)
        if step == 0 or selection is None:
            return {}
        # Without GT masks (a person answering) there is no boundary: an empty mask gives NaN distances.
        mask_of = self.train_masks.mask if self.train_masks is not None else self._empty_mask
        return selection_statistics(selection, self.ledger.step_answers(step), mask_of)

    def _empty_mask(self, ann_id: int) -> np.ndarray:
        image = self.train_set.image(self.train_set.instance(ann_id).image_id)
        return np.zeros((image.height, image.width), dtype=bool)

    # ---- training and evaluation -------------------------------------------------------------
    def _train_config(self, step: int, seed: int) -> ExperimentConfig:
        """The config of the member with ``seed`` at ``step`` (:func:`apis.active.schedule.train_config`)."""
        weights = None
        if step > 0 and self.cfg.loop.point_prior_correction:
            weights = point_prior_weights(self.ledger.answers(max_step=step), step)
        return train_config(self.cfg, step, seed, weights)

    def _train(self, step: int) -> Path:
        """Train every member of the step (resuming each); returns the run's own model's final checkpoint."""
        from apis.engine.trainer import train

        points = self.ledger.points(max_step=step)
        final = None
        for index, seed in enumerate(self.seeds):
            init = None if step == 0 else self.dir.final_checkpoint(step - 1, index)
            path = train(self._train_config(step, seed), points=points, init_weights=init,
                         output_dir=self.dir.member(step, index))
            final = final or path
        return final

    def _finish_step(self, step: int, checkpoint: Path) -> None:
        from apis.engine.inference import evaluate_checkpoint

        val_metrics = evaluate_checkpoint(checkpoint, self.cfg, dataset=self.val_set,
                                          results_path=self.dir.step(step) / "val_results.json", ctx=self.ctx)
        self._record_step(step, val_metrics)

    def _record_step(self, step: int, val_metrics: dict[str, float]) -> None:
        """Write the step's ``metrics.json`` (marking it done) from its validation metrics."""
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
            **self._selection_stats(step),
            "val": val_metrics,
        }


def run_active_loop(cfg: ExperimentConfig, oracle: Oracle | None = None) -> list[dict]:
    """Run or resume the loop described by ``cfg`` (AFIS with ``afis.level`` set); returns the per-step metrics."""
    from apis.active.afis import AfisRun

    run = (AfisRun if cfg.afis.level != "none" else ActiveLearningRun)(cfg, oracle)
    try:
        return run.run()
    finally:
        run.close()
