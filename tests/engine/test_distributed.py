"""Two CPU processes under ``torchrun`` (gloo): data shards, identical weights, one writer."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from apis.data.coco import load_coco
from apis.data.dataset import InfiniteSampler
from apis.engine.checkpoint import load_checkpoint
from apis.engine.distributed import DistributedContext, in_dataset_order, run_on_main, shard_images
from apis.engine.metrics_log import read_metrics

# Runs on every rank: records what each rank trains on and the weights it ends with.
SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from apis.config_loading import load_config
    import apis.engine.trainer as trainer

    out, *overrides = sys.argv[1:]
    rank = int(os.environ["RANK"])
    seen = []
    collate = trainer.collate

    def recording_collate(samples):
        seen.append([s["image_id"] for s in samples])
        return collate(samples)

    trainer.collate = recording_collate
    run = trainer._Trainer.run

    def run_and_dump(self):
        path = run(self)
        torch.save(self.model.state_dict(), f"{out}/weights_rank{rank}.pt")
        return path

    trainer._Trainer.run = run_and_dump
    trainer.train(load_config(None, overrides))
    with open(f"{out}/seen_rank{rank}.json", "w") as handle:
        json.dump(seen, handle)
""")


def test_two_processes_share_batches_and_end_equal(tmp_path, tiny_config, synth_dir):
    out = tmp_path / "ddp"
    out.mkdir()
    (tmp_path / "ddp_script.py").write_text(SCRIPT)
    iterations, batch_size = 3, 4
    cfg_overrides = [
        f"data.train_json={synth_dir / 'annotations' / 'train.json'}", f"output_dir={out}", "device=cpu",
        "model.num_classes=4", "model.depth=18", "model.fpn_channels=32", "model.mask_branch_channels=16",
        "model.head_convs=1", "model.norm=bn", "data.min_size_train=[32]", "data.max_size=64",
        "data.num_workers=0", "data.random_points_per_instance=1", f"solver.batch_size={batch_size}",
        f"solver.max_iter={iterations}", "solver.log_period=1", "solver.warmup_iters=0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "ddp_script.py"), str(out), *cfg_overrides],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    # Each rank takes its half of every global batch, in the order the single-process sampler gives.
    seen = [json.loads((out / f"seen_rank{rank}.json").read_text()) for rank in range(2)]
    images = [r.image_id for r in load_coco(synth_dir / "annotations" / "train.json").images if r.instances]
    keys = iter(InfiniteSampler(len(images), batch_size, seed=0))
    for iteration in range(iterations):
        expected = [images[next(keys)[0]] for _ in range(batch_size)]
        assert seen[0][iteration] + seen[1][iteration] == expected
        assert len(seen[0][iteration]) == len(seen[1][iteration]) == batch_size // 2

    rank0 = torch.load(out / "weights_rank0.pt", weights_only=True)
    rank1 = torch.load(out / "weights_rank1.pt", weights_only=True)
    final = load_checkpoint(out / "model_final.pth")
    assert final["iteration"] == iterations and len(final["rng"]) == 2
    for key in rank0:
        assert torch.equal(rank0[key], final["model"][key]), key
        # BatchNorm statistics are per process (gloo has no SyncBatchNorm); DDP copies rank 0's into
        # every rank at the start of each forward pass, so they differ only after the last one.
        if "running_" not in key:
            assert torch.equal(rank0[key], rank1[key]), key
    # Only rank 0 writes: one metrics line per iteration.
    assert [r["iteration"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shards_partition_the_ids_evenly_whatever_their_order(world_size):
    ids = [17, 3, 5, 100, 2, 8, 9, 42, 1, 6, 7]
    shards = [shard_images(ids, DistributedContext(rank, world_size)) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == sorted(ids)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [shard_images(reversed(ids), DistributedContext(rank, world_size)) for rank in range(world_size)]
    assert shards[0] == set(sorted(ids)[::world_size])


def test_in_dataset_order_restores_the_order_of_one_process():
    order = [30, 10, 20, 40]  # dataset order, not id order
    items = [(30, "a"), (30, "b"), (10, "c"), (20, "d"), (40, "e"), (40, "f")]
    shards = [[(30, "a"), (30, "b"), (40, "e"), (40, "f")], [(10, "c"), (20, "d")]]
    assert in_dataset_order(shards, order, lambda item: item[0]) == items


def test_run_on_main_alone_runs_and_raises_as_a_plain_call():
    assert run_on_main(lambda: 7, DistributedContext()) == 7
    with pytest.raises(KeyError):
        run_on_main(lambda: {}["missing"], DistributedContext())
