"""The training loop: SGD with warm-up and step decay, AMP on CUDA, DDP under ``torchrun``, exact resume.

``train(cfg)`` trains CondInst (or Mask R-CNN, ``model.arch``) on ``cfg.data.train_json`` with the mask losses
``cfg.loss`` switches on and writes into the output folder::

    config.yaml          the resolved config, with its config_version
    metrics.jsonl        one JSON record per log period (see apis.engine.metrics_log)
    model_0005000.pth    every solver.checkpoint_period iterations (the solver.keep_checkpoints newest stay)
    model_final.pth      at the end
    last_checkpoint      names the newest checkpoint

Running the same command again resumes from ``last_checkpoint`` and produces the batches, losses
and weights an uninterrupted run would (the sampler, augmentation and every RNG are restored). Like
``apis run``, it refuses a config that differs from the stored ``config.yaml`` in anything but where the
run lives, what it runs on and ``solver.max_iter`` (training longer).
Under ``torchrun --nproc_per_node N`` each process trains on its share of every global batch of
``solver.batch_size`` images and only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import sys
import time
from bisect import bisect_right
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from apis.config import ConfigError, ExperimentConfig, SolverConfig, to_dict
from apis.config_loading import RESUMABLE_KEYS, absolute_paths, check_same_config, dump_config
from apis.data.coco import CocoDataset, load_coco
from apis.data.dataset import InfiniteSampler, TrainingDataset, collate, random_points
from apis.data.points import InstancePoints, read_pointsup
from apis.data.simulated_oracle import SimulatedOracle
from apis.engine.checkpoint import (
    FINAL_CHECKPOINT,
    capture_rng_state,
    checkpoint_name,
    find_last_checkpoint,
    load_model_weights,
    load_resumable_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    write_last_checkpoint,
)
from apis.engine.distributed import (
    DistributedContext,
    all_gather_objects,
    context_from_env,
    init_process_group,
    mean_over_ranks,
    shutdown_process_group,
)
from apis.engine.metrics_log import MetricsLog
from apis.modeling.backbone import BUNDLED_WEIGHTS
from apis.modeling.build import build_model
from apis.utils.device import resolve_device
from apis.utils.io import WriteFailed, remove_temporaries
from apis.utils.lock import FolderLock

logger = logging.getLogger(__name__)

# A resumed training may differ from the stored config.yaml in these keys only (training longer is one of them).
TRAINING_RESUMABLE_KEYS = RESUMABLE_KEYS | {"solver.max_iter"}
# detectron2's default (SOLVER.WEIGHT_DECAY_NORM = 0), which CondInst/AdelaiDet train with.
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive python/numpy seeds from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class WarmupMultiStep:
    """LR factor at an iteration: linear warm-up from ``warmup_factor`` to 1, times ``gamma`` per passed step."""

    def __init__(self, solver: SolverConfig):
        self.warmup_iters = solver.warmup_iters
        self.warmup_factor = solver.warmup_factor
        self.steps = list(solver.steps)
        self.gamma = solver.gamma

    def __call__(self, iteration: int) -> float:
        factor = self.gamma ** bisect_right(self.steps, iteration)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on every parameter except those of normalisation layers."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if isinstance(module, NORM_LAYERS) else decay).append(param)
    groups = [{"params": decay, "weight_decay": solver.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=solver.base_lr, momentum=solver.momentum)


def check_inputs(cfg: ExperimentConfig, init_weights: str | None, world_size: int) -> None:
    """Fail before any work on paths that do not exist or settings that cannot run."""
    data = cfg.data
    if not data.train_json:
        raise ConfigError("config key 'data.train_json' is empty: name the training COCO json")
    if not Path(data.train_json).is_file():
        raise ConfigError(f"config key 'data.train_json': file not found: {data.train_json}")
    if data.image_root and not Path(data.image_root).is_dir():
        raise ConfigError(f"config key 'data.image_root': folder not found: {data.image_root}")
    if data.train_points and not Path(data.train_points).is_file():
        raise ConfigError(f"config key 'data.train_points': file not found: {data.train_points}")
    if data.train_points and data.random_points_per_instance > 0:
        raise ConfigError("config keys 'data.train_points' and 'data.random_points_per_instance' are both set; "
                          "choose one source of points")
    weights = cfg.model.backbone_weights
    if weights not in ("none", "imagenet", *BUNDLED_WEIGHTS) and not Path(weights).is_file():
        raise ConfigError(f"config key 'model.backbone_weights': no such file {weights} (a path, 'none', 'imagenet' "
                          f"or one of the bundled names {', '.join(BUNDLED_WEIGHTS)})")
    if init_weights is not None and not Path(init_weights).is_file():
        raise ConfigError(f"init_weights: checkpoint not found: {init_weights}")
    if cfg.solver.max_iter < 1:
        raise ConfigError("config key 'solver.max_iter' must be >= 1")
    if cfg.solver.batch_size % world_size:
        raise ConfigError(f"config key 'solver.batch_size' ({cfg.solver.batch_size}) must be divisible by the "
                          f"number of processes ({world_size})")
    if cfg.solver.log_period < 1 or cfg.solver.checkpoint_period < 1:
        raise ConfigError("config keys 'solver.log_period' and 'solver.checkpoint_period' must be >= 1")


def check_fits_dataset(cfg: ExperimentConfig, coco: CocoDataset) -> None:
    """ConfigError unless the model's classes are the training set's categories (checked before any work)."""
    if cfg.model.num_classes != coco.num_classes:
        raise ConfigError(f"config key 'model.num_classes' is {cfg.model.num_classes} but "
                          f"{cfg.data.train_json} has {coco.num_classes} categories")


def training_points(cfg: ExperimentConfig, coco: CocoDataset, points: Mapping[int, InstancePoints] | None
                    ) -> Mapping[int, InstancePoints] | None:
    """The labelled points to train with: ``points`` if given, else ``data.train_points``, else
    ``data.random_points_per_instance`` points from the simulated oracle, else ``None``.

    Raises:
        ConfigError: the point loss is on but no training instance has a labelled point, or points
            name annotations that are not (non-crowd) instances of the training set.
    """
    used = coco.subset(cfg.data.max_train_images)
    source = "the points given to train()"
    if points is None and cfg.data.train_points:
        source = cfg.data.train_points
        points = read_pointsup(cfg.data.train_points)
    elif points is None and cfg.data.random_points_per_instance > 0:
        source = f"data.random_points_per_instance={cfg.data.random_points_per_instance}"
        oracle = SimulatedOracle(coco.masks("oracle"), cfg.oracle.point_cost_s, cfg.oracle.flip_prob,
                                 cfg.oracle.unsure_rate, seed=cfg.seed)
        points = random_points(used, cfg.data.random_points_per_instance, cfg.seed, oracle)
    if points is None:
        if cfg.loss.points > 0:
            raise ConfigError(f"loss.points={cfg.loss.points} needs labelled points, but none were given; set "
                              "data.train_points, data.random_points_per_instance, or loss.points=0")
        return None
    unknown = sorted(set(points) - {inst.ann_id for inst in coco.instances()})
    if unknown:
        raise ConfigError(f"{source}: points for annotation ids that are not non-crowd instances of "
                          f"{cfg.data.train_json}: {unknown[:10]}")
    instances = list(used.instances())
    labelled = sum(1 for inst in instances if inst.ann_id in points and (points[inst.ann_id].labels != -1).any())
    if cfg.loss.points > 0 and labelled == 0:
        raise ConfigError(f"loss.points={cfg.loss.points} needs labelled points, but no training instance has "
                          f"one in {source}")
    logger.info("training with points on %d of %d instances (from %s)", labelled, len(instances), source)
    return points


class _LossStep(nn.Module):
    """Routes ``forward`` to ``losses_and_stats`` so that DDP's gradient hooks see the call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, image_sizes, targets, iteration):
        return self.model.losses_and_stats(images, image_sizes, targets, iteration)


