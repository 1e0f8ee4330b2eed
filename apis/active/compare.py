"""Compare finished runs: ``curves.png`` (mask AP per step and per annotation hour) and a markdown table.

Runs with the same strategy label (metric + prediction sets, or the AFIS level and scorer) and the same
variant (:func:`variant`: prior-corrected fine-tuning, BoxInst init, global budget) are grouped; with
several seeds the curves show mean ± std and the table ``mean ± std (n)`` (sample standard deviation, n - 1),
and every strategy is compared with a baseline (random) seed by seed: the paired difference of mask AP per step
with its 95 % t-interval and verdict (:mod:`apis.evaluation.paired`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from apis.config import ExperimentConfig
from apis.config_loading import load_run_config
from apis.evaluation.paired import PairedComparison, paired_comparison, sample_sd
from apis.utils.io import atomic_save_png, atomic_write_text

TABLE_COLUMNS = (
    ("mask_AP", "mask AP", "{:.2f}"),
    ("mask_AP50", "AP50", "{:.2f}"),
    ("misclassified_share", "new points misclassified", "{:.1%}"),
    ("boundary_distance_px", "distance to boundary (px)", "{:.2f}"),
    ("annotation_seconds", "annotation h", "{:.2f}"),
)


COLUMN_NOTES = """\
How to read this: Pk = every training instance has k+1 labelled points (k with BoxInst init; AFIS: masks
bought with the seconds of those points). *mask AP*: COCO mask AP on the
validation set (percent). *new points misclassified*: the share of the points chosen at that step that
the previous model got wrong (prediction > 0.5 vs the annotator's answer); informative points are the
ones the model gets wrong. *distance to boundary*: mean distance in pixels from the new points to the
GT mask outline. *annotation h*: cumulative annotation time, {costs}.
With several seeds a cell reads mean ± std (number of seeds), the sample standard deviation (n - 1).
"""


def cost_note(configs: list[ExperimentConfig]) -> str:
    """How *annotation h* counts: the costs the runs were configured with (``oracle.box_cost_s``,
    ``oracle.point_cost_s``), or a pointer to them when the runs differ or none has a config."""
    costs = {(cfg.oracle.box_cost_s, cfg.oracle.point_cost_s) for cfg in configs}
    if len(costs) != 1:
        return "boxes plus points at the costs of each run's config (oracle.box_cost_s, oracle.point_cost_s)"
    ((box_s, point_s),) = costs
    return f"boxes ({box_s:g} s each) plus points ({point_s:g} s each)"


def read_run(run_dir: str | Path) -> list[dict]:
    """The per-step metrics of one run (``metrics.jsonl``), in step order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics; has the run finished a step?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["step"])


def run_label(rows: list[dict]) -> str:
    """``metric (prediction sets)``, or the strategy alone when it ignores predictions (random) or names no
    prediction sets (AFIS)."""
    # Imported here: the metrics are torch code, and reading and comparing finished runs needs no torch.
    from apis.active.strategies import available_metrics, get_metric

    first = rows[0]
    strategy = first["strategy"]
    if (strategy in available_metrics() and not get_metric(strategy).uses_predictions) or not first.get(
            "sets", ["anchors"]):
        return strategy
    return f"{strategy} ({'+'.join(first.get('sets', ['anchors']))})"


def run_config(run_dir: str | Path) -> ExperimentConfig | None:
    """The run's ``config.yaml`` as it ran (migrated from an older config version), ``None`` without one."""
    path = Path(run_dir) / "config.yaml"
    return load_run_config(path) if path.exists() else None


def variant(cfg: ExperimentConfig | None) -> str:
    """What sets a run apart from the paper's loop with the same strategy: ``", prior-corrected"``
    (``loop.point_prior_correction``), ``", BoxInst init"`` (``loop.init=boxinst``), ``", global budget"``
    (``selection.allocation=global``), ``", points of another run"`` (``loop.points_from``), joined; ``""``
    for none or no config."""
    if cfg is None:
        return ""
    flags = ((cfg.loop.point_prior_correction, "prior-corrected"), (cfg.loop.init == "boxinst", "BoxInst init"),
             (cfg.selection.allocation == "global", "global budget"), (bool(cfg.loop.points_from),
                                                                       "points of another run"))
    return "".join(f", {name}" for on, name in flags if on)


