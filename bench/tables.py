"""Every table of docs/results.md and docs/benchmarks.md, written from the records in results/ (docs/records.md).

A table lives in a doc between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``; :data:`TABLES` says which
records each name reads and how it is drawn. A table whose records do not exist yet is one line that says so
and gives the command that makes them.

    python bench/tables.py            # rewrite the tables in place
    python bench/tables.py --check    # exit 1 naming every table that differs from its records
    python bench/tables.py --list     # every table, its records and whether they exist
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from records import REPO, read_record

from apis.evaluation.paired import INTERVAL, PairedComparison, paired_comparison, sample_sd

DOCS = ("docs/results.md", "docs/benchmarks.md")
MARKER = re.compile(r"<!-- table:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /table:(?P=name) -->", re.DOTALL)


# ---- cells -----------------------------------------------------------------------------------------------------

def mean_sd(values: list[float | None], digits: int = 3) -> str:
    """``mean ± sample sd`` (n - 1) of the values that are numbers; the value alone for one, ``–`` for none."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{sum(values) / len(values):.{digits}f} ± {sample_sd(values):.{digits}f}"


def markdown(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A markdown table; ``align``: one character per column, ``l`` left or ``r`` right (default: first left)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---|" if a == "l" else "---:|" for a in align)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def comparison_rows(comparisons: list[PairedComparison], digits: int = 2) -> list[list[str]]:
    return [[c.a, c.b, "-" if c.step is None else f"P{c.step}", str(len(c.seeds)),
             " ".join(f"{d:+.{digits}f}" for d in c.differences), c.cell(digits), f"**{c.verdict}**"]
            for c in comparisons]


COMPARISON_HEADER = ["claim favours", "against", "step", "seeds", "per-seed difference",
                     "mean [95 % t-interval]", "verdict"]


def comparisons_table(comparisons: list[PairedComparison], digits: int = 2) -> str:
    return markdown(COMPARISON_HEADER, comparison_rows(comparisons, digits), "lllrlll")


# ---- training-mask quality (bench/bench_label_quality.py) ----------------------------------------------------

def by_group_and_step(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """Rows grouped by ``(group, step)``, in sorted order."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["group"], row["step"])].append(row)
    return dict(sorted(groups.items()))


def constraint_gain(group: str, step: int, members: list[dict]) -> PairedComparison:
    """``local - none`` mIoU of one (group, step), seed by seed: does the point constraint help?"""
    return paired_comparison({m["seed"]: m["mIoU"]["local"] for m in members},
                             {m["seed"]: m["mIoU"]["none"] for m in members}, metric="mIoU",
                             a_name=f"{group}, local", b_name=f"{group}, none", step=step)


def label_quality_table(rows: list[dict]) -> str:
    """One line per (group, step), mean ± sample sd over seeds; ``local - none`` with its paired interval."""
    lines = ["| run | step | annotation h | seeds | exported mIoU (local) | threshold | none (unconstrained) "
             "| box fill mIoU | local - box fill | local - none, 95 % CI | beats box (local) | mask AP (local) "
             "| mask AP box fill | contradicted by the model | Spearman (quality, IoU) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (group, step), members in by_group_and_step(rows).items():
        lines.append(
            f"| {group} | {'P' + str(step) if group != 'full-mask model' else '-'} "
            f"| {mean_sd([m['hours'] for m in members])} | {len(members)} "
            f"| {mean_sd([m['mIoU']['local'] for m in members])} "
            f"| {mean_sd([m['mIoU']['threshold'] for m in members])} "
            f"| {mean_sd([m['mIoU']['none'] for m in members])} "
            f"| {mean_sd([m['box_fill_mIoU'] for m in members])} "
            f"| {mean_sd([m['mIoU']['local'] - m['box_fill_mIoU'] for m in members])} "
            f"| {constraint_gain(group, step, members).cell(4)} "
            f"| {mean_sd([m['beats_box_fill']['local'] for m in members])} "
            f"| {mean_sd([m['mask_AP']['local'] for m in members])} "
            f"| {mean_sd([m['box_fill_mask_AP'] for m in members])} "
            f"| {mean_sd([m['contradicted_share'] for m in members])} "
            f"| {mean_sd([m['quality_iou_spearman'] for m in members])} |")
    return "\n".join(lines)


def _steps_of(rows: list[dict], group: str) -> dict[int, dict[int, dict]]:
    """``{step: {seed: row}}`` of one group."""
    found: dict[int, dict[int, dict]] = defaultdict(dict)
    for row in rows:
        if row["group"] == group:
            found[row["step"]][row["seed"]] = row
    return found


def exported_vs_box_fill(records: list[dict]) -> str:
    """Per record (data set) and step: APIS's exported training masks (``local``) minus filling the box, mIoU."""
    comparisons = []
    for content in records:
        for step, seeds in sorted(_steps_of(content["rows"], "APIS entropy").items()):
            comparisons.append(paired_comparison(
                {s: r["mIoU"]["local"] for s, r in seeds.items()}, {s: r["box_fill_mIoU"] for s, r in seeds.items()},
                metric="mIoU", a_name=f"{_data_set(content)}: boxes + points (exported masks)",
                b_name="box fill", step=step))
    return comparisons_table(comparisons, 3)


def apis_vs_afis_masks(records: list[dict]) -> str:
    """APIS's exported training masks minus AFIS's (bought masks exact, the rest predicted) at the same step,
    which is the same annotation seconds, paired by seed; the records of one data set together."""
    by_data: dict[str, list[dict]] = defaultdict(list)
    for content in records:
        by_data[_data_set(content)] += content["rows"]
    comparisons = []
    for data, rows in by_data.items():
        apis, afis = _steps_of(rows, "APIS entropy"), _steps_of(rows, "AFIS instance min-det-loss")
        for step in sorted(apis.keys() & afis.keys()):
            comparisons.append(paired_comparison(
                {s: r["mIoU"]["local"] for s, r in apis[step].items()},
                {s: r["mIoU"]["local"] for s, r in afis[step].items()}, metric="mIoU",
                a_name=f"{data}: APIS", b_name="AFIS", step=step))
    return comparisons_table(comparisons, 3)


def _data_set(content: dict) -> str:
    """``synthetic`` or ``DSB2018``, from the runs a training-mask record read."""
    return "DSB2018" if "dsb" in content["command"] else "synthetic"


# ---- label efficiency (bench/bench_label_efficiency.py) ------------------------------------------------------

def label_efficiency_table(records: list[dict]) -> str:
    """Mask AP and annotation hours per arm and step, mean ± sample sd over seeds, then each arm minus the
    baseline per seed."""
    parts = []
    for content in records:
        groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
        for row in content["rows"]:
            groups[(row["group"], row["step"])].append(row)
        parts.append(markdown(
            ["arm", "step", "seeds", "mask AP", "annotation h"],
            [[g, f"P{s}", str(len(rows)), mean_sd([r.get("mask_AP") for r in rows], 2),
              mean_sd([r["annotation_seconds"] / 3600 if r.get("annotation_seconds") is not None else None
                       for r in rows], 2)] for (g, s), rows in groups.items()], "llrrr"))
        comparisons = [PairedComparison(**c) for c in content["comparisons"]]
        parts.append(f"Mask AP, arm minus {comparisons[0].b if comparisons else 'baseline'}; {INTERVAL}:\n\n"
                     + comparisons_table(comparisons))
    return "\n\n".join(parts)


def equal_points_table(records: list[dict]) -> str:
    """Table 2's question: each arm's last step against the baseline's last step (more points), paired by seed."""
    comparisons = []
    for content in records:
        arms = {row["group"] for row in content["rows"]}
        baseline = content.get("arguments", {}).get("baseline", "random")
        last = {arm: max(r["step"] for r in content["rows"] if r["group"] == arm) for arm in arms}
        for arm in sorted(arms - {baseline}):
            a = {r["seed"]: r["mask_AP"] for r in content["rows"] if r["group"] == arm and r["step"] == last[arm]}
            b = {r["seed"]: r["mask_AP"] for r in content["rows"]
                 if r["group"] == baseline and r["step"] == last[baseline]}
            comparisons.append(paired_comparison(a, b, metric="mask_AP", a_name=f"{arm} P{last[arm]}",
                                                 b_name=f"{baseline} P{last[baseline]}"))
    return comparisons_table(comparisons)


def _by_seed(rows: list[dict], group: str, step: int, key: str) -> dict[int, float]:
    return {r["seed"]: r.get(key) for r in rows if r["group"] == group and r["step"] == step}


def selected_points_table(records: list[dict]) -> str:
    """Fig. 4's question per step: are entropy's new points misclassified by the previous model more often than
    random's (entropy - random), and nearer the GT boundary (random - entropy, pixels)?"""
    comparisons = []
    for content in records:
        steps = sorted({r["step"] for r in content["rows"]} - {0})
        for key, a, b in (("misclassified_share", "entropy", "random"), ("boundary_distance_px", "random", "entropy")):
            comparisons += [paired_comparison(_by_seed(content["rows"], a, step, key),
                                              _by_seed(content["rows"], b, step, key), metric=key,
                                              a_name=f"{a} ({key})", b_name=b, step=step) for step in steps]
    return comparisons_table(comparisons, 3)


def recipe_vs_paper(records: list[dict]) -> str:
    """Per arm and step, the recipe's mask AP minus the paper setting's, paired by seed (records: recipe, paper)."""
    recipe, paper = (content["rows"] for content in records)
    keys = sorted({(r["group"], r["step"]) for r in recipe} & {(r["group"], r["step"]) for r in paper})
    return comparisons_table([paired_comparison(_by_seed(recipe, g, s, "mask_AP"), _by_seed(paper, g, s, "mask_AP"),
                                                metric="mask_AP", a_name=f"recipe, {g}", b_name=f"paper, {g}",
                                                step=s) for g, s in keys])


# ---- anything else: the rows as they are ---------------------------------------------------------------------

def _flat(row: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


# ---- sharp masks (bench/bench_sharp_masks.py, bench/bench_mask_resolution.py) -----------------------------------

SIZE_BUCKETS = ("0-16 px", "16-32 px", ">= 32 px")


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "–"


def sharp_masks_table(rows: list[dict], comparisons: list[dict]) -> str:
    """One line per (row, lever): mean ± sample sd over seeds of mask AP75, box AP75, their ratio and the true-box
    mIoU; mIoU - box fill and mIoU and mask AP against the lever's reference (the baseline; for a refined lever the
    same models unrefined; records before references: the baseline) as paired intervals over seeds; mIoU by object
    size; seconds per training iteration against the baseline's."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["row"], row["lever"])].append(row)
    found = {(c["metric"], c["a"], c["b"]): PairedComparison(**c) for c in comparisons}
    lines = []
    for (row, lever), members in groups.items():
        versus_fill = found.get((f"mIoU - box fill, {row}", lever, "box fill"))
        reference = members[0].get("reference", "baseline")
        versus_base = found.get((f"mIoU, {row}", lever, reference))
        ap_versus_base = found.get((f"mask_AP, {row}", lever, reference))
        base = groups.get((row, "baseline"), [])
        speed = sum(m["s_per_iter"] for m in members) / len(members)
        base_speed = sum(m["s_per_iter"] for m in base) / len(base) if base else None
        ratio = [m["mask_AP75"] / m["box_AP75"] if m["box_AP75"] else None for m in members]
        sizes = " / ".join(_mean([m["by_size"][b]["mIoU"] for m in members if b in m["by_size"]])
                           for b in SIZE_BUCKETS)
        lines.append([row, lever, str(len(members)), mean_sd([m["mask_AP"] for m in members], 2),
                      mean_sd([m["mask_AP75"] for m in members], 2), mean_sd([m["box_AP75"] for m in members], 2),
                      mean_sd(ratio, 2), mean_sd([m["mIoU"] for m in members]),
                      mean_sd([m["box_fill_mIoU"] for m in members]),
                      versus_fill.cell(3) if versus_fill else "–", versus_base.cell(3) if versus_base else "–",
                      ap_versus_base.cell(2) if ap_versus_base else "–",
                      sizes, f"{speed:.2f}" + (f" ({speed / base_speed:.2f}x)" if base_speed and lever != "baseline"
                                               else "")])
    header = ["supervision", "lever", "seeds", "mask AP", "mask AP75", "box AP75", "mask AP75 / box AP75",
              "mIoU on true boxes", "box fill", "mIoU - box fill [95 % t]", "mIoU - reference [95 % t]",
              "mask AP - reference [95 % t]",
              "mIoU < 16 / 16-32 / >= 32 px", "s / iter (x baseline)"]
    return markdown(header, lines, "ll" + "r" * (len(header) - 2))


def refinement_choice_table(rows: list[dict], best: int = 10) -> str:
    """The ``best`` refinement settings by mean true-box mIoU over the models (training images), then the unrefined
    masks and box fill; one column per model."""
    runs = list(dict.fromkeys(r["run"] for r in rows))
    by_setting: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        by_setting[row["setting"]][row["run"]] = row["mIoU"]
    mean = {setting: sum(values.values()) / len(values) for setting, values in by_setting.items()}
    refined = sorted((s for s in by_setting if s not in ("unrefined", "box fill")), key=lambda s: -mean[s])
    shown = [*refined[:best], "unrefined", "box fill"]
    lines = [[s, f"{mean[s]:.3f}", *(f"{by_setting[s][run]:.3f}" for run in runs)] for s in shown]
    header = ["setting", "mean mIoU", *(f"`{run}`" for run in runs)]
    return markdown(header, lines, "l" + "r" * (len(header) - 1))


def mask_resolution_table(rows: list[dict]) -> str:
    """The coverage oracle and box fill per test size, overall and by object size (instances in brackets)."""
    lines = [[f"{r['test_size']} ({r['max_size']})", r["mask"], str(r["instances"]), f"{r['mIoU']['all']:.3f}"]
             + [f"{r['mIoU'][b]:.3f} ({r['instances_by_size'][b]})" if b in r["mIoU"] else "–" for b in SIZE_BUCKETS]
             for r in rows]
    return markdown(["test size (max)", "mask", "instances", "mIoU", *(f"mIoU {b} (n)" for b in SIZE_BUCKETS)],
                    lines, "llrrrrr")


def rows_table(records: list[dict]) -> str:
    """Every record's rows, one column per scalar key (nested keys as ``a/b``), numbers to 3 decimals."""
    rows = [_flat(row) for content in records for row in content["rows"]]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return markdown(columns, [[_cell(row.get(c)) for c in columns] for row in rows], "l" * len(columns))


def test_time_table(rows: list[dict], slowest: int = 3) -> str:
    """One line per timed run of the suite: its counts, wall time against the 6-minute target, its CPU time ("–" in
    records made before it was kept), the load before it and its slowest tests."""
    lines = [[str(r["repeat"] + 1), str(r["workers"]), str(r["passed"]), str(r["failed"]), str(r["skipped"]),
              f"{r['wall_s'] / 60:.1f}", "met" if r["wall_s"] <= 360 else "not met",
              "–" if r.get("cpu_s") is None else f"{r['cpu_s'] / 60:.1f}", f"{r['load_1min_before']:.2f}",
              "; ".join(f"{t['test'].split('::')[-1]} {t['seconds']:.0f} s" for t in r["slowest"][:slowest])]
             for r in rows]
    return markdown(["run", "workers", "passed", "failed", "skipped", "wall (min)", "6 min target", "CPU (min)",
                     "load before", f"slowest {slowest}"], lines, "rrrrrrlrrl")


def demo_time_table(rows: list[dict]) -> str:
    """One line per timed ``apis demo``: wall time against the 10-minute target, the minutes into the demo at which
    M0, the strategies' steps and the report were done ("–" in records made before the demo printed them), CPU,
    memory, the load before it and the demo's closing numbers (the exported masks' mean IoU against filling each
    box)."""
    def phases(r: dict) -> str:
        return " / ".join("–" if r.get(key) is None else f"{r[key]:.1f}" for key in ("m0_min", "steps_min",
                                                                                   "report_min"))

    lines = [[str(r["repeat"] + 1), r["demo_args"] or "(none)", f"{r['wall_s'] / 60:.1f}",
              "met" if r["target_met"] else "not met", phases(r), f"{r['cpu_s'] / 60:.1f}", str(r["peak_rss_mib"]),
              f"{r['load_1min_before']:.2f}", _cell(r["masks_miou"]), _cell(r["box_fill_miou"]),
              str(r["returncode"])] for r in rows]
    return markdown(["run", "demo arguments", "wall (min)", "10 min target", "M0 / steps / report done (min)",
                     "CPU (min)", "peak RSS (MiB)", "load before", "masks mIoU", "box fill mIoU", "exit"], lines,
                    "rlrlrrrrrrr")


def supervision(records: list[dict]) -> str:
    """The supervision table (apis.report.supervision): mask AP per row, share of full masks, per seed."""
    from apis.active.compare import markdown as compare_markdown
    from apis.report.supervision import supervision_table

    return compare_markdown(*supervision_table([row for c in records for row in c["rows"]], None)).rstrip("\n")


# ---- the tables ------------------------------------------------------------------------------------------------

def pieces_so_far(record: str) -> str:
    """``"; pieces so far: seeds 0, 1 (`results/pieces/<name>/`)"`` for a record bench/plan.sh is still making a
    seed at a time, ``""`` when it has no piece yet."""
    folder = Path(record).with_suffix("")
    folder = folder.parent / "pieces" / folder.name
    seeds = sorted(int(path.stem.removeprefix("seed")) for path in (REPO / folder).glob("seed*.json"))
    return f"; pieces so far: seeds {', '.join(map(str, seeds))} (`{folder}/`)" if seeds else ""


@dataclass(frozen=True)
class Table:
    """A table of the docs: the records it reads (paths from the repository root), how it is drawn from them,
    and the command that makes the records (shown while they do not exist)."""

    records: tuple[str, ...]
    render: Callable[[list[dict]], str]
    command: str

    def text(self) -> str:
        """The table's body between its markers: provenance lines and the table, or the not-yet-measured line."""
        missing = [path for path in self.records if not (REPO / path).is_file()]
        if missing:
            return (f"_Not yet measured under records ({', '.join(f'`{p}`' for p in missing)} missing"
                    f"{''.join(pieces_so_far(path) for path in missing)}). "
                    f"Command: `{self.command}`, then `python bench/tables.py`._\n")
        contents = [read_record(REPO / path) for path in self.records]
        sources = "\n".join(
            f"Record `{path}`: `{c['command']}`; commit {(c['commit'] or 'unknown')[:7]}"
            f"{' (dirty tree)' if c['dirty'] else ''}, {c['date'][:10]}, {c['machine']['cpu']}, "
            f"`nproc` {c['machine']['nproc']}, {c['machine']['gpu'] or 'CPU only'}, {c['wall_s'] / 60:.0f} min"
            f"{combined_from(c)}."
            for path, c in zip(self.records, contents))
        return f"{sources}\n\n{self.render(contents)}\n"


def combined_from(content: dict) -> str:
    """For a record combined from per-seed pieces (``--pieces``): where the runs themselves were made, e.g.
    ``"; combined from 6 pieces (commits db3c94f, 2ba73b3; 2026-12-02 to 2026-12-03; 465 min of runs)"``;
    ``""`` for any other record."""
    pieces = content["arguments"].get("piece_records") or []
    if not pieces:
        return ""
    commits = ", ".join(dict.fromkeys(f"{(p['commit'] or 'unknown')[:7]}{' (dirty tree)' if p['dirty'] else ''}"
                                      for p in pieces))
    dates = sorted(p["date"][:10] for p in pieces)
    span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    machines = ", ".join(dict.fromkeys(f"{p['machine']['cpu']} (`nproc` {p['machine']['nproc']})" for p in pieces))
    return (f"; combined from {len(pieces)} pieces, one per seed (commits {commits}; {span}; {machines}; "
            f"{sum(p['wall_s'] for p in pieces) / 60:.0f} min of runs)")


def _one(render: Callable[[list[dict]], str]) -> Callable[[list[dict]], str]:
    return lambda records: render(records[0]["rows"])


PLAN = "bench/plan.sh"
POWER_RECIPE = "results/label_efficiency_synth_recipe.json"
POWER_PAPER = "results/label_efficiency_synth_paper.json"
TABLES: dict[str, Table] = {
    # docs/benchmarks.md
    "eval": Table(("results/eval.json",), rows_table, "python bench/bench_eval.py --record results/eval.json"),
    "train_speed": Table(("results/train_speed.json",), rows_table,
                         "python bench/bench_train_speed.py --size 512 --batch 2 --iters 4"),
    "selection": Table(("results/selection.json",), rows_table,
                       "python bench/bench_selection.py --config condinst_r18_cpu_dsb.yaml --checkpoint M0.pth "
                       "--images 531 --small 100 data.min_size_test=256 data.max_size=512 selection.scales=[256]"),
    "inference": Table(("results/inference.json",), rows_table,
                       "python bench/bench_inference.py --config condinst_r18_cpu_dsb.yaml --checkpoint MODEL.pth"),
    "sharding": Table(("results/sharding.json",), rows_table,
                      "python bench/bench_sharding.py --config condinst_r18_cpu_dsb.yaml --images 64 --procs 1,2 "
                      "data.min_size_test=256 data.max_size=512 selection.scales=[256]"),
    "test_time": Table(("results/test_time.json",), _one(test_time_table), "python bench/bench_test_time.py"),
    "demo_time": Table(("results/demo_time.json",), _one(demo_time_table), "python bench/bench_demo_time.py"),
    "annotate": Table(("results/annotate.json",), rows_table,
                      "python bench/bench_annotate.py --questions 5000 --clients 8"),
    "supervision_synth": Table(("results/supervision_synth.json",), supervision,
                               "python bench/bench_supervision.py --config condinst_r18_cpu_synth.yaml --seeds 0 1 2 "
                               "--out runs/sup_synth --record results/supervision_synth.json --rows \"full masks\" "
                               "\"boxes + 1 point + box terms\" \"boxes + 10 points + box terms\" "
                               "\"boxes only (BoxInst)\""),
    "supervision_dsb_gpu": Table(("results/supervision_dsb_gpu.json",), supervision,
                                 "DSB=../shared/data/dsb2018_nuclei RUNS=runs/dsb_gpu bench/dsb_gpu.sh"),
    "label_quality_synth": Table(("results/label_quality_synth.json",), _one(label_quality_table),
                                 "see the commands above"),
    "label_quality_dsb": Table(("results/label_quality_dsb.json",), _one(label_quality_table),
                               "see the commands above"),
    "label_quality_dsb_afis": Table(("results/label_quality_dsb_afis.json",), _one(label_quality_table),
                                    "see the commands above"),
    "sharp_masks_dsb": Table(("results/sharp_masks_dsb.json",),
                             lambda records: sharp_masks_table(records[0]["rows"], records[0]["comparisons"]),
                             "see the commands above"),
    "sharp_masks_synth": Table(("results/sharp_masks_synth.json",),
                               lambda records: sharp_masks_table(records[0]["rows"], records[0]["comparisons"]),
                               "see the commands above"),
    "sharp_masks_refined_dsb": Table(("results/sharp_masks_refined_dsb.json",),
                                     lambda records: sharp_masks_table(records[0]["rows"], records[0]["comparisons"]),
                                     "see the commands above"),
    "sharp_masks_refined_synth": Table(("results/sharp_masks_refined_synth.json",),
                                       lambda records: sharp_masks_table(records[0]["rows"],
                                                                         records[0]["comparisons"]),
                                       "see the commands above"),
    "refinement_choice_dsb": Table(("results/refinement_choice_dsb.json",), _one(refinement_choice_table),
                                   "see the commands above"),
    "mask_resolution_dsb": Table(("results/mask_resolution_dsb.json",), _one(mask_resolution_table),
                                 "see the commands above"),
    "mask_resolution_synth": Table(("results/mask_resolution_synth.json",), _one(mask_resolution_table),
                                   "see the commands above"),
    # docs/results.md
    "entropy_vs_random_synth_recipe": Table((POWER_RECIPE,), label_efficiency_table, f"{PLAN} power_recipe"),
    "entropy_vs_random_synth_paper": Table((POWER_PAPER,), label_efficiency_table, f"{PLAN} power_paper"),
    "entropy_vs_random_dsb_gpu": Table(("results/label_efficiency_dsb_gpu.json",), label_efficiency_table,
                                       "DSB=../shared/data/dsb2018_nuclei RUNS=runs/dsb_gpu bench/dsb_gpu.sh"),
    "selected_points_synth": Table((POWER_RECIPE,), selected_points_table, f"{PLAN} power_recipe"),
    "recipe_vs_paper_synth": Table((POWER_RECIPE, POWER_PAPER), recipe_vs_paper,
                                   f"{PLAN} power_recipe; {PLAN} power_paper"),
    "departures_synth": Table(("results/analyses_synth_departures.json",), label_efficiency_table,
                              f"{PLAN} departures"),
    "strategies_synth": Table(("results/analyses_synth_strategies.json",), label_efficiency_table,
                              f"{PLAN} strategies"),
    "sets_synth": Table(("results/analyses_synth_sets.json",), label_efficiency_table, f"{PLAN} sets"),
    "schedules_synth": Table(tuple(f"results/analyses_synth_schedule_{s}.json" for s in ("short", "default", "long")),
                             label_efficiency_table, f"{PLAN} schedules"),
    "long_loop_synth": Table(("results/analyses_synth_long_loop.json",), equal_points_table, f"{PLAN} long_loop"),
    "afis_synth": Table(("results/analyses_synth_afis.json",), label_efficiency_table, f"{PLAN} afis"),
    "boxinst_init_synth": Table(("results/analyses_synth_boxinst_init.json",), label_efficiency_table,
                                f"{PLAN} boxinst_init"),
    "transfer_synth": Table(("results/analyses_synth_transfer.json",), label_efficiency_table, f"{PLAN} transfer"),
    "masks_vs_box_fill": Table(("results/label_quality_synth.json", "results/label_quality_dsb.json"),
                               exported_vs_box_fill, "see docs/benchmarks.md, Training-mask quality"),
    "apis_vs_afis_masks": Table(("results/label_quality_synth.json", "results/label_quality_dsb.json",
                                 "results/label_quality_dsb_afis.json"), apis_vs_afis_masks,
                                "see docs/benchmarks.md, Training-mask quality"),
}


def render_doc(text: str, doc: str) -> tuple[str, list[str]]:
    """``text`` with every marked table rewritten, and the names of those that changed; an unknown name is an
    error naming the doc."""
    changed = []

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(f"error: {doc}: table '{name}' is not in bench/tables.py's TABLES")
        body = TABLES[name].text() + "\n"  # a blank line ends the table before the closing marker
        if body != match["body"]:
            changed.append(name)
        return f"<!-- table:{name} -->\n{body}<!-- /table:{name} -->"

    return MARKER.sub(replace, text), changed


def main(argv: list[str] | None = None, root: Path = REPO) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    parser.add_argument("--list", action="store_true", help="every table, its records and whether they exist")
    args = parser.parse_args(argv)
    if args.list:
        for name, table in TABLES.items():
            present = all((REPO / p).is_file() for p in table.records)
            print(f"{name}: {', '.join(table.records)} ({'recorded' if present else 'not yet measured'})")
        return 0
    stale = []
    for doc in DOCS:
        path = root / doc
        text = path.read_text()
        new, changed = render_doc(text, doc)
        stale += [f"{doc}: {name}" for name in changed]
        if changed and not args.check:
            path.write_text(new)
    if args.check and stale:
        print("tables that differ from their records (run python bench/tables.py):\n  " + "\n  ".join(stale),
              file=sys.stderr)
        return 1
    print(f"{'checked' if args.check else 'wrote'} the tables of {', '.join(DOCS)}"
          + (f"; rewrote {len(stale)}" if stale and not args.check else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
