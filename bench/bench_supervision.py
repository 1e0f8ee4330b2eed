"""Supervision table (Table 2 of the paper, on DSB2018 with the CPU config): the same schedule for
every row, val mask AP for full masks, boxes only (BoxInst), and boxes + 1, 3, 10 random points per
instance (labelled by the simulated oracle). Also records inference speed on the val set.

Each row trains into ``--out/<row>`` and resumes when run again; a finished row's metrics are kept
in ``--out/<row>/eval.json`` and not recomputed.

    .venv/bin/python bench/bench_supervision.py --config configs/condinst_r18_cpu_dsb.yaml \\
        --out runs/supervision [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from apis.config import load_config
from apis.engine.inference import evaluate_checkpoint
from apis.engine.trainer import train
from apis.utils.io import atomic_write_json

ROWS = {
    "full masks": ["loss.full=1.0", "loss.points=0.0", "loss.box=0.0", "data.random_points_per_instance=0"],
    "boxes + 10 points": ["loss.points=1.0", "data.random_points_per_instance=10"],
    "boxes + 3 points": ["loss.points=1.0", "data.random_points_per_instance=3"],
    "boxes + 1 point": ["loss.points=1.0", "data.random_points_per_instance=1"],
    "boxes only (BoxInst)": ["loss.box=1.0", "loss.points=0.0", "loss.full=0.0", "data.random_points_per_instance=0"],
}


def run_row(name: str, config: str, out: Path, overrides: list[str]) -> dict:
    row_dir = out / name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
    done = row_dir / "eval.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = load_config(config, [*overrides, *ROWS[name], f"output_dir={row_dir}"])
    start = time.perf_counter()
    checkpoint = train(cfg)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate_checkpoint(checkpoint, cfg)
    eval_s = time.perf_counter() - start
    num_val = cfg.data.max_val_images or len(json.loads(Path(cfg.data.val_json).read_text())["images"])
    result = {"row": name, "train_s": train_s, "eval_s": eval_s, "val_images": num_val,
              "iterations": cfg.solver.max_iter, **metrics}
    atomic_write_json(done, result, indent=2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/condinst_r18_cpu_dsb.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/supervision"))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    results = []
    for name in args.rows:
        results.append(run_row(name, args.config, args.out, args.overrides))
        print(json.dumps(results[-1]), flush=True)
    print("\n| supervision | mask AP | AP50 | AP75 | box AP | train min | val img/s (inference + COCO eval) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['row']} | {r['segm/AP']:.2f} | {r['segm/AP50']:.2f} | {r['segm/AP75']:.2f} | "
              f"{r['bbox/AP']:.2f} | {r['train_s'] / 60:.1f} | {r['val_images'] / r['eval_s']:.2f} |")


if __name__ == "__main__":
    main()
