from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from apis.data.coco import DatasetError, coco_from_dict, load_coco
from apis.data.points import UNSURE
from apis.data.simulated_oracle import SimulatedOracle
from apis.data.synth import make_synthetic_dataset
from apis.loop.oracle import Oracle

DSB_VAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "dsb2018_nuclei" / "annotations" / "val.json"


def masks():
    a = np.zeros((4, 6), bool)
    a[1:3, 2:5] = True  # rows 1-2, columns 2-4
    return {7: a, 8: ~a}


def truth(arrays=None):
    """The GT masks of a one-image dataset holding ``arrays`` (``ann_id -> bool [H, W]``) as RLE."""
    arrays = arrays or masks()
    height, width = next(iter(arrays.values())).shape
    annotations = []
    for ann_id, mask in arrays.items():
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({"id": ann_id, "image_id": 1, "category_id": 1, "bbox": [0, 0, width, height],
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    data = {"images": [{"id": 1, "file_name": "a.png", "width": width, "height": height}],
            "categories": [{"id": 1, "name": "thing"}], "annotations": annotations}
    return coco_from_dict(data, Path("masks.json"), Path("."), check_images=False).masks("oracle")


def answers(oracle, points):
    return [oracle.answer(ann_id, x, y) for ann_id, x, y in points]


def test_answer_is_mask_at_row_y_column_x_and_costs_time():
    oracle = SimulatedOracle(truth())
    assert isinstance(oracle, Oracle) and oracle.name == "simulated-oracle"
    assert oracle.answer(7, 4, 2) == 1
    assert oracle.answer(7, 2, 4 - 1) == 0  # (x=2, y=3): row 3 is outside the object
    assert oracle.answer(7, 1, 1) == 0
    assert oracle.answer(8, 1, 1) == 1
    assert oracle.questions == 4
    assert oracle.spent_s == pytest.approx(4 * 0.9)


def test_cost_per_question_is_configurable():
    oracle = SimulatedOracle(truth(), point_cost_s=2.0)
    assert answers(oracle, [(7, 2, 1), (7, 5, 1), (8, 2, 1)]) == [1, 0, 0]
    assert (oracle.questions, oracle.spent_s) == (3, pytest.approx(6.0))


def test_flip_prob_one_inverts_every_answer():
    truthful = SimulatedOracle(truth())
    liar = SimulatedOracle(truth(), flip_prob=1.0)
    points = [(7, x, y) for y in range(4) for x in range(6)]
    assert answers(liar, points) == [1 - label for label in answers(truthful, points)]


def test_unsure_rate_one_answers_minus_one_and_still_costs():
    oracle = SimulatedOracle(truth(), unsure_rate=1.0, flip_prob=1.0)
    assert answers(oracle, [(7, 3, 1), (7, 0, 0)]) == [-1, -1]
    assert (oracle.questions, oracle.spent_s) == (2, pytest.approx(1.8))


def test_noise_is_seeded_and_near_its_rate():
    points = [(7, 3, 1)] * 2000
    first = answers(SimulatedOracle(truth(), flip_prob=0.3, seed=5), points)
    second = answers(SimulatedOracle(truth(), flip_prob=0.3, seed=5), points)
    assert first == second
    flipped = first.count(0) / len(points)
    assert 0.25 < flipped < 0.35  # binomial sd ~0.01


def test_answering_many_at_once_gives_what_one_at_a_time_gives():
    """The same answers, noise and cost whether asked in one batch, in pieces or point by point."""
    points = [(ann_id, x, y) for ann_id in (8, 7) for y in range(4) for x in range(6)] * 3
    ann_ids, xs, ys = (list(column) for column in zip(*points))
    one_by_one = SimulatedOracle(truth(), flip_prob=0.3, unsure_rate=0.2, seed=9)
    expected = answers(one_by_one, points)
    batch = SimulatedOracle(truth(), flip_prob=0.3, unsure_rate=0.2, seed=9)
    assert batch.answer_many(ann_ids, xs, ys).tolist() == expected
    pieces = SimulatedOracle(truth(), flip_prob=0.3, unsure_rate=0.2, seed=9)
    got = [*pieces.answer_many(ann_ids[:50], xs[:50], ys[:50]), *pieces.answer_many(ann_ids[50:], xs[50:], ys[50:])]
    assert got == expected and {-1, 0, 1} <= set(expected)
    assert batch.answer_many([], [], []).tolist() == [] and batch.questions == len(points)  # a step without points
    assert (batch.questions, batch.spent_s) == (one_by_one.questions, pytest.approx(one_by_one.spent_s))


def test_bad_input_is_rejected():
    oracle = SimulatedOracle(truth())
    with pytest.raises(ValueError, match="annotation 7: point \\(x=6, y=0\\)"):
        oracle.answer(7, 6, 0)
    with pytest.raises(ValueError, match="annotation 7"):
        oracle.answer(7, 0, -1)
    with pytest.raises(ValueError, match="annotation 8: point \\(x=0, y=4\\) outside its image"):
        oracle.answer_many([7, 8, 8], [0, 0, 9], [0, 4, 0])  # the first bad point is named
    with pytest.raises(DatasetError, match="no annotation with id 9"):
        oracle.answer(9, 0, 0)
    assert oracle.questions == 0
    with pytest.raises(ValueError, match="flip_prob"):
        SimulatedOracle(truth(), flip_prob=1.5)
    with pytest.raises(ValueError, match="unsure_rate"):
        SimulatedOracle(truth(), unsure_rate=-0.1)


def previous_answers(gt_masks, points, flip_prob, unsure_rate, seed):
    """The oracle as it was: decode the instance's full mask, read ``mask[y, x]``, two draws per question."""
    rng = np.random.default_rng(seed)
    labels = []
    for ann_id, x, y in points:
        mask = gt_masks.mask(ann_id)
        unsure_draw, flip_draw = rng.random(2)
        label = int(bool(mask[y, x]))
        labels.append(UNSURE if unsure_draw < unsure_rate else 1 - label if flip_draw < flip_prob else label)
    return labels


def _same_as_previous_oracle(dataset, points):
    ann_ids, xs, ys = (np.array(column) for column in zip(*points))
    for flip_prob, unsure_rate in ((0.0, 0.0), (0.1, 0.05)):
        oracle = SimulatedOracle(dataset.masks("oracle"), flip_prob=flip_prob, unsure_rate=unsure_rate, seed=4)
        got = oracle.answer_many(ann_ids, xs, ys).tolist()
        assert got == previous_answers(dataset.masks("oracle"), points, flip_prob, unsure_rate, seed=4)
    return got


def test_answers_are_the_previous_oracles_on_every_pixel_of_the_synthetic_set(tmp_path):
    make_synthetic_dataset(tmp_path, num_images=4, size=48, seed=1, val_fraction=0.0)
    dataset = load_coco(tmp_path / "annotations" / "train.json", tmp_path / "images")
    points = [(inst.ann_id, x, y) for im in dataset.images for inst in im.instances
              for y in range(im.height) for x in range(im.width)]
    labels = _same_as_previous_oracle(dataset, points)
    assert 0 < sum(labels) < len(labels)


@pytest.mark.skipif(not DSB_VAL.is_file(), reason=f"{DSB_VAL} is absent (the DSB2018 data is not on this machine)")
def test_answers_are_the_previous_oracles_on_a_large_sample_of_dsb2018():
    """Every instance at its box's four corner pixels and its centre, and 30,000 pixels drawn anywhere in
    the images (most off the instance)."""
    dataset = load_coco(DSB_VAL, check_images=False)
    rng = np.random.default_rng(0)
    instances = [(inst, im) for im in dataset.images for inst in im.instances]
    points = []
    for inst, im in instances:
        x0, y0, x1, y1 = inst.bbox_xyxy
        for x, y in ((x0, y0), (x1 - 1, y0), (x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1) / 2, (y0 + y1) / 2)):
            points.append((inst.ann_id, min(max(int(x), 0), im.width - 1), min(max(int(y), 0), im.height - 1)))
    for index in rng.integers(0, len(instances), 30_000):
        inst, im = instances[index]
        points.append((inst.ann_id, int(rng.integers(0, im.width)), int(rng.integers(0, im.height))))
    points.sort(key=lambda point: point[0])  # the reference decodes each mask once (its cache holds 256)
    labels = _same_as_previous_oracle(dataset, points)
    assert 0 < sum(labels) < len(labels)
