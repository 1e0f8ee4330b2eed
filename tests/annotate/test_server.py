"""The annotation server's API in-process (Starlette's TestClient): the page's requests and what they store."""

import hashlib
import hmac
import io
import json
import os
import socket
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from apis.annotate.server import MAX_BODY_BYTES, Access, AnnotationApp, TokenThrottle
from apis.cli import main
from apis.data.questions import QuestionQueue
from apis.loop.human import open_human_run

SECRET = "s3cret-token"
LEASE_S = 60.0


ORIGIN = "http://127.0.0.1:8765"  # the app's own origin: the test client's requests come from its page


@pytest.fixture
def served(human_run, clock):
    """``(annotators=(), **app_options) -> (client, app, run)``: the app of a run waiting at step 0; with
    ``annotators``, each has a token of their own (``app.named_tokens``) and there is no shared token."""
    clients = []

    def make(annotators=(), **options):
        _, run_dir = human_run()
        run = open_human_run(run_dir)
        with QuestionQueue(run.ledger_path) as queue:
            tokens = queue.add_annotator_tokens(annotators)
        app = AnnotationApp(run.ledger_path, run.train_set, Access.create(SECRET, named_only=bool(annotators)),
                            lease_s=LEASE_S, clock=clock, **options)
        app.named_tokens = tokens
        client = TestClient(app.app(), base_url=ORIGIN, headers={"Origin": ORIGIN}, raise_server_exceptions=False)
        clients.append(client.__enter__())
        return client, app, run

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def named(app, name):
    """Headers carrying ``name``'s own token."""
    return bearer(app.named_tokens[name])


def stored_responses(run, include_undone=False):
    with QuestionQueue(run.ledger_path) as queue:  # a separate connection: what is on disk
        return queue.responses(include_undone=include_undone)


ENDPOINTS = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/static/style.css"), ("GET", "/api/me"),
             ("POST", "/api/login"), ("POST", "/api/next"), ("POST", "/api/answer"), ("POST", "/api/undo"),
             ("GET", "/api/questions/1/image")]


def test_every_request_needs_the_token(served, clock):
    client, app, _ = served()
    for method, path in ENDPOINTS:
        for headers in ({}, bearer("wrong"), bearer(SECRET[:-1])):
            clock.now += 3600  # wrong tokens further apart than the throttle counts
            response = client.request(method, path, headers=headers, json={} if method == "POST" else None)
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
    refused = client.post("/api/next", json={})
    assert refused.status_code == 401 and "log in" in refused.json()["error"]
    assert client.post("/api/login", json={"name": "a,b"}).status_code == 400
    assert client.post("/api/login", json={"name": "Ada Lovelace"}).json() == {"annotator": "Ada Lovelace"}
    assert client.get("/api/me").json()["annotator"] == "Ada Lovelace"
    question = client.post("/api/next", json={}).json()["question"]
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
    first = client.post("/api/next", headers=alice, json={}).json()
    question = first["question"]
    total = first["progress"]["total"]
    assert first["progress"] == {"step": 0, "total": total, "answered": 0, "mine": 0, "merged": False}
    assert question["step"] == 0 and question["category"] in {"blob", "ring", "crescent", "cross"}
    x0, y0, x1, y1 = question["box"]
    cx, cy, width, height = question["crop"]
    px, py = question["point"]
    assert cx <= x0 and cy <= y0 and x1 <= cx + width and y1 <= cy + height and x0 <= px + 0.5 <= x1
    assert client.post("/api/next", headers=alice, json={}).json()["question"] == question  # a reload: same question

    done = client.post("/api/answer", headers=alice, json={"question": question["id"], "label": "yes", "seconds": 1.75})
    assert done.status_code == 200
    assert done.json()["progress"]["answered"] == 1 and done.json()["pace"] == {"answers": 1, "median_seconds": 1.75}
    assert [(r.question_id, r.annotator, r.label, r.seconds, r.source) for r in stored_responses(run)] == [
        (question["id"], "alice", 1, 1.75, "web")]
    again = client.post("/api/answer", headers=alice, json={"question": question["id"], "label": "no", "seconds": 1})
    assert again.status_code == 409 and "already answered" in again.json()["error"]

    second = client.post("/api/next", headers=alice, json={}).json()["question"]
    assert second["id"] != question["id"]
    undone = client.post("/api/undo", headers=alice, json={}).json()
    assert undone["question"]["id"] == question["id"] and undone["progress"]["answered"] == 0
    assert stored_responses(run) == [] and len(stored_responses(run, include_undone=True)) == 1
    client.post("/api/answer", headers=alice, json={"question": question["id"], "label": "unsure", "seconds": 3.0})
    assert client.post("/api/next", headers=alice, json={}).json()["question"]["id"] == second["id"]
    assert [r.label for r in stored_responses(run)] == [-1]


