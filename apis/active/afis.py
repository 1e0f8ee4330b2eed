"""AFIS, active fully-supervised instance segmentation: the paper's baseline (docs/design.md, "AFIS").

The seconds APIS spends on points are spent on full masks instead. By the end of step s APIS has bought
``(s + 1) * Q`` points (Q training instances, one point each per step), ``(s + 1) * Q * oracle.point_cost_s``
seconds; AFIS buys masks at ``oracle.mask_cost_s`` each with the same cumulative seconds
(:func:`cumulative_budget_s`). Step 0 buys a random initial set (the budget of P0), every later step scores
what is not bought yet with M(s-1) and buys the best first (:func:`buy`); what a step cannot spend carries
over to the next. ``afis.level``:

* ``instance``: one mask at a time;
* ``image``: every instance of an image at once (its cost grows with its instance count).

``afis.scorer`` (higher is bought first):

* ``random``: a uniform random number;
* ``mean-entropy``: the mean over the GT box's candidate pixels of the entropy of the anchors' mean prediction
  (:func:`mean_box_entropy`); an image: the mean over its instances;
* ``min-det-loss``: minus the mean GIoU loss of the instance's anchor boxes against its GT box
  (:func:`detection_loss`), so the best-detected instances (images) are bought first, as in the paper.

Masks not bought still train the detector: their instances have boxes and classes, but no mask loss
(:func:`apis.engine.trainer.train` with ``mask_ids``). The masks bought are kept in the run's ledger (with
step and cost) after ``step_NNN/masks.json`` names them, so a killed run resumes with the same purchase.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import generalized_box_iou_loss

from apis.active.loop import ActiveLearningRun
from apis.active.schedule import train_config
from apis.active.strategies import binary_entropy
from apis.config import ExperimentConfig
from apis.data.coco import CocoDataset
from apis.data.ledger import BoughtMask, LedgerError
from apis.structures import PredictionSet
from apis.utils.io import atomic_write_json, read_json

NO_PREDICTION_ENTROPY = math.log(2)
"""Mean entropy of an instance the model assigns nothing to: as unsure as a pixel can be."""
NO_PREDICTION_LOSS = 2.0
"""Detection loss of an instance the model assigns nothing to: the GIoU loss's largest value."""


def cumulative_budget_s(num_instances: int, point_cost_s: float, step: int) -> float:
    """Seconds APIS has spent on points by the end of ``step``: ``(step + 1) * num_instances * point_cost_s``."""
    return (step + 1) * num_instances * point_cost_s


def buy(ranked: Sequence[tuple[Hashable, int]], budget_s: float, mask_cost_s: float) -> list[Hashable]:
    """The items bought, best first, from ``ranked`` ``(item, masks it holds)`` within ``budget_s`` seconds.

    Items are taken in order while the next one's ``masks * mask_cost_s`` still fits; the first that does not
    fit ends the purchase (its seconds carry over to the next step, which may then afford it).
    """
    bought, spent = [], 0.0
    for item, masks in ranked:
        cost = masks * mask_cost_s
        if spent + cost > budget_s + 1e-9:  # 1e-9: seconds summed in floats
            break
        bought.append(item)
        spent += cost
    return bought


def mean_box_entropy(pred: PredictionSet) -> float:
    """Mean over the instance's candidate pixels of ``H(p̄)`` (nats), ``p̄`` the members' mean prediction."""
    if pred.k == 0:
        return NO_PREDICTION_ENTROPY
    return float(binary_entropy(pred.probs.to(torch.float64).mean(dim=0)).mean())


def detection_loss(pred: PredictionSet, gt_box: Sequence[float]) -> float:
    """Mean GIoU loss (in [0, 2]) of the members' boxes ``pred.boxes [K, 4]`` against ``gt_box`` (xyxy, the
    original image frame)."""
    if len(pred.boxes) == 0:
        return NO_PREDICTION_LOSS
    boxes = pred.boxes.to(torch.float64)
    gt = torch.tensor([list(gt_box)], dtype=torch.float64).expand_as(boxes)
    return float(generalized_box_iou_loss(boxes, gt, reduction="mean"))


def instance_score(scorer: str, pred: PredictionSet, gt_box: Sequence[float]) -> float:
    """How much an instance's mask is wanted by ``scorer`` ("mean-entropy" or "min-det-loss"); higher first."""
    if scorer == "mean-entropy":
        return mean_box_entropy(pred)
    if scorer == "min-det-loss":
        return -detection_loss(pred, gt_box)
    raise ValueError(f"AFIS scorer {scorer!r} does not score predictions")


def rank(scores: Mapping[Hashable, float], rng: np.random.Generator) -> list[Hashable]:
    """The keys of ``scores``, highest first; ties in a seeded random order (one permutation)."""
    keys = list(scores)
    shuffled = [keys[i] for i in rng.permutation(len(keys))]
    return sorted(shuffled, key=lambda key: -scores[key])  # sorted() is stable: ties keep the shuffle


