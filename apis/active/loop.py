"""The APIS loop (SPEC §1): P0 -> M0 -> [select -> ask -> record -> fine-tune -> evaluate] x S.

A run directory holds everything, so that killing the process at any moment and running the same
command again resumes where it stopped::

    run_dir/
      config.yaml            resolved config (a resumed run must use the same one)
      ledger.sqlite          every answer ever given (apis.data.ledger)
      metrics.jsonl          one line per finished step, rewritten atomically
      step_000/train/        M0's trainer output (checkpoints; the trainer resumes itself)
      step_000/metrics.json  written last: its presence means the step is complete
      step_001/selection.json  the points chosen by M0 (written before anyone is asked)
      step_001/train/ ...

Why this order is safe: a step's selected points are written before the oracle is asked, so a
crash during asking re-asks the *same* points (never new ones); the answers of a step are stored
in one ledger transaction (all or none), and the ledger never stores a point twice; a step counts
as done only once its ``metrics.json`` exists.

With ``oracle.kind=human`` people answer instead of the simulated oracle: a step's points are stored as
questions in the ledger and the run stops (:class:`apis.active.questions.AnswersPending`) until they are
answered; run again, it merges the answers and goes on (docs/annotate.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from apis.active.oracle import Oracle, SimulatedOracle
from apis.active.point_stats import summarise_selection
from apis.active.questions import QuestionQueue
from apis.active.selection import SelectedPoint
from apis.active.strategies import get_metric
from apis.config import ConfigError, ExperimentConfig, dump_config, to_dict
from apis.data.coco import CocoDataset, load_coco
from apis.data.coords import box_pixel_range
from apis.data.ledger import Answer, PointLedger
from apis.utils.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

P0_CHOSEN_BY = "p0-random"
SELECTED_POINT_FIELDS = [f.name for f in dataclasses.fields(SelectedPoint)]
NULLABLE_FLOATS = {"prob_mean", "score", "uncertainty"}
# Keys that may change between a run and its resumption (more steps; where the run lives).
RESUMABLE_CHANGES = {("loop", "steps"), ("output_dir",), ("data", "num_workers"), ("device",)}
# Config keys added after runs were written, with the value that was in effect before they existed.
KEYS_ADDED_LATER = {("model", "dynamic_init"): "zeros", ("model", "dynamic_activation"): "relu",
                    ("loss", "point_positive_weight"): 1.0, ("loss", "point_negative_weight"): 1.0,
                    ("loop", "point_prior_correction"): False, ("oracle", "kind"): "simulated"}


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"step_{step:03d}"


def load_datasets(cfg: ExperimentConfig) -> tuple[CocoDataset, CocoDataset]:
    """Training and validation datasets, validated, cut to ``data.max_*_images``."""
    for key in ("train_json", "val_json"):
        if not getattr(cfg.data, key):
            raise ConfigError(f"config key 'data.{key}' is empty; the loop needs a COCO json there")
    train = load_coco(cfg.data.train_json, cfg.data.image_root or None).subset(cfg.data.max_train_images)
    val_root = cfg.data.val_image_root or cfg.data.image_root or None
    val = load_coco(cfg.data.val_json, val_root).subset(cfg.data.max_val_images)
    return train, val


def draw_initial_points(dataset: CocoDataset, seed: int) -> list[tuple[int, int, int, int]]:
    """P0: one pixel per instance, uniform over its box's candidate pixels; ``(ann_id, image_id, x, y)``.

    Depends only on the seed and the dataset (not on the strategy), so every strategy of an
    experiment starts from the same P0 and hence the same M0.
    """
    rng = np.random.default_rng([seed, 0])
    points = []
    for image in dataset.images:
        for inst in image.instances:
            xs, ys, xe, ye = box_pixel_range(*inst.bbox_xyxy, image.width, image.height)
            points.append((inst.ann_id, image.image_id, int(rng.integers(xs, xe)), int(rng.integers(ys, ye))))
    return points


def _flatten(tree: dict, prefix: tuple = ()) -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def read_stored_config(path: Path) -> dict:
    """A run's ``config.yaml``, flattened, with the keys it predates at their value of that time."""
    return {**KEYS_ADDED_LATER, **_flatten(yaml.safe_load(path.read_text()))}


