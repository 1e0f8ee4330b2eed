"""bench/records.py: a record written, read back and validated; malformed records named with their key; the
committed records in results/ all read."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from records import (  # noqa: E402
    RESULTS,
    SCHEMA,
    RecordError,
    provenance,
    read_record,
    record,
    validate_record,
    write_record,
)

from apis.config_loading import load_config  # noqa: E402
from apis.evaluation.paired import paired_comparison  # noqa: E402
from apis.utils.io import strict_json  # noqa: E402


def _record(**fields):
    started = provenance(["bench/bench_x.py", "--seeds", "0", "1"])
    rows = [{"group": "entropy", "seed": s, "step": 1, "mask_AP": ap} for s, ap in ((0, 12.5), (1, float("nan")))]
    comparison = paired_comparison({0: 12.5, 1: 13.0}, {0: 12.0, 1: 12.0}, metric="mask_AP", a_name="entropy",
                                   b_name="random", step=1)
    return record("x", started, rows, arguments={"seeds": [0, 1], "out": Path("runs/x")},
                  config=load_config(None, ["seed=3"]), comparisons=[comparison.as_dict()], **fields)


def test_a_record_round_trips(tmp_path):
    content = _record()
    path = write_record(tmp_path / "results" / "x.json", content)
    back = read_record(path)
    assert back["schema"] == SCHEMA == 2 and back["bench"] == "x"
    assert back["command"] == "python bench/bench_x.py --seeds 0 1"
    assert isinstance(back["dirty"], bool) and set(back["machine"]) == {"cpu", "nproc", "gpu"}
    assert back["arguments"] == {"seeds": [0, 1], "out": "runs/x"}
    assert back["config"]["seed"] == 3 and back["config"]["solver"]["max_iter"] == load_config(None).solver.max_iter
    assert back["rows"][0] == {"group": "entropy", "seed": 0, "step": 1, "mask_AP": 12.5}
    assert back["rows"][1]["mask_AP"] is None  # NaN written as null: strict JSON
    assert back["comparisons"][0]["differences"] == [0.5, 1.0] and back["comparisons"][0]["verdict"] == "unresolved"
    assert back["wall_s"] >= 0 and "_start" not in back
    assert back["config"]["model"]["size_ranges"][-1] is None  # infinity too: null
    assert back == strict_json(content)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("commit"), "no 'commit'"),
    (lambda c: c.update(dirty="no"), "'dirty' is 'no'; expected bool"),
    (lambda c: c.update(wall_s=True), "'wall_s' is True"),
    (lambda c: c.update(schema=7), "schema 7"),
    (lambda c: c.update(extra=1), "unknown keys ['extra']"),
    (lambda c: c["machine"].pop("nproc"), "machine: no 'nproc'"),
    (lambda c: c["rows"].append(3), "rows[2] is not an object"),
    (lambda c: c["comparisons"][0].pop("verdict"), "comparisons[0]: no 'verdict'"),
])
def test_a_malformed_record_is_refused_naming_the_key(tmp_path, change, message):
    content = json.loads(json.dumps(_record(), allow_nan=True))
    change(content)
    with pytest.raises(RecordError, match=message.replace("[", r"\[").replace("]", r"\]")):
        write_record(tmp_path / "bad.json", content)
    assert not (tmp_path / "bad.json").exists()
    (tmp_path / "bad.json").write_text(json.dumps(content))
    with pytest.raises(RecordError, match="bad.json"):
        read_record(tmp_path / "bad.json")


def test_a_schema_1_record_reads_as_schema_2(tmp_path):
    old = {k: v for k, v in _record().items() if k not in ("arguments", "config", "comparisons")}
    (tmp_path / "old.json").write_text(json.dumps({**old, "schema": 1}))
    back = read_record(tmp_path / "old.json")
    assert back["schema"] == 2 and back["config"] is None and back["comparisons"] == [] and back["arguments"] == {}
    # Keys a schema-1 script wrote beside its rows become its arguments.
    (tmp_path / "own.json").write_text(json.dumps({**old, "schema": 1, "data": "val.json", "load_average": [1.0]}))
    assert read_record(tmp_path / "own.json")["arguments"] == {"data": "val.json", "load_average": [1.0]}


def test_every_committed_record_follows_the_schema():
    paths = sorted(RESULTS.glob("*.json"))
    assert paths, "results/ holds no records"
    for path in paths:
        assert read_record(path)["rows"], path


def test_validation_accepts_exactly_what_record_writes():
    assert validate_record(json.loads(json.dumps(_record(), allow_nan=True)))["bench"] == "x"


def test_the_gpu_is_named_by_torch_when_imported_else_by_nvidia_smi(tmp_path, monkeypatch):
    """A report-only script has not imported torch: the GPU's name comes from nvidia-smi (here a stand-in that
    prints two cards: the first is named), and none without it; with torch imported, torch names it."""
    import records
    import torch

    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = --query-gpu=name ] && printf "NVIDIA H200\\nNVIDIA H100\\n"\n')
    smi.chmod(0o755)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert records.machine()["gpu"] == "NVIDIA H200"
    assert "torch" not in sys.modules  # asking did not import it
    smi.unlink()
    assert records.machine()["gpu"] is None
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"card {index}")
    assert records.machine()["gpu"] == "card 0"
