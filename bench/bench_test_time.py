"""How long the README's test command takes: the suite of a fresh clone, timed, as a record.

Clones the checkout's HEAD into a new folder (``git clone``: committed files only, as CI sees them), gives the
clone this checkout's installed environments (``.venv`` and ``.venv-label-studio`` linked: building them is
``make``'s time, not the tests'), and runs what ``make test`` runs after its installs, as CI runs it: ``ruff
check .`` (recorded as ``ruff_clean``, not timed), then the tests (the browser and the Label Studio server
required):

    CI=true APIS_REQUIRE_BROWSER=1 APIS_REQUIRE_LABEL_STUDIO=1 python -m pytest -n WORKERS --dist loadfile

``--repeats`` runs it again in the same clone, ``--workers 2 3`` once per number of processes (one row each).
Each row holds the wall time of pytest (interpreter start and collection included), its CPU time and that of the
processes it waited for (the same suite needs about the same CPU: more of it for the same tests says the machine was
slower), pytest's own count of passed / failed / skipped tests and the time it reports, the load average of the
minute before it started (another job running beside the tests makes them slower; the table shows it), and the
slowest tests. The clone is deleted afterwards. The tests' child processes that start
outside the clone import the package through the environment's editable install, i.e. from this checkout: time a
clean tree (the record's ``dirty`` says whether it was).

    .venv/bin/python bench/bench_test_time.py [--workers 3] [--repeats 1]

``--tests PATH ...`` times only those test files or folders (the script's own test does so).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from records import REPO, add_record_option, provenance, save

ENVIRONMENTS = (".venv", ".venv-label-studio")
SUMMARY = re.compile(r"=* ?(?P<counts>(?:\d+ \w+(?:, )?)+) in (?P<seconds>[\d.]+)s")
SLOWEST = re.compile(r"^(?P<seconds>[\d.]+)s (?P<phase>call|setup|teardown)\s+(?P<test>\S+)$")
FAILURE = re.compile(r"^(?:FAILED|ERROR) (?P<test>\S+)")


def parse_summary(output: str) -> dict:
    """pytest's last summary line (``870 passed, 4 skipped in 512.3s``) as ``{"passed": 870, "skipped": 4,
    "failed": 0, "errors": 0, "pytest_s": 512.3}``; raises ValueError when there is none."""
    found = [match for line in output.splitlines() if (match := SUMMARY.search(line.strip()))]
    if not found:
        raise ValueError("pytest printed no summary line")
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for part in found[-1]["counts"].split(", "):
        number, kind = part.split(" ", 1)
        kind = {"error": "errors"}.get(kind, kind)
        if kind in counts:
            counts[kind] = int(number)
    return {**counts, "pytest_s": float(found[-1]["seconds"])}


def parse_slowest(output: str) -> list[dict]:
    """The ``--durations`` lines: ``[{"test": nodeid, "phase": "call", "seconds": 12.3}, ...]``, slowest first."""
    return [{"test": m["test"], "phase": m["phase"], "seconds": float(m["seconds"])}
            for line in output.splitlines() if (m := SLOWEST.match(line.strip()))]


def parse_failures(output: str) -> list[str]:
    """The node ids of pytest's short summary (``FAILED tests/x.py::test_y - ...``, ``ERROR ...``), in its order."""
    return [m["test"] for line in output.splitlines() if (m := FAILURE.match(line.strip()))]


@contextmanager
def fresh_clone(bench: str) -> Iterator[Path]:
    """:func:`clone` in a temporary folder, deleted afterwards; exits naming ``bench`` when this checkout has no
    ``.venv`` to link."""
    if not (REPO / ".venv" / "bin" / "python").exists():
        sys.exit(f"{bench}: no .venv in this checkout; run `make venv` first")
    with tempfile.TemporaryDirectory(prefix=f"apis_{bench}_") as work:
        yield clone(Path(work) / "clone")


def clone(destination: Path) -> Path:
    """A clone of this checkout's HEAD in ``destination`` with its environments linked in."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(destination)], check=True)
    for name in ENVIRONMENTS:
        if (REPO / name).is_dir():
            (destination / name).symlink_to(REPO / name)
    return destination


def children_cpu_since(before: resource.struct_rusage) -> float:
    """User + system seconds of the child processes waited for since ``before`` (``RUSAGE_CHILDREN``)."""
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def time_suite(checkout: Path, workers: int, tests: list[str], slowest: int) -> dict:
    """One run of the suite in ``checkout``: the row of the record."""
    python = checkout / ".venv" / "bin" / "python"
    env = {**os.environ, "CI": "true", "APIS_REQUIRE_BROWSER": "1", "APIS_REQUIRE_LABEL_STUDIO": "1"}
    command = [str(python), "-m", "pytest", "-n", str(workers), "--dist", "loadfile", "-p", "no:cacheprovider",
               f"--durations={slowest}", *tests]
    # make test's first command: a ruff error fails CI before any test runs.
    lint = subprocess.run([str(checkout / ".venv" / "bin" / "ruff"), "check", "."], cwd=checkout, capture_output=True,
                          text=True)
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    # CPU seconds of pytest and every process it waited for: the same suite needs about the same CPU, so a wall
    # time with more CPU than another run's says the machine was slower, not the code.
    cpu = children_cpu_since(before)
    output = completed.stdout + completed.stderr
    try:
        summary = parse_summary(output)
    except ValueError:
        sys.exit(f"bench_test_time: pytest ended with {completed.returncode} and no summary:\n{output[-3000:]}")
    return {"workers": workers, "tests": " ".join(tests) or "all", "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            **summary,
            "returncode": completed.returncode, "ruff_clean": lint.returncode == 0,
            "load_1min_before": round(load, 2), "failures": parse_failures(output),
            "slowest": parse_slowest(output)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[(os.cpu_count() or 1) + 1],  # as make test
                        help="pytest-xdist processes, one run per value (0: the tests in pytest's own process)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--slowest", type=int, default=15, help="how many of the slowest tests to record")
    parser.add_argument("--tests", nargs="*", default=[], help="test files or folders (default: the whole suite)")
    add_record_option(parser, "test_time")
    args = parser.parse_args()
    started = provenance()
    rows = []
    with fresh_clone("bench_test_time") as checkout:
        for repeat in range(args.repeats):
            for workers in args.workers:
                rows.append({"repeat": repeat, **time_suite(checkout, workers, args.tests, args.slowest)})
                row = rows[-1]
                print(f"run {len(rows)}: {workers} workers, {row['passed']} passed, {row['failed']} failed, "
                      f"{row['skipped']} skipped in {row['wall_s'] / 60:.1f} min (load {row['load_1min_before']} "
                      "before it)", flush=True)
                for test in row["failures"]:
                    print(f"  failed: {test}", flush=True)
    print("\n| run | workers | passed | failed | skipped | wall (min) | load before |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['repeat'] + 1} | {row['workers']} | {row['passed']} | {row['failed']} | {row['skipped']} | "
              f"{row['wall_s'] / 60:.1f} | {row['load_1min_before']} |")
    save(args.record, "test_time", started, rows, arguments=args)
    if any(row["returncode"] != 0 or not row["ruff_clean"] for row in rows):
        sys.exit("bench_test_time: the suite or ruff failed (the record says which run)")


if __name__ == "__main__":
    main()