def _flat_config(cfg: ExperimentConfig) -> dict:
    """``cfg`` flattened as it reads back from ``config.yaml`` (so it compares with a stored one)."""
    return _flatten(yaml.safe_load(yaml.safe_dump(to_dict(cfg))))


def _check_same_config(stored_path: Path, cfg: ExperimentConfig) -> None:
    stored = read_stored_config(stored_path)
    current = _flat_config(cfg)
    changed = sorted(".".join(k) for k in stored.keys() | current.keys()
                     if k not in RESUMABLE_CHANGES and stored.get(k) != current.get(k))
    if changed:
        raise ConfigError(f"{stored_path} was written by a run with a different config ({', '.join(changed)}); "
                          f"resume with the same config or choose another output_dir")


class ActiveLearningRun:
    """One resumable APIS run in ``cfg.output_dir``. Call :meth:`run`.

    ``oracle``: who answers (default: :class:`SimulatedOracle` from the training GT masks); with
    ``oracle.kind=human`` people answer through the ledger's questions and ``oracle`` must be None.
    """

    def __init__(self, cfg: ExperimentConfig, oracle: Oracle | None = None):
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        self.metric = get_metric(cfg.selection.metric)  # unknown names fail before any work
        self.train_set, self.val_set = load_datasets(cfg)
        self.human = cfg.oracle.kind == "human"
        if self.human and oracle is not None:
            raise ConfigError("oracle.kind=human: people answer through `apis annotate`; do not pass an oracle")
        simulated = oracle is None and not self.human
        self.train_masks = self.train_set.masks("oracle") if simulated or self.metric.needs_gt else None
        self.val_set.masks("evaluation")  # refuses a validation set without masks, now
        self.oracle = None if self.human else oracle or SimulatedOracle(
            self.train_masks.mask, cfg.oracle.point_cost_s, cfg.oracle.flip_prob, cfg.oracle.unsure_rate,
            seed=cfg.seed)
        self.num_instances = sum(len(im.instances) for im in self.train_set.images)
        if self.num_instances == 0:
            raise ConfigError(f"{cfg.data.train_json}: no non-crowd instance to annotate")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.run_dir / "config.yaml"
        if config_path.exists():
            _check_same_config(config_path, cfg)
        dump_config(cfg, config_path)
        self.ledger = PointLedger(self.run_dir / "ledger.sqlite")
        self.ledger.register_instances(
            (inst.ann_id, im.image_id, inst.bbox_xyxy, im.width, im.height)
            for im in self.train_set.images for inst in im.instances
        )

    # ---- steps -------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Run (or resume) every step; returns the per-step metrics."""
        for step in range(self.cfg.loop.steps + 1):
            if (step_dir(self.run_dir, step) / "metrics.json").exists():
                continue
            logger.info("%s: step %d of %d", self.run_dir, step, self.cfg.loop.steps)
            if step == 0 and self.cfg.loop.initial_run:
                self._reuse_initial_run(Path(self.cfg.loop.initial_run))
                continue
            selection_info = self._ensure_points(step)
            checkpoint = self._train(step)
            self._finish_step(step, checkpoint, selection_info)
        return self.metrics()

    def metrics(self) -> list[dict]:
        out = []
        for step in range(self.cfg.loop.steps + 1):
            path = step_dir(self.run_dir, step) / "metrics.json"
            if path.exists():
                out.append(json.loads(path.read_text()))
        return out

    def _answered_steps(self) -> set[int]:
        return {a.step for a in self.ledger.answers()}

    def _ensure_points(self, step: int) -> dict:
        """Make sure the ledger holds step ``step``'s answers; returns selection statistics."""
        if step in self._answered_steps():
            return self._selection_stats(step)
        if step == 0:
            chosen = [(ann, img, x, y, P0_CHOSEN_BY) for ann, img, x, y in draw_initial_points(self.train_set,
                                                                                               self.cfg.seed)]
        else:
            chosen = self._select(step)
        if self.human:
            self._answers_from_people(step, chosen)
        else:
            self._ask_and_record(step, chosen)
        return self._selection_stats(step)

    def _select(self, step: int) -> list[tuple[int, int, int, int, str]]:
        """Choose one point per instance with M(step-1), persisted before anyone is asked."""
        path = step_dir(self.run_dir, step) / "selection.json"
        if not path.exists():
            from apis.active.prediction import select_with_models

            start = time.perf_counter()
            selected = select_with_models(
                checkpoints=self._selection_checkpoints(step - 1), cfg=self.cfg, dataset=self.train_set,
                metric=self.metric, asked=self.ledger.asked(), rng=np.random.default_rng([self.cfg.seed, step]),
                gt_masks=self.train_masks if self.metric.needs_gt else None,
            )
            payload = {
                "step": step, "metric": self.metric.name, "seconds": time.perf_counter() - start,
                "points": [dataclasses.asdict(p) | {"image_id": self.train_set.instance(p.ann_id).image_id}
                           for p in selected],
            }
            atomic_write_json(path, payload)
        payload = json.loads(path.read_text())
        return [(p["ann_id"], p["image_id"], p["x"], p["y"], payload["metric"]) for p in payload["points"]]

    def _ask_and_record(self, step: int, chosen: list[tuple[int, int, int, int, str]]) -> None:
        answers = []
        for ann_id, image_id, x, y, chosen_by in chosen:
            label = self.oracle.answer(ann_id, x, y)
            answers.append(Answer(ann_id=ann_id, image_id=image_id, x=x, y=y, label=label, step=step,
                                  chosen_by=chosen_by, annotator=self.oracle.name,
                                  cost_s=self.cfg.oracle.point_cost_s))
        stored = self.ledger.record(answers)  # one transaction: all of this step or nothing
        logger.info("step %d: %d answers stored (%d asked)", step, stored, len(answers))

    def _answers_from_people(self, step: int, chosen: list[tuple[int, int, int, int, str]]) -> None:
        """Store the step's questions (once) and merge their answers; AnswersPending while some are missing."""
        with QuestionQueue(self.ledger.path) as queue:
            posted = queue.post(step, chosen)
            if posted:
                logger.info("step %d: %d questions stored for people to answer", step, posted)
            stored = queue.merge(step)
        logger.info("step %d: %d answers from people merged into the ledger", step, stored)

    def _selection_stats(self, step: int) -> dict:
        """Misclassified share and boundary distance of the step's new points (SPEC §5)."""
        path = step_dir(self.run_dir, step) / "selection.json"
        if step == 0 or not path.exists():
            return {}
        payload = json.loads(path.read_text())
        labels = {(a.ann_id, a.x, a.y): a.label for a in self.ledger.answers() if a.step == step}
        answered = [p for p in payload["points"] if (p["ann_id"], p["x"], p["y"]) in labels]
        # selection.json stores NaN as null (strict JSON): turn the float fields' nulls back into NaN.
        points = [SelectedPoint(**{k: math.nan if p[k] is None and k in NULLABLE_FLOATS else p[k]
                                   for k in SELECTED_POINT_FIELDS})
                  for p in answered]
        # Without GT masks (a person answering) there is no boundary: an empty mask gives NaN distances.
        mask_of = self.train_masks.mask if self.train_masks is not None else self._empty_mask
        summary = summarise_selection(points, [labels[(p.ann_id, p.x, p.y)] for p in points], mask_of)
        return {
            "selection_seconds": payload["seconds"],
            "misclassified_share": summary.misclassified_share,
            "boundary_distance_px": summary.mean_boundary_distance,
            "empty_prediction_sets": sum(1 for p in payload["points"] if p["k"] == 0),
        }

    def _empty_mask(self, ann_id: int) -> np.ndarray:
        image = self.train_set.image(self.train_set.instance(ann_id).image_id)
        return np.zeros((image.height, image.width), dtype=bool)

    # ---- training and evaluation -------------------------------------------------------------
    def _train_config(self, step: int, seed: int) -> ExperimentConfig:
        """M0 uses ``solver`` as written; fine-tuning uses the ``loop.finetune_*`` schedule."""
        cfg = self.cfg
        if step == 0:
            loss = dataclasses.replace(cfg.loss, points=cfg.loop.points_loss_m0)
            return dataclasses.replace(cfg, seed=seed, loss=loss)
        solver = dataclasses.replace(cfg.solver, max_iter=cfg.loop.finetune_iters, base_lr=cfg.loop.finetune_lr,
                                     steps=list(cfg.loop.finetune_steps),
                                     warmup_iters=min(cfg.solver.warmup_iters, cfg.loop.finetune_iters // 10))
        loss = dataclasses.replace(cfg.loss, points=cfg.loop.points_loss_finetune)
        if cfg.loop.point_prior_correction:
            loss = dataclasses.replace(loss, **self._prior_correction(step))
        return dataclasses.replace(cfg, seed=seed, solver=solver, loss=loss)

    def _prior_correction(self, step: int) -> dict[str, float]:
        """Point-loss class weights that give the points known at ``step`` the object share of P0's points.

        An uncertainty strategy does not sample a box's pixels at random: on DSB2018, entropy's P1 points
        are about 27 % object against 74 % for random points. A head fitted to them unweighted learns the
        selection's base rate instead of the box's and draws masks that are too small. With ``pi`` the
        object share of P0's uniformly drawn points and ``p`` that of every point trained on, weighting
        objects by ``pi / p`` and background by ``(1 - pi) / (1 - p)`` restores the base rate (the
        prior-shift correction of Saerens et al., 2002) and leaves the mean weight at 1.
        """
        answers = [a for a in self.ledger.answers(max_step=step) if a.label >= 0]

        def object_share(labels: list[int]) -> float:
            return sum(labels) / len(labels) if labels else math.nan

        pi = object_share([a.label for a in answers if a.step == 0])
        p = object_share([a.label for a in answers])
        if not (0 < pi < 1 and 0 < p < 1):  # one class only: no ratio to correct
            logger.warning("step %d: no point-prior correction (object share %.3f at P0, %.3f now)", step, pi, p)
            return {}
        weights = {"point_positive_weight": pi / p, "point_negative_weight": (1 - pi) / (1 - p)}
        logger.info("step %d: point-loss weights object %.3f, background %.3f (object share %.3f at P0, %.3f now)",
                    step, weights["point_positive_weight"], weights["point_negative_weight"], pi, p)
        return weights

    def _member_seeds(self) -> list[int]:
        """Seeds of the models trained at every step: the run's own, plus the ensemble's for "models"."""
        extra = self.cfg.selection.ensemble_seeds if "models" in self.cfg.selection.sets else []
        return [self.cfg.seed, *[s for s in extra if s != self.cfg.seed]]

    def _member_dir(self, step: int, index: int) -> Path:
        return step_dir(self.run_dir, step) / ("train" if index == 0 else f"train_member{index}")

    def _train(self, step: int) -> Path:
        from apis.engine.trainer import train

        points = self.ledger.points(max_step=step)
        final = None
        for index, seed in enumerate(self._member_seeds()):
            init = None if step == 0 else self._final_checkpoint(step - 1, index)
            path = train(self._train_config(step, seed), points=points, init_weights=init,
                         output_dir=self._member_dir(step, index))
            final = final or path
        return final

    def _final_checkpoint(self, step: int, index: int) -> str:
        path = self._member_dir(step, index) / "model_final.pth"
        if not path.exists():
            raise FileNotFoundError(f"{path}: step {step} has no final checkpoint; was the run dir edited?")
        return str(path)

    def _selection_checkpoints(self, step: int) -> list[str]:
        return [self._final_checkpoint(step, i) for i in range(len(self._member_seeds()))]

    def _finish_step(self, step: int, checkpoint: Path, selection_info: dict) -> None:
        from apis.engine.inference import evaluate_checkpoint

        val_metrics = evaluate_checkpoint(checkpoint, self.cfg, dataset=self.val_set,
                                          results_path=step_dir(self.run_dir, step) / "val_results.json")
        answers = self.ledger.answers(max_step=step)
        record = {
            "step": step,
            "strategy": self.metric.name,
            "sets": list(self.cfg.selection.sets),
            "seed": self.cfg.seed,
            "mask_AP": val_metrics.get("segm/AP"), "mask_AP50": val_metrics.get("segm/AP50"),
            "mask_AP75": val_metrics.get("segm/AP75"), "box_AP": val_metrics.get("bbox/AP"),
            "points_per_instance": len(answers) / self.num_instances,
            "annotation_seconds": self.ledger.total_cost_s(max_step=step)
            + self.num_instances * self.cfg.oracle.box_cost_s,
            **selection_info,
            "val": val_metrics,
        }
        atomic_write_json(step_dir(self.run_dir, step) / "metrics.json", record, indent=2)
        self._write_metrics_jsonl()
        logger.info("step %d done: mask AP %s", step, record["mask_AP"])

    def _write_metrics_jsonl(self) -> None:
        lines = [json.dumps(m) for m in self.metrics()]
        atomic_write_text(self.run_dir / "metrics.jsonl", "\n".join(lines) + "\n")

    def _reuse_initial_run(self, source: Path) -> None:
        """Share P0 and M0 with ``source`` (same seed, data and M0 schedule), as SPEC §1 requires."""
        source_cfg = source / "config.yaml"
        if not (step_dir(source, 0) / "metrics.json").exists() or not source_cfg.exists():
            raise ConfigError(f"loop.initial_run={source}: that run has not finished step 0")
        stored = read_stored_config(source_cfg)
        current = _flat_config(self.cfg)
        must_match = [k for k in current if k[0] in ("seed", "data", "model", "solver")
                      or k in {("loss", "points"), ("loss", "full"), ("loss", "box"), ("loop", "points_loss_m0")}]
        changed = [".".join(k) for k in must_match if k not in RESUMABLE_CHANGES and stored.get(k) != current.get(k)]
        if changed:
            raise ConfigError(f"loop.initial_run={source}: its M0 was trained differently ({', '.join(changed)})")
        with PointLedger(source / "ledger.sqlite") as other:
            self.ledger.record(other.answers(max_step=0))
        target = step_dir(self.run_dir, 0)
        for index in range(len(self._member_seeds())):
            name = self._member_dir(0, index).name
            src, dst = step_dir(source, 0) / name, target / name
            if not src.exists():
                raise ConfigError(f"loop.initial_run={source}: it has no trained model {src}")
            if not dst.exists():
                shutil.copytree(src, dst)
        record = json.loads((step_dir(source, 0) / "metrics.json").read_text())
        record["strategy"] = self.metric.name
        atomic_write_json(target / "metrics.json", record, indent=2)
        self._write_metrics_jsonl()


def run_active_loop(cfg: ExperimentConfig, oracle: Oracle | None = None) -> list[dict]:
    """Run or resume the loop described by ``cfg``; returns the per-step metrics."""
    run = ActiveLearningRun(cfg, oracle)
    try:
        return run.run()
    finally:
        run.ledger.close()

