"""``loop.initial_run``'s copies of another run's M0 (the rest is tested with whole runs in tests/active/test_loop.py
and tests/active/test_afis.py)."""

import errno
import shutil

import pytest

from apis.loop import initial_run
from apis.utils.io import WriteFailed


def test_a_copy_cut_short_by_a_full_disk_leaves_nothing_and_the_same_command_copies_it_whole(tmp_path, monkeypatch):
    """Simulated: the disk fills up after the first of a model folder's files."""
    src, dst = tmp_path / "source" / "member_0", tmp_path / "run" / "step_000" / "member_0"
    src.mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "model_final.pth"):
        (src / name).write_text(name)
    real_copyfile = shutil.copyfile
    copied = []

    def full_after_one(source, target, **kwargs):
        if copied:
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(target)
        return real_copyfile(source, target, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", full_after_one)
    with pytest.raises(WriteFailed) as full:
        initial_run._copy_whole(src, dst, shutil.copytree)
    assert str(full.value) == (f"{dst}: could not be copied from {src} ([Errno 28] No space left on device); "
                               "nothing of it is kept. Free space, then run the same command again")
    assert copied and list(dst.parent.iterdir()) == []  # no folder that reads as a copied model
    monkeypatch.setattr(shutil, "copyfile", real_copyfile)
    initial_run._copy_whole(src, dst, shutil.copytree)
    assert sorted(path.name for path in dst.iterdir()) == ["config.yaml", "metrics.jsonl", "model_final.pth"]
    assert list(dst.parent.iterdir()) == [dst]
