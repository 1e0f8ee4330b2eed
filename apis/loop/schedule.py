"""What each step of the loop trains: the models of a step and the config each one trains with.

M0 trains from scratch with ``solver`` as written and ``loss`` overridden by ``loop.m0`` (its point-loss weight;
none with ``loop.init=boxinst``: M0 from boxes alone); every later model is fine-tuned from its predecessor with
the ``loop.finetune_*`` schedule and ``loss`` overridden by ``loop.finetune``, optionally with point-loss class
weights that restore P0's object share (``loop.point_prior_correction``). Each phase's loss keys are set in its
section only: ``apis run`` uses no ``loss.*`` key those sections hold. With the "models" prediction set, a step
trains one model per seed of the ensemble.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

from apis.config import ExperimentConfig
from apis.data.ledger import Answer

logger = logging.getLogger(__name__)


def member_seeds(cfg: ExperimentConfig) -> list[int]:
    """Seeds of the models trained at every step: the run's own, plus the ensemble's for the "models" set."""
    extra = cfg.selection.ensemble_seeds if "models" in cfg.selection.sets else []
    return [cfg.seed, *[s for s in extra if s != cfg.seed]]


def train_config(cfg: ExperimentConfig, step: int, seed: int, point_weights: dict[str, float] | None = None
                 ) -> ExperimentConfig:
    """The config of the model trained at ``step`` with ``seed``.

    M0 (step 0) uses ``solver`` as written and ``loss`` with ``loop.m0``'s keys (no point loss with
    ``loop.init=boxinst``); fine-tuning uses the ``loop.finetune_*`` schedule, ``loss`` with ``loop.finetune``'s
    keys, and ``point_weights`` (``loss.point_positive_weight`` / ``point_negative_weight``, see
    :func:`point_prior_weights`) when given.
    """
    if step == 0:
        loss = dataclasses.replace(cfg.loss, **dataclasses.asdict(cfg.loop.m0))
        if cfg.loop.init == "boxinst":  # a BoxInst-initialised M0 has no P0 to train on: boxes alone
            loss = dataclasses.replace(loss, points=0.0)
        return dataclasses.replace(cfg, seed=seed, loss=loss)
    solver = dataclasses.replace(cfg.solver, max_iter=cfg.loop.finetune_iters, base_lr=cfg.loop.finetune_lr,
                                 steps=list(cfg.loop.finetune_steps),
                                 warmup_iters=min(cfg.solver.warmup_iters, cfg.loop.finetune_iters // 10))
    loss = dataclasses.replace(cfg.loss, **dataclasses.asdict(cfg.loop.finetune), **(point_weights or {}))
    return dataclasses.replace(cfg, seed=seed, solver=solver, loss=loss)


def point_prior_weights(answers: Sequence[Answer], step: int) -> dict[str, float]:
    """Point-loss class weights that give the points known at ``step`` the object share of P0's points.

    An uncertainty strategy does not sample a box's pixels at random: on DSB2018, entropy's P1 points
    are about 27 % object against 74 % for random points. A head fitted to them unweighted learns the
    selection's base rate instead of the box's and draws masks that are too small. With ``pi`` the
    object share of P0's uniformly drawn points and ``p`` that of every point trained on, weighting
    objects by ``pi / p`` and background by ``(1 - pi) / (1 - p)`` restores the base rate (the
    prior-shift correction of Saerens et al., 2002) and leaves the mean weight at 1.

    Args:
        answers: the ledger's answers up to ``step``; unsure ones are ignored.
        step: the step being trained (for the log).

    Returns:
        ``{"point_positive_weight": ..., "point_negative_weight": ...}``, or ``{}`` when P0 or the points
        trained on hold one class only (no ratio to correct).
    """
    labelled = [a for a in answers if a.label >= 0]

    def object_share(labels: list[int]) -> float:
        return sum(labels) / len(labels) if labels else math.nan

    pi = object_share([a.label for a in labelled if a.step == 0])
    p = object_share([a.label for a in labelled])
    if not (0 < pi < 1 and 0 < p < 1):
        logger.warning("step %d: no point-prior correction (object share %.3f at P0, %.3f now)", step, pi, p)
        return {}
    weights = {"point_positive_weight": pi / p, "point_negative_weight": (1 - pi) / (1 - p)}
    logger.info("step %d: point-loss weights object %.3f, background %.3f (object share %.3f at P0, %.3f now)",
                step, weights["point_positive_weight"], weights["point_negative_weight"], pi, p)
    return weights
