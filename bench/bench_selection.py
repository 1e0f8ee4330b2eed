"""Selection cost against a plain inference pass over the same images (issue: selection is one pass).

For a checkpoint, times in fresh subprocesses (so peak memory is per measurement):

* ``inference``: ``run_inference`` (predict + paste masks + RLE) over the training images;
* ``selection``: ``select_with_models`` (prediction sets over every GT box + entropy selection);

each on the first ``--small`` images and on ``--images`` images, so one can see whether peak memory
grows with the number of images (it should not: both stream image by image).

    .venv/bin/python bench/bench_selection.py --config condinst_r18_cpu_dsb.yaml \\
        --checkpoint runs/.../model_final.pth --images 531 --small 100
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from records import add_record_option, provenance, save


def measure(kind: str, config: str, checkpoint: str, images: int, overrides: list[str]) -> dict:
    from apis.active.prediction import select_with_models
    from apis.active.strategies import get_metric
    from apis.config_loading import load_config
    from apis.data.coco import load_coco
    from apis.engine.inference import load_model, run_inference
    from apis.utils.device import resolve_device

    cfg = load_config(config, overrides)
    coco = load_coco(cfg.data.train_json, cfg.data.image_root or None).subset(images)
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    if kind == "inference":
        results = run_inference(load_model(checkpoint, cfg, device), coco, cfg, device, progress=False)
        produced = len(results)
    else:
        points = select_with_models([checkpoint], cfg, coco, get_metric("entropy"), {}, seed=(0, 1), progress=False)
        produced = len(points)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "images": len(coco), "seconds": seconds, "peak_rss_mib": peak_mib, "outputs": produced,
            "instances": sum(len(im.instances) for im in coco.images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="condinst_r18_cpu_dsb.yaml")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", type=int, default=531)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--child", choices=("inference", "selection"), help=argparse.SUPPRESS)
    add_record_option(parser, "selection")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.config, args.checkpoint, args.images, args.overrides)))
        return
    recording = provenance()
    rows = []
    for images in sorted({args.small, args.images}):  # one size once
        for kind in ("inference", "selection"):
            cmd = [sys.executable, __file__, "--config", args.config, "--checkpoint", args.checkpoint,
                   "--images", str(images), "--child", kind, *args.overrides]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print("\n| pass | images | instances | seconds | s/image | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['images']} | {r['instances']} | {r['seconds']:.1f} | "
              f"{r['seconds'] / r['images']:.3f} | {r['peak_rss_mib']:.0f} |")
    full = {r["kind"]: r for r in rows if r["images"] == max(x["images"] for x in rows)}
    print(f"\nselection / inference time: {full['selection']['seconds'] / full['inference']['seconds']:.2f}x")
    from apis.config_loading import load_config

    save(args.record, "selection", recording, rows, arguments=args, config=load_config(args.config, args.overrides))


if __name__ == "__main__":
    main()