class _Window:
    """Running means of the scalars logged since the last log line (non-finite values skipped)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            if math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums}


def _to_device(target: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in target.items()}


def _format_eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def train(cfg: ExperimentConfig, points: Mapping[int, InstancePoints] | None = None,
          init_weights: str | None = None, output_dir: str | Path | None = None,
          mask_ids: Set[int] | None = None) -> Path:
    """Train (or resume training) the model ``cfg.model.arch`` names; returns the path of ``model_final.pth``.

    Args:
        cfg: the experiment (model, loss, data, solver, seed, device).
        points: ``{ann_id: InstancePoints}`` to supervise the point loss with (the active loop's
            P(s)); ``None`` uses ``data.train_points`` or ``data.random_points_per_instance``.
        init_weights: fine-tune from this checkpoint's weights with a fresh optimiser and schedule.
            Ignored when the output folder already holds a checkpoint to resume from.
        output_dir: overrides ``cfg.output_dir``.
        mask_ids: with the full-mask loss, the annotation ids whose GT masks it may read (AFIS: the masks
            bought); the other instances train the detector only. ``None``: every instance's mask.
    """
    ctx = context_from_env()
    device = resolve_device(cfg.device, ctx.local_rank if ctx.enabled else None)
    if output_dir is not None:  # config.yaml and the checkpoints then say where the run really lives
        cfg = dataclasses.replace(cfg, output_dir=str(output_dir))
    cfg = absolute_paths(cfg)  # stored so: the run's config.yaml means the same files from any directory
    output_dir = Path(cfg.output_dir)
    check_inputs(cfg, init_weights, ctx.world_size)
    coco = load_coco(cfg.data.train_json, cfg.data.image_root or None, used_images=cfg.data.max_train_images)
    check_fits_dataset(cfg, coco)
    points = training_points(cfg, coco, points)
    dataset = TrainingDataset(coco, points, cfg.data, with_masks=cfg.loss.full > 0, seed=cfg.seed, mask_ids=mask_ids)
    # One process (group) per output folder: rank 0 holds the lock from before the stored config is compared
    # until the training ends (docs/design.md, "The run directory").
    lock = FolderLock(output_dir) if ctx.is_main else None
    if lock is not None:
        lock.acquire()
    try:
        check_same_config(output_dir / "config.yaml", cfg, TRAINING_RESUMABLE_KEYS)
        if lock is not None:
            remove_temporaries(output_dir)  # e.g. a checkpoint half-written when the last run was killed
        created = init_process_group(ctx, device)
        try:
            return _Trainer(cfg, dataset, ctx, device, output_dir, init_weights).run()
        finally:
            shutdown_process_group(created)
    finally:
        if lock is not None:
            lock.release()


class _Trainer:
    """State of one training run; :meth:`run` is the loop."""

    def __init__(self, cfg: ExperimentConfig, dataset: TrainingDataset, ctx: DistributedContext,
                 device: torch.device, output_dir: Path, init_weights: str | None):
        self.cfg = cfg
        self.dataset = dataset
        self.ctx = ctx
        self.device = device
        self.output_dir = output_dir
        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.model = build_model(cfg.model, cfg.loss)
        if ctx.enabled and device.type == "cuda":
            # Batch statistics over the global batch (FrozenBatchNorm is left as it is).
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(device)
        self.optimizer = build_optimizer(self.model, cfg.solver)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, WarmupMultiStep(cfg.solver))
        self.use_amp = cfg.solver.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_amp)
        self.start_iter = 0
        resumable = load_resumable_checkpoint(output_dir)
        rng_state = None
        if resumable is not None:
            rng_state = self._resume(*resumable)
        elif init_weights is not None:
            load_model_weights(self.model, init_weights)
            logger.info("initialised weights from %s", init_weights)
        self.step = _LossStep(self.model)
        if ctx.enabled:
            self.step = DistributedDataParallel(
                self.step, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True)  # a batch may leave a head without a loss term
        # The loader draws its base seed from its own generator, never from the global RNG, so
        # creating it does not shift the random state a resumed run has just restored.
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.solver.batch_size // ctx.world_size,
            sampler=InfiniteSampler(len(dataset), cfg.solver.batch_size, cfg.seed, self.start_iter,
                                    ctx.rank, ctx.world_size),
            num_workers=cfg.data.num_workers, collate_fn=collate, worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(cfg.seed + ctx.rank), pin_memory=device.type == "cuda")
        if rng_state is not None:
            restore_rng_state(rng_state)
        else:
            seed_everything(cfg.seed + ctx.rank)

    def _resume(self, path: Path, state: dict) -> dict | None:
        load_model_weights(self.model, state)
        if "optimizer" not in state:
            raise ConfigError(f"{path} holds weights only and cannot be resumed from; "
                              "pass it as init_weights to a fresh output folder instead")
        self.optimizer.load_state_dict(state["optimizer"])
        # The schedule comes from the config; only the position in it is restored.
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        self.scaler.load_state_dict(state["grad_scaler"])
        self.start_iter = int(state["iteration"])
        logger.info("resuming from %s at iteration %d", path, self.start_iter)
        rng = state.get("rng", [])
        if len(rng) != self.ctx.world_size:
            logger.warning("%s was written by %d processes, this run has %d: random streams are not restored",
                           path, len(rng), self.ctx.world_size)
            return None
        return rng[self.ctx.rank]

    def _save(self, iteration: int, name: str) -> Path:
        rng = all_gather_objects(capture_rng_state(), self.ctx)  # collective: every rank takes part
        path = self.output_dir / name
        if self.ctx.is_main:
            try:
                save_checkpoint(path, {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "grad_scaler": self.scaler.state_dict(),
                    "iteration": iteration,
                    "rng": rng,
                    "config": to_dict(self.cfg),
                    # What the class indices mean, so that `apis predict` can name them without the training set.
                    "categories": self.dataset.coco.categories,
                })
                write_last_checkpoint(self.output_dir, path)
            except WriteFailed as error:
                raise self._resumes_from(error) from error
            if self.cfg.solver.keep_checkpoints is not None:
                prune_checkpoints(self.output_dir, self.cfg.solver.keep_checkpoints)
        return path

    def _resumes_from(self, error: WriteFailed) -> WriteFailed:
        """``error`` (a full disk, ...) saying what the training resumes from when the same command runs again."""
        kept = find_last_checkpoint(self.output_dir)
        return WriteFailed(f"{error}; the training resumes from {kept or 'its start'} when run again with space "
                           "freed")

    def run(self) -> Path:
        cfg, solver = self.cfg, self.cfg.solver
        if self.start_iter >= solver.max_iter:
            logger.info("%s already finished %d iterations", self.output_dir, self.start_iter)
            return find_last_checkpoint(self.output_dir)
        metrics = None
        if self.ctx.is_main:
            dump_config(cfg, self.output_dir / "config.yaml")
            metrics = MetricsLog(self.output_dir, resume_iteration=self.start_iter)
        show_bar = self.ctx.is_main and sys.stderr.isatty()
        bar = tqdm(total=solver.max_iter, initial=self.start_iter, desc=cfg.name, disable=not show_bar,
                   dynamic_ncols=True)
        self.model.train()
        window = _Window()
        batches = iter(self.loader)
        try:
            for iteration in range(self.start_iter, solver.max_iter):
                start = time.perf_counter()
                batch = next(batches)
                data_time = time.perf_counter() - start
                lr = self.optimizer.param_groups[0]["lr"]
                values = self._train_step(batch, iteration)
                window.add({**values, "time": time.perf_counter() - start, "data_time": data_time})
                done = iteration + 1
                bar.update(1)
                if done % solver.log_period == 0 or done == solver.max_iter:
                    record = {"iteration": done, "lr": lr, **mean_over_ranks(window.means(), self.ctx)}
                    window = _Window()
                    if metrics is not None:
                        try:
                            metrics.write(record)
                        except WriteFailed as error:
                            raise self._resumes_from(error) from error
                        self._report(record, bar, show_bar)
                if done % solver.checkpoint_period == 0 and done < solver.max_iter:
                    self._save(done, checkpoint_name(done))
            return self._save(solver.max_iter, FINAL_CHECKPOINT)
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()

    def _train_step(self, batch, iteration: int) -> dict[str, float]:
        """One SGD step on a batch; returns the losses, ``total_loss`` and the model's stats as floats."""
        images = batch.images.to(self.device, non_blocking=True)
        targets = [_to_device(target, self.device) for target in batch.targets]
        with torch.autocast(self.device.type, enabled=self.use_amp):
            losses, stats = self.step(images, batch.image_sizes, targets, iteration)
        total = sum(losses.values())
        values = {name: float(loss.detach()) for name, loss in losses.items()}
        values["total_loss"] = float(total.detach())
        if not math.isfinite(values["total_loss"]):
            raise FloatingPointError(f"iteration {iteration + 1}: the loss is not finite ({values}); "
                                     "try a lower solver.base_lr or a longer warm-up")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)  # the norm (and the clipping) in the loss's units, not AMP's scaled ones
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        # Logged because a mask head that blows up shows it here first (a jump of orders of magnitude).
        if self.cfg.solver.clip_grad_norm > 0:
            grad_norm = nn.utils.clip_grad_norm_(parameters, self.cfg.solver.clip_grad_norm)
        else:
            grad_norm = nn.utils.get_total_norm([p.grad for p in parameters])
        values["grad_norm"] = float(grad_norm)  # the norm before clipping; inf/NaN when AMP skips the step
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {**values, **{name: float(value) for name, value in stats.items()}}

    def _report(self, record: dict[str, Any], bar: tqdm, show_bar: bool) -> None:
        shown = {k: v for k, v in record.items() if k in ("total_loss", "point_acc", "grad_norm")}
        if show_bar:
            bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()} | {"lr": f"{record['lr']:.2e}"})
            return
        remaining = (self.cfg.solver.max_iter - record["iteration"]) * record.get("time", 0.0)
        parts = [f"iter {record['iteration']}/{self.cfg.solver.max_iter}", f"lr {record['lr']:.2e}"]
        parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("loss_") or k in shown]
        parts += [f"{record.get('time', 0.0):.3f} s/it", f"data {record.get('data_time', 0.0):.3f} s",
                  f"eta {_format_eta(remaining)}"]
        print(f"[{self.cfg.name}] " + "  ".join(parts), flush=True)
