"""A trained model on new images that have no annotations (``apis predict``).

:class:`Predictor` loads a checkpoint with the config it stores (or another), reads image files, folders or
globs, resizes them as at test time (``data.min_size_test`` / ``data.max_size``), predicts them in batches and
gives, per image, its detections at the image's own resolution (masks, ``xyxy`` boxes in continuous pixel
coordinates, scores, classes). An image that cannot be read is reported as an :class:`ImageFailure` naming the
file, and the others are still predicted. :func:`predictions_to_coco` turns the results into a COCO file.

    predictor = Predictor("runs/mine/step_003/train/model_final.pth")
    for found in predictor.predict_files(["new_images/"]):
        ...
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from apis.config import ExperimentConfig
from apis.config_loading import load_config
from apis.data.coco import image_to_rgb, load_coco
from apis.data.dataset import collate, image_to_tensor
from apis.data.transforms import inference_transform
from apis.engine.checkpoint import load_checkpoint
from apis.engine.inference import checkpoint_config, load_model
from apis.evaluation.results import detections_to_results
from apis.utils.device import resolve_device
from apis.utils.errors import ApisError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
# Pillow has no RGB meaning for these modes (e.g. 32-bit float images): refused, not guessed.
_UNSUPPORTED_MODES = ("F",)


class PredictInputError(ApisError):
    """A path given to predict names nothing to predict; the message names it."""


@dataclass(frozen=True)
class ImagePrediction:
    """The detections of one image at its own resolution.

    ``masks``: ``bool[M, H, W]``; ``boxes``: ``float[M, 4]`` ``xyxy`` (continuous pixel coordinates, a pixel
    centre at +0.5); ``scores``: ``float[M]``; ``labels``: ``int[M]`` contiguous class indices (see
    :attr:`Predictor.categories`); sorted by score, highest first.
    """

    path: Path
    height: int
    width: int
    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class ImageFailure:
    """An image that could not be predicted, and why."""

    path: Path
    reason: str


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named by ``paths`` (files, folders — their images, sorted, not recursive — or globs), in the
    order given, each once.

    Raises:
        PredictInputError: a path that exists nowhere and matches no file, or a folder without images.
    """
    found: dict[Path, None] = {}
    for entry in map(str, paths):
        path = Path(entry)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise PredictInputError(f"{path}: a folder without image files ({', '.join(IMAGE_SUFFIXES)})")
        elif path.is_file():
            images = [path]
        else:
            images = sorted(Path(p) for p in glob.glob(entry, recursive=True) if Path(p).is_file())
            if not images:
                raise PredictInputError(f"{entry}: no such file or folder, and no file matches it as a pattern")
        found.update(dict.fromkeys(images))
    return list(found)


def read_image(path: Path) -> np.ndarray:
    """``uint8[H, W, 3]`` RGB pixels of an image file (grey, 16-bit grey and RGBA are converted).

    Raises:
        PredictInputError: the file is not an image Pillow reads completely, or has no RGB meaning.
    """
    try:
        with Image.open(path) as img:
            if img.mode in _UNSUPPORTED_MODES:
                raise PredictInputError(f"{path}: unsupported image mode {img.mode}")
            img.load()  # decode it all now: a truncated file fails here, not half-grey later
            return image_to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise PredictInputError(f"{path}: not a readable image ({error})") from None


