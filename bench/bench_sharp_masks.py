"""Sharp masks: what each lever buys in mask quality, on the same rows and seeds.

A *lever* is a set of config overrides that changes how masks are made (the mask branch's stride, the logits'
stride, the input size...). For every (lever, supervision row, seed) this trains one model as
``bench/bench_supervision.py`` does (its rows: "full masks", "boxes + 1 point + box terms", ...), evaluates val
mask and box AP, and scores the masks on the *true* boxes as ``bench/bench_mask_quality.py`` does (mIoU against
a mask that fills the box, by object size). Each (lever, row, seed) trains into ``--out/<lever>/<row>/seed<K>``
and is not retrained when run again, so the benchmark runs in resumable pieces (one process per core: give
each process its own ``--levers`` / ``--seeds``; ``--collect`` then trains nothing and records what is finished,
naming what is not).

``--refinement`` also scores every trained model with mask refinement at inference
(``model.refinement.method=colour_crf``, :mod:`apis.modeling.refinement`) as the lever ``<lever> + refined``:
no training, the same model, so it is compared seed by seed with its unrefined lever (its *reference*; a trained
lever's reference is the baseline).

Per row the record carries ``mask_AP75``, ``box_AP75``, ``miou_minus_box_fill`` and the seconds per training
iteration; its comparisons pair, seed by seed, each lever's mIoU with box fill's and with the baseline's, and its
mask AP75 with the baseline's (95 % t-intervals, ``apis.evaluation.paired``); ``bench/tables.py`` draws the table.

    .venv/bin/python bench/bench_sharp_masks.py --config condinst_r18_cpu_dsb.yaml --out runs/sharp_dsb \\
        --levers baseline c2_stride4 --rows "full masks" "boxes + 1 point + box terms" --seeds 0 1 2 \\
        --images 60 --refinement --record results/sharp_masks_dsb.json [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bench_mask_quality import step_quality
from bench_supervision import ROWS, row_dir, run_row
from records import add_record_option, provenance, save
from tables import SIZE_BUCKETS, sharp_masks_table

from apis.config import ConfigError
from apis.config_loading import load_config
from apis.data.coco import load_datasets
from apis.engine.inference import evaluate_checkpoint
from apis.evaluation.paired import paired_comparison
from apis.utils.device import resolve_device
from apis.utils.io import atomic_write_json

UNREFINED = "model.refinement.method=none"
LEVERS = {
    # CondInst as published: mask features at P3's stride 8, logits upsampled to stride 4. Every lever names its
    # mask branch whole and leaves refinement off, whatever the config ships (--refinement measures it apart).
    "baseline": ["model.mask_feature_stride=8", "model.mask_head_window=false", UNREFINED],
    # Mask features at stride 4 (P3-P5 and the ResNet's C2), the dynamic head run there in its window.
    "c2_stride4": ["model.mask_feature_stride=4", "model.mask_head_window=true", UNREFINED],
    # Full masks only: a per-cell BCE inside the box beside the Dice (calibrated probabilities), at stride 8.
    "full_bce": ["model.mask_feature_stride=8", "model.mask_head_window=false", UNREFINED, "loss.full_bce=1.0"],
    # Both: stride-4 features in the window, and the BCE beside the Dice.
    "c2_stride4_bce": ["model.mask_feature_stride=4", "model.mask_head_window=true", UNREFINED, "loss.full_bce=1.0"],
}

REFINEMENT = ["model.refinement.method=colour_crf"]
"""The inference overrides of ``--refinement`` (the refinement's own settings are the config's)."""
REFINED = " + refined"


def quality(folder: Path, cfg, images: int, device, name: str = "mask_quality") -> dict:
    """mIoU on the true val boxes (first ``images`` val images), overall and by object size; cached in the folder
    as ``<name>.json``."""
    done = folder / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg.data.max_val_images = images
    _, val = load_datasets(cfg)
    summaries = step_quality(folder / "model_final.pth", cfg, val, device)
    result = {s["size"]: {"instances": int(s["instances"]), "mIoU": float(s["mIoU"]),
                          "box_fill_mIoU": float(s["box_fill_mIoU"])} for s in summaries}
    atomic_write_json(done, result, indent=2)
    return result


def measure(lever: str, row: str, seed: int, args, device) -> list[dict]:
    """Train (or read back) one model and score it: one record row, and one for it refined with ``--refinement``."""
    overrides = [*args.overrides, *LEVERS[lever]]
    lever_out = args.out / lever
    metrics = run_row(row, seed, args.config, lever_out, overrides, None)
    folder = row_dir(lever_out, row, seed)
    cfg = load_config(args.config, [*overrides, *ROWS[row], f"seed={seed}", f"output_dir={folder}"])
    found = [score_row(lever, "baseline", LEVERS[lever], row, seed, metrics, quality(folder, cfg, args.images, device),
                       folder)]
    if args.refinement:
        refined_overrides = [*(o for o in LEVERS[lever] if o != UNREFINED), *REFINEMENT]
        refined = load_config(args.config, [*args.overrides, *refined_overrides, *ROWS[row], f"seed={seed}",
                                            f"output_dir={folder}"])
        done = folder / "eval_refined.json"
        if not done.exists():
            atomic_write_json(done, evaluate_checkpoint(folder / "model_final.pth", refined), indent=2)
        found.append(score_row(lever + REFINED, lever, refined_overrides, row, seed,
                               json.loads(done.read_text()),
                               quality(folder, refined, args.images, device, "mask_quality_refined"), folder))
    return found


def score_row(lever: str, reference: str, overrides: list[str], row: str, seed: int, metrics: dict, scores: dict,
              folder: Path) -> dict:
    """One record row: a model's AP (``metrics``, as ``evaluate_checkpoint`` gives them) and true-box mIoU."""
    overall = scores["all"]
    return {"lever": lever, "reference": reference, "overrides": overrides, "row": row, "seed": seed,
            "mask_AP": metrics["segm/AP"], "mask_AP75": metrics["segm/AP75"], "box_AP": metrics["bbox/AP"],
            "box_AP75": metrics["bbox/AP75"], "mIoU": overall["mIoU"], "box_fill_mIoU": overall["box_fill_mIoU"],
            "miou_minus_box_fill": overall["mIoU"] - overall["box_fill_mIoU"],
            "by_size": {name: scores[name] for name in SIZE_BUCKETS if name in scores},
            "s_per_iter": seconds_per_iteration(folder)}


