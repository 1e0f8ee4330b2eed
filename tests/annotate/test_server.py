"""The annotation server's API in-process (Starlette's TestClient): the page's requests and what they store."""

import io

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from apis.active.human import open_human_run
from apis.active.questions import QuestionQueue
from apis.annotate.server import Access, AnnotationApp

SECRET = "s3cret-token"
LEASE_S = 60.0


@pytest.fixture
def served(human_run, clock):
    """``(annotators=(), **app_options) -> (client, app, run)``: the app of a run waiting at step 0."""
    clients = []

    def make(annotators=(), **options):
        _, run_dir = human_run()
        run = open_human_run(run_dir)
        app = AnnotationApp(run.ledger_path, run.train_set, Access.create(SECRET, annotators),
                            lease_s=LEASE_S, clock=clock, **options)
        client = TestClient(app.app(), base_url="http://127.0.0.1", raise_server_exceptions=False)
        clients.append(client.__enter__())
        return client, app, run

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def named(app, name):
    """Headers carrying ``name``'s own token."""
    return bearer(next(token for token, owner in app.access.tokens.items() if owner == name))


def stored_responses(run, include_undone=False):
    with QuestionQueue(run.ledger_path) as queue:  # a separate connection: what is on disk
        return queue.responses(include_undone=include_undone)


ENDPOINTS = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/static/style.css"), ("GET", "/api/me"),
             ("POST", "/api/login"), ("POST", "/api/next"), ("POST", "/api/answer"), ("POST", "/api/undo"),
             ("GET", "/api/questions/1/image")]


def test_every_request_needs_the_token(served):
    client, app, _ = served()
    for method, path in ENDPOINTS:
        for headers in ({}, bearer("wrong"), bearer(SECRET[:-1])):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path)
            assert "token" in response.json()["error"]
    assert client.get("/", params={"token": "wrong"}).status_code == 401


