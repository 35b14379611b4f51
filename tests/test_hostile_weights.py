"""Hostile weight files: each is refused with one line, and reading it takes little memory.

Every file here is small and declares, or inflates to, far more than it holds. They
are all read in one fresh Python process, which resets its peak RSS
(``/proc/self/clear_refs``) before each read and reports how far the peak rose above
the RSS it had before; the reader must refuse the file with a one-line UsageError
(exit code 2) and stay within :data:`MAX_DELTA_MIB`. A well-formed file holding
:data:`CONTROL_MIB` of weights is read in the same process, to show that the probe
sees what a reader allocates; freed memory goes back to the kernel between reads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from nstjax.errors import UsageError
from nstjax.vgg import PARAM_SHAPES
from nstjax.weights import formats, keras_h5, pastiche_q, torch_pickle
from tests import fake_torch as ft

ROOT = Path(__file__).resolve().parents[1]
MAX_DELTA_MIB = 16
CONTROL_MIB = 32
F32 = "FloatStorage"

# glibc returns large freed blocks to the kernel (nstjax's malloc settings keep them)
PROBE_ENV = {"JAX_PLATFORMS": "cpu", "NSTJAX_MALLOC_DEFAULTS": "0"}
PROBE_ENV.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
PROBE = r"""
import ctypes, gc, json, resource, sys

import h5py  # imported by the Keras reader on first use: not while measuring

from nstjax.errors import NstError
from nstjax.weights import formats, torch_pickle

READERS = {
    "torch": torch_pickle.load,
    "keys": formats.detect_format,
    "keras": lambda path: formats.load(path, "keras_h5"),
    "pastiche": lambda path: formats.load(path, "pastiche_q"),
}


def status(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])  # KiB
    except OSError:
        pass
    scale = 1024 if sys.platform == "darwin" else 1  # ru_maxrss: bytes there, KiB here
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // scale


try:  # hands freed heap back to the kernel, so that reuse cannot hide an allocation
    trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):
    trim = lambda pad: None

for name, reader, path in json.load(sys.stdin):
    gc.collect()
    trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak RSS := current RSS (Linux >= 4.0)
    except OSError:
        pass
    before = status("VmRSS")
    error = None
    try:
        READERS[reader](path)
    except NstError as e:
        error = {"type": type(e).__name__, "message": str(e), "exit_code": e.exit_code}
    except Exception as e:  # reported, so that the test can say what leaked
        error = {"type": type(e).__name__, "message": str(e), "exit_code": None}
    peak = status("VmHWM")
    print(json.dumps({"name": name, "error": error, "delta_mib": (peak - before) / 1024}))
