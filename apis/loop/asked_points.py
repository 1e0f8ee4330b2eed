"""Points asked at every step: P0 drawn at random, then one point per instance (or a global budget) chosen by
M(step-1) and answered by an oracle or, with ``oracle.kind=human``, by people (docs/design.md, "The method").

Why this order is safe: a step's selected points are written (``selection.json``) before anyone is asked, so a
crash during asking re-asks the *same* points, never new ones; the answers of a step are stored in one ledger
transaction (all or none), and the ledger never stores a point twice.

With people answering, a step's points are stored as questions in the ledger (:mod:`apis.data.questions`) and
the run stops (:class:`~apis.data.questions.AnswersPending`) until they are answered; run again, it merges the
answers and goes on (docs/annotate.md).

Under ``torchrun`` every rank selects on its shard of the images (a pure function of the checkpoints, the
ledger and the seed: each instance's random draw is keyed by its annotation id, so a selection cut short is
redone to the same points on any number of processes); rank 0 alone writes and asks.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from apis.active.point_stats import selection_statistics
from apis.active.prediction import select_with_models
from apis.data.coco import CocoDataset
from apis.data.coords import box_pixel_range
from apis.data.ledger import Answer, utc_now
from apis.data.questions import PointToAsk, QuestionQueue
from apis.data.simulated_oracle import SimulatedOracle
from apis.engine.distributed import broadcast_from_main, run_on_main
from apis.loop.acquisition import LedgerPoints, RunState
from apis.loop.oracle import Oracle

logger = logging.getLogger(__name__)

P0_CHOSEN_BY = "p0-random"


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


class AskedPoints(LedgerPoints):
    """Points chosen by the run's metric and answered by ``oracle``, or by people when ``oracle`` is None."""

    def __init__(self, oracle: Oracle | None):
        self.oracle = oracle

    def acquire(self, run: RunState, step: int) -> None:
        # Rank 0 decides (the others' reads could race its writes); a step > 0 without selection.json is
        # selected by every rank, written by rank 0; then rank 0 asks and records.
        must_select = broadcast_from_main(
            run.ctx.is_main and step > 0 and self.needs_points(run, step) and run.dir.read_selection(step) is None,
            run.ctx)
        if must_select:
            payload = self._selection_payload(run, step)
            run_on_main(lambda: run.dir.write_selection(step, payload), run.ctx)
        run_on_main(lambda: self._ask(run, step), run.ctx)

    def _ask(self, run: RunState, step: int) -> None:
        if not self.needs_points(run, step):
            return
        questions = draw_initial_points(run.train_set, run.cfg.seed) if step == 0 else self._selected(run, step)
        if self.oracle is None:
            self._answers_from_people(run, step, questions)
        else:
            self._ask_and_record(run, step, questions)

    @staticmethod
    def _selected(run: RunState, step: int) -> list[PointToAsk]:
        selection = run.dir.read_selection(step)
        return [PointToAsk(p["ann_id"], p["image_id"], p["x"], p["y"], selection["metric"])
                for p in selection["points"]]

    @staticmethod
    def _selection_payload(run: RunState, step: int) -> dict:
        """The content of the step's ``selection.json``: M(step-1) chooses (every rank its shard of the images)."""
        start = time.perf_counter()
        selected = select_with_models(
            checkpoints=run.dir.final_checkpoints(step - 1), cfg=run.cfg, dataset=run.train_set,
            metric=run.metric, asked=run.ledger.asked(), seed=(run.cfg.seed, step),
            gt_masks=run.train_masks if run.metric.needs_gt else None, ctx=run.ctx,
        )
        return {"step": step, "metric": run.metric.name, "seconds": time.perf_counter() - start,
                "points": [dataclasses.asdict(p) | {"image_id": run.train_set.instance(p.ann_id).image_id}
                           for p in selected]}

    def _ask_and_record(self, run: RunState, step: int, questions: list[PointToAsk]) -> None:
        if isinstance(self.oracle, SimulatedOracle):  # looks every point up in one pass over the masks' codes
            labels = self.oracle.answer_many([q.ann_id for q in questions], [q.x for q in questions],
                                             [q.y for q in questions]).tolist()
        else:
            labels = [self.oracle.answer(q.ann_id, q.x, q.y) for q in questions]
        answered_at = utc_now()  # the moment the step's answers were given, one for the whole batch
        answers = [Answer(ann_id=q.ann_id, image_id=q.image_id, x=q.x, y=q.y, label=label, step=step,
                          chosen_by=q.chosen_by, annotator=self.oracle.name, cost_s=run.cfg.oracle.point_cost_s,
                          answered_at=answered_at)
                   for q, label in zip(questions, labels)]
        stored = run.ledger.record(answers)  # one transaction: all of this step or nothing
        logger.info("step %d: %d answers stored (%d asked)", step, stored, len(answers))

    @staticmethod
    def _answers_from_people(run: RunState, step: int, questions: list[PointToAsk]) -> None:
        """Store the step's questions (once) and merge their answers; AnswersPending while some are missing."""
        with QuestionQueue(run.ledger.path) as queue:
            posted = queue.post(step, questions)
            if posted:
                logger.info("step %d: %d questions stored for people to answer", step, posted)
            stored = queue.merge(step)
        logger.info("step %d: %d answers from people merged into the ledger", step, stored)

    def record(self, run: RunState, step: int) -> dict:
        """Misclassified share and boundary distance of the step's new points (docs/design.md, "Reading a run")."""
        selection = run.dir.read_selection(step)
        if step == 0 or selection is None:
            return {}
        # Without GT masks (a person answering) there is no boundary: an empty mask gives NaN distances.
        masks = run.train_masks
        return selection_statistics(selection, run.ledger.step_answers(step),
                                    masks.mask if masks is not None else lambda ann_id: _empty_mask(run, ann_id))


def _empty_mask(run: RunState, ann_id: int) -> np.ndarray:
    image = run.train_set.image(run.train_set.instance(ann_id).image_id)
    return np.zeros((image.height, image.width), dtype=bool)
