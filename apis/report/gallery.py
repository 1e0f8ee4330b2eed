"""``apis show``: what one step of a run did to each instance, as pictures (the paper's Fig. 4a; docs/design.md,
"The report").

Per instance of the first images of step ``s``'s selection, one row of four panels on the instance's box:
the image with its GT mask outlined, the mean prediction ``p̄`` of M(s-1)'s prediction set, the uncertainty
map of the metric the run selected with (what chose the point), and ``p̄`` of M(s), trained with the answer.
The selected point is drawn on every panel, coloured by the answer (yes / no / unsure); the points asked at
earlier steps are small dots in the same colours.

Coordinates: points are integer pixel indices ``(x, y)``; a panel's axes are pixel indices too, so a pixel
``(x, y)`` is the unit square centred on ``(x, y)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apis.active.prediction import SelectionImages, image_prediction_sets, views
from apis.active.selection import crop_to_grid
from apis.active.strategies import PointMetric, get_metric
from apis.config import ConfigError, ExperimentConfig
from apis.config_loading import load_run_config
from apis.data.coco import CocoDataset, load_coco
from apis.data.ledger import PointLedger
from apis.data.points import UNSURE
from apis.loop.run_dir import RunDirectory, RunDirectoryError
from apis.loop.schedule import member_seeds
from apis.structures import PredictionSet
from apis.utils.io import atomic_save_png

ANSWER_COLOURS = {1: "#2ca02c", 0: "#d62728", UNSURE: "#ffbf00"}
ANSWER_NAMES = {1: "yes", 0: "no", UNSURE: "unsure"}
GT_COLOUR = "#00e5ff"
CONTEXT = 0.25
"""Each panel shows the instance's candidate grid plus this share of its size on every side (at least 3 px)."""


@dataclass(frozen=True)
class InstanceView:
    """The pictures of one selected instance at a step.

    ``crop`` is the image ``uint8 [h', w', 3]`` from pixel ``crop_origin = (x0, y0)``; ``gt`` the GT mask on the
    same crop (``None`` without GT masks). ``grid_range = (xs, ys, xe, ye)``: the candidate pixels, on which
    ``before`` (p̄ of M(s-1)), ``uncertainty`` and ``after`` (p̄ of M(s); ``None`` when M(s) is not trained) are
    ``[h, w]`` maps, NaN for an empty prediction set. ``earlier``: ``(x, y, label)`` asked at earlier steps.
    """

    ann_id: int
    image_id: int
    crop: np.ndarray
    crop_origin: tuple[int, int]
    gt: np.ndarray | None
    grid_range: tuple[int, int, int, int]
    before: np.ndarray
    uncertainty: np.ndarray
    after: np.ndarray | None
    point: tuple[int, int]
    label: int | None
    uncertainty_at_point: float
    earlier: list[tuple[int, int, int]]


@dataclass(frozen=True)
class StepViews:
    """Every :class:`InstanceView` of some images at one step, and what names the panels."""

    run_dir: Path
    step: int
    metric: str
    shown_metric: str
    images: dict[int, list[InstanceView]]


def _mean_map(pred: PredictionSet | None, shape: tuple[int, int]) -> np.ndarray:
    """``p̄ [h, w]`` of a prediction set; NaN where the model predicted nothing for the instance."""
    if pred is None or pred.k == 0:
        return np.full(shape, math.nan)
    return pred.probs.double().mean(dim=0).numpy()


