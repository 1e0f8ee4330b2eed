"""Benchmark records: one JSON file per benchmark run, so that a number in the docs can be traced to the command,
commit and machine that produced it.

A record is ``{"schema": 1, "bench": name, "command": the command line, "commit": HEAD, "dirty": whether the
tree had uncommitted changes to tracked files, "date": UTC ISO time, "machine": {"cpu", "nproc", "gpu"},
"wall_s": seconds, "rows": [...]}``; the rows are the script's own.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from apis.utils.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict:
    """The CPU model, ``nproc`` and the GPU's name (None without CUDA)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return {"cpu": cpu, "nproc": os.cpu_count(), "gpu": gpu}


def _git(*args: str) -> str:
    completed = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else ""


def provenance(argv: list[str] | None = None) -> dict:
    """Where the numbers come from, taken when a benchmark starts (the code it imports is the tree's then):
    the command line, commit, whether tracked files differed from it, the date and the machine."""
    argv = sys.argv if argv is None else argv
    return {
        "command": " ".join(shlex.quote(part) for part in ["python", os.path.relpath(argv[0], REPO), *argv[1:]]),
        "commit": _git("rev-parse", "HEAD") or None,
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }


def record(bench: str, started: dict, rows: list[dict], wall_s: float) -> dict:
    """The record of a benchmark run that began with ``started`` (:func:`provenance`) and gave ``rows``."""
    return {"schema": 1, "bench": bench, **started, "wall_s": round(wall_s, 1), "rows": rows}


def write_record(path: str | Path, content: dict) -> Path:
    """Write a record as indented strict JSON (NaN written as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, content, indent=1)
    return path
