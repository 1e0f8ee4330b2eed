"""Label Studio round trip: a step's questions out as tasks, the team's answers back into the ledger.

Label Studio's formats are documented JSON, so no SDK is needed:

* **tasks** (Label Studio's import format): one task per open question, ``data`` holding the image URL, the
  class name and the ids that bring the answer back (``apis_run``, ``apis_question``, ``apis_step``,
  ``apis_ann_id``, ``apis_image_id``, ``apis_x``, ``apis_y``), and one prediction drawing the instance's box
  (``rectanglelabels``) and the point (``keypoint``). Label Studio stores positions as percentages of
  the original image size; the point is written at its pixel's centre, ``(x + 0.5) / width * 100``.
* **labelling config** (:data:`LABEL_CONFIG`): the image, the box, the point (a white disc with a dark ring) and,
  beside the image, a required single choice yes / no / unsure (hotkeys Y / N / U).
* **export** (Label Studio's "JSON" export): the tasks with their ``annotations``; each annotation's choice
  becomes one answer with ``completed_by`` as annotator and ``lead_time`` (seconds Label Studio measured)
  as its seconds.

:func:`read_answers` (a file) and :func:`store_answers` (tasks from Label Studio's API) check everything before
anything is stored, naming the task in every message: a task of another run, unknown or edited ids, a moved
point, a missing or unknown choice, one person answering the same question differently, a changed answer in a
step already trained on. The answers are then stored in one transaction. Reading the same answers again, at
any stage, stores nothing new; tasks without ``apis_question`` (image-only tasks made by syncing a storage) are
skipped and counted; JSON-MIN and CSV exports are refused with the export to use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from apis.data.coco import CocoDataset
from apis.data.ledger import utc_now
from apis.data.questions import (
    LABEL_NAMES,
    LABELS,
    NewResponse,
    Question,
    QuestionError,
    QuestionNotFound,
    QuestionQueue,
    check_annotator,
)
from apis.utils.io import atomic_write_json, atomic_write_text

# The image on the left, the question and the choices beside it (a laptop screen is wider than tall). The point is a
# white disc with a dark ring, which stands out on light and dark, red and blue objects alike; the box only says
# which object is meant, so the question names the object and not the box.
LABEL_CONFIG = """<View style="display: flex; align-items: flex-start; gap: 16px">
  <View style="flex: 3; min-width: 0">
    <Image name="image" value="$image" zoom="true" zoomControl="true"/>
  </View>
  <View style="flex: 1; min-width: 220px">
    <Header value="Is the pixel under the centre of the white dot part of the $category?"/>
    <Header size="6" value="The blue box only marks which $category is meant."/>
    <Choices name="answer" toName="image" choice="single-radio" required="true">
      <Choice value="yes" hotkey="y"/>
      <Choice value="no" hotkey="n"/>
      <Choice value="unsure" hotkey="u"/>
    </Choices>
  </View>
  <RectangleLabels name="box" toName="image">
    <Label value="box" background="#1e88e5"/>
  </RectangleLabels>
  <KeyPoint name="point" toName="image" fillColor="#ffffff" strokeColor="#111111" strokeWidth="3" opacity="1"/>
</View>
"""
POINT_SIZE_PERCENT = 2.0  # the drawn radius of the point in Label Studio, in percent of the shown image's width
MODEL_VERSION = "apis"  # every prediction's; a project pre-labels its tasks with the predictions of this version
DATA_IDS = ("apis_step", "apis_ann_id", "apis_image_id", "apis_x", "apis_y")


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`read_answers` did: tasks read, answers stored, answers the ledger already had (or had
    withdrawn), tasks without a (non-cancelled) annotation, tasks skipped for having no ``apis_question``."""

    tasks: int
    stored: int
    unanswered: int
    repeated: int
    without_lead_time: int
    skipped: int = 0
    withdrawn: int = 0

    def format(self) -> str:
        text = (f"{self.tasks:,} tasks read: {self.stored:,} answers stored, {self.repeated:,} already in the "
                f"ledger, {self.unanswered:,} tasks without an answer")
        if self.withdrawn:
            text += f"; {self.withdrawn:,} answers withdrawn from the ledger left out (change them in Label Studio)"
        if self.skipped:
            text += (f"; {self.skipped:,} tasks without apis_question skipped (not made by apis, e.g. image-only "
                     "tasks that syncing a storage created)")
        if self.without_lead_time:
            text += f"; {self.without_lead_time:,} answers had no lead_time and count as 0 s"
        return text


