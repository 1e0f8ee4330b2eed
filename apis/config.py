"""The config's schema: one typed dataclass per role (:class:`ExperimentConfig` and its sections), each key's
type, choices (``Literal``) and range, and the rules between keys (:func:`validate`).

Reading it from YAML with ``key=value`` overrides, migrating stored configs and comparing a resumed run's:
:mod:`apis.config_loading`. Which command uses which key: :mod:`apis.config_use`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from apis.config_versions import CONFIG_VERSION
from apis.utils.errors import ApisError


class ConfigError(ApisError, ValueError):
    """A config key or value is wrong; the message names the key and what is allowed."""


@dataclass
class RefinementConfig:
    """Mask refinement at inference (apis.modeling.refinement; docs/design.md, "Sharp masks"): the masks a model
    predicts, exports and is scored on, sharpened along the image's colour edges. No training is involved, so it
    can be switched on or off for a model already trained."""

    # "none" (the model's masks as its head draws them) or "colour_crf" (a CRF on the mask's pixels: a colour
    # model of the object and its background added to the model's logits, and colour affinities between neighbours).
    method: Literal["none", "colour_crf"] = "none"
    iterations: int = 10  # mean-field updates
    # The settings below were chosen on DSB2018 training images (docs/benchmarks.md, "Sharp masks").
    weight: float = 16.0  # most a pixel's logit moves when all its neighbours agree in colour and label
    radius: int = 3  # neighbours within this many pixels (a (2 radius + 1)^2 window)
    colour_sigma: float = 1.0  # colour distance scale, in standard deviations of the colours around the mask
    colour_model_weight: float = 1.0  # weight of the colour model's log-likelihood ratio in each pixel's logit


@dataclass
class ModelConfig:
    """The instance segmentation model (docs/design.md, "The model"): CondInst, or Mask R-CNN (``arch``)."""

    # "condinst" (the paper's model) or "mask_rcnn" (torchvision's Mask R-CNN with the point loss in each
    # proposal's box frame; uses depth, backbone_weights, norm, num_classes, fpn_channels and the test keys below).
    arch: Literal["condinst", "mask_rcnn"] = "condinst"
    depth: Literal[18, 34, 50, 101] = 50  # ResNet depth
    backbone_weights: str = "none"  # "none", "imagenet" (torchvision's, must be cached locally) or a file path
    norm: Literal["frozen_bn", "bn"] = "frozen_bn"  # backbone norm
    num_classes: int = 80
    fpn_channels: int = 256
    head_convs: int = 4  # convs in each FCOS tower
    mask_branch_channels: int = 128
    mask_channels: int = 8  # output channels of the mask branch
    dynamic_channels: int = 8  # channels of the dynamic mask head
    dynamic_layers: int = 3
    # Controller bias at initialisation: "fan_in" starts every instance with a He-initialised mask MLP;
    # "zeros" is AdelaiDet's (all dynamic weights ~0.01 x features), which left the mask head spatially
    # constant under point or box supervision in our short CPU schedules (docs/results.md).
    dynamic_init: Literal["fan_in", "zeros"] = "fan_in"
    # Between the dynamic head's layers: "relu" (AdelaiDet) or "leaky_relu" (slope 0.1), which keeps a
    # gradient through units that point supervision would otherwise switch off for good (docs/results.md).
    dynamic_activation: Literal["relu", "leaky_relu"] = "relu"
    # Stride of the mask branch's features, where the dynamic head runs: 8 (CondInst's, P3-P5) or 4 (P3-P5
    # and the ResNet's stride-4 stage C2; docs/design.md, "Sharp masks").
    mask_feature_stride: Literal[8, 4] = 8
    mask_out_stride: int = 4  # stride of the mask logits: the dynamic head's output upsampled bilinearly
    # Run each instance's dynamic head only on the cells that can hold a box its location is assigned
    # (within the level's upper size edge), background elsewhere: what makes stride 4 affordable.
    mask_head_window: bool = False
    centre_sampling_radius: float = 1.5
    size_ranges: list[float] = field(default_factory=lambda: [0, 64, 128, 256, 512, float("inf")])
    max_proposals: int = 500  # mask-head training instances per batch (-1: all)
    score_threshold: float = 0.05
    pre_nms_top_k: int = 1000
    nms_threshold: float = 0.6
    detections_per_image: int = 100
    mask_threshold: float = 0.5
    refinement: RefinementConfig = field(default_factory=RefinementConfig)
    # Mask R-CNN only: RoIs sampled per image to train the box head, a quarter of them positive (these train
    # the mask head too); torchvision's 512 suits COCO, the CPU configs use fewer.
    roi_samples_per_image: int = 512


@dataclass
class LossConfig:
    """Weights of the losses; a mask loss with weight 0 is off (docs/design.md, "The model")."""

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    points: float = 1.0  # PointSup BCE at labelled points
    full: float = 0.0  # Dice against GT masks (fully supervised)
    # With loss.full: weight of a per-cell BCE against the GT's coverage on the cells of its box, beside the Dice.
    # Dice alone leaves the probabilities uncalibrated (masks too small at 0.5 on DSB2018); BCE is calibrated.
    full_bce: float = 0.0
    box: float = 0.0  # BoxInst projection + pairwise terms
    pairwise_weight: float = 1.0
    pairwise_dilation: int = 2
    pairwise_colour_threshold: float = 0.3
    pairwise_warmup_iters: int = 10000
    points_per_iter: int = -1  # point augmentation: random subset of each instance's points (-1: all)
    # Per-class weights of the point BCE (points labelled 1 / 0); loop.point_prior_correction sets them.
    point_positive_weight: float = 1.0
    point_negative_weight: float = 1.0
    # How the point BCE is averaged: "point" (PointSup: mean over every labelled point of the batch) or
    # "instance" (each instance's points summed, mean over instances), which keeps each point's pull as an
    # instance gets more points (docs/design.md, "Training from boxes and a few points").
    point_normalisation: Literal["point", "instance"] = "point"


@dataclass
class DataConfig:
    """Where the data lives and how images are resized."""

    train_json: str = ""
    val_json: str = ""
    image_root: str = ""  # folder of the images; "" -> <json dir>/../images
    # Folder of the val_json images ("" -> as image_root); added for COCO, whose splits live in train2017/, val2017/.
    val_image_root: str = ""
    train_points: str = ""  # PointSup json with point_coords/point_labels for the "points" loss
    random_points_per_instance: int = 0  # >0: draw N points per box, labelled from GT masks (simulated oracle)
    max_train_images: int = 0  # >0: use only the first N training images (CPU-sized runs)
    max_val_images: int = 0
    min_size_train: list[int] = field(default_factory=lambda: [640, 672, 704, 736, 768, 800])
    min_size_test: int = 800
    max_size: int = 1333
    hflip_prob: float = 0.5
    num_workers: int = 2


@dataclass
class SolverConfig:
    """SGD schedule; the defaults are the paper's: batch 16, lr 0.01, 90k iterations, decay at 60k/80k."""

    batch_size: int = 16
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_iter: int = 90000
    steps: list[int] = field(default_factory=lambda: [60000, 80000])
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    clip_grad_norm: float = 0.0  # 0: off
    amp: bool = True  # only takes effect on CUDA
    checkpoint_period: int = 5000
    # Periodic checkpoints kept on disk, the newest (null: all); model_final.pth is always kept. Resuming needs
    # only the newest, and a loop of many steps would otherwise fill the disk.
    keep_checkpoints: int | None = 1
    log_period: int = 20


