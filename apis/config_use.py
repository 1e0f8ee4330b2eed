"""Which config keys a command does not use, and which key does that job instead (docs/design.md, "Config
versions").

A config file may serve several commands (the shipped ones are written for ``apis train`` and ``apis run``), so
a key one command ignores may stand in it. What a command line asks for, though, must change what the command
does: ``apis run ... loss.points=0.5`` is refused, naming ``loop.m0.points`` and ``loop.finetune.points``, the
keys that set the point-loss weight of the loop's two phases (:func:`check_overrides_used`).
"""

from __future__ import annotations

from collections.abc import Sequence

from apis.config import ConfigError, ExperimentConfig, flat_config
from apis.config_loading import parse_overrides

COMMANDS = ("train", "run")

CONDINST_ONLY = frozenset({
    "model.head_convs", "model.mask_branch_channels", "model.mask_channels", "model.dynamic_channels",
    "model.dynamic_layers", "model.dynamic_init", "model.dynamic_activation", "model.mask_out_stride",
    "model.mask_feature_stride", "model.mask_head_window", "loss.full_bce",
    "model.centre_sampling_radius", "model.size_ranges", "model.max_proposals", "model.pre_nms_top_k",
    "loss.focal_alpha", "loss.focal_gamma", "loss.points_per_iter",
})
"""Keys of CondInst's parts that Mask R-CNN (``model.arch=mask_rcnn``) does not have."""

RUN_ONLY_SECTIONS = ("loop", "selection", "oracle", "afis")
"""Sections that only the active loop reads."""


def unused_reason(command: str, cfg: ExperimentConfig, key: str) -> str | None:
    """Why ``apis COMMAND`` with ``cfg`` does not use the dotted ``key`` (naming the key that does the job), or
    None when it uses it."""
    if cfg.model.arch == "mask_rcnn" and key in CONDINST_ONLY:
        return "Mask R-CNN (model.arch=mask_rcnn) has no such part; it belongs to CondInst (model.arch=condinst)"
    if cfg.model.refinement.method == "none" and key.startswith("model.refinement.") and key != \
            "model.refinement.method":
        return "mask refinement is off: model.refinement.method=colour_crf turns it on"
    if cfg.model.arch == "condinst" and key == "model.roi_samples_per_image":
        return "it belongs to Mask R-CNN (model.arch=mask_rcnn); CondInst's mask head trains on model.max_proposals"
    if command == "train":
        if key in ("loop.m0.points", "loop.finetune.points"):
            return "loss.points sets the point-loss weight of `apis train`"
        if key.split(".")[0] in RUN_ONLY_SECTIONS:
            return "only `apis run` reads it; `apis train` trains once with solver.* and loss.*"
        return None
    if key == "loss.points":
        return ("the loop sets the point-loss weight of each phase: loop.m0.points for M0 and loop.finetune.points "
                "for fine-tuning")
    if key == "data.random_points_per_instance":
        return "the loop draws P0 itself, one random point per instance (loop.init says how M0 starts)"
    if key == "data.train_points":
        return "the loop trains on the points its ledger holds (loop.points_from takes another run's)"
    if cfg.afis.level != "none" and key in ("loop.m0.points", "loop.finetune.points"):
        return "AFIS (afis.level) trains on the masks it buys, without points"
    if cfg.afis.level == "none" and key == "afis.scorer":
        return "it chooses AFIS's masks; afis.level runs AFIS"
    if cfg.loop.init == "boxinst" and key == "loop.m0.points":
        return "M0 learns from boxes alone (loop.init=boxinst); loop.finetune.points weights the points of later steps"
    return None


def check_overrides_used(command: str, cfg: ExperimentConfig, overrides: Sequence[str]) -> None:
    """Refuse an override of a key that ``apis COMMAND`` (one of :data:`COMMANDS`) does not use with ``cfg``.

    Raises:
        ConfigError: naming the key and the key that does that job.
    """
    given = flat_config_keys(parse_overrides(list(overrides)))
    for key in sorted(given & set(flat_config(cfg))):
        reason = unused_reason(command, cfg, key)
        if reason:
            raise ConfigError(f"config key '{key}' is not used by `apis {command}`: {reason}")


def flat_config_keys(tree: dict, prefix: str = "") -> set[str]:
    """The dotted keys of a nested dict (``{"a": {"b": 1}}`` -> ``{"a.b"}``)."""
    keys = set()
    for key, value in tree.items():
        keys |= flat_config_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys
