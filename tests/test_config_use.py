"""One meaning per key: every config key is read by some command, and a command refuses an override of a key it
does not use, naming the key that does that job."""

import ast
import dataclasses
from pathlib import Path

import pytest

from apis.cli import main
from apis.config import ConfigError, ExperimentConfig, LossConfig, flat_config
from apis.config_loading import load_config
from apis.config_use import check_overrides_used

PACKAGE = Path(__file__).resolve().parents[1] / "apis"


@pytest.mark.parametrize("command, overrides, message", [
    ("run", ["loss.points=0.5"], "'loss.points' is not used by `apis run`: .*loop.m0.points .*loop.finetune.points"),
    ("run", ["data.random_points_per_instance=2"], "draws P0 itself"),
    ("run", ["afis.level=instance", "loss.full=1", "loop.finetune.points=0.2"], "AFIS .* without points"),
    ("run", ["loop.init=boxinst", "loss.box=1", "loop.m0.points=0.2"], "boxes alone"),
    ("run", ["afis.scorer=min-det-loss"], "afis.level runs AFIS"),
    ("run", ["model.arch=mask_rcnn", "model.head_convs=2"], "'model.head_convs' .* belongs to CondInst"),
    ("train", ["model.roi_samples_per_image=64"], "belongs to Mask R-CNN"),
    ("train", ["loop.finetune.points=1.0"], "loss.points sets the point-loss weight of `apis train`"),
    ("train", ["selection.metric=random"], "only `apis run` reads it"),
])
def test_an_override_the_command_does_not_use_is_refused(command, overrides, message):
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError, match=message):
        check_overrides_used(command, cfg, overrides)


@pytest.mark.parametrize("command, overrides", [
    ("run", ["loop.m0.points=0.5", "loop.finetune.points=0.2", "loss.box=1.0", "selection.metric=random"]),
    ("run", ["model.arch=mask_rcnn", "model.roi_samples_per_image=64"]),
    ("train", ["loss.points=0.5", "data.random_points_per_instance=2", "model.head_convs=2"]),
])
def test_an_override_the_command_uses_is_taken(command, overrides):
    check_overrides_used(command, load_config(None, overrides), overrides)


def test_apis_run_refuses_a_point_weight_it_would_ignore_before_any_work(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("{}\n")
    with pytest.raises(SystemExit) as info:
        main(["run", str(tmp_path / "empty.yaml"), f"output_dir={tmp_path / 'run'}", "loss.points=0.5"])
    assert info.value.code == 2 and "loop.m0.points" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _attributes_read() -> set[str]:
    """Every attribute name read anywhere in apis/ outside the config modules."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("config.py", "config_versions.py", "config_use.py"):
            continue
        names |= {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}
    return names


def test_every_key_is_read_by_a_command():
    """A key no code outside the config modules reads changes nothing: it would be validated, compared on resume,
    and ignored. The phase sections are read whole, as overrides of loss.* (apis.loop.schedule)."""
    read = _attributes_read()
    phases = {f"loop.{section}.{field.name}" for section in ("m0", "finetune")
              for field in dataclasses.fields(getattr(ExperimentConfig().loop, section))}
    unread = [key for key in flat_config(ExperimentConfig()) if key not in phases
              and key.rpartition(".")[2] not in read]
    assert unread == []
    loss_keys = {field.name for field in dataclasses.fields(LossConfig)}
    assert {key.rpartition(".")[2] for key in phases} <= loss_keys  # each overrides a loss key of its name
