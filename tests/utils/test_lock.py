"""The advisory lock on an output folder (issue 13, case 1): one process at a time, the holder named."""

import os
import subprocess
import sys

import pytest

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
