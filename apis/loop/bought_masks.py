"""AFIS's acquisition: full masks bought with the seconds APIS spends on points (:mod:`apis.active.afis` has
the budget, the scorers and the purchase rule; docs/design.md, "AFIS").

Each step's purchase is chosen once and written to ``step_NNN/masks.json`` before the ledger stores it, so a
killed run resumes with the same purchase. Masks not bought still train the detector: their instances have
boxes and classes, but no mask loss (:func:`apis.engine.trainer.train` with ``mask_ids``); AFIS has no points,
so the point loss is off.

Under ``torchrun`` every rank scores its shard of the images with M(step-1); rank 0 gathers the scores in the
dataset's order, buys and writes, so the purchase is the one a single process makes.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from apis.active.afis import buy, cumulative_budget_s, image_scores, instance_score, rank
from apis.active.prediction import iter_prediction_sets
from apis.config import ExperimentConfig
from apis.data.ledger import BoughtMask, LedgerError
from apis.engine.distributed import all_gather_objects, broadcast_from_main, in_dataset_order, run_on_main, shard_images
from apis.engine.inference import load_model
from apis.loop.acquisition import RunState, Supervision
from apis.loop.schedule import train_config
from apis.utils.device import resolve_device
from apis.utils.io import atomic_write_json, read_json

# Per image, the (annotation id, score) of its instances without a mask, in the order the prediction sets give.
ImageScores = tuple[int, list[tuple[int, float]]]


class BoughtMasks:
    """Masks bought at ``afis.level`` (instance or image), best first by ``afis.scorer`` (random at step 0)."""

    def labels(self, run: RunState) -> dict:
        return {"strategy": f"AFIS {run.cfg.afis.level} {run.cfg.afis.scorer}", "sets": []}

    @staticmethod
    def _masks_path(run: RunState, step: int) -> Path:
        return run.dir.step(step) / "masks.json"

    def check_ledger(self, run: RunState) -> None:
        """Refuse a ledger that lost masks a finished step bought."""
        held = {mask.ann_id for mask in run.ledger.masks()}
        for step in run.dir.done_steps():
            lost = {entry["ann_id"] for entry in read_json(self._masks_path(run, step), LedgerError)["bought"]} - held
            if lost:
                run.ledger.close()
                raise LedgerError(f"{run.dir.ledger_path}: lost the masks step {step} bought (annotation(s) "
                                  f"{', '.join(map(str, sorted(lost)[:10]))}); restore ledger.sqlite from a "
                                  "backup, or start again in a new output_dir")

    def acquire(self, run: RunState, step: int) -> None:
        """Buy the step's masks: chosen once (``masks.json``), then stored in the ledger (idempotent)."""
        must_choose = broadcast_from_main(run.ctx.is_main and not self._masks_path(run, step).exists(), run.ctx)
        if must_choose:
            scored = self._model_scores(run, step) if step > 0 and run.cfg.afis.scorer != "random" else None
            run_on_main(lambda: atomic_write_json(self._masks_path(run, step), self._choose(run, step, scored)),
                        run.ctx)
        run_on_main(lambda: self._record_purchase(run, step), run.ctx)

    def _record_purchase(self, run: RunState, step: int) -> None:
        bought = read_json(self._masks_path(run, step), LedgerError)["bought"]
        chosen_by = f"afis-{'random' if step == 0 else run.cfg.afis.scorer}"
        run.ledger.record_masks([BoughtMask(entry["ann_id"], entry["image_id"], step, chosen_by, "simulated-oracle",
                                            run.cfg.oracle.mask_cost_s) for entry in bought])

    def _choose(self, run: RunState, step: int, scored: list[ImageScores] | None) -> dict:
        """The step's purchase: what is not bought yet, scored (``scored``, or random draws), bought best first."""
        start = time.perf_counter()
        cfg, train_set = run.cfg, run.train_set
        have = {mask.ann_id for mask in run.ledger.masks()}
        budget = cumulative_budget_s(run.num_instances, cfg.oracle.point_cost_s, step) - sum(
            mask.cost_s for mask in run.ledger.masks())
        rng = np.random.default_rng([cfg.seed, step])
        scorer = "random" if step == 0 else cfg.afis.scorer
        if scored is None:
            wanted = [inst for inst in train_set.instances() if inst.ann_id not in have]
            scores = {inst.ann_id: float(value) for inst, value in zip(wanted, rng.random(len(wanted)))}
        else:
            scores = {ann_id: score for _, image in scored for ann_id, score in image if ann_id not in have}
        if cfg.afis.level == "instance":
            order = rank(scores, rng)
            chosen = buy([(ann_id, 1) for ann_id in order], budget, cfg.oracle.mask_cost_s)
            bought = [(train_set.instance(a).image_id, a, scores[a]) for a in chosen]
        else:
            images = image_scores(train_set, scores)
            if scorer == "random":  # uniform over images, not the mean of their instances' draws
                images = {image_id: float(value) for image_id, value in zip(images, rng.random(len(images)))}
            order = rank(images, rng)
            sizes = {im.image_id: len(im.instances) for im in train_set.images}
            chosen = buy([(image_id, sizes[image_id]) for image_id in order], budget, cfg.oracle.mask_cost_s)
            bought = [(image_id, inst.ann_id, images[image_id]) for image_id in chosen
                      for inst in train_set.image(image_id).instances]
        return {"step": step, "level": cfg.afis.level, "scorer": scorer, "budget_s": budget,
                "seconds": time.perf_counter() - start,
                "bought": [{"ann_id": a, "image_id": i, "score": score} for i, a, score in bought]}

    @staticmethod
    def _model_scores(run: RunState, step: int) -> list[ImageScores]:
        """Per image in dataset order, its instances' scores by ``afis.scorer`` from M(step-1)'s prediction sets
        (every rank its shard of the images)."""
        cfg, ctx, dataset = run.cfg, run.ctx, run.train_set
        device = resolve_device(cfg.device, ctx.local_rank if ctx.enabled else None)
        models = [load_model(path, cfg, device) for path in run.dir.final_checkpoints(step - 1)]
        image_ids = [im.image_id for im in dataset.images]
        shard = dataset.only_images(shard_images(image_ids, ctx)) if ctx.enabled else dataset
        scored = []
        for sets in iter_prediction_sets(models, cfg, shard, device, ctx.is_main):
            instances = [dataset.instance(ann_id) for ann_id in sets]
            if instances:
                scored.append((instances[0].image_id, [
                    (inst.ann_id, instance_score(cfg.afis.scorer, sets[inst.ann_id], inst.bbox_xyxy))
                    for inst in instances]))
        if ctx.enabled:
            scored = in_dataset_order(all_gather_objects(scored, ctx), image_ids, lambda entry: entry[0])
        return scored

    def supervision(self, run: RunState, step: int) -> Supervision:
        return Supervision(points={}, mask_ids={mask.ann_id for mask in run.ledger.masks(max_step=step)})

    def train_config(self, run: RunState, step: int, seed: int) -> ExperimentConfig:
        cfg = train_config(run.cfg, step, seed)
        return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, points=0.0))

    def record(self, run: RunState, step: int) -> dict:
        masks = run.ledger.masks(max_step=step)
        return {"masks": len(masks), "masks_per_instance": len(masks) / run.num_instances,
                "budget_seconds": cumulative_budget_s(run.num_instances, run.cfg.oracle.point_cost_s, step)}
