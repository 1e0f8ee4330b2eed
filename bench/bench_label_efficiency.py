"""The benchmark that matters: point selection strategies against random, P0..P3, several seeds, paired by seed.

Runs ``apis run`` for every (seed, arm). An arm is a strategy (``--strategies entropy random``: the arm named
``entropy`` sets ``selection.metric=entropy``) or a named setting (``--arm models selection.metric=entropy
selection.sets=[models]``: any overrides, ``{seed}`` in them replaced by the seed; ``loop.initial_run=`` makes
an arm train its own M0). The later arms of a seed reuse the first arm's P0 and M0 (all strategies of an
experiment start from the same model; docs/design.md, "The method"); ``--m0-from`` an earlier
benchmark's ``--out`` makes every run reuse that benchmark's P0 and M0 of the same seed (from its
``<m0-arm>_seed<N>``, ``entropy_seed<N>`` by default).

Every run resumes, so the benchmark can be stopped and restarted at any time (and one seed run per process, see
bench/plan_power.sh); finished steps are kept. ``--collect`` trains nothing and reads the finished runs. At the
end it writes ``curves.png`` and ``comparison.md`` into ``--out``, prints the per-step table and every arm's
paired difference of mask AP against ``--baseline`` per seed, with its 95 % t-interval and verdict
(apis.evaluation.paired), and writes the record (every run's per-step metrics and the comparisons).

    .venv/bin/python bench/bench_label_efficiency.py --config condinst_r18_cpu_dsb.yaml \\
        --seeds 0 1 2 --out runs/label_efficiency --record results/label_efficiency_dsb.json [key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from records import add_record_option, provenance, save

from apis.active.compare import (
    comparisons_markdown,
    markdown_table,
    paired_comparisons,
    plot_curves,
    read_run,
)
from apis.config_loading import load_config
from apis.loop.run import run_active_loop
from apis.utils.io import atomic_write_text


def arms_of(args: argparse.Namespace) -> dict[str, list[str]]:
    """``{arm name: its overrides}``: the ``--arm`` settings, or one per ``--strategies`` entry."""
    if args.arm:
        return {name: overrides for name, *overrides in args.arm}
    return {strategy: [f"selection.metric={strategy}"] for strategy in args.strategies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="condinst_r18_cpu_dsb.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=["entropy", "random"])
    parser.add_argument("--arm", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                        help="a named setting with its overrides (repeat; replaces --strategies)")
    parser.add_argument("--baseline", default="random", help="the arm every other arm is compared with")
    parser.add_argument("--steps", type=int, default=3, help="loop.steps (an arm's own loop.steps wins)")
    parser.add_argument("--out", type=Path, default=Path("runs/label_efficiency"))
    parser.add_argument("--m0-from", type=Path, help="earlier --out whose --m0-arm runs give P0 and M0")
    parser.add_argument("--m0-arm", default="entropy", help="the arm of --m0-from whose runs give P0 and M0")
    parser.add_argument("--collect", action="store_true", help="run nothing: read the finished runs")
    add_record_option(parser, "label_efficiency")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    started = provenance()
    arms = arms_of(args)

    runs: dict[str, list[list[dict]]] = {name: [] for name in arms}
    rows = []
    for seed in args.seeds:
        first = args.m0_from / f"{args.m0_arm}_seed{seed}" if args.m0_from else None
        for name, arm_overrides in arms.items():
            run_dir = args.out / f"{name}_seed{seed}"
            shared = [f"loop.initial_run={first}"] if first is not None else []
            overrides = [*args.overrides, f"seed={seed}", f"loop.steps={args.steps}", *shared,
                         *(o.replace("{seed}", str(seed)) for o in arm_overrides), f"output_dir={run_dir}"]
            if not args.collect:
                start = time.perf_counter()
                run_active_loop(load_config(args.config, overrides))
                print(f"{run_dir}: done in {time.perf_counter() - start:.0f} s", flush=True)
            first = first or run_dir
            steps = read_run(run_dir)
            runs[name].append(steps)
            rows += [{"group": name, "run": str(run_dir), "overrides": arm_overrides, **step} for step in steps]
    comparisons = paired_comparisons(runs, args.baseline)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, args.out / "curves.png")
    table = markdown_table(runs) + "\n" + comparisons_markdown(comparisons)
    atomic_write_text(args.out / "comparison.md", f"# {args.out}\n\n![curves](curves.png)\n\n{table}")
    print(table, flush=True)
    save(args.record, "label_efficiency", started, rows, arguments={**vars(args), "arms": arms},
         config=load_config(args.config, args.overrides), comparisons=[c.as_dict() for c in comparisons])


if __name__ == "__main__":
    main()
