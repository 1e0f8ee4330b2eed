"""A run's questions in a Label Studio project, through Label Studio's API (its client, ``label-studio-sdk``).

* :func:`push`: finds the project (by title) or creates it with :data:`~apis.interop.label_studio.LABEL_CONFIG`,
  makes the images reachable, and adds the current step's open questions as tasks with the box and the point
  as a prediction (``model_version`` ``apis``, which the project pre-labels with). Questions already in the
  project are not added again, so pushing twice adds nothing.
* :func:`pull`: reads the project's tasks with their annotations and stores the answers as
  ``apis import-answers`` does (:func:`~apis.interop.label_studio.store_answers`), annotators named by their
  Label Studio e-mail.
* :func:`watch`: pulls every ``interval_s`` seconds until the step's questions are all answered.

How images reach Label Studio: by default a *Local files* storage on the dataset's image folder, created
unsynchronizable. A synced storage makes one image-only task per file (not questions, and annotating one
answers nothing), so it is never synced: the tasks name their images themselves, with URLs
``/data/local-files/?d=<path below the document root>``, which Label Studio serves from any of the project's
local-files storages. That needs Label Studio on the machine that holds the images, started with
``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` a folder above
the image folder (``document_root``). Images served elsewhere (a web server, a bucket): ``image_url_prefix``, and
no storage is made.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from apis.config import ConfigError
from apis.data.questions import QuestionError, QuestionQueue
from apis.interop.label_studio import LABEL_CONFIG, MODEL_VERSION, ImportSummary, store_answers, task_of
from apis.loop.human import HumanRun
from apis.utils.errors import ApisError

STORAGE_TITLE = "apis images (never sync: tasks come from apis label-studio push)"
MAX_INTERVAL_S = 3600.0


class LabelStudioError(ApisError):
    """Label Studio refused a request or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class PushSummary:
    """What :func:`push` did: the project, whether it was made now, tasks added and questions already there."""

    project_id: int
    title: str
    created: bool
    step: int
    added: int
    present: int
    storage: str  # how the images are reached
    answers_wanted: int  # per question: Label Studio's maximum annotations per task

    def format(self, url: str) -> str:
        made = "created" if self.created else "found"
        wanted = f"; {self.answers_wanted} answers per question" if self.answers_wanted > 1 else ""
        return (f"project {self.title!r} ({made}, {url.rstrip('/')}/projects/{self.project_id}): {self.added:,} "
                f"questions of step {self.step} added as tasks, {self.present:,} already there; images: "
                f"{self.storage}{wanted}")


def client(url: str, token: str):
    """Label Studio's client for ``url`` with an access token (Account & Settings; a legacy token or a personal
    access token); ConfigError naming what to install when the SDK is missing."""
    try:
        from label_studio_sdk import LabelStudio
    except ImportError:
        raise ConfigError("apis label-studio needs Label Studio's client: pip install 'apis[label-studio]' (or pip "
                          "install label-studio-sdk)") from None
    if not token:
        raise ConfigError("no Label Studio token: pass --token TOKEN or set LABEL_STUDIO_API_KEY (Label Studio: "
                          "Account & Settings -> Access Token)")
    return LabelStudio(base_url=url.rstrip("/"), api_key=token, timeout=60)


