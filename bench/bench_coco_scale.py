"""The serial stages of the loop at COCO scale: loading, asking and recording 860k instances, a 10-step ledger.

Generates (no download) a COCO-shaped train2017: 118,000 images of COCO's common sizes, 860,000 instances
over 80 categories (COCO's ids), a skewed number per image (mean 7.3), COCO's mix of small / medium / large
objects (41 / 34 / 25 %), masks as polygons (8 % of instances in two parts), 5 % as compressed RLE strings and
1 % crowd regions as uncompressed RLE; and a val2017 of 5,000 images. ``--instances N`` scales both down.
Image files are hard links to one noise JPEG per image size (115-230 KB, so the file check reads end markers
as it does on COCO's JPEGs), which costs directory entries, not disk; the page cache holds the few files, so the
file check is timed without disk reads.

Each stage runs in a fresh process, so its time and peak RSS are its own:

* ``load``: ``apis.data.coco.load_coco`` (no file check) against ``pycocotools.coco.COCO`` on the train json;
* ``image check``: the check ``load_coco`` makes of every image file (opened, size compared, end marker read);
* ``ask + record``: a run directory (``loop.steps=10``) is opened as ``apis run`` opens it (both jsons loaded
  and checked, the ledger created, every instance registered), then ten steps each ask one random point of
  every training instance through the loop's own ``_ask_and_record`` (simulated oracle + one ledger
  transaction) and write a placeholder ``metrics.json`` (no training: mask AP is left empty);
* on that 10-step ledger: ``apis status`` and ``apis report --gallery-images 0 --mask-quality-images -1`` (wall
  time of the command, interpreter start included; the report's pictures and training-mask curve need trained
  checkpoints), and a resume: the run opened
  again (both jsons loaded and their files checked, the ledger's integrity scanned, the instances compared),
  then what a step reads from the ledger: the points it trains on (``points(max_step=9)``), for its metrics
  record the step's answers and the answer count, and for selection every pixel asked (``asked()``).

    .venv/bin/python bench/bench_coco_scale.py [--instances 860000] [--workdir /tmp/apis_coco_scale] [--json]

``--json`` prints one JSON object as the last line (seconds and MiB). The generated files are kept in
``--workdir`` and reused when run again with the same ``--instances`` and ``--seed``; the run directory is made
anew each time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from records import add_record_option, provenance, save

STEPS = 10
FULL_INSTANCES = 860_000
FULL_IMAGES = 118_000
VAL_IMAGES_PER_TRAIN_IMAGE = 5_000 / FULL_IMAGES
# COCO's 80 category ids (1..90 with gaps).
CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
# (width, height) of COCO images and how often they occur (roughly; 640 px long side dominates).
IMAGE_SIZES = [((640, 480), 0.42), ((640, 427), 0.22), ((480, 640), 0.1), ((640, 426), 0.06), ((500, 375), 0.05),
               ((427, 640), 0.05), ((640, 360), 0.04), ((612, 612), 0.03), ((375, 500), 0.03)]
SMALL, MEDIUM = 0.41, 0.34  # COCO's shares of objects under 32^2 px and under 96^2 px; the rest are large
TWO_PART, COMPRESSED_RLE, CROWD = 0.08, 0.05, 0.01


# ---- the data ---------------------------------------------------------------------------------------------------
def coco_like(instances: int, images: int, seed: int) -> dict:
    """A COCO instance dict of ``images`` images and ``instances`` annotations (see the module docstring)."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    sizes = np.array([size for size, _ in IMAGE_SIZES])
    shares = np.array([share for _, share in IMAGE_SIZES])
    image_size = sizes[rng.choice(len(sizes), images, p=shares / shares.sum())]
    weights = rng.gamma(0.7, size=images)  # skewed: many images with few instances, a few crowded ones
    per_image = rng.multinomial(instances, weights / weights.sum())
    image_of = np.repeat(np.arange(images), per_image)
    width, height = image_size[image_of, 0], image_size[image_of, 1]

    kind = rng.random(instances)
    low = np.select([kind < SMALL, kind < SMALL + MEDIUM], [6, 32], 96)  # sqrt(area) ranges of the three classes
    high = np.select([kind < SMALL, kind < SMALL + MEDIUM], [32, 96], 600)
    side = np.exp(rng.uniform(np.log(low), np.log(high)))
    aspect = np.exp(rng.uniform(-0.7, 0.7, instances))
    box_w = np.clip(side * np.sqrt(aspect), 3, width - 1)
    box_h = np.clip(side / np.sqrt(aspect), 3, height - 1)
    x0, y0 = rng.uniform(0, width - box_w), rng.uniform(0, height - box_h)

    # A star-shaped polygon in the box: corners at even angles with jitter, radius 75-100 % of the ellipse.
    corners = np.clip((6 + side / 6).astype(np.int64), 6, 64)
    owner = np.repeat(np.arange(instances), corners)
    index = np.arange(owner.size) - np.repeat(np.cumsum(corners) - corners, corners)
    angle = 2 * np.pi * (index + rng.uniform(0, 0.8, owner.size)) / corners[owner]
    radius = rng.uniform(0.75, 1.0, owner.size)
    xs = (x0 + box_w / 2)[owner] + radius * (box_w / 2)[owner] * np.cos(angle)
    ys = (y0 + box_h / 2)[owner] + radius * (box_h / 2)[owner] * np.sin(angle)
    flat = np.round(np.stack([xs, ys], axis=1), 2).ravel()
    polygons = [part.tolist() for part in np.split(flat, 2 * np.cumsum(corners)[:-1])]

    crowd = rng.random(instances) < CROWD
    style = rng.random(instances)
    annotations = []
    for ann, polygon in enumerate(polygons):
        w, h = int(width[ann]), int(height[ann])
        segmentation: object = [polygon]
        if style[ann] < TWO_PART:  # an occluded object: a second, smaller part in the box's corner
            segmentation = [polygon, [round(v * 0.4 + (x0[ann] if i % 2 == 0 else y0[ann]) * 0.6, 2)
                                      for i, v in enumerate(polygon)]]
        if crowd[ann] or style[ann] > 1 - COMPRESSED_RLE:
            counts = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))["counts"]
            if crowd[ann]:  # crowd regions are stored uncompressed in COCO
                flat = mask_utils.decode({"size": [h, w], "counts": counts}).ravel(order="F")
                changes = np.flatnonzero(np.diff(flat)) + 1
                runs = np.diff(changes, prepend=0, append=flat.size).tolist()
                segmentation = {"size": [h, w], "counts": [0] * int(flat[0]) + runs}  # a run of 0s comes first
            else:
                segmentation = {"size": [h, w], "counts": counts.decode("ascii")}
        outline = np.array(polygon).reshape(-1, 2)
        left, top = outline.min(axis=0)
        right, bottom = outline.max(axis=0)
        annotations.append({
            "segmentation": segmentation, "area": round(float(box_w[ann] * box_h[ann] * 0.7), 2),
            "iscrowd": int(crowd[ann]), "image_id": int(image_of[ann]) + 1,
            "bbox": [round(float(left), 2), round(float(top), 2), round(float(right - left), 2),
                     round(float(bottom - top), 2)],
            "category_id": CATEGORY_IDS[int(rng.integers(len(CATEGORY_IDS)))], "id": ann + 1,
        })
    return {
        "info": {"description": f"COCO-shaped synthetic annotations ({instances} instances, seed {seed})"},
        "images": [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": int(w), "height": int(h)}
                   for i, (w, h) in enumerate(image_size)],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"category {c}", "supercategory": "thing"} for c in CATEGORY_IDS],
    }


