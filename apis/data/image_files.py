"""Image files checked whole, once: decoded fully (several at a time), remembered by path, size and mtime.

A truncated or corrupt image must fail when its dataset is loaded, naming the file, not in the middle of
training. Reading a header or looking for an end marker is not enough: a PNG damaged in the middle keeps both,
and so does a JPEG cut short that was given its end marker back. So every image is decoded whole, in threads
(Pillow's decoders release the GIL), and what was learnt (its size and pixel mode) is kept in a cache keyed by
the file's path, byte size and modification time, so that a file is decoded again only when it changes.

A JPEG cut short and given its end marker back decodes without an error: libjpeg fills the blocks it has no data
for with zero coefficients, a uniform grey of exactly 128. So a JPEG whose last block is that grey is decoded a
second time with bytes inserted before the end marker that stopped the decoder: where the data really ended
there, the decoder reads the inserted bytes as image data and the pixels change; a whole file ignores them.
(A cut inside the last block's own few bytes is not caught; it would change at most that block.)

The cache lives in ``$APIS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/apis``, else ``~/.cache/apis``) as
``image_checks.sqlite``; where it cannot be written, images are checked every time instead.
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

CACHE_ENV = "APIS_CACHE_DIR"
_JPEG_END = b"\xff\xd9"
_JPEG_SCAN = b"\xff\xda"
_ZERO_FILL = 128  # the value of a JPEG block decoded from zero coefficients (the level shift)
_PROBE = bytes(range(1, 255)) * 2  # inserted before a JPEG's end marker: never 0xFF, so never a marker


@dataclass(frozen=True)
class ImageFacts:
    """What a whole decode of an image file established: its size in pixels and its pixel mode."""

    width: int
    height: int
    mode: str


class DamagedImage(Exception):
    """The file is not a whole, decodable image; the message says what is wrong (without the path)."""


def check_image_files(paths: Sequence[Path], whole: Sequence[bool] | None = None, workers: int | None = None
                      ) -> list[ImageFacts | Exception]:
    """Check each of ``paths``; per path, in order, its :class:`ImageFacts` or the exception it failed with
    (:class:`DamagedImage`, or an ``OSError`` such as ``FileNotFoundError``).

    A path with ``whole`` true (every path when ``whole`` is None) is decoded whole unless the cache knows it,
    unchanged; the others (images a run leaves out, ``data.max_train_images``) only have their header read.
    ``workers``: decoding threads (default: one per CPU, at most 16).
    """
    whole = [True] * len(paths) if whole is None else list(whole)
    cache = _Cache.open()
    keys = [_key(path) for path in paths]
    known = cache.lookup(keys) if cache else {}
    todo = [i for i, key in enumerate(keys) if key is None or key not in known]
    results: list[ImageFacts | Exception] = [known.get(key) for key in keys]
    with ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool:
        outcomes = pool.map(_check_outcome, [paths[i] for i in todo], [whole[i] for i in todo])
        for i, outcome in zip(todo, outcomes, strict=True):
            results[i] = outcome
    if cache:
        cache.store([(keys[i], results[i]) for i in todo
                     if keys[i] and whole[i] and isinstance(results[i], ImageFacts)])
        cache.close()
    return results


def decode_whole(path: Path) -> ImageFacts:
    """Decode ``path`` completely; :class:`DamagedImage` when it is truncated or corrupt."""
    try:
        with Image.open(path) as image:
            image.load()
            facts = ImageFacts(image.width, image.height, image.mode)
            if image.format == "JPEG" and _ends_in_zero_fill(image):
                _check_jpeg_data_reaches_its_end(path, image)
    except (FileNotFoundError, DamagedImage):
        raise
    except Exception as error:  # anything a decoder raises about the bytes it was given
        raise DamagedImage(str(error) or type(error).__name__) from error
    return facts


def read_header(path: Path) -> ImageFacts:
    """The size and mode ``path``'s header states (nothing decoded); :class:`DamagedImage` when it has none."""
    try:
        with Image.open(path) as image:
            return ImageFacts(image.width, image.height, image.mode)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise DamagedImage(str(error) or type(error).__name__) from error


def _check_outcome(path: Path, whole: bool) -> ImageFacts | Exception:
    try:
        return decode_whole(path) if whole else read_header(path)
    except (DamagedImage, OSError) as error:
        return error


def _ends_in_zero_fill(image: Image.Image) -> bool:
    """Whether the image's last 8x8 block is exactly the grey of a JPEG block without data."""
    if image.mode not in ("L", "RGB") or image.width < 8 or image.height < 8:
        return False
    corner = np.asarray(image.crop((image.width - 8, image.height - 8, image.width, image.height)))
    return bool((corner == _ZERO_FILL).all())


def _check_jpeg_data_reaches_its_end(path: Path, image: Image.Image) -> None:
    data = path.read_bytes()
    # Where the decoder stops: the first end marker after the first scan's start (entropy-coded data cannot hold
    # one, and an earlier one belongs to a thumbnail in the EXIF data).
    end = data.find(_JPEG_END, max(data.find(_JPEG_SCAN), 0))
    if end < 0:
        raise DamagedImage("the JPEG has no end marker")
    with Image.open(io.BytesIO(data[:end] + _PROBE + data[end:])) as probed:
        try:
            probed.load()
            changed = not np.array_equal(np.asarray(probed), np.asarray(image))
        except OSError:  # the inserted bytes were read as (bad) image data
            changed = True
    if changed:
        raise DamagedImage("the JPEG data stops before the end of the image (cut short, then given its end marker "
                           "back): its last rows would be a uniform grey")


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "apis"


class _Cache:
    """The images decoded whole before: ``(path, size, mtime_ns) -> ImageFacts``."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    @classmethod
    def open(cls) -> _Cache | None:
        """The cache, or None where it cannot be made or read (then every image is decoded)."""
        path = cache_dir() / "image_checks.sqlite"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=30.0)
            conn.execute("CREATE TABLE IF NOT EXISTS checked (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                         "mtime_ns INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, "
                         "mode TEXT NOT NULL)")
            conn.commit()
        except (OSError, sqlite3.Error) as error:
            logger.debug("no image check cache at %s: %s", path, error)
            return None
        return cls(conn)

    def lookup(self, keys: Sequence[tuple[str, int, int] | None]) -> dict[tuple[str, int, int], ImageFacts]:
        wanted = {key for key in keys if key is not None}
        found = {}
        try:
            for path, size, mtime_ns, width, height, mode in self.conn.execute(
                    "SELECT path, size, mtime_ns, width, height, mode FROM checked"):
                if (path, size, mtime_ns) in wanted:
                    found[(path, size, mtime_ns)] = ImageFacts(width, height, mode)
        except sqlite3.Error as error:
            logger.debug("image check cache unreadable: %s", error)
        return found

    def store(self, checked: list[tuple[tuple[str, int, int], ImageFacts]]) -> None:
        try:
            with self.conn:
                self.conn.executemany("INSERT OR REPLACE INTO checked VALUES (?, ?, ?, ?, ?, ?)",
                                      [(*key, facts.width, facts.height, facts.mode) for key, facts in checked])
        except sqlite3.Error as error:
            logger.debug("image check cache not written: %s", error)

    def close(self) -> None:
        self.conn.close()
