"""What a team takes home from a run: one mask for every training instance (``apis export-masks``).

For a step ``S`` of a run, every non-crowd training instance gets a mask:

* **drawn**: the instance's mask was drawn by a person (AFIS bought it, or the run trained on full masks): the
  annotation's ``segmentation`` is copied as given, byte for byte;
* **predicted**: the mask M(S) gives *for the instance's given box*: the mean mask probability of the
  locations that training assigns to the box (the ``anchors`` prediction set that selection also uses; Mask
  R-CNN: its positive proposals), on the box's candidate pixels, at the test size; thresholded at
  ``model.mask_threshold`` and corrected so that it contradicts none of the instance's answered points
  (:mod:`apis.active.point_constraint`). With ``model.refinement.method`` on, the mean probability is first
  sharpened along the image's colour edges (:mod:`apis.modeling.refinement`). Nothing lies outside the box;
* **box**: the model assigned no location to the box (a box too small or too odd for it): the filled box,
  corrected by the answered points in the same way.

Each annotation carries what a reviewer needs to decide where to look first: ``apis_source``, ``apis_points``
(answered yes / no points of the instance up to step S), ``apis_points_contradicted`` (how many of them the
model's own mask got wrong before the correction) and ``apis_quality``, the model's mean confidence over the
box, ``mean |2p - 1|`` (1: every pixel decided; drawn masks: 1). Sort by ``apis_quality`` to review the worst
first. ``bench/bench_label_quality.py`` measures how good these masks are against ground truth.

The file is a COCO instance file: the run's training images, categories and annotations (ids, boxes and
classes as given), each non-crowd annotation with its mask as compressed RLE; crowd regions as given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from apis.active.point_constraint import Constraint, constrain_mask, contradicted
from apis.active.prediction import iter_prediction_sets
from apis.config import ConfigError, ExperimentConfig
from apis.config_loading import load_run_config
from apis.data.coco import CocoDataset, load_coco
from apis.data.coords import box_pixel_range
from apis.data.ledger import PointLedger
from apis.data.points import InstancePoints
from apis.engine.inference import ground_truth_of, load_model
from apis.evaluation.results import encode_mask
from apis.loop.run_dir import RunDirectory, RunDirectoryError
from apis.modeling.refinement import grid_colours, refine_probabilities
from apis.utils.device import resolve_device
from apis.utils.io import atomic_write_json

SOURCES = ("predicted", "drawn", "box")


@dataclass(frozen=True)
class InstanceProbabilities:
    """A model's mask probabilities for one instance's given box.

    ``origin``: ``(xs, ys)``, the image pixel of ``probs[0, 0]``; ``probs``: ``float[h, w]`` on the box's
    candidate grid (:func:`apis.data.coords.box_pixel_range`), or ``None`` when no location was assigned.
    """

    ann_id: int
    origin: tuple[int, int]
    probs: np.ndarray | None


@dataclass(frozen=True)
class ExportedMask:
    """The exported mask of one instance: ``mask`` ``bool[h, w]`` on the grid at ``origin`` (None for a drawn
    one, kept as given), where it came from, and the review fields of the module docstring."""

    ann_id: int
    source: str
    origin: tuple[int, int]
    mask: np.ndarray | None
    points: int
    contradicted: int
    quality: float


def instance_probabilities(model: torch.nn.Module, cfg: ExperimentConfig, dataset: CocoDataset,
                           device: torch.device, progress: bool = True) -> Iterator[InstanceProbabilities]:
    """Per non-crowd instance of ``dataset`` (image by image), the model's probabilities on its given box.

    One view at the test size (``data.min_size_test``) whatever the run's selection used; the members of the
    instance's prediction set are averaged, then refined on the stored image by the model's ``refinement``.
    """
    one_view = dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, sets=["anchors"]))
    for sets in iter_prediction_sets([model], one_view, dataset, device, progress, desc="masks"):
        image = None
        for ann_id in sorted(sets):
            pred = sets[ann_id]
            if not pred.k:
                yield InstanceProbabilities(ann_id, pred.origin, None)
                continue
            probs = pred.probs.mean(dim=0)
            if model.refinement is not None:
                if image is None:
                    image = dataset.load_image(dataset.instance(ann_id).image_id)
                probs = refine_probabilities(model.refinement, probs, grid_colours(image, pred.origin,
                                                                                   tuple(probs.shape)))
            yield InstanceProbabilities(ann_id, pred.origin, probs.numpy().astype(np.float64))


def export_instance(found: InstanceProbabilities, dataset: CocoDataset, points: InstancePoints | None,
                    constraint: Constraint = "local", threshold: float = 0.5) -> ExportedMask:
    """The exported mask of one predicted instance (see the module docstring).

    ``points``: the instance's answered points in image pixels (unsure ones left out), or None.
    """
    if found.probs is None:
        # No location for this box: a box fill, i.e. a map barely above the threshold everywhere, that the
        # answered points correct like any other.
        instance = dataset.instance(found.ann_id)
        image = dataset.image(instance.image_id)
        xs, ys, xe, ye = box_pixel_range(*instance.bbox_xyxy, image.width, image.height)
        coords, labels = _grid_points(points, (xs, ys))
        fill = np.full((ye - ys, xe - xs), np.nextafter(threshold, 1.0))
        mask = constrain_mask(fill, coords, labels, constraint, threshold)
        return ExportedMask(found.ann_id, "box", (xs, ys), mask, len(labels), contradicted(fill > threshold, coords,
                                                                                           labels), 0.0)
    coords, labels = _grid_points(points, found.origin)
    raw = found.probs > threshold
    mask = constrain_mask(found.probs, coords, labels, constraint, threshold)
    quality = float(np.mean(np.abs(2 * found.probs - 1)))
    return ExportedMask(found.ann_id, "predicted", found.origin, mask, len(labels), contradicted(raw, coords, labels),
                        quality)


def answered_points(points: InstancePoints | None) -> int:
    """How many of an instance's points were answered yes or no (unsure ones left out)."""
    return int(np.sum(points.labels >= 0)) if points is not None else 0


