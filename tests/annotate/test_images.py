"""The crops the annotation page shows: the box with context, clipped to the image, from the image folder only."""

import json
import math
import shutil

import pytest

from apis.annotate.images import ImageOutsideRoot, QuestionImages
from apis.data.coco import load_coco
from apis.data.questions import Question


def question_on(dataset, instance, x=None, y=None):
    x0, y0, _, _ = instance.bbox_xyxy
    return Question(id=1, step=0, position=0, ann_id=instance.ann_id, image_id=instance.image_id,
                    x=int(x0) if x is None else x, y=int(y0) if y is None else y, chosen_by="p0-random",
                    answers_wanted=1)


def test_the_crop_holds_the_box_with_context_and_stays_inside_the_image(synth_dir):
    dataset = load_coco(synth_dir / "annotations" / "train.json")
    images = QuestionImages(dataset, context=0.5, min_context_px=16)
    for instance in dataset.instances():
        record = dataset.image(instance.image_id)
        cx, cy, width, height = images.crop_window(question_on(dataset, instance))
        x0, y0, x1, y1 = instance.bbox_xyxy
        margin = max(0.5 * max(x1 - x0, y1 - y0), 16)
        assert (cx, cy) == (max(0, math.floor(x0 - margin)), max(0, math.floor(y0 - margin)))
        assert (cx + width, cy + height) == (min(record.width, math.ceil(x1 + margin)),
                                             min(record.height, math.ceil(y1 + margin)))
        assert 0 <= cx <= x0 and 0 <= cy <= y0 and x1 <= cx + width and y1 <= cy + height


def test_an_image_outside_the_image_folder_is_never_served(synth_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir / "images", data / "images")
    (data / "annotations").mkdir()
    train = json.loads((synth_dir / "annotations" / "train.json").read_text())
    first = train["images"][0]
    shutil.copy(synth_dir / "images" / first["file_name"], data / "secret.png")
    first["file_name"] = "../secret.png"
    (data / "annotations" / "train.json").write_text(json.dumps(train))
    dataset = load_coco(data / "annotations" / "train.json")
    images = QuestionImages(dataset)
    inside = next(i for i in dataset.instances() if i.image_id != first["id"])
    assert images.crop_png(question_on(dataset, inside)).startswith(b"\x89PNG")
    outside = next(i for i in dataset.instances() if i.image_id == first["id"])
    with pytest.raises(ImageOutsideRoot, match=r"lies outside the image folder"):
        images.crop_png(question_on(dataset, outside))
