"""The page in a real browser: headless Chromium (Debian's package, driven by Playwright) answers a step with
the keyboard against a real `apis annotate` server, undoes an answer, survives the server being killed and
restarted, finishes the step; then `apis run` trains on the answers.

Needs /usr/bin/chromium (`make test` installs it with apt-get when run as root, as CI does). Without it the
test is skipped, unless APIS_REQUIRE_BROWSER=1 (set by .ci/run), where it fails. APIS_SCREENSHOT=PATH also
saves the screenshot there (docs/annotate.png is made so).
"""

import http.client
import http.server
import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from apis.data.questions import QuestionQueue

TOKEN = "browser-test-secret"
KEYS = {"y": 1, "n": 0, "u": -1}
TIMEOUT_MS = 20_000


class AnnotateServer:
    """`apis annotate RUN_DIR --port 0` in a child process; ``url`` is the address it printed."""

    def __init__(self, run_dir: Path, *options: str, port: int = 0):
        env = {**os.environ, "APIS_ANNOTATE_TOKEN": TOKEN}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "apis.cli", "annotate", str(run_dir), "--port", str(port), *options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.url = self._read_url(deadline=time.monotonic() + 60)

    def _read_url(self, deadline: float) -> str:
        lines: queue.Queue = queue.Queue()  # a reader thread: readline() alone could block past the deadline
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        printed = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            printed.append(line)
            if "http://" in line:
                return line[line.index("http://"):].split("?")[0]
        self.kill()
        pytest.fail("apis annotate printed no URL:\n" + "".join(printed))

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no chance to flush or clean up
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def shown_question(page, previous) -> int:
    """Wait until the page shows a question other than ``previous``, with no request in flight."""
    page.wait_for_function(
        "previous => { const stage = document.querySelector('#stage');"
        " return document.body.dataset.busy === '0' && stage.dataset.ready === '1'"
        " && stage.dataset.questionId !== previous; }", arg=str(previous), timeout=TIMEOUT_MS)
    return int(page.get_attribute("#stage", "data-question-id"))


def ledger_state(run_dir):
    with QuestionQueue(run_dir / "ledger.sqlite") as questions:
        return questions.responses(0), questions.responses(0, include_undone=True), len(questions.questions(0))


