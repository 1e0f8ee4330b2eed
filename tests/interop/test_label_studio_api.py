"""`apis label-studio push / pull` against a real Label Studio server (tests/interop/conftest.py): the questions
go in as tasks, two people answer through Label Studio's REST API (yes, no, unsure and a skip), the answers come
back with the annotators' e-mails, and `apis run` goes on to the next step, whose questions go to the same
project. Another test renders a task in Label Studio's own page in Chromium and looks at the point."""

import copy
import json
import os

import httpx
import pytest
from label_studio_sdk import LabelStudio

from apis.cli import main
from apis.data.questions import QuestionQueue
from apis.interop.label_studio import POINT_SIZE_PERCENT
from apis.interop.label_studio_api import default_title, watch
from apis.loop.human import open_human_run

BOB_EMAIL, BOB_PASSWORD = "bob@example.org", "bob-test-password"
LABELS = ("yes", "no", "unsure")


def sign_up(url: str, email: str, password: str) -> str:
    """Sign up on Label Studio's form as a new annotator does, then read their API token."""
    with httpx.Client(base_url=url, follow_redirects=True, timeout=30) as browser:
        browser.get("/user/signup/")
        response = browser.post("/user/signup/", data={"email": email, "password": password,
                                                       "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
                                headers={"Referer": f"{url}/user/signup/"})
        response.raise_for_status()
        token = browser.get("/api/current-user/token")
        token.raise_for_status()
        return token.json()["token"]


def answer(ls: LabelStudio, task: dict, label: str | None, lead_time: float):
    """One annotation as Label Studio's page submits it: the pre-labelled box and point, and the choice (or a
    skip: ``label`` None)."""
    regions = copy.deepcopy(task["predictions"][0]["result"])
    if label is None:
        return ls.annotations.create(task["id"], result=[], was_cancelled=True, lead_time=lead_time)
    choice = {"from_name": "answer", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    return ls.annotations.create(task["id"], result=[*regions, choice], lead_time=lead_time)


def project_tasks(ls: LabelStudio, project_id: int) -> list[dict]:
    return sorted((task.dict() for task in ls.tasks.list(project=project_id, fields="all")), key=lambda t: t["id"])


def run_cli(*argv) -> int:
    try:
        main([*map(str, argv)])
    except SystemExit as exit_:
        return exit_.code
    return 0


def test_push_answer_pull_and_run_on_to_the_next_step(label_studio, human_run, capsys):
    config, run_dir = human_run(loop={"steps": 1})
    server = ["--url", label_studio.url, "--token", label_studio.token]
    run = open_human_run(run_dir)
    with QuestionQueue(run.ledger_path) as queue:
        questions = queue.questions(0)
        title = default_title(queue, run)

    assert run_cli("label-studio", "push", run_dir, *server) == 0
    assert f"{len(questions)} questions of step 0 added as tasks, 0 already there" in capsys.readouterr().out
    assert run_cli("label-studio", "push", run_dir, *server) == 0  # pushing again adds nothing
    assert f"0 questions of step 0 added as tasks, {len(questions)} already there" in capsys.readouterr().out

    admin = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    (project,) = [p for p in admin.projects.list() if p.title == title]
    tasks = project_tasks(admin, project.id)
    assert sorted(t["data"]["apis_question"] for t in tasks) == [q.id for q in questions]
    (storage,) = admin.import_storage.local.list(project=project.id)
    assert storage.path == str(run.train_set.image_root.resolve()) and storage.synchronizable is False
    image = httpx.get(f"{label_studio.url}{tasks[0]['data']['image']}", headers={"Authorization":
                                                                                  f"Token {label_studio.token}"})
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"  # Label Studio serves the image

    bob = LabelStudio(base_url=label_studio.url, api_key=sign_up(label_studio.url, BOB_EMAIL, BOB_PASSWORD))
    # The admin answers all but the last two questions (yes, no, unsure in turn) and skips the second last; Bob
    # answers those two, the last only once `apis label-studio pull --watch` is waiting.
    given = {}
    for index, task in enumerate(tasks[:-2]):
        given[task["data"]["apis_question"]] = (label_studio.email, LABELS[index % 3], 1.5 + index)
        answer(admin, task, LABELS[index % 3], 1.5 + index)
    answer(admin, tasks[-2], None, 0.5)
    answer(bob, tasks[-2], "no", 4.0)
    given[tasks[-2]["data"]["apis_question"]] = (BOB_EMAIL, "no", 4.0)

    assert run_cli("label-studio", "pull", run_dir, *server) == 0
    out = capsys.readouterr().out
    assert f"{len(tasks)} tasks read: {len(tasks) - 1} answers stored, 0 already in the ledger, 1 tasks without" in out

    def last_answer(seconds):  # the watch's first wait: Bob answers the last question meanwhile
        answer(bob, tasks[-1], "yes", 2.0)

    given[tasks[-1]["data"]["apis_question"]] = (BOB_EMAIL, "yes", 2.0)
    with QuestionQueue(run.ledger_path) as queue:
        assert watch(run, queue, label_studio.url, label_studio.token, interval_s=1, report=print,
                     sleep=last_answer) == 0
        responses = queue.responses(0)
    assert {r.question_id: (r.annotator, {1: "yes", 0: "no", -1: "unsure"}[r.label], r.seconds)
            for r in responses} == given
    assert {r.source for r in responses} == {"label-studio"}
    assert run_cli("label-studio", "pull", run_dir, *server, "--watch", "--interval", "1") == 0
    assert "step 0: every question has its answers" in capsys.readouterr().out

    assert run_cli("run", config) == 3  # trains on the answers, selects step 1's questions and waits again
    with QuestionQueue(run.ledger_path) as queue:
        assert queue.is_merged(0) and len(queue.answers()) == len(questions)
        step1 = queue.questions(1)
    assert step1
    capsys.readouterr()
    assert run_cli("label-studio", "push", run_dir, *server) == 0
    assert f"{len(step1)} questions of step 1 added as tasks, {len(questions)} already there" in \
        capsys.readouterr().out
    # The project now holds step 0's answered tasks too: pulling reads them again and changes nothing.
    assert run_cli("label-studio", "pull", run_dir, *server) == 0
    assert f"0 answers stored, {len(questions)} already in the ledger" in capsys.readouterr().out


def test_push_and_pull_name_a_server_that_refuses_or_is_not_there(label_studio, human_run, capsys):
    _, run_dir = human_run()
    assert run_cli("label-studio", "push", run_dir, "--url", label_studio.url, "--token", "wrong-token") == 2
    assert "Label Studio answered 401" in capsys.readouterr().err
    assert run_cli("label-studio", "pull", run_dir, "--url", "http://127.0.0.1:9", "--token", "t") == 2
    assert "http://127.0.0.1:9: reading project" in capsys.readouterr().err
    assert run_cli("label-studio", "pull", run_dir, "--url", label_studio.url, "--token", label_studio.token) == 2
    assert "no project titled" in capsys.readouterr().err


def test_push_asks_label_studio_for_as_many_answers_per_task_as_the_run_wants(label_studio, human_run, capsys):
    _, run_dir = human_run("redundant")
    assert run_cli("label-studio", "push", run_dir, "--url", label_studio.url, "--token", label_studio.token,
                   "--answers-per-question", "2") == 0
    assert "; 2 answers per question" in capsys.readouterr().out
    run = open_human_run(run_dir)
    with QuestionQueue(run.ledger_path) as queue:
        assert {q.answers_wanted for q in queue.questions(0)} == {2}
        title = default_title(queue, run)
    admin = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    (project,) = [p for p in admin.projects.list() if p.title == title]
    assert admin.projects.get(project.id).maximum_annotations == 2


@pytest.fixture
def pushed(label_studio, human_run, capsys):
    """A run whose step-0 questions are in a Label Studio project: (run, project id, its tasks)."""
    _, run_dir = human_run("shown")
    assert run_cli("label-studio", "push", run_dir, "--url", label_studio.url, "--token", label_studio.token) == 0
    capsys.readouterr()
    run = open_human_run(run_dir)
    admin = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    with QuestionQueue(run.ledger_path) as queue:
        title = default_title(queue, run)
    (project,) = [p for p in admin.projects.list() if p.title == title]
    return run, project.id, project_tasks(admin, project.id)


def test_label_studio_shows_the_point_large_white_and_ringed_beside_the_choices(label_studio, pushed, chromium,
                                                                                 tmp_path):
    """Label Studio's own labelling page, in Chromium at 1400x900: the question's pixel is under a light disc with
    a dark ring wide enough to see, and the choices are to the right of the image."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    run, project_id, tasks = pushed
    task = tasks[0]
    record = run.train_set.image(task["data"]["apis_image_id"])
    with sync_playwright() as playwright:
        browser = chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{label_studio.url}/user/login/")
        page.fill("input[name=email]", label_studio.email)
        page.fill("input[name=password]", label_studio.password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda address: "/user/login" not in address, timeout=60_000)
        page.goto(f"{label_studio.url}/projects/{project_id}/data?task={task['id']}")
        page.wait_for_selector(".konvajs-content canvas", timeout=60_000)
        page.wait_for_function("width => [...document.images].some(i => i.complete && i.naturalWidth === width)",
                               arg=record.width, timeout=60_000)
        page.wait_for_timeout(1000)  # the regions are drawn on the canvas once the image has loaded
        # The image as Label Studio lays it out (its canvas shows it, clipped to the stage): the largest <img>.
        boxes = [page.locator("img").nth(i).bounding_box() for i in range(page.locator("img").count())]
        image = max((b for b in boxes if b), key=lambda b: b["width"] * b["height"])
        choices = page.get_by_text("unsure").first.bounding_box()
        shot = tmp_path / "label_studio.png"
        page.screenshot(path=str(shot))
        if os.environ.get("APIS_LS_SCREENSHOT"):  # docs/label_studio.png is made so
            page.screenshot(path=os.environ["APIS_LS_SCREENSHOT"])
        browser.close()
    assert choices["x"] > image["x"] + image["width"]  # the choices beside the image, not below it
    scale = image["width"] / record.width
    cx = image["x"] + (task["data"]["apis_x"] + 0.5) * scale
    cy = image["y"] + (task["data"]["apis_y"] + 0.5) * scale
    radius = POINT_SIZE_PERCENT / 100 * image["width"]
    assert radius >= 8  # screen pixels: found at a glance (it was 3 before)
    pixels = Image.open(shot).convert("L")
    centre = [pixels.getpixel((round(cx + dx), round(cy + dy))) for dx in (-2, 0, 2) for dy in (-2, 0, 2)]
    directions = ((1, 0), (-1, 0), (0, 1), (0, -1))

    def at(distance, c, s):
        return pixels.getpixel((round(cx + distance * c), round(cy + distance * s)))

    ring = [min(at(radius + dr, c, s) for dr in (-2, -1, 0, 1)) for c, s in directions]  # the darkest near the rim
    outside = [at(radius + 6, c, s) for c, s in directions]
    assert min(centre) > 180, (centre, json.dumps(task["data"]))  # a light disc over the question's pixel
    assert max(ring) < 80, ring  # inside a dark ring
    assert outside != ring  # the image, not more ring, beyond it


def test_a_missing_token_and_an_unbounded_watch_interval_are_refused_before_any_request(human_run, monkeypatch,
                                                                                         capsys):
    _, run_dir = human_run()
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    assert run_cli("label-studio", "push", run_dir, "--url", "http://127.0.0.1:9") == 2
    assert "no Label Studio token: pass --token TOKEN or set LABEL_STUDIO_API_KEY" in capsys.readouterr().err
    for interval in ("0", "3601"):
        assert run_cli("label-studio", "pull", run_dir, "--url", "http://127.0.0.1:9", "--token", "t", "--watch",
                       "--interval", interval) == 2
        assert f"--interval {float(interval)} is not in [1, 3600] seconds" in capsys.readouterr().err