def test_two_annotators_get_different_questions_until_a_lease_expires(served, clock):
    client, app, run = served(annotators=["alice", "bob", "carol"])
    alice = client.post("/api/next", headers=named(app, "alice"), json={}).json()["question"]
    bob = client.post("/api/next", headers=named(app, "bob"), json={}).json()["question"]
    assert alice["id"] != bob["id"]
    clock.now += LEASE_S + 1
    carol = client.post("/api/next", headers=named(app, "carol"), json={}).json()["question"]
    assert carol["id"] == alice["id"]  # alice's lease ran out (bob's too, but alice's question comes first)
    late = client.post("/api/answer", headers=named(app, "alice"), json={"question": alice["id"], "label": "yes",
                                                                          "seconds": 70.0})
    assert late.status_code == 409 and "lease" in late.json()["error"]
    assert client.post("/api/answer", headers=named(app, "carol"),
                       json={"question": carol["id"], "label": "no", "seconds": 1.0}).status_code == 200
    assert [(r.annotator, r.label) for r in stored_responses(run)] == [("carol", 0)]


def test_redundancy_hands_a_question_to_two_people(served):
    client, app, run = served(annotators=["alice", "bob", "carol"], answers_per_question=2)
    alice = client.post("/api/next", headers=named(app, "alice"), json={}).json()["question"]
    bob = client.post("/api/next", headers=named(app, "bob"), json={}).json()["question"]
    carol = client.post("/api/next", headers=named(app, "carol"), json={}).json()["question"]
    assert alice["id"] == bob["id"] != carol["id"] and alice["answers_wanted"] == 2
    one = client.post("/api/answer", headers=named(app, "alice"), json={"question": alice["id"], "label": "yes",
                                                                         "seconds": 1.0}).json()
    assert one["progress"]["answered"] == 0  # it wants a second answer
    two = client.post("/api/answer", headers=named(app, "bob"), json={"question": bob["id"], "label": "yes",
                                                                       "seconds": 1.0}).json()
    assert two["progress"]["answered"] == 1


def test_the_image_is_the_crop_of_the_dataset_image(served):
    client, app, run = served(annotators=["alice"])
    question = client.post("/api/next", headers=named(app, "alice"), json={}).json()["question"]
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
    client.post("/api/next", headers=named(app, "alice"), json={})
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
    nothing = client.post("/api/undo", headers=alice, json={})
    assert nothing.status_code == 409 and "no answer left to undo" in nothing.json()["error"]
    assert client.get("/api/questions/99999/image", headers=alice).status_code == 404


def test_an_unexpected_failure_is_a_500_without_details(served, monkeypatch):
    client, app, _ = served(annotators=["alice"])

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.queue, "lease_next", broken)
    response = client.post("/api/next", headers=named(app, "alice"), json={})
    assert response.status_code == 500
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert "server's log" in response.json()["error"]



def test_an_answer_the_full_disk_cannot_store_is_a_507_that_says_so_and_keeps_the_earlier_ones(
        served, sqlite_disk_full, caplog):
    client, app, run = served(annotators=["alice"])
    alice = named(app, "alice")
    first = client.post("/api/next", headers=alice, json={}).json()["question"]
    client.post("/api/answer", headers=alice, json={"question": first["id"], "label": "yes", "seconds": 1.0})
    second = client.post("/api/next", headers=alice, json={}).json()["question"]
    before = ledger_rows(run)
    sqlite_disk_full.full = True  # simulated: SQLite's "database or disk is full" on every change
    refused = client.post("/api/answer", headers=alice, json={"question": second["id"], "label": "no", "seconds": 2.0})
    assert refused.status_code == 507
    assert refused.json()["error"].startswith("the server's disk is full: this was not stored")
    assert f"{run.ledger_path}: could not be written (database or disk is full)" in caplog.text
    assert ledger_rows(run) == before
    sqlite_disk_full.full = False
    again = client.post("/api/answer", headers=alice, json={"question": second["id"], "label": "no", "seconds": 2.0})
    assert again.status_code == 200
    assert [(r.question_id, r.label) for r in stored_responses(run)] == [(first["id"], 1), (second["id"], 0)]


