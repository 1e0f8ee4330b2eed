"""A run whose questions people answer (``oracle.kind=human``): what ``apis annotate``, ``apis export-tasks``
and ``apis import-answers`` open before they start, checked up front."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from apis.active.loop import load_datasets
from apis.config import ConfigError, ExperimentConfig, load_config
from apis.data.coco import CocoDataset


@dataclass(frozen=True)
class HumanRun:
    """A run directory, its stored config and its training set (images, boxes, class names)."""

    run_dir: Path
    cfg: ExperimentConfig
    train_set: CocoDataset

    @property
    def ledger_path(self) -> Path:
        return self.run_dir / "ledger.sqlite"


def open_human_run(run_dir: str | Path) -> HumanRun:
    """Open ``run_dir``; ConfigError unless it is a started run with ``oracle.kind=human``."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml; start the run first with `apis run CONFIG oracle.kind=human`")
    cfg = load_config(config_path)
    if cfg.oracle.kind != "human":
        raise ConfigError(f"{run_dir}: its oracle.kind is {cfg.oracle.kind!r}; only runs with oracle.kind=human "
                          "wait for people's answers")
    if not (run_dir / "ledger.sqlite").is_file():
        raise ConfigError(f"{run_dir}: no ledger.sqlite; run `apis run` once to store the first questions")
    return HumanRun(run_dir=run_dir, cfg=cfg, train_set=load_datasets(cfg)[0])