def link_images(data: dict, folder: Path, templates: Path) -> None:
    """One hard link per image of ``data`` in ``folder`` to a noise JPEG of its size (made once in ``templates``)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    templates.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image in data["images"]:
        target = folder / image["file_name"]
        if target.exists():
            continue
        template = templates / f"{image['width']}x{image['height']}.jpg"
        if not template.exists():
            pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(template, quality=75)
        os.link(template, target)


def prepare(workdir: Path, instances: int, seed: int) -> dict[str, Path]:
    """The train and val jsons and their image folders in ``workdir`` (made once per instances and seed)."""
    images = max(1, round(instances * FULL_IMAGES / FULL_INSTANCES))
    val_images = max(1, round(images * VAL_IMAGES_PER_TRAIN_IMAGE))
    root = workdir / f"coco_{instances}_seed{seed}"
    paths = {"train": root / "annotations" / "train.json", "val": root / "annotations" / "val.json",
             "train_images": root / "train_images", "val_images": root / "val_images"}
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    for split, count, amount in (("train", images, instances),
                                 ("val", val_images, max(1, round(instances * val_images / images)))):
        if not paths[split].exists():
            data = coco_like(amount, count, seed if split == "train" else seed + 1)
            partial = paths[split].with_suffix(".partial")
            with partial.open("w") as handle:
                json.dump(data, handle, separators=(",", ":"))
            link_images(data, paths[f"{split}_images"], workdir / "image_templates")
            partial.rename(paths[split])
    return paths


# ---- stages, each in its own process -----------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """This process's peak resident memory. Not ``getrusage``'s ``ru_maxrss``: Linux carries that over an exec
    from the parent, so a child would report the bench's own peak when it is higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (this bench reads Linux's memory counters)")


