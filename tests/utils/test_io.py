"""Atomic writes: the umask is honoured, and the temporaries a killed writer left are cleaned (issue 13, case 13)."""

import os
import stat

import pytest

from apis.utils.io import atomic_write_text, remove_temporaries


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
