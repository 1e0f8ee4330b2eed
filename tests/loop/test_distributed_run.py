"""`apis run` on two CPU processes under ``torchrun`` (gloo): the loop to the end, a rank killed mid-selection,
people answering, and AFIS.

Two processes train other weights than one (per-rank batch statistics, another summation order), so the
reference is one process *replaying* the run with its checkpoints: it selects (or scores and buys), asks and
evaluates itself, and must end with the same ledger, the same selections (purchases) and the same validation
results.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from apis.config_loading import dump_config, load_config
from apis.data.coco import load_coco
from apis.data.ledger import PointLedger
from apis.loop.run import ActiveLearningRun, run_active_loop
from apis.loop.run_dir import step_dir

# Every rank runs `apis run`, noting in seen_rankR.jsonl the images it decodes whole (apis.data.image_files),
# selects and predicts on; with APIS_TEST_KILL_RANK=R, rank R SIGKILLs itself on its first image of selection.
SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import apis.active.prediction as prediction
    import apis.data.image_files as image_files
    import apis.engine.inference as inference

    rank = os.environ["RANK"]

    def note(kind, image_ids):
        with open(f"seen_rank{rank}.jsonl", "a") as handle:
            handle.write(json.dumps([kind, image_ids]) + "\\n")

    sets, infer = prediction.image_prediction_sets, inference.run_inference

    def noting_sets(models, samples, device):
        if os.environ.get("APIS_TEST_KILL_RANK") == rank:
            os.kill(os.getpid(), signal.SIGKILL)
        note("select", [samples[0]["image_id"]])
        return sets(models, samples, device)

    def noting_inference(model, coco, *args, **kwargs):
        note("infer", [record.image_id for record in coco.images])
        return infer(model, coco, *args, **kwargs)

    decode = image_files.decode_whole

    def noting_decode(path):
        note("decode", [path.name])
        return decode(path)

    prediction.image_prediction_sets, inference.run_inference = noting_sets, noting_inference
    image_files.decode_whole = noting_decode
    from apis.cli import main
    main(["run", *sys.argv[1:]])
""")

STEPS = 2


def _torchrun(tmp_path: Path, config: Path, kill_rank: int | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "run_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("APIS_TEST_KILL_RANK", None)
    if kill_rank is not None:
        env["APIS_TEST_KILL_RANK"] = str(kill_rank)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(config)], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)