def _crop_box(grid: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    xs, ys, xe, ye = grid
    margin = max(3, round(CONTEXT * max(xe - xs, ye - ys)))
    return max(0, xs - margin), max(0, ys - margin), min(width, xe + margin), min(height, ye + margin)


def _train_set(cfg: ExperimentConfig) -> CocoDataset:
    return load_coco(cfg.data.train_json, cfg.data.image_root or None,
                     used_images=cfg.data.max_train_images).subset(cfg.data.max_train_images)


def step_views(run_dir: str | Path, step: int, images: int = 4, instances_per_image: int = 8,
               device: str | None = None) -> StepViews:
    """Compute the pictures of the first ``images`` images of step ``step``'s selection (at most
    ``instances_per_image`` instances each, in selection order).

    The prediction sets are the run's own (``selection.sets``, every ensemble member), from the final
    checkpoints of steps ``step - 1`` and ``step``; a metric that ignores predictions (random) is shown as the
    entropy of ``p̄``, which it did not use.

    Raises:
        RunDirectoryError: ``run_dir`` has no config, or step ``step`` selected no points (step 0, or not yet).
    """
    from apis.engine.inference import load_model
    from apis.utils.device import resolve_device

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise RunDirectoryError(f"{run_dir}: no config.yaml (is this a run directory?)")
    cfg = load_run_config(run_dir / "config.yaml")
    run = RunDirectory(run_dir, members=len(member_seeds(cfg)))
    selection = run.read_selection(step) if step > 0 else None
    if selection is None:
        raise RunDirectoryError(f"{run_dir}: step {step} selected no points (steps with a selection: "
                                f"{', '.join(map(str, _selected_steps(run))) or 'none yet'})")
    metric = get_metric(selection["metric"])
    shown = metric if metric.uses_predictions else get_metric("entropy")
    train = _train_set(cfg)
    masks = train.masks("display") if train.has_masks else None
    with PointLedger(run.ledger_path, read_only=True) as ledger:
        answers = ledger.answers(max_step=step)

    chosen: dict[int, list[dict]] = {}
    for entry in selection["points"]:
        if entry["image_id"] in chosen or len(chosen) < images:
            chosen.setdefault(entry["image_id"], []).append(entry)
    torch_device = resolve_device(device or cfg.device)
    before_models = [load_model(path, cfg, torch_device) for path in run.final_checkpoints(step - 1)]
    after_models = ([load_model(path, cfg, torch_device) for path in run.final_checkpoints(step)]
                    if all((run.member(step, i) / "model_final.pth").exists() for i in range(run.members)) else [])
    loader = SelectionImages(train, views(cfg), cfg.data.max_size)
    position = {record.image_id: index for index, record in enumerate(loader.images)}
    labels = {(a.ann_id, a.x, a.y): a.label for a in answers if a.step == step}

    shown_images: dict[int, list[InstanceView]] = {}
    for image_id, entries in chosen.items():
        samples = loader[position[image_id]]
        before = image_prediction_sets(before_models, samples, torch_device)
        after = image_prediction_sets(after_models, samples, torch_device) if after_models else None
        pixels = train.load_image(image_id)
        shown_images[image_id] = [
            _instance_view(entry, before[entry["ann_id"]], after, pixels,
                           masks.mask(entry["ann_id"]) if masks is not None else None, shown,
                           labels.get((entry["ann_id"], entry["x"], entry["y"])),
                           [(a.x, a.y, a.label) for a in answers if a.ann_id == entry["ann_id"] and a.step < step])
            for entry in entries[:instances_per_image] if entry["ann_id"] in before]
    return StepViews(run_dir, step, metric.name, shown.name, shown_images)


def _instance_view(entry: dict, pred: PredictionSet, after: dict[int, PredictionSet] | None, pixels: np.ndarray,
                   gt_mask: np.ndarray | None, shown: PointMetric, label: int | None,
                   earlier: list[tuple[int, int, int]]) -> InstanceView:
    """The pictures of one ``selection.json`` entry from its M(s-1) set ``pred`` and M(s)'s sets ``after``."""
    gt_grid = crop_to_grid(gt_mask, pred) if gt_mask is not None else None
    if pred.k == 0 or (shown.needs_gt and gt_grid is None):
        uncertainty = np.full(pred.grid_shape, math.nan)
    else:
        uncertainty = shown.value(pred.probs.double(), gt_grid).numpy()
    grid = pred.grid_range
    x0, y0, x1, y1 = _crop_box(grid, pixels.shape[1], pixels.shape[0])
    x, y = entry["x"], entry["y"]
    return InstanceView(
        ann_id=entry["ann_id"], image_id=entry["image_id"], crop=pixels[y0:y1, x0:x1], crop_origin=(x0, y0),
        gt=gt_mask[y0:y1, x0:x1] if gt_mask is not None else None, grid_range=grid,
        before=_mean_map(pred, pred.grid_shape), uncertainty=uncertainty,
        after=_mean_map(after.get(entry["ann_id"]), pred.grid_shape) if after is not None else None,
        point=(x, y), label=label, uncertainty_at_point=float(uncertainty[y - grid[1], x - grid[0]]),
        earlier=earlier)


def _selected_steps(run: RunDirectory) -> list[int]:
    return sorted(int(path.parent.name[len("step_"):]) for path in run.root.glob("step_[0-9]*/selection.json"))


# ---- drawing ------------------------------------------------------------------------------------------------
def _pixel_extent(x0: int, y0: int, x1: int, y1: int) -> tuple[float, float, float, float]:
    """imshow extent of the pixels ``[x0, x1) x [y0, y1)`` on axes in pixel indices (y down)."""
    return x0 - 0.5, x1 - 0.5, y1 - 0.5, y0 - 0.5


def _draw_points(axis, view: InstanceView) -> None:
    for x, y, label in view.earlier:
        axis.plot(x, y, "o", markersize=4, markerfacecolor=ANSWER_COLOURS[label], markeredgecolor="white",
                  markeredgewidth=0.6)
    colour = ANSWER_COLOURS.get(view.label, "white")
    axis.plot(*view.point, "o", markersize=10, markerfacecolor=colour, markeredgecolor="black",
              markeredgewidth=1.5)


def _draw_row(axes, view: InstanceView, uncertainty_max: float) -> None:
    x0, y0 = view.crop_origin
    crop_extent = _pixel_extent(x0, y0, x0 + view.crop.shape[1], y0 + view.crop.shape[0])
    grid_extent = _pixel_extent(*view.grid_range)
    maps = ((None, None), (view.before, "gray"), (view.uncertainty, "magma"), (view.after, "gray"))
    for axis, (values, cmap) in zip(axes, maps):
        axis.imshow(view.crop, extent=crop_extent, interpolation="nearest", alpha=1.0 if cmap is None else 0.35)
        if values is not None:
            vmax = uncertainty_max if cmap == "magma" else 1.0
            axis.imshow(np.ma.masked_invalid(values), extent=grid_extent, cmap=cmap, vmin=0.0, vmax=vmax,
                        interpolation="nearest")
        elif cmap is not None:
            axis.text(0.5, 0.5, "not trained yet", transform=axis.transAxes, ha="center", va="center", fontsize=9,
                      bbox={"facecolor": "white", "edgecolor": "grey"})
        if view.gt is not None:
            rows, cols = np.mgrid[y0:y0 + view.gt.shape[0], x0:x0 + view.gt.shape[1]]
            if view.gt.any() and not view.gt.all():
                axis.contour(cols, rows, view.gt.astype(float), levels=[0.5], colors=GT_COLOUR, linewidths=1.2)
        axis.add_patch(_rectangle(grid_extent))
        _draw_points(axis, view)
        axis.set_xlim(crop_extent[0], crop_extent[1])
        axis.set_ylim(crop_extent[2], crop_extent[3])
        axis.set_xticks([])
        axis.set_yticks([])


def _rectangle(extent: tuple[float, float, float, float]):
    from matplotlib.patches import Rectangle

    left, right, bottom, top = extent
    return Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="white", linestyle=":",
                     linewidth=0.8)


