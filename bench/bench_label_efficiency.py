"""The benchmark that matters: random vs entropy point selection, P0..P3, several seeds.

Runs ``apis run`` for every (seed, strategy); the random run of a seed reuses that seed's P0 and
M0 from the entropy run (all strategies of an experiment start from the same model; docs/design.md,
"The method").
Every run resumes, so the benchmark can be stopped and restarted at any time; finished steps are
kept. At the end it writes ``curves.png`` and ``comparison.md`` into ``--out`` and prints the table.
``--m0-from`` an earlier benchmark's ``--out`` makes every run reuse that benchmark's P0 and M0 of the
same seed (from its ``entropy_seed<N>``), for experiments that change only the fine-tuning steps.

    .venv/bin/python bench/bench_label_efficiency.py --config condinst_r18_cpu_dsb.yaml \\
        --seeds 0 1 2 --out runs/label_efficiency [key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from apis.active.compare import compare_runs
from apis.config_loading import load_config
from apis.loop.run import run_active_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="condinst_r18_cpu_dsb.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=["entropy", "random"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/label_efficiency"))
    parser.add_argument("--m0-from", type=Path, help="earlier --out whose entropy_seed<N> runs give P0 and M0")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    run_dirs = []
    for seed in args.seeds:
        first = args.m0_from / f"entropy_seed{seed}" if args.m0_from else None
        for strategy in args.strategies:
            run_dir = args.out / f"{strategy}_seed{seed}"
            overrides = [*args.overrides, f"seed={seed}", f"selection.metric={strategy}",
                         f"loop.steps={args.steps}", f"output_dir={run_dir}"]
            if first is not None:
                overrides.append(f"loop.initial_run={first}")
            start = time.perf_counter()
            run_active_loop(load_config(args.config, overrides))
            print(f"{run_dir}: done in {time.perf_counter() - start:.0f} s", flush=True)
            first = first or run_dir
            run_dirs.append(run_dir)
        print(compare_runs(run_dirs, args.out), flush=True)


if __name__ == "__main__":
    main()
