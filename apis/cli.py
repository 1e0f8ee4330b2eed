"""The ``apis`` command line. Each subcommand parses its arguments and calls the Python API.

Imports of the heavy modules happen inside the handlers, so ``apis --help`` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from apis import __version__

# `apis run` exit statuses: 0 done, 2 bad input, 3 stopped to wait for people's answers, 130 interrupted.
EXIT_BAD_INPUT = 2
EXIT_WAITING_FOR_ANSWERS = 3


def _cmd_data_synth(args: argparse.Namespace) -> None:
    from apis.data.synth import make_synthetic_dataset

    summary = make_synthetic_dataset(args.out, num_images=args.images, size=args.size, seed=args.seed,
                                     val_fraction=args.val_fraction, overwrite=args.overwrite,
                                     family=args.family)
    print(summary.format())


def _cmd_eval(args: argparse.Namespace) -> None:
    from apis.evaluation.coco_eval import evaluate, format_metrics
    from apis.utils.io import atomic_write_json

    if args.checkpoint:
        from apis.config_loading import load_config
        from apis.engine.checkpoint import load_checkpoint
        from apis.engine.inference import checkpoint_config, evaluate_checkpoint

        # Without --config, the config the checkpoint stores (it is trained with it), overrides on top.
        state = load_checkpoint(args.checkpoint)
        cfg = load_config(args.config, args.overrides) if args.config else checkpoint_config(state, args.overrides)
        metrics = evaluate_checkpoint(state, cfg, gt_json=args.gt or cfg.data.val_json, results_path=args.results)
    else:
        if not (args.gt and args.results):
            from apis.config import ConfigError

            raise ConfigError("apis eval needs --gt and --results (or --checkpoint)")
        metrics = evaluate(args.gt, args.results, iou_types=tuple(args.iou_types), backend=args.backend)
    print(format_metrics(metrics))
    if args.out:
        atomic_write_json(args.out, metrics, indent=2)


def _cmd_train(args: argparse.Namespace) -> None:
    from apis.config_loading import load_config
    from apis.config_use import check_overrides_used
    from apis.engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    check_overrides_used("train", cfg, args.overrides)
    final = train(cfg, init_weights=args.init_weights)
    print(f"final checkpoint: {final}")


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from apis.config_loading import load_config
    from apis.engine.pretrain import pretrain

    out = pretrain(load_config(args.config, args.overrides), args.out, half=args.half)
    print(f"wrote {out} (use it with model.backbone_weights={out})")


def _cmd_run(args: argparse.Namespace) -> None:
    from apis.config_loading import load_config
    from apis.config_use import check_overrides_used
    from apis.engine.distributed import context_from_env
    from apis.loop.run import run_active_loop

    cfg = load_config(args.config, args.overrides)
    check_overrides_used("run", cfg, args.overrides)
    rows = run_active_loop(cfg)  # one process, or every rank under torchrun
    for row in rows if context_from_env().is_main else ():
        ap = "undefined" if row["mask_AP"] is None else f"{row['mask_AP']:.2f}"
        bought = f"{row['masks']} masks" if "masks" in row else f"{row['points_per_instance']:.2f} points/instance"
        print(f"P{row['step']}: mask AP {ap}  ({bought}, {row['annotation_seconds'] / 3600:.2f} annotation h)")


def _cmd_compare(args: argparse.Namespace) -> None:
    from apis.active.compare import compare_runs

    out = args.out or Path(args.runs[0]).parent
    print(compare_runs(args.runs, out))
    print(f"wrote {Path(out) / 'curves.png'} and {Path(out) / 'comparison.md'}")


def _cmd_show(args: argparse.Namespace) -> None:
    from apis.report.gallery import show_step

    paths = show_step(args.run_dir, args.step, args.out, images=args.images,
                      instances_per_image=args.instances, device=args.device)
    print("\n".join(f"wrote {path}" for path in paths))


def _cmd_report(args: argparse.Namespace) -> None:
    from apis.report.html import write_report

    out = write_report(args.runs, args.out, supervision=args.supervision, gallery_step=args.gallery_step,
                       gallery_images=args.gallery_images, device=args.device,
                       mask_quality_images=args.mask_quality_images)
    print(f"wrote {out}")


def _cmd_export_points(args: argparse.Namespace) -> None:
    from apis.config_loading import load_run_config
    from apis.data.ledger import LedgerError, PointLedger

    run_dir = Path(args.run_dir)
    cfg = load_run_config(run_dir / "config.yaml")
    with PointLedger(run_dir / "ledger.sqlite", read_only=True) as ledger:  # never creates or changes one
        step = ledger.last_step() if args.step is None else args.step
        if step is None:
            raise LedgerError(f"{run_dir}: the ledger holds no answers yet")
        out = args.out or run_dir / f"points_step{step:03d}.json"
        count = ledger.export_pointsup(cfg.data.train_json, out, step)
    print(f"wrote {out}: points of {count} annotations known at step {step}")


def _cmd_export_masks(args: argparse.Namespace) -> None:
    from apis.loop.mask_export import export_run_masks, masks_to_coco, open_run_step, summarise, write_coco

    run = open_run_step(args.run_dir, args.step)  # everything is checked before the model runs
    if args.refinement is not None:
        model = dataclasses.replace(run.cfg.model, refinement=dataclasses.replace(run.cfg.model.refinement,
                                                                                  method=args.refinement))
        run = dataclasses.replace(run, cfg=dataclasses.replace(run.cfg, model=model))
    if args.format == "label-studio":
        from apis.interop.label_studio_masks import brush_encoder

        brush_encoder()  # the converter is there, before the model runs
    exported = export_run_masks(run, constraint=args.constraint, device=args.device)
    coco = masks_to_coco(run.train_set, exported)
    print(f"step {run.step}: {summarise(exported, args.constraint)}")
    if args.format == "coco":
        write_coco(args.out, coco)
        print(f"wrote {args.out}: a COCO instance file; sort annotations by apis_quality to review the worst first")
    else:
        from apis.interop.label_studio_masks import write_preannotations

        count, config_path = write_preannotations(coco, run.train_set, args.out, args.image_url_prefix,
                                                  model_version=f"apis {run.run_dir.name} step {run.step}")
        print(f"wrote {args.out}: {count} Label Studio tasks with the masks as predictions; labelling config: "
              f"{config_path}")


def _cmd_predict(args: argparse.Namespace) -> None:
    from apis.engine.predictor import ImageFailure, Predictor, image_files, predictions_to_coco, read_image
    from apis.utils.io import atomic_write_json

    image_files(args.paths)  # a path that names nothing fails before the model loads
    predictor = Predictor(args.checkpoint, config=args.config, overrides=args.overrides, device=args.device,
                          score_threshold=args.score_threshold, batch_size=args.batch_size)
    if args.vis is not None:
        from apis.report.overlay import write_overlay

        args.vis.mkdir(parents=True, exist_ok=True)
    predictions, failures = [], []
    for found in predictor.predict_files(args.paths):
        if isinstance(found, ImageFailure):
            print(f"error: {found.reason}", file=sys.stderr)
            failures.append(found)
            continue
        predictions.append(found)
        if args.vis is not None:
            write_overlay(read_image(found.path), found, predictor.categories,
                          args.vis / f"{len(predictions):05d}_{found.path.stem}.png")
    coco = predictions_to_coco(predictions, predictor.categories)
    atomic_write_json(args.out, coco)
    print(f"wrote {args.out}: {len(coco['annotations']):,} detections (score >= {args.score_threshold}) on "
          f"{len(predictions):,} images" + (f"; overlays in {args.vis}" if args.vis is not None else ""))
    if failures:
        print(f"error: {len(failures)} image(s) could not be predicted: "
              f"{', '.join(str(f.path) for f in failures)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


# ---- people answering (oracle.kind=human; docs/annotate.md) ------------------------------------------
def _cmd_status(args: argparse.Namespace) -> None:
    from apis.config import ConfigError
    from apis.data.questions import QuestionQueue, format_status
    from apis.loop.run_dir import RunDirectory

    run = RunDirectory(args.run_dir)
    if not run.ledger_path.is_file():
        raise ConfigError(f"{run.root}: no ledger.sqlite (is this a run directory?)")
    # reading writes nothing, anywhere; totals only: no full-file scan
    with QuestionQueue(run.ledger_path, read_only=True, check_integrity=False) as queue:
        summaries = queue.summaries()
    trained = {s.step for s in summaries if run.is_done(s.step)}
    print(f"{run.root}:")
    print(format_status(summaries, trained))


def _cmd_annotate(args: argparse.Namespace) -> None:
    from apis.annotate.server import TOKEN_ENV, Access, AnnotationApp, check_serve_options, serve
    from apis.config import ConfigError
    from apis.data.questions import QuestionQueue
    from apis.loop.human import open_human_run

    check_serve_options(args.port, args.lease_seconds, args.answers_per_question)
    run = open_human_run(args.run_dir, writing=True)
    if args.add_annotator:
        with QuestionQueue(run.ledger_path) as queue:
            tokens = queue.add_annotator_tokens(args.add_annotator)
        port = args.port or "PORT"  # --port 0: the port the server will print
        for name, token in tokens.items():  # shown this once: the ledger keeps only its hash
            print(f"{name}: http://{args.host}:{port}/?token={token}")
        print("Each token is shown only now; --add-annotator NAME again replaces a lost one.")
        return
    with QuestionQueue(run.ledger_path) as queue:
        named = queue.named_annotators()
    if args.named_only and not named:
        raise ConfigError(f"{run.run_dir}: no named annotators yet; add them with --add-annotator NAME")
    app = AnnotationApp(run.ledger_path, run.train_set, Access.create(os.environ.get(TOKEN_ENV), args.named_only),
                        lease_s=args.lease_seconds, answers_per_question=args.answers_per_question,
                        host=args.host, port=args.port)
    serve(app, named)


def _cmd_export_tasks(args: argparse.Namespace) -> None:
    from apis.data.questions import QuestionError, QuestionQueue
    from apis.interop.label_studio import export_tasks
    from apis.loop.human import open_human_run

    run = open_human_run(args.run_dir)
    with QuestionQueue(run.ledger_path, read_only=True) as queue:
        step = queue.progress().step if args.step is None else args.step
        if step is None:
            raise QuestionError(f"{run.run_dir}: no questions yet; run `apis run` first")
        count, config_path = export_tasks(queue, run.train_set, step, args.out, args.image_url_prefix)
    print(f"wrote {args.out}: {count} Label Studio tasks (step {step}); labelling config: {config_path}")


def _cmd_import_answers(args: argparse.Namespace) -> None:
    from apis.data.questions import QuestionQueue
    from apis.interop.label_studio import read_answers
    from apis.loop.human import open_human_run

    run = open_human_run(args.run_dir, writing=True)
    with QuestionQueue(run.ledger_path) as queue:
        if args.answers_per_question is not None:
            queue.set_answers_wanted(args.answers_per_question)
        summary = read_answers(queue, args.export)
        print(summary.format())
        print(_latest_step_status(queue))


def _latest_step_status(queue) -> str:
    """The ``apis status`` line of the latest step with questions."""
    from apis.data.questions import format_status

    summaries = [s for s in queue.summaries() if s.step == queue.progress().step]
    return format_status(summaries, trained=set()).splitlines()[0]


def _cmd_label_studio_push(args: argparse.Namespace) -> None:
    from apis.data.questions import QuestionQueue
    from apis.interop.label_studio_api import push
    from apis.loop.human import open_human_run

    redundancy = args.answers_per_question is not None
    run = open_human_run(args.run_dir, writing=redundancy)
    with QuestionQueue(run.ledger_path, read_only=not redundancy) as queue:  # else pushing changes nothing in the run
        if redundancy:
            queue.set_answers_wanted(args.answers_per_question)
        summary = push(run, queue, args.url, args.token, args.project, args.image_url_prefix, args.document_root)
    print(summary.format(args.url))


def _cmd_label_studio_pull(args: argparse.Namespace) -> None:
    from apis.data.questions import QuestionQueue
    from apis.interop.label_studio_api import pull, watch
    from apis.loop.human import open_human_run

    run = open_human_run(args.run_dir, writing=True)
    with QuestionQueue(run.ledger_path) as queue:
        if args.watch:
            step = watch(run, queue, args.url, args.token, args.project, interval_s=args.interval)
            print(_latest_step_status(queue))
            print(f"step {step}: every question has its answers; run the same `apis run` command again")
            return
        print(pull(run, queue, args.url, args.token, args.project).format())
        print(_latest_step_status(queue))


def _cmd_answers_withdraw(args: argparse.Namespace) -> None:
    from apis.data.questions import LABEL_NAMES, QuestionQueue
    from apis.loop.human import open_human_run

    run = open_human_run(args.run_dir, writing=True)
    with QuestionQueue(run.ledger_path) as queue:
        withdrawn = queue.withdraw(args.question, args.annotator)
        for response in withdrawn:
            print(f"withdrew {response.annotator}'s answer {LABEL_NAMES[response.label]} to question "
                  f"{response.question_id} ({response.source}, {response.answered_at})")
        print(_latest_step_status(queue))


def _cmd_demo(args: argparse.Namespace) -> None:
    from apis.demo import run_demo

    run_demo(args.out, quick=args.quick, steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apis", description="Active pointly-supervised instance segmentation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--version", action="version", version=f"apis {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write the built-in synthetic COCO dataset")
    synth.add_argument("out", type=Path)
    synth.add_argument("--images", type=int, default=200)
    synth.add_argument("--size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--val-fraction", type=float, default=0.25)
    synth.add_argument("--overwrite", action="store_true")
    synth.add_argument("--family", choices=("target", "source"), default="target",
                       help="target: the demo's shapes; source: other shapes and hues, for `apis pretrain`")
    synth.set_defaults(handler=_cmd_data_synth)

    ev = sub.add_parser("eval", help="COCO mask/box AP of a results json or of a checkpoint")
    ev.add_argument("--gt", help="COCO ground-truth json (default for --checkpoint: data.val_json)")
    ev.add_argument("--results", help="COCO results json (written there when evaluating a checkpoint)")
    ev.add_argument("--checkpoint", help="evaluate this model checkpoint instead of a results file")
    ev.add_argument("--config", help="config of the checkpoint's model (default: the one the checkpoint stores)")
    ev.add_argument("--backend", choices=("faster", "pycocotools"), default="faster")
    ev.add_argument("--iou-types", nargs="+", choices=("segm", "bbox"), default=["segm", "bbox"])
    ev.add_argument("--out", help="write the metrics as json here")
    ev.add_argument("overrides", nargs="*", help="config key=value overrides (with --checkpoint)")
    ev.set_defaults(handler=_cmd_eval)

    tr = sub.add_parser("train", help="train CondInst (or Mask R-CNN, model.arch=mask_rcnn) from a config")
    tr.add_argument("config")
    tr.add_argument("overrides", nargs="*", help="key=value, e.g. solver.max_iter=100")
    tr.add_argument("--init-weights", help="fine-tune from this checkpoint's weights (fresh optimiser and schedule)")
    tr.set_defaults(handler=_cmd_train)
    pre = sub.add_parser("pretrain", help="train backbone + FPN with full masks on source data, for "
                                          "model.backbone_weights")
    pre.add_argument("config", help="a config whose data is the SOURCE dataset (categories not in the target)")
    pre.add_argument("overrides", nargs="*", help="key=value, e.g. data.train_json=... solver.max_iter=600")
    pre.add_argument("--out", type=Path, required=True, help="the backbone file to write (.pth)")
    pre.add_argument("--half", action="store_true", help="store the weights as float16 (half the file size)")
    pre.set_defaults(handler=_cmd_pretrain)
    run = sub.add_parser("run", help="run or resume the active-learning loop",
                         epilog="exit status: 0 done; 2 bad input; 3 stopped because a step's questions wait for "
                                "people's answers (oracle.kind=human: answer them with `apis annotate RUN_DIR`, "
                                "then run the same command again); 130 interrupted")
    run.add_argument("config")
    run.add_argument("overrides", nargs="*", help="key=value, e.g. selection.metric=random loop.steps=3")
    run.set_defaults(handler=_cmd_run)

    cmp = sub.add_parser("compare", help="curves.png and a markdown table over finished runs")
    cmp.add_argument("runs", nargs="+", help="run directories")
    cmp.add_argument("--out", type=Path, help="output folder (default: the first run's parent)")
    cmp.set_defaults(handler=_cmd_compare)

    show = sub.add_parser("show", help="per instance of a step: GT, prediction before, uncertainty, the chosen "
                                        "point and its answer, prediction after (PNGs)")
    show.add_argument("run_dir")
    show.add_argument("--step", type=int, required=True, help="a step that selected points (1 or later)")
    show.add_argument("--images", type=int, default=4, help="the first N images of the step's selection")
    show.add_argument("--instances", type=int, default=8, help="at most this many instances per image")
    show.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/show/step_NNN)")
    show.add_argument("--device", help="default: the run's config (device)")
    show.set_defaults(handler=_cmd_show)

    rep = sub.add_parser("report", help="one self-contained HTML page over finished runs: curves, tables, point "
                                        "statistics, pictures")
    rep.add_argument("runs", nargs="+", help="run directories")
    rep.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    rep.add_argument("--supervision", type=Path,
                     help="a bench/bench_supervision.py --out folder: adds its supervision table")
    rep.add_argument("--gallery-step", type=int, default=1, help="the step the pictures show (default 1)")
    rep.add_argument("--gallery-images", type=int, default=2, help="images per run in the pictures (0: none)")
    rep.add_argument("--mask-quality-images", type=int, default=50,
                     help="training images the training-mask quality curve scores per run (0: all; -1: no curve)")
    rep.add_argument("--device", help="for the pictures' predictions (default: each run's config)")
    rep.set_defaults(handler=_cmd_report)

    exp = sub.add_parser("export-points", help="points known at a step as a detectron2 PointSup json")
    exp.add_argument("run_dir")
    exp.add_argument("--step", type=int, help="default: the last step with answers")
    exp.add_argument("--out", type=Path, help="default: RUN_DIR/points_stepNNN.json")
    exp.set_defaults(handler=_cmd_export_points)

    exm = sub.add_parser("export-masks", help="a mask for every training instance of a run's step (COCO, or Label "
                                               "Studio pre-annotations to review)")
    exm.add_argument("run_dir")
    exm.add_argument("--out", type=Path, required=True, help="the file to write")
    exm.add_argument("--step", type=int, help="default: the last finished step")
    exm.add_argument("--format", choices=("coco", "label-studio"), default="coco")
    exm.add_argument("--constraint", choices=("local", "threshold", "none"), default="local",
                     help="how a mask is made to agree with the instance's answered points (docs/design.md, "
                          "\"Exporting masks\"); none: the model's mask as it is")
    exm.add_argument("--image-url-prefix", help="with --format label-studio: prefix of the image URLs (default: "
                                                "Label Studio local files)")
    exm.add_argument("--device", help="default: the run's config (device)")
    exm.add_argument("--refinement", choices=("none", "colour_crf"),
                     help="refine the model's masks on the image before the points' correction (docs/design.md, "
                          "\"Sharp masks\"); default: the run's config (model.refinement.method)")
    exm.set_defaults(handler=_cmd_export_masks)

    pre_ = sub.add_parser("predict", help="run a checkpoint on new images (no annotations needed): COCO json + "
                                          "overlay pictures")
    pre_.add_argument("checkpoint", help="a model_final.pth of `apis train` or of a run's step")
    pre_.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    pre_.add_argument("--out", type=Path, required=True, help="the COCO json to write")
    pre_.add_argument("--vis", type=Path, help="also write one overlay PNG per image into this folder")
    pre_.add_argument("--score-threshold", type=float, default=0.5, help="keep detections scoring at least this "
                                                                         "(default 0.5)")
    pre_.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: the checkpoint's config)")
    pre_.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    pre_.add_argument("--config", help="config of the checkpoint's model (default: the one the checkpoint stores)")
    pre_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. --set data.min_size_test=800 (repeatable)")
    pre_.set_defaults(handler=_cmd_predict)

    status = sub.add_parser("status", help="per step: questions, answers, waiting, annotators, measured seconds")
    status.add_argument("run_dir")
    status.set_defaults(handler=_cmd_status)

    ann = sub.add_parser("annotate", help="web page on which people answer a run's questions (oracle.kind=human)")
    ann.add_argument("run_dir")
    ann.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    ann.add_argument("--port", type=int, default=8765, help="0: any free port")
    ann.add_argument("--add-annotator", action="append", default=[], metavar="NAME",
                     help="give NAME their own random token (repeat per person), print their URL and stop")
    ann.add_argument("--named-only", action="store_true",
                     help="no shared URL with a login form: only the annotators added with --add-annotator")
    ann.add_argument("--answers-per-question", type=int, help="answers each question needs (redundancy; default 1)")
    ann.add_argument("--lease-seconds", type=float, default=300.0,
                     help="how long a question stays with the annotator it was shown to")
    ann.set_defaults(handler=_cmd_annotate)

    ext = sub.add_parser("export-tasks", help="a step's open questions as Label Studio tasks + labelling config")
    ext.add_argument("run_dir")
    ext.add_argument("out", type=Path, help="tasks json to write (the config goes next to it)")
    ext.add_argument("--step", type=int, help="default: the latest step with questions")
    ext.add_argument("--format", choices=("label-studio",), default="label-studio")
    ext.add_argument("--image-url-prefix", help="prefix of the image URLs (default: Label Studio local files)")
    ext.set_defaults(handler=_cmd_export_tasks)

    imp = sub.add_parser("import-answers", help="answers from a Label Studio JSON export into the ledger")
    imp.add_argument("run_dir")
    imp.add_argument("export", type=Path)
    imp.add_argument("--answers-per-question", type=int, help="answers each question needs (redundancy)")
    imp.set_defaults(handler=_cmd_import_answers)

    studio = sub.add_parser("label-studio", help="a run's questions in a Label Studio project, through its API "
                                                 "(oracle.kind=human)").add_subparsers(dest="studio_command",
                                                                                       required=True)
    push_cmd = studio.add_parser("push", help="add the current step's open questions to a Label Studio project as "
                                              "tasks (creating the project; pushing twice adds nothing)")
    pull_cmd = studio.add_parser("pull", help="store the answers given in the run's Label Studio project")
    for cmd in (push_cmd, pull_cmd):
        cmd.add_argument("run_dir")
        cmd.add_argument("--url", required=True, help="Label Studio's address, e.g. http://localhost:8080")
        cmd.add_argument("--token", default=os.environ.get("LABEL_STUDIO_API_KEY"),
                         help="Label Studio access token (Account & Settings; default: $LABEL_STUDIO_API_KEY, which "
                              "keeps it out of `ps`)")
        cmd.add_argument("--project", help="the project's title (default: apis, the run folder's name and the run id)")
    push_cmd.add_argument("--image-url-prefix", help="images served elsewhere: prefix of their URLs (default: Label "
                                                     "Studio's local files, through a storage that is never synced)")
    push_cmd.add_argument("--document-root", type=Path, help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT "
                                                             "(default: the image folder's parent)")
    push_cmd.add_argument("--answers-per-question", type=int, help="answers each question needs (redundancy; stored "
                                                                   "in the run, and Label Studio's maximum "
                                                                   "annotations per task)")
    push_cmd.set_defaults(handler=_cmd_label_studio_push)
    pull_cmd.add_argument("--watch", action="store_true", help="pull again every --interval seconds until every "
                                                               "question of the step has its answers, then exit 0")
    pull_cmd.add_argument("--interval", type=float, default=30.0, help="seconds between pulls with --watch (1-3600; "
                                                                       "default 30)")
    pull_cmd.set_defaults(handler=_cmd_label_studio_pull)

    answers = sub.add_parser("answers", help="correct the answers in a run's ledger").add_subparsers(
        dest="answers_command", required=True)
    withdraw = answers.add_parser("withdraw", help="take back an answer (any source) in a step not trained on yet; "
                                                   "the question wants an answer again")
    withdraw.add_argument("run_dir")
    withdraw.add_argument("--question", type=int, required=True, help="the question's id (apis_question in Label "
                                                                      "Studio, the page's question number)")
    withdraw.add_argument("--annotator", help="whose answer (needed when several people answered the question)")
    withdraw.set_defaults(handler=_cmd_answers_withdraw)

    demo = sub.add_parser("demo", help="built-in data -> random vs entropy for 3 steps -> report")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--quick", action="store_true", help="a much shorter schedule (smoke test)")
    demo.add_argument("--steps", type=int, default=3)
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    # PyTorch's OpenMP threads spin while waiting by default; on a small shared CPU that makes training 5-40x
    # slower under load (measured on a 2-core machine). Set before any handler imports torch; an explicit
    # OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from apis.data.questions import AnswersPending
    from apis.utils.errors import ApisError

    try:
        args.handler(args)
    except AnswersPending as exc:  # oracle.kind=human: the run waits for people (docs/annotate.md)
        print(exc)
        raise SystemExit(EXIT_WAITING_FOR_ANSWERS) from None
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except (ApisError, OSError) as exc:  # bad input, or a file the system refused: the message names it
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except Exception as exc:  # a bug: say so, and keep the traceback for --debug
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (an APIS bug; run again with --debug and report the "
              "traceback)", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()