@dataclass
class SelectionConfig:
    """How a step picks the point of each instance (docs/design.md, "The method")."""

    metric: str = "entropy"
    sets: list[Literal["anchors", "models", "scales"]] = field(default_factory=lambda: ["anchors"])
    ensemble_seeds: list[int] = field(default_factory=lambda: [1, 2])  # extra models for the "models" set
    scales: list[int] = field(default_factory=lambda: [640, 800, 960])
    flips: bool = False
    # "per_instance": one point per instance per step (the paper); "global": as many points in all, spent
    # across instances by score, so confident instances get none and hard ones several (apis.active.allocation).
    allocation: Literal["per_instance", "global"] = "per_instance"
    max_points_per_instance: int = 5  # global: at most this many points of one instance per step
    min_point_distance: float = 3.0  # global: pixels between two points of one instance chosen in one step


@dataclass
class OracleConfig:
    """Who answers the point questions, and the seconds each kind of annotation costs (docs/design.md,
    "The method")."""

    # "simulated" answers from the GT masks inside `apis run`; "human" stores each step's questions and stops
    # until people have answered them (`apis annotate`, docs/annotate.md), and the measured seconds of their
    # answers replace point_cost_s.
    kind: Literal["simulated", "human"] = "simulated"
    point_cost_s: float = 0.9
    mask_cost_s: float = 79.2
    box_cost_s: float = 7.0
    flip_prob: float = 0.0
    unsure_rate: float = 0.0


