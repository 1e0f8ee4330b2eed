"""The ``apis annotate`` web server: a Starlette app on uvicorn serving one page and a small JSON API.

Security model (docs/annotate.md): the server binds 127.0.0.1 unless told otherwise; every request needs a
token, printed at start (``?token=`` in the URL once, then an HttpOnly, SameSite=Strict cookie, or an
``Authorization: Bearer`` header for scripts); an annotator's name comes from their own token
(``--annotator NAME``) or from the page's login form; images are served by question id only, from the
dataset's image folder; state-changing requests are POSTs with a JSON body, which a foreign page cannot send
with the cookie; bad requests get a 4xx with ``{"error": message}``, and an unexpected failure a 500 whose
details go to the server log only.

Every answer is committed to the run's ledger before the response is sent, so closing the browser or
killing the server loses nothing that was answered. The database is used from the event loop's thread only
(the endpoints are ``async``); crops are rendered in the thread pool.

API (all JSON, all needing the token):

* ``GET /api/me`` -> who is asking, and the server's settings;
* ``POST /api/login {"name"}`` -> sets the annotator's name (shared token only);
* ``POST /api/next`` -> ``{"question", "progress", "pace", "leased_to_others"}``, leasing the question;
* ``POST /api/answer {"question": id, "label": "yes"|"no"|"unsure", "seconds": s}`` -> progress and pace;
* ``POST /api/undo`` -> the question whose answer was taken back (leased to the asker again);
* ``GET /api/questions/{id}/image`` -> the PNG crop around the question's box.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import quote, unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from apis.active.questions import (
    QuestionConflict,
    QuestionError,
    QuestionNotFound,
    QuestionQueue,
    check_annotator,
)
from apis.annotate.images import ImageOutsideRoot, QuestionImages
from apis.data.coco import CocoDataset

logger = logging.getLogger(__name__)

STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
DEFAULT_LEASE_S = 300.0
TOKEN_ENV = "APIS_ANNOTATE_TOKEN"  # a fixed server secret: URLs and cookies stay valid across restarts


@dataclass(frozen=True)
class Access:
    """The tokens a server accepts: ``{token: annotator name}``, the name None for the shared token."""

    tokens: dict[str, str | None]

    @classmethod
    def create(cls, secret: str | None = None, annotators: Sequence[str] = ()) -> Access:
        """One shared token (``secret``, random when None) when no annotator is named; else one token per
        annotator, derived from the secret (HMAC-SHA256), so the same secret gives everyone the same URL."""
        secret = secret or secrets.token_urlsafe(24)
        if not annotators:
            return cls({secret: None})
        tokens = {}
        for name in annotators:
            check_annotator(name)
            tokens[hmac.new(secret.encode(), name.encode(), hashlib.sha256).hexdigest()[:32]] = name
        return cls(tokens)

    def lookup(self, token: str) -> tuple[bool, str | None]:
        """``(valid, bound name)``, comparing in constant time."""
        for known, name in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return True, name
        return False, None


class AnnotationApp:
    """The page and the API over one run's question queue; :meth:`app` is the ASGI application.

    Args:
        ledger_path: the run's ``ledger.sqlite``.
        dataset: the run's training set (images, boxes, class names).
        access: the accepted tokens.
        lease_s: how long a question stays with the annotator it was handed to.
        answers_per_question: when given, the answers each open question needs (redundancy).
        clock: unix seconds (leases expire by it).
    """

    def __init__(self, ledger_path: str | Path, dataset: CocoDataset, access: Access,
                 lease_s: float = DEFAULT_LEASE_S, answers_per_question: int | None = None,
                 clock: Callable[[], float] = time.time):
        if not lease_s > 0:
            raise QuestionError(f"--lease-seconds must be positive, got {lease_s}")
        self.ledger_path = Path(ledger_path)
        self.images = QuestionImages(dataset)
        self.access = access
        self.lease_s = lease_s
        self.answers_per_question = answers_per_question
        self.clock = clock
        self.queue: QuestionQueue | None = None
        with QuestionQueue(self.ledger_path) as queue:  # the cookies are named after the run
            suffix = queue.run_id[:8]
        self.token_cookie, self.name_cookie = f"apis_token_{suffix}", f"apis_annotator_{suffix}"

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
        handlers = {HTTPException: _http_error, QuestionError: _question_error, Exception: _server_error}
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=self._lifespan)

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

    # ---- authentication ----------------------------------------------------------------------
    def _token(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(self.token_cookie)

    def _check_token(self, request: Request) -> str | None:
        """The name bound to the request's token (None for the shared token); 401 without a valid token."""
        token = self._token(request)
        valid, name = self.access.lookup(token) if token else (False, None)
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
            if not self.access.lookup(token)[0]:
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
        if self._check_token(request) is not None:
            raise HTTPException(409, "this token belongs to a named annotator; no login needed")
        body = await _json_body(request)
        name = check_annotator(str(body.get("name", "")).strip())
        response = JSONResponse({"annotator": name})
        response.set_cookie(self.name_cookie, quote(name), httponly=True, samesite="strict")
        return response

    async def next_question(self, request: Request) -> JSONResponse:
        annotator = self._annotator(request)
        question = self.queue.lease_next(annotator, self.lease_s)
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
        question = self.queue.undo(annotator, self.lease_s)
        return JSONResponse({"question": self.images.describe(question), **self._standing(annotator)})

    async def image(self, request: Request) -> Response:
        self._check_token(request)
        question = self.queue.question(request.path_params["question_id"])
        png = await run_in_threadpool(self.images.crop_png, question)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def _standing(self, annotator: str) -> dict:
        return {"progress": asdict(self.queue.progress(annotator)), "pace": asdict(self.queue.pace(annotator))}


async def _json_body(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(415, "send a JSON body with Content-Type: application/json")
    try:
        body = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HTTPException(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body


def _static_text(name: str) -> str:
    return resources.files("apis.annotate").joinpath("static", name).read_text(encoding="utf-8")


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse({"error": error.detail}, status_code=error.status_code)


async def _question_error(request: Request, error: QuestionError) -> JSONResponse:
    status = (404 if isinstance(error, QuestionNotFound) else 409 if isinstance(error, QuestionConflict)
              else 403 if isinstance(error, ImageOutsideRoot) else 400)
    return JSONResponse({"error": str(error)}, status_code=status)


async def _server_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"error": "internal server error; the details are in the server's log"}, status_code=500)


def serve(app: AnnotationApp, host: str = "127.0.0.1", port: int = 8765, out=sys.stdout) -> None:
    """Bind ``host:port`` (0: any free port), print the URL(s) to open, and serve until interrupted."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections made once the URL is printed wait in the backlog until uvicorn accepts them
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"apis annotate: answering the questions of {app.ledger_path.parent}", file=out)
    for token, name in app.access.tokens.items():
        print(f"  {name or 'open for anyone with this URL (asks for a name)'}: "
              f"http://{shown_host}:{bound_port}/?token={token}", file=out)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"  warning: listening on {host}, not only this machine; the token is all that protects the page "
              "(plain HTTP: use it on a network you trust)", file=out)
    print("Stop with Ctrl-C; every answer is already saved.", file=out, flush=True)
    config = uvicorn.Config(app.app(), log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
