import copy
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from apis.config import to_dict
from apis.data.coco import load_coco
from apis.data.coords import box_pixel_range
from apis.engine.checkpoint import CheckpointError, save_checkpoint
from apis.engine.distributed import DistributedContext, in_dataset_order, shard_images
from apis.engine.inference import evaluate_checkpoint, ground_truth_of, load_model, run_inference
from apis.evaluation.coco_eval import evaluate
from apis.evaluation.results import load_results
from apis.modeling.condinst import CondInst


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory, tiny_config):
    """A checkpoint of a freshly initialised tiny model that keeps every candidate (threshold 0), written once."""
    out = tmp_path_factory.mktemp("untrained")
    cfg = tiny_config(out, "model.score_threshold=0.0", "model.detections_per_image=5")
    torch.manual_seed(0)
    model = CondInst.from_config(cfg.model, cfg.loss)
    path = save_checkpoint(out / "model_final.pth", {"model": model.state_dict(), "iteration": 0,
                                                     "config": to_dict(cfg)})
    return cfg, path


@pytest.fixture
def untrained(untrained_checkpoint):
    """``(config, checkpoint)``; the config is each test's own copy, to change at will."""
    cfg, path = untrained_checkpoint
    return copy.deepcopy(cfg), path


def test_results_are_in_original_coordinates_with_coco_category_ids(untrained, synth_dir):
    cfg, path = untrained
    # Test-time resizing to twice the stored size: results must still be at stored resolution.
    cfg.data.min_size_test, cfg.data.max_size = 128, 256
    coco = load_coco(synth_dir / "annotations" / "val.json")
    model = load_model(path, cfg, torch.device("cpu"))
    model.train()
    results = run_inference(model, coco, cfg, torch.device("cpu"), batch_size=2, progress=False)
    assert model.training  # the caller's mode is restored
    sizes = {r.image_id: (r.height, r.width) for r in coco.images}
    assert {r["image_id"] for r in results} == set(sizes)
    assert len(results) == 5 * len(sizes)
    for entry in results:
        assert entry["category_id"] in {1, 2, 3, 4}  # COCO ids, not contiguous labels 0..3
        height, width = sizes[entry["image_id"]]
        assert entry["segmentation"]["size"] == [height, width]
        x, y, w, h = entry["bbox"]
        assert 0 <= x <= x + w <= width and 0 <= y <= y + h <= height
        mask = mask_utils.decode(entry["segmentation"]).astype(bool)
        ys, xs = np.nonzero(mask)
        if len(xs):  # masks are cleared outside their box's candidate pixels
            x0, y0, x1, y1 = box_pixel_range(x, y, x + w, y + h, width, height)
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1


def test_evaluate_checkpoint_writes_results_and_returns_ap(untrained, tmp_path, synth_dir):
    cfg, path = untrained
    results_path = tmp_path / "val_results.json"
    metrics = evaluate_checkpoint(path, None, results_path=results_path)  # config from the checkpoint
    assert {"segm/AP", "segm/AP50", "bbox/AP", "bbox/AP50"} <= metrics.keys()
    expected = evaluate(str(synth_dir / "annotations" / "val.json"), str(results_path))
    assert metrics.keys() == expected.keys()
    assert all(a == b or (np.isnan(a) and np.isnan(b)) for a, b in zip(metrics.values(), expected.values()))
    val_ids = {im["id"] for im in json.loads((synth_dir / "annotations" / "val.json").read_text())["images"]}
    assert {entry["image_id"] for entry in load_results(results_path)} == val_ids


def test_max_val_images_evaluates_a_subset(untrained, tmp_path, synth_dir):
    cfg, path = untrained
    cfg.data.max_val_images = 1
    results_path = tmp_path / "subset.json"
    evaluate_checkpoint(path, cfg, gt_json=str(synth_dir / "annotations" / "val.json"), results_path=results_path)
    first = load_coco(synth_dir / "annotations" / "val.json").images[0].image_id
    assert {entry["image_id"] for entry in load_results(results_path)} == {first}
    gt = ground_truth_of(load_coco(synth_dir / "annotations" / "val.json").subset(1))
    assert [im["id"] for im in gt["images"]] == [first]
    assert gt["annotations"] and all(a["image_id"] == first for a in gt["annotations"])


def test_a_checkpoint_of_another_model_is_refused(untrained):
    cfg, path = untrained
    cfg.model.num_classes = 7
    with pytest.raises(CheckpointError, match="different shape.*num_classes"):
        load_model(path, cfg, torch.device("cpu"))


def test_shards_of_the_images_give_the_results_of_one_pass(untrained, synth_dir):
    """What each rank predicts on its shard, put back in dataset order, is the single-process result list."""
    cfg, path = untrained
    coco = load_coco(synth_dir / "annotations" / "train.json")
    model = load_model(path, cfg, torch.device("cpu"))
    whole = run_inference(model, coco, cfg, torch.device("cpu"), progress=False)
    ids = [record.image_id for record in coco.images]
    shards = [run_inference(model, coco.only_images(shard_images(ids, DistributedContext(rank, 2))), cfg,
                            torch.device("cpu"), progress=False) for rank in (0, 1)]
    assert shards[0] and shards[1]
    assert in_dataset_order(shards, ids, lambda result: result["image_id"]) == whole
    assert shards[0] + shards[1] != whole  # the shards interleave: the order had to be restored
