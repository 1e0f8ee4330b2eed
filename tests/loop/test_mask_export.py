"""`apis export-masks` on tiny finished runs: a mask per training instance, inside its box, agreeing with every
answered point, drawn masks as given; the file loads in pycocotools and trains `apis train` with full masks."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from apis.cli import main
from apis.config import RefinementConfig
from apis.data.coords import box_pixel_range
from apis.data.ledger import PointLedger
from apis.loop.mask_export import export_run_masks, masks_to_coco, open_run_step
from apis.loop.mask_quality import iou, score_training_masks, spearman, summarise_quality
from apis.loop.run import run_active_loop
from apis.loop.run_dir import RunDirectoryError


def _decode(ann, image):
    return mask_utils.decode({"size": ann["segmentation"]["size"],
                              "counts": ann["segmentation"]["counts"].encode()}).astype(bool)


def test_export_gives_every_instance_a_mask_inside_its_box_that_honours_its_points(finished_runs, tmp_path, capsys):
    cfg, _ = finished_runs["entropy"]
    out = tmp_path / "masks.json"
    main(["export-masks", str(cfg.output_dir), "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.startswith("step 2: ") and f"wrote {out}" in printed

    coco = COCO(str(out))  # pycocotools reads it
    given = json.loads(open(cfg.data.train_json).read())
    assert [a["id"] for a in coco.dataset["annotations"]] == [a["id"] for a in given["annotations"]]
    assert coco.dataset["categories"] == given["categories"]
    with PointLedger(cfg.output_dir + "/ledger.sqlite", read_only=True) as ledger:
        points = ledger.points(max_step=2)
    assert points  # the run answered points: the check below is not empty
    checked = 0
    for ann, original in zip(coco.dataset["annotations"], given["annotations"]):
        image = coco.imgs[ann["image_id"]]
        mask = _decode(ann, image)
        assert ann["bbox"] == original["bbox"] and ann["category_id"] == original["category_id"]
        assert ann["apis_source"] in ("predicted", "box") and ann["area"] == int(mask.sum())
        xs, ys, xe, ye = box_pixel_range(ann["bbox"][0], ann["bbox"][1], ann["bbox"][0] + ann["bbox"][2],
                                         ann["bbox"][1] + ann["bbox"][3], image["width"], image["height"])
        outside = mask.copy()
        outside[ys:ye, xs:xe] = False
        assert not outside.any()
        known = points.get(ann["id"])
        answered = 0 if known is None else int((known.labels >= 0).sum())
        assert ann["apis_points"] == answered and 0 <= ann["apis_points_contradicted"] <= answered
        assert 0.0 <= ann["apis_quality"] <= 1.0
        for (x, y), label in zip(known.coords.tolist() if known else [], known.labels.tolist() if known else []):
            if label >= 0:
                assert mask[y, x] == bool(label)
                checked += 1
    assert checked == sum(int((p.labels >= 0).sum()) for p in points.values())


def test_the_unconstrained_export_is_the_models_mask_and_contradictions_are_counted(finished_runs):
    cfg, _ = finished_runs["entropy"]
    run = open_run_step(cfg.output_dir, 1)
    local = export_run_masks(run, "local", progress=False)
    raw = export_run_masks(run, "none", progress=False)
    assert [e.ann_id for e in local] == [e.ann_id for e in raw]
    for constrained, model in zip(local, raw):
        assert constrained.contradicted == model.contradicted
        if model.contradicted == 0:
            assert np.array_equal(constrained.mask, model.mask)


def test_a_refined_export_changes_the_masks_and_still_honours_every_point(finished_runs, tmp_path, capsys):
    cfg, _ = finished_runs["entropy"]
    run = open_run_step(cfg.output_dir, 1)
    on = dataclasses.replace(run.cfg.model, refinement=RefinementConfig(method="colour_crf"))
    refined = export_run_masks(dataclasses.replace(run, cfg=dataclasses.replace(run.cfg, model=on)), "local",
                               progress=False)
    plain = export_run_masks(run, "local", progress=False)
    assert [e.ann_id for e in refined] == [e.ann_id for e in plain]
    predicted = [(a, b) for a, b in zip(refined, plain) if a.source == "predicted"]
    assert predicted and any(not np.array_equal(a.mask, b.mask) for a, b in predicted)
    # The same masks from the command line, on the run as it is (its config has refinement off).
    main(["export-masks", str(cfg.output_dir), "--step", "1", "--out", str(tmp_path / "refined.json"),
          "--refinement", "colour_crf"])
    written = COCO(str(tmp_path / "refined.json"))
    for exported in refined:
        image = written.imgs[written.anns[exported.ann_id]["image_id"]]
        full = _decode(written.anns[exported.ann_id], image)
        xs, ys = exported.origin
        assert full.sum() == exported.mask.sum()
        assert np.array_equal(full[ys:ys + exported.mask.shape[0], xs:xs + exported.mask.shape[1]], exported.mask)
    for exported in refined:
        known = run.points.get(exported.ann_id)
        for (x, y), label in zip(known.coords.tolist() if known else [], known.labels.tolist() if known else []):
            if label >= 0:
                xs, ys = exported.origin
                assert exported.mask[y - ys, x - xs] == bool(label)


def test_bought_masks_are_kept_byte_identical(synth_dir, tiny_overrides, tmp_path):
    from apis.config_loading import load_config

    # 10 s a point buys AFIS two 79.2 s masks of the 21 instances at step 0.
    cfg = load_config(None, tiny_overrides(synth_dir, tmp_path / "afis", "loop.steps=0", "afis.level=instance",
                                           "loss.full=1", "oracle.point_cost_s=10"))
    run_active_loop(cfg)
    run = open_run_step(cfg.output_dir)
    assert len(run.drawn) == 2
    coco = masks_to_coco(run.train_set, export_run_masks(run, progress=False))
    given = {a["id"]: a for a in json.loads(open(cfg.data.train_json).read())["annotations"]}
    drawn = [a for a in coco["annotations"] if a["apis_source"] == "drawn"]
    assert {a["id"] for a in drawn} == run.drawn
    for ann in drawn:
        assert json.dumps(ann["segmentation"]) == json.dumps(given[ann["id"]]["segmentation"])
        assert ann["apis_quality"] == 1.0
    assert all(a["apis_source"] != "drawn" for a in coco["annotations"] if a["id"] not in run.drawn)
    # Scored against the GT, a drawn mask is exact.
    rows = score_training_masks(run)
    assert all(r.iou["local"] == 1.0 for r in rows if r.source == "drawn")


def test_the_exported_file_trains_apis_train_with_full_masks(finished_runs, tiny_overrides, synth_dir, tmp_path,
                                                          capsys):
    from apis.config_loading import dump_config, load_config

    cfg, _ = finished_runs["entropy"]
    out = tmp_path / "masks.json"
    main(["export-masks", str(cfg.output_dir), "--out", str(out), "--step", "0"])
    overrides = tiny_overrides(synth_dir, tmp_path / "trained", f"data.train_json={out}",
                               f"data.image_root={synth_dir / 'images'}", "loss.full=1", "loss.points=0",
                               "solver.max_iter=2")
    config = tmp_path / "from_masks.yaml"
    dump_config(load_config(None, overrides), config)
    main(["train", str(config)])
    assert (tmp_path / "trained" / "model_final.pth").exists()
    assert "final checkpoint" in capsys.readouterr().out


def test_export_to_label_studio_matches_its_own_brush_decoder(finished_runs, tmp_path, capsys):
    import xml.etree.ElementTree as ET

    from label_studio_sdk.converter.brush import decode_rle

    cfg, _ = finished_runs["entropy"]
    coco_out, ls_out = tmp_path / "masks.json", tmp_path / "tasks.json"
    main(["export-masks", str(cfg.output_dir), "--out", str(coco_out)])
    main(["export-masks", str(cfg.output_dir), "--out", str(ls_out), "--format", "label-studio"])
    assert "Label Studio tasks" in capsys.readouterr().out
    coco = json.loads(coco_out.read_text())
    tasks = json.loads(ls_out.read_text())
    config = ET.fromstring((tmp_path / "tasks.label_config.xml").read_text())
    names = [label.get("value") for label in config.iter("Label")]
    assert names == [c["name"] for c in coco["categories"]]
    images = {im["id"]: im for im in coco["images"]}
    by_id = {a["id"]: a for a in coco["annotations"]}
    assert [t["data"]["apis_image_id"] for t in tasks] == [im["id"] for im in coco["images"]]
    regions = 0
    for task in tasks:
        image = images[task["data"]["apis_image_id"]]
        assert task["data"]["image"].endswith(image["file_name"])
        for region in task["predictions"][0]["result"]:
            ann = by_id[int(region["id"][3:])]
            assert region["type"] == "brushlabels" and region["from_name"] == "mask"
            assert (region["original_width"], region["original_height"]) == (image["width"], image["height"])
            # Label Studio's decoder gives RGBA bytes, row-major: the alpha channel is the mask.
            decoded = decode_rle(region["value"]["rle"]).reshape(image["height"], image["width"], 4)[:, :, 3] > 0
            assert np.array_equal(decoded, _decode(ann, image))
            assert region["value"]["brushlabels"] == [names[ann["category_id"] - 1]]
            assert region["score"] == ann["apis_quality"]
            regions += 1
    assert regions == len(coco["annotations"])


def test_export_refuses_an_unfinished_step_and_a_folder_that_is_no_run(finished_runs, tmp_path, capsys):
    cfg, _ = finished_runs["entropy"]
    with pytest.raises(RunDirectoryError, match="step 7 is not finished; finished steps: 0, 1, 2"):
        open_run_step(cfg.output_dir, 7)
    with pytest.raises(SystemExit) as exit_info:
        main(["export-masks", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2 and "no config.yaml" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_export_does_not_write_into_the_run_directory(finished_runs, tmp_path):
    cfg, _ = finished_runs["random"]
    def files():
        return {p: p.stat().st_mtime_ns for p in Path(cfg.output_dir).rglob("*")}

    before = files()
    main(["export-masks", str(cfg.output_dir), "--out", str(tmp_path / "m.json")])
    after = files()
    assert before == after


def test_quality_summary_by_hand():
    assert iou(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == pytest.approx(1 / 3)
    assert iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_quality_scores_the_box_fill_as_the_gt_says(finished_runs):
    cfg, _ = finished_runs["entropy"]
    run = open_run_step(cfg.output_dir, 2)
    rows = score_training_masks(run, ("local", "none"))
    gt = run.train_set.masks("evaluation")
    for row in rows:
        inst = run.train_set.instance(row.ann_id)
        image = run.train_set.image(inst.image_id)
        xs, ys, xe, ye = box_pixel_range(*inst.bbox_xyxy, image.width, image.height)
        mask = gt.mask(row.ann_id)
        assert row.box_fill_iou == pytest.approx(mask[ys:ye, xs:xe].sum() / ((xe - xs) * (ye - ys) + mask.sum()
                                                                            - mask[ys:ye, xs:xe].sum()))
    summary = summarise_quality(rows)
    assert summary["instances"] == len(rows) == sum(1 for _ in run.train_set.instances())
    assert summary["box_fill_mIoU"] == pytest.approx(np.mean([r.box_fill_iou for r in rows]))
