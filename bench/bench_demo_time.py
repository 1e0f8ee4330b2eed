"""How long the README's demo takes: ``apis demo`` in a fresh clone, timed, as a record.

Clones the checkout's HEAD (committed files only, with this checkout's installed environments linked, as
``bench_test_time.py`` does: building ``.venv`` is ``make``'s time, not the demo's) and runs what ``make demo`` runs
after its install, ``apis demo``, in the clone, with the clone's package first on the path. A row holds the wall
time against the README's target (10 minutes on 2 cores), the CPU seconds of the demo and every process it
started, the largest resident memory among them, the load average of the minute before it started (another job
beside it makes it slower; the table shows it), the exit status, and the demo's closing numbers: the mean IoU
of the exported masks with the true masks and that of filling each box. The clone is deleted afterwards.

    .venv/bin/python bench/bench_demo_time.py [--repeats 1] [--demo-args "--steps 3"]

The row also holds the minutes into the demo at which M0, both strategies' steps and the report were done (the
demo prints them), to show where a slow demo spends its time.

``--python`` runs another interpreter in place of the clone's (the script's test gives a stand-in).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench_test_time import children_cpu_since, fresh_clone
from records import add_record_option, provenance, save

TARGET_S = 600
CLOSING = re.compile(r"^Masks to take home: .* mean IoU with the true masks (?P<masks>[\d.]+), "
                     r"filling each box (?P<box_fill>[\d.]+)")


def parse_closing(output: str) -> dict:
    """The demo's last line of numbers, ``{"masks_miou": 0.734, "box_fill_miou": 0.467}``; ``None`` values when the
    demo printed no such line (it failed before the export)."""
    found = [match for line in output.splitlines() if (match := CLOSING.match(line.strip()))]
    if not found:
        return {"masks_miou": None, "box_fill_miou": None}
    return {"masks_miou": float(found[-1]["masks"]), "box_fill_miou": float(found[-1]["box_fill"])}


PHASE = re.compile(r"^(?P<phase>M0 done|both strategies' steps done|report written), (?P<minutes>[\d.]+) min into the "
                   r"demo$")
PHASE_KEYS = {"M0 done": "m0_min", "both strategies' steps done": "steps_min", "report written": "report_min"}


def parse_phases(output: str) -> dict:
    """The minutes into the demo at which its phases ended, ``{"m0_min": 5.2, "steps_min": 8.9, "report_min":
    9.6}`` (cumulative, as the demo prints them); ``None`` for a phase the demo did not reach."""
    found = {PHASE_KEYS[m["phase"]]: float(m["minutes"]) for line in output.splitlines()
             if (m := PHASE.match(line.strip()))}
    return {key: found.get(key) for key in PHASE_KEYS.values()}


def time_demo(checkout: Path, python: str, demo_args: list[str]) -> dict:
    """One ``apis demo`` in ``checkout``: the row of the record."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run([python, "-m", "apis.cli", "demo", *demo_args], cwd=checkout, env=env,
                               capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu = children_cpu_since(before)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # for the peak memory
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        print(f"bench_demo_time: the demo ended with {completed.returncode}:\n{output[-3000:]}", file=sys.stderr)
    return {"demo_args": " ".join(demo_args), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "target_met": wall <= TARGET_S, "peak_rss_mib": round(after.ru_maxrss / 1024),
            "load_1min_before": round(load, 2), "returncode": completed.returncode, **parse_closing(output),
            **parse_phases(output)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--demo-args", default="", help="arguments of `apis demo` (default: none, as make demo)")
    parser.add_argument("--python", help="the interpreter to run (default: the clone's .venv/bin/python)")
    add_record_option(parser, "demo_time")
    args = parser.parse_args()
    started = provenance()
    rows = []
    with fresh_clone("bench_demo_time") as checkout:
        python = args.python or str(checkout / ".venv" / "bin" / "python")
        for repeat in range(args.repeats):
            rows.append({"repeat": repeat, **time_demo(checkout, python, shlex.split(args.demo_args))})
            row = rows[-1]
            print(f"run {repeat + 1}/{args.repeats}: {row['wall_s'] / 60:.1f} min, {row['cpu_s'] / 60:.1f} CPU-min "
                  f"(load {row['load_1min_before']} before it), exit {row['returncode']}", flush=True)
    save(args.record, "demo_time", started, rows, arguments=args)
    if any(row["returncode"] != 0 for row in rows):
        sys.exit("bench_demo_time: the demo failed (the record says which run)")


if __name__ == "__main__":
    main()