@dataclass
class M0Loss:
    """The ``loss.*`` keys ``apis run`` trains M0 with, over the ``loss`` section (which is ``apis train``'s)."""

    points: float = 0.1  # the point-loss weight of M0 (the authors' code); 0 with loop.init=boxinst (no P0)


@dataclass
class FinetuneLoss:
    """The ``loss.*`` keys ``apis run`` fine-tunes every later model with, over the ``loss`` section."""

    points: float = 1.0  # the point-loss weight of fine-tuning
    # Fine-tuning continues M0, whose BoxInst pairwise term has already been ramped up: no second warm-up.
    pairwise_warmup_iters: int = 0


@dataclass
class LoopConfig:
    """The active-learning loop (docs/design.md, "The method")."""

    steps: int = 3
    finetune_iters: int = 30000
    finetune_lr: float = 0.01
    finetune_steps: list[int] = field(default_factory=lambda: [10000, 20000])
    m0: M0Loss = field(default_factory=M0Loss)
    finetune: FinetuneLoss = field(default_factory=FinetuneLoss)
    initial_run: str = ""  # another run dir with the same seed/data/M0 config: reuse its P0 and M0
    # Another run dir: train on the points its model chose (its ledger's answers of every step) instead of
    # selecting; the transfer test (apis.loop.transfer).
    points_from: str = ""
    # How M0 is trained: "points" (the paper's P0, one random point per instance) or "boxinst" (P'_s: M0 from
    # boxes alone with the BoxInst terms, loss.box > 0; no P0, so every instance has s points at step s).
    init: Literal["points", "boxinst"] = "points"
    # Fine-tune with point-loss class weights that give the labelled points the object share of P0's random
    # points (see apis.loop.schedule.point_prior_weights). Off by default: the paper trains on points unweighted.
    point_prior_correction: bool = False


@dataclass
class AfisConfig:
    """AFIS, the paper's baseline: the seconds APIS spends on points spent on full masks instead
    (docs/design.md, "AFIS")."""

    level: Literal["none", "image", "instance"] = "none"  # none (APIS: points), image (every mask of an image)
    scorer: Literal["random", "mean-entropy", "min-det-loss"] = "random"  # which to buy first


@dataclass
class ExperimentConfig:
    """Everything one run needs. ``output_dir`` holds checkpoints, metrics and the ledger."""

    name: str = "experiment"
    output_dir: str = "runs/experiment"
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    afis: AfisConfig = field(default_factory=AfisConfig)


def validate(cfg: ExperimentConfig) -> None:
    """The rules between keys (a key's own type, choices and range are checked as it is read). Raises
    :class:`ConfigError` naming the keys."""
    if cfg.model.arch == "mask_rcnn" and cfg.loss.full > 0:
        raise ConfigError(f"model.arch=mask_rcnn learns its masks from points and boxes (loss.points, loss.box), "
                          f"not from full masks; set loss.full=0 (got {cfg.loss.full})")
    if cfg.afis.level != "none":
        if cfg.loss.full <= 0:
            raise ConfigError("config key 'afis.level' is set: AFIS trains on the masks it buys, which needs the "
                              "full-mask loss on (loss.full > 0, e.g. loss.full=1.0)")
        if cfg.oracle.kind != "simulated" or cfg.loop.init != "points":
            raise ConfigError("config key 'afis.level' is set: AFIS buys the dataset's GT masks after a random "
                              "initial set, so it needs oracle.kind=simulated and loop.init=points")
    if cfg.loop.init == "boxinst" and cfg.loss.box <= 0:
        raise ConfigError("config key 'loop.init' is 'boxinst': M0 learns masks from boxes alone, which needs the "
                          "BoxInst terms on (loss.box > 0, e.g. loss.box=1.0)")
    if cfg.loss.full_bce > 0 and cfg.loss.full <= 0:
        raise ConfigError(f"config key 'loss.full_bce' is {cfg.loss.full_bce}: it adds to the full-mask loss, which "
                          "is off; set loss.full > 0 (e.g. loss.full=1.0) or loss.full_bce=0")


