"""The advisory lock on an output folder (issue 13, case 1): one process at a time, the holder named."""

import errno
import os
import subprocess
import sys

import pytest

from apis.utils.io import WriteFailed
from apis.utils.lock import FolderLock, FolderLocked

HOLD = """
import sys, time
from apis.utils.lock import FolderLock
FolderLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_folder_held_by_another_process_is_refused_with_its_pid_and_free_once_it_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLocked, match=rf"run: in use by another apis process \(pid {holder.pid}\)"):
            FolderLock(tmp_path / "run").acquire()
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock, nothing stale is left
        holder.wait()
    with FolderLock(tmp_path / "run") as lock:
        assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())
        assert lock.path.parent == tmp_path / "run"


def test_the_lock_is_released_and_a_read_only_folder_is_not_locked(tmp_path, monkeypatch):
    lock = FolderLock(tmp_path).acquire()
    lock.release()
    FolderLock(tmp_path).acquire().release()
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    # os.access as for a folder without write permission (chmod does not stop root, who runs CI).
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: False if path == read_only and mode & os.W_OK
                        else real_access(path, mode, **kwargs))
    with FolderLock(read_only), FolderLock(read_only):  # nothing can write it: no lock needed, none taken
        assert not (read_only / ".lock").exists()


def test_a_full_disk_is_named_at_the_lock_and_leaves_the_folder_free(tmp_path, monkeypatch):
    """Simulated: the pid is the run's first write, and the kernel's ENOSPC for it names the lock file."""
    real_pwrite = os.pwrite

    def no_space(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(WriteFailed) as full:
        FolderLock(tmp_path / "run").acquire()
    assert str(full.value) == (f"{tmp_path / 'run' / '.lock'}: could not be written (No space left on device); "
                               f"nothing of the run was written or changed in {tmp_path / 'run'}")
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    with FolderLock(tmp_path / "run"):  # the failed attempt holds nothing
        assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())
