"""A run whose questions people answer (``oracle.kind=human``): what ``apis annotate``, ``apis export-tasks``,
``apis import-answers`` and ``apis label-studio`` open before they start, checked up front."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from apis.config import ConfigError, ExperimentConfig
from apis.config_loading import load_run_config
from apis.data.coco import CocoDataset, load_datasets
from apis.loop.run_dir import RunDirectory


@dataclass(frozen=True)
class HumanRun:
    """A run directory, its stored config and its training set (images, boxes, class names)."""

    run_dir: Path
    cfg: ExperimentConfig
    train_set: CocoDataset

    @property
    def ledger_path(self) -> Path:
        return RunDirectory(self.run_dir).ledger_path


def open_human_run(run_dir: str | Path, writing: bool = False) -> HumanRun:
    """Open ``run_dir``; ConfigError unless it is a started run with ``oracle.kind=human`` (and, when ``writing``,
    one whose folder and ledger can be written)."""
    files = RunDirectory(run_dir)
    if not files.config_path.is_file():
        raise ConfigError(f"{files.root}: no config.yaml; start the run first with `apis run CONFIG oracle.kind=human`")
    cfg = load_run_config(files.config_path)
    if cfg.oracle.kind != "human":
        raise ConfigError(f"{files.root}: its oracle.kind is {cfg.oracle.kind!r}; only runs with oracle.kind=human "
                          "wait for people's answers")
    if not files.ledger_path.is_file():
        raise ConfigError(f"{files.root}: no ledger.sqlite; run `apis run` once to store the first questions")
    if writing and not (os.access(files.root, os.W_OK) and os.access(files.ledger_path, os.W_OK)):
        raise ConfigError(f"{files.root}: read-only, but answers are stored in its ledger.sqlite; make the folder "
                          "and the file writable (reading it needs no write access: `apis status`)")
    return HumanRun(run_dir=files.root, cfg=cfg, train_set=load_datasets(cfg)[0])
