"""`apis predict` and the Predictor: a checkpoint on image files without annotations."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from apis.cli import main
from apis.engine.checkpoint import load_checkpoint, save_checkpoint
from apis.engine.predictor import (
    ImageFailure,
    ImagePrediction,
    PredictInputError,
    Predictor,
    image_files,
    predictions_to_coco,
)
from apis.modeling.postprocess import Detections


@pytest.fixture(scope="module")
def checkpoint(finished_runs):
    cfg, _ = finished_runs["entropy"]
    return f"{cfg.output_dir}/step_002/train/model_final.pth"


@pytest.fixture
def image_folder(synth_dir, tmp_path):
    """A folder with a PNG, a grey PNG, an RGBA PNG, a JPEG and a cut-off PNG."""
    folder = tmp_path / "new"
    folder.mkdir()
    source = synth_dir / "images" / "synth_00001.png"
    shutil.copy(source, folder / "a_colour.png")
    with Image.open(source) as image:
        image.convert("L").save(folder / "b_grey.png")
        image.convert("RGBA").save(folder / "c_rgba.png")
        image.convert("RGB").save(folder / "d_photo.jpg")
    (folder / "e_broken.png").write_bytes(source.read_bytes()[:300])
    (folder / "notes.txt").write_text("not an image")
    return folder


class FixedModel(torch.nn.Module):
    """Two detections at known places whatever the image: a 4x4 square of class 1 (score 0.9) and a 2x2 of
    class 0 (score 0.2); records the batches it sees."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def predict(self, images, image_sizes, original_sizes):
        self.batches.append(images.shape[0])
        found = []
        for height, width in original_sizes:
            masks = torch.zeros(2, height, width, dtype=torch.bool)
            masks[0, 2:6, 3:7] = True
            masks[1, 0:2, 0:2] = True
            found.append(Detections(boxes=torch.tensor([[3.0, 2.0, 7.0, 6.0], [0.0, 0.0, 2.0, 2.0]]),
                                    scores=torch.tensor([0.9, 0.2]), labels=torch.tensor([1, 0]), masks=masks))
        return found


def test_predict_writes_results_for_readable_images_and_names_the_broken_one(checkpoint, image_folder, tmp_path,
                                                                             capsys):
    out, vis = tmp_path / "pred.json", tmp_path / "vis"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", checkpoint, str(image_folder), "--out", str(out), "--vis", str(vis),
              "--score-threshold", "0", "--device", "cpu"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"error: {image_folder / 'e_broken.png'}: not a readable image" in captured.err
    assert f"1 image(s) could not be predicted: {image_folder / 'e_broken.png'}" in captured.err
    coco = COCO(str(out))
    names = [im["file_name"] for im in coco.dataset["images"]]
    assert names == [str(image_folder / n) for n in ("a_colour.png", "b_grey.png", "c_rgba.png", "d_photo.jpg")]
    assert all((im["height"], im["width"]) == (64, 64) for im in coco.dataset["images"])
    assert [c["name"] for c in coco.dataset["categories"]] == ["blob", "ring", "crescent", "cross"]
    assert sorted(p.name for p in vis.iterdir()) == ["00001_a_colour.png", "00002_b_grey.png", "00003_c_rgba.png",
                                                    "00004_d_photo.png"]


def test_predictor_batches_filters_and_writes_coco(checkpoint, image_folder):
    predictor = Predictor(checkpoint, device="cpu", score_threshold=0.5, batch_size=3)
    predictor.model = FixedModel()
    found = list(predictor.predict_files([image_folder / "*.png", image_folder / "d_photo.jpg"], progress=False))
    assert [type(f) for f in found] == [ImagePrediction] * 3 + [ImageFailure, ImagePrediction]
    assert predictor.model.batches == [3, 1]  # the broken file left its batch one image short
    first = found[0]
    assert first.masks.shape == (1, 64, 64) and first.scores.tolist() == pytest.approx([0.9])
    assert first.labels.tolist() == [1] and first.boxes.tolist() == [[3.0, 2.0, 7.0, 6.0]]

    coco = predictions_to_coco([f for f in found if isinstance(f, ImagePrediction)], predictor.categories)
    ann = coco["annotations"][0]
    assert ann["category_id"] == predictor.categories[1]["id"] and ann["bbox"] == [3.0, 2.0, 4.0, 4.0]
    assert ann["area"] == 16 and ann["score"] == pytest.approx(0.9)
    decoded = mask_utils.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()})
    assert decoded[2:6, 3:7].all() and decoded.sum() == 16
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 4]


def test_an_older_checkpoint_without_categories_reads_them_from_its_training_set(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    del state["categories"]
    older = save_checkpoint(tmp_path / "old.pth", state)
    assert [c["name"] for c in Predictor(older, device="cpu").categories] == ["blob", "ring", "crescent", "cross"]
    state["config"]["data"]["train_json"] = str(tmp_path / "gone.json")
    save_checkpoint(older, state)
    assert [c["name"] for c in Predictor(older, device="cpu").categories] == [f"class_{i}" for i in range(4)]


def test_paths_that_name_nothing_are_refused_before_the_model_loads(image_folder, tmp_path, capsys):
    with pytest.raises(PredictInputError, match="no such file or folder"):
        image_files([tmp_path / "missing*.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictInputError, match="a folder without image files"):
        image_files([tmp_path / "empty"])
    # Each file once, in the order given.
    assert image_files([image_folder / "b_grey.png", image_folder]) [:2] == [image_folder / "b_grey.png",
                                                                             image_folder / "a_colour.png"]
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(tmp_path / "no.pth"), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o.json")])
    assert exit_info.value.code == 2 and "missing.png: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_bad_thresholds_are_refused(checkpoint):
    with pytest.raises(PredictInputError, match="score threshold 1.5"):
        Predictor(checkpoint, score_threshold=1.5)
    with pytest.raises(PredictInputError, match="batch size 0"):
        Predictor(checkpoint, batch_size=0)


def test_the_python_api_reads_grey_and_rgba_as_rgb(checkpoint, image_folder):
    predictor = Predictor(checkpoint, device="cpu", score_threshold=0.0)
    found = {f.path.name: f for f in predictor.predict_files([image_folder / "c_rgba.png"], progress=False)}
    assert found["c_rgba.png"].height == 64
    json.dumps(predictions_to_coco(list(found.values()), predictor.categories))  # plain JSON types only
    assert np.asarray(found["c_rgba.png"].masks).dtype == bool
