"""Typed configs: YAML + overrides, and errors that name the key and the allowed values."""

import pytest

from apis.config import ConfigError, ExperimentConfig
from apis.config_loading import absolute_paths, dump_config, load_config, parse_overrides


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nsolver:\n  max_iter: 10\nmodel:\n  size_ranges: [0, 8, 16, 32, 64, .inf]\n")
    cfg = load_config(path, ["solver.base_lr=1", "selection.sets=[anchors,scales]", "model.depth=18"])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.solver.max_iter == 10 and cfg.solver.base_lr == 1.0 and isinstance(cfg.solver.base_lr, float)
    assert cfg.selection.sets == ["anchors", "scales"] and cfg.model.depth == 18
    assert cfg.model.size_ranges == [0.0, 8.0, 16.0, 32.0, 64.0, float("inf")]


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
    (["selection.sets=[anchors,pixels]"],
     r"'selection.sets\[1\]' is 'pixels'; allowed values: anchors, models, scales"),
    (["model.depth=50.0"], "'model.depth' is 50.0; allowed values: 18, 34, 50, 101"),
    (["loop.init=true"], "'loop.init' is True; allowed values: points, boxinst"),
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


def test_a_key_given_twice_is_refused_whichever_values():
    with pytest.raises(ConfigError, match=r"'solver.max_iter' is given twice \('solver.max_iter=5', then "
                                          r"' solver.max_iter =5'\); give it once"):
        load_config(None, ["solver.max_iter=5", "loop.steps=1", " solver.max_iter =5"])
    with pytest.raises(ConfigError, match="'data.num_workers' is given twice"):
        load_config(None, ["data.num_workers=2", "data.num_workers=0"])
    assert load_config(None, ["solver.max_iter=5", "solver.base_lr=0.5"]).solver.max_iter == 5


@pytest.mark.parametrize(("override", "message"), [
    ("loop.finetune_iters=0", "'loop.finetune_iters' is 0; it must be >= 1"),
    ("loop.steps=-1", "'loop.steps' is -1; it must be >= 0"),
    ("solver.base_lr=-1", r"'solver.base_lr' is -1.0; it must be >= 0.0"),
    ("loop.finetune_lr=-0.5", r"'loop.finetune_lr' is -0.5; it must be >= 0.0"),
    ("solver.gamma=0", r"'solver.gamma' is 0.0; it must be > 0.0"),
    ("oracle.flip_prob=1.5", r"'oracle.flip_prob' is 1.5; it must be >= 0.0 and <= 1.0"),
    ("loop.finetune_steps=[20,10]", "'loop.finetune_steps' must be increasing"),
    ("loss.full_bce=1.0", "'loss.full_bce' is 1.0: it adds to the full-mask loss, which is off"),
    ("model.mask_feature_stride=2", "'model.mask_feature_stride' is 2; allowed values: 8, 4"),
])
def test_schedule_values_are_checked_at_load_naming_the_key(override, message):
    """Issue 13, case 8: finetune_iters=0 failed after M0 naming solver.max_iter; steps=-1 exited 0 doing
    nothing; a negative learning rate was a torch ValueError without the key."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_base_chain_that_comes_back_is_refused(tmp_path):
    """Issue 13, case 8: a YAML whose ``_base_`` is itself recursed until RecursionError."""
    (tmp_path / "self.yaml").write_text("_base_: self.yaml\nseed: 1\n")
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="self.yaml: its _base_ chain comes back to it"):
        load_config(tmp_path / "self.yaml")
    with pytest.raises(ConfigError, match=r"a.yaml: its _base_ chain comes back to it \(.*a.yaml -> .*b.yaml\)"):
        load_config(tmp_path / "a.yaml")


def test_absolute_paths_resolves_relative_paths_and_leaves_names(tmp_path):
    cfg = load_config(None, ["data.train_json=a/train.json", "data.image_root=../images", "data.val_json=/v.json",
                             "model.backbone_weights=synth-source-r18", "loop.initial_run=runs/p0"])
    resolved = absolute_paths(cfg, tmp_path / "here")
    assert resolved.data.train_json == str(tmp_path / "here" / "a" / "train.json")
    assert resolved.data.image_root == str(tmp_path / "images")
    assert resolved.data.val_json == "/v.json" and resolved.data.train_points == ""
    assert resolved.model.backbone_weights == "synth-source-r18"  # a bundled name, not a path
    assert resolved.loop.initial_run == str(tmp_path / "here" / "runs" / "p0")
    weights = absolute_paths(load_config(None, ["model.backbone_weights=w/r18.pth"]), tmp_path)
    assert weights.model.backbone_weights == str(tmp_path / "w" / "r18.pth")