def ledger_rows(run):
    """Everything the server may change, read with a separate connection."""
    with sqlite3.connect(run.ledger_path) as conn:
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall())
                for table in ("responses", "leases", "questions", "annotator_tokens", "ledger_info")}


def post(client, path, headers, content):
    """POST ``content`` with exactly ``headers`` (a None value drops that header, the client's Origin included)."""
    request = client.build_request("POST", path, content=content,
                                   headers={k: v for k, v in headers.items() if v is not None})
    for key in [key for key, value in headers.items() if value is None]:
        request.headers.pop(key, None)
    return client.send(request)


def test_a_change_needs_json_from_the_servers_own_origin(served):
    client, app, run = served(annotators=["alice"])
    alice = named(app, "alice")
    question = client.post("/api/next", headers=alice, json={}).json()["question"]
    client.post("/api/answer", headers=alice, json={"question": question["id"], "label": "yes", "seconds": 1.0})
    before = ledger_rows(run)
    other_port = "http://127.0.0.1:9999"
    refused = [
        # a form on another local port, posted with the annotator's credentials (as a browser would)
        ({"Origin": other_port, "Content-Type": "text/plain"}, b"x=y", 403),
        ({"Origin": other_port}, b"{}", 403),
        ({"Origin": "null"}, b"{}", 403),
        ({"Origin": "http://evil.example.com:8765"}, b"{}", 403),
        ({"Origin": None, "Referer": f"{other_port}/page.html"}, b"{}", 403),
        ({"Origin": None}, b"{}", 403),
        ({"Origin": ORIGIN, "Content-Type": "text/plain"}, b"{}", 415),
        ({"Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"}, b"a=b", 415),
        ({"Origin": ORIGIN}, b"", 400),
    ]
    for headers, content, status in refused:
        for path in ("/api/undo", "/api/next", "/api/answer", "/api/login"):
            response = post(client, path, {"Content-Type": "application/json", **alice, **headers}, content)
            assert response.status_code == status, (headers, path, response.text)
    assert ledger_rows(run) == before
    # the page's own Referer, where a browser sends no Origin
    by_referer = {**alice, "Content-Type": "application/json", "Origin": None, "Referer": f"{ORIGIN}/"}
    assert post(client, "/api/undo", by_referer, b"{}").status_code == 200
    assert client.post("/api/undo", headers={**alice, "Origin": "http://localhost:8765"}, json={}).status_code == 409


def test_the_host_must_be_the_servers_own(served):
    client, app, run = served(annotators=["alice"])
    alice = named(app, "alice")
    for host in ("evil.example.com", "127.0.0.1:9999", "127.0.0.1", "evil.example.com:8765"):
        assert client.get("/api/me", headers={**alice, "Host": host}).status_code == 403, host
        assert client.post("/api/next", headers={**alice, "Host": host}, json={}).status_code == 403, host
    assert ledger_rows(run)["leases"] == []
    for host in ("127.0.0.1:8765", "localhost:8765", "LOCALHOST:8765"):
        assert client.get("/api/me", headers={**alice, "Host": host}).status_code == 200, host


def test_no_page_may_frame_the_server_and_only_its_own_resources_load(served):
    client, app, _ = served()
    for response in (client.get("/", params={"token": SECRET}), client.get("/api/me"),
                     client.get("/api/me", headers={"Host": "evil.example.com"})):
        assert response.headers["x-frame-options"] == "DENY"
        policy = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
        assert policy["frame-ancestors"] == "'none'" and policy["default-src"] == "'none'"
        assert {policy[kind] for kind in ("script-src", "style-src", "img-src", "connect-src")} == {"'self'"}