"""


def _zip(path: Path, state: dict, **kwargs) -> Path:
    return ft.save_zip(state, path, **kwargs)


def _legacy_main(path: Path, main: bytes) -> Path:
    path.write_bytes(ft.legacy_bytes({"w": ft.tensor(np.ones(2, np.float32))}, main=main))
    return path


def _zip_main(path: Path, main: bytes) -> Path:
    return ft.save_zip({"w": ft.tensor(np.ones(2, np.float32))}, path, main=main)


def _zeros_tensor(numel: int) -> ft.Tensor:
    return ft.Tensor(ft.Zeros(numel, F32), 0, (numel,), (1,))


def _bzip2_bomb(path: Path) -> Path:  # 64 MiB of float32 zeros in a bzip2 entry: ~1 KB
    return _zip(path, {"w": _zeros_tensor(1 << 24)}, compression=zipfile.ZIP_BZIP2)


def _bzip2_small_declared(path: Path) -> Path:  # 1 KiB declared, 64 MiB in the stream
    storage = ft.Zeros(1 << 24, F32, numel=256)
    state = {"w": ft.Tensor(storage, 0, (256,), (1,))}
    return _zip(path, state, compression=zipfile.ZIP_BZIP2)


def _deflate_bomb(path: Path) -> Path:  # 64 MiB of zeros deflated: ~65 KB
    return _zip(path, {"w": _zeros_tensor(1 << 24)}, compression=zipfile.ZIP_DEFLATED)


def _stride0(path: Path) -> Path:  # four 16 MiB tensors, stride 0, from a 4-byte storage
    storage = ft.Storage(np.ones(1, np.float32))
    state = {f"t{i}": ft.Tensor(storage, 0, (1 << 22,), (0,)) for i in range(4)}
    return _zip(path, state)


def _aliases(path: Path) -> Path:  # 64 tensors, each the whole of one 1 MiB storage
    storage = ft.Storage(np.ones(1 << 18, np.float32))
    return _zip(path, {f"t{i}": ft.Tensor(storage, 0, (1 << 18,), (1,)) for i in range(64)})


def _over_budget(path: Path) -> Path:  # a 16-byte storage declared as 1 GiB
    storage = ft.Storage(np.zeros(4, np.float32), numel=1 << 28)
    return _zip(path, {"w": ft.Tensor(storage, 0, (1 << 28,), (1,))})


MEMO_BOMB = b"\x80\x02Nr\xff\xff\xff\x00."  # LONG_BINPUT 2**24 - 1: a 256 MiB memo
MANY_OPS = b"\x80\x02]" + b"]a" * (1 << 20) + b"."  # a 2 MiB pickle: 2**20 lists


def _h5(path: Path, datasets: dict[str, tuple[int, ...]]) -> Path:
    """A Keras-style file whose datasets declare shapes but hold no data (2-5 KB)."""
    with h5py.File(path, "w") as f:
        for name, shape in datasets.items():
            f.create_dataset(name, shape=shape, dtype="f4")
    return path


def _h5_kernel(path: Path) -> Path:  # conv1_1's kernel declared as 200 MB
    return _h5(path, {"block1_conv1/block1_conv1_W_1:0": (50_000_000,)})


def _h5_other(path: Path) -> Path:  # an unknown dataset and a head kernel, 200 MB each
    shapes = {"block1_conv1/extra:0": (50_000_000,), "fc1/fc1_W_1:0": (25088, 2000)}
    return _h5(path, shapes)


def _control(path: Path) -> Path:
    return _zip(path, {"w": _zeros_tensor(CONTROL_MIB << 18)})


CASES: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    # name: (writer, reader, what the message says)
    "zip_bzip2_bomb": (_bzip2_bomb, "torch", r"64.0 MiB in a 0.0 MiB archive"),
    "zip_bzip2_lying": (_bzip2_small_declared, "torch", r"bzip2, which torch.save never"),
    "zip_deflate_bomb": (_deflate_bomb, "torch", r"64.0 MiB in a 0.\d MiB archive"),
    "stride0_aliases": (_stride0, "torch", r"64.0 MiB of tensors out of 0.0 MiB of storage"),
    "many_views": (_aliases, "torch", r"64.0 MiB of tensors out of 1.0 MiB of storage"),
    "over_budget": (_over_budget, "torch", r"declare 1024.0 MiB, more than the 624.4 MiB"),
    "memo_bomb_legacy": (lambda p: _legacy_main(p, MEMO_BOMB), "torch", "memo entry 16777215"),
    "memo_bomb_zip": (lambda p: _zip_main(p, MEMO_BOMB), "keys", "memo entry 16777215"),
    "many_ops": (lambda p: _legacy_main(p, MANY_OPS), "torch", "more than 200000 ops"),
    "h5_kernel": (_h5_kernel, "keras", r"mis-shaped conv1_1/kernel \(50000000,\) != "),
    "h5_unknown": (_h5_other, "keras", r"missing conv1_1/kernel.*; extra block1_conv1/extra"),
}


def probe(tmp: Path) -> dict[str, dict]:
    """Writes every case (and the control) into ``tmp`` and reads them in one fresh
    process; returns name -> report (``error``: None or type, message, exit code;
    ``delta_mib``: how far the peak RSS rose while reading)."""
    jobs = [["control", "torch", str(_control(tmp / "control.pth"))]]
    for name, (write, reader, _) in CASES.items():
        jobs.append([name, reader, str(write(tmp / name))])
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, **PROBE_ENV},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {report["name"]: report for report in reports}


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> dict[str, dict]:
    return probe(tmp_path_factory.mktemp("hostile"))


def test_files_are_small(tmp_path):
    for name, (write, _, _) in CASES.items():
        size = write(tmp_path / name).stat().st_size
        assert size < (2_200_000 if name in ("many_views", "many_ops") else 100_000), name


def test_probe_sees_allocations(probed):
    control = probed["control"]
    assert control["error"] is None
    assert control["delta_mib"] > CONTROL_MIB, control


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_file_is_refused_within_bounded_memory(probed, name):
    report = probed[name]
    error = report["error"]
    assert error is not None, f"{name} was loaded ({report['delta_mib']:.0f} MiB)"
    assert error["type"] == "UsageError" and error["exit_code"] == 2, error
    assert "\n" not in error["message"]
    assert re.search(CASES[name][2], error["message"]), error["message"]
    assert report["delta_mib"] < MAX_DELTA_MIB, report


def test_budget_admits_torchvision_vgg19():
    # vgg19-dcbb9e9d.pth: the 16 conv layers and the classifier, float32
    features = sum(np.prod(s) for shapes in PARAM_SHAPES.values() for s in shapes.values())
    classifier = 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert torch_pickle.MAX_BYTES >= 4 * (features + classifier) == 574_668_960
    assert torch_pickle.MAX_BYTES <= 4 * (2 * features + classifier)


@pytest.mark.parametrize("save", [ft.save_legacy, ft.save_zip])
def test_budget_is_exact(tmp_path, save):
    state = {"a": ft.tensor(np.ones(100, np.float32)), "b": ft.tensor(np.ones(25, np.int64))}
    path = save(state, tmp_path / "w.pth")
    assert torch_pickle.load(path, max_bytes=600)["b"].tolist() == [1] * 25
    with pytest.raises(UsageError, match="declare 0.0 MiB, more than the 0.0 MiB"):
        torch_pickle.load(path, max_bytes=599)


def test_deflated_archive_still_loads(tmp_path):
    values = np.random.default_rng(0).standard_normal((64, 3, 3, 3)).astype(np.float32)
    state = {"w": ft.tensor(values), "b": ft.tensor(np.zeros(64, np.float32))}
    path = ft.save_zip(state, tmp_path / "d.pth", compression=zipfile.ZIP_DEFLATED)
    np.testing.assert_array_equal(torch_pickle.load(path)["w"], values)


def test_unused_storage_is_never_read(tmp_path):
    # a storage no tensor uses, declared as 1 GiB but holding 4 bytes: not even looked at
    state = {"w": ft.tensor(np.ones(3, np.float32))}
    state["junk"] = ft.Storage(np.zeros(1, np.float32), numel=1 << 28)
    path = ft.save_zip(state, tmp_path / "u.pth")
    assert list(torch_pickle.load(path)) == ["w"]


def test_pastiche_misshaped_indices_are_not_dequantized():
    indices = np.broadcast_to(np.uint8(3), (1 << 26,))  # would dequantize to 256 MiB
    raw = {"block1_conv1_W_q": indices, "block1_conv1_W_table": np.ones(4, np.float32)}
    out = pastiche_q.from_raw(raw)
    kernel = out["block1_conv1/kernel"]
    assert kernel.shape == (1 << 26,) and kernel.strides == (0,)
    with pytest.raises(UsageError, match=r"mis-shaped conv1_1/kernel \(67108864,\) != "):
        formats.convert(out, "pastiche_q")


def test_keras_placeholders_take_no_memory(tmp_path):
    path = _h5_other(tmp_path / "o.h5")
    raw = keras_h5.load(path)
    assert raw["fc1/kernel"].shape == (25088, 2000) and raw["fc1/kernel"].strides == (0, 0)
    assert raw["block1_conv1/extra:0"].strides == (0,)


def test_keras_parameter_that_is_not_numbers(tmp_path):
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("block1_conv1/block1_conv1_b_1:0", shape=(64,), dtype=h5py.string_dtype())
    with pytest.raises(UsageError, match=r"block1_conv1_b_1:0 holds object, not numbers"):
        formats.load(path, "keras_h5")