def raw_get(url: str, path: str) -> int:
    """Status of a GET sent byte for byte (no client-side normalisation of ``..``)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    status = connection.getresponse().status
    connection.close()
    return status


class OtherLocalSite:
    """Another web site on this machine (another port of 127.0.0.1): serves ``pages`` ``{path: html}``."""

    def __init__(self, pages: dict[str, str]):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = pages[self.path].encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_another_local_page_can_neither_post_to_the_server_nor_frame_it(human_run, chromium):
    from playwright.sync_api import sync_playwright

    _, run_dir = human_run("attacked")
    server = AnnotateServer(run_dir)
    attacker = OtherLocalSite({
        # a form post needs no CORS preflight; text/plain is the closest a form comes to a JSON body
        "/undo.html": f"""<form method="POST" action="{server.url}api/undo" enctype="text/plain">
            <input name='{{"a":"' value='"}}'></form><script>document.forms[0].submit()</script>""",
        "/frame.html": f"""<iframe id="victim" src="{server.url}" width="800" height="600"></iframe>""",
    })
    try:
        with sync_playwright() as playwright:
            browser = chromium(playwright)
            context = browser.new_context()  # one browser profile: the pages share the cookie
            page = context.new_page()
            page.goto(f"{server.url}?token={TOKEN}")
            page.fill("#login-name", "victim")
            page.keyboard.press("Enter")
            answered = shown_question(page, None)
            page.keyboard.press("y")
            shown_question(page, answered)
            before = ledger_state(run_dir)
            assert [r.question_id for r in before[0]] == [answered]

            # the annotator, still logged in, opens another local page in the same browser
            attack = context.new_page()
            attack.goto(f"{attacker.url}/undo.html")
            attack.wait_for_url(f"{server.url}api/undo", timeout=TIMEOUT_MS)
            assert "must come from this server's own page" in attack.inner_text("body")  # it arrived, refused
            assert ledger_state(run_dir) == before

            refused_frames = []
            attack.on("console", lambda message: refused_frames.append(message.text))
            attack.goto(f"{attacker.url}/frame.html")
            attack.wait_for_timeout(1000)
            victim = attack.frame_locator("#victim")
            assert victim.locator("#stage").count() == 0  # the page did not render inside the frame
            assert any("frame" in text and ("X-Frame-Options" in text or "frame-ancestors" in text)
                       for text in refused_frames), refused_frames
            browser.close()
    finally:
        attacker.close()
        server.stop()


def test_the_page_recovers_by_itself_from_a_lost_lease_a_failed_image_and_a_restart(human_run, chromium):
    from playwright.sync_api import sync_playwright

    _, run_dir = human_run("recovering")
    lease_s = 3
    server = AnnotateServer(run_dir, "--lease-seconds", str(lease_s))
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    try:
        with sync_playwright() as playwright:
            browser = chromium(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            policy_errors = []
            page.on("console", lambda message: policy_errors.append(message.text)
                    if "Content Security Policy" in message.text else None)
            page.goto(f"{server.url}?token={TOKEN}")
            page.fill("#login-name", "tester")
            page.keyboard.press("Enter")
            first = shown_question(page, None)

            # zoom: each question starts at 100 %
            page.keyboard.press("+")
            page.keyboard.press("+")
            assert page.inner_text("#zoom-text") == "200 %"
            page.keyboard.press("y")
            second = shown_question(page, first)
            assert page.inner_text("#zoom-text") == "100 %"

            # an image that fails to load: its question is given back and the next one shown
            failed = []
            page.route("**/image", lambda route: failed.append(route.request.url) or route.abort()
                       if not failed else route.continue_())
            page.keyboard.press("n")
            third = shown_question(page, second)
            (skipped,) = failed
            assert f"/api/questions/{third}/image" not in skipped
            skipped_id = int(skipped.split("/questions/")[1].split("/")[0])
            assert f"the image of question {skipped_id} could not be loaded" in page.inner_text("#message")
            with sqlite3.connect(run_dir / "ledger.sqlite") as ledger:  # released, not left to run out
                assert ledger.execute("SELECT question_id FROM leases WHERE annotator = 'tester'").fetchall() == [
                    (third,)]
            with QuestionQueue(run_dir / "ledger.sqlite") as questions:  # someone else gets it now
                assert questions.lease_next("bob", 60).id == skipped_id
            page.unroute("**/image")

            # a lost lease: tester's runs out and bob takes the question; tester's answer is refused (409) and the
            # page moves on by itself
            page.wait_for_timeout(lease_s * 1000 + 500)
            with QuestionQueue(run_dir / "ledger.sqlite") as questions:
                questions.answer("bob", skipped_id, "yes", 1.0)
                assert questions.lease_next("carol", 60).id == third
            page.keyboard.press("y")
            fourth = shown_question(page, third)
            assert "leased to someone else" in page.inner_text("#message")
            page.keyboard.press("u")  # and it works on as before
            fifth = shown_question(page, fourth)

            # the server goes away: the answer given meanwhile is kept, sent once it is back, and the page goes on
            server.kill()
            page.keyboard.press("n")
            # A function, not an expression: Playwright polls an expression with eval, which the page's CSP refuses.
            page.wait_for_function("() => document.querySelector('#message').textContent.includes('cannot be reached')",
                                   timeout=TIMEOUT_MS)
            assert f"your answer to question {fifth} will be sent" in page.inner_text("#message")
            server = AnnotateServer(run_dir, "--lease-seconds", str(lease_s), port=port)
            sixth = shown_question(page, fifth)
            assert policy_errors == []
            browser.close()
    finally:
        server.stop()
    given = {r.question_id: (r.annotator, r.label) for r in ledger_state(run_dir)[0]}
    assert given == {first: ("tester", 1), second: ("tester", 0), skipped_id: ("bob", 1), fourth: ("tester", -1),
                     fifth: ("tester", 0)}
    assert sixth not in given


def test_answer_a_step_in_chromium_with_a_server_restart(human_run, tmp_path, chromium, capsys):
    from playwright.sync_api import sync_playwright

    config_path, run_dir = human_run("browser")
    expected: dict[int, int] = {}
    server = AnnotateServer(run_dir)
    try:
        with sync_playwright() as playwright:
            browser = chromium(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(f"{server.url}?token={TOKEN}")
            page.fill("#login-name", "tester")
            page.keyboard.press("Enter")
            current = shown_question(page, None)
            keys = "ynuyn"
            for key in keys:  # answer five questions with the keyboard, at a (fast) person's pace
                expected[current] = KEYS[key]
                answered = current
                page.wait_for_timeout(400)
                page.keyboard.press(key)
                current = shown_question(page, answered)
            page.keyboard.press("z")  # undo: the last answered question comes back
            assert shown_question(page, current) == answered
            del expected[answered]
            assert "taken back" in page.inner_text("#message")
            responses, every, total = ledger_state(run_dir)
            assert {r.question_id: r.label for r in responses} == expected
            assert len(every) == len(keys) and sum(r.undone_at is not None for r in every) == 1
            expected[answered] = KEYS["y"]
            page.keyboard.press("y")
            shown_question(page, answered)

            server.kill()  # nothing answered may be lost
            assert {r.question_id: r.label for r in ledger_state(run_dir)[0]} == expected
            server = AnnotateServer(run_dir)  # same secret: the browser's cookie is valid again
            assert raw_get(server.url, "/static/../../pyproject.toml") == 404
            assert raw_get(server.url, "/static/..%2F..%2Fpyproject.toml") == 404
            page.goto(server.url)
            current = shown_question(page, None)
            assert current not in expected
            screenshot = tmp_path / "annotate.png"
            page.screenshot(path=str(screenshot))
            assert screenshot.stat().st_size > 10_000
            if os.environ.get("APIS_SCREENSHOT"):
                shutil.copy(screenshot, os.environ["APIS_SCREENSHOT"])

            for _ in range(total):  # answer the rest, then the page says the step is done
                key = "ynu"[len(expected) % 3]
                expected[current] = KEYS[key]
                page.keyboard.press(key)
                page.wait_for_function(
                    "previous => document.body.dataset.busy === '0' && (!document.querySelector('#empty').hidden"
                    " || document.querySelector('#stage').dataset.questionId !== previous"
                    " && document.querySelector('#stage').dataset.ready === '1')", arg=str(current), timeout=TIMEOUT_MS)
                if page.is_visible("#empty"):
                    break
                current = int(page.get_attribute("#stage", "data-question-id"))
            assert "have their answers" in page.inner_text("#empty")
            assert page.inner_text("#progress-text") == f"step 0: {total} / {total} answered (you: {total})"
            browser.close()
    finally:
        server.stop()

    responses, every, total = ledger_state(run_dir)
    assert len(responses) == total and {r.question_id: r.label for r in responses} == expected
    assert {r.annotator for r in every} == {"tester"} and all(0 < r.seconds < 60 for r in every)

    from apis.cli import main

    capsys.readouterr()
    main(["run", str(config_path)])  # here: a new interpreter would import torch again
    assert "P0: mask AP" in capsys.readouterr().out
    with QuestionQueue(run_dir / "ledger.sqlite") as ledger:
        merged = {(a.ann_id, a.x, a.y): a.label for a in ledger.answers()}
        questions = {q.id: (q.ann_id, q.x, q.y) for q in ledger.questions(0)}
    assert merged == {questions[question_id]: label for question_id, label in expected.items()}
    metrics = json.loads((run_dir / "step_000" / "metrics.json").read_text())
    boxes_s = total * 7.0
    assert metrics["annotation_seconds"] == pytest.approx(sum(r.seconds for r in every) + boxes_s)
