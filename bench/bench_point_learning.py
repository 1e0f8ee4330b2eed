"""Does the mask head learn from the labelled points? A check on finished loop runs (no training).

For every step of every run: the model's accuracy on its own training points at the end of that step's
training (mean ``point_acc`` of the last ``--windows`` logged windows of ``step_NNN/train/metrics.jsonl``)
against the *majority baseline* of the same points — the accuracy of answering every point with the
more common label, i.e. a mask head that has learnt nothing but "most of a box is object". A head that
uses the points must beat that baseline on the points it is trained on.

    .venv/bin/python bench/bench_point_learning.py runs/label_efficiency/*_seed* [runs/supervision/*points*]

A plain training folder (``apis train``'s output, no ledger) gets its point accuracy only; with
``data.random_points_per_instance`` its points are uniform over the boxes like P0, whose baseline
the loop runs show.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from records import add_record_option, provenance, save

from apis.data.ledger import PointLedger
from apis.engine.metrics_log import METRICS_FILE
from apis.loop.point_learning import final_point_accuracy
from apis.loop.run_dir import step_dir


def step_rows(run_dir: Path, windows: int) -> list[dict]:
    with PointLedger(run_dir / "ledger.sqlite") as ledger:
        rows = []
        step = 0
        while (step_dir(run_dir, step) / "train" / METRICS_FILE).exists():
            labels = np.concatenate([p.labels for p in ledger.points(max_step=step).values()])
            positive = float(np.mean(labels == 1))
            rows.append({"run": run_dir.name, "step": step, "points": int(labels.size), "positive_share": positive,
                         "majority_baseline": max(positive, 1.0 - positive),
                         "train_point_acc": final_point_accuracy(step_dir(run_dir, step) / "train", windows)})
            step += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--windows", type=int, default=5, help="logged windows averaged at the end of training")
    add_record_option(parser, "point_learning")
    args = parser.parse_args()
    recording, rows = provenance(), []
    print("| run | step | training points | positive share | majority baseline | point accuracy at end of training |"
          " accuracy - baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run_dir in args.run_dirs:
        if not (run_dir / "ledger.sqlite").exists() and not (run_dir / METRICS_FILE).exists():
            parser.error(f"{run_dir}: neither a loop run (ledger.sqlite) nor a training folder (metrics.jsonl)")
        if not (run_dir / "ledger.sqlite").exists():
            rows.append({"run": str(run_dir), "train_point_acc": final_point_accuracy(run_dir, args.windows)})
            print(f"| {run_dir.name} | – | – | – | – | {rows[-1]['train_point_acc']:.3f} | – |")
            continue
        for r in step_rows(run_dir, args.windows):
            rows.append(r)
            print(f"| {r['run']} | P{r['step']} | {r['points']:,} | {r['positive_share']:.3f} | "
                  f"{r['majority_baseline']:.3f} | {r['train_point_acc']:.3f} | "
                  f"{r['train_point_acc'] - r['majority_baseline']:+.3f} |")
    save(args.record, "point_learning", recording, rows, arguments=args)


if __name__ == "__main__":
    main()
