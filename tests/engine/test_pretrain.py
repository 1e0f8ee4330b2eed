"""apis pretrain: full-mask training on source data, a backbone file that model.backbone_weights loads."""

import json

import torch

from apis.engine.checkpoint import load_checkpoint
from apis.engine.pretrain import export_backbone, full_mask_config, pretrain
from apis.engine.trainer import train
from apis.modeling.backbone import build_backbone
from apis.modeling.condinst import CondInst


def test_pretrain_writes_a_backbone_that_a_target_model_starts_from(tmp_path, tiny_config):
    source = tiny_config(tmp_path / "source_run", "solver.max_iter=2", "loss.points=1.0", "loss.box=1.0")
    out = pretrain(source, tmp_path / "backbone.pth")
    record = json.loads((tmp_path / "backbone.pth.json").read_text())
    # Trained with full masks only, whatever the config's mask losses were.
    assert (record["config"]["loss"]["full"], record["config"]["loss"]["points"], record["config"]["loss"]["box"]) \
        == (1.0, 0.0, 0.0)
    assert record["source_val_mask_AP"] is not None
    trained = load_checkpoint(tmp_path / "source_run" / "model_final.pth")["model"]

    target = tiny_config(tmp_path / "target_run", f"model.backbone_weights={out}")
    model = CondInst.from_config(target.model, target.loss)
    # The target model's backbone and FPN are the source model's, its heads are new.
    assert torch.equal(model.backbone.layer4[1].conv2.weight, trained["backbone.layer4.1.conv2.weight"])
    assert torch.equal(model.backbone.stem[1].running_mean, trained["backbone.stem.1.running_mean"])
    assert torch.equal(model.backbone.fpn.layer_blocks[0][0].weight, trained["backbone.fpn.layer_blocks.0.0.weight"])
    assert not model.backbone.layer1[0].conv1.weight.requires_grad  # frozen as with ImageNet weights


def test_half_export_halves_the_tensors_and_loads_as_float32(tmp_path, tiny_config):
    cfg = full_mask_config(tiny_config(tmp_path / "run", "solver.max_iter=1"))
    checkpoint = train(cfg)
    full, half = export_backbone(checkpoint, cfg, tmp_path / "full.pth"), export_backbone(
        checkpoint, cfg, tmp_path / "half.pth", half=True)
    stored = torch.load(half, weights_only=True)
    assert stored["layer2.0.conv1.weight"].dtype == torch.float16
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = build_backbone(18, "bn", str(half), cfg.model.fpn_channels)
    assert loaded.layer2[0].conv1.weight.dtype == torch.float32
    assert torch.equal(loaded.layer2[0].conv1.weight, stored["layer2.0.conv1.weight"].float())