class Predictor:
    """A checkpoint ready to predict new images; see the module docstring.

    Args:
        checkpoint: a checkpoint file written by ``apis train`` / ``apis run`` (``model_final.pth``).
        config: the config of the checkpoint's model (default: the one the checkpoint stores).
        overrides: ``key=value`` on top of the config (e.g. ``data.min_size_test=800``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (default: the config's).
        score_threshold: detections below this score are dropped.
        batch_size: images per forward pass.
    """

    def __init__(self, checkpoint: str | Path, config: str | Path | None = None, overrides: Sequence[str] = (),
                 device: str | None = None, score_threshold: float = 0.5, batch_size: int = 2):
        if not 0 <= score_threshold <= 1:
            raise PredictInputError(f"score threshold {score_threshold} is not in [0, 1]")
        if batch_size < 1:
            raise PredictInputError(f"batch size {batch_size} is not a positive number")
        state = load_checkpoint(checkpoint)
        self.cfg: ExperimentConfig = load_config(config, list(overrides)) if config \
            else checkpoint_config(state, list(overrides))
        self.categories: list[dict] = _categories(state, self.cfg)
        self.device = resolve_device(device or self.cfg.device)
        self.model = load_model(state, self.cfg, self.device)
        self.score_threshold = score_threshold
        self.batch_size = batch_size

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per ``uint8[H, W, 3]`` RGB image: ``(masks, boxes, scores, labels)`` as in :class:`ImagePrediction`."""
        samples = []
        for pixels in images:
            transform = inference_transform(pixels.shape[0], pixels.shape[1], self.cfg.data.min_size_test,
                                            self.cfg.data.max_size)
            samples.append({"image": image_to_tensor(transform.apply_image(pixels)),
                            "original_size": (pixels.shape[0], pixels.shape[1])})
        batch = collate(samples)
        found = self.model.predict(batch.images.to(self.device), batch.image_sizes,
                                   [meta["original_size"] for meta in batch.metas])
        results = []
        for detections in found:
            keep = (detections.scores >= self.score_threshold).cpu()
            order = torch.argsort(detections.scores.cpu()[keep], descending=True)
            results.append(tuple(t.cpu()[keep][order].numpy() for t in (detections.masks, detections.boxes,
                                                                        detections.scores, detections.labels)))
        return results

    def predict_files(self, paths: Iterable[str | Path], progress: bool = True
                      ) -> Iterator[ImagePrediction | ImageFailure]:
        """Each image file of ``paths`` (see :func:`image_files`) in order: its prediction, or why it failed."""
        files = image_files(paths)
        bar = tqdm(total=len(files), desc="predicting", unit="img", disable=not progress)
        for start in range(0, len(files), self.batch_size):
            readable = []
            for path in files[start:start + self.batch_size]:
                try:
                    readable.append((path, read_image(path)))
                except PredictInputError as error:
                    yield ImageFailure(path, str(error))
            if readable:
                for (path, pixels), (masks, boxes, scores, labels) in zip(
                        readable, self.predict([pixels for _, pixels in readable])):
                    yield ImagePrediction(path, pixels.shape[0], pixels.shape[1], masks, boxes, scores, labels)
            bar.update(len(files[start:start + self.batch_size]))
        bar.close()


def predictions_to_coco(predictions: Sequence[ImagePrediction], categories: list[dict]) -> dict:
    """A COCO instance file of the predictions: ``images`` (ids 1.., ``file_name`` as given, size), the
    ``categories``, and ``annotations`` that are COCO results entries (``image_id``, ``category_id``, ``bbox``
    ``xywh``, ``score``, ``segmentation`` as compressed RLE) with an ``id``, ``area`` and ``iscrowd``."""
    category_ids = np.asarray([c["id"] for c in categories])
    images, annotations = [], []
    for image_id, found in enumerate(predictions, start=1):
        images.append({"id": image_id, "file_name": str(found.path), "height": found.height, "width": found.width})
        for entry in detections_to_results(image_id, found.masks, found.boxes, found.scores,
                                           category_ids[found.labels]):
            annotations.append({"id": len(annotations) + 1, **entry, "iscrowd": 0,
                                "area": int(_area(entry["segmentation"]))})
    return {"images": images, "categories": categories, "annotations": annotations}


def _area(rle: dict) -> int:
    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}))


def _categories(state: dict, cfg: ExperimentConfig) -> list[dict]:
    """What the model's class indices mean: stored in the checkpoint; for one written before that, read from
    the training set the config names, else ``class_0 ..`` with ids ``1..C``."""
    if state.get("categories"):
        return [dict(c) for c in state["categories"]]
    train_json = Path(cfg.data.train_json) if cfg.data.train_json else None
    if train_json is not None and train_json.is_file():
        categories = load_coco(train_json, check_images=False).categories
        if len(categories) == cfg.model.num_classes:
            return categories
    return [{"id": index + 1, "name": f"class_{index}"} for index in range(cfg.model.num_classes)]