def export_tasks(queue: QuestionQueue, dataset: CocoDataset, step: int, out_path: str | Path,
                 image_url_prefix: str | None = None) -> tuple[int, Path]:
    """Write step ``step``'s open questions as Label Studio tasks to ``out_path`` and the labelling config
    next to it (``<stem>.label_config.xml``); returns the number of tasks and the config's path.

    ``image_url_prefix`` + the image's ``file_name`` is the URL Label Studio loads; the default,
    ``/data/local-files/?d=<image folder name>/``, fits Label Studio's local-files storage with its document
    root at the image folder's parent (docs/annotate.md).
    """
    if queue.is_merged(step):
        raise QuestionError(f"step {step} was merged and trained on already; there is nothing to ask")
    questions = queue.questions(step, open_only=True)
    if not questions and not queue.questions(step):
        raise QuestionError(f"{queue.path}: step {step} has no questions (run `apis run` to select them)")
    prefix = image_url_prefix if image_url_prefix is not None else f"/data/local-files/?d={dataset.image_root.name}/"
    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset.categories}
    run_id = queue.run_id
    tasks = [task_of(q, dataset, names, run_id, prefix) for q in questions]
    out_path = Path(out_path)
    atomic_write_json(out_path, tasks, indent=1)
    config_path = out_path.with_name(f"{out_path.stem}.label_config.xml")
    atomic_write_text(config_path, LABEL_CONFIG)
    return len(tasks), config_path


def task_of(question: Question, dataset: CocoDataset, names: dict, run_id: str, prefix: str) -> dict:
    """A question as a Label Studio task (the module docstring); ``names`` maps category ids to class names,
    ``prefix`` + the image's ``file_name`` is the image's URL."""
    record = dataset.image(question.image_id)
    instance = dataset.instance(question.ann_id)
    width, height = record.width, record.height
    x0, y0, x1, y1 = instance.bbox_xyxy
    region = {"to_name": "image", "original_width": width, "original_height": height, "image_rotation": 0}
    return {
        "data": {
            "image": prefix + quote(record.file_name), "category": names.get(instance.category_id, "object"),
            "apis_run": run_id, "apis_question": question.id, "apis_step": question.step,
            "apis_ann_id": question.ann_id, "apis_image_id": question.image_id,
            "apis_x": question.x, "apis_y": question.y,
        },
        "predictions": [{
            "model_version": MODEL_VERSION,
            "result": [
                {"id": f"box{question.id}", "from_name": "box", "type": "rectanglelabels", **region,
                 "value": {"x": 100 * x0 / width, "y": 100 * y0 / height, "width": 100 * (x1 - x0) / width,
                           "height": 100 * (y1 - y0) / height, "rotation": 0, "rectanglelabels": ["box"]}},
                {"id": f"point{question.id}", "from_name": "point", "type": "keypoint", **region,
                 "value": {"x": 100 * (question.x + 0.5) / width, "y": 100 * (question.y + 0.5) / height,
                           "width": POINT_SIZE_PERCENT}},
            ],
        }],
    }


def read_answers(queue: QuestionQueue, export_path: str | Path) -> ImportSummary:
    """Store the answers of a Label Studio JSON export file in the ledger, all or none (see
    :func:`store_answers`). Raises QuestionError naming the file when it is no full JSON export."""
    export_path = Path(export_path)
    try:
        text = export_path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise QuestionError(f"{export_path}: not a readable JSON file: {error}") from None
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as error:
        first_line = text.partition("\n")[0]
        if export_path.suffix.lower() in (".csv", ".tsv") or "apis_question" in first_line:
            raise QuestionError(f"{export_path}: a CSV or TSV export; use Label Studio's JSON export (Export -> JSON, "
                                "not JSON-MIN or CSV): only it has the tasks' data and each annotation") from None
        raise QuestionError(f"{export_path}: not a readable JSON file: {error}") from None
    if not isinstance(tasks, list):
        raise QuestionError(f"{export_path}: a Label Studio JSON export is a list of tasks, got "
                            f"{type(tasks).__name__}; use Label Studio's JSON export (Export -> JSON)")
    if tasks and all(isinstance(task, dict) and "apis_question" in task and "data" not in task for task in tasks):
        raise QuestionError(f"{export_path}: a JSON-MIN export; use Label Studio's JSON export (Export -> JSON, not "
                            "JSON-MIN): only it has the tasks' data and each annotation")
    return store_answers(queue, tasks, str(export_path))


