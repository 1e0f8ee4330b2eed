"""Supervision table (Table 2 of the paper): the same config and schedule for every row, val mask AP for
full masks, boxes only (BoxInst's projection + pairwise terms), and boxes + 1 or 10 random points per
instance (labelled by the simulated oracle), with and without the box terms. Each row runs for every
``--seeds`` value; the table gives mean +- std over seeds and each row's share of the full-mask AP.

Each (row, seed) trains into ``--out/<row>/seed<K>`` and resumes when run again; a finished one keeps
its metrics in ``eval.json`` and is not recomputed, so the benchmark can run in pieces.

    .venv/bin/python bench/bench_supervision.py [key=value ...] --config condinst_r18_cpu_synth.yaml \\
        --out runs/supervision_synth --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from records import add_record_option, provenance, save

from apis.active.compare import markdown
from apis.config_loading import load_config
from apis.report.supervision import REFERENCE, supervision_table
from apis.utils.io import atomic_write_json

NO_POINTS = ["loss.points=0.0", "data.random_points_per_instance=0"]
ROWS = {
    "full masks": ["loss.full=1.0", "loss.box=0.0", *NO_POINTS],
    "boxes only (BoxInst)": ["loss.full=0.0", "loss.box=1.0", *NO_POINTS],
    "boxes + 1 point": ["loss.full=0.0", "loss.box=0.0", "data.random_points_per_instance=1"],
    "boxes + 3 points": ["loss.full=0.0", "loss.box=0.0", "data.random_points_per_instance=3"],
    "boxes + 10 points": ["loss.full=0.0", "loss.box=0.0", "data.random_points_per_instance=10"],
    "boxes + 1 point + box terms": ["loss.full=0.0", "loss.box=1.0", "data.random_points_per_instance=1"],
    "boxes + 10 points + box terms": ["loss.full=0.0", "loss.box=1.0", "data.random_points_per_instance=10"],
}
# Rows with points take the point-loss weight from --point-weight (default: the config's loss.points).


def row_dir(out: Path, name: str, seed: int) -> Path:
    slug = name.replace(" + ", "_plus_").replace(" ", "_").replace("(", "").replace(")", "")
    return out / slug / f"seed{seed}"


def run_row(name: str, seed: int, config: str, out: Path, overrides: list[str], point_weight: float | None
            ) -> dict:
    """Train and evaluate one (row, seed); returns its metrics (read back when already done)."""
    # Imported here: --report-only (and a row already done) trains nothing, and these bring in torchvision.
    from apis.engine.inference import evaluate_checkpoint
    from apis.engine.trainer import train

    folder = row_dir(out, name, seed)
    done = folder / "eval.json"
    if done.exists():
        return json.loads(done.read_text())
    weight = [f"loss.points={point_weight}"] if point_weight is not None and " point" in name else []
    cfg = load_config(config, [*overrides, *ROWS[name], *weight, f"seed={seed}", f"output_dir={folder}"])
    start = time.perf_counter()
    checkpoint = train(cfg)
    train_s = time.perf_counter() - start
    metrics = evaluate_checkpoint(checkpoint, cfg)
    result = {"row": name, "seed": seed, "train_s": train_s, "iterations": cfg.solver.max_iter, **metrics}
    atomic_write_json(done, result, indent=2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="condinst_r18_cpu_synth.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/supervision"))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--point-weight", type=float, help="loss.points of the rows with points")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: print the table of the (row, seed) pairs already finished")
    parser.add_argument("--reference", type=Path,
                        help="another --out whose full-mask rows the shares refer to (default: this one's)")
    add_record_option(parser, "supervision")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    recording, results = provenance(), []
    for seed in args.seeds:  # seed-major, so that an interrupted benchmark has whole tables of early seeds
        for name in args.rows:
            if args.report_only:
                done = row_dir(args.out, name, seed) / "eval.json"
                results += [json.loads(done.read_text())] if done.exists() else []
                continue
            results.append(run_row(name, seed, args.config, args.out, args.overrides, args.point_weight))
            print(json.dumps(results[-1]), flush=True)
    reference = None
    if args.reference is not None:
        full_dir = args.reference / row_dir(Path(), REFERENCE, 0).parent
        reference = [json.loads(path.read_text()) for path in sorted(full_dir.glob("seed*/eval.json"))]
    print("\n" + markdown(*supervision_table(results, reference)))
    save(args.record, "supervision", recording, results, arguments={**vars(args), "reference_rows": reference},
         config=load_config(args.config, args.overrides))


if __name__ == "__main__":
    main()