def _row_title(view: InstanceView, step: int, shown_metric: str) -> str:
    """Two lines over an instance's row: the point and its answer; the values there before and after."""
    answer = ANSWER_NAMES.get(view.label, "not answered")
    x, y = view.point
    xs, ys = view.grid_range[:2]
    after = "" if view.after is None else f"; M{step} p̄ {view.after[y - ys, x - xs]:.2f}"
    return (f"annotation {view.ann_id}: point ({x}, {y}) answered {answer}\n"
            f"M{step - 1} p̄ {view.before[y - ys, x - xs]:.2f}, {shown_metric} {view.uncertainty_at_point:.2f}{after}")


def draw_image(views: StepViews, image_id: int, out_path: str | Path) -> Path:
    """One PNG for one image of ``views``: a row of panels per instance; returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = views.images[image_id]
    if not rows:
        raise ValueError(f"image {image_id}: no instance to draw at step {views.step}")
    header_in, legend_in = 0.75, 0.4  # figure space above the first row (titles) and below the last (legend)
    fig, axes = plt.subplots(len(rows), 4, figsize=(4 * 2.5, len(rows) * 2.6 + header_in + legend_in),
                             squeeze=False)
    for row, view in zip(axes, rows):
        finite = view.uncertainty[np.isfinite(view.uncertainty)]
        _draw_row(row, view, float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
        row[0].set_title(_row_title(view, views.step, views.shown_metric), fontsize=7.5, loc="left")
    legend = [Line2D([], [], marker="o", linestyle="", markerfacecolor=colour, markeredgecolor="black",
                     markersize=8, label=f"answer {ANSWER_NAMES[label]}") for label, colour in ANSWER_COLOURS.items()]
    legend += [Line2D([], [], color=GT_COLOUR, label="GT outline"),
               Line2D([], [], color="grey", linestyle=":", label="box (candidate pixels)"),
               Line2D([], [], marker="o", linestyle="", markersize=4, markerfacecolor="grey",
                      markeredgecolor="white", label="earlier points")]
    fig.legend(handles=legend, loc="lower center", ncol=6, fontsize=8, frameon=False)
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, legend_in / height, 1, 1 - header_in / height))
    fig.suptitle(f"{views.run_dir.name}, step {views.step}: image {image_id}", fontsize=10, y=1 - 0.12 / height)
    shown = views.shown_metric + ("" if views.shown_metric == views.metric else f" (not used by {views.metric})")
    titles = ("image + GT mask", f"M{views.step - 1}: mean prediction p̄\n(chose the point)",
              f"uncertainty\n{shown}", f"M{views.step}: mean prediction p̄\n(trained with the answer)")
    for axis, title in zip(axes[0], titles):
        box = axis.get_position()
        fig.text((box.x0 + box.x1) / 2, 1 - 0.45 / height, title, ha="center", va="center", fontsize=8.5,
                 weight="bold")
    out_path = atomic_save_png(fig, out_path, dpi=100)
    plt.close(fig)
    return out_path


def show_step(run_dir: str | Path, step: int, out_dir: str | Path | None = None, images: int = 4,
              instances_per_image: int = 8, device: str | None = None) -> list[Path]:
    """``apis show``: one PNG per image (``image_<id>.png``) in ``out_dir`` (default
    ``RUN_DIR/show/step_NNN``); returns their paths."""
    for flag, value in (("--images", images), ("--instances", instances_per_image)):
        if value < 1:
            raise ConfigError(f"apis show {flag} must be at least 1, got {value}")
    views = step_views(run_dir, step, images, instances_per_image, device)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "show" / f"step_{step:03d}"
    return [draw_image(views, image_id, out_dir / f"image_{image_id}.png")
            for image_id, rows in views.images.items() if rows]
