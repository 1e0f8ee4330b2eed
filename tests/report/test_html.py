"""`apis report` on tiny finished runs: one self-contained file whose tables hold the runs' numbers."""

import base64
import json
import re
from pathlib import Path

from apis.cli import main
from apis.report.html import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _supervision(out):
    for folder, row, ap in (("full_masks", "full masks", 40.0), ("boxes_plus_1_point", "boxes + 1 point", 30.0)):
        path = out / folder / "seed0" / "eval.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"row": row, "seed": 0, "train_s": 60.0, "segm/AP": ap, "segm/AP50": ap + 20,
                                    "bbox/AP": 50.0}))


def test_the_report_is_one_self_contained_file_with_the_runs_numbers(finished_runs, tmp_path):
    runs = [finished_runs[name][0].output_dir for name in ("entropy", "random")]
    _supervision(tmp_path / "supervision")
    out = write_report(runs, tmp_path / "out" / "report.html", supervision=tmp_path / "supervision",
                       gallery_images=1)
    page = out.read_text()
    assert "http://" not in page and "https://" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    # curves, point accuracy, training-mask quality, selected points, 2 pictures
    assert page.count("<img") == len(sources) == 6
    assert not re.search(r"(href|url)\s*[=(]", page)  # no link, stylesheet or font to fetch
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == PNG for src in sources)

    for label, run_dir in (("entropy (anchors)", runs[0]), ("random", runs[1])):
        for row in _rows(run_dir):
            cells = [label, f"P{row['step']}", f"{row['mask_AP']:.2f}", f"{row['mask_AP50']:.2f}"]
            if row["step"] > 0:
                cells += [f"{row['misclassified_share']:.1%}", f"{row['boundary_distance_px']:.2f}"]
            assert "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) in page
    assert "<td>boxes + 1 point</td><td>0</td><td>30.00</td><td>75 %</td>" in page
    assert page.count("<h3>") == 2  # one picture section per strategy


def test_report_command_without_pictures_or_supervision(finished_runs, tmp_path, capsys):
    run_dir = finished_runs["entropy"][0].output_dir
    out = tmp_path / "report.html"
    main(["report", str(run_dir), "--out", str(out), "--gallery-images", "0"])
    assert capsys.readouterr().out == f"wrote {out}\n"
    page = out.read_text()
    assert "Pictures" not in page and "Supervision" not in page and page.count("<img") == 4
    assert "Training-mask quality" in page and "the first 50 training images" in page


def test_report_without_the_training_mask_curve(finished_runs, tmp_path):
    run_dir = finished_runs["entropy"][0].output_dir
    out = tmp_path / "report.html"
    main(["report", str(run_dir), "--out", str(out), "--gallery-images", "0", "--mask-quality-images", "-1"])
    page = out.read_text()
    assert "Training-mask quality" not in page and page.count("<img") == 3


def test_the_training_mask_curve_is_the_exported_masks_quality(finished_runs):
    from apis.loop.mask_export import open_run_step
    from apis.loop.mask_quality import score_training_masks, summarise_quality
    from apis.report.training_masks import step_mask_quality

    run_dir = finished_runs["entropy"][0].output_dir
    rows = step_mask_quality(Path(run_dir), max_images=3, device="cpu")
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row, metrics in zip(rows, _rows(run_dir)):
        summary = summarise_quality(score_training_masks(open_run_step(run_dir, row["step"]), max_images=3))
        assert row["mIoU"] == summary["mIoU"]["local"] and row["box_fill_mIoU"] == summary["box_fill_mIoU"]
        assert row["hours"] == metrics["annotation_seconds"] / 3600