def seconds_per_iteration(folder: Path) -> float:
    """Mean seconds per training iteration over the trainer's log (``metrics.jsonl``: one entry per logging window,
    its ``time`` the window's mean), so a run resumed after an interruption counts every iteration once."""
    entries = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = {entry["iteration"]: entry["time"] for entry in entries if "time" in entry}
    return sum(times.values()) / len(times)


def comparisons(rows: list[dict]) -> list[dict]:
    """Seed by seed, per (row, lever): mIoU against box fill; and per lever but the baseline, mIoU, mask AP and mask
    AP75 against its reference's (the baseline's; a refined lever's: the same models unrefined)."""
    found = []
    for row in dict.fromkeys(r["row"] for r in rows):
        members = [r for r in rows if r["row"] == row]
        for lever in dict.fromkeys(r["lever"] for r in members):
            mine = {r["seed"]: r for r in members if r["lever"] == lever}
            found.append(paired_comparison({s: r["mIoU"] for s, r in mine.items()},
                                           {s: r["box_fill_mIoU"] for s, r in mine.items()},
                                           metric=f"mIoU - box fill, {row}", a_name=lever, b_name="box fill"))
            reference = next(iter(mine.values()))["reference"]
            base = {r["seed"]: r for r in members if r["lever"] == reference}
            if lever != reference and base:
                for metric in ("mIoU", "mask_AP", "mask_AP75"):
                    found.append(paired_comparison({s: r[metric] for s, r in mine.items()},
                                                   {s: r[metric] for s, r in base.items()},
                                                   metric=f"{metric}, {row}", a_name=lever, b_name=reference))
    return [c.as_dict() for c in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=["full masks", "boxes + 1 point + box terms"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=60, help="val images of the true-box mIoU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--refinement", action="store_true",
                        help="also score every model with mask refinement at inference (the lever '<lever> + refined')")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: read the (lever, row, seed) runs already finished, name the others")
    add_record_option(parser, "sharp_masks")
    parser.add_argument("overrides", nargs="*", help="key=value for every model (e.g. the reduced sizes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = provenance()
    device = resolve_device(args.device)
    rows = []
    for seed in args.seeds:  # seed-major: an interrupted benchmark has whole comparisons of its early seeds
        for row in args.rows:
            for lever in args.levers:
                try:  # a lever for one kind of supervision (full_bce) is refused by the others' configs
                    load_config(args.config, [*args.overrides, *LEVERS[lever], *ROWS[row]])
                except ConfigError as error:
                    print(f"not measured: {lever} / {row}: {error}", flush=True)
                    continue
                if args.collect and not (row_dir(args.out / lever, row, seed) / "eval.json").exists():
                    print(f"not run: {lever} / {row} / seed {seed}", flush=True)
                    continue
                rows.extend(measure(lever, row, seed, args, device))
                print(f"done: {lever} / {row} / seed {seed}", flush=True)
    compared = comparisons(rows)
    print(sharp_masks_table(rows, compared))
    save(args.record, "sharp_masks", started, rows, arguments=args, config=load_config(args.config, args.overrides),
         comparisons=compared)


if __name__ == "__main__":
    main()