def _grid_points(points: InstancePoints | None, origin: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    if points is None or len(points.labels) == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    known = points.labels >= 0
    return points.coords[known] - np.asarray(origin), points.labels[known]


def full_image_mask(exported: ExportedMask, height: int, width: int) -> np.ndarray:
    """``bool[H, W]``: the exported grid mask pasted into an empty image."""
    mask = np.zeros((height, width), dtype=bool)
    xs, ys = exported.origin
    h, w = exported.mask.shape
    mask[ys:ys + h, xs:xs + w] = exported.mask
    return mask


# ---- a run's training masks -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunStep:
    """What an export reads from a run: its config, training set, step, checkpoint, answered points (unsure left
    out) and the instances whose masks were drawn."""

    run_dir: Path
    cfg: ExperimentConfig
    train_set: CocoDataset
    step: int
    checkpoint: str
    points: Mapping[int, InstancePoints]
    drawn: Set[int]


def open_run_step(run_dir: str | Path, step: int | None = None, train_set: CocoDataset | None = None) -> RunStep:
    """Read what exporting ``step`` of ``run_dir`` needs, read-only (nothing in the run dir changes).
    ``train_set``: the run's training set when a caller already loaded it (reading every step of a run).

    Raises:
        ConfigError / RunDirectoryError: not a run directory, no finished step, or ``step`` not finished.
    """
    files = RunDirectory(run_dir)
    if not files.config_path.is_file():
        raise ConfigError(f"{files.root}: no config.yaml (is this a run directory?)")
    cfg = load_run_config(files.config_path)
    done = files.done_steps()
    if not done:
        raise RunDirectoryError(f"{files.root}: no finished step yet (step_NNN/metrics.json); run `apis run` first")
    step = done[-1] if step is None else step
    if step not in done:
        raise RunDirectoryError(f"{files.root}: step {step} is not finished; finished steps: "
                                f"{', '.join(map(str, done))}")
    if train_set is None:
        train_set = load_coco(cfg.data.train_json, cfg.data.image_root or None).subset(cfg.data.max_train_images)
    with PointLedger(files.ledger_path, read_only=True) as ledger:
        points = ledger.points(max_step=step)
        bought = {mask.ann_id for mask in ledger.masks(max_step=step)}
    # A run that trained on every full mask (loss.full without AFIS) drew them all.
    drawn = {inst.ann_id for inst in train_set.instances()} if cfg.loss.full > 0 and cfg.afis.level == "none" \
        else bought
    return RunStep(files.root, cfg, train_set, step, files.final_checkpoint(step, 0), points, drawn)


def export_run_masks(run: RunStep, constraint: Constraint = "local", device: str | None = None,
                     progress: bool = True) -> list[ExportedMask]:
    """Every non-crowd training instance's :class:`ExportedMask` at ``run.step``, in dataset order."""
    predicted = {}
    if any(inst.ann_id not in run.drawn for inst in run.train_set.instances()):
        torch_device = resolve_device(device or run.cfg.device)
        model = load_model(run.checkpoint, run.cfg, torch_device)
        for found in instance_probabilities(model, run.cfg, run.train_set, torch_device, progress):
            if found.ann_id not in run.drawn:
                predicted[found.ann_id] = export_instance(found, run.train_set, run.points.get(found.ann_id),
                                                          constraint, run.cfg.model.mask_threshold)
    exported = []
    for inst in run.train_set.instances():
        points = run.points.get(inst.ann_id)
        if inst.ann_id in run.drawn:
            exported.append(ExportedMask(inst.ann_id, "drawn", (0, 0), None, answered_points(points), 0, 1.0))
        else:  # an instance the prediction sets did not reach is a box the model has no location for
            exported.append(predicted.get(inst.ann_id) or export_instance(
                InstanceProbabilities(inst.ann_id, (0, 0), None), run.train_set, points, constraint))
    return exported


def masks_to_coco(dataset: CocoDataset, exported: list[ExportedMask]) -> dict:
    """The COCO instance file of ``dataset``'s images with ``exported``'s masks (module docstring)."""
    data = ground_truth_of(dataset)
    by_id = {entry.ann_id: entry for entry in exported}
    annotations = []
    for ann in data["annotations"]:
        entry = by_id.get(ann["id"])
        if entry is None:  # a crowd region: an ignore region, kept as given
            annotations.append(ann)
            continue
        review = {"apis_source": entry.source, "apis_points": entry.points,
                  "apis_points_contradicted": entry.contradicted, "apis_quality": round(entry.quality, 4)}
        if entry.source == "drawn":
            annotations.append({**ann, **review})
            continue
        image = dataset.image(ann["image_id"])
        mask = full_image_mask(entry, image.height, image.width)
        annotations.append({**ann, "segmentation": encode_mask(mask), "area": int(mask.sum()), **review})
    return {**data, "annotations": annotations}


def write_coco(path: str | Path, coco: dict) -> Path:
    """Write the exported COCO file atomically (a crash leaves the old file or none)."""
    atomic_write_json(path, coco)
    return Path(path)


def summarise(exported: list[ExportedMask], constraint: Constraint) -> str:
    """One line: masks per source, and the answered points the model's own masks contradicted."""
    counts = {source: sum(1 for e in exported if e.source == source) for source in SOURCES}
    wrong = sum(e.contradicted for e in exported)
    answered = sum(e.points for e in exported if e.source != "drawn")
    return (f"{len(exported):,} masks: {counts['predicted']:,} predicted, {counts['drawn']:,} drawn, "
            f"{counts['box']:,} box fill; the model's own masks contradicted {wrong:,} of {answered:,} answered "
            f"points, {'left as predicted (--constraint none)' if constraint == 'none' else 'all corrected'}"
            if wrong else
            f"{len(exported):,} masks: {counts['predicted']:,} predicted, {counts['drawn']:,} drawn, "
            f"{counts['box']:,} box fill; the model's own masks contradicted none of {answered:,} answered points")
