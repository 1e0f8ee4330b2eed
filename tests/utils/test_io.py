"""Atomic writes: the umask is honoured, and the temporaries a killed writer left are cleaned (issue 13, case 13)."""

import errno
import os
import stat

import pytest

from apis.utils.io import WriteFailed, atomic_write_text, remove_temporaries


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_an_atomically_written_file_has_the_mode_the_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
    assert (tmp_path / "a.json").read_text() == "{}"


def test_remove_temporaries_removes_only_the_writer_s_temporaries(tmp_path):
    leftovers = [tmp_path / ".model_0000002.pth.k3j_x9.tmp", tmp_path / ".metrics.json.abc.tmp"]
    kept = [tmp_path / "model_0000002.pth", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in (*leftovers, *kept):
        path.write_text("x")
    assert remove_temporaries(tmp_path) == sorted(leftovers)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_a_full_disk_names_the_file_and_keeps_its_previous_version(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(WriteFailed) as full:
        atomic_write_text(target, "new")
    assert str(full.value) == (f"{target}: could not be written (No space left on device); its previous version is "
                               "kept unchanged")
    assert isinstance(full.value, OSError) and target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with pytest.raises(WriteFailed, match=r"new.json: could not be written .*; nothing was written there"):
        atomic_write_text(tmp_path / "new.json", "x")
