"""The history of the config schema: one migration per version, so that a config written by an older APIS
reads as it behaved then.

Every run writes ``config_version`` into its ``config.yaml`` and into the config each checkpoint stores.
Reading one of an older version applies, in order, the migrations from its version up: each names the keys
added after that version with the value that was in effect before they existed. An old run therefore resumes
with the behaviour it had, and refuses a config that asks for another value (``apis run`` / ``apis train``
compare the two; see docs/design.md, "Config versions").

To add a config key: give its dataclass field a default, then add one line here, the next version number
mapping the key (dotted) to the value that reproduces the behaviour before it existed, e.g.
``3: {"loss.new_weight": 0.0},``. ``CONFIG_VERSION`` follows; save the config the new version writes as
``tests/fixtures/config_v<CONFIG_VERSION>.yaml`` (``dump_config(ExperimentConfig(), ...)``), and
tests/test_config_versions.py checks that no key was left out. To rename a key, map its old dotted name to the
new one in :data:`RENAMED` under the version that last had the old name: a stored config is read with the new
name, and a config that gives the old one is told the new one.
"""

from __future__ import annotations

from typing import Any

MIGRATIONS: dict[int, dict[str, Any]] = {
    # Version 1: every config written before config_version existed (runs may lack any of these keys).
    1: {"model.dynamic_init": "zeros", "model.dynamic_activation": "relu", "loss.point_positive_weight": 1.0,
        "loss.point_negative_weight": 1.0, "loop.point_prior_correction": False},
    # Version 2: before people could answer (apis annotate), the simulated oracle answered every run.
    2: {"oracle.kind": "simulated"},
    3: {"loss.point_normalisation": "point"},
    # Version 4: one model (CondInst) and no transfer runs.
    4: {"model.arch": "condinst", "model.roi_samples_per_image": 512, "loop.points_from": ""},
    # Version 5: before global point budgets, BoxInst-initialised runs and AFIS, every run gave one point per
    # instance per step after a P0 of random points.
    5: {"selection.allocation": "per_instance", "selection.max_points_per_instance": 5,
        "selection.min_point_distance": 3.0, "loop.init": "points", "afis.level": "none", "afis.scorer": "random"},
    # Version 6: every periodic checkpoint stayed on disk.
    6: {"solver.keep_checkpoints": None},
    # Version 7: the mask branch worked at P3's stride only, the dynamic head on the whole image, and full masks
    # trained by Dice alone.
    7: {"model.mask_feature_stride": 8, "model.mask_head_window": False, "loss.full_bce": 0.0},
    # Version 8: fine-tuning always started its BoxInst pairwise term at full weight (the loop set
    # loss.pairwise_warmup_iters to 0; now loop.finetune.pairwise_warmup_iters).
    8: {"loop.finetune.pairwise_warmup_iters": 0},
    # Version 9: masks were the head's own, without refinement at inference.
    9: {"model.refinement.method": "none", "model.refinement.iterations": 10, "model.refinement.weight": 16.0,
        "model.refinement.radius": 3, "model.refinement.colour_sigma": 1.0,
        "model.refinement.colour_model_weight": 1.0},
}

RENAMED: dict[int, dict[str, str]] = {
    # Version 8: the point-loss weights of the loop's phases became sections over loss.* (loop.m0, loop.finetune).
    8: {"loop.points_loss_m0": "loop.m0.points", "loop.points_loss_finetune": "loop.finetune.points"},
}
"""Keys renamed after a version: applied, old name to new, before that version's added keys."""

CONFIG_VERSION = max(MIGRATIONS) + 1
"""The version this APIS writes: one after the last migration."""

UNVERSIONED = 1
"""The version of a stored config (a run's config.yaml, a checkpoint's) without ``config_version``."""