def stage_generate(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    paths = prepare(Path(args.workdir), args.instances, args.seed)
    return {"seconds": time.perf_counter() - start, **{key: str(path) for key, path in paths.items()}}


def stage_load_apis(args: argparse.Namespace) -> dict:
    from apis.data.coco import load_coco

    before = peak_rss_mib()
    start = time.perf_counter()
    dataset = load_coco(args.train_json, check_images=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "rss_before_mib": before,
            "instances": sum(len(im.instances) + len(im.crowd) for im in dataset.images)}


def stage_load_pycocotools(args: argparse.Namespace) -> dict:
    from pycocotools.coco import COCO

    before = peak_rss_mib()
    start = time.perf_counter()
    coco = COCO(str(args.train_json))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "rss_before_mib": before,
            "instances": len(coco.anns)}


def stage_image_check(args: argparse.Namespace) -> dict:
    """The check ``load_coco`` runs on each image file, timed alone (timing the load with and without it gives
    a difference smaller than the noise of a loaded machine at small sizes)."""
    from apis.data.coco import _check_image_file
    from apis.data.image_files import check_image_files

    data = json.loads(Path(args.train_json).read_text())
    paths = [Path(args.train_images) / image["file_name"] for image in data["images"]]
    start = time.perf_counter()
    for image, path, checked in zip(data["images"], paths, check_image_files(paths)):
        _check_image_file(Path(args.train_json), image, path, checked)
    return {"seconds": time.perf_counter() - start, "images": len(data["images"])}


def run_config(args: argparse.Namespace):
    from apis.config_loading import load_config

    return load_config(None, [f"data.train_json={args.train_json}", f"data.val_json={args.val_json}",
                              f"data.image_root={args.train_images}", f"data.val_image_root={args.val_images}",
                              f"output_dir={args.run_dir}", f"loop.steps={STEPS}", "selection.metric=random",
                              "device=cpu"])


def stage_ask_record(args: argparse.Namespace) -> dict:
    from apis.data.questions import PointToAsk
    from apis.loop.asked_points import draw_initial_points
    from apis.loop.run import ActiveLearningRun

    start = time.perf_counter()
    run = ActiveLearningRun(run_config(args))
    open_s = time.perf_counter() - start
    seconds, asked = [], 0
    try:
        for step in range(STEPS):
            questions = draw_initial_points(run.train_set, seed=step)
            if step:
                questions = [PointToAsk(q.ann_id, q.image_id, q.x, q.y, "random") for q in questions]
            start = time.perf_counter()
            run.acquisition._ask_and_record(run, step, questions)
            seconds.append(time.perf_counter() - start)
            asked += len(questions)
            run.dir.finish_step(step, {"step": step, **run.labels, "seed": run.cfg.seed, "mask_AP": None,
                                       "points_per_instance": asked / run.num_instances,
                                       "annotation_seconds": run.ledger.total_cost_s(max_step=step), "val": {}},
                                STEPS)
    finally:
        run.close()
    return {"open_s": open_s, "ask_record_s": seconds, "questions_per_step": len(questions),
            "peak_rss_mib": peak_rss_mib()}


def stage_resume(args: argparse.Namespace) -> dict:
    from apis.loop.run import ActiveLearningRun

    start = time.perf_counter()
    run = ActiveLearningRun(run_config(args))
    open_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        points = run.ledger.points(max_step=STEPS - 1)
        points_s = time.perf_counter() - start
        start = time.perf_counter()
        last_step = run.ledger.step_answers(STEPS - 1)
        answers = run.ledger.answer_count()
        record_s = time.perf_counter() - start
        del points, last_step
        start = time.perf_counter()
        asked = len(run.ledger.asked())
        asked_s = time.perf_counter() - start
    finally:
        run.close()
    return {"open_s": open_s, "points_s": points_s, "step_record_s": record_s, "asked_s": asked_s,
            "instances_asked": asked, "answers": answers, "peak_rss_mib": peak_rss_mib()}


