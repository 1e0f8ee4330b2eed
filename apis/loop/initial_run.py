"""``loop.initial_run``: start a run from another run's P0 and M0, so that the strategies of an experiment
are compared from the same starting point (docs/design.md, "The method")."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from apis.config import ConfigError, ExperimentConfig, flat_config
from apis.config_loading import RESUMABLE_KEYS, config_differences, load_run_config
from apis.data.ledger import PointLedger
from apis.loop.run_dir import RunDirectory
from apis.utils.io import WriteFailed

# What M0 depends on: these sections and keys must be equal in both runs.
M0_SECTIONS = ("seed", "data", "model", "solver")
M0_KEYS = {"loss.full", "loss.full_bce", "loss.box", "loop.init", "afis.level"}


def _trains_m0(key: str) -> bool:
    return key.split(".")[0] in M0_SECTIONS or key in M0_KEYS or key.startswith("loop.m0.")


def check_initial_run(source: Path, cfg: ExperimentConfig, members: int) -> RunDirectory:
    """``source``'s run directory when it can give ``cfg`` its P0 and M0 (checked before any work starts);
    ConfigError naming what does not fit otherwise (see :func:`reuse_initial_run`)."""
    source_dir = RunDirectory(source, members)
    if not source_dir.is_done(0) or not source_dir.config_path.exists():
        raise ConfigError(f"loop.initial_run={source}: that run has not finished step 0")
    stored = load_run_config(source_dir.config_path)
    ignore = RESUMABLE_KEYS | {key for key in flat_config(cfg) if not _trains_m0(key)}
    changed = config_differences(stored, cfg, ignore)
    if changed:
        raise ConfigError(f"loop.initial_run={source}: its M0 was trained differently ({'; '.join(changed)})")
    return source_dir


def reuse_initial_run(source: Path, cfg: ExperimentConfig, run_dir: RunDirectory, ledger: PointLedger,
                      labels: dict) -> None:
    """Copy P0 (the ledger's step-0 answers, or AFIS's initial masks) and M0 (every member's step-0 training) of
    ``source`` into ``run_dir``, and its step-0 metrics with this run's ``labels`` (strategy and prediction
    sets). Resumable: files already copied are kept.

    Raises:
        ConfigError: ``source`` has not finished step 0, has no model for a member, or trained M0 with another
            seed, data, model, solver, M0 loss, initial model kind (``loop.init``) or AFIS level.
    """
    source_dir = check_initial_run(source, cfg, run_dir.members)
    with PointLedger(source_dir.ledger_path, read_only=True) as other:  # another run's: never written
        ledger.record(other.answers(max_step=0))
        ledger.record_masks(other.masks(max_step=0))  # AFIS: the initial masks, and the file that names them
    masks = source_dir.step(0) / "masks.json"
    if masks.exists():
        _copy_whole(masks, run_dir.step(0) / "masks.json", shutil.copy2)
    for index in range(run_dir.members):
        src, dst = source_dir.member(0, index), run_dir.member(0, index)
        if not src.exists():
            raise ConfigError(f"loop.initial_run={source}: it has no trained model {src}")
        if not dst.exists():
            _copy_whole(src, dst, shutil.copytree)
    record = source_dir.step_metrics(0)
    record.update(labels)
    run_dir.finish_step(0, record, cfg.loop.steps)


def _copy_whole(src: Path, dst: Path, copy: Callable[[Path, Path], object]) -> None:
    """``copy(src, ...)`` (a file or a folder) to ``dst`` whole or not at all: by way of ``dst.partial``, renamed
    once complete, so that a copy cut short (a full disk, a kill) is never taken for a finished one.

    Raises:
        WriteFailed: the copy failed; it names ``dst``, and nothing of it is left.
    """
    partial = dst.with_name(dst.name + ".partial")
    _remove(partial)  # a killed copy's
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        copy(src, partial)
        os.replace(partial, dst)
    except OSError as error:
        _remove(partial)
        # copytree gathers its files' errors in one shutil.Error: a list of (src, dst, reason)
        gathered = isinstance(error, shutil.Error) and isinstance(error.args[0], list) and error.args[0]
        reason = gathered[0][2] if gathered else (error.strerror or error)
        raise WriteFailed(f"{dst}: could not be copied from {src} ({reason}); nothing of it is kept. Free space, "
                          "then run the same command again") from error


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
