"""Atomic file writes: a reader never sees a half-written file, a crash never loses the old one."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from apis.utils.errors import ApisError


def read_json(path: str | Path, error: type[Exception]) -> Any:
    """Parse the JSON file ``path``; a missing, unreadable or malformed file raises ``error`` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from exc


class WriteFailed(ApisError, OSError):
    """A file could not be written (a full disk, a quota, a read-only folder); the message names it and says what
    was kept."""


TEMPORARY_GLOB = ".*.tmp"
"""The names of :func:`atomic_write_bytes`'s temporary files (``.NAME.RANDOM.tmp``)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and ``os.replace``.

    The file gets the mode an ordinary ``open`` would give it (0666 less the umask), not ``mkstemp``'s 0600.

    Raises:
        WriteFailed: the system refused the write (a full disk, ...): the message names ``path`` and says that its
            previous version, if any, is kept as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _write_failed(path, error) from error
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _write_failed(path, error) from error
        raise


def _write_failed(path: Path, error: OSError) -> WriteFailed:
    kept = "its previous version is kept unchanged" if path.is_file() else "nothing was written there"
    return WriteFailed(f"{path}: could not be written ({error.strerror or error}); {kept}")


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_write_bytes` left in ``folder``; returns them.

    Call it only while holding the folder's lock (:mod:`apis.utils.lock`): another writer's temporary
    would be taken from under it.
    """
    removed = sorted(Path(folder).glob(TEMPORARY_GLOB))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def strict_json(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by ``None`` (strict JSON has no such numbers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: strict_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(value) for value in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as strict JSON: undefined metrics (NaN) become ``null``."""
    atomic_write_text(path, json.dumps(strict_json(obj), indent=indent, allow_nan=False))


def atomic_save_png(figure, path: str | Path, dpi: int) -> Path:
    """Save a matplotlib ``figure`` as a PNG at ``path`` atomically (rendered in memory first); returns the path."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
