"""An advisory lock on an output folder, so that one process at a time writes a run (docs/design.md,
"The run directory").

Two ``apis run`` (or ``apis train``) processes on the same folder would interleave their answers and
overwrite each other's config; the second one is refused with the pid of the first. The lock is an
``fcntl.flock`` on ``FOLDER/.lock``, which the kernel releases when its holder exits, even on SIGKILL,
so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from apis.utils.errors import ApisError
from apis.utils.io import WriteFailed

LOCK_FILE = ".lock"


class FolderLocked(ApisError):
    """Another process holds the folder's lock; the message names its pid."""


class FolderLock:
    """Holds the lock on ``folder`` from :meth:`acquire` (or ``with``) until :meth:`release`.

    A folder that cannot be written (read-only) is not locked: nothing can write it anyway, and
    readers need no lock.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock; :class:`FolderLocked` naming the holder's pid when another process has it."""
        if self.folder.is_dir() and not os.access(self.folder, os.W_OK):
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            if error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                return self
            raise self._write_failed(error) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FolderLocked(f"{self.folder}: in use by another apis process (pid {holder}); wait for it to "
                               f"finish or stop it, then run the command again") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        except OSError as error:  # a full disk: the run stops here, before it writes anything
            os.close(fd)
            raise self._write_failed(error) from error
        self._fd = fd
        return self

    def _write_failed(self, error: OSError) -> WriteFailed:
        return WriteFailed(f"{self.path}: could not be written ({error.strerror or error}); nothing of the run was "
                           f"written or changed in {self.folder}")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
