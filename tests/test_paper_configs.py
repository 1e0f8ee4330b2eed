"""The paper's setting as shipped: condinst_r50_1x_coco_paper.yaml holds every hyperparameter the APIS paper
states (Tang et al., ECCV 2022, Sec. 4.1 and Fig. 2; CondInst's own settings, Tian et al. 2020 / AdelaiDet,
where the paper says "other training settings were the same as CondInst"), and its CPU-sized versions change
only sizes and schedule."""

import math

import pytest

from apis.config import flat_config
from apis.config_loading import load_config

# Every value the paper fixes, written from the paper (section in brackets) and CondInst's defaults.
PAPER = {
    # Implementation details (Sec. 4.1): CondInst R-50 in AdelaiDet, ImageNet backbone.
    "model.arch": "condinst", "model.depth": 50, "model.backbone_weights": "imagenet", "model.norm": "frozen_bn",
    # CondInst (AdelaiDet's CondInst R_50_1x): FPN 256, 4-conv towers, mask branch 128 -> 8 channels at stride 8,
    # dynamic head 3 layers of 8 channels, ReLU, controller as AdelaiDet initialises it, masks at stride 4.
    "model.fpn_channels": 256, "model.head_convs": 4, "model.mask_branch_channels": 128, "model.mask_channels": 8,
    "model.dynamic_channels": 8, "model.dynamic_layers": 3, "model.dynamic_activation": "relu",
    "model.dynamic_init": "zeros", "model.mask_out_stride": 4, "model.max_proposals": 500,
    "model.mask_feature_stride": 8, "model.mask_head_window": False,
    "model.centre_sampling_radius": 1.5, "model.size_ranges": [0, 64, 128, 256, 512, math.inf],
    "model.score_threshold": 0.05, "model.pre_nms_top_k": 1000, "model.nms_threshold": 0.6,
    "model.detections_per_image": 100, "model.mask_threshold": 0.5,
    "model.refinement.method": "none",  # masks as the head draws them
    "loss.focal_alpha": 0.25, "loss.focal_gamma": 2.0,
    # Points only, PointSup's loss (Sec. 4.1: "the same training protocol as PointSup"): BCE at the labelled
    # points averaged over all of them, no point augmentation, no class weights; weight 0.1 for M0 and 1.0 when
    # fine-tuning (the authors' code); neither box terms nor masks.
    "loss.points": 0.1, "loss.full": 0.0, "loss.full_bce": 0.0, "loss.box": 0.0, "loss.point_normalisation": "point",
    "loss.points_per_iter": -1, "loss.point_positive_weight": 1.0, "loss.point_negative_weight": 1.0,
    "loop.m0.points": 0.1, "loop.finetune.points": 1.0, "loop.point_prior_correction": False,
    # COCO 2017, the full splits.
    "model.num_classes": 80, "data.max_train_images": 0, "data.max_val_images": 0,
    # P0: one random point per instance (Sec. 3.1); M0 "trained for 90k iterations with the initial learning
    # rate being 0.01 and decayed at iteration 60k and 80k"; "SGD ... mini-batch of 16 images"; CondInst's
    # momentum 0.9, weight decay 1e-4, 1k warm-up; no clipping, fp32.
    "data.random_points_per_instance": 1, "loop.init": "points",
    "solver.batch_size": 16, "solver.base_lr": 0.01, "solver.max_iter": 90000, "solver.steps": [60000, 80000],
    "solver.gamma": 0.1, "solver.momentum": 0.9, "solver.weight_decay": 0.0001, "solver.warmup_iters": 1000,
    "solver.warmup_factor": 0.001, "solver.clip_grad_norm": 0.0, "solver.amp": False,
    # "multi-scale data augmentation": CondInst's short edge 640-800, long edge 1333, flips; test at 800.
    "data.min_size_train": [640, 672, 704, 736, 768, 800], "data.max_size": 1333, "data.min_size_test": 800,
    "data.hflip_prob": 0.5,
    # Each step "fine-tuned for 30k iterations with the initial learning rate being 0.01 and decayed every 10k";
    # one point per instance by entropy over multiple anchors (Sec. 3.2, 4.2); P1..P3 in Fig. 2.
    "loop.finetune_iters": 30000, "loop.finetune_lr": 0.01, "loop.finetune_steps": [10000, 20000],
    "loop.steps": 3, "selection.metric": "entropy", "selection.sets": ["anchors"],
    "selection.allocation": "per_instance", "afis.level": "none",
    # Costs (Sec. 3.1; Table 2): point 0.9 s, polygon mask 79.2 s, box 7 s; a perfect simulated oracle.
    "oracle.kind": "simulated", "oracle.point_cost_s": 0.9, "oracle.mask_cost_s": 79.2, "oracle.box_cost_s": 7.0,
    "oracle.flip_prob": 0.0, "oracle.unsure_rate": 0.0,
}