def group_run_dirs(run_dirs: list[str | Path]) -> dict[str, list[Path]]:
    """Run directories grouped by model, strategy label and :func:`variant`, in the order first seen
    (Mask R-CNN runs, ``model.arch``, are named so)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for run_dir in run_dirs:
        cfg = run_config(run_dir)
        model = "Mask R-CNN, " if cfg is not None and cfg.model.arch == "mask_rcnn" else ""
        groups[model + run_label(read_run(run_dir)) + variant(cfg)].append(Path(run_dir))
    return dict(groups)


def group_runs(run_dirs: list[str | Path]) -> dict[str, list[list[dict]]]:
    """The per-step metrics of the runs, grouped as :func:`group_run_dirs` groups them."""
    return {label: [read_run(run_dir) for run_dir in dirs] for label, dirs in group_run_dirs(run_dirs).items()}


def step_stat(runs: list[list[dict]], step: int, key: str) -> tuple[float, float, int]:
    """Mean, sample std (n - 1; NaN for one value) and count over ``runs`` of ``key`` at ``step`` (missing or
    NaN values left out; ``annotation_seconds`` in hours); NaN, NaN, 0 when no run has a value."""
    values = [r[key] for rows in runs for r in rows
              if r["step"] == step and r.get(key) is not None and not _isnan(r.get(key))]
    if key == "annotation_seconds":
        values = [v / 3600 for v in values]
    if not values:
        return math.nan, math.nan, 0
    return float(np.mean(values)), sample_sd(values), len(values)


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def table_rows(groups: dict[str, list[list[dict]]]) -> tuple[list[str], list[list[str]]]:
    """The per-step table: a header and one row of cells per (strategy, step), each cell mean ± std over
    seeds (number of seeds), a single value for one seed, "–" for none."""
    header = ["strategy", "step", *(title for _, title, _ in TABLE_COLUMNS)]
    rows = []
    for label, runs in groups.items():
        steps = sorted({r["step"] for rows in runs for r in rows})
        for step in steps:
            cells = [label, f"P{step}"]
            for key, _, fmt in TABLE_COLUMNS:
                mean, std, n = step_stat(runs, step, key)
                if n == 0:
                    cells.append("–")
                elif n == 1:
                    cells.append(fmt.format(mean))
                else:
                    cells.append(f"{fmt.format(mean)} ± {fmt.format(std)} ({n})")
            rows.append(cells)
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table of ``header`` and ``rows`` (cells as given)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def markdown_table(groups: dict[str, list[list[dict]]]) -> str:
    """One row per (strategy, step): mean ± std over seeds (n seeds)."""
    return markdown(*table_rows(groups))


def paired_comparisons(groups: dict[str, list[list[dict]]], baseline: str = "random", key: str = "mask_AP"
                       ) -> list[PairedComparison]:
    """Every group against the ``baseline`` group at every step both reached: ``group - baseline`` of ``key``
    per seed (the runs' ``seed``), its mean, 95 % t-interval and verdict; none without the baseline."""
    def by_seed(runs: list[list[dict]], step: int) -> dict[int, float]:
        return {r["seed"]: r.get(key) for rows in runs for r in rows if r["step"] == step}

    if baseline not in groups:
        return []
    found = []
    for label, runs in groups.items():
        if label == baseline:
            continue
        steps = sorted({r["step"] for rows in runs for r in rows}
                       & {r["step"] for rows in groups[baseline] for r in rows})
        found += [paired_comparison(by_seed(runs, step), by_seed(groups[baseline], step), metric=key, a_name=label,
                                    b_name=baseline, step=step) for step in steps]
    return found


def comparisons_markdown(comparisons: list[PairedComparison]) -> str:
    """One row per comparison: seeds, per-seed differences, mean [95 % interval], verdict."""
    rows = [[c.a, c.b, f"P{c.step}", str(len(c.seeds)), " ".join(f"{d:+.2f}" for d in c.differences), c.cell(),
             c.verdict] for c in comparisons]
    return markdown(["strategy", "against", "step", "seeds", "per-seed difference", "mean [95 % t-interval]",
                     "verdict"], rows)


def plot_curves(groups: dict[str, list[list[dict]]], out_path: str | Path) -> None:
    """Mask AP against step and against annotation hours, one line (mean ± std band) per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_hours) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, runs in groups.items():
        steps = sorted({r["step"] for rows in runs for r in rows})
        ap = np.array([step_stat(runs, s, "mask_AP")[:2] for s in steps])
        hours = np.array([step_stat(runs, s, "annotation_seconds")[0] for s in steps])
        for axis, xs in ((by_step, np.array(steps)), (by_hours, hours)):
            (line,) = axis.plot(xs, ap[:, 0], marker="o", label=f"{label} (n={len(runs)})")
            if len(runs) > 1:
                axis.fill_between(xs, ap[:, 0] - ap[:, 1], ap[:, 0] + ap[:, 1], color=line.get_color(), alpha=0.2)
    by_step.set_xlabel("step (points per instance - 1)")
    by_step.set_xticks(sorted({r["step"] for runs in groups.values() for rows in runs for r in rows}))
    by_hours.set_xlabel("annotation hours (boxes + points or masks)")
    for axis in (by_step, by_hours):
        axis.set_ylabel("val mask AP")
        axis.grid(alpha=0.3)
    by_step.legend(fontsize=8)
    fig.suptitle("APIS: mask AP per annotation step")
    fig.tight_layout()
    atomic_save_png(fig, out_path, dpi=120)
    plt.close(fig)


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path) -> str:
    """Write ``curves.png`` and ``comparison.md`` into ``out_dir``; returns the markdown table."""
    groups = group_runs(run_dirs)
    configs = [cfg for cfg in map(run_config, run_dirs) if cfg is not None]
    out_dir = Path(out_dir)
    plot_curves(groups, out_dir / "curves.png")
    table = markdown_table(groups)
    comparisons = paired_comparisons(groups)
    paired = ("\nMask AP, each strategy minus random on the same seed (" + comparisons[0].interval + "):\n\n"
              + comparisons_markdown(comparisons)) if comparisons else ""
    atomic_write_text(out_dir / "comparison.md", "# APIS run comparison\n\n![curves](curves.png)\n\n"
                      + table + paired + "\n" + COLUMN_NOTES.format(costs=cost_note(configs)))
    return table
