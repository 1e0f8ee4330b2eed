"""Checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

A checkpoint is a ``torch.save`` dict::

    model        state_dict of the bare model (no DDP "module." prefix)
    optimizer    SGD state (momentum buffers)          \
    scheduler    LR scheduler state                     |  absent from weights-only files
    grad_scaler  AMP GradScaler state                   |
    rng          [per-rank RNG states of python, numpy, torch (and CUDA)]  /
    iteration    iterations completed
    config       the resolved ExperimentConfig as a dict

``last_checkpoint`` in the output folder names the newest checkpoint file; a run started again in
the same folder resumes from it. Files load with ``torch.load(weights_only=True)``: only tensors and
plain Python values are stored.
"""

from __future__ import annotations

import io
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from apis.utils.errors import ApisError
from apis.utils.io import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
FINAL_CHECKPOINT = "model_final.pth"


class CheckpointError(ApisError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message names the file."""


_PERIODIC = re.compile(r"model_(\d{7})\.pth")


def checkpoint_name(iteration: int) -> str:
    return f"model_{iteration:07d}.pth"


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete the periodic checkpoints (``model_NNNNNNN.pth``) of ``output_dir`` except the ``keep`` newest;
    ``model_final.pth`` and other files are never touched. Returns the deleted paths.

    Resuming needs only the newest checkpoint; a loop of many steps would otherwise fill a disk with every
    step's periodic checkpoints (about 100 MB each at R-18, 270 MB at R-50, optimizer state included).
    """
    periodic = sorted((int(match.group(1)), path) for path in Path(output_dir).iterdir()
                      if (match := _PERIODIC.fullmatch(path.name)))
    doomed = [path for _, path in periodic[:max(len(periodic) - keep, 0)]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator a training step may use, in loadable plain types."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state` (CUDA states only when this machine has as many GPUs)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (a crash leaves the previous file intact)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def write_last_checkpoint(output_dir: str | Path, checkpoint: str | Path) -> None:
    """Point ``output_dir/last_checkpoint`` at ``checkpoint`` (a file in that folder)."""
    atomic_write_text(Path(output_dir) / LAST_CHECKPOINT, Path(checkpoint).name + "\n")


def find_last_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint ``last_checkpoint`` names, or ``None`` when the folder has no pointer."""
    pointer = Path(output_dir) / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = Path(output_dir) / name
    if not name or not path.is_file():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a file in {output_dir}")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # PyTorch's message runs to several lines (and suggests unsafe loading): its first
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a readable APIS checkpoint (damaged or cut short? {reason})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not an APIS checkpoint (no 'model' entry)")
    return state


def load_resumable_checkpoint(output_dir: str | Path, map_location: str | torch.device = "cpu"
                              ) -> tuple[Path, dict[str, Any]] | None:
    """``(path, state)`` of the checkpoint a training in ``output_dir`` resumes from, None when there is none.

    That is the one ``last_checkpoint`` names; if it is missing or does not read whole (a damaged disk, a copy cut
    short), the newest older periodic checkpoint that does, with a warning naming both.

    Raises:
        CheckpointError: no checkpoint of the folder reads whole; the message names the damaged one.
    """
    output_dir = Path(output_dir)
    try:
        last = find_last_checkpoint(output_dir)
    except CheckpointError as error:
        last, problems = None, [str(error)]
    else:
        if last is None:
            return None
        problems = []
    newest_first = sorted(((int(match.group(1)), path) for path in output_dir.iterdir()
                           if (match := _PERIODIC.fullmatch(path.name))), reverse=True)
    below = _PERIODIC.fullmatch(last.name) if last is not None else None
    candidates = [last] if last is not None else []
    candidates += [path for iteration, path in newest_first if below is None or iteration < int(below.group(1))]
    for path in candidates:
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        if problems:
            logger.warning("%s; resuming from %s instead, the newest earlier checkpoint that reads whole",
                           problems[0], path.name)
        return path, state
    raise CheckpointError(f"{problems[0]}; no earlier checkpoint in {output_dir} reads whole. Restore it from a "
                          "backup, or move the folder aside to train again from the start")


def load_model_weights(model: nn.Module, checkpoint: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Copy a checkpoint's model weights into ``model``; returns the checkpoint dict.

    Raises:
        CheckpointError: missing, unexpected or differently shaped parameters, listed by name.
    """
    source = "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    own = model.state_dict()
    weights = state["model"]
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    reshaped = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or reshaped:
        details = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                   for label, names in (("missing", missing), ("unexpected", unexpected),
                                        ("different shape", reshaped)) if names]
        raise CheckpointError(f"{source} does not fit the model ({'; '.join(details)}); "
                              "was it trained with another model config (depth, num_classes, channels)?")
    model.load_state_dict(weights)
    return state
