"""Atomic writes: durable (file and directory fsynced), modes as expected, no umask games."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nstjax import atomic
from nstjax.errors import NstError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def events(monkeypatch) -> list[tuple[str, str]]:
    """Records fsync (of a file or a directory) and replace calls, in order."""
    log: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        log.append(("fsync", kind))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        log.append(("replace", Path(dst).name))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def test_file_then_rename_then_directory_are_synced(tmp_path, events):
    atomic.write_bytes(tmp_path / "a.bin", b"data")
    assert events == [("fsync", "file"), ("replace", "a.bin"), ("fsync", "dir")]
    assert (tmp_path / "a.bin").read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_directory_sync_in_the_current_directory(tmp_path, events, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic.write_json("m.json", {"a": 1})  # a bare name: its directory is "."
    assert events[-1] == ("fsync", "dir")
    assert Path("m.json").read_text() == '{\n "a": 1\n}\n'


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755, 0o444], ids=oct)
def test_replacing_keeps_the_mode(tmp_path, mode):
    path = tmp_path / "keep.txt"
    path.write_bytes(b"old")
    path.chmod(mode)
    atomic.write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_new_files_get_the_usual_mode_without_touching_the_umask(tmp_path):
    # in a child process with umask 027: the file gets 0o666 & ~0o027 = 0o640, and
    # os.umask (process-wide state) is never called by atomic
    script = (
        "import os, sys\n"
        "os.umask(0o027)\n"
        "from nstjax import atomic\n"
        "def refuse(*a):\n"
        "    raise AssertionError('os.umask called')\n"
        "os.umask = refuse\n"
        "atomic.write_bytes(sys.argv[1], b'x')\n"
        "print(oct(os.stat(sys.argv[1]).st_mode & 0o777))\n"
    )
    out = tmp_path / "new.txt"
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "0o640"


def test_umask_is_not_consulted_in_process(tmp_path, monkeypatch):
    def refuse(*args):
        raise AssertionError("os.umask changes process-wide state")

    monkeypatch.setattr(os, "umask", refuse)
    atomic.write_bytes(tmp_path / "u.txt", b"x")
    assert (tmp_path / "u.txt").read_bytes() == b"x"


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "x.json"
    atomic.write_json(path, [1])

    def broken(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(NstError, match="No space left on device"):
        atomic.write_with(path, broken)
    assert path.read_text() == "[\n 1\n]\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_directory_sync_failure_is_reported(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(NstError, match="could not sync its directory: Input/output error"):
        atomic.write_bytes(tmp_path / "d.bin", b"1")


def test_unwritable_directory(tmp_path):
    with pytest.raises(NstError, match="cannot write"):
        atomic.write_bytes(tmp_path / "missing" / "f.bin", b"1")


def test_a_temporary_removed_by_another_process_is_written_again(tmp_path, monkeypatch):
    # a second sweep runner may clear ".*.tmp" files it takes for a killed run's
    from nstjax import atomic as atomic_mod

    real_replace, calls = os.replace, []

    def racing_replace(src, dst):
        calls.append(src)
        if len(calls) == 1:
            os.unlink(src)  # the other process got there first
        return real_replace(src, dst)

    monkeypatch.setattr(atomic_mod.os, "replace", racing_replace)
    atomic_mod.write_json(tmp_path / "sweep.json", {"a": 1})
    assert json.loads((tmp_path / "sweep.json").read_text()) == {"a": 1} and len(calls) == 2
    assert not list(tmp_path.glob(".*.tmp"))
