"""Hand-off files are written whole or not at all, on a full disk too; the
room on a run folder's disk is measured where the folder will be."""

import errno
import os
import subprocess

import pytest

from sftmill.core.files import free_bytes, space_problem, write_atomic


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    out = tmp_path / "dataset.jsonl"
    out.write_text('{"old": 1}\n')
    (tmp_path / ".dataset.jsonl.killed.partial").write_text('{"torn')  # a killed writer's

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device"):
        write_atomic(out, [b'{"new": 1}\n'])
    assert out.read_text() == '{"old": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.jsonl"]


def test_on_a_small_file_system_a_write_that_cannot_fit_leaves_the_old_file(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        out = disk / "dataset.jsonl"
        write_atomic(out, [b"x" * 100_000])
        with pytest.raises(OSError) as err:
            write_atomic(out, [b"y" * 4_000_000])
        assert err.value.errno == errno.ENOSPC
        assert out.read_bytes() == b"x" * 100_000
        assert [p.name for p in disk.iterdir()] == ["dataset.jsonl"]
        assert free_bytes(disk / "run" / "not-yet") == free_bytes(disk) < 1_000_000
        assert space_problem(disk / "run", 2**20, "the next 10 answer calls") == (
            f"disk space: {disk / 'run'} has {free_bytes(disk) / 2**20:.1f} MB free; the next 10 "
            "answer calls could need 1.0 MB. Finished work is kept: free some space and run the "
            "same command again to go on")
        assert space_problem(disk, 1000, "x") is None
    finally:
        subprocess.run(["umount", str(disk)], check=False)