def _config(tmp_path: Path, synth_dir: Path, tiny_overrides, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    dump_config(load_config(None, tiny_overrides(synth_dir, tmp_path / name, f"loop.steps={STEPS}")), path)
    return path


def _answers(run_dir: Path) -> list[tuple]:
    with PointLedger(run_dir / "ledger.sqlite", read_only=True) as ledger:
        return [(a.ann_id, a.image_id, a.x, a.y, a.label, a.step, a.chosen_by) for a in ledger.answers()]


def _replay(run_dir: Path, config: Path, out: Path, monkeypatch) -> Path:
    """One process runs ``config`` in ``out``, training nothing: each step's model is ``run_dir``'s."""

    def borrowed(self, step):
        target = self.dir.member(step, 0) / "model_final.pth"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(step_dir(run_dir, step) / "train" / "model_final.pth", target)
        return target

    monkeypatch.setattr(ActiveLearningRun, "_train", borrowed)
    cfg = load_config(config, [f"output_dir={out}"])
    run_active_loop(cfg)
    return out


def _assert_as_one_process(run_dir: Path, config: Path, tmp_path: Path, monkeypatch) -> None:
    one = _replay(run_dir, config, tmp_path / "one_process", monkeypatch)
    answers = _answers(run_dir)
    assert answers == _answers(one)
    assert len(answers) == len(set((a[0], a[2], a[3]) for a in answers))  # no point asked twice
    assert {a[5] for a in answers} == set(range(STEPS + 1))
    for step in range(STEPS + 1):
        if step:
            ours, theirs = (json.loads((step_dir(d, step) / "selection.json").read_text()) for d in (run_dir, one))
            assert ours["points"] == theirs["points"] and ours["points"]
        ours, theirs = (json.loads((step_dir(d, step) / "val_results.json").read_text()) for d in (run_dir, one))
        assert ours == theirs  # sharded inference: the same COCO results, in the same order
        ours, theirs = (json.loads((step_dir(d, step) / "metrics.json").read_text()) for d in (run_dir, one))
        assert ours["val"] == theirs["val"] and ours["points_per_instance"] == theirs["points_per_instance"]


def test_ranks_killed_mid_selection_resume_and_run_the_loop_as_one_process(synth_dir, tiny_overrides, tmp_path,
                                                                           monkeypatch):
    """Rank 1, then (on the first resume) rank 0 dies on its first image of step 1's selection; torchrun stops the
    other each time. Run again, the loop redoes the selection, runs to the end, each rank on its own half of the
    images, and ends as one process would."""
    config = _config(tmp_path, synth_dir, tiny_overrides, "ddp")
    run_dir = tmp_path / "ddp"
    for kill_rank in (1, 0):
        killed = _torchrun(tmp_path, config, kill_rank=kill_rank)
        assert killed.returncode != 0
        assert (step_dir(run_dir, 0) / "metrics.json").exists()
        assert not (step_dir(run_dir, 1) / "selection.json").exists()  # killed before it was written
        assert {a[5] for a in _answers(run_dir)} == {0}
    for rank in (0, 1):  # what the ranks saw before they were killed: the shards below are the resumed run's
        (tmp_path / f"seen_rank{rank}.jsonl").unlink(missing_ok=True)

    completed = _torchrun(tmp_path, config)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert sorted(p.name for p in run_dir.glob("step_*/metrics.json")) == ["metrics.json"] * (STEPS + 1)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == STEPS + 1  # once per step, by rank 0
    _assert_as_one_process(run_dir, config, tmp_path, monkeypatch)

    # Each rank worked on its own half of the images, at every selection and every evaluation after the resume.
    seen = [[json.loads(line) for line in (tmp_path / f"seen_rank{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)]
    cfg = load_config(config)
    train, val = (load_coco(path) for path in (cfg.data.train_json, cfg.data.val_json))
    expected = {"select": [im.image_id for im in train.images if im.instances] * STEPS,
                "infer": [im.image_id for im in val.images] * STEPS}
    for kind, image_ids in expected.items():
        shards = [[i for k, ids in rank_seen if k == kind for i in ids] for rank_seen in seen]
        assert sorted(shards[0] + shards[1]) == sorted(image_ids), kind
        assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1]), kind


def test_both_ranks_stop_for_peoples_answers(synth_dir, tiny_overrides, tmp_path, monkeypatch):
    """oracle.kind=human: rank 0 stores P0's questions and stops; the other rank stops with the same message.
    With an empty cache of checked images, rank 0 decodes every image once and the other finds them checked."""
    config = tmp_path / "human.yaml"
    dump_config(load_config(None, tiny_overrides(synth_dir, tmp_path / "human", "oracle.kind=human", "loop.steps=0")),
                config)
    monkeypatch.setenv("APIS_CACHE_DIR", str(tmp_path / "empty_cache"))
    completed = _torchrun(tmp_path, config)
    assert completed.returncode != 0
    assert completed.stdout.count("questions waiting; answer them with `apis annotate") == 2, completed.stdout
    assert "APIS bug" not in completed.stderr
    decoded = [[name for line in (tmp_path / f"seen_rank{rank}.jsonl").read_text().splitlines()
                for kind, names in [json.loads(line)] if kind == "decode" for name in names]
               if (tmp_path / f"seen_rank{rank}.jsonl").exists() else [] for rank in (0, 1)]
    assert sorted(decoded[0]) == sorted(path.name for path in (synth_dir / "images").iterdir()) and decoded[1] == []


def _masks(run_dir: Path) -> list[tuple]:
    with PointLedger(run_dir / "ledger.sqlite", read_only=True) as ledger:
        return [(m.ann_id, m.image_id, m.step, m.chosen_by, m.cost_s) for m in ledger.masks()]


def test_two_ranks_run_afis_as_one_process(synth_dir, tiny_overrides, tmp_path, monkeypatch):
    """AFIS (instance masks bought by the detection loss): each rank scores its half of the images, rank 0 buys;
    one process replaying the checkpoints buys the same masks and evaluates to the same results."""
    config = tmp_path / "afis.yaml"
    dump_config(load_config(None, tiny_overrides(synth_dir, tmp_path / "afis", "loop.steps=1", "afis.level=instance",
                                                 "afis.scorer=min-det-loss", "loss.full=1.0",
                                                 "oracle.mask_cost_s=2.7")), config)
    completed = _torchrun(tmp_path, config)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    run_dir = tmp_path / "afis"
    one = _replay(run_dir, config, tmp_path / "one_process", monkeypatch)
    assert _masks(run_dir) == _masks(one) and {m[2] for m in _masks(run_dir)} == {0, 1}
    for step in (0, 1):
        ours, theirs = (json.loads((step_dir(d, step) / "masks.json").read_text()) for d in (run_dir, one))
        assert ours["bought"] == theirs["bought"] and ours["scorer"] == theirs["scorer"]
        ours, theirs = (json.loads((step_dir(d, step) / "val_results.json").read_text()) for d in (run_dir, one))
        assert ours == theirs
    seen = [[json.loads(line) for line in (tmp_path / f"seen_rank{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)]
    scored = [[i for kind, ids in rank_seen if kind == "select" for i in ids] for rank_seen in seen]
    assert scored[0] and scored[1] and not set(scored[0]) & set(scored[1])  # step 1's scoring, sharded
