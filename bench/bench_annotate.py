"""Annotation server under load: concurrent simulated annotators answer every question of a synthetic run.

Builds a synthetic dataset and a human-answered run (``oracle.kind=human``) whose step 0 holds exactly
``--questions`` questions, stored the way the loop stores them; starts ``apis annotate`` in its own process on
127.0.0.1 (port chosen by the OS); then ``--clients`` threads, one HTTP keep-alive connection and one named
token each, loop "next question" -> "answer" (label drawn at random, ``--think-ms`` pause) until the server
has nothing left for them. Every loop is bounded: at most ``4 * questions`` requests per client and
``--timeout`` seconds in all.

Checks, from the ledger afterwards: every question has exactly one answer (0 lost, 0 answered twice), every
answer a client was told was stored is there, and no question was handed to two clients at once. Reports
p50 / p95 / max latency of both requests as the clients saw them (connection reuse, JSON included).

    .venv/bin/python bench/bench_annotate.py --questions 5000 --clients 8
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from records import add_record_option, provenance, save


def build_run(work: Path, questions: int) -> Path:
    """A synthetic dataset with enough instances and a run dir whose step 0 holds ``questions`` questions."""
    from apis.config_loading import load_config
    from apis.data.questions import QuestionQueue
    from apis.data.synth import make_synthetic_dataset
    from apis.loop.asked_points import draw_initial_points
    from apis.loop.run import ActiveLearningRun

    images = max(8, int(questions / 3.0) + 40)  # ~3.5 instances per 64 px image; checked below
    make_synthetic_dataset(work / "data", num_images=images, size=64, seed=0, val_fraction=0.02)
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(None, [f"data.train_json={work}/data/annotations/train.json",
                             f"data.val_json={work}/data/annotations/val.json", f"output_dir={run_dir}",
                             "oracle.kind=human", "model.num_classes=4", "device=cpu"])
    run = ActiveLearningRun(cfg)  # writes config.yaml and registers the instances, as `apis run` does
    points = draw_initial_points(run.train_set, cfg.seed)
    run.close()
    if len(points) < questions:
        raise SystemExit(f"the synthetic data has {len(points)} instances, fewer than {questions}")
    with QuestionQueue(run_dir / "ledger.sqlite") as ledger:
        ledger.post(0, points[:questions])
    return run_dir


def add_annotators(run_dir: Path, names: list[str]) -> dict[str, str]:
    """``{name: token}``: each name's own token, made by ``apis annotate --add-annotator``."""
    command = [sys.executable, "-m", "apis.cli", "annotate", str(run_dir)]
    for name in names:
        command += ["--add-annotator", name]
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[0]: line.split("?token=")[1] for line in printed.splitlines() if "?token=" in line}


def start_server(run_dir: Path) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "apis.cli", "annotate", str(run_dir), "--port", "0", "--named-only"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if "http://127.0.0.1:" in line:
            return server, int(line.split("http://127.0.0.1:")[1].split("/")[0])
    server.kill()
    raise SystemExit("apis annotate did not print its URL within 120 s")


class Annotator(threading.Thread):
    """One simulated person: next -> answer until nothing is left, every request timed."""

    def __init__(self, name: str, token: str, port: int, think_s: float, max_requests: int, deadline: float,
                 seed: int):
        super().__init__(daemon=True)
        self.name, self.token, self.port = name, token, port
        self.think_s, self.max_requests, self.deadline = think_s, max_requests, deadline
        self.rng = random.Random(seed)
        self.next_ms: list[float] = []
        self.answer_ms: list[float] = []
        self.handed: list[tuple[int, float, float]] = []  # (question, handed at, answered at)
        self.stored: set[int] = set()
        self.errors: list[str] = []

    def request(self, connection, path: str, body: dict | None = None) -> tuple[int, dict, float]:
        # As the page sends it: from the server's own origin, a JSON body on every POST.
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                   "Origin": f"http://127.0.0.1:{self.port}"}
        payload = json.dumps({} if body is None else body)
        start = time.perf_counter()
        connection.request("POST", path, body=payload, headers=headers)
        response = connection.getresponse()
        data = json.loads(response.read())
        return response.status, data, (time.perf_counter() - start) * 1000

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        requests = 0
        try:
            while requests < self.max_requests and time.monotonic() < self.deadline:
                status, data, ms = self.request(connection, "/api/next")
                requests += 1
                self.next_ms.append(ms)
                if status != 200:
                    self.errors.append(f"next: {status} {data}")
                    return
                question = data["question"]
                if question is None:
                    if data["leased_to_others"] == 0:
                        return  # nothing left for anyone
                    time.sleep(0.05)
                    continue
                handed_at = time.monotonic()
                time.sleep(self.think_s)
                status, data, ms = self.request(connection, "/api/answer", {
                    "question": question["id"], "label": self.rng.choice(["yes", "no", "unsure"]),
                    "seconds": self.think_s})
                requests += 1
                self.answer_ms.append(ms)
                self.handed.append((question["id"], handed_at, time.monotonic()))
                if status == 200:
                    self.stored.add(question["id"])
                else:
                    self.errors.append(f"answer {question['id']}: {status} {data}")
        finally:
            connection.close()


