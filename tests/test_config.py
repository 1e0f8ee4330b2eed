"""Typed configs: YAML + overrides, and errors that name the key and the allowed values."""

import pytest

from apis.config import ConfigError, ExperimentConfig, dump_config, load_config, parse_overrides


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nsolver:\n  max_iter: 10\nmodel:\n  size_ranges: [0, 8, .inf]\n")
    cfg = load_config(path, ["solver.base_lr=1", "selection.sets=[anchors,scales]", "model.depth=18"])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.solver.max_iter == 10 and cfg.solver.base_lr == 1.0 and isinstance(cfg.solver.base_lr, float)
    assert cfg.selection.sets == ["anchors", "scales"] and cfg.model.depth == 18
    assert cfg.model.size_ranges == [0.0, 8.0, float("inf")]


def test_base_chain_and_dump_round_trip(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 3\nsolver:\n  max_iter: 7\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nsolver:\n  batch_size: 2\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.seed, cfg.solver.max_iter, cfg.solver.batch_size) == (3, 7, 2)
    dump_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize("overrides, message", [
    (["solver.max_itr=3"], "unknown config key 'solver.max_itr'; allowed keys here: .*max_iter"),
    (["model.depth=20"], "'model.depth' is 20; allowed values: 18, 34, 50, 101"),
    (["selection.sets=[anchors,pixels]"], "'selection.sets' is 'pixels'; allowed values: anchors, models, scales"),
    (["solver.batch_size=abc"], "'solver.batch_size' expects int, got 'abc'"),
    (["device=tpu"], "'device' is 'tpu'"),
    (["model.dynamic_activation=gelu"], "'model.dynamic_activation' is 'gelu'; allowed values: relu, leaky_relu"),
    (["loss.point_negative_weight=0"], "'loss.point_positive_weight', 'loss.point_negative_weight' must be > 0"),
    (["solver"], "must look like key=value"),
])
def test_errors_name_key_and_allowed_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_parse_overrides_yaml_values():
    assert parse_overrides(["a.b=true", "c=[1, 2]", "d=0.5"]) == {"a": {"b": True}, "c": [1, 2], "d": 0.5}
