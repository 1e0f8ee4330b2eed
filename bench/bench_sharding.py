"""Selection and inference images/s on 1 and N processes (``torchrun``, gloo on CPU or NCCL on GPUs).

Each process count runs in a fresh ``torchrun`` job; every rank works on its shard of the images
(``apis.engine.distributed.shard_images``) and rank 0 gathers, as in ``apis run``:

* ``selection``: ``select_with_models`` (prediction sets of every GT box + entropy), all points gathered;
* ``inference``: ``sharded_inference`` (predict, paste masks, RLE), results gathered to rank 0;

and what rank 0 does alone: ask the simulated oracle about the selected points and record them in a
ledger, and evaluate the gathered results (COCO mask and box AP).

Timed from a barrier after the model is loaded to the end of the gather, after one warm-up image per
rank. Each process gets one intra-op thread (``OMP_NUM_THREADS=1``), so 2 processes use 2 cores.
Without ``--checkpoint`` the model is freshly initialised (seed 0): selection costs the same for any
weights (it depends on the GT boxes), and inference keeps ``model.detections_per_image`` detections of
every image (``model.score_threshold=0``), the most a COCO evaluation reads.

    .venv/bin/python bench/bench_sharding.py --config condinst_r18_cpu_dsb.yaml --images 64 \\
        --procs 1,2 data.min_size_test=256 data.max_size=512 selection.scales=[256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from records import add_record_option, provenance, save


def child(args: argparse.Namespace) -> None:
    import torch

    from apis.active.prediction import select_with_models
    from apis.active.strategies import get_metric
    from apis.config import to_dict
    from apis.config_loading import load_config, merge_overrides
    from apis.data.coco import load_coco
    from apis.data.ledger import Answer, PointLedger
    from apis.data.simulated_oracle import SimulatedOracle
    from apis.engine.checkpoint import save_checkpoint
    from apis.engine.distributed import (
        barrier,
        context_from_env,
        init_process_group,
        run_on_main,
        shutdown_process_group,
    )
    from apis.engine.inference import ground_truth_of, load_model, sharded_inference
    from apis.evaluation.coco_eval import evaluate
    from apis.modeling.condinst import CondInst
    from apis.utils.device import resolve_device

    torch.set_num_threads(1)
    ctx = context_from_env()
    cfg = load_config(args.config, merge_overrides(["model.score_threshold=0.0"], args.overrides))
    device = resolve_device(cfg.device, ctx.local_rank if ctx.enabled else None)
    created = init_process_group(ctx, device)
    checkpoint = args.checkpoint or str(Path(args.workdir) / "init.pth")
    if not args.checkpoint:
        def initial_weights() -> None:
            torch.manual_seed(0)
            model = CondInst.from_config(cfg.model, cfg.loss)
            save_checkpoint(checkpoint, {"model": model.state_dict(), "iteration": 0, "config": to_dict(cfg)})
        run_on_main(initial_weights, ctx)
    coco = load_coco(cfg.data.train_json, cfg.data.image_root or None)
    warm, timed = coco.subset(ctx.world_size), coco.subset(args.images)
    metric = get_metric("entropy")
    model = load_model(checkpoint, cfg, device)
    rows, outputs = [], {}
    for kind in ("selection", "inference"):
        for data in (warm, timed):
            barrier(ctx)
            start = time.perf_counter()
            if kind == "selection":
                outputs[kind] = select_with_models([checkpoint], cfg, data, metric, {}, seed=(0, 1), progress=False,
                                                   ctx=ctx)
            else:
                outputs[kind] = sharded_inference(model, data, cfg, device, ctx)
            barrier(ctx)
            seconds = time.perf_counter() - start
        rows.append(_row(kind, ctx.world_size, len(timed), seconds, len(outputs[kind])))
    if ctx.is_main:
        # What rank 0 does alone, whatever the number of processes: ask and record the points, evaluate.
        with PointLedger(Path(args.workdir) / f"ledger_{ctx.world_size}.sqlite") as ledger:
            ledger.register_instances((inst.ann_id, im.image_id, inst.bbox_xyxy, im.width, im.height)
                                      for im in timed.images for inst in im.instances)
            start = time.perf_counter()
            oracle = SimulatedOracle(timed.masks("oracle"), seed=0)
            ledger.record([Answer(p.ann_id, timed.instance(p.ann_id).image_id, p.x, p.y,
                                  oracle.answer(p.ann_id, p.x, p.y), 1, "entropy", oracle.name, 0.9)
                           for p in outputs["selection"]])
        rows.append(_row("ask and record (rank 0)", ctx.world_size, len(timed), time.perf_counter() - start,
                         len(outputs["selection"])))
        start = time.perf_counter()
        evaluate(ground_truth_of(timed), outputs["inference"])
        rows.append(_row("COCO evaluation (rank 0)", ctx.world_size, len(timed), time.perf_counter() - start,
                         len(outputs["inference"])))
        print("RESULT " + json.dumps(rows), flush=True)
    shutdown_process_group(created)


def _row(kind: str, procs: int, images: int, seconds: float, outputs: int) -> dict:
    return {"kind": kind, "procs": procs, "images": images, "seconds": seconds, "images_per_s": images / seconds,
            "outputs": outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="condinst_r18_cpu_dsb.yaml")
    parser.add_argument("--checkpoint", default="", help="default: a freshly initialised model (seed 0)")
    parser.add_argument("--images", type=int, default=48, help="the first N training images")
    parser.add_argument("--procs", default="1,2", help="process counts, comma-separated")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    add_record_option(parser, "sharding")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    recording = provenance()
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        for procs in map(int, args.procs.split(",")):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
                   __file__, "--child", "--workdir", workdir, "--config", args.config, "--images", str(args.images)]
            if args.checkpoint:
                cmd += ["--checkpoint", args.checkpoint]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            out = subprocess.run([*cmd, *args.overrides], check=True, capture_output=True, text=True, env=env).stdout
            result = next(line for line in out.splitlines() if line.startswith("RESULT "))
            rows += json.loads(result[len("RESULT "):])
            print(*rows[-4:], sep="\n", flush=True)
    single = {r["kind"]: r["images_per_s"] for r in rows if r["procs"] == 1}
    print(f"\nload average (1, 5, 15 min) before: {load_before}, after: {os.getloadavg()}")
    print("\n| pass | processes | images | outputs | seconds | images/s | ms/image | speed-up vs 1 process |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        speedup = f"{r['images_per_s'] / single[r['kind']]:.2f}x" if r["kind"] in single else "-"
        print(f"| {r['kind']} | {r['procs']} | {r['images']} | {r['outputs']} | {r['seconds']:.2f} | "
              f"{r['images_per_s']:.2f} | {1000 / r['images_per_s']:.0f} | {speedup} |")
    save(args.record, "sharding", recording, rows, arguments={**vars(args), "loadavg_before": load_before})


if __name__ == "__main__":
    main()