def test_a_body_over_64_kib_is_refused_however_it_is_sent(served):
    client, app, run = served(annotators=["alice"])
    alice = named(app, "alice")
    before = ledger_rows(run)
    padded = b'{"name": "' + b"a" * MAX_BODY_BYTES + b'"}'
    response = client.post("/api/next", headers={**alice, "Content-Type": "application/json"}, content=padded)
    assert response.status_code == 413

    def chunks():  # no Content-Length: the size is counted as it arrives
        yield b'{"skip": ['
        for _ in range(MAX_BODY_BYTES // 8):
            yield b"1,1,1,1,"
        yield b"1]}"

    streamed = client.post("/api/next", headers={**alice, "Content-Type": "application/json"}, content=chunks())
    assert streamed.status_code == 413
    assert ledger_rows(run) == before


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/api/answer", b'{"question": 1000000000000000000000000000000, "label": "yes", "seconds": 1}', 404),
    ("/api/answer", b'{"question": -1, "label": "yes", "seconds": 1}', 404),
    ("/api/answer", b'{"question": 1, "label": "yes", "seconds": 1e400}', 400),
    ("/api/answer", b'{"question": 1, "label": 100000000000000000000000, "seconds": 1}', 400),
    ("/api/next", b'{"skip": [1000000000000000000000000000000]}', 400),
    ("/api/next", b'{"skip": "all"}', 400),
    ("/api/next", b'{"skip": [' + b"1," * 100 + b'1]}', 400),
    ("/api/next", b"[" * 30_000 + b"]" * 30_000, 400),
    ("/api/next", b'{"skip": [[[[[[[[[1]]]]]]]]]}', 400),
    ("/api/login", b'{"name": ' + b"[" * 30_000, 400),
])
def test_out_of_range_ids_and_deep_bodies_are_refused(served, path, body, status):
    client, app, run = served(annotators=["alice"])
    before = ledger_rows(run)
    response = client.post(path, headers={**named(app, "alice"), "Content-Type": "application/json"}, content=body)
    assert response.status_code == status, response.text
    assert ledger_rows(run) == before
    assert client.get(f"/api/questions/{10**30}/image", headers=named(app, "alice")).status_code == 404


def test_wrong_tokens_are_slowed_down_per_client(served, clock):
    client, app, _ = served()
    for _ in range(10):  # a few typos cost nothing
        assert client.get("/api/me", headers=bearer("guess")).status_code == 401
    assert client.get("/api/me", headers=bearer("guess")).status_code == 401  # the 11th: wait 1 s
    held = client.get("/api/me", headers=bearer(SECRET))  # not even a right token is looked at meanwhile
    assert held.status_code == 429 and held.headers["retry-after"] == "1"
    assert client.get("/", params={"token": "guess"}).status_code == 429
    other = TestClient(app.app(), base_url=ORIGIN, client=("10.0.0.2", 50000))
    assert other.get("/api/me", headers=bearer(SECRET)).status_code == 200  # another client is not held back
    waits = [1]
    for _ in range(10):  # a guesser who waits each time as told
        clock.now += waits[-1]
        assert client.get("/api/me", headers=bearer("guess")).status_code == 401
        waits.append(int(client.get("/api/me", headers=bearer("guess")).headers["retry-after"]))
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60]  # doubling, bounded
    clock.now += 600
    assert client.get("/api/me", headers=bearer(SECRET)).status_code == 200  # old failures are forgotten


def test_the_throttle_remembers_a_bounded_number_of_clients(clock):
    throttle = TokenThrottle(clock, free=0, max_clients=3)
    for client in ("a", "b", "c", "d"):
        throttle.failed(client)
    assert throttle.wait_s("a") == 0 and throttle.wait_s("d") == 1.0 and len(throttle._failures) == 3
    for _ in range(100):
        throttle.failed("d")
    assert throttle.wait_s("d") == 60.0 and len(throttle._failures["d"]) < 20


def test_named_tokens_are_random_secrets_stored_hashed(served):
    client, app, run = served(annotators=["alice", "bob"])
    tokens = app.named_tokens
    assert len(set(tokens.values())) == 2 and all(len(token) >= 32 for token in tokens.values())
    derived = hmac.new(SECRET.encode(), b"alice", hashlib.sha256).hexdigest()[:32]  # the old scheme
    assert tokens["alice"] != derived and client.get("/api/me", headers=bearer(derived)).status_code == 401
    assert client.get("/api/me", headers=named(app, "alice")).json()["annotator"] == "alice"
    assert client.get("/api/me", headers=bearer(SECRET)).status_code == 401  # named only: no shared token
    stored = run.ledger_path.read_bytes() + run.ledger_path.with_name("ledger.sqlite-wal").read_bytes()
    assert tokens["alice"].encode() not in stored
    assert ledger_rows(run)["annotator_tokens"][0][:2] == (
        "alice", hashlib.sha256(tokens["alice"].encode()).hexdigest())
    with QuestionQueue(run.ledger_path) as queue:  # a second token for alice replaces the first
        again = queue.add_annotator_tokens(["alice"])["alice"]
        assert queue.named_annotators() == ["alice", "bob"]
    assert again != tokens["alice"] and client.get("/api/me", headers=named(app, "alice")).status_code == 401
    assert client.get("/api/me", headers=bearer(again)).json()["annotator"] == "alice"


