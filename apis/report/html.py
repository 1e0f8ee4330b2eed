"""``apis report``: one self-contained HTML file over finished runs (docs/design.md, "The report").

Everything is inside the file (pictures as base64 PNG, the style inline), so it can be mailed or archived
and opens without the run directories: the curves and the per-step table of :mod:`apis.active.compare`,
the point accuracy during training (:mod:`apis.loop.point_learning`), the statistics of the selected
points, the supervision table when given one (:mod:`apis.report.supervision`), and pictures of one step of
each strategy (:mod:`apis.report.gallery`).
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from apis import __version__
from apis.active.compare import (
    COLUMN_NOTES,
    cost_note,
    group_run_dirs,
    plot_curves,
    read_run,
    run_config,
    step_stat,
    table_rows,
)
from apis.config import ConfigError
from apis.evaluation.paired import sample_sd
from apis.loop.point_learning import point_accuracy_curve
from apis.report.gallery import draw_image, step_views
from apis.report.supervision import read_supervision, supervision_table
from apis.report.training_masks import step_mask_quality
from apis.utils.io import atomic_write_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } .note { color: #555; font-size: 0.85em; max-width: 60em; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.85em; }
"""


def _png(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _labelled_png(fig, axis, xlabel: str, ylabel: str) -> bytes:
    """A one-axis figure with its labels, grid and legend, as PNG bytes."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    return _figure_png(fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_point_accuracy(groups: dict[str, list[Path]]) -> bytes:
    """PNG: ``point_acc`` over training iterations (steps end to end) of every run, one colour per strategy,
    dotted lines where a step's fine-tuning starts (the paper's Fig. 4b)."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(10, 3.6))
    starts: set[int] = set()
    for colour, (label, run_dirs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], groups.items()):
        for index, run_dir in enumerate(run_dirs):
            curve = point_accuracy_curve(run_dir)
            if not curve:
                continue
            axis.plot([c["iteration"] for c in curve], [c["point_acc"] for c in curve], color=colour, alpha=0.8,
                      linewidth=1.0, marker=".", markersize=4, label=f"{label} (n={len(run_dirs)})" if index == 0
                      else None)
            # A step's fine-tuning starts after the previous step's last logged window.
            starts |= {previous["iteration"] for c, previous in zip(curve[1:], curve) if c["step"] != previous["step"]}
    for start in sorted(starts):
        axis.axvline(start, color="grey", linestyle=":", linewidth=0.8)
    return _labelled_png(fig, axis, "training iteration (M0, then each step's fine-tuning)",
                         "accuracy on the batch's labelled points")


def plot_selection_statistics(groups: dict[str, list[list[dict]]]) -> bytes:
    """PNG: the share of each step's new points the previous model got wrong, and their mean distance to the
    GT boundary, per strategy (mean ± std over seeds; the paper's Fig. 4c)."""
    plt = _pyplot()
    from matplotlib.ticker import PercentFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = (("misclassified_share", "new points misclassified by M(s-1)"),
            ("boundary_distance_px", "distance to the GT boundary (px)"))
    every_step: set[int] = set()
    for label, runs in groups.items():
        steps = sorted({r["step"] for rows in runs for r in rows if r["step"] > 0})
        every_step |= set(steps)
        for axis, (key, _) in zip(axes, keys):
            stats = np.array([step_stat(runs, step, key)[:2] for step in steps]).reshape(-1, 2)
            (line,) = axis.plot(steps, stats[:, 0], marker="o", label=f"{label} (n={len(runs)})")
            if len(runs) > 1:
                axis.fill_between(steps, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1],
                                  color=line.get_color(), alpha=0.2)
    for axis, (_, title) in zip(axes, keys):
        axis.set_xlabel("step")
        axis.set_xticks(sorted(every_step))
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _figure_png(fig)


