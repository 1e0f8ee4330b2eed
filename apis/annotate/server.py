"""The ``apis annotate`` web server: a Starlette app on uvicorn serving one page and a small JSON API.

Security model (docs/annotate.md): the server binds 127.0.0.1 unless told otherwise; every request needs a
token, printed at start (``?token=`` in the URL once, then an HttpOnly, SameSite=Strict cookie, or an
``Authorization: Bearer`` header for scripts): the shared token, whose holders log in with a name, or a named
annotator's own random token (``apis annotate --add-annotator NAME``), of which the ledger keeps only the hash.
Every request must name the server itself in ``Host`` (no DNS rebinding); every state-changing request is a
POST with ``Content-Type: application/json``, an ``Origin`` (or, without one, a ``Referer``) of the server's own
origin and a body of at most 64 KiB, nested at most 8 deep, so that no other page, another local port
included, can change anything. Responses forbid framing and allow the page only its own resources (CSP). A
client that keeps sending wrong tokens is held back (429). Images are served by question id only, from the
dataset's image folder. Bad requests get a 4xx with ``{"error": message}``, a change the ledger's disk has no
room for a 507 (nothing of it stored; the file is named in the server log), and an unexpected failure a 500
whose details go to the server log only.

Every answer is committed to the run's ledger before the response is sent, so closing the browser or
killing the server loses nothing that was answered. The database is used from the event loop's thread only
(the endpoints are ``async``); crops are rendered in the thread pool.

API (all JSON, all needing the token; every POST a JSON object body, ``{}`` when it carries nothing):

* ``GET /api/me`` -> who is asking, and the server's settings;
* ``POST /api/login {"name"}`` -> sets the annotator's name (shared token only);
* ``POST /api/next {"skip": [ids]}`` -> ``{"question", "progress", "pace", "leased_to_others"}``, leasing the
  question; ``skip`` (optional) gives back the asker's leases of questions the page could not show and passes
  them over;
* ``POST /api/answer {"question": id, "label": "yes"|"no"|"unsure", "seconds": s}`` -> progress and pace;
* ``POST /api/undo`` -> the question whose answer was taken back (leased to the asker again);
* ``GET /api/questions/{id}/image`` -> the PNG crop around the question's box.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hmac
import json
import logging
import math
import re
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from apis.annotate.images import ImageOutsideRoot, QuestionImages
from apis.data.coco import CocoDataset
from apis.data.questions import (
    MAX_ID,
    QuestionConflict,
    QuestionError,
    QuestionNotFound,
    QuestionQueue,
    check_annotator,
)
from apis.utils.io import WriteFailed

logger = logging.getLogger(__name__)

STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
DEFAULT_LEASE_S = 300.0
TOKEN_ENV = "APIS_ANNOTATE_TOKEN"  # a fixed shared token: URLs and cookies stay valid across restarts
MAX_BODY_BYTES = 64 * 1024  # the API's bodies are a few hundred bytes
MAX_JSON_DEPTH = 8  # they are flat objects; a deeper body is refused before it is parsed
MAX_SKIPPED = 100  # question ids one "next" request may pass over
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class Access:
    """The shared token (None: named annotators only). Named annotators' tokens are random secrets kept in the
    run's ledger as hashes (:meth:`~apis.data.questions.QuestionQueue.add_annotator_tokens`), never derived
    from the shared one."""

    shared: str | None

    @classmethod
    def create(cls, secret: str | None = None, named_only: bool = False) -> Access:
        """The shared token ``secret`` (random when None), or none at all with ``named_only``."""
        return cls(None if named_only else secret or secrets.token_urlsafe(24))

    def is_shared(self, token: str) -> bool:
        """Whether ``token`` is the shared token, compared in constant time."""
        return self.shared is not None and hmac.compare_digest(self.shared.encode(), token.encode())


class TokenThrottle:
    """Slows down guessing tokens, per client address: after ``free`` wrong tokens within ``window_s`` seconds, a
    client waits 1 s before its next token is even looked at, twice as long after each further wrong one, at most
    ``max_wait_s``; meanwhile its requests get 429. At most ``max_clients`` clients are remembered (the least
    recently failing is forgotten), so memory stays bounded whatever the traffic.

    All local pages share one address (127.0.0.1): one that keeps guessing holds back the local annotators too,
    for ``max_wait_s`` at most after it stops.
    """

    def __init__(self, clock: Callable[[], float], free: int = 10, window_s: float = 600.0,
                 max_wait_s: float = 60.0, max_clients: int = 4096):
        self.clock, self.free, self.window_s, self.max_wait_s = clock, free, window_s, max_wait_s
        self.max_clients = max_clients
        # Failures past ``free`` beyond this many would only lengthen the wait beyond max_wait_s.
        self._kept = free + 1 + math.ceil(math.log2(max_wait_s))
        self._failures: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()

    def wait_s(self, client: str) -> float:
        """Seconds before ``client``'s next token is checked (0: now)."""
        failures = self._recent(client)
        if len(failures) <= self.free:
            return 0.0
        wait = min(2.0 ** (len(failures) - self.free - 1), self.max_wait_s)
        return max(0.0, failures[-1] + wait - self.clock())

    def failed(self, client: str) -> None:
        failures = self._failures.pop(client, None) or collections.deque(maxlen=self._kept)
        failures.append(self.clock())
        self._failures[client] = failures
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def _recent(self, client: str) -> collections.deque:
        failures = self._failures.get(client, collections.deque())
        while failures and failures[0] <= self.clock() - self.window_s:
            failures.popleft()
        return failures


