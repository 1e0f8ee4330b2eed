"""``apis demo``: the main job on the built-in synthetic data, ending with a report a person can read.

1. writes the synthetic dataset to ``data/synth`` (instant when it is already there);
2. trains M0 (step 0 of the entropy run) on both cores;
3. runs the 3 steps of the entropy strategy and of random point selection (from the same P0 and M0) side by
   side, one process and one core each: a step's small trainings use one core poorly, so two arms at once take
   about the time of one (the demo must end within 10 minutes on 2 cores);
4. writes ``curves.png`` and ``comparison.md`` and prints the table;
5. writes ``report.html`` (:mod:`apis.report.html`): curves, tables, point statistics, the quality of the
   training masks and pictures of one image per strategy, in one file;
6. exports the entropy run's masks of its last step (``apis export-masks``) to ``entropy_masks.json`` and prints
   their mean IoU with the true masks beside that of filling each box.

Every piece resumes: interrupt it and run it again.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from apis.config_loading import load_config, merge_overrides

DATA_DIR = Path("data/synth")
CONFIG = "condinst_r18_cpu_synth.yaml"  # built in (apis/configs/): the demo runs from any directory
# Every step's evaluation refines each detected mask on the image (the config's sharp masks), which costs several
# times an unrefined evaluation: the steps are evaluated on 25 of the 50 validation images to shorten the demo
# (README: its time, against the 10-minute target). Its mask AP is one seed's on few images, a working pipeline
# rather than a result (bench/plan.sh measures the method).
VAL_IMAGES = ["data.max_val_images=25"]
# A smoke-test schedule (seconds, not minutes): shows the mechanics, not the method's effect.
QUICK_OVERRIDES = ["solver.max_iter=30", "loop.finetune_iters=10", "data.max_train_images=12",
                   "data.max_val_images=6", "solver.checkpoint_period=1000"]


def run_demo(out_dir: Path, quick: bool = False, steps: int = 3) -> str:
    """Run the demo into ``out_dir``; returns the comparison table (markdown)."""
    from apis.active.compare import compare_runs
    from apis.data.synth import make_synthetic_dataset
    from apis.loop.run import run_active_loop
    from apis.report.html import write_report

    extra = QUICK_OVERRIDES if quick else []
    common = merge_overrides([f"data.train_json={DATA_DIR}/annotations/train.json",
                              f"data.val_json={DATA_DIR}/annotations/val.json", *VAL_IMAGES], extra)
    entropy_dir, random_dir = out_dir / "entropy", out_dir / "random"
    entropy_m0 = [*common, f"output_dir={entropy_dir}", "selection.metric=entropy"]
    entropy = [*entropy_m0, f"loop.steps={steps}"]
    random = [*common, f"output_dir={random_dir}", "selection.metric=random", f"loop.initial_run={entropy_dir}",
              f"loop.steps={steps}"]
    for overrides in (entropy, random):  # a bad --steps is named before anything is written
        load_config(CONFIG, overrides)
    started = time.monotonic()
    summary = make_synthetic_dataset(DATA_DIR, num_images=200, size=128, seed=0)
    print(summary.format(), flush=True)
    print(f"\n== M0 from boxes + 1 random point per instance, then {steps} active steps of entropy and of "
          "random, side by side ==", flush=True)
    run_active_loop(load_config(CONFIG, [*entropy_m0, "loop.steps=0"]))
    print(f"M0 done, {_minutes_since(started)} into the demo", flush=True)
    _run_side_by_side({"entropy": entropy, "random": random})
    print(f"both strategies' steps done, {_minutes_since(started)} into the demo", flush=True)
    table = compare_runs([entropy_dir, random_dir], out_dir)
    print("\n" + table)
    # One image per strategy: the pictures cost a few seconds, within the demo's budget.
    report = write_report([entropy_dir, random_dir], out_dir / "report.html", gallery_images=1)
    print(f"Table: {out_dir / 'comparison.md'}  (curves: {out_dir / 'curves.png'})")
    print(f"Report: {report}  (one self-contained HTML file: open it in a browser)")
    print(f"report written, {_minutes_since(started)} into the demo", flush=True)
    print(export_masks(entropy_dir, out_dir / "entropy_masks.json"))
    print(f"Demo done in {_minutes_since(started)}", flush=True)  # the phases' times: where a slow demo spends it
    if quick:
        print("(--quick: a smoke-test schedule; the numbers say nothing about the method)")
    return table


def _minutes_since(start: float) -> str:
    return f"{(time.monotonic() - start) / 60:.1f} min"


def export_masks(run_dir: Path, out: Path) -> str:
    """Export ``run_dir``'s masks of its last step to ``out``; returns a line comparing them with the GT masks."""
    from apis.loop.mask_export import export_run_masks, masks_to_coco, open_run_step, write_coco
    from apis.loop.mask_quality import score_training_masks, summarise_quality

    run = open_run_step(run_dir)
    write_coco(out, masks_to_coco(run.train_set, export_run_masks(run, progress=False)))
    quality = summarise_quality(score_training_masks(run))
    gain = quality["mIoU"]["local"] - quality["box_fill_mIoU"]
    return (f"Masks to take home: {out} (P{run.step}, {quality['instances']:,} training instances): mean IoU with the "
            f"true masks {quality['mIoU']['local']:.3f}, filling each box {quality['box_fill_mIoU']:.3f} ({gain:+.3f})")


def _run_arm(overrides: list[str]) -> None:
    """One strategy's loop in a child process, on one core."""
    import torch

    from apis.loop.run import run_active_loop

    torch.set_num_threads(1)
    # A spawned process spawns its own children too, so each data loader would start interpreters that import
    # torch again (seconds per loader, every step); forked workers start at once, as under `apis run`.
    if "fork" in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("fork", force=True)
    run_active_loop(load_config(CONFIG, overrides))


def _run_side_by_side(arms: dict[str, list[str]]) -> None:
    """Run each named arm's loop in its own process at once; raises if one fails (its log says why)."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch threads inherited
    processes = {name: context.Process(target=_run_arm, args=(overrides,)) for name, overrides in arms.items()}
    for process in processes.values():
        process.start()
    for process in processes.values():
        process.join()
    failed = [name for name, process in processes.items() if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"the demo's {' and '.join(failed)} run failed (see the log above); "
                           "run `apis demo` again to resume it")
