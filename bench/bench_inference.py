"""Inference speed on a val split with a config's test size: images/s of ``run_inference`` (predict,
paste masks at image resolution, encode RLE) and, separately, the seconds of COCO evaluation.

The first ``--warmup`` images are run once before timing (allocator and thread-pool start-up).

    .venv/bin/python bench/bench_inference.py --config condinst_r18_cpu_dsb.yaml \\
        --checkpoint runs/.../model_final.pth [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from records import add_record_option, provenance, save

from apis.config_loading import load_config
from apis.data.coco import load_coco
from apis.engine.inference import ground_truth_of, load_model, run_inference
from apis.evaluation.coco_eval import evaluate
from apis.utils.device import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="condinst_r18_cpu_dsb.yaml")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--warmup", type=int, default=2)
    add_record_option(parser, "inference")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    recording = provenance()
    cfg = load_config(args.config, args.overrides)
    coco = load_coco(cfg.data.val_json, cfg.data.val_image_root or cfg.data.image_root or None).subset(
        cfg.data.max_val_images)
    device = resolve_device(cfg.device)
    model = load_model(args.checkpoint, cfg, device)
    run_inference(model, coco.subset(args.warmup), cfg, device, progress=False)
    start = time.perf_counter()
    results = run_inference(model, coco, cfg, device, progress=True)
    inference_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate(ground_truth_of(coco), results)
    eval_s = time.perf_counter() - start
    row = {"device": str(device), "images": len(coco), "test_size": cfg.data.min_size_test,
           "inference_s": inference_s, "images_per_s": len(coco) / inference_s, "eval_s": eval_s,
           "detections": len(results), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "segm/AP": metrics["segm/AP"], "bbox/AP": metrics["bbox/AP"]}
    print(json.dumps(row))
    save(args.record, "inference", recording, [row], arguments=args, config=cfg)


if __name__ == "__main__":
    main()
