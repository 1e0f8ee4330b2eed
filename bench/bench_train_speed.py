"""Training throughput and peak memory: our CondInst R-50 against torchvision's Mask R-CNN R-50-FPN.

Same images (the built-in synthetic data, resized to ``--size`` x ``--size``), same batch, random
weights and trainable BatchNorm for both (no ImageNet weights here: torchvision then uses plain
BatchNorm and trains all 5 stages, as ``model.norm=bn`` does for ours). CondInst trains from boxes
and one labelled point per instance (the APIS setting); Mask R-CNN from boxes and full masks (its
only mode). Each model is measured in its own subprocess so that peak RSS is its own.

    .venv/bin/python bench/bench_train_speed.py --size 512 --batch 2 --iters 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from records import add_record_option, provenance, save

from apis.data.synth import make_synthetic_dataset

# As the CLI does (apis.cli.main): OpenMP threads wait without spinning, which on a shared CPU keeps training
# from slowing down many times under load. Set before torch is imported, here and in the subprocesses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
DATA = "data/synth"  # the built-in synthetic data, made once by the parent process for both children


def _batch(size: int, batch: int):
    import torch

    from apis.data.coco import load_coco
    from apis.data.dataset import collate, image_to_tensor, random_points
    from apis.data.points import to_tensors
    from apis.data.transforms import ResizeFlip

    coco = load_coco(f"{DATA}/annotations/train.json").subset(batch)
    points = random_points(coco, 1, seed=0)
    masks = coco.masks("full-supervision")
    samples = []
    for record in coco.images:
        transform = ResizeFlip((record.height, record.width), (size, size))
        boxes = torch.tensor([i.bbox_xyxy for i in record.instances], dtype=torch.float32)
        coords, labels = transform.apply_points(*to_tensors([points[i.ann_id] for i in record.instances]))
        gt = torch.stack([torch.from_numpy(masks.mask(i.ann_id)) for i in record.instances])
        target = {"boxes": transform.apply_boxes(boxes),
                  "labels": torch.tensor([i.label for i in record.instances]),
                  "ann_ids": torch.tensor([i.ann_id for i in record.instances]),
                  "points": coords, "point_labels": labels, "masks": transform.apply_masks(gt)}
        samples.append({"image": image_to_tensor(transform.apply_image(coco.load_image(record.image_id))),
                        "target": target})
    return collate(samples), coco.num_classes


def _step_fn(name: str, size: int, batch: int):
    import torch

    data, num_classes = _batch(size, batch)
    if name == "condinst":
        from apis.config import LossConfig, ModelConfig
        from apis.modeling.condinst import CondInst

        model = CondInst.from_config(ModelConfig(depth=50, norm="bn", num_classes=num_classes), LossConfig(points=1.0))
        targets = [{k: v for k, v in t.items() if k != "masks"} for t in data.targets]

        def step():
            return model.losses(data.images, data.image_sizes, targets)
    else:
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                      min_size=size, max_size=size)
        images = [img[:, :h, :w] / 255.0 for img, (h, w) in zip(data.images, data.image_sizes)]
        targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1, "masks": t["masks"]} for t in data.targets]

        def step():
            return model(images, targets)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def train_step():
        optimizer.zero_grad()
        sum(step().values()).backward()
        optimizer.step()
    return train_step


def measure(name: str, size: int, batch: int, iters: int) -> dict:
    import torch

    torch.manual_seed(0)
    train_step = _step_fn(name, size, batch)
    train_step()  # warm-up: allocator, oneDNN kernels
    start = time.perf_counter()
    for _ in range(iters):
        train_step()
    seconds = time.perf_counter() - start
    return {"model": name, "images_per_s": iters * batch / seconds, "s_per_iter": seconds / iters,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--child", choices=("condinst", "maskrcnn"), help=argparse.SUPPRESS)
    add_record_option(parser, "train_speed")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.size, args.batch, args.iters)))
        return
    recording = provenance()
    make_synthetic_dataset(DATA, num_images=200, size=128, seed=0)
    rows = []
    for name in ("condinst", "maskrcnn"):
        cmd = [sys.executable, __file__, "--size", str(args.size), "--batch", str(args.batch),
               "--iters", str(args.iters), "--child", name]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
        print(rows[-1], flush=True)
    print(f"\ninput {args.size}x{args.size}, batch {args.batch}, {args.iters} timed iterations after 1 warm-up\n")
    print("| model | images/s | s/iteration | peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['images_per_s']:.3f} | {r['s_per_iter']:.2f} | {r['peak_rss_mib']:.0f} |")
    print(f"\nCondInst / Mask R-CNN images/s: {rows[0]['images_per_s'] / rows[1]['images_per_s']:.2f}x")
    save(args.record, "train_speed", recording, rows, arguments=args)


if __name__ == "__main__":
    main()