def store_answers(queue: QuestionQueue, tasks: list, source: str, users: dict[int, str] | None = None
                  ) -> ImportSummary:
    """Store the answers of Label Studio tasks (as its JSON export or its API give them) in the ledger, all or
    none (see the module docstring); ``source`` names where they come from in messages, ``users`` maps Label
    Studio user ids to names (e-mails) for annotations that give ``completed_by`` as an id.

    Tasks without ``apis_question`` in their data (not made by apis) are skipped and counted. Raises
    QuestionError (or a subclass) naming the task when anything is wrong; nothing is stored then.
    """
    run_id = queue.run_id
    new: list[NewResponse] = []
    seen: dict[tuple[int, str], tuple[int, str]] = {}  # (question, annotator) -> (label, where)
    unanswered = without_lead_time = skipped = 0
    for index, task in enumerate(tasks):
        name = f"{source}: task {task.get('id', f'#{index}') if isinstance(task, dict) else f'#{index}'}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise QuestionError(f"{name}: not a Label Studio task (no data); use Label Studio's JSON export "
                                "(Export -> JSON)")
        if "apis_question" not in data:
            skipped += 1
            continue
        question = _question_of(queue, data, name, run_id)
        answers = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        unanswered += not answers
        for annotation in answers:
            where = f"{name} (question {question.id}), annotation {annotation.get('id', '?')}"
            label = _choice(annotation, where)
            _check_point(annotation, question, where)
            annotator = _annotator(annotation.get("completed_by"), users or {}, where)
            earlier = seen.get((question.id, annotator))
            if earlier is not None:
                if earlier[0] != label:
                    raise QuestionError(f"{where}: {annotator} answered {LABEL_NAMES[label]} here but "
                                        f"{LABEL_NAMES[earlier[0]]} "
                                        f"in {earlier[1]}; keep one answer per person and question")
                continue
            seen[(question.id, annotator)] = (label, where)
            lead_time = annotation.get("lead_time")
            if lead_time is None:
                without_lead_time += 1
                lead_time = 0.0
            new.append(NewResponse(question_id=question.id, annotator=annotator, label=label, seconds=lead_time,
                                   answered_at=_utc(annotation.get("created_at"), where), source="label-studio",
                                   where=where))
    counts = queue.import_responses(new)
    return ImportSummary(tasks=len(tasks), stored=len(counts.stored), unanswered=unanswered,
                         repeated=counts.repeated, without_lead_time=without_lead_time, skipped=skipped,
                         withdrawn=counts.withdrawn)


def _question_of(queue: QuestionQueue, data: dict, name: str, run_id: str) -> Question:
    """The ledger's question of a task's data, after checking the task's ids against it."""
    if data.get("apis_run") != run_id:
        raise QuestionError(f"{name}: comes from another run (apis_run {data.get('apis_run')!r}, this run's ledger "
                            f"is {run_id!r})")
    question_id = _integer(data["apis_question"], f"{name}: apis_question")
    try:
        question = queue.question(question_id)
    except QuestionNotFound:
        raise QuestionNotFound(f"{name}: question {question_id} is not in {queue.path}") from None
    expected = dict(zip(DATA_IDS, (question.step, question.ann_id, question.image_id, question.x, question.y)))
    edited = [key for key, value in expected.items() if data.get(key) != value]
    if edited:
        raise QuestionError(f"{name}: its data ({', '.join(f'{k}={data.get(k)!r}' for k in edited)}) do not match "
                            f"question {question.id} (step {question.step}, annotation {question.ann_id}, image "
                            f"{question.image_id}, point ({question.x}, {question.y})); was the task edited?")
    return question


def _choice(annotation: dict, where: str) -> int:
    choices = [c for item in annotation.get("result") or [] if isinstance(item, dict) and item.get("type") == "choices"
               for c in (item.get("value") or {}).get("choices") or []]
    if len(choices) != 1:
        raise QuestionError(f"{where}: expected one choice of yes / no / unsure, got {choices}")
    if not isinstance(choices[0], str) or choices[0].lower() not in LABELS:
        raise QuestionError(f"{where}: choice {choices[0]!r} is not one of yes, no, unsure")
    return LABELS[choices[0].lower()]


def _check_point(annotation: dict, question: Question, where: str) -> None:
    """A keypoint in the annotation must still be on the question's pixel: APIS asks about that pixel only."""
    for item in annotation.get("result") or []:
        if not isinstance(item, dict) or item.get("type") not in ("keypoint", "keypointlabels"):  # now, earlier
            continue
        value = item.get("value") or {}
        try:
            width, height = float(item["original_width"]), float(item["original_height"])
            x, y = math.floor(float(value["x"]) / 100 * width), math.floor(float(value["y"]) / 100 * height)
        except (KeyError, TypeError, ValueError):
            raise QuestionError(f"{where}: a keypoint without x, y, original_width, original_height") from None
        if (x, y) != (question.x, question.y):
            raise QuestionError(f"{where}: the point was moved from ({question.x}, {question.y}) to ({x}, {y}); the "
                                "question is about the original pixel: undo the move and answer again")


def _annotator(completed_by: object, users: dict[int, str], where: str) -> str:
    """Label Studio's ``completed_by``: a user id (its e-mail from ``users``, else ``label-studio-user-ID``) or a
    user object (its e-mail, else its username, else its first and last name, else its id)."""
    if isinstance(completed_by, dict):
        full_name = " ".join(str(completed_by.get(key) or "") for key in ("first_name", "last_name")).strip()
        completed_by = (completed_by.get("email") or completed_by.get("username") or full_name
                        or completed_by.get("id"))
    if isinstance(completed_by, int) and not isinstance(completed_by, bool):
        completed_by = users.get(completed_by, f"label-studio-user-{completed_by}")
    if isinstance(completed_by, str):
        try:
            return check_annotator(completed_by)
        except QuestionError as error:
            raise QuestionError(f"{where}: {error}") from None
    raise QuestionError(f"{where}: completed_by {completed_by!r} names no annotator")


def _utc(stamp: object, where: str) -> str:
    if stamp is None:
        return utc_now()
    try:
        parsed = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise QuestionError(f"{where}: created_at {stamp!r} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat()


def _integer(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise QuestionError(f"{where} {value!r} is not an integer")
    return value
