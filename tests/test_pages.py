"""Clean file pages given back (nstjax/pages.py): what is released, what is never touched."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from nstjax import gatys, pages

linux = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.access("/proc/self/smaps", os.R_OK)),
    reason="needs a readable /proc/self/smaps",
)
MIB = 1 << 20


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.bin"
    rng = np.random.default_rng(0)
    payload = rng.integers(0, 256, 8 * MIB, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())  # written back: the page cache's pages are clean
    return path, payload


def _mapping_of(path) -> dict:
    return next(m for m in pages.mappings() if m["path"] == str(path))


@linux
def test_read_only_file_pages_leave_and_come_back_unchanged():
    import jaxlib  # noqa: PLC0415  (a large file on the install's disk, not written lately)

    path = max(Path(jaxlib.__file__).parent.glob("*.so"), key=lambda p: p.stat().st_size)
    size = min(8 * MIB, path.stat().st_size // mmap.PAGESIZE * mmap.PAGESIZE)
    with open(path, "rb") as f:
        payload = f.read(size)
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    try:
        assert bytes(mapped[::4096]) == payload[::4096]  # every page touched
        before = next(m for m in pages.mappings() if m["path"] == str(path)
                      and m["end"] - m["start"] == size and m["perms"] == "r--s")  # fmt: skip
        if before.get("Shared_Dirty") or before.get("Private_Dirty"):
            pytest.skip(f"{path.parent} keeps its pages dirty (tmpfs?)")
        assert before["Rss"] >= size // 1024 - 64
        released = pages.release({})
        assert released >= before["Rss"]  # this mapping's pages, and the libraries' clean ones
        after = next(m for m in pages.mappings() if m["start"] == before["start"])
        assert after["Rss"] == 0
        assert mapped[:] == payload  # read back from the page cache, unchanged
        after = next(m for m in pages.mappings() if m["start"] == before["start"])
        assert after["Rss"] >= size // 1024 - 64
    finally:
        mapped.close()


@linux
def test_written_and_anonymous_pages_are_never_released(data_file):
    path, payload = data_file
    with open(path, "r+b") as f:
        private = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # writable, private
    anon = mmap.mmap(-1, 4 * MIB)
    try:
        private[:4] = b"nstx"  # a page of its own: the file does not hold it
        anon[:] = b"\x07" * (4 * MIB)
        m = _mapping_of(path)
        assert not pages.releasable(m)  # writable, and dirty
        pages.release({})
        assert private[:4] == b"nstx" and private[4:] == payload[4:]
        assert anon[:] == b"\x07" * (4 * MIB)
    finally:
        private.close()
        anon.close()


def test_releasable_refuses_what_the_file_does_not_hold():
    clean = {"start": 0, "end": 4096, "perms": "r-xp", "inode": 7, "path": "/usr/lib/x.so",
             "flags": {"rd", "ex"}, "Rss": 4, "Private_Dirty": 0, "Shared_Dirty": 0,
             "Anonymous": 0}  # fmt: skip
    assert pages.releasable(clean)
    for change in (
        {"perms": "rw-p"},  # writable
        {"Private_Dirty": 4},  # a page written since it was mapped (a breakpoint, ...)
        {"Anonymous": 4},
        {"inode": 0, "path": ""},  # anonymous memory
        {"path": "[vdso]"},
        {"path": "/dev/nvidia0"},  # a device
        {"path": "/usr/lib/x.so (deleted)"},
        {"flags": {"rd", "lo"}},  # locked
        {"flags": {"rd", "io", "pf"}},  # I/O, raw page frames
        {"Rss": 0},  # nothing resident
    ):
        assert not pages.releasable({**clean, **change}), change
    incomplete = dict(clean)
    del incomplete["Private_Dirty"]  # a kernel that does not say: left alone
    assert not pages.releasable(incomplete)


@linux
def test_off_switch_and_unreadable_maps(data_file, tmp_path):
    path, payload = data_file
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        assert mapped[:] == payload
        assert pages.release({pages.ENV: "0"}) == 0
        assert _mapping_of(path)["Rss"] >= 8 * 1024 - 64  # untouched
        garbage = tmp_path / "smaps"
        garbage.write_text("zz-yy r--p 0 0:0 12 /x\nRss: 4 kB\n")
        assert pages.release({}, smaps=str(garbage)) == 0  # unparsable: nothing done
        assert pages.release({}, smaps=str(tmp_path / "missing")) == 0
        assert _mapping_of(path)["Rss"] >= 8 * 1024 - 64
    finally:
        mapped.close()


def test_a_run_releases_before_the_transforms_and_before_the_steps(
    monkeypatch, images, real_weights
):
    calls = []
    monkeypatch.setattr(pages, "release", lambda *a, **k: calls.append(1) or 0)
    gatys.stylize(images / "tubingen.jpg", images / "starry_night.jpg", weights=real_weights,
                  size=32, steps=2, chunk_size=2, panel="off")  # fmt: skip
    assert len(calls) == 2