def own_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` header values naming a server bound to ``host:port``: the address itself, and every loopback
    name for a loopback address; for a wildcard address (all interfaces), this machine's names and addresses."""
    names = {f"[{host}]" if ":" in host else host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names.update(LOOPBACK_NAMES)
    if host in ("0.0.0.0", "::", ""):
        names.update(LOOPBACK_NAMES)
        machine = socket.gethostname()
        names.update({machine, socket.getfqdn()})
        with contextlib.suppress(OSError):
            names.update(f"[{info[4][0]}]" if ":" in info[4][0] else info[4][0]
                         for info in socket.getaddrinfo(machine, None))
    return frozenset(f"{name.lower()}:{port}" for name in names)


def check_serve_options(port: int, lease_s: float, answers_per_question: int | None) -> None:
    """QuestionError naming the option unless the values can be served (checked before anything is written)."""
    if not (isinstance(port, int) and 0 <= port <= 65535):
        raise QuestionError(f"--port {port} is not a TCP port (0..65535; 0 picks a free one)")
    if not (math.isfinite(lease_s) and lease_s > 0):
        raise QuestionError(f"--lease-seconds must be a positive number, got {lease_s}")
    if answers_per_question is not None and not 1 <= answers_per_question <= 100:
        raise QuestionError(f"--answers-per-question must be 1..100, got {answers_per_question}")


class AnnotationApp:
    """The page and the API over one run's question queue; :meth:`app` is the ASGI application.

    Args:
        ledger_path: the run's ``ledger.sqlite``.
        dataset: the run's training set (images, boxes, class names).
        access: the shared token, if any.
        lease_s: how long a question stays with the annotator it was handed to.
        answers_per_question: when given, the answers each open question needs (redundancy).
        clock: unix seconds (leases expire by it, the token throttle counts by it).
        host, port: where the server listens: requests must name it (``Host``, ``Origin``); :func:`serve`
            sets the port it bound when given 0.
    """

    def __init__(self, ledger_path: str | Path, dataset: CocoDataset, access: Access,
                 lease_s: float = DEFAULT_LEASE_S, answers_per_question: int | None = None,
                 clock: Callable[[], float] = time.time, host: str = "127.0.0.1", port: int = 8765):
        check_serve_options(port, lease_s, answers_per_question)
        self.ledger_path = Path(ledger_path)
        self.images = QuestionImages(dataset)
        self.access = access
        self.lease_s = lease_s
        self.answers_per_question = answers_per_question
        self.clock = clock
        self.throttle = TokenThrottle(clock)
        self.host = host
        self.listen_on(port)
        self.queue: QuestionQueue | None = None
        with QuestionQueue(self.ledger_path) as queue:  # the cookies are named after the run
            suffix = queue.run_id[:8]
        self.token_cookie, self.name_cookie = f"apis_token_{suffix}", f"apis_annotator_{suffix}"

    def listen_on(self, port: int) -> None:
        """Accept requests for ``self.host:port`` (and its other names)."""
        self.port = port
        self.hosts = own_hosts(self.host, port)
        self.origins = frozenset(f"http://{host}" for host in self.hosts)

    def app(self) -> Starlette:
        routes = [
            Route("/", self.index, methods=["GET"]),
            Route("/static/{name}", self.static, methods=["GET"]),
            Route("/api/me", self.me, methods=["GET"]),
            Route("/api/login", self.login, methods=["POST"]),
            Route("/api/next", self.next_question, methods=["POST"]),
            Route("/api/answer", self.answer, methods=["POST"]),
            Route("/api/undo", self.undo, methods=["POST"]),
            Route("/api/questions/{question_id:int}/image", self.image, methods=["GET"]),
        ]
        handlers = {HTTPException: _http_error, QuestionError: _question_error, WriteFailed: _write_failed,
                    Exception: _server_error}
        return _Guard(Starlette(routes=routes, exception_handlers=handlers, lifespan=self._lifespan), self)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette):
        # Opened here, in the event loop's thread, which every endpoint touching the database runs in.
        self.queue = QuestionQueue(self.ledger_path, clock=self.clock)
        if self.answers_per_question is not None:
            self.queue.set_answers_wanted(self.answers_per_question)
        try:
            yield
        finally:
            self.queue.close()

    # ---- where a request comes from --------------------------------------------------------------
    def refusal(self, method: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """``(status, message)`` when a request must be refused before it reaches an endpoint, else None:
        a ``Host`` that is not this server's (403); for a state-changing request, an ``Origin`` (or ``Referer``)
        other than this server's (403), a body that is not JSON (415) or longer than the limit (413)."""
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            return 403, f"Host {host!r} is not this server's address; open the URL that `apis annotate` printed"
        if method in ("GET", "HEAD"):
            return None
        origin = headers.get("origin")
        if origin is None and "referer" in headers:
            parts = urlsplit(headers["referer"])
            origin = f"{parts.scheme}://{parts.netloc}"
        if origin is None or origin.lower() not in self.origins:
            return 403, (f"a change must come from this server's own page (Origin {origin!r} is not "
                         f"http://{sorted(self.hosts)[0]}); scripts send an Origin header naming the server")
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return 415, "send a JSON body with Content-Type: application/json ({} when it carries nothing)"
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return 413, f"the body is larger than {MAX_BODY_BYTES} bytes"
        return None

    # ---- authentication ----------------------------------------------------------------------
    def _token(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(self.token_cookie)

    def _lookup(self, request: Request, token: str | None) -> tuple[bool, str | None]:
        """``(valid, bound name)`` of ``token`` (the name None for the shared token); 429 while the client is
        held back for wrong tokens."""
        if not token:
            return False, None
        client = request.client.host if request.client else "unknown"
        wait = self.throttle.wait_s(client)
        if wait > 0:
            raise HTTPException(429, f"too many wrong tokens from {client}; try again in {math.ceil(wait)} s",
                                headers={"Retry-After": str(math.ceil(wait))})
        if self.access.is_shared(token):
            return True, None
        name = self.queue.annotator_of_token(token)
        if name is None:
            self.throttle.failed(client)
            return False, None
        return True, name

    def _check_token(self, request: Request) -> str | None:
        """The name bound to the request's token (None for the shared token); 401 without a valid token."""
        valid, name = self._lookup(request, self._token(request))
        if not valid:
            raise HTTPException(401, "missing or wrong token: open the URL that `apis annotate` printed")
        return name

    def _annotator(self, request: Request, required: bool = True) -> str | None:
        name = self._check_token(request)
        if name is None:
            cookie = request.cookies.get(self.name_cookie)
            if cookie:
                try:
                    name = check_annotator(unquote(cookie))
                except QuestionError:
                    name = None
        if name is None and required:
            raise HTTPException(401, "log in with your name first")
        return name

    # ---- page ----------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None:
            if not self._lookup(request, token)[0]:
                raise HTTPException(401, "wrong token: open the URL that `apis annotate` printed")
            response = RedirectResponse("./", status_code=303)  # the token leaves the address bar
            response.set_cookie(self.token_cookie, token, httponly=True, samesite="strict")
            return response
        self._check_token(request)
        return Response(_static_text("index.html"), media_type="text/html",
                        headers={"Cache-Control": "no-store"})

    async def static(self, request: Request) -> Response:
        self._check_token(request)
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            raise HTTPException(404, f"no file {name!r} here")
        return Response(_static_text(name), media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    # ---- API -----------------------------------------------------------------------------------
    async def me(self, request: Request) -> JSONResponse:
        bound = self._check_token(request)
        return JSONResponse({"annotator": self._annotator(request, required=False),
                             "name_from_token": bound is not None, "lease_s": self.lease_s,
                             "run": self.ledger_path.parent.name})

    async def login(self, request: Request) -> JSONResponse:
        bound = self._check_token(request)
        body = await _json_body(request)
        if bound is not None:
            raise HTTPException(409, "this token belongs to a named annotator; no login needed")
        name = check_annotator(str(body.get("name", "")).strip())
        response = JSONResponse({"annotator": name})
        response.set_cookie(self.name_cookie, quote(name), httponly=True, samesite="strict")
        return response

    async def next_question(self, request: Request) -> JSONResponse:
        annotator = self._annotator(request)
        skip = _question_ids((await _json_body(request)).get("skip", []), "skip")
        question = self.queue.lease_next(annotator, self.lease_s, skip=skip)
        return JSONResponse({"question": None if question is None else self.images.describe(question),
                             **self._standing(annotator),
                             "leased_to_others": 0 if question else self.queue.leased_to_others(annotator)})

    async def answer(self, request: Request) -> JSONResponse:
        annotator = self._annotator(request)
        body = await _json_body(request)
        for key in ("question", "label", "seconds"):
            if key not in body:
                raise HTTPException(400, f"the answer needs '{key}' (question id, yes/no/unsure, seconds)")
        stored = self.queue.answer(annotator, body["question"], body["label"], body["seconds"])
        return JSONResponse({"answer": asdict(stored), **self._standing(annotator)})

    async def undo(self, request: Request) -> JSONResponse:
        annotator = self._annotator(request)
        await _json_body(request)
        question = self.queue.undo(annotator, self.lease_s)
        return JSONResponse({"question": self.images.describe(question), **self._standing(annotator)})

    async def image(self, request: Request) -> Response:
        self._check_token(request)
        question = self.queue.question(request.path_params["question_id"])
        png = await run_in_threadpool(self.images.crop_png, question)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def _standing(self, annotator: str) -> dict:
        return {"progress": asdict(self.queue.progress(annotator)), "pace": asdict(self.queue.pace(annotator))}


class _Guard:
    """ASGI middleware: refuses what :meth:`AnnotationApp.refusal` refuses before any endpoint runs, and adds
    :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: Starlette, annotation: AnnotationApp):
        self.app, self.annotation = app, annotation

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      *((k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]
            await send(message)

        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        refused = self.annotation.refusal(scope["method"], headers)
        if refused is not None:
            status, message = refused
            await JSONResponse({"error": message}, status_code=status)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


async def _json_body(request: Request) -> dict:
    """The request's JSON object body: 413 over :data:`MAX_BODY_BYTES` (however it is sent), 400 when it is not
    a JSON object nested at most :data:`MAX_JSON_DEPTH` deep."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise HTTPException(400, f"the body is nested more than {MAX_JSON_DEPTH} deep")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HTTPException(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body


def _json_depth(raw: bytes) -> int:
    """How deep brackets nest in ``raw``, strings left out (an upper bound for malformed text)."""
    depth = deepest = 0
    for byte in _JSON_STRING.sub(b"", raw):
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def _question_ids(value: object, key: str) -> list[int]:
    """``value`` as a list of at most :data:`MAX_SKIPPED` question ids (400 otherwise)."""
    if not (isinstance(value, list) and len(value) <= MAX_SKIPPED
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_ID for v in value)):
        raise HTTPException(400, f"'{key}' must be a list of at most {MAX_SKIPPED} question ids")
    return value


def _static_text(name: str) -> str:
    return resources.files("apis.annotate").joinpath("static", name).read_text(encoding="utf-8")


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def _question_error(request: Request, error: QuestionError) -> JSONResponse:
    status = (404 if isinstance(error, QuestionNotFound) else 409 if isinstance(error, QuestionConflict)
              else 403 if isinstance(error, ImageOutsideRoot) else 400)
    return JSONResponse({"error": str(error)}, status_code=status)


async def _write_failed(request: Request, error: WriteFailed) -> JSONResponse:
    logger.error("%s %s: %s", request.method, request.url.path, error)
    return JSONResponse({"error": "the server's disk is full: this was not stored (what you answered before is "
                                  "kept). Tell whoever runs apis annotate; its log names the file"}, status_code=507)


async def _server_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"error": "internal server error; the details are in the server's log"}, status_code=500)


def serve(app: AnnotationApp, named: Iterable[str] = (), out=sys.stdout) -> None:
    """Bind ``app.host:app.port`` (0: any free port), print the URL to open, and serve until interrupted;
    ``named`` lists the annotators with their own tokens (whose URLs `--add-annotator` printed)."""
    import uvicorn

    family = socket.AF_INET6 if ":" in app.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((app.host, app.port))
    except OSError as error:  # a port in use, an address not of this machine, a name that does not resolve
        sock.close()
        raise QuestionError(f"cannot listen on --host {app.host} --port {app.port}: {error.strerror or error}"
                            + (" (another process uses that port; --port 0 picks a free one)"
                               if error.errno == errno.EADDRINUSE else "")) from None
    sock.listen(128)  # connections made once the URL is printed wait in the backlog until uvicorn accepts them
    app.listen_on(sock.getsockname()[1])
    shown_host = f"[{app.host}]" if family == socket.AF_INET6 else app.host
    base = f"http://{shown_host}:{app.port}/"
    print(f"apis annotate: answering the questions of {app.ledger_path.parent}", file=out)
    if app.access.shared is not None:
        print(f"  open for anyone with this URL (asks for a name): {base}?token={app.access.shared}", file=out)
    named = list(named)
    if named:
        print(f"  {', '.join(named)}: {base}?token=THEIR_TOKEN (printed by --add-annotator)", file=out)
    if app.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"  warning: listening on {app.host}, not only this machine; the token is all that protects the "
              "page (plain HTTP: use it on a network you trust)", file=out)
    print("Stop with Ctrl-C; every answer is already saved.", file=out, flush=True)
    config = uvicorn.Config(app.app(), log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
