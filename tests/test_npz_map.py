"""The weight cache's aligned ``.npz``: written, mapped in place, released, refused."""

from __future__ import annotations

import struct
import sys
import zipfile

import jax
import numpy as np
import pytest

from nstjax.weights import cache, npz_map


def _params(rng):
    return {f"conv{i}": {"kernel": rng.normal(size=(3, 3, 8 * (i + 1), 7)).astype(np.float32),
                         "bias": rng.normal(size=(7,)).astype(np.float32)}
            for i in range(5)}  # fmt: skip


def _equal(got, want):
    assert got.keys() == want.keys()
    for name, layer in want.items():
        for key, a in layer.items():
            np.testing.assert_array_equal(got[name][key], a)


def test_entries_are_npz_files_mapped_in_place(tmp_path):
    params = _params(np.random.default_rng(0))
    cache.store("e", params, {"source": "test"}, directory=tmp_path)
    with np.load(tmp_path / "e.npz") as z:  # still a plain .npz
        assert sorted(z.files) == sorted(cache.flatten(params))
        for key, a in cache.flatten(params).items():
            np.testing.assert_array_equal(z[key], a)
    loaded, _ = cache.load("e", tmp_path)
    _equal(loaded, params)
    for layer in loaded.values():
        for a in layer.values():
            assert npz_map._mapping(a) is not None  # a view of the file, not a copy
            assert not a.flags.writeable
            assert a.ctypes.data % npz_map.ALIGN == 0
            assert jax.device_put(a).unsafe_buffer_pointer() == a.ctypes.data


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_released_pages_leave_memory_and_read_back(tmp_path):
    params = {"big": {"kernel": np.random.default_rng(1).normal(size=(64, 1024, 64))
                      .astype(np.float32)}}  # 16 MiB  # fmt: skip
    cache.store("e", params, {"source": "test"}, directory=tmp_path)
    loaded, _ = cache.load("e", tmp_path)
    a = loaded["big"]["kernel"]
    total = float(np.sum(a, dtype=np.float64))  # every page resident
    before = _rss_file_kib()
    released = npz_map.release(loaded)
    assert released >= 16 * 2**20 - 2 * 4096
    assert before - _rss_file_kib() >= 12 * 1024  # KiB
    assert float(np.sum(a, dtype=np.float64)) == total  # faulted back in from the file
    _equal(loaded, params)
    assert npz_map.release({"not mapped": np.ones(4096, np.float32), "other": [1, "x"]}) == 0


def test_entries_written_by_numpy_savez_load_as_aligned_copies(tmp_path, monkeypatch):
    params = _params(np.random.default_rng(2))
    monkeypatch.setattr(npz_map, "write", lambda f, arrays: np.savez(f, **arrays))
    cache.store("old", params, {"source": "test"}, directory=tmp_path)
    with open(tmp_path / "old.npz", "rb") as f:
        assert npz_map.map_arrays(f) is None
    loaded, _ = cache.load("old", tmp_path)
    _equal(loaded, params)
    for layer in loaded.values():
        for a in layer.values():
            assert npz_map._mapping(a) is None and a.ctypes.data % npz_map.ALIGN == 0


def _aligned_file(path, arrays):
    with open(path, "wb") as f:
        npz_map.write(f, arrays)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda p: np.savez_compressed(p, a=np.ones(100, np.float32)),
        lambda p: _aligned_file(p, {"a": np.ones(100, np.float64)}),  # not float32
        lambda p: _aligned_file(p, {"a": np.ones((3, 4), np.float32).T}),  # written C-order
        lambda p: p.write_bytes(b"not a zip file at all"),
        lambda p: p.write_bytes(b""),
    ],
    ids=["compressed", "float64", "plain", "not-zip", "empty"],
)
def test_map_arrays_maps_only_what_it_can_check(tmp_path, make):
    path = tmp_path / "x.npz"
    make(path)
    with open(path, "rb") as f:
        mapped = npz_map.map_arrays(f)
    if path.stat().st_size and zipfile.is_zipfile(path) and mapped is not None:
        # the one mappable case: a float32 array written by npz_map.write
        np.testing.assert_array_equal(mapped["a"], np.ones((4, 3), np.float32))
    else:
        assert mapped is None


def test_a_member_pointing_past_the_file_is_refused(tmp_path):
    path = _aligned_file(tmp_path / "x.npz", {"a": np.arange(1000, dtype=np.float32)})
    data = bytearray(path.read_bytes())
    assert data[:4] == b"PK\x03\x04"
    struct.pack_into("<H", data, 28, 0xFFFF)  # the first member's extra field length
    path.write_bytes(bytes(data))
    with open(path, "rb") as f:
        assert npz_map.map_arrays(f) is None
