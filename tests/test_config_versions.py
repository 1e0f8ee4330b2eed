"""Config versions: a stored config reads as it behaved when written, and no key is added without a migration."""

from pathlib import Path

import pytest
import yaml

from apis.config import ConfigError, ExperimentConfig, flat_config
from apis.config_loading import check_same_config, dump_config, load_config, load_run_config, migrate
from apis.config_versions import CONFIG_VERSION, MIGRATIONS, RENAMED

FIXTURES = Path(__file__).parent / "fixtures"


def flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys |= flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def test_a_written_config_of_every_version_is_kept():
    for version in range(1, CONFIG_VERSION + 1):
        assert (FIXTURES / f"config_v{version}.yaml").is_file(), (
            f"save the config.yaml this APIS writes (dump_config(ExperimentConfig())) as "
            f"tests/fixtures/config_v{version}.yaml")


@pytest.mark.parametrize("version", range(1, CONFIG_VERSION + 1))
def test_every_key_is_in_the_written_config_or_added_by_a_migration(version):
    written = yaml.safe_load((FIXTURES / f"config_v{version}.yaml").read_text())
    assert written.get("config_version", 1) == version
    renamed = {old: new for step in range(version, CONFIG_VERSION) for old, new in RENAMED.get(step, {}).items()}
    keys = {renamed.get(key, key) for key in flat_keys(written) - {"config_version"}}
    added = {key for step in range(version, CONFIG_VERSION) for key in MIGRATIONS[step]}
    current = set(flat_config(ExperimentConfig()))
    assert not current - keys - added, (
        f"keys added after config_version {version} without a migration: {sorted(current - keys - added)}; "
        f"add them to apis/config_versions.py with the value each had before it existed")
    assert not keys - current, f"keys removed without a migration: {sorted(keys - current)}"


def test_a_run_config_without_version_reads_with_the_values_before_the_keys_existed(tmp_path):
    old = load_run_config(FIXTURES / "config_v1.yaml")
    assert (old.model.dynamic_init, old.model.dynamic_activation) == ("zeros", "relu")
    assert (old.loss.point_positive_weight, old.loss.point_negative_weight) == (1.0, 1.0)
    assert old.loop.point_prior_correction is False
    # A config file a person writes is read as written for this APIS: missing keys take today's defaults, and a
    # key of an older name is refused, naming its name now.
    written = yaml.safe_load((FIXTURES / "config_v1.yaml").read_text())
    del written["loop"]["points_loss_m0"], written["loop"]["points_loss_finetune"]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(written))
    assert load_config(tmp_path / "mine.yaml").model.dynamic_init == "fan_in"
    with pytest.raises(ConfigError, match="'loop.points_loss_m0' is now 'loop.m0.points'"):
        load_config(FIXTURES / "config_v1.yaml")
    assert load_run_config(FIXTURES / f"config_v{CONFIG_VERSION}.yaml") == ExperimentConfig()


def test_migrate_fills_only_missing_keys_and_leaves_its_input_alone():
    values = {"model": {"dynamic_init": "fan_in"}, "seed": 3}
    migrated = migrate(values, 1)
    # dynamic_init was given (kept), dynamic_activation missing (filled); later versions add keys of their own.
    assert migrated["model"]["dynamic_init"] == "fan_in" and migrated["model"]["dynamic_activation"] == "relu"
    assert migrated["loop"]["point_prior_correction"] is False and migrated["loop"]["init"] == "points"
    assert migrated["seed"] == 3
    assert values == {"model": {"dynamic_init": "fan_in"}, "seed": 3}
    assert migrate(values, CONFIG_VERSION) == values


@pytest.mark.parametrize("version", [CONFIG_VERSION + 1, 0, "2", True])
def test_an_unknown_version_is_refused_naming_the_file(tmp_path, version):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"config_version": version, "seed": 1}))
    with pytest.raises(ConfigError, match=f"{path}: config_version .* is not one this APIS reads"):
        load_run_config(path)


def test_dump_writes_the_version_and_reads_back(tmp_path):
    cfg = load_config(None, ["seed=4", "model.dynamic_init=zeros"])
    dump_config(cfg, tmp_path / "config.yaml")
    assert (tmp_path / "config.yaml").read_text().startswith(f"config_version: {CONFIG_VERSION}\n")
    assert load_run_config(tmp_path / "config.yaml") == load_config(tmp_path / "config.yaml") == cfg


def test_check_same_config_names_each_changed_key_with_both_values(tmp_path):
    stored = tmp_path / "config.yaml"
    check_same_config(stored, ExperimentConfig())  # nothing stored yet: nothing to compare
    dump_config(load_config(None, ["seed=1", "solver.base_lr=0.02"]), stored)
    check_same_config(stored, load_config(None, ["seed=1", "solver.base_lr=0.02", "output_dir=elsewhere",
                                                 "loop.steps=9", "device=cpu", "data.num_workers=0"]))
    with pytest.raises(ConfigError, match=r"different config \(seed: 1 -> 2; solver.base_lr: 0.02 -> 0.01\)"):
        check_same_config(stored, load_config(None, ["seed=2"]))
    check_same_config(stored, load_config(None, ["seed=2"]), may_change={"seed", "solver.base_lr"})


def test_a_renamed_key_reads_under_its_new_name_and_its_old_name_is_told_the_new_one(tmp_path):
    """Version 7 set the loop's point-loss weights as loop.points_loss_m0 / loop.points_loss_finetune; a run of then
    resumes with them as loop.m0.points / loop.finetune.points, and fine-tuning's pairwise warm-up at 0 as it was."""
    written = yaml.safe_load((FIXTURES / "config_v7.yaml").read_text())
    written["loop"].update(points_loss_m0=0.3, points_loss_finetune=0.7)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(written))
    old = load_run_config(tmp_path / "config.yaml")
    assert (old.loop.m0.points, old.loop.finetune.points, old.loop.finetune.pairwise_warmup_iters) == (0.3, 0.7, 0)
    assert written["loop"]["points_loss_m0"] == 0.3  # the caller's dict is left alone
    with pytest.raises(ConfigError, match="config key 'loop.points_loss_m0' is now 'loop.m0.points'"):
        load_config(None, ["loop.points_loss_m0=0.2"])
