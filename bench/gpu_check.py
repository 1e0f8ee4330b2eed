"""The three stages of an APIS step on one GPU, at COCO's image sizes: training with AMP, one selection pass and
one evaluation pass, each with its images/s and peak GPU memory. Run by ``bench/gpu_check.sh`` (which makes
the synthetic data first); read that file for what it is for.

The model is CondInst R-50 as in ``condinst_r50_1x_coco.yaml`` (test at short edge 800, train at 640-800,
long edge <= 1333), with freshly initialised weights (nothing is downloaded) and the 4 synthetic categories;
the synthetic images are resized to COCO's sizes, so an image costs about what it costs on COCO (the number
of instances per image differs: about 4 here, 7.3 on COCO; the images are square, 800x800, where COCO's are
about 800x1070 at that scale). ``--cpu-smoke``: a tiny R-18 on the CPU, only to
check the script runs.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch
from records import add_record_option, provenance, save

# Trainable BatchNorm and a low learning rate: without ImageNet weights, frozen BatchNorm and lr 0.01 may overflow
# float16 under AMP; neither changes what an iteration costs. Score threshold 0: every image keeps
# model.detections_per_image detections (what a trained model keeps on COCO), so evaluation pastes that many masks.
GPU_SETTINGS = ["device=cuda", "solver.amp=true", "data.num_workers=4", "model.norm=bn", "solver.base_lr=0.0001",
                "model.score_threshold=0.0"]
SMOKE_SETTINGS = ["device=cpu", "model.depth=18", "model.fpn_channels=32", "model.mask_branch_channels=16",
                  "model.head_convs=1", "model.norm=bn", "data.min_size_train=[64]", "data.min_size_test=64",
                  "data.max_size=96", "data.num_workers=0"]


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    gc.collect()  # the previous stage's model and optimiser, so that they do not count in the next peak
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder made by `apis data synth`")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8, help="images per iteration (the paper: 2 per GPU x 8)")
    parser.add_argument("--cpu-smoke", action="store_true")
    add_record_option(parser, "gpu_check")
    args = parser.parse_args()
    recording = provenance()

    from apis.active.prediction import select_with_models
    from apis.active.strategies import get_metric
    from apis.config_loading import load_config
    from apis.data.coco import load_coco
    from apis.engine.inference import evaluate_checkpoint
    from apis.engine.metrics_log import read_metrics
    from apis.engine.trainer import train
    from apis.utils.device import resolve_device

    warmup = max(1, min(50, args.iters // 5))  # iterations left out of the training speed (cuDNN autotuning)
    cfg = load_config("condinst_r50_1x_coco.yaml", [
        f"data.train_json={args.data / 'annotations' / 'train.json'}",
        f"data.val_json={args.data / 'annotations' / 'val.json'}", "data.image_root=", "data.val_image_root=",
        "model.num_classes=4", "model.backbone_weights=none", f"solver.max_iter={args.iters}",
        f"solver.batch_size={args.batch}", f"solver.warmup_iters={warmup}", "solver.steps=[]",
        f"solver.checkpoint_period={args.iters + 1}", "solver.log_period=1",
        *(SMOKE_SETTINGS if args.cpu_smoke else GPU_SETTINGS)])
    device = resolve_device(cfg.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    rows = []

    reset_peak(device)
    checkpoint = train(cfg, output_dir=args.out / "train")
    times = [record["time"] for record in read_metrics(args.out / "train" / "metrics.jsonl")][warmup:]
    train_ips = args.batch * len(times) / sum(times) if times else float("nan")
    rows.append(("train (AMP)" if device.type == "cuda" else "train", len(times) * args.batch, train_ips,
                 peak_gib(device)))

    train_set = load_coco(cfg.data.train_json)
    reset_peak(device)
    start = time.perf_counter()
    points = select_with_models([str(checkpoint)], cfg, train_set, get_metric("entropy"), {}, seed=(0, 1))
    rows.append(("selection", len(train_set), len(train_set) / (time.perf_counter() - start), peak_gib(device)))

    val_set = load_coco(cfg.data.val_json)
    reset_peak(device)
    start = time.perf_counter()
    metrics = evaluate_checkpoint(checkpoint, cfg, dataset=val_set, results_path=args.out / "val_results.json")
    rows.append(("evaluation (inference + COCO eval)", len(val_set), len(val_set) / (time.perf_counter() - start),
                 peak_gib(device)))

    print(f"\n{len(points)} points selected; mask AP {metrics.get('segm/AP')} (untrained weights: only a check that "
          "the pass produced results)")
    print("\n| stage | images | images/s | peak GPU memory (GiB) |\n|---|---:|---:|---:|")
    for stage, images, ips, peak in rows:
        print(f"| {stage} | {images} | {ips:.2f} | {peak:.2f} |")
    save(args.record, "gpu_check", recording,
         [{"stage": s, "images": n, "images_per_s": ips, "peak_gib": p} for s, n, ips, p in rows],
         arguments={**vars(args), "device": name, "torch": torch.__version__}, config=cfg)


if __name__ == "__main__":
    main()
