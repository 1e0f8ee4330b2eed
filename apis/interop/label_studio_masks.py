"""Exported masks as Label Studio pre-annotations, for a person to review and correct them there.

One task per training image: ``data.image`` (the URL Label Studio loads, as for the questions' tasks), and one
prediction whose regions are the image's masks as Label Studio brush regions (``brushlabels``, ``format:
"rle"``), each labelled with its class and scored with the export's ``apis_quality`` so that Label Studio can
sort the regions to review. The brush RLE is written by Label Studio's own converter
(``label_studio_sdk.converter.brush.mask2rle``), not by hand: install it with ``pip install 'apis[label-studio]'``.
The labelling config (:func:`label_config`) goes next to the tasks.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

import numpy as np
from pycocotools import mask as mask_utils

from apis.config import ConfigError
from apis.data.coco import CocoDataset
from apis.utils.io import atomic_write_json, atomic_write_text

# Distinct, readable region colours for up to 10 classes (then they repeat).
PALETTE = ("#e53935", "#1e88e5", "#43a047", "#fb8c00", "#8e24aa", "#00acc1", "#fdd835", "#6d4c41", "#d81b60",
           "#546e7a")


def label_config(categories: list[dict]) -> str:
    """The labelling config: the image, and a brush per class."""
    labels = "\n".join(f'    <Label value="{html.escape(str(c.get("name", c["id"])), quote=True)}" '
                       f'background="{PALETTE[i % len(PALETTE)]}"/>' for i, c in enumerate(categories))
    return ("<View>\n"
            '  <Header value="Check each mask APIS made; correct the ones that are wrong (lowest score first)"/>\n'
            '  <Image name="image" value="$image" zoom="true" zoomControl="true"/>\n'
            '  <BrushLabels name="mask" toName="image">\n'
            f"{labels}\n"
            "  </BrushLabels>\n"
            "</View>\n")


def brush_encoder():
    """Label Studio's brush RLE encoder (``mask2rle``); ConfigError saying what to install when it is missing."""
    try:
        from label_studio_sdk.converter.brush import mask2rle
    except ImportError:
        raise ConfigError("--format label-studio needs Label Studio's converter: pip install 'apis[label-studio]' "
                          "(or pip install label-studio-sdk)") from None
    return mask2rle


def preannotation_tasks(coco: dict, dataset: CocoDataset, image_url_prefix: str | None = None,
                        model_version: str = "apis") -> list[dict]:
    """Label Studio tasks with the masks of ``coco`` (an exported COCO file over ``dataset``'s images).

    ``image_url_prefix`` + the image's ``file_name`` is the URL Label Studio loads; the default fits Label
    Studio's local-files storage with its document root at the image folder's parent (docs/annotate.md).
    """
    mask2rle = brush_encoder()
    prefix = image_url_prefix if image_url_prefix is not None else f"/data/local-files/?d={dataset.image_root.name}/"
    names = {c["id"]: str(c.get("name", c["id"])) for c in coco["categories"]}
    given = dataset.masks("display") if dataset.has_masks else None
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd") and "segmentation" in ann:
            by_image.setdefault(ann["image_id"], []).append(ann)
    tasks = []
    for image in coco["images"]:
        regions = []
        for ann in by_image.get(image["id"], []):
            if ann.get("apis_source") == "drawn":  # a drawn mask, as the dataset gives it
                mask = given.mask(ann["id"])
            else:  # the export's own compressed RLE
                mask = mask_utils.decode({**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()})
            regions.append({
                "id": f"ann{ann['id']}", "from_name": "mask", "to_name": "image", "type": "brushlabels",
                "original_width": image["width"], "original_height": image["height"], "image_rotation": 0,
                "value": {"format": "rle", "rle": [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)],
                          "brushlabels": [names[ann["category_id"]]]},
                "score": float(ann.get("apis_quality", 1.0)),
            })
        scores = [region["score"] for region in regions]
        tasks.append({"data": {"image": prefix + quote(image["file_name"]), "apis_image_id": image["id"]},
                      "predictions": [{"model_version": model_version, "result": regions,
                                       "score": float(np.mean(scores)) if scores else 1.0}]})
    return tasks


def write_preannotations(coco: dict, dataset: CocoDataset, out_path: str | Path, image_url_prefix: str | None = None,
                         model_version: str = "apis") -> tuple[int, Path]:
    """Write :func:`preannotation_tasks` to ``out_path`` and the labelling config next to it
    (``<stem>.label_config.xml``); returns the number of tasks and the config's path."""
    tasks = preannotation_tasks(coco, dataset, image_url_prefix, model_version)
    out_path = Path(out_path)
    atomic_write_json(out_path, tasks)
    config_path = out_path.with_name(f"{out_path.stem}.label_config.xml")
    atomic_write_text(config_path, label_config(coco["categories"]))
    return len(tasks), config_path