# Keys whose value must be at least a minimum (and at most a maximum when given); each is checked at load, so a
# value the model, the data loader or the schedule would only trip over later names its key before any work.
_RANGES = {
    "seed": (0, 2**32 - 1),  # numpy's seeds
    "model.num_classes": (1, None), "model.fpn_channels": (1, None), "model.head_convs": (0, None),
    "model.mask_branch_channels": (1, None), "model.mask_channels": (1, None), "model.dynamic_channels": (1, None),
    "model.dynamic_layers": (1, None), "model.centre_sampling_radius": (0.0, None),
    "model.score_threshold": (0.0, 1.0), "model.pre_nms_top_k": (1, None), "model.nms_threshold": (0.0, 1.0),
    "model.detections_per_image": (1, None), "model.mask_threshold": (0.0, 1.0),
    "model.refinement.iterations": (0, None), "model.refinement.weight": (0.0, None),
    "model.refinement.radius": (1, None), "model.refinement.colour_model_weight": (0.0, None),
    "loss.focal_alpha": (0.0, 1.0), "loss.focal_gamma": (0.0, None), "loss.pairwise_weight": (0.0, None),
    "loss.pairwise_dilation": (1, None), "loss.pairwise_colour_threshold": (0.0, None),
    "loss.pairwise_warmup_iters": (0, None),
    "data.random_points_per_instance": (0, None), "data.max_train_images": (0, None),
    "data.max_val_images": (0, None), "data.min_size_test": (1, None), "data.max_size": (1, None),
    "data.hflip_prob": (0.0, 1.0), "data.num_workers": (0, None),
    "solver.warmup_factor": (0.0, 1.0), "solver.clip_grad_norm": (0.0, None), "solver.checkpoint_period": (1, None),
    "solver.log_period": (1, None),
    "loop.m0.points": (0.0, None), "loop.finetune.points": (0.0, None),
    "loop.finetune.pairwise_warmup_iters": (0, None),
    "model.roi_samples_per_image": (1, None), "selection.max_points_per_instance": (1, None),
    "selection.min_point_distance": (0.0, None), "solver.batch_size": (1, None), "solver.base_lr": (0.0, None),
    "loop.finetune_lr": (0.0, None), "solver.max_iter": (1, None), "loop.finetune_iters": (1, None),
    "loop.steps": (0, None), "solver.momentum": (0.0, None), "solver.weight_decay": (0.0, None),
    "solver.warmup_iters": (0, None), "oracle.point_cost_s": (0.0, None), "oracle.mask_cost_s": (0.0, None),
    "oracle.box_cost_s": (0.0, None), "oracle.flip_prob": (0.0, 1.0), "oracle.unsure_rate": (0.0, 1.0),
}
# List keys: at least one item (when the minimum length is 1), every item at least its minimum.
_LIST_RANGES = {"data.min_size_train": (1, 1), "solver.steps": (0, 0), "loop.finetune_steps": (0, 0),
                "selection.ensemble_seeds": (0, 0), "selection.scales": (1, 1)}


def _value(cfg: ExperimentConfig, key: str) -> Any:
    value = cfg
    for name in key.split("."):
        value = getattr(value, name)
    return value