def plot_training_mask_quality(groups: dict[str, list[list[dict]]]) -> bytes:
    """PNG: mean IoU of the exported training masks (:func:`step_mask_quality` rows) against annotation hours,
    one line (mean ± sample std band over seeds) per strategy, and filling the box as a dashed line."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(7, 4))
    box_fill = []
    for label, runs in groups.items():
        steps = sorted({row["step"] for rows in runs for row in rows})
        by_step = [[row for rows in runs for row in rows if row["step"] == step] for step in steps]
        hours = np.array([np.mean([row["hours"] for row in members]) for members in by_step])
        mean = np.array([np.mean([row["mIoU"] for row in members]) for members in by_step])
        (line,) = axis.plot(hours, mean, marker="o", label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            spread = np.array([sample_sd([row["mIoU"] for row in members]) for members in by_step])
            axis.fill_between(hours, mean - spread, mean + spread, color=line.get_color(), alpha=0.2)
        box_fill += [row["box_fill_mIoU"] for rows in runs for row in rows]
    axis.axhline(float(np.mean(box_fill)), color="grey", linestyle="--", label="filling the box")
    return _labelled_png(fig, axis, "annotation hours (boxes + points or masks)",
                         "mean IoU of the exported training masks")


def _training_masks_section(dir_groups: dict[str, list[Path]], max_images: int, device: str | None) -> list[str]:
    scored = {label: [rows for rows in (step_mask_quality(d, max_images, device) for d in dirs) if rows]
              for label, dirs in dir_groups.items()}
    scored = {label: runs for label, runs in scored.items() if runs}
    if not scored:
        return ["<h2>Training-mask quality</h2>", '<p class="note">No run has GT masks for its training images (people '
                "answered): the masks <code>apis export-masks</code> writes cannot be scored here.</p>"]
    images = f"the first {max_images}" if max_images > 0 else "all"
    return ["<h2>Training-mask quality</h2>",
            f"<figure>{_png(plot_training_mask_quality(scored), 'training-mask quality')}<figcaption>The masks a "
            "team takes home (<code>apis export-masks</code>: each step's model on the given boxes, made to agree "
            f"with the answered points) against the training GT, mean IoU over the instances of {images} training "
            "images, against the annotation hours spent; dashed: a mask that fills its box. AFIS's bought masks "
            "count as exact.</figcaption></figure>"]


def _curves_png(groups: dict[str, list[list[dict]]]) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "curves.png"
        plot_curves(groups, path)
        return path.read_bytes()


def _gallery(groups: dict[str, list[Path]], step: int, images: int, device: str | None) -> str:
    """Pictures of ``step`` for the first run of each strategy; a note where a run has none."""
    parts = []
    with tempfile.TemporaryDirectory() as folder:
        for label, run_dirs in groups.items():
            run_dir = run_dirs[0]
            if not (run_dir / f"step_{step:03d}" / "selection.json").exists():
                parts.append(f'<p class="note">{html.escape(label)}: {html.escape(str(run_dir))} has no selection '
                             f"at step {step}.</p>")
                continue
            views = step_views(run_dir, step, images=images, instances_per_image=4, device=device)
            parts.append(f"<h3>{html.escape(label)}: {html.escape(run_dir.name)}, step {step}</h3>")
            for image_id, rows in views.images.items():
                if rows:
                    path = draw_image(views, image_id, Path(folder) / f"{len(parts)}_{image_id}.png")
                    parts.append(f"<figure>{_png(path.read_bytes(), f'{label}, image {image_id}')}</figure>")
    return "\n".join(parts)


def report_html(run_dirs: list[str | Path], supervision: str | Path | None = None, gallery_step: int = 1,
                gallery_images: int = 2, device: str | None = None, mask_quality_images: int = 50) -> str:
    """The report over ``run_dirs`` as one HTML string (see the module docstring)."""
    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    dir_groups = group_run_dirs(run_dirs)
    groups = {label: [read_run(run_dir) for run_dir in dirs] for label, dirs in dir_groups.items()}
    configs = [cfg for cfg in map(run_config, run_dirs) if cfg is not None]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = [[label, str(run_dir), ", ".join(f"P{r['step']}" for r in read_run(run_dir))]
            for label, dirs in dir_groups.items() for run_dir in dirs]
    sections = [
        f"<h1>APIS report</h1><p class=\"note\">apis {html.escape(__version__)}, written {now}.</p>",
        _table(["strategy", "run directory", "finished steps"], runs),
        "<h2>Mask AP per step and per annotation hour</h2>",
        f"<figure>{_png(_curves_png(groups), 'mask AP curves')}<figcaption>Validation mask AP; with several seeds "
        "a line is their mean and the band ± one standard deviation.</figcaption></figure>",
        "<h2>Per-step table</h2>",
        _table(*table_rows(groups)),
        f'<p class="note">{html.escape(COLUMN_NOTES.format(costs=cost_note(configs)))}</p>',
        "<h2>Point accuracy during training</h2>",
        f"<figure>{_png(plot_point_accuracy(dir_groups), 'point accuracy during training')}<figcaption>The share "
        "of a batch's labelled points the mask head gets right, logged while training; dotted lines: a step's "
        "fine-tuning starts with its new points. Points the previous model got wrong pull the curve down there; "
        "points it already knew do not.</figcaption></figure>",
        *(_training_masks_section(dir_groups, mask_quality_images, device) if mask_quality_images >= 0 else []),
        "<h2>The selected points</h2>",
        f"<figure>{_png(plot_selection_statistics(groups), 'selected points statistics')}<figcaption>Per step: "
        "the share of the new points that the previous model misclassified (mean prediction of its set above 0.5 "
        "against the answer), and their mean distance to the GT mask's boundary.</figcaption></figure>",
    ]
    if supervision is not None:
        sections += ["<h2>Supervision</h2>", _table(*supervision_table(read_supervision(supervision))),
                     f'<p class="note">Val mask AP of one config under each kind of supervision '
                     f"({html.escape(str(supervision))}; mean ± std over seeds).</p>"]
    if gallery_images > 0:
        sections += ["<h2>Pictures</h2>",
                     '<p class="note">Per instance: the image with its GT outline, the mean prediction of the model '
                     "that chose the point, the uncertainty that chose it, and the prediction after training with "
                     "the answer; the big dot is the point, green yes, red no, amber unsure; small dots: earlier "
                     "points. <code>apis show RUN_DIR --step S</code> draws more.</p>",
                     _gallery(dir_groups, gallery_step, gallery_images, device)]
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>APIS report</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def write_report(run_dirs: list[str | Path], out: str | Path, supervision: str | Path | None = None,
                 gallery_step: int = 1, gallery_images: int = 2, device: str | None = None,
                 mask_quality_images: int = 50) -> Path:
    """Write :func:`report_html` to ``out`` (atomically); returns ``out``."""
    if gallery_step < 1 or gallery_images < 0:
        raise ConfigError(f"apis report --gallery-step must be at least 1 and --gallery-images at least 0, got "
                          f"{gallery_step} and {gallery_images}")
    out = Path(out)
    atomic_write_text(out, report_html(run_dirs, supervision, gallery_step, gallery_images, device,
                                       mask_quality_images))
    return out