# Keys the paper does not fix: where things live and run, and keys of features this setting leaves off.
NOT_THE_PAPERS = {
    "name", "output_dir", "seed", "device", "data.train_json", "data.val_json", "data.image_root",
    "data.val_image_root", "data.train_points", "data.num_workers", "solver.checkpoint_period", "solver.log_period",
    "solver.keep_checkpoints", "loop.initial_run", "loop.points_from",
    # Used only by what is off here: box terms (loss.box 0), Mask R-CNN, the other prediction sets, the global
    # budget, AFIS.
    "loss.pairwise_weight", "loss.pairwise_dilation", "loss.pairwise_colour_threshold", "loss.pairwise_warmup_iters",
    "loop.finetune.pairwise_warmup_iters",
    "model.roi_samples_per_image", "selection.ensemble_seeds", "selection.scales", "selection.flips",
    "selection.max_points_per_instance", "selection.min_point_distance", "afis.scorer",
    "model.refinement.iterations", "model.refinement.weight", "model.refinement.radius",
    "model.refinement.colour_sigma", "model.refinement.colour_model_weight",
}

# What a CPU-sized version may change: sizes (model, data, batch) and schedule (iterations, learning rates).
SIZES_AND_SCHEDULE = {
    "model.depth", "model.backbone_weights", "model.norm", "model.num_classes", "model.fpn_channels",
    "model.head_convs", "model.mask_branch_channels", "data.min_size_train", "data.min_size_test", "data.max_size",
    "solver.batch_size", "solver.base_lr", "solver.max_iter", "solver.steps", "solver.warmup_iters",
    "loop.finetune_iters", "loop.finetune_lr", "loop.finetune_steps", "loss.pairwise_warmup_iters",
    "selection.scales",
    "solver.amp",  # mixed precision is a CUDA speed setting; on the CPU these configs run in fp32 either way
}
# What the recipe changes on top of the paper (docs/design.md, "Training from boxes and a few points").
RECIPE = {"loss.box", "loss.point_normalisation", "loop.finetune.points", "model.dynamic_activation",
          "model.dynamic_init", "solver.clip_grad_norm",
          # and sharp masks (docs/design.md, "Sharp masks")
          "model.mask_feature_stride", "model.mask_head_window", "model.refinement.method"}


def test_the_coco_config_is_the_papers_setting_value_by_value():
    values = flat_config(load_config("condinst_r50_1x_coco_paper.yaml"))
    assert set(PAPER) <= set(values), sorted(set(PAPER) - set(values))
    unaccounted = set(values) - set(PAPER) - NOT_THE_PAPERS
    assert not unaccounted, f"keys neither the paper's nor listed as not the paper's: {sorted(unaccounted)}"
    for key, value in PAPER.items():
        assert values[key] == value, f"{key}: {values[key]!r}, the paper: {value!r}"


@pytest.mark.parametrize("cpu, recipe", [("condinst_r18_cpu_synth_paper.yaml", "condinst_r18_cpu_synth.yaml"),
                                         ("condinst_r18_cpu_dsb_paper.yaml", "condinst_r18_cpu_dsb.yaml")])
def test_the_cpu_versions_change_only_sizes_and_schedule(cpu, recipe):
    paper, small = (flat_config(load_config(name)) for name in ("condinst_r50_1x_coco_paper.yaml", cpu))
    changed = {key for key in PAPER if small[key] != paper[key]}
    assert changed <= SIZES_AND_SCHEDULE, sorted(changed - SIZES_AND_SCHEDULE)
    assert small["model.depth"] == 18 and small["solver.max_iter"] < paper["solver.max_iter"]
    # Against the recipe config of the same size: exactly the recipe's departures differ.
    shipped = flat_config(load_config(recipe))
    differing = {key for key in shipped if shipped[key] != small[key]} - {"name", "output_dir"}
    assert differing == RECIPE