@contextlib.contextmanager
def _talking_to(url: str, doing: str) -> Iterator[None]:
    """Label Studio's and the network's errors as one line naming the server and what was being done."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as error:
        hint = {401: "; the token was refused: use the Access Token of Account & Settings (a legacy token needs "
                     "legacy tokens enabled in the organisation)",
                404: "; is the URL Label Studio's?"}.get(error.status_code, "")
        raise LabelStudioError(f"{url}: {doing}: Label Studio answered {error.status_code}: {error.body}{hint}") \
            from None
    except httpx.HTTPError as error:
        raise LabelStudioError(f"{url}: {doing}: cannot reach Label Studio: {error}") from None


def default_title(queue: QuestionQueue, run: HumanRun) -> str:
    """The project title a run's questions go to: the run folder's name and the ledger's run id (Label Studio
    titles are at most 50 characters)."""
    return f"apis {run.run_dir.name[:32]} {queue.run_id[:8]}"


def _find_project(ls, title: str):
    matches = [p for p in ls.projects.list(title=title) if p.title == title]
    if len(matches) > 1:
        raise LabelStudioError(f"{len(matches)} Label Studio projects are titled {title!r} (ids "
                               f"{', '.join(str(p.id) for p in matches)}); rename all but one")
    return matches[0] if matches else None


def _project_tasks(ls, project_id: int, with_annotations: bool) -> list[dict]:
    """The project's tasks as Label Studio's JSON export writes them (``id``, ``data``, ``annotations``)."""
    tasks = []
    for task in ls.tasks.list(project=project_id, fields="all" if with_annotations else None):
        item = task.dict() if hasattr(task, "dict") else dict(task)
        tasks.append({"id": item.get("id"), "data": item.get("data") or {},
                      "annotations": item.get("annotations") or []})
    return tasks


def push(run: HumanRun, queue: QuestionQueue, url: str, token: str, title: str | None = None,
         image_url_prefix: str | None = None, document_root: Path | None = None) -> PushSummary:
    """Put the current step's open questions into a Label Studio project (see the module docstring).

    ``document_root``: Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT`` (default: the image folder's parent).
    """
    step = queue.progress().step
    if step is None:
        raise QuestionError(f"{run.run_dir}: no questions yet; run `apis run` first")
    if queue.is_merged(step):
        raise QuestionError(f"{run.run_dir}: step {step} was merged and trained on already; run `apis run` to "
                            "select the next step's questions")
    dataset = run.train_set
    image_root = dataset.image_root.resolve()
    if image_url_prefix is None:
        root = (document_root or image_root.parent).resolve()
        if root not in image_root.parents:
            raise ConfigError(f"--document-root {root} is not a folder above the images ({image_root}); give "
                              "Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
        image_url_prefix = f"/data/local-files/?d={image_root.relative_to(root).as_posix()}/"
    title = title or default_title(queue, run)
    run_id = queue.run_id
    ls = client(url, token)
    with _talking_to(url, f"project {title!r}"):
        project = _find_project(ls, title)
        created = project is None
        if created:
            project = ls.projects.create(title=title, label_config=LABEL_CONFIG)
        wanted = max(q.answers_wanted for q in queue.questions(step))
        ls.projects.update(project.id, label_config=LABEL_CONFIG, show_collab_predictions=True,
                           maximum_annotations=wanted, show_skip_button=True)
        existing = _project_tasks(ls, project.id, with_annotations=False)
    others = {t["data"].get("apis_run") for t in existing if "apis_run" in t["data"]} - {run_id}
    if others:
        raise LabelStudioError(f"{url}: project {title!r} holds tasks of another run (apis_run {sorted(others)}); "
                               "push to a project of its own (--project NAME)")
    storage = image_url_prefix
    if image_url_prefix.startswith("/data/local-files/"):
        with _talking_to(url, f"a local-files storage on {image_root} for project {title!r}"):
            storages = ls.import_storage.local.list(project=project.id)
            if not any(Path(s.path or "") == image_root for s in storages):
                ls.import_storage.local.create(project=project.id, path=str(image_root), title=STORAGE_TITLE,
                                               use_blob_urls=True, synchronizable=False)
        storage = f"local files of {image_root} (a storage that is never synced)"
    present = {t["data"]["apis_question"] for t in existing if "apis_question" in t["data"]}
    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset.categories}
    new = [task_of(q, dataset, names, run_id, image_url_prefix) for q in queue.questions(step, open_only=True)
           if q.id not in present]
    with _talking_to(url, f"adding {len(new)} tasks to project {title!r}"):
        if new:
            ls.projects.import_tasks(project.id, request=new)
        if new or present:  # Label Studio takes a model version only once predictions of it exist
            ls.projects.update(project.id, model_version=MODEL_VERSION)
    return PushSummary(project_id=project.id, title=title, created=created, step=step, added=len(new),
                       present=len(present), storage=storage, answers_wanted=wanted)


def pull(run: HumanRun, queue: QuestionQueue, url: str, token: str, title: str | None = None) -> ImportSummary:
    """Store the answers given in the run's Label Studio project (all or none, as ``apis import-answers``)."""
    title = title or default_title(queue, run)
    ls = client(url, token)
    with _talking_to(url, f"reading project {title!r}"):
        project = _find_project(ls, title)
        if project is None:
            raise LabelStudioError(f"{url}: no project titled {title!r}; push the questions first "
                                   f"(`apis label-studio push {run.run_dir} --url {url}`)")
        tasks = _project_tasks(ls, project.id, with_annotations=True)
        users = {user.id: user.email for user in ls.users.list() if user.email}
    return store_answers(queue, tasks, f"{url} project {project.id}", users=users)


def watch(run: HumanRun, queue: QuestionQueue, url: str, token: str, title: str | None = None,
          interval_s: float = 30.0, report: Callable[[str], None] = print,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Pull every ``interval_s`` seconds until every question of the current step has its answers; returns the
    step. ``report`` gets one line per pull that stored something."""
    if not 1.0 <= interval_s <= MAX_INTERVAL_S:
        raise ConfigError(f"--interval {interval_s} is not in [1, {MAX_INTERVAL_S:.0f}] seconds")
    step = queue.progress().step
    if step is None:
        raise QuestionError(f"{run.run_dir}: no questions yet; run `apis run` first")
    while True:
        if queue.is_merged(step) or queue.waiting(step) == 0:
            return step
        summary = pull(run, queue, url, token, title)
        if summary.stored:
            report(summary.format())
        if queue.waiting(step) == 0:
            return step
        sleep(interval_s)