def percentiles(values: list[float]) -> dict:
    array = np.asarray(values)
    return {"n": len(values), "p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "max": float(array.max())}


def overlapping_hand_outs(clients: list[Annotator]) -> int:
    """Questions held by two clients at the same time (handed -> answered intervals that overlap)."""
    spans: dict[int, list[tuple[float, float]]] = {}
    for client in clients:
        for question, start, end in client.handed:
            spans.setdefault(question, []).append((start, end))
    overlaps = 0
    for intervals in spans.values():
        intervals.sort()
        overlaps += sum(1 for (_, end), (start, _) in zip(intervals, intervals[1:]) if start < end)
    return overlaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--think-ms", type=float, default=0.0, help="pause between seeing and answering")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole load phase")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_annotate"))
    add_record_option(parser, "annotate")
    args = parser.parse_args()
    recording = provenance()

    from apis.data.questions import QuestionQueue

    run_dir = build_run(args.work, args.questions)
    names = [f"annotator-{i + 1}" for i in range(args.clients)]
    tokens = add_annotators(run_dir, names)
    server, port = start_server(run_dir)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    try:
        deadline = time.monotonic() + args.timeout
        clients = [Annotator(name, tokens[name], port, args.think_ms / 1000, 4 * args.questions, deadline, seed)
                   for seed, name in enumerate(names)]
        start = time.perf_counter()
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=max(1.0, deadline - time.monotonic() + 30))
        wall = time.perf_counter() - start
        load_after = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        server.terminate()
        server.wait(timeout=30)

    with QuestionQueue(run_dir / "ledger.sqlite") as ledger:
        responses = ledger.responses(0)
        total = len(ledger.questions(0))
    per_question: dict[int, int] = {}
    for response in responses:
        per_question[response.question_id] = per_question.get(response.question_id, 0) + 1
    told_stored = {(c.name, q) for c in clients for q in c.stored}
    in_ledger = {(r.annotator, r.question_id) for r in responses}
    result = {
        "questions": total, "clients": args.clients, "think_ms": args.think_ms, "wall_s": wall,
        "answers_stored": len(responses), "lost": total - len(per_question),
        "answered_twice": sum(1 for count in per_question.values() if count > 1),
        "acknowledged_but_missing": len(told_stored - in_ledger),
        "handed_to_two_at_once": overlapping_hand_outs(clients),
        "errors": [e for c in clients for e in c.errors][:20],
        "next_ms": percentiles([ms for c in clients for ms in c.next_ms]),
        "answer_ms": percentiles([ms for c in clients for ms in c.answer_ms]),
        "answers_per_client": {c.name: len(c.stored) for c in clients},
        # Other processes share the CPU: the 1/5/15-minute load averages around the load phase say how much.
        "loadavg_before": load_before, "loadavg_after": load_after, "nproc": os.cpu_count(),
    }
    (args.work / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print()
    print("| clients | questions | answers stored | lost | answered twice | handed to two at once | errors | wall s "
          "| answers/s | next p50 / p95 / max ms | answer p50 / p95 / max ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    n, a = result["next_ms"], result["answer_ms"]
    print(f"| {args.clients} | {total:,} | {len(responses):,} | {result['lost']} | {result['answered_twice']} "
          f"| {result['handed_to_two_at_once']} | {len(result['errors'])} | {wall:.1f} | {len(responses) / wall:.0f} "
          f"| {n['p50']:.1f} / {n['p95']:.1f} / {n['max']:.0f} | {a['p50']:.1f} / {a['p95']:.1f} / {a['max']:.0f} |")
    save(args.record, "annotate", recording, [result], arguments=args)
    if result["lost"] or result["answered_twice"] or result["acknowledged_but_missing"] or result["errors"]:
        raise SystemExit("FAILED: answers were lost, duplicated or refused (see above)")


if __name__ == "__main__":
    main()
