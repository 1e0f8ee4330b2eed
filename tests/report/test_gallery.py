"""`apis show` on a tiny finished run: the pictures exist, and what they show is what the run selected with."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from apis.active.strategies import binary_entropy
from apis.cli import main
from apis.data.ledger import PointLedger
from apis.loop.run_dir import RunDirectoryError
from apis.report.gallery import show_step, step_views

PNG = b"\x89PNG\r\n\x1a\n"


def _selection(run_dir, step):
    return json.loads((Path(run_dir) / f"step_{step:03d}" / "selection.json").read_text())


def test_the_views_show_the_selected_points_their_answers_and_the_uncertainty_that_chose_them(finished_runs):
    cfg, _ = finished_runs["entropy"]
    views = step_views(cfg.output_dir, 2, images=1, instances_per_image=50)
    selection = _selection(cfg.output_dir, 2)
    first_image = selection["points"][0]["image_id"]
    assert list(views.images) == [first_image] and views.metric == views.shown_metric == "entropy"
    chosen = [p for p in selection["points"] if p["image_id"] == first_image]
    rows = views.images[first_image]
    assert [(v.ann_id, v.point) for v in rows] == [(p["ann_id"], (p["x"], p["y"])) for p in chosen]
    with PointLedger(Path(cfg.output_dir) / "ledger.sqlite", read_only=True) as ledger:
        answers = ledger.answers()
    for view, entry in zip(rows, chosen):
        (answer,) = [a for a in answers if (a.ann_id, a.x, a.y, a.step) == (view.ann_id, *view.point, 2)]
        assert view.label == answer.label
        assert sorted(view.earlier) == sorted((a.x, a.y, a.label) for a in answers
                                              if a.ann_id == view.ann_id and a.step < 2)
        # The map is the entropy of M1's mean prediction, and at the point it is what selected the point.
        assert np.allclose(view.uncertainty, binary_entropy(torch.from_numpy(view.before)).numpy())
        assert view.uncertainty_at_point == pytest.approx(entry["uncertainty"], abs=1e-5)
        xs, ys = view.grid_range[:2]
        assert view.before[view.point[1] - ys, view.point[0] - xs] == pytest.approx(entry["prob_mean"], abs=1e-5)
        assert view.after is not None and view.after.shape == view.before.shape
        x0, y0 = view.crop_origin
        assert view.crop.shape[:2] == view.gt.shape and x0 <= xs and y0 <= ys


def test_a_random_run_is_shown_with_the_entropy_it_did_not_use(finished_runs):
    cfg, _ = finished_runs["random"]
    views = step_views(cfg.output_dir, 1, images=2, instances_per_image=1)
    assert (views.metric, views.shown_metric) == ("random", "entropy")
    assert len(views.images) == 2 and all(len(rows) == 1 for rows in views.images.values())
    assert all(not math.isnan(rows[0].uncertainty_at_point) for rows in views.images.values())


def test_show_writes_one_png_per_image(finished_runs, tmp_path, capsys):
    cfg, _ = finished_runs["entropy"]
    paths = show_step(cfg.output_dir, 1, tmp_path / "show", images=2)
    image_ids = list(dict.fromkeys(p["image_id"] for p in _selection(cfg.output_dir, 1)["points"]))[:2]
    assert paths == [tmp_path / "show" / f"image_{i}.png" for i in image_ids]
    assert all(path.read_bytes()[:8] == PNG and path.stat().st_size > 20_000 for path in paths)
    main(["show", str(cfg.output_dir), "--step", "2", "--images", "1", "--out", str(tmp_path / "cli")])
    assert capsys.readouterr().out == f"wrote {tmp_path / 'cli' / f'image_{image_ids[0]}.png'}\n"


def test_a_step_without_a_selection_is_refused_with_the_steps_that_have_one(finished_runs):
    cfg, _ = finished_runs["entropy"]
    with pytest.raises(RunDirectoryError, match=r"step 0 selected no points \(steps with a selection: 1, 2\)"):
        step_views(cfg.output_dir, 0)
    with pytest.raises(RunDirectoryError, match="step 3 selected no points"):
        step_views(cfg.output_dir, 3)


def test_a_step_still_training_is_drawn_without_its_after_panel(finished_runs, tmp_path):
    """Selection done, M2 not trained yet (the run is still going): the last panel says so."""
    source = Path(finished_runs["entropy"][0].output_dir)
    run_dir = tmp_path / "running"
    for name in ("config.yaml", "ledger.sqlite", "step_001/train/model_final.pth", "step_002/selection.json"):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / name, run_dir / name)
    views = step_views(run_dir, 2, images=1, instances_per_image=2)
    rows = next(iter(views.images.values()))
    assert len(rows) == 2 and all(view.after is None and view.before.size for view in rows)
    (path,) = show_step(run_dir, 2, tmp_path / "show", images=1, instances_per_image=2)
    assert path.read_bytes()[:8] == PNG
