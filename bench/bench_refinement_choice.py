"""How the refinement's settings were chosen: true-box mIoU of trained models on *training* images, per setting.

For each trained model folder (``apis train``'s output, e.g. a ``bench_sharp_masks.py`` run), the masks of the
first ``--images`` training images' instances on their true boxes (the ``anchors`` prediction set, as
``bench/bench_mask_quality.py`` scores val images) are refined with every setting of a grid over
``model.refinement``'s weight, radius, colour sigma and colour-model weight, and scored by mIoU against the GT
masks at threshold 0.5, beside the unrefined masks and box fill. Training images, so that the val images the
benchmarks report stay out of the choice. The record has one row per (model, setting); the table ranks the settings
by their mean over the models.

    .venv/bin/python bench/bench_refinement_choice.py runs/sharp2/dsb/c2_stride4_bce/full_masks/seed0 \\
        runs/sharp2/dsb/c2_stride4/boxes_plus_1_point_plus_box_terms/seed0 --images 20 \\
        --record results/refinement_choice_dsb.json
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from records import add_record_option, provenance, save
from tables import markdown

from apis.active.prediction import iter_prediction_sets
from apis.active.selection import crop_to_grid
from apis.config_loading import load_run_config
from apis.data.coco import load_datasets
from apis.engine.inference import load_model
from apis.loop.mask_quality import iou
from apis.modeling.refinement import ColourCRF, grid_colours, refine_probabilities

WEIGHTS = (0.0, 4.0, 8.0, 16.0, 32.0)
RADII = (2, 3)
COLOUR_SIGMAS = (0.5, 1.0, 2.0)
COLOUR_MODEL_WEIGHTS = (0.0, 0.5, 1.0, 2.0)


def grid() -> list[ColourCRF]:
    """Every setting of the grid (without the pairwise term, radius and colour sigma play no part: one each)."""
    found = []
    for weight, radius, sigma, colour in itertools.product(WEIGHTS, RADII, COLOUR_SIGMAS, COLOUR_MODEL_WEIGHTS):
        if weight == 0 and (radius, sigma) != (RADII[0], COLOUR_SIGMAS[0]):
            continue
        if weight == 0 and colour == 0:
            continue  # that is the unrefined mask, scored apart
        found.append(ColourCRF(weight=weight, radius=radius, colour_sigma=sigma, colour_model_weight=colour))
    return found


def training_instances(folder: Path, images: int) -> list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    """``(probabilities [h, w], colours [3, h, w], GT mask bool[h, w])`` of every instance of the first ``images``
    training images on its true box, from ``folder``'s final model."""
    cfg = load_run_config(folder / "config.yaml", [f"data.max_train_images={images}", "data.num_workers=0"])
    train, _ = load_datasets(cfg)
    device = torch.device("cpu")
    model = load_model(folder / "model_final.pth", cfg, device)
    gt_masks = train.masks("evaluation")
    found = []
    for sets in iter_prediction_sets([model], cfg, train, device, progress=False):
        image = None
        for ann_id, pred in sets.items():
            if pred.k == 0:
                continue
            image = train.load_image(train.instance(ann_id).image_id) if image is None else image
            probs = pred.probs.mean(dim=0)
            found.append((probs, grid_colours(image, pred.origin, tuple(probs.shape)),
                          crop_to_grid(gt_masks.mask(ann_id), pred).numpy().astype(bool)))
    return found


def setting_name(crf: ColourCRF) -> str:
    return (f"weight {crf.weight:g}, radius {crf.radius}, colour sigma {crf.colour_sigma:g}, "
            f"colour model {crf.colour_model_weight:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="trained model folders (config.yaml, model_final.pth)")
    parser.add_argument("--images", type=int, default=20, help="training images scored per model")
    add_record_option(parser, "refinement_choice")
    args = parser.parse_args()
    started = provenance()
    rows = []
    for folder in args.runs:
        cases = training_instances(folder, args.images)
        rows.append({"run": str(folder), "setting": "box fill", "instances": len(cases),
                     "mIoU": float(np.mean([iou(np.ones_like(gt), gt) for _, _, gt in cases]))})
        rows.append({"run": str(folder), "setting": "unrefined", "instances": len(cases),
                     "mIoU": float(np.mean([iou(probs.numpy() > 0.5, gt) for probs, _, gt in cases]))})
        for crf in grid():
            refined = [iou(refine_probabilities(crf, probs, colours).numpy() > 0.5, gt) for probs, colours, gt in cases]
            rows.append({"run": str(folder), "setting": setting_name(crf), "instances": len(cases),
                         "mIoU": float(np.mean(refined))})
        print(f"done: {folder} ({len(cases)} instances)", flush=True)
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    means = {s: float(np.mean([r["mIoU"] for r in rows if r["setting"] == s])) for s in settings}
    ranked = sorted(settings, key=lambda s: -means[s])
    print(markdown(["setting", "mean mIoU", *(str(f) for f in args.runs)],
                   [[s, f"{means[s]:.4f}", *(f"{r['mIoU']:.4f}" for r in rows if r["setting"] == s)]
                    for s in ranked[:15] + [s for s in ("unrefined", "box fill") if s not in ranked[:15]]],
                   "l" + "r" * (len(args.runs) + 1)))
    save(args.record, "refinement_choice", started, rows, arguments=args)


if __name__ == "__main__":
    main()