class AfisRun(ActiveLearningRun):
    """One resumable AFIS run in ``cfg.output_dir`` (``afis.level`` set); the loop, run directory, ledger and
    metrics of :class:`~apis.active.loop.ActiveLearningRun`, with masks bought instead of points asked."""

    @property
    def labels(self) -> dict:
        return {"strategy": f"AFIS {self.cfg.afis.level} {self.cfg.afis.scorer}", "sets": []}

    def _masks_path(self, step: int) -> Path:
        return self.dir.step(step) / "masks.json"

    def _check_ledger_holds_finished_steps(self) -> None:
        """Refuse a ledger that lost masks a finished step bought (see the base class)."""
        held = {mask.ann_id for mask in self.ledger.masks()}
        for step in self.dir.done_steps():
            lost = {entry["ann_id"] for entry in read_json(self._masks_path(step), LedgerError)["bought"]} - held
            if lost:
                self.ledger.close()
                raise LedgerError(f"{self.dir.ledger_path}: lost the masks step {step} bought (annotation(s) "
                                  f"{', '.join(map(str, sorted(lost)[:10]))}); restore ledger.sqlite from a "
                                  "backup, or start again in a new output_dir")

    def _ensure_points(self, step: int) -> None:
        """Buy the step's masks: chosen once (``masks.json``), then stored in the ledger (idempotent)."""
        if not self._masks_path(step).exists():
            atomic_write_json(self._masks_path(step), self._choose(step))
        bought = read_json(self._masks_path(step), LedgerError)["bought"]
        chosen_by = f"afis-{'random' if step == 0 else self.cfg.afis.scorer}"
        self.ledger.record_masks([BoughtMask(entry["ann_id"], entry["image_id"], step, chosen_by, "simulated-oracle",
                                             self.cfg.oracle.mask_cost_s) for entry in bought])

    def _choose(self, step: int) -> dict:
        """The step's purchase: what is not bought yet, scored (random at step 0), bought best first."""
        start = time.perf_counter()
        cfg = self.cfg
        have = {mask.ann_id for mask in self.ledger.masks()}
        budget = cumulative_budget_s(self.num_instances, cfg.oracle.point_cost_s, step) - sum(
            mask.cost_s for mask in self.ledger.masks())
        rng = np.random.default_rng([cfg.seed, step])
        scorer = "random" if step == 0 else cfg.afis.scorer
        scores = self._scores(step, scorer, have, rng)
        if cfg.afis.level == "instance":
            order = rank(scores, rng)
            chosen = buy([(ann_id, 1) for ann_id in order], budget, cfg.oracle.mask_cost_s)
            bought = [(self.train_set.instance(a).image_id, a, scores[a]) for a in chosen]
        else:
            images = _image_scores(self.train_set, scores)
            if scorer == "random":  # uniform over images, not the mean of their instances' draws
                images = {image_id: float(value) for image_id, value in zip(images, rng.random(len(images)))}
            order = rank(images, rng)
            sizes = {im.image_id: len(im.instances) for im in self.train_set.images}
            chosen = buy([(image_id, sizes[image_id]) for image_id in order], budget, cfg.oracle.mask_cost_s)
            bought = [(image_id, inst.ann_id, images[image_id]) for image_id in chosen
                      for inst in self.train_set.image(image_id).instances]
        return {"step": step, "level": cfg.afis.level, "scorer": scorer, "budget_s": budget,
                "seconds": time.perf_counter() - start,
                "bought": [{"ann_id": a, "image_id": i, "score": score} for i, a, score in bought]}

    def _scores(self, step: int, scorer: str, have: set[int], rng: np.random.Generator) -> dict[int, float]:
        """Per instance without a mask: its score by ``scorer``, from M(step-1)'s prediction sets."""
        wanted = [inst for inst in self.train_set.instances() if inst.ann_id not in have]
        if scorer == "random":
            return {inst.ann_id: float(value) for inst, value in zip(wanted, rng.random(len(wanted)))}
        from apis.active.prediction import iter_prediction_sets
        from apis.engine.inference import load_model
        from apis.utils.device import resolve_device

        device = resolve_device(self.cfg.device)
        models = [load_model(path, self.cfg, device) for path in self.dir.final_checkpoints(step - 1)]
        scores = {}
        for sets in iter_prediction_sets(models, self.cfg, self.train_set, device):
            for ann_id, pred in sets.items():
                if ann_id not in have:
                    scores[ann_id] = instance_score(scorer, pred, self.train_set.instance(ann_id).bbox_xyxy)
        return scores

    def _train_config(self, step: int, seed: int) -> ExperimentConfig:
        """The loop's schedule with the point loss off: AFIS has masks and boxes, no points."""
        cfg = train_config(self.cfg, step, seed)
        return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, points=0.0))

    def _train(self, step: int) -> Path:
        from apis.engine.trainer import train

        mask_ids = {mask.ann_id for mask in self.ledger.masks(max_step=step)}
        final = None
        for index, seed in enumerate(self.seeds):
            init = None if step == 0 else self.dir.final_checkpoint(step - 1, index)
            path = train(self._train_config(step, seed), points={}, init_weights=init,
                         output_dir=self.dir.member(step, index), mask_ids=mask_ids)
            final = final or path
        return final

    def _step_record(self, step: int, val_metrics: dict) -> dict:
        masks = self.ledger.masks(max_step=step)
        return super()._step_record(step, val_metrics) | {
            "masks": len(masks), "masks_per_instance": len(masks) / self.num_instances,
            "budget_seconds": cumulative_budget_s(self.num_instances, self.cfg.oracle.point_cost_s, step),
        }


def _image_scores(dataset: CocoDataset, scores: Mapping[int, float]) -> dict[int, float]:
    """Per image whose instances all lack a mask: the mean of their scores (image-level AFIS buys whole
    images, so an image is either bought or untouched)."""
    return {image.image_id: float(np.mean([scores[inst.ann_id] for inst in image.instances]))
            for image in dataset.images
            if image.instances and all(inst.ann_id in scores for inst in image.instances)}
