"""Benchmark records: one JSON file per benchmark run, so that a number in the docs can be traced to the command,
commit, machine and config that produced it. The schema is documented in docs/records.md; in short::

    {"schema": 2, "bench": name, "command": the command line, "commit": HEAD, "dirty": whether tracked files
     differed from HEAD, "date": UTC ISO time, "machine": {"cpu", "nproc", "gpu"}, "wall_s": seconds,
     "arguments": the script's parsed options, "config": the resolved experiment config (or null),
     "rows": [one dict per measurement; "group", "seed" and "step" name it where they apply],
     "comparisons": [paired comparisons over seeds (apis.evaluation.paired.PairedComparison.as_dict)]}

Records of schema 1 (no ``arguments``, ``config`` or ``comparisons``) read back as schema 2 without a config or
comparisons, the script's own extra keys as its arguments.
Every script writes its record to ``--record`` (default ``results/<bench>.json``); ``bench/tables.py`` turns
records into the docs' tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from apis.utils.io import atomic_write_json, strict_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
SCHEMA = 2

# Every key of a record and the types its value may have (None: JSON null).
FIELDS = {
    "schema": (int,), "bench": (str,), "command": (str,), "commit": (str, type(None)), "dirty": (bool,),
    "date": (str,), "machine": (dict,), "wall_s": (int, float), "arguments": (dict,),
    "config": (dict, type(None)), "rows": (list,), "comparisons": (list,),
}
MACHINE_FIELDS = {"cpu": (str,), "nproc": (int, type(None)), "gpu": (str, type(None))}
COMPARISON_FIELDS = {"metric": (str,), "step": (int, type(None)), "a": (str,), "b": (str,), "seeds": (list,),
                     "differences": (list,), "mean": (int, float, type(None)), "sd": (int, float, type(None)),
                     "low": (int, float, type(None)), "high": (int, float, type(None)),
                     "interval": (str,), "verdict": (str,)}


class RecordError(ValueError):
    """A record that does not follow the schema; the message names the file and the key."""


def machine() -> dict:
    """The CPU model, ``nproc`` and the GPU's name (None without CUDA)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "nproc": os.cpu_count(), "gpu": _gpu_name()}


def _gpu_name() -> str | None:
    """The first CUDA device's name: from torch where the benchmark has imported it, else from ``nvidia-smi``, so
    that a script that only reads records (``--report-only``, ``--collect``) need not import torch (seconds)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if shutil.which("nvidia-smi") is None:
        return None
    listed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                            text=True)
    names = listed.stdout.strip().splitlines() if listed.returncode == 0 else []
    return names[0].strip() if names else None


def _git(*args: str) -> str:
    completed = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else ""


def provenance(argv: list[str] | None = None) -> dict:
    """Where the numbers come from, taken when a benchmark starts (the code it imports is the tree's then):
    the command line, commit, whether tracked files differed from it, the date and the machine; ``_start``
    (perf-counter seconds) is for :func:`record`'s wall time and is not written."""
    argv = sys.argv if argv is None else argv
    return {
        "command": " ".join(shlex.quote(part) for part in ["python", os.path.relpath(argv[0], REPO), *argv[1:]]),
        "commit": _git("rev-parse", "HEAD") or None,
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "_start": time.perf_counter(),
    }


def add_record_option(parser: argparse.ArgumentParser, bench: str) -> None:
    """``--record PATH``: where the run's record goes (default ``results/<bench>.json``, replacing the last one:
    git keeps the earlier ones)."""
    parser.add_argument("--record", type=Path, default=RESULTS / f"{bench}.json",
                        help=f"write this run's JSON record here (default: results/{bench}.json)")


def plain(value):
    """``value`` with paths as strings, tuples as lists and numpy scalars as Python numbers, so that it is JSON."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


def record(bench: str, started: dict, rows: list[dict], *, arguments: dict | argparse.Namespace | None = None,
           config=None, comparisons: list[dict] = ()) -> dict:
    """The record of a benchmark run that began with ``started`` (:func:`provenance`) and gave ``rows``;
    ``config``: an :class:`apis.config.ExperimentConfig` (written resolved) or a dict, or None."""
    from apis.config import ExperimentConfig, to_dict

    if isinstance(arguments, argparse.Namespace):
        arguments = vars(arguments)
    arguments = {k: v for k, v in (arguments or {}).items() if k != "record"}
    if isinstance(config, ExperimentConfig):
        config = to_dict(config)
    wall_s = time.perf_counter() - started["_start"]
    kept = {k: v for k, v in started.items() if k != "_start"}
    return {"schema": SCHEMA, "bench": bench, **kept, "wall_s": round(wall_s, 1),
            "arguments": plain(arguments or {}), "config": plain(config), "rows": plain(rows),
            "comparisons": plain(list(comparisons))}


def _check_fields(content: dict, fields: dict, where: str) -> None:
    for key, types in fields.items():
        if key not in content:
            raise RecordError(f"{where}: no '{key}'")
        if not isinstance(content[key], types) or (isinstance(content[key], bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            raise RecordError(f"{where}: '{key}' is {content[key]!r}; expected {expected}")


def validate_record(content: dict, where: str = "record") -> dict:
    """``content`` if it follows the schema (every key, its type; rows are dicts; comparisons complete);
    raises :class:`RecordError` naming ``where`` and the key otherwise."""
    if not isinstance(content, dict):
        raise RecordError(f"{where}: not a JSON object")
    if content.get("schema") != SCHEMA:
        raise RecordError(f"{where}: schema {content.get('schema')!r}; this code reads schema {SCHEMA}")
    unknown = sorted(content.keys() - FIELDS.keys())
    if unknown:
        raise RecordError(f"{where}: unknown keys {unknown}")
    _check_fields(content, FIELDS, where)
    _check_fields(content["machine"], MACHINE_FIELDS, f"{where}: machine")
    for index, row in enumerate(content["rows"]):
        if not isinstance(row, dict):
            raise RecordError(f"{where}: rows[{index}] is not an object")
    for index, comparison in enumerate(content["comparisons"]):
        _check_fields(comparison, COMPARISON_FIELDS, f"{where}: comparisons[{index}]")
    return content


def write_record(path: str | Path, content: dict) -> Path:
    """Validate ``content`` and write it as indented strict JSON (NaN and infinities written as null)."""
    path = Path(path)
    content = strict_json(content)
    validate_record(content, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, content, indent=1)
    return path


def save(path: str | Path, bench: str, started: dict, rows: list[dict], **fields) -> Path:
    """:func:`record` then :func:`write_record`; prints where it went."""
    written = write_record(path, record(bench, started, rows, **fields))
    print(f"record: {written}", flush=True)
    return written


def read_record(path: str | Path) -> dict:
    """A record read back and validated; schema 1 is read as schema 2 with no config or comparisons, its own
    extra keys as the arguments."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: not JSON ({error})") from None
    if isinstance(content, dict) and content.get("schema") == 1:
        # Schema 1 let a script add keys of its own beside the rows: they read as its arguments.
        own = {key: value for key, value in content.items() if key not in FIELDS}
        content = {**{key: value for key, value in content.items() if key in FIELDS}, "schema": SCHEMA,
                   "arguments": own, "config": None, "comparisons": []}
    return validate_record(content, str(path))
