"""Sharp masks: what each lever buys in mask quality, on the same rows and seeds.

A *lever* is a set of config overrides that changes how masks are made (the mask branch's stride, the logits'
stride, the input size...). For every (lever, supervision row, seed) this trains one model as
``bench/bench_supervision.py`` does (its rows: "full masks", "boxes + 1 point + box terms", ...), evaluates val
mask and box AP, and scores the masks on the *true* boxes as ``bench/bench_mask_quality.py`` does (mIoU against
a mask that fills the box, by object size). Each (lever, row, seed) trains into ``--out/<lever>/<row>/seed<K>``
and is not retrained when run again, so the benchmark runs in resumable pieces (one process per core: give
each process its own ``--levers`` / ``--seeds``; ``--record`` then gathers what is finished).

Per row the record carries ``mask_AP75``, ``box_AP75``, ``miou_minus_box_fill`` and the seconds per training
iteration; the summary gives means over seeds (sample standard deviation, ddof=1) and each lever's paired
difference from ``baseline`` per seed with its 95 % t-interval.

    .venv/bin/python bench/bench_sharp_masks.py --config condinst_r18_cpu_dsb.yaml --out runs/sharp_dsb \\
        --levers baseline c2_stride4 --rows "full masks" "boxes + 1 point + box terms" --seeds 0 1 2 \\
        --images 60 --record results/sharp_masks_dsb.json [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling bench scripts, when run as a script

from bench_label_quality import paired_interval  # noqa: E402
from bench_mask_quality import step_quality  # noqa: E402
from bench_supervision import ROWS, row_dir, run_row  # noqa: E402
from records import provenance, record, write_record  # noqa: E402

from apis.active.loop import load_datasets  # noqa: E402
from apis.config import load_config  # noqa: E402
from apis.utils.device import resolve_device  # noqa: E402
from apis.utils.io import atomic_write_json  # noqa: E402

LEVERS = {
    # CondInst as published: mask features at P3's stride 8, logits upsampled to stride 4.
    "baseline": [],
    # The dynamic head run only in the window around its location (background elsewhere), at stride 8.
    "window": ["model.mask_head_window=true"],
    # Mask features at stride 4 (P3-P5 and the ResNet's C2), the dynamic head run there in its window.
    "c2_stride4": ["model.mask_feature_stride=4", "model.mask_head_window=true"],
    # As c2_stride4, and the logits (and every mask loss) at stride 2.
    "c2_stride4_out2": ["model.mask_feature_stride=4", "model.mask_head_window=true", "model.mask_out_stride=2"],
}
SIZE_BUCKETS = ("0-16 px", "16-32 px", ">= 32 px")


def quality(folder: Path, cfg, images: int, device) -> dict:
    """mIoU on the true val boxes (first ``images`` val images), overall and by object size; cached in the folder."""
    done = folder / "mask_quality.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg.data.max_val_images = images
    _, val = load_datasets(cfg)
    summaries = step_quality(folder / "model_final.pth", cfg, val, device)
    result = {s["size"]: {"instances": int(s["instances"]), "mIoU": float(s["mIoU"]),
                          "box_fill_mIoU": float(s["box_fill_mIoU"])} for s in summaries}
    atomic_write_json(done, result, indent=2)
    return result


def measure(lever: str, row: str, seed: int, args, device) -> dict:
    """Train (or read back) one model and score it: one record row."""
    overrides = [*args.overrides, *LEVERS[lever]]
    lever_out = args.out / lever
    metrics = run_row(row, seed, args.config, lever_out, overrides, None)
    folder = row_dir(lever_out, row, seed)
    cfg = load_config(args.config, [*overrides, *ROWS[row], f"seed={seed}", f"output_dir={folder}"])
    scores = quality(folder, cfg, args.images, device)
    overall = scores["all"]
    return {"lever": lever, "overrides": LEVERS[lever], "row": row, "seed": seed,
            "mask_AP": metrics["segm/AP"], "mask_AP75": metrics["segm/AP75"], "box_AP": metrics["bbox/AP"],
            "box_AP75": metrics["bbox/AP75"], "mIoU": overall["mIoU"], "box_fill_mIoU": overall["box_fill_mIoU"],
            "miou_minus_box_fill": overall["mIoU"] - overall["box_fill_mIoU"],
            "by_size": {name: scores[name] for name in SIZE_BUCKETS if name in scores},
            "s_per_iter": metrics["train_s"] / metrics["iterations"]}


def _mean_std(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def summarise(rows: list[dict]) -> list[dict]:
    """Per (lever, row): means over seeds, the AP75 ratio, and the paired difference from ``baseline``."""
    groups: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in rows:
        groups[(r["lever"], r["row"])][r["seed"]] = r
    summary = []
    for (lever, row), by_seed in groups.items():
        seeds = sorted(by_seed)
        entry = {"lever": lever, "row": row, "seeds": seeds}
        for key in ("mask_AP", "mask_AP75", "box_AP75", "mIoU", "box_fill_mIoU", "miou_minus_box_fill", "s_per_iter"):
            entry[key] = float(np.mean([by_seed[s][key] for s in seeds]))
        entry["mask_AP75_over_box_AP75"] = entry["mask_AP75"] / entry["box_AP75"] if entry["box_AP75"] else math.nan
        base = groups.get(("baseline", row), {})
        paired = [s for s in seeds if s in base]
        if lever != "baseline" and paired:
            entry["mIoU_minus_baseline"] = [by_seed[s]["mIoU"] - base[s]["mIoU"] for s in paired]
            entry["mask_AP75_minus_baseline"] = [by_seed[s]["mask_AP75"] - base[s]["mask_AP75"] for s in paired]
            entry["s_per_iter_over_baseline"] = (np.mean([by_seed[s]["s_per_iter"] for s in paired])
                                                 / np.mean([base[s]["s_per_iter"] for s in paired]))
        summary.append(entry)
    return summary


def table(rows: list[dict]) -> str:
    """Markdown, one line per (lever, row): mean ± sample std over seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["lever"], r["row"])].append(r)
    summary = {(s["lever"], s["row"]): s for s in summarise(rows)}
    lines = ["| lever | row | seeds | mask AP | mask AP75 | box AP75 | AP75 mask / box | mIoU (true boxes) "
             "| box fill | mIoU - box fill | mIoU - baseline, 95 % CI | mIoU < 16 px / 16-32 / >= 32 "
             "| s / iter (x baseline) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (lever, row), members in groups.items():
        s = summary[(lever, row)]
        sizes = " / ".join(f"{np.mean([m['by_size'][b]['mIoU'] for m in members if b in m['by_size']]):.3f}"
                           for b in SIZE_BUCKETS)
        versus = paired_interval(s["mIoU_minus_baseline"]) if "mIoU_minus_baseline" in s else "–"
        speed = f"{s['s_per_iter']:.2f}" + (f" ({s['s_per_iter_over_baseline']:.2f}x)"
                                            if "s_per_iter_over_baseline" in s else "")
        lines.append(
            f"| {lever} | {row} | {len(members)} | {_mean_std([m['mask_AP'] for m in members], 2)} "
            f"| {_mean_std([m['mask_AP75'] for m in members], 2)} | {_mean_std([m['box_AP75'] for m in members], 2)} "
            f"| {s['mask_AP75_over_box_AP75']:.2f} | {_mean_std([m['mIoU'] for m in members])} "
            f"| {s['box_fill_mIoU']:.3f} | {_mean_std([m['miou_minus_box_fill'] for m in members])} | {versus} "
            f"| {sizes} | {speed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=["full masks", "boxes + 1 point + box terms"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=60, help="val images of the true-box mIoU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--record", type=Path, help="write the benchmark's record (JSON) there")
    parser.add_argument("overrides", nargs="*", help="key=value for every model (e.g. the reduced sizes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started, start = provenance(), time.perf_counter()
    device = resolve_device(args.device)
    rows = []
    for seed in args.seeds:  # seed-major: an interrupted benchmark has whole comparisons of its early seeds
        for row in args.rows:
            for lever in args.levers:
                rows.append(measure(lever, row, seed, args, device))
                print(f"done: {lever} / {row} / seed {seed}", flush=True)
    print(table(rows))
    if args.record:
        content = record("sharp_masks", started, rows, time.perf_counter() - start)
        content["config"] = args.config
        content["overrides"] = args.overrides
        content["summary"] = summarise(rows)
        print(f"record: {write_record(args.record, content)}")


if __name__ == "__main__":
    main()