def test_the_url_token_becomes_a_strict_cookie_and_serves_the_page(served):
    client, app, _ = served()
    response = client.get("/", params={"token": SECRET}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "./"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and app.token_cookie in cookie
    page = client.get("/")  # the client keeps the cookie
    assert page.status_code == 200 and "<title>APIS" in page.text and 'src="static/app.js"' in page.text
    assert "function answer" in client.get("/static/app.js").text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_the_shared_token_asks_for_a_name(served):
    client, _, run = served()
    client.cookies.set(*served_cookie(client, run))
    assert client.get("/api/me").json()["annotator"] is None
    refused = client.post("/api/next")
    assert refused.status_code == 401 and "log in" in refused.json()["error"]
    assert client.post("/api/login", json={"name": "a,b"}).status_code == 400
    assert client.post("/api/login", json={"name": "Ada Lovelace"}).json() == {"annotator": "Ada Lovelace"}
    assert client.get("/api/me").json()["annotator"] == "Ada Lovelace"
    question = client.post("/api/next").json()["question"]
    client.post("/api/answer", json={"question": question["id"], "label": "no", "seconds": 2.5})
    assert [(r.annotator, r.label, r.seconds) for r in stored_responses(run)] == [("Ada Lovelace", 0, 2.5)]


def served_cookie(client, run):
    """Log the client in with the shared token (the page's first request) and return the token cookie."""
    response = client.get("/", params={"token": SECRET}, follow_redirects=False)
    name = next(key for key in response.cookies if key.startswith("apis_token_"))
    return name, response.cookies[name]


def test_next_answer_undo_each_reach_the_ledger_at_once(served):
    client, app, run = served(annotators=["alice"])
    alice = named(app, "alice")
    assert client.post("/api/login", json={"name": "eve"}, headers=alice).status_code == 409
    first = client.post("/api/next", headers=alice).json()
    question = first["question"]
    total = first["progress"]["total"]
    assert first["progress"] == {"step": 0, "total": total, "answered": 0, "mine": 0, "merged": False}
    assert question["step"] == 0 and question["category"] in {"blob", "ring", "crescent", "cross"}
    x0, y0, x1, y1 = question["box"]
    cx, cy, width, height = question["crop"]
    px, py = question["point"]
    assert cx <= x0 and cy <= y0 and x1 <= cx + width and y1 <= cy + height and x0 <= px + 0.5 <= x1
    assert client.post("/api/next", headers=alice).json()["question"] == question  # a reload: same question

    done = client.post("/api/answer", headers=alice, json={"question": question["id"], "label": "yes", "seconds": 1.75})
    assert done.status_code == 200
    assert done.json()["progress"]["answered"] == 1 and done.json()["pace"] == {"answers": 1, "median_seconds": 1.75}
    assert [(r.question_id, r.annotator, r.label, r.seconds, r.source) for r in stored_responses(run)] == [
        (question["id"], "alice", 1, 1.75, "web")]
    again = client.post("/api/answer", headers=alice, json={"question": question["id"], "label": "no", "seconds": 1})
    assert again.status_code == 409 and "already answered" in again.json()["error"]

    second = client.post("/api/next", headers=alice).json()["question"]
    assert second["id"] != question["id"]
    undone = client.post("/api/undo", headers=alice).json()
    assert undone["question"]["id"] == question["id"] and undone["progress"]["answered"] == 0
    assert stored_responses(run) == [] and len(stored_responses(run, include_undone=True)) == 1
    client.post("/api/answer", headers=alice, json={"question": question["id"], "label": "unsure", "seconds": 3.0})
    assert client.post("/api/next", headers=alice).json()["question"]["id"] == second["id"]
    assert [r.label for r in stored_responses(run)] == [-1]


def test_two_annotators_get_different_questions_until_a_lease_expires(served, clock):
    client, app, run = served(annotators=["alice", "bob", "carol"])
    alice = client.post("/api/next", headers=named(app, "alice")).json()["question"]
    bob = client.post("/api/next", headers=named(app, "bob")).json()["question"]
    assert alice["id"] != bob["id"]
    clock.now += LEASE_S + 1
    carol = client.post("/api/next", headers=named(app, "carol")).json()["question"]
    assert carol["id"] == alice["id"]  # alice's lease ran out (bob's too, but alice's question comes first)
    late = client.post("/api/answer", headers=named(app, "alice"), json={"question": alice["id"], "label": "yes",
                                                                          "seconds": 70.0})
    assert late.status_code == 409 and "lease" in late.json()["error"]
    assert client.post("/api/answer", headers=named(app, "carol"),
                       json={"question": carol["id"], "label": "no", "seconds": 1.0}).status_code == 200
    assert [(r.annotator, r.label) for r in stored_responses(run)] == [("carol", 0)]


def test_redundancy_hands_a_question_to_two_people(served):
    client, app, run = served(annotators=["alice", "bob", "carol"], answers_per_question=2)
    alice = client.post("/api/next", headers=named(app, "alice")).json()["question"]
    bob = client.post("/api/next", headers=named(app, "bob")).json()["question"]
    carol = client.post("/api/next", headers=named(app, "carol")).json()["question"]
    assert alice["id"] == bob["id"] != carol["id"] and alice["answers_wanted"] == 2
    one = client.post("/api/answer", headers=named(app, "alice"), json={"question": alice["id"], "label": "yes",
                                                                         "seconds": 1.0}).json()
    assert one["progress"]["answered"] == 0  # it wants a second answer
    two = client.post("/api/answer", headers=named(app, "bob"), json={"question": bob["id"], "label": "yes",
                                                                       "seconds": 1.0}).json()
    assert two["progress"]["answered"] == 1


def test_the_image_is_the_crop_of_the_dataset_image(served):
    client, app, run = served(annotators=["alice"])
    question = client.post("/api/next", headers=named(app, "alice")).json()["question"]
    response = client.get(f"/{question['image_url']}", headers=named(app, "alice"))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    crop = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    cx, cy, width, height = question["crop"]
    expected = run.train_set.load_image(question["image_id"])[cy:cy + height, cx:cx + width]
    np.testing.assert_array_equal(crop, expected)


@pytest.mark.parametrize("path", [
    "/static/../pyproject.toml", "/static/..%2F..%2Fpyproject.toml", "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%5c..%5cpyproject.toml", "/static/index.html", "/api/questions/..%2F..%2Fconfig.yaml/image",
    "/api/questions/-1/image", "/api/questions/1/../../../ledger.sqlite", "/images/synth_00001.png",
    "/config.yaml", "/ledger.sqlite",
])
def test_nothing_but_the_page_and_question_images_is_served(served, path):
    client, app, _ = served(annotators=["alice"])
    response = client.get(path, headers=named(app, "alice"))
    assert response.status_code == 404, path
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"label": "yes", "seconds": 1}, 400, "needs 'question'"),
    ({"question": 1, "seconds": 1}, 400, "needs 'label'"),
    ({"question": 1, "label": "yes"}, 400, "needs 'seconds'"),
    ({"question": 1, "label": "maybe", "seconds": 1}, 400, "label 'maybe' is not one of"),
    ({"question": 1, "label": "yes", "seconds": "fast"}, 400, "seconds 'fast'"),
    ({"question": 1, "label": "yes", "seconds": -2}, 400, "seconds -2"),
    ({"question": "1", "label": "yes", "seconds": 1}, 400, "not an integer"),
    ({"question": 99999, "label": "yes", "seconds": 1}, 404, "no question 99999"),
    ([1, 2], 400, "must be a JSON object"),
])
def test_bad_answers_get_a_4xx_naming_the_problem(served, body, status, message):
    client, app, run = served(annotators=["alice"])
    client.post("/api/next", headers=named(app, "alice"))
    response = client.post("/api/answer", headers=named(app, "alice"), json=body)
    assert response.status_code == status and message in response.json()["error"]
    assert stored_responses(run) == []


def test_malformed_requests_get_a_4xx(served):
    client, app, _ = served(annotators=["alice"])
    alice = named(app, "alice")
    not_json = client.post("/api/answer", headers={**alice, "Content-Type": "application/json"}, content=b"{yes")
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    form = client.post("/api/answer", headers=alice, data={"question": "1"})
    assert form.status_code == 415
    assert client.get("/api/next", headers=alice).status_code == 405
    nothing = client.post("/api/undo", headers=alice)
    assert nothing.status_code == 409 and "no answer left to undo" in nothing.json()["error"]
    assert client.get("/api/questions/99999/image", headers=alice).status_code == 404


def test_an_unexpected_failure_is_a_500_without_details(served, monkeypatch):
    client, app, _ = served(annotators=["alice"])

    def broken(*args):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.queue, "lease_next", broken)
    response = client.post("/api/next", headers=named(app, "alice"))
    assert response.status_code == 500
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert "server's log" in response.json()["error"]


def test_named_tokens_are_stable_for_a_secret_and_differ_per_person():
    first, again = Access.create(SECRET, ["alice", "bob"]), Access.create(SECRET, ["alice", "bob"])
    assert first == again and sorted(first.tokens.values()) == ["alice", "bob"]
    assert len(set(first.tokens)) == 2 and SECRET not in first.tokens
    assert Access.create(None).tokens != Access.create(None).tokens  # random without a secret
    assert first.lookup("nope") == (False, None)