STAGES = {"generate": stage_generate, "load-apis": stage_load_apis, "load-pycocotools": stage_load_pycocotools,
          "image-check": stage_image_check, "ask-record": stage_ask_record, "resume": stage_resume}


def in_child(stage: str, args: argparse.Namespace, paths: dict[str, str], run_dir: Path) -> dict:
    """Run ``stage`` in a fresh interpreter; its result is the JSON of the child's last line."""
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--run-dir", str(run_dir),
               f"--instances={args.instances}", f"--seed={args.seed}", f"--workdir={args.workdir}",
               *(f"--{key.replace('_', '-')}={value}" for key, value in paths.items())]
    completed = subprocess.run(command, capture_output=True, text=True, env=_env())
    if completed.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def timed_command(arguments: list[str]) -> float:
    """Wall seconds of ``python -m apis.cli ARGUMENTS`` (interpreter start and imports included)."""
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "apis.cli", *arguments], capture_output=True, text=True,
                               env=_env())
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"apis {' '.join(arguments)} failed:\n{completed.stderr[-3000:]}")
    return seconds


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def measure(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    run_dir = workdir / f"run_{args.instances}_seed{args.seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    generated = in_child("generate", args, {}, run_dir)
    generate_s = generated.pop("seconds")
    paths = generated
    ours = in_child("load-apis", args, paths, run_dir)
    theirs = in_child("load-pycocotools", args, paths, run_dir)
    check = in_child("image-check", args, paths, run_dir)
    asked = in_child("ask-record", args, paths, run_dir)
    status_s = timed_command(["status", str(run_dir)])
    # No pictures and no training-mask curve: both need trained checkpoints, which this run has not.
    report_s = timed_command(["report", str(run_dir), "--out", str(workdir / "report.html"), "--gallery-images", "0",
                              "--mask-quality-images", "-1"])
    resumed = in_child("resume", args, paths, run_dir)
    steps_s = asked["ask_record_s"]
    return {
        "instances": ours["instances"], "images": check["images"], "generate_s": generate_s,
        "load_s": ours["seconds"], "pycocotools_load_s": theirs["seconds"],
        "load_peak_rss_mib": ours["peak_rss_mib"], "pycocotools_peak_rss_mib": theirs["peak_rss_mib"],
        "load_rss_before_mib": ours["rss_before_mib"], "pycocotools_rss_before_mib": theirs["rss_before_mib"],
        "image_check_s": check["seconds"], "image_check_us_per_image": 1e6 * check["seconds"] / check["images"],
        "open_new_run_s": asked["open_s"], "questions_per_step": asked["questions_per_step"],
        "ask_record_s_first_step": steps_s[0], "ask_record_s_per_step": statistics.median(steps_s[1:] or steps_s),
        "ask_record_s_every_step": steps_s, "ask_record_peak_rss_mib": asked["peak_rss_mib"],
        "ledger_answers": resumed["answers"], "ledger_mib": (run_dir / "ledger.sqlite").stat().st_size / 2**20,
        "status_s_10_steps": status_s, "report_s_10_steps": report_s,
        "resume_open_s": resumed["open_s"], "resume_points_s": resumed["points_s"],
        "resume_step_record_reads_s": resumed["step_record_s"], "resume_asked_s": resumed["asked_s"],
        "resume_peak_rss_mib": resumed["peak_rss_mib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=FULL_INSTANCES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/apis_coco_scale")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    for name in ("train", "val", "train-images", "val-images", "run-dir"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    add_record_option(parser, "coco_scale")
    args = parser.parse_args()
    if args.stage:
        args.train_json, args.val_json = args.train, args.val
        print(json.dumps(STAGES[args.stage](args)))
        return
    recording = provenance()
    result = measure(args)
    save(args.record, "coco_scale", recording, [result], arguments=args)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:32} {value:.3f}" if isinstance(value, float) else f"{key:32} {value}")


if __name__ == "__main__":
    main()