def test_apis_annotate_add_annotator_prints_a_working_url(human_run, capsys, clock):
    _, run_dir = human_run()
    main(["annotate", str(run_dir), "--add-annotator", "alice", "--add-annotator", "bob", "--port", "8765"])
    printed = capsys.readouterr().out
    urls = dict(line.split(": ", 1) for line in printed.splitlines() if "?token=" in line)
    assert set(urls) == {"alice", "bob"} and all(url.startswith(f"{ORIGIN}/?token=") for url in urls.values())
    run = open_human_run(run_dir)
    app = AnnotationApp(run.ledger_path, run.train_set, Access.create(named_only=True), clock=clock)
    with TestClient(app.app(), base_url=ORIGIN) as client:
        assert client.get(urls["bob"]).status_code == 200
        assert client.get("/api/me").json()["annotator"] == "bob"
    with pytest.raises(SystemExit) as refused:
        main(["annotate", str(run_dir), "--add-annotator", "a,b"])
    assert refused.value.code == 2 and "a,b" in capsys.readouterr().err
    with QuestionQueue(run.ledger_path) as queue:
        assert queue.named_annotators() == ["alice", "bob"]


def test_a_question_the_page_cannot_show_is_given_back_and_passed_over(served):
    client, app, run = served(annotators=["alice", "bob"])
    first = client.post("/api/next", headers=named(app, "alice"), json={}).json()["question"]
    second = client.post("/api/next", headers=named(app, "alice"), json={"skip": [first["id"]]}).json()["question"]
    assert second["id"] != first["id"]
    assert [row[:2] for row in ledger_rows(run)["leases"]] == [(second["id"], "alice")]
    assert client.post("/api/next", headers=named(app, "bob"), json={}).json()["question"]["id"] == first["id"]


FUZZ = settings(max_examples=int(os.environ.get("APIS_FUZZ_EXAMPLES", "60")), deadline=None, derandomize=True,
                database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats() | st.text(max_size=20)
    | st.sampled_from(["yes", "no", "unsure", "alice"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["question", "label", "seconds", "name", "skip"]) | st.text(max_size=5), children, max_size=4),
    max_leaves=12)
BODIES = (JSON_VALUES.map(lambda value: json.dumps(value).encode())
          | st.fixed_dictionaries({}, optional={"question": JSON_VALUES | st.integers(0, 40), "label": JSON_VALUES,
                                                "seconds": JSON_VALUES, "skip": JSON_VALUES, "name": JSON_VALUES}
                                  ).map(lambda value: json.dumps(value).encode())
          | st.binary(max_size=64)
          | st.integers(1, 40).map(lambda depth: b"[" * depth + b"]" * depth))


@FUZZ
@given(path=st.sampled_from(["/api/answer", "/api/next", "/api/undo", "/api/login"]), body=BODIES,
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", None]),
       origin=st.sampled_from([ORIGIN, "http://127.0.0.1:9999", None]), shared=st.booleans())
def test_fuzzed_request_bodies_never_fail_the_server_nor_change_the_ledger_when_refused(
        fuzz_served, path, body, content_type, origin, shared):
    client, app, run = fuzz_served
    headers = {"Origin": origin, "Content-Type": content_type, **(bearer(SECRET) if shared else named(app, "alice"))}
    before = ledger_rows(run)
    response = post(client, path, headers, body)
    assert response.status_code < 500, (path, body, response.text)
    if response.status_code >= 400:
        assert set(response.json()) == {"error"}
        assert ledger_rows(run) == before, (path, body, response.text)


@pytest.fixture
def fuzz_served(served):
    """One app for every fuzzed request: a named annotator, alice, holding a question, and the shared token."""
    client, app, run = served(annotators=["alice"])
    client.post("/api/next", headers=named(app, "alice"), json={})
    app.access = Access.create(SECRET)
    return client, app, run


def test_an_address_the_server_cannot_listen_on_is_named(human_run, capsys):
    _, run_dir = human_run()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        for argv, message in ((["--port", str(port)], f"cannot listen on --host 127.0.0.1 --port {port}: "),
                              (["--host", "no-such-host.invalid"], "cannot listen on --host no-such-host.invalid")):
            with pytest.raises(SystemExit) as refused:
                main(["annotate", str(run_dir), *argv])
            err = capsys.readouterr().err
            assert refused.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    finally:
        taken.close()
