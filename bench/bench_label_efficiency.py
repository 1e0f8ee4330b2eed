"""The benchmark that matters: point selection strategies against random, P0..P3, several seeds, paired by seed.

Runs ``apis run`` for every (seed, arm). An arm is a strategy (``--strategies entropy random``: the arm named
``entropy`` sets ``selection.metric=entropy``) or a named setting (``--arm models selection.metric=entropy
selection.sets=[models]``: any overrides, ``{seed}`` in them replaced by the seed; ``loop.initial_run=`` makes
an arm train its own M0). The later arms of a seed reuse the first arm's P0 and M0 (all strategies of an
experiment start from the same model; docs/design.md, "The method"); ``--m0-from`` an earlier
benchmark's ``--out`` makes every run reuse that benchmark's P0 and M0 of the same seed (from its
``<m0-arm>_seed<N>``, ``entropy_seed<N>`` by default).

Every run resumes, so the benchmark can be stopped and restarted at any time (and one seed run per process, see
bench/plan.sh); finished steps are kept. ``--collect`` trains nothing and reads the finished runs. ``--pieces``
trains nothing and combines records of this script written one seed at a time (bench/plan.sh keeps them under
``results/pieces/``, so an experiment longer than a working session is finished by several, on other days or
machines: each piece's commit, date and machine go into the combined record's arguments). At the
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

from records import add_record_option, plain, provenance, read_record, save

from apis.active.compare import (
    comparisons_markdown,
    markdown_table,
    paired_comparisons,
    plot_curves,
    read_run,
)
from apis.config import to_dict
from apis.config_loading import load_config, merge_overrides
from apis.utils.io import atomic_write_text, strict_json


def arms_of(args: argparse.Namespace) -> dict[str, list[str]]:
    """``{arm name: its overrides}``: the ``--arm`` settings, or one per ``--strategies`` entry."""
    if args.arm:
        return {name: overrides for name, *overrides in args.arm}
    return {strategy: [f"selection.metric={strategy}"] for strategy in args.strategies}


# Arguments that may differ between the pieces of one experiment: what each piece ran, and where it wrote.
PER_PIECE = {"seeds", "collect", "pieces", "piece_records", "out", "record"}


def combine_pieces(paths: list[Path], arguments: dict, config: dict
                   ) -> tuple[dict[str, list[list[dict]]], list[dict], list[dict]]:
    """``(runs per arm, rows, pieces)`` from records of this script (one or more seeds each), in seed order;
    ``arguments`` and ``config`` (as a record holds them) are the experiment's. Raises ValueError naming the
    record when it is another benchmark's, another experiment's (arguments or resolved config) or repeats a seed."""
    by_seed: dict[str, dict[int, list[dict]]] = {name: {} for name in arguments["arms"]}
    pieces = []
    expected = {k: v for k, v in arguments.items() if k not in PER_PIECE}
    for path in paths:
        piece = read_record(path)
        if piece["bench"] != "label_efficiency":
            raise ValueError(f"{path}: a record of bench_{piece['bench']}, not of bench_label_efficiency")
        theirs = {k: v for k, v in piece["arguments"].items() if k not in PER_PIECE}
        differing = sorted(k for k in expected.keys() | theirs.keys() if expected.get(k) != theirs.get(k))
        if differing or piece["config"] != config:
            what = f"arguments {differing} differ" if differing else "the resolved config differs"
            raise ValueError(f"{path}: a piece of another experiment ({what})")
        seen = {(row["group"], row["seed"]) for row in piece["rows"]}
        for group, seed in sorted(seen):
            if seed in by_seed[group]:
                raise ValueError(f"{path}: seed {seed} of arm {group} is in an earlier piece too")
            by_seed[group][seed] = sorted((r for r in piece["rows"] if (r["group"], r["seed"]) == (group, seed)),
                                          key=lambda r: r["step"])
        pieces.append({"record": str(path), "seeds": piece["arguments"]["seeds"],
                       **{k: piece[k] for k in ("commit", "dirty", "date", "machine", "wall_s")}})
    runs = {name: [seeds[seed] for seed in sorted(seeds)] for name, seeds in by_seed.items()}
    return runs, [row for seeds in runs.values() for steps in seeds for row in steps], pieces


def run_or_read(args: argparse.Namespace, arms: dict[str, list[str]]
                ) -> tuple[dict[str, list[list[dict]]], list[dict]]:
    """Run (or, with ``--collect``, read) every (seed, arm): ``(runs per arm, rows)``."""
    runs: dict[str, list[list[dict]]] = {name: [] for name in arms}
    rows = []
    for seed in args.seeds:
        first = args.m0_from / f"{args.m0_arm}_seed{seed}" if args.m0_from else None
        for name, arm_overrides in arms.items():
            run_dir = args.out / f"{name}_seed{seed}"
            shared = [f"loop.initial_run={first}"] if first is not None else []
            arm = [o.replace("{seed}", str(seed)) for o in arm_overrides]  # "loop.initial_run=": its own M0
            overrides = [*args.overrides, f"seed={seed}", f"loop.steps={args.steps}", *merge_overrides(shared, arm),
                         f"output_dir={run_dir}"]
            if not args.collect:
                from apis.loop.run import run_active_loop  # here: --collect and --pieces train nothing

                start = time.perf_counter()
                run_active_loop(load_config(args.config, overrides))
                print(f"{run_dir}: done in {time.perf_counter() - start:.0f} s", flush=True)
            first = first or run_dir
            steps = read_run(run_dir)
            runs[name].append(steps)
            rows += [{"group": name, "run": str(run_dir), "overrides": arm_overrides, **step} for step in steps]
    return runs, rows


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
    parser.add_argument("--pieces", type=Path, nargs="+", metavar="RECORD",
                        help="run nothing: combine these records of this script (one or more seeds each)")
    add_record_option(parser, "label_efficiency")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    started = provenance()
    arms = arms_of(args)

    config = load_config(args.config, args.overrides)
    pieces = []
    if args.pieces:
        try:
            # As a record holds them: paths as strings, infinities as null.
            runs, rows, pieces = combine_pieces(args.pieces, strict_json(plain({**vars(args), "arms": arms})),
                                                strict_json(plain(to_dict(config))))
        except ValueError as error:
            raise SystemExit(str(error)) from None
        args.seeds = sorted({row["seed"] for row in rows})
    else:
        runs, rows = run_or_read(args, arms)
    comparisons = paired_comparisons(runs, args.baseline)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, args.out / "curves.png")
    table = markdown_table(runs) + "\n" + comparisons_markdown(comparisons)
    atomic_write_text(args.out / "comparison.md", f"# {args.out}\n\n![curves](curves.png)\n\n{table}")
    print(table, flush=True)
    save(args.record, "label_efficiency", started, rows,
         arguments={**vars(args), "arms": arms, **({"piece_records": pieces} if pieces else {})},
         config=config, comparisons=[c.as_dict() for c in comparisons])


if __name__ == "__main__":
    main()