def check_values(cfg: ExperimentConfig) -> None:
    """Each key's own range (and the few rules on one key a range cannot say), before :func:`validate`."""
    for key, (minimum, maximum) in _RANGES.items():
        _check_range(key, _value(cfg, key), minimum=minimum, maximum=maximum)
    for key, (min_length, minimum) in _LIST_RANGES.items():
        values = _value(cfg, key)
        if len(values) < min_length:
            raise ConfigError(f"config key '{key}' is {values!r}; it needs at least one value")
        for index, value in enumerate(values):
            _check_range(f"{key}[{index}]", value, minimum=minimum)
    if cfg.model.max_proposals != -1:
        _check_range("model.max_proposals", cfg.model.max_proposals, minimum=1)
    if cfg.loss.points_per_iter != -1:
        _check_range("loss.points_per_iter", cfg.loss.points_per_iter, minimum=1)
    stride, branch_stride = cfg.model.mask_out_stride, cfg.model.mask_feature_stride
    if stride < 1 or branch_stride % stride:
        raise ConfigError(f"config key 'model.mask_out_stride' is {stride}; it must divide the mask branch's stride "
                          f"model.mask_feature_stride={branch_stride}")
    edges = cfg.model.size_ranges
    if len(edges) != 6 or any(math.isnan(edge) or edge < 0 for edge in edges) or list(edges) != sorted(edges):
        raise ConfigError(f"config key 'model.size_ranges' is {edges!r}; it needs 6 increasing edges >= 0, one more "
                          "than the 5 pyramid levels P3-P7")
    if not cfg.output_dir.strip():
        raise ConfigError("config key 'output_dir' is empty; name the run's folder")
    if not cfg.selection.sets:
        raise ConfigError("config key 'selection.sets' must name at least one of: anchors, models, scales")
    if cfg.device != "auto" and not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ConfigError(f"config key 'device' is {cfg.device!r}; allowed values: auto, cpu, cuda, cuda:N")
    if cfg.loss.points < 0 or cfg.loss.full < 0 or cfg.loss.box < 0 or cfg.loss.full_bce < 0:
        raise ConfigError("config keys 'loss.points', 'loss.full', 'loss.box', 'loss.full_bce' must be >= 0")
    if cfg.loss.point_positive_weight <= 0 or cfg.loss.point_negative_weight <= 0:
        raise ConfigError("config keys 'loss.point_positive_weight', 'loss.point_negative_weight' must be > 0")
    for key in ("solver.steps", "loop.finetune_steps"):
        if list(_value(cfg, key)) != sorted(_value(cfg, key)):
            raise ConfigError(f"config key '{key}' must be increasing")
    # Checked here, before any work: a bad schedule found by the optimiser (or after M0) names no key.
    _check_range("solver.gamma", cfg.solver.gamma, minimum=0.0, strict=True)
    _check_range("model.refinement.colour_sigma", cfg.model.refinement.colour_sigma, minimum=0.0, strict=True)
    if cfg.solver.keep_checkpoints is not None:
        _check_range("solver.keep_checkpoints", cfg.solver.keep_checkpoints, minimum=1)


def _check_range(key: str, value: float, minimum: float, strict: bool = False, maximum: float | None = None
                 ) -> None:
    """ConfigError naming ``key`` unless ``value`` is finite, ``>= minimum`` (``>`` when ``strict``) and
    ``<= maximum``."""
    low_ok = value > minimum if strict else value >= minimum
    if not (math.isfinite(value) and low_ok and (maximum is None or value <= maximum)):
        bounds = f"{'>' if strict else '>='} {minimum}" + ("" if maximum is None else f" and <= {maximum}")
        raise ConfigError(f"config key '{key}' is {value!r}; it must be {bounds}")


def to_dict(cfg: ExperimentConfig) -> dict:
    """Plain nested dict with its ``config_version`` (for YAML dumps and checkpoints)."""
    return {"config_version": CONFIG_VERSION, **dataclasses.asdict(cfg)}


def flat_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """``{"solver.max_iter": 90000, ...}``, every value as it reads back from YAML."""
    def flatten(tree: dict, prefix: str) -> dict:
        flat = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    return flatten(yaml.safe_load(yaml.safe_dump(dataclasses.asdict(cfg))), "")
