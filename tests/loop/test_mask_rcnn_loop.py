"""Mask R-CNN (``model.arch=mask_rcnn``) through the same CLI, trainer, evaluation and loop as CondInst."""

import json
from pathlib import Path

from apis.cli import main
from apis.config_loading import dump_config
from apis.data.coco import load_coco
from apis.data.coords import point_in_box
from apis.engine.checkpoint import load_checkpoint
from apis.evaluation.coco_eval import evaluate


def test_apis_train_and_eval_a_mask_rcnn(tiny_config, tmp_path, synth_dir):
    cfg = tiny_config("train", "model.arch=mask_rcnn", "data.random_points_per_instance=2",
                      "model.detections_per_image=5", "model.score_threshold=0.0")
    dump_config(cfg, tmp_path / "mask_rcnn.yaml")
    main(["train", str(tmp_path / "mask_rcnn.yaml")])
    final = Path(cfg.output_dir) / "model_final.pth"
    state = load_checkpoint(final)
    assert state["config"]["model"]["arch"] == "mask_rcnn"
    assert any(key.startswith("mask_predictor.") for key in state["model"])
    records = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_rpn_obj", "loss_rcnn_cls", "loss_mask_points", "point_acc"} <= set(records[-1])
    main(["eval", "--checkpoint", str(final), "--results", str(tmp_path / "r.json"), "--out", str(tmp_path / "m.json")])
    metrics = json.loads((tmp_path / "m.json").read_text())
    val = synth_dir / "annotations" / "val.json"
    results = json.loads((tmp_path / "r.json").read_text())
    sizes = {im["id"]: [im["height"], im["width"]] for im in json.loads(val.read_text())["images"]}
    assert results and all(r["segmentation"]["size"] == sizes[r["image_id"]] for r in results)  # original frame
    assert metrics["segm/AP"] == evaluate(str(val), str(tmp_path / "r.json"))["segm/AP"]


def test_one_loop_step_selects_a_point_per_instance_from_mask_rcnn_proposals(tiny_config):
    cfg = tiny_config("loop", "model.arch=mask_rcnn", "loop.steps=1")
    from apis.loop.run import run_active_loop

    rows = run_active_loop(cfg)
    assert [r["step"] for r in rows] == [0, 1] and rows[1]["points_per_instance"] == 2.0
    selection = json.loads((Path(cfg.output_dir) / "step_001" / "selection.json").read_text())
    train = load_coco(cfg.data.train_json)
    assert sorted(p["ann_id"] for p in selection["points"]) == sorted(i.ann_id for i in train.instances())
    assert selection["metric"] == "entropy"
    for point in selection["points"]:
        inst = train.instance(point["ann_id"])
        image = train.image(inst.image_id)
        assert point_in_box(point["x"], point["y"], *inst.bbox_xyxy, image.width, image.height)
